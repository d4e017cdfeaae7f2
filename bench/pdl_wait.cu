// Whether blocks waiting in griddepcontrol.wait (a programmatic dependent launched early)
// take issue slots from the kernel they wait on. A: an issue-bound FMA loop, one block of
// 1024 threads an SM, that lets its dependents launch at once; B: 1, 2 or 4 blocks of 256
// threads an SM that wait, then exit. A's time per block with B resident beside it is
// compared with B launched plainly (after A). A standalone check, not part of the build:
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/pdl_wait bench/pdl_wait.cu && /tmp/pdl_wait
// (BENCHMARKS.md: on an H100, A's time is the same either way; the wait is ACQBULK in SASS.)
#include <cstdio>
#include <cuda_runtime.h>
#include "sm90.cuh"

__global__ void __launch_bounds__(1024) k_busy(float *out, unsigned long long *ns, int iters) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const unsigned long long t0 = gtime();
  float a = (float)threadIdx.x, b = a + 1.0f, c = a + 2.0f, d = a + 3.0f;   // four independent chains
  for (int i = 0; i < iters; i++) {
    a = fmaf(a, 1.0000001f, 0.5f), b = fmaf(b, 1.0000001f, 0.5f);
    c = fmaf(c, 1.0000001f, 0.5f), d = fmaf(d, 1.0000001f, 0.5f);
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = a + b + c + d;
  __syncthreads();
  if (threadIdx.x == 0) ns[blockIdx.x] = gtime() - t0;
}
__global__ void __launch_bounds__(256) k_waiter(float *out) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (out[0] == 12345.0f) out[1] = 1.0f;   // a read after the wait, never a write in practice
}

int main() {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess || sms > 1024) {
    fprintf(stderr, "pdl_wait: no usable CUDA device\n");
    return 1;
  }
  float *out;
  unsigned long long *ns, h[1024];
  cudaStream_t s;
  if (cudaMalloc(&out, sizeof(float) * (size_t)sms * 1024) || cudaMalloc(&ns, sizeof h) || cudaStreamCreate(&s)) {
    fprintf(stderr, "pdl_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  const int waiters[4] = {4, 1, 2, 4};   // B's blocks an SM; case 0 launches B plainly
  for (int m = 0; m < 4; m++)
    for (int rep = 0; rep < 3; rep++) {
      k_busy<<<sms, 1024, 0, s>>>(out, ns, 200000);
      cudaLaunchConfig_t cfg = {};
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = m != 0;
      cfg.gridDim = dim3((unsigned)(sms * waiters[m])), cfg.blockDim = dim3(256), cfg.stream = s;
      cfg.attrs = at, cfg.numAttrs = 1;
      cudaLaunchKernelEx(&cfg, k_waiter, out);
      if (cudaStreamSynchronize(s) || cudaMemcpy(h, ns, sizeof(h[0]) * (size_t)sms, cudaMemcpyDeviceToHost)) {
        fprintf(stderr, "pdl_wait: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
      }
      unsigned long long most = 0, sum = 0;
      for (int i = 0; i < sms; i++) sum += h[i], most = h[i] > most ? h[i] : most;
      printf("%s, %d waiting blocks an SM: busy kernel %.1f us a block (mean), %.1f (most)\n",
             m ? "dependent (PDL)" : "plain", m ? waiters[m] : 0, (double)sum / 1000.0 / sms, (double)most / 1000.0);
    }
  return 0;
}
