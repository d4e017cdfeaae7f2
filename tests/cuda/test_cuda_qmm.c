// The half-weight matmul's fused ends on CUDA (compile_rewrite.c's match_qswiglu /
// match_qepilogue / match_qnorm / match_norm_weights, halfmm.cu) against the CPU
// backend, which runs the unfused graph:
//  - y = x @ W^T + b (b a bf16 / f16 bias read through its cast, or f32), r + x @ W^T
//    (a residual), silu(g) * u @ W^T, and r + silu(g) * u @ W^T, for f16 and bf16 W,
//    x [1, M, K] with M = 1 (the one-row GEMV: narrow, split and wide W), 3 (the staged
//    GEMV) and 12 (the cuBLAS path), K aligned and not: within 2e-5 of sum |x w| + |add|
//    of the CPU's (SwiGLU: 1e-3, the CPU's silu may differ by an ulp, which can move
//    x's bf16 rounding); each plan is one QMATMUL step with the expected flags, and its
//    values are bit-identical to the same graph evaluated unfused on CUDA (the product
//    or the SwiGLU value made a target, so the planner keeps them);
//  - r + silu(x @ Wg^T) * u @ W^T (a decode MLP's gate, then down): at M <= 8 the gate's
//    step stores silu(gate) (WK_QMM_SILU) and the product reads gate * up (WK_QMM_GLU),
//    at M = 12 the product keeps the SwiGLU prologue; the same checks as above;
//  - rms_norm(h, w) @ W^T and the same plus a bf16 / f16 bias (w a half weight read
//    through its cast): at M = 1 one QMATMUL step whose GEMV blocks compute the norm
//    (the norm runs first, in a kernel of its own, when the row is not 16-byte aligned
//    or the grid is wide), within
//    1e-3 of the CPU's (the sum of squares runs in another order, which can move x's
//    bf16 rounding) and of the unfused CUDA graph; at M > 1 the norm stays a step;
//  - sibling products of one x (q, k, v; gate and up): one group step (halfmm.cu's
//    grouped GEMV launch at M = 1, member by member otherwise), bit-identical to each
//    product alone;
//  - a dense x too wide for one scratch copy, multiplied in blocks of rows; an x that
//    only a bf16 GEMM reads, stored in bf16 by its producer;
//  - a residual added by the bf16 GEMM in place (x @ W^T, and x @ W as a backward's
//    dX), apart when the residual is a target, against the unfused graph;
//  - a LoRA projection (x @ W^T + s (x A) B) and its backward's products of s dy: the
//    scale in the GEMMs' alpha, no elementwise step, values against the CPU's;
//  - the tiny Qwen2 saved in bf16 (q/k/v biases, bf16 norm weights read by the norm
//    kernels directly): logits of a 6-token forward within 2e-2 of the CPU's, and 16
//    greedy tokens through a bf16 cache equal to the CPU's.
// Skipped (77) without a GPU.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "fixtures.h"
#include "wick/generate.h"
#include "wick/model.h"

static wk_tensor *on(wk_tensor *t, wk_device dev) {
  wk_tensor *r = wk_keep(wk_to_device(t, dev));
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}
static wk_tensor *realized(wk_tensor *t) {
  wk_tensor *r = wk_keep(t);
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}

enum { F_BIAS_HALF, F_BIAS_F32, F_RESID, F_SWIGLU, F_SWIGLU_RESID, F_NORM, F_NORM_BIAS, F_GLU, F_COUNT };
static const char *fname[F_COUNT] = {"bias (half, cast)", "bias (f32)", "residual", "swiglu", "swiglu + residual",
                                     "rmsnorm", "rmsnorm + bias", "gate GEMV + swiglu + residual"};
static bool is_norm(int f) { return f == F_NORM || f == F_NORM_BIAS; }
static const float NORM_EPS = 1e-6f;

typedef struct {
  wk_tensor *x, *g, *u, *w, *bh, *bf, *r, *nw, *wg;   // on one device (wg: F_GLU's gate weight [K, K])
} operands;

// x as the form computes it (before the product)
static wk_tensor *form_x(const operands *o, int f) {
  if (f == F_SWIGLU || f == F_SWIGLU_RESID) return wk_mul(wk_silu(o->g), o->u);
  if (f == F_GLU) return wk_mul(wk_silu(wk_matmul_t(o->x, 0, o->wg, 1)), o->u);
  if (is_norm(f)) return wk_rms_norm(o->x, wk_cast(o->nw, WK_F32), NORM_EPS);
  return o->x;
}

// The form's graph; *inner: the node the unfused variant makes a target.
static wk_tensor *form(const operands *o, int f, wk_tensor **inner) {
  wk_tensor *x = form_x(o, f);
  wk_tensor *mm = wk_matmul_t(x, 0, o->w, 1), *y = mm;
  if (f == F_BIAS_HALF || f == F_NORM_BIAS) y = wk_add(mm, wk_cast(o->bh, WK_F32));
  if (f == F_BIAS_F32) y = wk_add(mm, o->bf);
  if (f == F_RESID || f == F_SWIGLU_RESID || f == F_GLU) y = wk_add(o->r, mm);
  *inner = f == F_SWIGLU || f == F_NORM || f == F_GLU ? x : mm;
  return y;
}

static void run_case(wk_dtype wdt, int64_t M, int64_t N, int64_t K) {
  const char *wn = wk_dtype_name(wdt);
  wk_scope_begin();
  operands c = {
      .x = realized(wk_randn(3, (int64_t[]){1, M, K}, WK_F32, 11 + (uint64_t)(M * 7 + K))),
      .g = realized(wk_mul_scalar(wk_randn(3, (int64_t[]){1, M, K}, WK_F32, 13 + (uint64_t)K), 2.0f)),
      .u = realized(wk_randn(3, (int64_t[]){1, M, K}, WK_F32, 17 + (uint64_t)N)),
      .w = realized(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){N, K}, WK_F32, 19 + (uint64_t)N), 0.1f), wdt)),
      .bh = realized(wk_cast(wk_randn(1, (int64_t[]){N}, WK_F32, 23), wdt)),
      .bf = realized(wk_randn(1, (int64_t[]){N}, WK_F32, 29)),
      .r = realized(wk_randn(3, (int64_t[]){1, M, N}, WK_F32, 31 + (uint64_t)M)),
      .nw = realized(wk_cast(wk_add_scalar(wk_mul_scalar(wk_randn(1, (int64_t[]){K}, WK_F32, 37), 0.2f), 1.0f), wdt)),
      .wg = realized(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){K, K}, WK_F32, 39 + (uint64_t)K), 0.1f), wdt)),
  };
  operands d = {on(c.x, WK_CUDA), on(c.g, WK_CUDA), on(c.u, WK_CUDA), on(c.w, WK_CUDA), on(c.bh, WK_CUDA),
                on(c.bf, WK_CUDA), on(c.r, WK_CUDA), on(c.nw, WK_CUDA), on(c.wg, WK_CUDA)};
  bool ok = d.x && d.g && d.u && d.w && d.bh && d.bf && d.r && d.nw && d.wg;
  CHECK(ok, "%s [%lld,%lld,%lld]: operands on cuda", wn, (long long)M, (long long)N, (long long)K);
  float *wv = ok ? read_all(wk_cast(c.w, WK_F32)) : NULL;
  for (int f = 0; ok && wv && f < F_COUNT; f++) {
    wk_tensor *ci, *gi, *ui;   // ci, gi: unused here
    wk_tensor *yc = form(&c, f, &ci), *yg = realized(form(&d, f, &gi)), *yu = form(&d, f, &ui);
    // the fused plan: one QMATMUL step with this form's flags (a norm: one row only; at
    // M > 1 the norm is a step of its own, then the product with its addend)
    int want = f == F_SWIGLU ? WK_QMM_SWIGLU : f == F_SWIGLU_RESID ? WK_QMM_SWIGLU | WK_QMM_ADD
               : f == F_NORM ? WK_QMM_NORM : f == F_NORM_BIAS ? WK_QMM_NORM | WK_QMM_ADD : WK_QMM_ADD;
    const wk_plan *p = wk_last_plan();
    int nstep = (is_norm(f) && M > 1) || f == F_GLU ? 2 : 1, want0 = -1;
    if (nstep == 2) want = f == F_NORM ? 0 : WK_QMM_ADD;
    // the gate's GEMV stores silu(gate) and the product reads gate * up (GEMV rows only)
    if (f == F_GLU) want0 = M <= 8 ? WK_QMM_SILU : 0, want = WK_QMM_ADD | (M <= 8 ? WK_QMM_GLU : WK_QMM_SWIGLU);
    bool one = yg && p && p->nsteps == nstep && p->steps[nstep - 1].op == WK_OP_QMATMUL &&
               p->steps[nstep - 1].attrs.i[1] == want &&
               (want0 < 0 || (p->steps[0].op == WK_OP_QMATMUL && p->steps[0].attrs.i[1] == want0));
    CHECK(one, "%s [%lld,%lld,%lld] %s: %d step(s), the last a QMATMUL with flags %d (steps %d, flags %d)", wn,
          (long long)M, (long long)N, (long long)K, fname[f], nstep, want, p ? p->nsteps : -1,
          p && p->nsteps ? (int)p->steps[p->nsteps - 1].attrs.i[1] : -1);
    // unfused on cuda: the inner node is a target too
    wk_tensor *both[2] = {ui, yu};
    bool uok = wk_eval(2, both) == WK_OK;
    float *vc = read_all(yc), *vg = yg ? read_all(yg) : NULL, *vu = uok ? read_all(yu) : NULL;
    float *xv = read_all(form_x(&c, f));
    float *bv = f == F_BIAS_HALF || f == F_NORM_BIAS ? read_all(wk_cast(c.bh, WK_F32)) : f == F_BIAS_F32 ? read_all(c.bf)
                : f == F_RESID || f == F_SWIGLU_RESID || f == F_GLU ? read_all(c.r) : NULL;
    double e = vc && vg && xv ? 0 : INFINITY;
    for (int64_t i = 0; e < INFINITY && i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = 1e-30;
        for (int64_t k = 0; k < K; k++) s += fabs((double)xv[i * K + k] * wv[j * K + k]);
        if (bv) s += fabs((double)bv[f == F_RESID || f == F_SWIGLU_RESID || f == F_GLU ? i * N + j : j]);
        double q = fabs((double)vg[i * N + j] - vc[i * N + j]) / s;
        if (q > e || q != q) e = q;
      }
    (void)ci, (void)gi;
    double tol = f == F_SWIGLU || f == F_SWIGLU_RESID || f == F_GLU || is_norm(f) ? 1e-3 : 2e-5;
    CHECK(e < tol, "%s [%lld,%lld,%lld] %s: cuda vs cpu %g (tolerance %g)", wn, (long long)M, (long long)N,
          (long long)K, fname[f], e, tol);
    if (!is_norm(f) || M > 1) {
      CHECK(vg && vu && !memcmp(vg, vu, sizeof(float) * (size_t)(M * N)),
            "%s [%lld,%lld,%lld] %s: fused = unfused on cuda, bit for bit (max diff %g)", wn, (long long)M,
            (long long)N, (long long)K, fname[f], (double)max_abs_diff(vg, vu, M * N));
    } else {   // the norm's sum of squares runs in another order than the row kernel's
      double eu = vg && vu ? 0 : INFINITY;
      for (int64_t j = 0; eu < INFINITY && j < N; j++) {
        double sc = 1e-30;
        for (int64_t k = 0; k < K; k++) sc += fabs((double)xv[k] * wv[j * K + k]);
        if (bv) sc += fabs((double)bv[j]);
        double q = fabs((double)vg[j] - vu[j]) / sc;
        if (q > eu || q != q) eu = q;
      }
      CHECK(eu < tol, "%s [%lld,%lld,%lld] %s: fused vs unfused on cuda %g (tolerance %g)", wn, (long long)M,
            (long long)N, (long long)K, fname[f], eu, tol);
    }
    free(vc), free(vg), free(vu), free(xv), free(bv);
  }
  free(wv);
  wk_scope_end();
}

static void test_ops(void) {
  // (M, N, K): one-row GEMV narrow / split over a long row / wide / wide enough that a norm
  // runs first (halfmm.cu's NORM_FIRST) / Qwen2.5-0.5B's K (a lane's chunks of h past
  // K / 256), odd K, staged M = 3, cuBLAS M = 12
  const int64_t cases[][3] = {{1, 37, 136}, {1, 64, 4864}, {1, 8485, 64}, {1, 20000, 64}, {1, 300, 896}, {1, 300, 100},
                              {3, 37, 136}, {3, 45, 100},  {12, 70, 136}, {12, 33, 100}};
  const wk_dtype dts[] = {WK_BF16, WK_F16};
  for (int t = 0; t < 2; t++)
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(dts[t], cases[i][0], cases[i][1], cases[i][2]);
}

// Siblings of one x (q with a bf16 bias, k plain, v with an f32 bias, a Qwen2 layer's
// shapes scaled down; then gate and up): one group step, each output bit-identical to
// the product evaluated on its own and within 2e-5 of sum |x w| + |b| of the CPU's.
static void test_siblings(wk_dtype wdt, int64_t M) {
  const char *wn = wk_dtype_name(wdt);
  const int64_t K = 136, Ns[4] = {112, 16, 16, 300};
  wk_scope_begin();
  wk_tensor *xc = realized(wk_randn(3, (int64_t[]){1, M, K}, WK_F32, 41)), *xg = on(xc, WK_CUDA);
  wk_tensor *wc[4], *wg[4], *bc[4] = {NULL}, *bg[4] = {NULL};
  bool ok = xg != NULL;
  for (int i = 0; i < 4; i++) {
    wc[i] = realized(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){Ns[i], K}, WK_F32, 43 + (uint64_t)i), 0.1f), wdt));
    wg[i] = on(wc[i], WK_CUDA);
    if (i == 0) bc[i] = realized(wk_cast(wk_randn(1, (int64_t[]){Ns[i]}, WK_F32, 47), wdt));
    if (i == 2) bc[i] = realized(wk_randn(1, (int64_t[]){Ns[i]}, WK_F32, 53));
    if (bc[i]) bg[i] = on(bc[i], WK_CUDA);
    ok = ok && wg[i] && (!bc[i] || bg[i]);
  }
  CHECK(ok, "siblings %s M=%lld: operands on cuda", wn, (long long)M);
  if (!ok) { wk_scope_end(); return; }
  wk_tensor *yc[4], *yg[4], *ys[4];
  for (int i = 0; i < 4; i++) {
    wk_tensor *b[3] = {bc[i], bg[i], bg[i]};
    wk_tensor *x[3] = {xc, xg, xg}, *w[3] = {wc[i], wg[i], wg[i]}, *y[3];
    for (int d = 0; d < 3; d++) {
      y[d] = wk_matmul_t(x[d], 0, w[d], 1);
      if (b[d]) y[d] = wk_add(y[d], wk_tensor_dtype(b[d]) == WK_F32 ? b[d] : wk_cast(b[d], WK_F32));
    }
    yc[i] = y[0], yg[i] = y[1];
    ys[i] = realized(y[2]);   // alone: a graph of its own
  }
  ok = wk_eval(4, yg) == WK_OK;
  const wk_plan *p = wk_last_plan();
  int heads = 0, len = 0;
  for (int k = 0; ok && p && k < p->nsteps; k++)
    if (p->steps[k].op == WK_OP_QMATMUL && p->steps[k].chain > 0) heads++, len = p->steps[k].chain;
  CHECK(ok && p && p->nsteps == 4 && heads == 1 && len == 4, "siblings %s M=%lld: one group of 4 steps (%d steps, %d groups of %d)",
        wn, (long long)M, p ? p->nsteps : -1, heads, len);
  float *xv = read_all(xc);
  for (int i = 0; ok && i < 4; i++) {
    float *vc = read_all(yc[i]), *vg = read_all(yg[i]), *vs = read_all(ys[i]), *wv = read_all(wk_cast(wc[i], WK_F32));
    float *bv = bc[i] ? read_all(wk_cast(bc[i], WK_F32)) : NULL;
    double e = vc && vg && wv && xv ? 0 : INFINITY;
    for (int64_t m = 0; e < INFINITY && m < M; m++)
      for (int64_t j = 0; j < Ns[i]; j++) {
        double s = 1e-30 + (bv ? fabs((double)bv[j]) : 0);
        for (int64_t k = 0; k < K; k++) s += fabs((double)xv[m * K + k] * wv[j * K + k]);
        double q = fabs((double)vg[m * Ns[i] + j] - vc[m * Ns[i] + j]) / s;
        if (q > e || q != q) e = q;
      }
    CHECK(e < 2e-5, "siblings %s M=%lld, member %d: cuda vs cpu %g", wn, (long long)M, i, e);
    CHECK(vg && vs && !memcmp(vg, vs, sizeof(float) * (size_t)(M * Ns[i])),
          "siblings %s M=%lld, member %d: grouped = alone, bit for bit", wn, (long long)M, i);
    free(vc), free(vg), free(vs), free(wv), free(bv);
  }
  free(xv);
  wk_scope_end();
}

// ---- the tiny Qwen2 in bf16 ----
typedef struct { int32_t ids[16]; int n; } gen_out;
static int on_gen(const wk_gen_token *t, void *user) {
  gen_out *o = user;
  if (o->n < 16) o->ids[o->n++] = t->id;
  return 0;
}

static void test_model(void) {
  char dir[] = "/tmp/wick_qmm_XXXXXX";
  wk_model *src = wk_model_load(fixture_in("models", "qwen2"));
  bool saved = src && mkdtemp(dir) && wk_model_save(src, dir, WK_BF16) == WK_OK;
  wk_model_free(src);
  CHECK(saved, "qwen2 fixture saved in bf16");
  if (!saved) return;
  static const int32_t prompt[] = {1, 7, 3, 99, 42, 5};
  float *lg[2] = {NULL, NULL};
  gen_out go[2];
  int64_t V = 0;
  for (int dv = 0; dv < 2; dv++) {
    wk_device dev = dv ? WK_CUDA : WK_CPU;
    wk_model *m = wk_model_load(dir);
    if (!m || (dev != WK_CPU && wk_model_to_device(m, dev))) { wk_model_free(m); continue; }
    V = wk_model_get_config(m)->vocab_size;
    wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 6}, WK_I32, prompt);
    wk_tensor *idd = dev == WK_CPU ? wk_tensor_ref(ids) : on(ids, dev);
    lg[dv] = idd ? read_all(wk_model_forward(m, idd, 0)) : NULL;
    wk_tensor_free(idd);
    wk_tensor_free(ids);
    wk_generate_params p = wk_generate_defaults();
    p.max_tokens = 16;
    p.ignore_eos = true;
    p.cache_dtype = WK_BF16;
    memset(&go[dv], 0, sizeof go[dv]);
    if (wk_generate(m, NULL, prompt, 6, &p, on_gen, &go[dv], NULL) != WK_OK) go[dv].n = -1;
    wk_model_free(m);
  }
  float d = max_abs_diff(lg[0], lg[1], 6 * V);
  // a bf16 model attends in bf16 (llama.c): on CUDA the tensor-core kernel rounds P to
  // bf16 where the CPU keeps f32, which moves the bf16 rounding of some o_proj inputs by
  // an ulp; the devices agree to bf16's precision (measured 1.0e-2; 2e-3 with f32 attention)
  CHECK(lg[0] && lg[1] && d < 2e-2f, "qwen2 bf16: forward logits cuda vs cpu differ by %g", (double)d);
  CHECK(go[0].n == 16 && go[1].n == 16 && !memcmp(go[0].ids, go[1].ids, sizeof go[0].ids),
        "qwen2 bf16: 16 greedy tokens through a bf16 cache, cuda = cpu (%d, %d tokens)", go[0].n, go[1].n);
  free(lg[0]), free(lg[1]);
  char path[256];
  snprintf(path, sizeof path, "%s/config.json", dir), remove(path);
  snprintf(path, sizeof path, "%s/model.safetensors", dir), remove(path);
  rmdir(dir);
}

// A dense x whose bf16 copy would pass the GEMM path's scratch block (halfmm.cu's
// XBLOCK_BYTES, 64 MB) is rounded and multiplied in blocks of rows: x [160, 262144]
// (84 MB in bf16: a block of 128 rows, then 32) times a bf16 W^T [8, 262144] and W
// [262144, 8] (the backward's product with a vocabulary-wide gradient), plus a
// residual. Within 1e-4 of sum |x w| + |r| of the CPU's: both round x to bf16 the
// same way, so products are exact and only the order of 262144-term sums differs.
static void test_row_blocks(void) {
  const int64_t M = 160, K = 262144, N = 8;
  wk_scope_begin();
  wk_tensor *x = realized(wk_randn(2, (int64_t[]){M, K}, WK_F32, 41)), *r = realized(wk_randn(2, (int64_t[]){M, N}, WK_F32, 53));
  wk_tensor *w[2] = {realized(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){K, N}, WK_F32, 47), 0.1f), WK_BF16)),
                     realized(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){N, K}, WK_F32, 43), 0.1f), WK_BF16))};
  wk_tensor *dx = on(x, WK_CUDA), *dr = on(r, WK_CUDA);
  float *xv = read_all(x), *rv = read_all(r);
  for (int t = 0; t < 2; t++) {   // t = 0: x @ W, t = 1: x @ W^T
    wk_tensor *dw = on(w[t], WK_CUDA);
    float *vc = read_all(wk_add(r, wk_qmatmul(x, w[t], t))), *vg = dx && dw ? read_all(wk_add(dr, wk_qmatmul(dx, dw, t))) : NULL;
    float *wv = read_all(wk_cast(w[t], WK_F32));
    double e = vc && vg && wv && xv && rv ? 0 : INFINITY;
    for (int64_t i = 0; e < INFINITY && i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double sc = 1e-30 + fabs((double)rv[i * N + j]);
        for (int64_t k = 0; k < K; k++) sc += fabs((double)xv[i * K + k] * wv[t ? j * K + k : k * N + j]);
        double q = fabs((double)vg[i * N + j] - vc[i * N + j]) / sc;
        if (q > e || q != q) e = q;
      }
    CHECK(e < 1e-4, "x [%lld, %lld] @ W%s in row blocks: cuda vs cpu %g", (long long)M, (long long)K, t ? "^T" : "", e);
    printf("x [%lld, %lld] @ W%s in row blocks: cuda vs cpu %.2g of sum |x w| + |r|\n", (long long)M, (long long)K,
           t ? "^T" : "", e);
    free(vc), free(vg), free(wv);
    wk_tensor_free(dw);
  }
  free(xv), free(rv);
  wk_tensor_free(dx), wk_tensor_free(dr);
  wk_scope_end();
}

// An elementwise root read only by a bf16 GEMM (over 8 rows) is stored in bf16 and read
// in place (compile_rewrite.c's wk_compile_bf16_inputs): x = a * b [64, 256] times a bf16 W^T [48, 256]
// plus a residual, and x times W [256, 48]. The producer's step stores bf16, and the
// products equal, bit for bit, the same graphs with x a target (kept in f32, rounded by
// the GEMM path's copy).
static void test_bf16_inputs(void) {
  wk_scope_begin();
  wk_tensor *a = on(wk_randn(2, (int64_t[]){64, 256}, WK_F32, 81), WK_CUDA), *b = on(wk_randn(2, (int64_t[]){64, 256}, WK_F32, 82), WK_CUDA);
  wk_tensor *r = on(wk_randn(2, (int64_t[]){64, 48}, WK_F32, 83), WK_CUDA);
  wk_tensor *w[2] = {on(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){256, 48}, WK_F32, 84), 0.1f), WK_BF16), WK_CUDA),
                     on(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){48, 256}, WK_F32, 85), 0.1f), WK_BF16), WK_CUDA)};
  for (int t = 0; t < 2 && a && b && r && w[0] && w[1]; t++) {   // t = 0: x @ W, t = 1: x @ W^T + r
    wk_tensor *x = wk_mul(a, b), *y = wk_qmatmul(x, w[t], t);
    if (t) y = wk_add(r, y);
    CHECK(wk_eval(1, &y) == WK_OK, "eval [%s]", wk_last_error());
    const wk_plan *p = wk_last_plan();
    bool stored_bf16 = false;
    for (int k = 0; p && k < p->nsteps; k++)
      stored_bf16 |= p->steps[k].op == WK_STEP_FUSED_EW && p->steps[k].out.dtype == WK_BF16 && p->steps[k].out.shape[1] == 256;
    CHECK(stored_bf16, "x @ W%s: the product is stored in bf16", t ? "^T" : "");
    wk_tensor *x2 = wk_mul(a, b), *y2 = wk_qmatmul(x2, w[t], t);
    if (t) y2 = wk_add(r, y2);
    wk_tensor *both[2] = {x2, y2};
    CHECK(wk_eval(2, both) == WK_OK, "eval with x a target");
    float *v1 = read_all(y), *v2 = read_all(y2);
    CHECK(v1 && v2 && !memcmp(v1, v2, sizeof(float) * 64 * 48), "x @ W%s: bf16-stored x = f32 x rounded by the GEMM, bit for bit (max diff %g)",
          t ? "^T" : "", v1 && v2 ? (double)max_abs_diff(v1, v2, 64 * 48) : -1.0);
    free(v1), free(v2);
  }
  wk_tensor_free(a), wk_tensor_free(b), wk_tensor_free(r), wk_tensor_free(w[0]), wk_tensor_free(w[1]);
  wk_scope_end();
}

// A residual computed in the plan and read last by a bf16 GEMM (over 8 rows) lends the
// product its buffer (compile_memory.c's qmm_addend_in_place; cuBLAS adds into it, beta = 1):
// softmax(r + x @ W^T) with r = r0 + 0.5, against the same graph with r a target (the product
// then written apart and the residual added after), bit for bit; at 4 rows (the GEMV)
// the output keeps its own buffer.
static int64_t arena_offset(const wk_plan *p, const wk_operand *o) {
  const int first = p->nslots - p->narena;
  return o->slot >= first ? p->arena_off[o->slot - first] : -1 - o->slot;
}
static void test_addend_in_place(void) {
  wk_scope_begin();
  wk_tensor *w = on(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){48, 256}, WK_F32, 91), 0.1f), WK_BF16), WK_CUDA);
  for (int t = 1; t >= 0; t--)   // t = 1: x [M, 256] @ W^T; t = 0: x [M, 48] @ W (a backward's dX)
    for (int64_t M = 4; M <= 64 && w; M *= 16) {
      const int64_t in = t ? 256 : 48, out = t ? 48 : 256;
      const char *f = t ? "W^T" : "W";
      wk_tensor *x = on(wk_randn(2, (int64_t[]){M, in}, WK_F32, 92), WK_CUDA), *r0 = on(wk_randn(2, (int64_t[]){M, out}, WK_F32, 93), WK_CUDA);
      // (the sum feeds a softmax: a plan's result has a buffer of its own, not the arena's)
      wk_tensor *r = wk_add_scalar(r0, 0.5f), *y = wk_softmax(wk_add(r, wk_qmatmul(x, w, t)), -1);
      CHECK(wk_eval(1, &y) == WK_OK, "eval [%s]", wk_last_error());
      const wk_plan *p = wk_last_plan();
      const wk_step *q = NULL;
      for (int k = 0; p && k < p->nsteps; k++)
        if (p->steps[k].op == WK_OP_QMATMUL) q = &p->steps[k];
      const bool fused = q && q->nin == 3, shared = fused && arena_offset(p, &q->out) == arena_offset(p, &q->in[2]);
      CHECK(fused && shared == (M > 8), "[%lld, %lld] @ %s + r: one step, the output %s the residual's buffer", (long long)M,
            (long long)in, f, M > 8 ? "takes" : "keeps apart from");
      wk_tensor *r2 = wk_add_scalar(r0, 0.5f), *y2 = wk_softmax(wk_add(r2, wk_qmatmul(x, w, t)), -1);
      wk_tensor *both[2] = {r2, y2};
      CHECK(wk_eval(2, both) == WK_OK, "eval with r a target");
      p = wk_last_plan();
      q = NULL;
      for (int k = 0; p && k < p->nsteps; k++)
        if (p->steps[k].op == WK_OP_QMATMUL) q = &p->steps[k];
      CHECK(q && q->nin == 3 && arena_offset(p, &q->out) != arena_offset(p, &q->in[2]),
            "[%lld, %lld] @ %s + r, r a target: the addend is added apart", (long long)M, (long long)in, f);
      // the product a target too: no fused end, an elementwise add after it
      wk_tensor *r3 = wk_add_scalar(r0, 0.5f), *pr = wk_qmatmul(x, w, t), *y3 = wk_softmax(wk_add(r3, pr), -1);
      wk_tensor *three[2] = {pr, y3};
      CHECK(wk_eval(2, three) == WK_OK, "eval with the product a target");
      float *v1 = read_all(y), *v2 = read_all(y2), *v3 = read_all(y3);
      CHECK(v1 && v2 && !memcmp(v1, v2, sizeof(float) * (size_t)(M * out)),
            "[%lld, %lld] @ %s + r: in place = apart, bit for bit (max diff %g)", (long long)M, (long long)in, f,
            v1 && v2 ? (double)max_abs_diff(v1, v2, M * out) : -1.0);
      CHECK(v1 && v3 && max_abs_diff(v1, v3, M * out) <= 1e-6f, "[%lld, %lld] @ %s + r: fused = unfused (max diff %g)",
            (long long)M, (long long)in, f, v1 && v3 ? (double)max_abs_diff(v1, v3, M * out) : -1.0);
      free(v1), free(v2), free(v3);
      wk_tensor_free(x), wk_tensor_free(r0);
    }
  wk_tensor_free(w);
  wk_scope_end();
}

// A LoRA projection of a frozen bf16 W as the trainer builds it, x @ W^T + s (x A) B
// over 64 rows (compile_rewrite.c's match_scaled_product, then match_qepilogue): the adapter's
// product is scaled by its GEMM (alpha) and the bf16 GEMM adds into it in place, so the
// plan has no elementwise step; and its backward's products of the scaled gradient
// (dB = (x A)^T (s dy), d(x A) = (s dy) B^T) scale their own GEMMs. Values within
// 2e-5 (relative) of the CPU's, which runs the same graph with its own rewrites.
static void test_lora_scaled(void) {
  const int64_t M = 64, K = 96, N = 80, R = 8;
  const float s = 1.5f;
  wk_tensor *got[4] = {NULL}, *want[4] = {NULL};
  for (int d = 0; d < 2; d++) {
    const wk_device dev = d ? WK_CUDA : WK_CPU;
    wk_scope_begin();
    wk_tensor *x = on(wk_randn(2, (int64_t[]){M, K}, WK_F32, 101), dev);
    wk_tensor *w = on(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){N, K}, WK_F32, 102), 0.1f), WK_BF16), dev);
    wk_tensor *a = on(wk_mul_scalar(wk_randn(2, (int64_t[]){K, R}, WK_F32, 103), 0.1f), dev);
    wk_tensor *b = on(wk_mul_scalar(wk_randn(2, (int64_t[]){R, N}, WK_F32, 104), 0.1f), dev);
    wk_tensor *dy = on(wk_randn(2, (int64_t[]){M, N}, WK_F32, 105), dev);
    wk_tensor *xa = wk_matmul(x, a);
    wk_tensor *y = wk_softmax(wk_add(wk_qmatmul(x, w, 1), wk_mul_scalar(wk_matmul(xa, b), s)), -1);
    CHECK(wk_eval(1, &y) == WK_OK, "LoRA forward on %s: eval", d ? "cuda" : "cpu");
    const wk_plan *p = wk_last_plan();
    int scaled = 0, ew = 0, added = 0;
    for (int k = 0; p && k < p->nsteps; k++) {
      const wk_step *q = &p->steps[k];
      scaled += q->op == WK_OP_MATMUL && q->attrs.i[1];
      ew += q->op == WK_STEP_FUSED_EW;
      added += q->op == WK_OP_QMATMUL && q->nin == 3 && arena_offset(p, &q->out) == arena_offset(p, &q->in[2]);
    }
    if (d) CHECK(scaled == 1 && ew == 0 && added == 1, "LoRA forward on cuda: %d scaled products (1), %d elementwise steps (0), "
                 "%d bf16 GEMMs adding in place (1)", scaled, ew, added);
    wk_tensor *sdy = wk_mul_scalar(dy, s);
    wk_tensor *g[3] = {wk_matmul(wk_transpose(xa, 0, 1), sdy), wk_matmul_t(sdy, 0, b, 1), NULL};   // dB, d(x A)
    CHECK(wk_eval(2, g) == WK_OK, "LoRA backward products on %s: eval", d ? "cuda" : "cpu");
    p = wk_last_plan();
    scaled = ew = 0;
    for (int k = 0; p && k < p->nsteps; k++) {
      scaled += p->steps[k].op == WK_OP_MATMUL && p->steps[k].attrs.i[1];
      ew += p->steps[k].op == WK_STEP_FUSED_EW;
    }
    CHECK(scaled == 2 && ew == 0, "LoRA backward products on %s: %d scaled (2), %d elementwise steps (0)", d ? "cuda" : "cpu",
          scaled, ew);
    wk_tensor **dst = d ? got : want;
    dst[0] = wk_keep(y), dst[1] = wk_keep(g[0]), dst[2] = wk_keep(g[1]);
    wk_tensor_free(x), wk_tensor_free(w), wk_tensor_free(a), wk_tensor_free(b), wk_tensor_free(dy);
    wk_scope_end();
  }
  const char *what[3] = {"softmax(x W^T + s (x A) B)", "(x A)^T (s dy)", "(s dy) B^T"};
  for (int k = 0; k < 3; k++) {
    const float e = max_rel_diff(got[k], want[k]);
    CHECK(e <= 2e-5f, "%s: cuda within %g of the cpu (2e-5)", what[k], (double)e);
    wk_tensor_free(got[k]), wk_tensor_free(want[k]);
  }
}

int main(void) {
  // every fusion this file checks on, whatever the defaults (read at the first compile)
  setenv("WICK_CUDA_QEPI", "1", 1), setenv("WICK_CUDA_QSWIGLU", "1", 1), setenv("WICK_CUDA_NORMW", "1", 1);
  setenv("WICK_CUDA_QGROUP", "1", 1);
  SKIP_WITHOUT_CUDA();
  test_ops();
  test_row_blocks();
  test_bf16_inputs();
  test_addend_in_place();
  test_lora_scaled();
  const wk_dtype dts[] = {WK_BF16, WK_F16};
  for (int t = 0; t < 2; t++) test_siblings(dts[t], 1), test_siblings(dts[t], 3);
  test_model();
  return check_report();
}
