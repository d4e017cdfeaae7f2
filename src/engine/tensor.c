// Tensor handles: creation, reference counting, scopes, inspection and data access.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"
#include "../backend/backend.h"
#include "../backend/cpu/gemm.h"

// ---- buffers ----
wk_buffer *wk_buffer_alloc(wk_device dev, size_t bytes) {
  wk_buffer *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->refcount = 1;
  b->device = dev;
  b->bytes = bytes;
  if (dev != WK_CPU) {
    const wk_backend *be = wk_backend_get(dev);
    b->data = be ? be->alloc(bytes ? bytes : 1) : NULL;
    if (!b->data) {
      free(b);
      if (be) wk_error(WK_ERR_OOM, "out of %s memory allocating %zu bytes", wk_device_name(dev), bytes);
      return NULL;
    }
    return b;
  }
  // 64-byte alignment for AVX-512 loads; round up so the size is a multiple.
  b->data = wk_host_alloc(bytes);
  if (!b->data && bytes) {
    free(b);
    wk_error(WK_ERR_OOM, "out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  return b;
}

void wk_buffer_thaw(wk_buffer *b) {
  if (!b || !b->frozen) return;
  b->frozen = false;
  if (b->device == WK_CPU) wk_gemm_thaw(b->data);
}

static char fail_oom[] = "evaluation failed (no memory was left for its message)";   // not freed

void wk_buffer_fail(wk_buffer *b, const char *message) {
  if (!message || !*message) message = "evaluation failed";
  size_t n = strlen(message) + 1;
  char *m = malloc(n), *none = NULL;
  if (m) memcpy(m, message, n);
  else m = fail_oom;
  if (!atomic_compare_exchange_strong(&b->failed, &none, m) && m != fail_oom) free(m);
}

void wk_buffer_release(wk_buffer *b) {
  if (!b || --b->refcount > 0) return;
  char *failed = atomic_load(&b->failed);
  if (failed != fail_oom) free(failed);
  wk_buffer_thaw(b);  // its address may come back for other data
  if (b->release) b->release(b->release_ctx);
  else if (b->device != WK_CPU) wk_backend_get(b->device)->free(b->data);
  else wk_host_free(b->data, b->bytes);
  free(b);
}

// ---- shapes ----
void wk_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) { stride[d] = s; s *= shape[d]; }
}

int64_t wk_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  return n;
}

const char *wk_fmt_shape(int ndim, const int64_t *shape, char *buf, size_t len) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, len - o, "[");
  for (int d = 0; d < ndim && o < len; d++)
    o += (size_t)snprintf(buf + o, len - o, d ? ",%lld" : "%lld", (long long)shape[d]);
  if (o < len) snprintf(buf + o, len - o, "]");
  return buf;
}

int wk_norm_axis(int axis, int ndim, const char *op) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= (ndim ? ndim : 1)) {
    wk_error(WK_ERR_ARG, "%s: axis %d is out of range for a %d-d tensor", op, axis, ndim);
    return -1;
  }
  return a;
}

// ---- lifetime ----
#ifdef WICK_DEBUG
// Freed handles stay readable (marked dead) for a while, so a use after free is
// reported by wk_tensor_valid instead of reading recycled memory.
#define QUARANTINE 4096
static _Thread_local wk_tensor *quarantine[QUARANTINE];
static _Thread_local unsigned quarantine_next;
static void tensor_dispose(wk_tensor *t) {
  t->magic = WK_TENSOR_DEAD;
  unsigned i = quarantine_next++ % QUARANTINE;
  free(quarantine[i]);
  quarantine[i] = t;
}
#else
static void tensor_dispose(wk_tensor *t) { t->magic = WK_TENSOR_DEAD; free(t); }
#endif

// NULL (the result of a failed op) reads as empty without a new error, so the message
// that names the failure stays; a freed handle (caught in debug builds, where freed
// tensors stay readable a while) is an error of its own.
static bool live(const wk_tensor *t, const char *op) {
  if (!t) return false;
  if (t->magic == WK_TENSOR_MAGIC) return true;
  wk_error(WK_ERR_STATE, "%s: tensor %p was freed or is not a tensor", op, (const void *)t);
  return false;
}
bool wk_tensor_valid(const wk_tensor *t, const char *op) {
  if (!t) {
    // The input failed earlier; keep its message, which names the real cause.
    if (!wk_last_error()[0]) wk_error(WK_ERR_ARG, "%s: input tensor is NULL", op);
    return false;
  }
  return live(t, op);
}

wk_tensor *wk_tensor_ref(wk_tensor *t) {
  if (!live(t, "tensor_ref")) return NULL;
  t->refcount++;
  return t;
}

// Iterative release so that freeing a 100k-node chain doesn't overflow the stack.
void wk_tensor_free(wk_tensor *t) {
  if (!t) return;
  if (t->magic != WK_TENSOR_MAGIC) {
    fprintf(stderr, "wick: wk_tensor_free: %p was already freed\n", (void *)t);
    return;
  }

  size_t cap = 64, n = 0;
  wk_tensor *local[64], **stack = local;
  stack[n++] = t;
  while (n) {
    wk_tensor *x = stack[--n];
    if (--x->refcount > 0) continue;
    for (int i = 0; i < x->nin; i++) {
      if (!x->in[i]) continue;
      if (n == cap) {
        wk_tensor **bigger = malloc(cap * 2 * sizeof *bigger);
        if (!bigger) abort(); // cannot unwind a half-freed graph
        memcpy(bigger, stack, n * sizeof *stack);
        if (stack != local) free(stack);
        stack = bigger;
        cap *= 2;
      }
      stack[n++] = x->in[i];
    }
    wk_buffer_release(x->buf);
    tensor_dispose(x);
  }
  if (stack != local) free(stack);
}

// ---- scopes ----
typedef struct { wk_tensor **items; size_t n, cap; } scope_list;
#define MAX_SCOPES 64
static _Thread_local scope_list scopes[MAX_SCOPES];
static _Thread_local int scope_depth;

void wk_scope_begin(void) {
  if (scope_depth == MAX_SCOPES) {
    fprintf(stderr, "wick: scopes nested deeper than %d; ignoring\n", MAX_SCOPES);
    return;
  }
  scopes[scope_depth++].n = 0;
}

static void scope_forget(wk_tensor *t) {
  if (!t->scope || t->scope > scope_depth) { t->scope = 0; return; }
  scope_list *s = &scopes[t->scope - 1];
  if (t->scope_idx < s->n && s->items[t->scope_idx] == t) s->items[t->scope_idx] = NULL;
  t->scope = 0;
}

void wk_scope_end(void) {
  if (!scope_depth) return;
  scope_list *s = &scopes[scope_depth - 1];
  for (size_t i = 0; i < s->n; i++) {
    wk_tensor *t = s->items[i];
    if (!t) continue;
    s->items[i] = NULL;
    t->scope = 0;
    wk_tensor_free(t);
  }
  s->n = 0;
  scope_depth--;
}

static void scope_add(wk_tensor *t) {
  if (!scope_depth) return;
  scope_list *s = &scopes[scope_depth - 1];
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    wk_tensor **items = realloc(s->items, cap * sizeof *items);
    if (!items) return; // the tensor then simply belongs to the caller
    s->items = items;
    s->cap = cap;
  }
  t->scope = scope_depth;
  t->scope_idx = s->n;
  s->items[s->n++] = t;
}

wk_tensor *wk_keep(wk_tensor *t) {
  if (!live(t, "keep")) return NULL;
  scope_forget(t);
  return t;
}

// Every suffix product of the dims (the strides) and the byte size must fit in
// int64, even when another dim is 0 and the element count is 0.
static bool shape_fits(int ndim, const int64_t *shape) {
  int64_t p = 8; // the widest element, in bytes
  for (int d = ndim - 1; d >= 0; d--) {
    if (shape[d] == 0) continue;
    if (__builtin_mul_overflow(p, shape[d], &p)) return false;
  }
  return true;
}

// ---- nodes ----
static bool is_movable_source(const wk_tensor *t) {
  return !t->buf && t->nin == 0 && wk_ops[t->op].kind == WK_KIND_SRC;
}

// The one gate for block-quantized tensors: only the ops whose kernels read blocks
// take them (their builders check which operand); nothing computes them.
static bool quant_inputs_ok(wk_op op, wk_dtype dt, int nin, wk_tensor *const *in) {
  // (a Q8_0 KV cache is written by set_slice and read by sdpa; transfers move the bytes)
  bool reads_blocks = op == WK_OP_QMATMUL || op == WK_OP_DEQUANTIZE || op == WK_OP_EMBEDDING ||
                     op == WK_OP_SET_SLICE || op == WK_OP_SDPA || op == WK_OP_TRANSFER;
  for (int i = 0; i < nin; i++)
    if (wk_dtype_is_quantized(in[i]->dtype) && !reads_blocks) {
      char b[160];
      wk_error(WK_ERR_DTYPE,
               "%s: input %d is block-quantized (%s); quantized tensors are read only by matmul (x @ W^T or "
               "x @ W), embedding and cast/dequantize: wk_cast(t, WK_F32) first",
               wk_ops[op].name, i, wk_shape_str(in[i], b, sizeof b));
      return false;
    }
  (void)dt; // sources check their dtype themselves (check_computed); leaves may be quantized
  return true;
}

wk_tensor *wk_node_new(wk_op op, wk_dtype dt, int ndim, const int64_t *shape, int nin,
                       wk_tensor *const *in, const wk_attrs *attrs) {
  if (ndim > WK_MAX_DIMS) {
    wk_error(WK_ERR_SHAPE, "%s: result has %d dimensions; at most %d are supported",
             wk_ops[op].name, ndim, WK_MAX_DIMS);
    return NULL;
  }
  for (int d = 0; d < ndim; d++)
    if (shape[d] < 0) {
      char b[160];
      wk_error(WK_ERR_SHAPE, "%s: negative dimension in shape %s", wk_ops[op].name,
               wk_fmt_shape(ndim, shape, b, sizeof b));
      return NULL;
    }
  if (!shape_fits(ndim, shape)) {
    char b[160];
    wk_error(WK_ERR_SHAPE, "%s: shape %s is too large to address", wk_ops[op].name,
             wk_fmt_shape(ndim, shape, b, sizeof b));
    return NULL;
  }
  if (!quant_inputs_ok(op, dt, nin, in)) return NULL;
  wk_tensor *t = calloc(1, sizeof *t);
  if (!t) { wk_error(WK_ERR_OOM, "%s: out of memory", wk_ops[op].name); return NULL; }
  t->magic = WK_TENSOR_MAGIC;
  t->refcount = 1;
  t->dtype = dt;
  // The op's device is its inputs' device. Pending constants and random sources
  // (made with no device in mind, e.g. by autograd) follow the other inputs.
  t->device = nin ? in[0]->device : WK_CPU;
  for (int i = 0; i < nin; i++)
    if (!is_movable_source(in[i])) { t->device = in[i]->device; break; }
  for (int i = 0; i < nin && op != WK_OP_TRANSFER; i++)
    if (in[i]->device != t->device && !is_movable_source(in[i])) {
      wk_error(WK_ERR_DEVICE, "%s: input %d is on %s but the others are on %s; move one with wk_to_device",
               wk_ops[op].name, i, wk_device_name(in[i]->device), wk_device_name(t->device));
      free(t);
      return NULL;
    }
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  wk_contiguous_strides(ndim, shape, t->stride);
  t->op = op;
  t->nin = nin;
  for (int i = 0; i < nin; i++) {
    if (op != WK_OP_TRANSFER && in[i]->device != t->device) { // a source: recreate it where it is used
      wk_tensor *moved = wk_node_new(in[i]->op, in[i]->dtype, in[i]->ndim, in[i]->shape, 0, NULL, &in[i]->attrs);
      if (!moved) { for (int k = 0; k < i; k++) wk_tensor_free(t->in[k]); free(t); return NULL; }
      moved->device = t->device;
      t->in[i] = moved;
      continue;
    }
    t->in[i] = wk_tensor_ref(in[i]);
  }
  if (attrs) t->attrs = *attrs;
  return t;
}

static _Thread_local int eager_mode = -1;

int wk_eager(void) {
  if (eager_mode < 0) {
    const char *e = getenv("WICK_EAGER");
    eager_mode = e && *e && *e != '0';
  }
  return eager_mode;
}
void wk_set_eager(int on) { eager_mode = on ? 1 : 0; }

wk_tensor *wk_node_finish(wk_tensor *t) {
  if (!t) return NULL;
  // Eager mode evaluates every op as it is built; constants and random sources stay
  // pending until used, so they are computed on the device of the op that uses them.
  if (wk_eager() && !t->buf && !is_movable_source(t) && wk_eval_internal(1, &t) != WK_OK) {
    wk_tensor_free(t);
    return NULL;
  }
  scope_add(t);
  return t;
}

// ---- creation ----
static bool check_shape(const char *op, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > WK_MAX_DIMS) {
    wk_error(WK_ERR_SHAPE, "%s: ndim %d is out of range [0, %d]", op, ndim, WK_MAX_DIMS);
    return false;
  }
  if (ndim && !shape) {
    wk_error(WK_ERR_ARG, "%s: the shape of %d dimensions is NULL", op, ndim);
    return false;
  }
  for (int d = 0; d < ndim; d++)
    if (shape[d] < 0) {
      wk_error(WK_ERR_SHAPE, "%s: dimension %d is negative (%lld)", op, d, (long long)shape[d]);
      return false;
    }
  if (!shape_fits(ndim, shape)) {
    char b[160];
    wk_error(WK_ERR_SHAPE, "%s: shape %s is too large to address", op, wk_fmt_shape(ndim, shape, b, sizeof b));
    return false;
  }
  return true;
}

static bool check_dtype(const char *op, wk_dtype dt) {
  if ((unsigned)dt >= WK_DTYPE_COUNT) { wk_error(WK_ERR_DTYPE, "%s: unknown dtype %d", op, dt); return false; }
  return true;
}

// Block-quantized data is stored, never computed: it comes in as rows of whole blocks.
static bool check_stored(const char *op, int ndim, const int64_t *shape, wk_dtype dt) {
  if (!check_dtype(op, dt)) return false;
  if (!wk_dtype_is_quantized(dt)) return true;
  char b[160];
  if (ndim < 1 || shape[ndim - 1] % wk_dtype_block(dt)) {
    wk_error(WK_ERR_SHAPE, "%s: a %s tensor needs rows of whole %lld-value blocks, got shape %s", op,
             wk_dtype_name(dt), (long long)wk_dtype_block(dt), wk_fmt_shape(ndim, shape, b, sizeof b));
    return false;
  }
  return true;
}

static bool check_computed(const char *op, wk_dtype dt) {
  if (!check_dtype(op, dt)) return false;
  if (wk_dtype_is_quantized(dt)) {
    wk_error(WK_ERR_DTYPE, "%s: %s is a storage type; make quantized tensors from their blocks (wk_from_data)",
             op, wk_dtype_name(dt));
    return false;
  }
  return true;
}

static wk_tensor *realized_new(int ndim, const int64_t *shape, wk_dtype dt, wk_buffer *b) {
  wk_tensor *t = wk_node_new(WK_OP_CONST, dt, ndim, shape, 0, NULL, NULL);
  if (!t) { wk_buffer_release(b); return NULL; }
  t->buf = b;
  return t;
}

wk_tensor *wk_from_data(int ndim, const int64_t *shape, wk_dtype dt, const void *data) {
  if (!check_shape("from_data", ndim, shape) || !check_stored("from_data", ndim, shape, dt)) return NULL;
  size_t bytes = wk_dtype_bytes(dt, wk_shape_numel(ndim, shape));
  if (bytes && !data) { wk_error(WK_ERR_ARG, "from_data: data is NULL"); return NULL; }
  wk_buffer *b = wk_buffer_alloc(WK_CPU, bytes);
  if (!b) return NULL;
  if (bytes) memcpy(b->data, data, bytes);
  return wk_node_finish(realized_new(ndim, shape, dt, b));
}

wk_tensor *wk_empty_on(int ndim, const int64_t *shape, wk_dtype dt, wk_device dev) {
  if (!check_shape("empty", ndim, shape) || !check_stored("empty", ndim, shape, dt)) return NULL;
  wk_buffer *b = wk_buffer_alloc(dev, wk_dtype_bytes(dt, wk_shape_numel(ndim, shape)));
  if (!b) return NULL;
  wk_tensor *t = realized_new(ndim, shape, dt, b);
  if (t) t->device = dev;
  return t ? wk_node_finish(t) : NULL;
}

static void release_nothing(void *ctx) { (void)ctx; }

wk_tensor *wk_from_external(int ndim, const int64_t *shape, wk_dtype dt, void *data,
                            void (*release)(void *ctx), void *ctx) {
  if (!check_shape("from_external", ndim, shape) || !check_stored("from_external", ndim, shape, dt)) return NULL;
  size_t align = wk_dtype_is_quantized(dt) ? 1 : wk_dtype_size(dt);
  if ((!data && wk_shape_numel(ndim, shape)) || (uintptr_t)data % align) {
    wk_error(WK_ERR_ARG, "from_external: data %p is %s for %s values", data, data ? "misaligned" : "NULL",
             wk_dtype_name(dt));
    return NULL;
  }
  // The node first: once the buffer exists, nothing below can fail, so on any
  // failure `release` has not run and the caller still owns `data`.
  wk_tensor *t = wk_node_new(WK_OP_CONST, dt, ndim, shape, 0, NULL, NULL);
  wk_buffer *b = t ? calloc(1, sizeof *b) : NULL;
  if (!b) {
    free(t);
    wk_error(WK_ERR_OOM, "from_external: out of memory");
    return NULL;
  }
  *b = (wk_buffer){.refcount = 1, .device = WK_CPU, .data = data,
                   .bytes = wk_dtype_bytes(dt, wk_shape_numel(ndim, shape)),
                   .release = release ? release : release_nothing, .release_ctx = ctx};
  t->buf = b;
  scope_add(t); // realized already: nothing to evaluate
  return t;
}

static wk_tensor *source(wk_op op, const char *name, int ndim, const int64_t *shape, wk_dtype dt,
                         const wk_attrs *a) {
  if (!check_shape(name, ndim, shape) || !check_computed(name, dt)) return NULL;
  return wk_node_finish(wk_node_new(op, dt, ndim, shape, 0, NULL, a));
}

// i32 values go through f32 registers: exact up to 2^24 in magnitude
#define I32_EXACT 16777216.0
static bool i32_value_ok(const char *op, wk_dtype dt, double v) {
  if (dt != WK_I32 || (v == __builtin_trunc(v) && __builtin_fabs(v) <= I32_EXACT)) return true;
  wk_error(WK_ERR_ARG, "%s: %g is not an i32 value wick holds exactly (an integer within +-2^24)", op, v);
  return false;
}

wk_tensor *wk_full(int ndim, const int64_t *shape, wk_dtype dt, double value) {
  if (!i32_value_ok("full", dt, value)) return NULL;
  wk_attrs a = {.f = {(float)value}};
  return source(WK_OP_CONST, "full", ndim, shape, dt, &a);
}
wk_tensor *wk_full_on(int ndim, const int64_t *shape, wk_dtype dt, double value, wk_device dev) {
  wk_tensor *t = wk_full(ndim, shape, dt, value);
  if (t && !t->buf) t->device = dev; // a pending source: computed where it is placed
  return t;
}

wk_tensor *wk_zeros(int ndim, const int64_t *shape, wk_dtype dt) { return wk_full(ndim, shape, dt, 0); }
wk_tensor *wk_ones(int ndim, const int64_t *shape, wk_dtype dt) { return wk_full(ndim, shape, dt, 1); }
wk_tensor *wk_scalar(float value) { return wk_full(0, NULL, WK_F32, value); }

wk_tensor *wk_arange(double start, double stop, double step, wk_dtype dt) {
  double len = (stop - start) / step;
  if (step == 0 || !(len >= 0) || len > 9.2e18) {   // (NaNs and infinities included)
    wk_error(WK_ERR_ARG, "arange: start %g, stop %g, step %g gives no sequence", start, stop, step);
    return NULL;
  }
  int64_t n = (int64_t)__builtin_ceil(len);
  if (!i32_value_ok("arange", dt, start) || !i32_value_ok("arange", dt, start + (double)(n ? n - 1 : 0) * step) ||
      !i32_value_ok("arange", dt, step))
    return NULL;
  wk_attrs a = {.f = {(float)start, (float)step}};
  return source(WK_OP_ARANGE, "arange", 1, &n, dt, &a);
}

static bool random_dtype_ok(const char *op, wk_dtype dt) {
  if (dt != WK_I32) return true;
  wk_error(WK_ERR_DTYPE, "%s: draws floats; i32 is not a float dtype (cast the draws)", op);
  return false;
}

wk_tensor *wk_randn(int ndim, const int64_t *shape, wk_dtype dt, uint64_t seed) {
  if (!random_dtype_ok("randn", dt)) return NULL;
  wk_attrs a = {.u = seed};
  return source(WK_OP_RANDN, "randn", ndim, shape, dt, &a);
}

wk_tensor *wk_rand(int ndim, const int64_t *shape, wk_dtype dt, double lo, double hi, uint64_t seed) {
  if (!random_dtype_ok("rand", dt)) return NULL;
  if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi)) {
    wk_error(WK_ERR_ARG, "rand: the range [%g, %g) is not a finite interval", lo, hi);
    return NULL;
  }
  wk_attrs a = {.f = {(float)lo, (float)hi}, .u = seed};
  return source(WK_OP_RAND, "rand", ndim, shape, dt, &a);
}

// ---- inspection ----
int wk_ndim(const wk_tensor *t) { return live(t, "ndim") ? t->ndim : 0; }
int64_t wk_dim(const wk_tensor *t, int axis) {
  if (!wk_tensor_valid(t, "dim")) return -1;
  int a = axis < 0 ? axis + t->ndim : axis;
  if (a >= 0 && a < t->ndim) return t->shape[a];
  wk_error(WK_ERR_ARG, "dim: axis %d is out of range for a %d-d tensor", axis, t->ndim);
  return -1;
}
const int64_t *wk_shape(const wk_tensor *t) { return live(t, "shape") ? t->shape : NULL; }
int64_t wk_numel(const wk_tensor *t) { return live(t, "numel") ? wk_shape_numel(t->ndim, t->shape) : 0; }
wk_dtype wk_tensor_dtype(const wk_tensor *t) { return live(t, "dtype") ? t->dtype : WK_F32; }
wk_device wk_tensor_device(const wk_tensor *t) { return live(t, "device") ? t->device : WK_CPU; }
int wk_is_evaluated(const wk_tensor *t) { return live(t, "is_evaluated") && t->buf && !atomic_load(&t->buf->failed); }

int wk_is_contiguous(const wk_tensor *t) {
  if (!live(t, "is_contiguous")) return 0;
  int64_t s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->shape[d] != 1 && t->stride[d] != s) return 0;
    s *= t->shape[d];
  }
  return 1;
}

char *wk_shape_str(const wk_tensor *t, char *buf, size_t len) {
  char s[160];
  if (!t || t->magic != WK_TENSOR_MAGIC) { snprintf(buf, len, t ? "(freed)" : "(null)"); return buf; }
  snprintf(buf, len, "%s%s", wk_dtype_name(t->dtype), wk_fmt_shape(t->ndim, t->shape, s, sizeof s));
  return buf;
}

void wk_set_trainable(wk_tensor *t, int on) { if (live(t, "set_trainable")) t->trainable = on != 0; }
int wk_trainable(const wk_tensor *t) { return live(t, "trainable") && t->trainable; }

// ---- data access ----
// Makes t realized, contiguous and host-resident, replacing its storage if needed.
static wk_status realize_contiguous(wk_tensor *t) {
  wk_status s = wk_eval_internal(1, &t); // reading data keeps the graph for autograd
  if (s) return s;
  if (wk_is_contiguous(t) && t->device == WK_CPU) return WK_OK;
  wk_tensor *c = wk_contiguous(t);
  if (!c) return WK_ERR_STATE;
  wk_keep(c);
  s = wk_eval_internal(1, &c);
  if (!s) {
    wk_buffer_release(t->buf);
    t->buf = c->buf;
    c->buf->refcount++;
    wk_contiguous_strides(t->ndim, t->shape, t->stride);
    t->offset = 0;
  }
  wk_tensor_free(c);
  return s;
}

const void *wk_tensor_data(wk_tensor *t) {
  if (!wk_tensor_valid(t, "tensor_data")) return NULL;
  if (t->device != WK_CPU) {
    wk_error(WK_ERR_DEVICE, "tensor_data: the tensor is on %s; copy it with wk_to_device(t, WK_CPU)",
             wk_device_name(t->device));
    return NULL;
  }
  if (realize_contiguous(t)) return NULL;
  return (const char *)t->buf->data + t->offset * (int64_t)wk_dtype_size(t->dtype);
}

wk_status wk_tensor_read_f32(wk_tensor *t, float *out, int64_t n) {
  if (!wk_tensor_valid(t, "tensor_read_f32")) return WK_ERR_ARG;
  int64_t numel = wk_numel(t);
  if (!out && numel) return wk_error(WK_ERR_ARG, "tensor_read_f32: the output buffer is NULL");
  if (n < numel) return wk_error(WK_ERR_ARG, "tensor_read_f32: buffer holds %lld floats, tensor has %lld",
                                 (long long)n, (long long)numel);
  if (wk_dtype_is_quantized(t->dtype)) { // through the dequantize kernel
    wk_tensor *f = wk_keep(wk_cast(t, WK_F32));
    wk_status st = f ? wk_tensor_read_f32(f, out, n) : WK_ERR_STATE;
    wk_tensor_free(f);
    return st;
  }
  wk_tensor *host = t->device == WK_CPU ? wk_tensor_ref(t) : wk_keep(wk_to_device(t, WK_CPU));
  const void *p = host ? wk_tensor_data(host) : NULL;
  if (!p) { wk_tensor_free(host); return WK_ERR_STATE; }
  for (int64_t i = 0; i < numel; i++) {
    switch (t->dtype) {
      case WK_F32: out[i] = ((const float *)p)[i]; break;
      case WK_F16: out[i] = wk_f16_to_f32(((const uint16_t *)p)[i]); break;
      case WK_BF16: out[i] = wk_bf16_to_f32(((const uint16_t *)p)[i]); break;
      case WK_I32: out[i] = (float)((const int32_t *)p)[i]; break;
      default: wk_tensor_free(host); return wk_error(WK_ERR_DTYPE, "tensor_read_f32: unknown dtype");
    }
  }
  wk_tensor_free(host);
  return WK_OK;
}

float wk_item(wk_tensor *t) {
  float v = __builtin_nanf("");
  if (!wk_tensor_valid(t, "item")) return v;
  if (wk_numel(t) != 1) {
    char b[160];
    wk_error(WK_ERR_SHAPE, "item: tensor %s has %lld elements, not 1", wk_shape_str(t, b, sizeof b),
             (long long)wk_numel(t));
    return v;
  }
  wk_tensor_read_f32(t, &v, 1);
  return v;
}

wk_status wk_tensor_assign(wk_tensor *dst, wk_tensor *src) {
  if (!wk_tensor_valid(dst, "tensor_assign") || !wk_tensor_valid(src, "tensor_assign")) return WK_ERR_ARG;
  char a[160], b[160];
  if (dst->ndim != src->ndim || memcmp(dst->shape, src->shape, (size_t)dst->ndim * sizeof(int64_t)) ||
      dst->dtype != src->dtype)
    return wk_error(WK_ERR_SHAPE, "tensor_assign: source %s does not match destination %s",
                    wk_shape_str(src, a, sizeof a), wk_shape_str(dst, b, sizeof b));
  if (!dst->buf || !wk_is_contiguous(dst) || dst->device != WK_CPU)
    return wk_error(WK_ERR_STATE, "tensor_assign: destination must be an evaluated, contiguous CPU tensor");
  const void *p = wk_tensor_data(src);
  if (!p) return WK_ERR_STATE;
  wk_status s = wk_sync();
  if (s) return s;
  wk_buffer_thaw(dst->buf);
  memmove((char *)dst->buf->data + dst->offset * (int64_t)wk_dtype_size(dst->dtype), p,
          wk_dtype_bytes(dst->dtype, wk_numel(dst)));
  return WK_OK;
}

wk_status wk_tensor_freeze(wk_tensor *t) {
  if (!wk_tensor_valid(t, "tensor_freeze")) return WK_ERR_ARG;
  if (!t->buf) {
    char b[160];
    return wk_error(WK_ERR_STATE, "tensor_freeze: tensor %s is not evaluated (freeze realized weights)",
                    wk_shape_str(t, b, sizeof b));
  }
  if (t->buf->frozen) return WK_OK;
  if (t->buf->device == WK_CPU && wk_gemm_freeze(t->buf->data, t->buf->bytes))
    return wk_error(WK_ERR_OOM, "tensor_freeze: out of memory");
  t->buf->frozen = true;
  return WK_OK;
}

int wk_tensor_frozen(const wk_tensor *t) { return t && t->buf && t->buf->frozen; }
