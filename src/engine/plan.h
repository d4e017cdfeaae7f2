// Compiled plans: the optimized, fused, memory-planned form of a graph.
#pragma once
#include "../backend/backend.h"
#include "graph.h"

// Matmul epilogues. A MATMUL step with nin == 3 computes in[0] @ in[1] + in[2], the
// bias in[2] ([N], [1, N]...) added to every row of the [M, N] product, then the
// activation attrs.i[0] names (all three operands and the output share one float
// dtype). On CUDA it is one cuBLASLt call (no erf GELU there); on the CPU, f32 only,
// the GEMM applies it block by block.
enum { WK_EPI_BIAS = 1, WK_EPI_BIAS_GELU_TANH = 2, WK_EPI_BIAS_GELU = 3 };

// Scaled products (compile_rewrite.c's match_scaled_product / match_scaled_operand). A MATMUL
// step of two inputs with attrs.i[1] = 1 computes attrs.f[0] * (in[0] @ in[1]): the
// scale of a mul_scalar that read the product, or that both matmuls read as an
// operand, folded into the GEMM's alpha. The step's scale_src names that node, whose
// scalar eval.c copies in at run time (a LoRA scale, a loss scale).
static inline float wk_matmul_alpha(const wk_step *s) { return s->nin == 2 && s->attrs.i[1] ? s->attrs.f[0] : 1.0f; }

// Half-weight matmul ends (compile_rewrite.c's match_qswiglu / match_qepilogue, CUDA only). A
// QMATMUL step (x @ W^T, W a contiguous f16 / bf16 [N, K]) with attrs.i[1] = flags:
//   WK_QMM_ADD: in[2] is added to the f32 product, broadcast to the output's shape (a
//     bias row [N] of f32 / f16 / bf16, or an f32 residual of the output's shape);
//   WK_QMM_SWIGLU: x is silu(in[0]) * in[nin - 1] (gate and up: dense f32, x's shape);
//   WK_QMM_NORM: x is rms_norm(in[0], in[nin - 1], eps attrs.f[0]) over one row (in[0]
//     dense f32 of K values; in[nin - 1] the norm weight [K], dense f32 / f16 / bf16);
//   WK_QMM_SILU: the step stores silu of its result (after the addend, if any);
//   WK_QMM_GLU: x is in[0] * in[nin - 1], in[0] a SwiGLU gate stored already activated
//     by a WK_QMM_SILU step (operands as for WK_QMM_SWIGLU).
enum { WK_QMM_ADD = 1, WK_QMM_SWIGLU = 2, WK_QMM_NORM = 4, WK_QMM_SILU = 8, WK_QMM_GLU = 16 };

// The attention forward's row statistics kept for its backward (compile_rewrite.c's
// match_sdpa_lse, CUDA only): an SDPA step with attrs.i[2] = 1 also writes each query
// row's log-sum-exp L, f32 [B, Hq, T], into its own buffer after the output, at
// wk_sdpa_lse_offset bytes; an SDPA_BWD step with attrs.i[2] = 1 reads L there, after
// its in[3] (that forward's output), instead of recomputing it.
static inline size_t wk_sdpa_lse_offset(size_t out_bytes) { return (out_bytes + 15) & ~(size_t)15; }
// The end of that buffer, for `rows` query rows (what the planner allocates).
static inline size_t wk_sdpa_lse_end(size_t out_bytes, int64_t rows) {
  return wk_sdpa_lse_offset(out_bytes) + sizeof(float) * (size_t)rows;
}

// The head's loss and its gradient in one sweep (compile_rewrite.c's match_linear_ce_grad, CUDA
// only): a LINEAR_CE step with attrs.i[2] = 1 also computes dx = d loss / d x for the
// upstream gradient in[3] (with attrs.i[3] = 1: the constant attrs.f[0]) and stores it,
// f32 of x's shape, at wk_linear_ce_dx_offset bytes into its own buffer; the
// LINEAR_CE_BWD step with attrs.i[2] = 1 copies it from there (its in[4]: that forward).
static inline size_t wk_linear_ce_dx_offset(size_t out_bytes) { return (out_bytes + 255) & ~(size_t)255; }
// The end of that buffer, for x of x_numel values.
static inline size_t wk_linear_ce_dx_end(size_t out_bytes, int64_t x_numel) {
  return wk_linear_ce_dx_offset(out_bytes) + sizeof(float) * (size_t)x_numel;
}

// How the tensors of a graph map to slots at run time.
typedef struct {
  int node;          // index in the graph's topological order
  int slot;
  size_t bytes;
  int base;          // targets: index of the node whose buffer the target views
} wk_plan_out;

typedef struct wk_plan {
  uint64_t hash;
  unsigned char *key;
  size_t keylen;
  int nsteps;
  wk_step *steps;
  int nslots;        // leaves, then outputs, then arena intermediates
  int nleaves;
  int *leaf_nodes;   // graph index of each leaf slot
  int nouts;
  wk_plan_out *outs; // one per materialized target base
  int ntargets;
  int *target_node;  // graph index of target k
  int *target_out;   // which outs[] entry holds target k's storage
  int narena;
  int64_t *arena_off; // byte offset of each arena slot in its device's arena
  int *arena_dev;     // the device of each arena slot
  size_t arena_dev_bytes[WK_DEVICE_COUNT];
  size_t arena_bytes; // the planner's peak for intermediates, all devices
  size_t unplanned_bytes; // every node materialized, nothing reused (for comparison)
  void *arena[WK_DEVICE_COUNT];
  void **segments;   // per step: the backend's replay state of the step run starting there (CUDA graphs)
  int fused_ops;     // graph nodes folded into other steps
  int ngraph;        // nodes before optimization
  uint64_t lru;
} wk_plan;

// Common-subexpression classes of g's nodes: rep[i] is the first node computing
// the same value as node i (attributes compared by value). Plans are keyed by it.
void wk_graph_cse(const wk_topo *g, int *rep);
// Compiles the graph (topological order g, targets given as graph indices).
wk_plan *wk_plan_compile(const wk_topo *g, int ntargets, const int *targets);
void wk_plan_free(wk_plan *p);
void wk_plan_dump(const wk_plan *p, const wk_topo *g);

// Evaluates a fused elementwise op on scalars (constant folding, tests).
float wk_ew_scalar(int op, const wk_attrs *attrs, float a, float b, float c);

// The plan run by the most recent wk_eval on this process (tests and tools).
const wk_plan *wk_last_plan(void);
void wk_plan_cache_stats(uint64_t *compiles, uint64_t *hits, int *entries);
