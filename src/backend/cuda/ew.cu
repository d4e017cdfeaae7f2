// Fused elementwise groups, reductions (with prologues), argmax, concat, pad.
// The elementwise kernel interprets the group's register program per element:
// one pass over memory whatever the chain length. Operands are strided views in
// any dtype; axes that every operand walks contiguously are merged on the host so
// that most groups index with one division or none. Large groups run a kernel
// generated for their program instead (ew_gen.cu); the interpreter is the fallback
// and the reference.
#include "cuda_internal.h"
#include "ew_gen.h"

// Merges axes that every operand (and the contiguous output) walks alike; drops
// size-1 axes. All operands share the group shape.
static void collapse(wk_operand *ops, int nops, int *ndim, int64_t *shape) {
  int nd = 0;
  int64_t sh[WK_MAX_DIMS], st[WK_MAX_IN][WK_MAX_DIMS];
  for (int d = 0; d < *ndim; d++) {
    if (shape[d] == 1) continue;
    bool merge = nd > 0;
    for (int k = 0; k < nops && merge; k++)
      if (st[k][nd - 1] != ops[k].stride[d] * shape[d]) merge = false;
    if (merge) {
      sh[nd - 1] *= shape[d];
      for (int k = 0; k < nops; k++) st[k][nd - 1] = ops[k].stride[d];
    } else {
      sh[nd] = shape[d];
      for (int k = 0; k < nops; k++) st[k][nd] = ops[k].stride[d];
      nd++;
    }
  }
  *ndim = nd;
  for (int d = 0; d < nd; d++) shape[d] = sh[d];
  for (int k = 0; k < nops; k++) {
    ops[k].ndim = nd;
    for (int d = 0; d < nd; d++) { ops[k].shape[d] = sh[d]; ops[k].stride[d] = st[k][d]; }
  }
}

static size_t pool_cap(size_t used) { return (WKC_BLOB_LARGE - used) / sizeof(DInstr); }

// ---- elementwise ----
struct EwHdr {
  int64_t n;
  char *out;
  int32_t out_dtype, pad;
  DProg prog;
};

// Each thread runs the program on V consecutive elements: dense f32 / bf16
// operands load and store as one vector; V = 4 needs at most 16 registers.
template <int CAP, int V, int NR>
__global__ void __launch_bounds__(256) k_ew(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  const EwHdr &h = *(const EwHdr *)blob.b;
  const DInstr *code = (const DInstr *)(blob.b + sizeof(EwHdr)) + h.prog.code_off;
  const int64_t step = (int64_t)gridDim.x * blockDim.x, groups = (h.n + V - 1) / V;
  const float zero[V] = {};
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += step) {
    const int64_t i0 = g * V;
    const bool full = i0 + V <= h.n;
    auto load = [&](int k, float *t) {
      const DOp &o = h.prog.ops[k];
      if (V == 4 && full && (o.flags & DOP_DENSE)) {
        if (o.dtype == WK_F32 && !((uintptr_t)o.p & 15)) {
          float4 q = *(const float4 *)(o.p + i0 * 4);
          t[0] = q.x; t[1] = q.y; t[2 % V] = q.z; t[3 % V] = q.w;
          return;
        }
        if (o.dtype == WK_BF16 && !((uintptr_t)o.p & 7)) {
          uint2 q = *(const uint2 *)(o.p + i0 * 2);
          t[0] = bits2f(q.x << 16); t[1 % V] = bits2f(q.x & 0xffff0000u);
          t[2 % V] = bits2f(q.y << 16); t[3 % V] = bits2f(q.y & 0xffff0000u);
          return;
        }
      }
#pragma unroll
      for (int v = 0; v < V; v++) t[v] = i0 + v < h.n ? ldv(o.p, o.dtype, op_off(o, i0 + v)) : 0.0f;
    };
    float out[V];
    ew_run<V, NR>(code, h.prog.n, h.prog.out_reg, i0, zero, load, out);
    if (V == 4 && full && h.out_dtype == WK_F32 && !((uintptr_t)h.out & 15)) {
      *(float4 *)(h.out + i0 * 4) = make_float4(out[0], out[1 % V], out[2 % V], out[3 % V]);
    } else if (V == 4 && full && h.out_dtype == WK_BF16 && !((uintptr_t)h.out & 7)) {
      uint2 q;
      q.x = (uint32_t)wkm_f32_to_bf16(out[0]) | (uint32_t)wkm_f32_to_bf16(out[1 % V]) << 16;
      q.y = (uint32_t)wkm_f32_to_bf16(out[2 % V]) | (uint32_t)wkm_f32_to_bf16(out[3 % V]) << 16;
      *(uint2 *)(h.out + i0 * 2) = q;
    } else {
#pragma unroll
      for (int v = 0; v < V; v++)
        if (i0 + v < h.n) stv(h.out, h.out_dtype, i0 + v, out[v]);
    }
  }
}

static int grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads, cap = (int64_t)wkc_num_sms() * 32;
  return (int)(g < 1 ? 1 : g > cap ? cap : g);
}

static wk_status ew_launch(const wk_ew_prog *pg, const wk_operand *in, int nops, void *const *slots, int ndim,
                           const int64_t *shape, char *out, int out_dtype, const char *name) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  if (n == 0) return WK_OK;
  wk_operand ops[WK_MAX_IN];
  memcpy(ops, in, sizeof(wk_operand) * (size_t)nops);
  int nd = ndim;
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, shape, sizeof(int64_t) * (size_t)ndim);
  collapse(ops, nops, &nd, sh);
  wk_status gst;  // a kernel generated for this program (ew_gen.cu), where there is one
  if (wkc_ew_gen(pg, ops, nops, slots, nd, sh, n, out, out_dtype, &gst)) return gst ? gst : wkc_check_launch(name);
  unsigned char *buf = wkc_blob_buf();
  EwHdr *h = (EwHdr *)buf;
  memset(h, 0, sizeof *h);
  h->n = n;
  h->out = out;
  h->out_dtype = out_dtype;
  int ncode = 0;
  DInstr *pool = (DInstr *)(buf + sizeof(EwHdr));
  if (!wkc_prog(pg, ops, nops, slots, &h->prog, pool, &ncode, (int)pool_cap(sizeof(EwHdr))))
    return wk_error(WK_ERR_STATE, "cuda: elementwise program of %d instructions is too long", pg->n);
  size_t size = sizeof(EwHdr) + (size_t)ncode * sizeof(DInstr);
  bool small = size <= WKC_BLOB_SMALL;
  cudaStream_t st = wkc_stream();
  if (pg->nregs <= 16) {
    int grid = grid_for((n + 3) / 4, 256);
    if (small) k_ew<WKC_BLOB_SMALL, 4, 16><<<grid, 256, 0, st>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
    else k_ew<WKC_BLOB_LARGE, 4, 16><<<grid, 256, 0, st>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
  } else {
    int grid = grid_for(n, 256);
    if (small) k_ew<WKC_BLOB_SMALL, 1, WK_EW_MAX_REGS><<<grid, 256, 0, st>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
    else k_ew<WKC_BLOB_LARGE, 1, WK_EW_MAX_REGS><<<grid, 256, 0, st>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
  }
  return wkc_check_launch(name);
}

wk_status wkc_ew(const wk_step *s, void *const *slots) {
  char *out = (char *)slots[s->out.slot] + s->out.offset * (int64_t)wkc_esize(s->out.dtype);
  return ew_launch(&s->prog, s->in, s->nin, slots, s->out.ndim, s->out.shape, out, s->out.dtype, "fused elementwise");
}

wk_status wkc_densify(const wk_operand *o, void *const *slots, wk_dtype dt, void *dst) {
  wk_ew_instr code[1];
  memset(code, 0, sizeof code);
  code[0].op = WK_EW_LOAD;
  code[0].src = -1;
  wk_ew_prog pg = {1, 1, 0, code};
  return ew_launch(&pg, o, 1, slots, o->ndim, o->shape, (char *)dst, dt, "copy (densify)");
}

// ---- reductions: input seen as (outer O, reduced R, inner I) ----
struct SrcHdr {      // input 0: an operand, or a prologue program over its shape
  int32_t has_pro, pad;
  DOp in0;
  DProg prog;
};

static __device__ __forceinline__ float src_value(const SrcHdr &s, const DInstr *pool, int64_t L) {
  if (!s.has_pro) return ldv(s.in0.p, s.in0.dtype, op_off(s.in0, L));
  auto load = [&](int k) {
    const DOp &o = s.prog.ops[k];
    return ldv(o.p, o.dtype, op_off(o, L));
  };
  return ew_exec(pool + s.prog.code_off, s.prog.n, s.prog.out_reg, L, 0.0f, load);
}

// Fills a SrcHdr for input 0 of s (flat indexing over in[0]'s shape); false if too long.
static bool src_fill(const wk_step *s, const wk_operand *in0, void *const *slots, SrcHdr *h, DInstr *pool, int *ncode,
                     int cap) {
  memset(h, 0, sizeof *h);
  int nd = in0->ndim;
  int64_t sh[WK_MAX_DIMS];
  memcpy(sh, in0->shape, sizeof sh);
  if (s->prog.n) {
    wk_operand ops[WK_MAX_IN];
    memcpy(ops, s->pro_in, sizeof(wk_operand) * (size_t)s->npro);
    collapse(ops, s->npro, &nd, sh);
    h->has_pro = 1;
    return wkc_prog(&s->prog, ops, s->npro, slots, &h->prog, pool, ncode, cap);
  }
  wk_operand o = *in0;
  collapse(&o, 1, &nd, sh);
  h->in0 = wkc_dop(&o, slots);
  return true;
}

// Reduces (O, R, I) into out (O, S, I): slice s of output (o, i) combines rows
// r = s, s + S, ... (in steps of the block's row lanes). S == 1 is the plain
// one-stage reduction; S > 1 writes f32 partials that a second launch (S == 1,
// over the partials as (O, S, I)) combines in a fixed order: deterministic.
struct RedHdr {
  int64_t O, R, I, S;
  int32_t is_max, out_dtype;
  char *out;
  SrcHdr src;
};

static __device__ __forceinline__ float combine(float acc, float v, bool is_max) {
  return is_max ? (v > acc || v != v ? v : acc) : acc + v;
}

template <int CAP>
__global__ void __launch_bounds__(256) k_reduce_rows(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  const RedHdr &h = *(const RedHdr *)blob.b;
  const DInstr *pool = (const DInstr *)(blob.b + sizeof(RedHdr));
  __shared__ float red[32];
  const bool mx = h.is_max;
  const int64_t S = h.S, units = h.O * S, step = S * blockDim.x;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    int64_t o = u / S, s = u - o * S;
    float acc = mx ? -INFINITY : 0.0f;
    for (int64_t r = s * blockDim.x + threadIdx.x; r < h.R; r += step)
      acc = combine(acc, src_value(h.src, pool, o * h.R + r), mx);
    acc = mx ? block_max(acc, red) : block_sum(acc, red);
    if (threadIdx.x == 0) stv(h.out, h.out_dtype, u, acc);
  }
}

template <int CAP>
__global__ void __launch_bounds__(256) k_reduce_cols(const __grid_constant__ Blob<CAP> blob) {
  const RedHdr &h = *(const RedHdr *)blob.b;
  const DInstr *pool = (const DInstr *)(blob.b + sizeof(RedHdr));
  __shared__ float part[8][33];
  const bool mx = h.is_max;
  const int64_t S = h.S, chunks = (h.I + 31) / 32, tiles = h.O * S * chunks, step = S * blockDim.y;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    int64_t u = t / chunks, o = u / S, s = u - o * S, i = (t % chunks) * 32 + threadIdx.x;
    float acc = mx ? -INFINITY : 0.0f;
    if (i < h.I)
      for (int64_t r = s * blockDim.y + threadIdx.y; r < h.R; r += step)
        acc = combine(acc, src_value(h.src, pool, (o * h.R + r) * h.I + i), mx);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < h.I) {
      float v = part[0][threadIdx.x];
      for (int y = 1; y < (int)blockDim.y; y++) v = combine(v, part[y][threadIdx.x], mx);
      stv(h.out, h.out_dtype, u * h.I + i, v);
    }
    __syncthreads();
  }
}


wk_status wkc_reduce(const wk_step *s, void *const *slots) {
  bool is_max = s->op == WK_OP_MAX;
  wk_operand in0 = s->in[0];
  uint32_t axes = s->attrs.axes;
  int64_t O, R, I;
  if (!wk_reduce_split(&in0, axes, &O, &R, &I)) {
    // scattered axes: a permuted view with the reduced axes last (no prologue here)
    if (s->prog.n) return wk_error(WK_ERR_STATE, "reduce: prologue with scattered axes");
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
      for (int d = 0; d < s->in[0].ndim; d++)
        if (((axes >> d) & 1) == (unsigned)pass) {
          in0.shape[k] = s->in[0].shape[d];
          in0.stride[k] = s->in[0].stride[d];
          k++;
        }
    int kept = 0;
    for (int d = 0; d < s->in[0].ndim; d++) kept += !((axes >> d) & 1);
    axes = ~((1u << kept) - 1) & ((1u << s->in[0].ndim) - 1);
    wk_reduce_split(&in0, axes, &O, &R, &I);
  }
  if (O * I == 0) return WK_OK;
  unsigned char *buf = wkc_blob_buf();
  RedHdr *h = (RedHdr *)buf;
  memset(h, 0, sizeof *h);
  h->O = O;
  h->R = R;
  h->I = I;
  h->is_max = is_max;
  h->out_dtype = s->out.dtype;
  h->out = (char *)slots[s->out.slot] + s->out.offset * (int64_t)wkc_esize(s->out.dtype);
  int ncode = 0;
  DInstr *pool = (DInstr *)(buf + sizeof(RedHdr));
  if (!src_fill(s, &in0, slots, &h->src, pool, &ncode, (int)pool_cap(sizeof(RedHdr))))
    return wk_error(WK_ERR_STATE, "cuda: reduction prologue too long");
  size_t size = sizeof(RedHdr) + (size_t)ncode * sizeof(DInstr);
  int64_t cap = (int64_t)wkc_num_sms() * 16;
  // Few outputs, long rows: split each output's rows into S slices (stage 1,
  // f32 partials in scratch), then combine the partials in a fixed order.
  int64_t units = I == 1 ? O : O * ((I + 31) / 32), target = (int64_t)wkc_num_sms() * 8;
  // rows per slice: each thread loads >= 4 values (a decode step's 151,936 logits: 148
  // slices; 37 slices of 16 values a thread took 2 x 9.3 us a reduction on an H200)
  int64_t min_rows = I == 1 ? 1024 : 128;
  int64_t S = units < target ? target / units : 1, smax = R / min_rows;
  if (S > smax) S = smax;
  if (S > 4096) S = 4096;
  void *part = NULL;
  if (S >= 2) {
    if (!(part = wkc_tmp_alloc((size_t)(O * S * I) * sizeof(float))))
      return wk_error(WK_ERR_OOM, "%s: out of device memory for partials", is_max ? "max" : "sum");
    h->S = S;
    h->out_dtype = WK_F32;
    h->out = (char *)part;
  } else {
    h->S = 1;
  }
  for (int stage = 0; stage < 2; stage++) {
    if (stage == 1) {
      if (!part) break;
      // stage 2: the partials as a dense (O, S, I) f32 input, reduced over S
      memset(h, 0, sizeof *h);
      h->O = O;
      h->R = S;
      h->I = I;
      h->S = 1;
      h->is_max = is_max;
      h->out_dtype = s->out.dtype;
      h->out = (char *)slots[s->out.slot] + s->out.offset * (int64_t)wkc_esize(s->out.dtype);
      wk_operand po;
      memset(&po, 0, sizeof po);
      po.dtype = WK_F32;
      po.ndim = 1;
      po.shape[0] = O * S * I;
      po.stride[0] = 1;
      void *pslot[1] = {part};
      h->src.in0 = wkc_dop(&po, pslot);
      size = sizeof(RedHdr);
    }
    int64_t n = h->S * (I == 1 ? O : O * ((I + 31) / 32));
    int g = (int)(n < cap ? n : cap);
    if (I == 1) WKC_LAUNCH_BLOB(k_reduce_rows, g, 256, 0, size, buf);
    else WKC_LAUNCH_BLOB(k_reduce_cols, g, dim3(32, 8), 0, size, buf);
  }
  if (part) wkc_tmp_free(part);
  return wkc_check_launch(is_max ? "max" : "sum");
}

// ---- argmax: first index of the maximum; a NaN wins (the first one) ----
struct ArgHdr {
  int64_t O, R, I;
  char *out;
  int32_t out_dtype, pad;
  SrcHdr src;
};

static __device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  bool vn = v != v, bn = bv != bv;
  if (vn != bn) return vn;
  if (vn) return i < bi;
  return v > bv || (v == bv && i < bi);
}

template <int CAP>
__global__ void __launch_bounds__(256) k_argmax(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  const ArgHdr &h = *(const ArgHdr *)blob.b;
  const DInstr *pool = (const DInstr *)(blob.b + sizeof(ArgHdr));
  __shared__ float sv[256];
  __shared__ int64_t si[256];
  for (int64_t t = blockIdx.x; t < h.O * h.I; t += gridDim.x) {
    int64_t o = t / h.I, i = t % h.I;
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t r = threadIdx.x; r < h.R; r += blockDim.x) {
      float v = src_value(h.src, pool, (o * h.R + r) * h.I + i);
      if (better(v, r, bv, bi)) { bv = v; bi = r; }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
      if ((int)threadIdx.x < w && better(sv[threadIdx.x + w], si[threadIdx.x + w], sv[threadIdx.x], si[threadIdx.x])) {
        sv[threadIdx.x] = sv[threadIdx.x + w];
        si[threadIdx.x] = si[threadIdx.x + w];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      int64_t b = si[0] == INT64_MAX ? 0 : si[0];
      if (h.out_dtype == WK_I32) ((int32_t *)h.out)[t] = (int32_t)b;
      else stv(h.out, h.out_dtype, t, (float)b);
    }
    __syncthreads();
  }
}

wk_status wkc_argmax(const wk_step *s, void *const *slots) {
  int ax = (int)s->attrs.i[0];
  const wk_operand *in = &s->in[0];
  int64_t O = 1, R = in->shape[ax], I = 1;
  for (int d = 0; d < ax; d++) O *= in->shape[d];
  for (int d = ax + 1; d < in->ndim; d++) I *= in->shape[d];
  if (O * I == 0) return WK_OK;
  unsigned char *buf = wkc_blob_buf();
  ArgHdr *h = (ArgHdr *)buf;
  memset(h, 0, sizeof *h);
  h->O = O;
  h->R = R;
  h->I = I;
  h->out_dtype = s->out.dtype;
  h->out = (char *)slots[s->out.slot] + s->out.offset * (int64_t)wkc_esize(s->out.dtype);
  int ncode = 0;
  DInstr *pool = (DInstr *)(buf + sizeof(ArgHdr));
  if (!src_fill(s, in, slots, &h->src, pool, &ncode, (int)pool_cap(sizeof(ArgHdr))))
    return wk_error(WK_ERR_STATE, "cuda: argmax prologue too long");
  size_t size = sizeof(ArgHdr) + (size_t)ncode * sizeof(DInstr);
  int64_t cap = (int64_t)wkc_num_sms() * 16;
  WKC_LAUNCH_BLOB(k_argmax, (int)(O * I < cap ? O * I : cap), 256, 0, size, buf);
  return wkc_check_launch("argmax");
}

// ---- concat and pad: strided copies that keep the dtype ----
struct CopyArgs {
  DOp in;
  char *out;
  int64_t ostride[WK_MAX_DIMS];
  int64_t n;
  int32_t es, ax;
  int64_t before;      // pad: elements before the interior along ax
  float fill;
  int32_t out_dtype, out_ndim;
  int64_t oshape[WK_MAX_DIMS];
};

static __device__ __forceinline__ void copy_elem(char *dst, const char *src, int es) {
  if (es == 4) *(uint32_t *)dst = *(const uint32_t *)src;
  else *(uint16_t *)dst = *(const uint16_t *)src;
}

// Copies every element of in to out at (its index) * ostride.
__global__ void k_copy_into(const __grid_constant__ CopyArgs a) {
  wkc_pdl_trigger();
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i, so = 0, doff = 0;
    for (int d = a.in.ndim - 1; d >= 0; d--) {
      int64_t n = a.in.shape[d], k = r % n;
      r /= n;
      so += k * a.in.stride[d];
      doff += k * a.ostride[d];
    }
    copy_elem(a.out + doff * a.es, a.in.p + so * a.es, a.es);
  }
}

// Every output element: the interior copied from in, the rest the fill value.
__global__ void k_pad(const __grid_constant__ CopyArgs a) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i, so = 0;
    bool inside = true;
    for (int d = a.out_ndim - 1; d >= 0; d--) {
      int64_t n = a.oshape[d], k = r % n;
      r /= n;
      if (d == a.ax) {
        k -= a.before;
        if (k < 0 || k >= a.in.shape[d]) inside = false;
      }
      so += k * a.in.stride[d];
    }
    if (inside) copy_elem(a.out + i * a.es, a.in.p + so * a.es, a.es);
    else stv(a.out, a.out_dtype, i, a.fill);
  }
}

wk_status wkc_concat(const wk_step *s, void *const *slots) {
  int ax = (int)s->attrs.i[0];
  const wk_operand *out = &s->out;
  size_t es = wkc_esize(out->dtype);
  int64_t ostride[WK_MAX_DIMS], start = 0;
  wk_contiguous_strides(out->ndim, out->shape, ostride);
  char *base = (char *)slots[out->slot] + out->offset * (int64_t)es;
  for (int k = 0; k < s->nin; k++) {
    const wk_operand *in = &s->in[k];
    CopyArgs a;
    memset(&a, 0, sizeof a);
    a.in = wkc_dop(in, slots);
    a.out = base + start * ostride[ax] * (int64_t)es;
    memcpy(a.ostride, ostride, sizeof ostride);
    a.n = wkc_numel(in);
    a.es = (int32_t)es;
    start += in->shape[ax];
    if (!a.n) continue;
    k_copy_into<<<grid_for(a.n, 256), 256, 0, wkc_stream()>>>(a);
    wk_status st = wkc_check_launch("concat");
    if (st) return st;
  }
  return WK_OK;
}

wk_status wkc_pad(const wk_step *s, void *const *slots) {
  const wk_operand *out = &s->out, *in = &s->in[0];
  CopyArgs a;
  memset(&a, 0, sizeof a);
  a.in = wkc_dop(in, slots);
  size_t es = wkc_esize(out->dtype);
  a.out = (char *)slots[out->slot] + out->offset * (int64_t)es;
  a.n = wkc_numel(out);
  a.es = (int32_t)es;
  a.ax = (int32_t)s->attrs.i[0];
  a.before = s->attrs.i[1];
  a.fill = s->attrs.f[0];
  a.out_dtype = out->dtype;
  a.out_ndim = out->ndim;
  memcpy(a.oshape, out->shape, sizeof a.oshape);
  if (!a.n) return WK_OK;
  k_pad<<<grid_for(a.n, 256), 256, 0, wkc_stream()>>>(a);
  return wkc_check_launch("pad");
}

// ---- horizontal groups: one launch for many tensors with the same program ----
// A FUSED_EW step with chain = n heads n consecutive steps (compile_schedule.c's
// horizontal_schedule): the same instructions over tensors of their own sizes,
// every operand dense in its step's output shape or a single value. One launch
// covers all of them: a table of (sizes, pointers, run-time scalars) per member,
// each block working on one chunk of one member. Each member keeps its own
// run-time scalars (by value, or inside a captured graph through the run's
// device table like any program: wkc_rt_scalars), so a group is exact even where
// they differ. The arithmetic is the interpreter's (ew_run), so results are those
// of one launch per step. Members of MT_SOLO elements or more run on their own
// (their launch is cheap next to their traffic, and a generated kernel may serve
// them); so does everything when a member does not fit the table's rules.
#define MT_CHUNK 4096          // elements per block
#define MT_MAX_RT 16           // run-time scalars per program
#define MT_MAX_CODE 128        // instructions per program (shared memory)
#define MT_SOLO (1 << 22)

struct alignas(16) MtHdr {   // a multiple of 16 bytes: the instructions follow it
  int32_t nmem, nops, ncode, out_reg, out_dtype, nrt, stride, pad;
  int32_t op_dtype[WK_MAX_IN];
  int32_t scalar_mask;         // operand k is a single value
  int32_t rt_at[MT_MAX_RT];    // instruction index of each run-time scalar
};
struct alignas(8) MtMem {      // followed by ops[nops] pointers, then DRt rt[nrt]
  int64_t n, block0;           // elements; first block of this member
  char *out;
  uint64_t rt_ptr;             // bit r: rt[r].u is a pointer to the scalars (captured)
};

template <int CAP, int V, int NR>
__global__ void __launch_bounds__(256) k_ew_multi(const __grid_constant__ Blob<CAP> blob) {
  wkc_pdl_trigger();
  const MtHdr &h = *(const MtHdr *)blob.b;
  const DInstr *code0 = (const DInstr *)(blob.b + sizeof(MtHdr));
  const unsigned char *mems = blob.b + sizeof(MtHdr) + sizeof(DInstr) * (size_t)h.ncode;
  // the member this block works on: the last whose first block is <= blockIdx.x
  int lo = 0, hi = h.nmem - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (((const MtMem *)(mems + (size_t)mid * h.stride))->block0 <= (int64_t)blockIdx.x) lo = mid;
    else hi = mid - 1;
  }
  const MtMem &m = *(const MtMem *)(mems + (size_t)lo * h.stride);
  const char *const *ops = (const char *const *)(&m + 1);
  const DRt *rt = (const DRt *)(ops + h.nops);
  __shared__ DInstr code[MT_MAX_CODE];
  for (int q = threadIdx.x; q < h.ncode; q += blockDim.x) code[q] = code0[q];
  __syncthreads();
  if (threadIdx.x < h.nrt) {
    DInstr &in = code[h.rt_at[threadIdx.x]];
    const DRt r = rt[threadIdx.x];
    in.rt = (uint8_t)((m.rt_ptr >> threadIdx.x) & 1);
    in.f0 = r.f0;
    in.f1 = r.f1;
    in.u = r.u;
  }
  __syncthreads();
  const int64_t n = m.n, c0 = ((int64_t)blockIdx.x - m.block0) * MT_CHUNK;
  const int64_t c1 = c0 + MT_CHUNK < n ? c0 + MT_CHUNK : n;
  const float zero[V] = {};
  for (int64_t i0 = c0 + (int64_t)threadIdx.x * V; i0 < c1; i0 += (int64_t)blockDim.x * V) {
    const bool full = i0 + V <= c1;
    auto load = [&](int k, float *t) {
      const char *p = ops[k];
      const int dt = h.op_dtype[k];
      if ((h.scalar_mask >> k) & 1) {
        const float v0 = ldv(p, dt, 0);
#pragma unroll
        for (int v = 0; v < V; v++) t[v] = v0;
        return;
      }
      if (V == 4 && full && dt == WK_F32 && !((uintptr_t)p & 15)) {
        float4 q = *(const float4 *)(p + i0 * 4);
        t[0] = q.x; t[1 % V] = q.y; t[2 % V] = q.z; t[3 % V] = q.w;
        return;
      }
#pragma unroll
      for (int v = 0; v < V; v++) t[v] = i0 + v < c1 ? ldv(p, dt, i0 + v) : 0.0f;
    };
    float out[V];
    ew_run<V, NR>(code, h.ncode, h.out_reg, i0, zero, load, out);
    if (V == 4 && full && h.out_dtype == WK_F32 && !((uintptr_t)m.out & 15)) {
      *(float4 *)(m.out + i0 * 4) = make_float4(out[0], out[1 % V], out[2 % V], out[3 % V]);
    } else {
#pragma unroll
      for (int v = 0; v < V; v++)
        if (i0 + v < c1) stv(m.out, h.out_dtype, i0 + v, out[v]);
    }
  }
}


// Whether member s can share head h's launch (the planner's rules, checked again:
// the attributes that are not run-time scalars must be the head's).
static bool mt_member_ok(const wk_step *h, const wk_step *s) {
  if (s->op != WK_STEP_FUSED_EW || s->prog.n != h->prog.n || s->nin != h->nin || s->out.dtype != h->out.dtype ||
      s->prog.out_reg != h->prog.out_reg || wk_operand_form(&s->out) != WK_FORM_DENSE || s->out.offset != 0)
    return false;
  for (int k = 0; k < s->nin; k++)
    if (s->in[k].dtype != h->in[k].dtype || !wk_operand_form(&s->in[k]) || wk_operand_form(&s->in[k]) != wk_operand_form(&h->in[k])) return false;
  if (wkc_numel(&s->out) < 2 || wkc_numel(&h->out) < 2) return false;   // (the planner groups none)
  for (int q = 0; q < s->prog.n; q++) {
    const wk_ew_instr *a = &h->prog.code[q], *b = &s->prog.code[q];
    if (a->op != b->op || a->dst != b->dst || a->a != b->a || a->b != b->b || a->c != b->c) return false;
    if (a->op == WK_EW_LOAD_ROW || wkc_rt_reads(a) != wkc_rt_reads(b)) return false;
    if (!wkc_rt_reads(a) && memcmp(&a->attrs, &b->attrs, sizeof a->attrs)) return false;
  }
  return true;
}

static wk_status mt_launch(unsigned char *buf, size_t size, int64_t blocks, int nregs) {
  cudaStream_t st = wkc_stream();
  bool small = size <= WKC_BLOB_SMALL;
  if (nregs <= 16) {
    if (small) k_ew_multi<WKC_BLOB_SMALL, 4, 16><<<(unsigned)blocks, 256, 0, st>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
    else k_ew_multi<WKC_BLOB_LARGE, 4, 16><<<(unsigned)blocks, 256, 0, st>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
  } else {
    if (small) k_ew_multi<WKC_BLOB_SMALL, 1, WK_EW_MAX_REGS><<<(unsigned)blocks, 256, 0, st>>>(*(const Blob<WKC_BLOB_SMALL> *)buf);
    else k_ew_multi<WKC_BLOB_LARGE, 1, WK_EW_MAX_REGS><<<(unsigned)blocks, 256, 0, st>>>(*(const Blob<WKC_BLOB_LARGE> *)buf);
  }
  return wkc_check_launch("fused elementwise group (horizontal)");
}

wk_status wkc_ew_group(const wk_step *s, int n, void *const *slots) {
  const wk_step *h = &s[0];
  bool ok = h->prog.n <= MT_MAX_CODE && h->nin <= WK_MAX_IN;
  int rt_at[MT_MAX_RT], nrt = 0;
  for (int q = 0; ok && q < h->prog.n; q++)
    if (wkc_rt_reads(&h->prog.code[q])) {
      if (nrt == MT_MAX_RT) ok = false;
      else rt_at[nrt++] = q;
    }
  for (int j = 0; ok && j < n; j++) ok = mt_member_ok(h, &s[j]);
  if (!ok) { // not a group this kernel takes: one launch per member
    for (int j = 0; j < n; j++) {
      wk_status st = wkc_ew(&s[j], slots);
      if (st) return st;
    }
    return WK_OK;
  }
  unsigned char *buf = wkc_blob_buf();
  MtHdr *hd = (MtHdr *)buf;
  memset(hd, 0, sizeof *hd);
  hd->nops = h->nin;
  hd->ncode = h->prog.n;
  hd->out_reg = h->prog.out_reg;
  hd->out_dtype = h->out.dtype;
  hd->nrt = nrt;
  hd->stride = (int32_t)(sizeof(MtMem) + sizeof(char *) * (size_t)h->nin + sizeof(DRt) * (size_t)nrt);
  for (int k = 0; k < h->nin; k++) {
    hd->op_dtype[k] = h->in[k].dtype;
    if (wk_operand_form(&h->in[k]) == WK_FORM_SCALAR) hd->scalar_mask |= 1 << k;
  }
  memcpy(hd->rt_at, rt_at, sizeof(int) * (size_t)nrt);
  DInstr *code = (DInstr *)(buf + sizeof(MtHdr));
  DProg scratch;   // wkc_prog's operand table is unused: members carry their pointers
  int ncode = 0;
  if (!wkc_prog(&h->prog, h->in, 0, slots, &scratch, code, &ncode, h->prog.n))
    return wk_error(WK_ERR_STATE, "cuda: elementwise group program of %d instructions", h->prog.n);
  for (int r = 0; r < nrt; r++) code[rt_at[r]].rt = 0;   // each member's scalars replace them
  const size_t base = sizeof(MtHdr) + sizeof(DInstr) * (size_t)ncode;
  int m = 0;
  int64_t blocks = 0;
  for (int j = 0; j <= n; j++) {
    bool last = j == n;
    const wk_step *ms = last ? NULL : &s[j];
    int64_t cnt = last ? 0 : wkc_numel(&ms->out);
    if (!last && cnt >= MT_SOLO) {  // large: on its own
      wk_status st = wkc_ew(ms, slots);
      if (st) return st;
      continue;
    }
    if (!last && cnt == 0) continue;
    // flush when the table is full (or at the end)
    if (m > 0 && (last || base + (size_t)(m + 1) * (size_t)hd->stride > WKC_BLOB_LARGE || blocks + (cnt + MT_CHUNK - 1) / MT_CHUNK > INT32_MAX)) {
      hd->nmem = m;
      wk_status st = mt_launch(buf, base + (size_t)m * (size_t)hd->stride, blocks, h->prog.nregs);
      if (st) return st;
      m = 0;
      blocks = 0;
    }
    if (last) break;
    MtMem *mm = (MtMem *)(buf + base + (size_t)m * (size_t)hd->stride);
    const char **ops = (const char **)(mm + 1);
    DRt *rt = (DRt *)(ops + h->nin);
    mm->n = cnt;
    mm->block0 = blocks;
    mm->out = (char *)slots[ms->out.slot] + ms->out.offset * (int64_t)wkc_esize(ms->out.dtype);
    mm->rt_ptr = 0;
    for (int k = 0; k < h->nin; k++)
      ops[k] = (const char *)slots[ms->in[k].slot] + ms->in[k].offset * (int64_t)wkc_esize(ms->in[k].dtype);
    for (int r = 0; r < nrt; r++) {
      const wk_ew_instr *in = &ms->prog.code[rt_at[r]];
      const DRt *dev = wkc_rt_scalars(in);
      if (dev) {
        mm->rt_ptr |= 1ull << r;
        rt[r] = DRt{0.0f, 0.0f, (uint64_t)(uintptr_t)dev};
      } else {
        rt[r] = DRt{in->attrs.f[0], in->attrs.f[1], in->attrs.u};
      }
    }
    blocks += (cnt + MT_CHUNK - 1) / MT_CHUNK;
    m++;
  }
  return WK_OK;
}
