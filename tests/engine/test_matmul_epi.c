// Matmul epilogues on the CPU: act(x @ W[^T] + bias) planned as one GEMM step whose
// blocks of C take the bias and the activation (compile_rewrite.c's match_epilogue, the CPU's
// matmul_epi_kernel), against a double-precision reference. Shapes cover the packed
// GEMM (whole and partial tiles) and its few-rows / few-columns paths; the plan is
// checked to hold the fused step, and a plan that must keep the product (another
// target) is checked not to fuse it. Tolerance 1e-5 relative to the largest value:
// f32 sums in another order and the vector erf / tanh (both ~1e-7).
// Scaled products (compile_rewrite.c's match_scaled_product / match_scaled_operand): s (a @ b)
// and a scaled operand read only by matmuls ((s g) @ B^T and A^T @ (s g), a LoRA
// backward's two products) run as matmul steps with the scale as alpha and no
// elementwise step; a second evaluation with another s reuses the plan and takes the
// new scale (a run-time scalar); an operand something else reads stays a step.
#include <string.h>
#include "check.h"
#include "plan_steps.h"

enum { ACT_NONE, ACT_GELU, ACT_GELU_TANH };


static float *fill(int64_t n, uint64_t seed, float scale) {
  float *v = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = ((float)(seed >> 40) / (float)(1 << 24) - 0.5f) * 2.0f * scale;
  }
  return v;
}

static double act_ref(int act, double y) {
  if (act == ACT_GELU) return 0.5 * y * (1.0 + erf(y / sqrt(2.0)));
  if (act == ACT_GELU_TANH) return 0.5 * y * (1.0 + tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)));
  return y;
}

static void one_case(int64_t M, int64_t K, int64_t N, int trans, int act) {
  float *x = fill(M * K, (uint64_t)(M * 131 + K), 1.0f), *w = fill(K * N, (uint64_t)(N * 7 + K), 1.0f / sqrtf((float)K));
  float *b = fill(N, (uint64_t)N, 0.5f);
  wk_scope_begin();
  wk_tensor *tx = wk_from_data(2, (int64_t[]){M, K}, WK_F32, x);
  wk_tensor *tw = wk_from_data(2, trans ? (int64_t[]){N, K} : (int64_t[]){K, N}, WK_F32, w);
  wk_tensor *tb = wk_from_data(1, &N, WK_F32, b);
  wk_tensor *y = wk_add(trans ? wk_matmul_t(tx, 0, tw, 1) : wk_matmul(tx, tw), tb);
  y = act == ACT_GELU ? wk_gelu(y) : act == ACT_GELU_TANH ? wk_gelu_tanh(y) : y;
  char what[128];
  snprintf(what, sizeof what, "x[%lld,%lld] @ W%s (N %lld) + b, act %d", (long long)M, (long long)K, trans ? "^T" : "",
           (long long)N, act);
  CHECK(y && !wk_eval(1, &y), "%s: eval", what);
  int kind = 0, n = epilogue_steps(&kind);
  int want = act == ACT_GELU ? WK_EPI_BIAS_GELU : act == ACT_GELU_TANH ? WK_EPI_BIAS_GELU_TANH : WK_EPI_BIAS;
  CHECK(n == 1 && kind == want, "%s: %d fused matmul steps, epilogue %d (want 1 of %d)", what, n, kind, want);
  float *got = read_all(y);
  double worst = 0, scale = 1e-6;
  for (int64_t i = 0; got && i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = b[j];
      for (int64_t k = 0; k < K; k++) s += (double)x[i * K + k] * w[trans ? j * K + k : k * N + j];
      double r = act_ref(act, s);
      scale = fmax(scale, fabs(r));
      worst = fmax(worst, fabs(got[i * N + j] - r));
    }
  CHECK(got && worst / scale <= 1e-5, "%s: %g relative to the double reference", what, worst / scale);
  free(got);
  wk_scope_end();
  free(x), free(w), free(b);
}

// The product is also a target: it must be stored, so nothing fuses, and the
// values agree with the fused plan's.
static void product_kept(void) {
  int64_t M = 40, K = 64, N = 72;
  float *x = fill(M * K, 5, 1.0f), *w = fill(N * K, 6, 0.125f), *b = fill(N, 7, 0.5f);
  wk_scope_begin();
  wk_tensor *tx = wk_from_data(2, (int64_t[]){M, K}, WK_F32, x);
  wk_tensor *tw = wk_from_data(2, (int64_t[]){N, K}, WK_F32, w);
  wk_tensor *tb = wk_from_data(1, &N, WK_F32, b);
  wk_tensor *p = wk_matmul_t(tx, 0, tw, 1), *y = wk_gelu(wk_add(p, tb));
  wk_tensor *both[2] = {y, p};
  int kind = 0;
  CHECK(!wk_eval(2, both) && epilogue_steps(&kind) == 0, "a product that is also a target is not fused");
  wk_tensor *y2 = wk_gelu(wk_add(wk_matmul_t(tx, 0, tw, 1), tb));
  CHECK(!wk_eval(1, &y2) && epilogue_steps(&kind) == 1, "the same graph alone fuses");
  float *a = read_all(y), *c = read_all(y2);
  CHECK(a && c && max_abs_diff(a, c, M * N) <= 1e-5f, "fused and unfused agree (%g)", (double)max_abs_diff(a, c, M * N));
  free(a), free(c);
  wk_scope_end();
  free(x), free(w), free(b);
}

// Matmul steps with a folded scale in the last plan, and fused elementwise steps.
static int scaled_steps(int *ew) {
  const wk_plan *p = wk_last_plan();
  int n = 0;
  *ew = 0;
  for (int k = 0; p && k < p->nsteps; k++) {
    n += p->steps[k].op == WK_OP_MATMUL && p->steps[k].attrs.i[1];
    *ew += p->steps[k].op == WK_STEP_FUSED_EW;
  }
  return n;
}

// ref[M, N] = s * x[M, K] @ op(w) in double (w [N, K] when trans), max |got - ref| / max |ref|
static double scaled_err(const float *got, const float *x, const float *w, int64_t M, int64_t K, int64_t N, int tx,
                         int tw, double s) {
  double worst = 0, scale = 1e-6;
  for (int64_t i = 0; got && i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double r = 0;
      for (int64_t k = 0; k < K; k++) r += (double)x[tx ? k * M + i : i * K + k] * w[tw ? j * K + k : k * N + j];
      scale = fmax(scale, fabs(s * r));
      worst = fmax(worst, fabs(got[i * N + j] - s * r));
    }
  return got ? worst / scale : INFINITY;
}

static void scaled_products(void) {
  const int64_t M = 48, K = 40, N = 24, R = 8;
  float *x = fill(M * K, 11, 1.0f), *a = fill(K * R, 12, 0.3f), *g = fill(M * N, 13, 1.0f), *bt = fill(N * R, 14, 0.3f);
  const float scales[2] = {2.0f, -0.37f};
  for (int v = 0; v < 2; v++) {
    const float s = scales[v];
    wk_scope_begin();
    wk_tensor *tx = wk_from_data(2, (int64_t[]){M, K}, WK_F32, x), *ta = wk_from_data(2, (int64_t[]){K, R}, WK_F32, a);
    wk_tensor *tg = wk_from_data(2, (int64_t[]){M, N}, WK_F32, g), *tb = wk_from_data(2, (int64_t[]){N, R}, WK_F32, bt);
    uint64_t compiles0, hits0, compiles1, hits1;
    int entries, ew = 0;
    // s (x @ A): the product itself scaled
    wk_tensor *y = wk_mul_scalar(wk_matmul(tx, ta), s);
    wk_plan_cache_stats(&compiles0, &hits0, &entries);
    CHECK(y && !wk_eval(1, &y), "s (x @ A): eval");
    wk_plan_cache_stats(&compiles1, &hits1, &entries);
    CHECK(scaled_steps(&ew) == 1 && ew == 0, "s (x @ A), s = %g: one scaled matmul step, no elementwise step (%d)",
          (double)s, ew);
    CHECK(v == 0 || hits1 == hits0 + 1, "s (x @ A), s = %g: the plan of s = %g is reused", (double)s, (double)scales[0]);
    float *got = read_all(y);
    double err = scaled_err(got, x, a, M, K, R, 0, 0, s);
    CHECK(err <= 1e-6, "s (x @ A), s = %g: %g relative to the double reference", (double)s, err);
    free(got);
    // (s g) read by two products: (s g) @ B and (x)^T... here g^T-side: A2 = (s g)^T @ g2
    wk_tensor *sg = wk_mul_scalar(tg, s);
    wk_tensor *p[2] = {wk_matmul(sg, tb), wk_matmul(wk_transpose(tg, 0, 1), sg)};   // [M, R], [N, N]
    CHECK(!wk_eval(2, p), "(s g) @ B, g^T @ (s g): eval");
    CHECK(scaled_steps(&ew) == 2 && ew == 0, "(s g) read by two matmuls, s = %g: two scaled steps, no elementwise step (%d)",
          (double)s, ew);
    got = read_all(p[0]);
    err = scaled_err(got, g, bt, M, N, R, 0, 0, s);
    CHECK(err <= 1e-6, "(s g) @ B, s = %g: %g relative to the double reference", (double)s, err);
    free(got);
    got = read_all(p[1]);
    err = scaled_err(got, g, g, N, M, N, 1, 0, s);
    CHECK(err <= 1e-6, "g^T @ (s g), s = %g: %g relative to the double reference", (double)s, err);
    free(got);
    // (s g) also read elementwise: it stays a step of its own, the products unscaled
    wk_tensor *sg2 = wk_mul_scalar(tg, s);
    wk_tensor *q[2] = {wk_matmul(sg2, tb), wk_exp(sg2)};
    CHECK(!wk_eval(2, q) && scaled_steps(&ew) == 0, "(s g) read by a matmul and an exp: not folded");
    got = read_all(q[0]);
    err = scaled_err(got, g, bt, M, N, R, 0, 0, s);
    CHECK(err <= 1e-6, "(s g) @ B beside exp(s g), s = %g: %g relative to the double reference", (double)s, err);
    free(got);
    wk_scope_end();
  }
  free(x), free(a), free(g), free(bt);
}

int main(void) {
  const int64_t shapes[][3] = {{3, 40, 100}, {37, 40, 3}, {37, 384, 100}, {130, 96, 256}, {7, 1536, 384}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int trans = 0; trans < 2; trans++)
      for (int act = ACT_NONE; act <= ACT_GELU_TANH; act++) one_case(shapes[s][0], shapes[s][1], shapes[s][2], trans, act);
  product_kept();
  scaled_products();
  return check_report();
}
