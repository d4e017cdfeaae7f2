// Where the tests find the repository (committed fixtures and fetched models), and small
// helpers for reading them and making seeded inputs.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The repository root ("" or a path ending in '/'), from this header's own path:
// CMake compiles with absolute paths.
static inline const char *test_repo_root(void) {
  static char root[1024];
  if (!root[0]) {
    const char *src = __FILE__, *cut = strstr(src, "tests/fixtures.h");
    snprintf(root, sizeof root, "%.*s", cut ? (int)(cut - src) : 0, src);
  }
  return root;
}

// tests/fixtures/<dir>/<name>, or $WICK_FIXTURES/<dir>/<name> when that is set.
// The result lives in one of four rotating static buffers.
static inline const char *fixture_in(const char *dir, const char *name) {
  static char buf[4][2048];
  static int k;
  char *out = buf[k++ & 3];
  const char *env = getenv("WICK_FIXTURES");
  if (env) snprintf(out, sizeof buf[0], "%s/%s/%s", env, dir, name);
  else snprintf(out, sizeof buf[0], "%stests/fixtures/%s/%s", test_repo_root(), dir, name);
  return out;
}

// <dir>/<name> (a test's scratch directory, say), in one of four rotating static buffers.
static inline const char *test_path_in(const char *dir, const char *name) {
  static char buf[4][1024];
  static int k;
  char *out = buf[k++ & 3];
  snprintf(out, sizeof buf[0], "%s/%s", dir, name);
  return out;
}

// A whole file, NUL-terminated, its length in *len (caller frees); NULL if unreadable.
static inline char *test_slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
  fclose(f);
  if (s) s[n] = 0, *len = (size_t)n;
  return s;
}

// n floats uniform in [-1, 1) from a seed (xorshift; caller frees).
static inline float *test_randv(int64_t n, uint64_t seed) {
  float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; v && i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    v[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return v;
}
