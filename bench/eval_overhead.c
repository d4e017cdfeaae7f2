// Where the wall time of a lazy evaluation goes, per call of a chained case: building
// the graph (the op calls), the host's work until the plan is enqueued (topological
// order, CSE, the plan key and cache lookup, binding, launch or graph replay:
// wk_eval_async) and waiting for the device (wk_sync). One line per case:
//   eval_overhead [cpu|cuda] [calls] [reps] [lora width]
// Cases: lora (1,1,n) r8 (n = 512 unless given), softmax (4,16,1024) and the LoRA
// written as primitive ops (wick bench's lora_ops), chained as in `wick bench`.
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include "wick.h"

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}
static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static wk_tensor *on(wk_device dev, wk_tensor *t) {
  wk_tensor *d = wk_to_device(t, dev);
  wk_tensor_free(t);
  if (d) wk_eval(1, &d);
  return d;
}

int main(int argc, char **argv) {
  wk_device dev = argc > 1 && !strcmp(argv[1], "cuda") ? WK_CUDA : WK_CPU;
  int calls = argc > 2 ? atoi(argv[2]) : 1000, reps = argc > 3 ? atoi(argv[3]) : 30;
  int n = argc > 4 ? atoi(argv[4]) : 512;
  if (!wk_device_available(dev) || calls < 1 || reps < 1 || n < 1) {
    fprintf(stderr, "usage: eval_overhead [cpu|cuda] [calls >= 1] [reps >= 1] [lora width >= 1] (device %s unavailable?)\n",
            wk_device_name(dev));
    return 1;
  }
  const float ws = 1.0f / sqrtf((float)n);   // keeps the chained outputs of order one
  wk_tensor *x = on(dev, wk_randn(3, (int64_t[]){1, 1, n}, WK_F32, 1));
  wk_tensor *w = on(dev, wk_mul_scalar(wk_randn(2, (int64_t[]){n, n}, WK_F32, 2), ws));
  wk_tensor *a = on(dev, wk_mul_scalar(wk_randn(2, (int64_t[]){n, 8}, WK_F32, 3), ws));
  wk_tensor *b = on(dev, wk_mul_scalar(wk_randn(2, (int64_t[]){8, n}, WK_F32, 4), 0.01f));
  wk_tensor *rows = on(dev, wk_randn(3, (int64_t[]){4, 16, 1024}, WK_F32, 5));
  char lname[40];
  snprintf(lname, sizeof lname, "lora (1,1,%d) r8", n);
  char oname[48];
  snprintf(oname, sizeof oname, "lora as ops (1,%d) r8", n);
  const char *names[3] = {lname, "softmax (4,16,1024)", oname};
  double *t[3];
  for (int k = 0; k < 3; k++) t[k] = malloc(sizeof(double) * (size_t)reps);
  for (int c = 0; c < 3; c++) {
    for (int it = -3; it < reps; it++) {
      double t0 = now_us();
      wk_scope_begin();
      wk_tensor *y = c == 1 ? rows : c == 2 ? wk_reshape(x, 2, (int64_t[]){1, n}) : x;
      for (int i = 0; i < calls; i++)
        y = c == 0 ? wk_lora(y, w, a, b, 2.0f)
          : c == 1 ? wk_softmax(y, -1)
                   : wk_add(wk_matmul(y, w), wk_mul_scalar(wk_matmul(wk_matmul(y, a), b), 2.0f));
      y = wk_keep(y);
      wk_scope_end();
      double t1 = now_us();
      wk_status s = wk_eval_async(1, &y);
      double t2 = now_us();
      if (!s) s = wk_sync();
      double t3 = now_us();
      if (s) { fprintf(stderr, "eval_overhead: %s: %s\n", names[c], wk_last_error()); return 1; }
      wk_tensor_free(y);
      if (it < 0) continue;
      t[0][it] = (t1 - t0) / calls, t[1][it] = (t2 - t1) / calls, t[2][it] = (t3 - t2) / calls;
    }
    for (int k = 0; k < 3; k++) qsort(t[k], (size_t)reps, sizeof(double), cmpd);
    printf("%-22s %s, %d calls: us per call (medians of %d): build %.3f, until enqueued %.3f, waiting %.3f\n",
           names[c], wk_device_name(dev), calls, reps, t[0][reps / 2], t[1][reps / 2], t[2][reps / 2]);
  }
  for (int k = 0; k < 3; k++) free(t[k]);
  return 0;
}
