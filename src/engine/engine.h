// Engine internals: the tensor struct, the op table and helpers shared by ops_*.c.
#pragma once
#include <stdarg.h>
#ifndef __cplusplus
#include <stdatomic.h>
#endif
#include <stdbool.h>
#include <stdlib.h>
#include "wick.h"

// A default-on switch from the environment (NAME=0 turns it off), read once into *cache
// (which starts at -1).
static inline bool wk_env_on(const char *name, int *cache) {
  if (*cache < 0) {
    const char *e = getenv(name);
    *cache = !e || atoi(e) != 0;
  }
  return *cache != 0;
}

typedef enum {
#define WK_OP(name, kind, nin) WK_OP_##name,
#include "ops.def"
#undef WK_OP
  WK_OP_COUNT
} wk_op;

typedef enum { WK_KIND_SRC, WK_KIND_EW1, WK_KIND_EW2, WK_KIND_EW3, WK_KIND_RED,
               WK_KIND_VIEW, WK_KIND_KERN } wk_op_kind;

typedef struct { const char *name; wk_op_kind kind; int nin; } wk_op_info;
extern wk_op_info wk_ops[WK_OP_COUNT];

#define WK_MAX_IN 8

// Op attributes: plain values so that they hash and compare by bytes.
typedef struct {
  float f[4];
  int64_t i[4];
  uint64_t u;      // seeds
  uint32_t axes;   // reduction axis mask
} wk_attrs;

// Storage shared by tensors and views. Freed with its last reference.
typedef struct wk_buffer {
  int refcount;
  wk_device device;
  size_t bytes;
  void *data;
  void (*release)(void *ctx); // external memory: called instead of free
  void *release_ctx;
  bool frozen;                // read-only by promise (wk_tensor_freeze): kernels may cache
                              // derived forms of it; wk_buffer_thaw before any write
  uint64_t job;               // the last evaluation job that reads or writes it (0: none):
                              // reading its data waits for that job only
#ifndef __cplusplus
  _Atomic(char *) failed;     // the error of the job that was to write it (its contents are
                              // garbage): reading it, or a job reading it, fails with this
#else
  char *failed;               // (the same bytes: C++ backend sources never touch it)
#endif
} wk_buffer;
// Marks b as written by a failed job (message copied); the first failure's message stays.
void wk_buffer_fail(wk_buffer *b, const char *message);

#define WK_TENSOR_MAGIC 0x7715A3C1u
#define WK_TENSOR_DEAD 0xDEADBEEFu

struct wk_tensor {
  uint32_t magic;
  int refcount;
  wk_dtype dtype;
  wk_device device;
  int ndim;
  int64_t shape[WK_MAX_DIMS];
  int64_t stride[WK_MAX_DIMS];   // in elements
  int64_t offset;                // in elements, into buf
  wk_buffer *buf;                // NULL while pending
  // The node that computes this tensor (kept until it is realized).
  wk_op op;
  int nin;
  wk_tensor *in[WK_MAX_IN];
  wk_attrs attrs;
  bool trainable;
  int scope;                     // depth of the scope holding a reference to it, or 0
  size_t scope_idx;              // its entry in that scope's list
};

// ---- errors (errors.c) ----
wk_status wk_error(wk_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// ---- host memory (host_alloc.c): 64-byte aligned, large blocks cached ----
void *wk_host_alloc(size_t bytes);
void wk_host_free(void *p, size_t bytes);

// ---- tensor internals (tensor.c) ----
// New pending node of `op` with inputs retained, contiguous strides, attrs copied.
wk_tensor *wk_node_new(wk_op op, wk_dtype dt, int ndim, const int64_t *shape, int nin,
                       wk_tensor *const *in, const wk_attrs *attrs);
// Hands a fresh tensor to the caller: registers it with the current scope and, in
// eager mode, evaluates it. Returns t (or NULL if eager evaluation failed).
wk_tensor *wk_node_finish(wk_tensor *t);
wk_buffer *wk_buffer_alloc(wk_device dev, size_t bytes);
// A realized tensor whose contents are undefined (storage that is written before it is
// read, like a preallocated KV cache: untouched host pages cost no resident memory).
wk_tensor *wk_empty_on(int ndim, const int64_t *shape, wk_dtype dt, wk_device dev);
// wk_full computed on `dev` (autograd seeds and zero gradients live with their tensors).
wk_tensor *wk_full_on(int ndim, const int64_t *shape, wk_dtype dt, double value, wk_device dev);
void wk_buffer_release(wk_buffer *b);
// Ends a frozen buffer's promise (drops what kernels cached from it): call before writing it.
void wk_buffer_thaw(wk_buffer *b);
void wk_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);
int64_t wk_shape_numel(int ndim, const int64_t *shape);
bool wk_tensor_valid(const wk_tensor *t, const char *op);
// "[2,3,4]"
const char *wk_fmt_shape(int ndim, const int64_t *shape, char *buf, size_t len);
int wk_norm_axis(int axis, int ndim, const char *op); // -1 on error (message set)
bool wk_is_float(wk_dtype dt);
// Bytes of numel values of dt (for block types numel is a multiple of the block).
size_t wk_dtype_bytes(wk_dtype dt, int64_t numel);

// ---- broadcasting (ops_elementwise.c) ----
// Broadcast shape of a and b into out; false (error set) if incompatible.
bool wk_broadcast_shape(const char *op, const wk_tensor *a, const wk_tensor *b,
                        int *ndim, int64_t *out);

// ---- conversions (dtype.c) ----
float wk_f16_to_f32(uint16_t h);
uint16_t wk_f32_to_f16(float f);
float wk_bf16_to_f32(uint16_t h);
uint16_t wk_f32_to_bf16(float f);

// ---- block-quantized operands (ops_quant.c) ----
// trans = 1: x[..., K] @ W[N, K]^T -> [..., N]; trans = 0: x[..., N] @ W -> [..., K].
wk_tensor *wk_qmatmul(wk_tensor *x, wk_tensor *w, int trans);

// ---- evaluation (eval.c) ----
wk_status wk_eval_internal(int n, wk_tensor *const *ts);

// ---- autograd (autograd.c) ----
// A VJP gets the node, the cotangent g of its output, and which inputs need
// gradients; it writes new references (or leaves NULL) into gin[0..nin).
typedef wk_status (*wk_vjp_fn)(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin);
#define WK_OP(name, kind, nin) \
  wk_status wk_vjp_##name(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin);
#include "ops.def"
#undef WK_OP
// VJP for ops with no gradient (sources, comparisons, integer outputs).
wk_status wk_vjp_none(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin);
// Sums g over the axes that broadcasting added to reach `like`'s shape.
wk_tensor *wk_unbroadcast(wk_tensor *g, const wk_tensor *like);
// Elementwise builders used by other op files.
wk_tensor *wk_unary(wk_op op, wk_tensor *a, const wk_attrs *attrs);
wk_tensor *wk_binary(wk_op op, wk_tensor *a, wk_tensor *b);
