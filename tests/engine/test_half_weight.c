// f16 / bf16 weights under an f32 input on the CPU: wk_matmul_t reads a frozen,
// contiguous weight in place (the quantized-matmul kernel expands its rows while
// packing, or runs the bf16 GEMM) instead of casting it. An f16 weight's result must
// equal the f32 matmul on the widened weight (the widening is exact); a bf16 weight's
// product runs on x rounded to bf16, so its reference is the f32 matmul of the
// rounded x and the widened weight (bf16 products are exact in f32). For
// decode-sized and batched inputs, both orientations, with the input's gradient
// (the incoming gradient is rounded the same way); a trainable weight is never read
// this way.
#include <math.h>
#include <string.h>
#include "check.h"

static float max_rel(const float *a, const float *b, int64_t n) {
  float worst = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    scale = fmaxf(scale, fabsf(b[i]));
    worst = fmaxf(worst, fabsf(a[i] - b[i]));
  }
  return scale > 0 ? worst / scale : INFINITY;
}

// What the kernel multiplies a dt weight with: x itself, or x rounded to bf16.
static wk_tensor *as_multiplied(wk_tensor *x, wk_dtype dt) {
  return dt == WK_BF16 ? wk_cast(wk_cast(x, WK_BF16), WK_F32) : x;
}

static void check_dtype(wk_dtype dt) {
  const char *name = wk_dtype_name(dt);
  const int64_t N = 300, K = 200, Ms[] = {1, 4, 5, 37};
  wk_scope_begin();
  wk_tensor *W = wk_cast(wk_randn(2, (int64_t[]){N, K}, WK_F32, 5), dt);
  CHECK(wk_eval(1, &W) == WK_OK, "%s: weight", name);
  wk_tensor *Wf = wk_cast(W, WK_F32);
  for (int mi = 0; mi < 4; mi++) {
    int64_t M = Ms[mi];
    for (int trans = 0; trans < 2; trans++) {
      wk_tensor *x = wk_randn(2, (int64_t[]){M, trans ? K : N}, WK_F32, 7 + (uint64_t)M);
      CHECK(wk_eval(1, &x) == WK_OK, "%s: x", name);
      wk_set_trainable(x, 1);
      wk_tensor *y = wk_matmul_t(x, 0, W, trans), *yr = wk_matmul_t(as_multiplied(x, dt), 0, Wf, trans);
      CHECK(y && wk_tensor_dtype(y) == WK_F32, "%s: M=%lld trans=%d builds an f32 result", name, (long long)M, trans);
      float *a = read_all(y), *b = read_all(yr);
      float e = a && b ? max_rel(a, b, wk_numel(yr)) : INFINITY;
      CHECK(e <= 1e-6f, "%s: [%lld,%lld] @ W%s off by %g of the widened weight's result", name, (long long)M,
            (long long)wk_dim(x, 1), trans ? "^T" : "", (double)e);
      free(a), free(b);
      // d sum(y * r) / dx = r @ op(W)^T, with r rounded like any input of a bf16 weight
      wk_tensor *r = wk_randn(2, wk_shape(yr), WK_F32, 9), *g;
      CHECK(wk_grad(wk_sum(wk_mul(y, r), 0, NULL, 0), 1, &x, &g) == WK_OK, "%s: input gradient", name);
      wk_tensor *gr = wk_matmul_t(as_multiplied(r, dt), 0, Wf, !trans);
      a = read_all(g), b = read_all(gr);
      e = a && b ? max_rel(a, b, wk_numel(x)) : INFINITY;
      CHECK(e <= 1e-6f, "%s: M=%lld trans=%d input gradient off by %g", name, (long long)M, trans, (double)e);
      free(a), free(b);
    }
  }
  // a trainable half weight is not read in place (that kernel gives the weight no
  // gradient): mixed dtypes are then refused as for any matmul, by name
  wk_set_trainable(W, 1);
  wk_tensor *x = wk_randn(2, (int64_t[]){5, K}, WK_F32, 11);
  CHECK(wk_matmul_t(x, 0, W, 1) == NULL && strstr(wk_last_error(), "dtype"), "%s: trainable weight refused: %s", name,
        wk_last_error());
  wk_set_trainable(W, 0);
  wk_scope_end();
}

int main(void) {
  check_dtype(WK_BF16);
  check_dtype(WK_F16);
  return check_report();
}
