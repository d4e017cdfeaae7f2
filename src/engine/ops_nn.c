// Neural-network ops: softmax, norms, rope, embedding, masks, attention, cross-entropy.
// Builders check shapes and dtypes and record one kernel node (softmax over a
// non-last axis: transposed views around the kernel). Inputs compute in f32 and
// results keep the main input's dtype. Backward: dedicated kernels (softmax,
// norms, embedding, cross-entropy), rope with the angle negated, and attention
// rebuilt from primitives (matmul, softmax) so that it fuses and plans like any graph.
#include <math.h>
#include <string.h>
#include "engine.h"

// ---- helpers ----
#define K(x) wk_keep(x)
#define IN(i) node->in[i]


// Closes a scope opened by the caller, handing `r` to the enclosing one.
static wk_tensor *scope_result(wk_tensor *r) {
  if (r) wk_keep(r);
  wk_scope_end();
  return r ? wk_node_finish(r) : NULL;
}

static bool check_float(const char *op, const char *what, const wk_tensor *t) {
  if (wk_is_float(t->dtype)) return true;
  char b[160];
  wk_error(WK_ERR_DTYPE, "%s: %s must be a float tensor, got %s (cast it first)", op, what, wk_shape_str(t, b, sizeof b));
  return false;
}

static bool check_i32(const char *op, const char *what, const wk_tensor *t) {
  if (t->dtype == WK_I32) return true;
  char b[160];
  wk_error(WK_ERR_DTYPE, "%s: %s must be i32, got %s", op, what, wk_shape_str(t, b, sizeof b));
  return false;
}

static bool check_device(const char *op, const wk_tensor *a, const wk_tensor *b) {
  if (!b || a->device == b->device) return true;
  wk_error(WK_ERR_DEVICE, "%s: operands are on different devices (%d and %d); transfer one first", op, a->device,
           b->device);
  return false;
}

static bool check_min_ndim(const char *op, const char *what, const wk_tensor *t, int n) {
  if (t->ndim >= n) return true;
  char b[160];
  wk_error(WK_ERR_SHAPE, "%s: %s needs at least %d dimension%s, got %s", op, what, n, n > 1 ? "s" : "",
           wk_shape_str(t, b, sizeof b));
  return false;
}

static int64_t last_dim(const wk_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

static wk_tensor *kernel_node(wk_op op, wk_dtype dt, int ndim, const int64_t *shape, int nin, wk_tensor *const *in,
                              const wk_attrs *at) {
  return wk_node_finish(wk_node_new(op, dt, ndim, shape, nin, in, at));
}

// ---- softmax / log-softmax ----
static wk_tensor *softmax_like(wk_op op, const char *name, wk_tensor *a, int axis) {
  if (!wk_tensor_valid(a, name) || !check_float(name, "input", a) || !check_min_ndim(name, "input", a, 1)) return NULL;
  int ax = wk_norm_axis(axis, a->ndim, name);
  if (ax < 0) return NULL;
  if (ax == a->ndim - 1) return kernel_node(op, a->dtype, a->ndim, a->shape, 1, &a, NULL);
  // the kernel works on the last axis: swap `ax` there and back (views, no copies)
  wk_scope_begin();
  wk_tensor *t = wk_transpose(a, ax, -1);
  wk_tensor *y = t ? kernel_node(op, a->dtype, t->ndim, t->shape, 1, &t, NULL) : NULL;
  return scope_result(y ? wk_transpose(y, ax, -1) : NULL);
}

wk_tensor *wk_softmax(wk_tensor *a, int axis) { return softmax_like(WK_OP_SOFTMAX, "softmax", a, axis); }
wk_tensor *wk_log_softmax(wk_tensor *a, int axis) { return softmax_like(WK_OP_LOG_SOFTMAX, "log_softmax", a, axis); }

// ---- norms ----
static bool check_param(const char *op, const char *what, const wk_tensor *x, const wk_tensor *p) {
  if (!wk_tensor_valid(p, op) || !check_float(op, what, p) || !check_device(op, x, p)) return false;
  int64_t D = last_dim(x);
  if (p->ndim == 1 && p->shape[0] == D) return true;
  char a[160], b[160];
  wk_error(WK_ERR_SHAPE, "%s: %s %s does not match the last axis of x %s (expected [%lld])", op, what,
           wk_shape_str(p, a, sizeof a), wk_shape_str(x, b, sizeof b), (long long)D);
  return false;
}

wk_tensor *wk_rms_norm(wk_tensor *x, wk_tensor *w, float eps) {
  const char *op = "rms_norm";
  if (!wk_tensor_valid(x, op) || !check_float(op, "x", x) || !check_min_ndim(op, "x", x, 1)) return NULL;
  if (w && !check_param(op, "weight", x, w)) return NULL;
  if (!(eps >= 0)) { wk_error(WK_ERR_ARG, "%s: eps = %g must be >= 0", op, (double)eps); return NULL; }
  wk_tensor *in[2] = {x, w};
  wk_attrs at = {.f = {eps}, .i = {w != NULL}};
  return kernel_node(WK_OP_RMS_NORM, x->dtype, x->ndim, x->shape, w ? 2 : 1, in, &at);
}

wk_tensor *wk_layer_norm(wk_tensor *x, wk_tensor *w, wk_tensor *b, float eps) {
  const char *op = "layer_norm";
  if (!wk_tensor_valid(x, op) || !check_float(op, "x", x) || !check_min_ndim(op, "x", x, 1)) return NULL;
  if (w && !check_param(op, "weight", x, w)) return NULL;
  if (b && !check_param(op, "bias", x, b)) return NULL;
  if (!(eps >= 0)) { wk_error(WK_ERR_ARG, "%s: eps = %g must be >= 0", op, (double)eps); return NULL; }
  wk_tensor *in[3] = {x};
  int n = 1;
  if (w) in[n++] = w;
  if (b) in[n++] = b;
  wk_attrs at = {.f = {eps}, .i = {w != NULL, b != NULL}};
  return kernel_node(WK_OP_LAYER_NORM, x->dtype, x->ndim, x->shape, n, in, &at);
}

// ---- rotary embedding ----
// Inputs x[, pos][, inv_freq]; attrs.i[2] says whether inv_freq is there (then theta is
// unused), attrs.f[2] scales cos and sin (RoPE scaling's attention factor).
static wk_tensor *rope_node(wk_tensor *x, float theta, int64_t offset, wk_tensor *pos, wk_tensor *inv_freq,
                            float scale, int interleaved) {
  const char *op = "rope";
  if (!wk_tensor_valid(x, op) || !check_float(op, "x", x)) return NULL;
  if (pos && (!wk_tensor_valid(pos, op) || !check_i32(op, "pos", pos) || !check_device(op, x, pos))) return NULL;
  if (inv_freq && (!wk_tensor_valid(inv_freq, op) || !check_device(op, x, inv_freq))) return NULL;
  char b[160];
  if (x->ndim < 2 || last_dim(x) % 2) {
    wk_error(WK_ERR_SHAPE, "rope: x must be [..., T, D] with D even, got %s", wk_shape_str(x, b, sizeof b));
    return NULL;
  }
  if (pos && wk_numel(pos) != 1) {
    wk_error(WK_ERR_SHAPE, "rope: pos must hold one position, got %s", wk_shape_str(pos, b, sizeof b));
    return NULL;
  }
  if (inv_freq && (inv_freq->dtype != WK_F32 || inv_freq->ndim != 1 || inv_freq->shape[0] != last_dim(x) / 2)) {
    char a[160];
    wk_error(WK_ERR_SHAPE, "rope: inv_freq must be f32 [D/2] = [%lld] for x %s, got %s", (long long)(last_dim(x) / 2),
             wk_shape_str(x, a, sizeof a), wk_shape_str(inv_freq, b, sizeof b));
    return NULL;
  }
  if (!(theta > 0)) { wk_error(WK_ERR_ARG, "rope: theta = %g must be > 0", (double)theta); return NULL; }
  if (offset < 0 || offset > (1LL << 40)) {   // positions are computed in int64, their angles in float
    wk_error(WK_ERR_ARG, "rope: position offset %lld is outside [0, 2^40]", (long long)offset);
    return NULL;
  }
  if (!(scale > 0)) { wk_error(WK_ERR_ARG, "rope: attention scale = %g must be > 0", (double)scale); return NULL; }
  wk_attrs at = {.f = {theta, 1.0f, scale}, .i = {offset, interleaved != 0, inv_freq != NULL}};
  wk_tensor *in[3] = {x};
  int n = 1;
  if (pos) in[n++] = pos;
  if (inv_freq) in[n++] = inv_freq;
  return kernel_node(WK_OP_ROPE, x->dtype, x->ndim, x->shape, n, in, &at);
}

wk_tensor *wk_rope(wk_tensor *x, float theta, int64_t offset, int interleaved) {
  return rope_node(x, theta, offset, NULL, NULL, 1.0f, interleaved);
}

wk_tensor *wk_rope_at(wk_tensor *x, float theta, wk_tensor *pos, int interleaved) {
  if (!pos) { wk_error(WK_ERR_ARG, "rope: pos is NULL"); return NULL; }
  return rope_node(x, theta, 0, pos, NULL, 1.0f, interleaved);
}

wk_tensor *wk_rope_freqs(wk_tensor *x, wk_tensor *inv_freq, float scale, int64_t offset, wk_tensor *pos,
                         int interleaved) {
  if (!inv_freq) { wk_error(WK_ERR_ARG, "rope: inv_freq is NULL"); return NULL; }
  return rope_node(x, 1.0f, offset, pos, inv_freq, scale, interleaved);
}

// ---- embedding ----
wk_tensor *wk_embedding(wk_tensor *table, wk_tensor *ids) {
  const char *op = "embedding";
  if (!wk_tensor_valid(table, op) || !wk_tensor_valid(ids, op)) return NULL;
  // A quantized table is gathered row by row, each row dequantized (output f32).
  bool quant = wk_dtype_is_quantized(table->dtype);
  if ((!quant && !check_float(op, "table", table)) || !check_i32(op, "ids", ids) || !check_device(op, table, ids))
    return NULL;
  char a[160], b[160];
  if (table->ndim != 2 || ids->ndim + 1 > WK_MAX_DIMS) {
    wk_error(WK_ERR_SHAPE, "embedding: table must be [V, D] and ids at most %d-d, got table %s, ids %s",
             WK_MAX_DIMS - 1, wk_shape_str(table, a, sizeof a), wk_shape_str(ids, b, sizeof b));
    return NULL;
  }
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
  sh[ids->ndim] = table->shape[1];
  wk_tensor *in[2] = {table, ids};
  return kernel_node(WK_OP_EMBEDDING, quant ? WK_F32 : table->dtype, ids->ndim + 1, sh, 2, in, NULL);
}

// ---- masks ----
wk_tensor *wk_causal_mask(int64_t T, int64_t S) {
  if (T < 0 || S < 0) {
    wk_error(WK_ERR_SHAPE, "causal_mask: T = %lld and S = %lld must be >= 0", (long long)T, (long long)S);
    return NULL;
  }
  int64_t sh[2] = {T, S};
  wk_attrs at = {.i = {T, S}};
  return kernel_node(WK_OP_CAUSAL_MASK, WK_F32, 2, sh, 0, NULL, &at);
}

// Built from primitives: where(arange(S) < length[b], 0, -inf), shaped [B, 1, 1, S].
wk_tensor *wk_padding_mask(wk_tensor *lengths, int64_t S) {
  const char *op = "padding_mask";
  if (!wk_tensor_valid(lengths, op) || !check_i32(op, "lengths", lengths)) return NULL;
  char b[160];
  if (lengths->ndim != 1 || S < 0) {
    wk_error(WK_ERR_SHAPE, "padding_mask: lengths must be [B] and S >= 0, got lengths %s, S = %lld",
             wk_shape_str(lengths, b, sizeof b), (long long)S);
    return NULL;
  }
  wk_scope_begin();
  int64_t sh4[4] = {lengths->shape[0], 1, 1, 1};
  wk_tensor *len = wk_reshape(wk_cast(lengths, WK_F32), 4, sh4);
  wk_tensor *pos = wk_arange(0, (double)S, 1, WK_F32);
  wk_tensor *r = wk_where(wk_lt(pos, len), wk_zeros(0, NULL, WK_F32), wk_full(0, NULL, WK_F32, -INFINITY));
  return scope_result(r);
}

// ---- attention ----
// k and v share q's dtype, or (a cache under an f32 q) are stored as f16, bf16 or q8_0.
static bool sdpa_dtypes_ok(const wk_tensor *q, const wk_tensor *k, const wk_tensor *v) {
  if (k->dtype != v->dtype) return false;
  if (k->dtype == q->dtype) return true;
  return q->dtype == WK_F32 && (k->dtype == WK_F16 || k->dtype == WK_BF16 || k->dtype == WK_Q8_0);
}

static bool sdpa_mask_ok(const wk_tensor *q, const wk_tensor *k, const wk_tensor *mask) {
  const char *op = "sdpa";
  if (!mask) return true;
  if (!check_float(op, "mask", mask)) return false;
  const int64_t full[4] = {q->shape[0], q->shape[1], q->shape[2], k->shape[2]};
  bool ok = mask->ndim <= 4;
  for (int i = 0; ok && i < mask->ndim; i++) {
    int64_t m = mask->shape[mask->ndim - 1 - i], f = full[3 - i];
    ok = m == 1 || m == f;
  }
  if (!ok) {
    char a[160], b[160], c[160], d[160];
    wk_error(WK_ERR_SHAPE, "sdpa: mask %s does not broadcast to [B, Hq, T, S] = %s (q %s, k %s)",
             wk_shape_str(mask, a, sizeof a), wk_fmt_shape(4, full, b, sizeof b), wk_shape_str(q, c, sizeof c),
             wk_shape_str(k, d, sizeof d));
  }
  return ok;
}

wk_tensor *wk_sdpa_kv(wk_tensor *q, wk_tensor *k, wk_tensor *v, wk_tensor *mask, wk_tensor *kv_len, int causal,
                      float scale) {
  const char *op = "sdpa";
  if (!wk_tensor_valid(q, op) || !wk_tensor_valid(k, op) || !wk_tensor_valid(v, op)) return NULL;
  if ((mask && !wk_tensor_valid(mask, op)) || (kv_len && !wk_tensor_valid(kv_len, op))) return NULL;
  char a[160], b[160], c[160];
  if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] || k->shape[3] != q->shape[3] ||
      memcmp(k->shape, v->shape, sizeof(int64_t) * 4) || k->shape[1] == 0 || q->shape[1] % k->shape[1]) {
    wk_error(WK_ERR_SHAPE,
             "sdpa: need q [B, Hq, T, D] and k, v [B, Hkv, S, D] with Hq %% Hkv == 0, got q %s, k %s, v %s",
             wk_shape_str(q, a, sizeof a), wk_shape_str(k, b, sizeof b), wk_shape_str(v, c, sizeof c));
    return NULL;
  }
  if (!check_float(op, "q", q)) return NULL;
  if (!sdpa_dtypes_ok(q, k, v)) {
    wk_error(WK_ERR_DTYPE, "sdpa: k and v must share q's dtype (or, under an f32 q, be stored as f16, bf16 or q8_0), "
             "got q %s, k %s, v %s", wk_shape_str(q, a, sizeof a), wk_shape_str(k, b, sizeof b), wk_shape_str(v, c, sizeof c));
    return NULL;
  }
  if (!check_device(op, q, k) || !check_device(op, q, v) || !check_device(op, q, mask) || !check_device(op, q, kv_len))
    return NULL;
  if (!sdpa_mask_ok(q, k, mask)) return NULL;
  if (kv_len && (!check_i32(op, "kv_len", kv_len) || wk_numel(kv_len) != 1)) {
    if (kv_len->dtype == WK_I32) wk_error(WK_ERR_SHAPE, "sdpa: kv_len must be one i32 value, got %s", wk_shape_str(kv_len, a, sizeof a));
    return NULL;
  }
  if (!(scale > 0)) scale = 1.0f / sqrtf((float)(q->shape[3] ? q->shape[3] : 1));
  wk_tensor *in[5] = {q, k, v};
  int n = 3;
  if (mask) in[n++] = mask;
  if (kv_len) in[n++] = kv_len;
  wk_attrs at = {.f = {scale}, .i = {causal != 0, kv_len != NULL}};
  return kernel_node(WK_OP_SDPA, q->dtype, 4, q->shape, n, in, &at);
}

wk_tensor *wk_sdpa(wk_tensor *q, wk_tensor *k, wk_tensor *v, wk_tensor *mask, int causal, float scale) {
  return wk_sdpa_kv(q, k, v, mask, NULL, causal, scale);
}

// ---- cross-entropy ----
wk_tensor *wk_cross_entropy(wk_tensor *logits, wk_tensor *targets, int ignore_index, int reduction) {
  const char *op = "cross_entropy";
  if (!wk_tensor_valid(logits, op) || !wk_tensor_valid(targets, op)) return NULL;
  if (!check_float(op, "logits", logits) || !check_i32(op, "targets", targets) || !check_device(op, logits, targets))
    return NULL;
  char a[160], b[160];
  if (logits->ndim < 1 || targets->ndim != logits->ndim - 1 ||
      memcmp(targets->shape, logits->shape, sizeof(int64_t) * (size_t)targets->ndim)) {
    wk_error(WK_ERR_SHAPE, "cross_entropy: need logits [..., V] and targets [...], got logits %s, targets %s",
             wk_shape_str(logits, a, sizeof a), wk_shape_str(targets, b, sizeof b));
    return NULL;
  }
  if (reduction < 0 || reduction > 2) {
    wk_error(WK_ERR_ARG, "cross_entropy: reduction %d is not 0 (none), 1 (mean) or 2 (sum)", reduction);
    return NULL;
  }
  wk_tensor *in[2] = {logits, targets};
  wk_attrs at = {.i = {ignore_index, reduction}};
  if (reduction) return kernel_node(WK_OP_CROSS_ENTROPY, logits->dtype, 0, NULL, 2, in, &at);
  return kernel_node(WK_OP_CROSS_ENTROPY, logits->dtype, targets->ndim, targets->shape, 2, in, &at);
}

// ---- cross-entropy of a linear head ----
wk_tensor *wk_linear_cross_entropy(wk_tensor *x, wk_tensor *W, wk_tensor *targets, int ignore_index, int reduction) {
  const char *op = "linear_cross_entropy";
  if (!wk_tensor_valid(x, op) || !wk_tensor_valid(W, op) || !wk_tensor_valid(targets, op)) return NULL;
  static int on = -1;   // WICK_CUDA_LINEAR_CE=0: the unfused graph (benchmarks compare them)
  bool fused = wk_env_on("WICK_CUDA_LINEAR_CE", &on) && x->device == WK_CUDA && W->device == WK_CUDA && targets->device == WK_CUDA && x->dtype == WK_F32 &&
               W->dtype == WK_BF16 && W->ndim == 2 && wk_is_contiguous(W) && x->ndim >= 1 &&
               x->shape[x->ndim - 1] == W->shape[1] && targets->dtype == WK_I32 && targets->ndim == x->ndim - 1 &&
               !memcmp(targets->shape, x->shape, sizeof(int64_t) * (size_t)targets->ndim) &&
               (reduction == 1 || reduction == 2) && wk_numel(x) > 0;
  if (!fused) return wk_cross_entropy(wk_matmul_t(x, 0, W, 1), targets, ignore_index, reduction);
  wk_tensor *in[3] = {x, W, targets};
  wk_attrs at = {.i = {ignore_index, reduction}};
  return kernel_node(WK_OP_LINEAR_CE, WK_F32, 0, NULL, 3, in, &at);
}

// ---- VJPs ----
static wk_status no_second_order(const char *op) {
  return wk_error(WK_ERR_STATE, "%s: second derivatives are not supported", op);
}

wk_status wk_vjp_SOFTMAX(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_tensor *in[2] = {node, g};
  gin[0] = K(kernel_node(WK_OP_SOFTMAX_BWD, IN(0)->dtype, node->ndim, node->shape, 2, in, NULL));
  return WK_OK;
}
wk_status wk_vjp_LOG_SOFTMAX(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_tensor *in[2] = {node, g};
  gin[0] = K(kernel_node(WK_OP_LOG_SOFTMAX_BWD, IN(0)->dtype, node->ndim, node->shape, 2, in, NULL));
  return WK_OK;
}
wk_status wk_vjp_SDPA_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("sdpa");
}
wk_status wk_vjp_SOFTMAX_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("softmax");
}
wk_status wk_vjp_LOG_SOFTMAX_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("log_softmax");
}

// dw (and db) of a norm: one kernel summing dy * xhat (and dy) over rows, in f32.
static wk_tensor *norm_dw(wk_tensor *x, wk_tensor *g, float eps, int layer) {
  int64_t D = last_dim(x), sh[2] = {2, D};
  wk_tensor *in[2] = {x, g};
  wk_attrs at = {.f = {eps}, .i = {layer}};
  return layer ? kernel_node(WK_OP_NORM_DW, WK_F32, 2, sh, 2, in, &at) : kernel_node(WK_OP_NORM_DW, WK_F32, 1, &D, 2, in, &at);
}
static wk_tensor *row_of(wk_tensor *t, int r, const wk_tensor *like) {
  return wk_cast(wk_reshape(wk_slice(t, 0, r, r + 1, 1), 1, like->shape), like->dtype);
}

wk_status wk_vjp_RMS_NORM(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *x = IN(0), *w = node->nin > 1 ? IN(1) : NULL;
  if (need[0]) {
    wk_tensor *in[3] = {x, w, g};
    if (!w) in[1] = g;
    gin[0] = K(kernel_node(WK_OP_RMS_NORM_BWD, x->dtype, x->ndim, x->shape, w ? 3 : 2, in, &node->attrs));
  }
  if (w && need[1]) gin[1] = K(wk_cast(norm_dw(x, g, node->attrs.f[0], 0), w->dtype));
  return WK_OK;
}
wk_status wk_vjp_LAYER_NORM(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *x = IN(0);
  int has_w = (int)node->attrs.i[0], has_b = (int)node->attrs.i[1];
  wk_tensor *w = has_w ? IN(1) : NULL, *b = has_b ? IN(1 + has_w) : NULL;
  if (need[0]) {
    wk_tensor *in[3] = {x, w, g};
    if (!w) in[1] = g;
    wk_attrs at = {.f = {node->attrs.f[0]}, .i = {has_w}};
    gin[0] = K(kernel_node(WK_OP_LAYER_NORM_BWD, x->dtype, x->ndim, x->shape, w ? 3 : 2, in, &at));
  }
  bool want_w = w && need[1], want_b = b && need[1 + has_w];
  if (want_w || want_b) {
    wk_tensor *t = norm_dw(x, g, node->attrs.f[0], 1);
    if (want_w) gin[1] = K(row_of(t, 0, w));
    if (want_b) gin[1 + has_w] = K(row_of(t, 1, b));
  }
  return WK_OK;
}
wk_status wk_vjp_RMS_NORM_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("rms_norm");
}
wk_status wk_vjp_LAYER_NORM_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("layer_norm");
}
wk_status wk_vjp_NORM_DW(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order(node->attrs.i[0] ? "layer_norm" : "rms_norm");
}

// Rope is a rotation (times the attention scale): its transpose rotates by the negated angle.
wk_status wk_vjp_ROPE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_attrs at = node->attrs;
  at.f[1] = -at.f[1];
  wk_tensor *in[3] = {g, node->nin > 1 ? IN(1) : NULL, node->nin > 2 ? IN(2) : NULL};   // the same positions
  gin[0] = K(kernel_node(WK_OP_ROPE, IN(0)->dtype, g->ndim, g->shape, node->nin, in, &at));
  return WK_OK;
}

wk_status wk_vjp_EMBEDDING(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *table = IN(0), *ids = IN(1);
  if (need[0] && wk_dtype_is_quantized(table->dtype)) {
    char b[160];
    return wk_error(WK_ERR_DTYPE, "embedding: no gradient for quantized table %s (quantized weights are frozen)",
                    wk_shape_str(table, b, sizeof b));
  }
  if (need[0]) {
    wk_tensor *in[2] = {ids, g};
    wk_attrs at = {.i = {table->shape[0]}};
    gin[0] = K(kernel_node(WK_OP_EMBEDDING_BWD, table->dtype, 2, table->shape, 2, in, &at));
  }
  return WK_OK;
}
// Scatter-add is linear in dy: its transpose gathers.
wk_status wk_vjp_EMBEDDING_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[1]) gin[1] = K(wk_cast(wk_embedding(g, IN(0)), IN(1)->dtype));
  return WK_OK;
}

wk_status wk_vjp_CROSS_ENTROPY(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *logits = IN(0);
  if (need[0]) {
    wk_tensor *in[3] = {logits, IN(1), g};
    gin[0] = K(kernel_node(WK_OP_CROSS_ENTROPY_BWD, logits->dtype, logits->ndim, logits->shape, 3, in, &node->attrs));
  }
  return WK_OK;
}
wk_status wk_vjp_LINEAR_CE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *x = IN(0);
  if (need[1]) {
    char b[160];
    return wk_error(WK_ERR_STATE, "linear_cross_entropy: no gradient for the head's weight %s (a frozen bf16 matrix)",
                    wk_shape_str(IN(1), b, sizeof b));
  }
  if (need[0]) {
    wk_tensor *in[4] = {x, IN(1), IN(2), g};
    gin[0] = K(kernel_node(WK_OP_LINEAR_CE_BWD, WK_F32, x->ndim, x->shape, 4, in, &node->attrs));
  }
  return WK_OK;
}
wk_status wk_vjp_LINEAR_CE_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("linear_cross_entropy");
}
wk_status wk_vjp_CROSS_ENTROPY_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return no_second_order("cross_entropy");
}

wk_status wk_vjp_CAUSAL_MASK(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return wk_vjp_none(node, g, need, gin);
}

// Attention backward from primitives, in f32, with query heads grouped by their kv
// head: q5 [B, Hkv, G, T, D] against k5 [B, Hkv, 1, S, D] broadcasts over G, and the
// gradients of k and v sum over G. P is recomputed (nothing is saved by the forward):
//   P = softmax(q k^T * scale + mask), dV = P^T dO, dS = softmax_bwd(P, dO v^T),
//   dQ = dS k * scale, dK = dS^T q * scale, dmask = dS (summed to the mask's shape).
// A fully masked row has P = NaN here (softmax of all -inf) where the forward gives 0.
static wk_tensor *to5(wk_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  int64_t sh[5] = {a, b, c, d, e};
  return wk_reshape(t, 5, sh);
}
// One fused kernel (backend/cpu/sdpa_bwd.c; on CUDA attn.cu, head dims up to 128)
// computes all three gradients into one f32 buffer [dq; dk; dv], skipping the key
// blocks a causal mask hides; the gradients are views of it. The mask's own gradient
// needs dS in full, so a trainable mask takes the primitive path below.
static wk_status sdpa_vjp_fused(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *qkv[3] = {IN(0), IN(1), IN(2)};
  wk_tensor *in[6] = {IN(0), IN(1), IN(2), node, g, node->nin > 3 ? IN(3) : NULL};
  int64_t nq = wk_numel(qkv[0]), nk = wk_numel(qkv[1]), total = nq + 2 * nk;
  wk_tensor *all = kernel_node(WK_OP_SDPA_BWD, WK_F32, 1, &total, in[5] ? 6 : 5, in, &node->attrs);
  int64_t start[3] = {0, nq, nq + nk};
  for (int i = 0; i < 3; i++) {
    if (!need[i]) continue;
    wk_tensor *part = wk_slice(all, 0, start[i], start[i] + wk_numel(qkv[i]), 1);
    gin[i] = K(wk_cast(wk_reshape(part, 4, qkv[i]->shape), qkv[i]->dtype));
  }
  return WK_OK;
}

wk_status wk_vjp_SDPA(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (node->attrs.i[1] || wk_dtype_is_quantized(IN(1)->dtype))
    return wk_error(WK_ERR_STATE, "sdpa: no gradient over a KV cache (a run-time kv_len or q8_0 keys): inference only");
  wk_tensor *q = IN(0), *k = IN(1), *v = IN(2), *mask = node->nin > 3 ? IN(3) : NULL;
  bool fused = q->device == WK_CPU || (q->device == WK_CUDA && q->shape[3] <= 128);
  if (fused && !(mask && need[3])) return sdpa_vjp_fused(node, g, need, gin);
  int64_t B = q->shape[0], Hq = q->shape[1], T = q->shape[2], D = q->shape[3];
  int64_t Hkv = k->shape[1], S = k->shape[2], G = Hq / Hkv;
  float scale = node->attrs.f[0];
  wk_tensor *q5 = to5(wk_cast(q, WK_F32), B, Hkv, G, T, D);
  wk_tensor *k5 = to5(wk_cast(k, WK_F32), B, Hkv, 1, S, D);
  wk_tensor *v5 = to5(wk_cast(v, WK_F32), B, Hkv, 1, S, D);
  wk_tensor *g5 = to5(wk_cast(g, WK_F32), B, Hkv, G, T, D);
  wk_tensor *s = wk_mul_scalar(wk_matmul_t(q5, 0, k5, 1), scale); // [B, Hkv, G, T, S]
  if (mask) {
    int64_t m4[4] = {1, 1, 1, 1};
    for (int i = 0; i < mask->ndim; i++) m4[4 - mask->ndim + i] = mask->shape[i];
    wk_tensor *m5 = m4[1] == 1 ? to5(wk_cast(mask, WK_F32), m4[0], 1, 1, m4[2], m4[3])
                               : to5(wk_cast(mask, WK_F32), m4[0], Hkv, G, m4[2], m4[3]);
    s = wk_add(s, m5);
  }
  if (node->attrs.i[0]) s = wk_add(s, wk_causal_mask(T, S));
  wk_tensor *p = wk_softmax(s, -1), *ds = NULL;
  if (p && (need[0] || need[1] || (mask && need[3]))) {
    wk_tensor *dp = wk_matmul_t(g5, 0, v5, 1); // [B, Hkv, G, T, S]
    wk_tensor *in[2] = {p, dp};
    if (dp) ds = kernel_node(WK_OP_SOFTMAX_BWD, WK_F32, 5, p->shape, 2, in, NULL);
  }
  int kvaxes[1] = {2};
  if (need[0]) gin[0] = K(wk_cast(wk_reshape(wk_mul_scalar(wk_matmul(ds, k5), scale), 4, q->shape), q->dtype));
  if (need[1]) {
    wk_tensor *dk = wk_sum(wk_mul_scalar(wk_matmul_t(ds, 1, q5, 0), scale), 1, kvaxes, 0);
    gin[1] = K(wk_cast(dk, k->dtype));
  }
  if (need[2]) gin[2] = K(wk_cast(wk_sum(wk_matmul_t(p, 1, g5, 0), 1, kvaxes, 0), v->dtype));
  if (mask && need[3]) {
    int64_t full[4] = {B, Hq, T, S};
    wk_tensor *dm = wk_unbroadcast(wk_reshape(ds, 4, full), mask); // a kept reference
    gin[3] = K(wk_cast(dm, mask->dtype));
    wk_tensor_free(dm);
  }
  return WK_OK;
}
