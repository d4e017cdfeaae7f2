// Kernel patterns: subgraphs that one kernel computes, recognized in the IR and
// marked on the node that ends them (its inputs become the kernel's). Each runs as its
// own pass over the live nodes, in wk_compile_rewrite's order, so that a later pattern
// sees an earlier one's result; the CUDA-only ones each have a WICK_* switch.
#include "compile.h"

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

void wk_compile_bf16_inputs(ir *r) {
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
  wk_compile_count_uses(r);
}

bool wk_compile_is_half_qmm(const ir *r, int i) { return is_half_qmm(r, i); }

void wk_compile_rewrite(ir *r) {
  rewrite_pass(r, match_lora);
  rewrite_pass(r, match_epilogue);
  if (mm_scale_enabled()) {
    rewrite_pass(r, match_scaled_product);
    rewrite_pass(r, match_scaled_operand);
  }
  if (qswiglu_enabled()) rewrite_pass(r, match_qswiglu);
  if (qnorm_enabled()) rewrite_pass(r, match_qnorm);
  if (qepi_enabled()) rewrite_pass(r, match_qepilogue);
  if (qsilu_enabled()) rewrite_pass(r, match_qsilu);
  if (normw_enabled()) rewrite_pass(r, match_norm_weights);
  if (sdpa_lse_enabled()) rewrite_pass(r, match_sdpa_lse);
  if (ce_grad_enabled()) rewrite_pass(r, match_linear_ce_grad);
  if (norm_add_enabled()) rewrite_pass(r, match_norm_bwd_add);
}
