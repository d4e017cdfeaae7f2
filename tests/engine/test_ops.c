// Engine ops: forward values against double-precision references, gradient
// checks (broadcast and non-contiguous inputs included), views, errors.
#include <string.h>
#include "gradcheck.h"

#define SHAPE(...) (int64_t[]){__VA_ARGS__}

// ---- elementwise forward against libm in double ----
typedef struct { const char *name; wk_tensor *(*f)(wk_tensor *); double (*ref)(double); float lo, hi, tol; } unary_case;

static double r_neg(double x) { return -x; }
static double r_square(double x) { return x * x; }
static double r_rsqrt(double x) { return 1 / sqrt(x); }
static double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_relu(double x) { return x > 0 ? x : 0; }
static double r_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double r_gelu_tanh(double x) { return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
static double r_silu(double x) { return x / (1 + exp(-x)); }

// Tolerances: the vectorized exp/log/tanh/erf are within a few ulp (relative
// 1e-6) plus erf's 1.5e-7 absolute error; inputs stay O(10).
static const unary_case unary_cases[] = {
    {"neg", wk_neg, r_neg, -5, 5, 0}, {"abs", wk_abs, fabs, -5, 5, 0},
    {"exp", wk_exp, exp, -20, 20, 2e-6f}, {"log", wk_log, log, 1e-3f, 100, 2e-6f},
    {"sqrt", wk_sqrt, sqrt, 0, 100, 1e-6f}, {"rsqrt", wk_rsqrt, r_rsqrt, 1e-2f, 100, 1e-6f},
    {"square", wk_square, r_square, -5, 5, 1e-6f}, {"tanh", wk_tanh, tanh, -6, 6, 2e-6f},
    {"sigmoid", wk_sigmoid, r_sigmoid, -10, 10, 2e-6f}, {"relu", wk_relu, r_relu, -5, 5, 0},
    {"gelu", wk_gelu, r_gelu, -6, 6, 1e-6f}, {"gelu_tanh", wk_gelu_tanh, r_gelu_tanh, -6, 6, 2e-6f},
    {"silu", wk_silu, r_silu, -10, 10, 2e-6f},
};

static void test_unary_forward(void) {
  for (size_t c = 0; c < sizeof unary_cases / sizeof *unary_cases; c++) {
    const unary_case *u = &unary_cases[c];
    wk_scope_begin();
    wk_tensor *x = gc_input(1, SHAPE(3001), u->lo, u->hi, 7 + c);
    float *xv = read_all(x), *yv = read_all(u->f(x));
    double worst = 0;
    for (int i = 0; i < 3001; i++) {
      double ref = u->ref(xv[i]), err = fabs(yv[i] - ref) / (fabs(ref) > 1 ? fabs(ref) : 1);
      if (err > worst || err != err) worst = err;
    }
    CHECK(worst <= u->tol + 1e-7, "%s: relative error %g > %g", u->name, worst, (double)u->tol);
    free(xv); free(yv);
    wk_scope_end();
  }
  // special values
  wk_scope_begin();
  float sp[5] = {0.0f, -1.0f, INFINITY, 1e-30f, 100.0f};
  wk_tensor *x = wk_from_data(1, SHAPE(5), WK_F32, sp);
  float *l = read_all(wk_log(x)), *e = read_all(wk_exp(x));
  CHECK(isinf(l[0]) && l[0] < 0 && isnan(l[1]) && isinf(l[2]), "log(0), log(-1), log(inf): %g %g %g", l[0], l[1], l[2]);
  CHECK(fabsf(l[3] - logf(1e-30f)) < 1e-4f, "log(1e-30) = %g", l[3]);
  CHECK(e[0] == 1.0f && e[4] > 1e38f, "exp(0) = %g, exp(100) = %g", e[0], e[4]);
  free(l); free(e);
  wk_scope_end();
}

static void test_binary_broadcast(void) {
  wk_scope_begin();
  wk_tensor *a = gc_input(3, SHAPE(2, 3, 4), -2, 2, 1), *b = gc_input(2, SHAPE(1, 4), 0.5f, 2, 2);
  float *av = read_all(a), *bv = read_all(b);
  wk_tensor *ops[6] = {wk_add(a, b), wk_sub(a, b), wk_mul(a, b), wk_div(a, b), wk_maximum(a, b), wk_minimum(a, b)};
  for (int k = 0; k < 6; k++) {
    CHECK(wk_ndim(ops[k]) == 3 && wk_dim(ops[k], 0) == 2 && wk_dim(ops[k], 2) == 4, "broadcast shape %d", k);
    float *v = read_all(ops[k]);
    int bad = 0;
    for (int i = 0; i < 24; i++) {
      float x = av[i], y = bv[i % 4];
      float ref = k == 0 ? x + y : k == 1 ? x - y : k == 2 ? x * y : k == 3 ? x / y : k == 4 ? fmaxf(x, y) : fminf(x, y);
      bad += v[i] != ref;
    }
    CHECK(bad == 0, "binary op %d: %d wrong elements", k, bad);
    free(v);
  }
  wk_tensor *c = gc_input(2, SHAPE(3, 5), 0, 1, 3);
  wk_clear_error();
  CHECK(wk_add(a, c) == NULL, "[2,3,4] + [3,5] must fail");
  CHECK(strstr(wk_last_error(), "[2,3,4]") && strstr(wk_last_error(), "[3,5]"), "message names both shapes");
  // comparisons and where
  wk_tensor *gt = wk_gt(a, wk_zeros(0, NULL, WK_F32));
  float *g = read_all(wk_where(gt, a, wk_neg(a)));
  int bad = 0;
  for (int i = 0; i < 24; i++) bad += g[i] != fabsf(av[i]);
  CHECK(bad == 0, "where(x > 0, x, -x) == |x|");
  free(g); free(av); free(bv);
  wk_scope_end();
}

static void test_creation(void) {
  wk_scope_begin();
  float *z = read_all(wk_full(2, SHAPE(3, 3), WK_F32, 2.5));
  CHECK(z[0] == 2.5f && z[8] == 2.5f, "full");
  float *ar = read_all(wk_arange(2, 10, 2, WK_F32));
  CHECK(ar[0] == 2 && ar[3] == 8, "arange");
  wk_tensor *ai = wk_arange(0, 5, 1, WK_I32);
  CHECK(wk_tensor_dtype(ai) == WK_I32 && ((const int32_t *)wk_tensor_data(ai))[4] == 4, "arange i32");
  int64_t n = 200000;
  float *r1 = read_all(wk_randn(1, &n, WK_F32, 99)), *r2 = read_all(wk_randn(1, &n, WK_F32, 99));
  float *r3 = read_all(wk_randn(1, &n, WK_F32, 100));
  double m = 0, v = 0;
  for (int64_t i = 0; i < n; i++) m += r1[i];
  m /= (double)n;
  for (int64_t i = 0; i < n; i++) v += (r1[i] - m) * (r1[i] - m);
  v /= (double)n;
  // 200k samples: the mean's std error is 0.0022, the variance's 0.0032
  CHECK(fabs(m) < 0.01 && fabs(v - 1) < 0.02, "randn mean %g var %g", m, v);
  CHECK(!memcmp(r1, r2, (size_t)n * 4) && memcmp(r1, r3, (size_t)n * 4), "randn seeding");
  float *u = read_all(wk_rand(1, &n, WK_F32, -1, 3, 5));
  float lo = 10, hi = -10;
  for (int64_t i = 0; i < n; i++) { lo = fminf(lo, u[i]); hi = fmaxf(hi, u[i]); }
  CHECK(lo >= -1 && hi < 3 && lo < -0.99f && hi > 2.99f, "rand range [%g, %g]", lo, hi);
  CHECK(wk_zeros(2, SHAPE(2, -1), WK_F32) == NULL && strstr(wk_last_error(), "negative"), "negative dim rejected");
  free(z); free(ar); free(r1); free(r2); free(r3); free(u);
  wk_scope_end();
}

static void test_dtypes(void) {
  wk_scope_begin();
  float v[6] = {1.0f, -2.5f, 3.14159f, 65504.0f, 1e-6f, 300.0f};
  wk_tensor *x = wk_from_data(1, SHAPE(6), WK_F32, v);
  float *h = read_all(wk_cast(wk_cast(x, WK_F16), WK_F32)), *b = read_all(wk_cast(wk_cast(x, WK_BF16), WK_F32));
  int bad = 0;
  for (int i = 0; i < 6; i++) {
    bad += fabsf(h[i] - v[i]) > fabsf(v[i]) * 1e-3f + 6e-8f;   // f16: 11-bit mantissa
    bad += fabsf(b[i] - v[i]) > fabsf(v[i]) * 4e-3f;           // bf16: 8-bit mantissa
  }
  CHECK(bad == 0, "f16/bf16 round trips");
  wk_tensor *xb = wk_cast(x, WK_BF16);
  float *s = read_all(wk_add(xb, xb));
  CHECK(wk_tensor_dtype(wk_add(xb, xb)) == WK_BF16 && s[0] == 2.0f && s[1] == -5.0f, "bf16 add");
  CHECK(wk_add(x, xb) == NULL && strstr(wk_last_error(), "dtype"), "mixed dtypes rejected");
  wk_tensor *ids = wk_arange(0, 3, 1, WK_I32);
  CHECK(wk_exp(ids) == NULL && strstr(wk_last_error(), "i32"), "float op on i32 rejected");
  free(h); free(b); free(s);
  wk_scope_end();
}

// ---- reductions ----
static void test_reductions(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(3, SHAPE(3, 4, 5), -3, 3, 11);
  float *xv = read_all(x);
  for (int ax = 0; ax < 3; ax++) {
    float *s = read_all(wk_sum(x, 1, &ax, 0)), *mx = read_all(wk_max(x, 1, &ax, 1));
    float *mean = read_all(wk_mean(x, 1, &ax, 0));
    wk_tensor *am = wk_argmax(x, ax, 0);
    const int32_t *ai = wk_tensor_data(am);
    int64_t sh[3] = {3, 4, 5}, st[3] = {20, 5, 1};
    int bad = 0, k = 0;
    for (int i = 0; i < 60; i++) {
      int64_t c[3] = {i / 20, i / 5 % 4, i % 5};
      if (c[ax] != 0) continue;
      double acc = 0, best = -1e30;
      int arg = 0;
      for (int j = 0; j < sh[ax]; j++) {
        float v = xv[i + j * st[ax]];
        acc += v;
        if (v > best) { best = v; arg = j; }
      }
      bad += fabs(s[k] - acc) > 1e-5 || fabs(mean[k] - acc / (double)sh[ax]) > 1e-6 || mx[k] != (float)best || ai[k] != arg;
      k++;
    }
    CHECK(bad == 0, "reductions along axis %d: %d wrong", ax, bad);
    free(s); free(mx); free(mean);
  }
  int both[2] = {0, 2};
  float *s02 = read_all(wk_sum(x, 2, both, 0));
  double ref = 0;
  for (int i = 0; i < 60; i++) if (i / 5 % 4 == 1) ref += xv[i];
  CHECK(fabs(s02[1] - ref) < 1e-4, "sum over axes 0 and 2");
  CHECK(fabsf(wk_item(wk_sum(x, 0, NULL, 0))) < 200, "sum over all");
  wk_tensor *big = wk_ones(2, SHAPE(3, 100000), WK_F32);
  float *bs = read_all(wk_sum(big, 1, (int[]){1}, 0));
  CHECK(bs[0] == 100000.0f && bs[2] == 100000.0f, "long rows sum exactly: %g", bs[0]);
  CHECK(wk_sum(x, 1, (int[]){3}, 0) == NULL && strstr(wk_last_error(), "axis 3"), "bad axis named");
  free(s02); free(bs); free(xv);
  wk_scope_end();
}

// wk_top1: each row's max, sum of exp(x - max) and first argmax, against a direct
// computation; ties keep the first index; NaN makes the max NaN; a transposed view and
// bf16 input are read as they are.
static void test_top1(void) {
  wk_scope_begin();
  enum { R = 4, V = 300 };
  float x[R * V];
  uint64_t st = 99;
  for (int i = 0; i < R * V; i++) x[i] = (float)((st = st * 6364136223846793005ull + 1442695040888963407ull) >> 40) / 1e6f - 8;
  x[1 * V + 7] = x[1 * V + 250] = 50;   // a tie: 7 wins
  x[2 * V + 299] = 60;                  // the last one
  x[3 * V + 3] = NAN;
  float *t = read_all(wk_top1(wk_from_data(2, SHAPE(R, V), WK_F32, x)));
  int bad = 0;
  for (int r = 0; r < 3; r++) {
    float m = -INFINITY;
    int at = 0;
    for (int i = 0; i < V; i++) if (x[r * V + i] > m) m = x[r * V + i], at = i;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)x[r * V + i] - m);
    bad += t[3 * r] != m || fabs(t[3 * r + 1] - sum) > 1e-5 * sum || t[3 * r + 2] != (float)at;
  }
  CHECK(bad == 0 && t[5] == 7 && t[8] == 299, "top1: max, sum of exp and first argmax of 3 rows (%d wrong)", bad);
  CHECK(isnan(t[9]), "top1: a row with a NaN has max NaN (got %g)", (double)t[9]);
  wk_tensor *xt = wk_transpose(wk_from_data(2, SHAPE(V, R), WK_F32, x), 0, 1);   // [R, V] with strides [1, R]
  float *tt = read_all(wk_top1(xt)), *ref = read_all(wk_top1(wk_contiguous(xt)));
  CHECK(!memcmp(tt, ref, sizeof(float) * 3 * R), "top1 of a transposed view equals that of its copy");
  float *tb = read_all(wk_top1(wk_cast(wk_from_data(2, SHAPE(R, V), WK_F32, x), WK_BF16)));
  CHECK(tb[2] == t[2] && tb[5] == 7, "top1 of bf16 rows");
  CHECK(!wk_top1(wk_from_data(1, SHAPE(1), WK_I32, (int32_t[]){1})) && strstr(wk_last_error(), "top1"),
        "top1 of i32: an error naming it");
  free(t); free(tt); free(ref); free(tb);
  wk_scope_end();
}

// wk_top1 of rows that are not finite, its index against wk_argmax's: a NaN anywhere
// gives max and sum NaN at the first NaN (a larger value before it, a second NaN after
// it); an all -inf row counts its V values as equal (sum V, -log V the log-probability
// of index 0); +inf values as well (sum 2 for two of them, the first index); a row of
// NaN only; -inf beside finite values adds nothing.
static void test_top1_nonfinite(void) {
  wk_scope_begin();
  enum { R = 5, V = 6 };
  const float I = INFINITY;
  float x[R * V] = {1, 9, NAN, 3, NAN, 2,
                    -I, -I, -I, -I, -I, -I,
                    1, I, -I, 4, I, 2,
                    NAN, NAN, NAN, NAN, NAN, NAN,
                    -I, 0, -I, 0, -1, -I};
  wk_tensor *xt = wk_from_data(2, SHAPE(R, V), WK_F32, x);
  float *t = read_all(wk_top1(xt));
  int32_t *am = (int32_t *)wk_tensor_data(wk_argmax(xt, 1, 0));
  CHECK(isnan(t[0]) && isnan(t[1]) && t[2] == 2, "top1 of a row with NaN: max %g sum %g index %g (want NaN NaN 2)",
        (double)t[0], (double)t[1], (double)t[2]);
  CHECK(t[3] == -I && t[4] == V && t[5] == 0, "top1 of an all -inf row: max %g sum %g index %g (want -inf 6 0)",
        (double)t[3], (double)t[4], (double)t[5]);
  CHECK(t[6] == I && t[7] == 2 && t[8] == 1, "top1 of a row with two +inf: max %g sum %g index %g (want inf 2 1)",
        (double)t[6], (double)t[7], (double)t[8]);
  CHECK(isnan(t[9]) && isnan(t[10]) && t[11] == 0, "top1 of an all-NaN row: max %g sum %g index %g (want NaN NaN 0)",
        (double)t[9], (double)t[10], (double)t[11]);
  double s4 = 2 + exp(-1.0);
  CHECK(t[12] == 0 && fabs(t[13] - s4) <= 1e-6 * s4 && t[14] == 1, "top1 of a row with -inf and ties: %g %g %g",
        (double)t[12], (double)t[13], (double)t[14]);
  for (int r = 0; am && r < R; r++)
    CHECK(t[3 * r + 2] == (float)am[r], "top1's index of row %d, %g, is wk_argmax's %d", r, (double)t[3 * r + 2], am[r]);
  CHECK(am != NULL, "argmax of the rows");
  free(t);
  wk_scope_end();
}

// ---- views ----
static void test_views(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(3, SHAPE(2, 3, 4), -1, 1, 21);
  float *xv = read_all(x);
  const float *base = wk_tensor_data(x);
  wk_tensor *r = wk_reshape(x, 2, SHAPE(6, -1));
  CHECK(wk_dim(r, 1) == 4 && wk_is_evaluated(r) && wk_tensor_data(r) == base, "reshape of a contiguous tensor is a view");
  wk_tensor *t = wk_transpose(x, 0, 2);
  CHECK(wk_dim(t, 0) == 4 && !wk_is_contiguous(t), "transpose is a strided view");
  float *tv = read_all(wk_contiguous(t));
  int bad = 0;
  for (int i = 0; i < 4; i++) for (int j = 0; j < 3; j++) for (int k = 0; k < 2; k++)
    bad += tv[(i * 3 + j) * 2 + k] != xv[(k * 3 + j) * 4 + i];
  CHECK(bad == 0, "transpose values");
  wk_tensor *s = wk_slice(x, 2, 1, 4, 2); // columns 1, 3
  float *sv = read_all(s);
  CHECK(wk_dim(s, 2) == 2 && sv[0] == xv[1] && sv[1] == xv[3] && sv[2] == xv[5], "strided slice");
  wk_tensor *rs = wk_reshape(t, 1, SHAPE(24)); // needs a copy
  float *rv = read_all(rs);
  CHECK(rv[1] == xv[12] && rv[2] == xv[4], "reshape of a transpose copies in logical order");
  wk_tensor *bc = wk_broadcast_to(wk_slice(x, 0, 0, 1, 1), 3, SHAPE(5, 3, 4));
  float *bv = read_all(bc);
  CHECK(bv[12 * 4 + 5] == xv[5], "broadcast_to");
  wk_tensor *e = wk_squeeze(wk_expand_dims(x, 1), 1);
  CHECK(wk_ndim(e) == 3 && wk_dim(e, 1) == 3, "expand_dims / squeeze");
  // permute then reshape then elementwise: lazy views of pending nodes
  wk_tensor *p = wk_permute(wk_exp(x), (int[]){2, 0, 1});
  float *pv = read_all(wk_add_scalar(p, 0));
  CHECK(fabsf(pv[1] - expf(xv[4])) < 1e-6f, "view of a pending node");
  CHECK(wk_reshape(x, 2, SHAPE(5, 5)) == NULL && strstr(wk_last_error(), "[2,3,4]"), "bad reshape named");
  CHECK(wk_permute(x, (int[]){0, 0, 1}) == NULL, "bad permutation rejected");
  free(xv); free(tv); free(sv); free(rv); free(bv); free(pv);
  wk_scope_end();
}

static void test_concat_split_pad(void) {
  wk_scope_begin();
  wk_tensor *a = gc_input(2, SHAPE(2, 3), 0, 1, 31), *b = gc_input(2, SHAPE(2, 2), 0, 1, 32);
  float *av = read_all(a), *bv = read_all(b);
  wk_tensor *c = wk_concat(2, (wk_tensor *[]){a, b}, 1);
  float *cv = read_all(c);
  CHECK(wk_dim(c, 1) == 5 && cv[3] == bv[0] && cv[5] == av[3] && cv[9] == bv[3], "concat axis 1");
  wk_tensor *parts[2];
  CHECK(wk_split(c, 1, 2, SHAPE(3, 2), parts) == WK_OK, "split");
  float *p1 = read_all(parts[1]);
  CHECK(p1[0] == bv[0] && p1[3] == bv[3], "split values");
  wk_tensor *pd = wk_pad(a, SHAPE(1, 0), SHAPE(0, 2), -1.0f);
  float *pv = read_all(pd);
  CHECK(wk_dim(pd, 0) == 3 && wk_dim(pd, 1) == 5 && pv[0] == -1 && pv[5] == av[0] && pv[9] == -1, "pad");
  CHECK(wk_concat(2, (wk_tensor *[]){a, b}, 0) == NULL && strstr(wk_last_error(), "concat"), "concat mismatch");
  wk_tensor *many[11];
  for (int i = 0; i < 11; i++) many[i] = wk_full(1, SHAPE(1), WK_F32, i);
  float *mv = read_all(wk_concat(11, many, 0));
  CHECK(mv[0] == 0 && mv[10] == 10 && mv[7] == 7, "concat of 11 tensors");
  free(av); free(bv); free(cv); free(p1); free(pv); free(mv);
  wk_scope_end();
}

// ---- matmul ----
static void ref_matmul(const float *a, const float *b, float *c, int M, int K, int N) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double acc = 0;
      for (int k = 0; k < K; k++) acc += (double)a[i * K + k] * b[k * N + j];
      c[i * N + j] = (float)acc;
    }
}

static void test_matmul(void) {
  wk_scope_begin();
  int shapes[][3] = {{1, 7, 5}, {17, 33, 9}, {64, 64, 64}, {3, 300, 2}, {130, 70, 129}};
  for (int s = 0; s < 5; s++) {
    int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
    wk_tensor *a = gc_input(2, SHAPE(M, K), -1, 1, 40 + s), *b = gc_input(2, SHAPE(K, N), -1, 1, 50 + s);
    float *av = read_all(a), *bv = read_all(b), *ref = malloc(sizeof(float) * (size_t)(M * N));
    ref_matmul(av, bv, ref, M, K, N);
    float *c = read_all(wk_matmul(a, b));
    // the transposed path: (b^T a^T)^T
    float *ct = read_all(wk_transpose(wk_matmul_t(b, 1, a, 1), 0, 1));
    // f32 sums of K products of |x| < 1: error below K * 2^-24 * K
    float tol = 1e-6f * (float)K;
    CHECK(max_abs_diff(c, ref, M * N) < tol, "matmul %dx%dx%d: %g", M, K, N, max_abs_diff(c, ref, M * N));
    CHECK(max_abs_diff(ct, ref, M * N) < tol, "matmul transposed %dx%dx%d: %g", M, K, N, max_abs_diff(ct, ref, M * N));
    free(av); free(bv); free(ref); free(c); free(ct);
  }
  // batched with broadcast batch axes: [2,1,3,4] @ [3,4,5] -> [2,3,3,5]
  wk_tensor *a = gc_input(4, SHAPE(2, 1, 3, 4), -1, 1, 60), *b = gc_input(3, SHAPE(3, 4, 5), -1, 1, 61);
  wk_tensor *c = wk_matmul(a, b);
  CHECK(wk_ndim(c) == 4 && wk_dim(c, 1) == 3 && wk_dim(c, 3) == 5, "batch broadcast shape");
  float *av = read_all(a), *bv = read_all(b), *cv = read_all(c), ref[15];
  ref_matmul(av + 12, bv + 40, ref, 3, 4, 5); // batch (1, 2)
  CHECK(max_abs_diff(cv + (1 * 3 + 2) * 15, ref, 15) < 1e-5f, "batched matmul values");
  CHECK(wk_matmul(a, a) == NULL && strstr(wk_last_error(), "inner"), "inner dimension mismatch named");
  // bf16 matmul accumulates in f32
  wk_tensor *x = gc_input(2, SHAPE(8, 64), -1, 1, 62), *w = gc_input(2, SHAPE(64, 8), -1, 1, 63);
  float *f = read_all(wk_matmul(x, w)), *h = read_all(wk_matmul(wk_cast(x, WK_BF16), wk_cast(w, WK_BF16)));
  CHECK(max_abs_diff(f, h, 64) < 0.1f, "bf16 matmul close to f32 (%g)", max_abs_diff(f, h, 64));
  free(av); free(bv); free(cv); free(f); free(h);
  wk_scope_end();
}

// ---- gradient checks ----
#define GC1(fname, expr) \
  static wk_tensor *fname(wk_tensor *const *in, void *ctx) { (void)ctx; wk_tensor *a = in[0]; (void)a; return expr; }
#define GC2(fname, expr) \
  static wk_tensor *fname(wk_tensor *const *in, void *ctx) { (void)ctx; wk_tensor *a = in[0], *b = in[1]; (void)b; return expr; }

GC1(g_neg, wk_neg(a)) GC1(g_abs, wk_abs(a)) GC1(g_exp, wk_exp(a)) GC1(g_log, wk_log(a)) GC1(g_sqrt, wk_sqrt(a))
GC1(g_rsqrt, wk_rsqrt(a)) GC1(g_square, wk_square(a)) GC1(g_tanh, wk_tanh(a)) GC1(g_sigmoid, wk_sigmoid(a))
GC1(g_relu, wk_relu(a)) GC1(g_gelu, wk_gelu(a)) GC1(g_gelu_tanh, wk_gelu_tanh(a)) GC1(g_silu, wk_silu(a))
GC1(g_adds, wk_add_scalar(a, 3)) GC1(g_muls, wk_mul_scalar(a, -2)) GC1(g_pow, wk_pow_scalar(a, 2.5f))
GC1(g_cast, wk_cast(wk_cast(a, WK_F16), WK_F32))
GC1(g_dropout, wk_dropout(a, 0.3f, 77, 1))
GC1(g_sum0, wk_sum(a, 1, (int[]){0}, 0)) GC1(g_sum_all, wk_sum(a, 0, NULL, 1))
GC1(g_mean1, wk_mean(a, 1, (int[]){1}, 1)) GC1(g_max1, wk_max(a, 1, (int[]){1}, 0))
GC1(g_transpose_exp, wk_exp(wk_transpose(a, 0, 1)))
GC1(g_slice_step, wk_mul_scalar(wk_slice(a, 1, 1, 5, 2), 3))
GC1(g_reshape, wk_tanh(wk_reshape(wk_transpose(a, 0, 1), 1, SHAPE(-1))))
GC1(g_broadcast, wk_broadcast_to(a, 3, SHAPE(2, 3, 5)))
GC1(g_pad, wk_pad(a, SHAPE(1, 2), SHAPE(0, 1), 7.0f))
GC1(g_stop, wk_add(wk_square(a), wk_stop_gradient(wk_square(a))))
GC2(g_add, wk_add(a, b)) GC2(g_sub, wk_sub(a, b)) GC2(g_mul, wk_mul(a, b)) GC2(g_div, wk_div(a, b))
GC2(g_max2, wk_maximum(a, b)) GC2(g_min2, wk_minimum(a, b))
GC2(g_where, wk_where(wk_gt(a, b), wk_exp(a), wk_mul(a, b)))
GC2(g_concat, wk_concat(2, (wk_tensor *[]){wk_exp(a), wk_transpose(b, 0, 1)}, 0))
GC2(g_matmul, wk_matmul(a, b)) GC2(g_matmul_tt, wk_matmul_t(b, 1, a, 1))
GC2(g_matmul_bcast, wk_matmul(wk_reshape(a, 3, SHAPE(1, 3, 5)), wk_reshape(wk_concat(2, (wk_tensor *[]){b, b}, 0), 3, SHAPE(2, 5, 4))))
GC2(g_split, ({ wk_tensor *p[2]; wk_split(a, 1, 2, SHAPE(2, 3), p); wk_mul(p[0], wk_slice(p[1], 1, 0, 2, 1)); }))

static void test_gradients(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(2, SHAPE(3, 5), -2, 2, 71);
  wk_tensor *pos = gc_input(2, SHAPE(3, 5), 0.2f, 3, 72);
  wk_tensor *row = gc_input(1, SHAPE(5), 0.5f, 2, 73);
  wk_tensor *sq = gc_input(2, SHAPE(5, 3), -1, 1, 74);
  wk_tensor *w = gc_input(2, SHAPE(5, 4), -1, 1, 75);
  struct { const char *name; gc_fn f; wk_tensor *in0, *in1; unsigned mask; } cases[] = {
      {"neg", g_neg, x, NULL, 1}, {"abs", g_abs, x, NULL, 1}, {"exp", g_exp, x, NULL, 1},
      {"log", g_log, pos, NULL, 1}, {"sqrt", g_sqrt, pos, NULL, 1}, {"rsqrt", g_rsqrt, pos, NULL, 1},
      {"square", g_square, x, NULL, 1}, {"tanh", g_tanh, x, NULL, 1}, {"sigmoid", g_sigmoid, x, NULL, 1},
      {"relu", g_relu, x, NULL, 1}, {"gelu", g_gelu, x, NULL, 1}, {"gelu_tanh", g_gelu_tanh, x, NULL, 1},
      {"silu", g_silu, x, NULL, 1}, {"add_scalar", g_adds, x, NULL, 1}, {"mul_scalar", g_muls, x, NULL, 1},
      {"pow_scalar", g_pow, pos, NULL, 1}, {"dropout", g_dropout, x, NULL, 1},
      {"sum axis 0", g_sum0, x, NULL, 1}, {"sum all", g_sum_all, x, NULL, 1}, {"mean keepdims", g_mean1, x, NULL, 1},
      {"max", g_max1, x, NULL, 1}, {"exp of transpose", g_transpose_exp, x, NULL, 1},
      {"strided slice", g_slice_step, x, NULL, 1}, {"reshape of transpose", g_reshape, x, NULL, 1},
      {"broadcast_to", g_broadcast, x, NULL, 1}, {"pad", g_pad, x, NULL, 1},
      {"add (broadcast)", g_add, x, row, 3}, {"sub (broadcast)", g_sub, x, row, 3},
      {"mul (broadcast)", g_mul, x, row, 3}, {"div (broadcast)", g_div, x, row, 3},
      {"maximum", g_max2, x, pos, 3}, {"minimum", g_min2, x, pos, 3}, {"where", g_where, x, pos, 3},
      {"concat", g_concat, x, sq, 3}, {"matmul", g_matmul, x, w, 3}, {"matmul both transposed", g_matmul_tt, x, sq, 3},
      {"matmul batch broadcast", g_matmul_bcast, x, w, 3}, {"split", g_split, x, NULL, 1},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    wk_tensor *in[2] = {cases[c].in0, cases[c].in1};
    gradcheck(cases[c].name, cases[c].f, NULL, cases[c].in1 ? 2 : 1, in, cases[c].mask);
  }
  // The f16 round trip quantizes the forward to 2^-11 relative: over a 2e-2
  // central difference that is up to ~5% noise per element, hence the tolerance.
  gradcheck_tol("cast f32->f16->f32", g_cast, NULL, 1, &x, 1, 5e-2f, 1e-1f);
  // stop_gradient: the stopped branch contributes nothing (finite differences
  // would see it, so compare with the closed form 2x instead).
  wk_tensor *sg;
  wk_set_trainable(x, 1);
  CHECK(wk_grad(wk_sum(g_stop(&x, NULL), 0, NULL, 0), 1, &x, &sg) == WK_OK, "grad through stop_gradient");
  float *sv = read_all(sg), *xv = read_all(x);
  int bad = 0;
  for (int i = 0; i < 15; i++) bad += sv[i] != 2 * xv[i];
  CHECK(bad == 0, "stop_gradient blocks its branch");
  wk_set_trainable(x, 0);
  free(sv); free(xv);
  wk_scope_end();
}

static void test_grad_semantics(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(1, SHAPE(4), -1, 1, 81), *frozen = gc_input(1, SHAPE(4), -1, 1, 82);
  wk_set_trainable(x, 1);
  wk_tensor *loss = wk_sum(wk_mul(x, frozen), 0, NULL, 0);
  wk_tensor *g[2];
  CHECK(wk_grad(loss, 2, (wk_tensor *[]){x, frozen}, g) == WK_OK, "grad");
  float *g0 = read_all(g[0]), *g1 = read_all(g[1]), *fv = read_all(frozen);
  CHECK(g0[2] == fv[2] && g1[0] == 0 && g1[3] == 0, "gradient flows only to trainable leaves");
  CHECK(wk_grad(wk_exp(x), 1, &x, g) != WK_OK && strstr(wk_last_error(), "one element"), "non-scalar loss rejected");
  // eager mode keeps the graph: gradients equal lazy ones; so does reading the
  // loss before taking its gradient
  wk_tensor *w = gc_input(2, SHAPE(4, 3), -1, 1, 83), *xm = wk_reshape(x, 2, SHAPE(1, 4));
  wk_set_trainable(w, 1);
  wk_tensor *gl, *ge, *gr;
  wk_grad(wk_sum(wk_tanh(wk_matmul(xm, w)), 0, NULL, 0), 1, &w, &gl);
  wk_set_eager(1);
  wk_tensor *le = wk_sum(wk_tanh(wk_matmul(xm, w)), 0, NULL, 0);
  CHECK(wk_grad(le, 1, &w, &ge) == WK_OK, "eager grad");
  wk_set_eager(0);
  wk_tensor *lr = wk_sum(wk_tanh(wk_matmul(xm, w)), 0, NULL, 0);
  CHECK(!isnan(wk_item(lr)), "read the loss first");
  wk_grad(lr, 1, &w, &gr);
  float *vl = read_all(gl), *ve = read_all(ge), *vr = read_all(gr);
  CHECK(max_abs_diff(vl, ve, 12) == 0 && max_abs_diff(vl, vr, 12) == 0 && vl[0] != 0,
        "eager and read-first gradients equal lazy ones (%g, %g)", max_abs_diff(vl, ve, 12), max_abs_diff(vl, vr, 12));
  free(vl); free(ve); free(vr);
  float value = 0;
  wk_tensor *vg;
  CHECK(wk_value_and_grad(wk_sum(wk_square(x), 0, NULL, 0), 1, &x, &vg, &value) == WK_OK && wk_is_evaluated(vg),
        "value_and_grad evaluates");
  float *xv = read_all(x), *gv = read_all(vg);
  CHECK(fabsf(value - (xv[0] * xv[0] + xv[1] * xv[1] + xv[2] * xv[2] + xv[3] * xv[3])) < 1e-6f && gv[1] == 2 * xv[1],
        "value_and_grad values");
  free(xv); free(gv);
  free(g0); free(g1); free(fv);
  wk_scope_end();
}

// ---- lazy evaluation, fusion, planning ----
#include "../../src/engine/plan.h"
#include "../../src/backend/cpu/threadpool.h"   // wk_threads: the CPU LoRA chain needs two
#include "../../src/backend/cpu/cpu_kernels.h"  // wk_cpu_lora_chain_jobs

static wk_tensor *chain8(wk_tensor *x, wk_tensor *y) {
  wk_tensor *t = wk_add(x, y);
  t = wk_mul(t, y);
  t = wk_sub(t, x);
  t = wk_mul_scalar(t, 0.5f);
  t = wk_tanh(t);
  t = wk_add_scalar(t, 1.0f);
  t = wk_mul(t, x);
  return wk_abs(t);
}

static void test_fusion_and_plans(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(1, SHAPE(10000), -1, 1, 91), *y = gc_input(1, SHAPE(10000), -1, 1, 92);
  wk_tensor *lazy = chain8(x, y);
  CHECK(!wk_is_evaluated(lazy), "ops are lazy");
  float *lv = read_all(lazy);
  const wk_plan *p = wk_last_plan();
  CHECK(p && p->nsteps == 1 && p->arena_bytes == 0, "chain8 runs as one fused step (%d steps)", p ? p->nsteps : -1);
  wk_set_eager(1);
  wk_tensor *eager = chain8(x, y);
  CHECK(wk_is_evaluated(eager), "eager mode evaluates at once");
  wk_set_eager(0);
  float *ev = read_all(eager);
  CHECK(max_abs_diff(lv, ev, 10000) == 0, "lazy == eager bit for bit");
  uint64_t c0, h0, c1, h1;
  wk_plan_cache_stats(&c0, &h0, NULL);
  for (int i = 0; i < 3; i++) { wk_tensor *t = chain8(x, y); wk_eval(1, &t); }
  wk_plan_cache_stats(&c1, &h1, NULL);
  CHECK(c1 == c0 && h1 == h0 + 3, "identical graphs reuse the cached plan (compiles %llu->%llu)",
        (unsigned long long)c0, (unsigned long long)c1);
  // CSE: exp(x) built twice is computed once
  wk_tensor *cse = wk_add(wk_exp(x), wk_exp(x));
  wk_eval(1, &cse);
  p = wk_last_plan();
  int exps = 0;
  for (int k = 0; k < p->nsteps; k++)
    for (int q = 0; q < p->steps[k].prog.n; q++) exps += p->steps[k].prog.code[q].op == WK_OP_EXP;
  CHECK(exps == 1, "CSE merges identical nodes (%d exps)", exps);
  // constant folding: 2 * 3 + 1 becomes one constant
  wk_tensor *k = wk_add(wk_mul(wk_full(0, NULL, WK_F32, 2), wk_full(0, NULL, WK_F32, 3)), wk_ones(0, NULL, WK_F32));
  CHECK(wk_item(k) == 7.0f, "constant folding value");
  p = wk_last_plan();
  CHECK(p->steps[0].prog.n == 1 && p->steps[0].prog.code[0].op == WK_OP_CONST, "folded to a single constant");
  // scalar attributes are plan parameters: a new scale or seed reuses the plan
  wk_plan_cache_stats(&c0, NULL, NULL);
  float got[3];
  for (int i = 0; i < 3; i++) {
    wk_tensor *t = wk_add(wk_mul_scalar(x, (float)i), wk_randn(1, SHAPE(10000), WK_F32, (uint64_t)i));
    float *tv = read_all(t);
    float *rn = read_all(wk_randn(1, SHAPE(10000), WK_F32, (uint64_t)i));
    got[i] = tv[5] - rn[5];
    free(tv); free(rn);
  }
  wk_plan_cache_stats(&c1, NULL, NULL);
  float *xv5 = read_all(x);
  CHECK(c1 - c0 == 2 && fabsf(got[2] - 2 * xv5[5]) < 1e-6f && fabsf(got[1] - xv5[5]) < 1e-6f,
        "scalars patched into a reused plan (%llu compiles)", (unsigned long long)(c1 - c0));
  free(xv5);
  // memory planning: intermediates of a matmul chain share arena space
  wk_tensor *m = gc_input(2, SHAPE(64, 64), -0.1f, 0.1f, 93);
  wk_tensor *z = m;
  for (int i = 0; i < 6; i++) z = wk_matmul(z, m);
  wk_eval(1, &z);
  p = wk_last_plan();
  CHECK(p->narena == 5 && p->arena_bytes == 2 * 64 * 64 * 4, "5 intermediates in 2 buffers (%zu bytes)", p->arena_bytes);
  // in-place reuse must not overwrite what a transposed read of the same buffer needs
  wk_tensor *sqm = gc_input(2, SHAPE(64, 64), -1, 1, 94);
  wk_tensor *prod = wk_matmul(sqm, sqm); // an arena intermediate, dead after the add
  wk_tensor *mixed = wk_matmul(wk_add(prod, wk_exp(wk_mul_scalar(wk_transpose(prod, 0, 1), 0.1f))), sqm);
  float *mv = read_all(mixed);
  wk_set_eager(1);
  float *mref = read_all(wk_matmul(wk_add(prod, wk_exp(wk_mul_scalar(wk_transpose(prod, 0, 1), 0.1f))), sqm));
  wk_set_eager(0);
  CHECK(max_abs_diff(mv, mref, 64 * 64) < 1e-4f, "no in-place write over a transposed read (%g)",
        max_abs_diff(mv, mref, 64 * 64));
  free(mv); free(mref);
  // async evaluation
  wk_tensor *as = chain8(y, x);
  CHECK(wk_eval_async(1, &as) == WK_OK && wk_sync() == WK_OK, "eval_async + sync");
  float *asv = read_all(as);
  float *ref = read_all(chain8(y, x));
  CHECK(max_abs_diff(asv, ref, 10000) == 0, "async result");
  free(lv); free(ev); free(asv); free(ref);
  wk_scope_end();
}

// Evaluations in a pipeline, as generation runs them: each step's graph is built on the
// last step's result while that one's job may still run, submitted, and the step
// before it read after the next one was submitted (the read waits only for the job
// using its buffer); a target freed while its job runs (the job holds its output).
static void test_async_pipeline(void) {
  wk_scope_begin();
  wk_tensor *x = wk_keep(wk_randn(2, SHAPE(256, 256), WK_F32, 5)), *w = wk_keep(wk_mul_scalar(wk_randn(2, SHAPE(256, 256), WK_F32, 6), 0.0625f));
  wk_eval(2, (wk_tensor *[]){x, w});
  float *xs = read_all(x), *ws = read_all(w), *ref = malloc(sizeof(float) * 256 * 256);
  wk_tensor *prev = x, *prev_sum = NULL;
  int bad = 0;
  for (int step = 0; step < 6; step++) {
    // ref = tanh(ref @ w) on the host, for the values the pipeline must give
    const float *in = step ? ref : xs;
    float *out = malloc(sizeof(float) * 256 * 256);
    for (int i = 0; i < 256; i++)
      for (int j = 0; j < 256; j++) {
        double acc = 0;
        for (int k = 0; k < 256; k++) acc += (double)in[i * 256 + k] * ws[k * 256 + j];
        out[i * 256 + j] = tanhf((float)acc);
      }
    memcpy(ref, out, sizeof(float) * 256 * 256);
    free(out);
    wk_tensor *y = wk_keep(wk_tanh(wk_matmul(prev, w)));
    wk_tensor *sum = wk_keep(wk_sum(y, 0, NULL, 0));
    CHECK(wk_eval_async(2, (wk_tensor *[]){y, sum}) == WK_OK, "pipeline step %d submitted", step);
    if (prev_sum) {   // the step before, read while this one may run
      double s0 = 0;
      const float *pv = wk_tensor_data(prev);
      for (int i = 0; pv && i < 256 * 256; i++) s0 += pv[i];
      bad += !pv || fabs(s0 - wk_item(prev_sum)) > 1e-2;
      wk_tensor_free(prev_sum);
    }
    if (prev != x) wk_tensor_free(prev);
    prev = y;
    prev_sum = sum;
  }
  const float *last = wk_tensor_data(prev);
  CHECK(bad == 0 && last && max_abs_diff(last, ref, 256 * 256) < 1e-3f,
        "a pipeline of 6 async steps, each read after the next was submitted: %d bad, last step max diff %g", bad,
        last ? max_abs_diff(last, ref, 256 * 256) : -1.0f);
  wk_tensor_free(prev_sum);
  wk_tensor_free(prev);
  wk_tensor *z = wk_keep(wk_exp(wk_matmul(x, w)));
  CHECK(wk_eval_async(1, &z) == WK_OK, "async eval of a target freed at once");
  wk_tensor_free(z);   // the job in flight still writes its output
  CHECK(wk_sync() == WK_OK, "sync after the freed target's job");
  wk_tensor_free(x);
  wk_tensor_free(w);
  free(xs); free(ws); free(ref);
  wk_scope_end();
}

static wk_tensor *g_lora(wk_tensor *const *in, void *ctx) {
  const bool trans_w = ctx != NULL;   // W given as the transposed view of a [N, K] leaf
  return wk_lora(in[0], trans_w ? wk_transpose(in[1], 0, 1) : in[1], in[2], in[3], 1.5f);
}

// wk_lora: one LORA node (one kernel step) when the kernels take the operands as they
// are stored; else primitives, which the fusion pass turns into the same step. Both
// against a host reference, eager as well; gradients of all four operands by finite
// differences (the node's VJP), W also as a transposed view.
static void test_lora_fusion(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(3, SHAPE(2, 5, 32), -1, 1, 101), *W = gc_input(2, SHAPE(32, 24), -0.2f, 0.2f, 102);
  wk_tensor *A = gc_input(2, SHAPE(32, 4), -0.2f, 0.2f, 103), *B = gc_input(2, SHAPE(4, 24), -0.2f, 0.2f, 104);
  float *xv = read_all(x), *wv = read_all(W), *av = read_all(A), *bv = read_all(B);
  float base[240], down[40], up[240];
  ref_matmul(xv, wv, base, 10, 32, 24);
  ref_matmul(xv, av, down, 10, 32, 4);
  ref_matmul(down, bv, up, 10, 4, 24);
  for (int i = 0; i < 240; i++) base[i] += 2.0f * up[i];
  wk_tensor *y = wk_lora(x, W, A, B, 2.0f);
  CHECK(y && y->op == WK_OP_LORA && y->nin == 4, "wk_lora records one LORA node");
  float *yv = read_all(y);
  const wk_plan *p = wk_last_plan();
  CHECK(p->nsteps == 1 && p->steps[0].op == WK_OP_LORA, "the node runs as one LoRA kernel (%d steps)", p->nsteps);
  CHECK(max_abs_diff(yv, base, 240) < 1e-5f, "LoRA node values (%g)", max_abs_diff(yv, base, 240));
  free(yv);
  // the same sum written out: the fusion pass recognizes it
  wk_tensor *x2 = wk_reshape(x, 2, SHAPE(10, 32));
  wk_tensor *c = wk_add(wk_matmul(x2, W), wk_mul_scalar(wk_matmul(wk_matmul(x2, A), B), 2.0f));
  yv = read_all(c);
  p = wk_last_plan();
  CHECK(p->nsteps == 1 && p->steps[0].op == WK_OP_LORA, "x@W + s*(x@A)@B runs as one LoRA kernel (%d steps)", p->nsteps);
  CHECK(max_abs_diff(yv, base, 240) < 1e-5f, "fused LoRA pattern values (%g)", max_abs_diff(yv, base, 240));
  free(yv);
  // a transposed x is not rows of one matrix: primitives, fused all the same
  wk_tensor *xt = wk_transpose(gc_input(3, SHAPE(2, 32, 5), -1, 1, 105), 1, 2);
  wk_tensor *yt = wk_lora(xt, W, A, B, 2.0f);
  CHECK(yt && yt->op != WK_OP_LORA, "a strided x is built from primitives");
  float *tv = read_all(yt), *xtv = read_all(wk_contiguous(xt)), tref[240], tdown[40], tup[240];
  ref_matmul(xtv, wv, tref, 10, 32, 24);
  ref_matmul(xtv, av, tdown, 10, 32, 4);
  ref_matmul(tdown, bv, tup, 10, 4, 24);
  for (int i = 0; i < 240; i++) tref[i] += 2.0f * tup[i];
  CHECK(max_abs_diff(tv, tref, 240) < 1e-5f, "LoRA of a strided x (%g)", max_abs_diff(tv, tref, 240));
  free(tv); free(xtv);
  wk_set_eager(1);
  yv = read_all(wk_lora(x, W, A, B, 2.0f));
  wk_set_eager(0);
  CHECK(max_abs_diff(yv, base, 240) < 1e-5f, "eager LoRA node (%g)", max_abs_diff(yv, base, 240));
  free(yv);
  free(xv); free(wv); free(av); free(bv);
  wk_tensor *in[4] = {x, W, A, B};
  gradcheck("lora node: x, W, A, B", g_lora, NULL, 4, in, 15);
  wk_tensor *inT[4] = {x, gc_input(2, SHAPE(24, 32), -0.2f, 0.2f, 106), A, B};
  gradcheck("lora node with W transposed", g_lora, inT, 4, inT, 15);
  wk_scope_end();
}

// One-row LoRA calls chained (each call's output the next one's x, the same W, A, B)
// are one chain group that the CPU backend runs as one job with more than one thread
// (kernels.c's wk_cpu_lora_chain): the same values as the calls one at a time (eager),
// and as a double reference; W as stored and as a transposed view; an odd width.
static void test_lora_chain(void) {
  // 96 and 77: one thread's GEMV; 200 and 517: W as stored is split along K (517:
  // chunks of 272 and 245 rows), and the chain must add the same partial sums
  const int64_t Ks[] = {96, 77, 200, 517};
  for (int wt = 0; wt < 2; wt++)
    for (int ki = 0; ki < 4; ki++) {
      const int64_t K = Ks[ki];
      const int n = 7, r = 8;
      const float wr = 1.5f / sqrtf((float)K);   // outputs of about x's size, call after call
      wk_scope_begin();
      wk_tensor *x = gc_input(2, SHAPE(1, K), -1, 1, 111), *A = gc_input(2, SHAPE(K, r), -0.2f, 0.2f, 113);
      wk_tensor *Ws = gc_input(2, SHAPE(K, K), -wr, wr, 112), *B = gc_input(2, SHAPE(r, K), -0.2f, 0.2f, 114);
      wk_tensor *W = wt ? wk_transpose(Ws, 0, 1) : Ws;
      float *xv = read_all(x), *wv = read_all(wk_contiguous(W)), *av = read_all(A), *bv = read_all(B);
      double *ref = malloc(sizeof(double) * 2 * (size_t)K), *yd = ref + K, t[8];
      for (int64_t i = 0; i < K; i++) ref[i] = xv[i];
      for (int c = 0; c < n; c++) {
        for (int q = 0; q < r; q++) {
          t[q] = 0;
          for (int64_t k = 0; k < K; k++) t[q] += ref[k] * av[k * r + q];
        }
        for (int64_t j = 0; j < K; j++) {
          yd[j] = 0;
          for (int64_t k = 0; k < K; k++) yd[j] += ref[k] * wv[k * K + j];
          for (int q = 0; q < r; q++) yd[j] += 1.5 * t[q] * bv[q * K + j];
        }
        memcpy(ref, yd, sizeof(double) * (size_t)K);
      }
      float *v[2];
      for (int eager = 0; eager < 2; eager++) {
        long long jobs = wk_cpu_lora_chain_jobs();
        wk_set_eager(eager);
        wk_tensor *y = x;
        for (int c = 0; c < n; c++) y = wk_lora(y, W, A, B, 1.5f);
        v[eager] = read_all(y);
        wk_set_eager(0);
        if (!eager) {
          const wk_plan *p = wk_last_plan();
          int want = wk_threads() > 1 ? n : 0;
          CHECK(p && p->steps[0].op == WK_OP_LORA && p->steps[0].chain == want,
                "%d chained LoRA calls (K %lld%s): chain group of %d (want %d)", n, (long long)K,
                wt ? ", W transposed" : "", p ? p->steps[0].chain : -1, want);
          CHECK(wk_cpu_lora_chain_jobs() - jobs == (want ? 1 : 0), "the chain ran as %lld job(s) (want %d), not call by call",
                wk_cpu_lora_chain_jobs() - jobs, want ? 1 : 0);
        }
      }
      // the calls written as primitives (wick bench's lora_ops): lazily the same chain
      // group and bits; eagerly five ops a call, which round on their own
      float *o[2];
      for (int eager = 0; eager < 2; eager++) {
        wk_set_eager(eager);
        wk_tensor *y = x;
        for (int c = 0; c < n; c++) y = wk_add(wk_matmul(y, W), wk_mul_scalar(wk_matmul(wk_matmul(y, A), B), 1.5f));
        o[eager] = read_all(y);
        wk_set_eager(0);
        if (!eager) {
          const wk_plan *p = wk_last_plan();
          CHECK(p && p->nsteps == n && p->steps[0].op == WK_OP_LORA, "%d LoRA calls as primitives (K %lld%s): %d LoRA steps",
                n, (long long)K, wt ? ", W transposed" : "", p ? p->nsteps : -1);
        }
      }
      CHECK(!memcmp(o[0], v[0], sizeof(float) * (size_t)K), "LoRA chain as primitives (K %lld%s) == wk_lora's, bit for bit",
            (long long)K, wt ? ", W transposed" : "");
      double err = 0, big = 0, erre = 0;   // err within ~25 ulps of the largest output
      for (int64_t i = 0; i < K; i++)
        err = fmax(err, fabs(v[0][i] - ref[i])), erre = fmax(erre, fabs(o[1][i] - ref[i])), big = fmax(big, fabs(ref[i]));
      CHECK(!memcmp(v[0], v[1], sizeof(float) * (size_t)K), "LoRA chain (K %lld%s) == call by call, bit for bit",
            (long long)K, wt ? ", W transposed" : "");
      CHECK(err < 3e-6 * big, "LoRA chain (K %lld%s) against doubles: %g (largest %g)", (long long)K,
            wt ? ", W transposed" : "", err, big);
      CHECK(erre < 3e-6 * big, "eager primitives (K %lld%s) against doubles: %g (largest %g)", (long long)K,
            wt ? ", W transposed" : "", erre, big);
      free(o[0]); free(o[1]); free(v[0]); free(v[1]); free(xv); free(wv); free(av); free(bv); free(ref);
      wk_scope_end();
    }
}

static void test_dropout(void) {
  wk_scope_begin();
  wk_tensor *x = wk_ones(1, SHAPE(100000), WK_F32);
  float *d = read_all(wk_dropout(x, 0.25f, 5, 1)), *d2 = read_all(wk_dropout(x, 0.25f, 5, 1));
  int zeros = 0, bad = 0;
  for (int i = 0; i < 100000; i++) {
    zeros += d[i] == 0;
    bad += d[i] != 0 && fabsf(d[i] - 1.0f / 0.75f) > 1e-6f;
  }
  // binomial(100000, 0.25): std 137, so 25000 +- 1000 is > 7 sigma
  CHECK(abs(zeros - 25000) < 1000 && bad == 0, "dropout drops %d of 100000, scales the rest", zeros);
  CHECK(!memcmp(d, d2, 400000), "dropout is seeded");
  float *id = read_all(wk_dropout(x, 0.25f, 5, 0));
  CHECK(id[0] == 1 && id[99999] == 1, "dropout off when not training");
  CHECK(wk_dropout(x, 1.0f, 1, 1) == NULL && strstr(wk_last_error(), "p = 1"), "p = 1 rejected");
  free(d); free(d2); free(id);
  wk_scope_end();
}

int main(void) {
  test_creation();
  test_unary_forward();
  test_binary_broadcast();
  test_dtypes();
  test_reductions();
  test_top1();
  test_top1_nonfinite();
  test_views();
  test_concat_split_pad();
  test_matmul();
  test_gradients();
  test_grad_semantics();
  test_fusion_and_plans();
  test_async_pipeline();
  test_lora_fusion();
  test_lora_chain();
  test_dropout();
  return check_report();
}
