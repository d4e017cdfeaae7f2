// Finite-difference gradient checks for any op.
//
// loss(in) = sum_i f(in)_i * r_i with a fixed random r, summed on the host in
// double so that only f's own f32 rounding enters the numeric derivative.
// Central differences with step eps: truncation error O(eps^2 * f'''), rounding
// error ~ 1e-7 * |f| * sqrt(N) / eps. With eps = 1e-2 and O(1) values both stay
// well under the default tolerance |analytic - numeric| <= atol + rtol * |numeric|
// (atol 5e-3, rtol 1e-2): a wrong VJP is off by O(1), far outside it.
#pragma once
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "engine/engine.h"

// Coverage: the ops of every forward graph checked here are recorded, and written at
// exit to $WICK_GRADCOV/<pid>.txt (one name a line) when that is set; ctest sets it, and
// test_grad_coverage then checks that every differentiable op was in some graph.
static bool gc_covered[WK_OP_COUNT];
static void gc_write_coverage(void) {
  const char *dir = getenv("WICK_GRADCOV");
  char path[4096];
  if (!dir || snprintf(path, sizeof path, "%s/%d.txt", dir, (int)getpid()) >= (int)sizeof path) return;
  mkdir(dir, 0777);   // the first writer makes it (ctest's gradcov_clean removed the last run's)
  FILE *f = fopen(path, "w");
  if (!f) return;
  for (int op = 0; op < WK_OP_COUNT; op++)
    if (gc_covered[op]) fprintf(f, "%s\n", wk_ops[op].name);
  fclose(f);
}
static void gc_record(wk_tensor *y) {
  static bool registered;
  if (!registered) registered = true, atexit(gc_write_coverage);
  enum { CAP = 4096 };
  wk_tensor *stack[CAP], *seen[CAP];
  int sp = 0, ns = 0;
  stack[sp++] = y;
  while (sp) {
    wk_tensor *t = stack[--sp];
    bool again = false;
    for (int k = 0; k < ns && !again; k++) again = seen[k] == t;
    if (again || t->nin == 0 || ns == CAP) continue;   // leaves and detached results end a path
    seen[ns++] = t;
    gc_covered[t->op] = true;
    for (int q = 0; q < t->nin && sp < CAP; q++) if (t->in[q]) stack[sp++] = t->in[q];
  }
}

typedef wk_tensor *(*gc_fn)(wk_tensor *const *in, void *ctx);

static double gc_loss(gc_fn f, void *ctx, wk_tensor *const *in, const float *r) {
  wk_scope_begin();
  wk_tensor *y = f(in, ctx);
  double acc = 0;
  float *v = y ? read_all(y) : NULL;
  if (v) for (int64_t i = 0; i < wk_numel(y); i++) acc += (double)v[i] * r[i];
  else acc = NAN;
  free(v);
  wk_scope_end();
  return acc;
}

// in[]: realized, contiguous f32 leaves. Checks the gradient of every input whose
// bit is set in `mask`. Returns the number of mismatching elements.
static int gradcheck_tol(const char *name, gc_fn f, void *ctx, int n, wk_tensor **in, unsigned mask, float atol,
                         float rtol) {
  int bad = 0;
  wk_scope_begin();
  for (int i = 0; i < n; i++) wk_set_trainable(in[i], (mask >> i) & 1);
  wk_tensor *y = f(in, ctx);
  if (!y) { CHECK(0, "%s: forward failed", name); wk_scope_end(); return 1; }
  gc_record(y);
  wk_tensor *r = wk_randn(wk_ndim(y), wk_shape(y), WK_F32, 1234);
  float *rv = read_all(r);
  wk_tensor *loss = wk_sum(wk_mul(y, r), 0, NULL, 0);
  wk_tensor *grads[8] = {0};
  wk_tensor *params[8];
  int np = 0;
  for (int i = 0; i < n; i++) if ((mask >> i) & 1) params[np++] = in[i];
  wk_status st = wk_grad(loss, np, params, grads);
  CHECK(st == WK_OK, "%s: wk_grad failed", name);
  if (st) { free(rv); wk_scope_end(); return 1; }
  for (int k = 0; k < np; k++) wk_keep(grads[k]);
  wk_eval(np, grads);
  for (int k = 0; k < np; k++) {
    float *ga = read_all(grads[k]);
    float *x = (float *)wk_tensor_data(params[k]);
    if (!ga || !x) { CHECK(0, "%s: gradient %d unreadable", name, k); bad++; free(ga); continue; }
    int64_t m = wk_numel(params[k]);
    float worst = 0;
    int64_t worst_i = 0;
    double worst_num = 0;
    for (int64_t j = 0; j < m; j++) {
      float old = x[j], eps = 1e-2f * (fabsf(old) > 1 ? fabsf(old) : 1);
      x[j] = old + eps;
      double lp = gc_loss(f, ctx, in, rv);
      x[j] = old - eps;
      double lm = gc_loss(f, ctx, in, rv);
      x[j] = old;
      double num = (lp - lm) / (2.0 * (double)eps);
      float err = (float)fabs((double)ga[j] - num);
      if (err > atol + rtol * (float)fabs(num) || err != err) {
        bad++;
        if (err > worst || err != err) { worst = err; worst_i = j; worst_num = num; }
      }
    }
    CHECK(bad == 0, "%s: d/d input %d: %d elements off, worst [%lld] analytic %g numeric %g", name, k, bad,
          (long long)worst_i, (double)ga[worst_i], worst_num);
    free(ga);
  }
  for (int k = 0; k < np; k++) wk_tensor_free(grads[k]);
  for (int i = 0; i < n; i++) wk_set_trainable(in[i], 0);
  free(rv);
  wk_scope_end();
  return bad;
}

static int gradcheck(const char *name, gc_fn f, void *ctx, int n, wk_tensor **in, unsigned mask) {
  return gradcheck_tol(name, f, ctx, n, in, mask, 5e-3f, 1e-2f);
}

// A realized f32 tensor of the given shape with values uniform in [lo, hi).
static inline wk_tensor *gc_input(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed) {
  wk_tensor *t = wk_rand(ndim, shape, WK_F32, lo, hi, seed);
  wk_eval(1, &t);
  return t;
}
