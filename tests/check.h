// Minimal test harness: CHECK records failures; the runner prints "N passed, M failed".
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "wick.h"

static int check_pass, check_fail;

// GPU tests: leave main with 77 (ctest's SKIP_RETURN_CODE) when no CUDA device works.
#define SKIP_WITHOUT_CUDA()                                                \
  do {                                                                     \
    if (!wk_device_available(WK_CUDA)) {                                   \
      printf("skipped: no CUDA device (%s)\n", wk_last_error());           \
      return 77;                                                           \
    }                                                                      \
  } while (0)

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (cond) check_pass++;                                                \
    else {                                                                 \
      check_fail++;                                                        \
      fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, " [%s]\n", wk_last_error());                         \
    }                                                                      \
  } while (0)

// max |a - b| over n floats
static inline float max_abs_diff(const float *a, const float *b, int64_t n) {
  if (!a || !b) return NAN;
  float m = 0;
  for (int64_t i = 0; i < n; i++) {
    float d = fabsf(a[i] - b[i]);
    if (d > m || d != d) m = d;
  }
  return m;
}

// Reads a tensor as f32 into a malloc'd array (caller frees).
static inline float *read_all(wk_tensor *t) {
  int64_t n = wk_numel(t);
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (v && wk_tensor_read_f32(t, v, n)) { free(v); return NULL; }
  return v;
}

// max |a - b| / max |b| over two tensors' values (INFINITY when either can't be read
// or their sizes differ).
static inline float max_rel_diff(wk_tensor *a, wk_tensor *b) {
  float *x = read_all(a), *y = read_all(b), scale = 1e-6f;
  int64_t n = wk_numel(b);
  if (!x || !y || wk_numel(a) != n) { free(x); free(y); return INFINITY; }
  for (int64_t i = 0; i < n; i++) scale = fmaxf(scale, fabsf(y[i]));
  float d = max_abs_diff(x, y, n) / scale;
  free(x);
  free(y);
  return d;
}

static inline int check_report(void) {
  printf("%d passed, %d failed\n", check_pass, check_fail);
  return check_fail ? 1 : 0;
}
