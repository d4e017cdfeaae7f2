// Block-quantized weights on CUDA (GGUF Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K): matmul
// with W [N, K] on the right (x @ W^T and x @ W), the dequantize op and embedding
// lookups from a quantized table. W stays in its blocks in device memory; every
// kernel expands the blocks it reads in registers (layouts: src/io/quant.c).
//
// The unit of expansion is 8 values of one 32-value chunk of a row (deq8): every
// block size divides into such chunks (a K-quant super-block is 8 of them), so one
// routine serves the GEMV lanes, the tile loaders, dequantize and embedding.
// Dequantization is exact in f32 up to its last add (quant.c explains why), so FMA
// contraction changes no value: results match the CPU's expansion bit for bit and
// the products differ from the CPU's only in summation order.
//
//   decode, M <= 8 rows of x (k_qgemv_nt): one warp per row of W, the row in
//     segments of 32 chunks copied coalesced into shared memory; lane l expands
//     chunk l of a segment and dots it with the M rows of x (staged in shared
//     memory too), then a warp reduction. W's bytes are read once.
//   x @ W with M <= 8 (the input gradient of decode-sized batches, k_qgemv_nn): one
//     block per 32 output columns; 64 row slices reduced in shared memory in a fixed
//     order (deterministic, no atomics).
//   M > 8 (prefill, training; k_qmm_tiled): 64 x 64 output tiles, each step expands
//     a 64 x 32 tile of W into shared memory beside a tile of x and runs an f32
//     register-blocked product (4 x 4 per thread). Chosen over "expand W into a
//     scratch buffer and call cuBLAS" because a plan captured as a CUDA graph keeps
//     every scratch block it allocated for as long as the graph lives (graph.cu):
//     per-matmul f32 copies of W would bring back the very memory the blocks save,
//     once per captured plan. No tensor cores: the f32 product keeps the CPU's
//     precision (no TF32 rounding of x).
// f16/bf16 weights take the same step to halfmm.cu.
// Nothing syncs, and the one allocation (a dense copy of a strided x) comes from the
// caching allocator, so captured plans replay these steps.
#include "cuda_internal.h"
#include "../../engine/kquants.h"

namespace {

// f16 scales sit at even byte addresses (every block size is even, rows are whole blocks).
__device__ __forceinline__ float ldh(const uint8_t *p) {
  return __half2float(__ushort_as_half(*(const unsigned short *)p));
}

// The 8 bytes at p as two words: Q4_1's and Q4_K/Q5_K's quants sit at multiples of 4
// bytes (block sizes 20, 144, 176; device buffers and arena slots are 64-aligned),
// the others' at even addresses. Word loads instead of byte loads: fewer
// instructions per weight, which the decode GEMV is close to being bound by.
template <int AL>
__device__ __forceinline__ void ld8(const uint8_t *p, uint32_t &lo, uint32_t &hi) {
  if (AL == 4) {
    lo = *(const uint32_t *)p;
    hi = *(const uint32_t *)(p + 4);
  } else {
    const uint16_t *h = (const uint16_t *)p;
    lo = h[0] | (uint32_t)h[1] << 16;
    hi = h[2] | (uint32_t)h[3] << 16;
  }
}
#define BYTE(lo, hi, i) ((int)((((i) < 4 ? (lo) : (hi)) >> (8 * ((i) & 3))) & 0xFF))

// v[0..8) = values 32j + 8q .. 32j + 8q + 7 of a row of W (row: its first block).
template <int DT>
__device__ __forceinline__ void deq8(const uint8_t *row, int64_t j, int q, float *v) {
  uint32_t lo, hi;
  if (DT == WK_Q8_0) {
    const uint8_t *b = row + j * 34;
    const float d = ldh(b);
    ld8<2>(b + 2 + 8 * q, lo, hi);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = (float)(int8_t)BYTE(lo, hi, i) * d;
  } else if (DT == WK_Q4_0 || DT == WK_Q4_1) {
    // byte i of qs: value i (low nibble) and value i + 16 (high nibble)
    const bool has_min = DT == WK_Q4_1;
    const uint8_t *b = row + j * (has_min ? 20 : 18);
    const float d = ldh(b);
    ld8<has_min ? 4 : 2>(b + (has_min ? 4 : 2) + 8 * (q & 1), lo, hi);
    const int sh = (q >> 1) * 4;
    lo = (lo >> sh) & 0x0F0F0F0Fu, hi = (hi >> sh) & 0x0F0F0F0Fu;
    if (has_min) {
      const float m = ldh(b + 2);
#pragma unroll
      for (int i = 0; i < 8; i++) v[i] = (float)BYTE(lo, hi, i) * d + m;
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) v[i] = (float)(BYTE(lo, hi, i) - 8) * d;
    }
  } else if (DT == WK_Q4_K || DT == WK_Q5_K) {
    // chunk s of a super-block: sub-block s, low nibbles of qs chunk s/2 for even s,
    // high for odd; Q5_K's fifth bit of value l is bit s of qh[l]
    const bool q5 = DT == WK_Q5_K;
    const uint8_t *b = row + (j >> 3) * (q5 ? 176 : 144);
    const int s = (int)(j & 7);
    const float d = ldh(b), dmin = ldh(b + 2);
    int sc, m;
    wk_kq_scale_min(s, b + 4, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    ld8<4>(b + (q5 ? 48 : 16) + 32 * (s >> 1) + 8 * q, lo, hi);
    const int sh = (s & 1) * 4;
    lo = (lo >> sh) & 0x0F0F0F0Fu, hi = (hi >> sh) & 0x0F0F0F0Fu;
    if (q5) { // bit s of each qh byte, moved to bit 4
      uint32_t hl, hh;
      ld8<4>(b + 16 + 8 * q, hl, hh);
      lo |= ((hl >> s) & 0x01010101u) << 4, hi |= ((hh >> s) & 0x01010101u) << 4;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = d1 * (float)BYTE(lo, hi, i) - m1;
  } else { // Q6_K: chunk s = 4h + p is part p of half h (see engine/kquants.h's wk_kq_q6)
    const uint8_t *b = row + (j >> 3) * 210;
    const int s = (int)(j & 7), h = s >> 2, p = s & 3;
    const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
    const float ds = ldh(b + 208) * (float)sc[(q >> 1) + 2 * p]; // (d * scale) first, as the reference
    uint32_t hl, hh;
    ld8<2>(b + 64 * h + 32 * (p & 1) + 8 * q, lo, hi);
    ld8<2>(b + 128 + 32 * h + 8 * q, hl, hh);
    const int lsh = (p >> 1) * 4, hsh = 2 * p;
    lo = ((lo >> lsh) & 0x0F0F0F0Fu) | (((hl >> hsh) & 0x03030303u) << 4);
    hi = ((hi >> lsh) & 0x0F0F0F0Fu) | (((hh >> hsh) & 0x03030303u) << 4);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = ds * (float)(BYTE(lo, hi, i) - 32);
  }
}
#undef BYTE

struct QArgs {
  const uint8_t *w;   // W [N, K] in blocks
  const float *x;     // [M, K] (trans) or [M, N], dense
  float *y;           // [M, N] (trans) or [M, K], dense
  int64_t M, N, K;
  int64_t rb;         // bytes of one row of W
};

template <int DT> struct QInfo;  // values and bytes per block
template <> struct QInfo<WK_Q8_0> { static constexpr int blk = 32, bytes = 34; };
template <> struct QInfo<WK_Q4_0> { static constexpr int blk = 32, bytes = 18; };
template <> struct QInfo<WK_Q4_1> { static constexpr int blk = 32, bytes = 20; };
template <> struct QInfo<WK_Q4_K> { static constexpr int blk = 256, bytes = 144; };
template <> struct QInfo<WK_Q5_K> { static constexpr int blk = 256, bytes = 176; };
template <> struct QInfo<WK_Q6_K> { static constexpr int blk = 256, bytes = 210; };

// Decode GEMV, y[m, n] = x[m, :] . W[n, :]: a warp per row of W, the row taken in
// segments of 32 chunks (one per lane; a whole number of blocks). Each segment's
// bytes come in as one coalesced copy into shared memory (every load in flight at
// once, so a warp waits one memory latency per segment rather than one per
// dependent byte load), then each lane expands its chunk from there; the block
// stages the segment's slice of x beside them (chunks padded to 36 floats, so the
// lanes' float4 reads of x fall in distinct banks).
// ROWS rows per warp (large N, M <= 2) put more bytes in flight per warp and share
// each staged slice of x over more rows.
#define GEMV_WARPS 8
#define XPAD 36
template <int DT, int MM, int ROWS>
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_qgemv_nt(const QArgs a) {
  constexpr int CPB = QInfo<DT>::blk / 32, SEGB = 32 / CPB * QInfo<DT>::bytes;
  __shared__ __align__(16) float xs[MM][32 * XPAD];
  __shared__ __align__(16) uint8_t ws[GEMV_WARPS][ROWS][SEGB];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n0 = ((int64_t)blockIdx.x * GEMV_WARPS + warp) * ROWS;
  const int64_t nc = a.K >> 5;
  float acc[ROWS][MM];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int m = 0; m < MM; m++) acc[r][m] = 0.0f;
  for (int64_t c0 = 0; c0 < nc; c0 += 32) {
    const int cn = nc - c0 < 32 ? (int)(nc - c0) : 32;  // chunks in this segment
    for (int i = threadIdx.x; i < MM * cn * 32; i += blockDim.x) {
      const int m = i / (cn * 32), e = i - m * cn * 32;
      xs[m][(e >> 5) * XPAD + (e & 31)] = __ldg(a.x + m * a.K + c0 * 32 + e);
    }
    const int nb = cn / CPB * QInfo<DT>::bytes;  // even: every block size is
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      if (n0 + r >= a.N) break;
      const uint8_t *g = a.w + (n0 + r) * a.rb + c0 / CPB * QInfo<DT>::bytes;
      uint8_t *d = ws[warp][r];
      if (!((uintptr_t)g & 3)) {
        for (int i = lane; i < nb >> 2; i += 32) ((uint32_t *)d)[i] = __ldg((const unsigned int *)g + i);
        if ((nb & 2) && lane == 0) ((uint16_t *)d)[(nb >> 1) - 1] = __ldg((const unsigned short *)g + (nb >> 1) - 1);
      } else {
        for (int i = lane; i < nb >> 1; i += 32) ((uint16_t *)d)[i] = __ldg((const unsigned short *)g + i);
      }
    }
    __syncthreads();
    if (lane < cn) {
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        if (n0 + r >= a.N) break;
#pragma unroll
        for (int q = 0; q < 4; q++) {
          float v[8];
          deq8<DT>(ws[warp][r], lane, q, v);
#pragma unroll
          for (int m = 0; m < MM; m++) {
            const float4 x0 = *(const float4 *)&xs[m][lane * XPAD + q * 8], x1 = *(const float4 *)&xs[m][lane * XPAD + q * 8 + 4];
            float t = acc[r][m];
            t = fmaf(v[0], x0.x, t);
            t = fmaf(v[1], x0.y, t);
            t = fmaf(v[2], x0.z, t);
            t = fmaf(v[3], x0.w, t);
            t = fmaf(v[4], x1.x, t);
            t = fmaf(v[5], x1.y, t);
            t = fmaf(v[6], x1.z, t);
            acc[r][m] = fmaf(v[7], x1.w, t);
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
#pragma unroll
    for (int m = 0; m < MM; m++) acc[r][m] = warp_sum(acc[r][m]);
    if (n0 + r < a.N && lane == 0)
#pragma unroll
      for (int m = 0; m < MM; m++) a.y[m * a.N + n0 + r] = acc[r][m];
  }
}

#define NN_SLICES 64
template <int DT, int MM>
__global__ void __launch_bounds__(NN_SLICES * 4) k_qgemv_nn(const QArgs a) {
  __shared__ float part[NN_SLICES][33];
  const int64_t j = blockIdx.x;  // output columns 32j .. 32j + 31
  const int q = threadIdx.x & 3, r = threadIdx.x >> 2;
  float acc[MM][8];
#pragma unroll
  for (int m = 0; m < MM; m++)
#pragma unroll
    for (int i = 0; i < 8; i++) acc[m][i] = 0.0f;
  for (int64_t n = r; n < a.N; n += NN_SLICES) {
    float v[8];
    deq8<DT>(a.w + n * a.rb, j, q, v);
#pragma unroll
    for (int m = 0; m < MM; m++) {
      const float xv = __ldg(a.x + m * a.N + n);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[m][i] = fmaf(xv, v[i], acc[m][i]);
    }
  }
#pragma unroll
  for (int m = 0; m < MM; m++) {
#pragma unroll
    for (int i = 0; i < 8; i++) part[r][q * 8 + i] = acc[m][i];
    __syncthreads();
    if (threadIdx.x < 32) {
      float s = 0.0f;
      for (int k = 0; k < NN_SLICES; k++) s += part[k][threadIdx.x];
      a.y[m * a.K + j * 32 + threadIdx.x] = s;
    }
    __syncthreads();
  }
}

#define TB 64  // output tile (rows of x and output columns)
#define TK 32  // reduction step: one chunk of W
template <int DT, bool TR>
__global__ void __launch_bounds__(256) k_qmm_tiled(const QArgs a) {
  __shared__ __align__(16) float Xs[TK][TB + 4];
  __shared__ __align__(16) float Ws[TK][TB + 4];
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  const int64_t m0 = (int64_t)blockIdx.y * TB, c0 = (int64_t)blockIdx.x * TB;
  const int64_t R = TR ? a.K : a.N, C = TR ? a.N : a.K;  // reduction length, output columns
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int k = 0; k < 4; k++) acc[i][k] = 0.0f;
  for (int64_t r0 = 0; r0 < R; r0 += TK) {
    { // x[m0 .. m0 + 64, r0 .. r0 + 32), stored transposed
      const int mi = t >> 2, rk = (t & 3) * 8;
      const int64_t mm = m0 + mi;
      const float *xp = a.x + mm * R + r0 + rk;
#pragma unroll
      for (int i = 0; i < 8; i++) Xs[rk + i][mi] = mm < a.M && r0 + rk + i < R ? __ldg(xp + i) : 0.0f;
    }
    float v[8];
    if (TR) { // W rows c0 .. c0 + 64, chunk r0 / 32
      const int ni = t >> 2, q = t & 3;
      const int64_t n = c0 + ni;
      if (n < a.N) deq8<DT>(a.w + n * a.rb, r0 >> 5, q, v);
#pragma unroll
      for (int i = 0; i < 8; i++) Ws[q * 8 + i][ni] = n < a.N ? v[i] : 0.0f;
    } else {  // W rows r0 .. r0 + 32, columns c0 .. c0 + 64 (two chunks)
      const int ri = t >> 3, c8 = t & 7;
      const int64_t n = r0 + ri, k = c0 + c8 * 8;
      const bool in = n < a.N && k < a.K;
      if (in) deq8<DT>(a.w + n * a.rb, k >> 5, c8 & 3, v);
#pragma unroll
      for (int i = 0; i < 8; i++) Ws[ri][c8 * 8 + i] = in ? v[i] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; kk++) {
      const float4 xa = *(const float4 *)&Xs[kk][ty * 4], wb = *(const float4 *)&Ws[kk][tx * 4];
      const float xs[4] = {xa.x, xa.y, xa.z, xa.w}, ws[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int k = 0; k < 4; k++) acc[i][k] = fmaf(xs[i], ws[k], acc[i][k]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= a.M) break;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int64_t c = c0 + tx * 4 + k;
      if (c < C) a.y[m * C + c] = acc[i][k];
    }
  }
}

// Rows of blocks expanded to f32: the dequantize op (ids == NULL: row r of the output
// is row r of q) and embedding (row r is row ids[r] of the table; an id out of range
// is reported and its row is zeros). One thread per 8 values.
struct DeqArgs {
  const uint8_t *q;
  float *out;
  DOp ids;
  DevErr *err;
  int64_t rows, D, V;  // output rows, values per row, table rows
  int64_t rb;
  int32_t gather, pad;
};

template <int DT>
__global__ void k_qrows(const __grid_constant__ DeqArgs a) {
  const int64_t per = a.D >> 3, n = a.rows * per;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = e / per, c = e - r * per;
    int64_t src = r;
    float v[8];
    bool ok = true;
    if (a.gather) {
      src = ((const int32_t *)a.ids.p)[op_off(a.ids, r)];
      ok = src >= 0 && src < a.V;
      if (!ok && c == 0) dev_error(a.err, WKC_ERR_EMBED_ID, src, r, a.V);
    }
    if (ok) deq8<DT>(a.q + src * a.rb, c >> 2, (int)(c & 3), v);
    float *o = a.out + r * a.D + c * 8;
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = ok ? v[i] : 0.0f;
  }
}

} // namespace

// ---- host side ----
// Quantized operands count their offset in values (whole blocks of them).
static const uint8_t *qptr(const wk_operand *o, void *const *slots) {
  return (const uint8_t *)slots[o->slot] + wk_dtype_bytes(o->dtype, o->offset);
}

bool wkc_quant_supported(wk_dtype dt) {
  return dt == WK_Q8_0 || dt == WK_Q4_0 || dt == WK_Q4_1 || dt == WK_Q4_K || dt == WK_Q5_K || dt == WK_Q6_K;
}

static wk_status unsupported(const char *op, int dt) {
  return wk_error(WK_ERR_DTYPE, "%s: no CUDA kernel reads %s blocks (q8_0, q4_0, q4_1, q4_k, q5_k and q6_k have one)",
                  op, wk_dtype_name((wk_dtype)dt));
}

template <int DT, int MM>
static void gemv(const QArgs &a, bool trans) {
  // 4 rows a warp once that still leaves two blocks per SM
  if constexpr (MM <= 2) {
    if (trans && a.N >= (int64_t)wkc_num_sms() * 2 * GEMV_WARPS * 4) {
      k_qgemv_nt<DT, MM, 4><<<(unsigned)((a.N + GEMV_WARPS * 4 - 1) / (GEMV_WARPS * 4)), GEMV_WARPS * 32, 0, wkc_stream()>>>(a);
      return;
    }
  }
  if (trans)
    k_qgemv_nt<DT, MM, 1><<<(unsigned)((a.N + GEMV_WARPS - 1) / GEMV_WARPS), GEMV_WARPS * 32, 0, wkc_stream()>>>(a);
  else
    k_qgemv_nn<DT, MM><<<(unsigned)(a.K / 32), NN_SLICES * 4, 0, wkc_stream()>>>(a);
}

template <int DT>
static void qmm_launch(const QArgs &a, bool trans) {
  switch (a.M) {
    case 1: return gemv<DT, 1>(a, trans);
    case 2: return gemv<DT, 2>(a, trans);
    case 3: return gemv<DT, 3>(a, trans);
    case 4: return gemv<DT, 4>(a, trans);
    case 5: return gemv<DT, 5>(a, trans);
    case 6: return gemv<DT, 6>(a, trans);
    case 7: return gemv<DT, 7>(a, trans);
    case 8: return gemv<DT, 8>(a, trans);
    default: break;
  }
  const int64_t C = trans ? a.N : a.K;
  dim3 grid((unsigned)((C + TB - 1) / TB), (unsigned)((a.M + TB - 1) / TB));
  if (trans) k_qmm_tiled<DT, true><<<grid, 256, 0, wkc_stream()>>>(a);
  else k_qmm_tiled<DT, false><<<grid, 256, 0, wkc_stream()>>>(a);
}

template <int DT>
static void rows_launch(const DeqArgs &a) {
  const int64_t n = a.rows * (a.D >> 3);
  const int64_t cap = (int64_t)wkc_num_sms() * 32, blocks = (n + 255) / 256;
  k_qrows<DT><<<(unsigned)(blocks < 1 ? 1 : blocks < cap ? blocks : cap), 256, 0, wkc_stream()>>>(a);
}

// Calls F<DT>(args...) for a supported runtime dtype.
#define QDISPATCH(dt, F, ...)                                    \
  switch (dt) {                                                  \
    case WK_Q8_0: F<WK_Q8_0>(__VA_ARGS__); break;                \
    case WK_Q4_0: F<WK_Q4_0>(__VA_ARGS__); break;                \
    case WK_Q4_1: F<WK_Q4_1>(__VA_ARGS__); break;                \
    case WK_Q4_K: F<WK_Q4_K>(__VA_ARGS__); break;                \
    case WK_Q5_K: F<WK_Q5_K>(__VA_ARGS__); break;                \
    default: F<WK_Q6_K>(__VA_ARGS__); break;                     \
  }

wk_status wkc_qmatmul(const wk_step *s, void *const *slots) {
  const wk_operand *xo = &s->in[0], *wo = &s->in[1];
  const bool trans = s->attrs.i[0] != 0;
  const int dt = wo->dtype;
  if (dt == WK_F16 || dt == WK_BF16) return wkc_half_matmul(s, slots);
  if (!wkc_quant_supported((wk_dtype)dt)) return unsupported("matmul", dt);
  if (wo->ndim != 2 || !wkc_is_dense(wo))
    return wk_error(WK_ERR_SHAPE, "matmul (quantized, cuda): the weight must be a dense 2-d [N, K] tensor of blocks");
  if (s->out.dtype != WK_F32 || !wkc_is_dense(&s->out) || xo->dtype != WK_F32)
    return wk_error(WK_ERR_STATE, "matmul (quantized, cuda): expected an f32 input and a dense f32 output");
  QArgs a;
  a.N = wo->shape[0];
  a.K = wo->shape[1];
  a.rb = (int64_t)wk_dtype_bytes((wk_dtype)dt, a.K);
  a.w = qptr(wo, slots);
  const int64_t in = trans ? a.K : a.N, out = trans ? a.N : a.K;
  a.M = out ? wkc_numel(&s->out) / out : 0;
  a.y = (float *)((char *)slots[s->out.slot] + s->out.offset * 4);
  if (a.M == 0 || out == 0) return WK_OK;
  if (in == 0) {
    cudaMemsetAsync(a.y, 0, sizeof(float) * (size_t)(a.M * out), wkc_stream());
    return wkc_check_launch("matmul (quantized, empty)");
  }
  if (a.M > 8 && (a.M + TB - 1) / TB > 65535)
    return wk_error(WK_ERR_SHAPE, "matmul (quantized, cuda): %lld rows of x exceed the kernel's grid (at most %d)",
                    (long long)a.M, 65535 * TB);
  void *tmp = NULL;
  if (wkc_is_dense(xo)) {
    a.x = (const float *)((const char *)slots[xo->slot] + xo->offset * 4);
  } else { // a strided view of x: made dense first
    if (!(tmp = wkc_tmp_alloc(sizeof(float) * (size_t)(a.M * in))))
      return wk_error(WK_ERR_OOM, "matmul (quantized, cuda): out of device memory for a dense copy of x");
    wk_status st = wkc_densify(xo, slots, WK_F32, tmp);
    if (st) { wkc_tmp_free(tmp); return st; }
    a.x = (const float *)tmp;
  }
  QDISPATCH(dt, qmm_launch, a, trans)
  wk_status st = wkc_check_launch(a.M <= 8 ? "matmul (quantized GEMV)" : "matmul (quantized tiles)");
  wkc_tmp_free(tmp);
  return st;
}

static wk_status qrows(const wk_step *s, void *const *slots, bool gather) {
  const wk_operand *q = &s->in[0];
  const int dt = q->dtype;
  const char *op = gather ? "embedding" : "dequantize";
  if (!wkc_quant_supported((wk_dtype)dt)) return unsupported(op, dt);
  if (!wkc_is_dense(q) || !wkc_is_dense(&s->out) || s->out.dtype != WK_F32 || q->ndim < 1)
    return wk_error(WK_ERR_STATE, "%s (quantized, cuda): expected dense blocks and a dense f32 output", op);
  DeqArgs a;
  memset(&a, 0, sizeof a);
  a.q = qptr(q, slots);
  a.out = (float *)((char *)slots[s->out.slot] + s->out.offset * 4);
  a.D = q->shape[q->ndim - 1];
  a.rb = (int64_t)wk_dtype_bytes((wk_dtype)dt, a.D);
  a.gather = gather;
  if (gather) {
    a.ids = wkc_dop(&s->in[1], slots);
    a.rows = wkc_numel(&s->in[1]);
    a.V = q->shape[0];
    a.err = wkc_dev_err();
  } else {
    a.rows = a.D ? wkc_numel(q) / a.D : 0;
  }
  if (!a.rows || !a.D) return WK_OK;
  if (gather) wkc_arm_dev_err();
  QDISPATCH(dt, rows_launch, a)
  return wkc_check_launch(gather ? "embedding (quantized table)" : "dequantize");
}

wk_status wkc_dequantize(const wk_step *s, void *const *slots) { return qrows(s, slots, false); }
wk_status wkc_qembedding(const wk_step *s, void *const *slots) { return qrows(s, slots, true); }
