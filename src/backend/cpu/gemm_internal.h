// Private to the CPU GEMM: the microkernel and GEMV kernel tables that the
// per-ISA files (gemm_avx512.c, gemm_avx2.c, gemm.c's scalar part) export.
#pragma once
#include <stdint.h>

// C[mr,nr] = alpha * Apanel @ Bpanel + beta * C (beta == 0: C not read).
// Apanel: kc units of MR values (k-major); Bpanel: kc units of NR values, unit i at
// b + i*ldb. A unit is one f32, or for bf16 kernels one pair (k, k+1) of bf16 in
// 32 bits, so packing pads K to even. mr <= MR, nr <= NR mark the valid edge.
typedef void (*wk_ukr_fn)(int64_t kc, const void *a, const void *b, int64_t ldb, float *c,
                          int64_t ldc, int mr, int nr, float alpha, float beta);
// The same with A's rows read in place: row i at a + i*lda, unit stride along k
// (f32 only); rows past mr are not read.
typedef void (*wk_ukr_da_fn)(int64_t kc, const float *a, int64_t lda, const float *b, int64_t ldb,
                             float *c, int64_t ldc, int mr, int nr, float alpha, float beta);
typedef struct {
    int mr, nr;
    int bf16;  // 1: packed operands are bf16 pairs
    wk_ukr_fn fn;
    wk_ukr_da_fn da;  // NULL where A is always packed
} wk_ukr;

// Small-M kernels: Y[m, 0:n] = alpha * X[m, :K] @ W + beta * Y[m, 0:n] for m < rows <= 4.
// X is contiguous f32 with rows ldx apart; W(k, j) = W[k*ldw + j] for the "axpy"
// form (B not transposed) or W[j*ldw + k] for the "dot" form (B transposed).
// W elements are f32 or bf16 bits by the kernel's name. Y rows are ldy apart.
typedef void (*wk_gemv_fn)(int rows, int64_t K, int64_t n, const float *x, int64_t ldx,
                           const void *w, int64_t ldw, float *y, int64_t ldy, float alpha,
                           float beta);
// narrow_*: the axpy form for n <= 16 with Y in registers (sums over k mod 4, so other
// bits than axpy_*), chosen by the whole product's n so that splitting its columns
// never changes a result; NULL where the ISA has none.
typedef struct {
    wk_gemv_fn axpy_f32, dot_f32, axpy_bf16, dot_bf16, narrow_f32, narrow_bf16;
} wk_gemv_set;

#define WK_GEMV_MAXROWS 4

#if defined(__x86_64__)
extern const wk_ukr wk_ukr_avx512_f32[3];   // NR = 16, 32, 64
extern const wk_ukr wk_ukr_avx512_bf16[3];  // NR = 16, 32, 64 (vdpbf16ps)
extern const wk_gemv_set wk_gemv_avx512;
// Packing helpers (see the scalar versions in gemm.c for the layouts).
// dst[k*W + r] = 32-bit unit k of row r (rows rs_bytes apart), zero for w <= r < W.
void wk_pack_t_avx512(const void *src, int64_t rs_bytes, int64_t w, int64_t kc, int W,
                      float *dst);
// bf16 pairs when columns are contiguous and depth rows are ks apart; W % 16 == 0.
void wk_pack_pairs_avx512(const uint16_t *src, int64_t ks, int64_t w, int64_t kc, int W,
                          uint32_t *dst);
extern const wk_ukr wk_ukr_avx2_f32[2];     // NR = 8, 16
extern const wk_gemv_set wk_gemv_avx2;
#endif
