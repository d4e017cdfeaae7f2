// The compiler's intermediate form, shared by its passes (compile*.c): one irnode a
// graph node, annotated as the passes rewrite, fuse, schedule and place it.
//   compile.c           IR construction, CSE, constant folding, use counts; the driver
//   compile_rewrite.c   kernel patterns: LoRA, matmul epilogues and scales, half-weight
//                       matmul ends, the norm and loss backward forms
//   compile_fuse.c      fusion roots, elementwise programs, steps
//   compile_schedule.c  step order: sinks, transfers, horizontal groups, siblings,
//                       decode attention, LoRA chains (the CUDA launch groupings)
//   compile_memory.c    liveness, slots and the arena (in-place reuse)
#pragma once
#include <stdlib.h>
#include <string.h>
#include "plan.h"


typedef struct {
  wk_tensor *t;
  wk_op op;
  int nin;
  int in[WK_MAX_IN];
  bool leaf, target, dead, root, escapes, has_const;
  float cval;          // value when op == CONST
  int uses;            // consumers among live nodes
  int consumer;        // the consumer when uses == 1
  int base;            // for views: the node whose storage they alias (self otherwise)
  int slot;            // storage slot of materialized nodes and leaves
  int step;            // step that defines it
  int last_use;        // last step reading its storage
  bool lora;           // this ADD node runs as a fused LoRA kernel
  bool rowfused;       // a row op computed inside a row chain (not stored)
  int lora_in[4];
  float lora_scale;
  int lora_scale_src;   // the mul_scalar node holding the scale
  bool epi;            // this ADD (or the GELU after it) runs as a matmul with a fused epilogue
  int epi_kind;        // WK_EPI_*
  int epi_in[3];       // x, W (as the matmul reads them), bias
  int qmm;             // WK_QMM_* flags: this node runs as a half-weight QMATMUL with fused ends
  int qmm_nin;
  int qmm_in[4];       // x (or gate), W [, addend] [, up or norm weight]: plan.h's QMATMUL step layout
  float qmm_eps;       // WK_QMM_NORM: the norm's eps
  bool qmm_plain;      // WK_QMM_ADD on x @ W (not W^T: a backward's dX), the addend a residual
  bool half_out;       // stored as bf16 for the half-weight GEMM that alone reads it (bf16_inputs)
  int64_t lse_rows;    // an SDPA whose backward reads its row statistics after its output
  int scale_src;       // a MATMUL whose product is scaled by this MUL_SCALAR node's scalar (+1; 0: none)
  int nadd;            // this ADD runs as the RMS_NORM_BWD node nadd - 1 with its addend (match_norm_bwd_add)
  int nadd_nin;
  int nadd_in[WK_MAX_IN];
  int64_t ce_dx;       // a LINEAR_CE that also computes its backward's dx (this many values) after the loss
  bool ce_gconst;      // ... for the constant upstream gradient ce_g (else its in[3])
  float ce_g;
} irnode;

// Nodes computed by one kernel in place of a subgraph (LoRA, matmul epilogues) read
// these inputs instead of their own.
static inline bool kern_fused(const irnode *x) { return x->lora || x->epi || x->qmm || x->nadd; }
static inline int fused_nin(const irnode *x) {
  return x->lora ? 4 : x->epi ? 3 : x->qmm ? x->qmm_nin : x->nadd ? x->nadd_nin : x->nin;
}
static inline const int *fused_in(const irnode *x) {
  return x->lora ? x->lora_in : x->epi ? x->epi_in : x->qmm ? x->qmm_in : x->nadd ? x->nadd_in : x->in;
}

typedef struct {
  const wk_topo *g;
  irnode *n;
  int count;
} ir;

// Nodes that own no storage: views, and in-place updates (set_slice writes into
// its realized destination, whose slot it shares).
static inline bool aliases(const irnode *x) { return !x->leaf && (x->op == WK_OP_VIEW || x->op == WK_OP_SET_SLICE); }

static inline bool is_ew(wk_op op) {
  wk_op_kind k = wk_ops[op].kind;
  return k == WK_KIND_EW1 || k == WK_KIND_EW2 || k == WK_KIND_EW3 || k == WK_KIND_SRC;
}
static inline bool takes_prologue(wk_op op) {
  return op == WK_OP_SUM || op == WK_OP_MAX || op == WK_OP_SOFTMAX || op == WK_OP_LOG_SOFTMAX ||
         op == WK_OP_RMS_NORM || op == WK_OP_LAYER_NORM;
}
static inline bool same_shape(const wk_tensor *a, const wk_tensor *b) {
  return a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim);
}

static inline bool is_rowop(wk_op op) {
  return op == WK_OP_SOFTMAX || op == WK_OP_LOG_SOFTMAX || op == WK_OP_RMS_NORM || op == WK_OP_LAYER_NORM;
}
static inline bool is_lora(const irnode *x) { return x->lora || (!x->leaf && x->op == WK_OP_LORA); }
static inline size_t node_bytes(const irnode *x) {
  size_t b = wk_dtype_bytes(x->half_out ? WK_BF16 : x->t->dtype, wk_numel(x->t));
  if (x->ce_dx) return wk_linear_ce_dx_end(b, x->ce_dx);
  return x->lse_rows ? wk_sdpa_lse_end(b, x->lse_rows) : b;
}
static inline int64_t padded(size_t b) { return (int64_t)((b + 63) & ~(size_t)63); }

static inline bool inlined(const irnode *x) { return !x->leaf && !x->root && x->op != WK_OP_VIEW; }

// compile.c: DCE and the use counts (again after a rewrite pass)
void wk_compile_count_uses(ir *r);
// compile_rewrite.c: the kernel patterns, each where its switch is on; then, once the
// roots are known, bf16 copies of the inputs only half-weight GEMMs read
void wk_compile_rewrite(ir *r);
void wk_compile_bf16_inputs(ir *r);
bool wk_compile_is_half_qmm(const ir *r, int i);
// compile_fuse.c: which nodes are roots (stored) and which are computed inside
// another's kernel; the step of root i (pred: the row chain's stage before, or -1)
void wk_compile_fuse(ir *r);
bool wk_compile_step(ir *r, int i, wk_step *s, int *pred);
// compile_schedule.c: reorders roots (and their steps) and marks launch groups in grp
void wk_compile_schedule(ir *r, int *roots, int n, int *grp);
// compile_memory.c: liveness, every node's slot and the arena's offsets into p; false
// when out of memory. And how step code rooted at i reads node j's storage.
bool wk_compile_memory(ir *r, const int *roots, int nroots, const int *grp, wk_plan *p);
void wk_compile_count_reads(const ir *r, int i, int j, bool top, int *reads, int *strided);
