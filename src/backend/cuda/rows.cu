// Fast path for a lone softmax / log-softmax / RMSNorm step over dense rows (the
// common case: attention probabilities, the norms of every layer): each row lives in
// registers, spread over a group of TPR threads that read and write it with 16-byte
// vector accesses, several rows per block. The general row-chain kernel (nn.cu)
// stages rows through shared memory with scalar loads of any dtype and layout; on
// the issue's large cases it reached 11-68% of the copy bandwidth, this is meant to
// run at the copy rate. Chains of these ops (and layer norms) alone, over rows of at
// most 1024 values, take the register chain kernel at the end of this file; anything
// else (prologues, elementwise stages, strided or misaligned rows, longer rows) stays
// on the general kernel.
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
    return half_bits<T == WK_BF16>(f);
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

// ---- row chains in registers ----
// A chain of softmax / log-softmax / RMSNorm / layer-norm stages with no elementwise
// code between them, over rows of at most 1024 values (D % 4 == 0): each thread
// holds four values of a row in registers from the first stage to the last, a row
// spread over the fewest warps (up to 8, a block) that give every thread its four.
// A reduction is a warp shuffle, then (several warps) one barrier. nn.cu's general
// chain kernel stages rows through shared memory with two barriers a reduction, and
// a chain's stages run back to back, each as long as its latency: 1000 chained
// softmaxes over (4,16,1024) took 1.55 us a stage there, 0.55 here (H200, `wick
// bench`'s time a call, host included). A row on one warp (32 values a lane) took
// 1.9 / 1.0 us a softmax / RMSNorm stage, on 2 warps 1.35 / 0.9, 4 warps 0.66-0.96 /
// 0.55-0.73 (16 values a lane, latency-bound on one warp a scheduler).
namespace {
enum { C_SOFTMAX, C_LOG_SOFTMAX, C_RMS, C_LN };
struct CStage {       // 32 bytes: 1022 stages fit one launch's parameters
  const char *w, *b;  // dense weight / bias of D values, or NULL
  int32_t op, wdt, bdt;
  float eps;
};
struct CHdr {
  const char *in;
  char *out;
  int64_t rows, in_rs;  // in_rs: elements between input rows (output rows are dense)
  int32_t D, nst, in_dt, out_dt;
};
const int CHAIN_BLOCK = 128;  // one-warp rows: 4 rows a block
std::atomic<long long> g_chain_launches{0};
std::atomic<int> g_chain_on{-1};  // WICK_CUDA_ROWS_CHAIN (default 1); tests: wkc_rows_test_chain

// Four values at element i (a multiple of 4) of f32 / bf16 / f16 storage.
__device__ __forceinline__ void ld4(const char *p, int dt, int64_t i, float *v) {
  if (dt == WK_F32) {
    float4 q = *(const float4 *)(p + 4 * i);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    return;
  }
  uint2 q = *(const uint2 *)(p + 2 * i);
  uint32_t h[4] = {q.x & 0xffffu, q.x >> 16, q.y & 0xffffu, q.y >> 16};
#pragma unroll
  for (int k = 0; k < 4; k++) v[k] = dt == WK_BF16 ? Vec16<WK_BF16>::get(h[k]) : Vec16<WK_F16>::get(h[k]);
}
__device__ __forceinline__ void st4(char *p, int dt, int64_t i, const float *v) {
  if (dt == WK_F32) {
    *(float4 *)(p + 4 * i) = make_float4(v[0], v[1], v[2], v[3]);
  } else if (dt == WK_BF16) {
    *(uint2 *)(p + 2 * i) = bf16x4(v[0], v[1], v[2], v[3]);
  } else {
    uint32_t h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = Vec16<WK_F16>::put(v[k]);
    *(uint2 *)(p + 2 * i) = make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
  }
}

// Sum or max over the WPR warps that hold a row (the block, when WPR > 1). red holds
// two sets of WPR partials, used in turn: one barrier a reduction suffices, since a
// set is written again only after every thread passed the barrier of the reduction
// between, by which time all have read it.
template <int WPR, bool MAX>
__device__ __forceinline__ float row_reduce(float v, float *red, int &phase) {
  v = MAX ? warp_max(v) : warp_sum(v);
  if (WPR == 1) return v;
  float *r = red + phase * WPR;
  phase ^= 1;
  if ((threadIdx.x & 31) == 0) r[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = r[0];
#pragma unroll
  for (int k = 1; k < WPR; k++) t = MAX ? (r[k] > t || r[k] != r[k] ? r[k] : t) : t + r[k];
  return t;
}

// WPR: warps a row (1: a block holds CHAIN_BLOCK / 32 rows; more: a block is a row).
// Thread t of a row holds columns 4t .. 4t + 3 (none when 4t >= D: it joins the
// reductions with neutral values and stores nothing).
template <int CAP, int WPR>
__global__ void __launch_bounds__(256) k_rows_chain(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  __shared__ float red[2 * WPR];
  const CHdr &h = *(const CHdr *)blob.b;
  const CStage *stages = (const CStage *)(blob.b + sizeof(CHdr));
  const int col = 4 * (WPR == 1 ? threadIdx.x & 31 : threadIdx.x), D = h.D;
  const int64_t row = WPR == 1 ? (int64_t)blockIdx.x * (CHAIN_BLOCK / 32) + (threadIdx.x >> 5) : blockIdx.x;
  if (row >= h.rows) return;  // (WPR > 1: the grid is the rows, every thread stays)
  const bool ok = col < D;
  float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (ok) ld4(h.in, h.in_dt, row * h.in_rs + col, x);
  const float inv_d = 1.0f / (float)D;
  int phase = 0;
  bool unit = false;  // the row is a softmax's output: every value in [0, 1]
  CStage nxt = stages[0];   // a stage's parameters are read one stage ahead
  for (int si = 0; si < h.nst; si++) {
    const CStage s = nxt;
    if (si + 1 < h.nst) nxt = stages[si + 1];
    if (s.op == C_SOFTMAX || s.op == C_LOG_SOFTMAX) {
      // The max is subtracted only to keep exp finite; values in [0, 1] need no
      // shift (exp <= e), which saves the stage's first reduction: the same softmax,
      // each exp rounded an ulp or so differently. (1000 chained softmaxes: 0.76 ->
      // 0.55 us a stage.)
      float mx = 0.0f;
      if (!unit) {
        // (a NaN the max drops still makes the row NaN, through its exp)
        mx = row_reduce<WPR, true>(ok ? fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3])) : -INFINITY, red, phase);
      }
      unit = s.op == C_SOFTMAX;
      // every thread computes its four exps (an idle thread's x is 0) and masks them
      // after: with `ok ? expf(..) : 0` the compiler put each exp behind a branch of its
      // own, so the four ran one after another instead of side by side
      const uint32_t keep = ok ? 0xffffffffu : 0u;
      float e[4];
#pragma unroll
      for (int k = 0; k < 4; k++) e[k] = __uint_as_float(__float_as_uint(expf(x[k] - mx)) & keep);
      const float sum = row_reduce<WPR, false>((e[0] + e[1]) + (e[2] + e[3]), red, phase);
      if (s.op == C_SOFTMAX) {
        const float inv = 1.0f / sum;
#pragma unroll
        for (int k = 0; k < 4; k++) x[k] = e[k] * inv;
      } else {
        const float lse = mx + logf(sum);
#pragma unroll
        for (int k = 0; k < 4; k++) x[k] -= lse;
      }
      continue;
    }
    unit = false;
    float w[4] = {1.0f, 1.0f, 1.0f, 1.0f}, b[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // first: their latency hides
    if (ok && s.w) ld4(s.w, s.wdt, col, w);                                  // behind the reductions
    if (ok && s.b) ld4(s.b, s.bdt, col, b);
    float mean = 0.0f;
    if (s.op == C_LN) mean = row_reduce<WPR, false>((x[0] + x[1]) + (x[2] + x[3]), red, phase) * inv_d;
    float q[4];
#pragma unroll
    for (int k = 0; k < 4; k++) q[k] = ok ? (x[k] - mean) * (x[k] - mean) : 0.0f;
    const float kk = 1.0f / sqrtf(row_reduce<WPR, false>((q[0] + q[1]) + (q[2] + q[3]), red, phase) * inv_d + s.eps);
#pragma unroll
    for (int k = 0; k < 4; k++) x[k] = ok ? (x[k] - mean) * kk * w[k] + b[k] : 0.0f;
  }
  if (ok) st4(h.out, h.out_dt, row * D + col, x);
}

template <int WPR>
void launch_chain(int64_t rows, size_t size, const unsigned char *buf) {
  const unsigned grid = (unsigned)(WPR == 1 ? (rows + CHAIN_BLOCK / 32 - 1) / (CHAIN_BLOCK / 32) : rows);
  const int block = WPR == 1 ? CHAIN_BLOCK : 32 * WPR;
  if (size <= WKC_BLOB_SMALL)
    k_rows_chain<WKC_BLOB_SMALL, WPR><<<grid, block, 0, wkc_stream()>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
  else
    k_rows_chain<WKC_BLOB_LARGE, WPR><<<grid, block, 0, wkc_stream()>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
}

// A dense vector of D values that ld4 / st4 may access four at a time.
bool vec4_ok(const DOp &o, int64_t n, int64_t D) {
  return (o.flags & DOP_DENSE) && wk_is_float((wk_dtype)o.dtype) && n == D && (uintptr_t)o.p % (4 * wkc_esize(o.dtype)) == 0;
}
}

extern "C" void wkc_rows_test_chain(int on) { g_chain_on.store(on < 0 ? -1 : on != 0); }
extern "C" long long wkc_rows_chain_launches(void) { return g_chain_launches.load(); }

int wkc_rows_chain_cap(const wk_step *s, int n, void *const *slots) {
  int on = g_chain_on.load();
  if (on < 0) {
    const char *e = getenv("WICK_CUDA_ROWS_CHAIN");
    g_chain_on.store(on = !e || atoi(e) != 0);
  }
  const wk_operand *out = &s[n - 1].out, *in = &s[0].in[0];
  if (!on || out->ndim < 1 || in->ndim < 1 || in->slot < 0) return 0;
  const int64_t D = out->shape[out->ndim - 1], rows = D ? wkc_numel(out) / D : 0;
  if (D % 4 || D < 4 || D > 1024) return 0;
  for (int j = 0; j < n; j++) {
    const wk_step *st = &s[j];
    bool rowop = st->op == WK_OP_SOFTMAX || st->op == WK_OP_LOG_SOFTMAX || st->op == WK_OP_RMS_NORM ||
                 st->op == WK_OP_LAYER_NORM;
    if (!rowop || st->prog.n || (j > 0 && st->in[0].slot >= 0)) return 0;
    bool norm = st->op == WK_OP_RMS_NORM || st->op == WK_OP_LAYER_NORM;
    int k = 1;
    for (int has = 0; norm && has < 2; has++) {  // the weight, then the bias (layer norm)
      if (!st->attrs.i[has] || (has && st->op != WK_OP_LAYER_NORM)) continue;
      if (!vec4_ok(wkc_dop(&st->in[k], slots), wkc_numel(&st->in[k]), D)) return 0;
      k++;
    }
  }
  DOp di = wkc_dop(in, slots), dout = wkc_dop(out, slots);
  bool unit_last = D == 1 || in->stride[in->ndim - 1] == 1;
  bool in_ok = (di.flags & DOP_ROWREG) && (rows == 1 || (di.rs >= D && di.rs % 4 == 0)) && unit_last &&
               wk_is_float(in->dtype) && (uintptr_t)di.p % (4 * wkc_esize(in->dtype)) == 0 && wkc_numel(in) == rows * D;
  if (!in_ok || !vec4_ok(dout, wkc_numel(out), rows * D)) return 0;
  return (int)((WKC_BLOB_LARGE - sizeof(CHdr)) / sizeof(CStage));
}

wk_status wkc_rows_chain_piece(const wk_step *s, int n, void *const *slots, const float *row_in, char *out_p,
                               int out_dtype, bool *fits) {
  const wk_operand *out = &s[n - 1].out;
  const int64_t D = out->shape[out->ndim - 1], rows = wkc_numel(out) / D;
  unsigned char *buf = wkc_blob_buf();
  size_t size = sizeof(CHdr) + sizeof(CStage) * (size_t)n;
  if ((*fits = size <= WKC_BLOB_LARGE) == false) return WK_OK;
  CHdr *h = (CHdr *)buf;
  memset(buf, 0, size);
  if (row_in) {
    h->in = (const char *)row_in, h->in_dt = WK_F32, h->in_rs = D;
  } else {
    DOp di = wkc_dop(&s[0].in[0], slots);
    h->in = di.p, h->in_dt = di.dtype, h->in_rs = rows == 1 ? D : di.rs;
  }
  h->out = out_p, h->out_dt = out_dtype;
  h->rows = rows, h->D = (int32_t)D, h->nst = n;
  CStage *cs = (CStage *)(buf + sizeof(CHdr));
  for (int j = 0; j < n; j++) {
    const wk_step *st = &s[j];
    cs[j].op = st->op == WK_OP_SOFTMAX ? C_SOFTMAX : st->op == WK_OP_LOG_SOFTMAX ? C_LOG_SOFTMAX
             : st->op == WK_OP_RMS_NORM ? C_RMS : C_LN;
    cs[j].eps = st->attrs.f[0];
    if (cs[j].op < C_RMS) continue;
    int k = 1;
    if (st->attrs.i[0]) {
      DOp w = wkc_dop(&st->in[k++], slots);
      cs[j].w = w.p, cs[j].wdt = w.dtype;
    }
    if (cs[j].op == C_LN && st->attrs.i[1]) {
      DOp b = wkc_dop(&st->in[k], slots);
      cs[j].b = b.p, cs[j].bdt = b.dtype;
    }
  }
  if (D <= 128) launch_chain<1>(rows, size, buf);
  else if (D <= 256) launch_chain<2>(rows, size, buf);
  else if (D <= 512) launch_chain<4>(rows, size, buf);
  else launch_chain<8>(rows, size, buf);
  g_chain_launches++;
  return wkc_check_launch(n > 1 ? "row chain (registers)" : wk_ops[s->op].name);
}
