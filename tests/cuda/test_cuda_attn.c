// Flash attention on CUDA (backend/cuda/attn.cu) against the CPU backend: SDPA forward
// and SDPA_BWD steps built by hand on the same inputs, over shapes that cross the
// kernels' 64-row / 64-key tiles (with and without the keys split over CTAs, and
// with a split that sees no key), causal or not, GQA 4:1 and 1:1, head dims 20 (the
// CUDA-core path: not a multiple of 8), 40 (the tensor-core path padded to 64), 64
// and 128, with an additive mask (broadcast, bf16) and with kv_len; then the autograd
// on CUDA (which now takes SDPA_BWD) against the CPU's, and the error for a head dim
// above the backward kernel's limit. Built and run only with WICK_CUDA.
//
// Tolerances, |cuda - cpu| <= rtol |cpu| + atol max|cpu| over the output:
//  - f32 (forward, and every backward: it reads bf16 / f16 inputs as f32 and computes
//    in f32 as the CPU does): summation order and expf vs the CPU's polynomial exp
//    -> rtol 1e-4, atol 2e-5 (gradients are sums of up to S*G terms that cancel, so
//    the floor is relative to the output's largest value, not to each element).
//  - bf16 / f16 forward on tensor cores: the output rounds to neighbouring values (one
//    ulp: 2^-8 / 2^-11 relative) and P is rounded to bf16 / f16 before P V (relative
//    error 2^-9 / 2^-12 per weight, averaging out over the keys) -> bf16 rtol 8e-3,
//    atol 4e-3; f16 rtol 1e-3, atol 1e-3.
//  - bf16 / f16 backward on tensor cores (head dims up to 64, multiples of 8): P and dS
//    are rounded to bf16 / f16 before the products that sum them over rows or keys
//    (2^-9 / 2^-12 relative per term) -> bf16 rtol 8e-3, atol 4e-3; f16 rtol 2e-3,
//    atol 1e-3 (the other head dims run in f32 on CUDA cores: the f32 bound).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "check.h"
#include "engine/plan.h"
#include "wick/ops.h"
#define DUAL_SEED 0x9e3779b97f4a7c15ull
#include "dual_slots.h"

// Runs s on both backends and compares slot `out` (poisoned with NaN on the device
// first, so an element the kernel never writes fails).
static void compare(const char *name, const wk_step *s, int out, float atol, float rtol) {
  run_host(name, s, out);
  unsigned char *dev = run_device(name, s, out);
  const tbuf *o = &B[out];
  float big = 0;
  for (int64_t i = 0; i < o->n; i++) big = fmaxf(big, fabsf(get(o->h, o->dt, i)));
  float worst = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < o->n; i++) {
    float c = get(o->h, o->dt, i), g = get(dev, o->dt, i);
    float lim = rtol * fabsf(c) + atol * big, err = fabsf(c - g);
    if (!(err <= lim) && (at < 0 || err / lim > worst)) { worst = err / (lim > 0 ? lim : 1e-30f); at = i; }
  }
  if (at >= 0)
    CHECK(0, "%s: element %lld of %lld: cpu %g, cuda %g (%.1fx the tolerance; largest |cpu| %g)", name, (long long)at,
          (long long)o->n, get(o->h, o->dt, at), get(dev, o->dt, at), worst, big);
  else
    CHECK(big > 0, "%s (largest |value| %g)", name, big);   // an all-zero reference would prove nothing
  free(dev);
}

typedef struct {
  int64_t b, hq, hkv, t, s, d;
  int causal;
  int mask;      // 0: none; 1: [1, 1, T, S] f32 in [-2, 0); 2: [B, 1, 1, S] bf16 padding (-inf on the last keys)
  int kv_len;    // > 0: only the first kv_len keys exist (forward only)
} shape;

static const char *dname(wk_dtype dt) { return dt == WK_F32 ? "f32" : dt == WK_BF16 ? "bf16" : "f16"; }

// Inputs for one case; returns the mask's slot (or -1) and fills the operands.
static int inputs(const shape *c, wk_dtype dt, wk_operand *q, wk_operand *k, wk_operand *v, wk_operand *mk) {
  int64_t qs[4] = {c->b, c->hq, c->t, c->d}, ks[4] = {c->b, c->hkv, c->s, c->d};
  int64_t nq = c->b * c->hq * c->t * c->d, nk = c->b * c->hkv * c->s * c->d;
  *q = op_c(buf(dt, nq, -1, 1), dt, 4, qs);
  *k = op_c(buf(dt, nk, -1, 1), dt, 4, ks);
  *v = op_c(buf(dt, nk, -1, 1), dt, 4, ks);
  if (c->mask == 1) {
    int m = buf(WK_F32, c->t * c->s, -2, 0);
    *mk = op_c(m, WK_F32, 4, (int64_t[]){1, 1, c->t, c->s});
    return m;
  }
  if (c->mask == 2) {
    int m = buf(WK_BF16, c->b * c->s, 0, 0);
    for (int64_t b = 0; b < c->b; b++)
      for (int64_t j = c->s - 1 - 5 * b; j < c->s; j++) put(B[m].h, WK_BF16, b * c->s + j, -INFINITY);
    slot_upload(m);
    *mk = op_c(m, WK_BF16, 4, (int64_t[]){c->b, 1, 1, c->s});
    return m;
  }
  return -1;
}

static void fwd_case(const shape *c, wk_dtype dt) {
  wk_operand q, k, v, mk;
  int m = inputs(c, dt, &q, &k, &v, &mk);
  int64_t nq = c->b * c->hq * c->t * c->d;
  int out = buf(dt, nq, 0, 0);
  wk_step s = step0(WK_OP_SDPA);
  s.in[0] = q;
  s.in[1] = k;
  s.in[2] = v;
  s.nin = 3;
  if (m >= 0) s.in[s.nin++] = mk;
  if (c->kv_len > 0) {
    s.in[s.nin++] = op_c(buf_value(WK_I32, 1, (float)c->kv_len), WK_I32, 1, (int64_t[]){1});
    s.attrs.i[1] = 1;
  }
  s.attrs.f[0] = 1.0f / sqrtf((float)c->d);
  s.attrs.i[0] = c->causal;
  s.out = op_c(out, dt, 4, q.shape);
  char name[256];
  snprintf(name, sizeof name, "sdpa %s B%lld Hq%lld Hkv%lld T%lld S%lld D%lld%s%s%s", dname(dt), (long long)c->b,
           (long long)c->hq, (long long)c->hkv, (long long)c->t, (long long)c->s, (long long)c->d,
           c->causal ? " causal" : "", c->mask == 1 ? " mask" : c->mask == 2 ? " padding mask (bf16)" : "",
           c->kv_len > 0 ? " kv_len" : "");
  if (dt == WK_F32) compare(name, &s, out, 2e-5f, 1e-4f);
  else if (dt == WK_BF16) compare(name, &s, out, 4e-3f, 8e-3f);
  else compare(name, &s, out, 1e-3f, 1e-3f);
  reset();
}

static void bwd_case(const shape *c, wk_dtype dt) {
  wk_operand q, k, v, mk;
  int m = inputs(c, dt, &q, &k, &v, &mk);
  int64_t nq = c->b * c->hq * c->t * c->d, nk = c->b * c->hkv * c->s * c->d, total = nq + 2 * nk;
  int o = buf(dt, nq, -0.5f, 0.5f), g = buf(dt, nq, -1, 1), out = buf(WK_F32, total, 0, 0);
  wk_step s = step0(WK_OP_SDPA_BWD);
  s.in[0] = q;
  s.in[1] = k;
  s.in[2] = v;
  s.in[3] = op_c(o, dt, 4, q.shape);
  s.in[4] = op_c(g, dt, 4, q.shape);
  s.nin = 5;
  if (m >= 0) s.in[s.nin++] = mk;
  s.attrs.f[0] = 1.0f / sqrtf((float)c->d);
  s.attrs.i[0] = c->causal;
  s.out = op_c(out, WK_F32, 1, &total);
  char name[256];
  snprintf(name, sizeof name, "sdpa_bwd %s B%lld Hq%lld Hkv%lld T%lld S%lld D%lld%s%s", dname(dt), (long long)c->b,
           (long long)c->hq, (long long)c->hkv, (long long)c->t, (long long)c->s, (long long)c->d,
           c->causal ? " causal" : "", c->mask == 1 ? " mask" : c->mask == 2 ? " padding mask (bf16)" : "");
  bool tc = dt != WK_F32 && c->d % 8 == 0 && c->d <= 64;   // the tensor-core backward
  if (!tc) compare(name, &s, out, 2e-5f, 1e-4f);
  else if (dt == WK_BF16) compare(name, &s, out, 4e-3f, 8e-3f);
  else compare(name, &s, out, 1e-3f, 2e-3f);
  reset();
}

static void test_kernels(void) {
  const shape cases[] = {
      {2, 8, 2, 77, 77, 64, 1, 0, 0},      // GQA 4:1, causal, T = S across two tiles (keys split over CTAs)
      {4, 16, 4, 700, 700, 32, 1, 0, 0},   // enough CTAs: keys not split; backward CTAs take 2 heads each (132 SMs)
      {1, 4, 4, 130, 130, 128, 1, 0, 0},   // 1:1, D 128, three tiles
      {2, 4, 1, 70, 131, 64, 0, 1, 0},     // S > T, non-causal, broadcast f32 mask
      {2, 6, 2, 65, 97, 40, 1, 2, 0},      // D 40 (padded), causal with S > T, bf16 padding mask
      {1, 4, 2, 33, 45, 20, 0, 0, 0},      // D 20: CUDA cores in every dtype
      {1, 4, 1, 96, 50, 32, 1, 0, 0},      // causal with T > S: the first rows see no key
      {2, 4, 2, 20, 160, 64, 1, 0, 83},    // a cache of 160 keys of which 83 exist (prefill of 20)
      {1, 2, 1, 9, 9, 64, 1, 0, 0},        // a single partial tile
      {2, 8, 2, 1, 100, 64, 1, 0, 57},     // decode: one query against 57 of 100 cached keys
      {2, 4, 4, 3, 70, 128, 1, 0, 0},      // a few queries at the end of 70 keys (speculative decode)
  };
  const wk_dtype dts[3] = {WK_F32, WK_BF16, WK_F16};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int j = 0; j < 3; j++) {
      fwd_case(&cases[i], dts[j]);
      if (!cases[i].kv_len) bwd_case(&cases[i], dts[j]);
    }
  // an f32 q over a bf16 cache (the CUDA-core kernel's mixed loads)
  {
    wk_operand q, k, v, mk;
    shape c = {1, 4, 2, 40, 70, 64, 1, 0, 0};
    inputs(&c, WK_F32, &q, &k, &v, &mk);
    int kb = buf(WK_BF16, 2 * 70 * 64, -1, 1), vb = buf(WK_BF16, 2 * 70 * 64, -1, 1), out = buf(WK_F32, 4 * 40 * 64, 0, 0);
    wk_step s = step0(WK_OP_SDPA);
    s.nin = 3;
    s.in[0] = q;
    s.in[1] = op_c(kb, WK_BF16, 4, k.shape);
    s.in[2] = op_c(vb, WK_BF16, 4, v.shape);
    s.attrs.f[0] = 0.125f;
    s.attrs.i[0] = 1;
    s.out = op_c(out, WK_F32, 4, q.shape);
    compare("sdpa f32 q over bf16 keys and values", &s, out, 2e-5f, 1e-4f);
    reset();
  }
  // the backward kernel's head-dim limit is an error naming the size, not a fault
  {
    shape c = {1, 2, 1, 16, 16, 160, 0, 0, 0};
    wk_operand q, k, v, mk;
    inputs(&c, WK_F32, &q, &k, &v, &mk);
    int64_t total = 2 * 16 * 160 + 2 * 16 * 160;
    int out = buf(WK_F32, total, 0, 0);
    wk_step s = step0(WK_OP_SDPA_BWD);
    s.in[0] = q, s.in[1] = k, s.in[2] = v, s.in[3] = q, s.in[4] = q;
    s.nin = 5;
    s.attrs.f[0] = 0.1f;
    s.out = op_c(out, WK_F32, 1, &total);
    void *ds[DUAL_SLOTS];
    dev_slots(ds);
    wk_status st = gpu->run(&s, ds);
    CHECK(st != WK_OK && strstr(wk_last_error(), "head dimension 160"), "sdpa_bwd with D 160 on CUDA: an error naming it");
    CHECK(!gpu->sync(), "the device is fine after the refused step");
    reset();
  }
}

// Whether the last plan's attention forward kept its row statistics for its backward
// (compile_rewrite.c's match_sdpa_lse: SDPA and SDPA_BWD steps with attrs.i[2] = 1).
static bool kept_lse(void) {
  const wk_plan *p = wk_last_plan();
  int fwd = 0, bwd = 0;
  for (int k = 0; p && k < p->nsteps; k++) {
    fwd += p->steps[k].op == WK_OP_SDPA && p->steps[k].attrs.i[2];
    bwd += p->steps[k].op == WK_OP_SDPA_BWD && p->steps[k].attrs.i[2];
  }
  return fwd == 1 && bwd == 1;
}

// The autograd on CUDA: loss = sum(sdpa(q, k, v[, mask]) * w); dq, dk, dv against the
// CPU's. The forward and backward share a plan, so the forward keeps L for the
// backward: with few CTAs (b 2, t 70) through a second pass after the split-key
// forward, with many (b 4, t 200) from the forward itself.
static void test_grad(wk_dtype dt, int64_t d, int64_t b, int64_t t, bool masked) {
  wk_scope_begin();
  int64_t qs[4] = {b, 8, t, d}, ks[4] = {b, 2, t, d}, ms[4] = {1, 1, t, t};
  wk_tensor *h[5] = {wk_randn(4, qs, WK_F32, 11), wk_randn(4, ks, WK_F32, 12), wk_randn(4, ks, WK_F32, 13),
                     wk_randn(4, qs, WK_F32, 14), wk_rand(4, ms, WK_F32, -1.0, 0.0, 15)};
  float *res[2][3] = {{0}};
  for (int dev = 0; dev < 2; dev++) {
    wk_tensor *x[5];
    for (int i = 0; i < 5; i++) {
      x[i] = i < 4 ? wk_cast(h[i], dt) : h[i];
      if (dev) x[i] = wk_to_device(x[i], WK_CUDA);
      wk_eval(1, &x[i]);
    }
    for (int i = 0; i < 3; i++) wk_set_trainable(x[i], 1);
    wk_tensor *y = wk_sdpa(x[0], x[1], x[2], masked ? x[4] : NULL, 1, 0);
    wk_tensor *loss = wk_sum(wk_cast(wk_mul(y, x[3]), WK_F32), 0, NULL, 0), *gr[3] = {0};
    CHECK(!wk_grad(loss, 3, x, gr) && !wk_eval(3, gr), "grad of sdpa on %s", dev ? "cuda" : "cpu");
    if (dev) CHECK(kept_lse(), "wk_grad of sdpa (%s, D %lld, t %lld): the backward reads the forward's L", dname(dt),
                   (long long)d, (long long)t);
    for (int i = 0; i < 3; i++) res[dev][i] = gr[i] ? read_all(dev ? wk_to_device(gr[i], WK_CPU) : gr[i]) : NULL;
  }
  const char *nm[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; i++) {
    int64_t n = (i ? 2 : 8) * b * t * d;
    float big = 0;
    for (int64_t j = 0; res[0][i] && j < n; j++) big = fmaxf(big, fabsf(res[0][i][j]));
    float err = max_abs_diff(res[0][i], res[1][i], n);
    // the gradients are cast to the inputs' dtype: one ulp of the largest value, or f32's bound
    float lim = dt == WK_F32 ? 1e-4f * big : dt == WK_BF16 ? 8e-3f * big : 1e-3f * big;
    CHECK(big > 0 && err <= lim, "wk_grad of causal GQA sdpa (%s, D %lld, b %lld, t %lld%s): %s max diff %g (largest %g)",
          dname(dt), (long long)d, (long long)b, (long long)t, masked ? ", masked" : "", nm[i], err, big);
    free(res[0][i]);
    free(res[1][i]);
  }
  wk_scope_end();
}

// A NaN in one query makes its output row NaN on CUDA too (not a masked row's zeros),
// in the tiled forward (T 70) and the one-query decode form (T 1 against 150 keys);
// every other row stays finite.
static void test_nan(wk_dtype dt, int64_t T, int64_t S) {
  wk_scope_begin();
  int64_t qs[4] = {1, 8, T, 64}, ks[4] = {1, 2, S, 64};
  float *qv = read_all(wk_randn(4, qs, WK_F32, 21));
  qv[(3 * T + T - 1) * 64 + 5] = NAN;   // head 3, the last query
  wk_tensor *x[3] = {wk_from_data(4, qs, WK_F32, qv), wk_randn(4, ks, WK_F32, 22), wk_randn(4, ks, WK_F32, 23)};
  for (int i = 0; i < 3; i++) x[i] = wk_to_device(wk_cast(x[i], dt), WK_CUDA);
  float *o = read_all(wk_to_device(wk_cast(wk_sdpa(x[0], x[1], x[2], NULL, 1, 0), WK_F32), WK_CPU));
  int nan_row = 1, others = 1;
  for (int64_t i = 0; o && i < 8 * T * 64; i++) {
    if (i / 64 == 3 * T + T - 1) nan_row &= isnan(o[i]);
    else others &= isfinite(o[i]);
  }
  CHECK(o && nan_row && others, "sdpa on CUDA (%s, T %lld, S %lld): a NaN query's row is NaN (%d), the others finite (%d)",
        dname(dt), (long long)T, (long long)S, nan_row, others);
  free(qv);
  free(o);
  wk_scope_end();
}

int main(void) {
  if (!dual_open()) return 77;
  test_nan(WK_F32, 70, 70);
  test_nan(WK_BF16, 70, 70);
  test_nan(WK_BF16, 1, 150);
  test_nan(WK_F32, 1, 150);
  printf("device: %s\n", wk_cuda_device_name());
  test_kernels();
  test_grad(WK_F32, 64, 2, 70, false);
  test_grad(WK_BF16, 64, 2, 70, false);
  test_grad(WK_F16, 32, 2, 70, false);
  test_grad(WK_BF16, 64, 4, 200, false);
  test_grad(WK_BF16, 64, 4, 200, true);
  test_grad(WK_F32, 64, 4, 200, true);
  return check_report();
}
