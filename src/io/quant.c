// ggml block formats: type table, reference dequantizers and quantizers.
// Every product and sum is done in f32 in ggml's order, one rounding per operation, so
// results are bit-identical to ggml's reference code and gguf-py. Dequantization is in
// fact exact up to its last add or subtract (f16 scales carry 11 significant bits, quants
// and sub-block scales at most 8, so the products fit f32's 24; only Q6_K's (d*sc)*q can
// round, and it adds nothing after), hence immune to FMA contraction. The quantizers'
// x*id + 8.5 is not: GCC in ISO C mode (-std=c11) never contracts, clang needs the pragma.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "engine/engine.h"
#include "engine/kquants.h"
#include "io/quant.h"

#define QK 32     // values per block of the simple formats
#define QK_K 256  // values per K-quant super-block

typedef struct { const char *name; int64_t block; size_t size; } qtype_info;

// Sizes as ggml defines them (gguf-py's GGML_QUANT_SIZES); ids missing here were
// retired from ggml and are rejected as unknown.
static const qtype_info qtypes[WK_QT_COUNT] = {
  [WK_QT_F32] = {"F32", 1, 4},            [WK_QT_F16] = {"F16", 1, 2},
  [WK_QT_Q4_0] = {"Q4_0", 32, 18},        [WK_QT_Q4_1] = {"Q4_1", 32, 20},
  [WK_QT_Q5_0] = {"Q5_0", 32, 22},        [WK_QT_Q5_1] = {"Q5_1", 32, 24},
  [WK_QT_Q8_0] = {"Q8_0", 32, 34},        [WK_QT_Q8_1] = {"Q8_1", 32, 40},
  [WK_QT_Q2_K] = {"Q2_K", 256, 84},       [WK_QT_Q3_K] = {"Q3_K", 256, 110},
  [WK_QT_Q4_K] = {"Q4_K", 256, 144},      [WK_QT_Q5_K] = {"Q5_K", 256, 176},
  [WK_QT_Q6_K] = {"Q6_K", 256, 210},      [WK_QT_Q8_K] = {"Q8_K", 256, 292},
  [WK_QT_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [WK_QT_IQ2_XS] = {"IQ2_XS", 256, 74},
  [WK_QT_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [WK_QT_IQ1_S] = {"IQ1_S", 256, 50},
  [WK_QT_IQ4_NL] = {"IQ4_NL", 32, 18},    [WK_QT_IQ3_S] = {"IQ3_S", 256, 110},
  [WK_QT_IQ2_S] = {"IQ2_S", 256, 82},     [WK_QT_IQ4_XS] = {"IQ4_XS", 256, 136},
  [WK_QT_I8] = {"I8", 1, 1},              [WK_QT_I16] = {"I16", 1, 2},
  [WK_QT_I32] = {"I32", 1, 4},            [WK_QT_I64] = {"I64", 1, 8},
  [WK_QT_F64] = {"F64", 1, 8},            [WK_QT_IQ1_M] = {"IQ1_M", 256, 56},
  [WK_QT_BF16] = {"BF16", 1, 2},          [WK_QT_TQ1_0] = {"TQ1_0", 256, 54},
  [WK_QT_TQ2_0] = {"TQ2_0", 256, 66},     [WK_QT_MXFP4] = {"MXFP4", 32, 17},
  [WK_QT_NVFP4] = {"NVFP4", 64, 36},      [WK_QT_Q1_0] = {"Q1_0", 128, 18},
};

static const qtype_info *qinfo(int type) {
  if (type < 0 || type >= WK_QT_COUNT || !qtypes[type].size) return NULL;
  return &qtypes[type];
}

const char *wk_qtype_name(int type) { const qtype_info *q = qinfo(type); return q ? q->name : "?"; }
int64_t wk_quant_block_size(int type) { const qtype_info *q = qinfo(type); return q ? q->block : 0; }
size_t wk_quant_type_size(int type) { const qtype_info *q = qinfo(type); return q ? q->size : 0; }

size_t wk_quant_row_bytes(int type, int64_t n) {
  const qtype_info *q = qinfo(type);
  if (!q) { wk_error(WK_ERR_DTYPE, "unknown ggml type %d", type); return 0; }
  if (n < 0 || n % q->block) {
    wk_error(WK_ERR_SHAPE, "a row of %lld values is not a whole number of %s blocks of %lld",
             (long long)n, q->name, (long long)q->block);
    return 0;
  }
  if ((uint64_t)(n / q->block) > SIZE_MAX / q->size) {   // a count from a caller or a file
    wk_error(WK_ERR_SHAPE, "a row of %lld %s values is too large to address", (long long)n, q->name);
    return 0;
  }
  return (size_t)(n / q->block) * q->size;
}

int wk_quant_can_dequantize(int type) {
  switch (type) {
  case WK_QT_F32: case WK_QT_F16: case WK_QT_BF16: case WK_QT_Q8_0: case WK_QT_Q4_0:
  case WK_QT_Q4_1: case WK_QT_Q4_K: case WK_QT_Q5_K: case WK_QT_Q6_K: return 1;
  default: return 0;
  }
}

// Little-endian loads from byte pointers: file data has no alignment guarantee.
static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline float ldh(const uint8_t *p) { return wk_f16_to_f32(ld16(p)); }
static inline void sth(uint8_t *p, float v) {
  uint16_t h = wk_f32_to_f16(v);
  p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8);
}

// ---- simple 32-value blocks ----
static void deq_q8_0(const uint8_t *b, float *y) {
  float d = ldh(b);
  for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

// Q4_0 / Q4_1: byte j of qs carries element j (low nibble) and element j + 16 (high).
static void deq_q4_0(const uint8_t *b, float *y) {
  float d = ldh(b);
  const uint8_t *qs = b + 2;
  for (int j = 0; j < QK / 2; j++) {
    y[j] = (float)((qs[j] & 0x0F) - 8) * d;
    y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
  }
}

static void deq_q4_1(const uint8_t *b, float *y) {
  float d = ldh(b), m = ldh(b + 2);
  const uint8_t *qs = b + 4;
  for (int j = 0; j < QK / 2; j++) {
    y[j] = (float)(qs[j] & 0x0F) * d + m;
    y[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
  }
}

// ---- K-quants: a 256-value super-block split into sub-blocks (engine/kquants.h) ----
static void deq_q4_k(const uint8_t *b, float *y) { wk_kq_q45(b, ldh(b), ldh(b + 2), 0, y); }
static void deq_q5_k(const uint8_t *b, float *y) { wk_kq_q45(b, ldh(b), ldh(b + 2), 1, y); }
static void deq_q6_k(const uint8_t *b, float *y) { wk_kq_q6(b, ldh(b + 208), y); }

wk_status wk_dequantize_row(int type, const void *src, float *dst, int64_t n) {
  const qtype_info *q = qinfo(type);
  if (!q) return wk_error(WK_ERR_DTYPE, "dequantize: unknown ggml type %d", type);
  if (n < 0 || n % q->block)
    return wk_error(WK_ERR_SHAPE, "dequantize: %lld values are not a whole number of %s blocks of %lld",
                    (long long)n, q->name, (long long)q->block);
  if (n && (!src || !dst)) return wk_error(WK_ERR_ARG, "dequantize: NULL %s", src ? "dst" : "src");
  const uint8_t *s = src;
  void (*blk)(const uint8_t *, float *) = NULL;
  switch (type) {
  case WK_QT_F32: memcpy(dst, s, (size_t)n * 4); return WK_OK;
  case WK_QT_F16: for (int64_t i = 0; i < n; i++) dst[i] = ldh(s + 2 * i); return WK_OK;
  case WK_QT_BF16: for (int64_t i = 0; i < n; i++) dst[i] = wk_bf16_to_f32(ld16(s + 2 * i)); return WK_OK;
  case WK_QT_Q8_0: blk = deq_q8_0; break;
  case WK_QT_Q4_0: blk = deq_q4_0; break;
  case WK_QT_Q4_1: blk = deq_q4_1; break;
  case WK_QT_Q4_K: blk = deq_q4_k; break;
  case WK_QT_Q5_K: blk = deq_q5_k; break;
  case WK_QT_Q6_K: blk = deq_q6_k; break;
  default: return wk_error(WK_ERR_DTYPE, "dequantize: type %s is not supported", q->name);
  }
  for (int64_t i = 0; i < n / q->block; i++) blk(s + (size_t)i * q->size, dst + i * q->block);
  return WK_OK;
}

// ---- reference quantizers (round to nearest, as ggml's *_ref functions) ----
// Q8_0: d = max|x| / 127, q = round-half-away(x / d) computed as x * (1/d).
static void quant_q8_0(const float *x, uint8_t *b) {
  float amax = 0;
  for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
  float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
  sth(b, d);
  for (int j = 0; j < QK; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

// Q4_0: d = (the value of largest magnitude, sign kept) / -8, so that value maps to
// nibble 0; q = trunc(x / d + 8.5) clamped to 15.
static void quant_q4_0(const float *x, uint8_t *b) {
  float amax = 0, max = 0;
  for (int j = 0; j < QK; j++)
    if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
  float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
  sth(b, d);
  for (int j = 0; j < QK / 2; j++) {
    float v0 = x[j] * id + 8.5f, v1 = x[j + QK / 2] * id + 8.5f;
    int q0 = (int)v0 < 15 ? (int)v0 : 15, q1 = (int)v1 < 15 ? (int)v1 : 15;
    b[2 + j] = (uint8_t)(q0 | (q1 << 4));
  }
}

// Q4_1: d = (max - min) / 15, m = min; q = trunc((x - min) / d + 0.5) clamped to 15.
static void quant_q4_1(const float *x, uint8_t *b) {
  float min = INFINITY, max = -INFINITY;
  for (int j = 0; j < QK; j++) { min = fminf(min, x[j]); max = fmaxf(max, x[j]); }
  float d = (max - min) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
  sth(b, d);
  sth(b + 2, min);
  for (int j = 0; j < QK / 2; j++) {
    float v0 = (x[j] - min) * id + 0.5f, v1 = (x[j + QK / 2] - min) * id + 0.5f;
    int q0 = (int)v0 < 15 ? (int)v0 : 15, q1 = (int)v1 < 15 ? (int)v1 : 15;
    b[4 + j] = (uint8_t)(q0 | (q1 << 4));
  }
}

wk_status wk_quantize_row(int type, const float *src, void *dst, int64_t n) {
  const qtype_info *q = qinfo(type);
  if (!q) return wk_error(WK_ERR_DTYPE, "quantize: unknown ggml type %d", type);
  if (n < 0 || n % q->block)
    return wk_error(WK_ERR_SHAPE, "quantize: %lld values are not a whole number of %s blocks of %lld",
                    (long long)n, q->name, (long long)q->block);
  if (n && (!src || !dst)) return wk_error(WK_ERR_ARG, "quantize: NULL %s", src ? "dst" : "src");
  uint8_t *d = dst;
  void (*blk)(const float *, uint8_t *) = NULL;
  switch (type) {
  case WK_QT_F32: memcpy(d, src, (size_t)n * 4); return WK_OK;
  case WK_QT_F16: for (int64_t i = 0; i < n; i++) sth(d + 2 * i, src[i]); return WK_OK;
  case WK_QT_BF16:
    for (int64_t i = 0; i < n; i++) {
      uint16_t h = wk_f32_to_bf16(src[i]);
      d[2 * i] = (uint8_t)h; d[2 * i + 1] = (uint8_t)(h >> 8);
    }
    return WK_OK;
  case WK_QT_Q8_0: blk = quant_q8_0; break;
  case WK_QT_Q4_0: blk = quant_q4_0; break;
  case WK_QT_Q4_1: blk = quant_q4_1; break;
  default: return wk_error(WK_ERR_DTYPE, "quantize: no reference quantizer for %s", q->name);
  }
  for (int64_t i = 0; i < n / q->block; i++) blk(src + i * q->block, d + (size_t)i * q->size);
  return WK_OK;
}
