// Matrix multiply kernels for the CPU backend (row-major, strided batches).
//
//   for b in [0, batch):
//     C_b[M,N] = alpha * op(A_b)[M,K] @ op(B_b)[K,N] + beta * C_b
//
// op(X) is X or X^T (transA/transB). A_b = A + b*strideA (elements), likewise B, C.
// lda/ldb/ldc are row strides in elements of the matrices as stored. beta = 0 means
// C is not read (it may hold garbage or NaN). Threads come from wk_parallel_for.
#pragma once
#include <stddef.h>
#include <stdint.h>

void wk_gemm_f32(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, int64_t strideA,
                 const float *B, int64_t ldb, int64_t strideB, float beta,
                 float *C, int64_t ldc, int64_t strideC, int64_t batch);

// bf16 inputs (raw uint16 bf16 bits), f32 accumulation and f32 output.
void wk_gemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                  const uint16_t *A, int64_t lda, int64_t strideA,
                  const uint16_t *B, int64_t ldb, int64_t strideB, float beta,
                  float *C, int64_t ldc, int64_t strideC, int64_t batch);

// One matrix on the calling thread only (for kernels that split the work themselves).
void wk_gemm_f32_serial(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc);

// How a one-row f32 GEMV y = x @ W (W [K, n] row-major, or its transpose when dot) splits
// its K across threads: the number of K chunks (1 when it does not split K); chunk c is
// rows [k0, k1) (empty past K), and y is the partial sums of the chunks added in order.
// For kernels that must give the same bits as wk_gemm_f32 while splitting the work
// their own way (the CPU LoRA chain).
int wk_gemv_k_chunks(int64_t K, int64_t n, int dot, int esize);
void wk_gemv_k_chunk(int64_t K, int chunks, int c, int64_t *k0, int64_t *k1);

// A B operand that expands itself into the GEMM's packed panels, for weights kept in
// another form (GGUF blocks): the GEMM asks for pieces of op(B) as f32 while packing,
// so no f32 copy of B exists beyond one thread's panel. One of the two callbacks is set:
//   col(ctx, j, k0, kc, out): out[0:kc] = op(B)[k0:k0+kc, j], when op(B)'s columns are
//     contiguous in the source (x @ W^T with W [N, K] in row blocks); k0 is a multiple
//     of kalign or 0 (the GEMM's depth blocks are multiples of it).
//   row(ctx, k, j0, n, out): out[0:n] = op(B)[k, j0:j0+n], when its rows are (x @ W).
// The callbacks run on the GEMM's threads at once: they must not share scratch.
typedef struct {
    void (*col)(const void *ctx, int64_t j, int64_t k0, int64_t kc, float *out);
    void (*row)(const void *ctx, int64_t k, int64_t j0, int64_t n, float *out);
    const void *ctx;
    int64_t kalign;
} wk_gemm_bsrc;

// C[M,N] = op(A) @ op(B) + beta * C with B from a wk_gemm_bsrc (f32 kernels, all threads).
void wk_gemm_f32_bsrc(int transA, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                      const wk_gemm_bsrc *B, float beta, float *C, int64_t ldc);

// Y[r, 0:n] = X[r, :K] . W[j, :K] (+ beta * Y) for r < rows <= 4, on the calling thread:
// n dot products against rows of W (ldw apart), X rows ldx apart, Y rows ldy apart.
void wk_gemv_f32_dot(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const float *w,
                     int64_t ldw, float *y, int64_t ldy, float beta);
// The same with W in bf16 bits (x and y stay f32).
void wk_gemv_bf16_dot(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const uint16_t *w,
                      int64_t ldw, float *y, int64_t ldy, float beta);

// dst[k*W + r] = src[r*ld + k] for r < w (zero for w <= r < W), k < kc: w rows of
// length kc transposed into kc rows of W (the GEMM's panel layout), w <= W.
void wk_transpose_rows_f32(const float *src, int64_t ld, int64_t w, int64_t kc, int W, float *dst);

// Epilogue: called on finished blocks of C (all of K summed): rows [0, rows) of c
// (ldc apart), columns col0 .. col0 + ncols of the whole C; the packed GEMM hands it
// each finished row panel (MR rows x up to NC columns), still in L1 / L2. It replaces
// a separate pass over C in memory (a bias add, an activation).
typedef void (*wk_gemm_epi_fn)(float *c, int64_t ldc, int64_t rows, int64_t col0, int64_t ncols,
                               const void *ctx);
// C[M,N] = op(A) @ op(B), then epi on every block of C (one matrix, all threads).
void wk_gemm_f32_epi(int transA, int transB, int64_t M, int64_t N, int64_t K, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                     wk_gemm_epi_fn epi, const void *epi_ctx);

// ---- B panels packed once for frozen (read-only) weights ----
// wk_gemm_freeze declares [p, p + bytes) read-only until wk_gemm_thaw(p): a GEMM whose
// whole B operand lies there packs it on first use and keeps the panels (up to a byte
// budget; past it, B packs per call as usual). wk_gemm_thaw drops the region and every
// panel made from it; the engine calls it before any write to, and on the release of,
// a frozen buffer. Returns 0, or -1 when out of memory (nothing is cached then).
int wk_gemm_freeze(const void *p, size_t bytes);
void wk_gemm_thaw(const void *p);
// Bytes of packed panels held now (tests).
size_t wk_gemm_frozen_bytes(void);
