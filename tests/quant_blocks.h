// Random GGUF blocks for the quantized-weight tests (CPU and CUDA): random quants and
// sub-block scales, sane f16 super-scales, so the scales decide the magnitudes.
#pragma once
#include <stdint.h>
#include <stdlib.h>
#include "wick.h"
#include "engine/engine.h"

static uint64_t qb_rng = 88172645463325252ull;
static inline uint32_t qb_next_u32(void) {
  qb_rng ^= qb_rng << 13, qb_rng ^= qb_rng >> 7, qb_rng ^= qb_rng << 17;
  return (uint32_t)(qb_rng >> 11);
}

// A little-endian f16 of a small positive or negative scale.
static inline void qb_put_scale(uint8_t *p, float lo, float hi, int allow_neg) {
  float v = lo + (hi - lo) * (float)(qb_next_u32() % 10000) / 10000.0f;
  if (allow_neg && (qb_next_u32() & 1)) v = -v;
  uint16_t h = wk_f32_to_f16(v);
  p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

// rows x cols values of type dt in blocks (malloc'd; *bytes gets the size).
static inline uint8_t *qb_random(wk_dtype dt, int64_t rows, int64_t cols, size_t *bytes) {
  int64_t nb = rows * cols / wk_dtype_block(dt);
  size_t bb = wk_dtype_block_bytes(dt);
  *bytes = (size_t)nb * bb;
  uint8_t *b = malloc(*bytes);
  for (size_t i = 0; i < *bytes; i++) b[i] = (uint8_t)qb_next_u32();
  for (int64_t i = 0; i < nb; i++) {
    uint8_t *p = b + (size_t)i * bb;
    switch (dt) {
      case WK_Q8_0: qb_put_scale(p, 0.001f, 0.01f, 1); break;
      case WK_Q4_0: qb_put_scale(p, 0.01f, 0.2f, 1); break;
      case WK_Q4_1: qb_put_scale(p, 0.01f, 0.2f, 0); qb_put_scale(p + 2, -1.0f, 0.0f, 0); break;
      case WK_Q4_K:
      case WK_Q5_K: qb_put_scale(p, 0.0005f, 0.005f, 0); qb_put_scale(p + 2, 0.0005f, 0.005f, 0); break;
      case WK_Q6_K: qb_put_scale(p + 208, 0.0001f, 0.001f, 1); break;
      default: break;
    }
  }
  return b;
}
