// Step order and launch groups: the roots' topological order, reordered where that
// frees memory or hides latency (small sinks pulled up, transfers moved), and runs
// of roots that one launch can take (CUDA: horizontal groups of one program, sibling
// matmuls / RoPEs / cache writes, a decode layer's attention, chains of LoRA calls).
#include "compile.h"

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
    if (!wk_compile_step(r, roots[k], &st[k], &pred)) { ok = false; break; }
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
  if (wk_compile_is_half_qmm(r, i)) return *kind = 1, x->in[0];
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
      wk_compile_count_reads(r, rm, x->base, true, &reads, &strided);
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
// (WK_DECODE_ATTN_GROUP), which attn_decode.cu runs as one launch: three launches' fixed costs
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

// WICK_CUDA_QGROUP=0: siblings stay separate launches.
static bool qgroup_enabled(void) { static int on = -1; return wk_env_on("WICK_CUDA_QGROUP", &on); }

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

// ---- LoRA chains: one launch, one job ----
// One-row LoRA calls in a row, each reading the previous one's output (which nothing
// else reads) and all sharing W, A and B, are marked as a group (head chain = n,
// members -1): lora.cu runs the chain as one launch that keeps W on the chip, the CPU
// backend as one job whose threads each keep a slice of W. Unlike the sibling groups
// its members run in order (each hands its output to the next), so a call's output
// lives only until the next call has read it. Only chains the backend runs so are
// grouped (its lora_chain; WICK_CUDA_LORA_CHAIN=0 / WICK_CPU_LORA_CHAIN=0 turn it off).


// A one-row f32 LoRA call.
static bool lora_row_call(const irnode *x) {
  const wk_tensor *t = x->t;
  return is_lora(x) && t->dtype == WK_F32 && t->ndim >= 1 && wk_numel(t) == t->shape[t->ndim - 1];
}

// Whether the call's backend runs chains of call x's shapes as one launch or job.
static bool lora_chain_backend(const ir *r, const irnode *x) {
  const wk_tensor *t = x->t, *in = r->n[fused_in(x)[0]].t, *a = r->n[fused_in(x)[2]].t;
  const wk_backend *b = wk_backend_get(t->device);
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

void wk_compile_schedule(ir *r, int *roots, int n, int *grp) {
  pull_up_small_sinks(r, roots, n);
  move_transfers(r, roots, n);
  horizontal_schedule(r, roots, n, grp);
  group_siblings(r, roots, n, grp);
  group_lora_chains(r, roots, n, grp);
}
