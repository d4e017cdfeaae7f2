// Float math shared by the backends' kernels: branch-free, so the CPU compiler
// vectorizes it (libm calls would not), and compiled for the GPU as well, so both
// backends compute the same values. Accuracy: exp/log within ~2 ulp; tanh, erf
// within ~2e-7 absolute.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define WKM_FN static __host__ __device__ __forceinline__
#else
#define WKM_FN static inline
#endif

WKM_FN float wkm_bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
WKM_FN uint32_t wkm_f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// exp(x) = 2^n * (1 + p(r)), x = n*ln2 + r, |r| <= ln2/2. Returns p(r) = e^r - 1
// (Cephes' polynomial) and the scale 2^n; exp and expm1 both build on it.
WKM_FN float wkm_exp_reduce(float x, float *scale) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  // round to nearest with the 1.5 * 2^23 trick: vectorizes, unlike roundf
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  *scale = wkm_bits2f((uint32_t)((int32_t)n + 127) << 23);
  return p * r * r + r;
}

WKM_FN float wkm_exp(float x) {
  float sc, p = wkm_exp_reduce(x, &sc);
  return (p + 1.0f) * sc;
}

WKM_FN float wkm_log(float x) {
  uint32_t u = wkm_f2bits(x);
  int32_t e = (int32_t)((u >> 23) & 0xff) - 127;
  float m = wkm_bits2f((u & 0x007fffffu) | 0x3f800000u); // [1, 2)
  int big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e += big;
  float f = m - 1.0f, z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f - 1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f - 1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  float fe = (float)e;
  float r = f + (y - 0.5f * z) + fe * 0.693147180559945f;
  r = x == 0.0f ? -INFINITY : r;
  r = x < 0.0f || x != x ? NAN : r;
  return x == INFINITY ? x : r;
}

// expm1 = 2^n * (1 + p) - 1 = s*p + (s - 1): exactly p when n = 0, so small
// arguments keep their relative accuracy.
WKM_FN float wkm_expm1(float x) {
  float sc, p = wkm_exp_reduce(x, &sc);
  return sc * p + (sc - 1.0f);
}

// tanh|x| = -q / (2 + q) with q = expm1(-2|x|): one exp, one division, no branches.
WKM_FN float wkm_tanh(float x) {
  float ax = x < 0 ? -x : x;
  float q = wkm_expm1(-2.0f * (ax > 9.0f ? 9.0f : ax));
  float r = -q / (2.0f + q);
  return x < 0 ? -r : r;
}

WKM_FN float wkm_sigmoid(float x) { return 1.0f / (1.0f + wkm_exp(-x)); }

// erf by Abramowitz & Stegun 7.1.26 refined: max abs error 1.5e-7.
WKM_FN float wkm_erf(float x) {
  float ax = x < 0 ? -x : x;
  float t = 1.0f / (1.0f + 0.3275911f * ax);
  float y = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  float r = 1.0f - y * wkm_exp(-ax * ax);
  // near zero the series is more accurate (relative error)
  float x2 = x * x;
  float small = ax * 1.1283791671f * (1.0f - x2 * (0.333333333f - x2 * (0.1f - x2 * 0.0238095238f)));
  r = ax < 0.1f ? small : r;
  return x < 0 ? -r : r;
}

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
