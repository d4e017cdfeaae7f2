// In-place updates of realized buffers: set_slice writes a block into a tensor that
// already holds data (a preallocated KV cache) at a position read at run time, so a
// decode step's graph -- and its compiled plan -- is the same from token to token.
// The planner gives the node the destination's storage instead of a buffer of its own.
#include <string.h>
#include "engine.h"

wk_tensor *wk_set_slice(wk_tensor *dst, wk_tensor *src, int axis, wk_tensor *start) {
  const char *op = "set_slice";
  if (!wk_tensor_valid(dst, op) || !wk_tensor_valid(src, op) || !wk_tensor_valid(start, op)) return NULL;
  char a[160], b[160];
  if (!dst->buf || !wk_is_contiguous(dst)) {
    wk_error(WK_ERR_ARG, "set_slice: dst %s must be evaluated and contiguous (it is updated in place)",
             wk_shape_str(dst, a, sizeof a));
    return NULL;
  }
  int ax = wk_norm_axis(axis, dst->ndim, op);
  if (ax < 0) return NULL;
  bool fits = src->ndim == dst->ndim && src->shape[ax] <= dst->shape[ax];
  for (int d = 0; fits && d < dst->ndim; d++) fits = d == ax || src->shape[d] == dst->shape[d];
  if (!fits) {
    wk_error(WK_ERR_SHAPE, "set_slice: src %s does not fit dst %s along axis %d (other axes must match)",
             wk_shape_str(src, a, sizeof a), wk_shape_str(dst, b, sizeof b), ax);
    return NULL;
  }
  if (start->dtype != WK_I32 || wk_numel(start) != 1) {
    wk_error(WK_ERR_SHAPE, "set_slice: start must be one i32 value, got %s", wk_shape_str(start, a, sizeof a));
    return NULL;
  }
  // src is converted on the way in: float into f32 / f16 / bf16, or into Q8_0 blocks
  // along the last axis (which must not be the one written, so blocks stay whole)
  bool qdst = dst->dtype == WK_Q8_0;
  if (!wk_is_float(src->dtype) || (!wk_is_float(dst->dtype) && !qdst) || (qdst && ax == dst->ndim - 1)) {
    wk_error(WK_ERR_DTYPE, "set_slice: cannot write src %s into dst %s (float into f32/f16/bf16, or into q8_0 "
             "along an axis other than the last)", wk_shape_str(src, a, sizeof a), wk_shape_str(dst, b, sizeof b));
    return NULL;
  }
  if (src->device != dst->device || start->device != dst->device) {
    wk_error(WK_ERR_DEVICE, "set_slice: dst, src and start must be on one device (%s, %s, %s)",
             wk_device_name(dst->device), wk_device_name(src->device), wk_device_name(start->device));
    return NULL;
  }
  wk_buffer_thaw(dst->buf);  // written when this node runs: nothing derived from it may outlive that
  wk_tensor *in[3] = {dst, src, start};
  wk_attrs at = {.i = {ax}};
  wk_tensor *t = wk_node_new(WK_OP_SET_SLICE, dst->dtype, dst->ndim, dst->shape, 3, in, &at);
  if (t) t->offset = dst->offset;   // it aliases dst: views of it are views of dst
  return wk_node_finish(t);
}

wk_status wk_vjp_SET_SLICE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)g, (void)need, (void)gin;
  char b[160];
  return wk_error(WK_ERR_STATE, "set_slice: no gradient through an in-place write (into %s; a KV cache is inference only)",
                  wk_shape_str(node, b, sizeof b));
}
