// The row kernels' vector math (included by nn.c, so compiled per ISA): sums, dot
// products and squared deviations in 16 partial accumulators; max, exp(x - m) with
// its sum and expm1 by a short Taylor polynomial, written with intrinsics on AVX-512
// and AVX2 (the compiler does not vectorize their branchy scalar forms); rows written
// by streaming stores.
#pragma once
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "../kernel_math.h"

// 16 partial accumulators: the compiler keeps them in one or two registers.
#define TAYLOR_MAX 6 // the highest degree of expm1's Taylor polynomial in chained softmaxes
static inline float expz(float x) { return x < -87.0f ? 0.0f : wkm_exp(x); } // exp(-inf) = 0 exactly

static inline float hsum16(const float *a) {
  float t = 0;
  for (int l = 0; l < 16; l++) t += a[l];
  return t;
}
static float vsum(const float *x, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] += x[i + l];
  for (; i < n; i++) acc[i & 15] += x[i];
  return hsum16(acc);
}
// Four accumulators of 16 lanes, as GCC vectors of the ISA's own width (VW lanes, NS
// of them a 16-lane accumulator): the compiler keeps them in registers, where an array
// indexed by a variable stays in memory, and adds in flight hide their latency. 16
// lanes on every ISA, summed in one order, give every path the same bits; a 64-byte
// vector on AVX2 was lowered through the stack (~2 cycles a value).
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#define NS (16 / VW)
typedef float vw __attribute__((vector_size(VW * 4)));
// sum of the four accumulators' lanes, lane by lane, then lanes 0..15 into sum
static inline float vacc_sum(vw acc[4][NS], float sum) {
  for (int h = 0; h < NS; h++) {
    vw t = acc[0][h] + acc[1][h] + acc[2][h] + acc[3][h];
    for (int l = 0; l < VW; l++) sum += t[l];
  }
  return sum;
}
static float vdot(const float *x, const float *y, int64_t n) {
  vw acc[4][NS] = {{{0}}};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int q = 0; q < 4; q++)
      for (int h = 0; h < NS; h++) {
        vw a, b;
        memcpy(&a, x + i + 16 * q + VW * h, sizeof a);
        memcpy(&b, y + i + 16 * q + VW * h, sizeof b);
        acc[q][h] += a * b;
      }
  float sum = 0;
  for (; i < n; i++) sum += x[i] * y[i];
  return vacc_sum(acc, sum);
}
// sum (x - c)^2
static float vsqdev(const float *x, int64_t n, float c) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) { float d = x[i + l] - c; acc[l] += d * d; }
  for (; i < n; i++) { float d = x[i] - c; acc[i & 15] += d * d; }
  return hsum16(acc);
}
// max, and exp with its sums, written with intrinsics: the compiler does not
// vectorize the branchy scalar forms (roundf, compares under -ftrapping-math).
#if defined(__AVX512F__) || defined(__AVX2__)
// A row whose max is so negative (a row of -FLT_MAX masks, say) that m * log2(e)
// overflows: the fused x*log2(e) - m*log2(e) below would be -inf - -inf = NaN, so
// such rows take the plain exp(x - m).
static inline bool huge_max(float m) { return !(fabsf(m) < 2e38f); }
static inline float vexp_far(const float *x, float *y, int64_t n, float sc, float m) {
  float t = 0;
  for (int64_t i = 0; i < n; i++) {
    float e = expz(sc * x[i] - m);
    if (y) y[i] = e;
    t += e;
  }
  return t;
}
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
// exp(x - m) computed as 2^t, t = x*log2(e) - m*log2(e) (one fused rounding), split
// t = n + f with |f| <= 1/2; 2^f by a degree-5 Chebyshev fit (2.4e-7 relative).
#define EXP2_C0 1.0000001192092896f
#define EXP2_C1 0.6931471824645996f
#define EXP2_C2 0.2402210682630539f
#define EXP2_C3 0.055503569543361664f
#define EXP2_C4 0.009676031768321991f
#define EXP2_C5 0.0013390863314270973f
#define LOG2E 1.44269504088896341f
// t clamped at -200 gives scalef(1, -200) = 0 exactly (exp(-inf) = 0); NaN stays NaN.
static inline __m512 exp2_16(__m512 t) {
  t = _mm512_max_ps(_mm512_set1_ps(-200.0f), t);
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP2_C5), f, _mm512_set1_ps(EXP2_C4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C0));
  return _mm512_scalef_ps(p, n);
}
static inline __mmask16 tail16(int64_t k) { return (__mmask16)((1u << k) - 1u); }
static float vmax(const float *x, int64_t n) {
  __m512 a0 = _mm512_set1_ps(-INFINITY), a1 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_max_ps(a0, _mm512_loadu_ps(x + i));
    a1 = _mm512_max_ps(a1, _mm512_loadu_ps(x + i + 16));
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_max_ps(a0, _mm512_loadu_ps(x + i));
  if (i < n) a1 = _mm512_max_ps(a1, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail16(n - i), x + i));
  return _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
}
// y = exp(sc*x - m) (y may be NULL); returns its sum. Needs sc*x <= m (up to rounding).
static float vexp_s(const float *x, float *y, int64_t n, float sc, float m) {
  if (huge_max(m)) return vexp_far(x, y, n, sc, m);
  __m512 l2e = _mm512_set1_ps(sc * LOG2E), ml = _mm512_set1_ps(m * LOG2E), s0 = _mm512_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 e0 = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(x + i), l2e, ml));
    __m512 e1 = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(x + i + 16), l2e, ml));
    if (y) { _mm512_storeu_ps(y + i, e0); _mm512_storeu_ps(y + i + 16, e1); }
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; i + 16 <= n; i += 16) {
    __m512 e0 = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(x + i), l2e, ml));
    if (y) _mm512_storeu_ps(y + i, e0);
    s0 = _mm512_add_ps(s0, e0);
  }
  if (i < n) {
    __mmask16 k = tail16(n - i);
    __m512 e = _mm512_maskz_mov_ps(k, exp2_16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, x + i), l2e, ml)));
    if (y) _mm512_mask_storeu_ps(y + i, k, e);
    s1 = _mm512_add_ps(s1, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
// y = c[1] x + c[2] x^2 + ... + c[deg] x^deg (y may be NULL); returns its sum (see
// vexpm1_taylor). Four sums: at degree 1 the adds' latency would bound the loop.
static inline __attribute__((always_inline)) __m512 poly16(__m512 x, const __m512 *c, int deg) {
  __m512 p = c[deg];
  for (int k = deg - 1; k >= 1; k--) p = _mm512_fmadd_ps(p, x, c[k]);
  return _mm512_mul_ps(p, x);
}
static inline __attribute__((always_inline)) float vpoly_n(const float *x, float *y, int64_t n, const float *cf,
                                                           int deg) {
  __m512 c[TAYLOR_MAX + 1], s[4];
  for (int l = 0; l < 4; l++) s[l] = _mm512_setzero_ps();
  for (int k = 1; k <= deg; k++) c[k] = _mm512_set1_ps(cf[k]);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int l = 0; l < 4; l++) {
      __m512 e = poly16(_mm512_loadu_ps(x + i + 16 * l), c, deg);
      if (y) _mm512_storeu_ps(y + i + 16 * l, e);
      s[l] = _mm512_add_ps(s[l], e);
    }
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail16(n - i);
    __m512 e = poly16(_mm512_maskz_loadu_ps(k, x + i), c, deg); // 0 in masked lanes
    if (y) _mm512_mask_storeu_ps(y + i, k, e);
    s[0] = _mm512_add_ps(s[0], e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
}
#elif defined(__AVX2__)
#include <immintrin.h>
#define EXP2_C0 1.0000001192092896f
#define EXP2_C1 0.6931471824645996f
#define EXP2_C2 0.2402210682630539f
#define EXP2_C3 0.055503569543361664f
#define EXP2_C4 0.009676031768321991f
#define EXP2_C5 0.0013390863314270973f
#define LOG2E 1.44269504088896341f
// 2^t for t <= 0 (see the AVX-512 version); lanes below -126 (-inf included) are zeroed.
static inline __m256 exp2_8(__m256 t) {
  __m256 keep = _mm256_cmp_ps(t, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
  __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(EXP2_C5), f, _mm256_set1_ps(EXP2_C4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP2_C0));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static float vmax(const float *x, int64_t n) {
  __m256 a0 = _mm256_set1_ps(-INFINITY), a1 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_max_ps(a0, _mm256_loadu_ps(x + i));
    a1 = _mm256_max_ps(a1, _mm256_loadu_ps(x + i + 8));
  }
  float t[8], m;
  _mm256_storeu_ps(t, _mm256_max_ps(a0, a1));
  m = t[0];
  for (int l = 1; l < 8; l++) m = t[l] > m ? t[l] : m;
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}
static float vexp_s(const float *x, float *y, int64_t n, float sc, float m) {
  if (huge_max(m)) return vexp_far(x, y, n, sc, m);
  __m256 l2e = _mm256_set1_ps(sc * LOG2E), ml = _mm256_set1_ps(m * LOG2E), s0 = _mm256_setzero_ps(), s1 = s0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 e0 = exp2_8(_mm256_fmsub_ps(_mm256_loadu_ps(x + i), l2e, ml));
    __m256 e1 = exp2_8(_mm256_fmsub_ps(_mm256_loadu_ps(x + i + 8), l2e, ml));
    if (y) { _mm256_storeu_ps(y + i, e0); _mm256_storeu_ps(y + i + 8, e1); }
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  float t = hsum8(_mm256_add_ps(s0, s1));
  for (; i < n; i++) {
    float e = expz(sc * x[i] - m);
    if (y) y[i] = e;
    t += e;
  }
  return t;
}
static inline __attribute__((always_inline)) __m256 poly8(__m256 x, const __m256 *c, int deg) {
  __m256 p = c[deg];
  for (int k = deg - 1; k >= 1; k--) p = _mm256_fmadd_ps(p, x, c[k]);
  return _mm256_mul_ps(p, x);
}
static inline __attribute__((always_inline)) float vpoly_n(const float *x, float *y, int64_t n, const float *cf,
                                                           int deg) {
  __m256 c[TAYLOR_MAX + 1], s[4];
  for (int l = 0; l < 4; l++) s[l] = _mm256_setzero_ps();
  for (int k = 1; k <= deg; k++) c[k] = _mm256_set1_ps(cf[k]);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; l++) {
      __m256 e = poly8(_mm256_loadu_ps(x + i + 8 * l), c, deg);
      if (y) _mm256_storeu_ps(y + i + 8 * l, e);
      s[l] = _mm256_add_ps(s[l], e);
    }
  for (; i + 8 <= n; i += 8) {
    __m256 e = poly8(_mm256_loadu_ps(x + i), c, deg);
    if (y) _mm256_storeu_ps(y + i, e);
    s[0] = _mm256_add_ps(s[0], e);
  }
  float t = hsum8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
  if (i < n) { // the tail in a padded vector: a value does not depend on its position
    float buf[8] = {0};
    memcpy(buf, x + i, sizeof(float) * (size_t)(n - i));
    _mm256_storeu_ps(buf, poly8(_mm256_loadu_ps(buf), c, deg));
    for (int64_t l = 0; l < n - i; l++) t += buf[l];
    if (y) memcpy(y + i, buf, sizeof(float) * (size_t)(n - i));
  }
  return t;
}
#else
static float vmax(const float *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}
static float vexp_s(const float *x, float *y, int64_t n, float sc, float m) {
  float acc[16] = {0};
  for (int64_t i = 0; i < n; i++) {
    float e = expz(sc * x[i] - m);
    if (y) y[i] = e;
    acc[i & 15] += e;
  }
  return hsum16(acc);
}
static float vpoly_n(const float *x, float *y, int64_t n, const float *c, int deg) {
  float acc[16] = {0};
  for (int64_t i = 0; i < n; i++) {
    float e = c[deg];
    for (int k = deg - 1; k >= 1; k--) e = e * x[i] + c[k];
    e *= x[i];
    if (y) y[i] = e;
    acc[i & 15] += e;
  }
  return hsum16(acc);
}
#endif
#if defined(__AVX512F__)
static void stream_row(float *dst, const float *src, int64_t n) {
  if (((uintptr_t)dst & 63) || (n & 15)) { memcpy(dst, src, sizeof(float) * (size_t)n); return; }
  for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
}
static void stream_fence(void) { _mm_sfence(); }
#elif defined(__AVX2__)
static void stream_row(float *dst, const float *src, int64_t n) {
  if (((uintptr_t)dst & 31) || (n & 7)) { memcpy(dst, src, sizeof(float) * (size_t)n); return; }
  for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
}
static void stream_fence(void) { _mm_sfence(); }
#else
static void stream_row(float *dst, const float *src, int64_t n) { memcpy(dst, src, sizeof(float) * (size_t)n); }
static void stream_fence(void) {}
#endif
static float vexp(const float *x, float *y, int64_t n, float m) { return vexp_s(x, y, n, 1.0f, m); }
static float vexp_store(const float *x, float *y, int64_t n, float m) { return vexp(x, y, n, m); }
static float vexp_sum(const float *x, int64_t n, float m) { return vexp(x, NULL, n, m); }
// y = expm1(p x) by its Taylor polynomial of degree deg, as a polynomial in x (the
// coefficients p^k / k! are folded once a row); returns its sum.
static float vexpm1_taylor(const float *x, float *y, int64_t n, float p, int deg) {
  float c[TAYLOR_MAX + 1], t = 1.0f; // c[0]: unused (expm1 has no constant term)
  for (int k = 1; k <= deg; k++) c[k] = t = t * p / (float)k;
  switch (deg) { // one unrolled loop per degree
    case 1: return vpoly_n(x, y, n, c, 1);
    case 2: return vpoly_n(x, y, n, c, 2);
    case 3: return vpoly_n(x, y, n, c, 3);
    case 4: return vpoly_n(x, y, n, c, 4);
    case 5: return vpoly_n(x, y, n, c, 5);
    default: return vpoly_n(x, y, n, c, TAYLOR_MAX);
  }
}
// The lowest degree n for expm1 on [0, U] whose Taylor remainder e^U U^(n+1) / (n+1)!
// is at most 2^-25, a quarter ulp of the value 1 + expm1 it stands for (in [1, 2)
// for U < ln 2); 0 when no degree up to TAYLOR_MAX is (U above 0.25, or NaN).
static int taylor_degree(float U) {
  if (!(U <= 0.25f)) return 0;
  float t = 1.2841f * U; // e^0.25 >= e^U
  for (int n = 1; n <= TAYLOR_MAX; n++)
    if ((t *= U / (float)(n + 1)) <= 0x1p-25f) return n;
  return 0;
}
