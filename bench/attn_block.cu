// Whether a decode layer's attention half runs faster as one launch than as wick's three
// (issue 6: q/k/v, the attention and o take ~11 µs of a ~24 µs layer for ~1.2 µs of DRAM
// time; each boundary between them is a chain of round trips, not bytes).
//
// Qwen2.5-0.5B's shapes: 14 query heads, 2 KV heads of 64, q/k/v with biases, bf16
// weights and a bf16 cache, RoPE (rotate-half, theta 1e6), the new token at position P.
// k_attn is one launch in 2 clusters of 16 CTAs, a cluster per KV head (its 7 query heads):
//   before the PDL wait, each CTA asks the TMA engine for its 36 of the group's 576
//     q/k/v rows, its 56 rows of o's 448 columns of this group, and its chunk of the
//     cached keys and values, into shared memory (115 KB of weights: nothing waits on
//     the load queue after the wait);
//   after it: h, its RMSNorm, the 36 dot products, pushed to every CTA of the cluster;
//     a cluster barrier; RoPE; the CTA's keys (the new one from shared memory; CTA 0
//     writes the cache row); each CTA's part (m, l, o) pushed to the owners of its
//     slices; a barrier; each owner merges 28 outputs and pushes them to all; a barrier;
//     o's partial sums over the group's columns, stored apart per group (no atomics).
// The MLP after it reads h + the two groups' partial sums (its block 0 stores that h for
// down's residual). Variants, 24 layers chained and replayed as one graph, PDL throughout:
//   mlp:   the MLP alone (bench/decode_layer.cuh's two kernels), the floor under a layer;
//   attn:  the attention launches alone;
//   layer: both: a whole decode layer in three launches.
// All are checked against a host reference in double (relative error over 1e-3 fails).
//
//   nvcc -std=c++17 -arch=sm_90 -O3 -o /tmp/attn_block bench/attn_block.cu && /tmp/attn_block [P]
#include <algorithm>
#include "decode_layer.cuh"

#define NQ 14                 // query heads
#define NKV 2                 // KV heads: one cluster each
#define D 64                  // head dim
#define GQ (NQ / NKV)         // query heads a group: 7
#define QKV (H + 2 * NKV * D) // q/k/v rows: 1152
#define GR (GQ * D + 2 * D)   // a group's q/k/v rows: 576
#define AC (GQ * D)           // a group's attention outputs (o's columns): 448
#define CS 16                 // CTAs a cluster (non-portable)
#define RPC (GR / CS)         // q/k/v rows a CTA: 36
#define OPC (H / CS)          // o rows a CTA: 56
#define SL (AC / CS)          // outputs a CTA merges: 28
#define RW ((RPC + 7) / 8)    // q/k/v rows a warp: 5 (the fifth for warps < 4)
#define SMAX 1024             // cache rows
#define KMAX (SMAX / CS)      // keys a CTA at most: 64
#define NT 256
#define THETA 1e6

struct AttnLayer {
  const uint16_t *wqkv, *wo;   // [QKV, H], [H, H] bf16
  const float *bqkv, *nw;      // [QKV], [H]
  uint16_t *kc, *vc;           // [NKV, SMAX, D] bf16
};

// shared memory, dynamic (byte offsets)
#define S_WQ 0
#define S_WO (S_WQ + RPC * H * 2)
#define S_K (S_WO + OPC * AC * 2)
#define S_V (S_K + KMAX * D * 2)
#define S_X (S_V + KMAX * D * 2)
#define S_QKV (S_X + H * 4)
#define S_A (S_QKV + GR * 4)
#define S_RO (S_A + AC * 4)
#define S_RML (S_RO + CS * SL * 4)
#define S_BAR (S_RML + CS * 2 * GQ * 4)
#define S_TOTAL (S_BAR + 3 * 8)

// -DSTAMPS: thread 0 of each CTA records the global timer at 9 points of k_attn (for the
// last replay's layers), printed as medians after the wait's return
#define NSTAMP 9
#ifdef STAMPS
__device__ unsigned long long g_stamp[LAYERS][NKV * CS][NSTAMP];
#define STAMP(i) \
  if (threadIdx.x == 0) g_stamp[layer][blockIdx.x][i] = gtime()
#else
#define STAMP(i)
#endif

__device__ __forceinline__ void st_cluster(float *p, int rank, float x) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(smem_u32(p)), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(r), "f"(x) : "memory");
}
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ float bf(uint32_t w, int hi) { return __uint_as_float(hi ? w & 0xffff0000u : w << 16); }
__device__ __forceinline__ uint16_t to_bf16_dev(float f) {
  const uint32_t u = __float_as_uint(f);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// The dot products of rows warp + 8 k (k < NR) of W (ROWS rows in shared memory, NC
// 16-byte chunks each; past ROWS the last row again, its result unused) with x (shared,
// f32), each in every lane: a lane's chunks of all NR rows first, two sums a row, then
// the NR warp sums interleaved, so that no row waits for the one before.
template <int NR, int NC, int ROWS>
__device__ __forceinline__ void rows_dot(const uint4 *W, const float *x, int warp, float (&out)[NR]) {
  constexpr int CL = (NC + 31) / 32;
  const int lane = threadIdx.x & 31;
  float s0[NR], s1[NR];
#pragma unroll
  for (int k = 0; k < NR; k++) s0[k] = s1[k] = 0.0f;
#pragma unroll
  for (int j = 0; j < CL; j++) {
    const int c = lane + 32 * j;
    if (NC % 32 == 0 || c < NC) {
      const float4 x0 = ((const float4 *)x)[2 * c], x1 = ((const float4 *)x)[2 * c + 1];
      const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
      for (int k = 0; k < NR; k++) {
        const uint4 wv = W[min(warp + 8 * k, ROWS - 1) * NC + c];
        const uint32_t u[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
          s0[k] = fmaf(__uint_as_float(u[i] << 16), xv[2 * i], s0[k]);
          s1[k] = fmaf(__uint_as_float(u[i] & 0xffff0000u), xv[2 * i + 1], s1[k]);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < NR; k++) out[k] = s0[k] + s1[k];
#pragma unroll
  for (int o = 16; o; o >>= 1)
#pragma unroll
    for (int k = 0; k < NR; k++) out[k] += __shfl_xor_sync(0xffffffffu, out[k], o);
}

// The group's global q/k/v row of its local row x (q: 448, then k: 64, then v: 64).
__device__ __forceinline__ int qkv_row(int g, int x) {
  return x < AC ? g * AC + x : x < AC + D ? H + g * D + (x - AC) : H + NKV * D + g * D + (x - AC - D);
}

// h = base + acc[0, H) + acc[H, 2 H) (acc NULL: base); hout (CTA 0 of group 0) gets h;
// p [NKV, H] gets each group's partial o.
__global__ void __launch_bounds__(NT, 1) k_attn(AttnLayer w, const float *base, const float *acc, float *hout,
                                                float *p, int pos, int layer) {
  extern __shared__ __align__(128) unsigned char sm[];
  const uint4 *wq = (const uint4 *)(sm + S_WQ), *wo = (const uint4 *)(sm + S_WO);
  const uint32_t *ks = (const uint32_t *)(sm + S_K), *vs = (const uint32_t *)(sm + S_V);
  float *xs = (float *)(sm + S_X), *qkv = (float *)(sm + S_QKV), *as = (float *)(sm + S_A);
  float *rcv_o = (float *)(sm + S_RO), *rcv_ml = (float *)(sm + S_RML);
  uint64_t *bar = (uint64_t *)(sm + S_BAR);
  __shared__ float red[NT / 32], rc[D / 2], rs[D / 2], bias[RPC];
  __shared__ __align__(16) uint32_t kn[D / 2], vn[D / 2];   // the new cache rows, bf16 pairs
  STAMP(0);
  pdl_trigger();
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int r = (int)cluster_rank(), g = blockIdx.x / CS;
  const int L = pos + 1, chunk = (L + CS - 1) / CS;
  const int k0 = min(r * chunk, L), k1 = min(k0 + chunk, L), nold = max(0, min(k1, pos) - k0);
  // the constants: everything but h and the new token's q, k and v may load before the wait
  if (tid == 0) {
    for (int b = 0; b < 3; b++) mbar_init(bar + b, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    const unsigned bytes[3] = {RPC * H * 2, OPC * AC * 2, (unsigned)(2 * nold * D * 2)};
    for (int b = 0; b < 3; b++)
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar + b)), "r"(bytes[b])
                   : "memory");
  }
  __syncthreads();
  if (warp == 0) {   // each lane issues its own copies; the barriers expect their sum
    const int x0 = r * RPC;
    if (lane < 3) {   // the CTA's rows within the group's q, k or v part
      const int lo = lane == 0 ? 0 : lane == 1 ? AC : AC + D, hi = lane == 0 ? AC : lane == 1 ? AC + D : GR;
      const int a = max(lo, x0), b = min(hi, x0 + RPC);
      if (a < b) bulk_copy_tx(sm + S_WQ + (size_t)(a - x0) * H * 2, w.wqkv + (size_t)qkv_row(g, a) * H, (b - a) * H * 2, bar);
    }
    for (int i = lane; i < OPC; i += 32)
      bulk_copy_tx(sm + S_WO + (size_t)i * AC * 2, w.wo + (size_t)(r * OPC + i) * H + g * AC, AC * 2, bar + 1);
    if (lane == 30 && nold) bulk_copy_tx(sm + S_K, w.kc + ((size_t)g * SMAX + k0) * D, nold * D * 2, bar + 2);
    if (lane == 31 && nold) bulk_copy_tx(sm + S_V, w.vc + ((size_t)g * SMAX + k0) * D, nold * D * 2, bar + 2);
  }
  if (tid < RPC) bias[tid] = w.bqkv[qkv_row(g, r * RPC + tid)];
  if (tid < D / 2) {   // RoPE's angles for the position, the inverse frequency in double
    const float ang = (float)pos * (float)(1.0 / pow(THETA, (double)(2 * tid) / D));
    sincosf(ang, rs + tid, rc + tid);
  }
  // every CTA of the cluster has started before any stores into another's shared memory
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  pdl_wait();
  STAMP(1);
  norm_x<NT>(base, acc, acc ? NKV : 0, w.nw, xs, red, g == 0 && r == 0 ? hout : NULL);
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  STAMP(2);
  // the CTA's 36 rows, each pushed to every CTA of the cluster
  mbar_wait(bar, 0);
  STAMP(3);
  {
    float sv[RW];
    rows_dot<RW, H / 8, RPC>(wq, xs, warp, sv);
#pragma unroll
    for (int k = 0; k < RW; k++) {
      const int x = warp + 8 * k;
      if (x < RPC && lane < CS) st_cluster(qkv + r * RPC + x, lane, sv[k] + bias[x]);
    }
  }
  cluster_barrier();
  STAMP(4);
  {   // RoPE: warp hd < GQ rotates query head hd, warp GQ the key; lane i pair (i, i + 32)
    float *v = qkv + warp * D;
    const float x0 = v[lane], x1 = v[lane + 32];
    const float y0 = x0 * rc[lane] - x1 * rs[lane], y1 = x1 * rc[lane] + x0 * rs[lane];
    if (warp < GQ) {
      v[lane] = y0, v[lane + 32] = y1;
    } else {   // the cache's rows, rounded to bf16 as stored (and as the attention reads them)
      uint16_t *kh = (uint16_t *)kn, *vh = (uint16_t *)vn;
      kh[lane] = to_bf16_dev(y0), kh[lane + 32] = to_bf16_dev(y1);
      vh[lane] = to_bf16_dev(qkv[AC + D + lane]), vh[lane + 32] = to_bf16_dev(qkv[AC + D + lane + 32]);
      if (r == 0) {
        uint16_t *kd = w.kc + ((size_t)g * SMAX + pos) * D, *vd = w.vc + ((size_t)g * SMAX + pos) * D;
        kd[lane] = kh[lane], kd[lane + 32] = kh[lane + 32];
        vd[lane] = vh[lane], vd[lane + 32] = vh[lane + 32];
      }
    }
  }
  __syncthreads();
  if (nold) mbar_wait(bar + 2, 0);
  // warp hd < GQ: head hd over keys [k0, k1), 32 a tile, lane j key t0 + j; log2 domain
  float m = -INFINITY, l = 0.0f, o0 = 0.0f, o1 = 0.0f;
  if (warp < GQ) {
    const float *q = qkv + warp * D;
    const float sc = 0.125f * 1.4426950408889634f;
    for (int t0 = k0; t0 < k1; t0 += 32) {
      const int n = min(32, k1 - t0), t = t0 + lane;
      float s = -INFINITY;
      if (lane < n) {
        const uint32_t *kr = t < pos ? ks + (t - k0) * (D / 2) : kn;
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 8
        for (int i = 0; i < D / 2; i++) {   // word (i + lane) % 32: the lanes' rows in distinct banks
          const int ww = (i + lane) & (D / 2 - 1);
          const uint32_t kw = kr[ww];
          s0 = fmaf(q[2 * ww], bf(kw, 0), s0);
          s1 = fmaf(q[2 * ww + 1], bf(kw, 1), s1);
        }
        s = (s0 + s1) * sc;
      }
      float mx = s;
#pragma unroll
      for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float mn = fmaxf(m, mx), pj = exp2f(s - mn), al = exp2f(m - mn);
      l = l * al + warp_sum(pj);
      m = mn;
      o0 *= al, o1 *= al;
      for (int j = 0; j < n; j++) {
        const float pb = __shfl_sync(0xffffffffu, pj, j);
        const uint32_t vw = t0 + j < pos ? vs[(t0 + j - k0) * (D / 2) + lane] : vn[lane];
        o0 = fmaf(pb, bf(vw, 0), o0);
        o1 = fmaf(pb, bf(vw, 1), o1);
      }
    }
    // outputs e, e + 1 (e = 64 hd + 2 lane) belong to CTA e / SL; (m, l) to every CTA
    const int e = warp * D + 2 * lane;
    st_cluster(rcv_o + r * SL + e % SL, e / SL, o0);
    st_cluster(rcv_o + r * SL + e % SL + 1, e / SL, o1);
    if (lane < CS) {
      st_cluster(rcv_ml + (r * GQ + warp) * 2, lane, m);
      st_cluster(rcv_ml + (r * GQ + warp) * 2 + 1, lane, l);
    }
  }
  STAMP(5);
  cluster_barrier();
  STAMP(6);
  if (tid < SL) {   // output e of the group merged over the cluster's parts, in rank order
    const int e = r * SL + tid, hd = e / D;
    float M = -INFINITY;
#pragma unroll
    for (int c = 0; c < CS; c++) M = fmaxf(M, rcv_ml[(c * GQ + hd) * 2]);
    float Lsum = 0.0f, O = 0.0f;
#pragma unroll
    for (int c = 0; c < CS; c++) {
      const float f = exp2f(rcv_ml[(c * GQ + hd) * 2] - M);   // 0 for a CTA without keys
      Lsum = fmaf(f, rcv_ml[(c * GQ + hd) * 2 + 1], Lsum);
      O = fmaf(f, rcv_o[c * SL + tid], O);
    }
    const float a = O / Lsum;
    for (int c = 0; c < CS; c++) st_cluster(as + e, c, a);
  }
  cluster_barrier();
  // o's rows [56 r, 56 r + 56) over the group's 448 columns
  mbar_wait(bar + 1, 0);
  STAMP(7);
  {
    float sv[OPC / 8];
    rows_dot<OPC / 8, AC / 8, OPC>(wo, as, warp, sv);
#pragma unroll
    for (int k = 0; k < OPC / 8; k++)
      if (lane == 0) p[g * H + r * OPC + warp + 8 * k] = sv[k];
  }
  __syncthreads();
  STAMP(8);
}

// ---- host ----
struct Ref {   // one layer's weights and cache, widened
  std::vector<double> wqkv, wo, bqkv, nw1;
  std::vector<double> kc, vc;   // [NKV, SMAX, D]
};

static double bfd(uint16_t b) { return from_bf16(b); }
static uint16_t to_bf16d(double v) { return to_bf16((float)v); }

static void rms(const std::vector<double> &h, const double *nw, std::vector<double> &x) {
  double ss = 0;
  for (int i = 0; i < H; i++) ss += h[i] * h[i];
  const double rr = 1.0 / sqrt(ss / H + EPS);
  for (int i = 0; i < H; i++) x[i] = h[i] * rr * nw[i];
}

// h += o(attention(q/k/v(rms_norm(h)))) for the token at pos; the cache gets row pos
static void ref_attn(Ref &R, std::vector<double> &h, int pos) {
  std::vector<double> x(H), v(QKV), a(H), o(H);
  rms(h, R.nw1.data(), x);
  for (int j = 0; j < QKV; j++) {
    double s = R.bqkv[j];
    for (int k = 0; k < H; k++) s += R.wqkv[(size_t)j * H + k] * x[k];
    v[j] = s;
  }
  for (int hd = 0; hd < NQ + NKV; hd++)   // RoPE: query heads, then the key heads
    for (int i = 0; i < D / 2; i++) {
      const double ang = (double)(float)((float)pos * (float)(1.0 / pow(THETA, (double)(2 * i) / D)));
      double *e = &v[hd * D];
      const double x0 = e[i], x1 = e[i + 32];
      e[i] = x0 * cos(ang) - x1 * sin(ang);
      e[i + 32] = x1 * cos(ang) + x0 * sin(ang);
    }
  for (int g = 0; g < NKV; g++)
    for (int d = 0; d < D; d++) {
      R.kc[((size_t)g * SMAX + pos) * D + d] = bfd(to_bf16d(v[H + g * D + d]));
      R.vc[((size_t)g * SMAX + pos) * D + d] = bfd(to_bf16d(v[H + NKV * D + g * D + d]));
    }
  for (int hq = 0; hq < NQ; hq++) {
    const int g = hq / GQ;
    std::vector<double> s(pos + 1);
    double mx = -1e300, sum = 0;
    for (int t = 0; t <= pos; t++) {
      double d2 = 0;
      for (int d = 0; d < D; d++) d2 += v[hq * D + d] * R.kc[((size_t)g * SMAX + t) * D + d];
      s[t] = d2 / 8.0;
      mx = fmax(mx, s[t]);
    }
    for (int t = 0; t <= pos; t++) sum += (s[t] = exp(s[t] - mx));
    for (int d = 0; d < D; d++) {
      double acc = 0;
      for (int t = 0; t <= pos; t++) acc += s[t] * R.vc[((size_t)g * SMAX + t) * D + d];
      a[hq * D + d] = acc / sum;
    }
  }
  for (int i = 0; i < H; i++) {
    double s = 0;
    for (int k = 0; k < H; k++) s += R.wo[(size_t)i * H + k] * a[k];
    h[i] += s;
  }
}

static void ref_mlp(const std::vector<uint16_t> &hw, size_t off, const float *nw, std::vector<double> &h) {
  const size_t gu = (size_t)I * H;
  const uint16_t *wg = &hw[off], *wu = wg + gu, *wd = wg + 2 * gu;
  std::vector<double> x(H), av(I), nwd(nw, nw + H);
  rms(h, nwd.data(), x);
  for (int j = 0; j < I; j++) {
    double gg = 0, u = 0;
    for (int k = 0; k < H; k++) gg += bfd(wg[(size_t)j * H + k]) * x[k], u += bfd(wu[(size_t)j * H + k]) * x[k];
    av[j] = gg / (1.0 + exp(-gg)) * u;
  }
  for (int i = 0; i < H; i++) {
    double d = 0;
    for (int j = 0; j < I; j++) d += bfd(wd[(size_t)i * I + j]) * av[j];
    h[i] += d;
  }
}

int main(int argc, char **argv) {
  const int pos = argc > 1 ? atoi(argv[1]) : 150;
  if (pos < 1 || pos >= SMAX) {
    fprintf(stderr, "attn_block: P must be in [1, %d)\n", SMAX);
    return 2;
  }
  const size_t gu = (size_t)I * H, per = 3 * gu, aw = (size_t)QKV * H + (size_t)H * H, cs = (size_t)NKV * SMAX * D;
  std::vector<uint16_t> hw((size_t)LAYERS * per), haw((size_t)LAYERS * aw), hk((size_t)LAYERS * cs), hv(hk.size());
  std::vector<float> hnw((size_t)LAYERS * H), hnw1((size_t)LAYERS * H), hb((size_t)LAYERS * QKV), h0(H);
  for (size_t l = 0; l < LAYERS; l++) {
    for (size_t i = 0; i < 2 * gu; i++) hw[l * per + i] = to_bf16(urand() * 0.0334f);
    for (size_t i = 2 * gu; i < per; i++) hw[l * per + i] = to_bf16(urand() * 0.0143f);
    for (size_t i = 0; i < aw; i++) haw[l * aw + i] = to_bf16(urand() * (i < (size_t)QKV * H ? 0.06f : 0.0334f));
    for (size_t i = 0; i < cs; i++) hk[l * cs + i] = to_bf16(urand()), hv[l * cs + i] = to_bf16(urand());
    for (int i = 0; i < QKV; i++) hb[l * QKV + i] = 0.2f * urand();
    for (int i = 0; i < H; i++) hnw[l * H + i] = 1.0f + 0.1f * urand(), hnw1[l * H + i] = 1.0f + 0.1f * urand();
  }
  for (int i = 0; i < H; i++) h0[i] = urand();
  std::vector<Ref> R(LAYERS);
  for (int l = 0; l < LAYERS; l++) {
    Ref &q = R[l];
    q.wqkv.resize((size_t)QKV * H), q.wo.resize((size_t)H * H), q.kc.resize(cs), q.vc.resize(cs);
    for (size_t i = 0; i < q.wqkv.size(); i++) q.wqkv[i] = bfd(haw[l * aw + i]);
    for (size_t i = 0; i < q.wo.size(); i++) q.wo[i] = bfd(haw[l * aw + (size_t)QKV * H + i]);
    for (size_t i = 0; i < cs; i++) q.kc[i] = bfd(hk[l * cs + i]), q.vc[i] = bfd(hv[l * cs + i]);
    q.bqkv.assign(hb.begin() + (size_t)l * QKV, hb.begin() + (size_t)(l + 1) * QKV);
    q.nw1.assign(hnw1.begin() + (size_t)l * H, hnw1.begin() + (size_t)(l + 1) * H);
  }
  // references: the MLP chain, the attention chain, the layer chain
  std::vector<double> ref_m(h0.begin(), h0.end()), ref_a = ref_m, ref_l = ref_m;
  for (int l = 0; l < LAYERS; l++) ref_mlp(hw, l * per, &hnw[(size_t)l * H], ref_m);
  std::vector<Ref> R2 = R;
  for (int l = 0; l < LAYERS; l++) ref_attn(R[l], ref_a, pos);
  for (int l = 0; l < LAYERS; l++) ref_attn(R2[l], ref_l, pos), ref_mlp(hw, l * per, &hnw[(size_t)l * H], ref_l);

  uint16_t *dw, *daw, *dk, *dv;
  float *dnw, *dnw1, *db, *dh, *abuf, *dp, *hmid;
  CK(cudaMalloc(&dw, hw.size() * 2));
  CK(cudaMalloc(&daw, haw.size() * 2));
  CK(cudaMalloc(&dk, hk.size() * 2));
  CK(cudaMalloc(&dv, hv.size() * 2));
  CK(cudaMalloc(&dnw, hnw.size() * 4));
  CK(cudaMalloc(&dnw1, hnw1.size() * 4));
  CK(cudaMalloc(&db, hb.size() * 4));
  CK(cudaMalloc(&dh, (size_t)(LAYERS + 1) * H * 4));
  CK(cudaMalloc(&abuf, (size_t)I * 4));
  CK(cudaMalloc(&dp, (size_t)LAYERS * NKV * H * 4));
  CK(cudaMalloc(&hmid, (size_t)H * 4));
  CK(cudaMemcpy(dw, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(daw, haw.data(), haw.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, hv.data(), hv.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dnw, hnw.data(), hnw.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dnw1, hnw1.data(), hnw1.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(db, hb.data(), hb.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dh, h0.data(), H * 4, cudaMemcpyHostToDevice));
  std::vector<Layer> ly(LAYERS);
  std::vector<AttnLayer> al(LAYERS);
  for (int l = 0; l < LAYERS; l++) {
    ly[l] = {dw + l * per, dw + l * per + gu, dw + l * per + 2 * gu, dnw + (size_t)l * H};
    al[l] = {daw + l * aw, daw + l * aw + (size_t)QKV * H, db + (size_t)l * QKV, dnw1 + (size_t)l * H,
             dk + l * cs, dv + l * cs};
  }
  CK(cudaFuncSetAttribute(k_attn, cudaFuncAttributeMaxDynamicSharedMemorySize, S_TOTAL));
  CK(cudaFuncSetAttribute(k_attn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeClusterDimension;
    at.val.clusterDim = {CS, 1, 1};
    cfg.gridDim = dim3(NKV * CS);
    cfg.blockDim = dim3(NT);
    cfg.dynamicSmemBytes = S_TOTAL;
    cfg.attrs = &at;
    cfg.numAttrs = 1;
    int ncl = 0;
    CK(cudaOccupancyMaxActiveClusters(&ncl, k_attn, &cfg));
    printf("k_attn: %d CTAs in clusters of %d, %d bytes of shared memory a CTA; %d such clusters fit at once\n",
           NKV * CS, CS, S_TOTAL, ncl);
  }
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("Qwen2.5-0.5B's decode layer, %d layers chained, the new token at position %d; µs a layer, replays of one graph\n",
         LAYERS, pos);
  const char *names[3] = {"mlp", "attn", "layer"};
  const std::vector<double> *refs[3] = {&ref_m, &ref_a, &ref_l};
  double us[3];
  bool right = true;
  for (int v = 0; v < 3; v++) {
    CK(cudaMemcpy(dk, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice));   // row pos is rewritten, the same
    cudaGraph_t gr;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    for (int l = 0; l < LAYERS; l++) {
      const float *hl = dh + (size_t)l * H;
      float *pl = dp + (size_t)l * NKV * H;
      if (v == 0) {
        launch(l > 0, k_gateup, I / GU_J, GU_WARPS * 32, s, ly[l], hl, (const float *)NULL, 0, (float *)NULL, abuf);
        launch(true, k_down, H / DN_ROWS, DN_ROWS * DN_T, s, ly[l], (const float *)abuf, hl, dh + (size_t)(l + 1) * H);
      } else if (v == 1) {   // layer l reads h = (h before) + (parts of l - 1), and stores it
        const float *base = dh + (size_t)(l ? l - 1 : 0) * H, *acc = l ? pl - NKV * H : NULL;
        launch_ex(l > 0, CS, S_TOTAL, k_attn, NKV * CS, NT, s, al[l], base, acc, l ? dh + (size_t)l * H : (float *)NULL,
                  pl, pos, l);
      } else {
        launch_ex(l > 0, CS, S_TOTAL, k_attn, NKV * CS, NT, s, al[l], hl, (const float *)NULL, (float *)NULL, pl, pos, l);
        launch(true, k_gateup, I / GU_J, GU_WARPS * 32, s, ly[l], hl, (const float *)pl, NKV, hmid, abuf);
        launch(true, k_down, H / DN_ROWS, DN_ROWS * DN_T, s, ly[l], (const float *)abuf, (const float *)hmid,
               dh + (size_t)(l + 1) * H);
      }
    }
    CK(cudaStreamEndCapture(s, &gr));
    CK(cudaGraphInstantiate(&ge, gr, 0));
    us[v] = replay_us(ge, s, 50) / LAYERS;
    CK(cudaStreamSynchronize(s));
    std::vector<float> out(H), pv(NKV * H);
    if (v != 1) {
      CK(cudaMemcpy(out.data(), dh + (size_t)LAYERS * H, H * 4, cudaMemcpyDeviceToHost));
    } else {   // the last layer's h + its parts
      CK(cudaMemcpy(out.data(), dh + (size_t)(LAYERS - 1) * H, H * 4, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(pv.data(), dp + (size_t)(LAYERS - 1) * NKV * H, NKV * H * 4, cudaMemcpyDeviceToHost));
      for (int i = 0; i < H; i++) out[i] += pv[i] + pv[H + i];
    }
    double err = max_err(out, *refs[v]);
    if (v) {   // and the cache rows written at pos
      std::vector<uint16_t> kr(cs);
      CK(cudaMemcpy(kr.data(), dk + (size_t)(LAYERS - 1) * cs, cs * 2, cudaMemcpyDeviceToHost));
      const Ref &q = v == 1 ? R[LAYERS - 1] : R2[LAYERS - 1];
      for (int g = 0; g < NKV; g++)
        for (int d = 0; d < D; d++) {
          const size_t at = ((size_t)g * SMAX + pos) * D + d;
          err = fmax(err, fabs(bfd(kr[at]) - q.kc[at]) / fmax(1.0, fabs(q.kc[at])) / 8);   // within a bf16 step
        }
    }
    right &= err <= 1e-3;
    printf("%-6s %7.2f µs a layer, max error against the reference %.2e%s\n", names[v], us[v], err,
           err <= 1e-3 ? "" : "  WRONG (more than 1e-3)");
#ifdef STAMPS
    if (v) {   // µs after the CTA's wait returned, medians over CTAs and layers; start: before it
      static const char *what[NSTAMP] = {"start", "wait", "h normed", "q/k/v W landed", "q/k/v exchanged",
                                         "keys done", "parts exchanged", "merged, o W landed", "end"};
      std::vector<unsigned long long> st((size_t)LAYERS * NKV * CS * NSTAMP);
      CK(cudaMemcpyFromSymbol(st.data(), g_stamp, st.size() * 8));
      printf("  k_attn's steps, µs after its wait (median over CTAs and layers):");
      for (int i = 0; i < NSTAMP; i++) {
        if (i == 1) continue;
        std::vector<double> d;
        for (size_t c = 0; c < (size_t)LAYERS * NKV * CS; c++)
          d.push_back(((double)st[c * NSTAMP + i] - (double)st[c * NSTAMP + 1]) / 1e3);
        std::sort(d.begin(), d.end());
        printf(" %s %.2f;", what[i], d[d.size() / 2]);
      }
      printf("\n");
    }
#endif
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(gr);
  }
  printf("layer - mlp: %.2f µs (wick's q/k/v + attention + o at 2eea5cb: ~11 µs of a ~24 µs layer)\n", us[2] - us[0]);
  return right ? 0 : 1;
}
