// TOP1 on CUDA: each row's (max, sum of exp(x - max), first argmax), the statistics
// greedy decoding reads instead of the logits. A row (151,936 logits for Qwen2.5) is
// split over up to 128 CTAs, each folding its piece into one online (max, sum, index)
// triple; the last CTA of a row to finish merges the row's triples, a thread each, as a
// tree in split order (so the result does not depend on which is last) and resets the
// row's counter. One launch, where the max, the sum and the argmax as reductions took six.
#include <math.h>
#include "cuda_internal.h"

namespace {
const int TOP1_THREADS = 256;
const int TOP1_SPLITS = 128;     // CTAs a row, at most (<= TOP1_THREADS: the last CTA merges a split a thread)
const int64_t TOP1_PIECE = 1024; // values a CTA, at least
const int TOP1_ROWS = 65536;     // counters: one a row, above the grid's 65535 rows
const int TOP1_LOADS = 8;        // values a thread loads a round

// Values equal to m count 1 in s even where m is infinite (ops.h's wk_top1): an all
// -inf row sums to its length. A NaN ends a fold: i becomes the first NaN's index.
struct Top1 {
  float m, s;   // running max and sum of exp(x - m)
  int64_t i;    // first index of m (or of a NaN); INT64_MAX: none yet
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
  if (a.nan | b.nan) {   // the first NaN of either side
    Top1 r = {NAN, NAN, INT64_MAX, 1};
    if (a.nan) r.i = a.i;
    if (b.nan && b.i < r.i) r.i = b.i;
    return r;
  }
  Top1 hi = a, lo = b;
  if (b.m > a.m || (a.m == b.m && b.i < a.i)) hi = b, lo = a;
  // equal maxima add their counts as they are (-inf - -inf would be NaN); a smaller
  // side's terms shrink by exp(lo.m - hi.m), 0 where that is -inf
  hi.s += hi.m == lo.m ? lo.s : lo.s * __expf(lo.m - hi.m);
  return hi;
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

// Folds value v at index i into t (a thread's indices rise, so its first NaN is kept).
__device__ __forceinline__ void fold(Top1 &t, float v, int64_t i) {
  if (t.nan) return;
  if (v != v) {
    t.nan = 1, t.m = t.s = NAN, t.i = i;
  } else if (v == t.m) {   // t.m's first index stays; the first -inf of an empty t is kept
    t.s += 1.0f;
    if (t.i == INT64_MAX) t.i = i;
  } else if (v > t.m) {
    t.s = t.s * __expf(t.m - v) + 1.0f;   // t.m - v = -inf where t.m is -inf or v is +inf: the old terms are 0
    t.m = v, t.i = i;
  } else {
    t.s += __expf(v - t.m);   // -inf where v is -inf or t.m is +inf: adds 0
  }
}

__global__ void __launch_bounds__(TOP1_THREADS) k_top1(const __grid_constant__ Top1Args a) {
  __shared__ int last;
  wkc_pdl_wait();   // launched as a dependent of the kernel writing the logits (the LM head)
  const int64_t row = blockIdx.y, sp = blockIdx.x, lo = sp * a.piece;
  const int64_t hi = lo + a.piece < a.V ? lo + a.piece : a.V;
  Top1 t = {-INFINITY, 0.0f, INT64_MAX, 0};
  // TOP1_LOADS loads in flight before the first fold: a piece of Qwen2.5's row (1,187
  // values) in one round trip to L2, not two
  const int64_t step = TOP1_LOADS * TOP1_THREADS;
  for (int64_t i0 = lo + threadIdx.x; i0 < hi; i0 += step) {
    float v[TOP1_LOADS];
#pragma unroll
    for (int u = 0; u < TOP1_LOADS; u++)
      v[u] = i0 + u * TOP1_THREADS < hi ? ldv(a.x, a.dtype, row * a.V + i0 + u * TOP1_THREADS) : 0.0f;
#pragma unroll
    for (int u = 0; u < TOP1_LOADS; u++)
      if (i0 + u * TOP1_THREADS < hi) fold(t, v[u], i0 + u * TOP1_THREADS);
  }
  t = block_merge(t);
  if (a.splits > 1) {
    if (threadIdx.x == 0) {
      a.part[row * a.splits + sp] = t;
      __threadfence();
      last = atomicAdd(&a.count[row], 1) == a.splits - 1;
    }
    __syncthreads();
    if (!last) return;
    // the last CTA: a thread a split, merged as a tree in split order (the same result
    // whichever CTA is last); a serial loop over the splits' L2 latencies took ~15 us
    __threadfence();
    Top1 u = {-INFINITY, 0.0f, INT64_MAX, 0};
    if (threadIdx.x < a.splits) {
      const Top1 *p = &a.part[row * a.splits + threadIdx.x];
      u.m = __ldcg(&p->m), u.s = __ldcg(&p->s), u.i = __ldcg((const long long *)&p->i), u.nan = __ldcg(&p->nan);
    }
    t = block_merge(u);
    if (threadIdx.x == 0) a.count[row] = 0;
  }
  if (threadIdx.x) return;
  a.out[3 * row] = t.nan ? NAN : t.m;
  a.out[3 * row + 1] = t.nan ? NAN : t.s;
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
  wkc_launch(k_top1, dim3((unsigned)a.splits, (unsigned)rows), TOP1_THREADS, 0, true, a);
  wk_status st = wkc_check_launch("top1");
  wkc_tmp_free(part);
  wkc_tmp_free(dense);
  return st;
}
