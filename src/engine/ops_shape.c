// Views (reshape, permute, slice, broadcast), copies, concat, split and pad.
// A view shares its base's storage: its strides and offset point into the base
// buffer, so a chain of views costs nothing and reads straight from the base.
#include <string.h>
#include "engine.h"

enum { VIEW_RESHAPE = 1, VIEW_PERMUTE = 2, VIEW_SLICE = 3, VIEW_BROADCAST = 4 };

// A view node of `parent` with the given layout. Realized parents give realized views.
static wk_tensor *view_new(wk_tensor *parent, int ndim, const int64_t *shape, const int64_t *stride,
                           int64_t offset, const wk_attrs *attrs) {
  wk_tensor *t = wk_node_new(WK_OP_VIEW, parent->dtype, ndim, shape, 1, &parent, attrs);
  if (!t) return NULL;
  if (ndim) memcpy(t->stride, stride, (size_t)ndim * sizeof *stride);
  t->offset = offset;
  if (parent->buf) {
    t->buf = parent->buf;
    t->buf->refcount++;
  }
  return wk_node_finish(t);
}

// New strides for viewing (shape, stride) as new_shape without a copy, or false.
// Old axes are grouped into runs that cover the same elements as runs of new axes;
// each old run must be one strided block, as torch's view requires.
static bool reshape_strides(int nd, const int64_t *shape, const int64_t *stride, int nn,
                            const int64_t *nshape, int64_t *nstride) {
  int64_t os[WK_MAX_DIMS], ot[WK_MAX_DIMS];
  int m = 0;
  for (int d = 0; d < nd; d++) {
    if (shape[d] == 0) { wk_contiguous_strides(nn, nshape, nstride); return true; }
    if (shape[d] != 1) { os[m] = shape[d]; ot[m] = stride[d]; m++; }
  }
  int o = 0, n = 0;
  while (n < nn) {
    if (nshape[n] == 1) { nstride[n] = o < m ? ot[o] * os[o] : 1; n++; continue; }
    if (o >= m) return false;
    int64_t po = os[o], pn = nshape[n];
    int o2 = o + 1, n2 = n + 1;
    while (po != pn) {
      if (po < pn) { if (o2 >= m) return false; po *= os[o2++]; }
      else { if (n2 >= nn) return false; pn *= nshape[n2++]; }
    }
    for (int k = o; k < o2 - 1; k++) if (ot[k] != ot[k + 1] * os[k + 1]) return false;
    int64_t s = ot[o2 - 1];
    for (int k = n2 - 1; k >= n; k--) { nstride[k] = s; s *= nshape[k]; }
    o = o2;
    n = n2;
  }
  return o == m;
}

wk_tensor *wk_reshape(wk_tensor *a, int ndim, const int64_t *shape) {
  if (!wk_tensor_valid(a, "reshape")) return NULL;
  char x[160], y[160];
  if (ndim < 0 || ndim > WK_MAX_DIMS) {
    wk_error(WK_ERR_SHAPE, "reshape: %d dimensions requested; at most %d", ndim, WK_MAX_DIMS);
    return NULL;
  }
  if (ndim && !shape) { wk_error(WK_ERR_ARG, "reshape: the shape is NULL"); return NULL; }
  int64_t ns[WK_MAX_DIMS], known = 1;
  int infer = -1;
  bool big = false;   // a product past int64: not the element count of any tensor
  for (int d = 0; d < ndim; d++) {
    ns[d] = shape[d];
    if (shape[d] == -1 && infer < 0) infer = d;
    else if (shape[d] < 0) {
      wk_error(WK_ERR_SHAPE, "reshape: bad dimension %lld at axis %d", (long long)shape[d], d);
      return NULL;
    } else big |= __builtin_mul_overflow(known, shape[d], &known);
  }
  if (big) {
    wk_error(WK_ERR_SHAPE, "reshape: cannot view %s as %s (too large to address)", wk_fmt_shape(a->ndim, a->shape, x, sizeof x),
             wk_fmt_shape(ndim, shape, y, sizeof y));
    return NULL;
  }
  int64_t numel = wk_numel(a);
  if (infer >= 0) ns[infer] = known ? numel / known : 0;
  if (wk_shape_numel(ndim, ns) != numel) {
    wk_error(WK_ERR_SHAPE, "reshape: cannot view %s (%lld elements) as %s", wk_fmt_shape(a->ndim, a->shape, x, sizeof x),
             (long long)numel, wk_fmt_shape(ndim, shape, y, sizeof y));
    return NULL;
  }
  int64_t st[WK_MAX_DIMS];
  wk_attrs at = {.i = {VIEW_RESHAPE}};
  if (reshape_strides(a->ndim, a->shape, a->stride, ndim, ns, st))
    return view_new(a, ndim, ns, st, a->offset, &at);
  wk_tensor *c = wk_contiguous(a); // not expressible as strides: copy first
  if (!c) return NULL;
  wk_contiguous_strides(ndim, ns, st);
  wk_tensor *r = view_new(c, ndim, ns, st, 0, &at);
  wk_tensor_free(wk_keep(c));
  return r;
}

wk_tensor *wk_permute(wk_tensor *a, const int *perm) {
  if (!wk_tensor_valid(a, "permute")) return NULL;
  if (!perm && a->ndim) { wk_error(WK_ERR_ARG, "permute: the permutation is NULL"); return NULL; }
  int64_t sh[WK_MAX_DIMS], st[WK_MAX_DIMS];
  unsigned seen = 0;
  wk_attrs at = {.i = {VIEW_PERMUTE}};
  for (int d = 0; d < a->ndim; d++) {
    int p = perm[d] < 0 ? perm[d] + a->ndim : perm[d];
    if (p < 0 || p >= a->ndim || (seen >> p & 1)) {
      wk_error(WK_ERR_ARG, "permute: %d at position %d is not a permutation of %d axes", perm[d], d, a->ndim);
      return NULL;
    }
    seen |= 1u << p;
    sh[d] = a->shape[p];
    st[d] = a->stride[p];
    at.u |= (uint64_t)p << (4 * d);
  }
  return view_new(a, a->ndim, sh, st, a->offset, &at);
}

wk_tensor *wk_transpose(wk_tensor *a, int axis0, int axis1) {
  if (!wk_tensor_valid(a, "transpose")) return NULL;
  int x = wk_norm_axis(axis0, a->ndim, "transpose"), y = wk_norm_axis(axis1, a->ndim, "transpose");
  if (x < 0 || y < 0) return NULL;
  int perm[WK_MAX_DIMS];
  for (int d = 0; d < a->ndim; d++) perm[d] = d;
  perm[x] = y;
  perm[y] = x;
  return wk_permute(a, perm);
}

wk_tensor *wk_slice(wk_tensor *a, int axis, int64_t start, int64_t stop, int64_t step) {
  if (!wk_tensor_valid(a, "slice")) return NULL;
  int ax = wk_norm_axis(axis, a->ndim, "slice");
  if (ax < 0) return NULL;
  if (step <= 0) { wk_error(WK_ERR_ARG, "slice: step must be positive, got %lld", (long long)step); return NULL; }
  int64_t n = a->shape[ax];
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  if (start < 0) start = 0;
  if (stop > n) stop = n;
  if (start > n) start = n;
  int64_t len = stop > start ? (stop - start - 1) / step + 1 : 0;   // (no overflow for any step)
  int64_t sh[WK_MAX_DIMS], st[WK_MAX_DIMS];
  memcpy(sh, a->shape, sizeof sh);
  memcpy(st, a->stride, sizeof st);
  sh[ax] = len;
  st[ax] = len > 1 ? a->stride[ax] * step : a->stride[ax];   // (step < n when two elements are taken)
  wk_attrs at = {.i = {VIEW_SLICE, ax, start, step}};
  return view_new(a, a->ndim, sh, st, a->offset + (len ? start * a->stride[ax] : 0), &at);
}

wk_tensor *wk_broadcast_to(wk_tensor *a, int ndim, const int64_t *shape) {
  if (!wk_tensor_valid(a, "broadcast_to")) return NULL;
  char x[160], y[160];
  int lead = ndim - a->ndim;
  int64_t st[WK_MAX_DIMS];
  bool ok = lead >= 0 && ndim <= WK_MAX_DIMS;
  for (int d = 0; ok && d < ndim; d++) {
    if (d < lead) { st[d] = 0; continue; }
    int64_t s = a->shape[d - lead];
    if (s == shape[d]) st[d] = a->stride[d - lead];
    else if (s == 1) st[d] = 0;
    else ok = false;
  }
  if (!ok) {
    wk_error(WK_ERR_SHAPE, "broadcast_to: cannot broadcast %s to %s", wk_fmt_shape(a->ndim, a->shape, x, sizeof x),
             wk_fmt_shape(ndim, shape, y, sizeof y));
    return NULL;
  }
  wk_attrs at = {.i = {VIEW_BROADCAST}};
  return view_new(a, ndim, shape, st, a->offset, &at);
}

wk_tensor *wk_expand_dims(wk_tensor *a, int axis) {
  if (!wk_tensor_valid(a, "expand_dims")) return NULL;
  int ax = wk_norm_axis(axis, a->ndim + 1, "expand_dims");   // -1: after the last axis (numpy's)
  if (ax < 0) return NULL;
  int64_t sh[WK_MAX_DIMS + 1];
  for (int d = 0, k = 0; d <= a->ndim; d++) sh[d] = d == ax ? 1 : a->shape[k++];
  return wk_reshape(a, a->ndim + 1, sh);
}

wk_tensor *wk_squeeze(wk_tensor *a, int axis) {
  if (!wk_tensor_valid(a, "squeeze")) return NULL;
  int ax = wk_norm_axis(axis, a->ndim, "squeeze");
  if (ax < 0) return NULL;
  if (a->shape[ax] != 1) {
    wk_error(WK_ERR_SHAPE, "squeeze: axis %d has size %lld, not 1", axis, (long long)a->shape[ax]);
    return NULL;
  }
  int64_t sh[WK_MAX_DIMS];
  for (int d = 0, k = 0; d < a->ndim; d++) if (d != ax) sh[k++] = a->shape[d];
  return wk_reshape(a, a->ndim - 1, sh);
}

wk_tensor *wk_contiguous(wk_tensor *a) {
  if (!wk_tensor_valid(a, "contiguous")) return NULL;
  return wk_unary(WK_OP_COPY, a, NULL);
}

// ---- concat, split, pad ----
static bool same_except(const wk_tensor *a, const wk_tensor *b, int axis) {
  if (a->ndim != b->ndim || a->dtype != b->dtype || a->device != b->device) return false;
  for (int d = 0; d < a->ndim; d++) if (d != axis && a->shape[d] != b->shape[d]) return false;
  return true;
}

wk_tensor *wk_concat(int n, wk_tensor *const *ts, int axis) {
  if (n <= 0 || !ts) { wk_error(WK_ERR_ARG, "concat: no tensors given"); return NULL; }
  for (int i = 0; i < n; i++) if (!wk_tensor_valid(ts[i], "concat")) return NULL;
  if (!ts[0]->ndim) { wk_error(WK_ERR_SHAPE, "concat: 0-d tensors have no axis to join along (reshape them to [1])"); return NULL; }
  int ax = wk_norm_axis(axis, ts[0]->ndim, "concat");
  if (ax < 0) return NULL;
  if (n == 1) return wk_node_finish(wk_tensor_ref(ts[0]));
  if (n > WK_MAX_IN) { // the kernel takes WK_MAX_IN inputs: concat in groups
    int half = n / 2;
    wk_tensor *parts[2] = {wk_concat(half, ts, ax), wk_concat(n - half, ts + half, ax)};
    wk_tensor *r = parts[0] && parts[1] ? wk_concat(2, parts, ax) : NULL;
    wk_tensor_free(wk_keep(parts[0]));
    wk_tensor_free(wk_keep(parts[1]));
    return r;
  }
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, ts[0]->shape, sizeof sh);
  sh[ax] = 0;
  for (int i = 0; i < n; i++) {
    if (ts[i]->dtype != ts[0]->dtype) {
      wk_error(WK_ERR_DTYPE, "concat: tensor %d is %s, tensor 0 %s", i, wk_dtype_name(ts[i]->dtype),
               wk_dtype_name(ts[0]->dtype));
      return NULL;
    }
    if (!same_except(ts[0], ts[i], ax)) {
      char x[160], y[160];
      wk_error(WK_ERR_SHAPE, "concat: tensor %d %s does not match tensor 0 %s outside axis %d", i,
               wk_shape_str(ts[i], x, sizeof x), wk_shape_str(ts[0], y, sizeof y), axis);
      return NULL;
    }
    sh[ax] += ts[i]->shape[ax];
  }
  wk_attrs at = {.i = {ax}};
  return wk_node_finish(wk_node_new(WK_OP_CONCAT, ts[0]->dtype, ts[0]->ndim, sh, n, ts, &at));
}

wk_status wk_split(wk_tensor *a, int axis, int n, const int64_t *sizes, wk_tensor **out) {
  if (!wk_tensor_valid(a, "split")) return WK_ERR_ARG;
  int ax = wk_norm_axis(axis, a->ndim, "split");
  if (ax < 0) return WK_ERR_ARG;
  if (n <= 0) return wk_error(WK_ERR_ARG, "split: %d parts requested", n);
  if (!out) return wk_error(WK_ERR_ARG, "split: the output array is NULL");
  for (int i = 0; sizes && i < n; i++)
    if (sizes[i] < 0 || sizes[i] > a->shape[ax])
      return wk_error(WK_ERR_SHAPE, "split: part %d has size %lld, outside [0, %lld] (axis %d)", i, (long long)sizes[i],
                      (long long)a->shape[ax], axis);
  int64_t total = 0;
  for (int i = 0; i < n; i++) total += sizes ? sizes[i] : a->shape[ax] / n;
  if (total != a->shape[ax] || (sizes == NULL && a->shape[ax] % n))
    return wk_error(WK_ERR_SHAPE, "split: parts do not add up to axis %d of size %lld", axis, (long long)a->shape[ax]);
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    int64_t len = sizes ? sizes[i] : a->shape[ax] / n;
    out[i] = wk_slice(a, ax, start, start + len, 1);
    if (!out[i]) {
      for (int j = 0; j < i; j++) wk_tensor_free(wk_keep(out[j]));
      return WK_ERR_ARG;
    }
    start += len;
  }
  return WK_OK;
}

static wk_tensor *pad_axis(wk_tensor *a, int ax, int64_t before, int64_t after, float value) {
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, a->shape, sizeof sh);
  if (__builtin_add_overflow(sh[ax], before, &sh[ax]) || __builtin_add_overflow(sh[ax], after, &sh[ax])) {
    wk_error(WK_ERR_SHAPE, "pad: axis %d padded by %lld and %lld is too large to address", ax, (long long)before,
             (long long)after);
    return NULL;
  }
  wk_attrs at = {.f = {value}, .i = {ax, before, after}};
  return wk_node_finish(wk_node_new(WK_OP_PAD, a->dtype, a->ndim, sh, 1, &a, &at));
}

wk_tensor *wk_pad(wk_tensor *a, const int64_t *before, const int64_t *after, float value) {
  if (!wk_tensor_valid(a, "pad")) return NULL;
  wk_tensor *cur = wk_tensor_ref(a);
  for (int d = 0; d < a->ndim; d++) {
    int64_t b = before ? before[d] : 0, e = after ? after[d] : 0;
    if (b < 0 || e < 0) {
      wk_tensor_free(cur);
      wk_error(WK_ERR_ARG, "pad: negative padding at axis %d", d);
      return NULL;
    }
    if (!b && !e) continue;
    wk_tensor *next = pad_axis(cur, d, b, e, value);
    wk_tensor_free(cur);
    if (!next) return NULL;
    cur = wk_tensor_ref(wk_keep(next));
    wk_tensor_free(next);
  }
  return wk_node_finish(cur);
}

// ---- VJPs ----
static wk_tensor *slice_scatter_grad(wk_tensor *g, const wk_tensor *parent, int ax, int64_t start, int64_t step) {
  // g holds every step-th element from start: interleave zeros, then pad to the parent.
  int64_t len = g->shape[ax], n = parent->shape[ax];
  wk_tensor *spread = wk_tensor_ref(g);
  if (step > 1 && len > 0) {
    int64_t sh[WK_MAX_DIMS + 1], b[WK_MAX_DIMS + 1] = {0}, e[WK_MAX_DIMS + 1] = {0};
    for (int d = 0, k = 0; d <= g->ndim; d++) sh[d] = d == ax + 1 ? 1 : g->shape[k++];
    e[ax + 1] = step - 1;
    wk_tensor *x = wk_reshape(g, g->ndim + 1, sh);
    wk_tensor *p = wk_pad(x, b, e, 0.0f);
    int64_t fl[WK_MAX_DIMS];
    memcpy(fl, g->shape, sizeof fl);
    fl[ax] = len * step;
    wk_tensor_free(spread);
    spread = wk_tensor_ref(wk_reshape(p, g->ndim, fl));
  }
  int64_t b[WK_MAX_DIMS] = {0}, e[WK_MAX_DIMS] = {0};
  int64_t have = len ? (len - 1) * step + 1 : 0;
  if (spread && spread->shape[ax] > have) { // drop trailing zeros past the parent's end
    wk_tensor *s = wk_slice(spread, ax, 0, have, 1);
    wk_tensor_free(spread);
    spread = wk_tensor_ref(s);
  }
  b[ax] = start;
  e[ax] = n - start - have;
  wk_tensor *r = wk_pad(spread, b, e, 0.0f);
  wk_tensor_free(spread);
  return wk_keep(r);
}

wk_status wk_vjp_VIEW(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  wk_tensor *p = node->in[0];
  switch (node->attrs.i[0]) {
    case VIEW_RESHAPE: gin[0] = wk_keep(wk_reshape(g, p->ndim, p->shape)); break;
    case VIEW_PERMUTE: {
      int inv[WK_MAX_DIMS];
      for (int d = 0; d < node->ndim; d++) inv[(node->attrs.u >> (4 * d)) & 15] = d;
      gin[0] = wk_keep(wk_permute(g, inv));
      break;
    }
    case VIEW_SLICE: gin[0] = slice_scatter_grad(g, p, (int)node->attrs.i[1], node->attrs.i[2], node->attrs.i[3]); break;
    case VIEW_BROADCAST: gin[0] = wk_unbroadcast(g, p); break;
    default: return wk_error(WK_ERR_STATE, "view: unknown view kind %lld", (long long)node->attrs.i[0]);
  }
  return gin[0] ? WK_OK : WK_ERR_STATE;
}

wk_status wk_vjp_CONCAT(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  int ax = (int)node->attrs.i[0];
  int64_t start = 0;
  for (int i = 0; i < node->nin; i++) {
    int64_t len = node->in[i]->shape[ax];
    if (need[i]) gin[i] = wk_keep(wk_slice(g, ax, start, start + len, 1));
    start += len;
  }
  return WK_OK;
}

wk_status wk_vjp_PAD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  int ax = (int)node->attrs.i[0];
  int64_t b = node->attrs.i[1];
  gin[0] = wk_keep(wk_slice(g, ax, b, b + node->in[0]->shape[ax], 1));
  return WK_OK;
}
