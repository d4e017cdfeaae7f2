#define _POSIX_C_SOURCE 200809L  // setenv
// wk_gemm_f32 / wk_gemm_bf16 against a naive double-precision reference, on every
// ISA path this CPU has (scalar, AVX2, AVX-512), every transpose combination, odd
// sizes that leave partial register tiles and cache blocks, M = 1 / N = 1 (the
// small-M kernels), alpha and beta (beta = 0 over NaN), batches with strides and
// leading dimensions wider than the rows.
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/cpu/cpu_isa.h"
#include "../../src/backend/cpu/gemm.h"
#include "../../src/backend/cpu/threadpool.h"

static int g_pass, g_fail;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float wk_rand(void) {  // xorshift64*: deterministic, uniform in [-1, 1)
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return (float)((g_rng * 2685821657736338717ull) >> 40) / (float)(1 << 23) - 1.0f;
}
static uint16_t f2bf(float f) {  // round to nearest even (inputs are finite)
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// One case: op(A) is M x K, op(B) is K x N; stored with padded leading dims and
// batch strides so that reading past a row or matrix would show up as an error.
static void run_case(const char *isa, int bf16, int tA, int tB, int64_t M, int64_t N, int64_t K,
                     float alpha, float beta, int64_t batch) {
    int64_t ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
    int64_t lda = ac + 3, ldb = bc + 5, ldc = N + 2;
    int64_t sA = ar * lda + 7, sB = br * ldb + 1, sC = M * ldc + 3;
    size_t na = (size_t)(sA * batch), nb = (size_t)(sB * batch), nc = (size_t)(sC * batch);
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *C0 = malloc(nc * 4);
    uint16_t *Ah = malloc(na * 2), *Bh = malloc(nb * 2);
    for (size_t i = 0; i < na; i++) Ah[i] = f2bf(wk_rand()), A[i] = bf16 ? bf2f(Ah[i]) : wk_rand();
    for (size_t i = 0; i < nb; i++) Bh[i] = f2bf(wk_rand()), B[i] = bf16 ? bf2f(Bh[i]) : wk_rand();
    for (size_t i = 0; i < nc; i++) C0[i] = beta == 0.0f ? NAN : wk_rand();
    memcpy(C, C0, nc * 4);
    if (bf16)
        wk_gemm_bf16(tA, tB, M, N, K, alpha, Ah, lda, sA, Bh, ldb, sB, beta, C, ldc, sC, batch);
    else
        wk_gemm_f32(tA, tB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
    int bad = 0;
    double worst = 0;
    for (int64_t b = 0; b < batch && !bad; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0, sabs = 0;
                for (int64_t k = 0; k < K; k++) {
                    double a = A[b * sA + (tA ? k * lda + i : i * lda + k)];
                    double v = B[b * sB + (tB ? j * ldb + k : k * ldb + j)];
                    s += a * v, sabs += fabs(a * v);
                }
                double c0 = C0[b * sC + i * ldc + j];
                double ref = alpha * s + (beta != 0.0f ? beta * c0 : 0.0);
                // Summing K products in f32 errs by at most ~K*u*sum|a*b| (u = eps/2,
                // Higham's gamma_K bound); +2 for the alpha/beta roundings, x2 slack
                // for reassociation (vector lanes, vdpbf16ps pairs, K blocking).
                double tol = 2.0 * FLT_EPSILON * ((double)(K + 2) * fabs(alpha) * sabs +
                                                  (beta != 0.0f ? fabs(beta * c0) : 0.0)) + 1e-30;
                double got = C[b * sC + i * ldc + j], err = fabs(got - ref);
                if (!(err <= tol)) {  // also catches NaN
                    if (!bad)
                        fprintf(stderr,
                                "FAIL %s %s tA=%d tB=%d M=%lld N=%lld K=%lld alpha=%g beta=%g "
                                "batch=%lld: C[%lld][%lld][%lld]=%.9g ref=%.9g tol=%.3g\n",
                                isa, bf16 ? "bf16" : "f32", tA, tB, (long long)M, (long long)N,
                                (long long)K, alpha, beta, (long long)batch, (long long)b,
                                (long long)i, (long long)j, got, ref, tol);
                    bad = 1;
                    break;
                }
                if (err / tol > worst) worst = err / tol;
            }
    // Padding between rows and matrices must be untouched.
    for (int64_t b = 0; b < batch && !bad; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = N; j < (i + 1 < M ? ldc : sC - (M - 1) * ldc); j++) {
                size_t o = (size_t)(b * sC + i * ldc + j);
                if (o < nc && memcmp(&C[o], &C0[o], 4)) {
                    fprintf(stderr, "FAIL %s: write outside C at batch %lld row %lld col %lld\n",
                            isa, (long long)b, (long long)i, (long long)j);
                    bad = 1;
                    break;
                }
            }
    if (bad) g_fail++;
    else g_pass++;
    free(A), free(B), free(C), free(C0), free(Ah), free(Bh);
}

// A one-row product split into column chunks across threads gives each column the
// bits it gets on one thread: at 12 threads N = 970 ends in a chunk 10 wide, which must
// not take the kernel for narrow products (other sums) that N <= 16 takes.
static void run_split_invariance(const char *isa) {
    const int64_t K = 300, N = 970;
    for (int tB = 0; tB < 2; tB++) {
        float *x = malloc(K * 4), *w = malloc((size_t)(K * N) * 4), *y = malloc(N * 4), *y1 = malloc(N * 4);
        for (int64_t i = 0; i < K; i++) x[i] = wk_rand();
        for (int64_t i = 0; i < K * N; i++) w[i] = wk_rand();
        wk_gemm_f32(0, tB, 1, N, K, 1.0f, x, K, 0, w, tB ? K : N, 0, 0.0f, y, N, 0, 1);
        wk_gemm_f32_serial(0, tB, 1, N, K, 1.0f, x, K, w, tB ? K : N, 0.0f, y1, N);
        if (memcmp(y, y1, N * 4)) {
            printf("FAIL %s: [1,%lld] x W%s (N %lld): threads' column chunks != one thread\n", isa, (long long)K,
                   tB ? "^T" : "", (long long)N);
            g_fail++;
        } else {
            g_pass++;
        }
        free(x), free(w), free(y), free(y1);
    }
}

static void run_isa(const char *name) {
    run_split_invariance(name);
    static const int64_t sz[] = {1, 3, 17, 63, 65, 127, 129};
    const int nsz = (int)(sizeof sz / sizeof sz[0]);
    const float betas[] = {0.0f, 1.0f, 0.5f};
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int t = 0; t < 4; t++) {
            int tA = t >> 1, tB = t & 1;
            // Every size triple; beta and alpha rotate so each size meets each value.
            int n = 0;
            for (int a = 0; a < nsz; a++)
                for (int b = 0; b < nsz; b++)
                    for (int c = 0; c < nsz; c++, n++)
                        run_case(name, bf16, tA, tB, sz[a], sz[b], sz[c],
                                 n % 4 == 3 ? -0.75f : 1.0f, betas[n % 3], 1);
            // GEMV shapes and their transposes (N = 1 goes through C^T), beta 0 / 1 / 0.5.
            for (int i = 0; i < 3; i++) {
                run_case(name, bf16, tA, tB, 1, 512, 512, 1.0f, betas[i], 1);
                run_case(name, bf16, tA, tB, 1, 1000, 333, 2.0f, betas[i], 1);
                run_case(name, bf16, tA, tB, 2, 77, 300, 1.0f, betas[i], 1);
                run_case(name, bf16, tA, tB, 4, 130, 45, -1.0f, betas[i], 2);
                run_case(name, bf16, tA, tB, 333, 1, 97, 1.0f, betas[i], 1);
                run_case(name, bf16, tA, tB, 200, 3, 70, 0.5f, betas[i], 3);
                // At most 16 columns: Y kept in registers in four sums over k mod 4
                run_case(name, bf16, tA, tB, 1, 8, 512, 1.5f, betas[i], 1);
                run_case(name, bf16, tA, tB, 1, 13, 1003, 1.0f, betas[i], 1);
                run_case(name, bf16, tA, tB, 3, 16, 77, -0.5f, betas[i], 2);
            }
            // Batches with strides, and blocks larger than MC / KC / NC.
            run_case(name, bf16, tA, tB, 33, 70, 19, 1.5f, 0.5f, 3);
            run_case(name, bf16, tA, tB, 5, 40, 601, 1.0f, 0.0f, 2);
            run_case(name, bf16, tA, tB, 20, 2100, 30, 1.0f, 0.5f, 1);  // several NC blocks
            run_case(name, bf16, tA, tB, 300, 20, 530, 1.0f, 1.0f, 1);
            run_case(name, bf16, tA, tB, 270, 1100, 520, 0.5f, 0.5f, 1);
            run_case(name, bf16, tA, tB, 129, 8, 300, 1.0f, 0.5f, 2);  // 5 <= N <= 8: the 8-wide tile
            run_case(name, bf16, tA, tB, 65, 5, 17, -1.0f, 0.0f, 1);
            // One row with K split across threads (W row-major): at 12 threads K = 1024
            // splits into 11 chunks of 96 and an empty twelfth, whose scratch the
            // larger call before it left full.
            run_case(name, bf16, tA, tB, 1, 2048, 2048, 1.0f, 0.0f, 1);
            run_case(name, bf16, tA, tB, 1, 1024, 1024, 1.0f, 0.0f, 1);
        }
    // Trivial shapes: K = 0 and alpha = 0 scale C by beta; empty M/N do nothing.
    run_case(name, 0, 0, 0, 5, 7, 0, 1.0f, 0.5f, 2);
    run_case(name, 0, 0, 0, 5, 7, 0, 1.0f, 0.0f, 1);
    run_case(name, 0, 1, 1, 9, 9, 9, 0.0f, 0.5f, 1);
    run_case(name, 1, 0, 0, 0, 7, 3, 1.0f, 0.5f, 1);
}

int main(void) {
    // More threads than CI's cores (unless the caller chose): the threaded paths split
    // their work finely, as on a larger machine.
    setenv("WICK_THREADS", "12", 0);
    printf("threads: %d, best ISA: %s\n", wk_threads(), wk_cpu_isa_name(wk_cpu_isa()));
    wk_cpu_isa_t best = wk_cpu_isa();
    for (int isa = WK_ISA_SCALAR; isa <= WK_ISA_AVX512; isa++) {
        wk_cpu_isa_set((wk_cpu_isa_t)isa);
        if ((int)wk_cpu_isa() != isa) {
            printf("skip %s: not supported by this CPU\n", wk_cpu_isa_name((wk_cpu_isa_t)isa));
            continue;
        }
        int f0 = g_fail, p0 = g_pass;
        run_isa(wk_cpu_isa_name((wk_cpu_isa_t)isa));
        printf("%s%s: %d passed, %d failed\n", wk_cpu_isa_name((wk_cpu_isa_t)isa),
               isa == WK_ISA_AVX512 ? (wk_cpu_has_bf16() ? " (+bf16 dot)" : " (no bf16 dot)") : "",
               g_pass - p0, g_fail - f0);
    }
    wk_cpu_isa_set(best);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail != 0;
}
