// The memory plan: each node's storage slot, and for the intermediates an offset in a
// per-device arena, reused once the last step reading it has run; an elementwise root
// (and a few kernels that read an element before writing it) takes over the buffer of
// an input that dies at its step.
#include "compile.h"

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
void wk_compile_count_reads(const ir *r, int i, int j, bool top, int *reads, int *strided) {
  const irnode *x = &r->n[i];
  if (!top && !inlined(x)) {
    int b = x->op == WK_OP_VIEW && !x->leaf ? x->base : i;
    if (b == j) { (*reads)++; *strided += i != j; }
    return;
  }
  int nin = fused_nin(x);
  const int *in = fused_in(x);
  for (int q = 0; q < nin; q++) wk_compile_count_reads(r, in[q], j, false, reads, strided);
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
    wk_compile_count_reads(r, i, j, true, &reads, &strided);
    if (strided) continue; // a transposed or shifted read would see overwritten values
    return j;
  }
  return -1;
}

// Liveness (a group is one launch: what any member reads stays live until its last
// member, but a LoRA chain's calls run in order), then the slots: leaves first, then
// the outputs that escape the plan, then the arena's intermediates, each device's
// packed first fit with in-place reuse; the planner's peak and the unplanned figure.
bool wk_compile_memory(ir *r, const int *roots, int nroots, const int *grp, wk_plan *p) {
  for (int k = 0, end = 0; k < nroots; k++) {
    if (is_lora(&r->n[roots[k]])) end = k;
    else if (grp[k] >= 0) end = k + (grp[k] > 0 ? grp[k] - 1 : 0);
    collect_reads(r, roots[k], end, true);
  }

  // slots: leaves first, then escaping outputs, then arena intermediates
  int slot = 0;
  p->leaf_nodes = malloc(sizeof(int) * (size_t)(r->count + 1));
  p->outs = calloc((size_t)nroots + 1, sizeof *p->outs);
  p->arena_off = calloc((size_t)nroots + 1, sizeof *p->arena_off);
  span *used = malloc(sizeof(span) * (size_t)(nroots + 1));
  if (!p->leaf_nodes || !p->outs || !p->arena_off || !used) {
    free(used);
    return false;
  }
  for (int i = 0; i < r->count; i++)
    if (r->n[i].leaf && !r->n[i].dead) { p->leaf_nodes[slot] = i; r->n[i].slot = slot++; }
  p->nleaves = slot;
  for (int i = 0; i < r->count; i++)   // an in-place update writes its destination's storage
    if (!r->n[i].dead && r->n[i].op == WK_OP_SET_SLICE && !r->n[i].leaf) r->n[i].slot = r->n[r->n[i].base].slot;
  for (int k = 0; k < nroots; k++) {
    irnode *x = &r->n[roots[k]];
    if ((!x->target && !x->escapes) || x->slot >= 0) continue;
    p->outs[p->nouts++] = (wk_plan_out){.node = roots[k], .slot = slot, .bytes = node_bytes(x), .base = roots[k]};
    x->slot = slot++;
  }
  // one arena per device; each packs its own intermediates
  int first_arena = slot, nused[WK_DEVICE_COUNT] = {0};
  int64_t peak[WK_DEVICE_COUNT] = {0};
  span *used_dev[WK_DEVICE_COUNT] = {used};
  for (int d = 1; d < WK_DEVICE_COUNT; d++) used_dev[d] = malloc(sizeof(span) * (size_t)(nroots + 1));
  int64_t *span_of = calloc((size_t)r->count + 1, sizeof *span_of); // arena offset per node
  // dying[k]: arena nodes whose last reader is step k (a linked list through next_dead)
  int *dying = malloc(sizeof(int) * (size_t)(nroots + 1)), *next_dead = malloc(sizeof(int) * (size_t)(r->count + 1));
  p->arena_dev = calloc((size_t)nroots + 1, sizeof *p->arena_dev);
  bool mem_ok = span_of && dying && next_dead && p->arena_dev;
  for (int d = 1; d < WK_DEVICE_COUNT; d++) mem_ok = mem_ok && used_dev[d];
  if (!mem_ok) {
    for (int d = 1; d < WK_DEVICE_COUNT; d++) free(used_dev[d]);
    free(dying); free(next_dead); free(span_of); free(used);
    return false;
  }
  for (int k = 0; k <= nroots; k++) dying[k] = -1;
  for (int k = 0; k < nroots; k++) {
    int i = roots[k];
    irnode *x = &r->n[i];
    // spans whose last reader was the previous step are free again
    for (int q = k > 0 ? dying[k - 1] : -1; q >= 0; q = next_dead[q])
      if (r->n[q].last_use != -3) {
        int d = (int)r->n[q].t->device;
        arena_release(used_dev[d], &nused[d], span_of[q]);
        r->n[q].last_use = -3;
      }
    if (x->slot >= 0) continue;
    int dev = (int)x->t->device;
    int64_t size = padded(node_bytes(x));
    int j = grp[k] ? -1 : inplace_candidate(r, i, k);   // a group's members read all of its inputs
    int64_t off;
    if (j >= 0 && r->n[j].slot >= first_arena && padded(node_bytes(&r->n[j])) == size && (int)r->n[j].t->device == dev) {
      off = span_of[j];
      r->n[j].last_use = -3; // its span passes to x
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
  for (int i = 0; i < r->count; i++)
    if (!r->n[i].dead && !aliases(&r->n[i]) && !r->n[i].leaf && !r->n[i].target) p->unplanned_bytes += node_bytes(&r->n[i]);
  // views read their base's slot
  for (int i = 0; i < r->count; i++) {
    irnode *x = &r->n[i];
    if (!x->dead && !x->leaf && x->op == WK_OP_VIEW) x->slot = r->n[x->base].slot;
  }
  return true;
}
