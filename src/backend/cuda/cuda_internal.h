// CUDA backend internals shared by the .cu files: device operand descriptors,
// the fused elementwise interpreter, float math that matches the CPU VM, and
// the launch helpers. Kernel arguments travel as one by-value "blob" (up to
// ~32 KB of kernel parameters, __grid_constant__): programs and operand views
// are copied at launch, so nothing is uploaded per step and scalar attributes
// patched between runs need no extra work (inside a captured CUDA graph, the
// elementwise programs' run-time scalars are read from device memory: DRt).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <vector>
extern "C" {
#include "../backend.h"
#include "cuda_backend.h"
}

// ---- descriptors (host builds them, device reads them from parameter space) ----
enum { DOP_DENSE = 1, DOP_ROWREG = 2, DOP_SMALL = 4 };  // SMALL: fewer than 2^31 elements
struct DOp {
  const char *p;          // slot base + offset, in bytes
  int32_t dtype, ndim;
  int32_t flags;          // DOP_DENSE: element i at p[i]; DOP_ROWREG: row r at r * rs
  int32_t pad;
  int64_t rs;             // row stride (DOP_ROWREG)
  int64_t shape[WK_MAX_DIMS];
  int64_t stride[WK_MAX_DIMS];
};

struct DInstr {
  uint8_t op, dst, a, b, c, rt, pad[2];
  float f0, f1;
  uint64_t u;             // seed; CAUSAL_MASK packs T (low) and S (high); CAST: target dtype; rt: a const DRt *
};

// An instruction's run-time scalars (attrs.f[0], attrs.f[1], attrs.u) in device
// memory. A captured graph reads them from there (rt = 1) rather than from its
// kernel parameters, so new values (a learning rate, AdamW's bias corrections, a
// clip factor, a dropout seed) need no re-capture: the graph's first node copies
// them in from pinned staging that the host fills before each launch (graph.cu).
struct DRt {
  float f0, f1;
  uint64_t u;
};

// Whether the kernels read instruction `in`'s attributes, and they are run-time
// values (patched into cached plans, not part of the plan key): these are the
// scalars a captured graph reads from device memory.
static inline bool wkc_rt_reads(const wk_ew_instr *in) {
  if (in->src < 0) return false;
  switch (in->op) {
    case WK_OP_ARANGE:
    case WK_OP_RAND:
    case WK_OP_RANDN:
    case WK_OP_DROPOUT:
    case WK_OP_ADD_SCALAR:
    case WK_OP_MUL_SCALAR:
    case WK_OP_POW_SCALAR: return true;
    default: return false;
  }
}

struct DProg {
  int32_t n, out_reg, nops, code_off;   // code_off: index into the blob's instruction pool
  DOp ops[WK_MAX_IN];
};

// ---- blobs ----
#define WKC_BLOB_SMALL 4096
#define WKC_BLOB_LARGE 32760
template <int CAP> struct alignas(8) Blob { unsigned char b[CAP]; };

// Host: the staging buffer a launch's blob is built in (one per host thread).
unsigned char *wkc_blob_buf(void);

// Launches kern<CAP> with the smallest CAP that holds `size` bytes of blob.
#define WKC_LAUNCH_BLOB(kern, grid, block, smem, size, buf)                                      \
  do {                                                                                            \
    if ((size) <= WKC_BLOB_SMALL)                                                                 \
      kern<WKC_BLOB_SMALL><<<(grid), (block), (smem), wkc_stream()>>>(*(const Blob<WKC_BLOB_SMALL> *)(buf)); \
    else                                                                                          \
      kern<WKC_BLOB_LARGE><<<(grid), (block), (smem), wkc_stream()>>>(*(const Blob<WKC_BLOB_LARGE> *)(buf)); \
  } while (0)

// ---- backend services (cuda_backend.cu) ----
cudaStream_t wkc_stream(void);
void *wkc_tmp_alloc(size_t bytes);          // stream-ordered scratch (free right after enqueuing)
// Counters for kernels whose last block to finish does the final step (and leaves its
// counter zero again): n ints, allocated into *p on the first call and zeroed once in
// stream order (a graph being captured keeps the memset). NULL if out of memory.
int *wkc_zeroed_counters(int **p, size_t n);
void wkc_tmp_free(void *p);
wk_status wkc_check_launch(const char *kernel);   // cudaGetLastError -> wk_error naming the kernel
struct DevErr { int code, kind; long long a, b, c; };
DevErr *wkc_dev_err(void);                  // device error record (first error wins)
wk_status wkc_dev_err_report(DevErr *host_copy);   // its error, if any (and clears the record)
// Deferred completion (defer.cu; the backend's defer_* and finish).
void wkc_defer_begin(void);
bool wkc_defer_download(void *dst, const void *src, size_t bytes);   // false: download and wait instead
uint64_t wkc_defer_end(void);
bool wkc_ticket_done(uint64_t ticket);
wk_status wkc_finish(uint64_t ticket);
void wkc_arm_dev_err(void);                 // a kernel that may set it was enqueued
bool wkc_dev_err_swap(bool armed);         // sets the "may have set it" flag, returns the old one
int wkc_num_sms(void);
size_t wkc_max_smem(void);                  // opt-in dynamic shared memory per block
// Blocks of kernel k (threads each, smem bytes of dynamic shared memory) resident at once
// on the device; 0 where the occupancy query fails (its error cleared).
unsigned wkc_resident_blocks(const void *k, int threads, size_t smem);

// A row-major matrix view for cuBLAS: trans = 1 when its rows are strided by 1 (a
// transposed view); ld is the stride of the other axis.
struct wkc_mat { const char *p; int trans; int64_t ld; };
// C[M, N] (dense f32) = op(A)[M, K] @ op(B)[K, N] + beta C, A and B of dtype in_dt,
// accumulating in f32 (TF32 for f32 inputs only under WICK_CUDA_TF32=1).
wk_status wkc_gemm(const wkc_mat &a, const wkc_mat &b, int in_dt, char *c, int64_t M, int64_t N, int64_t K,
                   const char *what, float beta = 0.0f);

// ---- running steps ----
wk_status wkc_dispatch(const wk_step *s, void *const *slots);  // enqueues a step's kernels
wk_status wkc_run(const wk_step *s, void *const *slots);       // the same, + WICK_CUDA_SYNC
void wkc_set_last_kernel(const char *what);                    // named by sync's fault message
// keep != NULL: this thread enqueues on the capture stream (cuBLAS too) and every
// block it allocates is listed in *keep and outlives wkc_free (the graph owns it);
// NULL: back to the backend stream.
void wkc_capture_mode(std::vector<void *> *keep);
bool wkc_graphs_enabled(void);   // WICK_CUDA_GRAPHS (default on), off under WICK_CUDA_SYNC
// CUDA graph replay of step runs (graph.cu), the backend's optional entries.
bool wkc_capturable(const wk_step *s);
// While a unit is being captured: where the graph keeps instruction in's run-time
// scalars (wkc_rt_reads); NULL otherwise (the kernel gets them by value).
const DRt *wkc_rt_scalars(const wk_ew_instr *in);
wk_status wkc_run_segment(void **state, const wk_step *steps, int n, void *const *slots);
void wkc_segment_free(void *state);

// ---- programmatic dependent launch (PDL) ----
// Inside a captured graph, a kernel may start while the kernel before it still
// runs: it reads the weights it streams (memory no step of the graph writes) before
// griddepcontrol.wait, and everything else after it, so a chain of one-row GEMVs
// or LoRA calls overlaps each launch's ramp with the tail of the one before. A
// kernel launched this way waits (wkc_pdl_wait) in every thread before it reads
// anything a step writes and before any write of its own, and reads such data with
// plain loads: never __ldg / ld.global.nc, whose read-only cache is defined only for
// memory that no kernel writes while this one runs (with __ldg for x, replayed LoRA
// chains differed from step-by-step launches in 3 of 4 evaluations; ld.global.ca and
// .cg were slower than plain loads). Every kernel may call
// wkc_pdl_trigger at its start to let its successor launch early (a successor that
// was not launched this way waits for its completion anyway).
//
// Whether [p, p + bytes) may be read before the wait: true only while graph.cu
// captures a whole run as one graph (WICK_CUDA_PDL, default on) and no step of it
// writes those bytes. False otherwise, and launches are ordinary.
bool wkc_pdl_const(const void *p, size_t bytes);
// Whether [p, p + bytes) may be read before the wait by a kernel that is its unit's
// only launch: no kernel of the units captured before it writes those bytes. Writes
// of later units do not matter: a later kernel writes only after its own wait, which
// returns after this kernel completed. The graph's head (the copies in, the uploads
// ahead of every kernel) and uploads captured as copy nodes are complete before any
// later kernel starts. So a decode step's cache rows from earlier steps and its staged
// positions qualify.
bool wkc_pdl_prior(const void *p, size_t bytes);
// True once, for the first launch of a one-capture build that has a head: that launch
// gets a full edge to the head (not a programmatic one), so the head's writes are in
// place before any kernel of the units starts.
bool wkc_pdl_head_edge(void);
void wkc_pdl_launched(void);   // counts a launch as a programmatic dependent (graph stats)
void wkc_early_launched(void);   // counts a decode attention launch reading before its wait (graph stats)
__device__ __forceinline__ void wkc_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wkc_pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Loads of memory no step writes, to be issued before wkc_pdl_wait. Not ld.global.nc
// (__ldg): ptxas moves non-coherent loads past griddepcontrol.wait (the wait was the
// first instruction of the GEMV and LoRA kernels, their weight loads after it), while
// a coherent load stays where it is. .cg: through L2 only, as streamed weights go.
__device__ __forceinline__ float4 wkc_ld_early4(const float *p) {
  float4 v;
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 wkc_ld_early16(const void *p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ float wkc_ld_early(const float *p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}
// Launches k<<<grid, block, smem>>>(args...) on wkc_stream(), as a programmatic
// dependent of the work before it when pdl, in clusters of `cluster` CTAs along x when
// above 1 (grid.x a multiple of it).
template <typename... P, typename... A>
void wkc_launch_ex(void (*k)(P...), dim3 grid, dim3 block, size_t smem, bool pdl, unsigned cluster, A &&...args) {
  cudaLaunchAttribute at[2];
  unsigned n = 0;
  if (wkc_pdl_head_edge()) pdl = false;
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = cluster;
    at[n].val.clusterDim.y = at[n].val.clusterDim.z = 1;
    n++;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = wkc_stream();
  cfg.attrs = n ? at : NULL;
  cfg.numAttrs = n;
  if (cudaLaunchKernelEx(&cfg, k, static_cast<A &&>(args)...) == cudaSuccess && pdl) wkc_pdl_launched();
}
template <typename... P, typename... A>
void wkc_launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, bool pdl, A &&...args) {
  wkc_launch_ex(k, grid, block, smem, pdl, 1, static_cast<A &&>(args)...);
}

// ---- kernel families (ew.cu, nn.cu) ----
wk_status wkc_ew(const wk_step *s, void *const *slots);
// A horizontal group (a FUSED_EW head with chain = n and its n - 1 members): one
// launch over all their tensors where they qualify, else one per member.
wk_status wkc_ew_group(const wk_step *s, int n, void *const *slots);
wk_status wkc_reduce(const wk_step *s, void *const *slots);
wk_status wkc_argmax(const wk_step *s, void *const *slots);
wk_status wkc_top1(const wk_step *s, void *const *slots);   // top1.cu
wk_status wkc_concat(const wk_step *s, void *const *slots);
wk_status wkc_pad(const wk_step *s, void *const *slots);
// Copies a strided view (any dtype) into dense memory of dtype dt, in the view's shape.
wk_status wkc_densify(const wk_operand *o, void *const *slots, wk_dtype dt, void *dst);
wk_status wkc_rowchain(const wk_step *s, int n, void *const *slots);
// A lone softmax / log-softmax / RMSNorm over dense aligned rows (rows.cu): false when
// the step does not qualify (nothing launched), else *st is the launch's status.
bool wkc_rows_fast(const wk_step *s, void *const *slots, wk_status *st);
// A chain of softmax / log-softmax / RMSNorm / layer-norm stages alone over rows of at
// most 1024 values (rows.cu, the rows in registers): the stages one launch takes, 0
// when the chain does not qualify. A piece of it as nn.cu's pieces (row_in: the
// previous piece's dense f32 rows, else the first stage's input).
int wkc_rows_chain_cap(const wk_step *s, int n, void *const *slots);
wk_status wkc_rows_chain_piece(const wk_step *s, int n, void *const *slots, const float *row_in, char *out_p,
                               int out_dtype, bool *fits);
wk_status wkc_softmax_bwd(const wk_step *s, void *const *slots);
wk_status wkc_norm_bwd(const wk_step *s, void *const *slots);
wk_status wkc_norm_dw(const wk_step *s, void *const *slots);
wk_status wkc_rope(const wk_step *s, void *const *slots);
wk_status wkc_set_slice(const wk_step *s, void *const *slots);
wk_status wkc_embedding(const wk_step *s, void *const *slots);
wk_status wkc_embedding_bwd(const wk_step *s, void *const *slots);
wk_status wkc_sdpa(const wk_step *s, void *const *slots);        // attn.cu: tiled (flash) kernels
wk_status wkc_sdpa_rows(const wk_step *s, void *const *slots);   // nn.cu: a block per query row (D > 128)
wk_status wkc_sdpa_bwd(const wk_step *s, void *const *slots);
// The fused LoRA step for 1-4 rows of f32 (lora.cu): whether it applies (W row-major
// with 16-byte aligned rows, N % 4 == 0, rank <= 32; WICK_CUDA_LORA_ROWS=0 turns it
// off), and its launch. out is dense [M, N].
bool wkc_lora_rows_fits(int64_t M, int64_t K, int64_t N, int64_t r, const void *w, int64_t ldw);
wk_status wkc_lora_rows(const float *x, int64_t ldx, const float *w, int64_t ldw, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *out, int64_t M, int64_t K, int64_t N, int64_t r,
                        float scale);
// A chain of one-row LoRA calls (the planner's LoRA chain group: out of call q is
// x of call q + 1, W [K, K] row-major, A, B shared) in one launch that keeps W on the
// chip (lora.cu): whether it applies (WICK_CUDA_LORA_CHAIN=0 turns it off), and its
// launch: x the first call's input, outs and scales one a call.
bool wkc_lora_chain_fits(int64_t K, int64_t N, int64_t r);
wk_status wkc_lora_chain(const float *x, const float *w, int64_t ldw, const float *a, int64_t lda, const float *b,
                         int64_t ldb, int64_t K, int64_t N, int64_t r, int n, float *const *outs,
                         const float *scales);
wk_status wkc_cross_entropy(const wk_step *s, void *const *slots, bool bwd);
wk_status wkc_linear_ce(const wk_step *s, void *const *slots, bool bwd);
// Block-quantized operands (qmatmul.cu): matmul with W in blocks, dequantize, and
// embedding from a quantized table.
bool wkc_quant_supported(wk_dtype dt);
wk_status wkc_qmatmul(const wk_step *s, void *const *slots);
wk_status wkc_dequantize(const wk_step *s, void *const *slots);
wk_status wkc_qembedding(const wk_step *s, void *const *slots);
// The same matmul with a frozen f16/bf16 W [N, K] read in place (halfmm.cu).
wk_status wkc_half_matmul(const wk_step *s, void *const *slots);
// n consecutive QMATMUL steps with f16 / bf16 weights (a planner group): one launch where they can
wk_status wkc_half_matmul_group(const wk_step *s, int n, void *const *slots);
// n consecutive ROPE / SET_SLICE steps (a planner group, nn.cu): one launch
wk_status wkc_rope_group(const wk_step *s, int n, void *const *slots);
wk_status wkc_set_slice_group(const wk_step *s, int n, void *const *slots);
// A decode layer's RoPE of q and k, k and v cache writes and SDPA over the cache
// (compile_schedule.c's decode attention group, five steps): one launch (attn_decode.cu).
wk_status wkc_decode_attn_group(const wk_step *s, void *const *slots);

// ---- host helpers for descriptors ----
static inline int64_t wkc_numel(const wk_operand *o) {
  int64_t n = 1;
  for (int d = 0; d < o->ndim; d++) n *= o->shape[d];
  return n;
}
// n rounded up to a multiple of 256 bytes (the start of the next part of a scratch block)
static inline size_t wkc_align256(size_t n) { return (n + 255) & ~(size_t)255; }
// Elements in row-major order with no gaps (axes of length 1 may have any stride).
static inline bool wkc_is_dense(const wk_operand *o) {
  int64_t st = 1;
  for (int d = o->ndim - 1; d >= 0; d--) {
    if (o->shape[d] != 1 && o->stride[d] != st) return false;
    st *= o->shape[d];
  }
  return true;
}
static inline size_t wkc_esize(int dt) { return dt == WK_F32 || dt == WK_I32 ? 4 : 2; }
// Bytes of an operand's elements and of its offset: block-quantized operands count
// both in values (whole blocks of them).
static inline size_t wkc_nbytes(const wk_operand *o) {
  return wk_dtype_is_quantized(o->dtype) ? wk_dtype_bytes(o->dtype, wkc_numel(o)) : (size_t)wkc_numel(o) * wkc_esize(o->dtype);
}
static inline int64_t wkc_off_bytes(const wk_operand *o) {
  return wk_dtype_is_quantized(o->dtype) ? (int64_t)wk_dtype_bytes(o->dtype, o->offset) : o->offset * (int64_t)wkc_esize(o->dtype);
}
// Threads for a row kernel of D values (4 a thread): whole warps, 32 to 1024.
static inline int wkc_row_threads(int64_t D) {
  int64_t t = (D / 4 + 31) / 32 * 32;
  return (int)(t < 32 ? 32 : t > 1024 ? 1024 : t);
}
// n clamped to [1, cap] (a grid's size).
static inline int wkc_capped(int64_t n, int64_t cap) { return (int)(n < 1 ? 1 : n < cap ? n : cap); }
// An f32 operand at p, 16-byte aligned, whose rows (last axis D) have unit stride and
// start every 4 elements: rows of float4.
static inline bool wkc_rows_vec4(const wk_operand *o, const void *p, int64_t D) {
  bool ok = o->dtype == WK_F32 && D % 4 == 0 && o->stride[o->ndim - 1] == 1 && (uintptr_t)p % 16 == 0;
  for (int d = 0; d + 1 < o->ndim; d++) ok &= o->stride[d] % 4 == 0 || o->shape[d] == 1;
  return ok;
}
// Where operand o starts in its slot.
static inline char *wkc_ptr(const wk_operand *o, void *const *slots) { return (char *)slots[o->slot] + wkc_off_bytes(o); }

// A device view of an operand (slot < 0: no memory, p = NULL).
static inline DOp wkc_dop(const wk_operand *o, void *const *slots) {
  DOp d;
  memset(&d, 0, sizeof d);
  d.p = o->slot >= 0 ? (const char *)slots[o->slot] + o->offset * (int64_t)wkc_esize(o->dtype) : NULL;
  d.dtype = o->dtype;
  d.ndim = o->ndim;
  int64_t st = 1;
  bool dense = true;
  for (int k = o->ndim - 1; k >= 0; k--) {
    d.shape[k] = o->shape[k];
    d.stride[k] = o->shape[k] == 1 ? 0 : o->stride[k];
    if (o->shape[k] != 1 && o->stride[k] != st) dense = false;
    st *= o->shape[k];
  }
  // rows (all axes but the last) with one stride between consecutive rows
  bool rowreg = true;
  int64_t rs = 0, span = 1;
  bool have = false;
  for (int k = o->ndim - 2; k >= 0; k--) {
    if (o->shape[k] == 1) continue;
    if (!have) { rs = o->stride[k]; have = true; }
    else if (o->stride[k] != rs * span) rowreg = false;
    span *= o->shape[k];
  }
  if (!have) rs = 0;
  d.rs = rs;
  d.flags = (dense ? DOP_DENSE : 0) | (rowreg ? DOP_ROWREG : 0) | (st < 0x7fffffff ? DOP_SMALL : 0);
  return d;
}

// Appends a program: operands into dp, instructions into the pool at *ncode.
static inline bool wkc_prog(const wk_ew_prog *pg, const wk_operand *ops, int nops, void *const *slots, DProg *dp,
                            DInstr *pool, int *ncode, int cap) {
  if (*ncode + pg->n > cap) return false;
  dp->n = pg->n;
  dp->out_reg = pg->out_reg;
  dp->nops = nops;
  dp->code_off = *ncode;
  for (int k = 0; k < nops; k++) dp->ops[k] = wkc_dop(&ops[k], slots);
  for (int q = 0; q < pg->n; q++) {
    const wk_ew_instr *in = &pg->code[q];
    DInstr *o = &pool[(*ncode)++];
    memset(o, 0, sizeof *o);
    o->op = (uint8_t)in->op;
    o->dst = in->dst;
    o->a = in->a;
    o->b = in->b;
    o->c = in->c;
    o->f0 = in->attrs.f[0];
    o->f1 = in->attrs.f[1];
    if (in->op == WK_OP_CAUSAL_MASK)
      o->u = (uint64_t)(uint32_t)in->attrs.i[0] | (uint64_t)(uint32_t)in->attrs.i[1] << 32;
    else if (in->op == WK_OP_CAST)
      o->u = (uint64_t)in->attrs.i[0];
    else
      o->u = in->attrs.u;
    const DRt *rt = wkc_rt_reads(in) ? wkc_rt_scalars(in) : NULL;
    if (rt) {
      o->rt = 1;
      o->f0 = o->f1 = 0;
      o->u = (uint64_t)(uintptr_t)rt;
    }
  }
  return true;
}

// ---- device helpers ----
#ifdef __CUDACC__
#include "../kernel_math.h"
#define WKC_DEV static __device__ __forceinline__

WKC_DEV float bits2f(uint32_t u) { return __uint_as_float(u); }
WKC_DEV uint32_t f2bits(float f) { return __float_as_uint(f); }

WKC_DEV float ldv(const char *p, int dt, int64_t off) {
  switch (dt) {
    case WK_F32: return ((const float *)p)[off];
    case WK_BF16: return bits2f((uint32_t)((const uint16_t *)p)[off] << 16);
    case WK_F16: return __half2float(((const __half *)p)[off]);
    default: return (float)((const int32_t *)p)[off];
  }
}
WKC_DEV void stv(char *p, int dt, int64_t off, float v) {
  switch (dt) {
    case WK_F32: ((float *)p)[off] = v; break;
    case WK_BF16: ((uint16_t *)p)[off] = wkm_f32_to_bf16(v); break;
    case WK_F16: ((__half *)p)[off] = __float2half_rn(v); break;
    default: ((int32_t *)p)[off] = (int32_t)v; break;
  }
}

// Element offset of linear index i of o (its own shape).
WKC_DEV int64_t op_off(const DOp &o, int64_t i) {
  if (o.flags & DOP_DENSE) return i;
  int64_t off = 0;
  if (o.flags & DOP_SMALL) {
    uint32_t r = (uint32_t)i;
    for (int d = o.ndim - 1; d >= 0; d--) {
      uint32_t n = (uint32_t)o.shape[d], q = r / n;
      off += (int64_t)(r - q * n) * o.stride[d];
      r = q;
    }
    return off;
  }
  for (int d = o.ndim - 1; d >= 0; d--) {
    int64_t n = o.shape[d];
    off += (i % n) * o.stride[d];
    i /= n;
  }
  return off;
}
// Offset of row r (viewing o as [rows, last axis]).
WKC_DEV int64_t row_off(const DOp &o, int64_t r) {
  if (o.flags & DOP_ROWREG) return r * o.rs;
  int64_t off = 0;
  for (int d = o.ndim - 2; d >= 0; d--) {
    int64_t n = o.shape[d];
    off += (r % n) * o.stride[d];
    r /= n;
  }
  return off;
}
WKC_DEV int64_t last_stride(const DOp &o) { return o.ndim ? o.stride[o.ndim - 1] : 0; }

// ---- math: the CPU backend's own formulas (kernel_math.h), so results agree ----
WKC_DEV float expz(float x) { return x < -87.0f ? 0.0f : wkm_exp(x); }
WKC_DEV float f16_round(float v) { return __half2float(__float2half_rn(v)); }
WKC_DEV float bf16_round(float v) { return bits2f((uint32_t)wkm_f32_to_bf16(v) << 16); }
// v as a value of dtype dt would hold it (f32: unchanged).
WKC_DEV float round_to(float v, int dt) { return dt == WK_BF16 ? bf16_round(v) : dt == WK_F16 ? f16_round(v) : v; }
// v's bits as bf16 (BF) or f16.
template <bool BF> WKC_DEV uint16_t half_bits(float v) {
  return BF ? wkm_f32_to_bf16(v) : __half_as_ushort(__float2half_rn(v));
}
// Four floats rounded to bf16 (wkm_f32_to_bf16), packed in memory order: an 8-byte store.
WKC_DEV uint2 bf16x4(float a, float b, float c, float d) {
  return make_uint2(wkm_f32_to_bf16(a) | (uint32_t)wkm_f32_to_bf16(b) << 16,
                    wkm_f32_to_bf16(c) | (uint32_t)wkm_f32_to_bf16(d) << 16);
}

// V consecutive elements of a fused program (lin .. lin + V - 1). load(k, t) fills
// t[0..V) with operand k's values; row[0..V) is the previous row-chain stage's
// values (WK_EW_LOAD_ROW); NR bounds the registers the program uses. V > 1
// amortizes decoding each instruction over several elements.
#define WKC_EACH(expr)                                   \
  _Pragma("unroll") for (int v = 0; v < V; v++) {        \
    const float x = a[v];                                \
    (void)x;                                             \
    t[v] = (expr);                                       \
  }                                                      \
  break
#define WKC_EACH2(expr)                                  \
  _Pragma("unroll") for (int v = 0; v < V; v++) {        \
    const float x = a[v], y = b[v];                      \
    t[v] = (expr);                                       \
  }                                                      \
  break
template <int V, int NR, class Load>
WKC_DEV void ew_run(const DInstr *code, int n, int out_reg, int64_t lin, const float *row, const Load &load, float *out) {
  float R[NR][V];
  for (int q = 0; q < n; q++) {
    const DInstr in = code[q];
    const int op = in.op;
    float t[V];
    if (op == WK_EW_LOAD) {
      load(in.a, t);
    } else if (op == WK_EW_LOAD_ROW) {
#pragma unroll
      for (int v = 0; v < V; v++) t[v] = row[v];
    } else {
      const float *a = R[in.a], *b = R[in.b], *c = R[in.c];
      float f0 = in.f0, f1 = in.f1;
      uint64_t seed = in.u;
      if (in.rt) {   // a captured graph: the scalars are in device memory
        const DRt *r = (const DRt *)in.u;
        f0 = r->f0;
        f1 = r->f1;
        seed = r->u;
      }
      switch (op) {
        case WK_OP_CONST: WKC_EACH(f0);
        case WK_OP_ARANGE: WKC_EACH(f0 + (float)(lin + v) * f1);
        case WK_OP_RAND: WKC_EACH(f0 + (f1 - f0) * wkm_u01(seed, (uint64_t)(lin + v)));
        case WK_OP_RANDN:
#pragma unroll
          for (int v = 0; v < V; v++) {
            uint64_t h = wkm_rng_hash(seed, (uint64_t)(lin + v));
            float u1 = ((float)(h >> 40) + 1.0f) * 0x1p-24f, u2 = (float)(h & 0xffffff) * 0x1p-24f;
            t[v] = sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
          }
          break;
        case WK_OP_DROPOUT: WKC_EACH(wkm_u01(seed, (uint64_t)(lin + v)) < f0 ? 0.0f : x / (1.0f - f0));
        case WK_OP_CAUSAL_MASK: {
          int64_t T = (int64_t)(uint32_t)(in.u & 0xffffffffu), S = (int64_t)(uint32_t)(in.u >> 32);
#pragma unroll
          for (int v = 0; v < V; v++) {
            int64_t col = (lin + v) % S, rw = ((lin + v) / S) % T;
            t[v] = col > rw + (S - T) ? -INFINITY : 0.0f;
          }
          break;
        }
        case WK_OP_NEG: WKC_EACH(-x);
        case WK_OP_ABS: WKC_EACH(fabsf(x));
        case WK_OP_EXP: WKC_EACH(wkm_exp(x));
        case WK_OP_LOG: WKC_EACH(wkm_log(x));
        case WK_OP_SQRT: WKC_EACH(sqrtf(x));
        case WK_OP_RSQRT: WKC_EACH(1.0f / sqrtf(x));
        case WK_OP_SQUARE: WKC_EACH(x * x);
        case WK_OP_TANH: WKC_EACH(wkm_tanh(x));
        case WK_OP_SIGMOID: WKC_EACH(wkm_sigmoid(x));
        case WK_OP_RELU: WKC_EACH(x > 0 || x != x ? x : 0.0f);
        case WK_OP_GELU: WKC_EACH(0.5f * x * (1.0f + wkm_erf(x * 0.70710678118f)));
        case WK_OP_GELU_TANH: WKC_EACH(0.5f * x * (1.0f + wkm_tanh(0.7978845608f * (x + 0.044715f * x * x * x))));
        case WK_OP_SILU: WKC_EACH(x * wkm_sigmoid(x));
        case WK_OP_ADD_SCALAR: WKC_EACH(x + f0);
        case WK_OP_MUL_SCALAR: WKC_EACH(x * f0);
        case WK_OP_POW_SCALAR:
          WKC_EACH(f0 == 2.0f ? x * x : f0 == 0.5f ? sqrtf(x) : f0 == 1.0f ? x : f0 == -1.0f ? 1.0f / x : powf(x, f0));
        case WK_OP_CAST: {
          const int to = (int)in.u;
          WKC_EACH(to == WK_BF16 ? bf16_round(x) : to == WK_F16 ? f16_round(x) : to == WK_I32 ? truncf(x) : x);
        }
        case WK_OP_COPY:
        case WK_OP_STOP_GRAD: WKC_EACH(x);
        case WK_OP_WHERE:
#pragma unroll
          for (int v = 0; v < V; v++) t[v] = a[v] != 0.0f ? b[v] : c[v];
          break;
        case WK_OP_ADD: WKC_EACH2(x + y);
        case WK_OP_SUB: WKC_EACH2(x - y);
        case WK_OP_MUL: WKC_EACH2(x * y);
        case WK_OP_DIV: WKC_EACH2(x / y);
        case WK_OP_MAXIMUM: WKC_EACH2(x >= y || x != x ? x : y);
        case WK_OP_MINIMUM: WKC_EACH2(x <= y || x != x ? x : y);
        case WK_OP_EQ: WKC_EACH2(x == y ? 1.0f : 0.0f);
        case WK_OP_NE: WKC_EACH2(x != y ? 1.0f : 0.0f);
        case WK_OP_LT: WKC_EACH2(x < y ? 1.0f : 0.0f);
        case WK_OP_LE: WKC_EACH2(x <= y ? 1.0f : 0.0f);
        case WK_OP_GT: WKC_EACH2(x > y ? 1.0f : 0.0f);
        case WK_OP_GE: WKC_EACH2(x >= y ? 1.0f : 0.0f);
        case WK_OP_GELU_BWD: WKC_EACH2(y * wkm_gelu_grad(x));
        case WK_OP_GELU_TANH_BWD: WKC_EACH2(y * wkm_gelu_tanh_grad(x));
        default: WKC_EACH(0.0f);
      }
    }
#pragma unroll
    for (int v = 0; v < V; v++) R[in.dst][v] = t[v];
  }
#pragma unroll
  for (int v = 0; v < V; v++) out[v] = R[out_reg][v];
}

// One element (row-chain stages, prologues of reductions and row kernels).
template <class Load>
WKC_DEV float ew_exec(const DInstr *code, int n, int out_reg, int64_t lin, float row, const Load &load) {
  float out;
  auto l1 = [&](int k, float *t) { t[0] = load(k); };
  ew_run<1, WK_EW_MAX_REGS>(code, n, out_reg, lin, &row, l1, &out);
  return out;
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----
WKC_DEV float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
WKC_DEV float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v || w != w ? w : v;
  }
  return v;
}
// red: 32 floats of shared scratch. Every thread gets the result.
WKC_DEV float block_sum(float v, float *red) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.0f;
  return warp_sum(v);
}
WKC_DEV float block_max(float v, float *red) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : -INFINITY;
  return warp_max(v);
}
// Records the first device-side error (checked at sync).
WKC_DEV void dev_error(DevErr *e, int kind, long long a, long long b, long long c) {
  if (atomicCAS(&e->code, 0, 1) == 0) {
    e->kind = kind;
    e->a = a;
    e->b = b;
    e->c = c;
  }
}
enum { WKC_ERR_EMBED_ID = 1, WKC_ERR_CE_TARGET = 2 };
#endif
