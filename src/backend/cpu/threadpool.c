// Persistent thread pool. One job at a time: the caller publishes it by bumping a
// generation counter; workers spin on that counter for a short while (so
// back-to-back kernels cost ~1 us to dispatch) and then sleep on a condvar (so an
// idle process does not burn cores). Chunks are claimed from a ticket counter by
// whoever comes first, the caller included: when a worker is descheduled (more
// runnable threads than cores), the caller runs its chunk instead of waiting a
// scheduler quantum for it.
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define WK_PAUSE() _mm_pause()
#else
#define WK_PAUSE() ((void)0)
#endif

// Spin iterations before sleeping; a pause is ~10-40 ns on current x86, so ~50-150 us.
#define WK_SPIN_ITERS 4000
#define WK_MAX_THREADS 256

static struct {
    int nthreads;
    pthread_t *workers;
    _Atomic uint32_t gen;       // bumped once per published job
    // (gen << 32) | next unclaimed chunk. Tagging claims with the generation lets a
    // worker that wakes late see that its job is over instead of taking a chunk of
    // the next one with a stale copy of the job.
    _Atomic uint64_t ticket;
    _Atomic int done;           // chunks finished in the current job
    _Atomic int sleepers;       // workers inside (or entering) cond_wait
    _Atomic int shutdown;
    atomic_flag busy;           // held by the thread currently driving the pool
    pthread_mutex_t mu;
    pthread_cond_t cv;
    // The job; atomics because a late worker may read them while the next job is
    // written (it then discards what it read: its ticket CAS fails).
    _Atomic(wk_range_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n;
    _Atomic int nchunks;
} wk_pool = {.busy = ATOMIC_FLAG_INIT, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_once_t wk_pool_once = PTHREAD_ONCE_INIT;
static _Thread_local int wk_in_worker;  // nested wk_parallel_for from a chunk runs inline

// Claims and runs chunks of job `gen` until none are left. Chunk c runs as tid c,
// so per-thread scratch indexed by tid is never shared by two running chunks.
static void wk_run_chunks(uint32_t gen) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&wk_pool.ticket, memory_order_acquire);
        if ((uint32_t)(t >> 32) != gen) return;
        // Read after acquiring a ticket of `gen`: these are that job's fields, or a
        // later job's, in which case `gen` is complete and the CAS below fails.
        int nchunks = atomic_load_explicit(&wk_pool.nchunks, memory_order_relaxed);
        wk_range_fn fn = atomic_load_explicit(&wk_pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&wk_pool.ctx, memory_order_relaxed);
        int64_t n = atomic_load_explicit(&wk_pool.n, memory_order_relaxed);
        int c = (int)(uint32_t)t;
        if (c >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&wk_pool.ticket, &t, t + 1,
                                                   memory_order_acq_rel, memory_order_relaxed))
            continue;
        fn(ctx, n * c / nchunks, n * (c + 1) / nchunks, c);
        atomic_fetch_add_explicit(&wk_pool.done, 1, memory_order_release);
    }
}

static void *wk_worker_main(void *arg) {
    (void)arg;
    uint32_t seen = 0;
    wk_in_worker = 1;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&wk_pool.gen, memory_order_acquire)) == seen &&
               spins++ < WK_SPIN_ITERS)
            WK_PAUSE();
        if (g == seen) {
            pthread_mutex_lock(&wk_pool.mu);
            // seq_cst increment then re-check pairs with the caller's seq_cst
            // gen store then sleepers load: one of the two sides sees the other.
            atomic_fetch_add(&wk_pool.sleepers, 1);
            while ((g = atomic_load(&wk_pool.gen)) == seen)
                pthread_cond_wait(&wk_pool.cv, &wk_pool.mu);
            atomic_fetch_sub(&wk_pool.sleepers, 1);
            pthread_mutex_unlock(&wk_pool.mu);
        }
        seen = g;
        if (atomic_load_explicit(&wk_pool.shutdown, memory_order_acquire)) break;
        wk_run_chunks(g);
    }
    return NULL;
}

static void wk_publish(void) {
    atomic_fetch_add(&wk_pool.gen, 1);  // seq_cst, see wk_worker_main
    if (atomic_load(&wk_pool.sleepers) > 0) {
        pthread_mutex_lock(&wk_pool.mu);
        pthread_cond_broadcast(&wk_pool.cv);
        pthread_mutex_unlock(&wk_pool.mu);
    }
}

static void wk_pool_shutdown(void) {
    // Another thread may be mid-job at exit; wait for it rather than pull the pool away.
    while (atomic_flag_test_and_set_explicit(&wk_pool.busy, memory_order_acquire)) WK_PAUSE();
    if (!wk_pool.workers) return;  // keep busy set: later calls run inline
    atomic_store(&wk_pool.shutdown, 1);
    wk_publish();
    for (int i = 1; i < wk_pool.nthreads; i++) pthread_join(wk_pool.workers[i], NULL);
    free(wk_pool.workers);
    wk_pool.workers = NULL;
}

static int wk_count_physical_cores(void) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1) online = 1;
    // Threads per core from cpu0's sibling list ("0,32" or "0-1"); SMT siblings
    // share the FMA units, so a second thread per core only adds contention in GEMM.
    int per_core = 1;
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list", "r");
    if (f) {
        char buf[256] = {0};
        if (fgets(buf, sizeof buf, f)) {
            int a, b;
            if (sscanf(buf, "%d-%d", &a, &b) == 2 && b >= a) per_core = b - a + 1;
            else {
                per_core = 1;
                for (char *p = buf; *p; p++) per_core += (*p == ',');
            }
        }
        fclose(f);
    }
    long n = online / per_core;
    return n < 1 ? 1 : (int)n;
}

static void wk_pool_init(void) {
    int n = wk_count_physical_cores();
    const char *s = getenv("WICK_THREADS");
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end == '\0' && v >= 1) n = (int)(v < WK_MAX_THREADS ? v : WK_MAX_THREADS);
        else fprintf(stderr, "wick: ignoring invalid WICK_THREADS=%s\n", s);
    }
    if (n > WK_MAX_THREADS) n = WK_MAX_THREADS;
    wk_pool.nthreads = n;
    if (n == 1) return;
    wk_pool.workers = calloc((size_t)n, sizeof(pthread_t));
    if (!wk_pool.workers) { wk_pool.nthreads = 1; return; }
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&wk_pool.workers[started], NULL, wk_worker_main, (void *)(intptr_t)started))
            break;
    // Fewer threads than asked is still a working pool.
    wk_pool.nthreads = started;
    if (started == 1) { free(wk_pool.workers); wk_pool.workers = NULL; return; }
    atexit(wk_pool_shutdown);
}

int wk_threads(void) {
    pthread_once(&wk_pool_once, wk_pool_init);
    return wk_pool.nthreads;
}

void wk_parallel_for(int64_t n, int64_t grain, wk_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = wk_threads();
    int64_t maxchunks = (n + grain - 1) / grain;  // keeps every chunk >= grain (but the last)
    if (n / grain < maxchunks && n / grain >= 1) maxchunks = n / grain;
    int nchunks = (int)(maxchunks < nt ? maxchunks : nt);
    if (nchunks <= 1 || wk_in_worker ||
        atomic_flag_test_and_set_explicit(&wk_pool.busy, memory_order_acquire)) {
        // Nested call, another thread driving the pool, or too little work.
        fn(ctx, 0, n, 0);
        return;
    }
    if (!wk_pool.workers) {  // shut down already
        atomic_flag_clear_explicit(&wk_pool.busy, memory_order_release);
        fn(ctx, 0, n, 0);
        return;
    }
    atomic_store_explicit(&wk_pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&wk_pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&wk_pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&wk_pool.nchunks, nchunks, memory_order_relaxed);
    atomic_store_explicit(&wk_pool.done, 0, memory_order_relaxed);
    uint32_t gen = atomic_load_explicit(&wk_pool.gen, memory_order_relaxed) + 1;
    // Release: a worker that claims a ticket of `gen` sees the job fields above.
    atomic_store_explicit(&wk_pool.ticket, (uint64_t)gen << 32, memory_order_release);
    wk_publish();
    wk_in_worker = 1;
    wk_run_chunks(gen);
    wk_in_worker = 0;
    // Yield after a while: with more runnable threads than cores, a descheduled
    // worker holding a chunk can only finish if we give its core back.
    for (int spins = 0; atomic_load_explicit(&wk_pool.done, memory_order_acquire) < nchunks; spins++) {
        if (spins < WK_SPIN_ITERS) WK_PAUSE();
        else sched_yield();
    }
    atomic_flag_clear_explicit(&wk_pool.busy, memory_order_release);
}

void wk_wait_at_least(_Atomic int64_t *counter, int64_t target) {
    for (int spins = 0; atomic_load_explicit(counter, memory_order_acquire) < target; spins++) {
        if (spins < WK_SPIN_ITERS) WK_PAUSE();
        else sched_yield();
    }
}
