// Matrix multiply (batched, broadcasting batch axes, transposes as free views) and LoRA.
#include <string.h>
#include "engine.h"

static wk_tensor *matmul_node(wk_tensor *a, wk_tensor *b) {
  char x[160], y[160];
  if (a->ndim < 2 || b->ndim < 2) {
    wk_error(WK_ERR_SHAPE, "matmul: operands need at least 2 dimensions, got %s and %s (reshape vectors to [1,K] / [K,1])",
             wk_shape_str(a, x, sizeof x), wk_shape_str(b, y, sizeof y));
    return NULL;
  }
  int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], K2 = b->shape[b->ndim - 2], N = b->shape[b->ndim - 1];
  if (K != K2) {
    wk_error(WK_ERR_SHAPE, "matmul: inner dimensions differ: %s @ %s (%lld vs %lld)", wk_shape_str(a, x, sizeof x),
             wk_shape_str(b, y, sizeof y), (long long)K, (long long)K2);
    return NULL;
  }
  if (a->dtype != b->dtype || !wk_is_float(a->dtype)) {
    wk_error(WK_ERR_DTYPE, "matmul: operands must share a float dtype, got %s and %s", wk_dtype_name(a->dtype),
             wk_dtype_name(b->dtype));
    return NULL;
  }
  if (a->device != b->device) {
    wk_error(WK_ERR_DEVICE, "matmul: operands are on different devices");
    return NULL;
  }
  // batch axes broadcast like elementwise ops
  wk_tensor ba, bb; // only ndim and shape are read (a zeroed wk_tensor a call cost more than the rest)
  ba.ndim = a->ndim - 2;
  bb.ndim = b->ndim - 2;
  memcpy(ba.shape, a->shape, sizeof(int64_t) * (size_t)ba.ndim);
  memcpy(bb.shape, b->shape, sizeof(int64_t) * (size_t)bb.ndim);
  int nd;
  int64_t sh[WK_MAX_DIMS + 2];
  if (!wk_broadcast_shape("matmul (batch axes)", &ba, &bb, &nd, sh)) return NULL;
  sh[nd] = M;
  sh[nd + 1] = N;
  wk_tensor *in[2] = {a, b};
  return wk_node_finish(wk_node_new(WK_OP_MATMUL, a->dtype, nd + 2, sh, 2, in, NULL));
}

// An f16/bf16 weight under an f32 input: a frozen, realized, contiguous 2-d leaf (a
// model's weight) is taken as it is stored, never refused for its dtype. On the CPU
// and on CUDA the quantized-matmul kernels read it in place (a GEMV over its rows for
// decode; for batches, on the CPU expanding rows as they pack or the bf16 GEMM, on
// CUDA a bf16 cuBLAS GEMM), instead of casting it whole at every use (a model in bf16
// used to write an f32 copy of every weight per decode step); that op gives the
// weight no gradient (the input's flows as usual). Elsewhere it widens to f32.
// A trainable half weight is refused like any mixed-dtype matmul.
static bool frozen_half_weight(const wk_tensor *a, const wk_tensor *b) {
  return a->dtype == WK_F32 && (b->dtype == WK_F16 || b->dtype == WK_BF16) && a->device == b->device &&
         b->ndim == 2 && b->buf && b->nin == 0 && !b->trainable && wk_is_contiguous(b);
}

// The product of a (f32) with a frozen half weight b, b transposed when trans_b.
static wk_tensor *half_weight_matmul(wk_tensor *a, wk_tensor *b, int trans_b) {
  if (a->device == WK_CPU || a->device == WK_CUDA) return wk_qmatmul(a, b, trans_b);
  wk_scope_begin();
  wk_tensor *r = wk_keep(wk_matmul_t(a, 0, wk_cast(b, WK_F32), trans_b));
  wk_scope_end();
  return r;
}

wk_tensor *wk_matmul(wk_tensor *a, wk_tensor *b) {
  if (!wk_tensor_valid(a, "matmul") || !wk_tensor_valid(b, "matmul")) return NULL;
  if (wk_dtype_is_quantized(b->dtype)) return wk_qmatmul(a, b, 0);
  if (frozen_half_weight(a, b)) return half_weight_matmul(a, b, 0);
  // [..., M, K] @ [K, N]: fold the batch into M so that the weight gradient is one
  // GEMM instead of a batch of GEMMs summed afterwards.
  if (a->ndim > 2 && b->ndim == 2 && a->shape[a->ndim - 1] == b->shape[0]) {
    int64_t K = a->shape[a->ndim - 1], flat[2] = {wk_numel(a) / (K ? K : 1), K};
    wk_tensor *a2 = wk_reshape(a, 2, flat);
    wk_tensor *r2 = a2 ? matmul_node(a2, b) : NULL;
    wk_tensor *r = NULL;
    if (r2) {
      int64_t sh[WK_MAX_DIMS];
      memcpy(sh, a->shape, sizeof sh);
      sh[a->ndim - 1] = b->shape[1];
      r = wk_reshape(r2, a->ndim, sh);
    }
    wk_tensor_free(wk_keep(a2));
    wk_tensor_free(wk_keep(r2));
    return r;
  }
  return matmul_node(a, b);
}

wk_tensor *wk_matmul_t(wk_tensor *a, int trans_a, wk_tensor *b, int trans_b) {
  if (!wk_tensor_valid(a, "matmul") || !wk_tensor_valid(b, "matmul")) return NULL;
  // A quantized weight is never viewed: its kernel reads the blocks in either orientation.
  if (wk_dtype_is_quantized(b->dtype) && !trans_a) return wk_qmatmul(a, b, trans_b);
  if (frozen_half_weight(a, b) && !trans_a) return half_weight_matmul(a, b, trans_b);
  wk_tensor *x = trans_a ? wk_transpose(a, -1, -2) : wk_tensor_ref(a);
  wk_tensor *y = trans_b ? wk_transpose(b, -1, -2) : wk_tensor_ref(b);
  wk_tensor *r = x && y ? wk_matmul(x, y) : NULL;
  if (trans_a) wk_keep(x);
  if (trans_b) wk_keep(y);
  wk_tensor_free(x);
  wk_tensor_free(y);
  return r;
}

// A 2-d operand the LoRA kernels read as it is stored: row-major or its transpose.
static bool lora_matrix(const wk_tensor *t) {
  return t->ndim == 2 && t->dtype == WK_F32 && t->shape[0] > 0 && t->shape[1] > 0 &&
         ((t->stride[1] == 1 && t->stride[0] == t->shape[1]) || (t->stride[0] == 1 && t->stride[1] == t->shape[0]));
}

// One LORA node when the kernels take the operands as they are: f32, one device, x
// contiguous (its rows one [M, K] matrix), W [K, N], A [K, r] and B [r, N] stored
// row-major or transposed. A long lazy chain of small calls spends most of its host
// time per node (building the graph, then the plan key, its lookup and binding), and
// the same call as primitives is 7 nodes. Anything else is built from primitives
// (x viewed as rows once, not once per product), which the fusion pass recognizes.
static bool lora_one_node(const wk_tensor *x, const wk_tensor *W, const wk_tensor *A, const wk_tensor *B) {
  return x->ndim >= 2 && x->dtype == WK_F32 && wk_numel(x) > 0 && wk_is_contiguous(x) && lora_matrix(W) &&
         lora_matrix(A) && lora_matrix(B) && x->device == W->device && W->device == A->device &&
         A->device == B->device && W->shape[0] == x->shape[x->ndim - 1] && A->shape[0] == W->shape[0] &&
         B->shape[0] == A->shape[1] && B->shape[1] == W->shape[1];
}

wk_tensor *wk_lora(wk_tensor *x, wk_tensor *W, wk_tensor *A, wk_tensor *B, float scale) {
  if (!wk_tensor_valid(x, "lora") || !wk_tensor_valid(W, "lora") || !wk_tensor_valid(A, "lora") ||
      !wk_tensor_valid(B, "lora"))
    return NULL;
  if (lora_one_node(x, W, A, B)) {
    int64_t sh[WK_MAX_DIMS];
    memcpy(sh, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    sh[x->ndim - 1] = W->shape[1];
    wk_tensor *in[4] = {x, W, A, B};
    wk_attrs at;
    memset(&at, 0, sizeof at);
    at.f[0] = scale;
    return wk_node_finish(wk_node_new(WK_OP_LORA, WK_F32, x->ndim, sh, 4, in, &at));
  }
  int64_t K = x->ndim ? x->shape[x->ndim - 1] : 0;
  // the shapes named as LoRA's, not as the matmul or add they would fail in
  bool wq = wk_dtype_is_quantized(W->dtype);   // (a block-quantized W: its matmul checks its own layout)
  if (x->ndim < 1 || W->ndim != 2 || A->ndim != 2 || B->ndim != 2 || A->shape[0] != K || B->shape[0] != A->shape[1] ||
      (!wq && (W->shape[0] != K || B->shape[1] != W->shape[1]))) {
    char a[160], b[160], c[160], d[160];
    wk_error(WK_ERR_SHAPE, "lora: x %s, W %s, A %s, B %s do not form x@W + s (x@A)@B (want x [..., K], W [K, N], "
             "A [K, r], B [r, N])", wk_shape_str(x, a, sizeof a), wk_shape_str(W, b, sizeof b),
             wk_shape_str(A, c, sizeof c), wk_shape_str(B, d, sizeof d));
    return NULL;
  }
  bool fold = x->ndim > 2 && W->shape[0] == K && !wq;
  wk_scope_begin();
  wk_tensor *rows = fold ? wk_reshape(x, 2, (int64_t[]){wk_numel(x) / (K ? K : 1), K}) : x;
  wk_tensor *base = wk_matmul(rows, W);
  wk_tensor *down = wk_matmul(rows, A);
  wk_tensor *up = wk_matmul(down, B);
  wk_tensor *r = wk_add(base, wk_mul_scalar(up, scale));
  if (fold && r) {
    int64_t sh[WK_MAX_DIMS];
    memcpy(sh, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    sh[x->ndim - 1] = W->shape[1];
    r = wk_reshape(r, x->ndim, sh);
  }
  r = wk_keep(r);
  wk_scope_end();
  return wk_node_finish(r) ? r : NULL;
}

// ---- VJPs ----
// x as the other operand's gradient reads it. A product x = p * q (or a contiguous
// reshape of one) that is itself differentiated is computed again here instead of
// kept from the forward pass: its own backward reads p and q, so they live until then
// anyway, and the copy is one elementwise pass. A LoRA on a SwiGLU MLP's down
// projection reads silu(gate) * up: [tokens, 4864] f32 a layer, 1.9 GB over
// Qwen2.5-0.5B's 24 layers at batch 8 x 512. The copy's attrs.u = 1 keeps CSE from
// merging it back into the forward's value.
static wk_tensor *recomputed(wk_tensor *x, bool differentiated) {
  if (!differentiated || x->buf) return x;
  wk_tensor *p = x;
  if (x->op == WK_OP_VIEW) {
    if (x->offset || !wk_is_contiguous(x) || !x->in[0]) return x;
    p = x->in[0];
  }
  if (p->buf || p->op != WK_OP_MUL || p->attrs.u || !wk_is_contiguous(p)) return x;
  wk_attrs at = p->attrs;
  at.u = 1;
  wk_tensor *c = wk_node_finish(wk_node_new(WK_OP_MUL, p->dtype, p->ndim, p->shape, 2, p->in, &at));
  return p == x || !c ? c : wk_reshape(c, x->ndim, x->shape);
}

wk_status wk_vjp_MATMUL(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *a = node->in[0], *b = node->in[1];
  if (need[0]) gin[0] = wk_unbroadcast(wk_matmul_t(g, 0, recomputed(b, need[1]), 1), a);
  if (need[1]) gin[1] = wk_unbroadcast(wk_matmul_t(recomputed(a, need[0]), 1, g, 0), b);
  return WK_OK;
}

// The primitives' gradients, with X = x and G = g as rows ([M, K], [M, N]):
// dx = G W^T + s (G B^T) A^T, dW = X^T G, dA = X^T s (G B^T), dB = (s X A)^T G.
wk_status wk_vjp_LORA(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *x = node->in[0], *W = node->in[1], *A = node->in[2], *B = node->in[3];
  const float s = node->attrs.f[0];
  const int64_t K = W->shape[0], N = W->shape[1], M = wk_numel(x) / K;
  wk_scope_begin();
  wk_tensor *X = wk_reshape(x, 2, (int64_t[]){M, K}), *G = wk_reshape(g, 2, (int64_t[]){M, N});
  wk_tensor *gb = need[0] || need[2] ? wk_mul_scalar(wk_matmul_t(G, 0, B, 1), s) : NULL;
  if (need[0])
    gin[0] = wk_keep(wk_reshape(wk_add(wk_matmul_t(G, 0, W, 1), wk_matmul_t(gb, 0, A, 1)), x->ndim, x->shape));
  if (need[1]) gin[1] = wk_keep(wk_matmul_t(X, 1, G, 0));
  if (need[2]) gin[2] = wk_keep(wk_matmul_t(X, 1, gb, 0));
  if (need[3]) gin[3] = wk_keep(wk_matmul_t(wk_mul_scalar(wk_matmul(X, A), s), 1, G, 0));
  wk_scope_end();
  for (int k = 0; k < 4; k++)
    if (need[k] && !gin[k]) return WK_ERR_STATE;
  return WK_OK;
}
