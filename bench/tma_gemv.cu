// Can a GEMV fed through shared memory by bulk copies (the TMA engine) stream a decode
// projection's weight at DRAM rate? The building block a persistent decode kernel would
// need (BENCHMARKS: k_sgemv, which asks for all of a block's rows at once, took ~16 us
// alone for gate/up's 17.4 MB). Here a resident block (BPS an SM) owns consecutive
// rows and streams them through a ring of P pages of R rows: one producer thread issues
// a page's copy once the consumers have released it; 8 consumer warps each take a row
// of a full page (the dot with x from shared memory, a warp sum). Beside it: a
// register GEMV (16-byte loads, 4 in flight a lane, a warp a row) and a device-to-device
// copy, the roof: each timed over 200 launches back to back (with the gaps between them)
// and over one launch from inside (its first warp's start to its last warp's end). y is
// checked against a double-precision host product. (The register GEMV's span is not to be
// read: its 9,728 warps each add to the two span words, and those atomics take longer than
// the GEMV; its back-to-back figure stands.) A standalone check, not part of the build:
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/tma_gemv bench/tma_gemv.cu && /tmp/tma_gemv
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "sm90.cuh"

#define K 896
#define N 9728             // gate and up of Qwen2.5-0.5B: 17.4 MB of bf16
#define CONSUMERS 8        // consumer warps; warp CONSUMERS is the producer


// the launch's span, from its first warp's start to its last warp's end (span NULL: none);
// lane 0 of every warp that works
__device__ __forceinline__ void span_add(unsigned long long *span, unsigned long long t0) {
  if (span && (threadIdx.x & 31) == 0) atomicMin(&span[0], t0), atomicMax(&span[1], gtime());
}

struct Ring {
  int pages, rows;   // P pages of R rows
};

// y = W x through the ring; rows [b * rpb, (b + 1) * rpb) per block
__global__ void __launch_bounds__((CONSUMERS + 1) * 32) k_ring(const uint16_t *w, const float *x, float *y, int rpb, Ring g,
                                                                unsigned long long *span) {
  extern __shared__ __align__(128) unsigned char sm[];
  const unsigned long long t0 = gtime();
  uint64_t *full = (uint64_t *)sm, *empty = full + g.pages;
  float *xs = (float *)(sm + 256);
  unsigned char *pg = sm + 256 + K * sizeof(float);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = blockIdx.x * rpb, rows = min(rpb, N - r0);
  if (rows <= 0) return;
  const int np = (rows + g.rows - 1) / g.rows;
  const unsigned page_bytes = (unsigned)(g.rows * K * 2);
  if (threadIdx.x == 0) {
    for (int s = 0; s < g.pages; s++) mbar_init(&full[s], 1), mbar_init(&empty[s], CONSUMERS);
    asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
  }
  for (int i = threadIdx.x; i < K; i += blockDim.x) xs[i] = x[i];
  __syncthreads();
  if (warp == CONSUMERS) {   // the producer
    if (lane == 0)
      for (int i = 0; i < np; i++) {
        const int s = i % g.pages;
        if (i >= g.pages) mbar_wait(&empty[s], (unsigned)((i / g.pages - 1) & 1));
        const int n = min(g.rows, rows - i * g.rows);
        bulk_copy(pg + (size_t)s * page_bytes, w + (size_t)(r0 + i * g.rows) * K, (unsigned)(n * K * 2), &full[s]);
      }
    return;
  }
  for (int i = 0; i < np; i++) {
    const int s = i % g.pages, n = min(g.rows, rows - i * g.rows);
    mbar_wait(&full[s], (unsigned)((i / g.pages) & 1));
    for (int r = warp; r < n; r += CONSUMERS) {
      const uint4 *wr = (const uint4 *)(pg + (size_t)s * page_bytes + (size_t)r * K * 2);
      float acc = 0.0f;
      for (int c = lane; c < K / 8; c += 32) acc += dot_bf16x8(wr[c], xs + 8 * c);
      acc = warp_sum(acc);
      if (lane == 0) y[r0 + i * g.rows + r] = acc;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  span_add(span, t0);
}

// the register GEMV: a warp a row, 16-byte loads, every load of the row in flight at once
__global__ void __launch_bounds__(256) k_regs(const uint16_t *w, const float *x, float *y, unsigned long long *span) {
  const unsigned long long t0 = gtime();
  const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= N) return;
  const uint4 *wr = (const uint4 *)(w + (size_t)row * K);
  constexpr int U = (K / 8 + 31) / 32;
  uint4 v[U];
#pragma unroll
  for (int u = 0; u < U; u++) v[u] = lane + 32 * u < K / 8 ? __ldcs(wr + lane + 32 * u) : make_uint4(0, 0, 0, 0);
  float acc = 0.0f;
#pragma unroll
  for (int u = 0; u < U; u++)
    if (lane + 32 * u < K / 8) acc += dot_bf16x8(v[u], x + 8 * (lane + 32 * u));
  acc = warp_sum(acc);
  if (lane == 0) y[row] = acc;
  span_add(span, t0);
}

static bool check(const char *what, const float *dy, const std::vector<uint16_t> &w, const std::vector<float> &x) {
  std::vector<float> y(N);
  cudaMemcpy(y.data(), dy, sizeof(float) * N, cudaMemcpyDeviceToHost);
  double worst = 0;
  for (int r = 0; r < N; r++) {
    double ref = 0, mag = 0;
    for (int k = 0; k < K; k++) {
      uint32_t b = (uint32_t)w[(size_t)r * K + k] << 16;
      float f;
      memcpy(&f, &b, 4);
      ref += (double)f * x[k], mag += fabs((double)f * x[k]);
    }
    worst = fmax(worst, fabs(y[r] - ref) / (mag + 1e-30));
  }
  if (worst > 1e-5) printf("%s: WRONG, worst relative error %.3g\n", what, worst);
  return worst <= 1e-5;
}

int main() {
  int sms = 0, maxsm = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&maxsm, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  if (!sms) { fprintf(stderr, "tma_gemv: no usable CUDA device\n"); return 1; }
  // several copies of W, used in turn, so that no launch finds its W in L2 (50 MB)
  const int copies = 8;
  const size_t wbytes = (size_t)N * K * 2;
  std::vector<uint16_t> hw((size_t)N * K);
  std::vector<float> hx(K);
  srand(1);
  for (auto &v : hw) v = (uint16_t)(0x3c00 + (rand() & 0x3ff) - 0x200);   // positive bf16, 2^-11 to 2^-3
  for (auto &v : hx) v = (float)(rand() % 2001 - 1000) / 1000.0f;
  uint16_t *w;
  float *x, *y;
  char *cpy;
  if (cudaMalloc(&w, wbytes * copies) || cudaMalloc(&x, sizeof(float) * K) || cudaMalloc(&y, sizeof(float) * N) ||
      cudaMalloc(&cpy, wbytes)) { fprintf(stderr, "tma_gemv: out of device memory\n"); return 1; }
  for (int c = 0; c < copies; c++) cudaMemcpy((char *)w + c * wbytes, hw.data(), wbytes, cudaMemcpyHostToDevice);
  cudaMemcpy(x, hx.data(), sizeof(float) * K, cudaMemcpyHostToDevice);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  const int reps = 200;
  unsigned long long *span, hspan[2];
  if (cudaMalloc(&span, sizeof hspan)) { fprintf(stderr, "tma_gemv: out of device memory\n"); return 1; }
  // launch(c, span): c picks W's copy; span (NULL: none) gathers one launch's span
  auto timed = [&](const char *what, auto launch, bool spans) {
    for (int i = 0; i < 10; i++) launch(i % copies, nullptr);
    cudaEventRecord(e0);
    for (int i = 0; i < reps; i++) launch(i % copies, nullptr);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    const double us = ms * 1000.0 / reps;
    double sus = 0;
    if (spans) {   // one more launch, its span from inside: no launch gaps
      hspan[0] = ~0ull, hspan[1] = 0;
      cudaMemcpy(span, hspan, sizeof hspan, cudaMemcpyHostToDevice);
      launch(reps % copies, span);
      cudaMemcpy(hspan, span, sizeof hspan, cudaMemcpyDeviceToHost);
      sus = (double)(hspan[1] - hspan[0]) / 1000.0;
    }
    const cudaError_t err = cudaGetLastError();
    printf("%-46s %7.2f us a launch, %6.0f GB/s", what, us, wbytes / us / 1e3);
    if (spans) printf("; one launch's span %6.2f us, %6.0f GB/s", sus, wbytes / sus / 1e3);
    printf("%s%s\n", err ? "  ERROR: " : "", err ? cudaGetErrorString(err) : "");
  };
  timed("device-to-device copy (read + write counted)", [&](int c, unsigned long long *) {
    cudaMemcpyAsync(cpy, (char *)w + c * wbytes, wbytes / 2, cudaMemcpyDeviceToDevice);
  }, false);
  timed("register GEMV (a warp a row, 1216 blocks)", [&](int c, unsigned long long *sp) {
    k_regs<<<(N + 7) / 8, 256>>>((const uint16_t *)((char *)w + c * wbytes), x, y, sp);
  }, true);
  bool ok = check("register GEMV", y, hw, hx);
  const int cfg[][3] = {{1, 4, 8}, {1, 8, 8}, {1, 12, 8}, {1, 8, 4}, {1, 16, 4}, {2, 4, 8}, {2, 6, 8}, {2, 8, 4}};
  for (auto &f : cfg) {
    const int bps = f[0];
    const Ring g = {f[1], f[2]};
    const int blocks = sms * bps, rpb = (N + blocks - 1) / blocks;
    const size_t smem = 256 + K * sizeof(float) + (size_t)g.pages * g.rows * K * 2;
    char what[96];
    snprintf(what, sizeof what, "ring: %d a SM, %2d pages of %d rows (%3zu KB)", bps, g.pages, g.rows, smem >> 10);
    if ((int)smem > maxsm || (bps > 1 && (int)smem * bps > 227 * 1024)) { printf("%-46s does not fit\n", what); continue; }
    cudaFuncSetAttribute(k_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    timed(what, [&](int c, unsigned long long *sp) {
      k_ring<<<blocks, (CONSUMERS + 1) * 32, smem>>>((const uint16_t *)((char *)w + c * wbytes), x, y, rpb, g, sp);
    }, true);
    ok = check(what, y, hw, hx) && ok;
  }
  printf("%s\n", ok ? "results checked against double precision: all within 1e-5" : "SOME RESULTS WRONG");
  return ok ? 0 : 1;
}
