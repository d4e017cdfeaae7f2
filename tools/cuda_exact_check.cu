// Checks, for every float input, the GPU identities that WICK_CUDA_EWGEN bits 8 and
// 32 (src/backend/cuda/ew_gen.cu) rely on to keep every result bit:
//  - kernel_math.h's tanh and sigmoid with WKM_DIV12_RCP (a reciprocal and FMA
//    corrections) equal their IEEE-division forms, and wkm_div12 equals the division
//    over the ranges they use it on (q in [-1, 0]: -q / (2 + q); e in [0, 1]: 1 / (1 + e));
//  - |a * b| equals |a| * |b| bit for bit (NaN included) for every a and ten b.
// Build and run on the GPU (0.5 s on an H200), from the repository root:
//   nvcc -O3 -arch=sm_90 -Isrc -o /tmp/exact tools/cuda_exact_check.cu && /tmp/exact
// Prints the mismatch counts; exits 1 if there is an unexpected one.
#include <stdio.h>
#define WKM_DIV12_RCP 1
#include "backend/kernel_math.h"

enum { TANH, SIGMOID, DIV_TANH, DIV_SIGMOID, ABS_MUL, NCHECK };
__device__ unsigned long long g_bad[NCHECK];
__device__ unsigned g_first[NCHECK];

__device__ void bad(int k, unsigned u) {
  if (atomicAdd(&g_bad[k], 1ull) == 0) g_first[k] = u;
}
__device__ bool differ(float a, float b) { return __float_as_uint(a) != __float_as_uint(b); }

__global__ void sweep(unsigned base) {
  const unsigned u = base + blockIdx.x * blockDim.x + threadIdx.x;
  const float v = __uint_as_float(u);
  // the functions as kernel_math.h wrote them before wkm_div12, IEEE division
  const float ax = fabsf(v), q = wkm_expm1(-2.0f * (ax > 10.0f ? 10.0f : ax));
  if (differ(wkm_tanh(v), copysignf(__fdiv_rn(-q, 2.0f + q), v))) bad(TANH, u);
  const float e = wkm_exp(-fabsf(v)), r = __fdiv_rn(1.0f, 1.0f + e);
  if (differ(wkm_sigmoid(v), v >= 0.0f ? r : e * r)) bad(SIGMOID, u);
  // the division alone over its ranges (and NaN)
  if (((v >= -1.0f && v <= 0.0f) || v != v) && differ(wkm_div12(-v, 2.0f + v), __fdiv_rn(-v, 2.0f + v))) bad(DIV_TANH, u);
  if (((v >= 0.0f && v <= 1.0f) || v != v) && differ(wkm_div12(1.0f, 1.0f + v), __fdiv_rn(1.0f, 1.0f + v))) bad(DIV_SIGMOID, u);
  const unsigned bs[10] = {0x3fc00000u, 0x80000000u, 0u, 0xc0400000u, 0x7f800000u,
                           0xff800000u, 0x7fc00001u, 0xffa00000u, 0x000b6c5au, 0x7f7fffffu};
#pragma unroll
  for (int j = 0; j < 10; j++) {
    const float b = __uint_as_float(bs[j]);
    if (differ(fabsf(__fmul_rn(v, b)), __fmul_rn(fabsf(v), fabsf(b)))) bad(ABS_MUL, u);
  }
}

int main(void) {
  for (unsigned long long base = 0; base < (1ull << 32); base += 1ull << 30) sweep<<<(1u << 30) / 256, 256>>>((unsigned)base);
  unsigned long long n[NCHECK];
  unsigned first[NCHECK];
  cudaError_t err = cudaMemcpyFromSymbol(n, g_bad, sizeof n);
  if (err == cudaSuccess) err = cudaMemcpyFromSymbol(first, g_first, sizeof first);
  if (err != cudaSuccess) {
    printf("cuda: %s\n", cudaGetErrorString(err));
    return 1;
  }
  // the one expected difference: q = +0 divides -0 by 2, where the reciprocal form
  // gives +0 and IEEE -0 (tanh's copysign sets the sign either way)
  const char *name[NCHECK] = {"wkm_tanh", "wkm_sigmoid", "div12 -q/(2+q)", "div12 1/(1+e)", "|a*b| vs |a|*|b|"};
  const unsigned long long expect[NCHECK] = {0, 0, 1, 0, 0};
  int fail = 0;
  for (int k = 0; k < NCHECK; k++) {
    printf("%-18s mismatches %llu (expected %llu)", name[k], n[k], expect[k]);
    if (n[k]) printf(", first input 0x%08x", first[k]);
    printf("\n");
    fail |= n[k] != expect[k];
  }
  return fail;
}
