// A committed model directory rewritten at test time (f16 weights, a poisoned weight):
// its tensors, each through a map, saved as DIR/model.safetensors beside a copy of its
// config.json.
#pragma once
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include "fixtures.h"
#include "wick.h"

// map takes a tensor (the reference is its) and returns the one to save; false on any failure.
static inline bool test_model_copy(const char *src_dir, const char *dir, wk_tensor *(*map)(const char *name, wk_tensor *t)) {
  char path[2048];
  snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
  wk_st_file *f = wk_st_open(path);
  if (!f) return false;
  int n = wk_st_count(f);
  const char **names = calloc((size_t)n, sizeof *names);
  wk_tensor **ts = calloc((size_t)n, sizeof *ts);
  bool ok = names && ts;
  for (int i = 0; ok && i < n; i++) {
    names[i] = wk_st_name(f, i);
    ok = (ts[i] = map(names[i], wk_st_get(f, names[i]))) != NULL;
  }
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  ok = ok && wk_st_save(path, n, names, ts, NULL) == WK_OK;
  for (int i = 0; ts && i < n; i++) wk_tensor_free(ts[i]);
  free(ts);
  free(names);
  wk_st_close(f);
  size_t len = 0;
  snprintf(path, sizeof path, "%s/config.json", src_dir);
  char *cfg = test_slurp(path, &len);
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *out = cfg ? fopen(path, "wb") : NULL;
  ok = ok && out && fwrite(cfg, 1, len, out) == len;
  if (out && fclose(out)) ok = false;
  free(cfg);
  return ok;
}
