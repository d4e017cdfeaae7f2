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
#include <atomic>

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

// ---- chained one-row calls with W held on the chip ----
// A chain of LoRA calls on one row (the planner's LoRA chain group: each call's
// output is the next one's input, W, A and B the same) costs, call by call, a read of
// W from L2 each time: at 2048 x 2048 f32 (16 MB) about 6 us a call, the L2's rate.
// Here one launch runs the whole chain. Its CTAs (at most one an SM, all resident)
// each hold a slice of W's columns in registers and all of A in shared memory for
// the whole chain, so a call reads only x (K floats) and writes its output.
//
// The CTAs hand a call's output to each other without a grid barrier: every output
// value also goes out as one 8-byte word (value, call + 1), and the next call loads
// each word of x until it carries that tag, so the value and its "ready" arrive in
// one load (NCCL's LL protocol does the same). A grid barrier (an atomic counter,
// release / acquire) cost 3.2-3.3 us a call at 2048 where this costs 2.8-2.9 (H200).
// The words alternate between two buffers: a CTA writes call c's words only after
// reading all of call c - 1's, which every CTA wrote after reading its copy of call
// c - 2's, so nobody still needs the words it overwrites. Sums run in a fixed order:
// results do not vary between runs, and replay gives the bits of step-by-step launches.
#define LC_THREADS 512
#define LC_WARPS (LC_THREADS / 32)
#define LC_RMAX 8
#define LC_KMAX 8192  // largest K
#define LC_MAX 2000   // calls a launch (kernel parameters: ~32 KB)

struct LcCall {
  float *out;
  float scale, pad;
};
struct LcArgs {
  const float *x, *w, *a, *b;
  unsigned long long *words;   // [2][K] (value, call + 1), zeroed before the launch
  int64_t ldw, lda, ldb;
  int K, N, r, cpc, n;   // cpc: columns a CTA (a power of two <= 32); n: calls
  LcCall call[LC_MAX];
};

__device__ __forceinline__ unsigned long long ld_relaxed64(const unsigned long long *p) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed64(unsigned long long *p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Thread t takes column c0 + t % cpc and rows g * WR .. g * WR + WR - 1 of K (g = t /
// cpc), which it reads from shared memory as float4s; a group's rows are WR + 4
// floats apart there, so that the groups of a warp fall in different banks.
template <int WR>
__device__ __forceinline__ int lc_xi(int k) { return k / WR * (WR + 4) + k % WR; }

// x of call c >= 1 into shared memory: call c - 1's words, four a thread at a time,
// each loaded again until it carries its tag.
template <int WR>
__device__ __forceinline__ void lc_take_words(const unsigned long long *src, int K, unsigned tag, float *xs) {
  for (int k0 = threadIdx.x; k0 < K; k0 += 4 * LC_THREADS) {
    unsigned long long v[4];
    bool done;
    do {
      done = true;
#pragma unroll
      for (int q = 0; q < 4; q++)
        if (k0 + q * LC_THREADS < K) v[q] = ld_relaxed64(src + k0 + q * LC_THREADS);
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const int k = k0 + q * LC_THREADS;
        if (k >= K) continue;
        if ((unsigned)(v[q] >> 32) == tag) xs[lc_xi<WR>(k)] = __uint_as_float((unsigned)v[q]);
        else done = false;
      }
    } while (!done);
  }
}

template <int WR>
__global__ void __launch_bounds__(LC_THREADS, 1) k_lora_chain(const __grid_constant__ LcArgs a) {
  extern __shared__ float4 lc_smem[];
  __shared__ float red[LC_WARPS][32], tr[LC_WARPS][LC_RMAX], bs[LC_RMAX][32];
  float *as = (float *)lc_smem, *xs = (float *)(lc_smem + 2 * a.K);   // A [K][8], then x (zero past K)
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, cpc = a.cpc, ng = LC_THREADS / cpc;
  const int g = tid / cpc, col = (int)blockIdx.x * cpc + (tid & (cpc - 1));
  const bool colok = col < a.N;
  float w[WR];
#pragma unroll
  for (int i = 0; i < WR; i++) {
    const int k = g * WR + i;
    w[i] = colok && k < a.K ? a.w[(int64_t)k * a.ldw + col] : 0.0f;
  }
  for (int e = tid; e < a.K * LC_RMAX; e += LC_THREADS)
    as[e] = e % LC_RMAX < a.r ? a.a[(int64_t)(e / LC_RMAX) * a.lda + e % LC_RMAX] : 0.0f;
  for (int e = tid; e < ng * (WR + 4); e += LC_THREADS) xs[e] = 0.0f;
  if (tid < cpc)
    for (int j = 0; j < LC_RMAX; j++) bs[j][tid] = colok && j < a.r ? a.b[(int64_t)j * a.ldb + col] : 0.0f;
  __syncthreads();   // the zeros before x's values
  const float4 *xg = (const float4 *)(xs + g * (WR + 4));
  for (int c = 0; c < a.n; c++) {
    if (c == 0)
      for (int k = tid; k < a.K; k += LC_THREADS) xs[lc_xi<WR>(k)] = a.x[k];
    else
      lc_take_words<WR>(a.words + (int64_t)((c - 1) & 1) * a.K, a.K, (unsigned)c, xs);
    __syncthreads();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};   // four chains of FMAs, added in a fixed order
#pragma unroll
    for (int i = 0; i < WR / 4; i++) {
      const float4 x4 = xg[i];
      acc[0] = fmaf(x4.x, w[4 * i], acc[0]);
      acc[1] = fmaf(x4.y, w[4 * i + 1], acc[1]);
      acc[2] = fmaf(x4.z, w[4 * i + 2], acc[2]);
      acc[3] = fmaf(x4.w, w[4 * i + 3], acc[3]);
    }
    float v = (acc[0] + acc[1]) + (acc[2] + acc[3]), t[LC_RMAX];
#pragma unroll
    for (int j = 0; j < LC_RMAX; j++) t[j] = 0.0f;
    for (int k = tid; k < a.K; k += LC_THREADS) {   // x@A: every CTA computes all of it
      const float xv = xs[lc_xi<WR>(k)];
      const float4 a0 = lc_smem[2 * k], a1 = lc_smem[2 * k + 1];
      t[0] = fmaf(xv, a0.x, t[0]), t[1] = fmaf(xv, a0.y, t[1]), t[2] = fmaf(xv, a0.z, t[2]), t[3] = fmaf(xv, a0.w, t[3]);
      t[4] = fmaf(xv, a1.x, t[4]), t[5] = fmaf(xv, a1.y, t[5]), t[6] = fmaf(xv, a1.z, t[6]), t[7] = fmaf(xv, a1.w, t[7]);
    }
    for (int off = 16; off >= cpc; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
#pragma unroll
    for (int j = 0; j < LC_RMAX; j++) t[j] = warp_sum(t[j]);
    if (lane < cpc) red[warp][lane] = v;
    if (lane == 0)
#pragma unroll
      for (int j = 0; j < LC_RMAX; j++) tr[warp][j] = t[j];
    __syncthreads();   // (the next call's first barrier keeps these until they are read)
    if (tid < cpc && colok) {
      float o = 0.0f, lo = 0.0f;
#pragma unroll
      for (int q = 0; q < LC_WARPS; q++) o += red[q][tid];
#pragma unroll
      for (int j = 0; j < LC_RMAX; j++) {
        float tj = 0.0f;
#pragma unroll
        for (int q = 0; q < LC_WARPS; q++) tj += tr[q][j];
        lo = fmaf(tj, bs[j][tid], lo);
      }
      const float y = fmaf(a.call[c].scale, lo, o);
      if (c + 1 < a.n)
        st_relaxed64(a.words + (int64_t)(c & 1) * a.K + col, (unsigned long long)(c + 1) << 32 | __float_as_uint(y));
      a.call[c].out[col] = y;
    }
  }
}

__device__ unsigned long long g_lc_words[2 * LC_KMAX];
std::atomic<long long> g_lc_launches{0};
std::atomic<int> g_lc_on{-1};  // WICK_CUDA_LORA_CHAIN (default 1); tests: wkc_lora_test_chain

extern "C" void wkc_lora_test_chain(int on) { g_lc_on.store(on < 0 ? -1 : on != 0); }
extern "C" long long wkc_lora_chain_launches(void) { return g_lc_launches.load(); }

// The kernel for (K, N): columns a CTA and W's registers a thread, or false when W
// does not fit on the chip (at most one CTA an SM, 64 floats of W a thread).
struct LcShape { int cpc, wr; };
static bool lc_shape(int64_t K, int64_t N, LcShape *sh) {
  const int64_t sms = wkc_num_sms();
  for (int cpc = 1; cpc <= 32; cpc *= 2) {
    if ((N + cpc - 1) / cpc > sms) continue;
    const int64_t rows = (K + LC_THREADS / cpc - 1) / (LC_THREADS / cpc);
    for (int wr = 4; wr <= 64; wr *= 2)
      if (rows <= wr) { *sh = {cpc, wr}; return true; }
    return false;
  }
  return false;
}

static size_t lc_smem_bytes(int64_t K, LcShape sh) {
  return sizeof(float) * (size_t)(K * LC_RMAX + (int64_t)(LC_THREADS / sh.cpc) * (sh.wr + 4));
}

// The kernel for (K, N), its shared memory and grid, allowed that memory; false when
// its CTAs could not all be resident at once (a call's words would never all arrive).
struct LcLaunch {
  void (*k)(LcArgs);
  LcShape sh;
  size_t smem;
  unsigned grid;
};
static bool lc_launch(int64_t K, int64_t N, LcLaunch *l) {
  if (!lc_shape(K, N, &l->sh)) return false;
  const int wr = l->sh.wr, ki = wr == 4 ? 0 : wr == 8 ? 1 : wr == 16 ? 2 : wr == 32 ? 3 : 4;
  static void (*const ks[5])(LcArgs) = {k_lora_chain<4>, k_lora_chain<8>, k_lora_chain<16>, k_lora_chain<32>,
                                         k_lora_chain<64>};
  static size_t allowed[5];   // the dynamic shared memory each kernel was allowed so far
  l->k = ks[ki];
  l->smem = lc_smem_bytes(K, l->sh);
  l->grid = (unsigned)((N + l->sh.cpc - 1) / l->sh.cpc);
  if (l->smem + 4096 > wkc_max_smem()) return false;
  if (l->smem > allowed[ki]) {
    if (cudaFuncSetAttribute(l->k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)l->smem) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    allowed[ki] = l->smem;
  }
  return wkc_resident_blocks((const void *)l->k, LC_THREADS, l->smem) >= l->grid;
}

// From 1024 x 1024 (4 MB) up. Below it a call reads W from L2 faster than the chain
// hands x around: 1000 chained (1,1,512) calls 2.1-2.2 us a call against 1.7-1.9 us
// call by call (H200), at 1024 2.3 against 2.7.
bool wkc_lora_chain_fits(int64_t K, int64_t N, int64_t r) {
  int on = g_lc_on.load();
  if (on < 0) {
    static int env = -1;
    on = wk_env_on("WICK_CUDA_LORA_CHAIN", &env);
  }
  LcLaunch l;
  return on && r >= 1 && r <= LC_RMAX && K == N && K <= LC_KMAX && K * N >= 1024 * 1024 && lc_launch(K, N, &l);
}

wk_status wkc_lora_chain(const float *x, const float *w, int64_t ldw, const float *a, int64_t lda, const float *b,
                         int64_t ldb, int64_t K, int64_t N, int64_t r, int n, float *const *outs,
                         const float *scales) {
  LcLaunch l;
  if (!lc_launch(K, N, &l))   // wkc_lora_chain_fits said yes first
    return wk_error(WK_ERR_STATE, "lora chain: W [%lld, %lld] does not fit the chip", (long long)K, (long long)N);
  unsigned long long *words = NULL;
  if (cudaGetSymbolAddress((void **)&words, g_lc_words) != cudaSuccess) return wkc_check_launch("lora chain (words)");
  LcArgs *args = (LcArgs *)wkc_blob_buf();
  static_assert(sizeof(LcArgs) <= WKC_BLOB_LARGE, "LcArgs fits a kernel's parameters");
  for (int q = 0; q < n; q += LC_MAX) {
    const int m = n - q < LC_MAX ? n - q : LC_MAX;
    args->x = q ? outs[q - 1] : x, args->w = w, args->a = a, args->b = b, args->words = words;
    args->ldw = ldw, args->lda = lda, args->ldb = ldb;
    args->K = (int)K, args->N = (int)N, args->r = (int)r, args->cpc = l.sh.cpc, args->n = m;
    for (int c = 0; c < m; c++) args->call[c] = {outs[q + c], scales[q + c], 0.0f};
    cudaMemsetAsync(words, 0, sizeof(unsigned long long) * 2 * (size_t)K, wkc_stream());
    wkc_launch(l.k, l.grid, LC_THREADS, l.smem, false, *args);
    g_lc_launches++;
    wk_status st = wkc_check_launch("lora chain (k_lora_chain)");
    if (st) return st;
  }
  return WK_OK;
}
