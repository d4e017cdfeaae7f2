// Block dequantizers for the quantized-weight kernels (matmul panels, embedding rows,
// the dequantize op). Compiled per ISA; Q8_0, Q4_0 and Q4_1 (the formats small models
// ship in) have AVX2 / AVX-512 paths, the K-quants plain C that the compiler vectorizes.
// Results are bit-identical to the reference dequantizers in src/io/quant.c (and so to
// ggml's): every product of an f16 scale and a quant is exact in f32, so neither the
// vector width nor FMA contraction can change a value (tests check every type).
#include "dequant.h"

#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// f16 scales sit at any byte address.
static inline float ldh(const uint8_t *p) {
  uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return wk_f16_to_f32(h);
#endif
}

// ---- 32-value blocks ----
static void deq_q8_0(const uint8_t *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
    const int8_t *q = (const int8_t *)(b + 2);
#if defined(__AVX512F__)
    __m512 d = _mm512_set1_ps(ldh(b));
    __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q));
    __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d));
#elif defined(__AVX2__)
    __m256 d = _mm256_set1_ps(ldh(b));
    for (int k = 0; k < 4; k++) {
      __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * k)));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
    }
#else
    float d = ldh(b);
    for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
#endif
  }
}

// Q4_0 / Q4_1: byte j of qs holds element j (low nibble) and element j + 16 (high).
// Q4_1 adds its min m after the (exact) product, as the reference does.
static void deq_q4(const uint8_t *b, float *y, int64_t nb, int has_min) {
  const size_t bs = has_min ? 20 : 18;
  for (int64_t i = 0; i < nb; i++, b += bs, y += 32) {
    const uint8_t *qs = b + (has_min ? 4 : 2);
    float dv = ldh(b), mv = has_min ? ldh(b + 2) : 0.0f;
#if defined(__AVX512F__)
    __m512 d = _mm512_set1_ps(dv), m = _mm512_set1_ps(mv);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i lo = _mm512_and_si512(v, _mm512_set1_epi32(15)), hi = _mm512_srli_epi32(v, 4);
    if (!has_min) {
      lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(8));
      hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(8));
    }
    __m512 y0 = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), y1 = _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d);
    if (has_min) y0 = _mm512_add_ps(y0, m), y1 = _mm512_add_ps(y1, m); // Q4_0 keeps its -0.0s
    _mm512_storeu_ps(y, y0);
    _mm512_storeu_ps(y + 16, y1);
#elif defined(__AVX2__)
    __m256 d = _mm256_set1_ps(dv), m = _mm256_set1_ps(mv);
    __m256i off = _mm256_set1_epi32(has_min ? 0 : 8), mask = _mm256_set1_epi32(15);
    for (int k = 0; k < 2; k++) {
      __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * k)));
      __m256i lo = _mm256_sub_epi32(_mm256_and_si256(v, mask), off);
      __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(v, 4), off);
      __m256 y0 = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), d), y1 = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), d);
      if (has_min) y0 = _mm256_add_ps(y0, m), y1 = _mm256_add_ps(y1, m);
      _mm256_storeu_ps(y + 8 * k, y0);
      _mm256_storeu_ps(y + 16 + 8 * k, y1);
    }
#else
    int off = has_min ? 0 : 8;
    for (int j = 0; j < 16; j++) {
      y[j] = (float)((qs[j] & 0x0F) - off) * dv;
      y[j + 16] = (float)((qs[j] >> 4) - off) * dv;
    }
    if (has_min)
      for (int j = 0; j < 32; j++) y[j] += mv;
#endif
  }
}

// ---- K-quants (layouts documented in src/io/quant.c) ----
static void k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K (has_high = 0) and Q5_K (has_high = 1, the fifth bit from qh).
static void deq_q45_k(const uint8_t *b, float *y, int64_t nb, int has_high) {
  const size_t bs = has_high ? 176 : 144;
  for (int64_t i = 0; i < nb; i++, b += bs) {
    float d = ldh(b), dmin = ldh(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (has_high ? 48 : 16);
    for (int c = 0; c < 4; c++, qs += 32, y += 64) {
      int sc0, m0, sc1, m1;
      k_scale_min(2 * c, scales, &sc0, &m0);
      k_scale_min(2 * c + 1, scales, &sc1, &m1);
      float d0 = d * (float)sc0, min0 = dmin * (float)m0;
      float d1 = d * (float)sc1, min1 = dmin * (float)m1;
      for (int l = 0; l < 32; l++) {
        int lo = qs[l] & 0x0F, hi = qs[l] >> 4;
        if (has_high) {
          lo |= ((qh[l] >> (2 * c)) & 1) << 4;
          hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        y[l] = d0 * (float)lo - min0;
        y[32 + l] = d1 * (float)hi - min1;
      }
    }
  }
}

static void deq_q6_k(const uint8_t *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, b += 210) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = ldh(b + 208);
    for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; l++) {
        int is = l / 16;
        int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        // (d * scale) first: the reference's order, the one product that can round
        y[l] = d * (float)sc[is] * (float)q1;
        y[l + 32] = d * (float)sc[is + 2] * (float)q2;
        y[l + 64] = d * (float)sc[is + 4] * (float)q3;
        y[l + 96] = d * (float)sc[is + 6] * (float)q4;
      }
    }
  }
}

void WK_ISA_FN(wk_cpu_dequant)(wk_dtype dt, const void *src, float *dst, int64_t nblocks) {
  const uint8_t *b = src;
  switch (dt) {
    case WK_Q8_0: deq_q8_0(b, dst, nblocks); break;
    case WK_Q4_0: deq_q4(b, dst, nblocks, 0); break;
    case WK_Q4_1: deq_q4(b, dst, nblocks, 1); break;
    case WK_Q4_K: deq_q45_k(b, dst, nblocks, 0); break;
    case WK_Q5_K: deq_q45_k(b, dst, nblocks, 1); break;
    case WK_Q6_K: deq_q6_k(b, dst, nblocks); break;
    default: break; // builders admit only the types above
  }
}
