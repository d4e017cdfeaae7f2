// What bench/mlp_fused.cu and bench/attn_block.cu share: Qwen2.5-0.5B's decode-layer
// shapes, an RMSNorm prologue, the two-kernel MLP (gate/up, then down) launched as
// programmatic dependents (PDL) that issue their weight loads before the wait, and the
// host's bf16 helpers, launches and graph timing.
#pragma once
#include <cuda_runtime.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "sm90.cuh"

#define H 896
#define I 4864
#define LAYERS 24
#define EPS 1e-6f

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
      exit(1);                                                                                  \
    }                                                                                           \
  } while (0)

struct Layer {
  const uint16_t *wg, *wu, *wd;  // bf16 bits
  const float *nw;
};

__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// W's 16 bytes, L1 bypassed (read once); W is never written, so this may come before the wait
__device__ __forceinline__ uint4 ldw(const uint4 *p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// xs = rms_norm(h) * nw with h = base + acc[0, H) (+ acc[H, 2 H) when nacc is 2), after
// the wait. hout: also store h there. Every load (h's, the accumulators', nw's) is issued
// before any is used: one round trip, not one an element.
template <int NT>
__device__ void norm_x(const float *base, const float *acc, int nacc, const float *nw, float *xs, float *red,
                       float *hout) {
  constexpr int N = (H + NT - 1) / NT;
  float v[N], a0[N], a1[N], wn[N];
#pragma unroll
  for (int k = 0; k < N; k++) {
    const int i = threadIdx.x + NT * k;
    const bool in = H % NT == 0 || i < H;
    v[k] = in ? base[i] : 0.0f;
    a0[k] = in && nacc > 0 ? acc[i] : 0.0f;
    a1[k] = in && nacc > 1 ? acc[H + i] : 0.0f;
    wn[k] = in ? nw[i] : 0.0f;
  }
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < N; k++) {
    v[k] = v[k] + a0[k] + a1[k];
    ss = fmaf(v[k], v[k], ss);
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  float t = 0.0f;
#pragma unroll
  for (int w = 0; w < NT / 32; w++) t += red[w];
  const float r = rsqrtf(t / (float)H + EPS);
#pragma unroll
  for (int k = 0; k < N; k++) {
    const int i = threadIdx.x + NT * k;
    if (H % NT == 0 || i < H) {
      xs[i] = v[k] * r * wn[k];
      if (hout) hout[i] = v[k];
    }
  }
  __syncthreads();
}

#define KC (H / 8)            // 16-byte chunks of a gate/up row: 112
#define KCL ((KC + 31) / 32)  // a lane's: 4 (the last for lanes < 16)

// A warp's gate and up rows of intermediate rows j and j + 1 (zeros past I), a lane's
// chunks of them: wr = gate j, up j, gate j + 1, up j + 1.
__device__ __forceinline__ void load_pair(uint4 (&wr)[4][KCL], const Layer &w, int j, int lane) {
#pragma unroll
  for (int q = 0; q < 2; q++) {
    const bool ok = j + q < I;
    const uint4 *g = (const uint4 *)(w.wg + (size_t)(ok ? j + q : 0) * H), *u = (const uint4 *)(w.wu + (size_t)(ok ? j + q : 0) * H);
#pragma unroll
    for (int k = 0; k < KCL; k++) {
      const int c = lane + 32 * k;
      wr[2 * q][k] = ok && c < KC ? ldw(g + c) : make_uint4(0, 0, 0, 0);
      wr[2 * q + 1][k] = ok && c < KC ? ldw(u + c) : make_uint4(0, 0, 0, 0);
    }
  }
}
// Their dot products with xs (shared memory); lane q < 2 gets a of row j + q, silu(gate) * up.
__device__ __forceinline__ float swiglu_pair(const uint4 (&wr)[4][KCL], const float *xs, int lane) {
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int k = 0; k < KCL; k++) {
    const int c = lane + 32 * k;
    if (c < KC)
#pragma unroll
      for (int r = 0; r < 4; r++) s[r] = dot_bf16x8(wr[r][k], xs + 8 * c, s[r]);
  }
#pragma unroll
  for (int r = 0; r < 4; r++) s[r] = warp_sum(s[r]);
  return silu(lane ? s[2] : s[0]) * (lane ? s[3] : s[1]);
}

// ---- the MLP in two kernels ----
#define GU_WARPS 8
#define GU_J (GU_WARPS * 2)   // intermediate rows a block: 2 a warp (their gate and up rows)
// h = base + the nacc accumulators at acc; block 0 stores h at hout (when not NULL)
__global__ void __launch_bounds__(GU_WARPS * 32) k_gateup(Layer w, const float *base, const float *acc, int nacc,
                                                          float *hout, float *a) {
  __shared__ __align__(16) float xs[H];
  __shared__ float red[GU_WARPS];
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.x * GU_J + warp * 2;
  uint4 wr[4][KCL];
  load_pair(wr, w, j, lane);
  pdl_wait();
  norm_x<GU_WARPS * 32>(base, acc, nacc, w.nw, xs, red, blockIdx.x == 0 ? hout : NULL);
  const float av = swiglu_pair(wr, xs, lane);
  if (lane < 2) a[j + lane] = av;
}

#define DN_ROWS 4                      // output rows a block
#define DN_T 64                        // threads a row
#define DC (I / 8)                     // 16-byte chunks of a down row: 608
#define DCL ((DC + DN_T - 1) / DN_T)   // a thread's: 10 (the last for threads < 32)

__global__ void __launch_bounds__(DN_ROWS * DN_T) k_down(Layer w, const float *a, const float *h, float *y) {
  __shared__ float red[DN_ROWS * DN_T / 32];
  pdl_trigger();
  const int row = blockIdx.x * DN_ROWS + threadIdx.x / DN_T, t = threadIdx.x % DN_T;
  const uint4 *wd = (const uint4 *)(w.wd + (size_t)row * I);
  uint4 wr[DCL];
#pragma unroll
  for (int k = 0; k < DCL; k++) wr[k] = t + DN_T * k < DC ? ldw(wd + t + DN_T * k) : make_uint4(0, 0, 0, 0);
  pdl_wait();
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < DCL; k++) {
    const int c = t + DN_T * k;
    if (c < DC) {
      const float4 a0 = ((const float4 *)a)[2 * c], a1 = ((const float4 *)a)[2 * c + 1];
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      s = dot_bf16x8(wr[k], av, s);
    }
  }
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (t == 0) y[row] = h[row] + red[threadIdx.x >> 5] + red[(threadIdx.x >> 5) + 1];
}

// ---- host ----
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float urand() {   // [-1, 1)
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((g_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
static double from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// The launch of k, with pdl a programmatic dependent of the kernel before it in the
// stream, in clusters of `cluster` blocks (0: none) with smem bytes of dynamic shared memory.
template <typename... Args, typename... Act>
static void launch_ex(bool pdl, int cluster, size_t smem, void (*k)(Args...), int grid, int block, cudaStream_t s,
                      Act... args) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute at[2];
  unsigned n = 0;
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n++].val.clusterDim = {(unsigned)cluster, 1, 1};
  }
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = at;
  cfg.numAttrs = n;
  CK(cudaLaunchKernelEx(&cfg, k, args...));
}
template <typename... Args, typename... Act>
static void launch(bool pdl, void (*k)(Args...), int grid, int block, cudaStream_t s, Act... args) {
  launch_ex(pdl, 0, 0, k, grid, block, s, args...);
}

static double replay_us(cudaGraphExec_t ge, cudaStream_t s, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(ge, s));
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < reps; i++) CK(cudaGraphLaunch(ge, s));
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1e3 * ms / reps;
}

static double max_err(const std::vector<float> &got, const std::vector<double> &ref) {
  double e = 0;
  for (int i = 0; i < H; i++) e = fmax(e, fabs(got[i] - ref[i]) / fmax(1.0, fabs(ref[i])));
  return e;
}

