// Standalone GEMM timing (not a test): GFLOP/s for large square GEMMs and
// microseconds for GEMV and skinny shapes. Prints the median of several runs.
// WICK_THREADS and WICK_CPU_ISA select the thread count and kernel path.
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/backend/cpu/cpu_isa.h"
#include "../src/backend/cpu/gemm.h"
#include "../src/backend/cpu/threadpool.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    int bf16, tA, tB;
    int64_t M, N, K;
    void *A, *B;
    float *C;
} bench_case;

static void run_once(const bench_case *c) {
    int64_t lda = c->tA ? c->M : c->K, ldb = c->tB ? c->K : c->N;
    if (c->bf16)
        wk_gemm_bf16(c->tA, c->tB, c->M, c->N, c->K, 1.0f, c->A, lda, 0, c->B, ldb, 0, 0.0f,
                     c->C, c->N, 0, 1);
    else
        wk_gemm_f32(c->tA, c->tB, c->M, c->N, c->K, 1.0f, c->A, lda, 0, c->B, ldb, 0, 0.0f, c->C,
                    c->N, 0, 1);
}

// Median seconds per call; repeats the call in batches long enough to time.
static double time_case(int bf16, int tA, int tB, int64_t M, int64_t N, int64_t K) {
    size_t es = bf16 ? 2 : 4;
    bench_case c = {bf16, tA, tB, M, N, K, malloc((size_t)(M * K) * es),
                    malloc((size_t)(K * N) * es), malloc((size_t)(M * N) * 4)};
    for (int64_t i = 0; i < M * K; i++) {
        float v = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        if (bf16) { uint32_t u; memcpy(&u, &v, 4); ((uint16_t *)c.A)[i] = (uint16_t)(u >> 16); }
        else ((float *)c.A)[i] = v;
    }
    for (int64_t i = 0; i < K * N; i++) {
        float v = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
        if (bf16) { uint32_t u; memcpy(&u, &v, 4); ((uint16_t *)c.B)[i] = (uint16_t)(u >> 16); }
        else ((float *)c.B)[i] = v;
    }
    run_once(&c);  // warm caches, workspace and the thread pool
    double t0 = now_s();
    run_once(&c);
    double one = now_s() - t0;
    int reps = one > 0.02 ? 1 : (int)(0.02 / (one > 1e-7 ? one : 1e-7)) + 1;
    enum { SAMPLES = 15 };
    double s[SAMPLES];
    for (int i = 0; i < SAMPLES; i++) {
        t0 = now_s();
        for (int r = 0; r < reps; r++) run_once(&c);
        s[i] = (now_s() - t0) / reps;
    }
    qsort(s, SAMPLES, sizeof s[0], cmp_d);
    free(c.A), free(c.B), free(c.C);
    return s[SAMPLES / 2];
}

static void gflops(const char *name, int bf16, int64_t n) {
    double t = time_case(bf16, 0, 0, n, n, n);
    printf("%-34s %8.1f GFLOP/s  (%.2f ms)\n", name, 2.0 * (double)n * (double)n * (double)n / t * 1e-9, t * 1e3);
}
static void micros(const char *name, int bf16, int tA, int tB, int64_t M, int64_t N, int64_t K) {
    double t = time_case(bf16, tA, tB, M, N, K);
    printf("%-34s %8.2f us     (%.1f GFLOP/s)\n", name, t * 1e6, 2.0 * (double)M * (double)N * (double)K / t * 1e-9);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    printf("threads=%d isa=%s bf16dot=%d\n", wk_threads(), wk_cpu_isa_name(wk_cpu_isa()),
           wk_cpu_has_bf16());
    gflops("f32 2048^3", 0, 2048);
    gflops("f32 1024^3", 0, 1024);
    if (!quick) gflops("bf16 2048^3", 1, 2048);
    micros("gemv f32 1x512 @ 512x512", 0, 0, 0, 1, 512, 512);
    micros("gemv f32 1x1024 @ 1024x1024", 0, 0, 0, 1, 1024, 1024);
    micros("gemv f32 1x2048 @ 2048x2048", 0, 0, 0, 1, 2048, 2048);
    micros("gemv f32 1x512 @ (512x512)^T", 0, 0, 1, 1, 512, 512);
    micros("gemv f32 1x2048 @ (2048x2048)^T", 0, 0, 1, 1, 2048, 2048);
    micros("gemv bf16 1x2048 @ 2048x2048", 1, 0, 0, 1, 2048, 2048);
    micros("f32 M=1024 K=1024 N=16", 0, 0, 0, 1024, 16, 1024);
    micros("f32 M=1024 K=16 N=1024", 0, 0, 0, 1024, 1024, 16);
    micros("f32 M=1024 K=1024 N=1024 transB", 0, 0, 1, 1024, 1024, 1024);
    // the frozen projections of a SmolLM2-135M training step (1020 tokens): forward x W^T, backward dY W
    micros("f32 train q_proj fwd 1020x576x576 ^T", 0, 0, 1, 1020, 576, 576);
    micros("f32 train up fwd 1020x1536x576 ^T", 0, 0, 1, 1020, 1536, 576);
    micros("f32 train up bwd 1020x576x1536", 0, 0, 0, 1020, 576, 1536);
    // LoRA r=8 gradients of a training step: dA^T = x^T (dY B), dB = (x A)^T dY
    micros("f32 lora dA 576x8x1020 transA", 0, 1, 0, 576, 8, 1020);
    micros("f32 lora dB 8x1536x1020 transA", 0, 1, 0, 8, 1536, 1020);
    micros("f32 lora xA 1020x8x1536", 0, 0, 0, 1020, 8, 1536);
    // attention tiles (sdpa forward and backward): 256 stacked query rows, 64 keys, head dim 64
    micros("f32 attn S = Q K^T 256x64x64", 0, 0, 1, 256, 64, 64);
    micros("f32 attn dV = P^T dO 64x64x256", 0, 1, 0, 64, 64, 256);
    micros("f32 attn dQ = dS K 256x64x64", 0, 0, 0, 256, 64, 64);
    return 0;
}
