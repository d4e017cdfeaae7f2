// File helpers: whole-file reads with a size cap, sibling paths, atomic writes.
#define _POSIX_C_SOURCE 200809L
#include "io/file.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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

static bool write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
    ssize_t w = write(fd, c, chunk);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) { if (!w) errno = EIO; return false; }
    c += w;
    n -= (size_t)w;
  }
  return true;
}

void wk_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) { fsync(fd); close(fd); }
}

void wk_fsync_parent(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (dir) wk_fsync_dir(dir);
  free(dir);
}

int wk_write_atomic(const char *path, int n, const void *const *data, const size_t *len) {
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 12);
  if (!tmp) return wk_error(WK_ERR_OOM, "%s: out of memory", path);
  snprintf(tmp, plen + 12, "%s.tmp.XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    wk_status s = wk_error(WK_ERR_IO, "%s: can't create a temporary file beside it: %s", path, strerror(errno));
    free(tmp);
    return s;
  }
  // mkstemp makes the file 0600: give it the target's mode, or the usual 0644.
  struct stat st;
  fchmod(fd, !stat(path, &st) ? (st.st_mode & 07777) : 0644);
  const char *step = "write";
  bool ok = true;
  for (int i = 0; ok && i < n; i++) ok = !len[i] || write_all(fd, data[i], len[i]);
  if (ok) { step = "fsync"; ok = !fsync(fd); }
  int err = errno;
  if (close(fd) && ok) { step = "close"; ok = false; err = errno; }
  if (ok) { step = "rename"; ok = !rename(tmp, path); err = errno; }
  wk_status s = WK_OK;
  if (ok) wk_fsync_parent(path);
  else {
    unlink(tmp);
    s = wk_error(WK_ERR_IO, "%s: not saved: %s of the temporary file failed: %s", path, step, strerror(err));
  }
  free(tmp);
  return s;
}

char *wk_path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s%s%s", dir, *dir && dir[strlen(dir) - 1] != '/' ? "/" : "", name);
  return p;
}

int wk_mkdirs(const char *dir) {
  if (!dir || !*dir) return wk_error(WK_ERR_ARG, "an output directory path is empty");
  char *p = strdup(dir);
  if (!p) return wk_error(WK_ERR_OOM, "%s: out of memory", dir);
  for (char *c = p + 1;; c++) {
    if (*c && *c != '/') continue;
    char keep = *c;
    *c = 0;
    struct stat st;
    if (mkdir(p, 0755) && errno != EEXIST) {
      wk_status s = wk_error(WK_ERR_IO, "%s: can't create directory '%s': %s", dir, p, strerror(errno));
      free(p);
      return s;
    }
    if (stat(p, &st) || !S_ISDIR(st.st_mode)) {
      wk_status s = wk_error(WK_ERR_IO, "%s: '%s' exists and is not a directory", dir, p);
      free(p);
      return s;
    }
    *c = keep;
    if (!keep) break;
  }
  free(p);
  return WK_OK;
}
