// Attention on CUDA, FlashAttention-2 style: no [T, S] matrix is ever stored.
//
// Forward (SDPA): a CTA owns 64 query rows of one (b, h); key/value tiles of 64 rows
// are staged in shared memory and the softmax runs online (running max m, running sum
// l, output rescaled when m grows). Two kernels:
//  - bf16 / f16 q, k, v (dense rows): tensor cores (mma.sync m16n8k16, f32
//    accumulators), 4 warps x 16 rows; K/V tiles double-buffered with cp.async; the
//    score accumulators are re-packed in registers as the A operand of P V.
//  - anything else (f32, an f32 q over an f16/bf16 cache, strided views): CUDA cores,
//    256 threads, each a 4 x 4 block of the score tile, everything in f32.
// When that makes fewer CTAs than SMs (decode: one query row per head) the keys are
// split over CTAs as well and the partial (o, m, l) merged by a second kernel
// (flash-decoding). Head dimensions above 128 keep nn.cu's row kernel, and one query
// row over an f16 / bf16 cache (decode) has a kernel of its own (attn_decode.cu).
//
// Backward (SDPA_BWD -> f32 [dq; dk; dv]): as sdpa_bwd.c on the CPU, with the same
// formulas (P recomputed from the row log-sum-exp L, delta = rowsum(dO * O)):
//   dV = P^T dO,  dS = P * (dO V^T - delta),  dK = dS^T (Q scale),  dQ = dS K scale.
// A CTA owns 64 keys of one (b, kv head) and walks the query rows of its GQA group
// stacked t-major (row r = t G + g), so dK and dV are summed over the group in
// registers; when that leaves too few CTAs to fill the GPU the group's heads are split
// over several CTAs whose dK, dV meet in f32 atomics. dQ is accumulated with f32
// atomics (so the last bits of the gradients vary from run to run). L comes from a stats pass of the CUDA-core forward (L only,
// no P V); the causal mask skips the row blocks that see none of a CTA's keys.
// bf16 / f16 with head dims up to 64 run on tensor cores; the rest on CUDA cores.
// B = batch, Hq / Hkv = query / kv heads, G = Hq / Hkv, T = queries, S = keys, D = head dim.
#include <mutex>
#include <type_traits>
#include "attn.cuh"
#include "../../engine/plan.h"   // wk_sdpa_lse_offset

// p[0] += x, p[1] += y with atomics: one 8-byte vector atomic where p is 8-byte aligned
// (a.add2), half the requests the L2 serves for the backward's dQ sums.
static __device__ __forceinline__ void atomic_add2(const AttnArgs &a, float *p, float x, float y) {
  if (a.add2) {
    atomicAdd((float2 *)p, make_float2(x, y));
  } else {
    atomicAdd(p, x);
    atomicAdd(p + 1, y);
  }
}

// ---- CUDA-core kernels (any dtype): 256 threads, thread (ty, tx) owns rows ty + 16 i
// and columns tx + 16 j of each 64 x 64 tile (strided, so that shared-memory reads of
// the 16 tx lanes fall in distinct banks and each row's 16 owners share a half-warp) ----
#define SIMT_THREADS 256

static __device__ __forceinline__ float half_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
static __device__ __forceinline__ float half_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[i][j] += sum over a tile's keys c of P[row, c] X[c, dim] for rows ty + 16 i and dims
// tx + 16 j: P V in the forward, dS K (dQ) in the backward.
template <int NJ, int LD, int PL>
static __device__ __forceinline__ void acc_tile(float (&acc)[4][NJ], const float *P, const float *X, int tx, int ty) {
  for (int c = 0; c < ATTN_BN; c++) {
    float xv[NJ];
#pragma unroll
    for (int j = 0; j < NJ; j++) xv[j] = X[c * LD + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float p = P[(ty + 16 * i) * PL + c];
#pragma unroll
      for (int j = 0; j < NJ; j++) acc[i][j] += p * xv[j];
    }
  }
}

// Forward, or (want_out = 0) the backward's statistics pass: L = logsumexp per row only.
template <int NJ>
__global__ void __launch_bounds__(SIMT_THREADS) k_attn_fwd_simt(const __grid_constant__ AttnArgs a) {
  constexpr int DP = 16 * NJ, LD = DP + 1, PL = ATTN_BN + 1;
  extern __shared__ float sm[];
  float *Qs = sm, *Ks = Qs + ATTN_BM * LD, *Vs = Ks + ATTN_BN * LD, *Ps = Vs + ATTN_BN * LD;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t nqb = (a.T + ATTN_BM - 1) / ATTN_BM, BH = a.B * a.Hq, S = eff_keys(a);
  for (int64_t item = blockIdx.x; item < nqb * BH * a.NSP; item += gridDim.x) {
    // the causal mask makes late row blocks the longest: they go first
    const int64_t sp = item % a.NSP, rest = item / a.NSP;
    const int64_t qb = nqb - 1 - rest / BH, bh = rest % BH, b = bh / a.Hq, h = bh % a.Hq, hk = h / a.G;
    const int64_t t0 = qb * ATTN_BM;
    __syncthreads();
    for (int e = tid; e < ATTN_BM * DP; e += SIMT_THREADS) {
      int i = e / DP, d = e % DP;
      int64_t t = t0 + i;
      Qs[i * LD + d] = t < a.T && d < a.D ? ldv(a.q.p, a.q.dtype, elem(a.q, b, h, t, d)) * a.scale : 0.0f;
    }
    float m[4], l[4], o[4][NJ];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      m[i] = -INFINITY;
      l[i] = 0.0f;
#pragma unroll
      for (int j = 0; j < NJ; j++) o[i][j] = 0.0f;
    }
    const int64_t tl = (t0 + ATTN_BM < a.T ? t0 + ATTN_BM : a.T) - 1;
    int64_t kend = a.causal ? tl + S - a.T + 1 : S;   // keys any row of the block sees
    if (kend > S) kend = S;
    const int64_t kfirst = sp * a.CHUNK * ATTN_BN, kspan = a.CHUNK * ATTN_BN;   // this split's keys
    const int64_t klast = kfirst + kspan < kend ? kfirst + kspan : kend;
    for (int64_t s0 = kfirst; s0 < klast; s0 += ATTN_BN) {
      __syncthreads();
      for (int e = tid; e < ATTN_BN * DP; e += SIMT_THREADS) {
        int i = e / DP, d = e % DP;
        int64_t j = s0 + i;
        bool in = j < kend && d < a.D;
        Ks[i * LD + d] = in ? ldv(a.k.p, a.k.dtype, elem(a.k, b, hk, j, d)) : 0.0f;
        if (a.want_out) Vs[i * LD + d] = in ? ldv(a.v.p, a.v.dtype, elem(a.v, b, hk, j, d)) : 0.0f;
      }
      __syncthreads();
      float sc[4][4] = {};
      for (int d = 0; d < DP; d++) {
        float qv[4], kv[4];
#pragma unroll
        for (int i = 0; i < 4; i++) qv[i] = Qs[(ty + 16 * i) * LD + d];
#pragma unroll
        for (int j = 0; j < 4; j++) kv[j] = Ks[(tx + 16 * j) * LD + d];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) sc[i][j] += qv[i] * kv[j];
      }
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int64_t t = t0 + ty + 16 * i;
        float bm = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const int64_t key = s0 + tx + 16 * j;
          bool vis = key < kend && t < a.T && (!a.causal || key <= t + S - a.T);
          float s = -INFINITY;
          if (vis) s = a.has_mask ? sc[i][j] + mask_at(a, b, h, t, key) : sc[i][j];
          sc[i][j] = s;
          bm = fmaxf(bm, s);
        }
        bm = half_max(bm);
        const float mn = fmaxf(m[i], bm), mu = mn == -INFINITY ? 0.0f : mn;  // mu: no -inf - -inf
        const float al = expf(m[i] - mu);
        float ps = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
          float p = expf(sc[i][j] - mu);
          ps += p;
          if (a.want_out) Ps[(ty + 16 * i) * PL + tx + 16 * j] = p;
        }
        l[i] = l[i] * al + half_sum(ps);
        m[i] = mn;
#pragma unroll
        for (int j = 0; j < NJ; j++) o[i][j] *= al;
      }
      if (!a.want_out) continue;
      __syncthreads();
      acc_tile<NJ, LD, PL>(o, Ps, Vs, tx, ty);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int64_t t = t0 + ty + 16 * i;
      if (t >= a.T) continue;
      const int64_t r = (b * a.Hq + h) * a.T + t;
      if (a.lse && tx == 0) a.lse[r] = l[i] == 0.0f ? -INFINITY : m[i] + logf(l[i]);
      if (!a.want_out) continue;
      if (a.NSP > 1) {   // this split's share: combined by k_attn_combine
        float *pp = a.part + (sp * a.B * a.Hq * a.T + r) * (a.D + 2);
#pragma unroll
        for (int j = 0; j < NJ; j++)
          if (tx + 16 * j < a.D) pp[tx + 16 * j] = o[i][j];
        if (tx == 0) { pp[a.D] = m[i]; pp[a.D + 1] = l[i]; }
        continue;
      }
      const float inv = l[i] == 0.0f ? 0.0f : 1.0f / l[i];   // a row that sees no key: 0 (NaN stays NaN)
#pragma unroll
      for (int j = 0; j < NJ; j++) {
        int d = tx + 16 * j;
        if (d < a.D) stv(a.out, a.out_dtype, r * a.D + d, o[i][j] * inv);
      }
    }
  }
}

// delta = rowsum(dO * O), one warp per query row.
__global__ void k_attn_delta(const __grid_constant__ AttnArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = a.B * a.Hq * a.T, wpb = blockDim.x / 32;
  for (int64_t r = blockIdx.x * wpb + threadIdx.x / 32; r < rows; r += gridDim.x * wpb) {
    int64_t t = r % a.T, h = (r / a.T) % a.Hq, b = r / (a.T * a.Hq);
    float s = 0.0f;
    for (int64_t d = lane; d < a.D; d += 32)
      s += ldv(a.dout.p, a.dout.dtype, elem(a.dout, b, h, t, d)) * ldv(a.o.p, a.o.dtype, elem(a.o, b, h, t, d));
    s = warp_sum(s);
    if (lane == 0) a.delta[r] = s;
  }
}

// The same for 2-byte dO and O whose rows are dense and 16-byte aligned, D in {32, 64,
// 128, 256}: each lane takes 8 values (one 16-byte load of each), D / 8 lanes a row.
// The warp-a-row form above spent its time on per-row index arithmetic and 2-byte
// loads: 48 us a Qwen2.5-0.5B training layer ([8, 14, 512, 64] bf16) on an H200.
template <class E>
__device__ __forceinline__ float2 wide2(uint32_t u) {
  if constexpr (std::is_same<E, __nv_bfloat16>::value)
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  else
    return __half22float2(*(const __half2 *)&u);
}
template <class E>
__global__ void k_attn_delta_vec(const __grid_constant__ AttnArgs a) {
  const int lpr = (int)(a.D / 8), lane = threadIdx.x & 31;
  const int64_t rows = a.B * a.Hq * a.T;
  const int64_t r = ((int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * (32 / lpr) + lane / lpr;
  const int part = lane % lpr;
  float s = 0.0f;
  if (r < rows) {
    const int64_t t = r % a.T, h = (r / a.T) % a.Hq, b = r / (a.T * a.Hq);
    const uint4 g = *(const uint4 *)((const E *)a.dout.p + elem(a.dout, b, h, t, part * 8));
    const uint4 o = *(const uint4 *)((const E *)a.o.p + elem(a.o, b, h, t, part * 8));
    const uint32_t gw[4] = {g.x, g.y, g.z, g.w}, ow[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const float2 gv = wide2<E>(gw[q]), ov = wide2<E>(ow[q]);
      s = fmaf(gv.x, ov.x, s);
      s = fmaf(gv.y, ov.y, s);
    }
  }
  for (int off = lpr / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (r < rows && part == 0) a.delta[r] = s;
}
// Whether k_attn_delta_vec takes o: 2-byte elements, rows dense and 16-byte aligned.
static bool delta_vec_operand(const DOp &o, int dt, int64_t D) {
  return o.dtype == dt && (dt == WK_BF16 || dt == WK_F16) && (D == 32 || D == 64 || D == 128 || D == 256) &&
         o.stride[3] == 1 && !((uintptr_t)o.p & 15) && !(o.stride[0] * 2 % 16) && !(o.stride[1] * 2 % 16) &&
         !(o.stride[2] * 2 % 16);
}

// WICK_CUDA_DELTA_VEC=0 keeps the warp-a-row delta (benchmarks).
static bool delta_vec_on(void) {
  static int on = -1;
  return wk_env_on("WICK_CUDA_DELTA_VEC", &on);
}

// Backward: a CTA per (b, kv head, block of 64 keys).
template <int NJ>
__global__ void __launch_bounds__(SIMT_THREADS) k_attn_bwd_simt(const __grid_constant__ AttnArgs a) {
  constexpr int DP = 16 * NJ, LD = DP + 1, PL = ATTN_BN + 1;
  extern __shared__ float sm[];
  float *Ks = sm, *Vs = Ks + ATTN_BN * LD, *Qs = Vs + ATTN_BN * LD, *Gs = Qs + ATTN_BM * LD;
  float *Ps = Gs + ATTN_BM * LD, *Ds = Ps + ATTN_BM * PL, *Ls = Ds + ATTN_BM * PL, *Es = Ls + ATTN_BM;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t nkb = (a.S + ATTN_BN - 1) / ATTN_BN, per = nkb * a.NS;
  for (int64_t item = blockIdx.x; item < a.B * a.Hkv * per; item += gridDim.x) {
    const int64_t kb = item % nkb, sp = (item / nkb) % a.NS, hk = (item / per) % a.Hkv, b = item / (per * a.Hkv);
    const int64_t s0 = kb * ATTN_BN, g0 = sp * a.GS, gs = a.GS < a.G - g0 ? a.GS : a.G - g0;
    const int64_t R = a.T * gs, hb = hk * a.G + g0;   // rows r = t gs + i of heads hb + i
    __syncthreads();
    for (int e = tid; e < ATTN_BN * DP; e += SIMT_THREADS) {
      int i = e / DP, d = e % DP;
      int64_t j = s0 + i;
      bool in = j < a.S && d < a.D;
      Ks[i * LD + d] = in ? ldv(a.k.p, a.k.dtype, elem(a.k, b, hk, j, d)) : 0.0f;
      Vs[i * LD + d] = in ? ldv(a.v.p, a.v.dtype, elem(a.v, b, hk, j, d)) : 0.0f;
    }
    float dk[4][NJ] = {}, dv[4][NJ] = {};   // keys ty + 16 i, dims tx + 16 j
    // the first stacked row that sees key s0 (earlier rows are hidden from every key >= s0)
    int64_t r0 = 0;
    if (a.causal) {
      int64_t t = s0 - (a.S - a.T);
      r0 = (t > 0 ? t : 0) * gs;
    }
    for (; r0 < R; r0 += ATTN_BM) {
      __syncthreads();
      for (int e = tid; e < ATTN_BM * DP; e += SIMT_THREADS) {
        int i = e / DP, d = e % DP;
        int64_t r = r0 + i, t = r / gs, h = hb + r % gs;
        bool in = r < R && d < a.D;
        Qs[i * LD + d] = in ? ldv(a.q.p, a.q.dtype, elem(a.q, b, h, t, d)) * a.scale : 0.0f;
        Gs[i * LD + d] = in ? ldv(a.dout.p, a.dout.dtype, elem(a.dout, b, h, t, d)) : 0.0f;
      }
      if (tid < ATTN_BM) {
        int64_t r = r0 + tid, t = r / gs, h = hb + r % gs, x = (b * a.Hq + h) * a.T + t;
        Ls[tid] = r < R ? a.lse[x] : -INFINITY;
        Es[tid] = r < R ? a.delta[x] : 0.0f;
      }
      __syncthreads();
      float sc[4][4] = {}, dp[4][4] = {};   // rows ty + 16 i, keys tx + 16 j
      for (int d = 0; d < DP; d++) {
        float qv[4], gv[4], kv[4], vv[4];
#pragma unroll
        for (int i = 0; i < 4; i++) { qv[i] = Qs[(ty + 16 * i) * LD + d]; gv[i] = Gs[(ty + 16 * i) * LD + d]; }
#pragma unroll
        for (int j = 0; j < 4; j++) { kv[j] = Ks[(tx + 16 * j) * LD + d]; vv[j] = Vs[(tx + 16 * j) * LD + d]; }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) { sc[i][j] += qv[i] * kv[j]; dp[i][j] += gv[i] * vv[j]; }
      }
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int ri = ty + 16 * i;
        const int64_t r = r0 + ri, t = r / gs, h = hb + r % gs;
        const float L = Ls[ri], del = Es[ri];
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const int64_t key = s0 + tx + 16 * j;
          bool vis = r < R && key < a.S && L > -INFINITY && (!a.causal || key <= t + a.S - a.T);
          float p = 0.0f;
          if (vis) {
            float s = a.has_mask ? sc[i][j] + mask_at(a, b, h, t, key) : sc[i][j];
            p = expf(s - L);   // s = -inf (a masked key): 0
          }
          Ps[ri * PL + tx + 16 * j] = p;
          Ds[ri * PL + tx + 16 * j] = p * (dp[i][j] - del);
        }
      }
      __syncthreads();
      // dV += P^T dO, dK += dS^T Qs (keys ty + 16 i, dims tx + 16 j)
      for (int r = 0; r < ATTN_BM; r++) {
        float gv[NJ], qv[NJ];
#pragma unroll
        for (int j = 0; j < NJ; j++) { gv[j] = Gs[r * LD + tx + 16 * j]; qv[j] = Qs[r * LD + tx + 16 * j]; }
#pragma unroll
        for (int i = 0; i < 4; i++) {
          float p = Ps[r * PL + ty + 16 * i], ds = Ds[r * PL + ty + 16 * i];
#pragma unroll
          for (int j = 0; j < NJ; j++) { dv[i][j] += p * gv[j]; dk[i][j] += ds * qv[j]; }
        }
      }
      // dQ += dS K scale (rows ty + 16 i, dims tx + 16 j), accumulated across key blocks
      float dqa[4][NJ] = {};
      acc_tile<NJ, LD, PL>(dqa, Ds, Ks, tx, ty);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int64_t r = r0 + ty + 16 * i, t = r / gs, h = hb + r % gs;
        if (r >= R) continue;
        float *dst = a.dq + ((b * a.Hq + h) * a.T + t) * a.D;
#pragma unroll
        for (int j = 0; j < NJ; j++) {
          int d = tx + 16 * j;
          if (d < a.D) atomicAdd(dst + d, dqa[i][j] * a.scale);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int64_t key = s0 + ty + 16 * i;
      if (key >= a.S) continue;
      const int64_t at = ((b * a.Hkv + hk) * a.S + key) * a.D;
#pragma unroll
      for (int j = 0; j < NJ; j++) {
        int d = tx + 16 * j;
        if (d >= a.D) continue;   // Qs carries the scale
        if (a.NS > 1) { atomicAdd(a.dk + at + d, dk[i][j]); atomicAdd(a.dv + at + d, dv[i][j]); }
        else { a.dk[at + d] = dk[i][j]; a.dv[at + d] = dv[i][j]; }
      }
    }
  }
}

// ---- tensor-core forward (bf16 / f16): 4 warps x 16 query rows, mma.sync m16n8k16 ----
#define MMA_THREADS 128
template <class E> struct MmaT;
template <> struct MmaT<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
  }
};
template <> struct MmaT<__half> {
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
  }
};

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
static __device__ __forceinline__ void ldsm4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
static __device__ __forceinline__ void ldsm4t(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
// 16 bytes global -> shared; bytes = 0 writes zeros (rows past the end, padded dims).
static __device__ __forceinline__ void cp16(void *dst, const void *src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
}
static __device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// A 64 x HD tile of rows [r0, r0 + 64) of (b, h) into shared memory (row stride HD + 8
// elements: 16 bytes of padding keep ldmatrix's eight row reads in distinct banks).
template <int HD, class E>
static __device__ __forceinline__ void load_tile(E *dst, const DOp &o, int64_t b, int64_t h, int64_t r0, int64_t rows,
                                                 int64_t D) {
  constexpr int LDS = HD + 8, CH = HD / 8;
  for (int e = threadIdx.x; e < 64 * CH; e += MMA_THREADS) {
    int i = e / CH, c = e % CH;
    int64_t r = r0 + i;
    bool in = r < rows && c * 8 < D;
    const E *src = (const E *)o.p + (in ? elem(o, b, h, r, c * 8) : 0);
    cp16(dst + i * LDS + c * 8, src, in ? 16 : 0);
  }
}

template <int HD, class E>
__global__ void __launch_bounds__(MMA_THREADS) k_attn_fwd_mma(const __grid_constant__ AttnArgs a) {
  constexpr int LDS = HD + 8, KC = HD / 16, NT = ATTN_BN / 8, DT = HD / 8;
  constexpr float LOG2E = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char smraw[];
  E *Qs = (E *)smraw, *Ks = Qs + 64 * LDS, *Vs = Ks + 2 * 64 * LDS;   // K, V: two buffers each
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tg = lane & 3;
  const int64_t nqb = (a.T + ATTN_BM - 1) / ATTN_BM, BH = a.B * a.Hq, S = eff_keys(a);
  const float sl2 = a.scale * LOG2E;   // scores in base 2: exp(x) = exp2(x log2 e)
  for (int64_t item = blockIdx.x; item < nqb * BH * a.NSP; item += gridDim.x) {
    const int64_t sp = item % a.NSP, rest = item / a.NSP;
    const int64_t qb = nqb - 1 - rest / BH, bh = rest % BH, b = bh / a.Hq, h = bh % a.Hq, hk = h / a.G;
    const int64_t t0 = qb * ATTN_BM;
    const int64_t tl = (t0 + ATTN_BM < a.T ? t0 + ATTN_BM : a.T) - 1;
    int64_t kend = a.causal ? tl + S - a.T + 1 : S;
    if (kend > S) kend = S;
    if (kend < 0) kend = 0;
    const int64_t nt_all = (kend + ATTN_BN - 1) / ATTN_BN, tb = sp * a.CHUNK;
    const int ntiles = (int)(nt_all - tb < a.CHUNK ? (nt_all > tb ? nt_all - tb : 0) : a.CHUNK);   // this split's
    const int64_t kbase = tb * ATTN_BN;
    __syncthreads();   // the previous item's readers are done with the buffers
    load_tile<HD>(Qs, a.q, b, h, t0, a.T, a.D);
    if (ntiles) {
      load_tile<HD>(Ks, a.k, b, hk, kbase, kend, a.D);
      load_tile<HD>(Vs, a.v, b, hk, kbase, kend, a.D);
    }
    cp_commit();
    uint32_t qf[KC][4];
    float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};   // rows g and g + 8
#pragma unroll
    for (int d = 0; d < DT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    const int64_t tr[2] = {t0 + w * 16 + g, t0 + w * 16 + g + 8};
    for (int it = 0; it < ntiles; it++) {
      const int buf = it & 1;
      if (it + 1 < ntiles) {   // the next tile streams in while this one is used
        load_tile<HD>(Ks + (buf ^ 1) * 64 * LDS, a.k, b, hk, kbase + (int64_t)(it + 1) * ATTN_BN, kend, a.D);
        load_tile<HD>(Vs + (buf ^ 1) * 64 * LDS, a.v, b, hk, kbase + (int64_t)(it + 1) * ATTN_BN, kend, a.D);
        cp_commit();
        cp_wait<1>();
      } else {
        cp_wait<0>();
      }
      __syncthreads();
      if (it == 0) {
#pragma unroll
        for (int kc = 0; kc < KC; kc++)
          ldsm4(qf[kc], Qs + (w * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + kc * 16 + (lane >> 4) * 8);
      }
      const E *Kb = Ks + buf * 64 * LDS, *Vb = Vs + buf * 64 * LDS;
      float s[NT][4];
#pragma unroll
      for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < KC; kc++)
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
          uint32_t kf[4];   // keys np*16 .. +15, dims kc*16 .. +15: (b0, b1) of two n-tiles
          ldsm4(kf, Kb + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kc * 16 + ((lane >> 3) & 1) * 8);
          MmaT<E>::mma(s[2 * np], qf[kc], kf[0], kf[1]);
          MmaT<E>::mma(s[2 * np + 1], qf[kc], kf[2], kf[3]);
        }
      const int64_t s0 = kbase + (int64_t)it * ATTN_BN;
      // scores (base 2, masked) and the running max of rows g (c0, c1) and g + 8 (c2, c3)
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int hr = c >> 1;
          const int64_t t = tr[hr], key = s0 + n * 8 + tg * 2 + (c & 1);
          float v = s[n][c] * sl2;
          bool vis = key < kend && t < a.T && (!a.causal || key <= t + S - a.T);
          if (vis && a.has_mask) v += mask_at(a, b, h, t, key) * LOG2E;
          v = vis ? v : -INFINITY;
          s[n][c] = v;
          mx[hr] = fmaxf(mx[hr], v);
        }
      float al[2], mu[2];
#pragma unroll
      for (int hr = 0; hr < 2; hr++) {
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
        const float mn = fmaxf(m[hr], mx[hr]);
        mu[hr] = mn == -INFINITY ? 0.0f : mn;
        al[hr] = exp2f(m[hr] - mu[hr]);
        m[hr] = mn;
        l[hr] *= al[hr];   // each thread keeps a partial sum; the quad is summed at the end
      }
#pragma unroll
      for (int d = 0; d < DT; d++) {
        o[d][0] *= al[0]; o[d][1] *= al[0];
        o[d][2] *= al[1]; o[d][3] *= al[1];
      }
      // P as the A operand of P V: key chunk kc = n-tiles 2kc and 2kc + 1
#pragma unroll
      for (int kc = 0; kc < NT / 2; kc++) {
        float p[8];
#pragma unroll
        for (int c = 0; c < 4; c++) {
          p[c] = exp2f(s[2 * kc][c] - mu[c >> 1]);
          p[4 + c] = exp2f(s[2 * kc + 1][c] - mu[c >> 1]);
        }
        l[0] += p[0] + p[1] + p[4] + p[5];
        l[1] += p[2] + p[3] + p[6] + p[7];
        if (!a.want_out) continue;
        uint32_t pa[4] = {MmaT<E>::pack(p[0], p[1]), MmaT<E>::pack(p[2], p[3]), MmaT<E>::pack(p[4], p[5]),
                          MmaT<E>::pack(p[6], p[7])};
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t vf[4];   // keys kc*16 .. +15 (transposed), dims dp*16 .. +15
          ldsm4t(vf, Vb + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + dp * 16 + (lane >> 4) * 8);
          MmaT<E>::mma(o[2 * dp], pa, vf[0], vf[1]);
          MmaT<E>::mma(o[2 * dp + 1], pa, vf[2], vf[3]);
        }
      }
      __syncthreads();   // buffer buf is refilled two iterations on
    }
    cp_wait<0>();   // no tile: the Q copy is still in flight
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
      float sum = l[hr];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int64_t t = tr[hr];
      if (t >= a.T) continue;
      if (a.lse && tg == 0)   // m is in base 2: L = m ln 2 + ln(sum)
        a.lse[(b * a.Hq + h) * a.T + t] = sum == 0.0f ? -INFINITY : m[hr] * 0.6931471805599453f + logf(sum);
      if (!a.want_out) continue;
      if (a.NSP > 1) {   // this split's share, m in natural units: combined by k_attn_combine
        float *pp = a.part + (sp * a.B * a.Hq * a.T + (b * a.Hq + h) * a.T + t) * (a.D + 2);
#pragma unroll
        for (int d = 0; d < DT; d++) {
          const int col = d * 8 + tg * 2;
          if (col < a.D) { pp[col] = o[d][2 * hr]; pp[col + 1] = o[d][2 * hr + 1]; }
        }
        if (tg == 0) { pp[a.D] = m[hr] * 0.6931471805599453f; pp[a.D + 1] = sum; }
        continue;
      }
      const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;   // a row that sees no key: 0 (NaN stays NaN)
      E *dst = (E *)a.out + ((b * a.Hq + h) * a.T + t) * a.D;
#pragma unroll
      for (int d = 0; d < DT; d++) {
        const int col = d * 8 + tg * 2;
        if (col < a.D) *(uint32_t *)(dst + col) = MmaT<E>::pack(o[d][2 * hr] * inv, o[d][2 * hr + 1] * inv);
      }
    }
  }
}

// ---- tensor-core backward (bf16 / f16, head dims up to 64) ----
// A CTA per (b, kv head, 64 keys); warp w owns keys w*16 .. +15 and computes, per block
// of 64 stacked query rows, the transposed tiles S^T = K Q^T and dP^T = V dO^T (keys x
// rows, so that P^T and dS^T come out of the accumulators already laid out as the A
// operand of dV += P^T dO and dK += dS^T Q). dQ = dS K needs dS rows-first: dS^T goes
// through shared memory once and is read back transposed by ldmatrix. P^T and dS^T are
// rounded to bf16 / f16 for those products (accumulation stays f32), as FA2 does.
template <int HD, class E>
__global__ void __launch_bounds__(MMA_THREADS) k_attn_bwd_mma(const __grid_constant__ AttnArgs a) {
  constexpr int LDS = HD + 8, LDP = ATTN_BM + 8, KC = HD / 16, RT = ATTN_BM / 8, DT = HD / 8, CH = HD / 8;
  extern __shared__ __align__(16) unsigned char smraw[];
  E *Ks = (E *)smraw, *Vs = Ks + 64 * LDS, *Qs = Vs + 64 * LDS, *Gs = Qs + 64 * LDS, *Ps = Gs + 64 * LDS;
  float *Ls = (float *)(Ps + 64 * LDP), *Es = Ls + ATTN_BM;
  int *Ts = (int *)(Es + ATTN_BM), *Hs = Ts + ATTN_BM;   // each stacked row's t (-1: past the end) and head
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tg = lane & 3;
  const int64_t nkb = (a.S + ATTN_BN - 1) / ATTN_BN, per = nkb * a.NS;
  for (int64_t item = blockIdx.x; item < a.B * a.Hkv * per; item += gridDim.x) {
    const int64_t kb = item % nkb, sp = (item / nkb) % a.NS, hk = (item / per) % a.Hkv, b = item / (per * a.Hkv);
    const int64_t s0 = kb * ATTN_BN, g0 = sp * a.GS, gs = a.GS < a.G - g0 ? a.GS : a.G - g0;
    const int64_t R = a.T * gs, hb = hk * a.G + g0;   // rows r = t gs + i of heads hb + i
    __syncthreads();
    load_tile<HD>(Ks, a.k, b, hk, s0, a.S, a.D);
    load_tile<HD>(Vs, a.v, b, hk, s0, a.S, a.D);
    cp_commit();
    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++)
#pragma unroll
      for (int c = 0; c < 4; c++) dk[d][c] = dv[d][c] = 0.0f;
    uint32_t kf[KC][4], vf[KC][4];
    bool have = false;
    int64_t r0 = 0;
    if (a.causal) {
      int64_t t = s0 - (a.S - a.T);
      r0 = (t > 0 ? t : 0) * gs;
    }
    for (; r0 < R; r0 += ATTN_BM) {
      __syncthreads();   // the previous row block's readers are done
      for (int e = threadIdx.x; e < 64 * CH; e += MMA_THREADS) {
        int i = e / CH, c = e % CH;
        int64_t r = r0 + i, t = r / gs, h = hb + r % gs;
        bool in = r < R && c * 8 < a.D;
        cp16(Qs + i * LDS + c * 8, (const E *)a.q.p + (in ? elem(a.q, b, h, t, c * 8) : 0), in ? 16 : 0);
        cp16(Gs + i * LDS + c * 8, (const E *)a.dout.p + (in ? elem(a.dout, b, h, t, c * 8) : 0), in ? 16 : 0);
      }
      cp_commit();
      if (threadIdx.x < ATTN_BM) {
        int64_t r = r0 + threadIdx.x, t = r / gs, h = hb + r % gs, x = (b * a.Hq + h) * a.T + t;
        bool in = r < R;
        Ls[threadIdx.x] = in ? a.lse[x] : -INFINITY;
        Es[threadIdx.x] = in ? a.delta[x] : 0.0f;
        Ts[threadIdx.x] = in ? (int)t : -1;
        Hs[threadIdx.x] = in ? (int)h : 0;
      }
      cp_wait<0>();
      __syncthreads();
      if (!have) {   // the warp's 16 keys and values as A operands, for every row block
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
          const int off = (w * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + kc * 16 + (lane >> 4) * 8;
          ldsm4(kf[kc], Ks + off);
          ldsm4(vf[kc], Vs + off);
        }
        have = true;
      }
      float st[RT][4], dpt[RT][4];
#pragma unroll
      for (int n = 0; n < RT; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) st[n][c] = dpt[n][c] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < KC; kc++)
#pragma unroll
        for (int np = 0; np < RT / 2; np++) {
          const int off = (np * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kc * 16 + ((lane >> 3) & 1) * 8;
          uint32_t qf[4], gf[4];
          ldsm4(qf, Qs + off);
          ldsm4(gf, Gs + off);
          MmaT<E>::mma(st[2 * np], kf[kc], qf[0], qf[1]);
          MmaT<E>::mma(st[2 * np + 1], kf[kc], qf[2], qf[3]);
          MmaT<E>::mma(dpt[2 * np], vf[kc], gf[0], gf[1]);
          MmaT<E>::mma(dpt[2 * np + 1], vf[kc], gf[2], gf[3]);
        }
      // P^T = exp(S^T scale + mask - L), dS^T = P^T (dP^T - delta): key g (+8), row n*8 + tg*2 (+1)
#pragma unroll
      for (int n = 0; n < RT; n++)
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int ri = n * 8 + tg * 2 + (c & 1);
          const int64_t key = s0 + w * 16 + g + (c >> 1) * 8, t = Ts[ri];
          const float L = Ls[ri];
          bool vis = t >= 0 && key < a.S && L > -INFINITY && (!a.causal || key <= t + a.S - a.T);
          float p = 0.0f;
          if (vis) {
            float sv = st[n][c] * a.scale;
            if (a.has_mask) sv += mask_at(a, b, Hs[ri], t, key);
            p = expf(sv - L);
          }
          st[n][c] = p;
          dpt[n][c] = p * (dpt[n][c] - Es[ri]);
        }
      // dV += P^T dO, dK += dS^T Q (rows are the reduction axis)
#pragma unroll
      for (int kc = 0; kc < RT / 2; kc++) {
        uint32_t pa[4] = {MmaT<E>::pack(st[2 * kc][0], st[2 * kc][1]), MmaT<E>::pack(st[2 * kc][2], st[2 * kc][3]),
                          MmaT<E>::pack(st[2 * kc + 1][0], st[2 * kc + 1][1]), MmaT<E>::pack(st[2 * kc + 1][2], st[2 * kc + 1][3])};
        uint32_t da[4] = {MmaT<E>::pack(dpt[2 * kc][0], dpt[2 * kc][1]), MmaT<E>::pack(dpt[2 * kc][2], dpt[2 * kc][3]),
                          MmaT<E>::pack(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]),
                          MmaT<E>::pack(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3])};
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          const int off = (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + dp * 16 + (lane >> 4) * 8;
          uint32_t gf[4], qf[4];
          ldsm4t(gf, Gs + off);
          ldsm4t(qf, Qs + off);
          MmaT<E>::mma(dv[2 * dp], pa, gf[0], gf[1]);
          MmaT<E>::mma(dv[2 * dp + 1], pa, gf[2], gf[3]);
          MmaT<E>::mma(dk[2 * dp], da, qf[0], qf[1]);
          MmaT<E>::mma(dk[2 * dp + 1], da, qf[2], qf[3]);
        }
      }
      // dS^T to shared memory [key][row], then dQ of rows w*16 .. +15 = dS K
#pragma unroll
      for (int n = 0; n < RT; n++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++)
          *(uint32_t *)(Ps + (w * 16 + g + hr * 8) * LDP + n * 8 + tg * 2) = MmaT<E>::pack(dpt[n][2 * hr], dpt[n][2 * hr + 1]);
      __syncthreads();
      float dqa[DT][4];
#pragma unroll
      for (int d = 0; d < DT; d++) dqa[d][0] = dqa[d][1] = dqa[d][2] = dqa[d][3] = 0.0f;
#pragma unroll
      for (int kc = 0; kc < ATTN_BN / 16; kc++) {
        uint32_t af[4];
        ldsm4t(af, Ps + (kc * 16 + (lane & 7) + (lane >> 4) * 8) * LDP + w * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t kt[4];
          ldsm4t(kt, Ks + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + dp * 16 + (lane >> 4) * 8);
          MmaT<E>::mma(dqa[2 * dp], af, kt[0], kt[1]);
          MmaT<E>::mma(dqa[2 * dp + 1], af, kt[2], kt[3]);
        }
      }
#pragma unroll
      for (int hr = 0; hr < 2; hr++) {
        const int ri = w * 16 + g + hr * 8, t = Ts[ri];
        if (t < 0) continue;
        float *dst = a.dq + ((b * a.Hq + Hs[ri]) * a.T + t) * a.D;
#pragma unroll
        for (int d = 0; d < DT; d++) {
          const int col = d * 8 + tg * 2;
          if (col < a.D) atomic_add2(a, dst + col, dqa[d][2 * hr] * a.scale, dqa[d][2 * hr + 1] * a.scale);
        }
      }
    }
    cp_wait<0>();   // no row block: the K, V copies are still in flight
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
      const int64_t key = s0 + w * 16 + g + hr * 8;
      if (key >= a.S) continue;
      const int64_t at = ((b * a.Hkv + hk) * a.S + key) * a.D;
#pragma unroll
      for (int d = 0; d < DT; d++) {
        const int col = d * 8 + tg * 2;
        if (col >= a.D) continue;
        if (a.NS > 1) {
          atomic_add2(a, a.dk + at + col, dk[d][2 * hr] * a.scale, dk[d][2 * hr + 1] * a.scale);
          atomic_add2(a, a.dv + at + col, dv[d][2 * hr], dv[d][2 * hr + 1]);
        } else {
          a.dk[at + col] = dk[d][2 * hr] * a.scale;
          a.dk[at + col + 1] = dk[d][2 * hr + 1] * a.scale;
          a.dv[at + col] = dv[d][2 * hr];
          a.dv[at + col + 1] = dv[d][2 * hr + 1];
        }
      }
    }
  }
}

// The splits of a row merged (flash-decoding): o = sum_i o_i e^(m_i - M) / sum_i l_i e^(m_i - M).
// One warp per query row.
__global__ void k_attn_combine(const __grid_constant__ AttnArgs a) {
  wkc_pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t rows = a.B * a.Hq * a.T, wpb = blockDim.x / 32, st = rows * (a.D + 2);
  for (int64_t r = blockIdx.x * wpb + threadIdx.x / 32; r < rows; r += gridDim.x * wpb) {
    const float *p = a.part + r * (a.D + 2);
    float M = -INFINITY, L = 0.0f;
    for (int64_t i = 0; i < a.NSP; i++) M = fmaxf(M, p[i * st + a.D]);
    const float mu = M == -INFINITY ? 0.0f : M;
    for (int64_t i = 0; i < a.NSP; i++) L += p[i * st + a.D + 1] * expf(p[i * st + a.D] - mu);
    const float inv = L == 0.0f ? 0.0f : 1.0f / L;   // a row that sees no key: 0 (NaN stays NaN)
    for (int64_t d = lane; d < a.D; d += 32) {
      float acc = 0.0f;
      for (int64_t i = 0; i < a.NSP; i++) acc += p[i * st + d] * expf(p[i * st + a.D] - mu);
      stv(a.out, a.out_dtype, r * a.D + d, acc * inv);
    }
  }
}

// ---- host ----
static int grid_for(int64_t items) {
  return (int)(items < 1 ? 1 : items < ((int64_t)1 << 30) ? items : ((int64_t)1 << 30));
}

// The common part of SDPA's and SDPA_BWD's operands; *nin: inputs before a mask.
static void attn_args(const wk_step *s, void *const *slots, AttnArgs *a) {
  const wk_operand *q = &s->in[0], *k = &s->in[1];
  memset(a, 0, sizeof *a);
  a->q = wkc_dop(q, slots);
  a->k = wkc_dop(k, slots);
  a->v = wkc_dop(&s->in[2], slots);
  a->B = q->shape[0];
  a->Hq = q->shape[1];
  a->Hkv = k->shape[1];
  a->T = q->shape[2];
  a->S = k->shape[2];
  a->D = q->shape[3];
  a->G = a->Hq / (a->Hkv ? a->Hkv : 1);
  a->scale = s->attrs.f[0];
  a->causal = s->attrs.i[0] != 0;
  a->NSP = 1;
  a->CHUNK = (a->S + ATTN_BN - 1) / ATTN_BN;
  a->NS = a->GS = 1;
}
static void attn_mask(const wk_operand *mk, void *const *slots, AttnArgs *a) {
  a->has_mask = 1;
  a->mask = wkc_ptr(mk, slots);
  a->mask_dtype = mk->dtype;
  for (int d = 0; d < mk->ndim; d++) a->ms[4 - mk->ndim + d] = mk->shape[d] == 1 ? 0 : mk->stride[d];
}

// Whether the tensor-core kernel can read o: bf16 / f16 rows of D contiguous elements
// whose starts are 16-byte aligned (cp.async moves 8 elements at a time).
bool wkc_attn_mma_operand(const wk_operand *o, void *const *slots, wk_dtype dt) {
  if (o->dtype != dt || o->shape[3] % 8) return false;
  if (o->stride[3] != 1 && o->shape[3] != 1) return false;
  for (int d = 0; d < 3; d++)
    if (o->shape[d] > 1 && o->stride[d] % 8) return false;
  return ((uintptr_t)wkc_ptr(o, slots) & 15) == 0;
}

static size_t simt_fwd_smem(int nj) { return (size_t)(3 * 64 * (16 * nj + 1) + 64 * 65) * sizeof(float); }
static size_t simt_bwd_smem(int nj) { return (size_t)(4 * 64 * (16 * nj + 1) + 2 * 64 * 65 + 2 * 64) * sizeof(float); }
static size_t mma_smem(int hd) { return (size_t)5 * 64 * (hd + 8) * 2; }
static size_t mma_bwd_smem(int hd) { return (size_t)(4 * 64 * (hd + 8) + 64 * (64 + 8)) * 2 + 4 * 64 * 4; }

// Opts every tiled kernel into the shared memory it needs, once (those that need more
// than the device has are refused at launch with the sizes).
template <class K> static void optin(K kern, size_t bytes) {
  if (bytes > 48 * 1024 && bytes <= wkc_max_smem())
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}
static void attn_init(void) {
  static std::once_flag once;
  std::call_once(once, [] {
    optin(k_attn_fwd_simt<2>, simt_fwd_smem(2));
    optin(k_attn_fwd_simt<4>, simt_fwd_smem(4));
    optin(k_attn_fwd_simt<8>, simt_fwd_smem(8));
    optin(k_attn_bwd_simt<2>, simt_bwd_smem(2));
    optin(k_attn_bwd_simt<4>, simt_bwd_smem(4));
    optin(k_attn_bwd_simt<8>, simt_bwd_smem(8));
    optin(k_attn_fwd_mma<32, __nv_bfloat16>, mma_smem(32));
    optin(k_attn_fwd_mma<64, __nv_bfloat16>, mma_smem(64));
    optin(k_attn_fwd_mma<128, __nv_bfloat16>, mma_smem(128));
    optin(k_attn_fwd_mma<32, __half>, mma_smem(32));
    optin(k_attn_fwd_mma<64, __half>, mma_smem(64));
    optin(k_attn_fwd_mma<128, __half>, mma_smem(128));
    optin(k_attn_bwd_mma<32, __nv_bfloat16>, mma_bwd_smem(32));
    optin(k_attn_bwd_mma<64, __nv_bfloat16>, mma_bwd_smem(64));
    optin(k_attn_bwd_mma<32, __half>, mma_bwd_smem(32));
    optin(k_attn_bwd_mma<64, __half>, mma_bwd_smem(64));
  });
}

// WICK_CUDA_SDPA forces a kernel (tests and benchmarks compare them): rows (the forward's
// row kernel), simt (the CUDA-core tiled kernels only, forward and backward), tiled (the
// tiled kernels, no decode kernel).
int wkc_attn_forced(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("WICK_CUDA_SDPA");
    v = e && !strcmp(e, "rows") ? 1 : e && !strcmp(e, "simt") ? 3 : e && !strcmp(e, "tiled") ? 4 : 0;
  }
  return v;
}

// Launches the CUDA-core forward (want_out) or the statistics pass.
static wk_status simt_fwd(const AttnArgs &a, const char *what) {
  const int nj = a.D <= 32 ? 2 : a.D <= 64 ? 4 : 8;
  const size_t smem = simt_fwd_smem(nj);
  attn_init();
  if (smem > wkc_max_smem())
    return wk_error(WK_ERR_DEVICE, "%s: head dimension %lld needs %zu bytes of shared memory, the device has %zu", what,
                    (long long)a.D, smem, wkc_max_smem());
  const int grid = grid_for((a.T + ATTN_BM - 1) / ATTN_BM * a.B * a.Hq * a.NSP);
  cudaStream_t cs = wkc_stream();
  switch (nj) {
    case 2: k_attn_fwd_simt<2><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
    case 4: k_attn_fwd_simt<4><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
    default: k_attn_fwd_simt<8><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
  }
  return wkc_check_launch(what);
}

template <class E> static wk_status mma_fwd(const AttnArgs &a, const char *what) {
  const int hd = a.D <= 32 ? 32 : a.D <= 64 ? 64 : 128;
  const size_t smem = mma_smem(hd);
  attn_init();
  if (smem > wkc_max_smem())
    return wk_error(WK_ERR_DEVICE, "sdpa: head dimension %lld needs %zu bytes of shared memory, the device has %zu",
                    (long long)a.D, smem, wkc_max_smem());
  const int grid = grid_for((a.T + ATTN_BM - 1) / ATTN_BM * a.B * a.Hq * a.NSP);
  cudaStream_t cs = wkc_stream();
  switch (hd) {
    case 32: k_attn_fwd_mma<32, E><<<grid, MMA_THREADS, smem, cs>>>(a); break;
    case 64: k_attn_fwd_mma<64, E><<<grid, MMA_THREADS, smem, cs>>>(a); break;
    default: k_attn_fwd_mma<128, E><<<grid, MMA_THREADS, smem, cs>>>(a); break;
  }
  return wkc_check_launch(what);
}

// The statistics pass: each query row's log-sum-exp L into lse, from the products the
// backward kernel forms (the forward's kernels with want_out = 0, keys unsplit).
static wk_status lse_pass(const wk_step *s, void *const *slots, AttnArgs a, float *lse, const char *what) {
  const wk_dtype qt = s->in[0].dtype;
  if (!a.B || !a.Hq || !a.T || !a.D) return WK_OK;
  a.want_out = 0;
  a.lse = lse;
  a.NSP = 1;
  a.CHUNK = (a.S + ATTN_BN - 1) / ATTN_BN;
  a.part = NULL;
  if ((qt == WK_BF16 || qt == WK_F16) && wkc_attn_forced() != 3 && wkc_attn_mma_operand(&s->in[0], slots, qt) &&
      wkc_attn_mma_operand(&s->in[1], slots, qt) && wkc_attn_mma_operand(&s->in[2], slots, qt))
    return qt == WK_BF16 ? mma_fwd<__nv_bfloat16>(a, what) : mma_fwd<__half>(a, what);
  return simt_fwd(a, what);
}

// Where an SDPA step with attrs.i[2] keeps L: after the output o (plan.h).
static float *lse_after(const wk_operand *o, void *const *slots) {
  return (float *)(wkc_ptr(o, slots) + wk_sdpa_lse_offset(wkc_nbytes(o)));
}

// SDPA step s's operands: kv_len, the mask, the output.
void wkc_attn_sdpa_args(const wk_step *s, void *const *slots, AttnArgs *a) {
  attn_args(s, slots, a);
  int nin = s->nin;
  if (s->attrs.i[1]) a->kv_len = (const int32_t *)wkc_ptr(&s->in[--nin], slots);
  if (nin > 3) attn_mask(&s->in[3], slots, a);
  a->out = wkc_ptr(&s->out, slots);
  a->out_dtype = s->out.dtype;
  a->want_out = 1;
}

// attrs.i[2]: L also goes after the output, for the backward (compile_rewrite.c's match_sdpa_lse).
wk_status wkc_sdpa(const wk_step *s, void *const *slots) {
  float *lse = s->attrs.i[2] ? lse_after(&s->out, slots) : NULL;
  const wk_operand *q = &s->in[0], *k = &s->in[1], *v = &s->in[2];
  if (k->dtype == WK_Q8_0)
    return wk_error(WK_ERR_DTYPE, "sdpa: q8_0 keys and values have no CUDA kernel (use an f16 or bf16 cache on CUDA)");
  const int64_t D = q->shape[3];
  const int force = wkc_attn_forced();
  AttnArgs a;
  wkc_attn_sdpa_args(s, slots, &a);
  // the row kernel only above the tiled kernels' head dims: even for decode (T = 1) the
  // tiled kernel was 5x faster on an H200 (one query, 2048 cached keys: 105 vs 561 us)
  if (D > ATTN_MAXD || force == 1) {
    wk_status st = wkc_sdpa_rows(s, slots);
    return st || !lse || D > ATTN_MAXD ? st : lse_pass(s, slots, a, lse, "sdpa (row statistics)");
  }
  if (!a.B || !a.Hq || !a.T || !a.D) return WK_OK;
  if (wkc_attn_decode_fits(a, k, v, slots)) {
    wk_status st = wkc_attn_decode(a, s, slots);
    return st || !lse ? st : lse_pass(s, slots, a, lse, "sdpa (row statistics)");
  }
  // Few CTAs (decode: T = 1, a handful of heads) and many key tiles: the keys are split
  // over CTAs too, up to some 2 CTAs an SM, and the splits merged after (the host sizes
  // the splits by the capacity S: under kv_len the splits past it find no key).
  const int64_t ctas = (a.T + ATTN_BM - 1) / ATTN_BM * a.B * a.Hq, ntile = a.CHUNK;
  void *part = NULL;
  if (ctas < wkc_num_sms() && ntile > 1) {
    int64_t want = (2 * wkc_num_sms() + ctas - 1) / ctas;
    if (want > ntile) want = ntile;
    a.CHUNK = (ntile + want - 1) / want;
    a.NSP = (ntile + a.CHUNK - 1) / a.CHUNK;
    const size_t bytes = sizeof(float) * (size_t)(a.NSP * a.B * a.Hq * a.T * (a.D + 2));
    if (a.NSP > 1 && !(part = wkc_tmp_alloc(bytes)))
      return wk_error(WK_ERR_OOM, "sdpa: %zu bytes of split-key partial results (q %lldx%lldx%lldx%lld, %lld keys): "
                      "out of device memory", bytes, (long long)a.B, (long long)a.Hq, (long long)a.T, (long long)a.D,
                      (long long)a.S);
    a.part = (float *)part;
  }
  const wk_dtype dt = q->dtype;
  wk_status st;
  a.lse = a.NSP == 1 ? lse : NULL;   // split keys: a CTA's L would be its split's
  if ((dt == WK_BF16 || dt == WK_F16) && force != 3 && s->out.dtype == dt && ((uintptr_t)a.out & 3) == 0 &&
      wkc_attn_mma_operand(q, slots, dt) && wkc_attn_mma_operand(k, slots, dt) && wkc_attn_mma_operand(v, slots, dt))
    st = dt == WK_BF16 ? mma_fwd<__nv_bfloat16>(a, "sdpa (tensor cores)") : mma_fwd<__half>(a, "sdpa (tensor cores)");
  else
    st = simt_fwd(a, "sdpa");
  if (!st && a.NSP > 1) {
    const int64_t rows = a.B * a.Hq * a.T;
    k_attn_combine<<<grid_for((rows + 7) / 8), 256, 0, wkc_stream()>>>(a);
    st = wkc_check_launch("sdpa (merging key splits)");
  }
  wkc_tmp_free(part);
  if (!st && lse && a.NSP > 1) st = lse_pass(s, slots, a, lse, "sdpa (row statistics)");
  return st;
}

wk_status wkc_sdpa_bwd(const wk_step *s, void *const *slots) {
  const wk_operand *k = &s->in[1];
  if (k->dtype == WK_Q8_0) return wk_error(WK_ERR_DTYPE, "sdpa backward: q8_0 keys and values have no gradient");
  AttnArgs a;
  attn_args(s, slots, &a);
  if (a.D > ATTN_MAXD)
    return wk_error(WK_ERR_SHAPE, "sdpa backward: head dimension %lld is above the CUDA kernel's %d (q %lldx%lldx%lldx%lld)",
                    (long long)a.D, ATTN_MAXD, (long long)a.B, (long long)a.Hq, (long long)a.T, (long long)a.D);
  a.o = wkc_dop(&s->in[3], slots);
  a.dout = wkc_dop(&s->in[4], slots);
  if (s->nin > 5) attn_mask(&s->in[5], slots, &a);
  a.dq = (float *)wkc_ptr(&s->out, slots);
  a.dk = a.dq + a.B * a.Hq * a.T * a.D;
  a.dv = a.dk + a.B * a.Hkv * a.S * a.D;
  static int add2_on = -1;   // WICK_CUDA_ATTN_ADD2=0: one 4-byte atomic a value (to compare)
  a.add2 = wk_env_on("WICK_CUDA_ATTN_ADD2", &add2_on) && a.D % 2 == 0 && (uintptr_t)a.dq % 8 == 0;
  const int64_t rows = a.B * a.Hq * a.T, nkb = (a.S + ATTN_BN - 1) / ATTN_BN, base = a.B * a.Hkv * nkb;
  // A CTA walks the rows of GS heads of a group; a wide group is split over several CTAs
  // (summing dK, dV with atomics) until there are some 4 CTAs an SM: GQA 7:1 at
  // batch 8, two kv heads and 512 keys gives 128 CTAs for 132 SMs unsplit.
  a.NS = base > 0 ? (4 * wkc_num_sms() + base - 1) / base : 1;
  if (a.NS > a.G) a.NS = a.G;
  if (a.NS < 1) a.NS = 1;
  a.GS = a.G > 0 ? (a.G + a.NS - 1) / a.NS : 1;
  a.NS = a.G > 0 ? (a.G + a.GS - 1) / a.GS : 1;
  cudaStream_t cs = wkc_stream();
  // dQ is accumulated, and so are dK, dV when the group is split
  const int64_t zero = a.NS > 1 ? rows * a.D + 2 * a.B * a.Hkv * a.S * a.D : rows * a.D;
  if (zero > 0) cudaMemsetAsync(a.dq, 0, sizeof(float) * (size_t)zero, cs);
  if (!a.B || !a.Hkv || !a.S || !a.D) return wkc_check_launch("sdpa backward");
  const int nj = a.D <= 32 ? 2 : a.D <= 64 ? 4 : 8;
  const size_t smem = simt_bwd_smem(nj);
  attn_init();
  if (smem > wkc_max_smem())
    return wk_error(WK_ERR_DEVICE, "sdpa backward: head dimension %lld needs %zu bytes of shared memory, the device has %zu",
                    (long long)a.D, smem, wkc_max_smem());
  const bool kept = s->attrs.i[2] != 0;   // the forward left L after its output
  const size_t nstat = kept ? 1 : 2;
  float *stats = rows ? (float *)wkc_tmp_alloc(sizeof(float) * nstat * (size_t)rows) : NULL;
  if (rows && !stats)
    return wk_error(WK_ERR_OOM, "sdpa backward: %zu bytes of row statistics (q %lldx%lldx%lldx%lld): out of device memory",
                    sizeof(float) * nstat * (size_t)rows, (long long)a.B, (long long)a.Hq, (long long)a.T, (long long)a.D);
  a.delta = stats;
  a.lse = kept ? lse_after(&s->in[3], slots) : stats ? stats + rows : NULL;
  wk_status st = WK_OK;
  if (rows) {
    if (!kept) st = lse_pass(s, slots, a, a.lse, "sdpa backward (row statistics)");
    if (!st) {
      const int dt = a.dout.dtype;
      if (delta_vec_operand(a.dout, dt, a.D) && delta_vec_operand(a.o, dt, a.D) && delta_vec_on()) {
        const int64_t per_block = 8 * (32 / (a.D / 8));   // 8 warps
        const unsigned blocks = (unsigned)((rows + per_block - 1) / per_block);
        if (dt == WK_BF16) k_attn_delta_vec<__nv_bfloat16><<<blocks, 256, 0, cs>>>(a);
        else k_attn_delta_vec<__half><<<blocks, 256, 0, cs>>>(a);
      } else {
        k_attn_delta<<<grid_for((rows + 7) / 8), 256, 0, cs>>>(a);
      }
      st = wkc_check_launch("sdpa backward (delta)");
    }
  }
  const int grid = grid_for(base * a.NS);
  const wk_dtype dt = s->in[0].dtype;
  bool mma = (dt == WK_BF16 || dt == WK_F16) && a.D <= 64 && wkc_attn_forced() != 3;
  for (int i = 0; i < 5 && mma; i++) mma = i == 3 || wkc_attn_mma_operand(&s->in[i], slots, dt);   // out is read by k_attn_delta
  if (!st && mma) {
    const int hd = a.D <= 32 ? 32 : 64;
    const size_t ms = mma_bwd_smem(hd);
    if (dt == WK_BF16) {
      if (hd == 32) k_attn_bwd_mma<32, __nv_bfloat16><<<grid, MMA_THREADS, ms, cs>>>(a);
      else k_attn_bwd_mma<64, __nv_bfloat16><<<grid, MMA_THREADS, ms, cs>>>(a);
    } else {
      if (hd == 32) k_attn_bwd_mma<32, __half><<<grid, MMA_THREADS, ms, cs>>>(a);
      else k_attn_bwd_mma<64, __half><<<grid, MMA_THREADS, ms, cs>>>(a);
    }
    st = wkc_check_launch("sdpa backward (tensor cores)");
  } else if (!st) {
    switch (nj) {
      case 2: k_attn_bwd_simt<2><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
      case 4: k_attn_bwd_simt<4><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
      default: k_attn_bwd_simt<8><<<grid, SIMT_THREADS, smem, cs>>>(a); break;
    }
    st = wkc_check_launch("sdpa backward");
  }
  wkc_tmp_free(stats);
  return st;
}

