// A persistent thread pool for the CPU backend.
// Workers spin briefly then sleep, so back-to-back small kernels pay little dispatch cost.
#pragma once
#include <stdint.h>

// Number of threads: WICK_THREADS when set, otherwise the number of physical cores.
int wk_threads(void);

// Calls fn(ctx, begin, end, tid) over [0, n) split into chunks of at least `grain`
// items, on up to wk_threads() threads (the caller is thread 0). Runs inline when
// n <= grain or only one thread is available. Returns after every chunk is done.
typedef void (*wk_range_fn)(void *ctx, int64_t begin, int64_t end, int tid);
void wk_parallel_for(int64_t n, int64_t grain, wk_range_fn fn, void *ctx);

// Waits until *counter >= target, spinning, then yielding the core: for the chunks of one
// wk_parallel_for job that wait on each other's progress. That is safe because a job has
// at most wk_threads() chunks, each thread runs one chunk to its end before it claims
// another, and a nested or concurrent call runs the job inline as one chunk [0, n).
void wk_wait_at_least(_Atomic int64_t *counter, int64_t target);
