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
// This file: the IR, CSE, folding, use counts and the driver; compile.h names the rest.
#include <stdio.h>
#include "compile.h"

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
void wk_compile_count_uses(ir *r) {
  if (r->count <= 0) return;
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
  wk_compile_count_uses(&r);
  wk_compile_rewrite(&r);
  wk_compile_fuse(&r);
  wk_compile_bf16_inputs(&r);

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
  wk_compile_schedule(&r, roots, nroots, grp);
  for (int k = 0; k < nroots; k++) r.n[roots[k]].step = k;
  if (!wk_compile_memory(&r, roots, nroots, grp, p)) {
    free(grp); free(roots); free(r.n); plan_fail(p, "out of memory"); return NULL;
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
      ok = wk_compile_step(&r, pred, &tmp, &pred);
      free(tmp.prog.code);
    }
    for (int q = n - 1; q >= 0 && ok; q--) {
      wk_step *st = &steps[nsteps++];
      int unused;
      ok = wk_compile_step(&r, stage[q], st, &unused);
      st->chain = n > 1 ? (q == n - 1 ? n : -1) : 0;
    }
    if (grp[k] && ok) steps[nsteps - 1].chain = grp[k]; // a group member is a single stage
  }
  free(stage);
  free(grp);
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

