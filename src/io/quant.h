// ggml block-quantized storage types: sizes and dequantization are public
// (wick/gguf.h); this header adds the reference quantizers that tests and fixture
// checks use.
#pragma once
#include "wick/gguf.h"

// Block layouts (bytes; "f16" is an IEEE half, little-endian; values per block in []):
//   Q8_0 [32]  34 B: f16 d | i8 q[32]                    x = d * q
//   Q4_0 [32]  18 B: f16 d | u8 qs[16]                   x = d * (nibble - 8)
//   Q4_1 [32]  20 B: f16 d | f16 m | u8 qs[16]           x = d * nibble + m
//        qs[j] holds element j in its low nibble and element j + 16 in its high one.
//   Q4_K [256] 144 B: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
//   Q5_K [256] 176 B: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
//   Q6_K [256] 210 B: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
// quant.c explains the K-quant packings next to the code that unpacks them.

// Reference quantizers with ggml's round-to-nearest arithmetic (the same bytes as
// ggml's quantize_row_*_ref and gguf-py's gguf.quants.quantize). n is a multiple of
// the block size. Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1.
wk_status wk_quantize_row(int type, const float *src, void *dst, int64_t n);
