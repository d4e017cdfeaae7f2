// Model load time and resident memory (not a test): wk_model_load of a GGUF or
// safetensors model, the median of N loads with the file already in the page cache
// (cold-cache time excluded: the first load is not counted), and the process's
// resident memory after a load and after one forward pass (which touches every weight
// page) against the file's size. One JSON object.
//
//   ./build/load_bench [MODEL] [N]      (default: the fetched SmolLM2 GGUF, N = 9)
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "wick.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static double rss_mib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kib = 0;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) kib = atof(line + 6);
  if (f) fclose(f);
  return kib / 1024.0;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// The bytes the model occupies on disk: the file, or the weight files of a directory.
static double model_mib(const char *path) {
  struct stat st;
  if (stat(path, &st)) return 0;
  if (!S_ISDIR(st.st_mode)) return (double)st.st_size / 1048576.0;
  char p[4096];
  snprintf(p, sizeof p, "%s/model.safetensors", path);
  return stat(p, &st) ? 0 : (double)st.st_size / 1048576.0;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
  int n = argc > 2 ? atoi(argv[2]) : 9;
  if (n < 1 || n > 100) n = 9;
  double base = rss_mib();
  wk_model *m = wk_model_load(path);   // the first load reads the file into the page cache
  if (!m) { fprintf(stderr, "load_bench: %s\n", wk_last_error()); return 1; }
  double after_load = rss_mib() - base;
  int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  wk_scope_begin();
  wk_tensor *logits = wk_model_forward(m, wk_from_data(2, (int64_t[]){1, 8}, WK_I32, ids), 0);
  int ok = logits && wk_eval(1, &logits) == WK_OK;
  wk_scope_end();
  double after_forward = rss_mib() - base;
  wk_model_free(m);
  if (!ok) { fprintf(stderr, "load_bench: forward: %s\n", wk_last_error()); return 1; }
  double t[100];
  for (int i = 0; i < n; i++) {
    double t0 = now_ms();
    wk_model *k = wk_model_load(path);
    t[i] = now_ms() - t0;
    if (!k) { fprintf(stderr, "load_bench: %s\n", wk_last_error()); return 1; }
    wk_model_free(k);
  }
  qsort(t, (size_t)n, sizeof t[0], cmp_d);
  double file = model_mib(path);
  printf("{\"model\": \"%s\", \"load_ms\": %.2f, \"load_ms_p10\": %.2f, \"load_ms_p90\": %.2f, \"file_mib\": %.1f, "
         "\"rss_after_load_mib\": %.1f, \"rss_after_forward_mib\": %.1f, \"rss_over_file\": %.3f}\n",
         path, t[n / 2], t[n / 10], t[n - 1 - n / 10], file, after_load, after_forward,
         file > 0 ? after_forward / file : 0.0);
  return 0;
}
