// Whether DRAM reads in flight slow the latency of L2 hits beside them, by how they are
// issued. A few "chaser" warps walk a small ring of indices that stays in L2 (dependent
// loads that bypass L1, as a decode kernel's reads of the activations the kernel before
// just wrote); the other blocks stream a 4 GB buffer at the same time: not at all (0),
// by 16-byte loads into registers, 4 in flight a thread, as the decode GEMVs (1), by
// prefetch.global.L2 of every 128-byte line (2), by cp.async.bulk.prefetch.L2 of 8 KB
// (3), by bulk copies of 8 KB into shared memory, 4 in flight a block (4), by 16-byte
// cp.async into shared memory, 4 groups in flight a thread (5), or by 16-byte loads into
// registers stored to shared memory, 4 in flight a thread (6). Each with the chasers
// sharing their SMs with streaming blocks, and alone on theirs (the streaming blocks that
// land there leave at once). Prints the chasers' ns a load and the streamers' GB/s. A standalone check, not part of the build:
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/l2_clog bench/l2_clog.cu && /tmp/l2_clog
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#include "sm90.cuh"

#define CHASERS 8            // blocks that chase (one warp working in each)
#define RING 64              // ring entries, 128 bytes apart (8 KB: touched often enough to stay in L2)
#define STEPS 1000           // dependent loads a chaser times (well within the streaming)
#define STAGE (8 * 1024)     // bytes a bulk request moves (4 stages: 32 KB of static shared memory)

__device__ unsigned ld_cg(const unsigned *p) {
  unsigned v;
  asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ unsigned smid() {
  unsigned r;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(r));
  return r;
}

struct Args {
  const unsigned *ring;     // ring[32 * i] = 32 * next(i)
  const char *big;          // the streamed buffer
  size_t slice;             // bytes each streaming block reads
  int mode, alone;          // alone: no streaming on the chasers' SMs
  unsigned long long *out;  // [0, CHASERS): ns of a chaser; then per streaming block: start, end (0, 0: left)
  unsigned *sink;
  int *chaser_sms;          // [SM]: whether a chaser runs there (set by the chasers before they start)
};

__device__ void chase(const Args &a) {
  if (threadIdx.x) return;
  unsigned i = 32u * (blockIdx.x * 997u % RING);
  atomicExch(&a.chaser_sms[smid()], 1);
  for (int k = 0; k < 4 * RING; k++) i = ld_cg(a.ring + i);   // warm, and start once the streamers run
  const unsigned long long t0 = gtime();
  for (int k = 0; k < STEPS; k++) i = ld_cg(a.ring + i);
  a.out[blockIdx.x] = gtime() - t0;
  if (i == 0xffffffffu) a.sink[0] = i;
}

// The slice by 16-byte loads, 4 in flight a thread: each stored to shared memory (sd,
// 16 KB), or (sd NULL) folded into the result.
__device__ unsigned load_stream(const char *p, size_t slice, uint4 *sd) {
  const uint4 *q = (const uint4 *)p;
  const size_t n = slice / 16;
  unsigned acc = 0;
  for (size_t j = threadIdx.x; j < n; j += 4 * blockDim.x) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) v[u] = j + u * blockDim.x < n ? __ldcs(q + j + u * blockDim.x) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; u++) {
      if (sd) sd[u * 256 + threadIdx.x] = v[u];
      else acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
  }
  return acc;
}

__device__ void stream(const Args &a) {
  __shared__ __align__(128) unsigned char st[4 * STAGE];
  __shared__ __align__(8) uint64_t bar[4];
  const size_t b = blockIdx.x - CHASERS;
  const char *p = a.big + b * a.slice;
  __shared__ int on_chaser_sm;
  if (threadIdx.x == 0) {
    if (a.alone) __nanosleep(5000);   // the chasers, dispatched first, have marked their SMs
    on_chaser_sm = a.alone && atomicAdd(&a.chaser_sms[smid()], 0) != 0;
  }
  __syncthreads();
  if (on_chaser_sm) {
    if (threadIdx.x == 0) a.out[CHASERS + 2 * b] = a.out[CHASERS + 2 * b + 1] = 0;
    return;
  }
  const unsigned long long t0 = gtime();
  unsigned acc = 0;
  if (a.mode == 1) {
    acc = load_stream(p, a.slice, NULL);
  } else if (a.mode == 2) {
    for (size_t o = 128 * (size_t)threadIdx.x; o < a.slice; o += 128 * (size_t)blockDim.x)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
  } else if (a.mode == 3 && threadIdx.x == 0) {
    for (size_t o = 0; o < a.slice; o += STAGE)
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"((unsigned)STAGE) : "memory");
  } else if (a.mode == 4) {
    if (threadIdx.x == 0) {
      for (int s = 0; s < 4; s++) mbar_init(&bar[s], 1);
      asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
      const size_t n = a.slice / STAGE;
      for (size_t k = 0; k < n; k++) {
        const int s = (int)(k % 4);
        if (k >= 4) mbar_wait(&bar[s], (unsigned)((k / 4 - 1) & 1));   // the stage's last copy has landed
        bulk_copy(st + s * STAGE, p + k * STAGE, (unsigned)STAGE, &bar[s]);
      }
      for (int s = 0; s < 4 && (size_t)s < n; s++)   // the last copy of each stage, before the block leaves
        mbar_wait(&bar[s], (unsigned)(((n - 1 - (size_t)s) / 4) & 1));
      acc = st[0];
    }
    __syncthreads();
  } else if (a.mode == 5) {   // 16 B a thread a group, 4 groups in flight: 16 KB of the stages
    const size_t n = a.slice / 16;
    int g = 0;
    for (size_t j = threadIdx.x; j < n; j += blockDim.x, g++) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n\tcp.async.commit_group;"
                   ::"r"(smem_u32(st + (g & 3) * 4096 + 16 * threadIdx.x)), "l"(p + 16 * j) : "memory");
      asm volatile("cp.async.wait_group 3;" ::: "memory");
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    acc = ((const unsigned *)st)[threadIdx.x];
  } else if (a.mode == 6) {   // mode 1's loads, each stored to shared memory
    load_stream(p, a.slice, (uint4 *)st);
    __syncthreads();
    acc = ((const unsigned *)st)[threadIdx.x];
  }
  __syncthreads();
  if (acc == 0x12345678u) a.sink[1] = acc;
  if (threadIdx.x == 0) a.out[CHASERS + 2 * b] = t0, a.out[CHASERS + 2 * b + 1] = gtime();
}

__global__ void __launch_bounds__(256) k_clog(const __grid_constant__ Args a) {
  if (blockIdx.x < CHASERS) chase(a);
  else stream(a);
}

int main() {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) {
    fprintf(stderr, "l2_clog: no usable CUDA device\n");
    return 1;
  }
  const int streamers = 2 * sms - CHASERS;
  const size_t big = (size_t)4 << 30, slice = big / (size_t)streamers / STAGE * STAGE;
  unsigned *ring, *sink, *h = new unsigned[32 * RING];
  char *buf;
  unsigned long long *out, ho[CHASERS + 2 * 512];
  int *chaser_sms;
  if (cudaMalloc(&ring, sizeof(unsigned) * 32 * RING) || cudaMalloc(&buf, big) || cudaMalloc(&out, sizeof ho) ||
      cudaMalloc(&sink, 64) || cudaMalloc(&chaser_sms, sizeof(int) * 1024)) {
    fprintf(stderr, "l2_clog: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  for (unsigned i = 0; i < RING; i++) h[32 * i] = 32u * ((i * 37u + 7u) % RING);   // one cycle through all (37 is prime to 64)
  cudaMemcpy(ring, h, sizeof(unsigned) * 32 * RING, cudaMemcpyHostToDevice);
  cudaMemset(buf, 1, big);
  const char *names[7] = {"none", "loads (4 x 16 B a thread in flight)", "prefetch.global.L2 lines",
                          "cp.async.bulk.prefetch.L2 8 KB", "bulk copies to shared, 4 x 8 KB a block",
                          "cp.async 16 B to shared, 4 a thread", "loads stored to shared, 4 a thread"};
  for (int alone = 0; alone < 2; alone++)
  for (int mode = 0; mode < 7; mode++)
    for (int rep = 0; rep < 2; rep++) {
      Args a = {ring, buf, slice, mode, alone, out, sink, chaser_sms};
      cudaMemset(chaser_sms, 0, sizeof(int) * 1024);
      k_clog<<<CHASERS + streamers, 256>>>(a);
      if (cudaDeviceSynchronize() || cudaMemcpy(ho, out, sizeof(ho[0]) * (CHASERS + 2 * (size_t)streamers), cudaMemcpyDeviceToHost)) {
        fprintf(stderr, "l2_clog: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
      }
      double ns = 0;
      for (int c = 0; c < CHASERS; c++) ns += (double)ho[c] / STEPS / CHASERS;
      unsigned long long t0 = ~0ull, t1 = 0;
      size_t moved = 0;
      for (int b = 0; b < streamers; b++) {
        if (!ho[CHASERS + 2 * b + 1]) continue;   // left: on a chaser's SM
        moved += slice;
        t0 = ho[CHASERS + 2 * b] < t0 ? ho[CHASERS + 2 * b] : t0;
        t1 = ho[CHASERS + 2 * b + 1] > t1 ? ho[CHASERS + 2 * b + 1] : t1;
      }
      const double gbs = mode == 0 ? 0.0 : (double)moved / (double)(t1 - t0);
      printf("%s %-38s rep %d: L2 hit %.0f ns a load; streamers %.0f GB/s issued (%.1f us)\n", alone ? "alone " : "shared", names[mode], rep, ns, gbs,
             (t1 - t0) / 1000.0);
    }
  delete[] h;
  return 0;
}
