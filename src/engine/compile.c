// The compiler: graph -> optimized, fused, memory-planned list of steps.
//
// Passes, in order: common-subexpression elimination, constant folding of scalar
// constants, dead-code elimination, LoRA pattern rewrite, matmul epilogues (bias,
// GELU; CUDA), half-weight matmul ends (SwiGLU in, bias / residual out; CUDA), norm
// weights read without their widening cast (CUDA), fusion (elementwise groups;
// elementwise prologues into reductions and normalizations), step scheduling in
// topological order (on CUDA, independent groups with one program side by side, and
// sibling matmuls / RoPEs / cache writes, each run as one launch), liveness-based arena
// planning with in-place reuse. The result depends only on the graph's structure, so it is cached.
#include <stdio.h>
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
static bool kern_fused(const irnode *x) { return x->lora || x->epi || x->qmm || x->nadd; }
static int fused_nin(const irnode *x) {
  return x->lora ? 4 : x->epi ? 3 : x->qmm ? x->qmm_nin : x->nadd ? x->nadd_nin : x->nin;
}
static const int *fused_in(const irnode *x) {
  return x->lora ? x->lora_in : x->epi ? x->epi_in : x->qmm ? x->qmm_in : x->nadd ? x->nadd_in : x->in;
}

typedef struct {
  const wk_topo *g;
  irnode *n;
  int count;
} ir;

// Nodes that own no storage: views, and in-place updates (set_slice writes into
// its realized destination, whose slot it shares).
static bool aliases(const irnode *x) { return !x->leaf && (x->op == WK_OP_VIEW || x->op == WK_OP_SET_SLICE); }

static bool is_ew(wk_op op) {
  wk_op_kind k = wk_ops[op].kind;
  return k == WK_KIND_EW1 || k == WK_KIND_EW2 || k == WK_KIND_EW3 || k == WK_KIND_SRC;
}
static bool takes_prologue(wk_op op) {
  return op == WK_OP_SUM || op == WK_OP_MAX || op == WK_OP_SOFTMAX || op == WK_OP_LOG_SOFTMAX ||
         op == WK_OP_RMS_NORM || op == WK_OP_LAYER_NORM;
}
static bool same_shape(const wk_tensor *a, const wk_tensor *b) {
  return a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim);
}

// ---- IR construction ----
static bool ir_build(ir *r, const wk_topo *g, int ntargets, const int *targets) {
  r->g = g;
  r->count = g->n;
  r->n = calloc((size_t)g->n, sizeof *r->n);
  if (!r->n) return false;
  for (int i = 0; i < g->n; i++) {
    irnode *x = &r->n[i];
    wk_tensor *t = g->nodes[i];
    x->t = t;
    x->op = t->op;
    x->leaf = t->buf != NULL;
    x->base = i;
    x->slot = -1;
    x->step = -1;
    x->last_use = -1;
    if (!x->leaf) {
      x->nin = t->nin;
      for (int k = 0; k < t->nin; k++) x->in[k] = wk_topo_in(g, i, k);
      if (t->op == WK_OP_CONST) { x->has_const = true; x->cval = t->attrs.f[0]; }
    }
  }
  for (int k = 0; k < ntargets; k++) r->n[targets[k]].target = true;
  return true;
}

// ---- CSE: identical op, attrs, inputs, dtype and layout compute the same value ----
static bool same_node(const wk_topo *g, const int *rep, int i, int j) {
  const wk_tensor *x = g->nodes[i], *y = g->nodes[j];
  if (x->buf || y->buf || x->op != y->op || x->nin != y->nin || x->dtype != y->dtype) return false;
  if (!same_shape(x, y) || memcmp(&x->attrs, &y->attrs, sizeof x->attrs)) return false;
  if (x->op == WK_OP_VIEW && (x->offset != y->offset || memcmp(x->stride, y->stride, sizeof(int64_t) * (size_t)x->ndim)))
    return false;
  for (int k = 0; k < x->nin; k++)
    if (rep[wk_topo_in(g, i, k)] != rep[wk_topo_in(g, j, k)]) return false;
  return true;
}

void wk_graph_cse(const wk_topo *g, int *rep) {
  size_t cap = 1;
  while (cap < (size_t)g->n * 2) cap <<= 1;
  int *table = malloc(cap * sizeof *table);
  for (int i = 0; i < g->n; i++) rep[i] = i;
  if (!table) return; // no merging: still correct
  memset(table, -1, cap * sizeof *table);
  for (int i = 0; i < g->n; i++) {
    const wk_tensor *x = g->nodes[i];
    if (x->buf) continue;
    uint64_t h = (uint64_t)x->op * 0x100000001b3ull;
    for (int k = 0; k < x->nin; k++) h = (h ^ (uint64_t)rep[wk_topo_in(g, i, k)]) * 0x100000001b3ull;
    for (int d = 0; d < x->ndim; d++) h = (h ^ (uint64_t)x->shape[d]) * 0x100000001b3ull;
    size_t j = (size_t)h & (cap - 1);
    for (; table[j] >= 0; j = (j + 1) & (cap - 1))
      if (same_node(g, rep, table[j], i)) break;
    if (table[j] >= 0) rep[i] = table[j];
    else table[j] = i;
  }
  free(table);
}

static void cse(ir *r) {
  int *rep = malloc(sizeof(int) * (size_t)(r->count + 1));
  if (!rep) return;
  wk_graph_cse(r->g, rep);
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    for (int k = 0; k < x->nin; k++) x->in[k] = rep[x->in[k]];
    if (rep[i] == i) continue;
    x->dead = true;
    x->base = rep[i]; // targets that were merged find their representative here
    if (x->target) r->n[rep[i]].target = true;
  }
  free(rep);
}

// ---- constant folding: elementwise ops on scalar constants become constants ----
static int fold_constants(ir *r) {
  int folded = 0;
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    // a view (broadcast, reshape...) of a constant is the same constant
    if (!x->leaf && !x->dead && x->op == WK_OP_VIEW && r->n[x->in[0]].has_const) {
      x->op = WK_OP_CONST;
      x->has_const = true;
      x->cval = r->n[x->in[0]].cval;
      x->nin = 0;
      folded++;
      continue;
    }
    if (x->leaf || x->dead || x->nin == 0 || !is_ew(x->op) || x->op == WK_OP_DROPOUT || x->op == WK_OP_COPY)
      continue;
    // Scalar attributes are run-time parameters, not part of the plan's key: a
    // plan built for mul_scalar(c, 0.9) also serves mul_scalar(c, 0.8).
    if (x->op == WK_OP_ADD_SCALAR || x->op == WK_OP_MUL_SCALAR || x->op == WK_OP_POW_SCALAR) continue;
    if (x->t->dtype == WK_I32) continue;
    float v[3] = {0};
    bool all = true;
    for (int k = 0; k < x->nin && all; k++) {
      const irnode *c = &r->n[x->in[k]];
      all = c->has_const;
      v[k] = c->cval;
    }
    if (!all) continue;
    x->cval = wk_ew_scalar(x->op, &x->t->attrs, v[0], v[1], v[2]);
    x->has_const = true;
    x->op = WK_OP_CONST;
    x->nin = 0;
    folded++;
  }
  return folded;
}

// ---- DCE and use counts ----
static void count_uses(ir *r) {
  for (int i = 0; i < r->count; i++) { r->n[i].uses = 0; r->n[i].consumer = -1; }
  bool *live = calloc((size_t)r->count, sizeof *live);
  if (!live) return;
  for (int i = r->count - 1; i >= 0; i--) {
    irnode *x = &r->n[i];
    if (x->target && !x->dead) live[i] = true;
    if (!live[i]) { x->dead = true; continue; }
    x->dead = false;
    int nin = fused_nin(x);
    const int *in = fused_in(x);
    for (int k = 0; k < nin; k++) {
      irnode *c = &r->n[in[k]];
      live[in[k]] = true;
      c->uses++;
      c->consumer = i;
    }
  }
  free(live);
}

// ---- LoRA: x@W + s * ((x@A)@B) ----
static int strip_reshape(const ir *r, int i) {
  // A contiguous reshape of a pending node reads the same memory: look through it.
  for (;;) {
    const irnode *x = &r->n[i];
    if (x->leaf || x->op != WK_OP_VIEW || x->uses != 1) return i;
    if (r->n[x->in[0]].leaf || x->t->offset != 0 || !wk_is_contiguous(x->t)) return i;
    i = x->in[0];
  }
}
static bool same_value(const ir *r, int a, int b) {
  if (a == b) return true;
  const wk_tensor *x = r->n[a].t, *y = r->n[b].t;
  return r->n[a].leaf && r->n[b].leaf && x->buf == y->buf && x->offset == y->offset && same_shape(x, y) &&
         !memcmp(x->stride, y->stride, sizeof(int64_t) * (size_t)x->ndim);
}
static bool is_2d_matmul(const ir *r, int i) {
  return r->n[i].op == WK_OP_MATMUL && !r->n[i].leaf && !r->n[i].scale_src && r->n[i].t->ndim == 2;
}

static bool match_lora(ir *r, int add) {
  irnode *x = &r->n[add];
  if (x->op != WK_OP_ADD || x->leaf) return false;
  for (int side = 0; side < 2; side++) {
    int base = strip_reshape(r, x->in[side]), sc = x->in[1 - side];
    if (!is_2d_matmul(r, base) || r->n[sc].op != WK_OP_MUL_SCALAR || r->n[sc].leaf) continue;
    int up = strip_reshape(r, r->n[sc].in[0]);
    if (!is_2d_matmul(r, up)) continue;
    int down = strip_reshape(r, r->n[up].in[0]);
    if (!is_2d_matmul(r, down)) continue;
    int xin = r->n[base].in[0];
    if (!same_value(r, xin, r->n[down].in[0])) continue;
    if (!same_shape(r->n[base].t, r->n[up].t) || wk_numel(r->n[base].t) != wk_numel(x->t)) continue;
    // the intermediates must not be needed elsewhere
    if (x->t->dtype != WK_F32) continue;
    if (r->n[base].uses != 1 || r->n[up].uses != 1 || r->n[down].uses != 1 || r->n[sc].uses != 1) continue;
    if (r->n[base].target || r->n[up].target || r->n[down].target) continue;
    x->lora = true;
    x->lora_in[0] = xin;
    x->lora_in[1] = r->n[base].in[1];
    x->lora_in[2] = r->n[down].in[1];
    x->lora_in[3] = r->n[up].in[1];
    x->lora_scale = r->n[sc].t->attrs.f[0];
    x->lora_scale_src = sc;
    return true;
  }
  return false;
}

// ---- matmul epilogues: matmul(x, W) + bias [then gelu / gelu_tanh] ----
// On CUDA this is one cuBLASLt call (CUBLASLT_EPILOGUE_BIAS / _GELU_BIAS): the bias
// add and the GELU happen on the accumulator before the store, instead of a second
// kernel reading the product back. cuBLASLt's GELU is the tanh form, so there an erf
// GELU fuses only the bias and stays an elementwise kernel; WICK_CUDA_LT=0 turns the
// CUDA rewrite off. On the CPU (f32) the GEMM applies the bias and either GELU to
// each block of C while it is in L1 (a BERT FFN: one pass over [tokens, 1536] less);
// WICK_CPU_EPI=0 turns that off.
static bool epilogues_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_LT", &on); }
static bool cpu_epilogues_enabled(void) { static int on = -1; return wk_env_on("WICK_CPU_EPI", &on); }

static bool match_epilogue(ir *r, int add) {
  irnode *x = &r->n[add];
  if (x->op != WK_OP_ADD || x->leaf || kern_fused(x)) return false;
  bool cpu = x->t->device == WK_CPU;
  if (cpu ? !cpu_epilogues_enabled() : x->t->device != WK_CUDA || !epilogues_enabled()) return false;
  wk_dtype dt = x->t->dtype;
  if (dt != WK_F32 && (cpu || (dt != WK_BF16 && dt != WK_F16))) return false;
  for (int side = 0; side < 2; side++) {
    int mm = strip_reshape(r, x->in[side]), b = x->in[1 - side];
    if (!is_2d_matmul(r, mm)) continue;
    const irnode *m = &r->n[mm];
    if (m->uses != 1 || m->target || m->escapes || m->t->dtype != dt) continue;
    int64_t M = m->t->shape[0], N = m->t->shape[1];
    const wk_tensor *bt = r->n[b].t;
    // the bias runs along the rows: [N], [1, N], ... and the sum has the product's shape
    if (bt->dtype != dt || bt->ndim < 1 || bt->shape[bt->ndim - 1] != N || wk_numel(bt) != N) continue;
    if (wk_numel(x->t) != M * N || x->t->shape[x->t->ndim - 1] != N) continue;
    if (r->n[x->in[side]].uses != 1) continue;
    irnode *f = x;
    int kind = WK_EPI_BIAS;
    if (x->uses == 1 && !x->target && !x->escapes) {
      irnode *c = &r->n[x->consumer];
      bool gelu = c->op == WK_OP_GELU_TANH || (cpu && c->op == WK_OP_GELU);
      if (!c->leaf && gelu && !kern_fused(c) && c->t->dtype == dt && same_shape(c->t, x->t)) {
        f = c;
        kind = c->op == WK_OP_GELU ? WK_EPI_BIAS_GELU : WK_EPI_BIAS_GELU_TANH;
      }
    }
    f->epi = true;
    f->epi_kind = kind;
    f->epi_in[0] = m->in[0];
    f->epi_in[1] = m->in[1];
    f->epi_in[2] = b;
    return true;
  }
  return false;
}

// ---- scalars folded into a matmul (the GEMM's alpha) ----
// A LoRA adapter adds s * (x A) B, and its backward scales the incoming gradient by s
// before the two products that read it (dB = (x A)^T (s dy), d(x A) = (s dy) B^T).
// Each mul_scalar is a pass over a [tokens, out] tensor of its own (a Qwen2.5-0.5B
// training step at batch 8 x 512: [4088, 4864] f32 for gate and up, 80 MB each).
// Here the scale becomes the product's alpha instead:
// - mul_scalar(matmul(a, b), s): the mul_scalar node runs as the matmul, scaled;
//   a plain product stays a root, so an add of it to a half-weight GEMM's product
//   runs as that GEMM with the scaled product as its addend, in place (match_qepilogue);
// - mul_scalar(g, s) read only by matmuls: each reads g and scales its own product.
// The scale stays a run-time scalar: the step's scale_src names the mul_scalar node
// (eval.c patches it like LoRA's). WICK_MM_SCALE=0 turns the rewrite off.
static bool mm_scale_enabled(void) { static int on = -1; return wk_env_on("WICK_MM_SCALE", &on); }

static bool plain_matmul(const irnode *m) {
  return !m->leaf && !m->dead && m->op == WK_OP_MATMUL && !kern_fused(m) && !m->scale_src && wk_is_float(m->t->dtype);
}
static bool foldable_scale(const irnode *x) {
  return !x->leaf && !x->dead && x->op == WK_OP_MUL_SCALAR && !kern_fused(x) && wk_is_float(x->t->dtype);
}

static bool match_scaled_product(ir *r, int i) {
  irnode *x = &r->n[i];
  if (!foldable_scale(x)) return false;
  const irnode *m = &r->n[x->in[0]];
  if (!plain_matmul(m) || m->uses != 1 || m->target || m->escapes || m->t->dtype != x->t->dtype ||
      m->t->device != x->t->device || !same_shape(m->t, x->t))
    return false;
  x->op = WK_OP_MATMUL;
  x->nin = 2;
  x->in[0] = m->in[0];
  x->in[1] = m->in[1];
  x->scale_src = i + 1;
  return true;
}

static bool match_scaled_operand(ir *r, int i) {
  const irnode *x = &r->n[i];
  if (!foldable_scale(x) || x->target || x->escapes || x->uses < 1) return false;   // its value is not stored
  const int g = x->in[0];
  int found = 0;
  for (int j = i + 1; j < r->count; j++) {   // every reader: a plain matmul reading it once
    const irnode *c = &r->n[j];
    if (c->dead || c->leaf) continue;
    int reads = 0;
    const int nin = fused_nin(c);
    const int *in = fused_in(c);
    for (int k = 0; k < nin; k++) reads += in[k] == i;
    if (!reads) continue;
    if (reads != 1 || !plain_matmul(c) || c->t->device != x->t->device) return false;
    found++;
  }
  if (found != x->uses) return false;
  for (int j = i + 1; j < r->count; j++) {
    irnode *c = &r->n[j];
    if (c->dead || c->leaf || c->op != WK_OP_MATMUL || c->scale_src) continue;
    for (int k = 0; k < c->nin; k++)
      if (c->in[k] == i) {
        c->in[k] = g;
        c->scale_src = i + 1;
      }
  }
  return true;
}

// ---- half-weight matmul (CUDA): a SwiGLU prologue, an added bias or residual ----
// Batch-1 decode runs a frozen bf16 projection as one GEMV (halfmm.cu), whose cost is
// reading W; the elementwise kernels around it (the q/k/v bias adds, the residual
// adds after the o and down projections, silu(gate) * up before the down projection)
// each cost a launch of their own (~3 us on an H100/H200, ~5 per layer). Here they
// become part of the QMATMUL step: x = silu(gate) * up computed as the kernel reads x,
// and y = x @ W^T + addend, the addend a bias row ([N]; an f16 / bf16 one read
// through its widening cast) or a residual of the output's shape. The CUDA kernels
// compute the same f32 operations as the unfused graph (one add after the dot
// product). CUDA only (the CPU keeps the unfused graph); autograd is untouched
// (the rewrite sees only what it is asked to evaluate: the ops' VJPs need neither
// the product nor the SwiGLU value, so training graphs fuse alike).
// WICK_CUDA_QEPI=0 / WICK_CUDA_QSWIGLU=0 turn the two halves off.
static bool qepi_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QEPI", &on); }
static bool qswiglu_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QSWIGLU", &on); }
static bool normw_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_NORMW", &on); }
static bool qgroup_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QGROUP", &on); }
static bool qnorm_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QNORM", &on); }

// A QMATMUL node the CUDA half-weight kernels run: x @ W^T, W a contiguous f16 / bf16 [N, K].
static bool half_qmm_form(const ir *r, int i, int trans) {
  const irnode *m = &r->n[i];
  if (m->leaf || m->dead || m->op != WK_OP_QMATMUL || m->t->device != WK_CUDA || m->t->attrs.i[0] != trans) return false;
  const wk_tensor *w = r->n[m->in[1]].t;
  return (w->dtype == WK_BF16 || w->dtype == WK_F16) && w->ndim == 2 && wk_is_contiguous(w) &&
         r->n[m->in[0]].t->dtype == WK_F32;
}
static bool is_half_qmm(const ir *r, int i) { return half_qmm_form(r, i, 1); }
// The backward's dX = dY @ W (attrs.i[0] = 0) of such a weight, with no fused ends: it
// takes a residual addend only (the sum of a layer's input gradients, [tokens, hidden]),
// which the GEMM adds in place like the forward's (qmm_addend_in_place). WICK_CUDA_DX_ADD=0
// turns that off.
static bool dx_add_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_DX_ADD", &on); }
static bool is_half_qmm_plain(const ir *r, int i) { return !r->n[i].qmm && half_qmm_form(r, i, 0); }
static bool f32_same_shape(const irnode *a, const irnode *b) {
  return a->t->dtype == WK_F32 && b->t->dtype == WK_F32 && same_shape(a->t, b->t);
}

// mm = qmatmul(mul(silu(gate), up), W): mm reads gate and up instead.
static bool match_qswiglu(ir *r, int mm) {
  if (!is_half_qmm(r, mm) || r->n[mm].qmm) return false;
  irnode *m = &r->n[mm];
  int xi = m->in[0];
  irnode *x = &r->n[xi];
  if (x->leaf || x->op != WK_OP_MUL || x->uses != 1 || x->target || kern_fused(x)) return false;
  for (int side = 0; side < 2; side++) {
    irnode *s = &r->n[x->in[side]];
    int up = x->in[1 - side];
    if (s->leaf || s->op != WK_OP_SILU || s->uses != 1 || s->target || kern_fused(s)) continue;
    if (!f32_same_shape(s, x) || !f32_same_shape(&r->n[up], x) || !f32_same_shape(&r->n[s->in[0]], x)) continue;
    if (x->in[0] == x->in[1]) continue;
    m->qmm = WK_QMM_SWIGLU;
    m->qmm_nin = 3;
    m->qmm_in[0] = s->in[0];
    m->qmm_in[1] = m->in[1];
    m->qmm_in[2] = up;
    return true;
  }
  return false;
}

// A SwiGLU prologue (match_qswiglu) whose gate is a one-row half GEMV that nothing
// else reads: the gate's kernel stores silu(gate) (WK_QMM_SILU), once a value, and mm
// reads x = gate * up (WK_QMM_GLU), where every CTA of mm computed the silu over all of
// x: a decode down projection of Qwen2.5-0.5B took 7.8 us with the silu, 5.5 with x as
// stored (H100). The same values: the silu of the same stored gate, times up.
static bool qsilu_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QSILU", &on); }
static bool match_qsilu(ir *r, int mm) {
  irnode *m = &r->n[mm];
  if (m->leaf || m->dead || !(m->qmm & WK_QMM_SWIGLU)) return false;
  const int gi = m->qmm_in[0];
  irnode *g = &r->n[gi];
  if (!is_half_qmm(r, gi) || (g->qmm & ~WK_QMM_NORM) || g->uses != 1 || g->target || g->escapes) return false;
  const int64_t n = g->t->ndim ? g->t->shape[g->t->ndim - 1] : 0;
  if (n <= 0 || wk_numel(g->t) / n > 8) return false;   // one-row GEMVs (decode), not a GEMM's rows
  if (!g->qmm) {
    g->qmm_nin = 2;
    g->qmm_in[0] = g->in[0];
    g->qmm_in[1] = g->in[1];
  }
  g->qmm |= WK_QMM_SILU;
  m->qmm = (m->qmm & ~WK_QMM_SWIGLU) | WK_QMM_GLU;
  return true;
}

// ---- bf16 inputs of half-weight GEMMs ----
// A bf16 weight multiplies its input rounded to bf16 (halfmm.cu's GEMM path rounds x
// into a scratch copy first). When that input is an elementwise root that nothing
// else reads, its kernel stores it rounded instead (the same bits: round to nearest
// even) and the GEMM reads it in place: the rounding pass and half of the store go.
// In a SwiGLU MLP's training step these are the down projection's input and the
// backward's d_gate and d_up, [tokens, 4864] each: 72 passes of ~46 us a Qwen2.5-0.5B
// step at batch 8 x 512. Only for the GEMM path (over 8 rows; a GEMV reads f32 x),
// on CUDA; WICK_CUDA_BF16X=0 turns it off.
static bool bf16x_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_BF16X", &on); }

static bool reads_rowfused(const ir *r, int i, bool top) {
  const irnode *x = &r->n[i];
  if (x->rowfused) return true;
  if (!top && (x->leaf || x->root || x->op == WK_OP_VIEW)) return false;
  for (int k = 0; k < x->nin; k++) if (reads_rowfused(r, x->in[k], false)) return true;
  return false;
}

static void bf16_inputs(ir *r) {
  if (!bf16x_enabled()) return;
  for (int i = 0; i < r->count; i++) {
    const irnode *m = &r->n[i];   // a QMATMUL, or an add that runs as one (match_qepilogue: x @ W^T)
    if (m->leaf || m->dead || m->t->device != WK_CUDA || (m->qmm & ~WK_QMM_ADD)) continue;
    if (!m->qmm && (m->op != WK_OP_QMATMUL || kern_fused(m))) continue;
    const wk_tensor *w = r->n[m->qmm ? m->qmm_in[1] : m->in[1]].t;
    if (w->dtype != WK_BF16 || w->ndim != 2 || !wk_is_contiguous(w)) continue;
    int xi = m->qmm ? m->qmm_in[0] : m->in[0];
    irnode *x = &r->n[xi];
    const bool trans = m->qmm ? !m->qmm_plain : m->t->attrs.i[0] != 0;
    int64_t K = w->shape[trans ? 1 : 0];
    if (x->leaf || x->dead || !x->root || x->op == WK_OP_VIEW || !is_ew(x->op) || kern_fused(x) || x->uses != 1 ||
        x->consumer != i ||
        x->target || x->escapes || x->t->dtype != WK_F32 || !wk_is_contiguous(x->t) || x->t->offset != 0 ||
        wk_numel(x->t) <= 8 * K || reads_rowfused(r, xi, true))
      continue;
    x->half_out = true;
  }
}

// Node i widens an f16 / bf16 tensor of its shape to f32: that tensor's index (a CUDA
// kernel that reads any float dtype takes it directly), else -1.
static int widened_half(const ir *r, int i) {
  const irnode *c = &r->n[i];
  if (c->leaf || c->op != WK_OP_CAST || c->t->dtype != WK_F32) return -1;
  const wk_tensor *src = r->n[c->in[0]].t;
  return (src->dtype == WK_BF16 || src->dtype == WK_F16) && same_shape(src, c->t) ? c->in[0] : -1;
}

// mm = qmatmul(rms_norm(h, w), W) over one row (a decode step's q/k/v or gate/up): mm
// reads h and w, and each GEMV block computes the norm of h itself (its lanes hold the
// chunks of h they multiply anyway: a sum of squares, no second read) instead of a
// launch of its own (~3.4 us on an H200, two a layer); halfmm.cu still runs the norm
// first for a W too wide for that to pay. The norm dies once all its consumers read h.
// The weight may be an f16 / bf16 one read through its widening cast.
static bool match_qnorm(ir *r, int mm) {
  if (!is_half_qmm(r, mm) || r->n[mm].qmm) return false;
  irnode *m = &r->n[mm];
  const irnode *n = &r->n[m->in[0]];
  if (n->leaf || n->op != WK_OP_RMS_NORM || n->nin != 2 || kern_fused(n)) return false;
  int64_t K = r->n[m->in[1]].t->shape[1];
  const wk_tensor *h = r->n[n->in[0]].t;
  if (h->dtype != WK_F32 || n->t->dtype != WK_F32 || wk_numel(h) != K || h->shape[h->ndim - 1] != K ||
      !wk_is_contiguous(h))
    return false;
  int w = n->in[1], src = widened_half(r, w);
  if (src >= 0) w = src;
  const wk_tensor *wt = r->n[w].t;
  if (wk_numel(wt) != K || !wk_is_contiguous(wt) || !wk_is_float(wt->dtype))
    return false;
  m->qmm = WK_QMM_NORM;
  m->qmm_nin = 3;
  m->qmm_in[0] = n->in[0];
  m->qmm_in[1] = m->in[1];
  m->qmm_in[2] = w;
  m->qmm_eps = n->t->attrs.f[0];
  return true;
}

// add(qmatmul(x, W), b) with b a bias row or a residual: one QMATMUL step.
static bool match_qepilogue(ir *r, int add) {
  irnode *x = &r->n[add];
  if (x->leaf || x->op != WK_OP_ADD || kern_fused(x) || x->t->device != WK_CUDA || x->t->dtype != WK_F32) return false;
  for (int side = 0; side < 2; side++) {
    int mm = strip_reshape(r, x->in[side]), b = x->in[1 - side];
    const bool plain = dx_add_enabled() && is_half_qmm_plain(r, mm);
    if ((!plain && !is_half_qmm(r, mm)) || x->in[0] == x->in[1]) continue;
    const irnode *m = &r->n[mm];
    if (m->uses != 1 || m->target || m->escapes || r->n[x->in[side]].uses != 1) continue;
    int64_t N = m->t->shape[m->t->ndim - 1];
    if (wk_numel(x->t) != wk_numel(m->t) || x->t->shape[x->t->ndim - 1] != N) continue;
    // an f16 / bf16 bias widened by a cast: the kernel widens it itself
    const irnode *c = &r->n[b];
    if (!c->leaf && c->op == WK_OP_CAST && (r->n[c->in[0]].t->dtype == WK_BF16 || r->n[c->in[0]].t->dtype == WK_F16) &&
        same_shape(c->t, r->n[c->in[0]].t))
      b = c->in[0];
    const wk_tensor *bt = r->n[b].t;
    bool bias = wk_numel(bt) == N && bt->shape[bt->ndim - 1] == N && (N == 1 || bt->stride[bt->ndim - 1] == 1);
    bool resid = bt->dtype == WK_F32 && same_shape(bt, x->t) && wk_is_contiguous(bt);
    if ((!bias && !resid) || (plain && !resid)) continue;
    if (!wk_is_float(bt->dtype)) continue;
    x->qmm_plain = plain;
    x->qmm = WK_QMM_ADD | m->qmm;
    x->qmm_eps = m->qmm_eps;
    x->qmm_nin = 3 + (m->qmm ? 1 : 0);
    x->qmm_in[0] = m->qmm ? m->qmm_in[0] : m->in[0];
    x->qmm_in[1] = m->in[1];
    x->qmm_in[2] = b;
    if (m->qmm) x->qmm_in[3] = m->qmm_in[2];
    return true;
  }
  return false;
}

// rms_norm / layer_norm(x, cast(w) [, cast(b)]) with an f16 / bf16 weight: the CUDA row
// kernels read any float dtype, so they take w itself (no widening kernel per step).
static bool match_norm_weights(ir *r, int i) {
  irnode *x = &r->n[i];
  if (x->leaf || x->dead || x->t->device != WK_CUDA || kern_fused(x)) return false;
  if (x->op != WK_OP_RMS_NORM && x->op != WK_OP_LAYER_NORM) return false;
  bool any = false;
  for (int k = 1; k < x->nin; k++) {
    const int src = widened_half(r, x->in[k]);
    if (src >= 0) x->in[k] = src, any = true;
  }
  return any;
}

// ---- the RMSNorm backward with the residual's gradient added (CUDA) ----
// A pre-norm block's input gradient is the residual's gradient plus the norm's
// backward: add(r, rms_norm_bwd(x, w, dy)), two of them a layer, each a pass over
// [tokens, hidden] f32 of its own after the norm's kernel wrote its output. Here the
// norm's kernel adds r as it stores (r in[nin - 1], attrs.i[2] = 1), in r's buffer
// where r dies there (inplace_candidate). WICK_CUDA_NORM_ADD=0 turns it off.
static bool norm_add_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_NORM_ADD", &on); }
static bool match_norm_bwd_add(ir *r, int i) {
  irnode *x = &r->n[i];
  if (x->leaf || x->op != WK_OP_ADD || kern_fused(x) || x->t->device != WK_CUDA || x->t->dtype != WK_F32 ||
      x->in[0] == x->in[1])
    return false;
  for (int side = 0; side < 2; side++) {
    const irnode *n = &r->n[x->in[side]], *a = &r->n[x->in[1 - side]];
    if (n->leaf || n->op != WK_OP_RMS_NORM_BWD || kern_fused(n) || n->uses != 1 || n->target || n->escapes ||
        n->nin + 1 > WK_MAX_IN || !f32_same_shape(n, x) || !f32_same_shape(a, x) || !wk_is_contiguous(a->t))
      continue;
    x->nadd = x->in[side] + 1;
    x->nadd_nin = n->nin + 1;
    memcpy(x->nadd_in, n->in, sizeof(int) * (size_t)n->nin);
    x->nadd_in[n->nin] = x->in[1 - side];
    return true;
  }
  return false;
}

// ---- the head's loss and its gradient in one sweep (CUDA) ----
// wkc_linear_ce computes a block of logits per 256 rows, and the backward computes the
// same block again (the logits never exist whole: 2.5 GB at Qwen2.5-0.5B's batch 8 x
// 512). A training step evaluates both in one plan: then the forward step computes
// dx as well, from the one GEMM a block, and the backward step copies it (plan.h). It
// saves the recomputed GEMMs and the forward's own pass over each block (a q,v step:
// 16 x 154 + 16 x 54 us on an H100). The upstream gradient must be known when the
// forward runs: a constant or a realized tensor (the loss's seed), or a node before
// the forward.
// WICK_CUDA_CE_GRAD=0 turns it off.
static bool ce_grad_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_CE_GRAD", &on); }
static bool match_linear_ce_grad(ir *r, int bi) {
  irnode *b = &r->n[bi];
  if (b->op != WK_OP_LINEAR_CE_BWD || b->leaf || b->nin != 4 || b->t->device != WK_CUDA || b->t->dtype != WK_F32 ||
      (b->t->attrs.i[1] != 1 && b->t->attrs.i[1] != 2))
    return false;
  const int gi = b->in[3];
  const irnode *g = &r->n[gi];
  const bool gconst = !g->leaf && g->op == WK_OP_CONST && g->has_const;
  if (wk_numel(g->t) != 1) return false;
  for (int fi = 0; fi < r->count; fi++) {
    irnode *f = &r->n[fi];
    if (f->op != WK_OP_LINEAR_CE || f->leaf || f->dead || f->ce_dx || f->nin != 3 || f->t->device != WK_CUDA ||
        f->in[0] != b->in[0] || f->in[1] != b->in[1] || f->in[2] != b->in[2] || f->t->attrs.i[0] != b->t->attrs.i[0] ||
        f->t->attrs.i[1] != b->t->attrs.i[1] || (!gconst && !g->leaf && gi > fi))
      continue;
    f->ce_dx = wk_numel(b->t);
    f->ce_gconst = gconst;
    f->ce_g = gconst ? g->cval : 0.0f;
    if (!gconst) f->in[f->nin++] = gi;
    b->in[b->nin++] = fi;   // the backward reads the forward's buffer
    return true;
  }
  return false;
}

// An attention backward on CUDA whose in[3] is the output of the forward over the same
// q, k, v in this graph: the forward keeps its rows' log-sum-exp after its output, and
// the backward reads it there instead of running the forward's products again (a
// stats pass: 63 us of a ~290 us backward at Qwen2.5-0.5B's training shape, H200).
// WICK_CUDA_SDPA_LSE=0 turns it off.
static bool sdpa_lse_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_SDPA_LSE", &on); }
static bool match_sdpa_lse(ir *r, int bi) {
  const irnode *b = &r->n[bi];
  if (b->op != WK_OP_SDPA_BWD || b->leaf || b->t->device != WK_CUDA) return false;
  irnode *f = &r->n[b->in[3]];
  if (f->op != WK_OP_SDPA || f->leaf || f->dead || f->base != b->in[3] || f->t->device != WK_CUDA ||
      f->t->attrs.i[1] || !f->t->shape[3] || f->nin != b->nin - 2)   // no kv_len; a mask on both or neither
    return false;
  for (int k = 0; k < f->nin; k++)
    if (f->in[k] != b->in[k < 3 ? k : 5]) return false;
  f->lse_rows = wk_numel(f->t) / f->t->shape[3];
  return true;
}

// One rewrite over the live nodes, then the use counts the next one relies on.
static void rewrite_pass(ir *r, bool (*match)(ir *, int)) {
  for (int i = 0; i < r->count; i++)
    if (!r->n[i].dead) match(r, i);
  count_uses(r);
}

// ---- fusion ----
static bool is_rowop(wk_op op) {
  return op == WK_OP_SOFTMAX || op == WK_OP_LOG_SOFTMAX || op == WK_OP_RMS_NORM || op == WK_OP_LAYER_NORM;
}

// Row chains: a softmax / norm whose only consumer keeps working on the same rows
// (the next row op, or elementwise code feeding one or finishing the chain) is not
// stored; the chain runs as one pass per row. A program may read one such row.
static void mark_row_chains(ir *r) {
  int *row_src = malloc(sizeof(int) * (size_t)(r->count + 1));
  if (!row_src) return;
  for (int i = 0; i < r->count; i++) row_src[i] = -1;
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    if (x->leaf || x->dead || !is_rowop(x->op) || x->target || x->escapes || x->uses != 1) continue;
    if (x->t->dtype != WK_F32) continue; // stages keep f32 rows: exact only for f32
    int c = x->consumer;
    if (!same_shape(x->t, r->n[c].t) || kern_fused(&r->n[c])) continue;
    bool direct = is_rowop(r->n[c].op) && r->n[c].in[0] == i;
    if (!direct && !is_ew(r->n[c].op)) continue;
    // the program that will read this row: climb through inlined elementwise code
    int owner = c;
    while (!direct && !r->n[owner].root && !r->n[owner].rowfused && r->n[owner].op != WK_OP_VIEW &&
           r->n[owner].uses == 1 && is_ew(r->n[owner].op))
      owner = r->n[owner].consumer;
    irnode *o = &r->n[owner];
    if (o->leaf || kern_fused(o) || !(is_rowop(o->op) || is_ew(o->op)) || !same_shape(o->t, x->t)) continue;
    if (row_src[owner] >= 0) continue;
    row_src[owner] = i;
    x->rowfused = true;
    x->root = false;
  }
  free(row_src);
}

// A one-input elementwise op of a stored tensor of its shape, read by several
// elementwise consumers of that shape, is computed in each of them instead of stored:
// each consumer loads the input where it would have loaded the result, and the
// result's buffer and its write are gone. In a SwiGLU MLP's training step silu(gate)
// is read by the forward product and by the backward's d_up, and the SiLU backward's
// sigmoid(gate) twice by one expression: stored, they cost two 4864-wide f32 buffers
// a layer (Qwen2.5-0.5B, batch 8 x 512: 80 MB each, silu(gate) kept for the backward)
// and a pass over memory each.
static bool duplicable(const ir *r, int i) {
  const irnode *x = &r->n[i];
  if (wk_ops[x->op].kind != WK_KIND_EW1 || x->op == WK_OP_COPY || x->op == WK_OP_DROPOUT || x->escapes) return false;
  const irnode *in = &r->n[x->in[0]];
  // (same dtype: a duplicated widening cast would keep the narrow input's larger twin alive)
  if (!same_shape(in->t, x->t) || in->t->dtype != x->t->dtype) return false;
  if (!in->leaf && in->op == WK_OP_VIEW) {   // a reshape of a stored value reads it densely too
    const irnode *b = &r->n[in->in[0]];
    if (in->t->offset != 0 || !wk_is_contiguous(in->t) || !(b->leaf || b->root) || b->op == WK_OP_VIEW) return false;
  } else if (!(in->leaf || in->root)) {
    return false;
  }
  for (int c = i + 1; c < r->count; c++) {
    const irnode *y = &r->n[c];
    if (y->dead || y->leaf) continue;
    int nin = fused_nin(y);
    const int *yin = fused_in(y);
    for (int k = 0; k < nin; k++)
      if (yin[k] == i && (kern_fused(y) || !is_ew(y->op) || !same_shape(x->t, y->t))) return false;
  }
  return true;
}

// A node is inlined (not materialized) when its only consumer computes it on the fly.
static bool inlinable(const ir *r, int i) {
  const irnode *x = &r->n[i];
  if (x->leaf || x->target || kern_fused(x) || !is_ew(x->op)) return false;
  if (x->op == WK_OP_CONST) return true; // a fill: duplicated into every consumer
  if (x->uses != 1) return x->uses > 1 && duplicable(r, i);
  const irnode *c = &r->n[x->consumer];
  if (kern_fused(c) || c->leaf) return false;
  if (is_ew(c->op)) return same_shape(x->t, c->t);
  if (!takes_prologue(c->op) || c->in[0] != i) return false;
  if (c->op == WK_OP_SUM || c->op == WK_OP_MAX) { // the reduced axes must form one block
    int first = -1, last = -1;
    for (int d = 0; d < x->t->ndim; d++)
      if ((c->t->attrs.axes >> d & 1) && x->t->shape[d] != 1) { if (first < 0) first = d; last = d; }
    for (int d = first + 1; first >= 0 && d < last; d++)
      if (!(c->t->attrs.axes >> d & 1) && x->t->shape[d] != 1) return false;
  }
  return true;
}

// Groups stay small enough for one program (instructions, loads, registers):
// a node whose inlined subtree grows too large is materialized instead. This also
// bounds the recursion depth of code generation on very long chains.
#define GROUP_MAX_INSTR 128

static void mark_roots(ir *r) {
  int *size = calloc((size_t)r->count + 1, sizeof *size), *loads = calloc((size_t)r->count + 1, sizeof *loads);
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    if (x->dead || x->leaf) continue;
    x->root = x->op != WK_OP_VIEW && !inlinable(r, i);
    if (!size || !loads) continue;
    size[i] = 1;
    for (int k = 0; k < x->nin && !kern_fused(x); k++) {
      int j = x->in[k];
      bool inl = !r->n[j].leaf && !r->n[j].root && r->n[j].op != WK_OP_VIEW;
      size[i] += inl ? size[j] : 1;
      loads[i] += inl ? loads[j] : 1;
    }
    if (!x->root && (size[i] > GROUP_MAX_INSTR || loads[i] >= WK_MAX_IN)) {
      x->root = true;
      size[i] = 1;
      loads[i] = 1;
    }
  }
  free(size);
  free(loads);
  // CONST nodes read by a non-elementwise consumer (matmul of zeros...) must exist in memory
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    if (x->dead || x->leaf || x->op == WK_OP_VIEW || !x->root) continue;
    int nin = fused_nin(x);
    const int *in = fused_in(x);
    for (int k = 0; k < nin; k++) {
      irnode *c = &r->n[in[k]];
      bool reads_memory = kern_fused(x) || (!is_ew(x->op) && !(takes_prologue(x->op) && k == 0));
      if (c->op == WK_OP_CONST && !c->leaf && reads_memory) c->root = true;
    }
  }
  mark_row_chains(r);
  // views alias their base's storage: find it (through in-place updates, to their destination)
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    if (x->dead || !aliases(x)) continue;
    int b = x->in[0];
    while (aliases(&r->n[b])) b = r->n[b].in[0];
    x->base = b;
    if (x->op == WK_OP_SET_SLICE) continue;
    if (!r->n[b].leaf) r->n[b].root = true;
    if (x->target) r->n[b].escapes = true;
  }
}

// ---- operands and programs ----
// Operand reading node i's value broadcast to (ndim, shape).
static wk_operand operand_of(const ir *r, int i, int ndim, const int64_t *shape) {
  const irnode *x = &r->n[i];
  const wk_tensor *t = x->t;
  const irnode *b = aliases(x) ? &r->n[x->base] : x;
  wk_operand o = {.slot = b->slot, .dtype = x->half_out ? WK_BF16 : t->dtype, .ndim = ndim};
  o.offset = x->leaf ? 0 : t->offset - (b->leaf ? b->t->offset : 0);
  int lead = ndim - t->ndim;
  for (int d = 0; d < ndim; d++) {
    o.shape[d] = shape[d];
    int s = d - lead;
    o.stride[d] = s < 0 || t->shape[s] == 1 ? 0 : t->stride[s];
  }
  return o;
}
static wk_operand operand_self(const ir *r, int i) {
  return operand_of(r, i, r->n[i].t->ndim, r->n[i].t->shape);
}

typedef struct {
  wk_ew_instr code[256];
  int n;
  int loads[WK_MAX_IN * 4];
  int load_reg[WK_MAX_IN * 4];
  int nloads;
  wk_operand ops[WK_MAX_IN];
  int nops;
  int nregs;
  unsigned long long busy[4]; // register occupancy bitmap
  bool overflow;
  int row_reg, row_src;       // row chains: the LOAD_ROW register and the node it reads
} progbuf;

static int reg_alloc(progbuf *pb) {
  for (int k = 0; k < WK_EW_MAX_REGS; k++)
    if (!(pb->busy[k / 64] >> (k % 64) & 1)) {
      pb->busy[k / 64] |= 1ull << (k % 64);
      if (k + 1 > pb->nregs) pb->nregs = k + 1;
      return k;
    }
  pb->overflow = true;
  return 0;
}
static void reg_free(progbuf *pb, int reg, bool pinned) {
  if (!pinned) pb->busy[reg / 64] &= ~(1ull << (reg % 64));
}
static bool reg_pinned(const progbuf *pb, int reg) {
  for (int k = 0; k < pb->nloads; k++) if (pb->load_reg[k] == reg) return true;
  return false;
}

static int emit_value(ir *r, progbuf *pb, int i, const wk_tensor *group);

static int emit_load(ir *r, progbuf *pb, int i, const wk_tensor *group) {
  for (int k = 0; k < pb->nloads; k++) if (pb->loads[k] == i) return pb->load_reg[k];
  if (pb->nops == WK_MAX_IN || pb->nloads == WK_MAX_IN * 4) { pb->overflow = true; return 0; }
  int opi = pb->nops++;
  pb->ops[opi] = operand_of(r, i, group->ndim, group->shape);
  int reg = reg_alloc(pb);
  if (pb->n == 256) { pb->overflow = true; return 0; }
  pb->code[pb->n++] = (wk_ew_instr){.op = WK_EW_LOAD, .dst = (uint8_t)reg, .a = (uint8_t)opi, .src = -1};
  pb->loads[pb->nloads] = i;
  pb->load_reg[pb->nloads++] = reg;
  return reg;
}

// Emits code computing node i into a register; returns it.
static int emit_value(ir *r, progbuf *pb, int i, const wk_tensor *group) {
  irnode *x = &r->n[i];
  if (x->rowfused) { // the previous stage's row
    if (pb->row_reg < 0) {
      pb->row_reg = reg_alloc(pb);
      pb->row_src = i;
      if (pb->n == 256) { pb->overflow = true; return 0; }
      pb->code[pb->n++] = (wk_ew_instr){.op = WK_EW_LOAD_ROW, .dst = (uint8_t)pb->row_reg, .src = -1};
      pb->loads[pb->nloads] = i; // pinned like a load
      pb->load_reg[pb->nloads++] = pb->row_reg;
    }
    return pb->row_reg;
  }
  bool inl = !x->leaf && !x->root && x->op != WK_OP_VIEW;
  if (!inl) return emit_load(r, pb, i, group);
  // a duplicated node (duplicable) read twice by one program is computed once, its
  // register pinned like a load's
  bool memo = x->uses > 1 && x->op != WK_OP_CONST;
  for (int k = 0; memo && k < pb->nloads; k++) if (pb->loads[k] == i) return pb->load_reg[k];
  int regs[3] = {0};
  for (int k = 0; k < x->nin; k++) regs[k] = emit_value(r, pb, x->in[k], group);
  for (int k = 0; k < x->nin; k++) reg_free(pb, regs[k], reg_pinned(pb, regs[k]));
  int dst = reg_alloc(pb);
  if (pb->n == 256) { pb->overflow = true; return 0; }
  wk_ew_instr in = {.op = (uint16_t)x->op, .dst = (uint8_t)dst, .a = (uint8_t)regs[0], .b = (uint8_t)regs[1],
                    .c = (uint8_t)regs[2], .src = i, .attrs = x->t->attrs};
  if (x->op == WK_OP_CONST) { in.attrs.f[0] = x->cval; in.src = -1; } // keyed by value (or folded)
  pb->code[pb->n++] = in;
  if (memo) {
    if (pb->nloads == WK_MAX_IN * 4) { pb->overflow = true; return 0; }
    pb->loads[pb->nloads] = i;
    pb->load_reg[pb->nloads++] = dst;
  }
  return dst;
}

static bool finish_prog(progbuf *pb, int out, wk_ew_prog *prog) {
  if (pb->overflow) return false;
  prog->n = pb->n;
  prog->nregs = pb->nregs;
  prog->out_reg = out;
  prog->code = malloc(sizeof(wk_ew_instr) * (size_t)pb->n);
  if (!prog->code) return false;
  memcpy(prog->code, pb->code, sizeof(wk_ew_instr) * (size_t)pb->n);
  return true;
}

// ---- steps ----
// A fused matmul step writes its [M, N] product densely, whatever view of it
// (a reshape) the graph's node has: M = x's rows, N = w's columns.
static void out_as_product(wk_step *s, const wk_tensor *x, const wk_tensor *w) {
  s->out.ndim = 2;
  s->out.shape[0] = x->shape[0];
  s->out.shape[1] = w->shape[1];
  s->out.stride[0] = w->shape[1];
  s->out.stride[1] = 1;
}

// A contiguous operand's leading axes folded into rows: [M, K] with strides [K, 1].
static void rows_2d(wk_operand *o) {
  const int64_t K = o->shape[o->ndim - 1], M = K ? wk_shape_numel(o->ndim, o->shape) / K : 0;
  o->ndim = 2;
  o->shape[0] = M, o->shape[1] = K;
  o->stride[0] = K, o->stride[1] = 1;
}

// Builds the step computing node i. *pred is the row-chain stage feeding it (-1 if none).
static bool build_step(ir *r, int i, wk_step *s, int *pred) {
  irnode *x = &r->n[i];
  *pred = -1;
  memset(s, 0, sizeof *s);
  s->attrs = x->t->attrs;
  s->src = i;
  // a transfer runs on the accelerator's backend, whichever way it goes
  s->device = x->op == WK_OP_TRANSFER && x->t->device == WK_CPU ? x->t->in[0]->device : x->t->device;
  s->out = operand_self(r, i);
  s->out.offset = 0;
  if (x->lora) {
    s->op = WK_OP_LORA;
    s->nin = 4;
    for (int k = 0; k < 4; k++) s->in[k] = operand_self(r, x->lora_in[k]);
    s->attrs.f[0] = x->lora_scale;
    s->src = -1;
    s->scale_src = x->lora_scale_src;
    out_as_product(s, r->n[x->lora_in[0]].t, r->n[x->lora_in[1]].t);  // the LoRA kernel writes [M, N]
    return true;
  }
  if (x->epi) { // matmul(in[0], in[1]) + in[2] along the rows [, gelu]: see plan.h
    s->op = WK_OP_MATMUL;
    s->nin = 3;
    for (int k = 0; k < 3; k++) s->in[k] = operand_self(r, x->epi_in[k]);
    memset(&s->attrs, 0, sizeof s->attrs);
    s->attrs.i[0] = x->epi_kind;
    s->src = -1;
    out_as_product(s, r->n[x->epi_in[0]].t, r->n[x->epi_in[1]].t);
    return true;
  }
  if (x->nadd) { // the norm's backward adding the residual's gradient as it stores
    const irnode *n = &r->n[x->nadd - 1];
    s->op = n->op;
    s->nin = x->nadd_nin;
    for (int k = 0; k < x->nadd_nin; k++) s->in[k] = operand_self(r, x->nadd_in[k]);
    s->attrs = n->t->attrs;
    s->attrs.i[2] = 1;
    s->src = x->nadd - 1;   // its eps, patched at run time
    return true;
  }
  if (x->qmm) { // a half-weight matmul with a SwiGLU prologue and / or an addend: see plan.h
    s->op = WK_OP_QMATMUL;
    s->nin = x->qmm_nin;
    for (int k = 0; k < x->qmm_nin; k++) s->in[k] = operand_self(r, x->qmm_in[k]);
    if (x->qmm & WK_QMM_ADD) s->in[2] = operand_of(r, x->qmm_in[2], x->t->ndim, x->t->shape);
    memset(&s->attrs, 0, sizeof s->attrs);
    s->attrs.i[0] = !x->qmm_plain;
    s->attrs.i[1] = x->qmm;
    s->attrs.f[0] = x->qmm_eps;
    s->src = -1;
    return true;
  }
  if (x->op == WK_OP_SDPA && x->lse_rows) s->attrs.i[2] = 1;
  if (x->op == WK_OP_SDPA_BWD && r->n[x->in[3]].lse_rows) s->attrs.i[2] = 1;
  if (x->op == WK_OP_LINEAR_CE && x->ce_dx) {   // its backward's dx too: see plan.h
    s->attrs.i[2] = 1;
    s->attrs.i[3] = x->ce_gconst;
    s->attrs.f[0] = x->ce_g;
    s->src = -1;   // (no run-time scalars of its own; a constant gradient is keyed by value)
  }
  if (x->op == WK_OP_LINEAR_CE_BWD && x->nin == 5) s->attrs.i[2] = 1;
  progbuf pb = {.row_reg = -1, .row_src = -1};
  if (is_ew(x->op)) {
    s->op = WK_STEP_FUSED_EW;
    // emit the root itself as if inlined
    bool was_root = x->root;
    x->root = false;
    int out = emit_value(r, &pb, i, x->t);
    x->root = was_root;
    if (!finish_prog(&pb, out, &s->prog)) return false;
    s->nin = pb.nops;
    memcpy(s->in, pb.ops, sizeof(wk_operand) * (size_t)pb.nops);
    *pred = pb.row_src;
    return true;
  }
  s->op = x->op;
  s->nin = x->nin;
  for (int k = 0; k < x->nin; k++) s->in[k] = operand_self(r, x->in[k]);
  if (x->scale_src) { // a matmul scaled by a mul_scalar's run-time scalar: see plan.h
    memset(&s->attrs, 0, sizeof s->attrs);
    s->attrs.i[1] = 1;
    s->attrs.f[0] = r->n[x->scale_src - 1].t->attrs.f[0];
    s->src = -1;
    s->scale_src = x->scale_src - 1;
  }
  if (x->op == WK_OP_LORA) { // wk_lora's node: x (contiguous, checked when built) and out as rows
    rows_2d(&s->in[0]);
    rows_2d(&s->out);
    s->scale_src = i;
  }
  if (takes_prologue(x->op)) {
    int src = x->in[0];
    const irnode *c = &r->n[src];
    if (c->rowfused) { // reads the previous stage's row directly
      s->in[0].slot = -1;
      *pred = src;
    } else if (!c->leaf && !c->root && c->op != WK_OP_VIEW) {
      int out = emit_value(r, &pb, src, c->t);
      if (!finish_prog(&pb, out, &s->prog)) return false;
      s->npro = pb.nops;
      memcpy(s->pro_in, pb.ops, sizeof(wk_operand) * (size_t)pb.nops);
      s->in[0].slot = -1; // computed by the prologue
      *pred = pb.row_src;
    }
  }
  return true;
}

// ---- memory plan ----
typedef struct { int64_t off, size; } span;

static int64_t arena_place(span *used, int *nused, int64_t size) {
  // first fit among the gaps between live spans (kept sorted by offset)
  int64_t at = 0;
  int k = 0;
  for (; k < *nused; k++) {
    if (used[k].off - at >= size) break;
    if (used[k].off + used[k].size > at) at = used[k].off + used[k].size;
  }
  memmove(&used[k + 1], &used[k], sizeof(span) * (size_t)(*nused - k));
  used[k] = (span){at, size};
  (*nused)++;
  return at;
}
static void arena_release(span *used, int *nused, int64_t off) {
  for (int k = 0; k < *nused; k++)
    if (used[k].off == off) {
      memmove(&used[k], &used[k + 1], sizeof(span) * (size_t)(*nused - k - 1));
      (*nused)--;
      return;
    }
}

static size_t node_bytes(const irnode *x) {
  size_t b = wk_dtype_bytes(x->half_out ? WK_BF16 : x->t->dtype, wk_numel(x->t));
  if (x->ce_dx) return wk_linear_ce_dx_end(b, x->ce_dx);
  return x->lse_rows ? wk_sdpa_lse_end(b, x->lse_rows) : b;
}
static int64_t padded(size_t b) { return (int64_t)((b + 63) & ~(size_t)63); }

static bool inlined(const irnode *x) { return !x->leaf && !x->root && x->op != WK_OP_VIEW; }

// Marks every stored node that step `k` (computing node i) reads.
static void collect_reads(ir *r, int i, int k, bool top) {
  irnode *x = &r->n[i];
  if (!top && !inlined(x)) {
    int b = x->op == WK_OP_VIEW && !x->leaf ? x->base : i;
    if (r->n[b].last_use < k) r->n[b].last_use = k;
    return;
  }
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) collect_reads(r, in[q], k, false);
}

// How step code rooted at i reads the storage of node j: counts every read, and
// those that are not plain reads of j itself (through a view of j, say).
static void count_reads(const ir *r, int i, int j, bool top, int *reads, int *strided) {
  const irnode *x = &r->n[i];
  if (!top && !inlined(x)) {
    int b = x->op == WK_OP_VIEW && !x->leaf ? x->base : i;
    if (b == j) { (*reads)++; *strided += i != j; }
    return;
  }
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) count_reads(r, in[q], j, false, reads, strided);
}

// Whether node j's buffer may become x's output at step k: a stored root that dies
// there, not a result or read after the plan, of x's shape and dtype, dense from its
// start.
static bool buffer_passes(const ir *r, int j, const irnode *x, int k) {
  const irnode *y = &r->n[j];
  return !y->leaf && y->root && !y->escapes && !y->target && !y->half_out && y->last_use == k &&
         same_shape(y->t, x->t) && y->t->dtype == x->t->dtype && wk_is_contiguous(y->t) && y->t->offset == 0;
}

// The addend in[a] of a kernel that adds it as it stores may lend x its buffer at step
// k: it dies there, and no other input is it or a view of it (those would read
// elements the kernel already overwrote). Its index, or -1.
static int addend_in_place(ir *r, int i, int k, const int *in, int nin, int a) {
  const int j = in[a];
  if (!buffer_passes(r, j, &r->n[i], k)) return -1;
  for (int q = 0; q < nin; q++) {
    const int b = aliases(&r->n[in[q]]) ? r->n[in[q]].base : in[q];
    if (q != a && (in[q] == j || b == j)) return -1;
  }
  return j;
}

// A CUDA half-weight matmul of more than 8 rows with a dense f32 addend (a residual)
// read last here: its output takes the addend's buffer and cuBLAS adds the product
// into it (halfmm.cu, beta = 1), instead of a kernel that reads the product and the
// addend back and writes the sum (k_add_end: 15 us a [4088, 896] residual on an H200,
// 1.4 ms of a Qwen2.5-0.5B training step). Not where another input is the addend or
// a view of it, and not on the CPU, whose kernel writes the product before adding.
static int qmm_addend_in_place(ir *r, int i, int k) {
  irnode *x = &r->n[i];
  const int64_t n = x->t->ndim ? x->t->shape[x->t->ndim - 1] : 0;
  if (x->t->device != WK_CUDA || x->t->dtype != WK_F32 || n <= 0 || wk_numel(x->t) / n <= 8) return -1;
  return addend_in_place(r, i, k, x->qmm_in, x->qmm_nin, 2);
}

// The input that an elementwise root at step k may overwrite: it dies here, has
// the output's shape and dtype, and every read of it is element i for output i.
// And a cross-entropy backward may overwrite its logits: both backends' kernels read a
// row whole (its max and sum) before writing it, element i from element i. A large
// vocabulary's logits and their gradient are the largest tensors of an LM's training
// step (Qwen2.5-0.5B, batch 8 x 512: 2.5 GB each in f32). And a half-weight matmul
// may take its residual's buffer (qmm_addend_in_place).
static int inplace_candidate(ir *r, int i, int k) {
  irnode *x = &r->n[i];
  if (x->op == WK_OP_CROSS_ENTROPY_BWD && !kern_fused(x)) return buffer_passes(r, x->in[0], x, k) ? x->in[0] : -1;
  if (x->qmm & WK_QMM_ADD) return qmm_addend_in_place(r, i, k);
  // (the norm's kernel reads each addend element right before it stores that element)
  if (x->nadd) return addend_in_place(r, i, k, x->nadd_in, x->nadd_nin, x->nadd_nin - 1);
  if (!is_ew(x->op) || kern_fused(x) || x->half_out) return -1;
  for (int q = 0; q < x->nin; q++) {
    int j = x->in[q];
    irnode *y = &r->n[j];
    if (y->leaf || !y->root || y->escapes || y->target || y->last_use != k) continue;
    if (!same_shape(y->t, x->t) || y->t->dtype != x->t->dtype) continue;
    int reads = 0, strided = 0;
    count_reads(r, i, j, true, &reads, &strided);
    if (strided) continue; // a transposed or shifted read would see overwritten values
    return j;
  }
  return -1;
}

// ---- horizontal fusion (CUDA): independent roots with one program, one launch ----
// An optimizer step updates every parameter with the same elementwise programs
// (AdamW: the two moments, then the parameter), one kernel per tensor: a LoRA step
// of Qwen2.5-0.5B launches hundreds of tiny kernels. Here roots whose programs
// match (same instructions and non-run-time attributes, same operand dtypes, every
// operand either dense in the output's shape or one value) and that do not depend
// on one another are scheduled next to each other; the CUDA backend runs such a
// group as one launch over a table of its tensors, each with its own run-time
// scalars (cuda ew.cu). Why a planner pass and not a dedicated AdamW op: the
// optimizer stays a plain lazy graph (autograd, CPU and every other consumer of
// its tensors unchanged; SGD and anything alike get it too), and the graph replay
// needs nothing new. The schedule is a list schedule in the original order; a
// root joins its group with every ready root of the same program, and an update of
// a realized tensor (it reads a leaf of its own shape: a parameter or a moment)
// whose sink-closed group is not complete yet waits until nothing else is ready
// (its gradient inputs live longer: the trainer's clipping needs them all anyway).
// Groups of fewer than HGROUP_MIN roots stay separate steps. The group's members
// come out as consecutive steps: the head has chain = the group's size, the members
// chain = -1 (a FUSED_EW head is never a row chain's).

// Instructions whose scalars are run-time values of each member (cuda_internal.h's
// wkc_rt_reads): they may differ within a group. Every other attribute must match.
static bool runtime_scalar(const wk_ew_instr *in) {
  if (in->src < 0) return false;
  switch (in->op) {
    case WK_OP_ARANGE: case WK_OP_RAND: case WK_OP_RANDN: case WK_OP_DROPOUT:
    case WK_OP_ADD_SCALAR: case WK_OP_MUL_SCALAR: case WK_OP_POW_SCALAR: return true;
    default: return false;
  }
}

static bool hgroup_eligible(const wk_step *s) {
  // (a single element: its operands' forms are ambiguous, and one launch is all it costs)
  if (s->op != WK_STEP_FUSED_EW || s->device != WK_CUDA || wk_operand_form(&s->out) != WK_FORM_DENSE) return false;
  int64_t n = 1;
  for (int d = 0; d < s->out.ndim; d++) n *= s->out.shape[d];
  if (n < 2) return false;
  for (int k = 0; k < s->nin; k++) if (!wk_operand_form(&s->in[k])) return false;
  for (int q = 0; q < s->prog.n; q++) if (s->prog.code[q].op == WK_EW_LOAD_ROW) return false;
  return true;
}

static bool same_program(const wk_step *a, const wk_step *b) {
  if (a->prog.n != b->prog.n || a->prog.nregs != b->prog.nregs || a->prog.out_reg != b->prog.out_reg ||
      a->nin != b->nin || a->out.dtype != b->out.dtype)
    return false;
  for (int k = 0; k < a->nin; k++)
    if (a->in[k].dtype != b->in[k].dtype || wk_operand_form(&a->in[k]) != wk_operand_form(&b->in[k])) return false;
  for (int q = 0; q < a->prog.n; q++) {
    const wk_ew_instr *x = &a->prog.code[q], *y = &b->prog.code[q];
    if (x->op != y->op || x->dst != y->dst || x->a != y->a || x->b != y->b || x->c != y->c) return false;
    if (runtime_scalar(x) != runtime_scalar(y)) return false;
    if (!runtime_scalar(x) && memcmp(&x->attrs, &y->attrs, sizeof x->attrs)) return false;
  }
  return true;
}

// Roots that root i reads (through the code inlined into it), appended to *out.
static void root_deps(const ir *r, int i, bool top, const int *pos, int *out, int *n) {
  const irnode *x = &r->n[i];
  if (!top && !inlined(x)) {
    int b = x->op == WK_OP_VIEW && !x->leaf ? x->base : i;
    if (pos[b] >= 0) out[(*n)++] = pos[b];
    return;
  }
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) root_deps(r, in[q], false, pos, out, n);
}
static int count_reads_of(const ir *r, int i, bool top) {
  const irnode *x = &r->n[i];
  if (!top && !inlined(x)) return 1;
  int n = 0, nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) n += count_reads_of(r, in[q], false);
  return n;
}
// Whether the code rooted at i reads a realized tensor of shape t (a parameter, a moment).
static bool reads_leaf_like(const ir *r, int i, bool top, const wk_tensor *t) {
  const irnode *x = &r->n[i];
  if (!top && !inlined(x)) {
    int b = x->op == WK_OP_VIEW && !x->leaf ? x->base : i;
    return r->n[b].leaf && same_shape(x->t, t);
  }
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) if (reads_leaf_like(r, in[q], false, t)) return true;
  return false;
}

// ---- small sinks pulled up ----
// The topological order is a depth-first walk of the targets in the caller's order:
// a training step's gradients, parameter by parameter. A LoRA weight gradient (dB =
// (s dy)^T (x A), [r, n] from [tokens, n]) hangs off the backward's main chain, so the
// walk reaches it only once the whole chain is done, and its large input (s dy, a
// layer's) stays live until then: 48 x 80 MB in an all-linear Qwen2.5-0.5B step at
// batch 8 x 512. So a root whose output is at most an eighth of its largest input
// moves up to just after the last root it reads, with the elementwise roots that only
// it reads (a product recomputed for it: ops_matmul.c): its large inputs die where
// the chain is done with them. Values are unchanged (the same ops on the same inputs).
#define SINK_RATIO 8

// Whether root node d is read by node i alone (directly or through views).
static bool read_only_by(const ir *r, int d, int i) {
  while (r->n[d].uses == 1) {
    d = r->n[d].consumer;
    if (d == i) return true;
    if (r->n[d].op != WK_OP_VIEW || r->n[d].leaf) return false;
  }
  return false;
}

// Whether the graph has in-place updates (set_slice), which order reads and writes the
// data flow does not show: the passes that reorder roots leave such graphs alone.
static bool has_inplace_updates(const ir *r) {
  for (int i = 0; i < r->count; i++)
    if (!r->n[i].dead && !r->n[i].leaf && r->n[i].op == WK_OP_SET_SLICE) return true;
  return false;
}

// pos[i]: node i's place among the roots, -1 for nodes that are not roots.
static void index_roots(const ir *r, const int *roots, int n, int *pos) {
  for (int i = 0; i < r->count; i++) pos[i] = -1;
  for (int k = 0; k < n; k++) pos[roots[k]] = k;
}

static void pull_up_small_sinks(ir *r, int *roots, int n) {
  if (has_inplace_updates(r)) return;
  int *pos = malloc(sizeof(int) * (size_t)(r->count + 1)), *deps = malloc(sizeof(int) * (size_t)(n + 1));
  int *movers = malloc(sizeof(int) * (size_t)(n + 1)), *tmp = malloc(sizeof(int) * (size_t)(n + 1));
  bool *mark = calloc((size_t)n + 1, sizeof *mark);
  if (!pos || !deps || !movers || !tmp || !mark) { free(pos), free(deps), free(movers), free(tmp), free(mark); return; }
  index_roots(r, roots, n, pos);
  for (int k = 0; k < n; k++) {
    const irnode *x = &r->n[roots[k]];
    if (x->op == WK_OP_TRANSFER || x->op == WK_OP_SET_SLICE || count_reads_of(r, roots[k], true) > n) continue;
    int nd = 0;
    root_deps(r, roots[k], true, pos, deps, &nd);
    size_t big = 0;
    for (int q = 0; q < nd; q++) {
      size_t b = node_bytes(&r->n[roots[deps[q]]]);
      if (b > big) big = b;
    }
    if (!nd || node_bytes(x) * SINK_RATIO > big) continue;
    int nm = 0, last = -1;
    for (int q = 0; q < nd; q++) {   // exclusive elementwise producers go along
      int d = roots[deps[q]];
      if (deps[q] < k && is_ew(r->n[d].op) && !kern_fused(&r->n[d]) && read_only_by(r, d, roots[k])) {
        if (!mark[deps[q]]) { mark[deps[q]] = true; movers[nm++] = deps[q]; }
      }
    }
    for (int q = 0; q < nd; q++) if (!mark[deps[q]] && deps[q] > last) last = deps[q];
    for (int m = 0; m < nm; m++) {
      int ndd = 0, *dd = deps + nd;
      if (nd + count_reads_of(r, roots[movers[m]], true) > n) { last = k; break; }
      root_deps(r, roots[movers[m]], true, pos, dd, &ndd);
      for (int q = 0; q < ndd; q++) if (!mark[dd[q]] && dd[q] > last) last = dd[q];
    }
    movers[nm++] = k;
    mark[k] = true;
    if (last + 1 < k) {   // roots[0..last], the movers in order, then the rest in order
      int t = 0;
      for (int q = 0; q <= last; q++) tmp[t++] = roots[q];
      for (int q = last + 1; q <= k; q++) if (mark[q]) tmp[t++] = roots[q];
      for (int q = last + 1; q <= k; q++) if (!mark[q]) tmp[t++] = roots[q];
      for (int q = last + 1; q <= k; q++) roots[q] = tmp[q], pos[roots[q]] = q;
    }
    for (int m = 0; m < nm; m++) mark[movers[m]] = false;
  }
  free(pos), free(deps), free(movers), free(tmp), free(mark);
}

// ---- transfers moved ----
// A download (a transfer to the host) ends the backend's replayed run of steps and
// waits for the device, and a device step scheduled after it launches on its own and
// waits again: a decode step's pick, cast for the next step's input, cost a launch and
// a wait outside the graph after each token's download. So each download moves down to
// just before the first root that reads it (or the end), never past an in-place update
// (set_slice), whose write it may have to read before.
// Small uploads (a decode step's token ids and positions) move the other way: up to
// just after the last root they read (the front, for a host tensor), but not past a
// host in-place update. The CUDA backend then does the uploads ahead of every kernel
// from its graph's head, without a copy node between kernels (graph.cu).
#define UPLOAD_EARLY_MAX (1 << 20)
static bool is_download(const irnode *x) {
  return x->op == WK_OP_TRANSFER && x->t->device == WK_CPU && x->t->in[0]->device != WK_CPU;
}
static bool is_small_upload(const irnode *x) {
  return x->op == WK_OP_TRANSFER && x->t->device != WK_CPU && x->t->in[0]->device == WK_CPU &&
         node_bytes(x) <= UPLOAD_EARLY_MAX;
}

// pos, deps: scratch of r->count + 1 entries.
static void push_downloads_down(ir *r, int *roots, int n, int *pos, int *deps) {
  for (int k = n - 1; k >= 0; k--) {
    if (!is_download(&r->n[roots[k]])) continue;
    index_roots(r, roots, n, pos);
    int j = k + 1;
    for (; j < n && r->n[roots[j]].op != WK_OP_SET_SLICE; j++) {
      int nd = 0;
      bool reads = false;
      if (count_reads_of(r, roots[j], true) > r->count) break;
      root_deps(r, roots[j], true, pos, deps, &nd);
      for (int q = 0; q < nd && !reads; q++) reads = deps[q] == k;
      if (reads) break;
    }
    int d = roots[k];   // roots k+1 .. j-1 move up one; the download goes after them
    memmove(&roots[k], &roots[k + 1], sizeof(int) * (size_t)(j - 1 - k));
    roots[j - 1] = d;
  }
}

static void pull_uploads_up(ir *r, int *roots, int n, int *pos, int *deps) {
  for (int k = 0; k < n; k++) {
    if (!is_small_upload(&r->n[roots[k]]) || count_reads_of(r, roots[k], true) > r->count) continue;
    index_roots(r, roots, n, pos);
    int nd = 0, last = -1;
    root_deps(r, roots[k], true, pos, deps, &nd);
    for (int q = 0; q < nd; q++) if (deps[q] > last) last = deps[q];
    for (int j = last + 1; j < k; j++) {   // not past earlier uploads (they keep their order),
      const irnode *x = &r->n[roots[j]];    // nor a host in-place update (it may write the source)
      if (is_small_upload(x) || (x->op == WK_OP_SET_SLICE && x->t->device == WK_CPU)) last = j;
    }
    int u = roots[k];   // roots last+1 .. k-1 move down one; the upload goes before them
    memmove(&roots[last + 2], &roots[last + 1], sizeof(int) * (size_t)(k - last - 1));
    roots[last + 1] = u;
  }
}

static void move_transfers(ir *r, int *roots, int n) {
  bool any = false;
  for (int k = 0; k < n && !any; k++) any = is_download(&r->n[roots[k]]) || is_small_upload(&r->n[roots[k]]);
  int *pos = any ? malloc(sizeof(int) * (size_t)(r->count + 1)) : NULL;
  int *deps = pos ? malloc(sizeof(int) * (size_t)(r->count + 1)) : NULL;
  if (deps) {
    push_downloads_down(r, roots, n, pos, deps);
    pull_uploads_up(r, roots, n, pos, deps);
  }
  free(pos);
  free(deps);
}

static bool horizontal_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_HFUSE", &on); }

typedef struct {
  int n, nclass;
  int *cls, *csize;            // program class of each root (-1: none), members per class
  int *dstart, *dep;           // root k reads roots dep[dstart[k] .. dstart[k + 1]) (-1: not a root)
  int *cstart, *cons;          // root k is read by roots cons[cstart[k] .. cstart[k + 1])
  int *indeg, *heap, nh, *dlist, nd, *chead, *cnext, *order, no, *grp;
  bool *defer, *done;
} hsched;

// Smallest group worth a launch of its own: the group kernel interprets the program
// (no generated kernel) with each block looping over a 4096-element chunk, so it
// costs more than one generated launch; measured on an H200 (commit cebd9c3), two
// parameters' AdamW grouped made lora_train_step 173 -> 181-199 us, while 28
// parameters' made the tiny-Qwen2 trainer step 1.7-2.0 -> 1.5 ms.
#define HGROUP_MIN 4
// A group saves launches, which matters only for small steps; and its members run
// when the first of them may, so a new value's buffer lives from there. A step past
// HGROUP_MAX elements that makes a new value (not an update of a parameter or
// moment) runs where it stands: in a Qwen2.5-0.5B training step the 24 layers' SiLU
// backward sigmoids (80 MB each) were grouped and computed all at the start of the
// backward, holding 1.9 GB at the step's peak.
#define HGROUP_MAX (1 << 20)

static bool grouped(const hsched *h, int k) { return h->cls[k] >= 0 && h->csize[h->cls[k]] >= HGROUP_MIN; }

static void heap_push(hsched *h, int v) {
  int i = h->nh++;
  h->heap[i] = v;
  while (i && h->heap[(i - 1) / 2] > h->heap[i]) {
    int p = (i - 1) / 2, t = h->heap[p];
    h->heap[p] = h->heap[i];
    h->heap[i] = t;
    i = p;
  }
}
static int heap_pop(hsched *h) {
  int top = h->heap[0];
  h->heap[0] = h->heap[--h->nh];
  for (int i = 0;;) {
    int l = 2 * i + 1, m = i;
    if (l < h->nh && h->heap[l] < h->heap[m]) m = l;
    if (l + 1 < h->nh && h->heap[l + 1] < h->heap[m]) m = l + 1;
    if (m == i) break;
    int t = h->heap[m];
    h->heap[m] = h->heap[i];
    h->heap[i] = t;
    i = m;
  }
  return top;
}
static void make_ready(hsched *h, int k) {
  if (grouped(h, k)) { h->cnext[k] = h->chead[h->cls[k]]; h->chead[h->cls[k]] = k; }
  if (h->defer[k]) h->dlist[h->nd++] = k;
  else heap_push(h, k);
}
static void emit(hsched *h, int k) {
  h->order[h->no++] = k;
  h->done[k] = true;
  for (int q = h->cstart[k]; q < h->cstart[k + 1]; q++)
    if (--h->indeg[h->cons[q]] == 0) make_ready(h, h->cons[q]);
}
static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void hsched_free(hsched *h) {
  free(h->cls), free(h->csize), free(h->dstart), free(h->dep), free(h->cstart), free(h->cons), free(h->indeg);
  free(h->heap), free(h->dlist), free(h->chead), free(h->cnext), free(h->order), free(h->defer), free(h->done);
}

// Reorders roots[0..n) and fills grp[k] (group size at a head, -1 in members, 0
// elsewhere). False (roots untouched) when there is nothing to group.
static bool horizontal_schedule(ir *r, int *roots, int n, int *grp) {
  if (!horizontal_enabled() || n < 2 || has_inplace_updates(r)) return false;
  hsched h = {.n = n, .grp = grp};
  h.cls = malloc(sizeof(int) * (size_t)n);
  h.csize = calloc((size_t)n, sizeof(int));
  int *rep = malloc(sizeof(int) * (size_t)n);
  wk_step *st = calloc((size_t)n, sizeof *st);
  bool ok = h.cls && h.csize && rep && st, any = false;
  for (int k = 0; ok && k < n; k++) {
    h.cls[k] = -1;
    irnode *x = &r->n[roots[k]];
    if (!is_ew(x->op) || kern_fused(x) || x->t->device != WK_CUDA) continue;
    int pred;
    if (!build_step(r, roots[k], &st[k], &pred)) { ok = false; break; }
    if (pred >= 0 || !hgroup_eligible(&st[k]) || (wk_numel(x->t) > HGROUP_MAX && !reads_leaf_like(r, roots[k], true, x->t)))
      continue;
    int c = 0;
    while (c < h.nclass && !same_program(&st[rep[c]], &st[k])) c++;
    if (c == h.nclass) rep[h.nclass++] = k;
    h.cls[k] = c;
    any |= ++h.csize[c] >= HGROUP_MIN;
  }
  for (int k = 0; st && k < n; k++) free(st[k].prog.code);
  free(st);
  free(rep);
  if (!ok || !any) { hsched_free(&h); return false; }
  // the dependencies between roots, both ways
  int *pos = malloc(sizeof(int) * (size_t)(r->count + 1));
  h.dstart = calloc((size_t)n + 1, sizeof(int));
  h.cstart = calloc((size_t)n + 2, sizeof(int));
  h.indeg = calloc((size_t)n, sizeof(int));
  h.heap = malloc(sizeof(int) * (size_t)n);
  h.dlist = malloc(sizeof(int) * (size_t)n);
  h.chead = malloc(sizeof(int) * (size_t)h.nclass);
  h.cnext = malloc(sizeof(int) * (size_t)n);
  h.order = malloc(sizeof(int) * (size_t)n);
  h.defer = calloc((size_t)n, sizeof(bool));
  h.done = calloc((size_t)n, sizeof(bool));
  ok = pos && h.dstart && h.cstart && h.indeg && h.heap && h.dlist && h.chead && h.cnext && h.order && h.defer && h.done;
  if (ok) {
    index_roots(r, roots, n, pos);
    for (int k = 0; k < n; k++) h.dstart[k + 1] = h.dstart[k] + count_reads_of(r, roots[k], true);
    h.dep = malloc(sizeof(int) * (size_t)(h.dstart[n] + 1));
    h.cons = malloc(sizeof(int) * (size_t)(h.dstart[n] + 1));
    ok = h.dep && h.cons;
  }
  if (ok) {
    for (int k = 0; k < n; k++) {
      int m = 0;
      root_deps(r, roots[k], true, pos, h.dep + h.dstart[k], &m);
      for (int q = h.dstart[k] + m; q < h.dstart[k + 1]; q++) h.dep[q] = -1;
      for (int q = h.dstart[k]; q < h.dstart[k + 1]; q++)
        if (h.dep[q] >= 0) { h.indeg[k]++; h.cstart[h.dep[q] + 2]++; }
    }
    for (int k = 0; k < n; k++) h.cstart[k + 2] += h.cstart[k + 1];
    for (int k = 0; k < n; k++)
      for (int q = h.dstart[k]; q < h.dstart[k + 1]; q++)
        if (h.dep[q] >= 0) h.cons[h.cstart[h.dep[q] + 1]++] = k;
    // A grouped root whose consumers are all such roots (sink-closed: nothing else
    // waits for it) and that updates a realized tensor waits for its whole group.
    bool *movable = calloc((size_t)n, sizeof(bool));
    ok = movable != NULL;
    for (int k = n - 1; ok && k >= 0; k--) {
      movable[k] = grouped(&h, k);
      for (int q = h.cstart[k]; q < h.cstart[k + 1] && movable[k]; q++) movable[k] = movable[h.cons[q]];
      h.defer[k] = movable[k] && reads_leaf_like(r, roots[k], true, r->n[roots[k]].t);
    }
    free(movable);
  }
  free(pos);
  if (ok) {
    for (int c = 0; c < h.nclass; c++) h.chead[c] = -1;
    for (int k = 0; k < n; k++) if (!h.indeg[k]) make_ready(&h, k);
    int *batch = malloc(sizeof(int) * (size_t)n);
    ok = batch != NULL;
    while (ok) {
      int k = -1;
      while (h.nh && k < 0) { k = heap_pop(&h); if (h.done[k]) k = -1; }
      for (int q = 0; k < 0 && q < h.nd; q++) // nothing else is ready: the waiting updates
        if (!h.done[h.dlist[q]] && (k < 0 || h.dlist[q] < k)) k = h.dlist[q];
      if (k < 0) break;
      if (!grouped(&h, k)) { emit(&h, k); continue; }
      int m = 0, c = h.cls[k];   // every ready root of k's program, in their original order
      for (int j = h.chead[c]; j >= 0; j = h.cnext[j]) batch[m++] = j;
      h.chead[c] = -1;
      qsort(batch, (size_t)m, sizeof *batch, cmp_int);
      int start = h.no;
      for (int q = 0; q < m; q++) emit(&h, batch[q]);
      for (int q = 0; q < m && m >= HGROUP_MIN; q++) grp[start + q] = q ? -1 : m;
    }
    free(batch);
    ok = ok && h.no == n;  // every root scheduled (the dependencies form no cycle)
  }
  bool grouped_any = false;
  for (int k = 0; ok && k < n; k++) grouped_any |= grp[k] > 0;
  if (ok && grouped_any) {
    int *tmp = malloc(sizeof(int) * (size_t)n);
    if (tmp) {
      for (int k = 0; k < n; k++) tmp[k] = roots[h.order[k]];
      memcpy(roots, tmp, sizeof(int) * (size_t)n);
      free(tmp);
    } else ok = false;
  }
  if (!ok || !grouped_any) memset(grp, 0, sizeof(int) * (size_t)n);
  hsched_free(&h);
  return ok && grouped_any;
}

// ---- sibling steps (CUDA): one launch ----
// A layer's q, k and v projections (and gate and up) read one x; its q and k RoPE read
// one position; its k and v cache writes one start. Such siblings are made consecutive
// steps and marked as a group (head chain = n, members -1), which the CUDA backend runs
// as one launch (halfmm.cu's grouped GEMV, nn.cu's grouped RoPE / set_slice). A sibling
// moves up next to the first of its group when every root it reads comes before that
// first one and it reads no tensor an in-place update of this graph writes; a cache
// write moves only past roots that neither read nor write its cache. Siblings are looked
// for among the next SIB_WINDOW roots, at most SIB_MAX a group (the kernels' limit).
// WICK_CUDA_QGROUP=0 turns it off.
#define SIB_MAX 4
#define SIB_WINDOW 16

// The sibling key of root i (what its group shares: x, the position, the start) and
// its kind, or -1 when it joins no group.
static int sibling_key(const ir *r, int i, int *kind) {
  const irnode *x = &r->n[i];
  if (x->t->device != WK_CUDA && !(x->op == WK_OP_SET_SLICE && r->n[x->base].t->device == WK_CUDA)) return -1;
  if (x->qmm) {
    if (x->qmm_plain) return -1;
    *kind = 1;
    return (x->qmm & ~(WK_QMM_ADD | WK_QMM_NORM | WK_QMM_SILU)) == 0 ? x->qmm_in[0] : -1;   // x or the normed h
  }
  if (is_half_qmm(r, i)) return *kind = 1, x->in[0];
  if (x->op == WK_OP_ROPE && !x->leaf && x->nin >= 2 && r->n[x->in[1]].t->dtype == WK_I32) return *kind = 2, x->in[1];
  if (x->op == WK_OP_SET_SLICE && !x->leaf && x->nin == 3) return *kind = 3, x->in[2];
  return -1;
}

// Whether root j may run at position `at` (before the roots at positions at..jpos-1).
static bool may_move(ir *r, const int *roots, int at, int jpos, const int *pos, int *deps, const bool *written) {
  int i = roots[jpos], n = 0;
  const irnode *x = &r->n[i];
  root_deps(r, i, true, pos, deps, &n);
  for (int q = 0; q < n; q++)
    if (deps[q] >= at) return false;
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) {   // reads of in-place-updated tensors keep their place
    int b = aliases(&r->n[in[q]]) ? r->n[in[q]].base : in[q];
    if (written[b] && !(x->op == WK_OP_SET_SLICE && q == 0)) return false;
  }
  if (x->op == WK_OP_SET_SLICE)
    for (int m = at; m < jpos; m++) {
      int reads = 0, strided = 0, rm = roots[m];
      count_reads(r, rm, x->base, true, &reads, &strided);
      if (reads || (aliases(&r->n[rm]) && r->n[rm].base == x->base)) return false;
    }
  return true;
}

// ---- decode attention (CUDA): one launch ----
// A decode step's attention over a cache comes out of the sibling grouping as a RoPE
// group (q, k), a cache-write group (k, v) and the SDPA reading the cache through
// kv_len with one query row. Where those follow each other within a few roots, linked
// as such (the SDPA reads the first group's q and both writes; the k write stores the
// other RoPE), and whatever lies between them may run before them (the uploads of the
// positions), they become one group [RoPE q, RoPE k, write k, write v, SDPA]
// (WK_DECODE_ATTN_GROUP), which attn.cu runs as one launch: three launches' fixed costs
// and the round trips of q and the new key through memory go.
// WICK_CUDA_ATTN_GROUP=0 turns it off.
#define ATTN_GROUP_WINDOW 8
static bool attn_group_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_ATTN_GROUP", &on); }

// The group's roots in its order, if the RoPE group at k, the write group at w and the
// SDPA at e are linked as a decode layer's attention.
static bool decode_attn_order(const ir *r, const int *roots, int k, int w, int e, int order[WK_DECODE_ATTN_GROUP]) {
  const irnode *x = &r->n[roots[e]];
  if (!x->t->attrs.i[1] || x->t->shape[2] != 1 || x->lse_rows || x->t->device != WK_CUDA) return false;
  int q = x->in[0], ks = x->in[1], vs = x->in[2], kr = roots[k] == q ? roots[k + 1] : roots[k];
  bool ropes = (roots[k] == q || roots[k + 1] == q) && q != kr;
  bool writes = (roots[w] == ks && roots[w + 1] == vs) || (roots[w] == vs && roots[w + 1] == ks);
  if (!ropes || !writes || ks == vs || r->n[ks].in[1] != kr) return false;
  int o[WK_DECODE_ATTN_GROUP] = {q, kr, ks, vs, roots[e]};
  memcpy(order, o, sizeof o);
  return true;
}

static void group_decode_attention(ir *r, int *roots, int n, int *grp, int *pos, int *deps, const bool *written) {
  if (!attn_group_enabled()) return;
  for (int k = 0; k + 4 < n; k++) {
    if (grp[k] != 2 || r->n[roots[k]].op != WK_OP_ROPE) continue;
    int w = -1, e = -1, order[WK_DECODE_ATTN_GROUP];
    for (int m = k + 2; m < n && m < k + 4 + ATTN_GROUP_WINDOW && e < 0; m++) {
      wk_op op = r->n[roots[m]].op;
      if (w < 0 && grp[m] == 2 && op == WK_OP_SET_SLICE) w = m++;
      else if (w >= 0 && !grp[m] && op == WK_OP_SDPA) e = m;
      else if (grp[m] || !may_move(r, roots, k, m, pos, deps, written)) break;
    }
    if (e < 0 || !decode_attn_order(r, roots, k, w, e, order)) continue;
    int at = k;   // the roots between move before the group, in their order
    for (int m = k + 2; m < e; m++)
      if (m < w || m > w + 1) roots[at++] = roots[m];
    memcpy(&roots[at], order, sizeof order);
    for (int m = k; m <= e; m++) {
      grp[m] = m < at ? 0 : m == at ? WK_DECODE_ATTN_GROUP : -1;
      pos[roots[m]] = m;
    }
    k = e;
  }
}

static void group_siblings(ir *r, int *roots, int n, int *grp) {
  if (!qgroup_enabled() || n < 2) return;
  bool *written = calloc((size_t)r->count + 1, sizeof *written);
  int *pos = malloc(sizeof(int) * (size_t)(r->count + 1)), *deps = malloc(sizeof(int) * (size_t)(r->count + 1));
  if (!written || !pos || !deps) { free(written); free(pos); free(deps); return; }
  for (int i = 0; i < r->count; i++)
    if (!r->n[i].dead && !r->n[i].leaf && r->n[i].op == WK_OP_SET_SLICE) written[r->n[i].base] = true;
  index_roots(r, roots, n, pos);
  for (int k = 0; k < n; k++) {
    int kind = 0, kind2 = 0, key = grp[k] ? -1 : sibling_key(r, roots[k], &kind);
    if (key < 0) continue;
    if (kind == 1) {   // W and a bias: realized, not written here
      const irnode *x = &r->n[roots[k]];
      int nin = fused_nin(x);
      const int *in = fused_in(x);
      bool ok = true;
      for (int q = 1; q < nin; q++) ok = ok && r->n[in[q]].leaf && !written[in[q]];
      if (!ok) continue;
    }
    int cnt = 1;
    for (int j = k + 1; j < n && j <= k + SIB_WINDOW && cnt < SIB_MAX; j++) {
      if (grp[j] || sibling_key(r, roots[j], &kind2) != key || kind2 != kind) continue;
      if (!may_move(r, roots, k, j, pos, deps, written)) continue;
      int v = roots[j], at = k + cnt;
      memmove(&roots[at + 1], &roots[at], sizeof(int) * (size_t)(j - at));
      memmove(&grp[at + 1], &grp[at], sizeof(int) * (size_t)(j - at));
      roots[at] = v;
      grp[at] = 0;
      for (int m = at; m <= j; m++) pos[roots[m]] = m;
      cnt++;
    }
    if (cnt < 2) continue;
    grp[k] = cnt;
    for (int m = 1; m < cnt; m++) grp[k + m] = -1;
    k += cnt - 1;
  }
  group_decode_attention(r, roots, n, grp, pos, deps, written);
  free(written);
  free(pos);
  free(deps);
}

// ---- LoRA chains (CUDA): one launch ----
// One-row LoRA calls in a row, each reading the previous one's output (which nothing
// else reads) and all sharing W, A and B, are marked as a group (head chain = n,
// members -1): lora.cu runs the chain as one launch that keeps W on the chip. Unlike
// the sibling groups its members run in order (each hands its output to the next), so a
// call's output lives only until the next call has read it. Only chains the backend
// runs as one launch are grouped (its lora_chain; WICK_CUDA_LORA_CHAIN=0 turns it off).
static bool is_lora(const irnode *x) { return x->lora || (!x->leaf && x->op == WK_OP_LORA); }

// A one-row f32 LoRA call on CUDA.
static bool lora_row_call(const irnode *x) {
  const wk_tensor *t = x->t;
  return is_lora(x) && t->device == WK_CUDA && t->dtype == WK_F32 && t->ndim >= 1 && wk_numel(t) == t->shape[t->ndim - 1];
}

// Whether the backend runs chains of call x's shapes as one launch.
static bool lora_chain_backend(const ir *r, const irnode *x) {
  const wk_tensor *t = x->t, *in = r->n[fused_in(x)[0]].t, *a = r->n[fused_in(x)[2]].t;
  const wk_backend *b = wk_backend_get(WK_CUDA);
  return b && b->lora_chain && a->ndim == 2 && b->lora_chain(in->shape[in->ndim - 1], t->shape[t->ndim - 1], a->shape[1]);
}

// Whether root b continues a LoRA chain ending with root a (then of a's shapes: the
// same W, A and B, and x of b is a's output).
static bool lora_chain_links(const ir *r, int a, int b) {
  const irnode *x = &r->n[a], *y = &r->n[b];
  if (!lora_row_call(y) || x->uses != 1 || x->target || x->escapes) return false;
  const int *xin = fused_in(x), *yin = fused_in(y);
  return yin[0] == a && yin[1] == xin[1] && yin[2] == xin[2] && yin[3] == xin[3];
}

static void group_lora_chains(const ir *r, const int *roots, int n, int *grp) {
  for (int k = 0; k < n; k++) {
    if (grp[k] || !lora_row_call(&r->n[roots[k]])) continue;
    int cnt = 1;
    while (k + cnt < n && !grp[k + cnt] && lora_chain_links(r, roots[k + cnt - 1], roots[k + cnt])) cnt++;
    if (cnt >= 2 && lora_chain_backend(r, &r->n[roots[k]])) {   // asked once a chain
      grp[k] = cnt;
      for (int m = 1; m < cnt; m++) grp[k + m] = -1;
    }
    k += cnt - 1;
  }
}

// ---- driver ----
static void plan_fail(wk_plan *p, const char *why) {
  wk_error(WK_ERR_OOM, "compile: %s", why);
  wk_plan_free(p);
}

wk_plan *wk_plan_compile(const wk_topo *g, int ntargets, const int *targets) {
  ir r;
  if (!ir_build(&r, g, ntargets, targets)) { wk_error(WK_ERR_OOM, "compile: out of memory"); return NULL; }
  wk_plan *p = calloc(1, sizeof *p);
  if (!p) { free(r.n); wk_error(WK_ERR_OOM, "compile: out of memory"); return NULL; }
  p->ngraph = g->n;
  cse(&r);
  fold_constants(&r);
  count_uses(&r);
  rewrite_pass(&r, match_lora);
  rewrite_pass(&r, match_epilogue);
  if (mm_scale_enabled()) {
    rewrite_pass(&r, match_scaled_product);
    rewrite_pass(&r, match_scaled_operand);
  }
  if (qswiglu_enabled()) rewrite_pass(&r, match_qswiglu);
  if (qnorm_enabled()) rewrite_pass(&r, match_qnorm);
  if (qepi_enabled()) rewrite_pass(&r, match_qepilogue);
  if (qsilu_enabled()) rewrite_pass(&r, match_qsilu);
  if (normw_enabled()) rewrite_pass(&r, match_norm_weights);
  if (sdpa_lse_enabled()) rewrite_pass(&r, match_sdpa_lse);
  if (ce_grad_enabled()) rewrite_pass(&r, match_linear_ce_grad);
  if (norm_add_enabled()) rewrite_pass(&r, match_norm_bwd_add);
  mark_roots(&r);
  bf16_inputs(&r);

  // schedule: roots in topological order
  int *roots = malloc(sizeof(int) * (size_t)(r.count + 1));
  if (!roots) { free(r.n); plan_fail(p, "out of memory"); return NULL; }
  int nroots = 0, live = 0;
  for (int i = 0; i < r.count; i++) {
    irnode *x = &r.n[i];
    if (x->dead || x->leaf) continue;
    live++;
    if (x->root) { x->step = nroots; roots[nroots++] = i; }
  }
  p->fused_ops = live - nroots;
  for (int i = 0; i < r.count; i++) p->fused_ops -= !r.n[i].dead && !r.n[i].leaf && r.n[i].op == WK_OP_VIEW;
  int *grp = calloc((size_t)nroots + 1, sizeof *grp);
  if (!grp) { free(roots); free(r.n); plan_fail(p, "out of memory"); return NULL; }
  pull_up_small_sinks(&r, roots, nroots);
  move_transfers(&r, roots, nroots);
  horizontal_schedule(&r, roots, nroots, grp);
  group_siblings(&r, roots, nroots, grp);
  group_lora_chains(&r, roots, nroots, grp);
  for (int k = 0; k < nroots; k++) r.n[roots[k]].step = k;
  // a group is one launch: what any member reads stays live until its last member
  // (but a LoRA chain's calls run in order)
  for (int k = 0, end = 0; k < nroots; k++) {
    if (is_lora(&r.n[roots[k]])) end = k;
    else if (grp[k] >= 0) end = k + (grp[k] > 0 ? grp[k] - 1 : 0);
    collect_reads(&r, roots[k], end, true);
  }

  // slots: leaves first, then escaping outputs, then arena intermediates
  int slot = 0;
  p->leaf_nodes = malloc(sizeof(int) * (size_t)(r.count + 1));
  p->outs = calloc((size_t)nroots + 1, sizeof *p->outs);
  p->arena_off = calloc((size_t)nroots + 1, sizeof *p->arena_off);
  span *used = malloc(sizeof(span) * (size_t)(nroots + 1));
  p->steps = calloc((size_t)nroots + 1, sizeof *p->steps);
  if (!p->leaf_nodes || !p->outs || !p->arena_off || !used || !p->steps) {
    free(grp); free(roots); free(used); free(r.n); plan_fail(p, "out of memory"); return NULL;
  }
  for (int i = 0; i < r.count; i++)
    if (r.n[i].leaf && !r.n[i].dead) { p->leaf_nodes[slot] = i; r.n[i].slot = slot++; }
  p->nleaves = slot;
  for (int i = 0; i < r.count; i++)   // an in-place update writes its destination's storage
    if (!r.n[i].dead && r.n[i].op == WK_OP_SET_SLICE && !r.n[i].leaf) r.n[i].slot = r.n[r.n[i].base].slot;
  for (int k = 0; k < nroots; k++) {
    irnode *x = &r.n[roots[k]];
    if ((!x->target && !x->escapes) || x->slot >= 0) continue;
    p->outs[p->nouts++] = (wk_plan_out){.node = roots[k], .slot = slot, .bytes = node_bytes(x), .base = roots[k]};
    x->slot = slot++;
  }
  // one arena per device; each packs its own intermediates
  int first_arena = slot, nused[WK_DEVICE_COUNT] = {0};
  int64_t peak[WK_DEVICE_COUNT] = {0};
  span *used_dev[WK_DEVICE_COUNT] = {used};
  for (int d = 1; d < WK_DEVICE_COUNT; d++) used_dev[d] = malloc(sizeof(span) * (size_t)(nroots + 1));
  int64_t *span_of = calloc((size_t)r.count + 1, sizeof *span_of); // arena offset per node
  // dying[k]: arena nodes whose last reader is step k (a linked list through next_dead)
  int *dying = malloc(sizeof(int) * (size_t)(nroots + 1)), *next_dead = malloc(sizeof(int) * (size_t)(r.count + 1));
  p->arena_dev = calloc((size_t)nroots + 1, sizeof *p->arena_dev);
  bool mem_ok = span_of && dying && next_dead && p->arena_dev;
  for (int d = 1; d < WK_DEVICE_COUNT; d++) mem_ok = mem_ok && used_dev[d];
  if (!mem_ok) {
    for (int d = 1; d < WK_DEVICE_COUNT; d++) free(used_dev[d]);
    free(dying); free(next_dead); free(span_of); free(grp); free(roots); free(used); free(r.n);
    plan_fail(p, "out of memory");
    return NULL;
  }
  for (int k = 0; k <= nroots; k++) dying[k] = -1;
  for (int k = 0; k < nroots; k++) {
    int i = roots[k];
    irnode *x = &r.n[i];
    // spans whose last reader was the previous step are free again
    for (int q = k > 0 ? dying[k - 1] : -1; q >= 0; q = next_dead[q])
      if (r.n[q].last_use != -3) {
        int d = (int)r.n[q].t->device;
        arena_release(used_dev[d], &nused[d], span_of[q]);
        r.n[q].last_use = -3;
      }
    if (x->slot >= 0) continue;
    int dev = (int)x->t->device;
    int64_t size = padded(node_bytes(x));
    int j = grp[k] ? -1 : inplace_candidate(&r, i, k);   // a group's members read all of its inputs
    int64_t off;
    if (j >= 0 && r.n[j].slot >= first_arena && padded(node_bytes(&r.n[j])) == size && (int)r.n[j].t->device == dev) {
      off = span_of[j];
      r.n[j].last_use = -3; // its span passes to x
    } else {
      off = arena_place(used_dev[dev], &nused[dev], size);
    }
    span_of[i] = off;
    if (x->last_use >= k) { next_dead[i] = dying[x->last_use]; dying[x->last_use] = i; }
    x->slot = slot++;
    p->arena_off[x->slot - first_arena] = off;
    p->arena_dev[x->slot - first_arena] = dev;
    p->narena++;
    if (off + size > peak[dev]) peak[dev] = off + size;
  }
  for (int d = 1; d < WK_DEVICE_COUNT; d++) free(used_dev[d]);
  free(span_of);
  free(used);
  free(dying);
  free(next_dead);
  p->nslots = slot;
  p->arena_bytes = 0;
  for (int d = 0; d < WK_DEVICE_COUNT; d++) {
    p->arena_dev_bytes[d] = (size_t)peak[d];
    p->arena_bytes += (size_t)peak[d];
  }
  // the unfused, unplanned figure: every live node's result kept in its own buffer
  p->unplanned_bytes = 0;
  for (int i = 0; i < r.count; i++)
    if (!r.n[i].dead && !aliases(&r.n[i]) && !r.n[i].leaf && !r.n[i].target) p->unplanned_bytes += node_bytes(&r.n[i]);
  // views read their base's slot
  for (int i = 0; i < r.count; i++) {
    irnode *x = &r.n[i];
    if (!x->dead && !x->leaf && x->op == WK_OP_VIEW) x->slot = r.n[x->base].slot;
  }
  // steps: one per root; a row chain's stages come out in order before its tail
  int *stage = malloc(sizeof(int) * (size_t)(r.count + 1));
  wk_step *steps = calloc((size_t)r.count + 1, sizeof *steps);
  bool ok = stage && steps;
  int nsteps = 0;
  for (int k = 0; k < nroots && ok; k++) {
    int n = 0, pred = roots[k];
    while (pred >= 0 && ok) { // walk back to the chain's first stage
      wk_step tmp;
      stage[n++] = pred;
      ok = build_step(&r, pred, &tmp, &pred);
      free(tmp.prog.code);
    }
    for (int q = n - 1; q >= 0 && ok; q--) {
      wk_step *st = &steps[nsteps++];
      int unused;
      ok = build_step(&r, stage[q], st, &unused);
      st->chain = n > 1 ? (q == n - 1 ? n : -1) : 0;
    }
    if (grp[k] && ok) steps[nsteps - 1].chain = grp[k]; // a group member is a single stage
  }
  free(stage);
  free(grp);
  free(p->steps);
  p->steps = steps;
  p->nsteps = nsteps;
  if (!ok) {
    free(roots); free(r.n);
    wk_error(WK_ERR_STATE, "compile: fused group too large (more than WK_EW_MAX_REGS live values or %d inputs)", WK_MAX_IN);
    wk_plan_free(p);
    return NULL;
  }
  // targets: which output holds each (through CSE merges and views)
  p->ntargets = ntargets;
  p->target_node = malloc(sizeof(int) * (size_t)(ntargets + 1));
  p->target_out = malloc(sizeof(int) * (size_t)(ntargets + 1));
  if (!p->target_node || !p->target_out) { free(roots); free(r.n); plan_fail(p, "out of memory"); return NULL; }
  for (int k = 0; k < ntargets; k++) {
    int i = targets[k];
    while (r.n[i].dead && r.n[i].base != i) i = r.n[i].base;       // CSE representative
    if (aliases(&r.n[i])) i = r.n[i].base;   // a view's (or an in-place update's) storage
    p->target_node[k] = targets[k];
    p->target_out[k] = -1;
    for (int o = 0; o < p->nouts; o++) if (p->outs[o].node == i) p->target_out[k] = o;
    if (p->target_out[k] < 0) p->target_out[k] = -1 - r.n[i].slot; // a leaf: share its storage
  }
  free(roots);
  free(r.n);
  return p;
}

void wk_plan_free(wk_plan *p) {
  if (!p) return;
  for (int k = 0; k < p->nsteps; k++) free(p->steps[k].prog.code);
  free(p->steps);
  free(p->leaf_nodes);
  free(p->outs);
  free(p->arena_off);
  free(p->arena_dev);
  free(p->target_node);
  free(p->target_out);
  free(p->key);
  free(p); // the arena belongs to the backend: eval.c returns it first

}

static const char *op_label(const wk_step *s) {
  if (s->op == WK_OP_QMATMUL && s->attrs.i[1]) {
    static const char *names[8] = {"qmatmul", "qmatmul+add", "swiglu+qmatmul", "swiglu+qmatmul+add", "rmsnorm+qmatmul",
                                   "rmsnorm+qmatmul+add", "qmatmul?", "qmatmul?"};
    return names[s->attrs.i[1] & 7];
  }
  if (s->op == WK_OP_MATMUL && s->nin == 3) return s->attrs.i[0] == WK_EPI_BIAS_GELU_TANH ? "matmul+bias+gelu" : "matmul+bias";
  if (s->op == WK_OP_MATMUL && s->attrs.i[1]) return "matmul*scale";
  return s->op == WK_STEP_FUSED_EW ? "fused" : wk_ops[s->op].name;
}

void wk_plan_dump(const wk_plan *p, const wk_topo *g) {
  (void)g;
  fprintf(stderr, "wick plan %016llx: %d graph nodes -> %d steps (%d ops fused into others), %d leaves, %d outputs\n",
          (unsigned long long)p->hash, p->ngraph, p->nsteps, p->fused_ops, p->nleaves, p->nouts);
  for (int k = 0; k < p->nsteps; k++) {
    const wk_step *s = &p->steps[k];
    char sh[160];
    const char *head = s->chain > 0 ? (is_rowop((wk_op)s->op) ? "row chain > " : "group     > ") : s->chain < 0 ? "            > " : "";
    fprintf(stderr, "  step %2d %s%-16s -> slot %d %s %s", k, head, op_label(s), s->out.slot,
            wk_dtype_name(s->out.dtype), wk_fmt_shape(s->out.ndim, s->out.shape, sh, sizeof sh));
    if (s->prog.n) {
      fprintf(stderr, "  [");
      for (int q = 0; q < s->prog.n; q++) {
        int op = s->prog.code[q].op;
        fprintf(stderr, "%s%s", q ? " " : "", op == WK_EW_LOAD ? "load" : wk_ops[op].name);
      }
      fprintf(stderr, "]");
    }
    fprintf(stderr, "  reads");
    const wk_operand *in = s->npro ? s->pro_in : s->in;
    int nin = s->npro ? s->npro : s->nin;
    for (int q = 0; q < nin; q++) fprintf(stderr, " %d", in[q].slot);
    fprintf(stderr, "\n");
  }
  fprintf(stderr, "  arena: %d buffers in %zu bytes (peak; unplanned %zu bytes)\n", p->narena, p->arena_bytes,
          p->unplanned_bytes);
}
