// The KV-cache ops on CUDA against the CPU, through the public API: set_slice into f32
// and f16 destinations at a run-time position, sdpa_kv over the first kv_len keys (f32
// and f16 keys), rope_freqs with given frequencies, a factor and a run-time position;
// then the tiny Llama decoding 6 tokens through a cache on each device (logits within
// 1e-4: O(1) values, cuBLAS sums in another order); and batched generation, whose rows
// leave the batch and slide their own windows (the cache moves rows on the device),
// giving the same tokens on each device. Skipped (77) without a GPU.
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "wick/generate.h"
#include "wick/model.h"

static wk_tensor *on(wk_tensor *t, wk_device dev) {
  wk_tensor *r = wk_keep(wk_to_device(t, dev));
  if (r) wk_eval(1, &r);
  return r;
}
static wk_tensor *i32(int32_t v, wk_device dev) { return on(wk_from_data(1, (int64_t[]){1}, WK_I32, &v), dev); }

// f32 values of t on the host (caller frees)
static float *host(wk_tensor *t) { return t ? read_all(wk_to_device(wk_cast(t, WK_F32), WK_CPU)) : NULL; }

static void compare(const char *what, float *cpu, float *gpu, int64_t n, float tol) {
  float d = cpu && gpu ? max_abs_diff(cpu, gpu, n) : NAN;
  CHECK(d <= tol, "%s: cuda vs cpu max diff %g", what, (double)d);
  free(cpu);
  free(gpu);
}

static float *set_slice_on(wk_device dev, wk_dtype dt, const float *src) {
  wk_scope_begin();
  wk_tensor *dst = on(wk_cast(wk_zeros(4, (int64_t[]){1, 2, 8, 16}, WK_F32), dt), dev);
  wk_tensor *s = on(wk_from_data(4, (int64_t[]){1, 2, 3, 16}, WK_F32, src), dev);
  wk_tensor *r = wk_set_slice(dst, s, 2, i32(4, dev));
  float *v = r && !wk_eval(1, &r) ? host(dst) : NULL;
  wk_tensor_free(dst);
  wk_tensor_free(s);
  wk_scope_end();
  return v;
}

static float *sdpa_on(wk_device dev, wk_dtype kvdt, const float *q, const float *k, const float *v) {
  wk_scope_begin();
  wk_tensor *tq = on(wk_from_data(4, (int64_t[]){1, 4, 2, 16}, WK_F32, q), dev);
  wk_tensor *tk = on(wk_cast(wk_from_data(4, (int64_t[]){1, 2, 12, 16}, WK_F32, k), kvdt), dev);
  wk_tensor *tv = on(wk_cast(wk_from_data(4, (int64_t[]){1, 2, 12, 16}, WK_F32, v), kvdt), dev);
  float *o = host(wk_sdpa_kv(tq, tk, tv, NULL, i32(7, dev), 1, 0));
  wk_tensor_free(tq);
  wk_tensor_free(tk);
  wk_tensor_free(tv);
  wk_scope_end();
  return o;
}

static float *rope_on(wk_device dev, const float *x, const float *inv) {
  wk_scope_begin();
  wk_tensor *tx = on(wk_from_data(4, (int64_t[]){1, 2, 5, 16}, WK_F32, x), dev);
  wk_tensor *ti = on(wk_from_data(1, (int64_t[]){8}, WK_F32, inv), dev);
  float *o = host(wk_rope_freqs(tx, ti, 1.25f, 3, i32(40, dev), 0));
  wk_tensor_free(tx);
  wk_tensor_free(ti);
  wk_scope_end();
  return o;
}

static float *decode_on(wk_device dev, int64_t *V) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  if (!m || (dev != WK_CPU && wk_model_to_device(m, dev))) { wk_model_free(m); return NULL; }
  *V = wk_model_get_config(m)->vocab_size;
  wk_kv_cache *c = wk_kv_cache_new(m);
  wk_kv_cache_set_max_context(c, 32);
  int32_t seq[10] = {1, 7, 3, 99, 42, 5, 17, 200, 8, 64};
  float *all = malloc(sizeof(float) * (size_t)(6 * *V));
  bool ok = all != NULL;
  for (int t = 0; ok && t < 6; t++) {   // a 4-token prefill, then 5 single tokens
    int64_t n = t ? 1 : 4;
    wk_tensor *ids = wk_from_data(2, (int64_t[]){1, n}, WK_I32, seq + (t ? 3 + t : 0));
    wk_tensor *lg = wk_model_forward_cached_last(m, ids, c);
    float *h = lg ? host(lg) : NULL;
    ok = h != NULL;
    if (ok) memcpy(all + t * *V, h, sizeof(float) * (size_t)*V);
    free(h);
    wk_tensor_free(lg);
    wk_tensor_free(ids);
  }
  wk_kv_cache_free(c);
  wk_model_free(m);
  if (!ok) { free(all); return NULL; }
  return all;
}

typedef struct { int32_t ids[3][40]; float prob[3][40]; int n[3]; } gen_out;
static int on_gen(const wk_gen_token *t, void *user) {
  gen_out *o = user;
  if (t->seq < 0 || t->seq >= 3 || o->n[t->seq] >= 40) return 1;
  o->ids[t->seq][o->n[t->seq]] = t->id;
  o->prob[t->seq][o->n[t->seq]++] = t->prob;
  return t->seq == 1 && o->n[1] >= 4;   // sequence 1 stops after 4 tokens: the batch shrinks
}

// Prompts of 3, 7 and 12 tokens, 30 greedy tokens under a context of 16 with a
// sliding window: each row slides on its own, and sequence 1 leaves after 4 tokens.
static bool batch_on(wk_device dev, gen_out *o) {
  static const int32_t p0[] = {1, 5, 9}, p1[] = {1, 40, 41, 42, 43, 44, 45},
                       p2[] = {7, 100, 3, 200, 9, 17, 33, 250, 64, 8, 2, 90};
  const int32_t *pr[] = {p0, p1, p2};
  size_t np[] = {3, 7, 12};
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  if (!m || (dev != WK_CPU && wk_model_to_device(m, dev))) { wk_model_free(m); return false; }
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 30;
  p.ignore_eos = true;
  p.max_context = 16;
  p.sliding_window = true;
  memset(o, 0, sizeof *o);
  wk_status st = wk_generate_batch(m, NULL, 3, pr, np, &p, on_gen, o, NULL);
  wk_model_free(m);
  return st == WK_OK;
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  float *a = test_randv(2 * 3 * 16, 1), *q = test_randv(4 * 2 * 16, 2), *k = test_randv(2 * 12 * 16, 3), *v = test_randv(2 * 12 * 16, 4);
  float *x = test_randv(2 * 5 * 16, 5), inv[8];
  for (int i = 0; i < 8; i++) inv[i] = 1.0f / powf(10000.0f, (float)i / 8.0f) / 3.0f;
  compare("set_slice f32", set_slice_on(WK_CPU, WK_F32, a), set_slice_on(WK_CUDA, WK_F32, a), 2 * 8 * 16, 0);
  compare("set_slice f16", set_slice_on(WK_CPU, WK_F16, a), set_slice_on(WK_CUDA, WK_F16, a), 2 * 8 * 16, 0);
  compare("sdpa_kv f32", sdpa_on(WK_CPU, WK_F32, q, k, v), sdpa_on(WK_CUDA, WK_F32, q, k, v), 4 * 2 * 16, 1e-5f);
  compare("sdpa_kv f16 keys", sdpa_on(WK_CPU, WK_F16, q, k, v), sdpa_on(WK_CUDA, WK_F16, q, k, v), 4 * 2 * 16, 1e-5f);
  compare("rope_freqs", rope_on(WK_CPU, x, inv), rope_on(WK_CUDA, x, inv), 2 * 5 * 16, 1e-5f);
  int64_t V = 0;
  float *cpu = decode_on(WK_CPU, &V), *gpu = decode_on(WK_CUDA, &V);
  compare("tiny Llama decode through the cache", cpu, gpu, 6 * V, 1e-4f);
  gen_out gc, gg;
  bool ok = batch_on(WK_CPU, &gc) && batch_on(WK_CUDA, &gg);
  CHECK(ok && gc.n[0] == 30 && gc.n[1] == 4 && gc.n[2] == 30 && !memcmp(gc.n, gg.n, sizeof gc.n) &&
            !memcmp(gc.ids, gg.ids, sizeof gc.ids), "batched generation: cuda tokens differ from cpu (%d %d %d vs %d %d %d): %s",
        gc.n[0], gc.n[1], gc.n[2], gg.n[0], gg.n[1], gg.n[2], ok ? "" : wk_last_error());
  float worst = 0;
  for (int b = 0; b < 3; b++)
    for (int i = 0; i < gc.n[b]; i++) worst = fmaxf(worst, fabsf(gc.prob[b][i] - gg.prob[b][i]));
  CHECK(ok && worst < 1e-4f, "batched generation: probabilities differ by %g", (double)worst);   // as the logits above
  free(a); free(q); free(k); free(v); free(x);
  return check_report();
}
