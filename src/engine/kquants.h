// One super-block of ggml's K-quants (Q4_K, Q5_K, Q6_K: 256 values) into f32, for the
// file reader's reference dequantizer (io/quant.c) and the CPU kernels (compiled per
// ISA: backend/cpu/dequant.c), so that the layouts live in one place; the scale and min
// unpacking also serves the CUDA kernels (backend/cuda/qmatmul.cu). The caller loads
// the f16 scales (each its own way) and passes them in. Every product and sum is in
// f32 in ggml's order, one rounding each: results are bit-identical to ggml's.
#pragma once
#include <stdint.h>
#ifdef __CUDACC__
#define WK_KQ_HD __host__ __device__
#else
#define WK_KQ_HD
#endif

// Q4_K and Q5_K have 8 sub-blocks of 32 values, each with a 6-bit scale sc and a 6-bit
// min m: x = (d * sc) * q - (dmin * m). The 16 six-bit numbers pack into 12 bytes (bit
// 7 on the left):
//   bytes 0-3   S S s s s s s s   s = scale 0..3, S = top 2 bits of scale 4..7
//   bytes 4-7   M M m m m m m m   m = min 0..3,   M = top 2 bits of min 4..7
//   bytes 8-11  n n n n l l l l   l = low 4 bits of scale 4..7, n = of min 4..7
static inline WK_KQ_HD void wk_kq_scale_min(int j, const uint8_t *s, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K (has_high 0; 144 bytes: d, dmin, 12 scale bytes, 128 of nibbles) and Q5_K
// (has_high 1; 176 bytes: the same with 32 bytes of fifth bits qh before the nibbles).
// qs holds 4 chunks of 32 bytes; chunk c gives sub-block 2c its low nibbles and
// sub-block 2c + 1 its high nibbles; the fifth bit of value l of sub-block i is bit i of
// qh[l]. d0 * q is exact, so d0 * q - min0 rounds once, contracted or not.
static inline void wk_kq_q45(const uint8_t *b, float d, float dmin, int has_high, float *y) {
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (has_high ? 48 : 16);
  for (int c = 0; c < 4; c++, qs += 32, y += 64) {
    int sc0, m0, sc1, m1;
    wk_kq_scale_min(2 * c, scales, &sc0, &m0);
    wk_kq_scale_min(2 * c + 1, scales, &sc1, &m1);
    const float d0 = d * (float)sc0, min0 = dmin * (float)m0;
    const float d1 = d * (float)sc1, min1 = dmin * (float)m1;
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

// Q6_K (210 bytes: ql[128], qh[64], 16 signed scale bytes, d at byte 208): 16 sub-blocks
// of 16 values, x = (d * scale) * (q - 32) with q 6 bits. Each 128-value half h uses
// ql[64h..], qh[32h..], scales[8h..]; for l in 0..31 of that half:
//   value l      = ql[l]    low nibble  | bits 0-1 of qh[l] << 4
//   value l + 32 = ql[l+32] low nibble  | bits 2-3 of qh[l] << 4
//   value l + 64 = ql[l]    high nibble | bits 4-5 of qh[l] << 4
//   value l + 96 = ql[l+32] high nibble | bits 6-7 of qh[l] << 4
// (d * scale) first, the reference's order: the one product that can round.
static inline void wk_kq_q6(const uint8_t *b, float d, float *y) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *sc = (const int8_t *)(b + 192);
  for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; l++) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * (float)sc[is] * (float)q1;
      y[l + 32] = d * (float)sc[is + 2] * (float)q2;
      y[l + 64] = d * (float)sc[is + 4] * (float)q3;
      y[l + 96] = d * (float)sc[is + 6] * (float)q4;
    }
  }
}
