// Attention of one query row (T = 1: decode) over an f16 / bf16 cache, alone or as a
// decode layer's RoPE, cache writes and SDPA in one launch (the decode attention group).
#include <cstdio>
#include <type_traits>
#include "attn.cuh"
#include "probe.h"

// ---- decode: one query row (T = 1) over an f16 / bf16 cache ----
// A CTA (8 warps) owns one (b, kv head) and a chunk of the keys that exist (sized at run
// time from kv_len: DEC_TILE keys at least, so a short context wakes few CTAs) and
// serves all G query heads of the group, so each key and value row is read once per
// group, not once per head. Each tile of DEC_TILE keys is staged in shared memory, the
// next tile's loads in flight while this one is computed. Warp g owns head g: lane j
// scores key j, the online softmax is two warp reductions, and P V takes p from the
// lanes by shuffles, so a tile costs two block barriers.
// The chunks' parts (o unnormalized, m, l) merge in two levels. CTAs form clusters of
// DEC_CLUSTER: each pushes its part into the shared memory of the cluster's CTAs that
// merge it (CTA r merges outputs [r SL, (r + 1) SL) of the group; remote stores do not
// wait for a round trip as remote loads would), one cluster barrier, then each merges
// its slice from its own shared memory. When more than one cluster has keys, the last
// CTA of the group to finish merges the clusters' parts from global memory. A context
// of up to DEC_ONE_CLUSTER keys is one cluster, with no global round trip; clusters
// past the keys return at once.
// Inside a captured decode step the kernel launches as a programmatic dependent (PDL):
// where no earlier kernel of the graph writes the cache, kv_len and the positions
// (wkc_pdl_prior), it reads them, computes RoPE's angles and issues its first tile's
// loads before it waits for the q, k, v projections; else it waits first.
// Phases of one CTA (globaltimer; Qwen2.5-0.5B shapes, ~150 keys, H100, launched step by
// step): kv_len 0.7 us; the first tile's loads and RoPE's angles 1.6; q, k, v and the
// rotation 1.1; one tile 1.3; the cluster barrier 0.6; the merge and its stores 1.0; 6.8
// in all. The cluster's first CTA merging by remote loads took 1.9 for the merge (8.1 in
// all). Under ncu the previous kernel (a CTA of 16 warps per 64-key chunk, four barriers
// a tile, the last CTA merging through global memory) took 10.4 us a launch, this one 9.1.
#define DEC_WARPS 8
#define DEC_TILE 32      // keys staged at a time, and the fewest a CTA takes
#define DEC_CLUSTER 8    // CTAs of a cluster (the portable most)
#define DEC_GMAX 8       // query heads per kv head the decode kernel serves
// Up to this many keys one cluster takes them all (up to 4 tiles a CTA), with no merge
// through global memory: Qwen2.5-0.5B's shapes, 90-token prompt, 512 tokens (contexts to
// 602 keys; H100, steady decode): 1,220 tok/s spread over 32-key chunks, 1,261 with
// one cluster up to 512 keys, 1,271 up to 1,024.
#define DEC_ONE_CLUSTER 1024

// keys of the tile at t0 of a chunk ending at k1
static __device__ __forceinline__ int dec_tile_n(int64_t t0, int64_t k1) {
  return k1 - t0 < DEC_TILE ? (int)(k1 - t0) : DEC_TILE;
}
static __device__ __forceinline__ int64_t dec_chunk(int64_t S, int64_t nsp) {
  int64_t c = (S + nsp - 1) / nsp;
  if (S <= DEC_ONE_CLUSTER && c < (S + DEC_CLUSTER - 1) / DEC_CLUSTER) c = (S + DEC_CLUSTER - 1) / DEC_CLUSTER;
  return c <= DEC_TILE ? DEC_TILE : (c + DEC_TILE - 1) / DEC_TILE * DEC_TILE;
}

// 2^x in one MUFU instruction (relative error ~2^-22; 2^-inf = 0): the decode kernel
// keeps its scores in the log2 domain (q scaled by log2 e).
static __device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// the two values of a 32-bit word of f16 / bf16 bits, the lower address first
template <bool BF> static __device__ __forceinline__ float2 widen2w(uint32_t w) {
  if (BF) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  return make_float2(__half2float(__ushort_as_half((unsigned short)(w & 0xffffu))),
                     __half2float(__ushort_as_half((unsigned short)(w >> 16))));
}
// q of the group's heads into shared memory, scaled (one dtype per branch, so that the
// loads do not each wait behind a dtype switch)
template <typename T>
static __device__ __forceinline__ void dec_q(const AttnArgs &a, int64_t b, int64_t hk, int D, float *qs) {
  const T *p = (const T *)a.q.p;
  const float sc = a.scale * 1.4426950408889634f;   // log2 e: scores in the log2 domain
  for (int i = threadIdx.x; i < (int)a.G * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    const T v = p[elem(a.q, b, hk * a.G + g, 0, d)];
    if constexpr (sizeof(T) == 4) qs[i] = v * sc;
    else if constexpr (std::is_same<T, __nv_bfloat16>::value) qs[i] = __bfloat162float(v) * sc;
    else qs[i] = __half2float(v) * sc;
  }
}

// The decode attention group's own arguments (wkc_decode_attn_group): q and k before
// RoPE, v, and where RoPE's results and the new cache rows go. NoFuse: the SDPA alone.
struct DecFuse {
  RopeArgs rope;          // q's RoPE: x = q before it, out = q rotated (k's has the same angles)
  DOp kx, vx;             // k before RoPE, v: [B, Hkv, 1, D]
  char *ko;               // k rotated (RoPE k's output), dense [B, Hkv, 1, D]
  int32_t ko_dtype, pad;
  const int32_t *start;   // the cache row the new key and value go to
};
struct NoFuse {};

// The group's RoPE angles, cos and sin of each of the D / 2 pairs, into rc, rs.
template <int D> static __device__ __forceinline__ void dec_angles(const DecFuse &f, float *rc, float *rs) {
  const int64_t p = rope_pos0(f.rope);
  for (int i = threadIdx.x; i < D / 2; i += blockDim.x) rope_cs(f.rope, p, i, &rc[i], &rs[i]);
}

// The group's prologue, in every CTA of (b, kv head hk), after dec_angles and a
// barrier: the group's q rows rotated (rounded to RoPE's output dtype, as the SDPA
// would read them) into qs, scaled; the new key (rotated) and value in the cache's
// dtype into kn, vn; and, in the group's first CTA (first), the rotated q and k as
// RoPE's outputs and the new rows into the cache at kc, vc (as the cache writes would;
// the other CTAs stage those rows from kn, vn, so none waits for these stores). Every
// load is issued before the first store (the stores could alias them, so the compiler
// would not reorder them): one round trip to L2 after the PDL wait. Those outputs were
// stored after the cluster's merge for a while (e70fcd3); here, where they are
// computed, decode is faster (H100, qwen_cuda.py decode --runs 4 --tokens 128, builds
// alternated, two calls: steady 1,507 / 1,513 -> 1,533 / 1,541 tok/s).
// This thread's pair k (of dec_rot's E) in dec_rot's order: head g of the group (g = G:
// the new key), pair i of its row and the two indices it rotates (RoPE's layout).
struct DecPair {
  int g, i, i0, i1;
};
template <int D> static __device__ __forceinline__ DecPair dec_pair(const RopeArgs &r, int k) {
  const int e = threadIdx.x + k * DEC_WARPS * 32, g = e / (D / 2), i = e - g * (D / 2);
  return DecPair{g, i, r.inter ? 2 * i : i, r.inter ? 2 * i + 1 : i + D / 2};
}
template <int D, bool BF>
static __device__ __forceinline__ void dec_rot(const AttnArgs &a, const DecFuse &f, int64_t b, int64_t hk, bool first,
                                               float *qs, uint16_t *kn, uint16_t *vn, const float *rc, const float *rs,
                                               uint16_t *kc, uint16_t *vc) {
  constexpr int E = ((DEC_GMAX + 1) * (D / 2) + DEC_WARPS * 32 - 1) / (DEC_WARPS * 32);   // pairs of q and k a thread rotates
  static_assert(D <= DEC_WARPS * 32, "a value of v a thread");
  const RopeArgs &r = f.rope;
  const float sc = a.scale * 1.4426950408889634f;   // log2 e: scores in the log2 domain (dec_q)
  const int G = (int)a.G;
  const int64_t lq = last_stride(r.x), lk = last_stride(f.kx), krow = b * a.Hkv + hk;
  float x0[E], x1[E];
#pragma unroll
  for (int k = 0; k < E; k++) {   // q's pairs, then k's
    const DecPair q = dec_pair<D>(r, k);
    const int g = q.g, i0 = q.i0, i1 = q.i1;
    if (g > G) break;
    const DOp &x = g < G ? r.x : f.kx;
    const int64_t ro = g < G ? row_off(r.x, b * a.Hq + hk * G + g) : row_off(f.kx, krow), ls = g < G ? lq : lk;
    x0[k] = ldv(x.p, x.dtype, ro + i0 * ls);
    x1[k] = ldv(x.p, x.dtype, ro + i1 * ls);
  }
  const float vv = threadIdx.x < D ? ldv(f.vx.p, f.vx.dtype, op_off(f.vx, krow * D + threadIdx.x)) : 0.0f;
#pragma unroll
  for (int k = 0; k < E; k++) {
    const DecPair q = dec_pair<D>(r, k);
    const int g = q.g, i = q.i, i0 = q.i0, i1 = q.i1;
    if (g > G) break;
    const float2 y = rope_rot(x0[k], x1[k], rc[i], rs[i]);
    if (g < G) {
      qs[g * D + i0] = round_to(y.x, r.out_dtype) * sc;
      qs[g * D + i1] = round_to(y.y, r.out_dtype) * sc;
      const int64_t row = b * a.Hq + hk * G + g;
      if (first) stv(r.out, r.out_dtype, row * D + i0, y.x), stv(r.out, r.out_dtype, row * D + i1, y.y);
    } else {
      const uint16_t k0b = half_bits<BF>(round_to(y.x, f.ko_dtype)), k1b = half_bits<BF>(round_to(y.y, f.ko_dtype));
      kn[i0] = k0b, kn[i1] = k1b;
      if (kc) kc[i0] = k0b, kc[i1] = k1b;
      if (first) stv(f.ko, f.ko_dtype, krow * D + i0, y.x), stv(f.ko, f.ko_dtype, krow * D + i1, y.y);
    }
  }
  if (threadIdx.x < D) {
    vn[threadIdx.x] = half_bits<BF>(vv);
    if (vc) vc[threadIdx.x] = half_bits<BF>(vv);
  }
}

// One tile's loads, keys [t0, t0 + n) of the group: 16 bytes a thread per chunk of K and
// of V, coherent loads through L2 (cuda_internal.h: not __ldg in a PDL-launched kernel).
// Rows past n load row t0 (in bounds); dec_stage zeroes them.
template <int D, int CH>
static __device__ __forceinline__ void dec_load(uint4 (&kr)[CH], uint4 (&vr)[CH], const char *kb, const char *vb, int64_t kst,
                                                int64_t vst, int64_t t0, int n) {
  constexpr int NT = DEC_WARPS * 32, NCH = DEC_TILE * D / 8;
#pragma unroll
  for (int c = 0; c < CH; c++) {
    const int e = threadIdx.x + c * NT < NCH ? threadIdx.x + c * NT : NCH - 1, j = e / (D / 8), q8 = e - j * (D / 8);
    const int64_t jj = t0 + (j < n ? j : 0);
    kr[c] = wkc_ld_early16(kb + jj * kst + 16 * q8);
    vr[c] = wkc_ld_early16(vb + jj * vst + 16 * q8);
  }
}
// The loaded tile into shared memory (rows of W words, one of padding: column reads hit
// distinct banks); rows past n are zeros, and the group's new row (wpos) comes from kn, vn.
template <int D, int CH, bool FUSE>
static __device__ __forceinline__ void dec_stage(const uint4 (&kr)[CH], const uint4 (&vr)[CH], uint32_t *ks, uint32_t *vs,
                                                 int64_t t0, int n, int64_t wpos, const uint16_t *kn, const uint16_t *vn) {
  constexpr int NT = DEC_WARPS * 32, NCH = DEC_TILE * D / 8, W = D / 2 + 1;
#pragma unroll
  for (int c = 0; c < CH; c++) {
    const int e = threadIdx.x + c * NT, j = e / (D / 8), q8 = e - j * (D / 8);
    if (NCH % NT && e >= NCH) break;
    uint4 k = kr[c], v = vr[c];
    if (j >= n) k = v = make_uint4(0, 0, 0, 0);
    else if (FUSE && t0 + j == wpos) k = ((const uint4 *)kn)[q8], v = ((const uint4 *)vn)[q8];
    uint32_t *kd = ks + j * W + q8 * 4, *vd = vs + j * W + q8 * 4;
    kd[0] = k.x, kd[1] = k.y, kd[2] = k.z, kd[3] = k.w;
    vd[0] = v.x, vd[1] = v.y, vd[2] = v.z, vd[3] = v.w;
  }
}

// The merge of n parts in order: o = sum o_s 2^(m_s - M) / sum l_s 2^(m_s - M) with M
// the largest m_s. m(s), l(s), o(s): part s's values. *M, *L: M (0 when no part saw a
// key) and the denominator; the result is the numerator.
template <class Fm, class Fl, class Fo>
static __device__ __forceinline__ float dec_merge(int n, Fm m, Fl l, Fo o, float *M, float *L) {
  float mx = -INFINITY, num = 0.0f, den = 0.0f;
  for (int s = 0; s < n; s++) mx = fmaxf(mx, m(s));
  const float mu = mx == -INFINITY ? 0.0f : mx;
  for (int s = 0; s < n; s++) {
    const float w = ex2(m(s) - mu);
    den += l(s) * w;
    num += o(s) * w;
  }
  *M = mx, *L = den;
  return num;
}

// dec_merge over at most NMAX parts, unrolled: every part's loads issued at once, then
// the same operations in the same order (the same bits). The cluster's merge, where
// the loop's chain of shared-memory loads and exponentials took ~0.9 us (the probe).
template <int NMAX, class Fm, class Fl, class Fo>
static __device__ __forceinline__ float dec_merge_few(int n, Fm m, Fl l, Fo o, float *M, float *L) {
  float mv[NMAX], lv[NMAX], ov[NMAX];
#pragma unroll
  for (int s = 0; s < NMAX; s++)
    if (s < n) mv[s] = m(s), lv[s] = l(s), ov[s] = o(s);
  float mx = -INFINITY, num = 0.0f, den = 0.0f;
#pragma unroll
  for (int s = 0; s < NMAX; s++)
    if (s < n) mx = fmaxf(mx, mv[s]);
  const float mu = mx == -INFINITY ? 0.0f : mx;
#pragma unroll
  for (int s = 0; s < NMAX; s++)
    if (s < n) {
      const float w = ex2(mv[s] - mu);
      den += lv[s] * w;
      num += ov[s] * w;
    }
  *M = mx, *L = den;
  return num;
}

// After each CTA of the ncl clusters with keys wrote its slice of its cluster's part
// (cluster cl of the group, rows b * Hq + hk * G + g): those CTAs count themselves in;
// the last one merges the ncl parts (in cluster order, so the result does not depend on
// which is last) and resets the counter for the next launch. Parts hold o
// unnormalized, then m, l.
template <int D>
static __device__ __forceinline__ void dec_finish(const AttnArgs &a, int64_t b, int64_t hk, int ncl, int *last) {
  const int G = (int)a.G;
  __threadfence();   // this cluster's part is visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) *last = atomicAdd(&a.dec_count[blockIdx.y], 1) == ncl * DEC_CLUSTER - 1;
  __syncthreads();
  if (!*last) return;
  __threadfence();
  const int64_t st = a.B * a.Hq * (D + 2);
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    const int64_t r = b * a.Hq + hk * G + g;
    const float *p = a.part + r * (D + 2);
    float M, L;
    const float O = dec_merge(
        ncl, [&](int s) { return __ldcg(p + s * st + D); }, [&](int s) { return __ldcg(p + s * st + D + 1); },
        [&](int s) { return __ldcg(p + s * st + d); }, &M, &L);
    stv(a.out, a.out_dtype, r * D + d, L == 0.0f ? 0.0f : O / L);   // a row that sees no key: 0 (NaN stays NaN)
  }
  if (threadIdx.x == 0) a.dec_count[blockIdx.y] = 0;
}

// Stores (x, y) to the shared memory of CTA `rank` of the cluster, at the address p has
// in this CTA's (the merge pushes parts: a remote store does not wait, a remote load would).
static __device__ __forceinline__ void st_cluster2(float *p, int rank, float x, float y) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("st.shared::cluster.v2.f32 [%0], {%1, %2};" ::"r"(r), "f"(x), "f"(y) : "memory");
}
// the cluster barrier, its arrival releasing this CTA's stores and its wait acquiring the others'
static __device__ __forceinline__ void cluster_barrier(void) {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

template <int D, bool BF, class F>
__global__ void __launch_bounds__(DEC_WARPS * 32) k_attn_decode(const __grid_constant__ AttnArgs a, const __grid_constant__ F f) {
  constexpr bool FUSE = std::is_same<F, DecFuse>::value;
  constexpr int W = D / 2 + 1, NT = DEC_WARPS * 32, NCH = DEC_TILE * D / 8, CH = (NCH + NT - 1) / NT;
  constexpr int WL = (D / 2 + 31) / 32;              // 32-bit words of o a lane owns (its head's warp)
  constexpr int SL = DEC_GMAX * D / DEC_CLUSTER;     // outputs of the group a CTA of the cluster merges
  static_assert(DEC_TILE == 32 && DEC_GMAX <= DEC_WARPS && SL <= NT && SL % 2 == 0, "a lane a key, a warp a head");
  __shared__ uint32_t ks[DEC_TILE * W], vs[DEC_TILE * W];
  __shared__ float qs[DEC_GMAX * D];
  __shared__ float rcv_o[DEC_CLUSTER][SL], rcv_ml[DEC_CLUSTER][2 * DEC_GMAX];   // the cluster's parts of my slice
  __shared__ int last;
  __shared__ __align__(16) uint16_t kn[FUSE ? D : 8], vn[FUSE ? D : 8];   // the group's new cache rows
  __shared__ float rc[FUSE ? D / 2 : 1], rs[FUSE ? D / 2 : 1];
  PROBE_START;
  wkc_pdl_trigger();
  if (!a.early) wkc_pdl_wait();   // else: the cache, kv_len and positions are read before it
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, G = (int)a.G;
  const int64_t sp = blockIdx.x, b = blockIdx.y / a.Hkv, hk = blockIdx.y % a.Hkv;
  const int rank = (int)(sp % DEC_CLUSTER), cl = (int)(sp / DEC_CLUSTER);
  const int64_t S = eff_keys(a), chunk = dec_chunk(S, gridDim.x);
  const int64_t nact = S > 0 ? (S + chunk - 1) / chunk : 1;   // CTAs with keys (with none, the first writes the 0s)
  const int ncl = (int)((nact + DEC_CLUSTER - 1) / DEC_CLUSTER);
  if (cl >= ncl) return;   // the whole cluster is past the keys
  const int nr = (int)(nact - (int64_t)cl * DEC_CLUSTER < DEC_CLUSTER ? nact - (int64_t)cl * DEC_CLUSTER : DEC_CLUSTER);
  const int64_t k0 = sp * chunk < S ? sp * chunk : S, k1 = k0 + chunk < S ? k0 + chunk : S;
  const char *kb = a.k.p + 2 * (b * a.k.stride[0] + hk * a.k.stride[1]);
  const char *vb = a.v.p + 2 * (b * a.v.stride[0] + hk * a.v.stride[1]);
  const int64_t kst = 2 * a.k.stride[2], vst = 2 * a.v.stride[2];
  uint4 kr[CH], vr[CH];
  if (k0 < k1) dec_load<D, CH>(kr, vr, kb, vb, kst, vst, k0, dec_tile_n(k0, k1));
  int64_t wpos = -1;   // the group's new row: staged from kn, vn instead of the cache
  if constexpr (FUSE) {
    wpos = *f.start;
    dec_angles<D>(f, rc, rs);
    __syncthreads();
  }
  if (a.early) wkc_pdl_wait();
  PROBE_WAITED;
  if constexpr (FUSE) {
    const bool cw = sp == 0 && wpos >= 0 && wpos < a.S;
    dec_rot<D, BF>(a, f, b, hk, sp == 0, qs, kn, vn, rc, rs, cw ? (uint16_t *)(kb + wpos * kst) : NULL,
                   cw ? (uint16_t *)(vb + wpos * vst) : NULL);
  }
  else if (a.q.dtype == WK_F32) dec_q<float>(a, b, hk, D, qs);
  else if (a.q.dtype == WK_BF16) dec_q<__nv_bfloat16>(a, b, hk, D, qs);
  else dec_q<__half>(a, b, hk, D, qs);
  // warp g < G owns head g: its running max m and sum l (log2 domain, the same in every
  // lane) and its o words lane + 32 i, unnormalized
  float m = -INFINITY, l = 0.0f;
  float2 o[WL];
#pragma unroll
  for (int i = 0; i < WL; i++) o[i] = make_float2(0.0f, 0.0f);
  for (int64_t t0 = k0; t0 < k1; t0 += DEC_TILE) {
    const int n = dec_tile_n(t0, k1);
    __syncthreads();   // the last tile's readers are done (and the prologue's writes are seen)
    dec_stage<D, CH, FUSE>(kr, vr, ks, vs, t0, n, wpos, kn, vn);
    __syncthreads();
    if (t0 + DEC_TILE < k1)   // the next tile's loads fly while this one is computed
      dec_load<D, CH>(kr, vr, kb, vb, kst, vst, t0 + DEC_TILE, dec_tile_n(t0 + DEC_TILE, k1));
    if (warp >= G) continue;
    // lane j's score for key t0 + j (log2 domain; -inf past n)
    float sc = -INFINITY;
    if (lane < n) {
      const float *qg = qs + warp * D;
      const uint32_t *kw = ks + lane * W;
      float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 8
      for (int w = 0; w < D / 2; w++) {
        const float2 kf = widen2w<BF>(kw[w]);
        s0 = fmaf(qg[2 * w], kf.x, s0);
        s1 = fmaf(qg[2 * w + 1], kf.y, s1);
      }
      sc = s0 + s1;
      if (a.has_mask) {   // an f32 mask (decode_fwd sends others to the tiled kernels)
        const int64_t at = b * a.ms[0] + (hk * G + warp) * a.ms[1] + (t0 + lane) * a.ms[3];
        sc += 1.4426950408889634f * ((const float *)a.mask)[at];
      }
    }
    // online softmax over the tile, then o = o al + P V with p from the lanes' shuffles
    const float mn = fmaxf(m, warp_max(sc)), mu = mn == -INFINITY ? 0.0f : mn;
    const float p = ex2(sc - mu), al = ex2(m - mu);   // al: 0 before the first key
    l = l * al + warp_sum(p);
    m = mn;
#pragma unroll
    for (int i = 0; i < WL; i++) o[i].x *= al, o[i].y *= al;
#pragma unroll 8
    for (int j = 0; j < DEC_TILE; j++) {   // p = 0 and V = 0 past n
      const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
      for (int i = 0; i < WL; i++) {
        const int w = lane + 32 * i;
        if (D / 2 % 32 == 0 || w < D / 2) {
          const float2 vf = widen2w<BF>(vs[j * W + w]);
          o[i].x = fmaf(pj, vf.x, o[i].x);
          o[i].y = fmaf(pj, vf.y, o[i].y);
        }
      }
    }
  }
  PROBE_MARK;   // (the keys done)
  // The cluster's merge: output e of the group (head e / D) is merged by CTA e / SL of
  // the cluster, so each CTA pushes its o words and every head's (m, l) to their owners.
  if (rank < nr && warp < G) {
#pragma unroll
    for (int i = 0; i < WL; i++) {
      const int e = warp * D + 2 * (lane + 32 * i);
      if (D / 2 % 32 == 0 || lane + 32 * i < D / 2) st_cluster2(&rcv_o[rank][e % SL], e / SL, o[i].x, o[i].y);
    }
    if (lane < DEC_CLUSTER) st_cluster2(&rcv_ml[rank][2 * warp], lane, m, l);
  }
  PROBE_MARK2;   // (pushed)
  cluster_barrier();   // every part pushed (and no CTA stores into one that has left)
  PROBE_MARK3;   // (the cluster's barrier passed)
  const int e = rank * SL + tid;   // my output
  if (tid < SL && e < G * D) {
    const int g = e / D, d = e - g * D;
    const int64_t row = b * a.Hq + hk * G + g;   // T = 1
    float M, L;
    const float O = dec_merge_few<DEC_CLUSTER>(
        nr, [&](int s) { return rcv_ml[s][2 * g]; }, [&](int s) { return rcv_ml[s][2 * g + 1]; },
        [&](int s) { return rcv_o[s][tid]; }, &M, &L);
    if (ncl == 1) {
      stv(a.out, a.out_dtype, row * D + d, L == 0.0f ? 0.0f : O / L);   // a row that sees no key: 0 (NaN stays NaN)
    } else {
      float *pp = a.part + ((int64_t)cl * a.B * a.Hq + row) * (D + 2);
      pp[d] = O;
      if (d == 0) pp[D] = M, pp[D + 1] = L;
    }
  }
  PROBE_MARK4;   // (merged and stored)
  PROBE_END(9000000 + D);
  if (ncl > 1) dec_finish<D>(a, b, hk, ncl, &last);
}

// k_attn_decode's counters, one per (batch, kv head) grid row: zero between launches
// (the last CTA of a launch resets its own).
static int *dec_counters(void) {
  static int *p = NULL;
  return wkc_zeroed_counters(&p, 65536);
}

// One query row per head over a cache of f16 / bf16 rows (k_attn_decode). The keys that
// exist are known only at run time (kv_len, read by the kernels), so the grid is sized
// for the capacity S, some 2 CTAs an SM, and the clusters past the keys return at once.
template <class F> static void decode_launch(const AttnArgs &a, const F &f, bool bf, dim3 grid, bool pdl) {
  void (*k)(AttnArgs, F) = bf ? (a.D == 32 ? k_attn_decode<32, true, F> : a.D == 64 ? k_attn_decode<64, true, F> : k_attn_decode<128, true, F>)
                              : (a.D == 32 ? k_attn_decode<32, false, F> : a.D == 64 ? k_attn_decode<64, false, F> : k_attn_decode<128, false, F>);
  PROBE_AT_EXIT("attn");
  wkc_launch_ex(k, grid, DEC_WARPS * 32, 0, pdl, DEC_CLUSTER, a, f);
}
// f: the decode attention group's RoPE and cache writes, or NULL (the SDPA alone).
// early: the kernel may read the cache, kv_len and positions before its PDL wait.
static wk_status decode_fwd(AttnArgs &a, bool bf, const DecFuse *f, bool early) {
  const int64_t groups = a.B * a.Hkv;
  int64_t nsp = (2 * wkc_num_sms() + groups - 1) / groups, most = (a.S + DEC_TILE - 1) / DEC_TILE;
  if (nsp > most) nsp = most;
  if (nsp < 1) nsp = 1;
  nsp = (nsp + DEC_CLUSTER - 1) / DEC_CLUSTER * DEC_CLUSTER;   // whole clusters
  if (groups > 65535)
    return wk_error(WK_ERR_SHAPE, "sdpa (decode): %lld batch x kv heads is above the grid's 65535", (long long)groups);
  a.NSP = nsp;
  a.early = early;
  const int64_t nparts = nsp / DEC_CLUSTER;   // clusters, whose parts merge through global memory
  void *part = NULL;
  if (nparts > 1 && !(a.dec_count = dec_counters()))
    return wk_error(WK_ERR_OOM, "sdpa (decode): out of device memory for 256 KB of split counters");
  if (nparts > 1) {
    const size_t bytes = sizeof(float) * (size_t)(nparts * a.B * a.Hq * (a.D + 2));
    if (!(part = wkc_tmp_alloc(bytes)))
      return wk_error(WK_ERR_OOM, "sdpa (decode): %zu bytes of split-key partial results (q %lldx%lldx1x%lld, %lld "
                      "keys): out of device memory", bytes, (long long)a.B, (long long)a.Hq, (long long)a.D,
                      (long long)a.S);
    a.part = (float *)part;
  }
  const dim3 grid((unsigned)nsp, (unsigned)groups);
  const bool pdl = early || wkc_pdl_const(NULL, 0);   // inside a one-capture graph: launch early, wait in the kernel
  if (f) decode_launch(a, *f, bf, grid, pdl);
  else decode_launch(a, NoFuse{}, bf, grid, pdl);
  wk_status st = wkc_check_launch(f ? "rope + cache writes + sdpa (decode group)" : "sdpa (decode)");
  if (!st && early) wkc_early_launched();
  wkc_tmp_free(part);
  return st;
}

// Whether the decode kernel may read SDPA step sd's cache (k, v) and kv_len, and the
// group's positions (f), before its PDL wait: no earlier kernel of the graph writes them.
// WICK_CUDA_EARLY_DEBUG=1: which one did not qualify, on stderr, at each capture.
static bool decode_early(const wk_step *sd, void *const *slots, const AttnArgs &a, const DecFuse *f) {
  static const bool dbg = getenv("WICK_CUDA_EARLY_DEBUG") && atoi(getenv("WICK_CUDA_EARLY_DEBUG")) > 0;
  static int on = -1;   // WICK_CUDA_EARLY=0: wait first (A/B)
  const char *no = NULL;
  if (!wk_env_on("WICK_CUDA_EARLY", &on)) no = "WICK_CUDA_EARLY=0";
  else if (!wkc_pdl_prior(NULL, 0)) no = "not captured as one graph (or a write span unknown)";
  for (int i = 1; !no && i <= 2; i++)
    if (!wkc_is_dense(&sd->in[i]) || !wkc_pdl_prior(wkc_ptr(&sd->in[i], slots), wkc_nbytes(&sd->in[i])))
      no = i == 1 ? "the key cache" : "the value cache";
  if (!no && a.kv_len && !wkc_pdl_prior(a.kv_len, sizeof(int32_t))) no = "kv_len";
  if (!no && f) {
    const RopeArgs &r = f->rope;
    if (!wkc_pdl_prior(f->start, sizeof(int32_t))) no = "the cache row";
    else if (r.pos && !wkc_pdl_prior(r.pos, sizeof(int32_t))) no = "RoPE's position";
    else if (r.inv && !wkc_pdl_prior(r.inv, sizeof(float) * (size_t)(a.D / 2))) no = "RoPE's frequencies";
  }
  if (dbg && wkc_pdl_const(NULL, 0)) fprintf(stderr, "wick: decode attention %s before its wait%s%s\n", no ? "waits" : "reads",
                                             no ? ": " : "", no ? no : "");
  return !no;
}

// Whether the decode kernel runs SDPA a (operands set up) over keys k and values v.
bool wkc_attn_decode_fits(const AttnArgs &a, const wk_operand *k, const wk_operand *v, void *const *slots) {
  return a.T == 1 && wkc_attn_forced() == 0 && (a.D == 32 || a.D == 64 || a.D == 128) && a.G <= DEC_GMAX &&
         (!a.has_mask || a.mask_dtype == WK_F32) && a.Hq == a.G * a.Hkv && (k->dtype == WK_BF16 || k->dtype == WK_F16) &&
         v->dtype == k->dtype && wkc_attn_mma_operand(k, slots, k->dtype) && wkc_attn_mma_operand(v, slots, k->dtype);
}

wk_status wkc_attn_decode(AttnArgs &a, const wk_step *sd, void *const *slots) {
  return decode_fwd(a, sd->in[1].dtype == WK_BF16, NULL, decode_early(sd, slots, a, NULL));
}

// ---- the decode attention group (compile_schedule.c's group_decode_attention) ----
static bool same_operand(const wk_operand *x, const wk_operand *y) {
  return x->slot == y->slot && x->offset == y->offset && x->dtype == y->dtype && x->ndim == y->ndim &&
         !memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim) &&
         !memcmp(x->stride, y->stride, sizeof(int64_t) * (size_t)x->ndim);
}

// Whether s[0..4] (RoPE of q, RoPE of k, the k and v cache writes, SDPA) run as one
// decode launch, and its arguments: the SDPA reads q from the first RoPE and the cache
// the writes update (dense, one new row at one start), the new key from the second
// RoPE, both RoPEs at the same angles, and the decode kernel takes the SDPA.
static bool decode_group_args(const wk_step *s, void *const *slots, AttnArgs &a, DecFuse &f) {
  const wk_step *rq = &s[0], *rk = &s[1], *sk = &s[2], *sv = &s[3], *sd = &s[4];
  if (rq->op != WK_OP_ROPE || rk->op != WK_OP_ROPE || sk->op != WK_OP_SET_SLICE || sv->op != WK_OP_SET_SLICE ||
      sd->op != WK_OP_SDPA || !sd->attrs.i[1] || sd->attrs.i[2] || sd->in[1].dtype == WK_Q8_0)
    return false;
  if (!same_operand(&sd->in[0], &rq->out) || !same_operand(&sk->in[1], &rk->out) || !same_operand(&sd->in[1], &sk->out) ||
      !same_operand(&sd->in[2], &sv->out) || !wkc_is_dense(&sk->out) || !wkc_is_dense(&sv->out) ||
      sk->in[2].slot != sv->in[2].slot || sk->in[2].offset != sv->in[2].offset || sk->attrs.i[0] != 2 ||
      sv->attrs.i[0] != 2 || sk->in[1].ndim != 4 || sk->in[1].shape[2] != 1 || sv->in[1].ndim != 4 || sv->in[1].shape[2] != 1)
    return false;
  wkc_attn_sdpa_args(sd, slots, &a);
  if (!a.B || !a.Hq || !a.D || !wkc_attn_decode_fits(a, &sd->in[1], &sd->in[2], slots)) return false;
  memset(&f, 0, sizeof f);
  RopeArgs r;
  if (wkc_rope_args(rq, slots, f.rope) || wkc_rope_args(rk, slots, r)) return false;   // the launches report it
  const RopeArgs &q = f.rope;
  if (q.T != 1 || r.T != 1 || q.D != a.D || r.D != a.D || q.rows != a.B * a.Hq || r.rows != a.B * a.Hkv || q.pos != r.pos ||
      q.offset != r.offset || q.inv != r.inv || q.theta != r.theta || q.sign != r.sign || q.scale != r.scale ||
      q.inter != r.inter || q.hinv != r.hinv)
    return false;
  f.kx = r.x;
  f.ko = r.out;
  f.ko_dtype = r.out_dtype;
  f.vx = wkc_dop(&sv->in[1], slots);
  f.start = (const int32_t *)wkc_ptr(&sk->in[2], slots);
  return true;
}

// A decode layer's RoPE, cache writes and attention (s[0..4]) as one launch: each CTA
// rotates its group's q rows and the new key itself and stages the new rows from shared
// memory; the first CTA of each (batch, kv head) stores RoPE's outputs and the new
// cache rows. Steps the kernel does not take run as their own three launches.
wk_status wkc_decode_attn_group(const wk_step *s, void *const *slots) {
  AttnArgs a;
  DecFuse f;
  if (decode_group_args(s, slots, a, f))
    return decode_fwd(a, s[4].in[1].dtype == WK_BF16, &f, decode_early(&s[4], slots, a, &f));
  wk_status st = wkc_rope_group(s, 2, slots);
  if (!st) st = wkc_set_slice_group(s + 2, 2, slots);
  return st ? st : wkc_sdpa(s + 4, slots);
}
