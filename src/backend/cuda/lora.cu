// The fused LoRA step for a few rows (decode, the seed's (1,1,n) calls):
// out[M, N] = x @ W + s * (x @ A) @ B in one launch, f32.
//
// Why: as three cuBLAS calls (x@A, x@W, t@B) a chained call costs three graph
// nodes of ~3 us each, although at these sizes W (1-16 MB) sits in L2 and its bytes
// take well under a microsecond. Here a cluster of CL CTAs (4 or 8) splits K for each
// 128-column tile of W: every CTA reads its rows of W, A and x once (all loads of
// a round in flight before the first multiply) and adds its part of x@A times B (the
// product is linear in K, so the parts sum to s * (x@A) @ B); B's tile arrives in
// shared memory by cp.async meanwhile. Each CTA then sends its part of every output
// entry to the CTA of the cluster that owns the entry (distributed shared memory),
// which adds the parts after one cluster barrier. Every sum runs in a fixed order,
// so results do not vary from run to run (graph replay on and off give the same bits).
#include <cooperative_groups.h>

#include "cuda_internal.h"

namespace cg = cooperative_groups;

#define LR_WARPS 8    // warps of a CTA: they split the CTA's rows of K again
#define VEC 4         // columns of a lane (16-byte loads of W)
#define LR_TILE (32 * VEC) // columns of a CTA
#define LR_RMAX 32    // largest rank

struct LoraArgs {
  const float *x, *w, *a, *b;
  float *out;
  int64_t ldx, ldw, lda, ldb;
  int M, K, N, r, kc;   // kc: rows of K a CTA of the cluster takes
  float scale;
};

__device__ __forceinline__ void cp_async4(float *smem, const float *gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem));
}

// U: rows of W a warp loads before its first multiply (fewer for 4 rows of x, whose
// accumulators take the registers); CL: CTAs of a cluster, which split K. At most 128
// registers: two CTAs an SM, so that the clusters of a large W fit on the GPU at once.
template <int MR, int U, int CL>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(LR_WARPS * 32, 2) k_lora_rows(const LoraArgs a) {
  constexpr int PER = MR * LR_TILE / CL;           // entries of the output tile each CTA sums up
  __shared__ float part[LR_WARPS][MR][LR_TILE];  // each warp's x@W over its rows
  __shared__ float pxa[LR_WARPS][MR][32];        // each warp's x@A over its rows (lane = rank index)
  __shared__ float xa[MR][32];                   // this CTA's s * x@A over its rows of K
  __shared__ float bt[LR_RMAX][LR_TILE];         // B's rows over this CTA's columns
  __shared__ float inbox[CL][PER];               // the cluster's parts of the entries this CTA owns
  // A CTA may write another's shared memory only once that CTA has started: each
  // arrives here and waits (at no cost by then) before its first remote write.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
  wkc_pdl_trigger();
  cg::cluster_group cl = cg::this_cluster();
  const int rank = (int)cl.block_rank(), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c0 = (int)(blockIdx.x / CL) * LR_TILE, col = c0 + lane * VEC;
  const bool colok = col < a.N;
  const int kb = rank * a.kc, ke = min(a.K, kb + a.kc);

  // B's tile copied to shared memory in the background while W streams in (columns
  // past N repeat column N - 1: in bounds, their entries are never written). W, A and
  // B are read before wkc_pdl_wait (the launch asks wkc_pdl_const), x only after it.
  for (int e = threadIdx.x; e < a.r * LR_TILE; e += LR_WARPS * 32)
    cp_async4(&bt[e / LR_TILE][e % LR_TILE], a.b + (e / LR_TILE) * a.ldb + min(c0 + e % LR_TILE, a.N - 1));

  // (loads out of range read a clamped address and are zeroed after: no branches, so
  // the compiler issues all of them before the first use)

  float acc[MR][VEC], pa[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) {
#pragma unroll
    for (int v = 0; v < VEC; v++) acc[m][v] = 0.0f;
    pa[m] = 0.0f;
  }
  const float *wcol = a.w + (colok ? col : 0), *acol = a.a + min(lane, a.r - 1);
  bool waited = false;
  for (int k = kb + warp; k < ke; k += LR_WARPS * U) {
    float4 w[U];
    float av[U], xv[U][MR];
#pragma unroll
    for (int u = 0; u < U; u++) {  // every load of the round before the first use
      const int64_t kk = min(k + u * LR_WARPS, ke - 1);
      w[u] = wkc_ld_early4(wcol + kk * a.ldw);   // coherent: stays before the PDL wait
      av[u] = wkc_ld_early(acol + kk * a.lda);
    }
    if (!waited) wkc_pdl_wait(), waited = true;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t kk = min(k + u * LR_WARPS, ke - 1);
#pragma unroll
      for (int m = 0; m < MR; m++) xv[u][m] = a.x[min(m, a.M - 1) * a.ldx + kk];   // a plain load, not __ldg: PDL
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const bool in = k + u * LR_WARPS < ke;
      const float *wf = (const float *)&w[u];
      av[u] = in && lane < a.r ? av[u] : 0.0f;
#pragma unroll
      for (int m = 0; m < MR; m++) {
        const float x = in && m < a.M ? xv[u][m] : 0.0f;
#pragma unroll
        for (int v = 0; v < VEC; v++)  // a clamped row may hold inf (0 * inf is NaN): select, not multiply
          acc[m][v] = fmaf(x, colok && in ? wf[v] : 0.0f, acc[m][v]);
        pa[m] = fmaf(x, av[u], pa[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MR; m++) {
#pragma unroll
    for (int v = 0; v < VEC; v++) part[warp][m][lane * VEC + v] = acc[m][v];
    pxa[warp][m][lane] = pa[m];
  }
  if (!waited) wkc_pdl_wait();   // a warp with no rows of K
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();
  if (threadIdx.x < MR * 32) {
    const int m = threadIdx.x >> 5, j = threadIdx.x & 31;
    float t = 0.0f;
    for (int q = 0; q < LR_WARPS; q++) t += pxa[q][m][j];
    xa[m][j] = t * a.scale;
  }
  __syncthreads();
  // this CTA's part of each entry, sent to the CTA of the cluster that owns the entry
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#pragma unroll
  for (int i = 0; i < (MR * LR_TILE + LR_WARPS * 32 - 1) / (LR_WARPS * 32); i++) {
    const int e = (int)threadIdx.x + i * LR_WARPS * 32, m = e / LR_TILE, c = e % LR_TILE;
    if (e >= MR * LR_TILE) break;
    float t = 0.0f;
    for (int q = 0; q < LR_WARPS; q++) t += part[q][m][c];
    for (int j = 0; j < a.r; j++) t = fmaf(xa[m][j], bt[j][c], t);
    cl.map_shared_rank(&inbox[0][0], e / PER)[rank * PER + e % PER] = t;
  }
  cl.sync();  // every part has arrived; nothing reads another CTA's memory after this
  if (threadIdx.x < PER) {
    const int e = rank * PER + (int)threadIdx.x, m = e / LR_TILE, c = e % LR_TILE;
    if (m < a.M && c0 + c < a.N) {
      float t = 0.0f;
      for (int q = 0; q < CL; q++) t += inbox[q][threadIdx.x];
      a.out[(int64_t)m * a.N + c0 + c] = t;
    }
  }
}

// One row of x, rank <= 8, K <= 512 (the seed's (1,1,512) call): no cluster. A CTA
// owns 32 columns over all of K, so no partial sums travel between CTAs: its threads
// hold their 16 rows of W (float4 each), their rows of A and the B tile in registers,
// all loaded before the PDL wait, and after it read only x, reduce through shuffles
// and one barrier, and store. The cluster kernel above splits K and adds the parts
// over distributed shared memory and a cluster barrier, which its chained calls paid
// after every wait: 1000 chained (1,1,512) calls 3.7-4.4 -> 2.9-3.8 us a call (H200,
// replayed with PDL; the spread is between runs). At 1024 (16 columns a CTA, one CTA an SM at 146 registers) it
// was slower than the cluster kernel (4.7 against 4.5-4.6 us), so it stops at 512.
#define R1_RMAX 8     // largest rank
#define R1_ROWS 16    // rows of W a thread holds
#define R1_K 512      // largest K: NKS * R1_ROWS
__global__ void __launch_bounds__(256) k_lora_row1(const LoraArgs a) {
  constexpr int TC = 32, CG = TC / 4, NKS = 256 / CG;   // columns a CTA; float4 column groups; K slices
  constexpr int AR = 2;                                   // rows of A a thread holds (K <= 256 * AR)
  static_assert(NKS * R1_ROWS == R1_K && 256 * AR >= R1_K, "a CTA's threads cover K");
  __shared__ float red[8][TC], tr[8][R1_RMAX];
  wkc_pdl_trigger();
  const int tid = threadIdx.x, cg = tid % CG, ks = tid / CG, warp = tid >> 5, lane = tid & 31;
  const int c0 = blockIdx.x * TC, col = c0 + cg * 4;
  float4 w[R1_ROWS];
#pragma unroll
  for (int i = 0; i < R1_ROWS; i++) {
    const int k = ks + i * NKS;
    w[i] = wkc_ld_early4(a.w + (int64_t)(k < a.K ? k : 0) * a.ldw + col);   // rows past K: zeroed below
  }
  float av[AR][R1_RMAX], bv[R1_RMAX];
#pragma unroll
  for (int i = 0; i < AR; i++)
#pragma unroll
    for (int j = 0; j < R1_RMAX; j++) {
      const int k = tid + i * 256;
      av[i][j] = wkc_ld_early(a.a + (int64_t)(k < a.K ? k : 0) * a.lda + (j < a.r ? j : 0));
    }
#pragma unroll
  for (int j = 0; j < R1_RMAX; j++) bv[j] = wkc_ld_early(a.b + (int64_t)(j < a.r ? j : 0) * a.ldb + c0 + tid % TC);
  wkc_pdl_wait();   // x only after it, with plain loads (cuda_internal.h)
  // (loads out of range read a clamped address, in bounds, and are zeroed here: no
  // branches around the early loads)
#pragma unroll
  for (int i = 0; i < R1_ROWS; i++)
    if (ks + i * NKS >= a.K) w[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int i = 0; i < AR; i++)
#pragma unroll
    for (int j = 0; j < R1_RMAX; j++)
      if (tid + i * 256 >= a.K || j >= a.r) av[i][j] = 0.0f;
#pragma unroll
  for (int j = 0; j < R1_RMAX; j++)
    if (j >= a.r) bv[j] = 0.0f;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int i = 0; i < R1_ROWS; i++) {
    const int k = ks + i * NKS;
    const float x = k < a.K ? a.x[k] : 0.0f;
    acc.x = fmaf(x, w[i].x, acc.x), acc.y = fmaf(x, w[i].y, acc.y);
    acc.z = fmaf(x, w[i].z, acc.z), acc.w = fmaf(x, w[i].w, acc.w);
  }
  float t[R1_RMAX];
#pragma unroll
  for (int j = 0; j < R1_RMAX; j++) t[j] = 0.0f;
#pragma unroll
  for (int i = 0; i < AR; i++) {
    const int k = tid + i * 256;
    const float x = k < a.K ? a.x[k] : 0.0f;
#pragma unroll
    for (int j = 0; j < R1_RMAX; j++) t[j] = fmaf(x, av[i][j], t[j]);
  }
  // the warp's K slices of each column group, then x@A over the warp
#pragma unroll
  for (int off = 16; off >= CG; off >>= 1) {
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, off), acc.y += __shfl_xor_sync(0xffffffffu, acc.y, off);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, off), acc.w += __shfl_xor_sync(0xffffffffu, acc.w, off);
  }
#pragma unroll
  for (int j = 0; j < R1_RMAX; j++) t[j] = warp_sum(t[j]);
  if (lane < CG) red[warp][lane * 4] = acc.x, red[warp][lane * 4 + 1] = acc.y, red[warp][lane * 4 + 2] = acc.z,
                 red[warp][lane * 4 + 3] = acc.w;
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < R1_RMAX; j++) tr[warp][j] = t[j];
  __syncthreads();
  if (tid < TC) {
    float v = 0.0f, lo = 0.0f;
#pragma unroll
    for (int q = 0; q < 8; q++) v += red[q][tid];
#pragma unroll
    for (int j = 0; j < R1_RMAX; j++) {
      float tj = 0.0f;
#pragma unroll
      for (int q = 0; q < 8; q++) tj += tr[q][j];
      lo = fmaf(tj, bv[j], lo);
    }
    a.out[c0 + tid] = fmaf(a.scale, lo, v);
  }
}

// WICK_CUDA_LORA_ROW1=0 keeps one-row calls on the cluster kernel (benchmarks).
static bool row1_on(void) {
  static int on = -1;
  return wk_env_on("WICK_CUDA_LORA_ROW1", &on);
}

bool wkc_lora_rows_fits(int64_t M, int64_t K, int64_t N, int64_t r, const void *w, int64_t ldw) {
  static int on = -1;
  return wk_env_on("WICK_CUDA_LORA_ROWS", &on) && M >= 1 && M <= 4 && r >= 1 && r <= LR_RMAX && K >= 1 && K <= INT32_MAX / 2 && N >= 1 &&
         N <= INT32_MAX / 2 && N % 4 == 0 && ldw % 4 == 0 && ((uintptr_t)w & 15) == 0;
}

wk_status wkc_lora_rows(const float *x, int64_t ldx, const float *w, int64_t ldw, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *out, int64_t M, int64_t K, int64_t N, int64_t r,
                        float scale) {
  const bool pdl = wkc_pdl_const(w, sizeof(float) * (size_t)((K - 1) * ldw + N)) &&
                   wkc_pdl_const(a, sizeof(float) * (size_t)((K - 1) * lda + r)) &&
                   wkc_pdl_const(b, sizeof(float) * (size_t)((r - 1) * ldb + N));
  // The cluster kernel: 128-column tiles, clusters of 4 at N <= 512 and of 8 above.
  // 1000 chained calls replayed with PDL (H200): at 512, 3.0 us a call against 3.2 with
  // 64-column tiles in clusters of 8; at 1024 and 2048, 3.9 and 7.5 with clusters of 8
  // against 5.9-6.0 and 12.7-12.8 with 4 and 6.2-6.4 and 8.4-9.1 with 16 (non-portable);
  // clusters of 2 were slower everywhere. Without PDL, 64-column tiles were faster at
  // 512 (4.1 against 4.4 us), but one configuration keeps replay and step-by-step
  // launches equal to the bit.
  if (M == 1 && r <= R1_RMAX && K <= R1_K && N % 32 == 0 && row1_on()) {
    LoraArgs g1 = {x, w, a, b, out, ldx, ldw, lda, ldb, 1, (int)K, (int)N, (int)r, 0, scale};
    wkc_launch(k_lora_row1, (unsigned)(N / 32), 256, 0, pdl, g1);
    return wkc_check_launch("lora (one row, k_lora_row1)");
  }
  const int cl = N <= 512 ? 4 : 8;
  LoraArgs g = {x, w, a, b, out, ldx, ldw, lda, ldb, (int)M, (int)K, (int)N, (int)r, (int)((K + cl - 1) / cl), scale};
  const dim3 grid((unsigned)((N + LR_TILE - 1) / LR_TILE * cl)), block(LR_WARPS * 32);
  void (*k)(LoraArgs);
  if (cl == 8) k = M == 1 ? k_lora_rows<1, 16, 8> : M == 2 ? k_lora_rows<2, 16, 8> : k_lora_rows<4, 8, 8>;
  else k = M == 1 ? k_lora_rows<1, 16, 4> : M == 2 ? k_lora_rows<2, 16, 4> : k_lora_rows<4, 8, 4>;
  wkc_launch(k, grid, block, 0, pdl, g);
  return wkc_check_launch("lora (few rows, k_lora_rows)");
}
