// How soon a programmatic dependent's blocks can read what the kernel before wrote: by
// griddepcontrol.wait (PDL: the primary grid complete and its memory flushed), or by
// polling a counter each primary block bumps (release) after its last store. P: blocks
// that each spin for a different time (0.5-3 us), store, and stamp their end; C: 132
// blocks launched as P's programmatic dependent that wait either way, read P's stores
// and stamp the return. Printed: C's return after P's last end, median and last over
// C's blocks, medians over 200 pairs; with and without a DRAM stream in a third kernel
// beside them (as a decode step has).
// Late: C's blocks first spin for 6 us, so they reach the wait well after P has ended
// (as most of a decode GEMV's blocks do, the probe says, when they find an SM only as
// the kernel before leaves): then also when C reached the wait and the wait's span
// from there, with and without 4 loads of 16 bytes a thread from DRAM issued before the
// wait (a GEMV's first round of W).
// A standalone check:
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
                                              unsigned long long *cst, float *sink, int flag, int nprod, const uint4 *w,
                                              unsigned spin) {
  __shared__ float s;
  const unsigned long long ts = gtime();
  while (gtime() - ts < spin) {}
  const unsigned long long t0 = gtime();
  uint4 v4[4] = {};
  if (w)   // W's first round before the wait: lines no other block or launch reads
#pragma unroll
    for (int u = 0; u < 4; u++)
      asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v4[u].x), "=r"(v4[u].y), "=r"(v4[u].z), "=r"(v4[u].w)
                   : "l"(w + ((size_t)blockIdx.x * 4 + u) * 256 + threadIdx.x));
  if (flag) {
    if (threadIdx.x == 0) {
      while (ld_acquire(cnt) < target) {}
    }
    __syncthreads();
  } else {
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
  const unsigned long long t1 = gtime();
  float v = y[((blockIdx.x * 37u) % nprod) * 256 + threadIdx.x];   // a read of the primary's output
#pragma unroll
  for (int u = 0; u < 4; u++) v += (float)(v4[u].x ^ v4[u].w);
  if (threadIdx.x == 0) s = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    cret[blockIdx.x] = t1;
    cst[blockIdx.x] = t0;
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

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main() {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) {
    fprintf(stderr, "flag_wait: no usable CUDA device\n");
    return 1;
  }
  const int nc = sms, np = 3 * sms, pairs = 200;
  float *y, *sink;
  unsigned *cnt;
  unsigned long long *pend, *cret, *cst;
  uint4 *big;
  const size_t nbig = ((size_t)4 << 30) / 16;
  if (cudaMalloc(&y, sizeof(float) * 256 * 3 * sms) || cudaMalloc(&cnt, 4) || cudaMalloc(&pend, 8 * (size_t)3 * sms * pairs) ||
      cudaMalloc(&cret, 8 * (size_t)nc * pairs) || cudaMalloc(&cst, 8 * (size_t)nc * pairs) || cudaMalloc(&sink, 64) ||
      cudaMalloc(&big, nbig * 16)) {
    fprintf(stderr, "flag_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  cudaStream_t st, sb;
  cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&sb, cudaStreamNonBlocking);
  std::vector<unsigned long long> hp((size_t)3 * sms * pairs), hc((size_t)nc * pairs), hs((size_t)nc * pairs);
  for (int late = 0; late < 2; late++)
    for (int loads = 0; loads < 1 + late; loads++)
      for (int busy = 0; busy < 2; busy++)
        for (int flag = 0; flag < 2; flag++) {
          cudaMemset(cnt, 0, 4);
          cudaDeviceSynchronize();
          if (busy) k_stream<<<2 * sms, 256, 0, sb>>>(big, nbig / 2, (unsigned *)sink);   // ~0.7 ms of DRAM reads beside
          for (int i = 0; i < pairs; i++) {
            k_prod<<<np, 256, 0, st>>>(y, cnt, pend + (size_t)i * np, flag);
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute at[1];
            at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            at[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.gridDim = nc, cfg.blockDim = 256, cfg.stream = st, cfg.attrs = at, cfg.numAttrs = 1;
            const uint4 *w = loads ? big + nbig / 2 + (size_t)i * nc * 4 * 256 : NULL;   // the other half: not streamed
            cudaLaunchKernelEx(&cfg, k_cons, (const float *)y, (const unsigned *)cnt, (unsigned)((i + 1) * np),
                               cret + (size_t)i * nc, cst + (size_t)i * nc, sink, flag, np, w, late ? 6000u : 0u);
          }
          if (cudaDeviceSynchronize() != cudaSuccess) {
            fprintf(stderr, "flag_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
            return 1;
          }
          cudaMemcpy(hp.data(), pend, 8 * hp.size(), cudaMemcpyDeviceToHost);
          cudaMemcpy(hc.data(), cret, 8 * hc.size(), cudaMemcpyDeviceToHost);
          cudaMemcpy(hs.data(), cst, 8 * hs.size(), cudaMemcpyDeviceToHost);
          std::vector<double> med, last, start, span;
          for (int i = 0; i < pairs; i++) {
            const unsigned long long pe = *std::max_element(hp.begin() + (size_t)i * np, hp.begin() + (size_t)(i + 1) * np);
            std::vector<double> r, s0, sp;
            for (int b = 0; b < nc; b++) {
              const size_t k = (size_t)i * nc + b;
              r.push_back(((double)hc[k] - (double)pe) / 1000.0);
              s0.push_back(((double)hs[k] - (double)pe) / 1000.0);
              sp.push_back(((double)hc[k] - (double)hs[k]) / 1000.0);
            }
            std::sort(r.begin(), r.end());
            med.push_back(r[r.size() / 2]), last.push_back(r.back()), start.push_back(median(s0)), span.push_back(median(sp));
          }
          printf("%-9s %-22s %-20s %-11s C's return after P's last end: median %.2f us, last %.2f us; C at its wait %.2f, "
                 "from there to the return %.2f (medians of %d pairs)\n",
                 late ? "late" : "resident", busy ? "a DRAM stream beside" : "idle",
                 flag ? "polling a counter" : "griddepcontrol.wait", loads ? "loads first" : "", median(med), median(last),
                 median(start), median(span), pairs);
        }
  return 0;
}
