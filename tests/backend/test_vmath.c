// The elementwise math (exp, log, tanh, sigmoid, silu, gelu, gelu_tanh) against libm
// in double over a dense sweep of the float range: every 997th bit pattern (4.3
// million values: both signs, subnormals, huge values) plus the special values
// (+-0, +-inf, NaN, the overflow and underflow edges). ctest runs this once per ISA
// (WICK_CPU_ISA), so the scalar formulas of kernel_math.h, the AVX2 and the AVX-512
// kernels of vmath.h all meet the bounds stated in kernel_math.h.
// Then the accumulator chains of the elementwise VM (ew_chain.h): simple ops with
// NaN, -0 and inf against the block interpreter's semantics computed here, and a
// chain evaluated at two offsets (so each value goes through the chain path once
// and the block path once) must give the same bits.
#include <float.h>
#include <stdint.h>
#include <string.h>
#include "check.h"

static float bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// The spacing of floats at |r| (subnormal spacing below FLT_MIN).
static double ulp_of(double r) {
  r = fabs(r);
  if (r < FLT_MIN) return ldexp(1.0, -149);
  if (r >= FLT_MAX) return ldexp(1.0, 104);
  int e;
  frexp(r, &e); // r = m * 2^e, m in [0.5, 1)
  return ldexp(1.0, e - 24);
}

static double r_exp(double x) { return exp(x); }
static double r_log(double x) { return log(x); }
static double r_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double r_silu(double x) { return x / (1.0 + exp(-x)); }
// without the cancellation of 1 + erf and 1 + tanh for negative x
static double r_gelu(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double gelu_u(double x) { return 0.7978845608028654 * (x + 0.044715 * x * x * x); }
static double r_gelu_tanh(double x) { return x / (1.0 + exp(-2.0 * gelu_u(x))); }

// The error allowed at x: ulps of the result, plus what the formula can't avoid.
//  ax: an absolute error growing with |x|: gelu's 0.5 x (1 + erf) carries erf's
//    absolute error (1.5e-7 from the formula, 3e-7 with float roundings) times
//    0.5 |x|; silu and gelu_tanh
//    multiply x by a sigmoid that may be subnormal (2^-150 absolute) below x ~ -87.
//  cond: gelu_tanh's u = k (x + c x^3) is rounded (with k and c) to a few ulps, and
//    sigmoid(2u) turns a relative error d of u into 2u (1 - sigmoid(2u)) d.
typedef struct {
  const char *name;
  wk_tensor *(*f)(wk_tensor *);
  double (*ref)(double);
  double ulps, ax;
  bool cond;
} fcase;

static const fcase cases[] = {
    {"exp", wk_exp, r_exp, 2, 0, false},
    {"log", wk_log, r_log, 2, 0, false},
    {"tanh", wk_tanh, tanh, 3, 0, false},
    {"sigmoid", wk_sigmoid, r_sigmoid, 3, 0, false},
    {"silu", wk_silu, r_silu, 4, 0x1p-149, false},
    {"gelu", wk_gelu, r_gelu, 4, 1.5e-7, false},
    {"gelu_tanh", wk_gelu_tanh, r_gelu_tanh, 4, 0x1p-149, true},
};

static double allowed(const fcase *c, double x, double ref) {
  double tol = c->ulps * ulp_of(ref) + c->ax * fabs(x);
  if (c->cond) {
    double u = gelu_u(x), sg = 1.0 / (1.0 + exp(-2.0 * u));
    tol += fabs(ref) * fabs(2.0 * u) * (1.0 - sg) * 8.0 * 0x1p-24;
  }
  return tol;
}

#define STEP 997u
static const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, FLT_MIN, -FLT_MIN, FLT_MAX, -FLT_MAX,
                                 1e-45f, -1e-45f, 1e-40f, 1.0f, -1.0f, 88.72f, 88.73f, 89.0f, -87.33f, -103.97f,
                                 -104.0f, -150.0f, 9.0f, 9.02f, 10.0f, -10.0f, 1e-8f, -1e-8f, 0.5f, 0.625f};

static void test_sweep(void) {
  int64_t nspec = (int64_t)(sizeof specials / sizeof *specials);
  int64_t n = (int64_t)(0x100000000ull / STEP) + 1 + nspec;
  float *xv = malloc(sizeof(float) * (size_t)n);
  int64_t k = 0;
  for (uint64_t u = 0; u < 0x100000000ull; u += STEP) xv[k++] = bits2f((uint32_t)u);
  for (int64_t i = 0; i < nspec; i++) xv[k++] = specials[i];
  n = k;
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    const fcase *fc = &cases[c];
    wk_scope_begin();
    wk_tensor *x = wk_from_data(1, (int64_t[]){n}, WK_F32, xv);
    float *y = read_all(fc->f(x));
    double worst = 0;
    int64_t bad = 0, at = -1;
    for (int64_t i = 0; y && i < n; i++) {
      double ref = fc->ref((double)xv[i]);
      bool ok;
      double err = 0;
      if (ref != ref) ok = y[i] != y[i];
      else if (isinf(xv[i])) ok = y[i] == (float)ref;
      else if (fabs(ref) > FLT_MAX) ok = y[i] == (float)ref || fabs(y[i]) == FLT_MAX; // overflow edge
      else {
        err = fabs((double)y[i] - ref) / allowed(fc, xv[i], ref);
        ok = err <= 1.0;
        if (err > worst) worst = err;
      }
      if (!ok && bad++ == 0) at = i;
    }
    CHECK(y && bad == 0, "%s: %lld of %lld values out of bounds (first x = %a: got %a, libm %a); worst %.2f of the bound",
          fc->name, (long long)bad, (long long)n, at >= 0 ? xv[at] : 0.0, at >= 0 ? y[at] : 0.0,
          at >= 0 ? fc->ref(xv[at]) : 0.0, worst);
    printf("%-10s worst error %.2f of the bound (%g ulps)\n", fc->name, worst, fc->ulps);
    free(y);
    wk_scope_end();
  }
  // signs and exact values libm gives
  wk_scope_begin();
  wk_tensor *sp = wk_from_data(1, (int64_t[]){4}, WK_F32, (float[]){-0.0f, 0.0f, -INFINITY, INFINITY});
  float *t = read_all(wk_tanh(sp)), *e = read_all(wk_exp(sp)), *s = read_all(wk_sigmoid(sp));
  CHECK(t && f2bits(t[0]) == 0x80000000u && f2bits(t[1]) == 0 && t[2] == -1.0f && t[3] == 1.0f,
        "tanh(-0, 0, -inf, inf) = %g %g %g %g", t[0], t[1], t[2], t[3]);
  CHECK(e && e[0] == 1.0f && e[1] == 1.0f && f2bits(e[2]) == 0 && e[3] == INFINITY, "exp(-0, 0, -inf, inf) = %g %g %g %g",
        e[0], e[1], e[2], e[3]);
  CHECK(s && s[0] == 0.5f && s[1] == 0.5f && f2bits(s[2]) == 0 && s[3] == 1.0f, "sigmoid(-0, 0, -inf, inf) = %g %g %g %g",
        s[0], s[1], s[2], s[3]);
  free(t), free(e), free(s);
  wk_scope_end();
  free(xv);
}

// ---- accumulator chains ----
// The block interpreter's semantics of the simple ops (ew.c), in plain C.
// (a NaN on either side gives NaN, as in numpy and torch; relu keeps a NaN too)
static float sem_max(float a, float b) { return a >= b || a != a ? a : b; }
static float sem_min(float a, float b) { return a <= b || a != a ? a : b; }

static bool same_bits(float a, float b) { return f2bits(a) == f2bits(b) || (a != a && b != b); }

static void test_chain_ops(void) {
  enum { N = 1000 + 13 };
  float xv[N], yv[N];
  uint64_t r = 12345;
  for (int i = 0; i < N; i++) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    xv[i] = (float)((int64_t)(r >> 33) % 2000 - 1000) / 100.0f;
    yv[i] = (float)((int64_t)(r >> 13) % 2000 - 1000) / 300.0f;
  }
  const float sp[] = {NAN, -0.0f, 0.0f, INFINITY, -INFINITY, 1.0f, -1.0f};
  for (int i = 0; i < 7; i++)
    for (int j = 0; j < 7; j++) xv[i * 7 + j] = sp[i], yv[i * 7 + j] = sp[j];
  wk_scope_begin();
  wk_tensor *x = wk_from_data(1, (int64_t[]){N}, WK_F32, xv), *y = wk_from_data(1, (int64_t[]){N}, WK_F32, yv);
  // acc = x*x; y - acc (reversed); max(acc, x); min(y, acc) (reversed); y / acc (reversed);
  // relu; neg; abs + 1; sqrt; rsqrt; * 0.5
  wk_tensor *t = wk_mul(x, x);
  t = wk_sub(y, t);
  t = wk_maximum(t, x);
  t = wk_minimum(y, t);
  t = wk_div(y, t);
  t = wk_relu(t);
  t = wk_neg(t);
  t = wk_add_scalar(wk_abs(t), 1.0f);
  t = wk_mul_scalar(wk_rsqrt(wk_sqrt(t)), 0.5f);
  t = wk_square(wk_sub(t, x));
  float *v = read_all(t);
  int bad = 0, at = -1;
  for (int i = 0; v && i < N; i++) {
    float a = xv[i] * xv[i];
    a = yv[i] - a;
    a = sem_max(a, xv[i]);
    a = sem_min(yv[i], a);
    a = yv[i] / a;
    a = a > 0 || a != a ? a : 0.0f;
    a = -a;
    a = fabsf(a) + 1.0f;
    a = 1.0f / sqrtf(sqrtf(a)) * 0.5f;
    a = (a - xv[i]) * (a - xv[i]);
    if (!same_bits(a, v[i]) && bad++ == 0) at = i;
  }
  CHECK(v && bad == 0, "chain of simple ops: %d values differ from the block VM's semantics (first at x=%g y=%g: %g)",
        bad, at >= 0 ? xv[at] : 0.0, at >= 0 ? yv[at] : 0.0, v && at >= 0 ? v[at] : 0.0);
  free(v);
  wk_scope_end();
}

// Every op takes the previous value and at most one input: an accumulator chain.
static wk_tensor *long_chain(wk_tensor *x, wk_tensor *y) {
  wk_tensor *t = wk_mul(wk_add(x, y), y);
  t = wk_tanh(wk_mul_scalar(wk_sub(t, x), 0.5f));
  t = wk_exp(wk_minimum(t, y));
  t = wk_sigmoid(wk_mul(t, x));
  t = wk_silu(wk_add(t, y));
  t = wk_gelu_tanh(wk_mul(t, x));
  return wk_gelu(wk_log(wk_abs(wk_sub(t, y))));
}

// The same chain at offsets 0 and 1 of the same data: different split points
// between the chain path (whole groups of vectors) and the block path (the rest).
static void test_chain_paths(void) {
  enum { N = 20000 + 77 };
  float *xv = malloc(sizeof(float) * N), *yv = malloc(sizeof(float) * N);
  for (int i = 0; i < N; i++) xv[i] = sinf((float)i * 0.37f) * 6.0f, yv[i] = cosf((float)i * 0.11f) * 3.0f;
  xv[5] = NAN, xv[600] = INFINITY, yv[601] = -INFINITY, xv[999] = -0.0f;
  wk_scope_begin();
  wk_tensor *x = wk_from_data(1, (int64_t[]){N}, WK_F32, xv), *y = wk_from_data(1, (int64_t[]){N}, WK_F32, yv);
  float *a = read_all(long_chain(x, y));
  float *b = read_all(long_chain(wk_slice(x, 0, 1, N, 1), wk_slice(y, 0, 1, N, 1)));
  int bad = 0, at = -1;
  for (int i = 0; a && b && i + 1 < N; i++)
    if (!same_bits(a[i + 1], b[i]) && bad++ == 0) at = i + 1;
  CHECK(a && b && bad == 0, "chain at offsets 0 and 1: %d values differ (first at %d: %a vs %a)", bad, at,
        at >= 0 ? a[at] : 0.0, at >= 0 ? b[at - 1] : 0.0);
  free(a), free(b);
  wk_scope_end();
  free(xv), free(yv);
}

int main(void) {
  test_sweep();
  test_chain_ops();
  test_chain_paths();
  return check_report();
}
