// Frozen weights (wk_tensor_freeze): the CPU GEMM packs a frozen B once and keeps the
// panels. Products against a double-precision reference (tolerance 1e-5 relative to the
// largest value: f32 sums in another order), for both layouts of W, more than one depth
// block (K > 256), partial panels (N not a multiple of the kernel's width) and the
// narrow kernels; then every way the memory under the cached panels can change must
// drop them: wk_tensor_assign, wk_set_slice, and releasing the tensor (external memory
// rewritten by its owner and wrapped again at the same address).
#include <string.h>
#include "backend/cpu/gemm.h"
#include "check.h"

#define SHAPE(...) (int64_t[]){__VA_ARGS__}

static void fill(float *v, int64_t n, uint64_t seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = (float)(seed >> 40) / (float)(1 << 24) - 0.5f;
  }
}

// y = x @ op(W) with W [N, K] (trans) or [K, N], checked against doubles; also
// with a bias added (the matmul epilogue's GEMM).
static void check_product(wk_tensor *w, const float *wv, const float *x, int64_t M, int64_t K, int64_t N,
                          int trans, const char *what) {
  wk_scope_begin();
  wk_tensor *xt = wk_from_data(2, SHAPE(M, K), WK_F32, x);
  float *bias = malloc(sizeof(float) * (size_t)N);
  fill(bias, N, 99);
  wk_tensor *bt = wk_from_data(1, SHAPE(N), WK_F32, bias);
  wk_tensor *y[2] = {wk_matmul_t(xt, 0, w, trans), wk_add(wk_matmul_t(xt, 0, w, trans), bt)};
  CHECK(!wk_eval(2, y), "%s: eval", what);
  for (int v = 0; v < 2; v++) {
    const float *got = wk_tensor_data(y[v]);
    double err = 0, big = 1e-30;
    for (int64_t i = 0; got && i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = v ? bias[j] : 0.0;
        for (int64_t k = 0; k < K; k++) s += (double)x[i * K + k] * wv[trans ? j * K + k : k * N + j];
        double d = fabs(got[i * N + j] - s);
        if (d > err || d != d) err = d;
        if (fabs(s) > big) big = fabs(s);
      }
    CHECK(got && err <= 1e-5 * big, "%s%s: [%lld, %lld] x [%lld, %lld]%s: max error %g of %g", what,
          v ? " + bias" : "", (long long)M, (long long)K, (long long)N, (long long)K, trans ? "^T" : "", err, big);
  }
  free(bias);
  wk_scope_end();
}

static void one_shape(int64_t M, int64_t K, int64_t N, int trans) {
  int64_t nw = N * K;
  int64_t wshape[2] = {trans ? N : K, trans ? K : N};
  float *x = malloc(sizeof(float) * (size_t)(M * K)), *wv = malloc(sizeof(float) * (size_t)nw);
  fill(x, M * K, 1);
  fill(wv, nw, 2);
  wk_tensor *w = wk_from_data(2, wshape, WK_F32, wv);
  CHECK(!wk_tensor_freeze(w) && wk_tensor_frozen(w), "freeze");
  check_product(w, wv, x, M, K, N, trans, "frozen");
  CHECK(wk_gemm_frozen_bytes() > 0, "the GEMM kept W's packed panels");
  check_product(w, wv, x, M, K, N, trans, "frozen, second use");

  // wk_tensor_assign thaws: the next product sees the new values
  fill(wv, nw, 3);
  wk_tensor *w2 = wk_from_data(2, wshape, WK_F32, wv);
  CHECK(!wk_tensor_assign(w, w2), "assign");
  wk_tensor_free(w2);
  CHECK(!wk_tensor_frozen(w) && wk_gemm_frozen_bytes() == 0, "assign thaws W and drops its panels");
  check_product(w, wv, x, M, K, N, trans, "after assign");

  // wk_set_slice thaws: frozen again, then its first rows rewritten in place
  CHECK(!wk_tensor_freeze(w), "freeze again");
  check_product(w, wv, x, M, K, N, trans, "frozen again");
  int64_t r = wshape[0] / 2;
  float *rows = malloc(sizeof(float) * (size_t)(r * wshape[1]));
  fill(rows, r * wshape[1], 4);
  memcpy(wv, rows, sizeof(float) * (size_t)(r * wshape[1]));
  wk_scope_begin();
  int32_t zero = 0;
  wk_tensor *upd = wk_set_slice(w, wk_from_data(2, SHAPE(r, wshape[1]), WK_F32, rows), 0,
                                wk_from_data(1, SHAPE(1), WK_I32, &zero));
  CHECK(upd && !wk_eval(1, &upd), "set_slice");
  wk_scope_end();
  free(rows);
  CHECK(!wk_tensor_frozen(w), "set_slice thaws its destination");
  check_product(w, wv, x, M, K, N, trans, "after set_slice");
  wk_tensor_free(w);
  CHECK(wk_gemm_frozen_bytes() == 0, "no panels outlive their weights");
  free(x);
  free(wv);
}

static int released;
static void on_release(void *ctx) { (void)ctx; released++; }

// External memory: frozen, used, released, rewritten by its owner and wrapped again at
// the same address. Cached panels keyed on the address alone would be stale here.
static void address_reuse(void) {
  int64_t M = 30, K = 64, N = 80;
  float *x = malloc(sizeof(float) * (size_t)(M * K)), *wv = malloc(sizeof(float) * (size_t)(N * K));
  fill(x, M * K, 5);
  for (int round = 0; round < 2; round++) {
    fill(wv, N * K, 6 + (uint64_t)round);
    wk_tensor *w = wk_from_external(2, SHAPE(N, K), WK_F32, wv, on_release, NULL);
    CHECK(!wk_tensor_freeze(w), "freeze external");
    check_product(w, wv, x, M, K, N, 1, round ? "external, rewritten" : "external");
    wk_tensor_free(w);
    CHECK(released == round + 1 && wk_gemm_frozen_bytes() == 0, "release drops the panels");
  }
  // a view into a frozen weight (rows 16.. of W as B): its own panels, right values
  fill(wv, N * K, 8);
  wk_tensor *w = wk_from_external(2, SHAPE(N, K), WK_F32, wv, on_release, NULL);
  CHECK(!wk_tensor_freeze(w), "freeze");
  wk_tensor *part = wk_slice(w, 0, 16, N, 1);
  check_product(part, wv + 16 * K, x, M, K, N - 16, 1, "a slice of a frozen weight");
  check_product(w, wv, x, M, K, N, 1, "the whole of it");
  wk_tensor_free(part);
  wk_tensor_free(w);
  free(x);
  free(wv);
}

static void errors(void) {
  CHECK(wk_tensor_freeze(NULL) == WK_ERR_ARG, "freeze(NULL)");
  wk_scope_begin();
  wk_tensor *p = wk_add(wk_ones(1, SHAPE(4), WK_F32), wk_ones(1, SHAPE(4), WK_F32));
  CHECK(wk_tensor_freeze(p) == WK_ERR_STATE && strstr(wk_last_error(), "not evaluated"),
        "freezing a pending tensor says why: %s", wk_last_error());
  wk_scope_end();
}

int main(void) {
  one_shape(40, 80, 96, 1);     // one depth block, 96 = a partial 64-wide panel
  one_shape(50, 300, 100, 1);   // two depth blocks
  one_shape(33, 300, 70, 0);    // W [K, N]
  one_shape(64, 48, 16, 1);     // the narrow kernels
  one_shape(64, 48, 30, 0);
  address_reuse();
  errors();
  return check_report();
}
