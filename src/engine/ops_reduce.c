// Reductions: sum, max (kept dims in the node, dropped by a view), mean, argmax.
#include <string.h>
#include "engine.h"

static bool axes_mask(const char *op, const wk_tensor *a, int naxes, const int *axes, uint32_t *mask) {
  *mask = 0;
  if (naxes == 0) { *mask = (1u << a->ndim) - 1; return true; }
  if (naxes < 0 || !axes) {
    wk_error(WK_ERR_ARG, "%s: %d axes%s (0 means all)", op, naxes, naxes < 0 ? "" : " at NULL");
    return false;
  }
  for (int i = 0; i < naxes; i++) {
    int ax = wk_norm_axis(axes[i], a->ndim, op);
    if (ax < 0) return false;
    if (*mask >> ax & 1) {
      wk_error(WK_ERR_ARG, "%s: axis %d is given twice", op, ax);
      return false;
    }
    *mask |= 1u << ax;
  }
  return true;
}

static wk_tensor *drop_axes(wk_tensor *r, const wk_tensor *a, uint32_t mask, int keepdims) {
  if (keepdims || !r) return r;
  int64_t sh[WK_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < a->ndim; d++) if (!(mask >> d & 1)) sh[n++] = a->shape[d];
  wk_tensor *v = wk_reshape(r, n, sh);
  wk_tensor_free(wk_keep(r));
  return v;
}

static wk_tensor *reduce(wk_op op, wk_tensor *a, int naxes, const int *axes, int keepdims) {
  const char *name = wk_ops[op].name;
  if (!wk_tensor_valid(a, name)) return NULL;
  if (!wk_is_float(a->dtype)) {
    wk_error(WK_ERR_DTYPE, "%s: needs a float tensor, got %s", name, wk_dtype_name(a->dtype));
    return NULL;
  }
  uint32_t mask;
  if (!axes_mask(name, a, naxes, axes, &mask)) return NULL;
  for (int d = 0; op == WK_OP_MAX && d < a->ndim; d++)
    if (mask >> d & 1 && !a->shape[d]) {   // (a sum of none is 0; a max of none has no value)
      char b[160];
      wk_error(WK_ERR_SHAPE, "max: axis %d of %s has no values to take the max of", d, wk_shape_str(a, b, sizeof b));
      return NULL;
    }
  int64_t sh[WK_MAX_DIMS];
  for (int d = 0; d < a->ndim; d++) sh[d] = mask >> d & 1 ? 1 : a->shape[d];
  wk_attrs at = {.axes = mask};
  wk_tensor *r = wk_node_finish(wk_node_new(op, a->dtype, a->ndim, sh, 1, &a, &at));
  return drop_axes(r, a, mask, keepdims);
}

wk_tensor *wk_sum(wk_tensor *a, int naxes, const int *axes, int keepdims) {
  return reduce(WK_OP_SUM, a, naxes, axes, keepdims);
}
wk_tensor *wk_max(wk_tensor *a, int naxes, const int *axes, int keepdims) {
  return reduce(WK_OP_MAX, a, naxes, axes, keepdims);
}

wk_tensor *wk_mean(wk_tensor *a, int naxes, const int *axes, int keepdims) {
  wk_tensor *s = wk_sum(a, naxes, axes, keepdims);
  if (!s) return NULL;
  int64_t count = wk_numel(s) ? wk_numel(a) / wk_numel(s) : 0;
  wk_tensor *m = wk_mul_scalar(s, count ? 1.0f / (float)count : __builtin_nanf(""));   // a mean of none: NaN
  wk_tensor_free(wk_keep(s));
  return m;
}

wk_tensor *wk_argmax(wk_tensor *a, int axis, int keepdims) {
  if (!wk_tensor_valid(a, "argmax")) return NULL;
  int ax = wk_norm_axis(axis, a->ndim, "argmax");
  if (ax < 0) return NULL;
  if (!a->shape[ax]) {
    char b[160];
    wk_error(WK_ERR_SHAPE, "argmax: axis %d of %s has no values to choose from", ax, wk_shape_str(a, b, sizeof b));
    return NULL;
  }
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, a->shape, sizeof sh);
  sh[ax] = 1;
  wk_attrs at = {.axes = 1u << ax, .i = {ax}};
  wk_tensor *r = wk_node_finish(wk_node_new(WK_OP_ARGMAX, WK_I32, a->ndim, sh, 1, &a, &at));
  return drop_axes(r, a, 1u << ax, keepdims);
}

wk_tensor *wk_top1(wk_tensor *a) {
  if (!wk_tensor_valid(a, "top1")) return NULL;
  char b[160];
  bool is_float = a->dtype == WK_F32 || a->dtype == WK_BF16 || a->dtype == WK_F16;
  bool fits = a->ndim >= 1 && a->shape[a->ndim - 1] >= 1 && a->shape[a->ndim - 1] <= (1 << 24);
  if (!is_float || !fits) {
    wk_error(fits ? WK_ERR_DTYPE : WK_ERR_SHAPE,
             "top1: want a float tensor whose last axis holds 1 to 2^24 values, got %s", wk_shape_str(a, b, sizeof b));
    return NULL;
  }
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, a->shape, sizeof sh);
  sh[a->ndim - 1] = 3;
  wk_attrs at = {0};
  return wk_node_finish(wk_node_new(WK_OP_TOP1, WK_F32, a->ndim, sh, 1, &a, &at));
}

// ---- VJPs ----
wk_status wk_vjp_SUM(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_tensor *x = node->in[0];
  gin[0] = wk_keep(wk_broadcast_to(g, x->ndim, x->shape));
  return WK_OK;
}

// Ties share the gradient equally (torch's amax does the same).
wk_status wk_vjp_MAX(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_tensor *x = node->in[0];
  wk_tensor *mask = wk_eq(x, node);
  int axes[WK_MAX_DIMS], n = 0;
  for (int d = 0; d < x->ndim; d++) if (node->attrs.axes >> d & 1) axes[n++] = d;
  wk_tensor *count = wk_sum(mask, n, axes, 1);
  gin[0] = wk_keep(wk_mul(mask, wk_div(g, count)));
  return WK_OK;
}

wk_status wk_vjp_ARGMAX(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return wk_vjp_none(node, g, need, gin);
}
wk_status wk_vjp_TOP1(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return wk_vjp_none(node, g, need, gin);
}
