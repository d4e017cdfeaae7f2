// Decoder-only transformer: Llama, SmolLM2 and Qwen2 from HF safetensors or GGUF.
// B = batch, T = new tokens, S = keys (cache + new), H = hidden, Hq / Hkv = heads,
// D = head dim, F = MLP width, V = vocab.
#include "models/llama.h"
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "engine/engine.h"
#include "wick/gguf.h"
#include "wick/io.h"
#include "wick/ops.h"

// ---- weight sources ----
typedef struct {
  wk_st_file *st;
  wk_gguf *gg;
  const char *path;
} source;

// The tensor `name`, kept out of any caller scope; NULL (error set only if required).
static wk_tensor *src_get(source *s, const char *name, int required) {
  wk_tensor *t = NULL;
  if (s->st) {
    if (wk_st_find(s->st, name) < 0) {
      if (required) wk_error(WK_ERR_ARG, "model %s: tensor '%s' not found", s->path, name);
      return NULL;
    }
    t = wk_st_get(s->st, name);
  } else {
    const wk_gguf_tensor *d = NULL;
    for (int64_t i = 0; i < wk_gguf_tensor_count(s->gg); i++) {
      const wk_gguf_tensor *e = wk_gguf_tensor_at(s->gg, i);
      if (e && !strcmp(e->name, name)) { d = e; break; }
    }
    if (!d) {
      if (required) wk_error(WK_ERR_ARG, "model %s: tensor '%s' not found", s->path, name);
      return NULL;
    }
    // Zero-copy in the file's dtype: F32/F16/BF16, and the block-quantized types, which
    // matmul and embedding read in place. Others (Q5_0, ...) fail with the type's name.
    t = wk_gguf_tensor_load(s->gg, name);
  }
  return wk_keep(t);
}

static int src_has(source *s, const char *name) {
  if (s->st) return wk_st_find(s->st, name) >= 0;
  for (int64_t i = 0; i < wk_gguf_tensor_count(s->gg); i++) {
    const wk_gguf_tensor *e = wk_gguf_tensor_at(s->gg, i);
    if (e && !strcmp(e->name, name)) return 1;
  }
  return 0;
}

// Checks t's shape is [d0] (d1 < 0) or [d0, d1]; frees t and fails otherwise.
static wk_tensor *expect(source *s, wk_tensor *t, const char *name, int64_t d0, int64_t d1) {
  if (!t) return NULL;
  int nd = d1 < 0 ? 1 : 2;
  if (wk_ndim(t) != nd || wk_dim(t, 0) != d0 || (nd == 2 && wk_dim(t, 1) != d1)) {
    char b[160];
    wk_shape_str(t, b, sizeof b);
    if (nd == 1) wk_error(WK_ERR_SHAPE, "model %s: tensor '%s' is %s, expected [%lld]", s->path, name, b, (long long)d0);
    else
      wk_error(WK_ERR_SHAPE, "model %s: tensor '%s' is %s, expected [%lld, %lld]", s->path, name, b, (long long)d0,
               (long long)d1);
    wk_tensor_free(t);
    return NULL;
  }
  return t;
}

static wk_tensor *get_shaped(source *s, const char *name, int required, int64_t d0, int64_t d1) {
  wk_tensor *t = src_get(s, name, required);
  return t ? expect(s, t, name, d0, d1) : NULL;
}

// Names of one layer's tensors, HF or GGUF style (printf formats of the layer index).
enum { N_ATTN_NORM, N_FFN_NORM, N_Q, N_K, N_V, N_O, N_GATE, N_UP, N_DOWN, N_COUNT };
static const char *const hf_names[N_COUNT] = {
    "model.layers.%d.input_layernorm", "model.layers.%d.post_attention_layernorm", "model.layers.%d.self_attn.q_proj",
    "model.layers.%d.self_attn.k_proj", "model.layers.%d.self_attn.v_proj", "model.layers.%d.self_attn.o_proj",
    "model.layers.%d.mlp.gate_proj",    "model.layers.%d.mlp.up_proj",                "model.layers.%d.mlp.down_proj"};
static const char *const gguf_names[N_COUNT] = {"blk.%d.attn_norm", "blk.%d.ffn_norm",   "blk.%d.attn_q",
                                                "blk.%d.attn_k",    "blk.%d.attn_v",     "blk.%d.attn_output",
                                                "blk.%d.ffn_gate",  "blk.%d.ffn_up",     "blk.%d.ffn_down"};

static wk_tensor *layer_get(source *s, const char *const *names, int which, int layer, const char *suffix,
                            int required, int64_t d0, int64_t d1) {
  char base[128], name[160];
  snprintf(base, sizeof base, names[which], layer);
  snprintf(name, sizeof name, "%s.%s", base, suffix);
  return get_shaped(s, name, required, d0, d1);
}

static void free_weights(wk_model *m) {
  if (m->layers) {
    for (int64_t i = 0; i < m->cfg.num_hidden_layers; i++) {
      wk_tensor **w = (wk_tensor **)&m->layers[i];
      for (size_t j = 0; j < sizeof(wk_llama_layer) / sizeof(wk_tensor *); j++) wk_tensor_free(w[j]);
    }
    free(m->layers);
    m->layers = NULL;
  }
  wk_tensor_free(m->embed);
  wk_tensor_free(m->norm);
  wk_tensor_free(m->lm_head);
  wk_tensor_free(m->rope_factors);
  m->embed = m->norm = m->lm_head = m->rope_factors = NULL;
}

// Moves one weight (NULL is fine) to dev, evaluated. Quantized blocks move as they
// are: the CPU and CUDA kernels read every block type in place (matmul, and the
// embedding gather, so a tied LM head and embedding stay one tensor of blocks).
// f16/bf16 vectors (norm weights, biases) arrive widened to f32 (exactly): the
// forward would otherwise cast each of them at every step, a kernel apiece on an
// accelerator (5 of a Qwen2 layer's ~26 per decode step), to save a few KB.
static wk_tensor *moved(wk_tensor *w, wk_device dev) {
  if (!w || wk_tensor_device(w) == dev) return w ? wk_tensor_ref(w) : NULL;
  wk_dtype dt = wk_tensor_dtype(w);
  bool widen = wk_ndim(w) == 1 && (dt == WK_F16 || dt == WK_BF16);
  wk_scope_begin();
  wk_tensor *r = wk_keep(wk_to_device(widen ? wk_cast(w, WK_F32) : w, dev));
  wk_scope_end();
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}

wk_status wk_model_to_device(wk_model *m, wk_device dev) {
  if (!m) return wk_error(WK_ERR_ARG, "model_to_device: model is NULL");
  if (!wk_device_available(dev)) return wk_error(WK_ERR_DEVICE, "model_to_device: %s is not available here", wk_device_name(dev));
  // every weight slot: embed, norm, lm_head, then each layer's tensors
  size_t per = sizeof(wk_llama_layer) / sizeof(wk_tensor *), n = 3 + per * (size_t)m->cfg.num_hidden_layers;
  wk_tensor ***slots = malloc(sizeof *slots * n), **next = calloc(n, sizeof *next);
  if (!slots || !next) { free(slots); free(next); return wk_error(WK_ERR_OOM, "model_to_device: out of memory"); }
  slots[0] = &m->embed, slots[1] = &m->norm, slots[2] = &m->lm_head;
  for (int64_t i = 0; i < m->cfg.num_hidden_layers; i++)
    for (size_t j = 0; j < per; j++) slots[3 + (size_t)i * per + j] = (wk_tensor **)&m->layers[i] + j;
  wk_status s = WK_OK;
  bool tied = m->lm_head == m->embed;
  for (size_t k = 0; k < n && !s; k++) {
    if (k == 2 && tied) continue;
    if (*slots[k] && !(next[k] = moved(*slots[k], dev))) s = WK_ERR_DEVICE;
  }
  if (!s && tied) next[2] = wk_tensor_ref(next[0]);
  for (size_t k = 0; k < n; k++) {   // swap in all or nothing
    if (s) { wk_tensor_free(next[k]); continue; }
    wk_tensor_free(*slots[k]);
    *slots[k] = next[k];
  }
  free(slots);
  free(next);
  return s;
}

wk_device wk_model_device(const wk_model *m) { return m && m->embed ? wk_tensor_device(m->embed) : WK_CPU; }

// Everything wick doesn't implement yet fails at load rather than giving wrong logits.
static wk_status check_supported(const wk_model_config *c, const char *path) {
  if (c->arch != WK_ARCH_LLAMA && c->arch != WK_ARCH_QWEN2)
    return wk_error(WK_ERR_ARG, "model %s: architecture '%s' is not a decoder wick implements (llama, qwen2)%s", path,
                    c->model_type[0] ? c->model_type : wk_arch_name(c->arch),
                    c->arch == WK_ARCH_BERT ? "; BERT is an encoder: load it with the embeddings API" : "");
  if (c->arch == WK_ARCH_QWEN2 && c->use_sliding_window)
    return wk_error(WK_ERR_ARG, "model %s: use_sliding_window is not supported yet", path);
  if (strcmp(c->hidden_act, "silu") && c->hidden_act[0])
    return wk_error(WK_ERR_ARG, "model %s: hidden_act '%s' is not supported (SwiGLU needs silu)", path, c->hidden_act);
  if (c->head_dim <= 0 || c->head_dim % 2 || c->num_key_value_heads <= 0 ||
      c->num_attention_heads % c->num_key_value_heads || c->vocab_size <= 0 || c->hidden_size <= 0 ||
      c->intermediate_size <= 0 || c->num_hidden_layers <= 0 || c->num_hidden_layers > 4096)
    return wk_error(WK_ERR_ARG,
                    "model %s: inconsistent sizes (hidden %lld, heads %lld, kv heads %lld, head_dim %lld, layers %lld)",
                    path, (long long)c->hidden_size, (long long)c->num_attention_heads,
                    (long long)c->num_key_value_heads, (long long)c->head_dim, (long long)c->num_hidden_layers);
  if (c->num_attention_heads > INT64_MAX / c->head_dim)   // the q_proj rows, heads * head_dim
    return wk_error(WK_ERR_ARG, "model %s: num_attention_heads %lld times head_dim %lld is too large", path,
                    (long long)c->num_attention_heads, (long long)c->head_dim);
  if (!(c->rope_theta > 0)) return wk_error(WK_ERR_ARG, "model %s: rope_theta %g must be > 0", path, c->rope_theta);
  return WK_OK;
}

// Loads every weight under HF or GGUF names, checking shapes against the config.
static wk_status load_weights(wk_model *m, source *s, int gguf) {
  const wk_model_config *c = &m->cfg;
  int64_t H = c->hidden_size, V = c->vocab_size, F = c->intermediate_size, D = c->head_dim;
  int64_t Q = c->num_attention_heads * D, KV = c->num_key_value_heads * D;
  const char *const *nm = gguf ? gguf_names : hf_names;
  const char *emb = gguf ? "token_embd.weight" : "model.embed_tokens.weight";
  wk_tensor *e = src_get(s, emb, 1);
  if (e && wk_ndim(e) == 2 && wk_dim(e, 1) == H && wk_dim(e, 0) != V) {   // (a GGUF's vocab is its rows)
    wk_error(WK_ERR_SHAPE, "model %s: config.json vocab_size %lld does not match tensor '%s' of %lld rows", s->path,
             (long long)V, emb, (long long)wk_dim(e, 0));
    wk_tensor_free(e);
    return WK_ERR_SHAPE;
  }
  m->embed = e ? expect(s, e, emb, V, H) : NULL;
  m->norm = get_shaped(s, gguf ? "output_norm.weight" : "model.norm.weight", 1, H, -1);
  // llama.cpp's converter stores Llama 3's scaled frequencies as per-dimension divisors
  if (gguf && src_has(s, "rope_freqs.weight")) {
    m->rope_factors = get_shaped(s, "rope_freqs.weight", 1, D / 2, -1);
    const float *f = m->rope_factors && wk_tensor_dtype(m->rope_factors) == WK_F32 ? wk_tensor_data(m->rope_factors) : NULL;
    bool ok = f != NULL;
    for (int64_t i = 0; ok && i < D / 2; i++) ok = f[i] > 0 && isfinite(f[i]);
    if (!ok) return wk_error(WK_ERR_ARG, "model %s: tensor 'rope_freqs.weight' must be f32 [%lld] of positive factors", s->path,
                             (long long)(D / 2));
  }
  if (!m->embed || !m->norm) return WK_ERR_ARG;
  const char *head = gguf ? "output.weight" : "lm_head.weight";
  // HF ties lm_head to the embeddings whenever tie_word_embeddings is set, even if
  // the file also stores lm_head.weight; GGUF files leave output.weight out instead.
  if (!gguf && c->tie_word_embeddings) m->lm_head = wk_tensor_ref(m->embed);
  else {
    if (src_has(s, head)) {
      if (!(m->lm_head = get_shaped(s, head, 1, V, H))) return WK_ERR_SHAPE;
    } else {
      if (!gguf) return wk_error(WK_ERR_ARG, "model %s: tensor '%s' not found and tie_word_embeddings is false",
                                 s->path, head);
      m->lm_head = wk_tensor_ref(m->embed);
      m->cfg.tie_word_embeddings = true;
    }
  }
  m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
  if (!m->layers) return wk_error(WK_ERR_OOM, "model %s: out of memory", s->path);
  for (int i = 0; i < (int)c->num_hidden_layers; i++) {
    wk_llama_layer *L = &m->layers[i];
#define W(field, which, d0, d1)                                               \
  if (!(L->field = layer_get(s, nm, which, i, "weight", 1, d0, d1))) return WK_ERR_ARG;
#define BIAS(field, which, d0, on)                                                   \
  if ((on) && !(L->field = layer_get(s, nm, which, i, "bias", 1, d0, -1))) return WK_ERR_ARG;
    W(attn_norm, N_ATTN_NORM, H, -1)
    W(ffn_norm, N_FFN_NORM, H, -1)
    W(wq, N_Q, Q, H)
    W(wk, N_K, KV, H)
    W(wv, N_V, KV, H)
    W(wo, N_O, H, Q)
    W(w_gate, N_GATE, F, H)
    W(w_up, N_UP, F, H)
    W(w_down, N_DOWN, H, F)
    BIAS(bq, N_Q, Q, c->qkv_bias)
    BIAS(bk, N_K, KV, c->qkv_bias)
    BIAS(bv, N_V, KV, c->qkv_bias)
    BIAS(bo, N_O, H, c->o_bias)
    BIAS(b_gate, N_GATE, F, c->mlp_bias)
    BIAS(b_up, N_UP, F, c->mlp_bias)
    BIAS(b_down, N_DOWN, H, c->mlp_bias)
#undef W
#undef BIAS
  }
  return WK_OK;
}

wk_status wk_llama_load_safetensors(wk_model *m, const char *dir) {
  if (wk_model_config_load(dir, &m->cfg)) return WK_ERR_ARG;
  if (check_supported(&m->cfg, dir)) return WK_ERR_ARG;
  source s = {.st = wk_st_open(dir), .path = dir};
  if (!s.st) return WK_ERR_IO;
  wk_status st = load_weights(m, &s, 0);
  wk_st_close(s.st);
  m->format = "safetensors";
  return st;
}

// ---- GGUF: config from metadata ----
// Flags of gguf_int: the key must be there; its value must be positive.
enum { GGUF_REQUIRED = 1, GGUF_POSITIVE = 2 };
static wk_status gguf_int(wk_gguf *g, const char *arch, const char *key, int64_t *out, int flags) {
  char k[128];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  if (!wk_gguf_has_key(g, k)) {
    if (!(flags & GGUF_REQUIRED)) return WK_OK;
    return wk_error(WK_ERR_ARG, "model %s: metadata key '%s' is missing", wk_gguf_path(g), k);
  }
  wk_status s = wk_gguf_get_int(g, k, out);
  if (!s && flags & GGUF_POSITIVE && *out <= 0)
    s = wk_error(WK_ERR_ARG, "model %s: %s is %lld; it must be positive", wk_gguf_path(g), k, (long long)*out);
  return s;
}

static wk_status gguf_float(wk_gguf *g, const char *arch, const char *key, double *out) {
  char k[128];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  if (!wk_gguf_has_key(g, k)) return WK_OK;
  return wk_gguf_get_float(g, k, out);
}

// RoPE scaling from llama.cpp's keys: rope.scaling.type none / linear / yarn with its
// factor and original context (yarn's betas and attention factor take transformers'
// defaults, as llama.cpp's converter writes none of them). Llama 3's scaling comes as
// a rope_freqs tensor instead (read with the weights).
static wk_status gguf_rope_scaling(wk_gguf *g, const char *arch, const char *path, wk_model_config *c) {
  char k[128];
  snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
  const char *type = "none";
  if (wk_gguf_has_key(g, k) && wk_gguf_get_str(g, k, &type)) return wk_error(WK_ERR_ARG, "model %s: %s", path, wk_last_error());
  wk_rope_scaling *r = &c->rope_scaling;
  *r = (wk_rope_scaling){.type = WK_ROPE_DEFAULT, .factor = 1, .beta_fast = 32, .beta_slow = 1};
  if (!strcmp(type, "none")) return WK_OK;
  if (strcmp(type, "linear") && strcmp(type, "yarn"))
    return wk_error(WK_ERR_ARG, "model %s: %s '%s' is not supported (none, linear, yarn)", path, k, type);
  r->type = strcmp(type, "linear") ? WK_ROPE_YARN : WK_ROPE_LINEAR;
  snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
  wk_status st = wk_gguf_has_key(g, k) ? wk_gguf_get_float(g, k, &r->factor)
                                       : wk_error(WK_ERR_ARG, "model %s: %s is required for rope scaling %s", path, k, type);
  if (!st && !(r->factor > 0)) st = wk_error(WK_ERR_ARG, "model %s: %s = %g must be > 0", path, k, r->factor);
  if (!st && r->type == WK_ROPE_YARN) st = gguf_int(g, arch, "rope.scaling.original_context_length",
                                                    &r->original_max_position_embeddings, GGUF_REQUIRED);
  return st;
}

wk_status wk_llama_load_gguf(wk_model *m, const char *path) {
  wk_gguf *g = wk_gguf_open(path);
  if (!g) return WK_ERR_IO;
  wk_model_config *c = &m->cfg;
  memset(c, 0, sizeof *c);
  wk_status st = WK_OK;
  const char *arch = NULL;
  if ((st = wk_gguf_get_str(g, "general.architecture", &arch))) goto done;
  snprintf(c->model_type, sizeof c->model_type, "%s", arch);
  if (!strcmp(arch, "llama")) c->arch = WK_ARCH_LLAMA;
  else if (!strcmp(arch, "qwen2")) c->arch = WK_ARCH_QWEN2;
  else {
    st = wk_error(WK_ERR_ARG, "model %s: general.architecture '%s' is not a decoder wick implements (llama, qwen2)",
                  path, arch);
    goto done;
  }
  c->rope_theta = 10000.0;
  c->norm_eps = 1e-5;
  c->max_position_embeddings = 2048;
  c->bos_token_id = c->pad_token_id = -1;
  snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
  c->rope_scaling.factor = 1;
  const int size = GGUF_REQUIRED | GGUF_POSITIVE;
  if ((st = gguf_int(g, arch, "block_count", &c->num_hidden_layers, size)) ||
      (st = gguf_int(g, arch, "embedding_length", &c->hidden_size, size)) ||
      (st = gguf_int(g, arch, "feed_forward_length", &c->intermediate_size, size)) ||
      (st = gguf_int(g, arch, "attention.head_count", &c->num_attention_heads, size)) ||
      (st = gguf_int(g, arch, "context_length", &c->max_position_embeddings, 0)) ||
      (st = gguf_float(g, arch, "attention.layer_norm_rms_epsilon", &c->norm_eps)) ||
      (st = gguf_float(g, arch, "rope.freq_base", &c->rope_theta)))
    goto done;
  c->num_key_value_heads = c->num_attention_heads;
  if ((st = gguf_int(g, arch, "attention.head_count_kv", &c->num_key_value_heads, GGUF_POSITIVE))) goto done;
  if (c->hidden_size % c->num_attention_heads) {
    st = wk_error(WK_ERR_ARG, "model %s: %s.attention.head_count %lld does not divide embedding_length %lld", path,
                  arch, (long long)c->num_attention_heads, (long long)c->hidden_size);
    goto done;
  }
  c->head_dim = c->hidden_size / c->num_attention_heads;
  if ((st = gguf_int(g, arch, "attention.key_length", &c->head_dim, 0))) goto done;
  int64_t rope_dim = c->head_dim;
  if ((st = gguf_int(g, arch, "rope.dimension_count", &rope_dim, 0))) goto done;
  if (rope_dim != c->head_dim) {
    st = wk_error(WK_ERR_ARG, "model %s: %s.rope.dimension_count %lld != head dim %lld (partial RoPE) is not supported",
                  path, arch, (long long)rope_dim, (long long)c->head_dim);
    goto done;
  }
  if ((st = gguf_rope_scaling(g, arch, path, c))) goto done;
  wk_clear_error();
  const wk_gguf_tensor *emb = wk_gguf_find_tensor(g, "token_embd.weight");
  if (!emb || emb->ndim != 2) {
    st = wk_error(WK_ERR_ARG, "model %s: tensor 'token_embd.weight' is missing or not 2-d", path);
    goto done;
  }
  c->vocab_size = emb->shape[0];
  c->qkv_bias = wk_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
  c->tie_word_embeddings = wk_gguf_find_tensor(g, "output.weight") == NULL;
  wk_clear_error();
  int64_t v;
  if (wk_gguf_has_key(g, "tokenizer.ggml.bos_token_id") && !wk_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v))
    c->bos_token_id = v;
  if (wk_gguf_has_key(g, "tokenizer.ggml.eos_token_id") && !wk_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v))
    c->eos_token_ids[c->n_eos++] = v;
  if (wk_gguf_has_key(g, "tokenizer.ggml.padding_token_id") &&
      !wk_gguf_get_int(g, "tokenizer.ggml.padding_token_id", &v))
    c->pad_token_id = v;
  if ((st = check_supported(c, path))) goto done;
  // llama.cpp's converter permutes llama q/k rows for ggml's interleaved (GPT-J) rope;
  // applying that rope to the permuted rows gives the same attention scores as HF's
  // rotate-half on the original rows. Qwen2 files are not permuted (NEOX rope).
  m->rope_interleaved = c->arch == WK_ARCH_LLAMA;
  source s = {.gg = g, .path = path};
  st = load_weights(m, &s, 1);
  m->format = "gguf";
done:
  wk_gguf_close(g);
  return st;
}

// ---- public API ----
static int is_gguf_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  char mg[4] = {0};
  size_t n = fread(mg, 1, 4, f);
  fclose(f);
  return n == 4 && !memcmp(mg, "GGUF", 4);
}

wk_model *wk_model_load(const char *path) {
  if (!path) { wk_error(WK_ERR_ARG, "wk_model_load: path is NULL"); return NULL; }
  struct stat sb;
  if (stat(path, &sb)) {
    wk_error(WK_ERR_IO, "model %s: no such file or directory (expected a model directory or a .gguf file)", path);
    return NULL;
  }
  wk_model *m = calloc(1, sizeof *m);
  if (!m) { wk_error(WK_ERR_OOM, "model %s: out of memory", path); return NULL; }
  wk_status st;
  if (S_ISDIR(sb.st_mode)) st = wk_llama_load_safetensors(m, path);
  else if (is_gguf_file(path)) st = wk_llama_load_gguf(m, path);
  else st = wk_error(WK_ERR_ARG, "model %s: not a directory (config.json + safetensors) or a GGUF file", path);
  if (st) { wk_model_free(m); return NULL; }
  return m;
}

void wk_model_free(wk_model *m) {
  if (!m) return;
  free_weights(m);
  free(m);
}

const wk_model_config *wk_model_get_config(const wk_model *m) { return m ? &m->cfg : NULL; }
const char *wk_model_format(const wk_model *m) { return m ? m->format : NULL; }

// ---- forward ----
// Norm weights, biases and gathered embedding rows widen to f32. A projection's
// weight goes to the matmul as it is stored: quantized blocks and frozen f16/bf16
// matrices are read in place there, so the model never holds an f32 copy.
static wk_tensor *f32(wk_tensor *w) {
  wk_dtype dt = wk_tensor_dtype(w);
  return dt == WK_F32 || wk_dtype_is_quantized(dt) ? w : wk_cast(w, WK_F32);
}

// x[..., in] @ W[out, in]^T + b (a bf16 W multiplies x rounded to bf16; see wk_matmul)
static wk_tensor *linear(wk_tensor *x, wk_tensor *w, wk_tensor *b) {
  wk_tensor *y = wk_matmul_t(x, 0, w, 1);
  return b ? wk_add(y, f32(b)) : y;
}

// The loaders' name tables give every other spelling of a projection: wk_proj's order
// is the tables' from N_Q on.
_Static_assert(N_DOWN - N_Q == WK_PROJ_DOWN && WK_PROJ_Q == 0, "wk_proj follows the name tables");
#define LAYER_PREFIX_HF "model.layers.%d."
#define LAYER_PREFIX_GGUF "blk.%d."

const char *wk_llama_hf_module(wk_proj p) {
  return (unsigned)p < WK_PROJ_COUNT ? hf_names[N_Q + p] + strlen(LAYER_PREFIX_HF) : "unknown";
}

const char *wk_llama_gguf_proj_name(wk_proj p) {
  return (unsigned)p < WK_PROJ_COUNT ? gguf_names[N_Q + p] + strlen(LAYER_PREFIX_GGUF) : "unknown";
}

const char *wk_proj_name(wk_proj p) {
  return (unsigned)p < WK_PROJ_COUNT ? strrchr(hf_names[N_Q + p], '.') + 1 : "unknown";
}

void wk_model_proj_dims(const wk_model *m, wk_proj p, int64_t *out, int64_t *in) {
  const wk_model_config *c = &m->cfg;
  int64_t H = c->hidden_size, F = c->intermediate_size;
  int64_t Q = c->num_attention_heads * c->head_dim, KV = c->num_key_value_heads * c->head_dim;
  const int64_t dims[WK_PROJ_COUNT][2] = {{Q, H}, {KV, H}, {KV, H}, {H, Q}, {F, H}, {F, H}, {H, F}};
  *out = (unsigned)p < WK_PROJ_COUNT ? dims[p][0] : 0;
  *in = (unsigned)p < WK_PROJ_COUNT ? dims[p][1] : 0;
}

wk_tensor **wk_llama_proj_weight(wk_model *m, int64_t layer, wk_proj p) {
  if (!m || layer < 0 || layer >= m->cfg.num_hidden_layers) return NULL;
  wk_llama_layer *L = &m->layers[layer];
  wk_tensor **slots[WK_PROJ_COUNT] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
  return (unsigned)p < WK_PROJ_COUNT ? slots[p] : NULL;
}

void wk_llama_set_lora(wk_model *m, const wk_lora_hook *hook) { m->lora = hook; }

// llama.cpp's converter stores llama q/k rows as reshape(heads, 2, D/2, cols) with the
// middle axes swapped (ggml's interleaved rope); HF order is the inverse.
static wk_tensor *permute_rows(const wk_model *m, wk_proj p, wk_tensor *w, int to_hf) {
  int64_t heads = p == WK_PROJ_Q ? m->cfg.num_attention_heads : m->cfg.num_key_value_heads;
  int64_t rows = wk_dim(w, 0), cols = wk_dim(w, 1), half = rows / heads / 2;
  wk_scope_begin();
  wk_tensor *r = to_hf ? wk_reshape(w, 4, (int64_t[]){heads, half, 2, cols})
                       : wk_reshape(w, 4, (int64_t[]){heads, 2, half, cols});
  r = wk_keep(wk_reshape(wk_contiguous(wk_transpose(r, 1, 2)), 2, (int64_t[]){rows, cols}));
  wk_scope_end();
  return r;
}

wk_tensor *wk_llama_rows_hf(const wk_model *m, wk_proj p, wk_tensor *w, int to_hf) {
  if (!m->rope_interleaved || (p != WK_PROJ_Q && p != WK_PROJ_K)) return wk_tensor_ref(w);
  return permute_rows(m, p, w, to_hf);
}

wk_tensor *wk_llama_rows_gguf(const wk_model *m, wk_proj p, wk_tensor *w) {
  if (m->rope_interleaved || m->cfg.arch != WK_ARCH_LLAMA || (p != WK_PROJ_Q && p != WK_PROJ_K))
    return wk_tensor_ref(w);   // already in GGUF order, or never permuted (qwen2)
  return permute_rows(m, p, w, 0);
}


// splitmix64 finalizer: decorrelates the dropout seeds of layers, projections and steps
static uint64_t mix_seed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Projection p of layer l: linear, plus the active adapter's low-rank update. x is
// flattened to 2-D so the compiler sees x@W^T + s*((x@A^T)@B^T) as its LoRA pattern.
static wk_tensor *proj(const wk_model *m, int64_t l, wk_proj p, wk_tensor *x, wk_tensor *w, wk_tensor *b) {
  const wk_lora_hook *h = m->lora;
  size_t i = (size_t)(l * WK_PROJ_COUNT + p);
  if (!h || !h->A[i] || !h->B[i]) return linear(x, w, b);
  int nd = wk_ndim(x);
  int64_t shape[WK_MAX_DIMS];
  memcpy(shape, wk_shape(x), sizeof(int64_t) * (size_t)nd);
  shape[nd - 1] = wk_dim(w, 0);
  wk_tensor *x2 = wk_reshape(x, 2, (int64_t[]){-1, wk_dim(x, -1)});
  wk_tensor *xa = h->training ? wk_dropout(x2, h->dropout, mix_seed(h->dropout_seed ^ mix_seed(i)), 1) : x2;
  wk_tensor *up = wk_matmul_t(wk_matmul_t(xa, 0, h->A[i], 1), 0, h->B[i], 1);
  wk_tensor *y = wk_add(wk_matmul_t(x2, 0, w, 1), wk_mul_scalar(up, h->scale));
  y = wk_reshape(y, nd, shape);
  return b ? wk_add(y, f32(b)) : y;
}

// [B, T, heads * D] -> [B, heads, T, D]
static wk_tensor *heads_first(wk_tensor *x, int64_t B, int64_t T, int64_t nh, int64_t D) {
  return wk_transpose(wk_reshape(x, 4, (int64_t[]){B, T, nh, D}), 1, 2);
}

static int check_ids(const wk_model *m, wk_tensor *ids) {
  if (!m || !ids) { wk_error(WK_ERR_ARG, "model forward: model or ids is NULL"); return 0; }
  char b[160];
  if (wk_tensor_dtype(ids) != WK_I32 || wk_ndim(ids) != 2 || wk_dim(ids, 1) == 0) {
    wk_error(wk_tensor_dtype(ids) != WK_I32 ? WK_ERR_DTYPE : WK_ERR_SHAPE,
             "model forward: ids must be i32 [B, T] token ids with T > 0, got %s", wk_shape_str(ids, b, sizeof b));
    return 0;
  }
  return 1;
}

// A decode or prefill step through a preallocated cache: where this step's keys go
// and what attention sees, as i32 [1] tensors read at run time, so that every step
// of the same shape builds the same graph and reuses one compiled plan.
// Scaled RoPE's inputs for one forward (inv NULL: default RoPE, the kernel's frequencies).
typedef struct {
  wk_tensor *inv;          // f32 [D/2]
  float attn;              // cos / sin factor (yarn's attention factor)
} rope_in;

// The inverse frequencies at seq_len positions as a tensor on the model's device, or
// NULL with ri->inv NULL for default RoPE (or on failure, with the error set).
static void rope_inputs(const wk_model *m, int64_t seq_len, rope_in *ri) {
  float inv[512];
  int64_t half = m->cfg.head_dim / 2;
  ri->inv = NULL;
  ri->attn = 1.0f;
  if (half > 512) return;
  bool scaled = wk_llama_rope_freqs(&m->cfg, seq_len, inv, &ri->attn);
  const float *div = m->rope_factors ? wk_tensor_data(m->rope_factors) : NULL;
  if (!scaled && !div) return;   // plain RoPE: the kernel's own theta^(-2i/D)
  for (int64_t i = 0; div && i < half; i++) inv[i] /= div[i];
  ri->inv = wk_from_data(1, (int64_t[]){m->cfg.head_dim / 2}, WK_F32, inv);
  wk_device dev = wk_model_device(m);
  if (ri->inv && dev != WK_CPU) ri->inv = wk_to_device(ri->inv, dev);
}

// RoPE on x [B, H, T, D] at positions pos (+ run-time at, when non-NULL) + t.
static wk_tensor *rope(const wk_model *m, wk_tensor *x, int64_t pos, wk_tensor *at, const rope_in *ri) {
  float theta = (float)m->cfg.rope_theta;
  if (ri->inv) return wk_rope_freqs(x, ri->inv, ri->attn, pos, at, m->rope_interleaved);
  return at ? wk_rope_at(x, theta, at, m->rope_interleaved) : wk_rope(x, theta, pos, m->rope_interleaved);
}

typedef struct {
  wk_tensor **k, **v;      // per layer [B, Hkv, capacity, D], written in place
  wk_tensor *rope_pos;     // position of the first new token (RoPE)
  wk_tensor *write_pos;    // cache row it is stored at (behind rope_pos after a sliding window)
  wk_tensor *kv_len;       // rows attention reads: those held plus the new ones
} cache_step;

// The dtype attention runs in without a cache: a half-precision model's own (f16 or
// bf16 weights: q, k and v rounded once after RoPE, as transformers runs such a model,
// and on CUDA the tensor-core kernels instead of f32 CUDA-core ones), else f32. With a
// cache, attention reads keys and values in the cache's dtype (f32 unless asked).
static wk_dtype attention_dtype(const wk_llama_layer *L) {
  wk_dtype dt = wk_tensor_dtype(L->wq);
  return dt == WK_F16 || dt == WK_BF16 ? dt : WK_F32;
}

wk_dtype wk_model_cache_dtype(const wk_model *m) {
  if (!m || !m->layers || !m->cfg.num_hidden_layers || wk_model_device(m) != WK_CUDA) return WK_F32;
  if (!strcmp(wk_model_format(m), "gguf")) return WK_F16;   // llama.cpp's default cache (its blocks became f32)
  return attention_dtype(&m->layers[0]);
}

// One transformer block on x [B, T, H] at positions pos + t (no cache) or through a
// cache (cs non-NULL: the new keys and values are stored, then attention reads the
// cache: a f16 / bf16 / q8_0 cache rounds the new keys too, so attention sees what is stored).
static wk_tensor *block(wk_model *m, int64_t l, wk_tensor *x, int64_t pos, const cache_step *cs, wk_tensor *mask,
                        const rope_in *ri) {
  const wk_model_config *c = &m->cfg;
  int64_t B = wk_dim(x, 0), T = wk_dim(x, 1), D = c->head_dim;
  int64_t Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
  float eps = (float)c->norm_eps;
  const wk_llama_layer *L = &m->layers[l];
  wk_tensor *h = wk_rms_norm(x, f32(L->attn_norm), eps);
  wk_tensor *q = heads_first(proj(m, l, WK_PROJ_Q, h, L->wq, L->bq), B, T, Hq, D);
  wk_tensor *k = heads_first(proj(m, l, WK_PROJ_K, h, L->wk, L->bk), B, T, Hkv, D);
  wk_tensor *v = heads_first(proj(m, l, WK_PROJ_V, h, L->wv, L->bv), B, T, Hkv, D);
  wk_tensor *a;
  q = rope(m, q, pos, cs ? cs->rope_pos : NULL, ri);
  k = rope(m, k, pos, cs ? cs->rope_pos : NULL, ri);
  if (cs) {
    k = wk_set_slice(cs->k[l], k, 2, cs->write_pos);
    v = wk_set_slice(cs->v[l], v, 2, cs->write_pos);
    a = wk_sdpa_kv(q, k, v, mask, cs->kv_len, 1, 0);   // [B, Hq, T, D]
  } else {
    wk_dtype ad = attention_dtype(L);
    a = wk_sdpa(wk_cast(q, ad), wk_cast(k, ad), wk_cast(v, ad), mask, 1, 0);
  }
  // [B, Hq, T, D] -> [B, T, Hq * D]; at T = 1 (decode) the layouts agree: no copy
  a = T == 1 ? wk_reshape(a, 3, (int64_t[]){B, T, Hq * D})
             : wk_reshape(wk_contiguous(wk_transpose(a, 1, 2)), 3, (int64_t[]){B, T, Hq * D});
  x = wk_add(x, proj(m, l, WK_PROJ_O, f32(a), L->wo, L->bo));
  h = wk_rms_norm(x, f32(L->ffn_norm), eps);
  wk_tensor *g = wk_mul(wk_silu(proj(m, l, WK_PROJ_GATE, h, L->w_gate, L->b_gate)),
                        proj(m, l, WK_PROJ_UP, h, L->w_up, L->b_up));
  return wk_add(x, proj(m, l, WK_PROJ_DOWN, g, L->w_down, L->b_down));
}

wk_tensor *wk_llama_embed(wk_model *m, wk_tensor *ids) { return f32(wk_embedding(m->embed, ids)); }
wk_tensor *wk_llama_block(wk_model *m, int64_t l, wk_tensor *x, int64_t pos) {
  rope_in ri;
  rope_inputs(m, pos + wk_dim(x, 1), &ri);
  return block(m, l, x, pos, NULL, NULL, &ri);
}
static wk_tensor *final_norm(wk_model *m, wk_tensor *x) { return wk_rms_norm(x, f32(m->norm), (float)m->cfg.norm_eps); }
wk_tensor *wk_llama_head(wk_model *m, wk_tensor *x) { return linear(final_norm(m, x), m->lm_head, NULL); }
wk_tensor *wk_llama_head_loss(wk_model *m, wk_tensor *x, wk_tensor *targets, int ignore_index) {
  return wk_linear_cross_entropy(final_norm(m, x), m->lm_head, targets, ignore_index, 1);
}

// The hidden states [B, T, H] after the last block.
// seq_len: the positions the sequence spans after this forward (dynamic RoPE scaling).
static wk_tensor *hidden(wk_model *m, wk_tensor *ids, int64_t pos, const cache_step *cs, wk_tensor *mask,
                         int64_t seq_len) {
  rope_in ri;
  rope_inputs(m, seq_len, &ri);
  wk_tensor *x = wk_llama_embed(m, ids);   // [B, T, H]
  for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++) x = block(m, l, x, pos, cs, mask, &ri);
  return x;
}

// last: the head reads only position T - 1 ([B, 1, V]: what generation samples from).
static wk_tensor *forward(wk_model *m, wk_tensor *ids, int64_t pos, const cache_step *cs, wk_tensor *mask, bool last,
                          int64_t seq_len) {
  wk_tensor *x = hidden(m, ids, pos, cs, mask, seq_len);
  if (last && wk_dim(ids, 1) > 1) x = wk_slice(x, 1, wk_dim(ids, 1) - 1, wk_dim(ids, 1), 1);
  return wk_llama_head(m, x);               // [B, T, V]
}

wk_tensor *wk_llama_hidden(wk_model *m, wk_tensor *ids) {
  return check_ids(m, ids) ? hidden(m, ids, 0, NULL, NULL, wk_dim(ids, 1)) : NULL;
}

wk_tensor *wk_model_forward(wk_model *m, wk_tensor *ids, int64_t pos_offset) {
  if (!check_ids(m, ids)) return NULL;
  if (pos_offset < 0) {
    wk_error(WK_ERR_ARG, "model forward: pos_offset %lld must be >= 0", (long long)pos_offset);
    return NULL;
  }
  wk_scope_begin();
  wk_device dev = wk_model_device(m);   // host ids follow the weights
  wk_tensor *logits = wk_keep(forward(m, wk_tensor_device(ids) != dev ? wk_to_device(ids, dev) : ids, pos_offset, NULL, NULL, false,
                                       pos_offset + wk_dim(ids, 1)));
  wk_scope_end();
  return logits ? wk_node_finish(logits) : NULL;   // the caller's scope owns it, like any op's result
}

// ---- KV cache ----
wk_kv_cache *wk_kv_cache_new(const wk_model *m) {
  if (!m) { wk_error(WK_ERR_ARG, "wk_kv_cache_new: model is NULL"); return NULL; }
  wk_kv_cache *c = calloc(1, sizeof *c);
  size_t n = (size_t)m->cfg.num_hidden_layers;
  if (c) {
    c->k = calloc(n, sizeof *c->k);
    c->v = calloc(n, sizeof *c->v);
  }
  if (!c || !c->k || !c->v) {
    wk_kv_cache_free(c);
    wk_error(WK_ERR_OOM, "wk_kv_cache_new: out of memory");
    return NULL;
  }
  c->m = m;
  return c;
}

void wk_kv_cache_release_storage(wk_kv_cache *c) {
  for (int64_t i = 0; c->k && c->v && i < c->m->cfg.num_hidden_layers; i++) {
    wk_tensor_free(c->k[i]);
    wk_tensor_free(c->v[i]);
    c->k[i] = c->v[i] = NULL;
  }
}

// Forgets the contents; the storage stays for the next sequence.
void wk_kv_cache_reset(wk_kv_cache *c) {
  if (!c) return;
  c->len = c->batch = c->shift = 0;
  free(c->pad);   // it described the contents
  c->pad = NULL;
}

void wk_kv_cache_free(wk_kv_cache *c) {
  if (!c) return;
  if (c->m) wk_kv_cache_release_storage(c);
  free(c->pad);
  free(c->k);
  free(c->v);
  free(c);
}

int64_t wk_kv_cache_len(const wk_kv_cache *c) { return c ? c->len : 0; }

int64_t wk_kv_cache_max_context(const wk_kv_cache *c) {
  if (!c) return 0;
  return c->max_ctx > 0 ? c->max_ctx : c->m->cfg.max_position_embeddings > 0 ? c->m->cfg.max_position_embeddings : 2048;
}

// Every layer's [B, Hkv, capacity, D] storage in the cache's dtype on the model's
// device, allocated (uninitialized: rows are written before attention reads them)
// when missing or of another batch, capacity, dtype or device. Only an empty cache
// is reallocated; the caller checked the batch of a non-empty one.
static wk_status kv_storage(wk_kv_cache *c, int64_t B) {
  const wk_model_config *cfg = &c->m->cfg;
  int64_t cap = wk_kv_cache_max_context(c);
  wk_device dev = wk_model_device(c->m);
  wk_tensor *k0 = c->k[0];
  if (k0 && wk_dim(k0, 0) == B && wk_dim(k0, 2) == cap && wk_tensor_dtype(k0) == c->dtype && wk_tensor_device(k0) == dev)
    return WK_OK;
  wk_kv_cache_release_storage(c);
  int64_t shape[4] = {B, cfg->num_key_value_heads, cap, cfg->head_dim};
  for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
    c->k[i] = wk_keep(wk_empty_on(4, shape, c->dtype, dev));
    c->v[i] = wk_keep(wk_empty_on(4, shape, c->dtype, dev));
    if (!c->k[i] || !c->v[i]) {
      wk_kv_cache_release_storage(c);
      return wk_error(WK_ERR_OOM, "KV cache: out of memory for %lld layers of [%lld, %lld, %lld, %lld] %s", (long long)cfg->num_hidden_layers,
                      (long long)B, (long long)shape[1], (long long)cap, (long long)shape[3], wk_dtype_name(c->dtype));
    }
  }
  return WK_OK;
}

// Left-padded batches (wk_kv_cache_set_padding): an additive [B, 1, 1, capacity] mask
// that hides row b's first pad[b] keys (the same shape every step: the plan is reused).
// A padding query sees no key at all: wk_sdpa gives such rows 0, so nothing non-finite
// reaches the later layers.
static wk_tensor *pad_mask(const wk_kv_cache *c, int64_t cap) {
  if (!c->pad) return NULL;
  int64_t B = c->pad_batch;
  float *v = malloc((size_t)(B * cap) * sizeof *v);
  if (!v) { wk_error(WK_ERR_OOM, "model forward: out of memory"); return NULL; }
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < cap; s++) v[b * cap + s] = s < c->pad[b] ? -INFINITY : 0.0f;
  wk_tensor *t = wk_from_data(4, (int64_t[]){B, 1, 1, cap}, WK_F32, v);
  free(v);
  return t;
}

// One i32 value on dev (a run-time position).
static wk_tensor *scalar_i32(int64_t v, wk_device dev) {
  int32_t x = (int32_t)v;
  wk_tensor *t = wk_from_data(1, (int64_t[]){1}, WK_I32, &x);
  return t && dev != WK_CPU ? wk_to_device(t, dev) : t;
}

static bool check_cache_fits(const wk_model *m, wk_tensor *ids, const wk_kv_cache *c) {
  if (!c || c->m != m) { wk_error(WK_ERR_ARG, "model forward: the cache is NULL or belongs to another model"); return false; }
  if (c->pad && wk_dim(ids, 0) != c->pad_batch) {
    wk_error(WK_ERR_SHAPE, "model forward: ids have batch %lld but the cache's padding is for batch %lld",
             (long long)wk_dim(ids, 0), (long long)c->pad_batch);
    return false;
  }
  if (c->len && wk_dim(ids, 0) != c->batch) {
    wk_error(WK_ERR_SHAPE, "model forward: ids have batch %lld but the cache holds batch %lld",
             (long long)wk_dim(ids, 0), (long long)c->batch);
    return false;
  }
  int64_t cap = wk_kv_cache_max_context(c), T = wk_dim(ids, 1);
  if (c->len + T > cap) {
    wk_error(WK_ERR_SHAPE, "model forward: the KV cache holds %lld positions and %lld more exceed its maximum context of "
             "%lld (wk_kv_cache_set_max_context; or a sliding window: wk_kv_cache_drop_oldest)",
             (long long)c->len, (long long)T, (long long)cap);
    return false;
  }
  return true;
}

// eval = false: the logits stay lazy and the cache counts the positions at once (the
// caller evaluates, and cuts the cache back if that fails).
static wk_tensor *forward_cached(wk_model *m, wk_tensor *ids, wk_kv_cache *c, bool last, bool eval) {
  if (!check_ids(m, ids) || !check_cache_fits(m, ids, c)) return NULL;
  int64_t B = wk_dim(ids, 0), T = wk_dim(ids, 1), cap = wk_kv_cache_max_context(c);
  if (kv_storage(c, B)) return NULL;
  wk_device dev = wk_model_device(m);   // host ids and masks follow the weights
  wk_scope_begin();
  // positions go on after dropped ones (wk_kv_cache_drop_oldest): RoPE sees the distances
  cache_step cs = {c->k, c->v, scalar_i32(c->len + c->shift, dev), scalar_i32(c->len, dev), scalar_i32(c->len + T, dev)};
  wk_tensor *mask = pad_mask(c, cap);
  if (mask && dev != WK_CPU) mask = wk_to_device(mask, dev);
  wk_tensor *x = wk_tensor_device(ids) != dev ? wk_to_device(ids, dev) : ids;
  wk_tensor *logits = c->pad && !mask ? NULL : forward(m, x, 0, &cs, mask, last, c->shift + c->len + T);
  bool ok = logits && (!eval || wk_eval(1, &logits) == WK_OK);
  if (ok) {
    c->batch = B;
    c->len += T;
    wk_keep(logits);
  }
  wk_scope_end();
  return ok ? wk_node_finish(logits) : NULL;
}

wk_tensor *wk_model_forward_cached(wk_model *m, wk_tensor *ids, wk_kv_cache *c) {
  return forward_cached(m, ids, c, false, true);
}
wk_tensor *wk_model_forward_cached_last(wk_model *m, wk_tensor *ids, wk_kv_cache *c) {
  return forward_cached(m, ids, c, true, true);
}
wk_tensor *wk_llama_forward_step(wk_model *m, wk_tensor *ids, wk_kv_cache *c) {
  return forward_cached(m, ids, c, true, false);
}
