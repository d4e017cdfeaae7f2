// Cross-entropy from logits (CROSS_ENTROPY and its backward: a row a block, or a
// long row split over a cluster of CTAs), and of x W^T by blocks of rows (LINEAR_CE,
// LINEAR_CE_BWD: the LM head's loss without its [rows, vocab] logits in memory).
#include <cooperative_groups.h>
#include "cuda_internal.h"
#include "../../engine/plan.h"   // wk_linear_ce_dx_offset

// ---- cross-entropy: loss = logsumexp(x) - x[target] per row ----
struct CeArgs {
  DOp x, tg, g;
  int64_t N, V;
  int64_t row0;       // the first row's position in the whole (a block of rows: linear_cross_entropy)
  int32_t ignore, red;
  float *loss;        // forward, reductions 1 / 2: per-row losses
  int *valid;         // forward: per-row 1 / 0;  backward: count of valid targets (red == 1)
  float *rloss;       // a backward that also gives the forward's per-row losses (k_ce_split) ...
  int *rvalid;        // ... and flags (linear_cross_entropy computing both)
  float gval;         // the upstream gradient when gconst (a constant), else read from g
  int32_t gconst;
  char *out;
  int32_t out_dtype, pad;
  DevErr *err;
};

// A row's max m and sum of exp(x - m) in one pass over it: each thread keeps a running
// max and rescales its sum when the max grows, then the block combines them (-inf
// entries add nothing; a NaN makes the sum NaN).
__device__ __forceinline__ float2 ce_row_stats(const CeArgs &a, int64_t xo, int64_t xl, float *red) {
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
    const float v = ldv(a.x.p, a.x.dtype, xo + j * xl);
    if (v > m) { s = s * expf(m - v) + 1.0f; m = v; }
    else if (v != -INFINITY) s += expf(v - m);
  }
  const float bm = block_max(m, red);
  s = s == 0.0f ? 0.0f : s * expf(m - bm);
  return make_float2(bm, block_sum(s, red));
}

// Row r's loss, counted (valid) or not: the output itself (no reduction), else the
// per-row parts that k_ce_final adds up.
WKC_DEV void ce_put_loss(const CeArgs &a, int64_t r, float loss, int valid) {
  if (a.red == 0) stv(a.out, a.out_dtype, r, loss);
  else { a.loss[r] = loss; a.valid[r] = valid; }
}

__global__ void __launch_bounds__(1024) k_ce_rows(const __grid_constant__ CeArgs a) {
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    int64_t t = ((const int32_t *)a.tg.p)[op_off(a.tg, r)];
    float loss = 0.0f;
    bool ok = t != a.ignore && t >= 0 && t < a.V;
    if (t != a.ignore && !ok && threadIdx.x == 0) dev_error(a.err, WKC_ERR_CE_TARGET, t, a.row0 + r, a.V);
    if (ok) {
      const int64_t xo = row_off(a.x, r), xl = last_stride(a.x);
      const float2 ms = ce_row_stats(a, xo, xl, red);
      loss = ms.x + logf(ms.y) - ldv(a.x.p, a.x.dtype, xo + t * xl);
    }
    if (threadIdx.x == 0) ce_put_loss(a, r, loss, ok);
  }
}

// Fixed-order reduction of the per-row losses (one block: the same result every run).
__global__ void k_ce_final(const __grid_constant__ CeArgs a) {
  __shared__ double sd[256];
  __shared__ long long sc[256];
  double acc = 0;
  long long cnt = 0;
  for (int64_t r = threadIdx.x; r < a.N; r += blockDim.x) { acc += a.loss[r]; cnt += a.valid[r]; }
  sd[threadIdx.x] = acc;
  sc[threadIdx.x] = cnt;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) { sd[threadIdx.x] += sd[threadIdx.x + w]; sc[threadIdx.x] += sc[threadIdx.x + w]; }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float v = a.red == 1 ? (sc[0] ? (float)(sd[0] / (double)sc[0]) : NAN) : (float)sd[0];
    stv(a.out, a.out_dtype, 0, v);
  }
}

__global__ void k_ce_count(const __grid_constant__ CeArgs a) {
  __shared__ int sc[256];
  int cnt = 0;
  for (int64_t r = threadIdx.x; r < a.N; r += blockDim.x) {
    int64_t t = ((const int32_t *)a.tg.p)[op_off(a.tg, r)];
    cnt += t != a.ignore && t >= 0 && t < a.V;
  }
  sc[threadIdx.x] = cnt;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sc[threadIdx.x] += sc[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *a.valid = sc[0];
}

// Row r's upstream gradient: its own (no reduction), the sum's, or the mean's (the
// sum's over the rows counted valid; NaN when none is).
WKC_DEV float ce_upstream(const CeArgs &a, int64_t r) {
  if (a.red == 0) return ldv(a.g.p, a.g.dtype, op_off(a.g, r));
  const float g = a.gconst ? a.gval : ldv(a.g.p, a.g.dtype, 0);
  return a.red == 1 ? (*a.valid ? g / (float)*a.valid : NAN) : g;
}

// dlogits = (softmax(x) - onehot(target)) * g; zero rows for ignored targets
__global__ void __launch_bounds__(1024) k_ce_bwd(const __grid_constant__ CeArgs a) {
  __shared__ float red[32];
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    int64_t t = ((const int32_t *)a.tg.p)[op_off(a.tg, r)];
    bool ok = t != a.ignore && t >= 0 && t < a.V;
    if (t != a.ignore && !ok && threadIdx.x == 0) dev_error(a.err, WKC_ERR_CE_TARGET, t, a.row0 + r, a.V);
    if (!ok) {
      for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) stv(a.out, a.out_dtype, r * a.V + j, 0.0f);
      continue;
    }
    const float g = ce_upstream(a, r);
    const int64_t xo = row_off(a.x, r), xl = last_stride(a.x);
    const float2 ms = ce_row_stats(a, xo, xl, red);
    const float m = ms.x, k = g / ms.y;
    for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
      float y = expf(ldv(a.x.p, a.x.dtype, xo + j * xl) - m) * k;
      if (j == t) y -= g;
      stv(a.out, a.out_dtype, r * a.V + j, y);
    }
  }
}

// ---- cross-entropy over long rows: a row split over a cluster of CTAs ----
// One CTA a row gave 256 CTAs of 1024 threads for a block of 256 rows of 152K logits
// (two uneven waves on 132 SMs) and the backward read each row twice. Here a cluster
// of CTAs shares a row: each reduces its piece to a (max, sum) pair, the cluster combines
// the pairs through distributed shared memory in rank order (every CTA gets the same
// bits, run to run), and the backward, which kept its piece in shared memory, writes
// the gradient without reading the row again: one read and one write of the logits.
// CTAs a row: the forward keeps no piece, so fewer and longer pieces do better (a
// [256, 151936] block on an H200, ncu: the forward 53.7 us at 2 CTAs a row, 62.0 at
// 4, 89.8 at 8, 174 at 16; the backward, whose piece stays in shared memory, 163 at 8,
// 206 at 4 (one CTA an SM), 256 at 16; 16 is a non-portable cluster size).
#define CE_CLUSTER_FWD 2
#define CE_CLUSTER_BWD 8
#define CE_THREADS 512
#define CE_SPLIT_MIN 4096   // shorter rows keep one CTA a row (a cluster would idle)
struct CeSplit {
  CeArgs a;
  int64_t piece;   // elements of a row per CTA (a multiple of 4)
  int32_t vec;     // rows 16-byte aligned, V % 4 == 0 (and the output aligned): float4 loads
  int32_t cl;      // CTAs a row (the cluster)
};

// (max, sum of exp(x - max)) of two parts; -inf maxima (nothing yet) add nothing.
WKC_DEV float2 ce_merge(float2 p, float2 q) {
  const float m = fmaxf(p.x, q.x);
  if (m == -INFINITY) return make_float2(m, p.y + q.y);
  return make_float2(m, p.y * expf(p.x - m) + q.y * expf(q.x - m));
}
// Adds n values to a thread's running (m, s): one rescale for the n when their max
// grows m (the online form of ce_row_stats, over a vector). A NaN makes s NaN. The
// exponentials are the hardware's (__expf: ex2.approx of x log2 e, relative error
// ~1e-6 at these arguments, x - m <= 0): with expf's ~20 instructions an element the
// split kernels were bound by instruction issue, not memory (H200: 90 / 168 us a
// [256, 151936] block, forward / backward, against 40 / 60 us of bytes).
template <int n> WKC_DEV void ce_add(float &m, float &s, const float *v) {
  float vm = v[0];
#pragma unroll
  for (int i = 1; i < n; i++) vm = fmaxf(vm, v[i]);
  if (vm > m) { s *= expf(m - vm); m = vm; }
  const float b = m == -INFINITY ? 0.0f : m;   // every v is -inf (or NaN) then
#pragma unroll
  for (int i = 0; i < n; i++) s += __expf(v[i] - b);
}
// The block's (m, s), in a fixed order: every thread gets it.
WKC_DEV float2 ce_block_merge(float2 p, float2 *red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    p = ce_merge(p, make_float2(__shfl_xor_sync(0xffffffffu, p.x, o), __shfl_xor_sync(0xffffffffu, p.y, o)));
  __syncthreads();
  if (lane == 0) red[w] = p;
  __syncthreads();
  p = lane < nw ? red[lane] : make_float2(-INFINITY, 0.0f);
  for (int o = 16; o > 0; o >>= 1)
    p = ce_merge(p, make_float2(__shfl_xor_sync(0xffffffffu, p.x, o), __shfl_xor_sync(0xffffffffu, p.y, o)));
  return p;
}

// (m, s) of x[0, n), copied into held[0, n) when HOLD. Four 16-byte loads a thread in
// flight (32 KB a CTA of 512): enough, with 2-3 CTAs an SM, to cover HBM's latency.
template <bool HOLD> WKC_DEV float2 ce_piece_stats(const float *x, int64_t n, bool vec, float *held) {
  float m = -INFINITY, s = 0.0f;
  const int64_t nt = blockDim.x;
  if (vec) {
    const float4 *x4 = (const float4 *)x;
    const int64_t n4 = n / 4;
    for (int64_t i = threadIdx.x; i < n4; i += 4 * nt) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; u++)
        v[u] = i + u * nt < n4 ? x4[i + u * nt] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
#pragma unroll
      for (int u = 0; u < 4; u++) {
        if (HOLD && i + u * nt < n4) ((float4 *)held)[i + u * nt] = v[u];
        ce_add<4>(m, s, (const float *)&v[u]);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += 4 * nt) {
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; u++) v[u] = i + u * nt < n ? x[i + u * nt] : -INFINITY;
#pragma unroll
      for (int u = 0; u < 4; u++)
        if (HOLD && i + u * nt < n) held[i + u * nt] = v[u];
      ce_add<4>(m, s, v);
    }
  }
  return make_float2(m, s);
}

// The gradient of the piece [j0, j0 + n) of row r from held: exp(x - m) * k, less g
// at the target t.
WKC_DEV void ce_piece_grad(const CeSplit &c, const float *held, int64_t r, int64_t j0, int64_t n, float m, float k,
                           float g, int64_t t) {
  const CeArgs &a = c.a;
  if (c.vec && (a.out_dtype == WK_F32 || a.out_dtype == WK_BF16)) {
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 v = ((const float4 *)held)[i];
      const int64_t j = j0 + 4 * i;
      float y[4] = {__expf(v.x - m) * k, __expf(v.y - m) * k, __expf(v.z - m) * k, __expf(v.w - m) * k};
#pragma unroll
      for (int u = 0; u < 4; u++) y[u] -= j + u == t ? g : 0.0f;   // (a register index, not t - j)
      if (a.out_dtype == WK_F32) ((float4 *)a.out)[(r * a.V + j) / 4] = make_float4(y[0], y[1], y[2], y[3]);
      else
        ((uint2 *)a.out)[(r * a.V + j) / 4] = bf16x4(y[0], y[1], y[2], y[3]);
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float y = __expf(held[i] - m) * k;
    if (j0 + i == t) y -= g;
    stv(a.out, a.out_dtype, r * a.V + j0 + i, y);
  }
}

// Forward (per-row loss, as k_ce_rows) or backward (dlogits, as k_ce_bwd) of row
// blockIdx.x / c.cl; the CTA of rank q takes elements [q piece, (q + 1) piece).
// The backward may write over x in place: a CTA writes only its own piece, after the
// cluster barrier that every CTA passes once it has read its piece.
template <bool BWD>
__global__ void __launch_bounds__(CE_THREADS)
    k_ce_split(const __grid_constant__ CeSplit c) {
  extern __shared__ float4 held4[];   // the backward's piece of the row
  __shared__ float2 red[32];
  __shared__ float2 part;
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  const CeArgs &a = c.a;
  const int64_t r = blockIdx.x / c.cl, t = ((const int32_t *)a.tg.p)[op_off(a.tg, r)];
  const unsigned rank = cl.block_rank();
  const int64_t j0 = rank * c.piece, n = j0 >= a.V ? 0 : a.V - j0 < c.piece ? a.V - j0 : c.piece;
  const bool ok = t != a.ignore && t >= 0 && t < a.V, lead = rank == 0 && threadIdx.x == 0;
  if (t != a.ignore && !ok && lead) dev_error(a.err, WKC_ERR_CE_TARGET, t, a.row0 + r, a.V);
  if (!ok) {   // the same for the whole cluster: no barrier is left waiting
    if (BWD)
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) stv(a.out, a.out_dtype, r * a.V + j0 + i, 0.0f);
    if (!BWD && lead) ce_put_loss(a, r, 0.0f, 0);
    if (BWD && a.rloss && lead) a.rloss[r] = 0.0f, a.rvalid[r] = 0;
    return;
  }
  const float *x = (const float *)a.x.p + row_off(a.x, r);
  const float xt = (!BWD || a.rloss) && lead ? x[t] : 0.0f;   // (the backward writes dlogits elsewhere then)
  float2 ms = ce_piece_stats<BWD>(x + j0, n, c.vec, (float *)held4);
  ms = ce_block_merge(ms, red);
  if (threadIdx.x == 0) part = ms;
  cl.sync();
  ms = make_float2(-INFINITY, 0.0f);
  for (int q = 0; q < c.cl; q++) ms = ce_merge(ms, *cl.map_shared_rank(&part, q));
  cl.sync();   // no CTA leaves while another reads its part
  if (!BWD) {
    if (!lead) return;
    ce_put_loss(a, r, ms.x + logf(ms.y) - xt, 1);
    return;
  }
  if (a.rloss && lead) a.rloss[r] = ms.x + logf(ms.y) - xt, a.rvalid[r] = 1;
  const float g = ce_upstream(a, r);
  ce_piece_grad(c, (const float *)held4, r, j0, n, ms.x, g / ms.y, g, t);
}

static int g_ce_split = -1;   // WICK_CUDA_CE_SPLIT=0: the one-CTA-a-row kernels
// Whether a's rows (x: their operand) take k_ce_split: f32 rows of unit stride, long
// enough, and for the backward a piece that fits shared memory. Fills c.
static bool ce_split_plan(const CeArgs &a, const wk_operand *x, bool bwd, CeSplit &c) {
  if (!wk_env_on("WICK_CUDA_CE_SPLIT", &g_ce_split) || x->dtype != WK_F32 || a.V < CE_SPLIT_MIN ||
      x->stride[x->ndim - 1] != 1 || a.N > INT32_MAX / CE_CLUSTER_BWD)
    return false;
  memset(&c, 0, sizeof c);
  c.a = a;
  c.cl = bwd ? CE_CLUSTER_BWD : CE_CLUSTER_FWD;
  c.piece = ((a.V + c.cl - 1) / c.cl + 3) / 4 * 4;
  if (bwd && (size_t)c.piece * 4 > wkc_max_smem() - 1024) return false;
  const uintptr_t o = (uintptr_t)a.out;
  c.vec = wkc_rows_vec4(x, a.x.p, a.V) && (!bwd || o % 16 == 0 || (a.out_dtype == WK_BF16 && o % 8 == 0));
  return true;
}
static void ce_split_launch(const CeSplit &c, bool bwd) {
  cudaLaunchAttribute at;
  at.id = cudaLaunchAttributeClusterDimension;
  at.val.clusterDim.x = (unsigned)c.cl, at.val.clusterDim.y = 1, at.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)(c.a.N * c.cl));
  cfg.blockDim = dim3(CE_THREADS);
  cfg.stream = wkc_stream();
  cfg.attrs = &at;
  cfg.numAttrs = 1;
  void (*k)(CeSplit) = bwd ? k_ce_split<true> : k_ce_split<false>;
  if (bwd) {
    static size_t optin;
    cfg.dynamicSmemBytes = (size_t)c.piece * 4;
    if (cfg.dynamicSmemBytes > 48 * 1024 && optin < cfg.dynamicSmemBytes) {
      cudaFuncSetAttribute(k_ce_split<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)wkc_max_smem() - 1024);
      optin = wkc_max_smem() - 1024;
    }
  }
  cudaLaunchKernelEx(&cfg, k, c);
}

// Rows of a (x: its operand) through k_ce_split where they qualify, else one CTA a row.
static void ce_launch(const CeArgs &a, const wk_operand *x, bool bwd) {
  CeSplit c;
  if (ce_split_plan(a, x, bwd, c)) ce_split_launch(c, bwd);
  else if (bwd) k_ce_bwd<<<wkc_capped(a.N, 1 << 30), wkc_row_threads(a.V), 0, wkc_stream()>>>(a);
  else k_ce_rows<<<wkc_capped(a.N, 1 << 30), wkc_row_threads(a.V), 0, wkc_stream()>>>(a);
}

wk_status wkc_cross_entropy(const wk_step *s, void *const *slots, bool bwd) {
  CeArgs a;
  memset(&a, 0, sizeof a);
  a.x = wkc_dop(&s->in[0], slots);
  a.tg = wkc_dop(&s->in[1], slots);
  a.V = s->in[0].shape[s->in[0].ndim - 1];
  a.N = wkc_numel(&s->in[1]);
  a.ignore = (int32_t)s->attrs.i[0];
  a.red = (int32_t)s->attrs.i[1];
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  a.err = wkc_dev_err();
  wkc_arm_dev_err();
  const char *name = bwd ? "cross_entropy (backward)" : "cross_entropy";
  void *t1 = NULL, *t2 = NULL;
  wk_status st = WK_OK;
  if (bwd) {
    a.g = wkc_dop(&s->in[2], slots);
    if (!a.N) return WK_OK;
    if (a.red == 1) {
      if (!(a.valid = (int *)(t1 = wkc_tmp_alloc(sizeof(int))))) return wk_error(WK_ERR_OOM, "%s: out of device memory", name);
      k_ce_count<<<1, 256, 0, wkc_stream()>>>(a);
    }
    ce_launch(a, &s->in[0], true);
    st = wkc_check_launch(name);
  } else {
    if (a.red != 0) {
      t1 = wkc_tmp_alloc((size_t)(a.N ? a.N : 1) * sizeof(float));
      t2 = wkc_tmp_alloc((size_t)(a.N ? a.N : 1) * sizeof(int));
      if (!t1 || !t2) st = wk_error(WK_ERR_OOM, "%s: out of device memory", name);
      a.loss = (float *)t1;
      a.valid = (int *)t2;
    }
    if (!st && a.N) ce_launch(a, &s->in[0], false);
    if (!st && a.red != 0) k_ce_final<<<1, 256, 0, wkc_stream()>>>(a);
    if (!st) st = wkc_check_launch(name);
  }
  wkc_tmp_free(t1);
  wkc_tmp_free(t2);
  return st;
}

// ---- cross-entropy of x W^T by blocks of rows (LINEAR_CE, LINEAR_CE_BWD) ----
// A vocabulary-wide head's logits ([N, V] f32: 2.5 GB for Qwen2.5-0.5B at batch 8 x
// 512) and their gradient never exist whole. R rows at a time: x's rows rounded to bf16
// (as the half-weight matmul rounds its input), times W^T into a block of logits, and
// the cross-entropy kernels above on that block. The backward computes
// the block again, turns it into dlogits in place, rounds it to bf16 (the half-weight
// matmul's dx = dy W would too) and multiplies by W into dx's rows. One GEMM more than
// cross_entropy(x @ W^T) with its gradient, whose values this gives (same roundings).
wk_status wkc_linear_ce(const wk_step *s, void *const *slots, bool bwd) {
  const char *name = bwd ? "linear_cross_entropy (backward)" : "linear_cross_entropy";
  if (bwd && s->attrs.i[2]) {   // dx was computed by the forward step: a copy out of its buffer (plan.h)
    const wk_operand *fo = &s->in[4];
    if (s->nin != 5 || s->out.dtype != WK_F32 || !wkc_is_dense(&s->out) || fo->dtype != WK_F32)
      return wk_error(WK_ERR_STATE, "%s: expected the forward's buffer after its inputs and a dense f32 dx", name);
    cudaMemcpyAsync(wkc_ptr(&s->out, slots), wkc_ptr(fo, slots) + wk_linear_ce_dx_offset(wkc_nbytes(fo)),
                    wkc_nbytes(&s->out), cudaMemcpyDeviceToDevice, wkc_stream());
    return wkc_check_launch(name);
  }
  const bool both = !bwd && s->attrs.i[2], grad = bwd || both;   // both: the loss, and dx after it
  const wk_operand *xo = &s->in[0], *wo = &s->in[1], *to = &s->in[2];
  if (wo->dtype != WK_BF16 || wo->ndim != 2 || !wkc_is_dense(wo) || xo->dtype != WK_F32 || to->dtype != WK_I32 ||
      !wkc_is_dense(to) || (bwd && (s->out.dtype != WK_F32 || !wkc_is_dense(&s->out))) ||
      (both && s->nin != 4 - (int)s->attrs.i[3]))
    return wk_error(WK_ERR_STATE, "%s: expected f32 x, a dense bf16 W [V, H], dense i32 targets and a dense f32 dx", name);
  const int64_t V = wo->shape[0], H = wo->shape[1], N = wkc_numel(to);
  if (N == 0 || wkc_numel(xo) != N * H) return wk_error(WK_ERR_STATE, "%s: x is not [N, %lld] for %lld targets", name, (long long)H, (long long)N);
  // 256 rows a block (fewer rows left the CE kernels, one CTA a row, a wave short of
  // the SMs, and the GEMMs at half rate: 64 rows made the step 30% slower), fewer for a
  // vocabulary past 256K (the block's f32 logits stay under 256 MB)
  int64_t R = (int64_t)(((size_t)256 << 20) / ((size_t)V * 4)) / 64 * 64;
  R = R > 256 ? 256 : R < 64 ? 64 : R;
  if (R > N) R = N;
  // scratch: [logits block f32 R x V][its bf16 copy R x V (gradient)][x's rows in bf16 R x H]
  //          [per-row losses and flags N (forward), the count of counted targets (gradient)][x dense f32 (strided x)]
  const size_t lb = wkc_align256((size_t)(R * V) * 4), db = grad ? wkc_align256((size_t)(R * V) * 2) : 0, xb = wkc_align256((size_t)(R * H) * 2);
  const size_t rb = wkc_align256((bwd ? 0 : (size_t)N * 8) + (grad ? sizeof(int) : 0)), dxb = wkc_is_dense(xo) ? 0 : (size_t)(N * H) * 4;
  char *scr = (char *)wkc_tmp_alloc(lb + db + xb + rb + dxb);
  if (!scr)
    return wk_error(WK_ERR_OOM, "%s: out of device memory for %zu bytes of scratch (blocks of %lld rows of %lld logits)",
                    name, lb + db + xb + rb + dxb, (long long)R, (long long)V);
  char *logits = scr, *dl = scr + lb, *xr = dl + db, *rows = xr + xb, *xd = rows + rb;
  const char *w = (const char *)slots[wo->slot] + wo->offset * 2;
  char *dx = bwd ? wkc_ptr(&s->out, slots) : both ? wkc_ptr(&s->out, slots) + wk_linear_ce_dx_offset(wkc_nbytes(&s->out)) : NULL;
  void *const *xslots = slots;
  void *dslot[1] = {xd};
  wk_operand x2 = {xo->slot, WK_F32, 2, {N, H}, {H, 1}, xo->offset};
  wk_status st = WK_OK;
  if (dxb) {   // a strided x: made dense once (N x H f32, small beside the logits)
    st = wkc_densify(xo, slots, WK_F32, xd);
    x2.slot = 0, x2.offset = 0, xslots = dslot;
  }
  float *loss = bwd ? NULL : (float *)rows;
  int *valid = bwd ? NULL : (int *)(rows + (size_t)N * 4);
  CeArgs a;
  memset(&a, 0, sizeof a);
  a.V = V;
  a.ignore = (int32_t)s->attrs.i[0];
  a.red = (int32_t)s->attrs.i[1];
  a.err = wkc_dev_err();
  wkc_arm_dev_err();
  if (!st && grad) {
    a.gconst = both && s->attrs.i[3];
    a.gval = s->attrs.f[0];
    if (!a.gconst) a.g = wkc_dop(&s->in[3], slots);
    a.tg = wkc_dop(to, slots);
    a.N = N;
    a.valid = (int *)(rows + (bwd ? 0 : (size_t)N * 8));
    if (a.red == 1) k_ce_count<<<1, 256, 0, wkc_stream()>>>(a);
  }
  void *lslot[1] = {logits};
  for (int64_t r0 = 0; !st && r0 < N; r0 += R) {
    const int64_t m = N - r0 < R ? N - r0 : R;
    wk_operand xv = x2, tv = *to, lv = {0, WK_F32, 2, {m, V}, {V, 1}, 0};
    xv.shape[0] = m, xv.offset += r0 * H;
    tv.ndim = 1, tv.shape[0] = m, tv.stride[0] = 1, tv.offset += r0;
    if (!(st = wkc_densify(&xv, xslots, WK_BF16, xr)))
      st = wkc_gemm(wkc_mat{xr, 0, H}, wkc_mat{w, 1, H}, WK_BF16, logits, m, V, H, "linear_cross_entropy (logits, cublasGemmEx)");
    if (st) break;
    a.x = wkc_dop(&lv, lslot);
    a.tg = wkc_dop(&tv, slots);
    a.N = m;
    a.row0 = r0;
    CeArgs f = a;   // the forward's view: per-row losses and flags
    f.loss = loss ? loss + r0 : NULL;
    f.valid = valid ? valid + r0 : NULL;
    if (!grad) {
      ce_launch(f, &lv, false);
      st = wkc_check_launch(name);
      continue;
    }
    // dlogits: straight into their bf16 copy from the split kernel (no f32 write and
    // no densify pass: the same rounding), with the rows' losses when both; else the
    // losses first, then dlogits over the logits, then rounded.
    CeArgs b = a;
    b.out = dl;
    b.out_dtype = WK_BF16;
    b.rloss = f.loss, b.rvalid = f.valid;
    CeSplit c;
    if (ce_split_plan(b, &lv, true, c)) {
      ce_split_launch(c, true);
      st = wkc_check_launch(name);
    } else {
      if (both) ce_launch(f, &lv, false);
      a.out = logits;   // row by row (k_ce_bwd reads a row whole first)
      a.out_dtype = WK_F32;
      k_ce_bwd<<<wkc_capped(m, 1 << 30), wkc_row_threads(V), 0, wkc_stream()>>>(a);
      if (!(st = wkc_check_launch(name))) st = wkc_densify(&lv, lslot, WK_BF16, dl);
    }
    if (!st)
      st = wkc_gemm(wkc_mat{dl, 0, V}, wkc_mat{w, 0, H}, WK_BF16, dx + (size_t)(r0 * H) * 4, m, H, V,
                    "linear_cross_entropy (dx, cublasGemmEx)");
  }
  if (!st && !bwd) {   // the mean or sum over every row, in a fixed order
    a.N = N;
    a.loss = loss;
    a.valid = valid;
    a.out = wkc_ptr(&s->out, slots);
    a.out_dtype = s->out.dtype;
    k_ce_final<<<1, 256, 0, wkc_stream()>>>(a);
    st = wkc_check_launch(name);
  }
  wkc_tmp_free(scr);
  return st;
}
