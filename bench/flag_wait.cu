// How soon a programmatic dependent's blocks can read what the kernel before wrote: by
// griddepcontrol.wait (PDL: the primary grid complete and its memory flushed), or by
// polling a counter each primary block bumps (release) after its last store. P: 396
// blocks (3 an SM) that each spin for a different time (0.5-3 us), store, and stamp
// their end; C: 132 blocks launched as P's programmatic dependent that wait either way,
// read P's stores and stamp the return. Printed: C's return after P's last end, median
// and last over C's blocks, medians over 200 pairs; with and without a DRAM stream in a
// third kernel beside them (as a decode step has). A standalone check:
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/flag_wait bench/flag_wait.cu && /tmp/flag_wait
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include "sm90.cuh"

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned *p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__global__ void __launch_bounds__(256) k_prod(float *y, unsigned *cnt, unsigned long long *pend, int flag) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const unsigned long long t0 = gtime(), dur = 500 + (blockIdx.x * 7919u) % 2500;   // ns
  while (gtime() - t0 < dur) {}
  y[blockIdx.x * 256 + threadIdx.x] = (float)(blockIdx.x + threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    pend[blockIdx.x] = gtime();
    if (flag) red_release(cnt, 1);   // the barrier above ordered the block's stores before it (cumulativity)
  }
}
__global__ void __launch_bounds__(256) k_cons(const float *y, const unsigned *cnt, unsigned target, unsigned long long *cret,
                                              float *sink, int flag, int nprod) {
  __shared__ float s;
  if (flag) {
    if (threadIdx.x == 0) {
      while (ld_acquire(cnt) < target) {}
    }
    __syncthreads();
  } else {
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
  const float v = y[((blockIdx.x * 37u) % nprod) * 256 + threadIdx.x];   // a read of the primary's output
  if (threadIdx.x == 0) s = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    cret[blockIdx.x] = gtime();
    if (s == -1.0f) sink[0] = s;
  }
}
// a DRAM stream of loads into registers (the decode GEMVs' way), on its own stream
__global__ void __launch_bounds__(256) k_stream(const uint4 *p, size_t n, unsigned *sink) {
  unsigned acc = 0;
  const size_t step = (size_t)gridDim.x * 256;
  for (size_t j = blockIdx.x * 256 + threadIdx.x; j + 3 * step < n; j += 4 * step) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) v[u] = __ldcs(p + j + u * step);
#pragma unroll
    for (int u = 0; u < 4; u++) acc ^= v[u].x ^ v[u].w;
  }
  if (acc == 0x12345u) sink[0] = acc;
}

int main() {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) {
    fprintf(stderr, "flag_wait: no usable CUDA device\n");
    return 1;
  }
  const int np = 3 * sms, nc = sms, pairs = 200;
  float *y, *sink;
  unsigned *cnt;
  unsigned long long *pend, *cret;
  uint4 *big;
  const size_t nbig = ((size_t)4 << 30) / 16;
  if (cudaMalloc(&y, sizeof(float) * 256 * np) || cudaMalloc(&cnt, 4) || cudaMalloc(&pend, 8 * (size_t)np * pairs) ||
      cudaMalloc(&cret, 8 * (size_t)nc * pairs) || cudaMalloc(&sink, 64) || cudaMalloc(&big, nbig * 16)) {
    fprintf(stderr, "flag_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  cudaStream_t st, sb;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&sb, cudaStreamNonBlocking);
  std::vector<unsigned long long> hp((size_t)np * pairs), hc((size_t)nc * pairs);
  for (int busy = 0; busy < 2; busy++)
    for (int flag = 0; flag < 2; flag++) {
      cudaMemset(cnt, 0, 4);
      cudaDeviceSynchronize();
      if (busy) k_stream<<<2 * sms, 256, 0, sb>>>(big, nbig, (unsigned *)sink);   // ~1.4 ms of DRAM reads beside
      for (int i = 0; i < pairs; i++) {
        k_prod<<<np, 256, 0, st>>>(y, cnt, pend + (size_t)i * np, flag);
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.gridDim = nc, cfg.blockDim = 256, cfg.stream = st, cfg.attrs = at, cfg.numAttrs = 1;
        cudaLaunchKernelEx(&cfg, k_cons, (const float *)y, (const unsigned *)cnt, (unsigned)((i + 1) * np),
                           cret + (size_t)i * nc, sink, flag, np);
      }
      if (cudaDeviceSynchronize() != cudaSuccess) {
        fprintf(stderr, "flag_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
      }
      cudaMemcpy(hp.data(), pend, 8 * hp.size(), cudaMemcpyDeviceToHost);
      cudaMemcpy(hc.data(), cret, 8 * hc.size(), cudaMemcpyDeviceToHost);
      std::vector<double> med, last;
      for (int i = 0; i < pairs; i++) {
        const unsigned long long pe = *std::max_element(hp.begin() + (size_t)i * np, hp.begin() + (size_t)(i + 1) * np);
        std::vector<double> r;
        for (int b = 0; b < nc; b++) r.push_back(((double)hc[(size_t)i * nc + b] - (double)pe) / 1000.0);
        std::sort(r.begin(), r.end());
        med.push_back(r[r.size() / 2]), last.push_back(r.back());
      }
      std::sort(med.begin(), med.end()), std::sort(last.begin(), last.end());
      printf("%-22s %-30s C's return after P's last end: median %.2f us, last %.2f us (medians of %d pairs)\n",
             busy ? "a DRAM stream beside" : "idle", flag ? "polling a counter" : "griddepcontrol.wait", med[pairs / 2],
             last[pairs / 2], pairs);
    }
  return 0;
}
