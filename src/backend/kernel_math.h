// Float math shared by the backends' kernels: branch-free, so the CPU compiler
// vectorizes it (libm calls would not), and compiled for the GPU as well, so both
// backends compute the same values. The CPU's AVX2 / AVX-512 elementwise kernels
// (cpu/vmath.h) evaluate these same formulas with intrinsics.
// Accuracy (tests/backend/test_vmath.c sweeps every ISA path against libm in double,
// subnormals, +-inf and NaN included): exp and log within 2 ulp over the whole float
// range; tanh and sigmoid within 3 ulp; silu within 4 ulp (plus |x| * 2^-149 where
// the sigmoid is subnormal, x < -87); gelu_tanh within 4 ulp plus the conditioning
// of its argument u = k (x + c x^3) for negative x; erf within 3e-7 absolute, so
// gelu within 4 ulp + 1.5e-7 |x|.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define WKM_FN static __host__ __device__ __forceinline__
#else
#define WKM_FN static inline
#endif

// a * b + c, with one rounding where the target has FMA (ISO C forbids the compiler
// to fuse it by itself), as the vector kernels do.
#if defined(__CUDACC__) || defined(__FMA__)
#define WKM_FMA(a, b, c) fmaf(a, b, c)
#else
#define WKM_FMA(a, b, c) ((a) * (b) + (c))
#endif

WKM_FN float wkm_bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// f32 -> i32 toward zero, saturating, NaN -> 0: CUDA's cvt.rzi.s32.f32 (C leaves an
// out-of-range conversion undefined; x86 gave INT_MIN for 1e10 as for NaN).
WKM_FN int32_t wkm_f32_to_i32(float f) {
  return f != f ? 0 : f >= 2147483648.0f ? 2147483647 : f <= -2147483648.0f ? (-2147483647 - 1) : (int32_t)f;
}
WKM_FN uint32_t wkm_f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// f32 -> bf16 bits, rounded to nearest even; a NaN stays a quiet NaN (sign and top of
// its payload kept). Branch-free, so loops over it vectorize. The one rounding the
// engine (wk_f32_to_bf16), the CPU kernels, the CUDA kernels and the generated ones use.
WKM_FN uint16_t wkm_f32_to_bf16(float f) {
  uint32_t u = wkm_f2bits(f), r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

// Constants of exp: x = n*ln2 + r with ln2 in two parts (n*LN2_HI is exact), and
// the shifter 1.5 * 2^23: x*log2(e) + SHIFT rounds to an integer n that sits in the
// low mantissa bits (round-to-nearest that vectorizes, unlike roundf).
#define WKM_LOG2E 1.44269504088896341f
#define WKM_LN2_HI 0.693145751953125f
#define WKM_LN2_LO 1.428606765330187045e-06f
#define WKM_SHIFT 12582912.0f
#define WKM_SHIFT_BITS 0x4B400000u
// e^r = 1 + r + r^2 p(r) for |r| <= ln2/2 (Cephes' p)
#define WKM_EXP_P0 1.9875691500E-4f
#define WKM_EXP_P1 1.3981999507E-3f
#define WKM_EXP_P2 8.3334519073E-3f
#define WKM_EXP_P3 4.1665795894E-2f
#define WKM_EXP_P4 1.6666665459E-1f
#define WKM_EXP_P5 5.0000001201E-1f

// For |x| < 2^21: returns e^r - 1 where x = n*ln2 + r, |r| <= ln2/2, and n in *k.
WKM_FN float wkm_exp_reduce(float x, int32_t *k) {
  float t = WKM_FMA(x, WKM_LOG2E, WKM_SHIFT), n = t - WKM_SHIFT;
  float r = WKM_FMA(n, -WKM_LN2_HI, x);
  r = WKM_FMA(n, -WKM_LN2_LO, r);
  float p = WKM_EXP_P0;
  p = WKM_FMA(p, r, WKM_EXP_P1);
  p = WKM_FMA(p, r, WKM_EXP_P2);
  p = WKM_FMA(p, r, WKM_EXP_P3);
  p = WKM_FMA(p, r, WKM_EXP_P4);
  p = WKM_FMA(p, r, WKM_EXP_P5);
  *k = (int32_t)(wkm_f2bits(t) - WKM_SHIFT_BITS); // unsigned wrap: defined for NaN too
  return WKM_FMA(p, r * r, r);
}

// 2^k for k in [-126, 127].
WKM_FN float wkm_pow2i(int32_t k) { return wkm_bits2f((uint32_t)(k + 127) << 23); }

// e * 2^k for k in [-150, 129], rounded once: the first factor keeps the product
// normal (so exact), the second may overflow to inf or round into the subnormals.
WKM_FN float wkm_ldexp(float e, int32_t k) {
  int32_t h = k / 2;
  return e * wkm_pow2i(h) * wkm_pow2i(k - h);
}

// exp over all floats: e^-104 rounds to 0 and e^89 overflows, so clamping there
// changes no result (and keeps n in range); NaN passes both clamps.
WKM_FN float wkm_exp(float x) {
  x = x < -104.0f ? -104.0f : x;
  x = x > 89.0f ? 89.0f : x;
  int32_t k;
  float p = wkm_exp_reduce(x, &k);
  return wkm_ldexp(p + 1.0f, k);
}

// Cephes' log polynomial: log(1 + f) = f - f^2/2 + f^3 q(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1].
#define WKM_LOG_Q0 7.0376836292E-2f
#define WKM_LOG_Q1 -1.1514610310E-1f
#define WKM_LOG_Q2 1.1676998740E-1f
#define WKM_LOG_Q3 -1.2420140846E-1f
#define WKM_LOG_Q4 1.4249322787E-1f
#define WKM_LOG_Q5 -1.6668057665E-1f
#define WKM_LOG_Q6 2.0000714765E-1f
#define WKM_LOG_Q7 -2.4999993993E-1f
#define WKM_LOG_Q8 3.3333331174E-1f
#define WKM_LN2 0.693147180559945f

// log(m) + e*ln2 for m in [sqrt(1/2), sqrt(2)).
WKM_FN float wkm_log_core(float m, float e) {
  float f = m - 1.0f, z = f * f;
  float y = WKM_LOG_Q0;
  y = WKM_FMA(y, f, WKM_LOG_Q1);
  y = WKM_FMA(y, f, WKM_LOG_Q2);
  y = WKM_FMA(y, f, WKM_LOG_Q3);
  y = WKM_FMA(y, f, WKM_LOG_Q4);
  y = WKM_FMA(y, f, WKM_LOG_Q5);
  y = WKM_FMA(y, f, WKM_LOG_Q6);
  y = WKM_FMA(y, f, WKM_LOG_Q7);
  y = WKM_FMA(y, f, WKM_LOG_Q8);
  y = y * f * z;
  return WKM_FMA(e, WKM_LN2, f + WKM_FMA(-0.5f, z, y));
}

WKM_FN float wkm_log(float x) {
  // subnormals: scale by 2^23 first so that the exponent field is the exponent
  int sub = x < 1.17549435e-38f;
  float xs = sub ? x * 8388608.0f : x;
  uint32_t u = wkm_f2bits(xs);
  float e = (float)((int32_t)((u >> 23) & 0xff) - 127) - (sub ? 23.0f : 0.0f);
  float m = wkm_bits2f((u & 0x007fffffu) | 0x3f800000u); // [1, 2)
  int big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  float r = wkm_log_core(m, e);
  r = x == 0.0f ? -INFINITY : r;
  r = x < 0.0f || x != x ? NAN : r;
  return x == INFINITY ? x : r;
}

// expm1 = 2^n * (1 + p) - 1 = s*p + (s - 1): exactly p when n = 0, so small
// arguments keep their relative accuracy. For x in [-87, 88].
WKM_FN float wkm_expm1(float x) {
  int32_t k;
  float p = wkm_exp_reduce(x, &k), sc = wkm_pow2i(k);
  return WKM_FMA(sc, p, sc - 1.0f);
}

// n / d for d in [1, 2] and n in [-1, 1] (tanh's and sigmoid's divisions), the IEEE
// quotient. A GPU source that defines WKM_DIV12_RCP (kernels ew_gen.cu generates,
// WICK_CUDA_EWGEN bit 8) takes a reciprocal refined once, the quotient and one
// remainder correction: the instructions of the division's fast path without its
// operand range check and slow-path branch, which these ranges never need. It
// equals the division bit for bit for every float in them and NaN, except -0 / d,
// +0 here (tanh's copysign sets that sign), and wkm_tanh and wkm_sigmoid equal
// their division forms for every float: checked on an H200, tools/cuda_exact_check.cu.
WKM_FN float wkm_div12(float n, float d) {
#if defined(__CUDA_ARCH__) && defined(WKM_DIV12_RCP)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  r = fmaf(r, fmaf(-d, r, 1.0f), r);
  float q = __fmul_rn(n, r);
  return fmaf(fmaf(-d, q, n), r, q);
#else
  return n / d;
#endif
}

// tanh|x| = -q / (2 + q) with q = expm1(-2|x|) in [-1, 0]: one exp, one division by
// a number in [1, 2], no branches; tanh rounds to 1 beyond 9.01.
WKM_FN float wkm_tanh(float x) {
  float ax = fabsf(x);
  float q = wkm_expm1(-2.0f * (ax > 10.0f ? 10.0f : ax));
  return copysignf(wkm_div12(-q, 2.0f + q), x);
}

// With e = exp(-|x|) in [0, 1]: 1 / (1 + e) for x >= 0, e / (1 + e) below: no
// overflow, and tiny results keep their relative accuracy.
WKM_FN float wkm_sigmoid(float x) {
  float e = wkm_exp(-fabsf(x)), r = wkm_div12(1.0f, 1.0f + e);
  return x >= 0.0f ? r : e * r;
}

WKM_FN float wkm_silu(float x) { return x * wkm_sigmoid(x); }

// The tanh form of gelu: 0.5 x (1 + tanh u) = x * sigmoid(2u), which has no
// cancellation for negative x.
#define WKM_GELU_K 0.7978845608f
#define WKM_GELU_C 0.044715f
WKM_FN float wkm_gelu_tanh(float x) {
  float u = WKM_GELU_K * WKM_FMA(WKM_GELU_C * x, x * x, x);
  return x * wkm_sigmoid(2.0f * u);
}

// erf by Abramowitz & Stegun 7.1.26 refined: max abs error 1.5e-7.
WKM_FN float wkm_erf(float x) {
  float ax = fabsf(x);
  float t = 1.0f / WKM_FMA(0.3275911f, ax, 1.0f);
  float y = WKM_FMA(1.061405429f, t, -1.453152027f);
  y = WKM_FMA(y, t, 1.421413741f);
  y = WKM_FMA(y, t, -0.284496736f);
  y = WKM_FMA(y, t, 0.254829592f);
  y = y * t;
  float r = 1.0f - y * wkm_exp(-ax * ax);
  // near zero the series is more accurate (relative error)
  float x2 = x * x;
  float small = ax * 1.1283791671f * (1.0f - x2 * (0.333333333f - x2 * (0.1f - x2 * 0.0238095238f)));
  r = ax < 0.1f ? small : r;
  return copysignf(r, x);
}

WKM_FN float wkm_gelu(float x) { return 0.5f * x * (1.0f + wkm_erf(x * 0.70710678118f)); }

// Counter-based RNG: a 64-bit hash of (seed, element index), so random ops give the
// same numbers on every backend, thread count and block split.
WKM_FN uint64_t wkm_rng_hash(uint64_t seed, uint64_t idx) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + idx * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0, 1) with 24 random bits.
WKM_FN float wkm_u01(uint64_t seed, uint64_t i) { return (float)(wkm_rng_hash(seed, i) >> 40) * 0x1p-24f; }

// d/dx x*Phi(x), and the same for the tanh approximation of gelu.
WKM_FN float wkm_gelu_grad(float x) {
  float phi = 0.3989422804f * wkm_exp(-0.5f * x * x);
  return 0.5f * (1.0f + wkm_erf(x * 0.70710678118f)) + x * phi;
}
WKM_FN float wkm_gelu_tanh_grad(float x) {
  const float k = 0.7978845608f, c = 0.044715f;
  float u = k * (x + c * x * x * x), t = wkm_tanh(u);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
}
