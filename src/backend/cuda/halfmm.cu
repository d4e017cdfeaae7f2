// Matmul with a frozen f16 or bf16 weight W [N, K] read in place (x @ W^T and x @ W),
// the QMATMUL step for half weights, with the CPU's semantics (cpu/qmatmul.c): a bf16
// W multiplies x rounded to bf16 (to nearest even) with f32 accumulation; an f16 W
// widens exactly (f32 math). The output is f32.
//   decode, x @ W^T with M <= 8 rows (k_hgemv): W's bytes are the cost, so each
//     warp streams whole rows with 16-byte loads, two chunks of 8 values per row in
//     flight per lane; x is staged once per block in shared memory (rounded there).
//     Few long rows (a down projection: N = 896, K = 4864) would leave most SMs
//     idle with a warp per row, so `split` warps share a row and add their parts
//     in a fixed order (deterministic, no atomics).
//   otherwise (prefill, training, and dX = dY @ W in the backward): bf16: x rounded
//     into a bf16 scratch, then a cuBLAS bf16 GEMM accumulating in f32 (tensor
//     cores; products of bf16 values are exact in f32, so only the summation order
//     differs from the CPU's). f16: W widened into an f32 scratch, then an f32 GEMM
//     (TF32 only under WICK_CUDA_TF32=1, like every f32 matmul).
// Fused ends (plan.h's WK_QMM_*, planned for CUDA by compile_rewrite.c): an addend (bias row or
// residual) is added to each f32 dot product as it is stored, and a SwiGLU x = silu(gate)
// * up or an RMSNorm x = h / rms(h) * w is computed as x is read (each GEMV block
// recomputes its x chunks, and for the norm the sum of squares of h: a few thousand
// values, against the megabytes of W it streams); the other paths materialize x first.
// The scratch is one device buffer of this file's, grown on demand and never handed
// to the caching allocator. Why: a plan captured as a CUDA graph keeps every block
// its steps allocate for as long as the graph lives (graph.cu), so per-step scratch
// from the allocator would hold a bf16 copy of every projection's input per captured
// training step (gigabytes); steps run in stream order, so one buffer serves them
// all. A graph bakes the buffer's address in, so an outgrown buffer is retired, not
// freed (growth at least doubles, so the retired ones total less than the live one).
#include <mutex>
#include <stdlib.h>
#include "cuda_internal.h"
#include "../../engine/plan.h"
#include "probe.h"

namespace {

#define HG_WARPS 8
#define HG_XS 8192  // floats of x a block stages at a time (32 KB)

struct HArgs {
  const uint16_t *w;  // W [N, K]: f16 or bf16 bits
  const float *x;     // [M, K], dense
  float *y;           // [M, N], dense
  int64_t M, N, K;
  int split;          // warps per row of W: 1, 2, 4 or 8
  int vec;            // rows start 16-byte aligned (K % 8 == 0): 16-byte loads
  const char *add;    // addend (NULL: none): element (m, n) at m * add_rs + n, of add_dt
  int add_dt;
  int64_t add_rs;
  const float *up;    // SwiGLU (NULL: none): x is the gate, x[i] = silu(x[i]) * up[i]
  const char *nw;     // RMSNorm (NULL: none): x[i] = x[i] / sqrt(mean(x^2) + eps) * nw[i], nw of nw_dt
  int nw_dt;
  float eps;
  int glu;            // with up: the gate is stored activated, x[i] = x[i] * up[i] (WK_QMM_GLU)
  int silu;           // y = silu(y) after the addend (WK_QMM_SILU)
  unsigned wave;      // a norm GEMV's blocks resident at once (0: no prefetch; launch1)
};

// y's fused ends, the addend already loaded (addv; a.add NULL: none)
__device__ __forceinline__ float ends_pre(const HArgs &a, float v, float addv) {
  const float y = a.add ? v + addv : v;
  return a.silu ? wkm_silu(y) : y;
}
// the same, loading element (m, n) of the addend
__device__ __forceinline__ float ends(const HArgs &a, float v, int64_t m, int64_t n) {
  return ends_pre(a, v, a.add ? ldv(a.add, a.add_dt, m * a.add_rs + n) : 0.0f);
}
__device__ __forceinline__ float swiglu(float g, float u) { return wkm_silu(g) * u; }
// x from the gate and up: the gate stored activated (glu, WK_QMM_GLU) or not
__device__ __forceinline__ float glu_x(int glu, float g, float u) { return glu ? g * u : swiglu(g, u); }

template <bool BF> __device__ __forceinline__ float xround(float v) { return BF ? bf16_round(v) : v; }
template <bool BF> __device__ __forceinline__ float widen1(uint16_t u) {
  return BF ? __uint_as_float((uint32_t)u << 16) : __half2float(__ushort_as_half(u));
}
// the two values of a 32-bit word, the lower address first
template <bool BF> __device__ __forceinline__ float2 widen2(uint32_t u) {
  if (BF) return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  return make_float2(widen1<false>((uint16_t)u), widen1<false>((uint16_t)(u >> 16)));
}
template <bool BF> __device__ __forceinline__ float dot8(uint4 w, const float *x, float acc) {
  const float4 x0 = *(const float4 *)x, x1 = *(const float4 *)(x + 4);
  float2 a = widen2<BF>(w.x), b = widen2<BF>(w.y), c = widen2<BF>(w.z), d = widen2<BF>(w.w);
  acc = fmaf(a.x, x0.x, acc);
  acc = fmaf(a.y, x0.y, acc);
  acc = fmaf(b.x, x0.z, acc);
  acc = fmaf(b.y, x0.w, acc);
  acc = fmaf(c.x, x1.x, acc);
  acc = fmaf(c.y, x1.y, acc);
  acc = fmaf(d.x, x1.z, acc);
  return fmaf(d.y, x1.w, acc);
}

// y[m, n] = x[m, :] . W[n, :]. A block holds HG_WARPS / split row groups of ROWS rows;
// thread t of a group's split * 32 takes 8-value chunks t, t + split * 32, ... of
// each of its rows. Rows past N repeat row N - 1 (loads stay in bounds, results are
// dropped), so every thread reaches the barriers.
template <bool BF, int MM, int ROWS>
__global__ void __launch_bounds__(HG_WARPS * 32) k_hgemv(const HArgs a) {
  constexpr int SEG = HG_XS / MM / 8 * 8;  // values of a row per stage
  __shared__ __align__(16) float xs[MM][SEG];
  __shared__ float part[HG_WARPS][ROWS * MM];
  wkc_pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = warp / a.split, sub = warp - grp * a.split;
  const int t = sub * 32 + lane, nt = a.split * 32;
  const int64_t n0 = ((int64_t)blockIdx.x * (HG_WARPS / a.split) + grp) * ROWS;
  const uint16_t *wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) wr[r] = a.w + (n0 + r < a.N ? n0 + r : a.N - 1) * a.K;
  float acc[ROWS][MM];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < MM; m++) acc[r][m] = 0.0f;
  for (int64_t k0 = 0; k0 < a.K; k0 += SEG) {
    const int kn = a.K - k0 < SEG ? (int)(a.K - k0) : SEG;
    __syncthreads();  // the last stage's readers are done with xs
    for (int i = threadIdx.x; i < MM * kn; i += blockDim.x) {
      const int m = i / kn, e = i - m * kn;
      const int64_t xi = m * a.K + k0 + e;
      xs[m][e] = xround<BF>(a.up ? glu_x(a.glu, __ldg(a.x + xi), __ldg(a.up + xi)) : __ldg(a.x + xi));
    }
    __syncthreads();
    if (a.vec) {
      const int nc = kn >> 3;
      for (int c = t; c < nc; c += 2 * nt) {
        uint4 w[2][ROWS];  // every load of the step issued before the first use
#pragma unroll
        for (int u = 0; u < 2; u++)
#pragma unroll
          for (int r = 0; r < ROWS; r++)
            w[u][r] = c + u * nt < nc ? __ldg((const uint4 *)(wr[r] + k0) + c + u * nt) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < 2; u++) {
          if (c + u * nt >= nc) break;
#pragma unroll
          for (int m = 0; m < MM; m++)
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r][m] = dot8<BF>(w[u][r], &xs[m][(c + u * nt) * 8], acc[r][m]);
        }
      }
    } else {  // odd K: rows are not 16-byte aligned
      for (int e = t; e < kn; e += nt)
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
          const float wv = widen1<BF>(wr[r][k0 + e]);
#pragma unroll
          for (int m = 0; m < MM; m++) acc[r][m] = fmaf(wv, xs[m][e], acc[r][m]);
        }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < MM; m++) {
      const float v = warp_sum(acc[r][m]);
      if (lane == 0) part[warp][r * MM + m] = v;
    }
  __syncthreads();
  if (sub == 0 && lane < ROWS * MM) {  // the row's warps' parts, in order
    const int r = lane / MM, m = lane - r * MM;
    float s = 0.0f;
    for (int p = 0; p < a.split; p++) s += part[warp + p][lane];
    if (n0 + r < a.N) a.y[m * a.N + n0 + r] = ends(a, s, m, n0 + r);
  }
}

// One row of x (decode, M = 1), rows 16-byte aligned (K % 8 == 0): the bandwidth path.
// No shared-memory staging and no barrier before the first load: `split` warps share a
// row of W, each lane issues its U 16-byte loads of W (L1 bypassed, they are used once)
// before it touches x, which it reads straight from global memory (a few KB that stay in
// L1 and L2 for the whole grid) and rounds in registers. The k_hgemv path above waits
// for x in shared memory first and keeps only two loads per lane in flight, so the
// small layer shapes paid a DRAM round trip per stage (4-12 us on an H200, where the
// bytes take 0.4-2 us). The split warps' parts are added in a fixed order (deterministic).
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
// What x is (the step's fused prologue): as stored, silu(gate) * up, or rms_norm(h) * w.
enum { XM_PLAIN = 0, XM_SWIGLU = 1, XM_NORM = 2 };

// 8 values of x from global memory, chunk c (SWIGLU: silu(gate) * up, gate in a.x),
// rounded to bf16 for a bf16 W
template <bool BF, int XM> __device__ __forceinline__ void ldx8(const HArgs &a, int c, float *v) {
  const float4 *x = (const float4 *)a.x + 2 * c;
  const float4 x0 = x[0], x1 = x[1];   // x and up: plain loads, not __ldg (PDL: cuda_internal.h)
  v[0] = x0.x, v[1] = x0.y, v[2] = x0.z, v[3] = x0.w, v[4] = x1.x, v[5] = x1.y, v[6] = x1.z, v[7] = x1.w;
  if (XM == XM_SWIGLU) {
    const float4 *up = (const float4 *)a.up + 2 * c;
    const float4 u0 = up[0], u1 = up[1];
    const float u[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = glu_x(a.glu, v[i], u[i]);
  }
  if (BF)
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = bf16_round(v[i]);
}
template <bool BF> __device__ __forceinline__ float dot8r(uint4 w, const float *x, float acc) {
  const float2 a = widen2<BF>(w.x), b = widen2<BF>(w.y), c = widen2<BF>(w.z), d = widen2<BF>(w.w);
  acc = fmaf(a.x, x[0], acc);
  acc = fmaf(a.y, x[1], acc);
  acc = fmaf(b.x, x[2], acc);
  acc = fmaf(b.y, x[3], acc);
  acc = fmaf(c.x, x[4], acc);
  acc = fmaf(c.y, x[5], acc);
  acc = fmaf(d.x, x[6], acc);
  return fmaf(d.y, x[7], acc);
}

// One round of W's loads: U chunks of each of the R rows, from chunk c0 on (nt apart);
// chunks past nc load zeros. All issued before any is used.
// EARLY: the round before the PDL wait, in coherent loads that stay before it.
template <int U, int R, bool EARLY = false>
__device__ __forceinline__ void load_round(uint4 (&w)[U][R], const uint4 *const *wr, int c0, int nt, int nc) {
#pragma unroll
  for (int u = 0; u < U; u++)
#pragma unroll
    for (int r = 0; r < R; r++)
      w[u][r] = c0 + u * nt < nc ? EARLY ? wkc_ld_early16(wr[r] + c0 + u * nt) : ld_stream(wr[r] + c0 + u * nt)
                                 : make_uint4(0, 0, 0, 0);
}

#define NORM_CHUNKS 4   // 8-value chunks of h a lane holds (registers): K <= 8 * 32 * 4 * 8 = 8192
#define NORM_SPLIT 2    // cfg1: the most warps a row a norm GEMV takes to make more blocks

// 8 values of the norm weight from chunk c, widened
__device__ __forceinline__ void nw8(const HArgs &a, int c, float *v) {
  if (a.nw_dt == WK_F32) {
    const float4 w0 = __ldg((const float4 *)a.nw + 2 * c), w1 = __ldg((const float4 *)a.nw + 2 * c + 1);
    v[0] = w0.x, v[1] = w0.y, v[2] = w0.z, v[3] = w0.w, v[4] = w1.x, v[5] = w1.y, v[6] = w1.z, v[7] = w1.w;
    return;
  }
  const uint4 q = __ldg((const uint4 *)a.nw + c);
  const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = a.nw_dt == WK_BF16 ? widen2<true>(u[i]) : widen2<false>(u[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}

// The norm weight widened into shared memory (nws[K]), before the PDL wait: launch1
// launches a norm GEMV as a dependent only where nw is constant too. Every load issued
// before the first store: one round trip, overlapping the kernel before.
__device__ __forceinline__ void stage_nw(const HArgs &a, float *nws) {
  constexpr int MAXC = NORM_CHUNKS;
  const int nc = (int)(a.K >> 3);
  float v[MAXC][8];
#pragma unroll
  for (int k = 0; k < MAXC; k++)
    if (threadIdx.x + k * HG_WARPS * 32 < nc) nw8(a, threadIdx.x + k * HG_WARPS * 32, v[k]);
#pragma unroll
  for (int k = 0; k < MAXC; k++) {
    const int c = threadIdx.x + k * HG_WARPS * 32;
    if (c < nc) {
      ((float4 *)nws)[2 * c] = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
      ((float4 *)nws)[2 * c + 1] = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
    }
  }
  __syncthreads();
}

// The dot products of an RMSNorm x = h / sqrt(mean(h^2) + eps) * nw with the group's R
// rows. Each lane holds its (at most NORM_CHUNKS: cfg1's split) 8-value chunks of h in registers,
// so the sum of squares costs no second read: a warp sum, plus one block barrier when
// `split` warps share a row. W's first round (w) was issued before the wait, and the
// norm weight staged (nws).
template <bool BF, int U, int R>
__device__ __forceinline__ void norm_dots(const HArgs &a, uint4 (&w)[U][R], const uint4 *const *wr, int t, int nt, float *acc,
                                          const float *nws) {
  constexpr int MAXC = NORM_CHUNKS;
  __shared__ float red[HG_WARPS];
  const int nc = (int)(a.K >> 3), warp = threadIdx.x >> 5;
  float h[MAXC][8], ss = 0.0f;
#pragma unroll
  for (int k = 0; k < MAXC; k++) {
    const int c = t + k * nt;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float4 h0 = c < nc ? ((const float4 *)a.x)[2 * c] : z, h1 = c < nc ? ((const float4 *)a.x)[2 * c + 1] : z;
    h[k][0] = h0.x, h[k][1] = h0.y, h[k][2] = h0.z, h[k][3] = h0.w, h[k][4] = h1.x, h[k][5] = h1.y, h[k][6] = h1.z, h[k][7] = h1.w;
#pragma unroll
    for (int i = 0; i < 8; i++) ss += h[k][i] * h[k][i];
  }
  ss = warp_sum(ss);
  if (a.split > 1) {   // uniform in a block: every thread reaches the barrier
    if ((threadIdx.x & 31) == 0) red[warp] = ss;
    __syncthreads();
    const int g0 = warp / a.split * a.split;
    ss = 0.0f;
    for (int p = 0; p < a.split; p++) ss += red[g0 + p];
  }
  const float kn = 1.0f / sqrtf(ss / (float)a.K + a.eps);   // the CPU's formula, summed in another order
#pragma unroll
  for (int k = 0; k < MAXC; k += U) {
    const int c0 = t + k * nt;
    if (c0 >= nc) break;
    if (k) load_round<U, R>(w, wr, c0, nt, nc);
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (c0 + u * nt >= nc) break;
      const float4 n0 = ((const float4 *)nws)[2 * (c0 + u * nt)], n1 = ((const float4 *)nws)[2 * (c0 + u * nt) + 1];
      const float wn[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
      float xr[8];
#pragma unroll
      for (int i = 0; i < 8; i++) xr[i] = xround<BF>(h[k + u][i] * kn * wn[i]);   // as the CPU: (h k) w
#pragma unroll
      for (int r = 0; r < R; r++) acc[r] = dot8r<BF>(w[u][r], xr, acc[r]);
    }
  }
}

// W's rows [n0, n0 + R) of group grp of block bx into L2: a hint, no registers held.
template <int R>
__device__ __forceinline__ void prefetch_rows(const HArgs &a, int64_t bx, int grp, int t, int nt) {
  const int64_t n0 = (bx * (HG_WARPS / a.split) + grp) * R;
  if (n0 >= a.N) return;
  const int64_t rows = a.N - n0 < R ? a.N - n0 : R, bytes = rows * a.K * 2;
  const char *p = (const char *)(a.w + n0 * a.K);
  for (int64_t o = 128 * (int64_t)t; o < bytes; o += 128 * (int64_t)nt) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
}

// A group of `split` warps owns R rows (R = 4 with a SwiGLU x, computed once for the 4
// rows); rows past N repeat row N - 1 (in bounds, dropped).
// After the PDL wait a decode GEMV is a chain of dependent round trips to L2, slow while
// the kernels around it stream weights; so what does not depend on the kernel before is
// read ahead of the wait (W's first round, a norm's weight), and the addend with x, not
// after the sums. Qwen2.5-0.5B, H100, 128 tokens, steady decode (5 runs each, one call):
// 1,362 tok/s; the addend with x 1,394; the norm weight ahead 1,409; both 1,434.
// A norm GEMV (a layer's q, k, v; gate and up) has more blocks than fit at once (gate/up:
// 608, 396 resident), and a block of the second wave gets an SM, and issues its loads,
// only as one of the first finishes. So each first-wave block also prefetches into L2,
// before the wait, the rows of the block one wave after it (next, next_bx), while the
// kernels before still run and DRAM idles beside the attention. Qwen2.5-0.5B, H100,
// steady decode, one call, 7 runs each at 128 tokens (3 at 512): 1,409 -> 1,446 tok/s
// (1,364 -> 1,390). Prefetching the block's own later rounds as well: 1,434; every
// GEMV's next wave (not only the norm's): 1,380.
template <bool BF, int U, int R, int XM>
__device__ __forceinline__ void hgemv1_body(const HArgs &a, int64_t bx, const HArgs *next, int64_t next_bx) {
  __shared__ float part[HG_WARPS][R];
  PROBE_START;
  wkc_pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = warp / a.split, sub = warp - grp * a.split;
  const int t = sub * 32 + lane, nt = a.split * 32;
  const int64_t n0 = (bx * (HG_WARPS / a.split) + grp) * R;
  const uint4 *wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) wr[r] = (const uint4 *)(a.w + (n0 + r < a.N ? n0 + r : a.N - 1) * a.K);
  const int nc = (int)(a.K >> 3);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  extern __shared__ float nws[];   // XM_NORM: the norm weight, widened
  uint4 w[U][R];
  load_round<U, R, true>(w, wr, t, nt, nc);   // W's first round before the wait (PDL), x after
  if (XM == XM_NORM && next) prefetch_rows<R>(*next, next_bx, grp, t, nt);
  if (XM == XM_NORM) stage_nw(a, nws);
  wkc_pdl_wait();
  PROBE_WAITED;
  // the addend of the row this lane stores, loaded with x: one round trip to L2 after the wait
  const bool stores = sub == 0 && lane < R && n0 + lane < a.N;
  const float addv = a.add && stores ? ldv(a.add, a.add_dt, n0 + lane) : 0.0f;
  if constexpr (XM == XM_NORM) {
    norm_dots<BF, U, R>(a, w, wr, t, nt, acc, nws);
  } else {
    for (int c0 = t; c0 < nc; c0 += U * nt) {
      if (c0 != t) load_round<U, R>(w, wr, c0, nt, nc);
#pragma unroll
      for (int u = 0; u < U; u++)
        if (c0 + u * nt < nc) {
          float xr[8];
          ldx8<BF, XM>(a, c0 + u * nt, xr);
#pragma unroll
          for (int r = 0; r < R; r++) acc[r] = dot8r<BF>(w[u][r], xr, acc[r]);
        }
    }
  }
  PROBE_MARK;   // (the dots done)
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
  if (a.split == 1) {
    if (stores) {
      float v = acc[0];
#pragma unroll
      for (int r = 1; r < R; r++) v = lane == r ? acc[r] : v;
      a.y[n0 + lane] = ends_pre(a, v, addv);
    }
    PROBE_END(XM * 1000000 + a.N);
    return;
  }
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < R; r++) part[warp][r] = acc[r];
  __syncthreads();
  if (stores) {   // the row's warps' parts in order, their loads issued at once (unrolled)
    float s = 0.0f;
#pragma unroll
    for (int p = 0; p < HG_WARPS; p++)
      if (p < a.split) s += part[warp + p][lane];
    a.y[n0 + lane] = ends_pre(a, s, addv);
  }
  PROBE_END(XM * 1000000 + a.N);
}
template <bool BF, int U, int R, int XM>
__global__ void __launch_bounds__(HG_WARPS * 32) k_hgemv1(const __grid_constant__ HArgs a) {
  const unsigned nb = blockIdx.x + a.wave;   // the block one wave later
  hgemv1_body<BF, U, R, XM>(a, blockIdx.x, a.wave && nb < gridDim.x ? &a : NULL, nb);
}

// Sibling products of one x (a layer's q, k and v; gate and up) as one launch: the
// grid is the members' grids back to back (member i from block first[i]).
#define HG_GROUP 4
struct HGroup {
  HArgs m[HG_GROUP];
  unsigned first[HG_GROUP + 1];
  int n;
};
// the member whose blocks block b is one of
__device__ __forceinline__ int member_of(const HGroup &g, unsigned b) {
  int i = 0;
  while (i + 1 < g.n && b >= g.first[i + 1]) i++;
  return i;
}
template <bool BF, int U, int R, int XM>
__global__ void __launch_bounds__(HG_WARPS * 32) k_hgemv1g(const __grid_constant__ HGroup g) {
  const int i = member_of(g, blockIdx.x);
  const unsigned nb = blockIdx.x + g.m[0].wave;   // the block one wave later, of member j
  const int j = member_of(g, nb);
  hgemv1_body<BF, U, R, XM>(g.m[i], blockIdx.x - g.first[i], g.m[0].wave && nb < gridDim.x ? &g.m[j] : NULL,
                            nb - g.first[j]);
}

// WICK_HGEMV=0 keeps k_hgemv for one-row products too (benchmarks compare the two).
bool hgemv1_on() {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("WICK_HGEMV");
    v = e && !strcmp(e, "0") ? 0 : 1;
  }
  return v == 1;
}

// Rows a group and loads a lane per round: 4 and 4 for a SwiGLU x (computed once for
// the 4 rows: one row a group made the down projection read gate and up from L2 N
// times, 2x its time), 2 and 2 with a norm, else 4 and 2. A plain x at 4 rows rather
// than 2 (cuda_bench gemv, H200, W from DRAM): [9728, 896] 7.43 -> 6.75 us, the LM
// head [151936, 896] 72.9 -> 63.8, [896, 4864] 5.40 -> 5.00, [896, 896] 2.43 -> 2.50;
// 4 loads a round, 1 row a group, or 8 loads were slower. With a norm 4 rows measured
// 9.3 -> 10.9 us a group launch (ncu), so those stay at 2. Warps per row: the fewest
// (1, 2, 4 or 8) that leave each lane at most 8 chunks of 8 values, then more while
// the grid has under 1.5 blocks an SM. An earlier sweep on an H200 over Qwen2.5-0.5B's
// decode shapes (bf16, W streamed from DRAM, 50 launches back to back in a graph;
// BENCHMARKS.md): gate+up (2 x [4864, 896]) 7.9 -> 6.3 us, down with SwiGLU ([896,
// 4864]) 9.7 -> 7.1, o ([896, 896]) 2.7 -> 2.3, the LM head ([151936, 896]) 62.5 ->
// 61.4, against 1, 1 or 4 rows a group with 4 or 8 loads and up to 8 warps an SM.
// A GEMV with the norm (a layer's q, k, v) takes more warps a row for more blocks only
// up to NORM_SPLIT: the decode attention after it launches in clusters of 8 CTAs that
// find no room while the GEMV's blocks fill the SMs, so its early reads (the cache, the
// first tile, RoPE's angles) waited for the GEMV's end. Qwen2.5-0.5B's q, k, v in 144
// blocks instead of 352 (H100, 128 tokens, steady decode, 5 runs each): 1,319 ->
// 1,403 tok/s (attention's share of a token 170 -> 116 us, the GEMVs' +15); 1 warp a
// row at most (72 blocks): 1,359.
struct Cfg1 {
  bool bf;
  int xm;    // XM_*: what x is (it fixes the loads and rows: launch1's U and R)
  unsigned grid;
  bool operator==(const Cfg1 &o) const { return bf == o.bf && xm == o.xm; }
};
Cfg1 cfg1(HArgs *a, bool bf) {
  const int64_t nc = a->K / 8;
  const int r = a->nw ? 2 : 4;
  auto blocks = [&](int split) { return (a->N + (HG_WARPS / split) * r - 1) / ((HG_WARPS / split) * r); };
  const int most = a->nw ? NORM_CHUNKS : 8;   // chunks a lane
  a->split = 1;
  while (a->split < HG_WARPS && nc > (int64_t)a->split * 32 * most) a->split *= 2;
  const int most_split = a->nw ? NORM_SPLIT : HG_WARPS;   // more blocks only within it
  while (a->split < most_split && blocks(a->split) * 2 < (int64_t)wkc_num_sms() * 3) a->split *= 2;
  return Cfg1{bf, a->up ? XM_SWIGLU : a->nw ? XM_NORM : XM_PLAIN, (unsigned)blocks(a->split)};
}
// Blocks of HG_WARPS warps of kernel k with smem bytes of dynamic shared memory resident
// at once on the device (the last kernel and size asked are remembered).
unsigned resident_blocks(const void *k, size_t smem) {
  static const void *last_k = NULL;
  static size_t last_smem = 0;
  static unsigned last = 0;
  if (k != last_k || smem != last_smem) last_k = k, last_smem = smem, last = wkc_resident_blocks(k, HG_WARPS * 32, smem);
  return last;
}
template <bool BF, int XM>
void launch1(const Cfg1 &c, const HArgs &a, const HGroup *g) {
  const unsigned grid = g ? g->first[g->n] : c.grid;
  constexpr int U = XM == XM_SWIGLU ? 4 : 2, R = XM == XM_NORM ? 2 : 4;   // loads a lane a round, rows a group (cfg1's r)
  bool pdl = true;   // W (and a norm's weight) is read before the wait: only where no step writes it
  size_t smem = 0;
  for (int i = 0; i < (g ? g->n : 1); i++) {
    const HArgs &m = g ? g->m[i] : a;
    pdl = pdl && wkc_pdl_const(m.w, sizeof(uint16_t) * (size_t)(m.N * m.K));
    if (XM == XM_NORM) {
      pdl = pdl && wkc_pdl_const(m.nw, (size_t)wkc_esize(m.nw_dt) * (size_t)m.K);
      smem = smem > sizeof(float) * (size_t)m.K ? smem : sizeof(float) * (size_t)m.K;
    }
  }
  // a norm GEMV's wave (hgemv1_body's prefetch), only where it reads ahead of a wait
  const unsigned wave = XM == XM_NORM && pdl ? resident_blocks(g ? (const void *)k_hgemv1g<BF, U, R, XM>
                                                                  : (const void *)k_hgemv1<BF, U, R, XM>, smem) : 0;
  if (g) {
    HGroup gw = *g;
    for (int i = 0; i < gw.n; i++) gw.m[i].wave = wave;
    wkc_launch(k_hgemv1g<BF, U, R, XM>, grid, HG_WARPS * 32, smem, pdl, gw);
  } else {
    HArgs aw = a;
    aw.wave = wave;
    wkc_launch(k_hgemv1<BF, U, R, XM>, grid, HG_WARPS * 32, smem, pdl, aw);
  }
}
template <bool BF>
void launch1_x(const Cfg1 &c, const HArgs &a, const HGroup *g) {
  if (c.xm == XM_SWIGLU) launch1<BF, XM_SWIGLU>(c, a, g);
  else if (c.xm == XM_NORM) launch1<BF, XM_NORM>(c, a, g);
  else launch1<BF, XM_PLAIN>(c, a, g);
}
// one step (g NULL) or a group of steps of configuration c
void gemv1(const Cfg1 &c, const HArgs &a, const HGroup *g) {
  PROBE_AT_EXIT("gemv");
  if (c.bf) launch1_x<true>(c, a, g);
  else launch1_x<false>(c, a, g);
}

// Step s as the one-row GEMV: M = 1, x (and up) dense and 16-byte aligned, K % 8 == 0, W
// 16-byte aligned; *a filled. False: anything else (wkc_half_matmul's general path).
bool one_row(const wk_step *s, void *const *slots, HArgs *a, bool *bf) {
  const wk_operand *xo = &s->in[0], *wo = &s->in[1];
  const int flags = (int)s->attrs.i[1];
  const bool has_add = (flags & WK_QMM_ADD) != 0, norm = (flags & WK_QMM_NORM) != 0;
  const bool sw = (flags & (WK_QMM_SWIGLU | WK_QMM_GLU)) != 0;
  if (!hgemv1_on() || !s->attrs.i[0] || s->nin != 2 + has_add + (sw || norm)) return false;
  if ((wo->dtype != WK_BF16 && wo->dtype != WK_F16) || wo->ndim != 2 || !wkc_is_dense(wo) || xo->dtype != WK_F32 ||
      !wkc_is_dense(xo) || s->out.dtype != WK_F32 || !wkc_is_dense(&s->out))
    return false;
  const int64_t N = wo->shape[0], K = wo->shape[1];
  if (N == 0 || K == 0 || K % 8 || wkc_numel(&s->out) != N || wkc_numel(xo) != K) return false;
  memset(a, 0, sizeof *a);
  a->w = (const uint16_t *)((const char *)slots[wo->slot] + wo->offset * 2);
  a->x = (const float *)((const char *)slots[xo->slot] + xo->offset * 4);
  a->y = (float *)((char *)slots[s->out.slot] + s->out.offset * 4);
  if (sw) {
    const wk_operand *uo = &s->in[s->nin - 1];
    if (uo->dtype != WK_F32 || !wkc_is_dense(uo) || wkc_numel(uo) != K) return false;
    a->up = (const float *)((const char *)slots[uo->slot] + uo->offset * 4);
    a->glu = (flags & WK_QMM_GLU) != 0;
  }
  a->silu = (flags & WK_QMM_SILU) != 0;
  if (norm) {
    const wk_operand *no = &s->in[s->nin - 1];
    if (!wk_is_float(no->dtype) || !wkc_is_dense(no) || wkc_numel(no) != K ||
        K > (int64_t)HG_WARPS * 32 * NORM_CHUNKS * 8)
      return false;
    a->nw = (const char *)slots[no->slot] + no->offset * (int64_t)wkc_esize(no->dtype);
    a->nw_dt = no->dtype;
    a->eps = s->attrs.f[0];
  }
  if (has_add) {
    const wk_operand *ao = &s->in[2];
    if (!wk_is_float(ao->dtype) || ao->ndim < 1 || wkc_numel(ao) != N ||
        ao->shape[ao->ndim - 1] != N || (N > 1 && ao->stride[ao->ndim - 1] != 1))
      return false;
    a->add = (const char *)slots[ao->slot] + ao->offset * (int64_t)wkc_esize(ao->dtype);
    a->add_dt = ao->dtype;
  }
  if (((uintptr_t)a->w | (uintptr_t)a->x | (uintptr_t)a->up | (uintptr_t)a->nw) & 15) return false;
  a->M = 1, a->N = N, a->K = K, a->split = 1, a->vec = 1;
  *bf = wo->dtype == WK_BF16;
  return true;
}

// The GEMM path's ends: x = silu(gate) * up (glu: gate * up) into scratch (bf16 bits
// for a bf16 W, rounded to nearest even; f32 otherwise), and y += addend after the product.
__global__ void k_swiglu_x(const float *g, const float *u, void *x, int64_t n, int to_bf16, int glu) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = glu_x(glu, g[i], u[i]);
    if (to_bf16) ((uint16_t *)x)[i] = wkm_f32_to_bf16(v);
    else ((float *)x)[i] = v;
  }
}
// x = rms_norm(h) * w, a block a row of K (f32, or bf16 bits rounded to nearest even)
__global__ void k_norm_x(const float *h, const char *w, int w_dt, float eps, void *x, int64_t K, int to_bf16) {
  __shared__ float red[32];
  wkc_pdl_trigger();
  wkc_pdl_wait();   // h is the kernel before's output (NORM_FIRST launches it as a dependent)
  const float *hr = h + blockIdx.x * K;
  float ss = 0.0f;
#pragma unroll 4   // loads of 4 iterations in flight at once: two round trips to L2 in all for K <= 1,024
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) ss += hr[i] * hr[i];
  ss = block_sum(ss, red);
  const float kn = 1.0f / sqrtf(ss / (float)K + eps);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    const float v = hr[i] * kn * ldv(w, w_dt, i);
    if (to_bf16) ((uint16_t *)x)[blockIdx.x * K + i] = wkm_f32_to_bf16(v);
    else ((float *)x)[blockIdx.x * K + i] = v;
  }
}
__global__ void k_add_end(HArgs a) {
  const int64_t n = a.M * a.N;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    a.y[i] = ends(a, a.y[i], i / a.N, i % a.N);
}
unsigned grid_for(int64_t n) {
  const int64_t b = (n + 255) / 256, cap = (int64_t)wkc_num_sms() * 8;
  return (unsigned)(b < 1 ? 1 : b < cap ? b : cap);
}
// y += the addend, after the product (a's add: the step's addend, not in place), and the
// silu of the result (a's silu).
wk_status add_end(const HArgs &a) {
  k_add_end<<<grid_for(a.M * a.N), 256, 0, wkc_stream()>>>(a);
  return wkc_check_launch("matmul (half weight, addend)");
}

template <bool BF, int MM, int ROWS>
void gemv_launch(const HArgs &a) {
  const int64_t rows = (int64_t)(HG_WARPS / a.split) * ROWS;
  k_hgemv<BF, MM, ROWS><<<(unsigned)((a.N + rows - 1) / rows), HG_WARPS * 32, 0, wkc_stream()>>>(a);
}

template <bool BF, int MM>
void gemv_rows(const HArgs &a) {
  // 4 rows a group (more loads in flight, x shared over more rows) once that still
  // leaves two blocks per SM
  if constexpr (MM <= 2)
    if (a.split == 1 && a.N >= (int64_t)wkc_num_sms() * 2 * HG_WARPS * 4) return gemv_launch<BF, MM, 4>(a);
  gemv_launch<BF, MM, 1>(a);
}

template <bool BF>
void gemv(HArgs a) {
  // Warps per row: more while each thread still gets 4 chunks of every row and the
  // grid has fewer than 32 warps an SM.
  const int64_t chunks = (a.K + 7) / 8;
  a.split = 1;
  while (a.split < HG_WARPS && chunks >= (int64_t)a.split * 2 * 32 * 4 && a.N * a.split < (int64_t)wkc_num_sms() * 32)
    a.split *= 2;
  switch (a.M) {
    case 1: return gemv_rows<BF, 1>(a);
    case 2: return gemv_rows<BF, 2>(a);
    case 3: return gemv_rows<BF, 3>(a);
    case 4: return gemv_rows<BF, 4>(a);
    case 5: return gemv_rows<BF, 5>(a);
    case 6: return gemv_rows<BF, 6>(a);
    case 7: return gemv_rows<BF, 7>(a);
    default: return gemv_rows<BF, 8>(a);
  }
}

struct Scratch {
  std::mutex mu;
  char *p = NULL;
  size_t bytes = 0;
  std::vector<void *> retired;  // outgrown buffers a captured graph may still use
};
Scratch g_scr;

// The shared scratch, at least `bytes` long; NULL (an error naming the sizes) when the
// device has no room.
char *scratch(size_t bytes, const char *dt, const char *what) {
  std::lock_guard<std::mutex> lk(g_scr.mu);
  if (bytes <= g_scr.bytes) return g_scr.p;
  size_t want = bytes > 2 * g_scr.bytes ? bytes : 2 * g_scr.bytes;
  want = (want + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
  void *p = NULL;
  if (cudaMalloc(&p, want) != cudaSuccess) {
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    wk_error(WK_ERR_OOM,
             "matmul (%s weight, cuda): out of device memory for %zu bytes of scratch (%s); the device has %zu of %zu "
             "bytes free",
             dt, want, what, fr, tot);
    return NULL;
  }
  if (g_scr.p) g_scr.retired.push_back(g_scr.p);
  g_scr.p = (char *)p;
  g_scr.bytes = want;
  return g_scr.p;
}

// Step s as the one-row GEMV of configuration *c: ONE_ROW; NORM_FIRST: the same with an
// RMSNorm x whose grid is over 8 blocks an SM, where each block recomputing the norm and
// holding h in registers (80 of them: 3 blocks an SM) costs a wide W more than the launch
// it saves (H200, ncu: the LM head [151936, 896] 62 -> 92 us fused; q/k/v and gate/up,
// 1 to 2.5 waves, fused: 1,264 -> 1,204 us a decode token); NOT: the general path.
enum { NOT_ONE_ROW, ONE_ROW, NORM_FIRST };
int one_row_cfg(const wk_step *s, void *const *slots, HArgs *a, Cfg1 *c) {
  bool bf;
  if (!one_row(s, slots, a, &bf)) return NOT_ONE_ROW;
  *c = cfg1(a, bf);
  return c->xm == XM_NORM && c->grid > 8u * (unsigned)wkc_num_sms() ? NORM_FIRST : ONE_ROW;
}

// y = x W^T (trans) or x W (+ beta y) for a dense f32 x [M, in] and a bf16 W, mb rows
// at a time: each block rounded into scr (bf16, to nearest even), then one cuBLAS
// GEMM; the addend (add non-NULL) after the last block.
wk_status half_gemm_blocks(const wk_operand *xo, void *const *slots, const char *w, bool trans, char *y, int64_t M,
                           int64_t out, int64_t in, int64_t mb, char *scr, const HArgs *add, float beta) {
  const int64_t K = trans ? in : out;
  for (int64_t r0 = 0; r0 < M; r0 += mb) {
    const int64_t mr = M - r0 < mb ? M - r0 : mb;
    wk_operand v = *xo;
    v.ndim = 2;
    v.shape[0] = mr, v.shape[1] = in;
    v.stride[0] = in, v.stride[1] = 1;
    v.offset = xo->offset + r0 * in;
    wk_status st = wkc_densify(&v, slots, WK_BF16, scr);
    if (st) return st;
    const wkc_mat xa = {scr, 0, in}, wb = {w, trans ? 1 : 0, K};
    st = wkc_gemm(xa, wb, WK_BF16, y + (size_t)(r0 * out) * 4, mr, out, in, "matmul (bf16 weight, cublasGemmEx, row blocks)",
                  beta);
    if (st) return st;
  }
  return add ? add_end(*add) : WK_OK;
}

} // namespace

wk_status wkc_half_matmul(const wk_step *s, void *const *slots) {
  HArgs a;
  Cfg1 c1;
  const int form = one_row_cfg(s, slots, &a, &c1);
  if (form == NORM_FIRST) {   // x normed into scratch by a block of its own, then the plain GEMV
    float *xn = (float *)scratch(sizeof(float) * (size_t)a.K, wk_dtype_name(s->in[1].dtype), "the RMSNorm of x");
    if (!xn) return WK_ERR_OOM;
    wkc_launch(k_norm_x, 1, 256, 0, true, (const float *)a.x, (const char *)a.nw, a.nw_dt, a.eps, (void *)xn, a.K, 0);
    a.x = xn;
    a.nw = NULL;
    c1 = cfg1(&a, c1.bf);
  }
  if (form != NOT_ONE_ROW) {
    gemv1(c1, a, NULL);
    return wkc_check_launch(c1.bf ? "matmul (bf16 weight GEMV)" : "matmul (f16 weight GEMV)");
  }
  const wk_operand *xo = &s->in[0], *wo = &s->in[1];
  const bool trans = s->attrs.i[0] != 0, bf = wo->dtype == WK_BF16;
  const int flags = (int)s->attrs.i[1];
  const bool has_add = (flags & WK_QMM_ADD) != 0, norm = (flags & WK_QMM_NORM) != 0;
  const bool sw = (flags & (WK_QMM_SWIGLU | WK_QMM_GLU)) != 0, glu = (flags & WK_QMM_GLU) != 0;
  const bool silu = (flags & WK_QMM_SILU) != 0;
  const char *dtn = wk_dtype_name(wo->dtype);
  // x: f32, or already rounded to bf16 by its producer (compile_rewrite.c's wk_compile_bf16_inputs) for the GEMM
  const bool x_bf16 = xo->dtype == WK_BF16 && bf && wkc_is_dense(xo) && !(flags & (WK_QMM_SWIGLU | WK_QMM_NORM));
  if (wo->ndim != 2 || !wkc_is_dense(wo) || (xo->dtype != WK_F32 && !x_bf16) || s->out.dtype != WK_F32 ||
      !wkc_is_dense(&s->out))
    return wk_error(WK_ERR_STATE, "matmul (%s weight, cuda): expected a dense [N, K] weight, an f32 input (or a dense "
                    "bf16 one for a bf16 weight) and a dense f32 output", dtn);
  // x @ W (the backward's dX) takes an addend alone: compile_rewrite.c's qmm_plain
  if (s->nin != 2 + has_add + (sw || norm) || (sw && norm) || ((flags & ~WK_QMM_ADD) && !trans) || (glu && (flags & WK_QMM_SWIGLU)) ||
      (flags & ~(WK_QMM_ADD | WK_QMM_SWIGLU | WK_QMM_NORM | WK_QMM_SILU | WK_QMM_GLU)))
    return wk_error(WK_ERR_STATE, "matmul (%s weight, cuda): fused ends %d with %d operands", dtn, flags, s->nin);
  const int64_t N = wo->shape[0], K = wo->shape[1], in = trans ? K : N, out = trans ? N : K;
  const int64_t M = out ? wkc_numel(&s->out) / out : 0;
  const wk_operand *uo = sw ? &s->in[s->nin - 1] : NULL, *ao = has_add ? &s->in[2] : NULL;
  const wk_operand *no = norm ? &s->in[s->nin - 1] : NULL;
  if (sw && (!wkc_is_dense(xo) || !wkc_is_dense(uo) || uo->dtype != WK_F32 || wkc_numel(uo) != wkc_numel(xo)))
    return wk_error(WK_ERR_STATE, "matmul (%s weight, cuda): the SwiGLU gate and up must be dense f32 of one shape", dtn);
  if (norm && (!wkc_is_dense(xo) || !wkc_is_dense(no) || wkc_numel(no) != in ||
               !wk_is_float(no->dtype)))
    return wk_error(WK_ERR_STATE, "matmul (%s weight, cuda): the RMSNorm input must be dense f32 and its weight a dense "
                    "float vector of %lld", dtn, (long long)in);
  DOp ad;
  memset(&ad, 0, sizeof ad);
  if (has_add) {
    ad = wkc_dop(ao, slots);
    const bool unit = out == 1 || (ao->ndim >= 1 && ao->stride[ao->ndim - 1] == 1);
    if (!(ad.flags & DOP_ROWREG) || !unit || (ad.rs != 0 && ad.rs != out && M > 1) || wkc_numel(ao) != M * out ||
        !wk_is_float(ao->dtype))
      return wk_error(WK_ERR_STATE, "matmul (%s weight, cuda): the addend must be a float bias row or a dense residual "
                      "of the output's shape", dtn);
  }
  const char *w = (const char *)slots[wo->slot] + wo->offset * 2;
  char *y = (char *)slots[s->out.slot] + s->out.offset * 4;
  if (M == 0 || out == 0) return WK_OK;
  // The planner may give y the addend's buffer (compile_memory.c's inplace_candidate: a dense
  // f32 residual read last here): cuBLAS then adds the product into it (beta = 1), and
  // no kernel reads the addend back afterwards.
  const bool add_in_place = has_add && (const void *)ad.p == (const void *)y;
  const float beta = add_in_place ? 1.0f : 0.0f;
  // (HArgs' N is y's row length here, as add_end reads it)
  a = HArgs{(const uint16_t *)w, NULL, (float *)y, M, out, K, 1, 0, has_add && !add_in_place ? ad.p : NULL, ad.dtype,
             M > 1 ? ad.rs : 0, NULL};
  a.glu = glu, a.silu = silu;
  if (in == 0) {   // y = the addend (in place already, or added to zeros), then the silu
    if (!add_in_place) cudaMemsetAsync(y, 0, sizeof(float) * (size_t)(M * out), wkc_stream());
    return a.add || silu ? add_end(a) : wkc_check_launch("matmul (half weight, empty)");
  }
  const bool gemv_path = trans && M <= 8 && !x_bf16 && !add_in_place;
  // scratch: [x, dense f32 (GEMV) or rounded to bf16 (GEMM)] [W widened to f32 (f16 GEMM)]
  const bool x_copy = !x_bf16 && ((!sw && !wkc_is_dense(xo)) || (bf && !gemv_path) || (sw && !gemv_path) || norm);
  // A dense x rounded for a bf16 GEMM goes in blocks of rows when a copy of all of it
  // would pass XBLOCK_BYTES: the scratch lives as long as the process, and a
  // vocabulary-wide x (a training step's logits gradient, [4088, 151936] for
  // Qwen2.5-0.5B) would hold 1.2 GB in it. The blocks are multiples of 64 rows.
  const size_t XBLOCK_BYTES = (size_t)64 << 20;
  int64_t mb = M;
  if (bf && !gemv_path && !sw && !norm && wkc_is_dense(xo) && (size_t)(M * in) * 2 > XBLOCK_BYTES) {
    mb = (int64_t)(XBLOCK_BYTES / ((size_t)in * 2));
    mb = mb >= 128 ? mb / 64 * 64 : mb > 0 ? mb : 1;
  }
  const size_t xbytes = x_copy ? wkc_align256((size_t)(mb * in) * (bf && !gemv_path ? 2 : 4)) : 0;
  const size_t wbytes = !bf && !gemv_path ? (size_t)(N * K) * 4 : 0;
  char *scr = NULL;
  if (xbytes + wbytes && !(scr = scratch(xbytes + wbytes, dtn, wbytes ? "the weight widened to f32" : "a copy of x")))
    return WK_ERR_OOM;
  const char *x = (const char *)slots[xo->slot] + xo->offset * (x_bf16 ? 2 : 4);
  const float *up = sw ? (const float *)((const char *)slots[uo->slot] + uo->offset * 4) : NULL;
  if (x_copy && sw) {
    k_swiglu_x<<<grid_for(M * in), 256, 0, wkc_stream()>>>((const float *)x, up, scr, M * in, bf, glu);
    wk_status st = wkc_check_launch("matmul (half weight, SwiGLU input)");
    if (st) return st;
    x = scr;
  } else if (norm) {
    const char *nw = (const char *)slots[no->slot] + no->offset * (int64_t)wkc_esize(no->dtype);
    k_norm_x<<<(unsigned)M, 256, 0, wkc_stream()>>>((const float *)x, nw, no->dtype, s->attrs.f[0], scr, in,
                                                     bf && !gemv_path);
    wk_status st = wkc_check_launch("matmul (half weight, RMSNorm input)");
    if (st) return st;
    x = scr;
  } else if (x_copy && mb < M) {
    return half_gemm_blocks(xo, slots, w, trans, y, M, out, in, mb, scr, a.add || silu ? &a : NULL, beta);
  } else if (x_copy) {
    wk_status st = wkc_densify(xo, slots, bf && !gemv_path ? WK_BF16 : WK_F32, scr);  // bf16: rounds to nearest even
    if (st) return st;
    x = scr;
  }
  if (gemv_path) {
    a.x = (const float *)x;
    a.up = sw ? up : NULL;
    a.vec = (K & 7) == 0 && !((uintptr_t)w & 15);
    if (bf) gemv<true>(a);
    else gemv<false>(a);
    return wkc_check_launch(bf ? "matmul (bf16 weight GEMV)" : "matmul (f16 weight GEMV)");
  }
  if (wbytes) {
    wk_status st = wkc_densify(wo, slots, WK_F32, scr + xbytes);
    if (st) return st;
    w = scr + xbytes;
  }
  // op(W) = W^T (trans) or W, both from W's row-major [N, K]
  const wkc_mat xa = {x, 0, in}, wb = {w, trans ? 1 : 0, K};
  wk_status st = wkc_gemm(xa, wb, bf ? WK_BF16 : WK_F32, y, M, out, in,
                          bf ? "matmul (bf16 weight, cublasGemmEx)" : "matmul (f16 weight widened, cublasGemmEx)", beta);
  return st || !(a.add || silu) ? st : add_end(a);
}

// Consecutive sibling steps (compile_schedule.c's group of half-weight matmuls reading one x): the
// one-row GEMVs of one kernel configuration as one launch; any other member runs alone.
wk_status wkc_half_matmul_group(const wk_step *s, int n, void *const *slots) {
  HGroup g;
  memset(&g, 0, sizeof g);
  Cfg1 gc = {};
  auto flush = [&]() -> wk_status {
    if (!g.n) return WK_OK;
    gemv1(gc, g.m[0], g.n > 1 ? &g : NULL);
    g.n = 0;
    return wkc_check_launch("matmul (half weight GEMV group)");
  };
  for (int k = 0; k < n; k++) {
    HArgs a;
    Cfg1 c;
    if (one_row_cfg(&s[k], slots, &a, &c) != ONE_ROW) {
      wk_status st = wkc_half_matmul(&s[k], slots);
      if (st) return st;
      continue;
    }
    if (g.n && (!(c == gc) || g.n == HG_GROUP)) {
      wk_status st = flush();
      if (st) return st;
    }
    if (!g.n) gc = c;
    g.m[g.n] = a;
    g.first[g.n + 1] = g.first[g.n] + c.grid;
    g.n++;
  }
  return flush();
}
