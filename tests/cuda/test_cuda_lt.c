// Matmul epilogues on CUDA: matmul(x, W[^T]) + bias [then GELU] planned as one
// cuBLASLt call (compile_rewrite.c's match_epilogue, cuda_backend.cu's matmul_epi) against
// the CPU backend on the same inputs (in f32 the CPU fuses too, in its own GEMM:
// test_matmul_epi checks that against a double reference; f16/bf16 it runs unfused). Also: the plan
// really holds the fused step (with the GELU only for its tanh form), gradients
// through it, and the plan replayed as a CUDA graph with new inputs.
// Tolerances, relative to the largest |reference| value: f32 1e-4 (TF32 off: f32
// FMA in another order; cuBLASLt's own tanh in the GELU); f16 4e-3 and bf16 2e-2:
// the unfused reference rounds the product to the dtype before adding the bias,
// the fused kernel rounds once at the end (a rounding of 2^-11 / 2^-8 apart, plus
// the summation order).
#include <string.h>
#include "check.h"
#include "plan_steps.h"
#include "backend/cuda/cuda_backend.h"

static uint64_t seed = 1;

// randn * scale in dtype dt, on the CPU, realized.
static wk_tensor *rnd(int nd, const int64_t *sh, wk_dtype dt, float scale) {
  wk_scope_begin();
  wk_tensor *t = wk_mul_scalar(wk_randn(nd, sh, WK_F32, seed++), scale);
  if (dt != WK_F32) t = wk_cast(t, dt);
  wk_keep(t);
  wk_scope_end();
  if (t && wk_eval(1, &t)) { wk_tensor_free(t); return NULL; }
  return t;
}
static wk_tensor *on_gpu(wk_tensor *t) {
  wk_tensor *d = t ? wk_keep(wk_to_device(t, WK_CUDA)) : NULL;
  if (d && wk_eval(1, &d)) { wk_tensor_free(d); return NULL; }
  return d;
}

static float tol_of(wk_dtype dt) { return dt == WK_F32 ? 1e-4f : dt == WK_F16 ? 4e-3f : 2e-2f; }

enum { ACT_NONE, ACT_GELU, ACT_GELU_TANH };
static const char *act_name[] = {"", " + gelu", " + gelu_tanh"};

static wk_tensor *linear(wk_tensor *x, wk_tensor *w, wk_tensor *b, int trans, int bias_first, int act) {
  wk_tensor *p = trans ? wk_matmul_t(x, 0, w, 1) : wk_matmul(x, w);
  wk_tensor *y = bias_first ? wk_add(b, p) : wk_add(p, b);
  return act == ACT_GELU ? wk_gelu(y) : act == ACT_GELU_TANH ? wk_gelu_tanh(y) : y;
}


// x [lead..., K] (lead = {M} or {B, T}), W [N, K] (trans) or [K, N], bias [N] or [1, N].
static void one_case(wk_dtype dt, int nlead, const int64_t *lead, int64_t K, int64_t N, int trans, int bias2d,
                     int bias_first, int act) {
  int64_t xs[3], ws[2] = {trans ? N : K, trans ? K : N}, bs[2] = {1, N};
  memcpy(xs, lead, sizeof(int64_t) * (size_t)nlead);
  xs[nlead] = K;
  float sw = 1.0f / sqrtf((float)(K ? K : 1));
  wk_tensor *x = rnd(nlead + 1, xs, dt, 1.0f), *w = rnd(2, ws, dt, sw);
  wk_tensor *b = bias2d ? rnd(2, bs, dt, 0.5f) : rnd(1, bs + 1, dt, 0.5f);
  wk_tensor *gx = on_gpu(x), *gw = on_gpu(w), *gb = on_gpu(b);
  char what[200];
  snprintf(what, sizeof what, "%s x[%s%lld] @ W%s[%lld,%lld] + b%s%s%s", wk_dtype_name(dt),
           nlead == 2 ? "B,T," : "M,", (long long)K, trans ? "^T" : "", (long long)ws[0], (long long)ws[1],
           bias2d ? "[1,N]" : "[N]", bias_first ? " (bias first)" : "", act_name[act]);
  CHECK(gx && gw && gb, "%s: inputs on the GPU", what);
  if (!gx || !gw || !gb) goto done;
  wk_scope_begin();
  wk_tensor *ref = linear(x, w, b, trans, bias_first, act), *got = linear(gx, gw, gb, trans, bias_first, act);
  CHECK(ref && !wk_eval(1, &ref), "%s: CPU", what);
  CHECK(got && !wk_eval(1, &got), "%s: CUDA", what);
  int kind = 0, n = epilogue_steps(&kind);
  int want = act == ACT_GELU_TANH ? WK_EPI_BIAS_GELU_TANH : WK_EPI_BIAS;
  CHECK(n == 1 && kind == want, "%s: the plan has %d fused matmul steps (epilogue %d, want 1 of %d)", what, n, kind, want);
  float d = max_rel_diff(got, ref);
  CHECK(d <= tol_of(dt), "%s: %g relative to the CPU (tolerance %g)", what, (double)d, (double)tol_of(dt));
  wk_scope_end();
done:
  wk_tensor_free(x), wk_tensor_free(w), wk_tensor_free(b);
  wk_tensor_free(gx), wk_tensor_free(gw), wk_tensor_free(gb);
}

static void values(void) {
  const wk_dtype dts[3] = {WK_F32, WK_BF16, WK_F16};
  const int64_t shapes[][3] = {{1, 5, 3}, {37, 129, 65}, {128, 512, 256}, {64, 384, 1536}, {3, 64, 1}};
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 5; s++)
      for (int act = 0; act < 3; act++) {
        const int64_t *sh = shapes[s];
        int v = (s + act + d) % 4;   // walk the layout variants across the shapes
        one_case(dts[d], 1, &sh[0], sh[1], sh[2], v & 1, (v >> 1) & 1, s == 2, act);
      }
  // a 3-d input: the product is reshaped back to [B, T, N] before the bias
  one_case(WK_F32, 2, (int64_t[]){4, 33}, 96, 80, 1, 0, 0, ACT_GELU_TANH);
  one_case(WK_BF16, 2, (int64_t[]){2, 16}, 64, 48, 1, 1, 0, ACT_NONE);
}

// Not fused: a bias that varies along rows, and a product used twice.
static void not_fused(void) {
  wk_tensor *x = rnd(2, (int64_t[]){8, 16}, WK_F32, 1), *w = rnd(2, (int64_t[]){16, 12}, WK_F32, 0.25f);
  wk_tensor *c = rnd(2, (int64_t[]){8, 1}, WK_F32, 1);
  wk_tensor *gx = on_gpu(x), *gw = on_gpu(w), *gc = on_gpu(c);
  wk_scope_begin();
  wk_tensor *ref = wk_add(wk_matmul(x, w), c), *got = wk_add(wk_matmul(gx, gw), gc);
  CHECK(!wk_eval(1, &got), "column bias on CUDA");
  int kind = 0;
  CHECK(epilogue_steps(&kind) == 0, "a bias over columns is not a matmul epilogue");
  CHECK(max_rel_diff(got, ref) <= 1e-5f, "column bias: %g", (double)max_rel_diff(got, ref));
  wk_tensor *p = wk_matmul(gx, gw), *two[2] = {wk_add(p, gc), p};
  CHECK(!wk_eval(2, two), "product used twice");
  CHECK(epilogue_steps(&kind) == 0, "a product that is also a target is not fused");
  wk_scope_end();
  wk_tensor_free(x), wk_tensor_free(w), wk_tensor_free(c), wk_tensor_free(gx), wk_tensor_free(gw), wk_tensor_free(gc);
}

// Gradients of sum(gelu_tanh(x @ W^T + b) * r) with respect to x, W and b.
static void gradients(void) {
  wk_tensor *h[4] = {rnd(2, (int64_t[]){24, 40}, WK_F32, 1), rnd(2, (int64_t[]){56, 40}, WK_F32, 0.2f),
                     rnd(1, (int64_t[]){56}, WK_F32, 0.5f), rnd(2, (int64_t[]){24, 56}, WK_F32, 1)};
  wk_tensor *d[4];
  for (int k = 0; k < 4; k++) d[k] = on_gpu(h[k]);
  for (int k = 0; k < 3; k++) { wk_set_trainable(h[k], 1); wk_set_trainable(d[k], 1); }
  wk_scope_begin();
  wk_tensor *gh[3], *gd[3];
  wk_tensor *lh = wk_sum(wk_mul(linear(h[0], h[1], h[2], 1, 0, ACT_GELU_TANH), h[3]), 0, NULL, 0);
  wk_tensor *ld = wk_sum(wk_mul(linear(d[0], d[1], d[2], 1, 0, ACT_GELU_TANH), d[3]), 0, NULL, 0);
  CHECK(!wk_grad(lh, 3, h, gh) && !wk_grad(ld, 3, d, gd), "gradients built");
  wk_tensor *all[4] = {gd[0], gd[1], gd[2], ld};
  CHECK(!wk_eval(4, all), "gradients on CUDA");
  int kind = 0;
  CHECK(epilogue_steps(&kind) == 1 && kind == WK_EPI_BIAS, "forward fused with the bias (the GELU input feeds the backward)");
  for (int k = 0; k < 3; k++) {
    float r = max_rel_diff(gd[k], gh[k]);
    CHECK(r <= 1e-4f, "gradient %d: %g relative to the CPU", k, (double)r);
  }
  CHECK(fabsf(wk_item(ld) - wk_item(lh)) <= 1e-4f * fmaxf(1, fabsf(wk_item(lh))), "loss %g vs %g", (double)wk_item(ld),
        (double)wk_item(lh));
  wk_scope_end();
  for (int k = 0; k < 4; k++) wk_tensor_free(h[k]), wk_tensor_free(d[k]);
}

// The same plan evaluated with new inputs: captured once, then replayed.
static void replay(void) {
  wk_tensor *w = rnd(2, (int64_t[]){64, 64}, WK_BF16, 0.125f), *b = rnd(1, (int64_t[]){64}, WK_BF16, 0.5f);
  wk_tensor *gw = on_gpu(w), *gb = on_gpu(b);
  wk_cuda_graph_stats s0, s1;
  wk_cuda_graph_stats_get(&s0);
  for (int it = 0; it < 4; it++) {
    wk_tensor *x = rnd(2, (int64_t[]){32, 64}, WK_BF16, 1), *gx = on_gpu(x);
    wk_scope_begin();
    // two fused matmuls in one plan: a run of steps the backend captures
    wk_tensor *p1 = linear(x, w, b, 1, 0, ACT_GELU_TANH), *p2 = linear(gx, gw, gb, 1, 0, ACT_GELU_TANH);
    wk_tensor *q1 = linear(p1, w, b, 0, 0, ACT_NONE), *q2 = linear(p2, gw, gb, 0, 0, ACT_NONE);
    CHECK(!wk_eval(1, &q1) && !wk_eval(1, &q2), "replay %d: evaluated", it);
    int kind = 0;
    CHECK(epilogue_steps(&kind) == 2, "replay %d: two fused steps", it);
    float r = max_rel_diff(q2, q1);
    CHECK(r <= 2 * tol_of(WK_BF16), "replay %d: %g relative to the CPU", it, (double)r);
    wk_scope_end();
    wk_tensor_free(x), wk_tensor_free(gx);
  }
  wk_cuda_graph_stats_get(&s1);
  CHECK(s1.replays > s0.replays, "the plan was replayed as a CUDA graph (%llu replays)",
        (unsigned long long)(s1.replays - s0.replays));
  wk_tensor_free(w), wk_tensor_free(b), wk_tensor_free(gw), wk_tensor_free(gb);
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  values();
  not_fused();
  gradients();
  replay();
  return check_report();
}
