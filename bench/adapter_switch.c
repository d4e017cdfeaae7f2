#define _POSIX_C_SOURCE 200809L
// Adapter switch time in the registry: two LoRA adapters (r=8, all-linear) on one
// SmolLM2-135M; time wk_registry_activate between them, and one decode-sized forward
// with each active to show the switch took effect (the logits differ).
//
//   build/adapter_switch_bench [MODEL]   -> one JSON line: median / p10 / p90 microseconds
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
#include "wick.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return 1e6 * (double)ts.tv_sec + 1e-3 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
  wk_model *m = wk_model_load(path);
  wk_adapter_registry *r = m ? wk_registry_new(m) : NULL;
  if (!r) { fprintf(stderr, "adapter_switch: %s\n", wk_last_error()); return 1; }
  wk_lora_config c = wk_lora_defaults();
  wk_lora_parse_targets("all-linear", &c.targets);
  for (int k = 0; k < 2; k++) {
    c.seed = (uint64_t)k + 1;
    wk_adapter *a = wk_adapter_new(m, &c);
    // B nonzero so the two adapters change the logits differently
    wk_tensor *ps[512];
    int n = wk_adapter_params(a, ps);
    for (int i = 1; i < n; i += 2) {
      wk_tensor *b = wk_keep(wk_randn(2, wk_shape(ps[i]), WK_F32, (uint64_t)(100 * k + i)));
      wk_eval(1, &b);
      wk_adapter_set_param(a, i, b);
      wk_tensor_free(b);
    }
    if (wk_registry_add(r, k ? "b" : "a", a)) { fprintf(stderr, "adapter_switch: %s\n", wk_last_error()); return 1; }
  }
  enum { N = 2001 };
  static double t[N];
  for (int i = 0; i < N; i++) {
    double t0 = now_us();
    wk_registry_activate(r, i & 1 ? "b" : "a");
    t[i] = now_us() - t0;
  }
  qsort(t, N, sizeof *t, cmp);
  int32_t id = 1;
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 1}, WK_I32, &id);
  float l[2];
  for (int k = 0; k < 2; k++) {
    wk_registry_activate(r, k ? "b" : "a");
    wk_tensor *lg = wk_model_forward(m, ids, 0);
    const float *p = wk_tensor_data(lg);
    l[k] = p ? p[0] : NAN;
    wk_tensor_free(lg);
  }
  printf("{\"name\": \"adapter_switch/r8_all_linear\", \"device\": \"cpu\", \"us\": %.3f, \"p10\": %.3f, \"p90\": %.3f, "
         "\"iters\": %d, \"adapter_bytes\": %zu, \"logit0_a\": %.5f, \"logit0_b\": %.5f}\n",
         t[N / 2], t[N / 10], t[N * 9 / 10], N, wk_adapter_bytes(wk_registry_get(r, 0)), (double)l[0], (double)l[1]);
  wk_tensor_free(ids);
  wk_registry_free(r);
  wk_model_free(m);
  return 0;
}
