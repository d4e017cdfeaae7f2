// Block-quantized and f16/bf16 weights on CUDA against the CPU backend. For Q8_0, Q4_0,
// Q4_1, Q4_K, Q5_K and Q6_K (random blocks from quant_blocks.h, as test_quant.c uses):
// x @ W^T and x @ W for M in {1, 3, 8, 9, 64, 300} (the GEMV and the tiled kernels),
// odd N, K over many blocks, a strided x; every output within 1e-5 of sum |x w| of
// the CPU's. Dequantize and embedding from a quantized table bit-exact; an id out of
// range is an error. Frozen f16/bf16 weights read in place (halfmm.cu): the same
// orientations and M, odd and aligned K, K over several staged segments, a strided x,
// within 3e-5 of sum |x w| of the CPU's, and the CPU's semantics exactly: a bf16
// weight multiplies x rounded to bf16, an f16 weight widens. Then the tiny Q8_0
// Llama GGUF moved to CUDA keeps its weights in blocks and gives the CPU's logits
// within 1e-3 (a full forward, and decoding through the KV cache, which replays
// captured plans).
// WICK_QMM_BENCH=1 also times the decode GEMVs on SmolLM2-135M's shapes (Q4_1, Q8_0,
// Q4_K) and Qwen2.5-0.5B's (bf16, and two bf16 weights larger than L2; then the Qwen
// shapes again cycling through 256 MB of copies, so W comes from DRAM): GB/s of weight
// bytes read against a device-to-device copy. WICK_HGEMV=0 times the older GEMV kernel.
// Skipped (77) without a GPU.
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include "check.h"
#include "backend/cuda/cuda_backend.h"
#include "engine/engine.h"
#include "fixtures.h"
#include "models/llama.h"
#include "quant_blocks.h"
#include "wick/model.h"

static const wk_dtype types[] = {WK_Q8_0, WK_Q4_0, WK_Q4_1, WK_Q4_K, WK_Q5_K, WK_Q6_K};

static uint8_t *random_blocks(wk_dtype dt, int64_t rows, int64_t cols) {
  size_t bytes;
  return qb_random(dt, rows, cols, &bytes);
}

static wk_tensor *on(wk_tensor *t, wk_device dev) {
  wk_tensor *r = wk_keep(wk_to_device(t, dev));
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}

// max over outputs of |a - b| / sum_k |x w| (the scale of f32 accumulation error)
static double worst(const float *a, const float *b, const float *x, const float *w, int64_t M, int64_t N, int64_t K,
                    int trans) {
  if (!a || !b) return INFINITY;
  double e = 0;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 1e-30;
      for (int64_t k = 0; k < K; k++) s += fabs((double)x[i * K + k] * (trans ? w[j * K + k] : w[k * N + j]));
      double d = fabs((double)a[i * N + j] - b[i * N + j]) / s;
      if (d > e || d != d) e = d;
    }
  return e;
}

static void test_type(wk_dtype dt) {
  const char *name = wk_dtype_name(dt);
  int64_t blk = wk_dtype_block(dt);
  int64_t N = blk == 32 ? 131 : 67, K = blk == 32 ? 40 * 32 : 6 * 256; // > 32 chunks a row: lanes loop
  uint8_t *qb = random_blocks(dt, N, K);
  wk_scope_begin();
  wk_tensor *Wc = wk_from_data(2, (int64_t[]){N, K}, dt, qb), *Wg = on(Wc, WK_CUDA);
  CHECK(Wg && wk_tensor_dtype(Wg) == dt && wk_tensor_device(Wg) == WK_CUDA, "%s: weight moves to cuda in blocks", name);
  float *wf = read_all(wk_dequantize(Wc)), *wg = Wg ? read_all(wk_dequantize(Wg)) : NULL;
  CHECK(wf && wg && !memcmp(wf, wg, sizeof(float) * (size_t)(N * K)), "%s: dequantize on cuda bit-exact", name);
  free(wg);
  const int64_t Ms[] = {1, 3, 8, 9, 64, 300};
  for (int mi = 0; Wg && mi < 6; mi++) {
    int64_t M = Ms[mi];
    // x @ W^T
    wk_tensor *x = wk_randn(2, (int64_t[]){M, K}, WK_F32, 7 + (uint64_t)M), *xg = on(x, WK_CUDA);
    float *xv = read_all(x), *yc = read_all(wk_matmul_t(x, 0, Wc, 1));
    float *yg = xg ? read_all(wk_matmul_t(xg, 0, Wg, 1)) : NULL;
    double e = worst(yg, yc, xv, wf, M, N, K, 1);
    CHECK(e < 1e-5, "%s: [%lld,%lld] @ [%lld,%lld]^T cuda vs cpu %g", name, (long long)M, (long long)K, (long long)N,
          (long long)K, e);
    free(xv), free(yc), free(yg);
    // g @ W (the input gradient's orientation), g as [1, M, N]
    wk_tensor *g = wk_randn(3, (int64_t[]){1, M, N}, WK_F32, 11 + (uint64_t)M), *gg = on(g, WK_CUDA);
    float *gv = read_all(g), *zc = read_all(wk_matmul(g, Wc)), *zg = gg ? read_all(wk_matmul(gg, Wg)) : NULL;
    e = worst(zg, zc, gv, wf, M, K, N, 0);
    CHECK(e < 1e-5, "%s: [1,%lld,%lld] @ [%lld,%lld] cuda vs cpu %g", name, (long long)M, (long long)N, (long long)N,
          (long long)K, e);
    free(gv), free(zc), free(zg);
    wk_tensor_free(xg), wk_tensor_free(gg);
  }
  if (Wg) { // a wide W (the decode GEMV's several-rows-a-warp path), M = 1 and 2
    int64_t NW = 8485, KW = blk == 32 ? 64 : 256;
    uint8_t *wb = random_blocks(dt, NW, KW);
    wk_tensor *Wwc = wk_from_data(2, (int64_t[]){NW, KW}, dt, wb), *Wwg = on(Wwc, WK_CUDA);
    float *wwf = read_all(wk_dequantize(Wwc));
    for (int64_t M = 1; Wwg && M <= 2; M++) {
      wk_tensor *x = wk_randn(2, (int64_t[]){M, KW}, WK_F32, 5 + (uint64_t)M), *xg = on(x, WK_CUDA);
      float *xv = read_all(x), *yc = read_all(wk_matmul_t(x, 0, Wwc, 1));
      float *yg = xg ? read_all(wk_matmul_t(xg, 0, Wwg, 1)) : NULL;
      double e = worst(yg, yc, xv, wwf, M, NW, KW, 1);
      CHECK(e < 1e-5, "%s: [%lld,%lld] @ [%lld,%lld]^T cuda vs cpu %g", name, (long long)M, (long long)KW,
            (long long)NW, (long long)KW, e);
      free(xv), free(yc), free(yg);
      wk_tensor_free(xg);
    }
    CHECK(Wwg != NULL, "%s: wide weight on cuda", name);
    wk_tensor_free(Wwg);
    free(wwf), free(wb);
  }
  if (Wg) { // a strided x: x^T's transpose, densified first
    for (int64_t M = 3; M <= 64; M += 61) {
      wk_tensor *xt = wk_randn(2, (int64_t[]){K, M}, WK_F32, 3 + (uint64_t)M), *xtg = on(xt, WK_CUDA);
      wk_tensor *x = wk_transpose(xt, 0, 1);
      float *xv = read_all(x), *yc = read_all(wk_matmul_t(x, 0, Wc, 1));
      float *yg = xtg ? read_all(wk_matmul_t(wk_transpose(xtg, 0, 1), 0, Wg, 1)) : NULL;
      double e = worst(yg, yc, xv, wf, M, N, K, 1);
      CHECK(e < 1e-5, "%s: strided x [%lld,%lld] cuda vs cpu %g", name, (long long)M, (long long)K, e);
      free(xv), free(yc), free(yg);
      wk_tensor_free(xtg);
    }
    // embedding from the quantized table: rows bit-exact, an id out of range refused
    int32_t ids[6] = {0, (int32_t)N - 1, 2, 2, (int32_t)(N / 2), 5};
    wk_tensor *id = wk_from_data(2, (int64_t[]){2, 3}, WK_I32, ids), *idg = on(id, WK_CUDA);
    wk_tensor *eg = idg ? wk_embedding(Wg, idg) : NULL;
    float *ec = read_all(wk_embedding(Wc, id)), *ev = eg ? read_all(eg) : NULL;
    CHECK(ec && ev && wk_tensor_dtype(eg) == WK_F32 && !memcmp(ec, ev, sizeof(float) * (size_t)(6 * K)),
          "%s: embedding on cuda bit-exact", name);
    free(ec), free(ev);
    int32_t bad[2] = {1, (int32_t)N};
    wk_tensor *bg = on(wk_from_data(1, (int64_t[]){2}, WK_I32, bad), WK_CUDA);
    wk_tensor *be = bg ? wk_embedding(Wg, bg) : NULL;
    CHECK(be && wk_eval(1, &be) && strstr(wk_last_error(), "out of range"), "%s: embedding id out of range refused",
          name);
    wk_clear_error();
    wk_tensor_free(idg), wk_tensor_free(bg);
  }
  wk_tensor_free(Wg);
  wk_scope_end();
  free(wf), free(qb);
}

// ---- f16 / bf16 weights read in place ----
// Both sides accumulate in f32 in different orders (the CUDA GEMV splits rows over
// lanes and warps, cuBLAS over its tiles): over up to 8200 terms the rounding errors
// stay near sqrt(K) * 6e-8 ~ 5e-6 of sum |x w|. Not rounding x to bf16 would be off by
// ~2^-9 / sqrt(K) of it (1e-4 at K = 203), and the exact checks below catch it at any K.
#define HALF_TOL 3e-5

// x @ W^T ([M, K]) and g @ W ([1, M, N]) on cuda against the CPU's, W [N, K] of dt.
static void half_case(wk_dtype dt, wk_tensor *Wc, wk_tensor *Wg, const float *wf, int64_t N, int64_t K, int64_t M) {
  const char *name = wk_dtype_name(dt);
  wk_scope_begin();
  wk_tensor *x = wk_randn(2, (int64_t[]){M, K}, WK_F32, 7 + (uint64_t)M), *xg = on(x, WK_CUDA);
  float *xv = read_all(x), *yc = read_all(wk_matmul_t(x, 0, Wc, 1));
  float *yg = xg ? read_all(wk_matmul_t(xg, 0, Wg, 1)) : NULL;
  double e = worst(yg, yc, xv, wf, M, N, K, 1);
  CHECK(e < HALF_TOL, "%s: [%lld,%lld] @ [%lld,%lld]^T cuda vs cpu %g", name, (long long)M, (long long)K, (long long)N,
        (long long)K, e);
  free(xv), free(yc), free(yg);
  wk_tensor *g = wk_randn(3, (int64_t[]){1, M, N}, WK_F32, 11 + (uint64_t)M), *gg = on(g, WK_CUDA);
  float *gv = read_all(g), *zc = read_all(wk_matmul(g, Wc)), *zg = gg ? read_all(wk_matmul(gg, Wg)) : NULL;
  e = worst(zg, zc, gv, wf, M, K, N, 0);
  CHECK(e < HALF_TOL, "%s: [1,%lld,%lld] @ [%lld,%lld] cuda vs cpu %g", name, (long long)M, (long long)N, (long long)N,
        (long long)K, e);
  free(gv), free(zc), free(zg);
  wk_tensor_free(xg), wk_tensor_free(gg);
  wk_scope_end();
}

// A frozen random weight [N, K] of dt on the CPU (*cpu) and on cuda (returned), its
// values as f32 in *vals.
static wk_tensor *half_weight(wk_dtype dt, int64_t N, int64_t K, uint64_t seed, wk_tensor **cpu, float **vals) {
  *cpu = wk_keep(wk_cast(wk_randn(2, (int64_t[]){N, K}, WK_F32, seed), dt));
  if (*cpu && wk_eval(1, cpu)) { wk_tensor_free(*cpu); *cpu = NULL; }
  *vals = *cpu ? read_all(*cpu) : NULL;
  return *cpu ? on(*cpu, WK_CUDA) : NULL;
}

static void test_half(wk_dtype dt) {
  const char *name = wk_dtype_name(dt);
  // odd K (2-byte loads), K % 8 == 0 (16-byte loads, rows split over warps, three
  // stages of x at M = 8), K over two stages at M = 1 (split over 4 warps), and a
  // wide W (4 rows a warp group at M <= 2)
  // (then, M = 1 only, the one-row kernel's cases: Qwen2.5-0.5B's k/v and down shapes,
  // a tiny K, and a wide W split over 2 warps a row, 4 rows a group)
  const int64_t shapes[][2] = {{131, 203}, {67, 2056}, {37, 8200}, {8485, 64}, {128, 896}, {896, 4864}, {300, 40},
                               {8500, 2056}};
  const int64_t Ms[] = {1, 3, 8, 9, 64, 300};
  for (int si = 0; si < 8; si++) {
    int64_t N = shapes[si][0], K = shapes[si][1];
    wk_tensor *Wc = NULL;
    float *wf = NULL;
    wk_tensor *Wg = half_weight(dt, N, K, 40 + (uint64_t)si, &Wc, &wf);
    CHECK(Wg && wk_tensor_dtype(Wg) == dt, "%s: [%lld,%lld] weight moves to cuda as %s", name, (long long)N,
          (long long)K, name);
    for (int mi = 0; Wg && mi < 6; mi++)
      if (si < 2 || (si < 4 && Ms[mi] <= 9) || Ms[mi] == 1) half_case(dt, Wc, Wg, wf, N, K, Ms[mi]);
    if (Wg && si == 0)  // a strided x (x^T's transpose): densified first, for the GEMV and the GEMM
      for (int64_t M = 3; M <= 64; M += 61) {
        wk_scope_begin();
        wk_tensor *xt = wk_randn(2, (int64_t[]){K, M}, WK_F32, 3 + (uint64_t)M), *xtg = on(xt, WK_CUDA);
        wk_tensor *x = wk_transpose(xt, 0, 1);
        float *xv = read_all(x), *yc = read_all(wk_matmul_t(x, 0, Wc, 1));
        float *yg = xtg ? read_all(wk_matmul_t(wk_transpose(xtg, 0, 1), 0, Wg, 1)) : NULL;
        double e = worst(yg, yc, xv, wf, M, N, K, 1);
        CHECK(e < HALF_TOL, "%s: strided x [%lld,%lld] cuda vs cpu %g", name, (long long)M, (long long)K, e);
        free(xv), free(yc), free(yg);
        wk_tensor_free(xtg);
        wk_scope_end();
      }
    wk_tensor_free(Wc), wk_tensor_free(Wg);
    free(wf);
  }
}

// The CPU's semantics exactly: W of ones [5, 64] and x = 1 + 2^-12 (not a bf16 value;
// an f16 one). bf16 rounds x to 1: every output is the row length; f16 widens, and x
// stays as it is: length * (1 + 2^-12), exact in f32. M = 1 and 2 run the GEMV (x @ W^T)
// and cuBLAS (g @ W); M = 64, cuBLAS both ways.
static void test_half_rounding(wk_dtype dt) {
  const float xv = 1.0f + 0x1p-12f;
  const int64_t Ms[] = {1, 2, 64};
  for (int mi = 0; mi < 3; mi++) {
    int64_t M = Ms[mi];
    wk_scope_begin();
    wk_tensor *W = on(wk_cast(wk_full(2, (int64_t[]){5, 64}, WK_F32, 1.0f), dt), WK_CUDA);
    wk_tensor *x = on(wk_full(2, (int64_t[]){M, 64}, WK_F32, xv), WK_CUDA);
    wk_tensor *g = on(wk_full(2, (int64_t[]){M, 5}, WK_F32, xv), WK_CUDA);
    float *y = W && x ? read_all(wk_matmul_t(x, 0, W, 1)) : NULL, *z = W && g ? read_all(wk_matmul(g, W)) : NULL;
    float ey = dt == WK_BF16 ? 64.0f : 64.0f * xv, ez = dt == WK_BF16 ? 5.0f : 5.0f * xv;
    int bad = !y || !z;
    for (int64_t i = 0; !bad && i < M * 5; i++) bad = y[i] != ey;
    for (int64_t i = 0; !bad && i < M * 64; i++) bad = z[i] != ez;
    CHECK(!bad, "%s weight on cuda, M = %lld: x %s (x @ W^T = %.9g, want %.9g; g @ W = %.9g, want %.9g)",
          wk_dtype_name(dt), (long long)M, dt == WK_BF16 ? "rounded to bf16" : "kept (f16 widens)",
          y ? (double)y[0] : NAN, (double)ey, z ? (double)z[0] : NAN, (double)ez);
    free(y), free(z);
    wk_tensor_free(W), wk_tensor_free(x), wk_tensor_free(g);
    wk_scope_end();
  }
}

// A weight and x on different devices are refused. A frozen f16 weight under an f32 x
// is read in place on cuda and widens exactly, as on the CPU: the CPU's product of the
// weight cast to f32, within f32 rounding; a trainable one is refused by name.
static void test_errors(void) {
  uint8_t *qb = random_blocks(WK_Q4_1, 4, 64);
  wk_scope_begin();
  wk_tensor *W = on(wk_from_data(2, (int64_t[]){4, 64}, WK_Q4_1, qb), WK_CUDA);
  CHECK(W && !wk_matmul_t(wk_randn(2, (int64_t[]){2, 64}, WK_F32, 1), 0, W, 1) && strstr(wk_last_error(), "cuda"),
        "x on the cpu, quantized weight on cuda refused");
  wk_tensor *h = on(wk_cast(wk_randn(2, (int64_t[]){5, 64}, WK_F32, 2), WK_F16), WK_CUDA);
  wk_tensor *x = on(wk_randn(2, (int64_t[]){3, 64}, WK_F32, 3), WK_CUDA);
  wk_tensor *y = h && x ? wk_to_device(wk_matmul_t(x, 0, h, 1), WK_CPU) : NULL;
  wk_tensor *yr = h && x ? wk_matmul_t(wk_to_device(x, WK_CPU), 0, wk_cast(wk_to_device(h, WK_CPU), WK_F32), 1) : NULL;
  float *a = y ? read_all(y) : NULL, *b = yr ? read_all(yr) : NULL;
  float e = 0;
  for (int i = 0; a && b && i < 15; i++) e = fmaxf(e, fabsf(a[i] - b[i]));
  CHECK(a && b && e <= 1e-5f, "frozen f16 weight under an f32 x on cuda widens: off by %g (%s)", (double)e,
        a ? "" : wk_last_error());
  free(a), free(b);
  wk_set_trainable(h, 1);
  CHECK(h && !wk_matmul_t(x, 0, h, 1) && strstr(wk_last_error(), "f16"), "trainable f16 weight on cuda refused by name");
  wk_tensor_free(W), wk_tensor_free(h), wk_tensor_free(x);
  wk_scope_end();
  free(qb);
}

// Logits of the tiny Q8_0 Llama: a 7-token forward, then a 4-token prefill and 5
// single tokens through the cache.
static float *logits_on(wk_device dev, int64_t *V, int *quant_kept) {
  wk_model *m = wk_model_load(fixture_in("models", "llama_q8_0.gguf"));
  if (!m || (dev != WK_CPU && wk_model_to_device(m, dev))) { wk_model_free(m); return NULL; }
  *V = wk_model_get_config(m)->vocab_size;
  wk_tensor *wq = *wk_llama_proj_weight(m, 0, WK_PROJ_Q);
  *quant_kept = wk_tensor_dtype(wq) == WK_Q8_0 && wk_tensor_device(wq) == dev && wk_dtype_is_quantized(wk_tensor_dtype(m->embed)) &&
                wk_tensor_device(m->embed) == dev;
  int32_t seq[10] = {1, 7, 3, 99, 42, 5, 17, 200, 8, 64};
  float *all = malloc(sizeof(float) * (size_t)(13 * *V));
  bool ok = all != NULL;
  wk_scope_begin();
  wk_tensor *ids = on(wk_from_data(2, (int64_t[]){1, 7}, WK_I32, seq), dev);
  float *f = ids ? read_all(wk_model_forward(m, ids, 0)) : NULL;
  if ((ok = ok && f)) memcpy(all, f, sizeof(float) * (size_t)(7 * *V));
  free(f);
  wk_tensor_free(ids);
  wk_scope_end();
  wk_kv_cache *c = wk_kv_cache_new(m);
  wk_kv_cache_set_max_context(c, 32);
  for (int t = 0; ok && t < 6; t++) {
    int64_t n = t ? 1 : 4;
    wk_scope_begin();
    wk_tensor *in = wk_from_data(2, (int64_t[]){1, n}, WK_I32, seq + (t ? 3 + t : 0));
    float *h = read_all(wk_model_forward_cached_last(m, in, c));
    if ((ok = h != NULL)) memcpy(all + (7 + t) * *V, h, sizeof(float) * (size_t)*V);
    free(h);
    wk_scope_end();
  }
  wk_kv_cache_free(c);
  wk_model_free(m);
  if (!ok) { free(all); return NULL; }
  return all;
}

static void test_model(void) {
  int64_t V = 0;
  int kc = 0, kg = 0;
  float *cpu = logits_on(WK_CPU, &V, &kc), *gpu = logits_on(WK_CUDA, &V, &kg);
  CHECK(kg, "tiny Q8_0 Llama on cuda: projections and embedding stay q8_0 on the device");
  float d = cpu && gpu ? max_abs_diff(cpu, gpu, 13 * V) : NAN;
  CHECK(d <= 1e-3f, "tiny Q8_0 Llama logits (forward + cached decode) cuda vs cpu max diff %g", (double)d);
  free(cpu), free(gpu);
}

// ---- timing (WICK_QMM_BENCH=1) ----
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// R chained decode GEMVs y = x @ W^T (x: first K of the previous y, so a step's input
// is the last one's output), evaluated as one plan; the second evaluation replays it.
// W [N, K] of dt: random blocks, or random values cast to f16/bf16. stream: the chain
// cycles through enough copies of W (up to R) to total 256 MB, so W comes from DRAM as
// in a model's decode step, not from L2 (50-60 MB on an H100 / H200).
static void bench_shape(wk_dtype dt, int64_t N, int64_t K, double copy_gbs, bool stream) {
  enum { R = 200 };
  bool half = !wk_dtype_is_quantized(dt);
  uint8_t *qb = half ? NULL : random_blocks(dt, N, K);
  size_t wb = wk_dtype_bytes(dt, N * K);
  int nw = stream ? (int)(((size_t)256 << 20) / wb + 1) : 1;
  if (nw > R) nw = R;
  wk_tensor *W[R] = {NULL};
  bool ok = true;
  for (int i = 0; i < nw && ok; i++)
    ok = (W[i] = on(half ? wk_cast(wk_randn(2, (int64_t[]){N, K}, WK_F32, 9 + (uint64_t)i), dt)
                         : wk_from_data(2, (int64_t[]){N, K}, dt, qb),
                    WK_CUDA)) != NULL;
  double best = INFINITY;
  for (int it = 0; ok && it < 4; it++) {
    wk_scope_begin();
    wk_tensor *t = on(wk_randn(2, (int64_t[]){1, K}, WK_F32, (uint64_t)it), WK_CUDA);
    wk_tensor *x = t;
    for (int r = 0; r < R; r++) {
      wk_tensor *y = wk_matmul_t(x, 0, W[r % nw], 1);
      x = N == K ? y : N > K ? wk_slice(y, 1, 0, K, 1) : wk_pad(y, (int64_t[]){0, 0}, (int64_t[]){0, K - N}, 0.0f);
    }
    wk_sync();
    double t0 = now_s();
    wk_status st = wk_eval(1, &x);
    wk_sync();
    double dtm = now_s() - t0;
    if (!st && it > 0 && dtm < best) best = dtm;
    wk_tensor_free(t);
    wk_scope_end();
  }
  double per = best / R, gb = (double)wb / 1e9;
  printf("bench %s W [%lld, %lld] M=1%s: %.2f us per matmul (chain of %d, one plan), %.0f GB/s of weight bytes = %.0f%% "
         "of copy\n",
         wk_dtype_name(dt), (long long)N, (long long)K, stream ? " from DRAM" : "", per * 1e6, R, gb / per,
         100 * gb / per / copy_gbs);
  for (int i = 0; i < nw; i++) wk_tensor_free(W[i]);
  free(qb);
}

static void bench(void) {
  // device-to-device copy of 512 MB: read + write bytes per second
  size_t n = (size_t)512 << 20;
  void *a = NULL, *b = NULL;
  double copy = 0;
  if (cudaMalloc(&a, n) == cudaSuccess && cudaMalloc(&b, n) == cudaSuccess) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    float ms = 0;
    cudaEventRecord(e0, 0);
    for (int i = 0; i < 10; i++) cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    copy = 2.0 * (double)n * 10 / (ms * 1e-3) / 1e9;
    printf("bench copy bandwidth (device to device, 512 MB, read + write): %.0f GB/s on %s\n", copy,
           wk_cuda_device_name());
  }
  cudaFree(a), cudaFree(b);
  const int64_t shapes[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
  const wk_dtype dts[] = {WK_Q4_1, WK_Q8_0, WK_Q4_K};
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 4; s++)
      if (shapes[s][1] % wk_dtype_block(dts[d]) == 0) bench_shape(dts[d], shapes[s][0], shapes[s][1], copy, false);
  // Qwen2.5-0.5B's decode shapes (q/o, k/v, gate/up, down, the tied LM head) in bf16, and
  // two weights of 117 and 235 MB, larger than L2: one W (L2-resident but the last three),
  // then cycling through copies from DRAM, as decode reads them
  const int64_t qwen[][2] = {{896, 896}, {128, 896}, {4864, 896}, {896, 4864}, {151936, 896}, {14336, 4096}, {28672, 4096}};
  for (int s = 0; s < 7; s++) bench_shape(WK_BF16, qwen[s][0], qwen[s][1], copy, false);
  for (int s = 0; s < 5; s++) bench_shape(WK_BF16, qwen[s][0], qwen[s][1], copy, true);
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) test_type(types[i]);
  test_half(WK_BF16);
  test_half(WK_F16);
  test_half_rounding(WK_BF16);
  test_half_rounding(WK_F16);
  test_errors();
  test_model();
  if (getenv("WICK_QMM_BENCH") && atoi(getenv("WICK_QMM_BENCH"))) bench();
  return check_report();
}
