// AVX2+FMA GEMM microkernels and small-M kernels (see gemm_avx512.c for the scheme).
// Only these functions carry the AVX2 target; gemm.c dispatches on wk_cpu_isa().
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "gemm_internal.h"

#define WK_T2 __attribute__((target("avx2,fma")))
#define WK_AI static inline __attribute__((always_inline))
#define WK_MRMAX 12

WK_AI WK_T2 void wk_ukr2_body(const int MR, const int NV, int64_t kc, const float *a,
                              const float *b, int64_t ldb, float *c, int64_t ldc, int mr, int nr,
                              float alpha, float beta) {
    __m256 acc[WK_MRMAX][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m256 bv[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            __m256 av = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
        }
        a += MR;
        b += ldb;
    }
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (mr == MR && nr == 8 * NV) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++) {
                float *p = c + i * ldc + 8 * v;
                __m256 r = _mm256_mul_ps(acc[i][v], va);
                if (beta != 0.0f) r = _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, r);
                _mm256_storeu_ps(p, r);
            }
        return;
    }
    // Edge tile: spill to a buffer and copy the valid part (rare, so plain loops).
    float t[WK_MRMAX * 16];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(t + i * 16 + 8 * v, acc[i][v]);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = alpha * t[i * 16 + j];
            c[i * ldc + j] = beta != 0.0f ? s + beta * c[i * ldc + j] : s;
        }
}

static WK_T2 void wk_ukr2_f32_12x1(int64_t kc, const void *a, const void *b, int64_t ldb, float *c,
                                   int64_t ldc, int mr, int nr, float alpha, float beta) {
    wk_ukr2_body(12, 1, kc, (const float *)a, (const float *)b, ldb, c, ldc, mr, nr, alpha, beta);
}
static WK_T2 void wk_ukr2_f32_6x2(int64_t kc, const void *a, const void *b, int64_t ldb, float *c,
                                  int64_t ldc, int mr, int nr, float alpha, float beta) {
    wk_ukr2_body(6, 2, kc, (const float *)a, (const float *)b, ldb, c, ldc, mr, nr, alpha, beta);
}

const wk_ukr wk_ukr_avx2_f32[2] = {
    {12, 8, 0, wk_ukr2_f32_12x1, NULL},
    {6, 16, 0, wk_ukr2_f32_6x2, NULL},
};

// ---- Small-M kernels ----

WK_AI WK_T2 __m256 wk_ldw2(const int BF, const void *w, int64_t off) {
    if (!BF) return _mm256_loadu_ps((const float *)w + off);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + off));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
WK_AI float wk_ldw1(const int BF, const void *w, int64_t off) {
    if (!BF) return ((const float *)w)[off];
    uint32_t u = (uint32_t)((const uint16_t *)w)[off] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
WK_AI void wk_put(float *yp, float s, float alpha, float beta) {
    s *= alpha;
    *yp = beta != 0.0f ? s + beta * *yp : s;
}

// Axpy form: stream rows of W into Y in place, four rows per pass (see gemm_avx512.c).
#define WK_AXPY_JB 1024

WK_AI WK_T2 void wk_axpy2_pass(const int R, const int Q, const int BF, const float *x, int64_t ldx,
                               int64_t k, const void *w, int64_t ldw, int64_t j0, int64_t j1,
                               float *y, int64_t ldy, float alpha) {
    __m256 xs[WK_GEMV_MAXROWS][4];
    float xf[WK_GEMV_MAXROWS][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) {
            xf[r][q] = alpha * x[r * ldx + k + q];
            xs[r][q] = _mm256_set1_ps(xf[r][q]);
        }
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) wv[q] = wk_ldw2(BF, w, (k + q) * ldw + j);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float *yp = y + r * ldy + j;
            __m256 acc = _mm256_loadu_ps(yp);
#pragma GCC unroll 4
            for (int q = 0; q < Q; q++) acc = _mm256_fmadd_ps(xs[r][q], wv[q], acc);
            _mm256_storeu_ps(yp, acc);
        }
    }
    for (; j < j1; j++)
        for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++) y[r * ldy + j] += xf[r][q] * wk_ldw1(BF, w, (k + q) * ldw + j);
}

// One f32 row, at most 16 columns (x A of a LoRA rank): Y in registers, in four sums
// over k mod 4, as gemm_avx512.c's wk_axpy_narrow (which says why).
WK_AI WK_T2 void wk_axpy2_narrow(int64_t K, int64_t n, const float *x, const float *w, int64_t ldw, float *y,
                                 float alpha, float beta) {
    __m256i m[2];
    for (int v = 0; v < 2; v++) {
        int32_t lane[8];
        for (int i = 0; i < 8; i++) lane[i] = 8 * v + i < n ? -1 : 0;
        m[v] = _mm256_loadu_si256((const __m256i *)lane);
    }
    __m256 acc[2][4];
    for (int v = 0; v < 2; v++)
        for (int q = 0; q < 4; q++) acc[v][q] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m256 xk = _mm256_set1_ps(alpha * x[k + q]);
            acc[0][q] = _mm256_fmadd_ps(xk, _mm256_maskload_ps(w + (k + q) * ldw, m[0]), acc[0][q]);
            if (n > 8) acc[1][q] = _mm256_fmadd_ps(xk, _mm256_maskload_ps(w + (k + q) * ldw + 8, m[1]), acc[1][q]);
        }
    for (int q = 0; k < K; k++, q++) {
        __m256 xk = _mm256_set1_ps(alpha * x[k]);
        acc[0][q] = _mm256_fmadd_ps(xk, _mm256_maskload_ps(w + k * ldw, m[0]), acc[0][q]);
        if (n > 8) acc[1][q] = _mm256_fmadd_ps(xk, _mm256_maskload_ps(w + k * ldw + 8, m[1]), acc[1][q]);
    }
    for (int v = 0; v < (n > 8 ? 2 : 1); v++) {
        __m256 s = _mm256_add_ps(_mm256_add_ps(acc[v][0], acc[v][1]), _mm256_add_ps(acc[v][2], acc[v][3]));
        if (beta != 0.0f) s = _mm256_add_ps(_mm256_mul_ps(_mm256_maskload_ps(y + 8 * v, m[v]), _mm256_set1_ps(beta)), s);
        _mm256_maskstore_ps(y + 8 * v, m[v], s);
    }
}

WK_AI WK_T2 void wk_axpy2_body(const int R, const int BF, int64_t K, int64_t n, const float *x,
                               int64_t ldx, const void *w, int64_t ldw, float *y, int64_t ldy,
                               float alpha, float beta) {
    for (int r = 0; r < R; r++)
        for (int64_t j = 0; j < n; j++) y[r * ldy + j] = beta != 0.0f ? beta * y[r * ldy + j] : 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += WK_AXPY_JB) {
        int64_t j1 = j0 + WK_AXPY_JB < n ? j0 + WK_AXPY_JB : n;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) wk_axpy2_pass(R, 4, BF, x, ldx, k, w, ldw, j0, j1, y, ldy, alpha);
        for (; k < K; k++) wk_axpy2_pass(R, 1, BF, x, ldx, k, w, ldw, j0, j1, y, ldy, alpha);
    }
}

WK_AI WK_T2 float wk_hsum2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

WK_AI WK_T2 void wk_dot2_body(const int R, const int BF, int64_t K, int64_t n, const float *x,
                              int64_t ldx, const void *w, int64_t ldw, float *y, int64_t ldy,
                              float alpha, float beta) {
    enum { J = 4 };
    const int64_t K8 = K & ~(int64_t)7;
    for (int64_t j0 = 0; j0 < n; j0 += J) {
        int64_t rowoff[J];
        for (int j = 0; j < J; j++) rowoff[j] = (j0 + j < n ? j0 + j : n - 1) * ldw;
        __m256 acc[WK_GEMV_MAXROWS][J];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int j = 0; j < J; j++) acc[r][j] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K8; k += 8) {
            __m256 xv[WK_GEMV_MAXROWS];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) xv[r] = _mm256_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < J; j++) {
                __m256 wv = wk_ldw2(BF, w, rowoff[j] + k);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][j] = _mm256_fmadd_ps(xv[r], wv, acc[r][j]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int j = 0; j < J && j0 + j < n; j++) {
                float s = wk_hsum2(acc[r][j]);
                for (int64_t k = K8; k < K; k++) s += x[r * ldx + k] * wk_ldw1(BF, w, rowoff[j] + k);
                wk_put(y + r * ldy + j0 + j, s, alpha, beta);
            }
    }
}

#define WK_DEF_GEMV2(name, BODY, BF)                                                            \
    static WK_T2 void name(int rows, int64_t K, int64_t n, const float *x, int64_t ldx,         \
                           const void *w, int64_t ldw, float *y, int64_t ldy, float alpha,      \
                           float beta) {                                                        \
        switch (rows) {                                                                         \
        case 1: BODY(1, BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;                  \
        case 2: BODY(2, BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;                  \
        case 3: BODY(3, BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;                  \
        default: BODY(4, BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;                 \
        }                                                                                       \
    }
WK_DEF_GEMV2(wk_gemv_axpy_f32_2, wk_axpy2_body, 0)
WK_DEF_GEMV2(wk_gemv_axpy_bf16_2, wk_axpy2_body, 1)
WK_DEF_GEMV2(wk_gemv_dot_f32_2, wk_dot2_body, 0)
WK_DEF_GEMV2(wk_gemv_dot_bf16_2, wk_dot2_body, 1)

// One row: Y in registers (wk_axpy2_narrow); more rows: the passes.
static WK_T2 void wk_gemv_narrow_f32_2(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const void *w,
                                       int64_t ldw, float *y, int64_t ldy, float alpha, float beta) {
    if (rows == 1) wk_axpy2_narrow(K, n, x, (const float *)w, ldw, y, alpha, beta);
    else wk_gemv_axpy_f32_2(rows, K, n, x, ldx, w, ldw, y, ldy, alpha, beta);
}

const wk_gemv_set wk_gemv_avx2 = {wk_gemv_axpy_f32_2, wk_gemv_dot_f32_2,    wk_gemv_axpy_bf16_2,
                                  wk_gemv_dot_bf16_2, wk_gemv_narrow_f32_2, NULL};
#endif
