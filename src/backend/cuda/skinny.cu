// f32 GEMMs with one small dimension (<= 16): LoRA's rank-r products in training,
// x @ A [tokens, r], (x A) @ B, and their gradients. cuBLAS runs them as general
// GEMMs (split-K tiles of 32 x 32 and their reductions) at 11-37 us each on the H200
// for a [4088, 896] f32 operand, whose bytes take ~4 us: 5.4 ms of a Qwen2.5-0.5B
// q,v training step (ncu). Here each is one pass over the big operand at close to
// memory speed, summing in a fixed order (no atomics), so results repeat to the bit:
//  - k_small_k: K <= 16. Each output entry is a K-term dot product; a thread writes 4
//    consecutive columns of a row from op(B)'s tile in shared memory.
//  - k_small_n_rows: N <= 16, A's rows contiguous along K (x @ A). A warp takes 4 rows,
//    its lanes consecutive k (coalesced loads); B's rows for a chunk of K sit in shared
//    memory, padded so that the lanes' 16-byte reads fall in distinct banks; each lane
//    keeps 4 x N sums, added over the warp at the end.
//  - k_small_n_cols + k_small_n_sum: N <= 16, A contiguous along M (x^T @ G, reducing
//    over tokens). A thread takes one row m; the CTAs split K, each writes its partial
//    [M, N] to scratch, and a second kernel adds the parts in order.
// A small M is the transposed problem: C^T = op(B)^T op(A)^T, written back transposed.
#include "cuda_internal.h"

namespace {

#define SK_MAXN 16
#define SK_THREADS 256

// Element (i, j) of a strided matrix: p[i * si + j * sj].
struct SMat {
  const float *p;
  int64_t si, sj;
};
struct SkArgs {
  SMat a, b;           // op(A) [M, K], op(B) [K, N]
  float *c;            // C (m, n) at c[m * cs_m + n * cs_n]
  int64_t cs_m, cs_n;
  int64_t M, N, K;
  float alpha, beta;
  float *part;         // k_small_n_cols: [splits][M][N] partial sums
  int64_t kchunk;      // k_small_n_cols: rows of K a CTA takes
};

__device__ __forceinline__ float at(const SMat &m, int64_t i, int64_t j) { return m.p[i * m.si + j * m.sj]; }
__device__ __forceinline__ void put(const SkArgs &a, int64_t m, int64_t n, float v) {
  float *dst = a.c + m * a.cs_m + n * a.cs_n;
  *dst = a.beta == 0.0f ? a.alpha * v : fmaf(a.alpha, v, a.beta * *dst);
}

// ---- K <= 16 ----
// A CTA takes 128 columns and a block of rows: op(B)'s [K, 128] tile goes to shared
// memory once (read along whichever axis is contiguous), each thread owns 4 columns
// (one 16-byte shared read a k) and walks rows; the 32 threads of a warp share a row,
// so each x value is one broadcast load.
#define SK_COLS 128
#define SK_ROWB 64    // rows of a CTA
__global__ void __launch_bounds__(SK_THREADS) k_small_k(const __grid_constant__ SkArgs a) {
  __shared__ __align__(16) float bt[SK_MAXN][SK_COLS];
  const int64_t n0 = (int64_t)blockIdx.x * SK_COLS, m0 = (int64_t)blockIdx.y * SK_ROWB;
  const bool kfast = a.b.si == 1;   // op(B) contiguous along k: consecutive threads take consecutive k
  for (int e = threadIdx.x; e < SK_MAXN * SK_COLS; e += SK_THREADS) {
    const int k = kfast ? e % SK_MAXN : e / SK_COLS, c = kfast ? e / SK_MAXN : e % SK_COLS;
    bt[k][c] = k < a.K && n0 + c < a.N ? at(a.b, k, n0 + c) : 0.0f;
  }
  __syncthreads();
  const int cg = threadIdx.x % (SK_COLS / 4), ry = threadIdx.x / (SK_COLS / 4);
  constexpr int RY = SK_THREADS / (SK_COLS / 4);   // rows in flight a CTA
  for (int64_t m = m0 + ry; m < m0 + SK_ROWB && m < a.M; m += RY) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int k = 0; k < SK_MAXN; k++) {
      if (k >= a.K) break;
      const float x = at(a.a, m, k);
      const float4 bv = *(const float4 *)&bt[k][cg * 4];
      acc.x = fmaf(x, bv.x, acc.x), acc.y = fmaf(x, bv.y, acc.y);
      acc.z = fmaf(x, bv.z, acc.z), acc.w = fmaf(x, bv.w, acc.w);
    }
    const int64_t n = n0 + cg * 4;
    float *dst = a.c + m * a.cs_m + n * a.cs_n;
    if (a.cs_n == 1 && n + 3 < a.N && !((uintptr_t)dst & 15)) {   // one 16-byte store
      float4 o = make_float4(a.alpha * acc.x, a.alpha * acc.y, a.alpha * acc.z, a.alpha * acc.w);
      if (a.beta != 0.0f) {
        const float4 c = *(const float4 *)dst;
        o = make_float4(fmaf(a.alpha, acc.x, a.beta * c.x), fmaf(a.alpha, acc.y, a.beta * c.y),
                        fmaf(a.alpha, acc.z, a.beta * c.z), fmaf(a.alpha, acc.w, a.beta * c.w));
      }
      *(float4 *)dst = o;
      continue;
    }
    const float v[4] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
    for (int j = 0; j < 4; j++)
      if (n + j < a.N) put(a, m, n + j, v[j]);
  }
}

// ---- N <= 16, A contiguous along K ----
#define SR_ROWS 4      // rows of A a warp takes
#define SR_WARPS 4     // warps of a CTA
#define SR_KC 256      // rows of B in shared memory at a time
template <int NN>
__global__ void __launch_bounds__(SR_WARPS * 32) k_small_n_rows(const __grid_constant__ SkArgs a) {
  constexpr int LDB = NN + 4;   // row pitch: 16-byte reads of consecutive rows land in distinct banks
  __shared__ __align__(16) float bs[SR_KC * LDB];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t m0 = ((int64_t)blockIdx.x * SR_WARPS + warp) * SR_ROWS;
  float acc[SR_ROWS][NN];
#pragma unroll
  for (int r = 0; r < SR_ROWS; r++)
#pragma unroll
    for (int n = 0; n < NN; n++) acc[r][n] = 0.0f;
  const float *arow[SR_ROWS];
#pragma unroll
  for (int r = 0; r < SR_ROWS; r++) arow[r] = a.a.p + (m0 + r < a.M ? m0 + r : 0) * a.a.si;   // clamped: rows past M are never stored
  for (int64_t k0 = 0; k0 < a.K; k0 += SR_KC) {
    __syncthreads();   // the previous chunk's readers are done
    const bool kfast = a.b.si == 1;   // read op(B) along its contiguous axis
    for (int e = threadIdx.x; e < SR_KC * NN; e += SR_WARPS * 32) {
      const int kk = kfast ? e % SR_KC : e / NN, n = kfast ? e / SR_KC : e % NN;
      bs[kk * LDB + n] = k0 + kk < a.K && n < a.N ? at(a.b, k0 + kk, n) : 0.0f;
    }
    __syncthreads();
    // every load of the chunk first (32 a lane in flight), then the multiplies
    float x[SR_KC / 32][SR_ROWS];
#pragma unroll
    for (int i = 0; i < SR_KC / 32; i++) {
      const int64_t k = k0 + i * 32 + lane;
#pragma unroll
      for (int r = 0; r < SR_ROWS; r++) x[i][r] = k < a.K ? arow[r][k] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < SR_KC / 32; i++) {
      const float4 *brow = (const float4 *)(bs + (i * 32 + lane) * LDB);
#pragma unroll
      for (int q = 0; q < NN / 4; q++) {
        const float4 bv = brow[q];
#pragma unroll
        for (int r = 0; r < SR_ROWS; r++) {
          acc[r][4 * q] = fmaf(x[i][r], bv.x, acc[r][4 * q]);
          acc[r][4 * q + 1] = fmaf(x[i][r], bv.y, acc[r][4 * q + 1]);
          acc[r][4 * q + 2] = fmaf(x[i][r], bv.z, acc[r][4 * q + 2]);
          acc[r][4 * q + 3] = fmaf(x[i][r], bv.w, acc[r][4 * q + 3]);
        }
      }
    }
  }
  // the warp's sums (a butterfly: every lane ends with all of them), then one store each
#pragma unroll
  for (int r = 0; r < SR_ROWS; r++)
#pragma unroll
    for (int n = 0; n < NN; n++) acc[r][n] = warp_sum(acc[r][n]);
#pragma unroll
  for (int r = 0; r < SR_ROWS; r++)
#pragma unroll
    for (int n = 0; n < NN; n++)
      if ((r * NN + n) % 32 == lane && m0 + r < a.M && n < a.N) put(a, m0 + r, n, acc[r][n]);
}

// ---- N <= 16, A contiguous along M: split K, then the parts added in order ----
#define SC_UNROLL 16   // rows of K whose loads a thread issues before using them
template <int NN>
__global__ void __launch_bounds__(SK_THREADS) k_small_n_cols(const __grid_constant__ SkArgs a) {
  extern __shared__ __align__(16) float bc[];   // [kchunk][NN]: read by every lane at once (a broadcast)
  const int64_t m = (int64_t)blockIdx.x * SK_THREADS + threadIdx.x, k0 = blockIdx.y * a.kchunk;
  const int64_t kn = a.K - k0 < a.kchunk ? a.K - k0 : a.kchunk;
  const bool kfast = a.b.si == 1;   // read op(B) along its contiguous axis
  for (int64_t e = threadIdx.x; e < kn * NN; e += SK_THREADS) {
    const int64_t kk = kfast ? e % kn : e / NN, n = kfast ? e / kn : e % NN;
    bc[kk * NN + n] = n < a.N ? at(a.b, k0 + kk, n) : 0.0f;
  }
  __syncthreads();
  if (m >= a.M) return;
  float acc[NN];
#pragma unroll
  for (int n = 0; n < NN; n++) acc[n] = 0.0f;
  const float *col = a.a.p + m * a.a.si + k0 * a.a.sj;
  for (int64_t k1 = 0; k1 < kn; k1 += SC_UNROLL) {   // SC_UNROLL loads in flight, then their multiplies
    float x[SC_UNROLL];
#pragma unroll
    for (int u = 0; u < SC_UNROLL; u++) x[u] = k1 + u < kn ? col[(k1 + u) * a.a.sj] : 0.0f;
#pragma unroll
    for (int u = 0; u < SC_UNROLL; u++) {
      if (k1 + u >= kn) break;   // the same for the whole CTA
      const float4 *brow = (const float4 *)(bc + (k1 + u) * NN);
#pragma unroll
      for (int q = 0; q < NN / 4; q++) {
        const float4 bv = brow[q];
        acc[4 * q] = fmaf(x[u], bv.x, acc[4 * q]);
        acc[4 * q + 1] = fmaf(x[u], bv.y, acc[4 * q + 1]);
        acc[4 * q + 2] = fmaf(x[u], bv.z, acc[4 * q + 2]);
        acc[4 * q + 3] = fmaf(x[u], bv.w, acc[4 * q + 3]);
      }
    }
  }
  if (gridDim.y == 1) {
    for (int n = 0; n < NN && n < a.N; n++) put(a, m, n, acc[n]);
    return;
  }
  float *dst = a.part + ((int64_t)blockIdx.y * a.M + m) * NN;
#pragma unroll
  for (int n = 0; n < NN; n++) dst[n] = acc[n];
}
template <int NN>
__global__ void __launch_bounds__(SK_THREADS) k_small_n_sum(const __grid_constant__ SkArgs a, int splits) {
  const int64_t e = (int64_t)blockIdx.x * SK_THREADS + threadIdx.x, m = e / NN, n = e % NN;
  if (m >= a.M || n >= a.N) return;
  float s = 0.0f;
  for (int q = 0; q < splits; q++) s += a.part[((int64_t)q * a.M + m) * NN + n];
  put(a, m, n, s);
}

int padded_n(int64_t n) { return n <= 4 ? 4 : n <= 8 ? 8 : 16; }

template <int NN>
void small_n_rows(const SkArgs &a) {
  const int64_t rows = SR_ROWS * SR_WARPS;
  k_small_n_rows<NN><<<(unsigned)((a.M + rows - 1) / rows), SR_WARPS * 32, 0, wkc_stream()>>>(a);
}

template <int NN>
wk_status small_n_cols(SkArgs a) {
  // K split so that the grid is about two CTAs an SM, each at least 64 rows of K
  const int64_t mb = (a.M + SK_THREADS - 1) / SK_THREADS, want = 2 * (int64_t)wkc_num_sms();
  int64_t splits = (want + mb - 1) / mb, maxs = (a.K + 63) / 64;
  splits = splits < 1 ? 1 : splits > maxs ? maxs : splits;
  a.kchunk = (a.K + splits - 1) / splits;
  if (a.kchunk > 1024) a.kchunk = 1024;   // shared memory: [kchunk][16] f32 <= 64 KB
  splits = (a.K + a.kchunk - 1) / a.kchunk;
  a.part = NULL;
  if (splits > 1 && !(a.part = (float *)wkc_tmp_alloc(sizeof(float) * (size_t)(splits * a.M * NN))))
    return WK_ERR_OOM;
  const size_t smem = sizeof(float) * (size_t)(a.kchunk * NN);
  static bool attr = false;
  if (!attr) cudaFuncSetAttribute(k_small_n_cols<NN>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10), attr = true;
  k_small_n_cols<NN><<<dim3((unsigned)mb, (unsigned)splits), SK_THREADS, smem, wkc_stream()>>>(a);
  if (splits > 1)
    k_small_n_sum<NN><<<(unsigned)((a.M * NN + SK_THREADS - 1) / SK_THREADS), SK_THREADS, 0, wkc_stream()>>>(a, (int)splits);
  wkc_tmp_free(a.part);
  return WK_OK;
}

// op(X) of a row-major view: element (i, j).
SMat smat(const wkc_mat &x) {
  return x.trans ? SMat{(const float *)x.p, 1, x.ld} : SMat{(const float *)x.p, x.ld, 1};
}

// WICK_CUDA_SKINNY: which kernels may run (bits: 1 K <= 16, 2 the rows form, 4 the
// columns form; default all), 0 none (cuBLAS for every shape).
int skinny_kinds(void) {
  static int kinds = -1;
  if (kinds < 0) {
    const char *e = getenv("WICK_CUDA_SKINNY");
    kinds = e ? atoi(e) & 7 : 7;
  }
  return kinds;
}

} // namespace

bool wkc_skinny_gemm(const wkc_mat &ma, const wkc_mat &mb, float *c, int64_t M, int64_t N, int64_t K, float alpha,
                     float beta, wk_status *st) {
  const int kinds = skinny_kinds();
  if (!kinds || M < 1 || N < 1 || K < 1 || (K > SK_MAXN && N > SK_MAXN && M > SK_MAXN)) return false;
  SkArgs a;
  memset(&a, 0, sizeof a);
  a.a = smat(ma), a.b = smat(mb);
  a.c = c, a.cs_m = N, a.cs_n = 1;
  a.M = M, a.N = N, a.K = K, a.alpha = alpha, a.beta = beta;
  *st = WK_OK;
  if (K <= SK_MAXN) {
    if (!(kinds & 1) || (M + SK_ROWB - 1) / SK_ROWB > 65535) return false;
    const dim3 grid((unsigned)((N + SK_COLS - 1) / SK_COLS), (unsigned)((M + SK_ROWB - 1) / SK_ROWB));
    k_small_k<<<grid, SK_THREADS, 0, wkc_stream()>>>(a);
    *st = wkc_check_launch("matmul (f32, K <= 16)");
    return true;
  }
  if (N > SK_MAXN) {   // a small M: C^T [N, M] = op(B)^T op(A)^T, stored transposed
    a.a = SMat{a.b.p, a.b.sj, a.b.si};
    a.b = SMat{(const float *)ma.p, smat(ma).sj, smat(ma).si};
    a.M = N, a.N = M, a.cs_m = 1, a.cs_n = N;
  }
  const int nn = padded_n(a.N);
  if (a.a.sj == 1 && (kinds & 2)) {
    if (nn == 4) small_n_rows<4>(a);
    else if (nn == 8) small_n_rows<8>(a);
    else small_n_rows<16>(a);
  } else if (a.a.si == 1 && (kinds & 4)) {
    *st = nn == 4 ? small_n_cols<4>(a) : nn == 8 ? small_n_cols<8>(a) : small_n_cols<16>(a);
  } else {
    return false;
  }
  if (!*st) *st = wkc_check_launch("matmul (f32, one dimension <= 16)");
  return true;
}
