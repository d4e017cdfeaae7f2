// TOP1 on CUDA: each row's (max, sum of exp(x - max), first argmax), the statistics
// greedy decoding reads instead of the logits. A row (151,936 logits for Qwen2.5) is
// split over up to 64 CTAs, each folding its piece into one online (max, sum, index)
// triple; the last CTA of a row to finish merges the row's triples in split order (so
// the result does not depend on which is last) and resets the row's counter. One
// launch, where the max, the sum and the argmax as reductions took six.
#include <math.h>
#include "cuda_internal.h"

namespace {
const int TOP1_THREADS = 256;
const int TOP1_SPLITS = 64;      // CTAs a row, at most
const int64_t TOP1_PIECE = 2048; // values a CTA, at least
const int TOP1_ROWS = 65536;     // counters: one a row, above the grid's 65535 rows

struct Top1 {
  float m, s;   // running max and sum of exp(x - m)
  int64_t i;    // first index of m; INT64_MAX: none yet
  int nan;
};

struct Top1Args {
  const char *x;
  int32_t dtype;
  int64_t V, splits, piece;
  Top1 *part;          // [rows, splits]
  int *count;          // per row, zero between launches
  float *out;          // [rows, 3]
};

__device__ __forceinline__ Top1 merge(Top1 a, Top1 b) {
  Top1 r;
  r.nan = a.nan | b.nan;
  if (a.m > b.m || (a.m == b.m && a.i < b.i)) r.m = a.m, r.i = a.i;
  else r.m = b.m, r.i = b.i;
  // terms of an empty side (m = -inf, s = 0) add nothing; -inf - -inf would be NaN
  r.s = (a.s > 0.0f ? a.s * __expf(a.m - r.m) : 0.0f) + (b.s > 0.0f ? b.s * __expf(b.m - r.m) : 0.0f);
  return r;
}

__device__ Top1 block_merge(Top1 t) {
  __shared__ Top1 w[TOP1_THREADS / 32];
  for (int o = 16; o; o >>= 1) {
    Top1 u;
    u.m = __shfl_down_sync(0xffffffffu, t.m, o);
    u.s = __shfl_down_sync(0xffffffffu, t.s, o);
    u.i = __shfl_down_sync(0xffffffffu, t.i, o);
    u.nan = __shfl_down_sync(0xffffffffu, t.nan, o);
    t = merge(t, u);
  }
  if ((threadIdx.x & 31) == 0) w[threadIdx.x >> 5] = t;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int k = 1; k < TOP1_THREADS / 32; k++) t = merge(t, w[k]);
  return t;   // thread 0's
}
}  // namespace

__global__ void __launch_bounds__(TOP1_THREADS) k_top1(const __grid_constant__ Top1Args a) {
  const int64_t row = blockIdx.y, sp = blockIdx.x, lo = sp * a.piece;
  const int64_t hi = lo + a.piece < a.V ? lo + a.piece : a.V;
  Top1 t = {-INFINITY, 0.0f, INT64_MAX, 0};
  for (int64_t i = lo + threadIdx.x; i < hi; i += TOP1_THREADS) {
    const float v = ldv(a.x, a.dtype, row * a.V + i);
    if (v != v) {
      t.nan = 1;
    } else if (v > t.m) {
      t.s = t.s * __expf(t.m - v) + 1.0f;   // t.s = 0 while t.m = -inf
      t.m = v, t.i = i;
    } else if (v > -INFINITY) {
      t.s += __expf(v - t.m);
    }
  }
  t = block_merge(t);
  if (threadIdx.x) return;
  if (a.splits > 1) {
    a.part[row * a.splits + sp] = t;
    __threadfence();
    if (atomicAdd(&a.count[row], 1) != a.splits - 1) return;
    __threadfence();
    for (int64_t k = 0; k < a.splits; k++) {   // past L1: other CTAs wrote them
      const volatile Top1 *p = &a.part[row * a.splits + k];
      const Top1 u = {p->m, p->s, p->i, p->nan};
      t = k ? merge(t, u) : u;
    }
    a.count[row] = 0;
  }
  a.out[3 * row] = t.nan ? NAN : t.m;
  a.out[3 * row + 1] = t.s;
  a.out[3 * row + 2] = t.i == INT64_MAX ? 0.0f : (float)t.i;
}

// The rows' counters (the last CTA of each row leaves its counter zero again).
static int *top1_counters() {
  static int *p = NULL;
  return wkc_zeroed_counters(&p, TOP1_ROWS);
}

wk_status wkc_top1(const wk_step *s, void *const *slots) {
  const wk_operand *in = &s->in[0];
  Top1Args a = {};
  a.V = in->shape[in->ndim - 1];
  const int64_t rows = a.V ? wkc_numel(in) / a.V : 0;
  if (!rows) return WK_OK;
  if (rows > 65535)
    return wk_error(WK_ERR_SHAPE, "top1 (cuda): %lld rows are above the grid's 65535", (long long)rows);
  void *dense = NULL;
  if (wkc_is_dense(in)) {
    a.x = wkc_ptr(in, slots);
    a.dtype = in->dtype;
  } else {   // a strided view: made dense f32 first
    if (!(dense = wkc_tmp_alloc(sizeof(float) * (size_t)(rows * a.V))))
      return wk_error(WK_ERR_OOM, "top1 (cuda): out of device memory for a dense copy of %lld x %lld values",
                      (long long)rows, (long long)a.V);
    wk_status st = wkc_densify(in, slots, WK_F32, dense);
    if (st) { wkc_tmp_free(dense); return st; }
    a.x = (const char *)dense;
    a.dtype = WK_F32;
  }
  a.out = (float *)wkc_ptr(&s->out, slots);
  a.splits = (a.V + TOP1_PIECE - 1) / TOP1_PIECE;
  if (a.splits > TOP1_SPLITS) a.splits = TOP1_SPLITS;
  if (a.splits > 1 && !(a.count = top1_counters())) a.splits = 1;   // out of memory: one CTA a row
  a.piece = (a.V + a.splits - 1) / a.splits;
  void *part = NULL;
  if (a.splits > 1 && !(part = wkc_tmp_alloc(sizeof(Top1) * (size_t)(rows * a.splits)))) {
    wkc_tmp_free(dense);
    return wk_error(WK_ERR_OOM, "top1 (cuda): out of device memory for %lld rows' partial results", (long long)rows);
  }
  a.part = (Top1 *)part;
  k_top1<<<dim3((unsigned)a.splits, (unsigned)rows), TOP1_THREADS, 0, wkc_stream()>>>(a);
  wk_status st = wkc_check_launch("top1");
  wkc_tmp_free(part);
  wkc_tmp_free(dense);
  return st;
}
