// File helpers: whole-file reads with a size cap, sibling paths.
#define _POSIX_C_SOURCE 200809L
#include "io/file.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/engine.h"

char *wk_read_file(const char *path, size_t max, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { wk_error(WK_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    wk_error(WK_ERR_IO, "%s: not a regular file", path);
    close(fd);
    return NULL;
  }
  if ((uint64_t)st.st_size > max) {
    wk_error(WK_ERR_IO, "%s: %lld bytes is more than the limit of %zu for this kind of file", path,
             (long long)st.st_size, max);
    close(fd);
    return NULL;
  }
  size_t n = (size_t)st.st_size, got = 0;
  char *buf = malloc(n + 1);
  if (!buf) { close(fd); wk_error(WK_ERR_OOM, "%s: out of memory reading %zu bytes", path, n); return NULL; }
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      wk_error(WK_ERR_IO, "%s: read failed after %zu of %zu bytes: %s", path, got, n, r ? strerror(errno) : "file shrank");
      free(buf);
      close(fd);
      return NULL;
    }
    got += (size_t)r;
  }
  close(fd);
  buf[n] = 0;
  *len = n;
  return buf;
}

char *wk_path_sibling(const char *path, const char *name) {
  const char *slash = strrchr(path, '/');
  size_t dlen = slash ? (size_t)(slash - path) + 1 : 0, nlen = strlen(name);
  char *out = malloc(dlen + nlen + 1);
  if (!out) { wk_error(WK_ERR_OOM, "out of memory"); return NULL; }
  memcpy(out, path, dlen);
  memcpy(out + dlen, name, nlen + 1);
  return out;
}

bool wk_is_dir(const char *path) {
  struct stat st;
  return !stat(path, &st) && S_ISDIR(st.st_mode);
}

bool wk_ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !memcmp(s + a - b, suffix, b);
}
