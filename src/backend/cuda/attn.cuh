// What the attention kernels share: attn.cu (FlashAttention-2 style tiled kernels,
// forward and backward) and attn_decode.cu (one query row over an f16 / bf16 cache,
// with a decode layer's RoPE and cache writes): the kernels' arguments, their device
// helpers and the host's reading of an SDPA step.
// B = batch, Hq / Hkv = query / kv heads, G = Hq / Hkv, T = queries, S = keys, D = head dim.
#pragma once
#include "cuda_internal.h"
#include "rope.cuh"

#define ATTN_BM 64          // query rows per CTA
#define ATTN_BN 64          // keys per tile
#define ATTN_MAXD 128       // tiled kernels' head dimension limit

struct AttnArgs {
  DOp q, k, v, o, dout;         // o, dout: backward only
  const char *mask;
  int32_t mask_dtype, has_mask, causal, want_out;
  const int32_t *kv_len;        // keys that exist (a preallocated cache), or NULL: all S
  int64_t ms[4];                // mask strides over [B, Hq, T, S], 0 on broadcast axes
  int64_t B, Hq, Hkv, T, S, D, G;
  int64_t NS, GS;               // backward: the group's heads in NS splits of GS (a CTA each)
  int64_t NSP, CHUNK;           // forward: keys in NSP splits of CHUNK tiles (a CTA each), 1: none
  float *part;                  // NSP > 1: per split and row, o unnormalized [D], then m, l
  float scale;
  int32_t out_dtype;
  char *out;                    // forward output, dense [B, Hq, T, D]
  float *lse, *delta;           // per query row [B, Hq, T] (the backward's statistics)
  int *dec_count;               // decode: clusters done per (b, kv head), zero between launches
  int32_t early;                // decode: the cache, kv_len, positions may be read before the PDL wait
  float *dq, *dk, *dv;          // backward outputs, dense f32
  int32_t add2;                 // backward: pairs of dq / dk / dv go in one 8-byte atomic
};

static __device__ __forceinline__ int64_t eff_keys(const AttnArgs &a) {
  if (!a.kv_len) return a.S;
  int64_t n = *a.kv_len;
  return n < 0 ? 0 : n < a.S ? n : a.S;
}
static __device__ __forceinline__ float mask_at(const AttnArgs &a, int64_t b, int64_t h, int64_t t, int64_t j) {
  return ldv(a.mask, a.mask_dtype, b * a.ms[0] + h * a.ms[1] + t * a.ms[2] + j * a.ms[3]);
}
static __device__ __forceinline__ int64_t elem(const DOp &o, int64_t b, int64_t h, int64_t t, int64_t d) {
  return b * o.stride[0] + h * o.stride[1] + t * o.stride[2] + d * o.stride[3];
}

// attn.cu: WICK_CUDA_SDPA's forced kernel (0: none; 1 rows, 3 simt, 4 tiled); whether the
// tensor-core kernels can read o (bf16 / f16 rows of D contiguous elements, 16-byte
// aligned); SDPA step s's operands (kv_len, the mask, the output) in a.
int wkc_attn_forced(void);
bool wkc_attn_mma_operand(const wk_operand *o, void *const *slots, wk_dtype dt);
void wkc_attn_sdpa_args(const wk_step *s, void *const *slots, AttnArgs *a);
// attn_decode.cu: whether the decode kernel runs SDPA a (operands set up) over keys k and
// values v; and runs it for the SDPA step sd.
bool wkc_attn_decode_fits(const AttnArgs &a, const wk_operand *k, const wk_operand *v, void *const *slots);
wk_status wkc_attn_decode(AttnArgs &a, const wk_step *sd, void *const *slots);
