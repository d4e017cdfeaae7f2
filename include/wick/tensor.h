// wick tensors: lazy, reference-counted handles.
//
//   wk_scope_begin();
//   wk_tensor *x = wk_randn(2, (int64_t[]){4, 8}, WK_F32, 42);
//   wk_tensor *y = wk_exp(wk_mul_scalar(x, 0.5f));     // records nodes, computes nothing
//   const float *p = wk_tensor_data(y);                 // evaluates y (fused) on demand
//   wk_keep(y);                                          // survive the scope
//   wk_scope_end();                                      // frees x and the intermediates
//   wk_tensor_free(y);
//
// Ownership: every function returning wk_tensor* returns a new reference that the
// caller releases with wk_tensor_free (or lets the innermost scope release). Ops
// never take ownership of their inputs. NULL means failure: see wk_last_error();
// passing NULL to an op returns NULL, so errors propagate through expressions.
// A tensor is not thread-safe: build and evaluate a graph from one thread.
#pragma once
#include "base.h"

typedef struct wk_tensor wk_tensor;

// ---- creation (lazy where the data is computable) ----
wk_tensor *wk_from_data(int ndim, const int64_t *shape, wk_dtype dt, const void *data); // copies
// Wraps memory the caller keeps alive until `release(ctx)` is called (may be NULL).
// On failure (NULL) release is not called: the caller still owns data.
wk_tensor *wk_from_external(int ndim, const int64_t *shape, wk_dtype dt, void *data,
                            void (*release)(void *ctx), void *ctx);
wk_tensor *wk_zeros(int ndim, const int64_t *shape, wk_dtype dt);
wk_tensor *wk_ones(int ndim, const int64_t *shape, wk_dtype dt);
wk_tensor *wk_full(int ndim, const int64_t *shape, wk_dtype dt, double value);
wk_tensor *wk_scalar(float value);                                   // 0-d f32
wk_tensor *wk_arange(double start, double stop, double step, wk_dtype dt);
// Seeded random: the same seed gives the same numbers on every backend and thread count.
wk_tensor *wk_randn(int ndim, const int64_t *shape, wk_dtype dt, uint64_t seed);
wk_tensor *wk_rand(int ndim, const int64_t *shape, wk_dtype dt, double lo, double hi, uint64_t seed);

// ---- devices ----
// A copy of t on `dev` (lazy, like any op; the planner sees the transfer). The
// same tensor (a new reference) when t is already there. Gradients flow back.
wk_tensor *wk_to_device(wk_tensor *t, wk_device dev);
// 1 when this build and machine can run tensors on dev.
int wk_device_available(wk_device dev);
const char *wk_device_name(wk_device dev);

// ---- lifetime ----
wk_tensor *wk_tensor_ref(wk_tensor *t);   // +1 reference; returns t
void wk_tensor_free(wk_tensor *t);        // -1 reference; NULL is fine
void wk_scope_begin(void);                // tensors returned after this belong to the scope
void wk_scope_end(void);                  // releases the scope's references
wk_tensor *wk_keep(wk_tensor *t);         // moves t out of the innermost scope; returns t

// ---- inspection (never evaluates) ----
int wk_ndim(const wk_tensor *t);
int64_t wk_dim(const wk_tensor *t, int axis);          // negative axes count from the end
const int64_t *wk_shape(const wk_tensor *t);
int64_t wk_numel(const wk_tensor *t);
wk_dtype wk_tensor_dtype(const wk_tensor *t);
wk_device wk_tensor_device(const wk_tensor *t);
int wk_is_evaluated(const wk_tensor *t);
int wk_is_contiguous(const wk_tensor *t);
// Writes "f32[2,3]" style text into buf; returns buf.
char *wk_shape_str(const wk_tensor *t, char *buf, size_t len);

// ---- evaluation ----
wk_status wk_eval(int n, wk_tensor *const *tensors);   // realize; blocks until done
wk_status wk_eval_async(int n, wk_tensor *const *tensors); // enqueue; returns at once
wk_status wk_sync(void);                                // wait for all enqueued work
// Eager mode (this thread): every op is evaluated as it is built. f32 results are the
// same bits as lazy mode's. In f16 / bf16, lazy mode's fused elementwise groups compute
// in f32 and round where a value is stored or explicitly cast, while eager mode rounds
// after every op, so the two can differ by a few ulps of the 2-byte type (torch.compile
// against eager PyTorch, the same way).
void wk_set_eager(int on);
// What the most recent evaluation on this process ran (WICK_DUMP_GRAPH=1 prints more).
typedef struct {
  int graph_nodes;          // nodes in the graph before optimization
  int steps;                // kernels launched
  int fused_ops;            // ops folded into other kernels
  size_t arena_bytes;       // peak bytes of intermediates, after the memory plan
  size_t unplanned_bytes;   // bytes if every node kept its own buffer
  uint64_t plans_compiled;  // since start-up
  uint64_t plan_cache_hits;
  uint64_t bound_ahead;     // asynchronous evaluations queued behind the job in flight
  uint64_t launched_ahead;  // of those, launched while it ran (their devices defer completion)
} wk_eval_stats;
void wk_last_eval_stats(wk_eval_stats *out);   // 1: every op evaluates as it is built (baseline mode)
int wk_eager(void);

// ---- data access (evaluates implicitly) ----
// Pointer to the contiguous data of a CPU tensor (evaluating and making it
// contiguous if needed). Valid while t lives. NULL on failure, and for tensors on
// other devices (copy them with wk_to_device(t, WK_CPU); wk_tensor_read_f32 and
// wk_item do that themselves).
const void *wk_tensor_data(wk_tensor *t);
// Copies t converted to f32 into out (numel floats).
wk_status wk_tensor_read_f32(wk_tensor *t, float *out, int64_t n);
float wk_item(wk_tensor *t);             // single-element tensor as float (NaN on error)
// Overwrites an evaluated, contiguous tensor's contents in place (optimizer updates).
wk_status wk_tensor_assign(wk_tensor *dst, wk_tensor *src);
// Promises that t's storage (all of it: views share it) is read-only, so kernels may
// keep forms derived from it across calls (the CPU GEMM keeps a weight's packed
// panels). The embedder freezes its weights. Writing it through wick
// (wk_tensor_assign, wk_set_slice) ends the promise first, dropping what was derived;
// writes through a pointer cast from wk_tensor_data are not seen: don't. t must be
// evaluated. wk_tensor_frozen says whether the promise holds.
wk_status wk_tensor_freeze(wk_tensor *t);
int wk_tensor_frozen(const wk_tensor *t);

// ---- autograd marks ----
void wk_set_trainable(wk_tensor *t, int on);  // gradients flow only to trainable leaves
int wk_trainable(const wk_tensor *t);
