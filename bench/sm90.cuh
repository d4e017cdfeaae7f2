// What the standalone sm_90 checks in bench/ share (each built by hand with nvcc; this
// header sits beside them): the GPU's global timer, shared-memory barriers with the
// bulk copies (TMA) that complete them, a warp's sum and a bf16 dot product.
#pragma once
#include <cstdint>

__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count));
}
// until barrier b's phase of this parity has completed
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
  unsigned done = 0;
  while (!done)
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(smem_u32(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
// bytes from global memory into shared memory by one bulk copy, counted off barrier b's
// expected bytes (an arrival with expect_tx elsewhere announced them)
__device__ __forceinline__ void bulk_copy_tx(void *dst, const void *src, unsigned bytes, uint64_t *b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(b)) : "memory");
}
// the same, this thread's arrival on b announcing the bytes
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *b) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
  bulk_copy_tx(dst, src, bytes, b);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// acc + the 8 bf16 values of w (lower address first) times x[0..7]
__device__ __forceinline__ float dot_bf16x8(uint4 w, const float *x, float acc = 0.0f) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    acc = fmaf(__uint_as_float(u[i] << 16), x[2 * i], acc);
    acc = fmaf(__uint_as_float(u[i] & 0xffff0000u), x[2 * i + 1], acc);
  }
  return acc;
}
