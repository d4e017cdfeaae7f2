// The CUDA backend's own entry points beside the wk_backend vtable (C linkage).
// Compiled only with WICK_CUDA.
#pragma once
#include <stddef.h>
#include "wick/base.h"

// The backend for WK_CUDA, or NULL (error set) when no usable device or driver.
struct wk_backend;
const struct wk_backend *wk_backend_cuda(void);

// Device memory held by the caching allocator: reserved = obtained from cudaMalloc
// (in use + cached free blocks); in_use = handed out now; peaks since start-up.
typedef struct {
  size_t reserved, peak_reserved, in_use, peak_in_use, cached_limit;
  unsigned long long cuda_mallocs, cache_hits;
} wk_cuda_mem_stats;
void wk_cuda_memory_stats(wk_cuda_mem_stats *out);
// Returns every cached free block to the driver (waits for the stream first).
void wk_cuda_empty_cache(void);
// The backend's stream (a cudaStream_t), for timing with events.
void *wk_cuda_stream(void);
// Name and compute capability of the device in use ("" when none).
const char *wk_cuda_device_name(void);

// CUDA graph replay of cached plans (WICK_CUDA_GRAPHS=0 turns it off at start-up;
// this switches it at run time, for tests and benchmarks comparing both paths).
void wk_cuda_set_graphs(int on);
typedef struct {
  unsigned long long captures;   // step runs captured and instantiated as a graph
  unsigned long long replays;    // graph launches
  unsigned long long patched;    // steps re-captured into an existing graph (new pointers or scalars)
  unsigned long long direct;     // step runs launched step by step (first use, too many changes)
  unsigned long long fallbacks;  // step runs whose capture failed (they run step by step from then on)
  unsigned long long pdl;        // kernels captured as programmatic dependents (WICK_CUDA_PDL)
  unsigned long long early;      // of those, decode attention launches reading the cache before their wait
  unsigned long long folded;     // uploads captured into a graph's head (done before its kernels)
  unsigned long long copied;     // uploads captured as copy nodes between kernels
} wk_cuda_graph_stats;
void wk_cuda_graph_stats_get(wk_cuda_graph_stats *out);
// Tests: the next capture fails as a host sync inside a step would (the fallback path).
void wk_cuda_graph_fail_next_capture(void);
// Tests: re-capture changed steps into the graph even where launching them one by one
// was measured to be cheaper (so that the patch path runs whatever the timings).
void wk_cuda_graph_always_patch(int on);

// Generated kernels for fused elementwise groups (NVRTC, ew_gen.cu). mode 0: the
// interpreter runs every group; 1: groups of >= 65536 elements get a generated
// kernel (the default); 2: every group does. WICK_CUDA_NVRTC=0|1|all sets it at
// start-up; this switches it at run time, for tests and comparisons.
void wk_cuda_set_ew_gen(int mode);
typedef struct {
  unsigned long long compiled;          // distinct kernels compiled and loaded
  unsigned long long compile_failures;  // NVRTC or loading failed (those groups run in the interpreter)
  unsigned long long launches;          // launches of generated kernels
  unsigned long long fallbacks;         // groups that generation would take but the interpreter ran
  double compile_ms;                    // host time spent compiling and loading
  unsigned long long cache_loads;       // kernels loaded from the disk cache instead (rtc.cu)
} wk_cuda_ew_gen_stats;
void wk_cuda_ew_gen_stats_get(wk_cuda_ew_gen_stats *out);
// Tests: unknown_op >= 0 is treated as an op the generator does not know (-1: none);
// broken_source != 0 appends a syntax error to generated sources (the NVRTC failure path).
void wk_cuda_ew_gen_test_faults(int unknown_op, int broken_source);
