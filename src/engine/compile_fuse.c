// Fusion: which nodes are stored (roots) and which are computed inside a root's
// kernel (elementwise chains, prologues of reductions and norms, row chains of
// softmax and norms), then each root's step with its elementwise program.
#include "compile.h"

// ---- fusion ----


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

void wk_compile_fuse(ir *r) {
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
  // Registers hold f32 and a 2-byte result is not rounded between ops, only where it is
  // stored and at explicit casts (torch.compile's choice too): one rounding for the
  // group instead of one an op. Rounding each op as eager mode stores it measured 22%
  // slower on chain8/64M/bf16 on an H100 (150 -> 184 us), a memory-bound case.
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
bool wk_compile_step(ir *r, int i, wk_step *s, int *pred) {
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

