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

// A is a packed panel (lda == 0: element (i, k) at a[k*MR + i]) or, in the direct
// form, rows of op(A) read in place (a[i*lda + k]): the broadcasts are the same loads
// either way, and rows of f32 activations need no packing. Direct rows past mr read
// row mr - 1 (never past the matrix); the store drops them.
WK_AI WK_T512 void wk_ukr_f32_body(const int MR, const int NV, const int DIRECT, int64_t kc,
                                   const float *a, int64_t lda, const float *b, int64_t ldb,
                                   float *c, int64_t ldc, int mr, int nr, float alpha, float beta) {
    __m512 acc[WK_MRMAX][4];
    const float *ar[WK_MRMAX];
#pragma GCC unroll 32
    for (int i = 0; i < MR; i++) {
        ar[i] = DIRECT ? a + (i < mr ? i : mr - 1) * lda : a + i;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    }
    wk_prefetch_c(MR, NV, c, ldc);
    const int64_t astep = DIRECT ? 1 : MR;
    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 32
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(ar[i][k * astep]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
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
        wk_ukr_f32_body(MR, NV, 0, kc, (const float *)a, 0, (const float *)b, ldb, c, ldc, mr,  \
                        nr, alpha, beta);                                                       \
    }                                                                                           \
    static WK_T512 void wk_ukr_f32_da_##MR##x##NV(int64_t kc, const float *a, int64_t lda,      \
                                                  const float *b, int64_t ldb, float *c,        \
                                                  int64_t ldc, int mr, int nr, float alpha,     \
                                                  float beta) {                                 \
        wk_ukr_f32_body(MR, NV, 1, kc, a, lda, b, ldb, c, ldc, mr, nr, alpha, beta);            \
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
    {24, 16, 0, wk_ukr_f32_24x1, wk_ukr_f32_da_24x1},
    {14, 32, 0, wk_ukr_f32_14x2, wk_ukr_f32_da_14x2},
    {6, 64, 0, wk_ukr_f32_6x4, wk_ukr_f32_da_6x4},
};
const wk_ukr wk_ukr_avx512_bf16[3] = {
    {24, 16, 1, wk_ukr_bf16_24x1, NULL},
    {14, 32, 1, wk_ukr_bf16_14x2, NULL},
    {6, 64, 1, wk_ukr_bf16_6x4, NULL},
};


// ---- Small-M kernels (GEMV and M <= 4): memory bound, so no packing. ----

WK_AI WK_T512 __m512 wk_ldw(const int BF, const void *w, int64_t off, __mmask16 m) {
    if (!BF) return _mm512_maskz_loadu_ps(m, (const float *)w + off);
    // bf16 -> f32 is a 16-bit left shift of the bits.
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + off);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Axpy form: stream rows of W (contiguous, so the hardware prefetcher follows them)
// and accumulate into Y in place. Four rows of W per pass over Y cut Y's traffic
// to a quarter; Y blocks of JB columns stay in L1 between passes. (Eight rows a pass
// measured slower in a LoRA call's 512 x 512 GEMV: 6.4 against 4.9 us.)
#define WK_AXPY_JB 1024

WK_AI WK_T512 void wk_axpy_pass(const int R, const int Q, const int BF, const float *x, int64_t ldx,
                                int64_t k, const void *w, int64_t ldw, int64_t j0, int64_t j1,
                                float *y, int64_t ldy, float alpha) {
    __m512 xs[WK_GEMV_MAXROWS][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) xs[r][q] = _mm512_set1_ps(alpha * x[r * ldx + k + q]);
    for (int64_t j = j0; j < j1; j += 16) {
        __mmask16 m = wk_colmask((int)(j1 - j < 16 ? j1 - j : 16), 0);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) wv[q] = wk_ldw(BF, w, (k + q) * ldw + j, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float *yp = y + r * ldy + j;
            __m512 acc = _mm512_maskz_loadu_ps(m, yp);
#pragma GCC unroll 4
            for (int q = 0; q < Q; q++) acc = _mm512_fmadd_ps(xs[r][q], wv[q], acc);
            _mm512_mask_storeu_ps(yp, m, acc);
        }
    }
}

// At most 16 columns (x A of a LoRA rank): Y is one vector a row, and a pass's load
// and store of it would chain every step of K through memory. It stays in registers
// instead, in four sums over k mod 4 (four independent chains of FMAs), added at the
// end: y = beta y + ((s0 + s1) + (s2 + s3)).
WK_AI WK_T512 void wk_axpy_narrow(const int R, const int BF, int64_t K, int64_t n, const float *x,
                                  int64_t ldx, const void *w, int64_t ldw, float *y, int64_t ldy,
                                  float alpha, float beta) {
    const __mmask16 m = wk_colmask((int)n, 0);
    __m512 acc[WK_GEMV_MAXROWS][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) acc[r][q] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) wv[q] = wk_ldw(BF, w, (k + q) * ldw, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                acc[r][q] = _mm512_fmadd_ps(_mm512_set1_ps(alpha * x[r * ldx + k + q]), wv[q], acc[r][q]);
    }
    for (int q = 0; k < K; k++, q++) {
        __m512 wv = wk_ldw(BF, w, k * ldw, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r][q] = _mm512_fmadd_ps(_mm512_set1_ps(alpha * x[r * ldx + k]), wv, acc[r][q]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        __m512 s = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
        float *yp = y + r * ldy;
        if (beta != 0.0f) s = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, yp), _mm512_set1_ps(beta)), s);
        _mm512_mask_storeu_ps(yp, m, s);
    }
}

WK_AI WK_T512 void wk_axpy_body(const int R, const int BF, int64_t K, int64_t n, const float *x,
                                int64_t ldx, const void *w, int64_t ldw, float *y, int64_t ldy,
                                float alpha, float beta) {
    const __m512 vb = _mm512_set1_ps(beta);
    for (int r = 0; r < R; r++)
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 m = wk_colmask((int)(n - j < 16 ? n - j : 16), 0);
            float *yp = y + r * ldy + j;
            __m512 v = beta != 0.0f ? _mm512_mul_ps(_mm512_maskz_loadu_ps(m, yp), vb)
                                    : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(yp, m, v);
        }
    for (int64_t j0 = 0; j0 < n; j0 += WK_AXPY_JB) {
        int64_t j1 = j0 + WK_AXPY_JB < n ? j0 + WK_AXPY_JB : n;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) wk_axpy_pass(R, 4, BF, x, ldx, k, w, ldw, j0, j1, y, ldy, alpha);
        for (; k < K; k++) wk_axpy_pass(R, 1, BF, x, ldx, k, w, ldw, j0, j1, y, ldy, alpha);
    }
}

// Dot form: J rows of W at a time, each a contiguous stream along K; the J x R
// vector accumulators are reduced horizontally once per output.
WK_AI WK_T512 void wk_dot_body(const int R, const int J, const int BF, int64_t K, int64_t n,
                               const float *x, int64_t ldx, const void *w, int64_t ldw, float *y,
                               int64_t ldy, float alpha, float beta) {
    for (int64_t j0 = 0; j0 < n; j0 += J) {
        int64_t rowoff[8];
        // Columns past n reread the last valid row; their sums are discarded.
#pragma GCC unroll 8
        for (int j = 0; j < J; j++) rowoff[j] = (j0 + j < n ? j0 + j : n - 1) * ldw;
        __m512 acc[WK_GEMV_MAXROWS][8];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 8
            for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            __mmask16 m = (__mmask16)(K - k >= 16 ? 0xffffu : (1u << (K - k)) - 1u);
            __m512 xv[WK_GEMV_MAXROWS];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) xv[r] = _mm512_maskz_loadu_ps(m, x + r * ldx + k);
#pragma GCC unroll 8
            for (int j = 0; j < J; j++) {
                __m512 wv = wk_ldw(BF, w, rowoff[j] + k, m);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][j] = _mm512_fmadd_ps(xv[r], wv, acc[r][j]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 8
            for (int j = 0; j < J; j++) {
                if (j0 + j >= n) break;
                float s = alpha * _mm512_reduce_add_ps(acc[r][j]);
                float *yp = y + r * ldy + j0 + j;
                *yp = beta != 0.0f ? s + beta * *yp : s;
            }
    }
}

#define WK_DEF_GEMV(name, BODY, BF, ...)                                                         \
    static WK_T512 void name(int rows, int64_t K, int64_t n, const float *x, int64_t ldx,        \
                             const void *w, int64_t ldw, float *y, int64_t ldy, float alpha,     \
                             float beta) {                                                       \
        switch (rows) {                                                                          \
        case 1: BODY(1, __VA_ARGS__ BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;       \
        case 2: BODY(2, __VA_ARGS__ BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;       \
        case 3: BODY(3, __VA_ARGS__ BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;       \
        default: BODY(4, __VA_ARGS__ BF, K, n, x, ldx, w, ldw, y, ldy, alpha, beta); break;      \
        }                                                                                        \
    }
// One row of X: 8 W rows in flight; more rows of X: 4, to stay within 32 registers.
#define WK_DOT8(R, ...) wk_dot_body(R, (R) == 1 ? 8 : 4, __VA_ARGS__)
WK_DEF_GEMV(wk_gemv_axpy_f32_512, wk_axpy_body, 0, )
WK_DEF_GEMV(wk_gemv_axpy_bf16_512, wk_axpy_body, 1, )
WK_DEF_GEMV(wk_gemv_dot_f32_512, WK_DOT8, 0, )
WK_DEF_GEMV(wk_gemv_dot_bf16_512, WK_DOT8, 1, )
WK_DEF_GEMV(wk_gemv_narrow_f32_512, wk_axpy_narrow, 0, )
WK_DEF_GEMV(wk_gemv_narrow_bf16_512, wk_axpy_narrow, 1, )

const wk_gemv_set wk_gemv_avx512 = {wk_gemv_axpy_f32_512,  wk_gemv_dot_f32_512,    wk_gemv_axpy_bf16_512,
                                    wk_gemv_dot_bf16_512,  wk_gemv_narrow_f32_512, wk_gemv_narrow_bf16_512};

// ---- Transposing pack: dst[k*W + r] = 32-bit unit k of source row r (rows rs_bytes
// apart) for r < w, zero for w <= r < W. Units are f32, or bf16 pairs (k, k+1). ----
// 16x16 blocks are transposed in registers (4 shuffle stages), so each packed
// row of 16 values is one (masked) store instead of 16 scalar ones.

WK_AI WK_T512 void wk_tr16(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    // r[4q + c] now holds, in each 128-bit lane l, rows 4q..4q+3 of column 4l + c.
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);  // lanes 0,2 of each
        __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);  // lanes 1,3
        __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a, e, 0x88);       // column c
        t[8 + c] = _mm512_shuffle_f32x4(a, e, 0xdd);   // column 8 + c
        t[4 + c] = _mm512_shuffle_f32x4(b, f, 0x88);   // column 4 + c
        t[12 + c] = _mm512_shuffle_f32x4(b, f, 0xdd);  // column 12 + c
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

WK_T512 void wk_pack_t_avx512(const void *src, int64_t rs_bytes, int64_t w, int64_t kc, int W,
                              float *dst) {
    for (int64_t r0 = 0; r0 < W; r0 += 16) {
        int rn = W - r0 < 16 ? (int)(W - r0) : 16;                 // rows of this block
        int rv = w - r0 < rn ? (int)(w - r0 < 0 ? 0 : w - r0) : rn;  // rows with data
        __mmask16 smask = (__mmask16)((1u << rn) - 1u);
        for (int64_t k0 = 0; k0 < kc; k0 += 16) {
            int kn = kc - k0 < 16 ? (int)(kc - k0) : 16;
            __mmask16 lmask = (__mmask16)((1u << kn) - 1u);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = i < rv ? _mm512_maskz_loadu_ps(
                                    lmask, (const char *)src + (r0 + i) * rs_bytes + 4 * k0)
                              : _mm512_setzero_ps();
            wk_tr16(r);
            float *d = dst + k0 * W + r0;
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                if (i < kn) _mm512_mask_storeu_ps(d + i * W, smask, r[i]);
        }
    }
}

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
