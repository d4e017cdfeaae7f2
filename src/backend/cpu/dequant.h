// Per-ISA block dequantizers shared by the CPU kernels that read quantized weights.
#pragma once
#include "cpu_kernels.h"

// Expands nblocks consecutive blocks of dt (a WK_Q* type) at src into f32 at dst
// (nblocks * wk_dtype_block(dt) values). src needs no alignment.
void WK_ISA_FN(wk_cpu_dequant)(wk_dtype dt, const void *src, float *dst, int64_t nblocks);
