// Elementwise ops: broadcasting shape rule, dtype rule, builders and VJPs.
#include <math.h>
#include <string.h>
#include "engine.h"

bool wk_broadcast_shape(const char *op, const wk_tensor *a, const wk_tensor *b, int *ndim,
                        int64_t *out) {
  int n = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < n; i++) {
    int da = a->ndim - n + i, db = b->ndim - n + i;
    int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char x[160], y[160];
      wk_error(WK_ERR_SHAPE, "%s: shapes %s and %s do not broadcast (axis %d: %lld vs %lld)", op,
               wk_fmt_shape(a->ndim, a->shape, x, sizeof x), wk_fmt_shape(b->ndim, b->shape, y, sizeof y),
               i - n, (long long)sa, (long long)sb);
      return false;
    }
    out[i] = sa == 1 ? sb : sa;
  }
  *ndim = n;
  return true;
}

static bool float_operand(const char *op, const wk_tensor *a) {
  if (wk_is_float(a->dtype)) return true;
  wk_error(WK_ERR_DTYPE, "%s: needs a float tensor, got %s (cast it first)", op, wk_dtype_name(a->dtype));
  return false;
}

wk_tensor *wk_unary(wk_op op, wk_tensor *a, const wk_attrs *attrs) {
  const char *name = wk_ops[op].name;
  if (!wk_tensor_valid(a, name)) return NULL;
  if (op != WK_OP_CAST && op != WK_OP_COPY && op != WK_OP_STOP_GRAD && !float_operand(name, a)) return NULL;
  wk_dtype dt = op == WK_OP_CAST ? (wk_dtype)attrs->i[0] : a->dtype;
  return wk_node_finish(wk_node_new(op, dt, a->ndim, a->shape, 1, &a, attrs));
}

wk_tensor *wk_binary(wk_op op, wk_tensor *a, wk_tensor *b) {
  const char *name = wk_ops[op].name;
  if (!wk_tensor_valid(a, name) || !wk_tensor_valid(b, name)) return NULL; // devices: wk_node_new
  if (!float_operand(name, a) || !float_operand(name, b)) return NULL;
  if (a->dtype != b->dtype) {
    wk_error(WK_ERR_DTYPE, "%s: dtypes differ (%s and %s); cast one first", name,
             wk_dtype_name(a->dtype), wk_dtype_name(b->dtype));
    return NULL;
  }
  int nd;
  int64_t shape[WK_MAX_DIMS + 8];
  if (!wk_broadcast_shape(name, a, b, &nd, shape)) return NULL;
  wk_tensor *in[2] = {a, b};
  return wk_node_finish(wk_node_new(op, a->dtype, nd, shape, 2, in, NULL));
}

#define UNARY(fn, OP) wk_tensor *fn(wk_tensor *a) { return wk_unary(WK_OP_##OP, a, NULL); }
UNARY(wk_neg, NEG) UNARY(wk_abs, ABS) UNARY(wk_exp, EXP) UNARY(wk_log, LOG) UNARY(wk_sqrt, SQRT)
UNARY(wk_rsqrt, RSQRT) UNARY(wk_square, SQUARE) UNARY(wk_tanh, TANH) UNARY(wk_sigmoid, SIGMOID)
UNARY(wk_relu, RELU) UNARY(wk_gelu, GELU) UNARY(wk_gelu_tanh, GELU_TANH) UNARY(wk_silu, SILU)
UNARY(wk_stop_gradient, STOP_GRAD)
#undef UNARY

#define BINARY(fn, OP) wk_tensor *fn(wk_tensor *a, wk_tensor *b) { return wk_binary(WK_OP_##OP, a, b); }
BINARY(wk_add, ADD) BINARY(wk_sub, SUB) BINARY(wk_mul, MUL) BINARY(wk_div, DIV)
BINARY(wk_maximum, MAXIMUM) BINARY(wk_minimum, MINIMUM) BINARY(wk_eq, EQ) BINARY(wk_ne, NE)
BINARY(wk_lt, LT) BINARY(wk_le, LE) BINARY(wk_gt, GT) BINARY(wk_ge, GE)
#undef BINARY

static wk_tensor *with_scalar(wk_op op, wk_tensor *a, float s) {
  wk_attrs at = {.f = {s}};
  return wk_unary(op, a, &at);
}
wk_tensor *wk_add_scalar(wk_tensor *a, float s) { return with_scalar(WK_OP_ADD_SCALAR, a, s); }
wk_tensor *wk_mul_scalar(wk_tensor *a, float s) { return with_scalar(WK_OP_MUL_SCALAR, a, s); }
wk_tensor *wk_pow_scalar(wk_tensor *a, float e) { return with_scalar(WK_OP_POW_SCALAR, a, e); }

wk_tensor *wk_cast(wk_tensor *a, wk_dtype dt) {
  if ((unsigned)dt >= WK_DTYPE_COUNT) { wk_error(WK_ERR_DTYPE, "cast: unknown dtype %d", dt); return NULL; }
  if (wk_tensor_valid(a, "cast") && a->dtype == dt) return wk_node_finish(wk_tensor_ref(a));
  if (wk_dtype_is_quantized(dt)) {
    wk_error(WK_ERR_DTYPE, "cast: cannot cast to %s: quantized types are storage only (made from their blocks)",
             wk_dtype_name(dt));
    return NULL;
  }
  if (a && wk_dtype_is_quantized(a->dtype)) { // dequantize, then an ordinary cast
    if (dt == WK_F32) return wk_dequantize(a);
    wk_scope_begin();
    wk_tensor *r = wk_keep(wk_cast(wk_dequantize(a), dt));
    wk_scope_end();
    return r ? wk_node_finish(r) : NULL;
  }
  wk_attrs at = {.i = {dt}};
  return wk_unary(WK_OP_CAST, a, &at);
}

wk_tensor *wk_dropout(wk_tensor *a, float p, uint64_t seed, int training) {
  if (!wk_tensor_valid(a, "dropout")) return NULL;
  if (!(p >= 0 && p < 1)) { wk_error(WK_ERR_ARG, "dropout: p = %g is outside [0, 1)", p); return NULL; }
  if (!training || p == 0) return wk_node_finish(wk_tensor_ref(a));
  wk_attrs at = {.f = {p}, .u = seed};
  return wk_unary(WK_OP_DROPOUT, a, &at);
}

wk_tensor *wk_where(wk_tensor *c, wk_tensor *a, wk_tensor *b) {
  if (!wk_tensor_valid(c, "where") || !wk_tensor_valid(a, "where") || !wk_tensor_valid(b, "where")) return NULL;
  if (a->dtype != b->dtype) {
    wk_error(WK_ERR_DTYPE, "where: branch dtypes differ (%s and %s)", wk_dtype_name(a->dtype), wk_dtype_name(b->dtype));
    return NULL;
  }
  int n1, n2;
  int64_t s1[WK_MAX_DIMS], s2[WK_MAX_DIMS];
  if (!wk_broadcast_shape("where", a, b, &n1, s1)) return NULL;
  wk_tensor tmp = {.ndim = n1};
  memcpy(tmp.shape, s1, sizeof s1);
  if (!wk_broadcast_shape("where", c, &tmp, &n2, s2)) return NULL;
  wk_tensor *in[3] = {c, a, b};
  return wk_node_finish(wk_node_new(WK_OP_WHERE, a->dtype, n2, s2, 3, in, NULL));
}

// ---- VJPs ----
wk_tensor *wk_unbroadcast(wk_tensor *g, const wk_tensor *like) {
  if (!g) return NULL;
  if (g->ndim == like->ndim && !memcmp(g->shape, like->shape, (size_t)g->ndim * sizeof(int64_t)))
    return wk_tensor_ref(g);
  int axes[WK_MAX_DIMS], n = 0, lead = g->ndim - like->ndim;
  for (int d = 0; d < g->ndim; d++)
    if (d < lead || like->shape[d - lead] == 1) axes[n++] = d;
  wk_tensor *s = wk_sum(g, n, axes, 1);
  wk_tensor *r = wk_reshape(s, like->ndim, like->shape);
  wk_tensor_free(wk_keep(s));
  return r ? wk_keep(r) : NULL;
}

wk_status wk_vjp_none(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return WK_OK;
}

// The builders below hand their result to the current scope; autograd runs in its
// own scope, so intermediate terms are released when it ends. `K` keeps one.
#define K(x) wk_keep(x)
#define IN(i) node->in[i]

wk_status wk_vjp_NEG(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)need;
  gin[0] = K(wk_neg(g));
  return WK_OK;
}
wk_status wk_vjp_ABS(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need; // d|x| = sign(x); 0 at 0 like torch
  wk_tensor *z = wk_zeros(0, NULL, IN(0)->dtype);
  wk_tensor *sign = wk_sub(wk_gt(IN(0), z), wk_lt(IN(0), z));
  gin[0] = K(wk_mul(g, sign));
  return WK_OK;
}
wk_status wk_vjp_EXP(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul(g, node));
  return WK_OK;
}
wk_status wk_vjp_LOG(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_div(g, IN(0)));
  return WK_OK;
}
wk_status wk_vjp_SQRT(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_div(wk_mul_scalar(g, 0.5f), node));
  return WK_OK;
}
wk_status wk_vjp_RSQRT(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need; // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
  gin[0] = K(wk_mul(wk_mul_scalar(g, -0.5f), wk_mul(node, wk_square(node))));
  return WK_OK;
}
wk_status wk_vjp_SQUARE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul(g, wk_mul_scalar(IN(0), 2.0f)));
  return WK_OK;
}
wk_status wk_vjp_TANH(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul(g, wk_add_scalar(wk_neg(wk_square(node)), 1.0f)));
  return WK_OK;
}
wk_status wk_vjp_SIGMOID(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul(g, wk_mul(node, wk_add_scalar(wk_neg(node), 1.0f))));
  return WK_OK;
}
wk_status wk_vjp_RELU(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul(g, wk_gt(IN(0), wk_zeros(0, NULL, IN(0)->dtype))));
  return WK_OK;
}
// gelu' needs erf, which only the kernel has: a dedicated elementwise op computes g * gelu'(x).
wk_status wk_vjp_GELU(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_binary(WK_OP_GELU_BWD, IN(0), g));
  return WK_OK;
}
wk_status wk_vjp_GELU_TANH(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_binary(WK_OP_GELU_TANH_BWD, IN(0), g));
  return WK_OK;
}
wk_status wk_vjp_GELU_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)g, (void)need, (void)gin;
  return wk_error(WK_ERR_STATE, "gelu: second derivatives are not supported");
}
wk_status wk_vjp_GELU_TANH_BWD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return wk_vjp_GELU_BWD(node, g, need, gin);
}
wk_status wk_vjp_SILU(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need; // silu' = s * (1 + x * (1 - s)), s = sigmoid(x)
  wk_tensor *x = IN(0), *s = wk_sigmoid(x);
  wk_tensor *d = wk_mul(s, wk_add_scalar(wk_mul(x, wk_add_scalar(wk_neg(s), 1.0f)), 1.0f));
  gin[0] = K(wk_mul(g, d));
  return WK_OK;
}
wk_status wk_vjp_ADD_SCALAR(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)need;
  gin[0] = wk_tensor_ref(g);
  return WK_OK;
}
wk_status wk_vjp_MUL_SCALAR(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = K(wk_mul_scalar(g, node->attrs.f[0]));
  return WK_OK;
}
wk_status wk_vjp_POW_SCALAR(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  float e = node->attrs.f[0];
  gin[0] = K(wk_mul(g, wk_mul_scalar(wk_pow_scalar(IN(0), e - 1.0f), e)));
  return WK_OK;
}
wk_status wk_vjp_CAST(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = wk_is_float(IN(0)->dtype) ? K(wk_cast(g, IN(0)->dtype)) : NULL;
  return WK_OK;
}
wk_status wk_vjp_COPY(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)node, (void)need;
  gin[0] = wk_tensor_ref(g);
  return WK_OK;
}
wk_status wk_vjp_STOP_GRAD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return wk_vjp_none(node, g, need, gin);
}
wk_status wk_vjp_DROPOUT(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need; // the same mask (same seed) applied to g
  wk_tensor *in[1] = {g};
  gin[0] = wk_keep(wk_node_finish(wk_node_new(WK_OP_DROPOUT, g->dtype, g->ndim, g->shape, 1, in, &node->attrs)));
  return WK_OK;
}
wk_status wk_vjp_ADD(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[0]) gin[0] = wk_unbroadcast(g, IN(0));
  if (need[1]) gin[1] = wk_unbroadcast(g, IN(1));
  return WK_OK;
}
wk_status wk_vjp_SUB(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[0]) gin[0] = wk_unbroadcast(g, IN(0));
  if (need[1]) gin[1] = wk_unbroadcast(wk_neg(g), IN(1));
  return WK_OK;
}
wk_status wk_vjp_MUL(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[0]) gin[0] = wk_unbroadcast(wk_mul(g, IN(1)), IN(0));
  if (need[1]) gin[1] = wk_unbroadcast(wk_mul(g, IN(0)), IN(1));
  return WK_OK;
}
wk_status wk_vjp_DIV(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  if (need[0]) gin[0] = wk_unbroadcast(wk_div(g, IN(1)), IN(0));
  if (need[1]) gin[1] = wk_unbroadcast(wk_neg(wk_div(wk_mul(g, node), IN(1))), IN(1));
  return WK_OK;
}
// Ties send the gradient to a (like torch's maximum splits it; we pick one side so
// that the sum of both gradients is always g).
static wk_status minmax_vjp(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin, wk_op cmp) {
  wk_tensor *pick_a = wk_binary(cmp, IN(0), IN(1));
  if (need[0]) gin[0] = wk_unbroadcast(wk_mul(g, pick_a), IN(0));
  if (need[1]) gin[1] = wk_unbroadcast(wk_mul(g, wk_add_scalar(wk_neg(pick_a), 1.0f)), IN(1));
  return WK_OK;
}
wk_status wk_vjp_MAXIMUM(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return minmax_vjp(node, g, need, gin, WK_OP_GE);
}
wk_status wk_vjp_MINIMUM(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  return minmax_vjp(node, g, need, gin, WK_OP_LE);
}
#define NO_GRAD(OP) \
  wk_status wk_vjp_##OP(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) { \
    return wk_vjp_none(node, g, need, gin); \
  }
NO_GRAD(EQ) NO_GRAD(NE) NO_GRAD(LT) NO_GRAD(LE) NO_GRAD(GT) NO_GRAD(GE)
NO_GRAD(CONST) NO_GRAD(ARANGE) NO_GRAD(RANDN) NO_GRAD(RAND)
#undef NO_GRAD
wk_status wk_vjp_WHERE(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  wk_tensor *z = wk_zeros(0, NULL, g->dtype);
  if (need[1]) gin[1] = wk_unbroadcast(wk_where(IN(0), g, z), IN(1));
  if (need[2]) gin[2] = wk_unbroadcast(wk_where(IN(0), z, g), IN(2));
  return WK_OK;
}
