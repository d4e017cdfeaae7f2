// Decoder models against transformers: logits of tiny random Llama and Qwen2 models
// (fixtures from tools/gen_fixtures.py), bf16 weights, a Q8_0 GGUF, the KV cache, and
// bad inputs.
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "model_copy.h"
#include "models/llama.h"   // struct wk_model: to check weights keep their dtype

// Every comparison is f32 math on the same weights as the reference (the bf16 and
// Q8_0 references run their rounded / dequantized weights in f32), so the only
// differences are summation order and exp/cos implementations: 1e-4 on logits of
// magnitude ~1.
#define TOL 1e-4f

static const char *fixture(const char *name) { return fixture_in("models", name); }

typedef struct { wk_tensor *ids, *logits; } ref_pair;

static ref_pair load_ref(const char *file) {
  ref_pair r = {0};
  wk_st_file *f = wk_st_open(fixture(file));
  CHECK(f != NULL, "open %s", file);
  if (!f) return r;
  r.ids = wk_st_get(f, "ids");
  r.logits = wk_st_get(f, "logits");
  wk_st_close(f);
  return r;
}

static void free_ref(ref_pair r) {
  wk_tensor_free(r.ids);
  wk_tensor_free(r.logits);
}

// Logits of the model at `model` vs the reference; returns the max abs diff.
static float compare(const char *model, const char *reffile, wk_arch arch, const char *format) {
  wk_model *m = wk_model_load(fixture(model));
  CHECK(m != NULL, "load %s", model);
  ref_pair r = load_ref(reffile);
  float d = NAN;
  if (m && r.ids && r.logits) {
    const wk_model_config *c = wk_model_get_config(m);
    CHECK(c->arch == arch, "%s: arch %d", model, (int)c->arch);
    CHECK(!strcmp(wk_model_format(m), format), "%s: format %s", model, wk_model_format(m));
    wk_tensor *lg = wk_model_forward(m, r.ids, 0);
    CHECK(lg && wk_ndim(lg) == 3 && wk_dim(lg, 0) == 2 && wk_dim(lg, 1) == 7 && wk_dim(lg, 2) == c->vocab_size &&
              wk_tensor_dtype(lg) == WK_F32,
          "%s: logits shape", model);
    float *a = lg ? read_all(lg) : NULL, *b = read_all(r.logits);
    d = max_abs_diff(a, b, wk_numel(r.logits));
    float mx = 0;
    for (int64_t i = 0; b && i < wk_numel(r.logits); i++) mx = fmaxf(mx, fabsf(b[i]));
    CHECK(d <= TOL, "%s: logits max abs diff %g > %g", model, (double)d, (double)TOL);
    CHECK(mx > 0.1f, "%s: reference logits are degenerate (max %g)", model, (double)mx);
    printf("%-20s max |logit| %.3f, max abs diff %.3g\n", model, (double)mx, (double)d);
    free(a);
    free(b);
    wk_tensor_free(lg);
  }
  free_ref(r);
  wk_model_free(m);
  return d;
}

// Causality and positions: the logits of a prefix equal the first positions of the
// full sequence; prefill + one cached step at a time equal the full forward.
static void consistency(const char *model, const char *reffile) {
  wk_model *m = wk_model_load(fixture(model));
  ref_pair r = load_ref(reffile);
  if (!m || !r.ids || !r.logits) { CHECK(0, "load %s", model); goto out; }
  int64_t B = 2, T = 7, V = wk_model_get_config(m)->vocab_size;
  float *full = read_all(r.logits);
  // prefix of 4 tokens, no cache
  wk_tensor *pre = wk_slice(r.ids, 1, 0, 4, 1);
  wk_tensor *lp = wk_model_forward(m, pre, 0);
  float *p = read_all(lp);
  float d = 0;
  for (int64_t b = 0; p && b < B; b++)
    for (int64_t i = 0; i < 4 * V; i++) d = fmaxf(d, fabsf(p[b * 4 * V + i] - full[b * T * V + i]));
  CHECK(p && d <= TOL, "%s: prefix logits differ by %g", model, (double)d);
  free(p);
  wk_tensor_free(lp);
  // cache: prefill 4 tokens, then the 3 others one at a time (positions 4, 5, 6)
  wk_kv_cache *c = wk_kv_cache_new(m);
  CHECK(c != NULL, "kv cache");
  wk_tensor *l0 = wk_model_forward_cached(m, pre, c);
  CHECK(l0 && wk_kv_cache_len(c) == 4, "%s: prefill", model);
  wk_tensor_free(l0);
  float dc = 0;
  for (int64_t t = 4; t < T; t++) {
    wk_tensor *sl = wk_slice(r.ids, 1, t, t + 1, 1), *one = wk_contiguous(sl);
    wk_tensor_free(sl);
    wk_tensor *l = wk_model_forward_cached(m, one, c);
    float *v = l ? read_all(l) : NULL;
    CHECK(v != NULL, "%s: cached step %lld", model, (long long)t);
    for (int64_t b = 0; v && b < B; b++)
      for (int64_t i = 0; i < V; i++) dc = fmaxf(dc, fabsf(v[b * V + i] - full[(b * T + t) * V + i]));
    free(v);
    wk_tensor_free(l);
    wk_tensor_free(one);
  }
  CHECK(wk_kv_cache_len(c) == T, "%s: cache len %lld", model, (long long)wk_kv_cache_len(c));
  CHECK(dc <= TOL, "%s: cached decoding differs from the full forward by %g", model, (double)dc);
  printf("%-20s prefix diff %.3g, cached-decode diff %.3g\n", model, (double)d, (double)dc);
  // batch mismatch is refused and leaves the cache as it was
  wk_tensor *b1 = wk_zeros(2, (int64_t[]){1, 1}, WK_I32);
  CHECK(wk_model_forward_cached(m, b1, c) == NULL && strstr(wk_last_error(), "batch"), "cache batch mismatch");
  CHECK(wk_kv_cache_len(c) == T, "cache unchanged");
  wk_tensor_free(b1);
  // pos_offset only shifts RoPE: attention depends on relative positions, so the
  // logits barely move (a check that the offset reaches rope without breaking it)
  wk_tensor *lo = wk_model_forward(m, r.ids, 100);
  float *o = read_all(lo);
  float dof = max_abs_diff(o, full, B * T * V);
  CHECK(o && dof <= 1e-3f, "%s: pos_offset 100 changes logits by %g", model, (double)dof);
  free(o);
  wk_tensor_free(lo);
  wk_kv_cache_free(c);
  wk_tensor_free(pre);
  free(full);
out:
  free_ref(r);
  wk_model_free(m);
}

static int has(const char *needle) { return strstr(wk_last_error(), needle) != NULL; }

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) { fputs(text, f); fclose(f); }
}

static void bad_inputs(void) {
  CHECK(!wk_model_load("/nonexistent/model") && has("/nonexistent/model"), "missing directory");
  CHECK(!wk_model_load(fixture("llama/config.json")) && has("not a directory"), "plain file");
  CHECK(!wk_model_load(NULL), "NULL path");
  CHECK(!wk_model_load(fixture("arch_gpt2.gguf")) && has("gpt2") && has("general.architecture"),
        "unknown GGUF architecture: %s", wk_last_error());
  printf("unknown GGUF architecture: %s\n", wk_last_error());
  // a directory without config.json
  char dir[256];
  snprintf(dir, sizeof dir, "%s/wick_models_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  CHECK(!wk_model_load(dir) && has("config.json"), "no config.json: %s", wk_last_error());
  char cfg[300];
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  write_file(cfg, "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"]}");
  CHECK(!wk_model_load(dir) && (has("gpt2") || has("GPT2")), "unknown architecture");
  printf("unknown architecture: %s\n", wk_last_error());
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}");
  CHECK(!wk_model_load(dir) && has("safetensors"), "config but no weights: %s", wk_last_error());
  // config disagreeing with the weights: wrong shape named with the tensor
  char st[300];
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  CHECK(symlink(fixture("llama/model.safetensors"), st) == 0, "symlink");
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 96,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}");
  CHECK(!wk_model_load(dir) && has("mlp.gate_proj.weight") && has("[96, 64]"), "shape mismatch: %s", wk_last_error());
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 300, \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}");
  CHECK(!wk_model_load(dir) && has("vocab_size 300") && has("embed_tokens") && has("256 rows"), "vocab mismatch: %s",
        wk_last_error());
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2}");
  CHECK(!wk_model_load(dir) && has("model.layers.2."), "missing layer: %s", wk_last_error());
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 1099511627776, \"num_key_value_heads\": 2,"
                  " \"head_dim\": 1099511627776}");
  CHECK(!wk_model_load(dir) && has("num_attention_heads") && has("head_dim"), "heads * head_dim overflow: %s",
        wk_last_error());
  write_file(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
                  " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
                  " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}");
  // RoPE scaling loads (its frequencies: tests/models/test_rope_scaling.c) and runs
  wk_model *scaled = wk_model_load(dir);
  CHECK(scaled && wk_model_get_config(scaled)->rope_scaling.type == WK_ROPE_LLAMA3, "rope scaling: %s", wk_last_error());
  wk_tensor *sid = wk_zeros(2, (int64_t[]){1, 3}, WK_I32), *sl = scaled ? wk_model_forward(scaled, sid, 0) : NULL;
  float *sv = sl ? read_all(sl) : NULL;
  CHECK(sv && isfinite(sv[0]), "llama3-scaled forward");
  free(sv);
  wk_tensor_free(sl);
  wk_tensor_free(sid);
  wk_model_free(scaled);
  unlink(st);
  unlink(cfg);
  rmdir(dir);

  wk_model *m = wk_model_load(fixture("llama"));
  CHECK(m != NULL, "load llama");
  if (!m) return;
  // ids out of range: the error comes at evaluation and names the id
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 3}, WK_I32, (int32_t[]){1, 999, 2});
  wk_tensor *lg = wk_model_forward(m, ids, 0);
  CHECK(lg != NULL, "forward is lazy");
  CHECK(wk_eval(1, &lg) != WK_OK && has("999"), "id out of range: %s", wk_last_error());
  printf("id out of range: %s\n", wk_last_error());
  wk_tensor_free(lg);
  wk_tensor_free(ids);
  ids = wk_from_data(2, (int64_t[]){1, 2}, WK_I32, (int32_t[]){-1, 2});
  lg = wk_model_forward(m, ids, 0);
  CHECK(lg && wk_eval(1, &lg) != WK_OK && has("-1"), "negative id: %s", wk_last_error());
  wk_tensor_free(lg);
  wk_tensor_free(ids);
  // wrong dtype / rank
  ids = wk_zeros(2, (int64_t[]){1, 3}, WK_F32);
  CHECK(!wk_model_forward(m, ids, 0) && has("i32"), "f32 ids: %s", wk_last_error());
  printf("f32 ids: %s\n", wk_last_error());
  wk_tensor_free(ids);
  ids = wk_zeros(1, (int64_t[]){3}, WK_I32);
  CHECK(!wk_model_forward(m, ids, 0) && has("[B, T]"), "1-d ids: %s", wk_last_error());
  wk_tensor_free(ids);
  CHECK(!wk_model_forward(m, NULL, 0), "NULL ids");
  ids = wk_zeros(2, (int64_t[]){1, 3}, WK_I32);
  CHECK(!wk_model_forward(m, ids, -1) && has("pos_offset"), "negative offset");
  wk_tensor_free(ids);
  wk_model_free(m);
  wk_model_free(NULL);
}

// Corrupted copies of the GGUF fixture, through the loader: one tensor uncounted in
// the header (it loaded with every tensor's data shifted), and a required tensor
// renamed away (named as missing).
static void gguf_corrupt(void) {
  size_t n = 0;
  char *b = test_slurp(fixture("llama_q8_0.gguf"), &n);
  if (!b || n < 24) { CHECK(0, "read llama_q8_0.gguf"); free(b); return; }
  char dir[256], path[300];
  snprintf(dir, sizeof dir, "%s/wick_models_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  snprintf(path, sizeof path, "%s/bad.gguf", dir);
  uint64_t nt;
  memcpy(&nt, b + 8, 8);
  nt--;
  memcpy(b + 8, &nt, 8);
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(b, 1, n, f) == n && !fclose(f), "write %s", path);
  CHECK(!wk_model_load(path) && has(path) && has("tensor count"), "uncounted tensor: %s", wk_last_error());
  nt++;
  memcpy(b + 8, &nt, 8);
  const char *name = "blk.1.ffn_down.weight";
  char *at = NULL;
  for (size_t i = 0; !at && i + strlen(name) <= n; i++)
    if (!memcmp(b + i, name, strlen(name))) at = b + i;
  CHECK(at != NULL, "fixture holds %s", name);
  if (at) at[strlen(name) - 1] = 'X';
  f = fopen(path, "wb");
  CHECK(f && fwrite(b, 1, n, f) == n && !fclose(f), "write %s", path);
  CHECK(!wk_model_load(path) && has(path) && has("'blk.1.ffn_down.weight' not found"), "missing tensor: %s",
        wk_last_error());
  unlink(path);
  rmdir(dir);
  free(b);
}

// Live parity (make parity), skipped unless WICK_PARITY_MODEL names a real model and
// WICK_PARITY_REF a safetensors file of "ids" i32 [B, T] and transformers' "logits"
// (tools/parity_decoder.py writes both). Tolerance: same (dequantized) weights and
// f32 math, but 30 layers of differently ordered sums on logits up to ~30 in size,
// so 1e-3 absolute (SmolLM2-135M Q4_1 measured 7e-5), and top-1 equal everywhere.
static void real_model(void) {
  const char *mp = getenv("WICK_PARITY_MODEL"), *rp = getenv("WICK_PARITY_REF");
  if (!mp || !rp) return;
  wk_model *m = wk_model_load(mp);
  CHECK(m != NULL, "load %s", mp);
  wk_st_file *f = wk_st_open(rp);
  CHECK(f != NULL, "open %s", rp);
  if (!m || !f) { wk_model_free(m); wk_st_close(f); return; }
  wk_tensor *ids = wk_st_get(f, "ids"), *ref = wk_st_get(f, "logits");
  wk_st_close(f);
  wk_tensor *lg = wk_model_forward(m, ids, 0);
  float *a = lg ? read_all(lg) : NULL, *b = ref ? read_all(ref) : NULL;
  CHECK(a && b && wk_numel(lg) == wk_numel(ref), "real model logits");
  if (a && b && wk_numel(lg) == wk_numel(ref)) {
    int64_t V = wk_dim(ref, -1), rows = wk_numel(ref) / V, same = 0;
    for (int64_t r = 0; r < rows; r++) {
      int64_t ia = 0, ib = 0;
      for (int64_t i = 1; i < V; i++) {
        if (a[r * V + i] > a[r * V + ia]) ia = i;
        if (b[r * V + i] > b[r * V + ib]) ib = i;
      }
      same += ia == ib;
    }
    float d = max_abs_diff(a, b, wk_numel(ref));
    printf("%s: max abs diff %.3g, top-1 equal at %lld of %lld positions\n", mp, (double)d, (long long)same,
           (long long)rows);
    CHECK(d <= 1e-3f, "real model: max abs diff %g", (double)d);
    CHECK(same == rows, "real model: top-1 differs at %lld positions", (long long)(rows - same));
  }
  free(a);
  free(b);
  wk_tensor_free(lg);
  wk_tensor_free(ids);
  wk_tensor_free(ref);
  wk_model_free(m);
}

// The logits belong to the caller's scope like any op result; eager mode gives the
// same numbers.
static void scoped_and_eager(void) {
  wk_model *m = wk_model_load(fixture("qwen2"));
  ref_pair r = load_ref("qwen2/ref.safetensors");
  if (!m || !r.ids || !r.logits) { CHECK(0, "load qwen2"); goto out; }
  float *b = read_all(r.logits);
  for (int eager = 0; eager < 2; eager++) {
    wk_set_eager(eager);
    wk_scope_begin();
    wk_tensor *lg = wk_model_forward(m, r.ids, 0);
    float *a = lg ? read_all(lg) : NULL;
    float d = max_abs_diff(a, b, wk_numel(r.logits));
    CHECK(a && d <= TOL, "qwen2 in a scope, eager %d: diff %g", eager, (double)d);
    free(a);
    wk_scope_end();   // releases lg
  }
  wk_set_eager(0);
  free(b);
out:
  free_ref(r);
  wk_model_free(m);
}

// f16 weights (written here from the f32 fixture) against the f32 reference: weight
// rounding to f16 (2^-11 relative) moves these logits by ~1e-3 (bf16, 2^-8, moves
// them by 0.019), so 1e-2; the bf16 fixture checks exactness with its own reference.
static wk_tensor *to_f16(const char *name, wk_tensor *t) {
  (void)name;
  wk_tensor *h = t ? wk_cast(t, WK_F16) : NULL;
  wk_tensor_free(t);
  return h;
}

static void f16_weights(void) {
  char dir[256], path[300], cfg[300];
  snprintf(dir, sizeof dir, "%s/wick_f16_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  CHECK(test_model_copy(fixture("llama"), dir, to_f16), "save f16");
  wk_model *m = wk_model_load(dir);
  CHECK(m != NULL, "load f16 llama");
  ref_pair r = load_ref("llama/ref.safetensors");
  if (m && r.ids && r.logits) {
    CHECK(wk_tensor_dtype(m->layers[0].wq) == WK_F16, "f16 weights kept in f16");
    wk_tensor *lg = wk_model_forward(m, r.ids, 0);
    float *a = lg ? read_all(lg) : NULL, *b = read_all(r.logits);
    float d = max_abs_diff(a, b, wk_numel(r.logits));
    CHECK(a && d <= 1e-2f, "f16 llama: diff %g", (double)d);
    printf("llama f16 weights    max abs diff %.3g vs the f32 reference\n", (double)d);
    free(a);
    free(b);
    wk_tensor_free(lg);
  }
  free_ref(r);
  wk_model_free(m);
  unlink(path);
  unlink(cfg);
  rmdir(dir);
}

int main(void) {
  compare("llama", "llama/ref.safetensors", WK_ARCH_LLAMA, "safetensors");
  compare("qwen2", "qwen2/ref.safetensors", WK_ARCH_QWEN2, "safetensors");
  compare("llama_bf16", "llama_bf16/ref.safetensors", WK_ARCH_LLAMA, "safetensors");
  compare("llama_q8_0.gguf", "llama_q8_0.ref.safetensors", WK_ARCH_LLAMA, "gguf");
  compare("qwen2_q8_0.gguf", "qwen2_q8_0.ref.safetensors", WK_ARCH_QWEN2, "gguf");
  consistency("llama", "llama/ref.safetensors");
  scoped_and_eager();
  f16_weights();
  consistency("qwen2", "qwen2/ref.safetensors");
  consistency("llama_q8_0.gguf", "llama_q8_0.ref.safetensors");
  consistency("qwen2_q8_0.gguf", "qwen2_q8_0.ref.safetensors");
  real_model();
  bad_inputs();
  gguf_corrupt();
  // weights are kept in the file's dtype (zero-copy bf16)
  wk_model *m = wk_model_load(fixture("llama_bf16"));
  if (m) {
    const wk_model_config *c = wk_model_get_config(m);
    CHECK(c->num_key_value_heads == 2 && !c->tie_word_embeddings, "llama_bf16 config");
    CHECK(wk_tensor_dtype(m->layers[1].w_down) == WK_BF16 && wk_tensor_dtype(m->embed) == WK_BF16,
          "bf16 weights kept in bf16");
    wk_model_free(m);
  }
  m = wk_model_load(fixture("qwen2"));
  if (m) {
    CHECK(wk_model_get_config(m)->tie_word_embeddings && wk_model_get_config(m)->qkv_bias, "qwen2 config");
    wk_model_free(m);
  }
  return check_report();
}
