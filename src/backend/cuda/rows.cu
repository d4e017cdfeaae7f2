// Fast path for a lone softmax / log-softmax / RMSNorm step over dense rows (the
// common case: attention probabilities, the norms of every layer): each row lives in
// registers, spread over a group of TPR threads that read and write it with 16-byte
// vector accesses, several rows per block. The general row-chain kernel (nn.cu)
// stages rows through shared memory with scalar loads of any dtype and layout; on
// the issue's large cases it reached 11-68% of the copy bandwidth, this is meant to
// run at the copy rate. Anything else (chains, prologues, strided or misaligned
// rows, rows over 8K elements) stays on the general kernel.
#include <stdlib.h>
#include <atomic>
#include "cuda_internal.h"

namespace {
enum { F_ANY = -1, F_SOFTMAX = 0, F_LOG_SOFTMAX = 1, F_RMS = 2, F_RMS_WVEC = 3 /* a fixed op: F_RMS, a.w_vec set */ };
const int FAST_BLOCK = 256;

struct FastArgs {
  const char *in, *out;
  int64_t rows, in_rs, D;   // in_rs: elements between input rows (output rows are dense)
  DOp w;                    // RMSNorm weight (w.p == NULL: none)
  float eps;
  int op, w_vec;            // w_vec: the weight is dense, aligned and of the rows' dtype
};

// 16 bytes of storage type T as 16 / sizeof(T) floats (bf16 and f16 widen exactly).
template <int T> struct Vec;
template <> struct Vec<WK_F32> {
  static const int N = 4;
  static __device__ __forceinline__ void load(const char *p, int64_t i, float *v) {
    float4 q = ((const float4 *)p)[i];
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  }
  static __device__ __forceinline__ void store(const char *p, int64_t i, const float *v) {
    ((float4 *)p)[i] = make_float4(v[0], v[1], v[2], v[3]);
  }
  static __device__ __forceinline__ void store_pairs(const char *p, int64_t i, const float *v) { store(p, i, v); }
};
template <int T> struct Vec16 { // bf16 / f16: eight halves in a uint4
  static const int N = 8;
  static __device__ __forceinline__ float get(uint32_t h) {
    return T == WK_BF16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
  }
  static __device__ __forceinline__ uint32_t put(float f) {
    return T == WK_BF16 ? (uint32_t)wkm_f32_to_bf16(f) : (uint32_t)__half_as_ushort(__float2half_rn(f));
  }
  static __device__ __forceinline__ void load(const char *p, int64_t i, float *v) {
    uint4 q = ((const uint4 *)p)[i];
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; k++) v[2 * k] = get(w[k] & 0xffffu), v[2 * k + 1] = get(w[k] >> 16);
  }
  static __device__ __forceinline__ void store(const char *p, int64_t i, const float *v) {
    uint4 q;
    q.x = put(v[0]) | put(v[1]) << 16, q.y = put(v[2]) | put(v[3]) << 16;
    q.z = put(v[4]) | put(v[5]) << 16, q.w = put(v[6]) | put(v[7]) << 16;
    ((uint4 *)p)[i] = q;
  }
  // Two values rounded by one cvt instruction, the first in the low half: the same
  // bits as put() (round to nearest even; a NaN, which the instruction makes
  // canonical, is redone by put(), as ew_gen.cu's wg_pair_bf16 does).
  static __device__ __forceinline__ uint32_t pair(float a, float b) {
    uint32_t r;
    if (T == WK_BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    if (a != a || b != b) r = put(a) | put(b) << 16;
    return r;
  }
  static __device__ __forceinline__ void store_pairs(const char *p, int64_t i, const float *v) {
    ((uint4 *)p)[i] = make_uint4(pair(v[0], v[1]), pair(v[2], v[3]), pair(v[4], v[5]), pair(v[6], v[7]));
  }
};
template <> struct Vec<WK_BF16> : Vec16<WK_BF16> {};
template <> struct Vec<WK_F16> : Vec16<WK_F16> {};

// Sum or max over the TPR threads of a row group (groups are whole warps, aligned).
template <int TPR, bool MAX>
__device__ __forceinline__ float group_reduce(float v, float *red) {
  v = MAX ? warp_max(v) : warp_sum(v);
  if (TPR == 32) return v;
  const int nw = TPR / 32, g = threadIdx.x / TPR, w = (threadIdx.x % TPR) / 32;
  __syncthreads(); // red is reused by the previous reduction
  if ((threadIdx.x & 31) == 0) red[g * nw + w] = v;
  __syncthreads();
  float r = red[g * nw];
  for (int k = 1; k < nw; k++) r = MAX ? (red[g * nw + k] > r || red[g * nw + k] != red[g * nw + k] ? red[g * nw + k] : r)
                                       : r + red[g * nw + k];
  return r;
}

// PER: vectors a thread holds (at most); TPR threads per row. OP: the op, fixed per
// instance (softmax; RMSNorm with a vector weight), or F_ANY to read it from the
// arguments at run time. A fixed op's instance holds only that op's code: fewer
// registers (bf16 softmax 48 against 96), so more rows in flight per SM; it also
// rounds 2-byte results two at a time. Same f32 math in the same order, so the same
// bits. log-softmax and other RMSNorm weights take F_ANY (alone in an instance,
// log-softmax's sum += exp(..) contracts into an FMA, which changed bits on an
// H200); so does everything under WICK_CUDA_ROWS_OP=0.
template <int T, int TPR, int PER, int OP>
__global__ void __launch_bounds__(FAST_BLOCK) k_rows_fast(const __grid_constant__ FastArgs a) {
  typedef Vec<T> V;
  const int op = OP == F_ANY ? a.op : OP == F_RMS_WVEC ? F_RMS : OP;
  const bool wvec = OP == F_ANY ? a.w_vec : OP == F_RMS_WVEC;
  auto store = [&](const char *p, int64_t i, const float *v) {
    if (OP == F_ANY) V::store(p, i, v);
    else V::store_pairs(p, i, v);
  };
  __shared__ float red[FAST_BLOCK / 32];
  const int rows_per_block = FAST_BLOCK / TPR, lane = threadIdx.x % TPR;
  const int64_t nvec = a.D / V::N;
  for (int64_t base = (int64_t)blockIdx.x * rows_per_block; base < a.rows; base += (int64_t)gridDim.x * rows_per_block) {
    const int64_t row = base + threadIdx.x / TPR;
    const bool live = row < a.rows;  // dead threads still join the block's barriers
    float x[PER][V::N];
#pragma unroll
    for (int i = 0; i < PER; i++) {
      int64_t vi = lane + (int64_t)i * TPR;
      if (live && vi < nvec) V::load(a.in, row * a.in_rs / V::N + vi, x[i]);
      else
#pragma unroll
        for (int k = 0; k < V::N; k++) x[i][k] = op == F_RMS ? 0.0f : -INFINITY;
    }
    if (op == F_RMS) {
      float ss = 0;
#pragma unroll
      for (int i = 0; i < PER; i++)
#pragma unroll
        for (int k = 0; k < V::N; k++) ss += x[i][k] * x[i][k];
      ss = group_reduce<TPR, false>(ss, red);
      const float kk = 1.0f / sqrtf(ss / (float)a.D + a.eps);
#pragma unroll
      for (int i = 0; i < PER; i++) {
        int64_t vi = lane + (int64_t)i * TPR;
        if (!live || vi >= nvec) continue;
        float w[V::N];
        if (wvec) V::load(a.w.p, vi, w);
        else
#pragma unroll
          for (int k = 0; k < V::N; k++) w[k] = a.w.p ? ldv(a.w.p, a.w.dtype, op_off(a.w, vi * V::N + k)) : 1.0f;
#pragma unroll
        for (int k = 0; k < V::N; k++) x[i][k] = x[i][k] * kk * w[k];
        store(a.out, row * nvec + vi, x[i]);
      }
      continue;
    }
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < PER; i++)
#pragma unroll
      for (int k = 0; k < V::N; k++) m = x[i][k] > m ? x[i][k] : m;
    m = group_reduce<TPR, true>(m, red);
    float sum = 0;
#pragma unroll
    for (int i = 0; i < PER; i++)
#pragma unroll
      for (int k = 0; k < V::N; k++) {
        float e = expf(x[i][k] - m);  // -inf padding gives 0
        sum += e;
        if (op == F_SOFTMAX) x[i][k] = e;
      }
    sum = group_reduce<TPR, false>(sum, red);
    const float lse = m + logf(sum), inv = 1.0f / sum;
#pragma unroll
    for (int i = 0; i < PER; i++) {
      int64_t vi = lane + (int64_t)i * TPR;
      if (!live || vi >= nvec) continue;
#pragma unroll
      for (int k = 0; k < V::N; k++) x[i][k] = op == F_SOFTMAX ? x[i][k] * inv : x[i][k] - lse;
      store(a.out, row * nvec + vi, x[i]);
    }
  }
}

// Launches with the smallest group width whose registers hold the row (PER vectors of
// 16 bytes a thread: 32 floats).
template <int T, int OP>
static void launch(const FastArgs &a, int grid) {
  const int PER = 32 / Vec<T>::N;
  int64_t nvec = a.D / Vec<T>::N;
  cudaStream_t cs = wkc_stream();
  if (nvec <= 32 * PER) k_rows_fast<T, 32, PER, OP><<<grid, FAST_BLOCK, 0, cs>>>(a);
  else if (nvec <= 64 * PER) k_rows_fast<T, 64, PER, OP><<<grid, FAST_BLOCK, 0, cs>>>(a);
  else if (nvec <= 128 * PER) k_rows_fast<T, 128, PER, OP><<<grid, FAST_BLOCK, 0, cs>>>(a);
  else k_rows_fast<T, 256, PER, OP><<<grid, FAST_BLOCK, 0, cs>>>(a);
}
std::atomic<int> g_per_op{-1};  // WICK_CUDA_ROWS_OP (default 1); tests: wkc_rows_test_per_op
template <int T>
static void launch_any(const FastArgs &a, int grid) {
  int per_op = g_per_op.load();
  if (per_op < 0) {
    const char *e = getenv("WICK_CUDA_ROWS_OP");
    per_op = e ? atoi(e) != 0 : 1;
    g_per_op.store(per_op);
  }
  if (!per_op || a.op == F_LOG_SOFTMAX || (a.op == F_RMS && !a.w_vec)) launch<T, F_ANY>(a, grid);
  else if (a.op == F_SOFTMAX) launch<T, F_SOFTMAX>(a, grid);
  else launch<T, F_RMS_WVEC>(a, grid);
}
}

// Tests: 1 the per-op kernel, 0 the kernel before it, -1 back to WICK_CUDA_ROWS_OP.
extern "C" void wkc_rows_test_per_op(int on) { g_per_op.store(on < 0 ? -1 : on != 0); }

bool wkc_rows_fast(const wk_step *s, void *const *slots, wk_status *st) {
  int op = s->op == WK_OP_SOFTMAX ? F_SOFTMAX : s->op == WK_OP_LOG_SOFTMAX ? F_LOG_SOFTMAX
         : s->op == WK_OP_RMS_NORM ? F_RMS : -1;
  const wk_operand *in = &s->in[0], *out = &s->out;
  int dt = out->dtype;
  if (op < 0 || s->chain > 1 || s->prog.n || in->slot < 0 || in->dtype != dt || dt == WK_I32 || in->ndim < 1) return false;
  DOp di = wkc_dop(in, slots), dout = wkc_dop(out, slots);
  int64_t D = in->shape[in->ndim - 1], rows = D ? wkc_numel(in) / D : 0;
  int vec = 16 / (int)wkc_esize(dt);
  bool unit_last = D == 1 || in->stride[in->ndim - 1] == 1;
  bool rows_ok = (di.flags & DOP_ROWREG) && (rows == 1 || di.rs >= D) && unit_last;
  if (!rows_ok || !(dout.flags & DOP_DENSE) || D % vec || di.rs % vec || D / vec > 256 * (32 / vec) ||
      ((uintptr_t)di.p | (uintptr_t)dout.p) % 16 || wkc_numel(out) != rows * D)
    return false;
  FastArgs a;
  memset(&a, 0, sizeof a);
  a.in = di.p;
  a.out = dout.p;
  a.rows = rows;
  a.in_rs = rows == 1 ? D : di.rs;
  a.D = D;
  a.eps = s->attrs.f[0];
  a.op = op;
  if (op == F_RMS && s->attrs.i[0]) {
    a.w = wkc_dop(&s->in[1], slots);
    a.w_vec = (a.w.flags & DOP_DENSE) && a.w.dtype == dt && !((uintptr_t)a.w.p % 16) && wkc_numel(&s->in[1]) == D;
  }
  *st = WK_OK;
  if (!rows) return true;
  int tpr = D / vec <= 32 * (32 / vec) ? 32 : D / vec <= 64 * (32 / vec) ? 64 : D / vec <= 128 * (32 / vec) ? 128 : 256;
  int64_t blocks = (rows + FAST_BLOCK / tpr - 1) / (FAST_BLOCK / tpr), cap = (int64_t)wkc_num_sms() * 64;
  int grid = (int)(blocks < cap ? blocks : cap);
  if (dt == WK_F32) launch_any<WK_F32>(a, grid);
  else if (dt == WK_BF16) launch_any<WK_BF16>(a, grid);
  else launch_any<WK_F16>(a, grid);
  *st = wkc_check_launch(wk_ops[s->op].name);
  return true;
}
