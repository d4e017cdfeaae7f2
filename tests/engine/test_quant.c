// Block-quantized weights in the engine: dequantize, matmul (x @ W^T and x @ W),
// embedding and the gradient to x, for every type, against the reference
// dequantizer of src/io/quant.c (bit-exact to ggml) and f64 host products.
// ctest runs this once per ISA (WICK_CPU_ISA), so every kernel path is covered.
#include <string.h>
#include "gradcheck.h"
#include "engine/engine.h"
#include "io/quant.h"
#include "quant_blocks.h"

typedef struct { wk_dtype dt; int qt; } qpair;
static const qpair types[] = {{WK_Q8_0, WK_QT_Q8_0}, {WK_Q4_0, WK_QT_Q4_0}, {WK_Q4_1, WK_QT_Q4_1},
                              {WK_Q4_K, WK_QT_Q4_K}, {WK_Q5_K, WK_QT_Q5_K}, {WK_Q6_K, WK_QT_Q6_K}};

static float *reference(const qpair *t, const uint8_t *b, int64_t rows, int64_t cols) {
  float *w = malloc(sizeof(float) * (size_t)(rows * cols));
  size_t rb = (size_t)(cols / wk_dtype_block(t->dt)) * wk_dtype_block_bytes(t->dt);
  for (int64_t r = 0; r < rows; r++) wk_dequantize_row(t->qt, b + (size_t)r * rb, w + r * cols, cols);
  return w;
}

// max over outputs of |y - ref| / (sum |x||w| + tiny): f32 accumulation error scale.
static double rel_err(const float *y, const float *x, const float *w, int64_t M, int64_t N, int64_t K, int trans) {
  double worst = 0;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; k++) {
        double wv = trans ? w[j * K + k] : w[k * N + j];
        s += (double)x[i * K + k] * wv;
        a += fabs((double)x[i * K + k] * wv);
      }
      double e = fabs((double)y[i * N + j] - s) / (a + 1e-30);
      if (e > worst || e != e) worst = e;
    }
  return worst;
}

static wk_tensor *qmm_fn(wk_tensor *const *in, void *ctx) { return wk_matmul_t(in[0], 0, (wk_tensor *)ctx, 1); }
static wk_tensor *qmm_nn_fn(wk_tensor *const *in, void *ctx) { return wk_matmul(in[0], (wk_tensor *)ctx); }

static void test_type(const qpair *t) {
  const char *name = wk_dtype_name(t->dt);
  int64_t blk = wk_dtype_block(t->dt);
  // odd row counts, 3 blocks per row; a wide case that splits across threads; long rows
  const int64_t shapes[][2] = {{37, 3 * blk}, {301, (blk == 32 ? 16 : 2) * blk}, {67, 16 * blk}};
  for (int sc = 0; sc < 3; sc++) {
    int64_t N = shapes[sc][0], K = shapes[sc][1];
    size_t bytes;
    uint8_t *qb = qb_random(t->dt, N, K, &bytes);
    float *wf = reference(t, qb, N, K);
    wk_scope_begin();
    wk_tensor *W = wk_from_data(2, (int64_t[]){N, K}, t->dt, qb);
    CHECK(W && wk_tensor_dtype(W) == t->dt, "%s: from_data", name);
    // dequantize: bit-exact
    float *d = read_all(wk_dequantize(W));
    CHECK(d && !memcmp(d, wf, sizeof(float) * (size_t)(N * K)), "%s [%lld,%lld]: dequantize bit-exact", name,
          (long long)N, (long long)K);
    free(d);
    // x @ W^T and g @ W for decode-sized and batched M (both kernel paths)
    const int64_t Ms[] = {1, 2, 3, 4, 5, 37};
    for (int mi = 0; mi < 6; mi++) {
      int64_t M = Ms[mi];
      wk_tensor *x = wk_randn(2, (int64_t[]){M, K}, WK_F32, 7 + (uint64_t)M);
      float *xv = read_all(x), *y = read_all(wk_matmul_t(x, 0, W, 1));
      double e = y ? rel_err(y, xv, wf, M, N, K, 1) : INFINITY;
      // f32 accumulation over K <= 4096 terms: well under 1e-5 of sum |x w|
      CHECK(e < 1e-5, "%s: [%lld,%lld] @ [%lld,%lld]^T rel err %g", name, (long long)M, (long long)K, (long long)N,
            (long long)K, e);
      free(xv), free(y);
      wk_tensor *g = wk_randn(3, (int64_t[]){1, M, N}, WK_F32, 11 + (uint64_t)M);
      float *gv = read_all(g), *z = read_all(wk_matmul(g, W));
      e = z ? rel_err(z, gv, wf, M, K, N, 0) : INFINITY;
      CHECK(z && wk_ndim(wk_matmul(g, W)) == 3 && e < 1e-5, "%s: [1,%lld,%lld] @ [%lld,%lld] rel err %g", name,
            (long long)M, (long long)N, (long long)N, (long long)K, e);
      free(gv), free(z);
    }
    // embedding: rows dequantized exactly
    int32_t ids[5] = {0, (int32_t)N - 1, 2, 2, (int32_t)(N / 2)};
    wk_tensor *id = wk_from_data(2, (int64_t[]){1, 5}, WK_I32, ids);
    wk_tensor *e = wk_embedding(W, id);
    float *ev = read_all(e);
    int ok = ev && wk_tensor_dtype(e) == WK_F32 && wk_dim(e, 2) == K;
    for (int i = 0; ok && i < 5; i++) ok = !memcmp(ev + i * K, wf + (int64_t)ids[i] * K, sizeof(float) * (size_t)K);
    CHECK(ok, "%s: embedding rows bit-exact", name);
    free(ev);
    if (sc == 0) { // gradient to x, through both orientations (finite differences)
      wk_tensor *x = gc_input(2, (int64_t[]){3, K}, -1, 1, 5);
      gradcheck("qmatmul x @ W^T", qmm_fn, W, 1, &x, 1);
      wk_tensor *g = gc_input(2, (int64_t[]){2, N}, -1, 1, 6);
      gradcheck("qmatmul g @ W", qmm_nn_fn, W, 1, &g, 1);
    }
    wk_scope_end();
    free(qb), free(wf);
  }
}

// Everything else refuses quantized operands with a message that says so.
static void test_errors(void) {
  wk_scope_begin();
  size_t bytes;
  uint8_t *qb = qb_random(types[2].dt, 4, 64, &bytes);
  wk_tensor *W = wk_from_data(2, (int64_t[]){4, 64}, WK_Q4_1, qb);
  wk_tensor *x = wk_randn(2, (int64_t[]){2, 64}, WK_F32, 1);
  CHECK(!wk_add(W, W) && strstr(wk_last_error(), "q4_1"), "add refuses quantized");
  CHECK(!wk_transpose(W, 0, 1) && strstr(wk_last_error(), "block-quantized"), "views refuse quantized");
  CHECK(!wk_matmul(W, wk_randn(2, (int64_t[]){64, 3}, WK_F32, 2)) && strstr(wk_last_error(), "q4_1"),
        "quantized left operand refused");
  CHECK(!wk_matmul_t(x, 0, W, 0) && strstr(wk_last_error(), "inner dimensions"), "x @ W with wrong K refused");
  CHECK(!wk_matmul_t(wk_randn(2, (int64_t[]){2, 64}, WK_F16, 1), 0, W, 1) && strstr(wk_last_error(), "f32"),
        "f16 x refused");
  CHECK(!wk_cast(x, WK_Q4_0) && strstr(wk_last_error(), "storage"), "cast to quantized refused");
  CHECK(!wk_randn(2, (int64_t[]){2, 64}, WK_Q8_0, 1) && strstr(wk_last_error(), "storage"), "random quantized refused");
  CHECK(!wk_from_data(2, (int64_t[]){2, 48}, WK_Q4_0, qb) && strstr(wk_last_error(), "whole 32-value blocks"),
        "partial block refused");
  // blocks move to CUDA as they are (its kernels read them); without CUDA, the message says so
  wk_tensor *moved = wk_to_device(W, WK_CUDA);
  CHECK(wk_device_available(WK_CUDA) ? moved && wk_tensor_dtype(moved) == WK_Q4_1 : !moved && strstr(wk_last_error(), "cuda"),
        "quantized tensors transfer as blocks");
  // the weight is frozen: asking for its gradient is an error, not zeros
  wk_set_trainable(W, 1);
  wk_tensor *loss = wk_sum(wk_matmul_t(x, 0, W, 1), 0, NULL, 0), *gw = NULL;
  CHECK(wk_grad(loss, 1, &W, &gw) != WK_OK && strstr(wk_last_error(), "frozen"), "no gradient for quantized W");
  wk_set_trainable(W, 0);
  wk_tensor *c = wk_cast(W, WK_BF16);
  CHECK(c && wk_tensor_dtype(c) == WK_BF16 && wk_dim(c, 1) == 64, "cast quantized -> bf16 dequantizes");
  wk_scope_end();
  free(qb);
}

int main(void) {
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) test_type(&types[i]);
  test_errors();
  return check_report();
}
