// Row kernels and the other NN kernels: softmax / log-softmax / RMS / layer norm as
// row chains (one block per row, the row held in shared memory from the first stage
// to the last, or in a global scratch row when it does not fit), their backward
// kernels, NORM_DW, RoPE, embedding (+ scatter-add backward) and SDPA forward for
// head dims above 128 (one block per query row; attn.cu has the tiled kernels).
// Cross-entropy is in ce.cu.
// B = rows, D = last axis throughout.
#include "cuda_internal.h"
#include "rope.cuh"

// ---- row chains ----
enum { IN_ROW = 0, IN_MEM = 1, IN_PRO = 2 };
struct StageD {
  int32_t op, in_mode, has_w, has_b;
  float eps;
  int32_t pad;
  DOp in0, w, b;
  DProg prog;
};
struct ChainHdr {
  int64_t rows, D;
  int32_t nst, use_smem;
  float *scratch;
  const float *row_in;    // a piece of a long chain: the rows the previous piece left (dense f32)
  char *out;
  int32_t out_dtype, pad;
};

static __device__ __forceinline__ float param(const DOp &o, int64_t j) { return ldv(o.p, o.dtype, op_off(o, j)); }

// WARP: each warp owns a row (rows of at most WARP_MAXD, no block barriers);
// otherwise the block owns a row.
#define WARP_MAXD 1024
#define WARP_ROWS 8
template <bool WARP> static __device__ __forceinline__ float rsum(float v, float *red) {
  return WARP ? warp_sum(v) : block_sum(v, red);
}
template <bool WARP> static __device__ __forceinline__ float rmax(float v, float *red) {
  return WARP ? warp_max(v) : block_max(v, red);
}

template <int CAP, bool WARP>
__global__ void __launch_bounds__(1024) k_rowchain(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  extern __shared__ float smem[];
  __shared__ float red[32];
  const ChainHdr &h = *(const ChainHdr *)blob.b;
  const StageD *stages = (const StageD *)(blob.b + sizeof(ChainHdr));
  const DInstr *pool = (const DInstr *)(blob.b + sizeof(ChainHdr) + sizeof(StageD) * h.nst);
  const int64_t D = h.D;
  const int lane = WARP ? threadIdx.x & 31 : threadIdx.x, nt = WARP ? 32 : blockDim.x;
  const int64_t first = WARP ? (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32 : blockIdx.x;
  const int64_t rstep = WARP ? (int64_t)gridDim.x * (blockDim.x / 32) : gridDim.x;
  float *buf = WARP ? smem + (threadIdx.x / 32) * D : h.use_smem ? smem : h.scratch + (int64_t)blockIdx.x * D;
  for (int64_t row = first; row < h.rows; row += rstep) {
    if (h.row_in)
      for (int64_t j = lane; j < D; j += nt) buf[j] = h.row_in[row * D + j];
    for (int si = 0; si < h.nst; si++) {
      const StageD &st = stages[si];
      const bool last = si == h.nst - 1;
      const bool ew = st.op == WK_STEP_FUSED_EW;
      if (ew || st.in_mode == IN_PRO) {
        int64_t rb[WK_MAX_IN], ls[WK_MAX_IN];
        for (int k = 0; k < st.prog.nops; k++) {
          rb[k] = row_off(st.prog.ops[k], row);
          ls[k] = last_stride(st.prog.ops[k]);
        }
        const DInstr *code = pool + st.prog.code_off;
        for (int64_t j = lane; j < D; j += nt) {
          auto load = [&](int k) {
            const DOp &o = st.prog.ops[k];
            return ldv(o.p, o.dtype, rb[k] + j * ls[k]);
          };
          float v = ew_exec(code, st.prog.n, st.prog.out_reg, row * D + j, buf[j], load);
          if (ew && last) stv(h.out, h.out_dtype, row * D + j, v);
          else buf[j] = v;
        }
        if (ew) continue;
      } else if (st.in_mode == IN_MEM) {
        const int64_t ro = row_off(st.in0, row), l = last_stride(st.in0);
        if (st.in0.dtype == WK_F32 && l == 1) {
          const float *p = (const float *)st.in0.p + ro;
          int64_t j = lane;
          for (; j + 3 * nt < D; j += 4 * nt) { // four loads in flight
            float a0 = p[j], a1 = p[j + nt], a2 = p[j + 2 * nt], a3 = p[j + 3 * nt];
            buf[j] = a0; buf[j + nt] = a1; buf[j + 2 * nt] = a2; buf[j + 3 * nt] = a3;
          }
          for (; j < D; j += nt) buf[j] = p[j];
        } else {
          for (int64_t j = lane; j < D; j += nt) buf[j] = ldv(st.in0.p, st.in0.dtype, ro + j * l);
        }
      }
      // the row op on buf (each thread reads back only its own elements; reductions sync)
      float y;
      if (st.op == WK_OP_SOFTMAX || st.op == WK_OP_LOG_SOFTMAX) {
        const bool lg = st.op == WK_OP_LOG_SOFTMAX;
        float m = -INFINITY;
        for (int64_t j = lane; j < D; j += nt) m = buf[j] > m ? buf[j] : m;
        m = rmax<WARP>(m, red);
        float sum = 0;
        for (int64_t j = lane; j < D; j += nt) {
          float e = expf(buf[j] - m);
          sum += e;
          if (!lg) buf[j] = e;
        }
        sum = rsum<WARP>(sum, red);
        float lse = m + logf(sum), inv = 1.0f / sum;
        for (int64_t j = lane; j < D; j += nt) {
          y = lg ? buf[j] - lse : buf[j] * inv;
          if (last) stv(h.out, h.out_dtype, row * D + j, y);
          else buf[j] = y;
        }
      } else if (st.op == WK_OP_RMS_NORM) {
        float ss = 0;
        for (int64_t j = lane; j < D; j += nt) ss += buf[j] * buf[j];
        ss = rsum<WARP>(ss, red);
        float k = 1.0f / sqrtf(ss / (float)D + st.eps);
        for (int64_t j = lane; j < D; j += nt) {
          y = buf[j] * k;
          if (st.has_w) y *= param(st.w, j);
          if (last) stv(h.out, h.out_dtype, row * D + j, y);
          else buf[j] = y;
        }
      } else { // layer norm
        float s1 = 0;
        for (int64_t j = lane; j < D; j += nt) s1 += buf[j];
        float mean = rsum<WARP>(s1, red) / (float)D, s2 = 0;
        for (int64_t j = lane; j < D; j += nt) { float d = buf[j] - mean; s2 += d * d; }
        float k = 1.0f / sqrtf(rsum<WARP>(s2, red) / (float)D + st.eps);
        for (int64_t j = lane; j < D; j += nt) {
          y = (buf[j] - mean) * k;
          if (st.has_w) y *= param(st.w, j);
          if (st.has_b) y += param(st.b, j);
          if (last) stv(h.out, h.out_dtype, row * D + j, y);
          else buf[j] = y;
        }
      }
    }
  }
}

template <int CAP, bool WARP> static void smem_optin(size_t bytes) {
  static size_t done;
  if (bytes > 48 * 1024 && done < bytes) {
    cudaFuncSetAttribute(k_rowchain<CAP, WARP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)wkc_max_smem() - 1024);
    done = wkc_max_smem();
  }
}

// Stages s[0..n) as one kernel: rows start from row_in (or the first stage's input)
// and the last stage writes out (dense, out_dtype). *fits = false (nothing launched)
// when the stages and their programs do not fit one kernel's parameters.
static wk_status rowchain_piece(const wk_step *s, int n, void *const *slots, const float *row_in, char *out_p,
                                int out_dtype, bool *fits) {
  const wk_operand *out = &s[n - 1].out;
  int64_t D = out->ndim ? out->shape[out->ndim - 1] : 1, rows = D ? wkc_numel(out) / D : 0;
  *fits = true;
  unsigned char *buf = wkc_blob_buf();
  size_t fixed = sizeof(ChainHdr) + sizeof(StageD) * (size_t)n;
  if (fixed + sizeof(DInstr) > WKC_BLOB_LARGE) { *fits = false; return WK_OK; }
  ChainHdr *h = (ChainHdr *)buf;
  memset(buf, 0, fixed);
  StageD *sd = (StageD *)(buf + sizeof(ChainHdr));
  DInstr *pool = (DInstr *)(buf + fixed);
  int cap = (int)((WKC_BLOB_LARGE - fixed) / sizeof(DInstr)), ncode = 0;
  for (int j = 0; j < n; j++) {
    const wk_step *st = &s[j];
    StageD *d = &sd[j];
    d->op = (int32_t)st->op;
    d->eps = st->attrs.f[0];
    bool ok = true;
    if (st->op == WK_STEP_FUSED_EW) {
      ok = wkc_prog(&st->prog, st->in, st->nin, slots, &d->prog, pool, &ncode, cap);
    } else {
      if (st->op != WK_OP_SOFTMAX && st->op != WK_OP_LOG_SOFTMAX && st->op != WK_OP_RMS_NORM && st->op != WK_OP_LAYER_NORM)
        return wk_error(WK_ERR_STATE, "cuda: %s cannot be a row-chain stage", wk_ops[st->op].name);
      if (st->prog.n) {
        d->in_mode = IN_PRO;
        ok = wkc_prog(&st->prog, st->pro_in, st->npro, slots, &d->prog, pool, &ncode, cap);
      } else if (st->in[0].slot >= 0) {
        d->in_mode = IN_MEM;
        d->in0 = wkc_dop(&st->in[0], slots);
      } else if (j == 0 && !row_in) {
        return wk_error(WK_ERR_STATE, "cuda: row chain starts without an input");
      }
      bool norm = st->op == WK_OP_RMS_NORM || st->op == WK_OP_LAYER_NORM;
      d->has_w = norm && st->attrs.i[0] != 0;
      d->has_b = st->op == WK_OP_LAYER_NORM && st->attrs.i[1] != 0;
      if (d->has_w) d->w = wkc_dop(&st->in[1], slots);
      if (d->has_b) d->b = wkc_dop(&st->in[1 + d->has_w], slots);
    }
    if (!ok) { *fits = false; return WK_OK; }
  }
  h->rows = rows;
  h->D = D;
  h->nst = n;
  h->row_in = row_in;
  h->out = out_p;
  h->out_dtype = out_dtype;
  size_t size = fixed + (size_t)ncode * sizeof(DInstr);
  int threads = wkc_row_threads(D);
  size_t smem = (size_t)D * sizeof(float);
  bool use_smem = smem + 2048 <= wkc_max_smem();
  int grid;
  void *scratch = NULL;
  // a warp per row, unless the rows are too few to fill the GPU: then a block per row
  // (a chain's stages are latency-bound; more threads per row shorten each stage)
  if (D <= WARP_MAXD && rows >= (int64_t)wkc_num_sms() * 4) {
    smem = (size_t)WARP_ROWS * (size_t)D * sizeof(float);
    grid = wkc_capped((rows + WARP_ROWS - 1) / WARP_ROWS, (int64_t)1 << 30);
    cudaStream_t cs = wkc_stream();
    if (size <= WKC_BLOB_SMALL) k_rowchain<WKC_BLOB_SMALL, true><<<grid, 32 * WARP_ROWS, smem, cs>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
    else k_rowchain<WKC_BLOB_LARGE, true><<<grid, 32 * WARP_ROWS, smem, cs>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
    return wkc_check_launch(n > 1 ? "row chain" : wk_ops[s->op].name);
  }
  if (use_smem) {
    grid = wkc_capped(rows, (int64_t)1 << 30);
    h->use_smem = 1;
  } else {
    grid = wkc_capped(rows, (int64_t)wkc_num_sms() * 2);
    if (!(scratch = wkc_tmp_alloc((size_t)grid * (size_t)D * sizeof(float))))
      return wk_error(WK_ERR_OOM, "cuda: row chain scratch of %lld rows x %lld", (long long)grid, (long long)D);
    h->scratch = (float *)scratch;
    smem = 0;
  }
  cudaStream_t cs = wkc_stream();
  if (size <= WKC_BLOB_SMALL) {
    smem_optin<WKC_BLOB_SMALL, false>(smem);
    k_rowchain<WKC_BLOB_SMALL, false><<<grid, threads, smem, cs>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
  } else {
    smem_optin<WKC_BLOB_LARGE, false>(smem);
    k_rowchain<WKC_BLOB_LARGE, false><<<grid, threads, smem, cs>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
  }
  wk_status st = wkc_check_launch(n > 1 ? "row chain" : wk_ops[s->op].name);
  wkc_tmp_free(scratch);
  return st;
}

// A chain too long for one kernel's parameters (a thousand chained softmaxes, say)
// runs as pieces that hand their rows over in f32 through scratch: the stages keep
// rows in f32 between them anyway, so the results are the same bits. Chains of row
// ops alone over short rows take rows.cu's register kernel (its pieces the same way).
typedef wk_status (*chain_piece)(const wk_step *, int, void *const *, const float *, char *, int, bool *);
wk_status wkc_rowchain(const wk_step *s, int n, void *const *slots) {
  const wk_operand *out = &s[n - 1].out;
  int64_t D = out->ndim ? out->shape[out->ndim - 1] : 1, rows = D ? wkc_numel(out) / D : 0;
  if (!rows) return WK_OK;
  wk_status st;
  if (n == 1 && wkc_rows_fast(s, slots, &st)) return st;
  const int in_regs = wkc_rows_chain_cap(s, n, slots);
  const chain_piece piece = in_regs ? wkc_rows_chain_piece : rowchain_piece;
  bool fits;
  st = piece(s, n, slots, NULL, wkc_ptr(out, slots), out->dtype, &fits);
  if (st || fits) return st;
  size_t bytes = (size_t)rows * (size_t)D * sizeof(float);
  float *hand[2] = {(float *)wkc_tmp_alloc(bytes), (float *)wkc_tmp_alloc(bytes)};
  if (!hand[0] || !hand[1]) st = wk_error(WK_ERR_OOM, "cuda: row chain of %d stages: 2 x %zu bytes of scratch", n, bytes);
  int per = in_regs ? in_regs : (int)((WKC_BLOB_LARGE - sizeof(ChainHdr)) / sizeof(StageD)) - 1;
  for (int done = 0, k = 0; !st && done < n; k ^= 1) {
    int m = n - done < per ? n - done : per;
    for (fits = false; !fits && m > 0; m /= 2) {
      bool last = done + m == n;
      st = piece(s + done, m, slots, done ? hand[k ^ 1] : NULL, last ? wkc_ptr(out, slots) : (char *)hand[k],
                 last ? out->dtype : WK_F32, &fits);
      if (st || fits) break;
    }
    if (!st && !fits) st = wk_error(WK_ERR_STATE, "cuda: a row-chain stage's program is too long for one kernel");
    done += m;
  }
  wkc_tmp_free(hand[0]);
  wkc_tmp_free(hand[1]);
  return st;
}

// ---- backward row kernels ----
struct RowArgs {
  DOp x, w, dy;
  int64_t rows, D;
  char *out;
  const float *add;   // a norm backward's addend (dense f32 rows like out), added as it stores; or NULL
  int32_t out_dtype, op, has_w, pad;
  float eps;
};

// (y, dy) -> y * (dy - sum(dy * y))  or  dy - exp(y) * sum(dy)
__global__ void __launch_bounds__(1024) k_softmax_bwd(const __grid_constant__ RowArgs a) {
  __shared__ float red[32];
  const bool lg = a.op == WK_OP_LOG_SOFTMAX_BWD;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    int64_t yo = row_off(a.x, r), yl = last_stride(a.x), go = row_off(a.dy, r), gl = last_stride(a.dy);
    float t = 0;
    for (int64_t j = threadIdx.x; j < a.D; j += blockDim.x) {
      float dy = ldv(a.dy.p, a.dy.dtype, go + j * gl);
      t += lg ? dy : dy * ldv(a.x.p, a.x.dtype, yo + j * yl);
    }
    t = block_sum(t, red);
    for (int64_t j = threadIdx.x; j < a.D; j += blockDim.x) {
      float y = ldv(a.x.p, a.x.dtype, yo + j * yl), dy = ldv(a.dy.p, a.dy.dtype, go + j * gl);
      stv(a.out, a.out_dtype, r * a.D + j, lg ? dy - expz(y) * t : y * (dy - t));
    }
  }
}

// RMS: dx = k g - k^3 x mean(g x);  layer: dx = k (g - mean(g) - xhat mean(g xhat)); g = dy * w
__global__ void __launch_bounds__(1024) k_norm_bwd(const __grid_constant__ RowArgs a) {
  __shared__ float red[32];
  const bool layer = a.op == WK_OP_LAYER_NORM_BWD;
  const int64_t D = a.D;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    int64_t xo = row_off(a.x, r), xl = last_stride(a.x), go = row_off(a.dy, r), gl = last_stride(a.dy);
    auto X = [&](int64_t j) { return ldv(a.x.p, a.x.dtype, xo + j * xl); };
    auto G = [&](int64_t j) {
      float g = ldv(a.dy.p, a.dy.dtype, go + j * gl);
      return a.has_w ? g * ldv(a.w.p, a.w.dtype, op_off(a.w, j)) : g;
    };
    if (!layer) {
      float ss = 0, gx = 0;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) { float x = X(j); ss += x * x; gx += G(j) * x; }
      ss = block_sum(ss, red);
      gx = block_sum(gx, red);
      float k = 1.0f / sqrtf(ss / (float)D + a.eps), c = k * k * k * gx / (float)D;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        stv(a.out, a.out_dtype, r * D + j, k * G(j) - c * X(j) + (a.add ? a.add[r * D + j] : 0.0f));
    } else {
      float s1 = 0;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s1 += X(j);
      float mean = block_sum(s1, red) / (float)D, s2 = 0;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) { float d = X(j) - mean; s2 += d * d; }
      float k = 1.0f / sqrtf(block_sum(s2, red) / (float)D + a.eps), sg = 0, sgx = 0;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) { float g = G(j); sg += g; sgx += g * (X(j) - mean) * k; }
      float mg = block_sum(sg, red) / (float)D, mgx = block_sum(sgx, red) / (float)D;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float xh = (X(j) - mean) * k;
        stv(a.out, a.out_dtype, r * D + j, k * (G(j) - mg - xh * mgx) + (a.add ? a.add[r * D + j] : 0.0f));
      }
    }
  }
}

static RowArgs row_args(const wk_step *s, void *const *slots, const wk_operand *x, const wk_operand *dy) {
  RowArgs a;
  memset(&a, 0, sizeof a);
  a.x = wkc_dop(x, slots);
  a.dy = wkc_dop(dy, slots);
  a.D = x->ndim ? x->shape[x->ndim - 1] : 1;
  a.rows = a.D ? wkc_numel(x) / a.D : 0;
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  a.op = (int32_t)s->op;
  a.eps = s->attrs.f[0];
  return a;
}

wk_status wkc_softmax_bwd(const wk_step *s, void *const *slots) {
  RowArgs a = row_args(s, slots, &s->in[0], &s->in[1]);
  if (!a.rows) return WK_OK;
  k_softmax_bwd<<<wkc_capped(a.rows, 1 << 30), wkc_row_threads(a.D), 0, wkc_stream()>>>(a);
  return wkc_check_launch(wk_ops[s->op].name);
}

// ---- RMS / layer norm backward, a warp a row (f32 rows of at most 1024, D % 4 == 0) ----
// k_norm_bwd gave a 896-wide row a CTA of 224 threads: four elements a thread, two
// block reductions, and 4088 short CTAs (41 us where the 44 MB moved take ~11). Here
// a warp holds its row's x and g = dy w in registers (NV float4 a lane, every load
// issued before the first use: 7 KB a warp in flight for D = 896) and reduces with
// shuffles; 8 rows a CTA. The same formulas as k_norm_bwd.
#define NB_ROWS 8
template <int NV>
__global__ void __launch_bounds__(32 * NB_ROWS) k_norm_bwd_rows(const __grid_constant__ RowArgs a) {
  const int lane = threadIdx.x & 31, D4 = (int)(a.D / 4);
  const int64_t r = (int64_t)blockIdx.x * NB_ROWS + threadIdx.x / 32;
  if (r >= a.rows) return;
  const float4 *x4 = (const float4 *)((const float *)a.x.p + row_off(a.x, r));
  const float4 *g4 = (const float4 *)((const float *)a.dy.p + row_off(a.dy, r));
  const float4 *w4 = (const float4 *)a.w.p;
  float4 x[NV], g[NV];
#pragma unroll
  for (int v = 0; v < NV; v++) {
    const int c = lane + 32 * v;
    x[v] = c < D4 ? x4[c] : make_float4(0, 0, 0, 0);
    g[v] = c < D4 ? g4[c] : make_float4(0, 0, 0, 0);
  }
  if (a.has_w)
#pragma unroll
    for (int v = 0; v < NV; v++) {
      const float4 w = lane + 32 * v < D4 ? w4[lane + 32 * v] : make_float4(0, 0, 0, 0);
      g[v] = make_float4(g[v].x * w.x, g[v].y * w.y, g[v].z * w.z, g[v].w * w.w);
    }
  const float D = (float)a.D;
  float k, mean = 0, mg = 0, c;   // dx = k g - c x + (layer) k (-mg) + c mean
  if (a.op != WK_OP_LAYER_NORM_BWD) {
    float ss = 0, gx = 0;
#pragma unroll
    for (int v = 0; v < NV; v++) {
      ss += x[v].x * x[v].x + x[v].y * x[v].y + x[v].z * x[v].z + x[v].w * x[v].w;
      gx += g[v].x * x[v].x + g[v].y * x[v].y + g[v].z * x[v].z + g[v].w * x[v].w;
    }
    k = 1.0f / sqrtf(warp_sum(ss) / D + a.eps);
    c = k * k * k * warp_sum(gx) / D;
  } else {
    float s1 = 0, s2 = 0, sg = 0, sgx = 0;
#pragma unroll
    for (int v = 0; v < NV; v++) s1 += x[v].x + x[v].y + x[v].z + x[v].w;
    mean = warp_sum(s1) / D;
#pragma unroll
    for (int v = 0; v < NV; v++)
      if (lane + 32 * v < D4) {
        const float d0 = x[v].x - mean, d1 = x[v].y - mean, d2 = x[v].z - mean, d3 = x[v].w - mean;
        s2 += d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3;
      }
    k = 1.0f / sqrtf(warp_sum(s2) / D + a.eps);
#pragma unroll
    for (int v = 0; v < NV; v++) {
      sg += g[v].x + g[v].y + g[v].z + g[v].w;
      sgx += g[v].x * (x[v].x - mean) * k + g[v].y * (x[v].y - mean) * k + g[v].z * (x[v].z - mean) * k +
             g[v].w * (x[v].w - mean) * k;
    }
    mg = warp_sum(sg) / D;
    c = warp_sum(sgx) / D;   // mgx
  }
  const bool layer = a.op == WK_OP_LAYER_NORM_BWD;
#pragma unroll
  for (int v = 0; v < NV; v++) {
    const int col = lane + 32 * v;
    if (col >= D4) break;
    float y[4], *xv = &x[v].x, *gv = &g[v].x;
#pragma unroll
    for (int u = 0; u < 4; u++) y[u] = layer ? k * (gv[u] - mg - (xv[u] - mean) * k * c) : k * gv[u] - c * xv[u];
    if (a.add) {   // (read before the store: the output may be the addend's buffer)
      const float4 ad = ((const float4 *)a.add)[r * D4 + col];
      y[0] += ad.x, y[1] += ad.y, y[2] += ad.z, y[3] += ad.w;
    }
    if (a.out_dtype == WK_F32) ((float4 *)a.out)[r * D4 + col] = make_float4(y[0], y[1], y[2], y[3]);
    else
      ((uint2 *)a.out)[r * D4 + col] = bf16x4(y[0], y[1], y[2], y[3]);
  }
}

static int g_norm_rows = -1;   // WICK_CUDA_NORM_BWD_ROWS=0: k_norm_bwd (a CTA a row) always
// k_norm_bwd_rows where the step qualifies: f32 x, dy and (dense) w, f32 or bf16 out.
static bool norm_bwd_rows(const wk_step *s, void *const *slots, const RowArgs &a) {
  typedef void (*K)(RowArgs);
  static const K ks[8] = {k_norm_bwd_rows<1>, k_norm_bwd_rows<2>, k_norm_bwd_rows<3>, k_norm_bwd_rows<4>,
                          k_norm_bwd_rows<5>, k_norm_bwd_rows<6>, k_norm_bwd_rows<7>, k_norm_bwd_rows<8>};
  const wk_operand *w = &s->in[1];
  const wk_operand *x = &s->in[0], *dy = &s->in[s->nin - 1 - (a.add != NULL)];
  if (!wk_env_on("WICK_CUDA_NORM_BWD_ROWS", &g_norm_rows) || a.D > 1024 || !wkc_rows_vec4(x, wkc_ptr(x, slots), a.D) ||
      (a.add && (uintptr_t)a.add % 16 != 0) ||
      !wkc_rows_vec4(dy, wkc_ptr(dy, slots), a.D) || (a.has_w && (!wkc_rows_vec4(w, wkc_ptr(w, slots), a.D) || w->ndim != 1)) ||
      (a.out_dtype != WK_F32 && a.out_dtype != WK_BF16) || (uintptr_t)a.out % 16 != 0)
    return false;
  const int nv = (int)((a.D / 4 + 31) / 32);
  ks[nv - 1]<<<(unsigned)((a.rows + NB_ROWS - 1) / NB_ROWS), 32 * NB_ROWS, 0, wkc_stream()>>>(a);
  return true;
}

wk_status wkc_norm_bwd(const wk_step *s, void *const *slots) {
  // with attrs.i[2]: in[nin - 1] is an addend, dense f32 of the output's shape (compile_rewrite.c's match_norm_bwd_add)
  const bool add = s->attrs.i[2] != 0;
  const wk_operand *ao = &s->in[s->nin - 1];
  if (add && (ao->dtype != WK_F32 || !wkc_is_dense(ao) || wkc_numel(ao) != wkc_numel(&s->out) || s->out.dtype != WK_F32))
    return wk_error(WK_ERR_STATE, "%s: the addend must be dense f32 of the output's shape", wk_ops[s->op].name);
  RowArgs a = row_args(s, slots, &s->in[0], &s->in[s->nin - 1 - add]);
  a.add = add ? (const float *)wkc_ptr(ao, slots) : NULL;
  a.has_w = s->attrs.i[0] != 0;
  if (a.has_w) a.w = wkc_dop(&s->in[1], slots);
  if (!a.rows) return WK_OK;
  if (!norm_bwd_rows(s, slots, a)) k_norm_bwd<<<wkc_capped(a.rows, 1 << 30), wkc_row_threads(a.D), 0, wkc_stream()>>>(a);
  return wkc_check_launch(wk_ops[s->op].name);
}

// ---- NORM_DW: per-row stats, per-chunk column partials, fixed-order final sum ----
__global__ void __launch_bounds__(1024) k_norm_stats(const __grid_constant__ RowArgs a, float2 *stats) {
  __shared__ float red[32];
  const bool layer = a.has_w; // reused: 1 = layer norm
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    int64_t xo = row_off(a.x, r), xl = last_stride(a.x);
    float mean = 0, k;
    if (layer) {
      float s1 = 0;
      for (int64_t j = threadIdx.x; j < a.D; j += blockDim.x) s1 += ldv(a.x.p, a.x.dtype, xo + j * xl);
      mean = block_sum(s1, red) / (float)a.D;
      float s2 = 0;
      for (int64_t j = threadIdx.x; j < a.D; j += blockDim.x) { float d = ldv(a.x.p, a.x.dtype, xo + j * xl) - mean; s2 += d * d; }
      k = 1.0f / sqrtf(block_sum(s2, red) / (float)a.D + a.eps);
    } else {
      float ss = 0;
      for (int64_t j = threadIdx.x; j < a.D; j += blockDim.x) { float x = ldv(a.x.p, a.x.dtype, xo + j * xl); ss += x * x; }
      k = 1.0f / sqrtf(block_sum(ss, red) / (float)a.D + a.eps);
    }
    if (threadIdx.x == 0) stats[r] = make_float2(mean, k);
  }
}

__global__ void k_norm_dw_part(const __grid_constant__ RowArgs a, const float2 *stats, float *part, int64_t chunk) {
  int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= a.D) return;
  const bool layer = a.has_w;
  int64_t r0 = blockIdx.y * chunk, r1 = r0 + chunk < a.rows ? r0 + chunk : a.rows;
  float dw = 0, db = 0;
  int64_t xl = last_stride(a.x), gl = last_stride(a.dy);
  for (int64_t r = r0; r < r1; r++) {
    float2 st = stats[r];
    float x = ldv(a.x.p, a.x.dtype, row_off(a.x, r) + d * xl), g = ldv(a.dy.p, a.dy.dtype, row_off(a.dy, r) + d * gl);
    dw += g * (x - st.x) * st.y;
    db += g;
  }
  float *p = part + (int64_t)blockIdx.y * 2 * a.D;
  p[d] = dw;
  if (layer) p[a.D + d] = db;
}

__global__ void k_norm_dw_final(const __grid_constant__ RowArgs a, const float *part, int nchunk) {
  int64_t w = a.has_w ? 2 * a.D : a.D;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < w; i += (int64_t)gridDim.x * blockDim.x) {
    float acc = 0;
    for (int c = 0; c < nchunk; c++) acc += part[(int64_t)c * 2 * a.D + i];
    stv(a.out, a.out_dtype, i, acc);
  }
}

wk_status wkc_norm_dw(const wk_step *s, void *const *slots) {
  RowArgs a = row_args(s, slots, &s->in[0], &s->in[1]);
  a.has_w = s->attrs.i[0] != 0; // layer norm: [dw; db]
  const char *name = a.has_w ? "layer_norm (dw)" : "rms_norm (dw)";
  if (!a.D) return WK_OK;
  if (!a.rows) {
    cudaMemsetAsync(a.out, 0, (size_t)(a.has_w ? 2 : 1) * (size_t)a.D * wkc_esize(a.out_dtype), wkc_stream());
    return wkc_check_launch(name);
  }
  int64_t nchunk = a.rows < 64 ? a.rows : 64, chunk = (a.rows + nchunk - 1) / nchunk;
  nchunk = (a.rows + chunk - 1) / chunk;
  float2 *stats = (float2 *)wkc_tmp_alloc((size_t)a.rows * sizeof(float2));
  float *part = (float *)wkc_tmp_alloc((size_t)nchunk * 2 * (size_t)a.D * sizeof(float));
  wk_status st = WK_OK;
  if (!stats || !part) st = wk_error(WK_ERR_OOM, "%s: out of device memory for partial sums", name);
  if (!st) {
    k_norm_stats<<<wkc_capped(a.rows, 1 << 30), wkc_row_threads(a.D), 0, wkc_stream()>>>(a, stats);
    k_norm_dw_part<<<dim3((unsigned)((a.D + 255) / 256), (unsigned)nchunk), 256, 0, wkc_stream()>>>(a, stats, part, chunk);
    k_norm_dw_final<<<wkc_capped((2 * a.D + 255) / 256, 1024), 256, 0, wkc_stream()>>>(a, part, (int)nchunk);
    st = wkc_check_launch(name);
  }
  wkc_tmp_free(stats);
  wkc_tmp_free(part);
  return st;
}

// ---- rope (rope.cuh: the arguments and the per-pair math) ----
// blocks [0, nb) of the launch work on a (a group gives each member a range of blocks)
// Element pair i of position t: its angle's cos and sin (in double: the CPU's table)
// are computed once for the rpt rows of one group of (batch, head) rows at that t.
__device__ __forceinline__ void rope_body(const RopeArgs &a, int64_t bx, int64_t nb) {
  const int64_t h = a.D / 2, bh = a.rows / a.T, groups = (bh + a.rpt - 1) / a.rpt, n = groups * a.T * h;
  const int64_t offset = rope_pos0(a), l = last_stride(a.x);
  for (int64_t e = bx * blockDim.x + threadIdx.x; e < n; e += nb * blockDim.x) {
    const int64_t i = e % h, t = (e / h) % a.T, g0 = e / (h * a.T) * a.rpt;
    float co, sn;
    rope_cs(a, offset + t, i, &co, &sn);
    const int64_t i0 = a.inter ? 2 * i : i, i1 = a.inter ? 2 * i + 1 : i + h, g1 = g0 + a.rpt < bh ? g0 + a.rpt : bh;
    for (int64_t g = g0; g < g1; g++) {
      const int64_t r = g * a.T + t, ro = row_off(a.x, r);
      const float2 y = rope_rot(ldv(a.x.p, a.x.dtype, ro + i0 * l), ldv(a.x.p, a.x.dtype, ro + i1 * l), co, sn);
      stv(a.out, a.out_dtype, r * a.D + i0, y.x);
      stv(a.out, a.out_dtype, r * a.D + i1, y.y);
    }
  }
}
// The same rotation, 4 pairs (two float4 of x) a thread for each of up to ROPE_RPT rows
// of a group; the inverse frequencies computed once a CTA into inv (its h entries).
// The scalar body moved 8 bytes a thread at a time (about 9 KB in flight an SM); this
// one loads ROPE_RPT * 32 bytes before its first store.
#define ROPE_RPT 4
template <bool INTER> __device__ __forceinline__ void rope_vec_body(const RopeArgs &a, int64_t bx, int64_t nb, float *inv) {
  const int64_t h = a.D / 2, h4 = h / 4, bh = a.rows / a.T, n = (bh + ROPE_RPT - 1) / ROPE_RPT * a.T * h4;
  for (int i = threadIdx.x; i < h; i += blockDim.x) inv[i] = rope_inv(a, i);
  __syncthreads();
  const int64_t offset = rope_pos0(a);
  for (int64_t e = bx * blockDim.x + threadIdx.x; e < n; e += nb * blockDim.x) {
    const int64_t q = e % h4, t = (e / h4) % a.T, g0 = e / (h4 * a.T) * ROPE_RPT;
    float co[4], sn[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      double sd, cd;
      sincos((double)((float)(offset + t) * inv[4 * q + u]), &sd, &cd);
      co[u] = (float)cd * a.scale, sn[u] = a.sign * ((float)sd * a.scale);
    }
    // halves: pair u is (lo[u], hi[u]) at 4q + u and h + 4q + u; interleaved: at 8q + 2u, 8q + 2u + 1
    const int64_t e0 = INTER ? 8 * q : 4 * q, e1 = INTER ? 8 * q + 4 : h + 4 * q;
    float4 lo[ROPE_RPT], hi[ROPE_RPT];
#pragma unroll
    for (int k = 0; k < ROPE_RPT; k++)
      if (g0 + k < bh) {
        const float *x = (const float *)a.x.p + row_off(a.x, (g0 + k) * a.T + t);
        lo[k] = *(const float4 *)(x + e0), hi[k] = *(const float4 *)(x + e1);
      }
#pragma unroll
    for (int k = 0; k < ROPE_RPT; k++) {
      if (g0 + k >= bh) break;
      float p[8] = {lo[k].x, lo[k].y, lo[k].z, lo[k].w, hi[k].x, hi[k].y, hi[k].z, hi[k].w}, y[8];
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int i0 = INTER ? 2 * u : u, i1 = INTER ? 2 * u + 1 : u + 4;   // registers: INTER is fixed
        const float2 yy = rope_rot(p[i0], p[i1], co[u], sn[u]);
        y[i0] = yy.x;
        y[i1] = yy.y;
      }
      const int64_t o = ((g0 + k) * a.T + t) * a.D;
      if (a.out_dtype == WK_F32) {
        *(float4 *)((float *)a.out + o + e0) = make_float4(y[0], y[1], y[2], y[3]);
        *(float4 *)((float *)a.out + o + e1) = make_float4(y[4], y[5], y[6], y[7]);
      } else {
        uint16_t *ob = (uint16_t *)a.out + o;
        *(uint2 *)(ob + e0) = bf16x4(y[0], y[1], y[2], y[3]);
        *(uint2 *)(ob + e1) = bf16x4(y[4], y[5], y[6], y[7]);
      }
    }
  }
}
// The body a's step takes (wkc_rope_args' vec, inter); inv: ROPE_MAXH floats of shared memory.
__device__ __forceinline__ void rope_run(const RopeArgs &a, int64_t bx, int64_t nb, float *inv) {
  if (a.vec && a.inter) rope_vec_body<true>(a, bx, nb, inv);
  else if (a.vec) rope_vec_body<false>(a, bx, nb, inv);
  else rope_body(a, bx, nb);
}
// (256, 2): 92 registers, no spills (ptxas spilled around the double sincos at 80)
__global__ void __launch_bounds__(256, 2) k_rope(const __grid_constant__ RopeArgs a) {
  __shared__ float inv[ROPE_MAXH];
  wkc_pdl_trigger();
  rope_run(a, blockIdx.x, gridDim.x, inv);
}

// Steps run as one launch (compile_schedule.c's sibling groups: a layer's q and k RoPE, its k and
// v cache writes): member i owns blocks [first[i], first[i + 1]).
#define NN_GROUP 4
template <class A> struct NnGroup {
  A m[NN_GROUP];
  unsigned first[NN_GROUP + 1];
  int n;
};
template <class A> __device__ __forceinline__ int group_member(const NnGroup<A> &g) {
  int i = 0;
  while (i + 1 < g.n && blockIdx.x >= g.first[i + 1]) i++;
  return i;
}
__global__ void __launch_bounds__(256, 2) k_rope_group(const __grid_constant__ NnGroup<RopeArgs> g) {
  wkc_pdl_trigger();
  __shared__ float inv[ROPE_MAXH];
  const int i = group_member(g);
  rope_run(g.m[i], blockIdx.x - g.first[i], g.first[i + 1] - g.first[i], inv);
}

static int g_rope_vec = -1;   // WICK_CUDA_ROPE_VEC=0: rope_body (a pair a thread) always
wk_status wkc_rope_args(const wk_step *s, void *const *slots, RopeArgs &a) {
  const wk_operand *x = &s->in[0];
  memset(&a, 0, sizeof a);
  a.x = wkc_dop(x, slots);
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  a.D = x->shape[x->ndim - 1];
  a.T = x->ndim >= 2 ? x->shape[x->ndim - 2] : 1;
  a.rows = a.D ? wkc_numel(x) / a.D : 0;
  a.theta = s->attrs.f[0];
  a.sign = s->attrs.f[1];
  a.offset = s->attrs.i[0];
  int freqs = s->attrs.i[2] != 0;
  a.pos = s->nin > 1 + freqs ? (const int32_t *)wkc_ptr(&s->in[1], slots) : NULL;
  a.inv = freqs ? (const float *)wkc_ptr(&s->in[s->nin - 1], slots) : NULL;
  a.scale = s->attrs.f[2] > 0 ? s->attrs.f[2] : 1.0f;
  const wk_operand *fq = &s->in[s->nin - 1];
  if (freqs && (fq->dtype != WK_F32 || (fq->stride[0] != 1 && fq->shape[0] > 1)))
    return wk_error(WK_ERR_STATE, "rope: inv_freq must be a dense f32 vector on CUDA");
  a.inter = s->attrs.i[1] != 0;
  // theta's frequencies on the host: a device pow in double was the longest wait of a
  // decode RoPE launch (4.1 -> 3.4 us in a replayed graph, H200)
  a.hinv = !a.inv && a.D / 2 <= ROPE_MAXH;
  for (int64_t i = 0; a.hinv && i < a.D / 2; i++) a.invh[i] = (float)(1.0 / pow((double)a.theta, (double)(2 * i) / (double)a.D));
  // rows a thread: enough work items left for ~128K threads. A training step's q
  // ([8, 14, 511, 64]) shares each angle over 112 rows: 14 a thread cuts the double
  // trig (which bound the kernel at 60 us on an H200) 14-fold; decode keeps 1.
  const int64_t pairs = a.rows * (a.D / 2), bh = a.T ? a.rows / a.T : 0;
  a.rpt = pairs / 131072 < 1 ? 1 : pairs / 131072 > 16 ? 16 : pairs / 131072;
  if (a.rpt > bh) a.rpt = bh > 0 ? bh : 1;
  const uintptr_t o = (uintptr_t)a.out;
  // the vector body for enough pairs only: its thread takes four sincos in a row, where
  // at decode's 512 pairs one pair a thread ends sooner (3.4 -> 2.9 us a launch)
  a.vec = wk_env_on("WICK_CUDA_ROPE_VEC", &g_rope_vec) && pairs >= 32768 && a.D % 8 == 0 && a.D / 2 <= ROPE_MAXH &&
          wkc_rows_vec4(x, wkc_ptr(x, slots), a.D) && (a.out_dtype == WK_F32 ? o % 16 == 0 : a.out_dtype == WK_BF16 && o % 8 == 0);
  return WK_OK;
}
static int64_t rope_blocks(const RopeArgs &a) {
  const int64_t bh = a.rows / a.T, items = a.vec ? (bh + ROPE_RPT - 1) / ROPE_RPT * a.T * (a.D / 8)
                                                 : (bh + a.rpt - 1) / a.rpt * a.T * (a.D / 2);
  return wkc_capped((items + 255) / 256, (int64_t)wkc_num_sms() * 32);
}

wk_status wkc_rope(const wk_step *s, void *const *slots) {
  RopeArgs a;
  wk_status st = wkc_rope_args(s, slots, a);
  if (st || a.rows * (a.D / 2) == 0) return st;
  k_rope<<<(unsigned)rope_blocks(a), 256, 0, wkc_stream()>>>(a);
  return wkc_check_launch("rope");
}

// ---- set_slice: src into dst (the output, updated in place) at a start read on the device ----
struct SetSliceArgs {
  DOp src;
  char *out;
  const int32_t *start;
  int32_t out_dtype, pad;
  int64_t outer, n, cap, inner;
};

__device__ __forceinline__ void set_slice_body(const SetSliceArgs &a, int64_t bx, int64_t nb) {
  int64_t st = *a.start, total = a.outer * a.n * a.inner;
  if (st < 0 || st + a.n > a.cap) return; // the model checks positions before it builds a step
  for (int64_t e = bx * blockDim.x + threadIdx.x; e < total; e += nb * blockDim.x) {
    int64_t j = e % a.inner, i = (e / a.inner) % a.n, o = e / (a.inner * a.n);
    stv(a.out, a.out_dtype, (o * a.cap + st + i) * a.inner + j, ldv(a.src.p, a.src.dtype, op_off(a.src, e)));
  }
}

__global__ void k_set_slice(const __grid_constant__ SetSliceArgs a) { set_slice_body(a, blockIdx.x, gridDim.x); }
__global__ void k_set_slice_group(const __grid_constant__ NnGroup<SetSliceArgs> g) {
  const int i = group_member(g);
  set_slice_body(g.m[i], blockIdx.x - g.first[i], g.first[i + 1] - g.first[i]);
}

static wk_status set_slice_args(const wk_step *s, void *const *slots, SetSliceArgs &a) {
  const wk_operand *dst = &s->out, *src = &s->in[1];
  if (dst->dtype == WK_Q8_0)
    return wk_error(WK_ERR_DTYPE, "set_slice: no CUDA kernel writes q8_0 (use an f16 or bf16 cache on CUDA)");
  memset(&a, 0, sizeof a);
  int ax = (int)s->attrs.i[0];
  a.src = wkc_dop(src, slots);
  a.out = wkc_ptr(dst, slots);
  a.start = (const int32_t *)wkc_ptr(&s->in[2], slots);
  a.out_dtype = dst->dtype;
  a.n = src->shape[ax];
  a.cap = dst->shape[ax];
  a.outer = a.inner = 1;
  for (int d = 0; d < ax; d++) a.outer *= dst->shape[d];
  for (int d = ax + 1; d < dst->ndim; d++) a.inner *= dst->shape[d];
  return WK_OK;
}
static int64_t set_slice_blocks(const SetSliceArgs &a) {
  return wkc_capped((a.outer * a.n * a.inner + 255) / 256, (int64_t)wkc_num_sms() * 32);
}

wk_status wkc_set_slice(const wk_step *s, void *const *slots) {
  SetSliceArgs a;
  wk_status st = set_slice_args(s, slots, a);
  if (st || a.outer * a.n * a.inner == 0) return st;
  k_set_slice<<<(unsigned)set_slice_blocks(a), 256, 0, wkc_stream()>>>(a);
  return wkc_check_launch("set_slice");
}

// n consecutive ROPE or SET_SLICE steps (a planner group) as one launch (empty members skipped).
template <class A, class Fill, class Blocks, class K>
static wk_status nn_group(const wk_step *s, int n, void *const *slots, Fill fill, Blocks blocks, K kernel, const char *name) {
  NnGroup<A> g;
  memset(&g, 0, sizeof g);
  for (int k = 0; k < n; k++) {
    if (g.n == NN_GROUP) {
      kernel<<<g.first[g.n], 256, 0, wkc_stream()>>>(g);
      wk_status st = wkc_check_launch(name);
      if (st) return st;
      memset(&g, 0, sizeof g);
    }
    wk_status st = fill(&s[k], slots, g.m[g.n]);
    if (st) return st;
    const int64_t nb = blocks(g.m[g.n]);
    if (nb <= 0) continue;
    g.first[g.n + 1] = g.first[g.n] + (unsigned)nb;
    g.n++;
  }
  if (!g.n) return WK_OK;
  kernel<<<g.first[g.n], 256, 0, wkc_stream()>>>(g);
  return wkc_check_launch(name);
}
wk_status wkc_rope_group(const wk_step *s, int n, void *const *slots) {
  return nn_group<RopeArgs>(s, n, slots, wkc_rope_args,
                            [](const RopeArgs &a) { return a.rows * (a.D / 2) != 0 ? rope_blocks(a) : (int64_t)0; },
                            k_rope_group, "rope (group)");
}
wk_status wkc_set_slice_group(const wk_step *s, int n, void *const *slots) {
  return nn_group<SetSliceArgs>(s, n, slots, set_slice_args,
                                [](const SetSliceArgs &a) { return a.outer * a.n * a.inner != 0 ? set_slice_blocks(a) : (int64_t)0; },
                                k_set_slice_group, "set_slice (group)");
}

// ---- embedding ----
struct EmbArgs {
  DOp tab, ids, dy;
  char *out;
  float *acc;
  int32_t out_dtype, pad;
  int64_t N, D, V;
  DevErr *err;
};

__global__ void k_embedding(const __grid_constant__ EmbArgs a) {
  int64_t n = a.N * a.D, ts0 = a.tab.stride[0], ts1 = a.tab.ndim > 1 ? a.tab.stride[1] : 0;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = e / a.D, d = e % a.D;
    int64_t id = ((const int32_t *)a.ids.p)[op_off(a.ids, j)];
    float v = 0.0f;
    if (id < 0 || id >= a.V) {
      if (d == 0) dev_error(a.err, WKC_ERR_EMBED_ID, id, j, a.V);
    } else {
      v = ldv(a.tab.p, a.tab.dtype, id * ts0 + d * ts1);
    }
    stv(a.out, a.out_dtype, e, v);
  }
}

// Scatter-add of dy rows into an f32 accumulator (ids out of range are skipped, as on the CPU).
__global__ void k_embedding_bwd(const __grid_constant__ EmbArgs a) {
  int64_t n = a.N * a.D, l = last_stride(a.dy);
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = e / a.D, d = e % a.D;
    int64_t id = ((const int32_t *)a.ids.p)[op_off(a.ids, j)];
    if (id < 0 || id >= a.V) continue;
    atomicAdd(&a.acc[id * a.D + d], ldv(a.dy.p, a.dy.dtype, row_off(a.dy, j) + d * l));
  }
}

__global__ void k_convert(const float *src, char *dst, int dt, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    stv(dst, dt, i, src[i]);
}

wk_status wkc_embedding(const wk_step *s, void *const *slots) {
  EmbArgs a;
  memset(&a, 0, sizeof a);
  a.tab = wkc_dop(&s->in[0], slots);
  a.ids = wkc_dop(&s->in[1], slots);
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  a.V = s->in[0].shape[0];
  a.D = s->in[0].shape[1];
  a.N = wkc_numel(&s->in[1]);
  a.err = wkc_dev_err();
  if (!a.N || !a.D) return WK_OK;
  wkc_arm_dev_err();
  int64_t n = a.N * a.D;
  k_embedding<<<wkc_capped((n + 255) / 256, (int64_t)wkc_num_sms() * 32), 256, 0, wkc_stream()>>>(a);
  return wkc_check_launch("embedding");
}

wk_status wkc_embedding_bwd(const wk_step *s, void *const *slots) {
  EmbArgs a;
  memset(&a, 0, sizeof a);
  a.ids = wkc_dop(&s->in[0], slots);
  a.dy = wkc_dop(&s->in[1], slots);
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  a.V = s->out.shape[0];
  a.D = s->out.shape[1];
  a.N = wkc_numel(&s->in[0]);
  int64_t vd = a.V * a.D;
  if (!vd) return WK_OK;
  bool f32 = s->out.dtype == WK_F32;
  a.acc = f32 ? (float *)a.out : (float *)wkc_tmp_alloc((size_t)vd * sizeof(float));
  if (!a.acc) return wk_error(WK_ERR_OOM, "embedding (backward): out of device memory");
  cudaMemsetAsync(a.acc, 0, (size_t)vd * sizeof(float), wkc_stream());
  int64_t n = a.N * a.D;
  if (n) k_embedding_bwd<<<wkc_capped((n + 255) / 256, (int64_t)wkc_num_sms() * 32), 256, 0, wkc_stream()>>>(a);
  if (!f32) k_convert<<<wkc_capped((vd + 255) / 256, (int64_t)wkc_num_sms() * 32), 256, 0, wkc_stream()>>>(a.acc, a.out, a.out_dtype, vd);
  wk_status st = wkc_check_launch("embedding (backward)");
  if (!f32) wkc_tmp_free(a.acc);
  return st;
}

// ---- SDPA forward, one block per (b, h, t), keys in tiles of blockDim.x: attn.cu's
// tiled kernels run every head dim up to 128 and leave the larger ones to this ----
#define SDPA_THREADS 128
#define SDPA_MAXD 512
struct SdpaArgs {
  DOp q, k, v;
  const char *mask;
  int32_t mask_dtype, has_mask, causal, pad;
  const int32_t *kv_len;   // keys that exist (a preallocated cache), or NULL: all S
  int64_t ms[4];
  int64_t B, Hq, Hkv, T, S, D, G;
  float scale;
  char *out;
  int32_t out_dtype;
};

__global__ void __launch_bounds__(SDPA_THREADS) k_sdpa(const __grid_constant__ SdpaArgs a) {
  extern __shared__ float sm[];
  float *qs = sm, *ps = sm + a.D;
  __shared__ float red[32];
  constexpr int PER = SDPA_MAXD / SDPA_THREADS;
  for (int64_t item = blockIdx.x; item < a.B * a.Hq * a.T; item += gridDim.x) {
    int64_t t = item % a.T, h = (item / a.T) % a.Hq, b = item / (a.T * a.Hq), hk = h / a.G;
    const int64_t qo = b * a.q.stride[0] + h * a.q.stride[1] + t * a.q.stride[2];
    const int64_t ko = b * a.k.stride[0] + hk * a.k.stride[1], vo = b * a.v.stride[0] + hk * a.v.stride[1];
    for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) qs[d] = ldv(a.q.p, a.q.dtype, qo + d * a.q.stride[3]) * a.scale;
    float o[PER];
#pragma unroll
    for (int c = 0; c < PER; c++) o[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int64_t S = a.S;
    if (a.kv_len) S = *a.kv_len < 0 ? 0 : *a.kv_len < a.S ? *a.kv_len : a.S;
    int64_t lim = t + S - a.T; // causal: keys <= lim are visible
    int64_t kend = a.causal ? (lim + 1 < S ? lim + 1 : S) : S;
    __syncthreads();
    for (int64_t s0 = 0; s0 < kend; s0 += blockDim.x) {
      int64_t j = s0 + threadIdx.x;
      float sc = -INFINITY;
      if (j < kend) {
        float acc = 0.0f;
        const int64_t kr = ko + j * a.k.stride[2];
        for (int64_t d = 0; d < a.D; d++) acc += qs[d] * ldv(a.k.p, a.k.dtype, kr + d * a.k.stride[3]);
        if (a.has_mask) acc += ldv(a.mask, a.mask_dtype, b * a.ms[0] + h * a.ms[1] + t * a.ms[2] + j * a.ms[3]);
        sc = acc;
      }
      float bm = block_max(sc, red);
      if (!(bm > -INFINITY)) { __syncthreads(); continue; } // the whole tile is masked
      if (bm > m) {
        float al = expz(m - bm);
        l *= al;
#pragma unroll
        for (int c = 0; c < PER; c++) o[c] *= al;
        m = bm;
      }
      float p = j < kend ? expf(sc - m) : 0.0f;
      ps[threadIdx.x] = p;
      l += block_sum(p, red);
      int64_t n = kend - s0 < (int64_t)blockDim.x ? kend - s0 : blockDim.x;
#pragma unroll
      for (int c = 0; c < PER; c++) {
        int64_t d = threadIdx.x + (int64_t)c * blockDim.x;
        if (d < a.D) {
          float acc = o[c];
          for (int64_t jj = 0; jj < n; jj++) acc += ps[jj] * ldv(a.v.p, a.v.dtype, vo + (s0 + jj) * a.v.stride[2] + d * a.v.stride[3]);
          o[c] = acc;
        }
      }
      __syncthreads();
    }
    float inv = l == 0.0f ? 0.0f : 1.0f / l;   // no key: 0 (NaN stays NaN)
    int64_t r = (b * a.Hq + h) * a.T + t;
#pragma unroll
    for (int c = 0; c < PER; c++) {
      int64_t d = threadIdx.x + (int64_t)c * blockDim.x;
      if (d < a.D) stv(a.out, a.out_dtype, r * a.D + d, o[c] * inv);
    }
    __syncthreads();
  }
}

wk_status wkc_sdpa_rows(const wk_step *s, void *const *slots) {
  const wk_operand *q = &s->in[0], *k = &s->in[1];
  SdpaArgs a;
  memset(&a, 0, sizeof a);
  a.q = wkc_dop(q, slots);
  a.k = wkc_dop(k, slots);
  a.v = wkc_dop(&s->in[2], slots);
  a.B = q->shape[0];
  a.Hq = q->shape[1];
  a.Hkv = k->shape[1];
  a.T = q->shape[2];
  a.S = k->shape[2];
  a.D = q->shape[3];
  a.G = a.Hq / (a.Hkv ? a.Hkv : 1);
  a.scale = s->attrs.f[0];
  a.causal = s->attrs.i[0] != 0;
  a.out = wkc_ptr(&s->out, slots);
  a.out_dtype = s->out.dtype;
  if (a.D > SDPA_MAXD) return wk_error(WK_ERR_SHAPE, "sdpa: head dimension %lld is above the CUDA kernel's %d", (long long)a.D, SDPA_MAXD);
  int nin = s->nin;
  if (s->attrs.i[1]) a.kv_len = (const int32_t *)wkc_ptr(&s->in[--nin], slots);
  if (k->dtype == WK_Q8_0)
    return wk_error(WK_ERR_DTYPE, "sdpa: q8_0 keys and values have no CUDA kernel (use an f16 or bf16 cache on CUDA)");
  if (nin > 3) {
    const wk_operand *mk = &s->in[3];
    a.has_mask = 1;
    a.mask = (const char *)slots[mk->slot] + mk->offset * (int64_t)wkc_esize(mk->dtype);
    a.mask_dtype = mk->dtype;
    for (int d = 0; d < mk->ndim; d++) a.ms[4 - mk->ndim + d] = mk->shape[d] == 1 ? 0 : mk->stride[d];
  }
  int64_t items = a.B * a.Hq * a.T;
  if (!items || !a.D) return WK_OK;
  size_t smem = ((size_t)a.D + SDPA_THREADS) * sizeof(float);
  k_sdpa<<<wkc_capped(items, (int64_t)1 << 30), SDPA_THREADS, smem, wkc_stream()>>>(a);
  return wkc_check_launch("sdpa");
}
