// WICK_PROBE, a diagnostic build (-DCMAKE_CUDA_FLAGS=-DWICK_PROBE; nothing of it is
// compiled otherwise): a probed kernel's blocks record their SM, their start, their PDL
// wait's return, one more point of the kernel's choosing (PROBE_MARK) and their end, on
// the GPU's global timer. Each file that includes this keeps its own records and
// writes them at exit to $WICK_PROBE_OUT.<name> (PROBE_AT_EXIT, on the host, at the
// first launch); bench/compare/probe.py reads them together.
#pragma once
#ifdef WICK_PROBE
#include <stdio.h>
#include <stdlib.h>
#include <string>
#include <vector>
struct WkcProbeRec {
  unsigned tag, block, sm, grid;
  unsigned long long t0, t1, t2, t3, t4, t5, t6;   // t4-t6: PROBE_MARK2-4, where a kernel takes them
};
#define PROBE_MAX (1u << 21)   // records a file keeps (a decode token: ~28,000 GEMV blocks)
static __device__ WkcProbeRec g_probe[PROBE_MAX];
static __device__ unsigned g_probe_n;
static __device__ __forceinline__ unsigned long long wkc_gtime(void) {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#define PROBE_START unsigned long long pr_t0 = wkc_gtime(), pr_t1 = 0, pr_t3 = 0, pr_t4 = 0, pr_t5 = 0, pr_t6 = 0
#define PROBE_WAITED pr_t1 = wkc_gtime()
#define PROBE_MARK pr_t3 = wkc_gtime()
#define PROBE_MARK2 pr_t4 = wkc_gtime()
#define PROBE_MARK3 pr_t5 = wkc_gtime()
#define PROBE_MARK4 pr_t6 = wkc_gtime()
// every thread of the block reaches it; the end is stamped before the record's slot is
// taken (an atomic on one counter, a round trip through L2 that is slow where L2 is)
#define PROBE_END(tag_)                                                                      \
  do {                                                                                       \
    __syncthreads();                                                                         \
    if (threadIdx.x == 0) {                                                                  \
      const unsigned long long t2_ = wkc_gtime();                                            \
      const unsigned k_ = atomicAdd(&g_probe_n, 1u);                                         \
      unsigned sm_;                                                                          \
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm_));                                       \
      if (k_ < PROBE_MAX)                                                                    \
        g_probe[k_] = WkcProbeRec{(unsigned)(tag_), blockIdx.x, sm_, gridDim.x, pr_t0, pr_t1, t2_, pr_t3, pr_t4, pr_t5, pr_t6}; \
    }                                                                                        \
  } while (0)
// this file's records to $WICK_PROBE_OUT.name, a line each: tag block sm grid t0 t1 t2 t3 t4 t5 t6
static void wkc_probe_dump(const char *name) {
  const char *out = getenv("WICK_PROBE_OUT");
  unsigned n = 0;
  if (!out || cudaDeviceSynchronize() != cudaSuccess || cudaMemcpyFromSymbol(&n, g_probe_n, sizeof n) != cudaSuccess) return;
  n = n < PROBE_MAX ? n : PROBE_MAX;
  std::vector<WkcProbeRec> r(n);
  if (n && cudaMemcpyFromSymbol(r.data(), g_probe, n * sizeof(WkcProbeRec)) != cudaSuccess) return;
  FILE *f = fopen((std::string(out) + "." + name).c_str(), "w");
  if (!f) return;
  for (const WkcProbeRec &p : r)
    fprintf(f, "%u %u %u %u %llu %llu %llu %llu %llu %llu %llu\n", p.tag, p.block, p.sm, p.grid, p.t0, p.t1, p.t2, p.t3,
            p.t4, p.t5, p.t6);
  fclose(f);
}
// registered after the CUDA runtime's own exit handler, so it runs before it
#define PROBE_AT_EXIT(name)                                                      \
  do {                                                                           \
    static const bool reg_ = [] { return atexit([] { wkc_probe_dump(name); }) == 0; }(); \
    (void)reg_;                                                                  \
  } while (0)
#else
#define PROBE_START
#define PROBE_WAITED
#define PROBE_MARK
#define PROBE_MARK2
#define PROBE_MARK3
#define PROBE_MARK4
#define PROBE_END(tag_)
#define PROBE_AT_EXIT(name)
#endif
