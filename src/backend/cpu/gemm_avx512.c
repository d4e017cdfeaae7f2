// AVX-512 GEMM microkernels and small-M kernels. Compiled for baseline x86-64
// like the rest of the library: only these functions carry the AVX-512 target,
// and gemm.c calls them only after wk_cpu_isa() said the CPU has it.
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>

#include "gemm_internal.h"

#define WK_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define WK_AI static inline __attribute__((always_inline))
#define WK_MRMAX 24

// Rows of the register tile that hold real data, columns masked per vector.
WK_AI WK_T512 __mmask16 wk_colmask(int nr, int v) {
    int n = nr - 16 * v;
    if (n >= 16) return (__mmask16)0xffff;
    if (n <= 0) return 0;
    return (__mmask16)((1u << n) - 1u);
}

// acc -> C with alpha/beta; the full-tile case avoids masks on the hot path.
WK_AI WK_T512 void wk_store_tile(const int MR, const int NV, __m512 acc[WK_MRMAX][4], float *c,
                                 int64_t ldc, int mr, int nr, float alpha, float beta) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    if (mr == MR && nr == 16 * NV) {
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            float *ci = c + i * ldc;
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) {
                __m512 r = _mm512_mul_ps(acc[i][v], va);
                if (beta != 0.0f) r = _mm512_fmadd_ps(_mm512_loadu_ps(ci + 16 * v), vb, r);
                _mm512_storeu_ps(ci + 16 * v, r);
            }
        }
        return;
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *ci = c + i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __mmask16 m = wk_colmask(nr, v);
            __m512 r = _mm512_mul_ps(acc[i][v], va);
            if (beta != 0.0f) r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, ci + 16 * v), vb, r);
            _mm512_mask_storeu_ps(ci + 16 * v, m, r);
        }
    }
}

// The C tile is touched once at the end; prefetching it early hides that miss.
WK_AI WK_T512 void wk_prefetch_c(const int MR, const int NV, const float *c, int64_t ldc) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 16 * NV - 1), _MM_HINT_T0);
    }
}

WK_AI WK_T512 void wk_ukr_f32_body(const int MR, const int NV, int64_t kc, const float *a,
                                   const float *b, int64_t ldb, float *c, int64_t ldc, int mr,
                                   int nr, float alpha, float beta) {
    __m512 acc[WK_MRMAX][4];
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    wk_prefetch_c(MR, NV, c, ldc);
    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
        a += MR;
        b += ldb;
    }
    wk_store_tile(MR, NV, acc, c, ldc, mr, nr, alpha, beta);
}

// bf16 pairs: each 32-bit lane holds (k, k+1); vdpbf16ps does two k steps per FMA.
WK_AI WK_T512 void wk_ukr_bf16_body(const int MR, const int NV, int64_t kc, const uint32_t *a,
                                    const uint32_t *b, int64_t ldb, float *c, int64_t ldc, int mr,
                                    int nr, float alpha, float beta) {
    __m512 acc[WK_MRMAX][4];
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    wk_prefetch_c(MR, NV, c, ldc);
    for (int64_t k = 0; k < kc; k++) {
        __m512bh bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
        }
        a += MR;
        b += ldb;
    }
    wk_store_tile(MR, NV, acc, c, ldc, mr, nr, alpha, beta);
}

#define WK_DEF_UKR(MR, NV)                                                                      \
    static WK_T512 void wk_ukr_f32_##MR##x##NV(int64_t kc, const void *a, const void *b,        \
                                               int64_t ldb, float *c, int64_t ldc, int mr,      \
                                               int nr, float alpha, float beta) {               \
        wk_ukr_f32_body(MR, NV, kc, (const float *)a, (const float *)b, ldb, c, ldc, mr, nr,    \
                        alpha, beta);                                                           \
    }                                                                                           \
    static WK_T512 void wk_ukr_bf16_##MR##x##NV(int64_t kc, const void *a, const void *b,       \
                                                int64_t ldb, float *c, int64_t ldc, int mr,     \
                                                int nr, float alpha, float beta) {              \
        wk_ukr_bf16_body(MR, NV, kc, (const uint32_t *)a, (const uint32_t *)b, ldb, c, ldc, mr, \
                         nr, alpha, beta);                                                      \
    }

// Register tiles: MR rows x NV vectors of 16 columns, MR*NV accumulators of the 32
// zmm registers. All three run at ~98% of FMA peak from L1 on Zen4; 6x64 was the
// fastest in the full GEMM, the narrow ones serve N <= 16 and N <= 32.
WK_DEF_UKR(24, 1)
WK_DEF_UKR(14, 2)
WK_DEF_UKR(6, 4)

const wk_ukr wk_ukr_avx512_f32[3] = {
    {24, 16, 0, wk_ukr_f32_24x1},
    {14, 32, 0, wk_ukr_f32_14x2},
    {6, 64, 0, wk_ukr_f32_6x4},
};
const wk_ukr wk_ukr_avx512_bf16[3] = {
    {24, 16, 1, wk_ukr_bf16_24x1},
    {14, 32, 1, wk_ukr_bf16_14x2},
    {6, 64, 1, wk_ukr_bf16_6x4},
};


#if defined(__x86_64__)
// bf16 pairs from a source whose panel dimension is contiguous: unit (k2, j) is
// (row 2*k2, row 2*k2 + 1) of column j, so two rows interleave 16 bits at a time.
WK_T512 void wk_pack_pairs_avx512(const uint16_t *src, int64_t ks, int64_t w, int64_t kc, int W,
                                  uint32_t *dst) {
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40,
                                        8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    int64_t kc2 = (kc + 1) / 2;
    for (int64_t k2 = 0; k2 < kc2; k2++) {
        const uint16_t *s0 = src + 2 * k2 * ks;
        const uint16_t *s1 = 2 * k2 + 1 < kc ? s0 + ks : NULL;  // odd tail pairs with zero
        uint32_t *d = dst + k2 * W;
        for (int64_t j = 0; j < W; j += 32) {
            int64_t nv = w - j < 32 ? (w - j < 0 ? 0 : w - j) : 32;
            __mmask32 m = nv >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << nv) - 1u);
            __m512i a = _mm512_maskz_loadu_epi16(m, s0 + j);
            __m512i b = s1 ? _mm512_maskz_loadu_epi16(m, s1 + j) : _mm512_setzero_si512();
            int64_t left = W - j;  // W is a multiple of 16
            _mm512_storeu_si512(d + j, _mm512_permutex2var_epi16(a, lo, b));
            if (left > 16) _mm512_storeu_si512(d + j + 16, _mm512_permutex2var_epi16(a, hi, b));
        }
    }
}
#endif
