// Host memory for tensor storage, with a small cache of large blocks.
//
// A fresh multi-megabyte malloc is returned by mmap and pays a page fault per
// 4 KiB on first touch (a 64 MiB output costs ~10 ms before any work); reusing
// freed blocks of the same size avoids that. The cache is bounded
// (WICK_CACHE_MB, default 256) and only holds blocks of 256 KiB or more.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"

#define CACHE_MIN ((size_t)256 << 10)
#define CACHE_SLOTS 64

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct { void *p; size_t bytes; } cache[CACHE_SLOTS];
static int ncached;
static size_t cached_bytes, cache_limit = (size_t)-1;

static size_t limit(void) {
  if (cache_limit == (size_t)-1) {
    const char *e = getenv("WICK_CACHE_MB");
    cache_limit = (size_t)(e ? atol(e) : 256) << 20;
  }
  return cache_limit;
}

static size_t rounded(size_t bytes) {
  return bytes >= CACHE_MIN ? (bytes + 4095) & ~(size_t)4095 : (bytes + 63) & ~(size_t)63;
}

void *wk_host_alloc(size_t bytes) {
  size_t want = rounded(bytes ? bytes : 1);
  if (want >= CACHE_MIN) {
    pthread_mutex_lock(&mu);
    for (int i = ncached - 1; i >= 0; i--)
      if (cache[i].bytes == want) {
        void *p = cache[i].p;
        cached_bytes -= want;
        cache[i] = cache[--ncached];
        pthread_mutex_unlock(&mu);
        return p;
      }
    pthread_mutex_unlock(&mu);
  }
  return aligned_alloc(64, want);
}

void wk_host_free(void *p, size_t bytes) {
  if (!p) return;
  size_t have = rounded(bytes ? bytes : 1);
  if (have >= CACHE_MIN && have <= limit()) {
    // make room by dropping the oldest blocks: recent sizes are the likely next requests
    void *drop[CACHE_SLOTS];
    int ndrop = 0;
    pthread_mutex_lock(&mu);
    while (ncached && (ncached == CACHE_SLOTS || cached_bytes + have > limit())) {
      drop[ndrop++] = cache[0].p;
      cached_bytes -= cache[0].bytes;
      memmove(&cache[0], &cache[1], sizeof cache[0] * (size_t)--ncached);
    }
    cache[ncached].p = p;
    cache[ncached++].bytes = have;
    cached_bytes += have;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < ndrop; i++) free(drop[i]);
    return;
  }
  free(p);
}

// Returns cached blocks to the system (at exit, so leak checkers see nothing).
__attribute__((destructor)) static void host_cache_drain(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < ncached; i++) free(cache[i].p);
  ncached = 0;
  cached_bytes = 0;
  pthread_mutex_unlock(&mu);
}
