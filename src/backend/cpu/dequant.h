// Per-ISA block dequantizers shared by the CPU kernels that read quantized weights.
#pragma once
#include "cpu_kernels.h"

// Expands nblocks consecutive blocks of dt (a WK_Q* type) at src into f32 at dst
// (nblocks * wk_dtype_block(dt) values). src needs no alignment.
void WK_ISA_FN(wk_cpu_dequant)(wk_dtype dt, const void *src, float *dst, int64_t nblocks);

// y[r, j] = x[r, :K] . W[j, :K] for r < rows <= 4, j < n; W rows rb bytes apart. Returns
// 0 (nothing done) when this ISA has no fused kernel for dt: use dequantized panels.
int WK_ISA_FN(wk_cpu_qgemv)(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                            const void *w, size_t rb, float *y, int64_t ldy);

// The same for the K-quants (Q4_K, Q5_K, Q6_K; every ISA, dequant.c); 0 for other types.
int WK_ISA_FN(wk_cpu_qgemv_k)(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                              const void *w, size_t rb, float *y, int64_t ldy);
