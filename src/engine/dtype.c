// dtype names, sizes and the f16 / bf16 <-> f32 conversions (round to nearest even).
#include <string.h>
#include "engine.h"
#include "../backend/kernel_math.h"

static const char *const dtype_names[WK_DTYPE_COUNT] = {"f32",  "f16",  "bf16", "i32",  "q8_0",
                                                        "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"};
static const size_t dtype_sizes[WK_DTYPE_COUNT] = {4, 2, 2, 4, 0, 0, 0, 0, 0, 0};
// ggml's block sizes (values, bytes); plain types are blocks of one value.
static const int64_t dtype_block[WK_DTYPE_COUNT] = {1, 1, 1, 1, 32, 32, 32, 256, 256, 256};
static const size_t dtype_block_bytes[WK_DTYPE_COUNT] = {4, 2, 2, 4, 34, 18, 20, 144, 176, 210};

const char *wk_dtype_name(wk_dtype dt) {
  return (unsigned)dt < WK_DTYPE_COUNT ? dtype_names[dt] : "?";
}
size_t wk_dtype_size(wk_dtype dt) { return (unsigned)dt < WK_DTYPE_COUNT ? dtype_sizes[dt] : 0; }
int wk_dtype_is_quantized(wk_dtype dt) { return dt >= WK_Q8_0 && dt < WK_DTYPE_COUNT; }
int64_t wk_dtype_block(wk_dtype dt) { return (unsigned)dt < WK_DTYPE_COUNT ? dtype_block[dt] : 0; }
size_t wk_dtype_block_bytes(wk_dtype dt) { return (unsigned)dt < WK_DTYPE_COUNT ? dtype_block_bytes[dt] : 0; }
size_t wk_dtype_bytes(wk_dtype dt, int64_t numel) {
  int64_t b = wk_dtype_block(dt);
  return b > 0 ? (size_t)(numel / b) * wk_dtype_block_bytes(dt) : 0;
}
bool wk_is_float(wk_dtype dt) { return dt == WK_F32 || dt == WK_F16 || dt == WK_BF16; }

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float wk_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t wk_f32_to_bf16(float f) { return wkm_f32_to_bf16(f); }

float wk_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) { // subnormal: exact as a float product
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t wk_f32_to_f16(float f) {
  uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); // rounds to inf
  if (a < 0x38800000u) { // result is subnormal or zero: let the FPU round
    float v = bits_f32(a) * 16777216.0f; // * 2^24: f16 subnormal ulp is 2^-24
    return (uint16_t)(sign | (uint32_t)__builtin_nearbyintf(v));
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return (uint16_t)(sign | (r >> 13));
}
