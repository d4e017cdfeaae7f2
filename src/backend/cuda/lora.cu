// The fused LoRA step for a few rows (decode, the seed's (1,1,n) calls):
// out[M, N] = x @ W + s * (x @ A) @ B in one launch, f32.
//
// Why: as three cuBLAS calls (x@A, x@W, t@B) a chained call costs three graph
// nodes of ~3 us each, although at these sizes W (1-16 MB) sits in L2 and its bytes
// take well under a microsecond. Here a cluster of LR_CL CTAs splits K for each
// 128-column tile of W: every CTA reads its rows of W, A and x once, adds its part of
// x@A times B (the product is linear in K, so the parts sum to s * (x@A) @ B), and
// the cluster adds its CTAs' tiles through distributed shared memory. Every sum runs
// in a fixed order, so results do not vary from run to run (graph replay on and off
// give the same bits).
#include <cooperative_groups.h>

#include "cuda_internal.h"

namespace cg = cooperative_groups;

#define LR_CL 8       // CTAs of a cluster (the portable maximum): they split K
#define LR_WARPS 8    // warps of a CTA: they split the CTA's rows of K again
#define LR_TILE 128   // columns of W a CTA owns: 32 lanes x 4 floats (16-byte loads)
#define LR_U 8        // rows of W a warp loads before its first multiply

struct LoraArgs {
  const float *x, *w, *a, *b;
  float *out;
  int64_t ldx, ldw, lda, ldb;
  int M, K, N, r, kc;   // kc: rows of K a CTA of the cluster takes
  float scale;
};

template <int MR>
__global__ void __cluster_dims__(LR_CL, 1, 1) __launch_bounds__(LR_WARPS * 32) k_lora_rows(const LoraArgs a) {
  __shared__ float part[LR_WARPS][MR][LR_TILE];  // each warp's x@W over its rows
  __shared__ float pxa[LR_WARPS][MR][32];        // each warp's x@A over its rows (lane = rank index)
  __shared__ float xa[MR][32];                   // this CTA's x@A over its rows of K
  __shared__ float tile[MR][LR_TILE];            // this CTA's part of the output tile
  cg::cluster_group cl = cg::this_cluster();
  const int rank = (int)cl.block_rank(), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c0 = (int)(blockIdx.x / LR_CL) * LR_TILE, col = c0 + lane * 4;
  const bool colok = col < a.N;
  const int kb = rank * a.kc, ke = min(a.K, kb + a.kc);

  float acc[MR][4], pa[MR];
#pragma unroll
  for (int m = 0; m < MR; m++) {
    acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
    pa[m] = 0.0f;
  }
  for (int k = kb + warp; k < ke; k += LR_WARPS * LR_U) {
    float4 w[LR_U];
    float av[LR_U];
#pragma unroll
    for (int u = 0; u < LR_U; u++) {  // every load of the round before the first use
      const int64_t kk = k + u * LR_WARPS;
      const bool in = kk < ke;
      w[u] = in && colok ? __ldg((const float4 *)(a.w + kk * a.ldw + col)) : make_float4(0, 0, 0, 0);
      av[u] = in && lane < a.r ? __ldg(a.a + kk * a.lda + lane) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < LR_U; u++) {
      const int64_t kk = k + u * LR_WARPS;
#pragma unroll
      for (int m = 0; m < MR; m++) {
        const float xv = kk < ke && m < a.M ? __ldg(a.x + m * a.ldx + kk) : 0.0f;
        acc[m][0] = fmaf(xv, w[u].x, acc[m][0]);
        acc[m][1] = fmaf(xv, w[u].y, acc[m][1]);
        acc[m][2] = fmaf(xv, w[u].z, acc[m][2]);
        acc[m][3] = fmaf(xv, w[u].w, acc[m][3]);
        pa[m] = fmaf(xv, av[u], pa[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MR; m++) {
    *(float4 *)&part[warp][m][lane * 4] = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    pxa[warp][m][lane] = pa[m];
  }
  __syncthreads();
  if (threadIdx.x < MR * 32) {
    const int m = threadIdx.x >> 5, j = threadIdx.x & 31;
    float t = 0.0f;
    for (int q = 0; q < LR_WARPS; q++) t += pxa[q][m][j];
    xa[m][j] = t * a.scale;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < MR * LR_TILE; e += LR_WARPS * 32) {
    const int m = e / LR_TILE, c = e % LR_TILE;
    float t = 0.0f;
    for (int q = 0; q < LR_WARPS; q++) t += part[q][m][c];
    if (c0 + c < a.N)
      for (int j = 0; j < a.r; j++) t = fmaf(xa[m][j], __ldg(a.b + j * a.ldb + c0 + c), t);
    tile[m][c] = t;
  }
  cl.sync();  // every CTA's tile is complete
  const int per = MR * LR_TILE / LR_CL;  // entries of the tile this CTA adds up
  if (threadIdx.x < per) {
    const int e = rank * per + threadIdx.x, m = e / LR_TILE, c = e % LR_TILE;
    if (m < a.M && c0 + c < a.N) {
      float t = 0.0f;
      for (int q = 0; q < LR_CL; q++) t += cl.map_shared_rank(&tile[0][0], q)[e];
      a.out[(int64_t)m * a.N + c0 + c] = t;
    }
  }
  cl.sync();  // no CTA leaves while another still reads its tile
}

bool wkc_lora_rows_fits(int64_t M, int64_t K, int64_t N, int64_t r, const void *w, int64_t ldw) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("WICK_CUDA_LORA_ROWS");
    on = !e || atoi(e);
  }
  return on && M >= 1 && M <= 4 && r >= 1 && r <= 32 && K >= 1 && K <= INT32_MAX / 2 && N >= 1 &&
         N <= INT32_MAX / 2 && N % 4 == 0 && ldw % 4 == 0 && ((uintptr_t)w & 15) == 0;
}

wk_status wkc_lora_rows(const float *x, int64_t ldx, const float *w, int64_t ldw, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *out, int64_t M, int64_t K, int64_t N, int64_t r,
                        float scale) {
  LoraArgs g = {x, w, a, b, out, ldx, ldw, lda, ldb, (int)M, (int)K, (int)N, (int)r,
                (int)((K + LR_CL - 1) / LR_CL), scale};
  const dim3 grid((unsigned)((N + LR_TILE - 1) / LR_TILE * LR_CL));
  if (M == 1) k_lora_rows<1><<<grid, LR_WARPS * 32, 0, wkc_stream()>>>(g);
  else if (M == 2) k_lora_rows<2><<<grid, LR_WARPS * 32, 0, wkc_stream()>>>(g);
  else k_lora_rows<4><<<grid, LR_WARPS * 32, 0, wkc_stream()>>>(g);
  return wkc_check_launch("lora (few rows, k_lora_rows)");
}
