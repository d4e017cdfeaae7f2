// Neural-network kernels: softmax, norms, rope, embedding, attention, cross-entropy.
// Compiled per ISA like ew.c. Row kernels (B = rows, D = last axis) read each row
// once into L1 (straight from memory when it is f32 with a unit stride, else
// converted, or computed by the fused elementwise prologue), compute in f32 with
// 16 partial accumulators the compiler vectorizes, and write once. Rows are split
// over the thread pool with a grain that keeps small tensors on one thread.
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernels.h"
#include "gemm.h"
#include "dequant.h"
#include "../kernel_math.h"
#include "threadpool.h"
#include "attn_operands.h"

void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out);
void WK_ISA_FN(wk_cpu_prologue)(const wk_step *s, void *const *slots, int64_t start, int64_t n, float *out);
void WK_ISA_FN(wk_cpu_ew_eval)(const wk_ew_prog *prog, const wk_operand *ops, void *const *slots, int64_t start,
                               int64_t n, const float *row, float *out);
wk_status WK_ISA_FN(wk_cpu_nn)(const wk_step *s, void *const *slots);

// Elements per parallel task: enough to amortize a dispatch (~1-2 us), few enough
// that a 64k-element row kernel still uses two threads.
#define GRAIN_ELEMS 16384
#define LOCAL_FLOATS 8192

// ---- operand access ----
static int64_t numel_of(const wk_operand *o) {
  int64_t n = 1;
  for (int d = 0; d < o->ndim; d++) n *= o->shape[d];
  return n;
}
static int64_t last_of(const wk_operand *o) { return o->ndim ? o->shape[o->ndim - 1] : 1; }

// Element offset of row r of o viewed as [rows, last axis].
static int64_t row_offset(const wk_operand *o, int64_t r) {
  int64_t off = o->offset;
  for (int d = o->ndim - 2; d >= 0; d--) {
    int64_t n = o->shape[d];
    off += (r % n) * o->stride[d];
    r /= n;
  }
  return off;
}
// Element offset of linear index i of o.
static int64_t elem_offset(const wk_operand *o, int64_t i) {
  int64_t off = o->offset;
  for (int d = o->ndim - 1; d >= 0; d--) {
    int64_t n = o->shape[d];
    off += (i % n) * o->stride[d];
    i /= n;
  }
  return off;
}

static bool direct_f32(const wk_operand *o) {
  return o->slot >= 0 && o->dtype == WK_F32 && (o->ndim == 0 || o->stride[o->ndim - 1] == 1 || last_of(o) == 1);
}

// Row r (length D) of o in f32: a pointer into memory when possible, else converted into buf.
static const float *row_in(const wk_operand *o, void *const *slots, int64_t r, int64_t D, float *buf) {
  if (direct_f32(o)) return (const float *)slots[o->slot] + row_offset(o, r);
  WK_ISA_FN(wk_cpu_load_f32)(o, slots, r * D, D, buf);
  return buf;
}
// Same for input 0, which a fused prologue may compute instead of memory.
static const float *row_in0(const wk_step *s, void *const *slots, int64_t r, int64_t D, float *buf) {
  if (s->prog.n) {
    WK_ISA_FN(wk_cpu_prologue)(s, slots, r * D, D, buf);
    return buf;
  }
  return row_in(&s->in[0], slots, r, D, buf);
}


// Writes n values at linear index start of a contiguous output.
static void store(const wk_operand *o, void *const *slots, int64_t start, int64_t n, const float *v) {
  char *p = (char *)slots[o->slot] + (o->offset + start) * (int64_t)wk_dtype_size(o->dtype);
  switch (o->dtype) {
    case WK_F32: if ((const float *)p != v) memcpy(p, v, (size_t)n * sizeof(float)); break;
    case WK_BF16: { uint16_t *d = (uint16_t *)p; for (int64_t i = 0; i < n; i++) d[i] = wkm_f32_to_bf16(v[i]); break; }
    case WK_F16: { uint16_t *d = (uint16_t *)p; for (int64_t i = 0; i < n; i++) d[i] = wk_f32_to_f16(v[i]); break; }
    default: break;
  }
}
// Where a kernel writes output row r: straight into an f32 output, else into tmp.
static float *row_out(const wk_operand *o, void *const *slots, int64_t r, int64_t D, float *tmp) {
  if (o->dtype != WK_F32) return tmp;
  return (float *)slots[o->slot] + o->offset + r * D;
}

// Ids and targets as a contiguous int32 array (caller frees).
static int32_t *read_i32(const wk_operand *o, void *const *slots, int64_t n) {
  int32_t *v = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
  if (!v) return NULL;
  const int32_t *p = (const int32_t *)slots[o->slot];
  for (int64_t i = 0; i < n; i++) v[i] = p[elem_offset(o, i)];
  return v;
}

// Per-task scratch: on the stack when small.
typedef struct { float *p; bool heap; } scratch;
static bool scratch_get(scratch *sc, float *local, int64_t n) {
  sc->heap = n > LOCAL_FLOATS;
  sc->p = sc->heap ? malloc(sizeof(float) * (size_t)n) : local;
  return sc->p != NULL;
}
static void scratch_put(scratch *sc) { if (sc->heap) free(sc->p); }

static int64_t grain_rows(int64_t D) { return D >= GRAIN_ELEMS ? 1 : GRAIN_ELEMS / (D ? D : 1); }

#include "rowvec.h"

// ---- generic row-kernel context ----
typedef struct {
  const wk_step *s;
  void *const *slots;
  int64_t D;
  const float *w, *b;   // norm weight / bias in f32 (NULL when absent)
  float *part;          // per-task partial sums (NORM_DW)
  int64_t T;            // rope: positions per sequence
  const float *cs;      // rope: [T][cos(h) | sin(h)]
  const int32_t *ids;   // embedding
  bool nt;              // f32 output too big for the caches: streaming stores
  _Atomic int oom;
} rctx;

// Outputs above this size do not stay in cache: write them with streaming stores,
// which skip the read-for-ownership of each output line (a third of the traffic).
#ifndef NT_BYTES
#define NT_BYTES (16ll << 20)
#endif
static bool want_nt(const wk_operand *out) {
  return out->dtype == WK_F32 && numel_of(out) * 4 >= NT_BYTES;
}
// Where a row kernel computes output row r, and how the finished row is written.
static float *row_dst(const rctx *c, int64_t r, float *tmp) {
  return c->nt ? tmp : row_out(&c->s->out, c->slots, r, c->D, tmp);
}
static void put_row(const rctx *c, int64_t r, const float *y) {
  if (c->nt) stream_row((float *)c->slots[c->s->out.slot] + c->s->out.offset + r * c->D, y, c->D);
  else store(&c->s->out, c->slots, r * c->D, c->D, y);
}

// One row of a row kernel: y from x (input 0, through the step's prologue in a forward),
// and dy (the last input) in a backward; tmp: the op's scratch rows.
typedef void (*row_op)(const rctx *c, const float *x, const float *dy, float *y, float *tmp);

// Runs op over rows [b, e) of a row kernel's task. Inlined at each caller, where op is
// a constant: a direct call the compiler may inline in turn.
static inline __attribute__((always_inline)) void rows_run(rctx *c, int64_t b, int64_t e, bool bwd, int tmp_rows,
                                                           row_op op) {
  const wk_step *s = c->s;
  const int64_t D = c->D;
  const int nin = bwd ? 2 : 1;   // rows read: x, and dy in a backward
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, (nin + 1 + tmp_rows) * D)) { c->oom = 1; return; }
  for (int64_t r = b; r < e; r++) {
    const float *x = bwd ? row_in(&s->in[0], c->slots, r, D, sc.p) : row_in0(s, c->slots, r, D, sc.p);
    const float *dy = bwd ? row_in(&s->in[s->nin - 1], c->slots, r, D, sc.p + D) : NULL;
    float *y = row_dst(c, r, sc.p + nin * D);
    op(c, x, dy, y, sc.p + (nin + 1) * D);
    put_row(c, r, y);
  }
  if (c->nt) stream_fence();
  scratch_put(&sc);
}

// ---- softmax / log-softmax over the last axis ----
// Softmax into a softmax: the first leaves its row v unnormalized and hands over p, the
// reciprocal of its sum, with a bound B >= v >= 0; the second's input is p*v (up to a
// shift, which softmax ignores), read inside its exp. That saves the first's scaling
// pass and the second's max pass: p*v lies in [0, U], U = p*B. Where U is small
// enough for a short Taylor polynomial (taylor_degree), the row becomes q = expm1(p*v)
// standing for the values 1 + q: past a first stage over D entries U is about 1/D (a
// softmax's outputs sum to 1), so a stage costs a polynomial of degree 3 or 4 and
// then of degree 1, where the general exp costs some ten vector operations; and q
// keeps the small differences between entries that 1 + q would round away, which
// makes the chain more exact than stage-by-stage softmaxes. Otherwise the row becomes
// exp(p*v - U) <= 1 by the general exp. p = 0: a plain input; defer = false: the
// result is normalized here.
typedef struct {
  float p, bound;
  bool m1; // the row holds q, its values are 1 + q
} pending;
static pending chain_softmax(const float *x, float *dst, int64_t D, pending in, bool defer) {
  pending out = {.bound = 1.0f};
  float U = in.p * in.bound, sum;
  int deg = in.p > 0 ? taylor_degree(U) : 0;
  if (deg) {
    sum = (float)D + vexpm1_taylor(x, dst, D, in.p, deg);
    out.bound = U + U * U; // >= expm1(U) for U <= 1
    out.m1 = true;
  } else {
    sum = in.p > 0 ? vexp_s(x, dst, D, in.p, U) : vexp_store(x, dst, D, vmax(x, D));
  }
  out.p = 1.0f / sum;
  if (defer) return out;
  if (out.m1) for (int64_t i = 0; i < D; i++) dst[i] = dst[i] * out.p + out.p;
  else for (int64_t i = 0; i < D; i++) dst[i] *= out.p;
  return (pending){0};
}

static void softmax_row(const float *x, float *y, int64_t D, bool log_sm) {
  if (!log_sm) { chain_softmax(x, y, D, (pending){0}, false); return; }
  float m = vmax(x, D), lse = m + logf(vexp_sum(x, D, m));
  for (int64_t i = 0; i < D; i++) y[i] = x[i] - lse;
}

static void softmax_op(const rctx *c, const float *x, const float *dy, float *y, float *tmp) {
  (void)dy, (void)tmp;
  softmax_row(x, y, c->D, false);
}
static void log_softmax_op(const rctx *c, const float *x, const float *dy, float *y, float *tmp) {
  (void)dy, (void)tmp;
  softmax_row(x, y, c->D, true);
}
static void softmax_range(void *c, int64_t b, int64_t e, int tid) { (void)tid; rows_run(c, b, e, false, 0, softmax_op); }
static void log_softmax_range(void *c, int64_t b, int64_t e, int tid) {
  (void)tid;
  rows_run(c, b, e, false, 0, log_softmax_op);
}

// (y, dy) -> y * (dy - sum(dy * y))  or, for log-softmax, dy - exp(y) * sum(dy)
static void softmax_bwd_op(const rctx *c, const float *y, const float *dy, float *dx, float *tmp) {
  (void)tmp;
  const int64_t D = c->D;
  float t = vdot(y, dy, D);
  for (int64_t i = 0; i < D; i++) dx[i] = y[i] * (dy[i] - t);
}
static void log_softmax_bwd_op(const rctx *c, const float *y, const float *dy, float *dx, float *tmp) {
  (void)tmp;
  const int64_t D = c->D;
  float t = vsum(dy, D);
  for (int64_t i = 0; i < D; i++) dx[i] = dy[i] - expz(y[i]) * t;
}
static void softmax_bwd_range(void *c, int64_t b, int64_t e, int tid) {
  (void)tid;
  rows_run(c, b, e, true, 0, softmax_bwd_op);
}
static void log_softmax_bwd_range(void *c, int64_t b, int64_t e, int tid) {
  (void)tid;
  rows_run(c, b, e, true, 0, log_softmax_bwd_op);
}

// ---- norms ----
static float rms_scale(const float *x, int64_t D, float eps) {
  return 1.0f / sqrtf(vdot(x, x, D) / (float)D + eps);
}
// RMSNorm of a row whose values are K x: K = *scale (a scale the stage before deferred;
// NULL: 1), k from ss = sum(x^2) when that stage handed it over (ss >= 0), else from a
// pass of its own; y = K x k w. With `hand_over` (another RMSNorm follows) it stores
// x * w instead, leaves K k in *scale, and returns sum((x w)^2), accumulated in that
// pass: a chain of norms makes one pass per stage, of two multiplies a value. A K
// outside [2^-32, 2^32] (weights far from 1 over many stages) is applied to the stored
// row instead of deferred, so that the stored values stay far from f32's range limits.
static float rms_row(const float *x, float *y, int64_t D, float eps, const float *w, float ss, float *scale,
                     bool hand_over) {
  const float K = scale ? *scale : 1.0f;
  const float k = K / sqrtf(K * K * (ss >= 0 ? ss : vdot(x, x, D)) / (float)D + eps);   // K times this norm's
  if (!hand_over) {
    if (w) for (int64_t i = 0; i < D; i++) y[i] = x[i] * k * w[i];
    else for (int64_t i = 0; i < D; i++) y[i] = x[i] * k;
    if (scale) *scale = 1.0f;
    return -1.0f;
  }
  const bool defer = k >= 0x1p-32f && k <= 0x1p32f;
  const float m = defer ? 1.0f : k;
  *scale = defer ? k : 1.0f;
  vw acc[4][NS] = {{{0}}}, wv = {0}; // as in vdot
  int64_t i = 0;
  for (; i + 64 <= D; i += 64)
    for (int q = 0; q < 4; q++)
      for (int h = 0; h < NS; h++) {
        vw v;
        memcpy(&v, x + i + 16 * q + VW * h, sizeof v);
        if (w) memcpy(&wv, w + i + 16 * q + VW * h, sizeof wv);
        v = defer ? (w ? v * wv : v) : (w ? v * m * wv : v * m);
        memcpy(y + i + 16 * q + VW * h, &v, sizeof v);
        acc[q][h] += v * v;
      }
  float sum = 0;
  for (; i < D; i++) {
    float v = defer ? x[i] * (w ? w[i] : 1.0f) : x[i] * m * (w ? w[i] : 1.0f);
    y[i] = v;
    sum += v * v;
  }
  return vacc_sum(acc, sum);
}

static void rms_op(const rctx *c, const float *x, const float *dy, float *y, float *tmp) {
  (void)dy, (void)tmp;
  rms_row(x, y, c->D, c->s->attrs.f[0], c->w, -1.0f, NULL, false);
}
static void rms_range(void *c, int64_t b, int64_t e, int tid) { (void)tid; rows_run(c, b, e, false, 0, rms_op); }
// dx = r * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * r
static void rms_bwd_op(const rctx *c, const float *x, const float *dy, float *dx, float *g) {
  const int64_t D = c->D;
  const float *w = c->w;
  float k = rms_scale(x, D, c->s->attrs.f[0]);
  if (w) { for (int64_t i = 0; i < D; i++) g[i] = dy[i] * w[i]; }
  else memcpy(g, dy, sizeof(float) * (size_t)D);
  float a = k * k * k * vdot(g, x, D) / (float)D;
  for (int64_t i = 0; i < D; i++) dx[i] = k * g[i] - a * x[i];
}
static void rms_bwd_range(void *c, int64_t b, int64_t e, int tid) { (void)tid; rows_run(c, b, e, true, 1, rms_bwd_op); }

static void ln_stats(const float *x, int64_t D, float eps, float *mean, float *rstd) {
  float m = vsum(x, D) / (float)D;
  *mean = m;
  *rstd = 1.0f / sqrtf(vsqdev(x, D, m) / (float)D + eps);
}
static void ln_row(const float *x, float *y, int64_t D, float eps, const float *w, const float *bb) {
  float m, k;
  ln_stats(x, D, eps, &m, &k);
  if (w && bb) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * k * w[i] + bb[i];
  else if (w) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * k * w[i];
  else if (bb) for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * k + bb[i];
  else for (int64_t i = 0; i < D; i++) y[i] = (x[i] - m) * k;
}
static void ln_op(const rctx *c, const float *x, const float *dy, float *y, float *tmp) {
  (void)dy, (void)tmp;
  ln_row(x, y, c->D, c->s->attrs.f[0], c->w, c->b);
}
static void ln_range(void *c, int64_t b, int64_t e, int tid) { (void)tid; rows_run(c, b, e, false, 0, ln_op); }
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w
static void ln_bwd_op(const rctx *c, const float *x, const float *dy, float *dx, float *tmp) {
  const int64_t D = c->D;
  const float *w = c->w;
  float *g = tmp, *xh = tmp + D;
  float m, k;
  ln_stats(x, D, c->s->attrs.f[0], &m, &k);
  if (w) { for (int64_t i = 0; i < D; i++) g[i] = dy[i] * w[i]; }
  else memcpy(g, dy, sizeof(float) * (size_t)D);
  for (int64_t i = 0; i < D; i++) xh[i] = (x[i] - m) * k;
  float mg = vsum(g, D) / (float)D, mgx = vdot(g, xh, D) / (float)D;
  for (int64_t i = 0; i < D; i++) dx[i] = k * (g[i] - mg - xh[i] * mgx);
}
static void ln_bwd_range(void *c, int64_t b, int64_t e, int tid) { (void)tid; rows_run(c, b, e, true, 2, ln_bwd_op); }

// Per-task partial sums of dy * xhat (and dy for layer norm) into c->part[tid].
static void norm_dw_range(void *vc, int64_t b, int64_t e, int tid) {
  rctx *c = vc;
  const wk_step *s = c->s;
  int64_t D = c->D;
  float eps = s->attrs.f[0];
  bool layer = s->attrs.i[0] != 0;
  float *dw = c->part + (size_t)tid * 2 * (size_t)D, *db = dw + D;
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, 2 * D)) { c->oom = 1; return; }
  for (int64_t r = b; r < e; r++) {
    const float *x = row_in(&s->in[0], c->slots, r, D, sc.p);
    const float *dy = row_in(&s->in[1], c->slots, r, D, sc.p + D);
    if (layer) {
      float m, k;
      ln_stats(x, D, eps, &m, &k);
      for (int64_t i = 0; i < D; i++) { dw[i] += dy[i] * (x[i] - m) * k; db[i] += dy[i]; }
    } else {
      float k = rms_scale(x, D, eps);
      for (int64_t i = 0; i < D; i++) dw[i] += dy[i] * x[i] * k;
    }
  }
  scratch_put(&sc);
}

// A norm parameter (weight / bias) as a dense f32 vector: its memory when possible.
static const float *param_f32(const wk_operand *o, void *const *slots, int64_t D, float **owned) {
  *owned = NULL;
  if (direct_f32(o)) return (const float *)slots[o->slot] + o->offset;
  if (!(*owned = malloc(sizeof(float) * (size_t)(D ? D : 1)))) return NULL;
  WK_ISA_FN(wk_cpu_load_f32)(o, slots, 0, D, *owned);
  return *owned;
}

static wk_status norm_kernel(const wk_step *s, void *const *slots, const char *name) {
  rctx c = {.s = s, .slots = slots, .D = last_of(&s->in[0]), .nt = want_nt(&s->out)};
  int64_t rows = c.D ? numel_of(&s->in[0]) / c.D : 0;
  float *ow = NULL, *ob = NULL;
  bool has_w = s->attrs.i[0] != 0, has_b = s->op == WK_OP_LAYER_NORM && s->attrs.i[1] != 0;
  if (has_w && !(c.w = param_f32(&s->in[1], slots, c.D, &ow))) return wk_error(WK_ERR_OOM, "%s: out of memory", name);
  if (has_b && !(c.b = param_f32(&s->in[1 + has_w], slots, c.D, &ob))) {
    free(ow);
    return wk_error(WK_ERR_OOM, "%s: out of memory", name);
  }
  wk_range_fn fn = s->op == WK_OP_RMS_NORM ? rms_range : s->op == WK_OP_LAYER_NORM ? ln_range
                 : s->op == WK_OP_RMS_NORM_BWD ? rms_bwd_range : ln_bwd_range;
  wk_parallel_for(rows, grain_rows(c.D), fn, &c);
  free(ow);
  free(ob);
  return c.oom ? wk_error(WK_ERR_OOM, "%s: out of memory", name) : WK_OK;
}

static wk_status norm_dw_kernel(const wk_step *s, void *const *slots) {
  rctx c = {.s = s, .slots = slots, .D = last_of(&s->in[0])};
  const char *name = s->attrs.i[0] ? "layer_norm" : "rms_norm";
  int64_t D = c.D, rows = D ? numel_of(&s->in[0]) / D : 0;
  int nt = wk_threads();
  c.part = calloc((size_t)nt * 2 * (size_t)(D ? D : 1), sizeof(float));
  if (!c.part) return wk_error(WK_ERR_OOM, "%s: out of memory", name);
  wk_parallel_for(rows, grain_rows(D), norm_dw_range, &c);
  // fixed-order sum of the partials: the result does not depend on timing
  int64_t w = s->attrs.i[0] ? 2 * D : D;
  for (int t = 1; t < nt; t++) {
    const float *p = c.part + (size_t)t * 2 * (size_t)D;
    for (int64_t i = 0; i < w; i++) c.part[i] += p[i];
  }
  store(&s->out, slots, 0, w, c.part);
  free(c.part);
  return c.oom ? wk_error(WK_ERR_OOM, "%s: out of memory", name) : WK_OK;
}

// ---- rotary embedding ----
// cos/sin table for (theta, offset, T, D), cached: training and prefill reuse it
// every step. Angles are f32 products pos * inv_freq like HF's; cos/sin in double.
static pthread_mutex_t rope_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { float theta; int64_t offset, T, D; float *cs; } rope_cache;

static const float *rope_table(float theta, int64_t offset, int64_t T, int64_t D) {
  if (rope_cache.cs && rope_cache.theta == theta && rope_cache.offset == offset && rope_cache.T == T &&
      rope_cache.D == D)
    return rope_cache.cs;
  int64_t h = D / 2;
  float *cs = malloc(sizeof(float) * (size_t)(T * D > 0 ? T * D : 1));
  if (!cs) return NULL;
  for (int64_t i = 0; i < h; i++) {
    float inv = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)D));
    for (int64_t t = 0; t < T; t++) {
      float ang = (float)(offset + t) * inv;
      cs[t * D + i] = (float)cos((double)ang);
      cs[t * D + h + i] = (float)sin((double)ang);
    }
  }
  free(rope_cache.cs);
  rope_cache.cs = cs;
  rope_cache.theta = theta;
  rope_cache.offset = offset;
  rope_cache.T = T;
  rope_cache.D = D;
  return cs;
}

static void rope_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  rctx *c = vc;
  const wk_step *s = c->s;
  int64_t D = c->D, h = D / 2;
  float sign = s->attrs.f[1];
  bool inter = s->attrs.i[1] != 0;
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, 3 * D)) { c->oom = 1; return; }
  float *sn = sc.p + 2 * D;
  for (int64_t r = b; r < e; r++) {
    const float *x = row_in(&s->in[0], c->slots, r, D, sc.p);
    float *y = row_dst(c, r, sc.p + D);
    const float *co = c->cs + (r % c->T) * D, *si = co + h;
    for (int64_t i = 0; i < h; i++) sn[i] = sign * si[i];
    if (inter) {
      for (int64_t i = 0; i < h; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        y[2 * i] = x0 * co[i] - x1 * sn[i];
        y[2 * i + 1] = x1 * co[i] + x0 * sn[i];
      }
    } else {
      for (int64_t i = 0; i < h; i++) {
        float x0 = x[i], x1 = x[i + h];
        y[i] = x0 * co[i] - x1 * sn[i];
        y[i + h] = x1 * co[i] + x0 * sn[i];
      }
    }
    put_row(c, r, y);
  }
  if (c->nt) stream_fence();
  scratch_put(&sc);
}

// The table for given inverse frequencies (scaled RoPE), cos and sin times scale: built
// per call (the frequencies are data, and a dynamic scaling changes them as it goes).
static float *rope_table_freqs(const float *inv, float scale, int64_t offset, int64_t T, int64_t D) {
  int64_t h = D / 2;
  float *cs = malloc(sizeof(float) * (size_t)(T * D > 0 ? T * D : 1));
  if (!cs) return NULL;
  for (int64_t i = 0; i < h; i++)
    for (int64_t t = 0; t < T; t++) {
      float ang = (float)(offset + t) * inv[i];
      cs[t * D + i] = (float)cos((double)ang) * scale;
      cs[t * D + h + i] = (float)sin((double)ang) * scale;
    }
  return cs;
}

static wk_status rope_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *x = &s->in[0];
  rctx c = {.s = s, .slots = slots, .D = last_of(x), .T = x->ndim >= 2 ? x->shape[x->ndim - 2] : 1,
            .nt = want_nt(&s->out)};
  int64_t rows = c.D ? numel_of(x) / c.D : 0;
  if (!rows) return WK_OK;
  bool freqs = s->attrs.i[2] != 0;
  int64_t offset = s->attrs.i[0];   // plus the run-time position, if any
  if (s->nin > 1 + freqs) offset += *(const int32_t *)wk_operand_ptr(&s->in[1], slots);
  if (freqs) {
    const wk_operand *f = &s->in[s->nin - 1];
    float scale = s->attrs.f[2] > 0 ? s->attrs.f[2] : 1.0f, *cs = NULL, inv[512];
    if (c.D / 2 <= 512) WK_ISA_FN(wk_cpu_load_f32)(f, slots, 0, c.D / 2, inv);
    cs = c.D / 2 <= 512 ? rope_table_freqs(inv, scale, offset, c.T, c.D) : NULL;
    bool ok = cs != NULL;
    c.cs = cs;
    if (ok) wk_parallel_for(rows, grain_rows(c.D), rope_range, &c);
    free(cs);
    return ok && !c.oom ? WK_OK : wk_error(WK_ERR_OOM, "rope: out of memory (or a head dim above 1024)");
  }
  pthread_mutex_lock(&rope_mu); // held while the table is in use
  c.cs = rope_table(s->attrs.f[0], offset, c.T, c.D);
  if (c.cs) wk_parallel_for(rows, grain_rows(c.D), rope_range, &c);
  pthread_mutex_unlock(&rope_mu);
  return c.cs && !c.oom ? WK_OK : wk_error(WK_ERR_OOM, "rope: out of memory");
}

// ---- embedding ----
static void embed_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  rctx *c = vc;
  const wk_step *s = c->s;
  const wk_operand *tab = &s->in[0];
  int64_t D = c->D;
  size_t es = wk_dtype_size(tab->dtype);
  bool same = wk_dtype_is_quantized(tab->dtype) || (tab->dtype == s->out.dtype && (tab->stride[1] == 1 || D == 1));
  char *out = (char *)wk_operand_ptr(&s->out, c->slots);
  float local[LOCAL_FLOATS];
  scratch sc = {0};
  if (!same && !scratch_get(&sc, local, D)) { c->oom = 1; return; }
  bool quant = wk_dtype_is_quantized(tab->dtype);
  for (int64_t j = b; j < e; j++) {
    int64_t id = c->ids[j];
    if (quant) { // rows of whole blocks, contiguous (quantized tensors are never views)
      size_t rb = (size_t)(D / wk_dtype_block(tab->dtype)) * wk_dtype_block_bytes(tab->dtype);
      WK_ISA_FN(wk_cpu_dequant)(tab->dtype, (const char *)c->slots[tab->slot] + (size_t)id * rb,
                                (float *)(void *)out + j * D, D / wk_dtype_block(tab->dtype));
    } else if (same) {
      const char *src = (const char *)c->slots[tab->slot] + (tab->offset + id * tab->stride[0]) * (int64_t)es;
      memcpy(out + j * D * (int64_t)es, src, (size_t)D * es);
    } else {
      WK_ISA_FN(wk_cpu_load_f32)(tab, c->slots, id * D, D, sc.p);
      store(&s->out, c->slots, j * D, D, sc.p);
    }
  }
  if (!same) scratch_put(&sc);
}

static wk_status embedding_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *tab = &s->in[0], *ids = &s->in[1];
  int64_t V = tab->shape[0], N = numel_of(ids);
  rctx c = {.s = s, .slots = slots, .D = tab->shape[1]};
  int32_t *id = read_i32(ids, slots, N);
  if (!id) return wk_error(WK_ERR_OOM, "embedding: out of memory");
  for (int64_t j = 0; j < N; j++)
    if (id[j] < 0 || id[j] >= V) {
      wk_status st = wk_error(WK_ERR_ARG, "embedding: id %d at position %lld is out of range for a table of %lld rows",
                              id[j], (long long)j, (long long)V);
      free(id);
      return st;
    }
  c.ids = id;
  wk_parallel_for(N, grain_rows(c.D), embed_range, &c);
  free(id);
  return c.oom ? wk_error(WK_ERR_OOM, "embedding: out of memory") : WK_OK;
}

// Scatter-add of dy rows into dtable[V, D]. Each task owns a range of table rows and
// scans every id, so no two tasks write the same row (no atomics, deterministic).
static void embed_bwd_range(void *vc, int64_t vb, int64_t ve, int tid) {
  (void)tid;
  rctx *c = vc;
  const wk_step *s = c->s;
  int64_t D = c->D, N = c->T;
  float *acc = c->part;
  memset(acc + vb * D, 0, sizeof(float) * (size_t)((ve - vb) * D));
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, D)) { c->oom = 1; return; }
  for (int64_t j = 0; j < N; j++) {
    int64_t id = c->ids[j];
    if (id < vb || id >= ve) continue;
    const float *dy = row_in(&s->in[1], c->slots, j, D, sc.p);
    float *a = acc + id * D;
    for (int64_t i = 0; i < D; i++) a[i] += dy[i];
  }
  if (s->out.dtype != WK_F32) store(&s->out, c->slots, vb * D, (ve - vb) * D, acc + vb * D);
  scratch_put(&sc);
}

static wk_status embedding_bwd_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *ids = &s->in[0];
  int64_t V = s->out.shape[0], D = s->out.shape[1], N = numel_of(ids);
  rctx c = {.s = s, .slots = slots, .D = D, .T = N};
  int32_t *id = read_i32(ids, slots, N);
  float *scratch_acc = NULL;
  if (s->out.dtype == WK_F32) c.part = (float *)wk_operand_ptr(&s->out, slots);
  else c.part = scratch_acc = malloc(sizeof(float) * (size_t)(V * D > 0 ? V * D : 1));
  if (!id || !c.part) { free(id); free(scratch_acc); return wk_error(WK_ERR_OOM, "embedding: out of memory"); }
  c.ids = id;
  wk_parallel_for(V, V * D < 4 * GRAIN_ELEMS ? V : 1, embed_bwd_range, &c);
  free(id);
  free(scratch_acc);
  return c.oom ? wk_error(WK_ERR_OOM, "embedding: out of memory") : WK_OK;
}

// ---- cross-entropy: loss = logsumexp(x) - x[target] per row ----
typedef struct {
  const wk_step *s;
  void *const *slots;
  int64_t V;
  const int32_t *t;
  float *loss;         // forward: per-row losses
  const float *g;      // backward: per-row dloss (NULL: gs for every row)
  float gs;
  _Atomic int oom;
} ce_ctx;

static void ce_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  ce_ctx *c = vc;
  int64_t V = c->V;
  int32_t ignore = (int32_t)c->s->attrs.i[0];
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, V)) { c->oom = 1; return; }
  for (int64_t r = b; r < e; r++) {
    if (c->t[r] == ignore) { c->loss[r] = 0; continue; }
    const float *x = row_in(&c->s->in[0], c->slots, r, V, sc.p);
    float m = vmax(x, V);
    c->loss[r] = m + logf(vexp_sum(x, V, m)) - x[c->t[r]];
  }
  scratch_put(&sc);
}

// dlogits = (softmax(x) - onehot(target)) * g; zero rows for ignored targets
static void ce_bwd_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  ce_ctx *c = vc;
  const wk_step *s = c->s;
  int64_t V = c->V;
  int32_t ignore = (int32_t)s->attrs.i[0];
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, 2 * V)) { c->oom = 1; return; }
  for (int64_t r = b; r < e; r++) {
    float *y = row_out(&s->out, c->slots, r, V, sc.p + V);
    if (c->t[r] == ignore) {
      memset(y, 0, sizeof(float) * (size_t)V);
    } else {
      const float *x = row_in(&s->in[0], c->slots, r, V, sc.p);
      float g = c->g ? c->g[r] : c->gs;
      float m = vmax(x, V), k = g / vexp_store(x, y, V, m);
      for (int64_t i = 0; i < V; i++) y[i] *= k;
      y[c->t[r]] -= g;
    }
    store(&s->out, c->slots, r * V, V, y);
  }
  scratch_put(&sc);
}

static wk_status ce_kernel(const wk_step *s, void *const *slots, bool bwd) {
  const wk_operand *tg = &s->in[1];
  int64_t V = last_of(&s->in[0]), N = numel_of(tg);
  int32_t ignore = (int32_t)s->attrs.i[0];
  int red = (int)s->attrs.i[1];
  ce_ctx c = {.s = s, .slots = slots, .V = V};
  int32_t *t = read_i32(tg, slots, N);
  if (!t) return wk_error(WK_ERR_OOM, "cross_entropy: out of memory");
  int64_t count = 0;
  for (int64_t r = 0; r < N; r++) {
    if (t[r] == ignore) continue;
    if (t[r] < 0 || t[r] >= V) {
      wk_status st = wk_error(WK_ERR_ARG,
                              "cross_entropy: target %d at position %lld is out of range [0, %lld) and is not "
                              "ignore_index (%d)", t[r], (long long)r, (long long)V, ignore);
      free(t);
      return st;
    }
    count++;
  }
  c.t = t;
  float *buf = malloc(sizeof(float) * (size_t)(N > 0 ? N : 1));
  if (!buf) { free(t); return wk_error(WK_ERR_OOM, "cross_entropy: out of memory"); }
  if (bwd) {
    if (red == 0) {
      WK_ISA_FN(wk_cpu_load_f32)(&s->in[2], slots, 0, N, buf);
      c.g = buf;
    } else {
      WK_ISA_FN(wk_cpu_load_f32)(&s->in[2], slots, 0, 1, &c.gs);
      if (red == 1) c.gs = count ? c.gs / (float)count : NAN;
    }
    wk_parallel_for(N, grain_rows(V), ce_bwd_range, &c);
  } else {
    c.loss = buf;
    wk_parallel_for(N, grain_rows(V), ce_range, &c);
    if (red == 0) {
      store(&s->out, slots, 0, N, buf);
    } else { // fixed-order double sum: the same result on any thread count
      double acc = 0;
      for (int64_t r = 0; r < N; r++) acc += buf[r];
      float v = red == 1 ? (count ? (float)(acc / (double)count) : NAN) : (float)acc;
      store(&s->out, slots, 0, 1, &v);
    }
  }
  free(buf);
  free(t);
  return c.oom ? wk_error(WK_ERR_OOM, "cross_entropy: out of memory") : WK_OK;
}

// ---- scaled dot-product attention ----
// Flash-style: a task takes a tile of query rows -- the G query heads that share one
// kv head times up to SDPA_TQ positions -- and walks its visible keys in blocks of
// SDPA_BK: S = Q K^T and O += P V are small GEMMs, with an online softmax (running
// max m, sum l per row) in between. No [T, S] matrix is ever stored.
#define SDPA_BK 64
#define SDPA_ROWS 64

#if defined(__AVX512F__)
// Short attention (sentence encoders: ~20 keys, D = 32): the two products of a key
// block are a few thousand FMAs, less than the generic GEMM spends planning and
// packing them, so here they run straight from registers. D % 16 == 0.
// C[r, 0:16*NV) = (acc ? C : 0) + sum_k A[r, k] B[k, 0:16*NV) for NR rows, from
// registers. Both products of a key block have this shape: S = Q K^T (B = K^T in
// kt: D rows of SDPA_BK, zero past n) and O += P V (B = V, rows vld apart).
static inline __attribute__((always_inline)) void attn_tile(const int NR, const int NV, const float *a, int64_t lda,
                                                           int64_t K, const float *b, int64_t ldb, float *c,
                                                           int64_t ldc, const bool acc) {
  __m512 sum[4][4];
  for (int r = 0; r < NR; r++)
    for (int v = 0; v < NV; v++) sum[r][v] = acc ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k++) {
    __m512 bv[4];
    for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
    for (int r = 0; r < NR; r++) {
      __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int v = 0; v < NV; v++) sum[r][v] = _mm512_fmadd_ps(av, bv[v], sum[r][v]);
    }
  }
  for (int r = 0; r < NR; r++)
    for (int v = 0; v < NV; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, sum[r][v]);
}

// All rows of a product, four at a time (16 * NV columns).
#define ATTN_TILES(NV)                                                                                   \
  static void attn_rows_##NV(int64_t rows, const float *a, int64_t lda, int64_t K, const float *b,       \
                             int64_t ldb, float *c, int64_t ldc, bool acc) {                             \
    int64_t i = 0;                                                                                       \
    for (; i + 4 <= rows; i += 4) attn_tile(4, NV, a + i * lda, lda, K, b, ldb, c + i * ldc, ldc, acc);  \
    for (; i < rows; i++) attn_tile(1, NV, a + i * lda, lda, K, b, ldb, c + i * ldc, ldc, acc);          \
  }
ATTN_TILES(1)
ATTN_TILES(2)
ATTN_TILES(3)
ATTN_TILES(4)
typedef void (*attn_rows_fn)(int64_t, const float *, int64_t, int64_t, const float *, int64_t, float *, int64_t, bool);
static const attn_rows_fn attn_rows[4] = {attn_rows_1, attn_rows_2, attn_rows_3, attn_rows_4};

#endif

// S = Q K^T for one block (sc rows SDPA_BK apart); kt: D * SDPA_BK floats of scratch.
static void block_scores(const float *qt, int64_t rows, int64_t D, const float *k, int64_t kld, int64_t n,
                         float *kt, float *sc) {
#if defined(__AVX512F__)
  if (D % 16 == 0) {
    wk_transpose_rows_f32(k, kld, n, D, SDPA_BK, kt);
    attn_rows[(n + 15) / 16 - 1](rows, qt, D, D, kt, SDPA_BK, sc, SDPA_BK, false);
    return;
  }
#endif
  (void)kt;
  wk_gemm_f32(0, 1, rows, n, D, 1.0f, qt, D, 0, k, kld, 0, 0.0f, sc, SDPA_BK, 0, 1);
}

// O += P V for one block.
static void block_pv(const float *sc, int64_t rows, int64_t n, const float *v, int64_t vld, int64_t D, float *o) {
#if defined(__AVX512F__)
  if (D % 16 == 0) {
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
      int64_t nv = (D - d0) / 16 < 4 ? (D - d0) / 16 : 4;
      attn_rows[nv - 1](rows, sc, SDPA_BK, n, v + d0, vld, o + d0, D, true);
    }
    return;
  }
#endif
  wk_gemm_f32(0, 0, rows, D, n, 1.0f, sc, SDPA_BK, 0, v, vld, 0, 1.0f, o, D, 0, 1);
}

// Keys or values: f32 rows read in place, or rows of another dtype (f16, bf16, or
// q8_0 blocks: a KV cache) converted one block of SDPA_BK positions at a time, and
// only the positions that exist (a preallocated cache is mostly empty).
typedef struct { const wk_operand *o; mat4 m; bool direct; } kvsrc;

typedef struct {
  const wk_step *s;
  void *const *slots;
  mat4 q;
  kvsrc k, v;
  const float *mask;
  int64_t ms[4];
  int64_t Hq, Hkv, T, S, Se, D, G, TQ, ntq;   // S: positions stored, Se: those that exist
  float scale;
  bool causal;
  _Atomic int oom;
} sdpa_ctx;

// Rows [s0, s0 + n) of batch bb, kv head hk, as f32 with leading dimension *ld.
static const float *kv_rows(const sdpa_ctx *c, const kvsrc *src, int64_t bb, int64_t hk, int64_t s0, int64_t n,
                            float *buf, int64_t *ld) {
  if (src->direct) {
    *ld = src->m.s2;
    return src->m.p + bb * src->m.s0 + hk * src->m.s1 + s0 * src->m.s2;
  }
  const wk_operand *o = src->o;
  int64_t D = c->D, lin = ((bb * c->Hkv + hk) * c->S + s0) * D;
  *ld = D;
  if (o->dtype == WK_Q8_0) { // contiguous whole blocks (sdpa_kernel checks)
    const char *p = (const char *)c->slots[o->slot] + wk_dtype_bytes(WK_Q8_0, o->offset + lin);
    WK_ISA_FN(wk_cpu_dequant)(WK_Q8_0, p, buf, n * D / 32);
  } else {
    WK_ISA_FN(wk_cpu_load_f32)(o, c->slots, lin, n * D, buf);
  }
  return buf;
}

static void sdpa_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  sdpa_ctx *c = vc;
  const wk_step *s = c->s;
  int64_t D = c->D, T = c->T, S = c->Se, G = c->G, R = G * c->TQ;
  float *buf = malloc(sizeof(float) * (size_t)(R * (2 * D + SDPA_BK + 2) + D + 3 * SDPA_BK * D));
  if (!buf) { c->oom = 1; return; }
  float *qt = buf, *o = qt + R * D, *sc = o + R * D, *m = sc + R * SDPA_BK, *l = m + R, *tmp = l + R;
  float *kbuf = tmp + D, *vbuf = kbuf + SDPA_BK * D, *kt = vbuf + SDPA_BK * D;
  for (int64_t item = b; item < e; item++) {
    int64_t t0 = (item % c->ntq) * c->TQ, hk = (item / c->ntq) % c->Hkv, bb = item / (c->ntq * c->Hkv);
    int64_t tn = T - t0 < c->TQ ? T - t0 : c->TQ, rows = G * tn; // row i = g * tn + tt
    for (int64_t i = 0; i < rows; i++) {
      int64_t h = hk * G + i / tn, t = t0 + i % tn;
      const float *qr = c->q.p + bb * c->q.s0 + h * c->q.s1 + t * c->q.s2;
      for (int64_t d = 0; d < D; d++) { qt[i * D + d] = qr[d] * c->scale; o[i * D + d] = 0; }
      m[i] = -INFINITY;
      l[i] = 0;
    }
    int64_t kend = c->causal ? t0 + tn + S - T : S; // keys any row of the tile sees
    if (kend > S) kend = S;
    for (int64_t s0 = 0; s0 < kend; s0 += SDPA_BK) {
      int64_t n = kend - s0 < SDPA_BK ? kend - s0 : SDPA_BK, kld, vld;
      const float *kr = kv_rows(c, &c->k, bb, hk, s0, n, kbuf, &kld);
      block_scores(qt, rows, D, kr, kld, n, kt, sc);
      for (int64_t i = 0; i < rows; i++) {
        int64_t h = hk * G + i / tn, t = t0 + i % tn;
        float *srow = sc + i * SDPA_BK;
        if (c->mask) {
          const float *mr = c->mask + bb * c->ms[0] + h * c->ms[1] + t * c->ms[2] + s0 * c->ms[3];
          for (int64_t j = 0; j < n; j++) srow[j] += mr[j * c->ms[3]];
        }
        if (c->causal) // key s0 + j is visible when s0 + j <= t + S - T
          for (int64_t j = t + S - T + 1 - s0 > 0 ? t + S - T + 1 - s0 : 0; j < n; j++) srow[j] = -INFINITY;
        float bm = vmax(srow, n);
        if (!(bm > -INFINITY)) { // all masked, or NaN scores (then the row is NaN)
          if (scores_nan(srow, n)) l[i] = NAN;
          memset(srow, 0, sizeof(float) * (size_t)n);
          continue;
        }
        if (bm > m[i]) {
          float a = expz(m[i] - bm);
          l[i] *= a;
          for (int64_t d = 0; d < D; d++) o[i * D + d] *= a;
          m[i] = bm;
        }
        l[i] += vexp(srow, srow, n, m[i]);
      }
      const float *vr = kv_rows(c, &c->v, bb, hk, s0, n, vbuf, &vld);
      block_pv(sc, rows, n, vr, vld, D, o);
    }
    for (int64_t i = 0; i < rows; i++) {
      int64_t h = hk * G + i / tn, t = t0 + i % tn, r = (bb * c->Hq + h) * T + t;
      float *y = row_out(&s->out, c->slots, r, D, tmp), inv = l[i] == 0 ? 0.0f : 1.0f / l[i]; // fully masked: 0
      for (int64_t d = 0; d < D; d++) y[d] = o[i * D + d] * inv;
      store(&s->out, c->slots, r * D, D, y);
    }
  }
  free(buf);
}

// k or v: read in place (f32), converted per block (f16, bf16, contiguous q8_0).
static bool kv_src(const wk_operand *o, void *const *slots, kvsrc *k) {
  *k = (kvsrc){.o = o, .direct = direct_f32(o)};
  if (k->direct) k->m = (mat4){(const float *)slots[o->slot] + o->offset, o->stride[0], o->stride[1], o->stride[2]};
  if (o->dtype != WK_Q8_0) return true;
  int64_t st[WK_MAX_DIMS];
  wk_contiguous_strides(o->ndim, o->shape, st);
  bool dense = true;
  for (int d = 0; d < o->ndim; d++) dense = dense && (o->shape[d] == 1 || o->stride[d] == st[d]);   // size-1 axes: stride 0
  return dense && o->offset % 32 == 0 && o->shape[3] % 32 == 0;
}

static wk_status sdpa_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *q = &s->in[0], *k = &s->in[1];
  sdpa_ctx c = {.s = s, .slots = slots, .Hq = q->shape[1], .Hkv = k->shape[1], .T = q->shape[2], .S = k->shape[2],
                .D = q->shape[3], .G = q->shape[1] / k->shape[1], .scale = s->attrs.f[0], .causal = s->attrs.i[0] != 0};
  c.Se = c.S;
  int nin = s->nin;
  if (s->attrs.i[1]) { // the keys that exist: a run-time length
    int32_t len = *(const int32_t *)wk_operand_ptr(&s->in[--nin], slots);
    if (len < 0 || len > c.S)
      return wk_error(WK_ERR_SHAPE, "sdpa: kv_len %d outside [0, %lld] (the keys' capacity)", len, (long long)c.S);
    c.Se = len;
  }
  if (!numel_of(&s->out)) return WK_OK;
  c.TQ = SDPA_ROWS / c.G > 0 ? SDPA_ROWS / c.G : 1;
  if (c.TQ > c.T) c.TQ = c.T;
  c.ntq = (c.T + c.TQ - 1) / c.TQ;
  if (!kv_src(k, slots, &c.k) || !kv_src(&s->in[2], slots, &c.v))
    return wk_error(WK_ERR_STATE, "sdpa: q8_0 keys and values must be contiguous whole blocks along D");
  float *oq = NULL, *om = NULL;
  bool fine = attn_mat4(q, slots, &c.q, &oq);
  if (fine && nin > 3) fine = attn_mask(&s->in[3], slots, &c.mask, c.ms, &om);
  if (fine) {
    int64_t items = q->shape[0] * c.Hkv * c.ntq, flops = c.G * c.TQ * c.Se * c.D * 4;
    wk_parallel_for(items, flops >= (1 << 18) ? 1 : (1 << 18) / (flops ? flops : 1), sdpa_range, &c);
  }
  free(oq);
  free(om);
  return fine && !c.oom ? WK_OK : wk_error(WK_ERR_OOM, "sdpa: out of memory");
}

// ---- dispatch ----
static wk_status rows_kernel(const wk_step *s, void *const *slots, wk_range_fn fn, const char *name) {
  rctx c = {.s = s, .slots = slots, .D = last_of(&s->out), .nt = want_nt(&s->out)};
  int64_t rows = c.D ? numel_of(&s->out) / c.D : 0;
  wk_parallel_for(rows, grain_rows(c.D), fn, &c);
  return c.oom ? wk_error(WK_ERR_OOM, "%s: out of memory", name) : WK_OK;
}

// ---- row chains: several row stages per pass, the row staying in L1 ----
typedef struct {
  const wk_step *s;
  void *const *slots;
  int64_t D;
  int n;
  const float **w, **b;  // each stage's norm weight and bias as f32 (NULL: none)
  _Atomic int oom;
} chain_ctx;

// A softmax (RMSNorm) stage whose only input is the previous stage's row (no prologue).
static bool op_of_prev(const wk_step *st, wk_op op) { return st->op == op && !st->prog.n && st->in[0].slot < 0; }

static void chain_range(void *vc, int64_t rb, int64_t re, int tid) {
  (void)tid;
  chain_ctx *c = vc;
  int64_t D = c->D;
  float local[LOCAL_FLOATS];
  scratch sc;
  if (!scratch_get(&sc, local, 3 * D)) { c->oom = 1; return; }
  float *ping = sc.p, *pong = sc.p + D, *tmp = sc.p + 2 * D;
  for (int64_t r = rb; r < re; r++) {
    const float *cur = NULL;
    pending pend = {0}; // p > 0: cur holds a softmax's unnormalized row (see chain_softmax)
    float ss = -1.0f;   // >= 0: sum(cur^2), handed over by an RMSNorm to the next
    float scale = 1.0f; // the row is scale * cur: a scale an RMSNorm deferred to the next
    for (int j = 0; j < c->n; j++) {
      const wk_step *st = &c->s[j];
      float *dst = cur == ping ? pong : ping;
      if (j + 1 == c->n) dst = row_out(&st->out, c->slots, r, D, dst); // the last stage writes f32 rows in place
      if (st->op == WK_STEP_FUSED_EW) { // epilogue
        WK_ISA_FN(wk_cpu_ew_eval)(&st->prog, st->in, c->slots, r * D, D, cur, dst);
        cur = dst;
        continue;
      }
      const float *x = cur;
      if (st->prog.n) {
        WK_ISA_FN(wk_cpu_ew_eval)(&st->prog, st->pro_in, c->slots, r * D, D, cur, tmp);
        x = tmp;
      } else if (st->in[0].slot >= 0) {
        x = row_in(&st->in[0], c->slots, r, D, tmp);
      }
      float eps = st->attrs.f[0];
      switch (st->op) {
        case WK_OP_SOFTMAX: // pend.p > 0 only here: a deferring softmax is followed by op_of_prev
          pend = chain_softmax(x, dst, D, pend, j + 1 < c->n && op_of_prev(&c->s[j + 1], WK_OP_SOFTMAX));
          break;
        case WK_OP_LOG_SOFTMAX: softmax_row(x, dst, D, true); break;
        case WK_OP_RMS_NORM: // ss >= 0 only here: a handing-over norm is followed by op_of_prev
          ss = rms_row(x, dst, D, eps, c->w[j], ss, &scale, j + 1 < c->n && op_of_prev(&c->s[j + 1], WK_OP_RMS_NORM));
          break;
        default: ln_row(x, dst, D, eps, c->w[j], c->b[j]); break;
      }
      cur = dst;
    }
    store(&c->s[c->n - 1].out, c->slots, r * D, D, cur);
  }
  scratch_put(&sc);
}

wk_status WK_ISA_FN(wk_cpu_rowchain)(const wk_step *s, void *const *slots) {
  chain_ctx c = {.s = s, .slots = slots, .n = s->chain};
  const wk_operand *out = &s[c.n - 1].out;
  c.D = last_of(out);
  int64_t rows = c.D ? numel_of(out) / c.D : 0;
  // any number of stages: 1,000 chained softmaxes are one pass over each row
  const float **wb = calloc(2 * (size_t)c.n, sizeof *wb);
  float **owned = calloc(2 * (size_t)c.n, sizeof *owned);
  if (!wb || !owned) {
    free(wb);
    free(owned);
    return wk_error(WK_ERR_OOM, "row chain: out of memory");
  }
  c.w = wb;
  c.b = wb + c.n;
  bool oom = false;
  for (int j = 0; j < c.n; j++) {
    const wk_step *st = &s[j];
    if (st->op != WK_OP_RMS_NORM && st->op != WK_OP_LAYER_NORM) continue;
    bool has_w = st->attrs.i[0] != 0, has_b = st->op == WK_OP_LAYER_NORM && st->attrs.i[1] != 0;
    if (has_w && !(c.w[j] = param_f32(&st->in[1], slots, c.D, &owned[2 * j]))) oom = true;
    if (has_b && !(c.b[j] = param_f32(&st->in[1 + has_w], slots, c.D, &owned[2 * j + 1]))) oom = true;
  }
  if (!oom) wk_parallel_for(rows, grain_rows(c.D), chain_range, &c);
  for (int j = 0; j < 2 * c.n; j++) free(owned[j]);
  free(owned);
  free(wb);
  return oom || c.oom ? wk_error(WK_ERR_OOM, "row chain: out of memory") : WK_OK;
}

wk_status WK_ISA_FN(wk_cpu_nn)(const wk_step *s, void *const *slots) {
  switch (s->op) {
    case WK_OP_SOFTMAX: return rows_kernel(s, slots, softmax_range, "softmax");
    case WK_OP_LOG_SOFTMAX: return rows_kernel(s, slots, log_softmax_range, "log_softmax");
    case WK_OP_SOFTMAX_BWD: return rows_kernel(s, slots, softmax_bwd_range, "softmax");
    case WK_OP_LOG_SOFTMAX_BWD: return rows_kernel(s, slots, log_softmax_bwd_range, "log_softmax");
    case WK_OP_RMS_NORM:
    case WK_OP_RMS_NORM_BWD: return norm_kernel(s, slots, "rms_norm");
    case WK_OP_LAYER_NORM:
    case WK_OP_LAYER_NORM_BWD: return norm_kernel(s, slots, "layer_norm");
    case WK_OP_NORM_DW: return norm_dw_kernel(s, slots);
    case WK_OP_ROPE: return rope_kernel(s, slots);
    case WK_OP_EMBEDDING: return embedding_kernel(s, slots);
    case WK_OP_EMBEDDING_BWD: return embedding_bwd_kernel(s, slots);
    case WK_OP_SDPA: return sdpa_kernel(s, slots);
    case WK_OP_CROSS_ENTROPY: return ce_kernel(s, slots, false);
    case WK_OP_CROSS_ENTROPY_BWD: return ce_kernel(s, slots, true);
    default: return wk_error(WK_ERR_STATE, "%s: no CPU kernel", wk_ops[s->op].name);
  }
}
