// RoPE's launch arguments and its per-pair math, shared by nn.cu's RoPE kernels and
// attn_decode.cu's decode attention group (which rotates q and the new key itself), so
// both produce the same bits. Angles as the CPU's table: f32 position * inverse
// frequency, cos / sin in double.
#pragma once
#include "cuda_internal.h"

#define ROPE_MAXH 256   // largest D / 2 of the vector body and of the host's frequency table
struct RopeArgs {
  DOp x;
  char *out;
  int32_t out_dtype, inter;
  int64_t rows, D, T, offset;
  int64_t rpt;          // rows a thread rotates with one (cos, sin): rows t apart share them
  int32_t vec, pad;     // rope_vec_body: 4 pairs a thread, float4 loads (see rope_args)
  const int32_t *pos;   // run-time position added to offset, or NULL
  const float *inv;     // given inverse frequencies (scaled RoPE), or NULL: theta's
  float theta, sign, scale;
  int32_t hinv, pad2;   // theta's inverse frequencies are in invh (D / 2 <= ROPE_MAXH)
  float invh[ROPE_MAXH];   // theta^(-2i/D) in double, computed on the host as the CPU's table is
};

// The arguments of ROPE step s (nn.cu).
wk_status wkc_rope_args(const wk_step *s, void *const *slots, RopeArgs &a);

#ifdef __CUDACC__
// Pair i's inverse frequency: given (scaled RoPE), else theta^(-2i/D), in double.
__device__ __forceinline__ float rope_inv(const RopeArgs &a, int64_t i) {
  return a.inv ? a.inv[i] : a.hinv ? a.invh[i] : (float)(1.0 / pow((double)a.theta, (double)(2 * i) / (double)a.D));
}
// The position a step's first row (t = 0) is at.
__device__ __forceinline__ int64_t rope_pos0(const RopeArgs &a) { return a.offset + (a.pos ? *a.pos : 0); }
// cos and sin (sign and scale applied) of pair i at position p.
__device__ __forceinline__ void rope_cs(const RopeArgs &a, int64_t p, int64_t i, float *co, float *sn) {
  const float ang = (float)p * rope_inv(a, i);
  *co = (float)cos((double)ang) * a.scale;
  *sn = a.sign * ((float)sin((double)ang) * a.scale);
}
// The pair (x0, x1) rotated, with no contraction left to the compiler (the same bits
// wherever it is inlined).
__device__ __forceinline__ float2 rope_rot(float x0, float x1, float co, float sn) {
  return make_float2(__fsub_rn(__fmul_rn(x0, co), __fmul_rn(x1, sn)), __fadd_rn(__fmul_rn(x1, co), __fmul_rn(x0, sn)));
}
#endif
