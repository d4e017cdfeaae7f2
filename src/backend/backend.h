// The backend interface: what the engine's executor needs from a device.
//
// The planner turns a graph into a list of steps; each step is one kernel launch
// reading and writing operands. An operand is a strided view into a slot: slot
// pointers are bound per run (leaves, outputs) or fixed per plan (the arena).
// A backend implements the vtable below; optional entries may be NULL.
#pragma once
#include <string.h>
#include "../engine/engine.h"

// One strided view that a kernel reads or writes.
typedef struct {
  int slot;                        // index into the run's slot pointer table
  wk_dtype dtype;
  int ndim;
  int64_t shape[WK_MAX_DIMS];
  int64_t stride[WK_MAX_DIMS];     // elements; 0 on broadcast axes
  int64_t offset;                  // elements from the slot's base
} wk_operand;

// Fused elementwise program: registers hold blocks of f32 values.
// Instruction `op` is an elementwise wk_op, or one of the pseudo-ops below.
enum {
  WK_EW_LOAD = WK_OP_COUNT + 1,  // dst = operand[a] (broadcast to the group shape)
  WK_EW_LOAD_ROW                  // dst = the row produced by the previous stage of a row chain
};
typedef struct {
  uint16_t op;
  uint8_t dst, a, b, c;
  int32_t src;          // graph node whose scalar attributes this uses, or -1
  wk_attrs attrs;
} wk_ew_instr;

// At most this many registers are live in one program (the CPU VM's register file).
#define WK_EW_MAX_REGS 64
typedef struct {
  int n;                // instructions
  int nregs;
  int out_reg;          // register holding the result
  wk_ew_instr *code;
} wk_ew_prog;

// A scheduled kernel.
typedef struct {
  wk_op op;             // the kernel; WK_OP_COUNT means a fused elementwise group
  wk_device device;     // whose backend runs it (a transfer: the accelerator's side)
  int src;              // graph node whose scalar attributes (attrs.f, attrs.u) it uses, or -1
  int scale_src;        // the node holding the scale (attrs.f[0]): LoRA, a scaled MATMUL (plan.h)
  wk_attrs attrs;
  int nin;
  wk_operand in[WK_MAX_IN];
  wk_operand out;
  // Elementwise group (op == WK_OP_COUNT), or the prologue that computes in[0]
  // of a reduction / normalization kernel (prog.n > 0): in that case the prologue
  // reads operands pro_in[0..npro) and in[0] only describes the shape.
  wk_ew_prog prog;
  int npro;
  wk_operand pro_in[WK_MAX_IN];
  // Row chains: consecutive steps that work on the same rows (softmax, norms and
  // elementwise prologues / epilogues between them) run as one pass, each row held
  // in L1 from the first stage to the last. The head has chain = number of steps;
  // the members after it have chain = -1 (the executor skips them). In a member,
  // in[0].slot == -1 without a prologue means "the previous stage's row".
  int chain;
} wk_step;

// A decode layer's attention group (compile_schedule.c, CUDA): a ROPE head with chain = 5 heads
// RoPE of q, RoPE of k, the k and v cache writes and the SDPA reading the cache.
#define WK_DECODE_ATTN_GROUP 5

#define WK_STEP_FUSED_EW WK_OP_COUNT

// A dense row-major operand over the whole of `slot` (offset 0): how tests and
// hand-built benchmark steps describe their buffers.
static inline wk_operand wk_operand_dense(int slot, wk_dtype dt, int nd, const int64_t *shape) {
  wk_operand o;
  memset(&o, 0, sizeof o);
  o.slot = slot;
  o.dtype = dt;
  o.ndim = nd;
  memcpy(o.shape, shape, sizeof(int64_t) * (size_t)nd);
  wk_contiguous_strides(nd, shape, o.stride);
  return o;
}

// How an operand covers its shape: 1 dense (row-major, size-1 axes ignored), 2 one
// value broadcast to all of it (stride 0 on every axis), 0 neither.
enum { WK_FORM_OTHER = 0, WK_FORM_DENSE = 1, WK_FORM_SCALAR = 2 };
static inline int wk_operand_form(const wk_operand *o) {
  int64_t st = 1;
  bool dense = true, one = true;
  for (int d = o->ndim - 1; d >= 0; d--) {
    if (o->shape[d] == 1) continue;
    if (o->stride[d] != st) dense = false;
    if (o->stride[d] != 0) one = false;
    st *= o->shape[d];
  }
  return dense ? WK_FORM_DENSE : one ? WK_FORM_SCALAR : WK_FORM_OTHER;
}

// A SUM/MAX step's input seen as (outer O, reduced R, inner I) when the reduced
// axes (attrs.axes) form one block, ignoring size-1 axes; false if they are scattered.
static inline bool wk_reduce_split(const wk_operand *in, uint32_t mask, int64_t *O, int64_t *R, int64_t *I) {
  int first = -1, last = -1;
  for (int d = 0; d < in->ndim; d++)
    if ((mask >> d & 1) && in->shape[d] != 1) { if (first < 0) first = d; last = d; }
  *O = *R = *I = 1;
  if (first < 0) { for (int d = 0; d < in->ndim; d++) *O *= in->shape[d]; return true; }
  for (int d = 0; d < in->ndim; d++) {
    bool red = (mask >> d & 1) != 0;
    if (d < first) *O *= in->shape[d];
    else if (d > last) *I *= in->shape[d];
    else if (red || in->shape[d] == 1) *R *= in->shape[d];
    else return false;
  }
  return true;
}

typedef struct wk_backend {
  const char *name;
  wk_device device;
  void *(*alloc)(size_t bytes);                 // NULL on out-of-memory
  void (*free)(void *p);
  wk_status (*upload)(void *dst, const void *src, size_t bytes);    // host -> device
  wk_status (*download)(void *dst, const void *src, size_t bytes);  // device -> host
  // Runs (or enqueues, on asynchronous devices) one step; slots[i] is slot i's base.
  wk_status (*run)(const wk_step *step, void *const *slots);
  wk_status (*sync)(void);                      // waits for everything enqueued
  // Optional: replaying runs of steps (CUDA graphs). The executor hands every
  // maximal run of this device's steps that `capturable` accepts (chain members
  // included) to run_segment, which runs them in order like `run` would; *state is
  // the plan's handle for that run (NULL the first time, kept with the plan and
  // released by segment_free when the plan goes).
  bool (*capturable)(const wk_step *step);
  wk_status (*run_segment)(void **state, const wk_step *steps, int n, void *const *slots);
  void (*segment_free)(void *state);
  // Optional: whether a chain of one-row f32 LoRA calls (x [1, K], W [K, N], rank r,
  // each call's output the next one's x) runs as one launch; the planner groups
  // such chains only where it does (compile_schedule.c).
  bool (*lora_chain)(int64_t K, int64_t N, int64_t r);
  // Optional: deferred completion (the executor launches the next job while this one
  // runs). Between defer_begin and defer_end the steps may leave small downloads in
  // flight (their bytes reach the host at finish); defer_end returns a ticket for the
  // work enqueued since (0: none, sync instead); ticket_done polls it; finish waits for
  // it, completes its downloads and reports asynchronous errors.
  void (*defer_begin)(void);
  uint64_t (*defer_end)(void);
  bool (*ticket_done)(uint64_t ticket);
  wk_status (*finish)(uint64_t ticket);
} wk_backend;

// The backend for a device, or NULL (with an error set) when it is not compiled in
// or has no device.
const wk_backend *wk_backend_get(wk_device dev);
