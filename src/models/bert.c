// BERT encoder and the sentence-embedding pipeline (embed.h), as transformers'
// BertModel and sentence-transformers' Pooling / Normalize modules compute them.
// Shape legend: B = batch, T = tokens (padded), D = hidden, H = heads, Dh = D / H,
// F = intermediate size.
#include "wick/embed.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "wick/io.h"
#include "wick/model.h"
#include "wick/ops.h"

#define SIDE_FILE_MAX ((size_t)16 << 20)
#define EMBED_BATCH 32   // texts per forward pass in wk_embed

typedef struct {
  wk_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b, *ln1_w, *ln1_b;
  wk_tensor *i_w, *i_b, *f_w, *f_b, *ln2_w, *ln2_b;
} bert_layer;

struct wk_embedder {
  wk_model_config cfg;
  wk_tokenizer *tok;
  wk_tensor *word, *pos, *type_row, *emb_ln_w, *emb_ln_b;  // type_row: token type 0, [1, D]
  bert_layer *layers;
  int64_t n_layers, max_len;
  int32_t pad_id;
  wk_pooling pooling;
  int normalize;
  int gelu_tanh;
};

// ---- small file helpers ----
static char *join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  size_t k = a;
  if (a && dir[a - 1] != '/') p[k++] = '/';
  memcpy(p + k, name, b + 1);
  return p;
}

static int file_exists(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  fclose(f);
  return 1;
}

// Parses dir/name if it exists: *doc = NULL (status OK) when absent.
static wk_status load_optional_json(const char *dir, const char *name, wk_json **doc) {
  *doc = NULL;
  char *path = join(dir, name);
  if (!path) return wk_error(WK_ERR_OOM, "out of memory");
  wk_status s = WK_OK;
  if (file_exists(path)) {
    size_t len;
    char *text = wk_read_file(path, SIDE_FILE_MAX, &len);
    if (!text) s = WK_ERR_IO;
    else {
      *doc = wk_json_parse(text, len, path, NULL);
      if (!*doc) s = WK_ERR_IO;
      free(text);
    }
  }
  free(path);
  return s;
}

// ---- weights ----
// The tensor prefix + name as f32, checked against the expected shape.
static wk_tensor *weight(wk_st_file *f, const char *file, const char *prefix, const char *name,
                         int ndim, int64_t d0, int64_t d1) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  if (wk_st_find(f, full) < 0) {
    wk_error(WK_ERR_IO, "%s: tensor '%s' is missing (is this a BERT checkpoint?)", file, full);
    return NULL;
  }
  wk_tensor *t = wk_st_get(f, full);
  if (!t) return NULL;
  int64_t want[2] = {d0, d1};
  int ok = wk_ndim(t) == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = wk_dim(t, i) == want[i];
  if (!ok) {
    char got[64], exp[64];
    wk_error(WK_ERR_SHAPE, "%s: tensor '%s' has shape %s, config.json implies %s", file, full,
             wk_shape_str(t, got, sizeof got), wk_fmt_shape(ndim, want, exp, sizeof exp));
    wk_tensor_free(t);
    return NULL;
  }
  if (wk_tensor_dtype(t) != WK_F32) {  // f16 / bf16 checkpoints: converted once, here
    wk_tensor *c = wk_cast(t, WK_F32);
    wk_tensor_free(t);
    if (!c || wk_eval(1, &c)) { wk_tensor_free(c); return NULL; }
    t = c;
  }
  // The embedder owns its weights, whatever scope the caller is in, and never writes
  // them: frozen, the GEMM packs each matrix once instead of on every call.
  if (wk_tensor_freeze(t)) { wk_tensor_free(t); return NULL; }
  return wk_keep(t);
}

static void free_layer(bert_layer *l) {
  wk_tensor **p = (wk_tensor **)l;
  for (size_t i = 0; i < sizeof *l / sizeof *p; i++) wk_tensor_free(p[i]);
}

static wk_status load_weights(wk_embedder *e, const char *dir) {
  wk_st_file *f = wk_st_open(dir);
  if (!f) return WK_ERR_IO;
  char *file = join(dir, "model.safetensors");
  const char *fname = file ? file : dir;
  const char *prefix = "";
  static const char *const prefixes[] = {"", "bert.", "model.", "0.auto_model."};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    char n[128];
    snprintf(n, sizeof n, "%sembeddings.word_embeddings.weight", prefixes[i]);
    if (wk_st_find(f, n) >= 0) { prefix = prefixes[i]; break; }
  }
  const wk_model_config *c = &e->cfg;
  int64_t D = c->hidden_size, F = c->intermediate_size;
  wk_status s = WK_OK;
  e->word = weight(f, fname, prefix, "embeddings.word_embeddings.weight", 2, c->vocab_size, D);
  e->pos = weight(f, fname, prefix, "embeddings.position_embeddings.weight", 2,
                  c->max_position_embeddings, D);
  wk_tensor *types = weight(f, fname, prefix, "embeddings.token_type_embeddings.weight", 2,
                            c->type_vocab_size, D);
  e->type_row = types ? wk_keep(wk_slice(types, 0, 0, 1, 1)) : NULL;  // every token has type 0
  wk_tensor_free(types);
  e->emb_ln_w = weight(f, fname, prefix, "embeddings.LayerNorm.weight", 1, D, 0);
  e->emb_ln_b = weight(f, fname, prefix, "embeddings.LayerNorm.bias", 1, D, 0);
  if (!e->word || !e->pos || !e->type_row || !e->emb_ln_w || !e->emb_ln_b) s = WK_ERR_IO;
  e->layers = calloc((size_t)e->n_layers, sizeof *e->layers);
  if (!s && !e->layers) s = wk_error(WK_ERR_OOM, "out of memory");
  for (int64_t i = 0; !s && i < e->n_layers; i++) {
    bert_layer *l = &e->layers[i];
    char b[96];
#define W(dst, name, nd, a0, a1)                                                      \
  do {                                                                                \
    snprintf(b, sizeof b, "encoder.layer.%lld.%s", (long long)i, name);               \
    if (!s && !(l->dst = weight(f, fname, prefix, b, nd, a0, a1))) s = WK_ERR_IO;     \
  } while (0)
    W(q_w, "attention.self.query.weight", 2, D, D);
    W(q_b, "attention.self.query.bias", 1, D, 0);
    W(k_w, "attention.self.key.weight", 2, D, D);
    W(k_b, "attention.self.key.bias", 1, D, 0);
    W(v_w, "attention.self.value.weight", 2, D, D);
    W(v_b, "attention.self.value.bias", 1, D, 0);
    W(o_w, "attention.output.dense.weight", 2, D, D);
    W(o_b, "attention.output.dense.bias", 1, D, 0);
    W(ln1_w, "attention.output.LayerNorm.weight", 1, D, 0);
    W(ln1_b, "attention.output.LayerNorm.bias", 1, D, 0);
    W(i_w, "intermediate.dense.weight", 2, F, D);
    W(i_b, "intermediate.dense.bias", 1, F, 0);
    W(f_w, "output.dense.weight", 2, D, F);
    W(f_b, "output.dense.bias", 1, D, 0);
    W(ln2_w, "output.LayerNorm.weight", 1, D, 0);
    W(ln2_b, "output.LayerNorm.bias", 1, D, 0);
#undef W
  }
  free(file);
  wk_st_close(f);
  return s;
}

// ---- sentence-transformers side files ----
static wk_status load_pooling(wk_embedder *e, const char *dir) {
  e->pooling = WK_POOL_MEAN;
  e->normalize = 0;
  wk_json *mods = NULL;
  wk_status s = load_optional_json(dir, "modules.json", &mods);
  if (s || !mods) return s;
  char pool_dir[256] = "";
  if (!wk_json_is(mods, WK_JSON_ARRAY)) {
    wk_json_free(mods);
    return wk_error(WK_ERR_IO, "%s/modules.json: expected an array of modules", dir);
  }
  for (size_t i = 0; !s && i < wk_json_len(mods); i++) {
    const wk_json *m = wk_json_at(mods, i);
    const char *type = wk_json_str(wk_json_get(m, "type"), "");
    const char *dot = strrchr(type, '.');
    const char *cls = dot ? dot + 1 : type;
    if (!strcmp(cls, "Transformer")) continue;
    if (!strcmp(cls, "Normalize")) { e->normalize = 1; continue; }
    if (!strcmp(cls, "Pooling")) {
      snprintf(pool_dir, sizeof pool_dir, "%s", wk_json_str(wk_json_get(m, "path"), "1_Pooling"));
      continue;
    }
    s = wk_error(WK_ERR_IO, "%s/modules.json: module %zu has type '%s', which wick doesn't "
                 "implement (Transformer, Pooling and Normalize are supported)", dir, i, type);
  }
  wk_json_free(mods);
  if (s || !pool_dir[0]) return s;
  char *pd = join(dir, pool_dir);
  if (!pd) return wk_error(WK_ERR_OOM, "out of memory");
  wk_json *pc = NULL;
  s = load_optional_json(pd, "config.json", &pc);
  // sentence-transformers fails without it; a default here could pool a CLS model by mean
  if (!s && !pc)
    s = wk_error(WK_ERR_IO, "%s/modules.json: the Pooling module's %s/config.json is missing", dir, pd);
  if (!s && pc) {
    int cls = wk_json_bool(wk_json_get(pc, "pooling_mode_cls_token"), false);
    int mean = wk_json_bool(wk_json_get(pc, "pooling_mode_mean_tokens"), false);
    int other = wk_json_bool(wk_json_get(pc, "pooling_mode_max_tokens"), false) +
                wk_json_bool(wk_json_get(pc, "pooling_mode_mean_sqrt_len_tokens"), false) +
                wk_json_bool(wk_json_get(pc, "pooling_mode_weightedmean_tokens"), false) +
                wk_json_bool(wk_json_get(pc, "pooling_mode_lasttoken"), false);
    const char *mode = wk_json_str(wk_json_get(pc, "pooling_mode"), NULL);
    if (mode) { cls = !strcmp(mode, "cls"); mean = !strcmp(mode, "mean"); other = !cls && !mean; }
    if (other || cls + mean != 1)
      s = wk_error(WK_ERR_IO, "%s/config.json: pooling must be exactly one of mean or cls "
                   "tokens (max, mean_sqrt_len, weightedmean and lasttoken are not supported)", pd);
    else e->pooling = cls ? WK_POOL_CLS : WK_POOL_MEAN;
  }
  wk_json_free(pc);
  free(pd);
  return s;
}

// A length limit from a config file: absent or null means none (0); otherwise a positive
// number, an integer where `whole` (tokenizer_config.json's "no limit" is often 1e30).
// Anything else is an error naming the file, the key and the value: ignoring it would
// embed at the model's full length.
static wk_status read_limit(const wk_json *j, const char *dir, const char *file, const char *key, bool whole,
                            double *out) {
  const wk_json *v = wk_json_get(j, key);
  *out = 0;
  if (!v || wk_json_is(v, WK_JSON_NULL)) return WK_OK;
  if (wk_json_is(v, WK_JSON_NUMBER) && v->d > 0 && (!whole || v->is_int)) {
    *out = v->d;
    return WK_OK;
  }
  char what[96];
  const char *t = wk_json_type_name(v);
  if (wk_json_is(v, WK_JSON_NUMBER)) snprintf(what, sizeof what, "%.17g", v->d);
  else if (wk_json_is(v, WK_JSON_STRING)) snprintf(what, sizeof what, "a string (\"%.40s\")", v->s);
  else snprintf(what, sizeof what, "%s %s", strchr("aeiou", t[0]) ? "an" : "a", t);
  return wk_error(WK_ERR_IO, "%s/%s: %s is %s; it must be a positive %s (or null)", dir, file, key, what,
                  whole ? "integer" : "number");
}

// sentence_bert_config.json's max_seq_length (null: sentence-transformers takes the
// tokenizer's limit), then tokenizer_config.json's model_max_length, within the model's.
static wk_status load_max_len(wk_embedder *e, const char *dir) {
  e->max_len = e->cfg.max_position_embeddings;
  const char *files[2] = {"sentence_bert_config.json", "tokenizer_config.json"};
  const char *keys[2] = {"max_seq_length", "model_max_length"};
  for (int k = 0; k < 2; k++) {
    wk_json *j = NULL;
    double lim = 0;
    wk_status s = load_optional_json(dir, files[k], &j);
    if (!s) s = read_limit(j, dir, files[k], keys[k], k == 0, &lim);
    wk_json_free(j);
    if (s) return s;
    if (lim >= (k ? 2 : 1) && lim < (double)e->max_len) e->max_len = (int64_t)lim;
  }
  return WK_OK;
}

wk_embedder *wk_embedder_load(const char *dir) {
  if (!dir) { wk_error(WK_ERR_ARG, "embedder_load: dir is NULL"); return NULL; }
  if (!wk_is_dir(dir)) {
    wk_error(WK_ERR_IO, "embedder_load: '%s' is not a directory (expected a model folder with "
             "config.json, model.safetensors and tokenizer.json)", dir);
    return NULL;
  }
  wk_embedder *e = calloc(1, sizeof *e);
  if (!e) { wk_error(WK_ERR_OOM, "out of memory"); return NULL; }
  wk_status s = wk_model_config_load(dir, &e->cfg);
  const wk_model_config *c = &e->cfg;
  if (!s && c->arch != WK_ARCH_BERT)
    s = wk_error(WK_ERR_IO, "%s/config.json: model_type '%s' is not an encoder wick can embed "
                 "with (expected \"bert\")", dir, c->model_type);
  if (!s && c->position_embedding_type[0] && strcmp(c->position_embedding_type, "absolute"))
    s = wk_error(WK_ERR_IO, "%s/config.json: position_embedding_type '%s' is not supported "
                 "(only \"absolute\")", dir, c->position_embedding_type);
  if (!s) {
    if (!strcmp(c->hidden_act, "gelu")) e->gelu_tanh = 0;
    else if (!strcmp(c->hidden_act, "gelu_new") || !strcmp(c->hidden_act, "gelu_pytorch_tanh"))
      e->gelu_tanh = 1;
    else s = wk_error(WK_ERR_IO, "%s/config.json: hidden_act '%s' is not supported for BERT "
                      "(gelu, gelu_new, gelu_pytorch_tanh)", dir, c->hidden_act);
  }
  if (!s && (c->type_vocab_size < 1 || c->max_position_embeddings < 2 || c->num_hidden_layers < 1))
    s = wk_error(WK_ERR_IO, "%s/config.json: type_vocab_size, max_position_embeddings and "
                 "num_hidden_layers must be positive", dir);
  e->n_layers = c->num_hidden_layers;
  e->pad_id = c->pad_token_id >= 0 ? (int32_t)c->pad_token_id : 0;
  if (!s) s = load_weights(e, dir);
  if (!s) {
    char *tp = join(dir, "tokenizer.json");
    if (!tp) s = wk_error(WK_ERR_OOM, "out of memory");
    else if (!(e->tok = wk_tokenizer_load_json(tp))) s = WK_ERR_IO;
    else if ((int64_t)wk_tokenizer_vocab_size(e->tok) > c->vocab_size)
      s = wk_error(WK_ERR_IO, "%s: %zu token ids but config.json's vocab_size is %lld", tp,
                   wk_tokenizer_vocab_size(e->tok), (long long)c->vocab_size);
    free(tp);
  }
  if (!s) s = load_pooling(e, dir);
  if (!s) s = load_max_len(e, dir);
  if (s) { wk_embedder_free(e); return NULL; }
  return e;
}

void wk_embedder_free(wk_embedder *e) {
  if (!e) return;
  if (e->layers)
    for (int64_t i = 0; i < e->n_layers; i++) free_layer(&e->layers[i]);
  free(e->layers);
  wk_tensor_free(e->word);
  wk_tensor_free(e->pos);
  wk_tensor_free(e->type_row);
  wk_tensor_free(e->emb_ln_w);
  wk_tensor_free(e->emb_ln_b);
  wk_tokenizer_free(e->tok);
  free(e);
}

// Weight k of the embedder: the five embedding tensors, then each layer's.
static wk_tensor **weight_slot(wk_embedder *e, size_t k) {
  wk_tensor **head[5] = {&e->word, &e->pos, &e->type_row, &e->emb_ln_w, &e->emb_ln_b};
  size_t per = sizeof(bert_layer) / sizeof(wk_tensor *);
  return k < 5 ? head[k] : (wk_tensor **)&e->layers[(k - 5) / per] + (k - 5) % per;
}

// Replaces every weight that conv maps (conv returns a new lazy tensor, or the same
// pointer to keep it), all or nothing: on failure the embedder keeps what it had.
typedef wk_tensor *(*weight_conv)(wk_tensor *w, size_t slot, int arg);

static wk_status replace_weights(wk_embedder *e, weight_conv conv, int arg, const char *what) {
  size_t n = 5 + sizeof(bert_layer) / sizeof(wk_tensor *) * (size_t)e->n_layers;
  wk_tensor **next = calloc(n, sizeof *next);
  if (!next) return wk_error(WK_ERR_OOM, "%s: out of memory", what);
  wk_status s = WK_OK;
  for (size_t k = 0; k < n && !s; k++) {
    wk_tensor *w = *weight_slot(e, k);
    if (!w) continue;
    wk_scope_begin();
    wk_tensor *c = conv(w, k, arg);
    next[k] = c == w ? wk_tensor_ref(w) : wk_keep(c);
    wk_scope_end();
    s = next[k] ? wk_eval(1, &next[k]) : WK_ERR_STATE;  // the op said why
    if (!s) s = wk_tensor_freeze(next[k]);
  }
  for (size_t k = 0; k < n; k++) {
    wk_tensor **slot = weight_slot(e, k);
    if (s) { wk_tensor_free(next[k]); continue; }
    wk_tensor_free(*slot);
    *slot = next[k];
  }
  free(next);
  return s;
}

static wk_tensor *conv_device(wk_tensor *w, size_t slot, int dev) {
  (void)slot;
  return wk_to_device(w, (wk_device)dev);
}

wk_status wk_embedder_to_device(wk_embedder *e, wk_device dev) {
  if (!e) return wk_error(WK_ERR_ARG, "embedder_to_device: embedder is NULL");
  if (!wk_device_available(dev)) { // the backend said why (no driver, say)
    char why[512];
    snprintf(why, sizeof why, "%s", wk_last_error());
    return wk_error(WK_ERR_DEVICE, "embedder_to_device: %s is not available here: %s", wk_device_name(dev), why);
  }
  wk_status s = replace_weights(e, conv_device, (int)dev, "embedder_to_device");
  return s ? WK_ERR_DEVICE : WK_OK;
}

// The encoder's projection matrices (q, k, v, attention output, FFN in and out): the
// 2-d weights of the layers; embeddings, norms and biases stay f32.
static wk_tensor *conv_dtype(wk_tensor *w, size_t slot, int dt) {
  bool matrix = slot >= 5 && wk_ndim(w) == 2;
  return matrix && wk_tensor_dtype(w) != (wk_dtype)dt ? wk_cast(w, (wk_dtype)dt) : w;
}

wk_status wk_embedder_set_weight_dtype(wk_embedder *e, wk_dtype dt) {
  if (!e) return wk_error(WK_ERR_ARG, "embedder_set_weight_dtype: embedder is NULL");
  if (dt != WK_F32 && dt != WK_BF16 && dt != WK_F16)
    return wk_error(WK_ERR_ARG, "embedder_set_weight_dtype: %s is not f32, bf16 or f16", wk_dtype_name(dt));
  return replace_weights(e, conv_dtype, (int)dt, "embedder_set_weight_dtype");
}

wk_dtype wk_embedder_weight_dtype(const wk_embedder *e) {
  return e && e->n_layers ? wk_tensor_dtype(e->layers[0].q_w) : WK_F32;
}

wk_device wk_embedder_device(const wk_embedder *e) { return e && e->word ? wk_tensor_device(e->word) : WK_CPU; }

int64_t wk_embedder_dim(const wk_embedder *e) { return e ? e->cfg.hidden_size : 0; }
int64_t wk_embedder_max_length(const wk_embedder *e) { return e ? e->max_len : 0; }
wk_pooling wk_embedder_pooling(const wk_embedder *e) { return e ? e->pooling : WK_POOL_MEAN; }
int wk_embedder_normalizes(const wk_embedder *e) { return e ? e->normalize : 0; }
const wk_tokenizer *wk_embedder_tokenizer(const wk_embedder *e) { return e ? e->tok : NULL; }

wk_status wk_embedder_tokenize(const wk_embedder *e, const char *text, int32_t **ids, int64_t *n) {
  if (!e || !text || !ids || !n) return wk_error(WK_ERR_ARG, "embedder_tokenize: NULL argument");
  size_t cnt;
  wk_status s = wk_tokenizer_encode(e->tok, text, strlen(text), true, ids, &cnt);
  if (s) return s;
  if ((int64_t)cnt > e->max_len) {
    // HF truncates the text's tokens and then adds the specials: keep a final [SEP].
    if (cnt && wk_tokenizer_is_special(e->tok, (*ids)[cnt - 1]))
      (*ids)[e->max_len - 1] = (*ids)[cnt - 1];
    cnt = (size_t)e->max_len;
  }
  *n = (int64_t)cnt;
  return WK_OK;
}

// ---- the encoder graph ----
// y = x @ W^T + b (HF Linear layout: W[out, in]); x [N, in].
static wk_tensor *linear(wk_tensor *x, wk_tensor *w, wk_tensor *b) {
  return wk_add(wk_matmul_t(x, 0, w, 1), b);
}

// Ends the scope opened by the caller and returns x reshaped (a view) as a new
// reference that belongs to the enclosing scope, as the ops' results do.
static wk_tensor *leave_scope(wk_tensor *x, int ndim, const int64_t *shape) {
  wk_keep(x);
  wk_scope_end();
  wk_tensor *out = wk_reshape(x, ndim, shape);
  wk_tensor_free(x);
  return out;
}

// [B*T, D] -> [B, H, T, Dh]
static wk_tensor *heads(wk_tensor *x, int64_t B, int64_t T, int64_t H, int64_t Dh) {
  return wk_permute(wk_reshape(x, 4, (int64_t[]){B, T, H, Dh}), (int[]){0, 2, 1, 3});
}

// The layers over x [N, D], one row per token. Padded (to_pad NULL): the rows are
// the B x T grid itself. Packed: the rows are only the real tokens, back to back;
// attention alone needs the grid, so its inputs are gathered into it (to_pad [B*T]:
// the row each grid slot reads; a padding slot reads any row, the mask hides it)
// and its output gathered back (from_pad [N]: each token's grid slot). Every
// projection and FFN then skips the padding, ~10% of the rows at 32 sentences.
static wk_tensor *encoder_layers(wk_embedder *e, wk_tensor *x, int64_t B, int64_t T, wk_tensor *mask,
                                 wk_tensor *to_pad, wk_tensor *from_pad) {
  const wk_model_config *c = &e->cfg;
  int64_t D = c->hidden_size, H = c->num_attention_heads, Dh = D / H;
  float eps = (float)c->norm_eps;
  for (int64_t i = 0; i < e->n_layers; i++) {
    const bert_layer *l = &e->layers[i];
    wk_tensor *q = linear(x, l->q_w, l->q_b), *k = linear(x, l->k_w, l->k_b), *v = linear(x, l->v_w, l->v_b);
    if (to_pad) q = wk_embedding(q, to_pad), k = wk_embedding(k, to_pad), v = wk_embedding(v, to_pad);
    wk_tensor *a = wk_sdpa(heads(q, B, T, H, Dh), heads(k, B, T, H, Dh), heads(v, B, T, H, Dh), mask, 0,
                           0.0f);                                        // [B, H, T, Dh]
    a = wk_reshape(wk_contiguous(wk_permute(a, (int[]){0, 2, 1, 3})), 2, (int64_t[]){B * T, D});
    if (from_pad) a = wk_embedding(a, from_pad);
    x = wk_layer_norm(wk_add(linear(a, l->o_w, l->o_b), x), l->ln1_w, l->ln1_b, eps);  // post-LN
    wk_tensor *h = linear(x, l->i_w, l->i_b);                            // [N, F]
    h = e->gelu_tanh ? wk_gelu_tanh(h) : wk_gelu(h);
    x = wk_layer_norm(wk_add(linear(h, l->f_w, l->f_b), x), l->ln2_w, l->ln2_b, eps);
  }
  return x;
}

// word + position + token type 0, then LayerNorm; ids and pos of any shape.
static wk_tensor *embeddings(wk_embedder *e, wk_tensor *ids, wk_tensor *pos) {
  wk_tensor *x = wk_add(wk_add(wk_embedding(e->word, ids), pos), e->type_row);
  return wk_layer_norm(x, e->emb_ln_w, e->emb_ln_b, (float)e->cfg.norm_eps);
}

// Each row's length must be in [1, T]: a row of none pools nothing, and a length past T
// would count tokens that are not there.
static wk_status check_lengths(const char *who, wk_tensor *lengths, int64_t B, int64_t T) {
  float *len = malloc(sizeof(float) * (size_t)(B ? B : 1));
  wk_status st = len ? wk_tensor_read_f32(lengths, len, B) : wk_error(WK_ERR_OOM, "%s: out of memory", who);
  for (int64_t b = 0; !st && b < B; b++)
    if (!(len[b] >= 1 && len[b] <= (float)T))
      st = wk_error(WK_ERR_ARG, "%s: lengths[%lld] = %g is outside [1, %lld]", who, (long long)b, (double)len[b],
                    (long long)T);
  free(len);
  return st;
}

wk_tensor *wk_embedder_forward(wk_embedder *e, wk_tensor *ids, wk_tensor *lengths) {
  if (!e || !ids || !lengths) { wk_error(WK_ERR_ARG, "embedder_forward: NULL argument"); return NULL; }
  if (wk_ndim(ids) != 2 || wk_tensor_dtype(ids) != WK_I32 || wk_ndim(lengths) != 1 ||
      wk_tensor_dtype(lengths) != WK_I32 || wk_dim(lengths, 0) != wk_dim(ids, 0)) {
    char a[64], b[64];
    wk_error(WK_ERR_SHAPE, "embedder_forward: expected ids i32[B, T] and lengths i32[B], got "
             "ids %s %s and lengths %s %s", wk_dtype_name(wk_tensor_dtype(ids)),
             wk_shape_str(ids, a, sizeof a), wk_dtype_name(wk_tensor_dtype(lengths)),
             wk_shape_str(lengths, b, sizeof b));
    return NULL;
  }
  int64_t B = wk_dim(ids, 0), T = wk_dim(ids, 1), D = e->cfg.hidden_size;
  if (T < 1 || T > e->cfg.max_position_embeddings) {
    wk_error(WK_ERR_SHAPE, "embedder_forward: %lld tokens per row; the model takes 1 to %lld",
             (long long)T, (long long)e->cfg.max_position_embeddings);
    return NULL;
  }
  if (check_lengths("embedder_forward", lengths, B, T)) return NULL;
  wk_scope_begin();
  wk_tensor *x = wk_reshape(embeddings(e, ids, wk_slice(e->pos, 0, 0, T, 1)), 2, (int64_t[]){B * T, D});
  x = encoder_layers(e, x, B, T, wk_padding_mask(lengths, T), NULL, NULL);
  return leave_scope(x, 3, (int64_t[]){B, T, D});
}

// The B texts of one wk_embed batch, packed: their N tokens back to back, and the
// maps between those rows and the B x T grid (see encoder_layers).
typedef struct {
  int32_t *ids, *pos, *to_pad, *from_pad, *lens;
} packed_batch;

// Hidden states [B, T, D] on the grid (padding rows hold a copy of some token: the
// pooling's mask drops them), from the packed rows.
static wk_tensor *forward_packed(wk_embedder *e, const packed_batch *p, int64_t B, int64_t T, int64_t N,
                                 wk_tensor *tlen) {
  int64_t D = e->cfg.hidden_size;
  wk_device dev = wk_embedder_device(e);
  wk_tensor *t[4] = {wk_from_data(1, &N, WK_I32, p->ids), wk_from_data(1, &N, WK_I32, p->pos),
                     wk_from_data(1, (int64_t[]){B * T}, WK_I32, p->to_pad),
                     wk_from_data(1, &N, WK_I32, p->from_pad)};
  for (int i = 0; i < 4; i++)
    if (dev != WK_CPU) t[i] = wk_to_device(t[i], dev);  // index tensors follow the weights
  wk_tensor *x = embeddings(e, t[0], wk_embedding(e->pos, t[1]));
  x = encoder_layers(e, x, B, T, wk_padding_mask(tlen, T), t[2], t[3]);
  return wk_reshape(wk_embedding(x, t[2]), 3, (int64_t[]){B, T, D});
}

wk_tensor *wk_embedder_pool(wk_embedder *e, wk_tensor *hidden, wk_tensor *lengths) {
  if (!e || !hidden || !lengths) { wk_error(WK_ERR_ARG, "embedder_pool: NULL argument"); return NULL; }
  if (wk_ndim(hidden) != 3 || wk_ndim(lengths) != 1 || wk_dim(lengths, 0) != wk_dim(hidden, 0)) {
    char a[64], b[64];
    wk_error(WK_ERR_SHAPE, "embedder_pool: expected hidden [B, T, D] and lengths [B], got %s "
             "and %s", wk_shape_str(hidden, a, sizeof a), wk_shape_str(lengths, b, sizeof b));
    return NULL;
  }
  int64_t B = wk_dim(hidden, 0), T = wk_dim(hidden, 1);
  if (check_lengths("embedder_pool", lengths, B, T)) return NULL;
  wk_scope_begin();
  wk_tensor *p;
  if (e->pooling == WK_POOL_CLS) {
    p = wk_squeeze(wk_slice(hidden, 1, 0, 1, 1), 1);
  } else {
    // m[b, t, 0] = t < lengths[b]; mean = sum(h * m) / max(sum(m), 1e-9) as sentence-transformers
    // (the arange meets the lengths before any reshape: a pending source follows their device)
    wk_tensor *len = wk_reshape(wk_cast(lengths, WK_F32), 2, (int64_t[]){B, 1});
    wk_tensor *m = wk_reshape(wk_lt(wk_arange(0, (double)T, 1, WK_F32), len), 3, (int64_t[]){B, T, 1});
    wk_tensor *sum = wk_sum(wk_mul(hidden, m), 1, (int[]){1}, 0);          // [B, D]
    wk_tensor *cnt = wk_maximum(wk_sum(m, 1, (int[]){1}, 0), wk_scalar(1e-9f));  // [B, 1]
    p = wk_div(sum, cnt);
  }
  if (e->normalize) {  // torch.nn.functional.normalize: x / max(||x||, 1e-12)
    wk_tensor *n2 = wk_sum(wk_square(p), 1, (int[]){-1}, 1);
    p = wk_mul(p, wk_rsqrt(wk_maximum(n2, wk_scalar(1e-24f))));
  }
  return leave_scope(p, 2, (int64_t[]){B, wk_dim(hidden, 2)});
}

// ---- the pipeline ----
typedef struct { int64_t len; int idx; } len_idx;

static int by_len(const void *a, const void *b) {
  const len_idx *x = a, *y = b;
  if (x->len != y->len) return x->len < y->len ? -1 : 1;
  return x->idx - y->idx;
}

wk_status wk_embed(wk_embedder *e, int n, const char *const *texts, float *out) {
  if (!e) return wk_error(WK_ERR_ARG, "embed: embedder is NULL");
  if (n < 1) return wk_error(WK_ERR_ARG, "embed: no texts given (n = %d): pass at least one", n);
  if (!texts) return wk_error(WK_ERR_ARG, "embed: the texts array is NULL (n = %d)", n);
  if (!out) return wk_error(WK_ERR_ARG, "embed: out is NULL");
  for (int i = 0; i < n; i++)
    if (!texts[i]) return wk_error(WK_ERR_ARG, "embed: texts[%d] is NULL", i);
  int64_t D = e->cfg.hidden_size;
  int32_t **ids = calloc((size_t)n, sizeof *ids);
  len_idx *order = calloc((size_t)n, sizeof *order);
  packed_batch pb = {0};
  float *res = NULL;
  wk_status s = ids && order ? WK_OK : wk_error(WK_ERR_OOM, "out of memory");
  for (int i = 0; !s && i < n; i++) {
    s = wk_embedder_tokenize(e, texts[i], &ids[i], &order[i].len);
    if (s) {
      char msg[512];
      snprintf(msg, sizeof msg, "%s", wk_last_error());
      wk_error(s, "embed: texts[%d]: %s", i, msg);
    }
    order[i].idx = i;
  }
  // Batches of similar length waste little on padding (as sentence-transformers does).
  if (!s) qsort(order, (size_t)n, sizeof *order, by_len);
  int64_t maxT = s ? 0 : order[n - 1].len;
  int bs = n < EMBED_BATCH ? n : EMBED_BATCH;
  if (!s) {
    size_t cells = (size_t)bs * (size_t)maxT;
    int32_t **arr[4] = {&pb.ids, &pb.pos, &pb.to_pad, &pb.from_pad};
    for (int i = 0; i < 4; i++) *arr[i] = malloc(sizeof(int32_t) * cells);
    pb.lens = malloc(sizeof *pb.lens * (size_t)bs);
    res = malloc(sizeof *res * (size_t)(bs * D));
    if (!pb.ids || !pb.pos || !pb.to_pad || !pb.from_pad || !pb.lens || !res)
      s = wk_error(WK_ERR_OOM, "out of memory");
  }
  for (int start = 0; !s && start < n; start += bs) {
    int b = n - start < bs ? n - start : bs;
    int64_t T = order[start + b - 1].len, N = 0;
    for (int r = 0; r < b; r++) {
      const len_idx *o = &order[start + r];
      pb.lens[r] = (int32_t)o->len;
      for (int64_t t = 0; t < T; t++) pb.to_pad[r * T + t] = (int32_t)(t < o->len ? N + t : 0);
      for (int64_t t = 0; t < o->len; t++, N++) {
        pb.ids[N] = ids[o->idx][t];
        pb.pos[N] = (int32_t)t;
        pb.from_pad[N] = (int32_t)(r * T + t);
      }
    }
    wk_scope_begin();
    wk_tensor *tlen = wk_from_data(1, (int64_t[]){b}, WK_I32, pb.lens);
    if (wk_embedder_device(e) != WK_CPU) tlen = wk_to_device(tlen, wk_embedder_device(e));
    wk_tensor *pooled = wk_embedder_pool(e, forward_packed(e, &pb, b, T, N, tlen), tlen);
    s = pooled ? wk_tensor_read_f32(pooled, res, b * D) : WK_ERR_STATE;
    wk_scope_end();  // releases the graph; the weights stay
    for (int r = 0; !s && r < b; r++)
      memcpy(out + (size_t)order[start + r].idx * (size_t)D, res + (size_t)r * (size_t)D,
             sizeof *res * (size_t)D);
  }
  if (ids)
    for (int i = 0; i < n; i++) free(ids[i]);
  free(ids);
  free(order);
  free(pb.ids);
  free(pb.pos);
  free(pb.to_pad);
  free(pb.from_pad);
  free(pb.lens);
  free(res);
  return s;
}
