// Matrix multiply kernels for the CPU backend (row-major, strided batches).
//
//   for b in [0, batch):
//     C_b[M,N] = alpha * op(A_b)[M,K] @ op(B_b)[K,N] + beta * C_b
//
// op(X) is X or X^T (transA/transB). A_b = A + b*strideA (elements), likewise B, C.
// lda/ldb/ldc are row strides in elements of the matrices as stored. beta = 0 means
// C is not read (it may hold garbage or NaN). Threads come from wk_parallel_for.
#pragma once
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

// Y[r, 0:n] = X[r, :K] . W[j, :K] (+ beta * Y) for r < rows <= 4, on the calling thread:
// n dot products against rows of W (ldw apart), X rows ldx apart, Y rows ldy apart.
void wk_gemv_f32_dot(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const float *w,
                     int64_t ldw, float *y, int64_t ldy, float beta);
