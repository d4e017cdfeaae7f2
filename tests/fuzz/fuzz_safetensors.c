// libFuzzer target: the safetensors reader (src/io/safetensors.c). There is no
// from-memory entry point, so the input is written to a memfd and opened through
// /proc/self/fd/N (no files touched on disk). Every tensor is described and every
// loadable one fetched and read in full.
#define _GNU_SOURCE
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "wick/io.h"
#include "wick/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) return 0;
  size_t off = 0;
  while (off < size) {
    ssize_t w = write(fd, data + off, size - off);
    if (w <= 0) { close(fd); return 0; }
    off += (size_t)w;
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  wk_st_file *f = wk_st_open(path);
  if (f) {
    int n = wk_st_count(f);
    assert(n >= 0);
    for (int i = 0; i < n; i++) {
      wk_st_info info;
      assert(wk_st_tensor_info(f, i, &info) == WK_OK);
      const char *name = wk_st_name(f, i);
      assert(name && info.name && strcmp(name, info.name) == 0);
      assert(wk_st_find(f, name) == i);
      assert(info.ndim >= 0);
      wk_tensor *t = wk_st_get(f, name);
      if (info.loadable) assert(t);
      if (t) {
        const void *p = wk_tensor_data(t);
        assert(p || info.nbytes == 0);
        // touch every byte: the mapping / copy must cover the whole tensor
        volatile uint8_t acc = 0;
        for (uint64_t k = 0; k < info.nbytes; k++) acc ^= ((const uint8_t *)p)[k];
        (void)acc;
        wk_tensor_free(t);
      }
    }
    int m = wk_st_metadata_count(f);
    for (int i = 0; i < m; i++) {
      const char *k = wk_st_metadata_key(f, i);
      assert(k);
      assert(wk_st_metadata(f, k));
    }
    wk_st_close(f);
  }
  close(fd);
  return 0;
}
