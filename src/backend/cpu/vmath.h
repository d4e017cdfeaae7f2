// Vector exp, log, tanh, sigmoid, silu, gelu over arrays, for the elementwise VM:
// the formulas of ../kernel_math.h written with AVX-512 / AVX2 intrinsics. The
// compiler vectorizes the scalar forms poorly (no FMA contraction in ISO C, masked
// divisions, clamps as compare-and-blend); here each is a straight line of FMAs.
// Same steps, constants and roundings as the scalar code built with FMA, so every
// path gives the same values (the scalar ISA build, without FMA, differs by an ulp).
// Compiled per ISA (included by ew.c); the scalar build loops over kernel_math.h.
// Every function takes d[0..n) = f(a[0..n)); a and d may be the same array. The
// tail is computed in a padded vector too, so a value never depends on its index
// (results are the same for any block split or thread count).
#pragma once
#include <string.h>
#include "../kernel_math.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define VM_AI static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define VM_L 16
typedef __m512 vf;
typedef __mmask16 vm;
VM_AI vf v1(float c) { return _mm512_set1_ps(c); }
VM_AI vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
VM_AI vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
VM_AI vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
VM_AI vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
VM_AI vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
// max/min return their second operand when either is NaN: pass x second to keep NaN
VM_AI vf vmax(vf c, vf x) { return _mm512_max_ps(c, x); }
VM_AI vf vmin(vf c, vf x) { return _mm512_min_ps(c, x); }
VM_AI vf vabs(vf x) { return _mm512_abs_ps(x); }
// |m| with the sign of s: (m & ~sign) | (s & sign) in one ternary-logic op
VM_AI vf vcopysign(vf m, vf s) {
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(m), _mm512_castps_si512(s),
                                                       _mm512_set1_epi32(INT32_MIN), 0xd8));
}
VM_AI vm vlt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
VM_AI vm vgt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
VM_AI vm veq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
VM_AI vm vunord(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
VM_AI vm vor_m(vm a, vm b) { return (vm)(a | b); }
VM_AI vf vsel(vm m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); } // m ? a : b
VM_AI vf vload(const float *p) { return _mm512_loadu_ps(p); }
VM_AI void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
// t = n + SHIFT (n's integer in the low mantissa bits): 2^n, |n| <= 127
VM_AI vf vpow2i(vf t) { return _mm512_scalef_ps(v1(1.0f), vsub(t, v1(WKM_SHIFT))); }
// e * 2^n rounded once, n in [-150, 129] (vscalefps does exactly that)
VM_AI vf vldexp(vf e, vf t) { return _mm512_scalef_ps(e, vsub(t, v1(WKM_SHIFT))); }
// x = m * 2^e with m in [1, 2): getmant / getexp handle subnormals themselves
VM_AI vf vmant(vf x) { return _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero); }
VM_AI vf vexpo(vf x) { return _mm512_getexp_ps(x); }
#else
#define VM_L 8
typedef __m256 vf;
typedef __m256 vm;
VM_AI vf v1(float c) { return _mm256_set1_ps(c); }
VM_AI vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
VM_AI vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
VM_AI vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
VM_AI vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
VM_AI vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
VM_AI vf vmax(vf c, vf x) { return _mm256_max_ps(c, x); }
VM_AI vf vmin(vf c, vf x) { return _mm256_min_ps(c, x); }
VM_AI vf vabs(vf x) { return _mm256_andnot_ps(v1(-0.0f), x); }
VM_AI vf vcopysign(vf m, vf s) { return _mm256_or_ps(vabs(m), _mm256_and_ps(v1(-0.0f), s)); }
VM_AI vm vlt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
VM_AI vm vgt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
VM_AI vm veq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
VM_AI vm vunord(vf a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
VM_AI vm vor_m(vm a, vm b) { return _mm256_or_ps(a, b); }
VM_AI vf vsel(vm m, vf a, vf b) { return _mm256_blendv_ps(b, a, m); }
VM_AI vf vload(const float *p) { return _mm256_loadu_ps(p); }
VM_AI void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
VM_AI __m256i vbits(vf a) { return _mm256_castps_si256(a); }
VM_AI vf vpow2i(vf t) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(vbits(t), _mm256_set1_epi32(WKM_SHIFT_BITS - 127)), 23));
}
// two factors, as wkm_ldexp: 2^h (h = (n + 254) >> 1 - 127) keeps the product normal
VM_AI vf vldexp(vf e, vf t) {
  __m256i k = _mm256_sub_epi32(vbits(t), _mm256_set1_epi32(WKM_SHIFT_BITS - 254)); // n + 254
  __m256i h = _mm256_srai_epi32(k, 1);                                              // h + 127
  vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(h, 23));
  vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(k, h), 23));     // n - h + 127
  return vmul(vmul(e, s1), s2);
}
VM_AI vf vmant(vf x) {
  return _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x007fffff))), v1(1.0f));
}
VM_AI vf vexpo(vf x) {
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(vbits(x), 23), _mm256_set1_epi32(127));
  return _mm256_cvtepi32_ps(e);
}
#endif

// ---- the formulas (see kernel_math.h for the why of each) ----
// An exact division: on Zen 4 a reciprocal estimate with a Newton step costs the
// same time (the divider runs beside the FMA pipes) and is not exact.
VM_AI vf vrcp(vf d) { return vdiv(v1(1.0f), d); }

// e^r - 1 for x = n*ln2 + r; *t = n + SHIFT
VM_AI vf vexp_reduce(vf x, vf *t) {
  vf tt = vfma(x, v1(WKM_LOG2E), v1(WKM_SHIFT)), n = vsub(tt, v1(WKM_SHIFT));
  vf r = vfma(n, v1(-WKM_LN2_HI), x);
  r = vfma(n, v1(-WKM_LN2_LO), r);
  vf p = vfma(v1(WKM_EXP_P0), r, v1(WKM_EXP_P1));
  p = vfma(p, r, v1(WKM_EXP_P2));
  p = vfma(p, r, v1(WKM_EXP_P3));
  p = vfma(p, r, v1(WKM_EXP_P4));
  p = vfma(p, r, v1(WKM_EXP_P5));
  *t = tt;
  return vfma(p, vmul(r, r), r);
}

// exp for x <= 89 (x >= -104 or clamped here), NaN kept
VM_AI vf vexp_hi(vf x) {
  vf t, p = vexp_reduce(vmax(v1(-104.0f), x), &t);
  return vldexp(vadd(p, v1(1.0f)), t);
}
VM_AI vf vexp(vf x) { return vexp_hi(vmin(v1(89.0f), x)); }

VM_AI vf vlog(vf x) {
#if !defined(__AVX512F__)
  vm sub = vlt(x, v1(1.17549435e-38f)); // subnormals: scale into the normals first
  vf xs = vsel(sub, vmul(x, v1(8388608.0f)), x);
  vf e = vsub(vexpo(xs), _mm256_and_ps(sub, v1(23.0f)));
#else
  vf xs = x, e = vexpo(x);
#endif
  vf m = vmant(xs);
  vm big = vgt(m, v1(1.41421356f));
  m = vsel(big, vmul(m, v1(0.5f)), m);
  e = vsel(big, vadd(e, v1(1.0f)), e);
  vf f = vsub(m, v1(1.0f)), z = vmul(f, f);
  vf y = vfma(v1(WKM_LOG_Q0), f, v1(WKM_LOG_Q1));
  y = vfma(y, f, v1(WKM_LOG_Q2));
  y = vfma(y, f, v1(WKM_LOG_Q3));
  y = vfma(y, f, v1(WKM_LOG_Q4));
  y = vfma(y, f, v1(WKM_LOG_Q5));
  y = vfma(y, f, v1(WKM_LOG_Q6));
  y = vfma(y, f, v1(WKM_LOG_Q7));
  y = vfma(y, f, v1(WKM_LOG_Q8));
  y = vmul(vmul(y, f), z);
  vf r = vfma(e, v1(WKM_LN2), vadd(f, vfma(v1(-0.5f), z, y)));
  r = vsel(veq(x, v1(0.0f)), v1(-INFINITY), r);
  r = vsel(vor_m(vlt(x, v1(0.0f)), vunord(x)), v1(NAN), r);
  return vsel(veq(x, v1(INFINITY)), x, r);
}

VM_AI vf vtanh(vf x) {
  vf t, a = vmin(v1(10.0f), vabs(x));
  vf p = vexp_reduce(vmul(a, v1(-2.0f)), &t), s = vpow2i(t);
  vf q = vfma(s, p, vsub(s, v1(1.0f))); // expm1(-2|x|)
  return vcopysign(vdiv(q, vadd(q, v1(2.0f))), x);
}

// sigmoid from e = exp(-|x|): 1/(1+e) or e/(1+e)
VM_AI vf vsigmoid(vf x) {
  vf e = vexp_hi(vsub(v1(0.0f), vabs(x))), r = vrcp(vadd(e, v1(1.0f)));
  return vsel(vlt(x, v1(0.0f)), vmul(e, r), r);
}

VM_AI vf vgelu_tanh(vf x) {
  vf u = vmul(v1(WKM_GELU_K), vfma(vmul(v1(WKM_GELU_C), x), vmul(x, x), x));
  return vmul(x, vsigmoid(vadd(u, u)));
}

VM_AI vf vsilu(vf x) { return vmul(x, vsigmoid(x)); }

// erf as x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 past it): XLA's / Eigen's
// float rational, ~1e-7 absolute. Half the operations of 1 - poly(t) exp(-x^2) with
// t = 1 / (1 + p|x|), and one division either way (GELU's erf in the GEMM epilogue).
VM_AI vf verf(vf x) {
  vf c = vmax(v1(-4.0f), vmin(v1(4.0f), x)), z = vmul(c, c);  // NaN kept (second operand)
  vf p = vfma(z, v1(-2.72614225801306e-10f), v1(2.77068142495902e-08f));
  p = vfma(z, p, v1(-2.10102402082508e-06f));
  p = vfma(z, p, v1(-5.69250639462346e-05f));
  p = vfma(z, p, v1(-7.34990630326855e-04f));
  p = vfma(z, p, v1(-2.95459980854025e-03f));
  p = vfma(z, p, v1(-1.60960333262415e-02f));
  vf q = vfma(z, v1(-1.45660718464996e-05f), v1(-2.13374055278905e-04f));
  q = vfma(z, q, v1(-1.68282697438203e-03f));
  q = vfma(z, q, v1(-7.37332916720468e-03f));
  q = vfma(z, q, v1(-1.42647390514189e-02f));
  return vdiv(vmul(c, p), q);
}

VM_AI vf vgelu(vf x) { return vmul(vmul(v1(0.5f), x), vadd(v1(1.0f), verf(vmul(x, v1(0.70710678118f))))); }

// d[0..n) = f(a[0..n)), the tail through a zero-padded vector
#define VM_ARRAY(name, f)                                                 \
  static inline void name(float *d, const float *a, int n) {             \
    int i = 0;                                                           \
    for (; i + 2 * VM_L <= n; i += 2 * VM_L) {                           \
      vf x0 = vload(a + i), x1 = vload(a + i + VM_L);                    \
      vf y0 = f(x0), y1 = f(x1);                                         \
      vstore(d + i, y0);                                                 \
      vstore(d + i + VM_L, y1);                                          \
    }                                                                    \
    for (; i + VM_L <= n; i += VM_L) vstore(d + i, f(vload(a + i)));     \
    if (i < n) {                                                         \
      float buf[VM_L] = {0};                                             \
      memcpy(buf, a + i, sizeof(float) * (size_t)(n - i));               \
      vstore(buf, f(vload(buf)));                                        \
      memcpy(d + i, buf, sizeof(float) * (size_t)(n - i));               \
    }                                                                    \
  }
#else
#define VM_ARRAY(name, f)                                                 \
  static inline void name(float *d, const float *a, int n) {             \
    for (int i = 0; i < n; i++) d[i] = f(a[i]);                          \
  }
#define vexp wkm_exp
#define vlog wkm_log
#define vtanh wkm_tanh
#define vsigmoid wkm_sigmoid
#define vsilu wkm_silu
#define vgelu wkm_gelu
#define vgelu_tanh wkm_gelu_tanh
#endif

VM_ARRAY(vm_exp, vexp)
VM_ARRAY(vm_log, vlog)
VM_ARRAY(vm_tanh, vtanh)
VM_ARRAY(vm_sigmoid, vsigmoid)
VM_ARRAY(vm_silu, vsilu)
VM_ARRAY(vm_gelu, vgelu)
VM_ARRAY(vm_gelu_tanh, vgelu_tanh)
