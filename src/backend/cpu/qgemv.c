// Decode-time matmul with a quantized weight: y[r, j] = x[r, :] . W[j, :] for r < rows
// <= 4, blocks expanded in registers and consumed at once (no panel in memory). For the
// 32-value formats (Q8_0, Q4_0, Q4_1) on AVX2 / AVX-512; other types and the scalar
// build return 0 and the caller uses dequantized panels instead.
// Each weight is expanded exactly as the reference does (q * d, or q * d + m with the
// exact product fused), so only the order of the f32 sums differs from an f32 matmul
// over the dequantized matrix. Two rows of W and two half-blocks per step give four
// independent FMA chains per x row, enough to cover the FMA latency at rows = 1.
#include <string.h>
#include "dequant.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define WK_AI static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define VL 16
typedef __m512 vf;
typedef __m512i vi;
WK_AI vf v_zero(void) { return _mm512_setzero_ps(); }
WK_AI vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
WK_AI vf v_load(const float *p) { return _mm512_loadu_ps(p); }
WK_AI vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
WK_AI vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
WK_AI float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
// the f16 at p, in every lane
WK_AI vf v_h(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_set1_epi16((short)(p[0] | p[1] << 8))); }
// 16 bytes -> 16 i32 lanes (u8 or i8)
WK_AI __m512i v_u8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
WK_AI __m512i v_i8(const uint8_t *p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)); }
WK_AI vf v_cvt(__m512i a) { return _mm512_cvtepi32_ps(a); }
WK_AI __m512i v_hi4(__m512i a) { return _mm512_srli_epi32(a, 4); }
#else
#define VL 8
typedef __m256 vf;
typedef __m256i vi;
WK_AI vf v_zero(void) { return _mm256_setzero_ps(); }
WK_AI vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
WK_AI vf v_load(const float *p) { return _mm256_loadu_ps(p); }
WK_AI vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
WK_AI vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
WK_AI float v_sum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
WK_AI vf v_h(const uint8_t *p) { return _mm256_cvtph_ps(_mm_set1_epi16((short)(p[0] | p[1] << 8))); }
WK_AI __m256i v_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
WK_AI __m256i v_i8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
WK_AI vf v_cvt(__m256i a) { return _mm256_cvtepi32_ps(a); }
WK_AI __m256i v_lo4(__m256i a) { return _mm256_and_si256(a, _mm256_set1_epi32(15)); }
WK_AI __m256i v_hi4(__m256i a) { return _mm256_srli_epi32(a, 4); }
WK_AI __m256i v_sub8(__m256i a) { return _mm256_sub_epi32(a, _mm256_set1_epi32(8)); }
#endif
#define NV (32 / VL) // vectors per 32-value block

// Block b expanded into w[0..NV): values 0..31 in order.
WK_AI void expand(const int T, const uint8_t *b, vf *w) {
  if (T == WK_Q8_0) {
    vf d = v_h(b);
    for (int v = 0; v < NV; v++) w[v] = v_mul(v_cvt(v_i8(b + 2 + VL * v)), d);
    return;
  }
  const uint8_t *qs = b + (T == WK_Q4_1 ? 4 : 2);
#if defined(__AVX512F__)
  // Each nibble indexes its block's 16 possible values (q * d + m, or (q - 8) * d: the
  // reference's roundings), one FMA a block; vpermps reads only an index's low 4 bits,
  // so byte i (value i low, value i + 16 high) needs no mask, and no int -> float
  // conversion or per-value FMA is left: about a third fewer instructions a block.
  const vf iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  vf lut;
  if (T == WK_Q4_1) { // d and m in one broadcast: lanes d, m, d, m, ... then duplicated apart
    int32_t dm;
    memcpy(&dm, b, 4);
    vf t = _mm512_cvtph_ps(_mm256_set1_epi32(dm));
    lut = v_fma(iota, _mm512_moveldup_ps(t), _mm512_movehdup_ps(t));
  } else {
    lut = v_mul(_mm512_sub_ps(iota, _mm512_set1_ps(8)), v_h(b));
  }
  vi q = v_u8(qs);
  w[0] = _mm512_permutexvar_ps(q, lut);
  w[1] = _mm512_permutexvar_ps(v_hi4(q), lut);
#else
  vf d = v_h(b);
  // byte i holds value i (low nibble) and value i + 16 (high)
  for (int v = 0; v < NV / 2; v++) {
    vi q = v_u8(qs + VL * v), lo = v_lo4(q), hi = v_hi4(q);
    if (T == WK_Q4_0) lo = v_sub8(lo), hi = v_sub8(hi);
    w[v] = v_cvt(lo), w[v + NV / 2] = v_cvt(hi);
  }
  if (T == WK_Q4_1) {
    vf m = v_h(b + 2);
    for (int v = 0; v < NV; v++) w[v] = v_fma(w[v], d, m); // q * d exact: the reference's rounding
  } else {
    for (int v = 0; v < NV; v++) w[v] = v_mul(w[v], d);
  }
#endif
}

// R x rows against J (1 or 2) rows of W starting at w.
WK_AI void dot_rows(const int T, const int R, const int J, int64_t nb, const float *x, int64_t ldx,
                    const uint8_t *w, size_t rb, size_t bb, float *y, int64_t ldy) {
  vf acc[4][2][2];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < J; j++) acc[r][j][0] = acc[r][j][1] = v_zero();
  for (int64_t b = 0; b < nb; b++) {
    vf wv[2][NV];
    for (int j = 0; j < J; j++) expand(T, w + (size_t)j * rb + (size_t)b * bb, wv[j]);
    for (int r = 0; r < R; r++) {
      const float *xr = x + r * ldx + b * 32;
      for (int v = 0; v < NV; v++) {
        vf xv = v_load(xr + VL * v);
        for (int j = 0; j < J; j++) acc[r][j][v & 1] = v_fma(xv, wv[j][v], acc[r][j][v & 1]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < J; j++) y[r * ldy + j] = v_sum(v_add(acc[r][j][0], acc[r][j][1]));
}

WK_AI void gemv_t(const int T, const int R, int64_t K, int64_t n, const float *x, int64_t ldx, const uint8_t *w,
                  size_t rb, float *y, int64_t ldy) {
  const size_t bb = T == WK_Q8_0 ? 34 : T == WK_Q4_0 ? 18 : 20;
  int64_t nb = K / 32, j = 0;
  // Prefetch rows a few KB ahead, a pair at a time: alone, the out-of-order window
  // keeps too few lines of this one stream in flight to reach DRAM bandwidth.
  const size_t ahead = (4096 / rb + 2) * rb;
  for (; j + 2 <= n; j += 2) {
    const char *pf = (const char *)w + (size_t)j * rb + ahead;
    for (size_t o = 0; o < 2 * rb; o += 64) __builtin_prefetch(pf + o);
    dot_rows(T, R, 2, nb, x, ldx, w + (size_t)j * rb, rb, bb, y + j, ldy);
  }
  if (j < n) dot_rows(T, R, 1, nb, x, ldx, w + (size_t)j * rb, rb, bb, y + j, ldy);
}

#define WK_GEMV_R(T)                                                   \
  switch (rows) {                                                      \
    case 1: gemv_t(T, 1, K, n, x, ldx, w, rb, y, ldy); break;          \
    case 2: gemv_t(T, 2, K, n, x, ldx, w, rb, y, ldy); break;          \
    case 3: gemv_t(T, 3, K, n, x, ldx, w, rb, y, ldy); break;          \
    default: gemv_t(T, 4, K, n, x, ldx, w, rb, y, ldy); break;         \
  }

int WK_ISA_FN(wk_cpu_qgemv)(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                            const void *wp, size_t rb, float *y, int64_t ldy) {
  const uint8_t *w = wp;
  switch (dt) {
    case WK_Q8_0: WK_GEMV_R(WK_Q8_0) return 1;
    case WK_Q4_0: WK_GEMV_R(WK_Q4_0) return 1;
    case WK_Q4_1: WK_GEMV_R(WK_Q4_1) return 1;
    default: return 0;
  }
}
#else
int WK_ISA_FN(wk_cpu_qgemv)(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                            const void *wp, size_t rb, float *y, int64_t ldy) {
  (void)dt, (void)rows, (void)K, (void)n, (void)x, (void)ldx, (void)wp, (void)rb, (void)y, (void)ldy;
  return 0;
}
#endif
