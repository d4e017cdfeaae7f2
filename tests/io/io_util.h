// Helpers for the I/O tests: fixture paths, scratch directories, raw files.
#pragma once
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fixtures.h"

// tests/fixtures/io/<name>
static inline const char *fixture(const char *name) { return fixture_in("io", name); }

// A fresh directory under TMPDIR (or /tmp); the path is static storage.
static inline const char *scratch_dir(void) {
  static char dir[512];
  if (!dir[0]) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/wick_io_XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(2); }
  }
  return dir;
}

static inline const char *scratch(const char *name) {
  static char buf[4][1024];
  static int k;
  char *out = buf[k++ & 3];
  snprintf(out, 1024, "%s/%s", scratch_dir(), name);
  return out;
}

static inline int write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = n ? fwrite(data, 1, n, f) : 0;
  return fclose(f) || w != n ? -1 : 0;
}

// Reads a file into a malloc'd buffer; *n gets its size. NULL if it can't be read.
static inline char *read_bytes(const char *path, size_t *n) { return test_slurp(path, n); }

// Removes the scratch directory and its files (it holds no subdirectories).
static inline void scratch_cleanup(void) {
  DIR *d = opendir(scratch_dir());
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(scratch(e->d_name));
  closedir(d);
  rmdir(scratch_dir());
}

// Number of files in the scratch directory whose name contains `part`.
static inline int scratch_count(const char *part) {
  DIR *d = opendir(scratch_dir());
  int n = 0;
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, part) != NULL;
  closedir(d);
  return n;
}
