// Matmul epilogues on the CPU: act(x @ W[^T] + bias) planned as one GEMM step whose
// blocks of C take the bias and the activation (compile.c's match_epilogue, the CPU's
// matmul_epi_kernel), against a double-precision reference. Shapes cover the packed
// GEMM (whole and partial tiles) and its few-rows / few-columns paths; the plan is
// checked to hold the fused step, and a plan that must keep the product (another
// target) is checked not to fuse it. Tolerance 1e-5 relative to the largest value:
// f32 sums in another order and the vector erf / tanh (both ~1e-7).
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

int main(void) {
  const int64_t shapes[][3] = {{3, 40, 100}, {37, 40, 3}, {37, 384, 100}, {130, 96, 256}, {7, 1536, 384}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int trans = 0; trans < 2; trans++)
      for (int act = ACT_NONE; act <= ACT_GELU_TANH; act++) one_case(shapes[s][0], shapes[s][1], shapes[s][2], trans, act);
  product_kept();
  return check_report();
}
