// Where the tests find the repository: committed fixtures and fetched models.
#pragma once
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
