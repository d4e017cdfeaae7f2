// Block dequantizers for the quantized-weight kernels (matmul panels, embedding rows,
// the dequantize op). Compiled per ISA; Q8_0, Q4_0 and Q4_1 (the formats small models
// ship in) have AVX2 / AVX-512 paths, the K-quants plain C that the compiler vectorizes.
// Results are bit-identical to the reference dequantizers in src/io/quant.c (and so to
// ggml's): every product of an f16 scale and a quant is exact in f32, so neither the
// vector width nor FMA contraction can change a value (tests check every type).
#include "dequant.h"
#include "engine/kquants.h"

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

// ---- K-quants (engine/kquants.h: one super-block, plain C the compiler vectorizes) ----
static void deq_q45_k(const uint8_t *b, float *y, int64_t nb, int has_high) {
  const size_t bs = has_high ? 176 : 144;
  for (int64_t i = 0; i < nb; i++, b += bs, y += 256) wk_kq_q45(b, ldh(b), ldh(b + 2), has_high, y);
}
static void deq_q6_k(const uint8_t *b, float *y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++, b += 210, y += 256) wk_kq_q6(b, ldh(b + 208), y);
}

// f16 / bf16 weights read in place by the quantized-matmul kernel (blocks of one value).
static void deq_bf16(const uint8_t *b, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) { // 16 at a time: the copy-in and the shifts vectorize
    uint16_t h[16];
    uint32_t u[16];
    memcpy(h, b + 2 * i, sizeof h);
    for (int l = 0; l < 16; l++) u[l] = (uint32_t)h[l] << 16;
    memcpy(y + i, u, sizeof u);
  }
  for (; i < n; i++) {
    uint16_t h;
    memcpy(&h, b + 2 * i, 2);
    uint32_t u = (uint32_t)h << 16;
    memcpy(&y[i], &u, 4);
  }
}
static void deq_f16(const uint8_t *b, float *y, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 2 * i))));
#endif
  for (; i < n; i++) y[i] = ldh(b + 2 * i);
}

void WK_ISA_FN(wk_cpu_dequant)(wk_dtype dt, const void *src, float *dst, int64_t nblocks) {
  const uint8_t *b = src;
  switch (dt) {
    case WK_F16: deq_f16(b, dst, nblocks); break;
    case WK_BF16: deq_bf16(b, dst, nblocks); break;
    case WK_Q8_0: deq_q8_0(b, dst, nblocks); break;
    case WK_Q4_0: deq_q4(b, dst, nblocks, 0); break;
    case WK_Q4_1: deq_q4(b, dst, nblocks, 1); break;
    case WK_Q4_K: deq_q45_k(b, dst, nblocks, 0); break;
    case WK_Q5_K: deq_q45_k(b, dst, nblocks, 1); break;
    case WK_Q6_K: deq_q6_k(b, dst, nblocks); break;
    default: break; // builders admit only the types above (and f32, which is never expanded)
  }
}

// ---- fused decode GEMV for the K-quants ----
// y[r, j] = x[r, :] . W[j, :] for r < rows <= 4: each 256-value super-block is expanded
// one 32-value sub-block (one scale and min) at a time, in registers, and consumed at
// once; no dequantized row is written. Every weight is computed exactly as deq_q45_k /
// deq_q6_k compute it (d0 * q is exact, so the fused d0 * q - min0 rounds once, as
// theirs does), so only the order of the f32 sums differs from an f32 matmul over
// the dequantized matrix. Two W rows per step share each load of x.
#if defined(__AVX512F__) || defined(__AVX2__)
#include "vmath.h" // vf, v1, vfma, vmul, vload
#define KAI VM_AI
#define KL VM_L
#if defined(__AVX512F__)
typedef __m512i ki;
KAI float ksum(vf a) { return _mm512_reduce_add_ps(a); }
KAI ki ku8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
KAI ki kand(ki a, int m) { return _mm512_and_si512(a, _mm512_set1_epi32(m)); }
KAI ki ksrl(ki a, int s) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(s)); }
KAI ki kor(ki a, ki b) { return _mm512_or_si512(a, b); }
KAI ki kshl4(ki a) { return _mm512_slli_epi32(a, 4); }
KAI ki ksub(ki a, int c) { return _mm512_sub_epi32(a, _mm512_set1_epi32(c)); }
KAI vf kcvt(ki a) { return _mm512_cvtepi32_ps(a); }
#else
typedef __m256i ki;
KAI float ksum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
KAI ki ku8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
KAI ki kand(ki a, int m) { return _mm256_and_si256(a, _mm256_set1_epi32(m)); }
KAI ki ksrl(ki a, int s) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(s)); }
KAI ki kor(ki a, ki b) { return _mm256_or_si256(a, b); }
KAI ki kshl4(ki a) { return _mm256_slli_epi32(a, 4); }
KAI ki ksub(ki a, int c) { return _mm256_sub_epi32(a, _mm256_set1_epi32(c)); }
KAI vf kcvt(ki a) { return _mm256_cvtepi32_ps(a); }
#endif
#define KV (32 / KL) // vectors per sub-block

// Sub-block s (values 32s .. 32s + 31) of super-block b into w[0 .. KV).
KAI void kx_sub(const int T, const uint8_t *b, int s, vf *w) {
  if (T == WK_Q6_K) {
    // half h = s / 4 of 128 values; within it, values kk.. come from ql[kk & 63]
    // (low nibble below 64, high above) and bits 2 (kk / 32) of qh[kk & 31]
    int h = s >> 2, kk0 = 32 * (s & 3);
    const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
    float d = ldh(b + 208);
    for (int v = 0; v < KV; v++) {
      int kk = kk0 + KL * v;
      ki q = ku8(ql + (kk & 63));
      q = kk < 64 ? kand(q, 15) : ksrl(q, 4);
      q = kor(q, kshl4(kand(ksrl(ku8(qh + (kk & 31)), 2 * (kk >> 5)), 3)));
      w[v] = vmul(v1(d * (float)sc[kk / 16]), kcvt(ksub(q, 32))); // (d * scale) first, as the reference
    }
    return;
  }
  // Q4_K / Q5_K: sub-block s is the low (s even) or high nibbles of qs[32 (s / 2) ..]
  int sc, m;
  wk_kq_scale_min(s, b + 4, &sc, &m);
  vf d0 = v1(ldh(b) * (float)sc), nm = v1(-(ldh(b + 2) * (float)m));
  const uint8_t *qs = b + (T == WK_Q5_K ? 48 : 16) + 32 * (s >> 1), *qh = b + 16;
  for (int v = 0; v < KV; v++) {
    ki q = ku8(qs + KL * v);
    q = s & 1 ? ksrl(q, 4) : kand(q, 15);
    if (T == WK_Q5_K) q = kor(q, kshl4(kand(ksrl(ku8(qh + KL * v), s), 1)));
    w[v] = vfma(kcvt(q), d0, nm);
  }
}

// R x rows against J (1 or 2) rows of W starting at w.
KAI void kdot_rows(const int T, const int R, const int J, int64_t nb, const float *x, int64_t ldx, const uint8_t *w,
                   size_t rb, size_t bb, float *y, int64_t ldy) {
  vf acc[4][2][2];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < J; j++) acc[r][j][0] = acc[r][j][1] = v1(0.0f);
  for (int64_t b = 0; b < nb; b++)
    for (int s = 0; s < 8; s++) {
      vf wv[2][KV];
      for (int j = 0; j < J; j++) kx_sub(T, w + (size_t)j * rb + (size_t)b * bb, s, wv[j]);
      for (int r = 0; r < R; r++) {
        const float *xr = x + r * ldx + b * 256 + 32 * s;
        for (int v = 0; v < KV; v++) {
          vf xv = vload(xr + KL * v);
          for (int j = 0; j < J; j++) acc[r][j][v & 1] = vfma(xv, wv[j][v], acc[r][j][v & 1]);
        }
      }
    }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < J; j++) y[r * ldy + j] = ksum(acc[r][j][0]) + ksum(acc[r][j][1]);
}
#else
// Scalar build: the same sub-blocks expanded into a small buffer, then dotted.
static void kx_sub(const int T, const uint8_t *b, int s, float *w) {
  if (T == WK_Q6_K) {
    int h = s >> 2, kk0 = 32 * (s & 3);
    const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
    float d = ldh(b + 208), ds[2] = {d * (float)sc[kk0 / 16], d * (float)sc[kk0 / 16 + 1]};
    const uint8_t *l = ql + (kk0 & 63);
    int shift = 2 * (kk0 >> 5), high = kk0 >= 64;
    for (int i = 0; i < 32; i++) {
      int q = (high ? l[i] >> 4 : l[i] & 15) | ((qh[i] >> shift) & 3) << 4;
      w[i] = ds[i >> 4] * (float)(q - 32);
    }
    return;
  }
  int sc, m;
  wk_kq_scale_min(s, b + 4, &sc, &m);
  float d0 = ldh(b) * (float)sc, min0 = ldh(b + 2) * (float)m;
  const uint8_t *qs = b + (T == WK_Q5_K ? 48 : 16) + 32 * (s >> 1), *qh = b + 16;
  for (int i = 0; i < 32; i++) {
    int q = s & 1 ? qs[i] >> 4 : qs[i] & 15;
    if (T == WK_Q5_K) q |= ((qh[i] >> s) & 1) << 4;
    w[i] = d0 * (float)q - min0;
  }
}

static void kdot_rows(const int T, const int R, const int J, int64_t nb, const float *x, int64_t ldx, const uint8_t *w,
                      size_t rb, size_t bb, float *y, int64_t ldy) {
  float acc[4][2][8] = {{{0}}}; // 8 partial sums per output: the compiler vectorizes the i loop
  for (int64_t b = 0; b < nb; b++)
    for (int s = 0; s < 8; s++) {
      float wv[2][32];
      for (int j = 0; j < J; j++) kx_sub(T, w + (size_t)j * rb + (size_t)b * bb, s, wv[j]);
      for (int r = 0; r < R; r++) {
        const float *xr = x + r * ldx + b * 256 + 32 * s;
        for (int j = 0; j < J; j++)
          for (int i = 0; i < 32; i++) acc[r][j][i & 7] += xr[i] * wv[j][i];
      }
    }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < J; j++) {
      float t = 0;
      for (int i = 0; i < 8; i++) t += acc[r][j][i];
      y[r * ldy + j] = t;
    }
}
#endif

// Rows of W a pair at a time (each load of x serves both), ~4 KB ahead of them
// prefetched: one core alone keeps too few lines of one stream in flight.
#define KGEMV(T, R)                                                                      \
  for (int64_t j = 0; j < n; j += 2) {                                                   \
    const uint8_t *wj = w + (size_t)j * rb;                                              \
    for (size_t o = 0; o < 2 * rb; o += 64) __builtin_prefetch(wj + ahead + o);          \
    if (j + 1 < n) kdot_rows(T, R, 2, nb, x, ldx, wj, rb, bb, y + j, ldy);               \
    else kdot_rows(T, R, 1, nb, x, ldx, wj, rb, bb, y + j, ldy);                         \
  }
// one instance per (type, rows <= 4), each specialized by the compiler
#define KGEMV_TYPE(T)                                                                    \
  case T:                                                                                \
    if (rows == 1) { KGEMV(T, 1) } else if (rows == 2) { KGEMV(T, 2) }                   \
    else if (rows == 3) { KGEMV(T, 3) } else { KGEMV(T, 4) }                             \
    return 1;

int WK_ISA_FN(wk_cpu_qgemv_k)(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                              const void *wp, size_t rb, float *y, int64_t ldy) {
  const uint8_t *w = wp;
  const size_t bb = wk_dtype_block_bytes(dt), ahead = (4096 / (rb ? rb : 1) + 2) * rb;
  const int64_t nb = K / 256;
  switch (dt) {
    KGEMV_TYPE(WK_Q4_K)
    KGEMV_TYPE(WK_Q5_K)
    KGEMV_TYPE(WK_Q6_K)
    default: return 0;
  }
}
