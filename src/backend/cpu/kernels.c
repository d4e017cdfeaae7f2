// CPU kernels other than the elementwise VM: reductions, argmax, concat, pad,
// matmul and the fused LoRA kernel. Compiled per ISA like ew.c.
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernels.h"
#include "../kernel_math.h"
#include "../../engine/plan.h"
#include "gemm.h"
#include "threadpool.h"

void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out);
void WK_ISA_FN(wk_cpu_prologue)(const wk_step *s, void *const *slots, int64_t start, int64_t n, float *out);
wk_status WK_ISA_FN(wk_cpu_nn)(const wk_step *s, void *const *slots);
wk_status WK_ISA_FN(wk_cpu_sdpa_bwd)(const wk_step *s, void *const *slots);
wk_status WK_ISA_FN(wk_cpu_qkernel)(const wk_step *s, void *const *slots);
void WK_ISA_FN(wk_cpu_act)(wk_op op, float *d, const float *a, int64_t n);

static int64_t numel_of(const wk_operand *o) {
  int64_t n = 1;
  for (int d = 0; d < o->ndim; d++) n *= o->shape[d];
  return n;
}

// Values of input 0 at linear indices [start, start + n): computed by the fused
// prologue when there is one, otherwise read (any layout, any dtype).
static void input0(const wk_step *s, void *const *slots, int64_t start, int64_t n, float *out) {
  if (s->prog.n) WK_ISA_FN(wk_cpu_prologue)(s, slots, start, n, out);
  else WK_ISA_FN(wk_cpu_load_f32)(&s->in[0], slots, start, n, out);
}

static void store_f32(const wk_operand *o, void *const *slots, int64_t start, int64_t n, const float *v) {
  char *p = (char *)slots[o->slot] + (o->offset + start) * (int64_t)wk_dtype_size(o->dtype);
  switch (o->dtype) {
    case WK_F32: memcpy(p, v, (size_t)n * sizeof(float)); break;
    case WK_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *)p)[i] = wk_f32_to_bf16(v[i]); break;
    case WK_F16: for (int64_t i = 0; i < n; i++) ((uint16_t *)p)[i] = wk_f32_to_f16(v[i]); break;
    case WK_I32: for (int64_t i = 0; i < n; i++) ((int32_t *)p)[i] = wkm_f32_to_i32(v[i]); break;
    default: break;
  }
}

// ---- reductions: shape seen as (outer O, reduced R, inner I) ----
typedef struct {
  const wk_step *s;
  void *const *slots;
  int64_t O, R, I;
  bool is_max;
} red_ctx;

#define CHUNK 2048

static float row_reduce(const float *v, int64_t n, bool is_max) {
  float acc[16];
  for (int l = 0; l < 16; l++) acc[l] = is_max ? -INFINITY : 0.0f;
  int64_t i = 0;
  if (is_max) {
    for (; i + 16 <= n; i += 16)
      for (int l = 0; l < 16; l++) acc[l] = v[i + l] > acc[l] || v[i + l] != v[i + l] ? v[i + l] : acc[l];
    for (; i < n; i++) acc[0] = v[i] > acc[0] || v[i] != v[i] ? v[i] : acc[0];
    float m = acc[0];
    for (int l = 1; l < 16; l++) m = acc[l] > m || acc[l] != acc[l] ? acc[l] : m;
    return m;
  }
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] += v[i + l];
  for (; i < n; i++) acc[i & 15] += v[i];
  float t = 0;
  for (int l = 0; l < 16; l++) t += acc[l];
  return t;
}

static float combine(float total, float v, bool is_max) {
  return is_max ? (v > total || v != v ? v : total) : total + v;
}

static void red_inner(void *ctx, int64_t b, int64_t e, int tid) { // I == 1: reduce contiguous rows
  (void)tid;
  const red_ctx *c = ctx;
  float buf[CHUNK];
  for (int64_t o = b; o < e; o++) {
    float total = c->is_max ? -INFINITY : 0.0f;
    for (int64_t k = 0; k < c->R; k += CHUNK) {
      int64_t n = c->R - k < CHUNK ? c->R - k : CHUNK;
      input0(c->s, c->slots, o * c->R + k, n, buf);
      total = combine(total, row_reduce(buf, n, c->is_max), c->is_max);
    }
    store_f32(&c->s->out, c->slots, o, 1, &total);
  }
}

static void red_outer(void *ctx, int64_t b, int64_t e, int tid) { // I > 1: accumulate rows
  (void)tid;
  const red_ctx *c = ctx;
  float acc[CHUNK], part[CHUNK], buf[CHUNK];
  // work items: (o, column chunk)
  int64_t chunks = (c->I + CHUNK - 1) / CHUNK;
  for (int64_t w = b; w < e; w++) {
    int64_t o = w / chunks, j0 = (w % chunks) * CHUNK, n = c->I - j0 < CHUNK ? c->I - j0 : CHUNK;
    for (int64_t j = 0; j < n; j++) acc[j] = c->is_max ? -INFINITY : 0.0f;
    // sums add blocks of 256 rows into acc: one long f32 running sum drifts (400k rows: 1e-4)
    for (int64_t r0 = 0; r0 < c->R; r0 += 256) {
      int64_t r1 = c->R - r0 < 256 ? c->R : r0 + 256;
      for (int64_t j = 0; j < n; j++) part[j] = c->is_max ? -INFINITY : 0.0f;
      for (int64_t r = r0; r < r1; r++) {
        input0(c->s, c->slots, (o * c->R + r) * c->I + j0, n, buf);
        if (c->is_max) for (int64_t j = 0; j < n; j++) part[j] = buf[j] > part[j] || buf[j] != buf[j] ? buf[j] : part[j];
        else for (int64_t j = 0; j < n; j++) part[j] += buf[j];
      }
      for (int64_t j = 0; j < n; j++) acc[j] = combine(acc[j], part[j], c->is_max);
    }
    store_f32(&c->s->out, c->slots, o * c->I + j0, n, acc);
  }
}

// Few long rows (a loss over a whole batch): each row is cut into slices that
// run in parallel; the slices' results combine in a fixed order, so the sum does
// not depend on the thread count's timing.
#define SPLIT_SLICES 16
typedef struct { const red_ctx *c; float *part; } split_ctx;

static void red_slices(void *ctx, int64_t b, int64_t e, int tid) {
  (void)tid;
  const split_ctx *sc = ctx;
  const red_ctx *c = sc->c;
  float buf[CHUNK];
  for (int64_t w = b; w < e; w++) {
    int64_t o = w / SPLIT_SLICES, k = w % SPLIT_SLICES;
    int64_t r0 = c->R * k / SPLIT_SLICES, r1 = c->R * (k + 1) / SPLIT_SLICES;
    float total = c->is_max ? -INFINITY : 0.0f;
    for (int64_t r = r0; r < r1; r += CHUNK) {
      int64_t n = r1 - r < CHUNK ? r1 - r : CHUNK;
      input0(c->s, c->slots, o * c->R + r, n, buf);
      total = combine(total, row_reduce(buf, n, c->is_max), c->is_max);
    }
    sc->part[w] = total;
  }
}

static wk_status reduce_split(const red_ctx *c) {
  float part[4 * SPLIT_SLICES];
  split_ctx sc = {c, part};
  wk_parallel_for(c->O * SPLIT_SLICES, 1, red_slices, &sc);
  for (int64_t o = 0; o < c->O; o++) {
    float total = c->is_max ? -INFINITY : 0.0f;
    for (int k = 0; k < SPLIT_SLICES; k++) total = combine(total, part[o * SPLIT_SLICES + k], c->is_max);
    store_f32(&c->s->out, c->slots, o, 1, &total);
  }
  return WK_OK;
}


static wk_status reduce_kernel(const wk_step *s, void *const *slots, bool is_max) {
  red_ctx c = {s, slots, 0, 0, 0, is_max};
  wk_step moved;
  if (!wk_reduce_split(&s->in[0], s->attrs.axes, &c.O, &c.R, &c.I)) {
    // Scattered axes: read the input through a permuted view that puts the
    // reduced axes last (kept axes keep their order, so the output is unchanged).
    // The compiler never gives such a reduction a prologue.
    if (s->prog.n) return wk_error(WK_ERR_STATE, "reduce: prologue with scattered axes");
    moved = *s;
    wk_operand *in = &moved.in[0];
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
      for (int d = 0; d < s->in[0].ndim; d++)
        if (((s->attrs.axes >> d) & 1) == (unsigned)pass) {
          in->shape[k] = s->in[0].shape[d];
          in->stride[k] = s->in[0].stride[d];
          k++;
        }
    int kept = 0;
    for (int d = 0; d < s->in[0].ndim; d++) kept += !((s->attrs.axes >> d) & 1);
    moved.attrs.axes = ~((1u << kept) - 1) & ((1u << s->in[0].ndim) - 1);
    c.s = s = &moved;
    wk_reduce_split(&s->in[0], s->attrs.axes, &c.O, &c.R, &c.I);
  }
  if (c.I == 1 && c.O < 4 && c.R >= (1 << 16)) return reduce_split(&c);
  if (c.I == 1) wk_parallel_for(c.O, c.R >= 4096 ? 1 : 4096 / (c.R ? c.R : 1) + 1, red_inner, &c);
  else wk_parallel_for(c.O * ((c.I + CHUNK - 1) / CHUNK), 1, red_outer, &c);
  return WK_OK;
}

// ---- argmax along one axis ----
static wk_status argmax_kernel(const wk_step *s, void *const *slots) {
  int ax = (int)s->attrs.i[0];
  const wk_operand *in = &s->in[0];
  int64_t O = 1, R = in->shape[ax], I = 1;
  for (int d = 0; d < ax; d++) O *= in->shape[d];
  for (int d = ax + 1; d < in->ndim; d++) I *= in->shape[d];
  float *row = malloc(sizeof(float) * (size_t)(R ? R : 1));
  if (!row) return wk_error(WK_ERR_OOM, "argmax: out of memory");
  int32_t *out = (int32_t *)wk_operand_ptr(&s->out, slots);
  for (int64_t o = 0; o < O; o++)
    for (int64_t i = 0; i < I; i++) {
      int64_t best = 0;
      float bv = -INFINITY;
      for (int64_t r = 0; r < R; r++) {
        float v;
        input0(s, slots, (o * R + r) * I + i, 1, &v);
        if (v > bv || (v != v && bv == bv)) { bv = v; best = r; }
        row[0] = v;
      }
      out[o * I + i] = (int32_t)best;
    }
  free(row);
  return WK_OK;
}

// Each row's (max, sum of exp(x - max), first argmax) along the last axis (ops.h): the
// first NaN is the argmax (as wk_argmax) and makes max and sum NaN; values equal to the
// max count 1 even where it is infinite (-inf - -inf is NaN, not the 0 of equal values).
// Two passes over a row: its max, then the sum.
static wk_status top1_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *in = &s->in[0];
  const int64_t V = in->shape[in->ndim - 1], rows = numel_of(in) / V;
  float *row = malloc(sizeof(float) * (size_t)V), *out = (float *)wk_operand_ptr(&s->out, slots);
  if (!row) return wk_error(WK_ERR_OOM, "top1: out of memory for a row of %lld values", (long long)V);
  for (int64_t r = 0; r < rows; r++) {
    input0(s, slots, r * V, V, row);
    float m = -INFINITY;
    int64_t at = 0;
    for (int64_t i = 0; i < V && m == m; i++)
      if (row[i] > m || row[i] != row[i]) m = row[i], at = i;
    double sum = m == m ? 0 : NAN;
    for (int64_t i = 0; i < V && m == m; i++) sum += row[i] == m ? 1.0 : exp((double)row[i] - (double)m);
    out[3 * r] = m;
    out[3 * r + 1] = (float)sum;
    out[3 * r + 2] = (float)at;
  }
  free(row);
  return WK_OK;
}

// ---- strided copies that keep the dtype (concat, pad) ----
static void copy_strided(char *dst, const int64_t *dst_stride, const char *src, const int64_t *src_stride,
                         const int64_t *shape, int nd, size_t es) {
  int64_t idx[WK_MAX_DIMS] = {0}, total = 1;
  for (int d = 0; d < nd; d++) total *= shape[d];
  if (!total) return;
  int64_t last = nd ? shape[nd - 1] : 1, ds = nd ? dst_stride[nd - 1] : 1, ss = nd ? src_stride[nd - 1] : 1;
  for (int64_t done = 0; done < total; done += last) {
    int64_t doff = 0, soff = 0;
    for (int d = 0; d < nd - 1; d++) { doff += idx[d] * dst_stride[d]; soff += idx[d] * src_stride[d]; }
    if (ds == 1 && ss == 1) memcpy(dst + doff * (int64_t)es, src + soff * (int64_t)es, (size_t)last * es);
    else
      for (int64_t i = 0; i < last; i++)
        memcpy(dst + (doff + i * ds) * (int64_t)es, src + (soff + i * ss) * (int64_t)es, es);
    for (int d = nd - 2; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

static wk_status concat_kernel(const wk_step *s, void *const *slots) {
  int ax = (int)s->attrs.i[0];
  const wk_operand *out = &s->out;
  size_t es = wk_dtype_size(out->dtype);
  int64_t ostride[WK_MAX_DIMS], start = 0;
  wk_contiguous_strides(out->ndim, out->shape, ostride);
  char *base = (char *)wk_operand_ptr(out, slots);
  for (int k = 0; k < s->nin; k++) {
    const wk_operand *in = &s->in[k];
    copy_strided(base + start * ostride[ax] * (int64_t)es, ostride, (const char *)wk_operand_ptr(in, slots),
                 in->stride, in->shape, in->ndim, es);
    start += in->shape[ax];
  }
  return WK_OK;
}

static wk_status pad_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *out = &s->out, *in = &s->in[0];
  int ax = (int)s->attrs.i[0];
  int64_t before = s->attrs.i[1], n = numel_of(out);
  size_t es = wk_dtype_size(out->dtype);
  char *base = (char *)wk_operand_ptr(out, slots);
  float v = s->attrs.f[0];
  for (int64_t i = 0; i < n; i++) store_f32(out, slots, i, 1, &v); // fill, then copy the interior
  int64_t ostride[WK_MAX_DIMS];
  wk_contiguous_strides(out->ndim, out->shape, ostride);
  copy_strided(base + before * ostride[ax] * (int64_t)es, ostride, (const char *)wk_operand_ptr(in, slots), in->stride,
               in->shape, in->ndim, es);
  (void)base;
  return WK_OK;
}

// ---- set_slice: src written into dst (the step's output, updated in place) ----
// Q8_0 as GGUF stores it: per 32 values, d = max|x| / 127 (f16) and round(x / d) as i8.
static void quantize_q8_0(const float *x, uint8_t *b, int64_t nblocks) {
  for (int64_t k = 0; k < nblocks; k++, x += 32, b += 34) {
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = wk_f32_to_f16(d);
    memcpy(b, &h, 2);
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id);
  }
}

// Element offset of src's row (o, i) of `inner` values: o over the axes before ax, i along ax.
static int64_t src_row(const wk_operand *src, int ax, int64_t o, int64_t i) {
  int64_t off = src->offset + i * src->stride[ax];
  for (int d = ax - 1; d >= 0; d--) {
    off += (o % src->shape[d]) * src->stride[d];
    o /= src->shape[d];
  }
  return off;
}

static wk_status set_slice_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *dst = &s->out, *src = &s->in[1];
  int ax = (int)s->attrs.i[0];
  int64_t start = *(const int32_t *)wk_operand_ptr(&s->in[2], slots), n = src->shape[ax], cap = dst->shape[ax];
  if (start < 0 || start + n > cap)
    return wk_error(WK_ERR_SHAPE, "set_slice: positions [%lld, %lld) do not fit the destination's %lld along axis %d",
                    (long long)start, (long long)(start + n), (long long)cap, ax);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= dst->shape[d];
  for (int d = ax + 1; d < dst->ndim; d++) inner *= dst->shape[d];
  float local[1024];
  float *buf = inner <= 1024 ? local : malloc(sizeof(float) * (size_t)inner);
  if (!buf) return wk_error(WK_ERR_OOM, "set_slice: out of memory");
  // rows of an f32 source with unit stride along them (a decode step's keys and values,
  // transposed views included) are read in place
  bool direct = src->dtype == WK_F32 && ax == src->ndim - 2 && (src->stride[ax + 1] == 1 || inner == 1);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < n; i++) {
      int64_t at = (o * cap + start + i) * inner;   // dst is contiguous
      const float *row = buf;
      if (direct) row = (const float *)slots[src->slot] + src_row(src, ax, o, i);
      else WK_ISA_FN(wk_cpu_load_f32)(src, slots, (o * n + i) * inner, inner, buf);
      if (dst->dtype == WK_Q8_0)
        quantize_q8_0(row, (uint8_t *)slots[dst->slot] + wk_dtype_bytes(WK_Q8_0, dst->offset + at), inner / 32);
      else
        store_f32(dst, slots, at, inner, row);
    }
  if (buf != local) free(buf);
  return WK_OK;
}

// ---- matmul ----
// A matrix operand as GEMM wants it: pointer, transpose flag, leading dimension.
typedef struct { const void *p; int trans; int64_t ld; } mat;

static bool as_mat(const wk_operand *o, void *const *slots, int64_t batch_off, mat *m) {
  int nd = o->ndim;
  int64_t rows = o->shape[nd - 2], cols = o->shape[nd - 1], s0 = o->stride[nd - 2], s1 = o->stride[nd - 1];
  m->p = (const char *)wk_operand_ptr(o, slots) + batch_off * (int64_t)wk_dtype_size(o->dtype);
  if ((s1 == 1 || cols == 1) && (rows == 1 || s0 >= cols)) {
    m->trans = 0;
    m->ld = rows == 1 ? cols : s0;
    return true;
  }
  if ((s0 == 1 || rows == 1) && (cols == 1 || s1 >= rows)) {
    m->trans = 1;
    m->ld = cols == 1 ? rows : s1;
    return true;
  }
  return false;
}

// The right operand has no batch extent of its own (rank 2, or batch axes of size 1
// or stride 0): every batch multiplies by the same matrix.
static bool shared_rhs(const wk_operand *b, int bnd) {
  for (int d = 0; d < b->ndim - 2; d++)
    if (b->shape[d] != 1 && b->stride[d] != 0) return false;
  (void)bnd;
  return true;
}

// The left operand's batch axes match the output's and step over its rows densely:
// row r of batch i is row i * M + r of one [batch * M, K] matrix.
static bool rows_fold(const wk_operand *a, const wk_operand *out, int bnd, int64_t M) {
  if (a->ndim != out->ndim || a->stride[a->ndim - 1] != 1) return false;
  int64_t ld = M == 1 ? a->shape[a->ndim - 1] : a->stride[a->ndim - 2], want = M * ld;
  for (int d = bnd - 1; d >= 0; d--) {
    if (a->shape[d] != out->shape[d]) return false;
    if (a->shape[d] != 1 && a->stride[d] != want) return false;
    want *= a->shape[d];
  }
  return true;
}

// Copies a strided operand into a dense f32 buffer (for layouts GEMM can't take).
static float *densify(const wk_operand *o, void *const *slots) {
  int64_t n = numel_of(o);
  float *buf = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  if (buf) WK_ISA_FN(wk_cpu_load_f32)(o, slots, 0, n, buf);
  return buf;
}

static wk_status matmul_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *a = &s->in[0], *b = &s->in[1], *out = &s->out;
  int nd = out->ndim;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a->shape[a->ndim - 1];
  int64_t batch = M * N > 0 ? numel_of(out) / (M * N) : 0;
  const float alpha = wk_matmul_alpha(s);
  // f16/bf16 operands: widen to f32 (bf16 goes straight to the bf16 GEMM)
  bool half = a->dtype != WK_F32;
  float *da = NULL, *db = NULL, *dc = NULL;
  wk_operand ad = *a, bd = *b;
  void *local[3];
  void *const *sa = slots, *const *sb = slots;
  mat ma, mb;
  bool ok_a = !half && as_mat(a, slots, 0, &ma), ok_b = !half && as_mat(b, slots, 0, &mb);
  if (!ok_a) {
    if (!(da = densify(a, slots))) return wk_error(WK_ERR_OOM, "matmul: out of memory");
    ad.slot = 0; ad.offset = 0; ad.dtype = WK_F32;
    wk_contiguous_strides(ad.ndim, ad.shape, ad.stride);
    local[0] = da;
    sa = local;
  }
  if (!ok_b) {
    if (!(db = densify(b, slots))) { free(da); return wk_error(WK_ERR_OOM, "matmul: out of memory"); }
    bd.slot = 1; bd.offset = 0; bd.dtype = WK_F32;
    wk_contiguous_strides(bd.ndim, bd.shape, bd.stride);
    local[1] = db;
    sb = local;
  }
  float *c = out->dtype == WK_F32 ? (float *)wk_operand_ptr(out, slots) : NULL;
  if (!c && !(c = dc = malloc(sizeof(float) * (size_t)(batch * M * N > 0 ? batch * M * N : 1)))) {
    free(da); free(db);
    return wk_error(WK_ERR_OOM, "matmul: out of memory");
  }
  int bnd = nd - 2;
  // x[B.., M, K] @ W[K, N] with W shared by every batch (a projection of [B, T, K]):
  // when x's batch axes are dense over its rows, all batches are one GEMM of
  // batch * M rows, so W is packed once rather than once per batch.
  if (batch > 1 && shared_rhs(&bd, bnd) && rows_fold(&ad, out, bnd, M) && as_mat(&ad, sa, 0, &ma) && !ma.trans &&
      as_mat(&bd, sb, 0, &mb)) {
    wk_gemm_f32(0, mb.trans, batch * M, N, K, alpha, ma.p, ma.ld, 0, mb.p, mb.ld, 0, 0.0f, c, N, 0, 1);
    goto stored;
  }
  // batch offsets: output batch index -> operand offsets (broadcast axes have stride 0)
  int64_t idx[WK_MAX_DIMS] = {0};
  for (int64_t bi = 0; bi < batch; bi++) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < bnd; d++) {
      int da_ = d - (bnd - (ad.ndim - 2)), db_ = d - (bnd - (bd.ndim - 2));
      if (da_ >= 0 && ad.shape[da_] != 1) oa += idx[d] * ad.stride[da_];
      if (db_ >= 0 && bd.shape[db_] != 1) ob += idx[d] * bd.stride[db_];
    }
    as_mat(&ad, sa, oa, &ma);
    as_mat(&bd, sb, ob, &mb);
    wk_gemm_f32(ma.trans, mb.trans, M, N, K, alpha, ma.p, ma.ld, 0, mb.p, mb.ld, 0, 0.0f, c + bi * M * N, N, 0, 1);
    for (int d = bnd - 1; d >= 0; d--) {
      if (++idx[d] < out->shape[d]) break;
      idx[d] = 0;
    }
  }
stored:
  if (dc) store_f32(out, slots, 0, batch * M * N, dc);
  free(da);
  free(db);
  free(dc);
  return WK_OK;
}

// ---- matmul + bias [+ GELU] (compile_rewrite.c's epilogue rewrite), f32 ----
// One GEMM whose blocks of C take the bias and the activation while still in L1,
// instead of a second pass over C in memory.
typedef struct { const float *bias; int kind; } epi_ctx;

static void epi_apply(float *c, int64_t ldc, int64_t rows, int64_t col0, int64_t n, const void *vctx) {
  const epi_ctx *e = vctx;
  const float *b = e->bias + col0;
  for (int64_t r = 0; r < rows; r++) {
    float *row = c + r * ldc;
    for (int64_t j = 0; j < n; j++) row[j] += b[j];
    if (e->kind == WK_EPI_BIAS_GELU_TANH) WK_ISA_FN(wk_cpu_act)(WK_OP_GELU_TANH, row, row, n);
    else if (e->kind == WK_EPI_BIAS_GELU) WK_ISA_FN(wk_cpu_act)(WK_OP_GELU, row, row, n);
  }
}

static wk_status matmul_epi_kernel(const wk_step *s, void *const *slots) {
  mat x, w;
  const wk_operand *bo = &s->in[2];
  if (s->in[0].dtype != WK_F32 || s->in[1].dtype != WK_F32 || s->out.dtype != WK_F32 || s->in[0].ndim != 2 ||
      s->in[1].ndim != 2 || !as_mat(&s->in[0], slots, 0, &x) || !as_mat(&s->in[1], slots, 0, &w))
    return wk_error(WK_ERR_STATE, "matmul epilogue: operand layout not supported by the CPU kernel");
  int64_t M = s->in[0].shape[0], K = s->in[0].shape[1], N = s->in[1].shape[1];
  float *bias = malloc(sizeof(float) * (size_t)N);
  if (!bias) return wk_error(WK_ERR_OOM, "matmul epilogue: out of memory");
  WK_ISA_FN(wk_cpu_load_f32)(bo, slots, 0, N, bias);
  epi_ctx e = {bias, (int)s->attrs.i[0]};
  wk_gemm_f32_epi(x.trans, w.trans, M, N, K, x.p, x.ld, w.p, w.ld, (float *)wk_operand_ptr(&s->out, slots), N,
                  epi_apply, &e);
  free(bias);
  return WK_OK;
}

// ---- LoRA: out = x@W + scale * (x@A)@B, f32, one kernel ----
static wk_status lora_kernel(const wk_step *s, void *const *slots) {
  mat x, w, a, b;
  if (!as_mat(&s->in[0], slots, 0, &x) || !as_mat(&s->in[1], slots, 0, &w) || !as_mat(&s->in[2], slots, 0, &a) ||
      !as_mat(&s->in[3], slots, 0, &b))
    return wk_error(WK_ERR_STATE, "lora: operand layout not supported by the fused kernel");
  int64_t M = s->in[0].shape[0], K = s->in[0].shape[1], N = s->in[1].shape[1], r = s->in[2].shape[1];
  float *out = (float *)wk_operand_ptr(&s->out, slots);
  static _Thread_local float small[4096];
  float *t = M * r <= 4096 ? small : malloc(sizeof(float) * (size_t)(M * r));
  if (!t) return wk_error(WK_ERR_OOM, "lora: out of memory");
  wk_gemm_f32(x.trans, a.trans, M, r, K, s->attrs.f[0], x.p, x.ld, 0, a.p, a.ld, 0, 0.0f, t, r, 0, 1);
  wk_gemm_f32(x.trans, w.trans, M, N, K, 1.0f, x.p, x.ld, 0, w.p, w.ld, 0, 0.0f, out, N, 0, 1);
  wk_gemm_f32(0, b.trans, M, N, r, 1.0f, t, r, 0, b.p, b.ld, 0, 1.0f, out, N, 0, 1);
  if (t != small) free(t);
  return WK_OK;
}

// ---- a chain of one-row LoRA calls (compile_schedule.c's LoRA chain group) ----
// Call j + 1 reads call j's output; all share W, A and B. lora_kernel ran each call as
// three GEMMs, the GEMV split over the threads: a dispatch and a join a call, the other
// threads idle during the rank-r products. Here one job runs the chain, each thread
// streaming the same contiguous block of W every call (in its L2 after the first),
// and the threads meet once a call, when the next call needs the whole of this one's
// output. The blocks are those lora_kernel's GEMV gives its threads, and every product
// is the same call on the same values, so the results are the same bits:
//   - W as stored ([K, N], axpy form), split along K (wk_gemv_k_chunks): each slice
//     leaves partial sums of all N outputs; every thread adds them (in slice order, as
//     the GEMV does), adds the rank-r term, and so has the whole next x in its own
//     buffer, storing only its share of the output;
//   - W transposed (dot form) or too small to split K: each slice owns a range of
//     columns and stores them; the next call reads x from the output.
typedef struct {
  const wk_step *s;
  void *const *slots;
  int n;
  int64_t K, N, r, slices;
  mat w, a, b;             // every call's (lora_chain_ok checked they are the same)
  bool ksplit;             // slices are K chunks (else column ranges)
  float *part;             // ksplit: [2][slices][N] partial sums, by call parity
  float *xs;               // ksplit: [slices][K] each thread's copy of the current x
  _Atomic int64_t *done;   // done[j]: slices of call j finished
} lora_chain_ctx;

// Slice q's columns [c0, c1): starts at multiples of 16, so that every column takes the
// same vector or tail code as in one GEMV over all of them.
static void chain_cols(const lora_chain_ctx *c, int64_t q, int64_t *c0, int64_t *c1) {
  *c0 = q ? (c->N * q / c->slices) & ~(int64_t)15 : 0;
  *c1 = q + 1 < c->slices ? (c->N * (q + 1) / c->slices) & ~(int64_t)15 : c->N;
}

// The columns [c0, c1) of slices [b, e).
static void chain_span(const lora_chain_ctx *c, int64_t b, int64_t e, int64_t *c0, int64_t *c1) {
  int64_t unused;
  chain_cols(c, b, c0, &unused);
  chain_cols(c, e - 1, &unused, c1);
}

// out[c0:c1] = x W + t B for the columns of slices [b, e); with K split, x W is the sum
// of call j's partial sums.
static void chain_out(const lora_chain_ctx *c, int j, const float *t, int64_t b, int64_t e, float *out) {
  int64_t c0, c1;
  chain_span(c, b, e, &c0, &c1);
  if (c0 >= c1) return;
  const float *part = c->part + (j & 1) * c->slices * c->N;
  for (int64_t i = c0; i < c1; i++) out[i] = 0.0f + part[i];   // the GEMV's sum: 0 + p0 + p1 + ...
  for (int64_t q = 1; q < c->slices; q++)
    for (int64_t i = c0; i < c1; i++) out[i] += part[q * c->N + i];
  const float *bq = (const float *)c->b.p + (c->b.trans ? c0 * c->b.ld : c0);
  wk_gemm_f32_serial(0, c->b.trans, 1, c1 - c0, c->r, 1.0f, t, c->r, bq, c->b.ld, 1.0f, out + c0, c->N);
}

static void lora_chain_range(void *vc, int64_t b, int64_t e, int tid) {
  (void)tid;
  lora_chain_ctx *c = vc;
  const mat w = c->w, a = c->a;
  const int64_t K = c->K, N = c->N;
  float t[64];   // x A (r <= 64)
  float *xk = c->ksplit ? c->xs + b * K : NULL;
  for (int j = 0; j < c->n; j++) {
    const wk_step *st = &c->s[j];
    const float *x = wk_operand_ptr(&st->in[0], c->slots);   // a row: lora_chain_ok
    float *out = (float *)wk_operand_ptr(&st->out, c->slots);
    if (j) wk_wait_at_least(&c->done[j - 1], c->slices);
    if (c->ksplit && j) {   // the whole of x = call j - 1's output (t is still its x A)
      chain_out(c, j - 1, t, 0, c->slices, xk);
      int64_t c0, c1;
      chain_span(c, b, e, &c0, &c1);
      if (c0 < c1) memcpy((float *)x + c0, xk + c0, sizeof(float) * (size_t)(c1 - c0));
      x = xk;
    }
    wk_gemm_f32_serial(0, a.trans, 1, c->r, K, st->attrs.f[0], x, K, a.p, a.ld, 0.0f, t, c->r);
    for (int64_t q = b; q < e; q++) {
      if (c->ksplit) {
        int64_t k0, k1;
        wk_gemv_k_chunk(K, (int)c->slices, (int)q, &k0, &k1);
        float *part = c->part + ((j & 1) * c->slices + q) * N;
        if (k0 < k1)
          wk_gemm_f32_serial(0, 0, 1, N, k1 - k0, 1.0f, x + k0, K, (const float *)w.p + k0 * w.ld, w.ld, 0.0f,
                             part, N);
        else
          memset(part, 0, sizeof(float) * (size_t)N);
        continue;
      }
      int64_t c0, c1;
      chain_cols(c, q, &c0, &c1);
      if (c0 >= c1) continue;
      const float *wq = (const float *)w.p + (w.trans ? c0 * w.ld : c0);
      const float *bq = (const float *)c->b.p + (c->b.trans ? c0 * c->b.ld : c0);
      wk_gemm_f32_serial(0, w.trans, 1, c1 - c0, K, 1.0f, x, K, wq, w.ld, 0.0f, out + c0, N);
      wk_gemm_f32_serial(0, c->b.trans, 1, c1 - c0, c->r, 1.0f, t, c->r, bq, c->b.ld, 1.0f, out + c0, N);
    }
    atomic_fetch_add_explicit(&c->done[j], e - b, memory_order_release);
  }
  if (c->ksplit) {   // the last call's output, each thread its columns
    wk_wait_at_least(&c->done[c->n - 1], c->slices);
    chain_out(c, c->n - 1, t, b, e, (float *)wk_operand_ptr(&c->s[c->n - 1].out, c->slots));
  }
}

static bool same_mat(const mat *x, const mat *y) { return x->p == y->p && x->trans == y->trans && x->ld == y->ld; }

// Whether steps s[0..n) are such a chain as stored: f32 rows, each call's x the output
// of the one before and apart from its own output (threads still read x while others
// store), W, A and B the same; if so, c's shapes and matrices are set.
static bool lora_chain_ok(const wk_step *s, int n, void *const *slots, lora_chain_ctx *c) {
  const char *prev = NULL;
  for (int q = 0; q < n; q++) {
    const wk_step *t = &s[q];
    mat m[4];
    for (int k = 0; k < 4; k++)
      if (t->in[k].dtype != WK_F32 || t->in[k].ndim != 2 || !as_mat(&t->in[k], slots, 0, &m[k])) return false;
    const int64_t K = t->in[0].shape[1], N = t->in[1].shape[1], r = t->in[2].shape[1];
    if (t->out.dtype != WK_F32 || t->in[0].shape[0] != 1 || m[0].trans || r > 64 || K != N) return false;
    const char *x = m[0].p, *o = wk_operand_ptr(&t->out, slots);
    if ((q && x != prev) || (o < x + 4 * K && x < o + 4 * N)) return false;
    if (!q) {
      c->K = K, c->N = N, c->r = r, c->w = m[1], c->a = m[2], c->b = m[3];
    } else if (N != c->N || r != c->r || !same_mat(&m[1], &c->w) || !same_mat(&m[2], &c->a) ||
               !same_mat(&m[3], &c->b)) {
      return false;
    }
    prev = o;
  }
  return true;
}

wk_status WK_ISA_FN(wk_cpu_lora_chain)(const wk_step *s, void *const *slots) {
  const int n = s->chain;
  lora_chain_ctx c = {.s = s, .slots = slots, .n = n, .slices = wk_threads()};
  if (!lora_chain_ok(s, n, slots, &c)) {   // call by call
    wk_status st = WK_OK;
    for (int q = 0; q < n && !st; q++) st = lora_kernel(&s[q], slots);
    return st;
  }
  int kc = wk_gemv_k_chunks(c.K, c.N, c.w.trans, 4);
  c.ksplit = kc > 1;
  if (c.ksplit) c.slices = kc;
  else if (c.slices > c.N / 32)   // column slices wider than 16: the GEMV's narrow form is the whole N's choice
    c.slices = c.N / 32 > 1 ? c.N / 32 : 1;
  // The vectors' rows 64-byte aligned (a GEMV's Y split across cache lines took ~45% more
  // time), then the counters on lines of their own.
  size_t fbytes = c.ksplit ? ((size_t)(c.slices * (2 * c.N + c.K)) * sizeof(float) + 63) & ~(size_t)63 : 0;
  size_t cbytes = sizeof *c.done * (size_t)n;
  char *mem = aligned_alloc(64, fbytes + ((cbytes + 63) & ~(size_t)63));
  if (!mem) return wk_error(WK_ERR_OOM, "lora chain: out of memory");
  c.part = (float *)mem;
  c.xs = c.part + 2 * c.slices * c.N;
  c.done = (_Atomic int64_t *)(mem + fbytes);
  for (int j = 0; j < n; j++) atomic_init(&c.done[j], 0);
  wk_parallel_for(c.slices, 1, lora_chain_range, &c);
  free(mem);
  wk_cpu_lora_chain_job_done();
  return WK_OK;
}

wk_status WK_ISA_FN(wk_cpu_kernel)(const wk_step *s, void *const *slots) {
  switch (s->op) {
    case WK_OP_SUM: return reduce_kernel(s, slots, false);
    case WK_OP_MAX: return reduce_kernel(s, slots, true);
    case WK_OP_ARGMAX: return argmax_kernel(s, slots);
    case WK_OP_TOP1: return top1_kernel(s, slots);
    case WK_OP_CONCAT: return concat_kernel(s, slots);
    case WK_OP_PAD: return pad_kernel(s, slots);
    case WK_OP_SET_SLICE: return set_slice_kernel(s, slots);
    case WK_OP_MATMUL: return s->nin == 3 ? matmul_epi_kernel(s, slots) : matmul_kernel(s, slots);
    case WK_OP_LORA: return lora_kernel(s, slots);
    case WK_OP_QMATMUL:
    case WK_OP_DEQUANTIZE: return WK_ISA_FN(wk_cpu_qkernel)(s, slots);
    case WK_OP_SDPA_BWD: return WK_ISA_FN(wk_cpu_sdpa_bwd)(s, slots);
    default: return WK_ISA_FN(wk_cpu_nn)(s, slots);
  }
}
