// Hugging Face config.json for Llama (SmolLM2), Qwen2 and BERT. Defaults follow
// transformers' LlamaConfig, Qwen2Config and BertConfig; rope settings are read from
// the 4.x layout (rope_theta, rope_scaling) and the 5.x one (rope_parameters).
#include "io/config.h"
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"

#define MAX_CONFIG_BYTES ((size_t)16 << 20)

const char *wk_arch_name(wk_arch arch) {
  switch (arch) {
    case WK_ARCH_LLAMA: return "llama";
    case WK_ARCH_QWEN2: return "qwen2";
    case WK_ARCH_BERT: return "bert";
    default: return "unknown";
  }
}

// ---- typed field readers: absent or null -> default; wrong type -> error ----
typedef struct {
  const char *src;
  const char *where;   // "" or "rope_scaling." for nested objects
  wk_status s;
} ctx;

static const wk_json *field(const wk_json *obj, const char *key) {
  const wk_json *v = wk_json_get(obj, key);
  return v && v->type == WK_JSON_NULL ? NULL : v;
}

static int64_t get_int(ctx *c, const wk_json *obj, const char *key, int64_t def, int64_t min) {
  const wk_json *v = field(obj, key);
  if (c->s || !v) return def;
  if (v->type != WK_JSON_NUMBER || !v->is_int) {
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is %s%s, not an integer", c->src, c->where, key,
                    v->type == WK_JSON_NUMBER ? "a fractional " : "a ", wk_json_type_name(v));
    return def;
  }
  if (v->i < min) {
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is %lld; it must be at least %lld", c->src, c->where, key,
                    (long long)v->i, (long long)min);
    return def;
  }
  return v->i;
}

static double get_num(ctx *c, const wk_json *obj, const char *key, double def, bool positive) {
  const wk_json *v = field(obj, key);
  if (c->s || !v) return def;
  if (v->type != WK_JSON_NUMBER) {
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is a %s, not a number", c->src, c->where, key, wk_json_type_name(v));
    return def;
  }
  if (positive && !(v->d > 0)) {
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is %g; it must be positive", c->src, c->where, key, v->d);
    return def;
  }
  return v->d;
}

// A positive number the model uses as a float32 (norm eps, rope theta): 1e308 would be
// inf there (an RMS norm of all zeros), 1e-300 zero.
static double get_f32(ctx *c, const wk_json *obj, const char *key, double def) {
  double d = get_num(c, obj, key, def, true);
  if (!c->s && (d > FLT_MAX || d < FLT_MIN))
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is %g, out of the range of a float32", c->src, c->where, key, d);
  return d;
}

static bool get_bool(ctx *c, const wk_json *obj, const char *key, bool def) {
  const wk_json *v = field(obj, key);
  if (c->s || !v) return def;
  if (v->type != WK_JSON_BOOL) {
    c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is a %s, not true or false", c->src, c->where, key, wk_json_type_name(v));
    return def;
  }
  return v->b;
}

static void get_str(ctx *c, const wk_json *obj, const char *key, const char *def, char *out, size_t cap) {
  const wk_json *v = field(obj, key);
  const char *s = def;
  if (c->s) return;
  if (v) {
    if (v->type != WK_JSON_STRING) {
      c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is a %s, not a string", c->src, c->where, key, wk_json_type_name(v));
      return;
    }
    if (v->n >= cap || strlen(v->s) != v->n) {
      c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" value \"%.60s\" is not a short name", c->src, c->where, key, v->s);
      return;
    }
    s = v->s;
  }
  snprintf(out, cap, "%s", s);
}

// ---- architecture ----
static wk_arch arch_of_model_type(const char *t) {
  if (!strcmp(t, "llama")) return WK_ARCH_LLAMA;
  if (!strcmp(t, "qwen2")) return WK_ARCH_QWEN2;
  if (!strcmp(t, "bert")) return WK_ARCH_BERT;
  return WK_ARCH_UNKNOWN;
}

static wk_arch arch_of_class(const char *a) {
  if (!strcmp(a, "LlamaForCausalLM") || !strcmp(a, "LlamaModel")) return WK_ARCH_LLAMA;
  if (!strcmp(a, "Qwen2ForCausalLM") || !strcmp(a, "Qwen2Model")) return WK_ARCH_QWEN2;
  if (!strncmp(a, "Bert", 4) && (!strcmp(a + 4, "Model") || !strncmp(a + 4, "For", 3))) return WK_ARCH_BERT;
  return WK_ARCH_UNKNOWN;
}

// ---- rope ----
static void parse_rope(ctx *c, const wk_json *obj, const char *where, wk_rope_scaling *r) {
  c->where = where;
  char type[32];
  // 4.x wrote "type" in rope_scaling before "rope_type"; both are read
  get_str(c, obj, field(obj, "rope_type") ? "rope_type" : "type", "default", type, sizeof type);
  if (c->s) return;
  if (!strcmp(type, "default")) r->type = WK_ROPE_DEFAULT;
  else if (!strcmp(type, "linear")) r->type = WK_ROPE_LINEAR;
  else if (!strcmp(type, "dynamic")) r->type = WK_ROPE_DYNAMIC;
  else if (!strcmp(type, "llama3")) r->type = WK_ROPE_LLAMA3;
  else if (!strcmp(type, "yarn")) r->type = WK_ROPE_YARN;
  else {
    c->s = wk_error(WK_ERR_IO, "%s: \"%srope_type\" \"%s\" is not supported (default, linear, dynamic, llama3, yarn)",
                    c->src, where, type);
    return;
  }
  r->factor = get_num(c, obj, "factor", 1.0, true);
  if (r->type != WK_ROPE_DEFAULT && !field(obj, "factor") && !c->s)
    c->s = wk_error(WK_ERR_IO, "%s: \"%sfactor\" is required for rope type %s", c->src, where, type);
  r->original_max_position_embeddings = get_int(c, obj, "original_max_position_embeddings", 0, 1);
  r->low_freq_factor = get_num(c, obj, "low_freq_factor", 0, true);
  r->high_freq_factor = get_num(c, obj, "high_freq_factor", 0, true);
  r->beta_fast = get_num(c, obj, "beta_fast", 32, true);
  r->beta_slow = get_num(c, obj, "beta_slow", 1, true);
  r->mscale = get_num(c, obj, "mscale", 0, false);
  r->mscale_all_dim = get_num(c, obj, "mscale_all_dim", 0, false);
  r->attention_factor = get_num(c, obj, "attention_factor", 0, true);
  if (!c->s && r->type == WK_ROPE_LLAMA3) {
    const char *need[] = {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    for (int k = 0; k < 3 && !c->s; k++)
      if (!field(obj, need[k]))
        c->s = wk_error(WK_ERR_IO, "%s: \"%s%s\" is required for rope type llama3", c->src, where, need[k]);
  }
  c->where = "";
}

// ---- token ids: one integer, or a list ----
static void parse_eos(ctx *c, const wk_json *root, int64_t def, wk_model_config *m) {
  const wk_json *v = field(root, "eos_token_id");
  m->n_eos = 0;
  if (c->s) return;
  if (!v) {
    if (def >= 0) m->eos_token_ids[m->n_eos++] = def;
    return;
  }
  if (v->type == WK_JSON_NUMBER) {
    m->eos_token_ids[m->n_eos++] = get_int(c, root, "eos_token_id", -1, 0);
    return;
  }
  if (v->type != WK_JSON_ARRAY) {
    c->s = wk_error(WK_ERR_IO, "%s: \"eos_token_id\" is a %s, not an integer or a list of integers", c->src, wk_json_type_name(v));
    return;
  }
  if (v->n > WK_MAX_EOS) {
    c->s = wk_error(WK_ERR_IO, "%s: \"eos_token_id\" lists %zu ids, more than wick's %d", c->src, v->n, WK_MAX_EOS);
    return;
  }
  for (size_t k = 0; k < v->n; k++) {
    const wk_json *x = &v->items[k];
    if (x->type != WK_JSON_NUMBER || !x->is_int || x->i < 0) {
      c->s = wk_error(WK_ERR_IO, "%s: \"eos_token_id\"[%zu] is not a non-negative integer", c->src, k);
      return;
    }
    m->eos_token_ids[m->n_eos++] = x->i;
  }
}

static int64_t parse_bos(ctx *c, const wk_json *root, int64_t def) {
  const wk_json *v = field(root, "bos_token_id");
  if (v && v->type == WK_JSON_ARRAY) {  // rare, but transformers allows it: the first id
    const wk_json *x = wk_json_at(v, 0);
    return x && x->type == WK_JSON_NUMBER && x->is_int && x->i >= 0 ? x->i : def;
  }
  return get_int(c, root, "bos_token_id", def, 0);
}

wk_status wk_model_config_from_json(const wk_json *root, const char *source, wk_model_config *out) {
  if (!out) return wk_error(WK_ERR_ARG, "model_config: out is NULL");
  if (!source) source = "config.json";
  memset(out, 0, sizeof *out);
  if (!wk_json_is(root, WK_JSON_OBJECT))
    return wk_error(WK_ERR_IO, "%s: config is a JSON %s, not an object", source, wk_json_type_name(root));
  ctx c = {.src = source, .where = ""};
  wk_model_config *m = out;

  // architecture: model_type first, the architectures list when it is absent
  const wk_json *archs = field(root, "architectures");
  const char *cls = wk_json_str(wk_json_at(archs, 0), "");
  get_str(&c, root, "model_type", "", m->model_type, sizeof m->model_type);
  if (c.s) return c.s;
  snprintf(m->architecture, sizeof m->architecture, "%s", cls);
  m->arch = m->model_type[0] ? arch_of_model_type(m->model_type) : arch_of_class(cls);
  if (m->arch == WK_ARCH_UNKNOWN)
    return wk_error(WK_ERR_IO, "%s: unsupported model: model_type \"%s\", architectures \"%.60s\"; wick supports "
                    "llama (LlamaForCausalLM, SmolLM2), qwen2 (Qwen2ForCausalLM) and bert (BertModel)",
                    source, m->model_type[0] ? m->model_type : "(none)", cls[0] ? cls : "(none)");
  if (!m->model_type[0]) snprintf(m->model_type, sizeof m->model_type, "%s", wk_arch_name(m->arch));

  bool bert = m->arch == WK_ARCH_BERT, qwen = m->arch == WK_ARCH_QWEN2;
  m->vocab_size = get_int(&c, root, "vocab_size", bert ? 30522 : qwen ? 151936 : 32000, 1);
  m->hidden_size = get_int(&c, root, "hidden_size", bert ? 768 : 4096, 1);
  m->intermediate_size = get_int(&c, root, "intermediate_size", bert ? 3072 : qwen ? 22016 : 11008, 1);
  m->num_hidden_layers = get_int(&c, root, "num_hidden_layers", bert ? 12 : 32, 1);
  m->num_attention_heads = get_int(&c, root, "num_attention_heads", bert ? 12 : 32, 1);
  m->num_key_value_heads = bert ? m->num_attention_heads
                                : get_int(&c, root, "num_key_value_heads", m->num_attention_heads, 1);
  m->max_position_embeddings = get_int(&c, root, "max_position_embeddings", bert ? 512 : qwen ? 32768 : 2048, 1);
  m->head_dim = bert ? 0 : get_int(&c, root, "head_dim", 0, 1);
  if (c.s) return c.s;
  if (!m->head_dim) {
    if (m->hidden_size % m->num_attention_heads)
      return wk_error(WK_ERR_IO, "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", source,
                      (long long)m->hidden_size, (long long)m->num_attention_heads);
    m->head_dim = m->hidden_size / m->num_attention_heads;
  }
  if (m->num_attention_heads % m->num_key_value_heads)
    return wk_error(WK_ERR_IO, "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld", source,
                    (long long)m->num_attention_heads, (long long)m->num_key_value_heads);

  m->norm_eps = bert ? get_f32(&c, root, "layer_norm_eps", 1e-12) : get_f32(&c, root, "rms_norm_eps", 1e-6);
  get_str(&c, root, "hidden_act", bert ? "gelu" : "silu", m->hidden_act, sizeof m->hidden_act);
  if (c.s) return c.s;
  static const char *const acts[] = {"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu"};
  bool act_ok = false;
  for (size_t k = 0; k < sizeof acts / sizeof acts[0]; k++) act_ok |= !strcmp(m->hidden_act, acts[k]);
  if (!act_ok) return wk_error(WK_ERR_IO, "%s: hidden_act \"%s\" is not supported", source, m->hidden_act);

  // rope: 5.x rope_parameters holds theta and scaling together; 4.x splits them
  if (!bert) {
    const wk_json *rp = field(root, "rope_parameters"), *rs = field(root, "rope_scaling");
    if (rp && rp->type != WK_JSON_OBJECT)
      return wk_error(WK_ERR_IO, "%s: \"rope_parameters\" is a %s, not an object", source, wk_json_type_name(rp));
    if (rs && rs->type != WK_JSON_OBJECT)
      return wk_error(WK_ERR_IO, "%s: \"rope_scaling\" is a %s, not an object", source, wk_json_type_name(rs));
    double top = get_f32(&c, root, "rope_theta", 10000.0);
    if (rp && !field(rp, "rope_type") && !field(rp, "type") && !field(rp, "rope_theta"))
      for (size_t k = 0; k < rp->n; k++)
        if (rp->items[k].type == WK_JSON_OBJECT)  // {"full_attention": {...}, ...}
          return wk_error(WK_ERR_IO, "%s: \"rope_parameters\" per layer type (\"%s\") is not supported", source,
                          rp->items[k].key);
    if (rp) {
      c.where = "rope_parameters.";
      m->rope_theta = get_f32(&c, rp, "rope_theta", top);
      c.where = "";
      parse_rope(&c, rp, "rope_parameters.", &m->rope_scaling);
    } else {
      m->rope_theta = top;
      if (rs) parse_rope(&c, rs, "rope_scaling.", &m->rope_scaling);
      else m->rope_scaling = (wk_rope_scaling){.type = WK_ROPE_DEFAULT, .factor = 1, .beta_fast = 32, .beta_slow = 1};
    }
    if (c.s) return c.s;
  }

  // biases: Qwen2 always has q/k/v biases; Llama's attention_bias covers q, k, v and o
  bool attn_bias = get_bool(&c, root, "attention_bias", false);
  m->qkv_bias = qwen || attn_bias || bert;
  m->o_bias = (!qwen && attn_bias) || bert;
  m->mlp_bias = bert || get_bool(&c, root, "mlp_bias", false);
  m->tie_word_embeddings = get_bool(&c, root, "tie_word_embeddings", bert);
  m->bos_token_id = parse_bos(&c, root, m->arch == WK_ARCH_LLAMA ? 1 : -1);
  parse_eos(&c, root, m->arch == WK_ARCH_LLAMA ? 2 : -1, m);
  // -1: none (original LLaMA conversions write it; transformers accepts it)
  m->pad_token_id = get_int(&c, root, "pad_token_id", bert ? 0 : -1, -1);
  if (c.s) return c.s;

  // dtype: 5.x writes "dtype", 4.x "torch_dtype"
  get_str(&c, root, field(root, "dtype") ? "dtype" : "torch_dtype", "", m->dtype_name, sizeof m->dtype_name);
  if (c.s) return c.s;
  if (!strncmp(m->dtype_name, "torch.", 6)) memmove(m->dtype_name, m->dtype_name + 6, strlen(m->dtype_name + 6) + 1);
  static const struct { const char *name; wk_dtype dt; } dts[] = {
      {"float32", WK_F32}, {"float16", WK_F16}, {"bfloat16", WK_BF16}, {"float", WK_F32}, {"half", WK_F16}};
  for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++)
    if (!strcmp(m->dtype_name, dts[k].name)) { m->has_dtype = true; m->dtype = dts[k].dt; }

  if (qwen) {
    m->use_sliding_window = get_bool(&c, root, "use_sliding_window", false);
    m->sliding_window = get_int(&c, root, "sliding_window", 4096, 0);
    m->max_window_layers = get_int(&c, root, "max_window_layers", 28, 0);
  }
  if (bert) {
    m->type_vocab_size = get_int(&c, root, "type_vocab_size", 2, 1);
    get_str(&c, root, "position_embedding_type", "absolute", m->position_embedding_type,
            sizeof m->position_embedding_type);
    if (!c.s && strcmp(m->position_embedding_type, "absolute"))
      return wk_error(WK_ERR_IO, "%s: position_embedding_type \"%s\" is not supported (absolute only)", source,
                      m->position_embedding_type);
  }
  return c.s;
}

wk_status wk_model_config_parse(const char *text, size_t len, const char *source, wk_model_config *out) {
  if (!source) source = "config.json";
  wk_json *doc = wk_json_parse(text, len, source, NULL);
  if (!doc) return WK_ERR_IO;
  wk_status s = wk_model_config_from_json(doc, source, out);
  wk_json_free(doc);
  return s;
}

wk_status wk_model_config_load(const char *path, wk_model_config *out) {
  if (!path) return wk_error(WK_ERR_ARG, "model_config_load: path is NULL");
  char *file = NULL;
  if (wk_is_dir(path)) {
    size_t n = strlen(path);
    char *p = malloc(n + 16);
    if (!p) return wk_error(WK_ERR_OOM, "out of memory");
    snprintf(p, n + 16, "%s%sconfig.json", path, n && path[n - 1] == '/' ? "" : "/");
    file = p;
  }
  size_t len;
  const char *fp = file ? file : path;
  char *text = wk_read_file(fp, MAX_CONFIG_BYTES, &len);
  wk_status s = text ? wk_model_config_parse(text, len, fp, out) : WK_ERR_IO;
  free(text);
  free(file);
  return s;
}
