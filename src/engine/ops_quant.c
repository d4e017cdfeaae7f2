// Block-quantized weights (GGUF's Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) as operands, on
// the CPU or CUDA:
// matmul with W [N, K] on the right (x @ W^T and its transpose x @ W, which is how
// its gradient reaches x) and dequantization. W stays in its blocks in memory; the
// kernels expand them on the fly. W is frozen: these ops have no gradient for it.
#include "engine.h"

static bool check_weight(const char *op, const wk_tensor *w) {
  char b[160];
  if (w->ndim != 2) {
    wk_error(WK_ERR_SHAPE, "%s: a quantized weight must be 2-d [N, K] (rows of blocks), got %s", op,
             wk_shape_str(w, b, sizeof b));
    return false;
  }
  // CUDA has kernels for every block type and for f16/bf16 rows
  // (src/backend/cuda/qmatmul.cu, halfmm.cu); other devices have none
  if (w->device != WK_CPU && w->device != WK_CUDA) {
    wk_error(WK_ERR_DEVICE, "%s: weight %s is on %s, where no kernel reads %s weights in place%s", op,
             wk_shape_str(w, b, sizeof b), wk_device_name(w->device), wk_dtype_name(w->dtype),
             wk_dtype_is_quantized(w->dtype) ? "" : " (cast it to f32 there)");
    return false;
  }
  return true;
}

// trans = 1: x[..., K] @ W[N, K]^T -> [..., N]; trans = 0: x[..., N] @ W[N, K] -> [..., K].
wk_tensor *wk_qmatmul(wk_tensor *x, wk_tensor *w, int trans) {
  const char *op = "matmul";
  if (!wk_tensor_valid(x, op) || !wk_tensor_valid(w, op)) return NULL;
  char a[160], b[160];
  // f16 / bf16 weights come here too (wk_matmul_t routes frozen contiguous ones): the
  // kernel expands their rows as it packs instead of casting the whole matrix per use
  bool half = (w->dtype == WK_F16 || w->dtype == WK_BF16) && wk_is_contiguous(w);
  if (!wk_dtype_is_quantized(w->dtype) && !half) {
    wk_error(WK_ERR_DTYPE, "%s: expected a quantized (or contiguous f16/bf16) weight, got %s", op,
             wk_shape_str(w, b, sizeof b));
    return NULL;
  }
  if (!check_weight(op, w)) return NULL;
  if (x->dtype != WK_F32 || x->ndim < 1) {
    wk_error(WK_ERR_DTYPE, "%s: with quantized weight %s the input must be f32 [..., K], got %s", op,
             wk_shape_str(w, b, sizeof b), wk_shape_str(x, a, sizeof a));
    return NULL;
  }
  int64_t in = w->shape[trans ? 1 : 0], out = w->shape[trans ? 0 : 1];
  if (x->shape[x->ndim - 1] != in) {
    wk_error(WK_ERR_SHAPE, "%s: inner dimensions differ: %s @ %s%s (%lld vs %lld)", op, wk_shape_str(x, a, sizeof a),
             wk_shape_str(w, b, sizeof b), trans ? "^T" : "", (long long)x->shape[x->ndim - 1], (long long)in);
    return NULL;
  }
  if (x->device != w->device) {
    wk_error(WK_ERR_DEVICE, "%s: input is on %s, quantized weight on %s", op, wk_device_name(x->device),
             wk_device_name(w->device));
    return NULL;
  }
  int64_t sh[WK_MAX_DIMS];
  for (int d = 0; d < x->ndim; d++) sh[d] = x->shape[d];
  sh[x->ndim - 1] = out;
  wk_attrs at = {.i = {trans != 0}};
  wk_tensor *ins[2] = {x, w};
  return wk_node_finish(wk_node_new(WK_OP_QMATMUL, WK_F32, x->ndim, sh, 2, ins, &at));
}

wk_tensor *wk_dequantize(wk_tensor *q) {
  if (!wk_tensor_valid(q, "dequantize")) return NULL;
  if (!wk_dtype_is_quantized(q->dtype)) {
    char b[160];
    wk_error(WK_ERR_DTYPE, "dequantize: %s is not block-quantized", wk_shape_str(q, b, sizeof b));
    return NULL;
  }
  if (q->device != WK_CPU && q->device != WK_CUDA) {
    wk_error(WK_ERR_DEVICE, "dequantize: no kernel reads quantized tensors on %s", wk_device_name(q->device));
    return NULL;
  }
  return wk_node_finish(wk_node_new(WK_OP_DEQUANTIZE, WK_F32, q->ndim, q->shape, 1, &q, NULL));
}

static wk_status frozen(const char *op, const wk_tensor *w) {
  char b[160];
  return wk_error(WK_ERR_DTYPE,
                  "%s: no gradient for quantized weight %s (quantized weights are frozen: train adapters on top, "
                  "or wk_cast it to f32 to train it)",
                  op, wk_shape_str(w, b, sizeof b));
}

// y = x @ W^T  =>  dx = dy @ W; y = x @ W  =>  dx = dy @ W^T: the same op, transposed.
wk_status wk_vjp_QMATMUL(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[1]) return frozen("matmul", node->in[1]);
  if (need[0]) gin[0] = wk_keep(wk_qmatmul(g, node->in[1], node->attrs.i[0] == 0));
  return need[0] && !gin[0] ? WK_ERR_STATE : WK_OK;
}

wk_status wk_vjp_DEQUANTIZE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)g, (void)gin;
  return need[0] ? frozen("dequantize", node->in[0]) : WK_OK;
}
