// Matmul with a block-quantized (or f16/bf16) weight W [N, K] (GGUF layout: each row
// is K/block blocks), and the dequantize op. W is never expanded whole:
//   decode (M <= 4 rows of x): fused GEMV kernels where the type has them, else panels
//     of a few rows expanded into L1 for the f32 GEMV; each thread streams its own
//     rows of W once, so the cost is W's bytes (4.5-8.5 bits a weight instead of 32).
//   prefill / training (M > 4): the packed GEMM expands W's blocks into its B panels.
// Compiled per ISA like kernels.c.
#include <stdlib.h>
#include <string.h>
#include "../kernel_math.h"
#include "cpu_kernels.h"
#include "dequant.h"
#include "gemm.h"
#include "threadpool.h"

void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out);

static int64_t numel_of(const wk_operand *o) {
  int64_t n = 1;
  for (int d = 0; d < o->ndim; d++) n *= o->shape[d];
  return n;
}

static bool contiguous(const wk_operand *o) {
  int64_t st = 1;
  for (int d = o->ndim - 1; d >= 0; d--) {
    if (o->shape[d] != 1 && o->stride[d] != st) return false;
    st *= o->shape[d];
  }
  return true;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

// Fused decode GEMV: qgemv.c for the 32-value types, dequant.c for the K-quants.
static int qgemv(wk_dtype dt, int rows, int64_t K, int64_t n, const float *x, const void *w, size_t rb, float *y,
                 int64_t ldy) {
  if (dt == WK_BF16) { // the GEMM's bf16 dot kernels read bf16 rows in place
    wk_gemv_bf16_dot(rows, K, n, x, K, w, (int64_t)(rb / 2), y, ldy, 0.0f);
    return 1;
  }
  return WK_ISA_FN(wk_cpu_qgemv)(dt, rows, K, n, x, K, w, rb, y, ldy) ||
         WK_ISA_FN(wk_cpu_qgemv_k)(dt, rows, K, n, x, K, w, rb, y, ldy);
}

typedef struct {
  wk_dtype dt;
  const uint8_t *w;       // W's blocks
  size_t row_bytes;       // bytes of one row of W
  int64_t blk;            // values per block
  int64_t M, N, K;        // x rows; W is [N, K]
  const float *x;         // [M, K] (trans) or [M, N]
  float *y;               // [M, N] (trans) or [M, K]
  int64_t panel;          // W rows per panel
  int64_t cols;           // x @ W: blocks of each row per panel
  int fused;              // decode with wk_cpu_qgemv (no panel buffer)
  float **buf;            // one panel buffer per thread
} qmm;

// y[:, j0:j1] = x @ W[j0:j1, :]^T
static void qmm_nt_task(void *vc, int64_t j0, int64_t j1, int tid) {
  const qmm *c = vc;
  if (c->fused) { // decode: blocks expanded in registers, rows prefetched ahead
    qgemv(c->dt, (int)c->M, c->K, j1 - j0, c->x, c->w + (size_t)j0 * c->row_bytes, c->row_bytes, c->y + j0, c->N);
    return;
  }
  float *p = c->buf[tid];
  int64_t nb = c->K / c->blk;
  for (int64_t j = j0; j < j1; j += c->panel) {
    int64_t n = j1 - j < c->panel ? j1 - j : c->panel;
    // Ask for the next panel's bytes now: one core's out-of-order window keeps only
    // a few lines of one stream in flight, ~4 GB/s from DRAM; prefetching a panel
    // ahead keeps dozens in flight.
    const char *nx = (const char *)c->w + (size_t)(j + n) * c->row_bytes;
    size_t nbytes = (size_t)(j1 - j - n < c->panel ? j1 - j - n : c->panel) * c->row_bytes;
    for (size_t o = 0; o < nbytes; o += 64) __builtin_prefetch(nx + o);
    // Rows are contiguous in memory, so one call expands the whole panel.
    WK_ISA_FN(wk_cpu_dequant)(c->dt, c->w + (size_t)j * c->row_bytes, p, n * nb);
    wk_gemv_f32_dot((int)c->M, c->K, n, c->x, c->K, p, c->K, c->y + j, c->N, 0.0f);
  }
}

// y[:, k0:k1] = x @ W[:, k0:k1], over blocks [b0, b1) of every row (k = b * blk).
static void qmm_nn_cols(const qmm *c, int64_t b0, int64_t b1, float *p) {
  int64_t k0 = b0 * c->blk, kw = (b1 - b0) * c->blk;
  for (int64_t j = 0; j < c->N; j += c->panel) {
    int64_t n = c->N - j < c->panel ? c->N - j : c->panel;
    for (int64_t r = 0; r < n; r++)
      WK_ISA_FN(wk_cpu_dequant)(c->dt, c->w + (size_t)(j + r) * c->row_bytes + (size_t)b0 * wk_dtype_block_bytes(c->dt),
                                p + r * kw, b1 - b0);
    wk_gemm_f32_serial(0, 0, c->M, kw, n, 1.0f, c->x + j, c->N, p, kw, j ? 1.0f : 0.0f, c->y + k0, c->K);
  }
}

static void qmm_nn_task(void *vc, int64_t b0, int64_t b1, int tid) {
  const qmm *c = vc;
  // a chunk may exceed the grain (run inline): the panel buffer holds `cols` blocks
  for (int64_t b = b0; b < b1; b += c->cols) qmm_nn_cols(c, b, b1 - b < c->cols ? b1 : b + c->cols, c->buf[tid]);
}

// Batched x (M > 4 rows): the packed GEMM expands W's blocks straight into its B
// panels (wk_gemm_bsrc), so x is packed once per thread as in an f32 GEMM and no
// f32 panel of W is written and read back.
static void expand_row_blocks(const qmm *c, int64_t r, int64_t b0, int64_t nb, float *out) {
  WK_ISA_FN(wk_cpu_dequant)(c->dt, c->w + (size_t)r * c->row_bytes + (size_t)b0 * wk_dtype_block_bytes(c->dt), out, nb);
}
// x @ W^T: column j of op(B) is row j of W; k0 and kc are whole blocks.
static void bsrc_col(const void *ctx, int64_t j, int64_t k0, int64_t kc, float *out) {
  const qmm *c = ctx;
  expand_row_blocks(c, j, k0 / c->blk, (kc + c->blk - 1) / c->blk, out);
}
// x @ W: row k of op(B) is row k of W; [j0, j0 + n) may start or end inside a block.
static void bsrc_row(const void *ctx, int64_t k, int64_t j0, int64_t n, float *out) {
  const qmm *c = ctx;
  int64_t b0 = j0 / c->blk, b1 = (j0 + n + c->blk - 1) / c->blk;
  if (j0 % c->blk == 0 && (j0 + n) % c->blk == 0) { expand_row_blocks(c, k, b0, b1 - b0, out); return; }
  float blockbuf[256]; // the largest GGUF block (K-quants)
  for (int64_t b = b0; b < b1; b++) {
    expand_row_blocks(c, k, b, 1, blockbuf);
    int64_t lo = b * c->blk > j0 ? b * c->blk : j0, hi = (b + 1) * c->blk < j0 + n ? (b + 1) * c->blk : j0 + n;
    memcpy(out + (lo - j0), blockbuf + (lo - b * c->blk), sizeof(float) * (size_t)(hi - lo));
  }
}

// A bf16 weight multiplies x rounded to bf16 (to nearest even; a NaN stays a quiet
// NaN), accumulating in f32, whatever the batch size or ISA: decode, prefill and
// batched rows then agree, and batched rows run the bf16 GEMM (vdpbf16ps does twice
// the multiply-adds of an f32 FMA). `bits` gets the bf16 bits, `vals` their f32 values.
static void round_to_bf16(const float *x, int64_t n, uint16_t *bits, float *vals) {
  for (int64_t i = 0; i < n; i++) {
    uint16_t h = wkm_f32_to_bf16(x[i]);
    if (bits) bits[i] = h;
    if (vals) vals[i] = wkm_bits2f((uint32_t)h << 16);
  }
}

static wk_status qmatmul_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *xo = &s->in[0], *wo = &s->in[1];
  int trans = s->attrs.i[0] != 0;
  qmm c = {.dt = wo->dtype, .w = wk_operand_ptr(wo, slots), .blk = wk_dtype_block(wo->dtype),
           .N = wo->shape[0], .K = wo->shape[1]};
  c.row_bytes = (size_t)(c.K / c.blk) * wk_dtype_block_bytes(c.dt);
  int64_t in = trans ? c.K : c.N, out = trans ? c.N : c.K;
  c.M = in ? numel_of(xo) / in : 0;
  if (!contiguous(&s->out) || s->out.dtype != WK_F32)
    return wk_error(WK_ERR_STATE, "matmul (quantized): the output must be a contiguous f32 buffer");
  c.y = wk_operand_ptr(&s->out, slots);
  if (c.M == 0 || out == 0) return WK_OK;
  if (in == 0) { memset(c.y, 0, sizeof(float) * (size_t)(c.M * out)); return WK_OK; }
  float *dense = NULL;
  if (contiguous(xo)) c.x = wk_operand_ptr(xo, slots);
  else {
    if (!(dense = malloc(sizeof(float) * (size_t)(c.M * in)))) return wk_error(WK_ERR_OOM, "matmul: out of memory");
    WK_ISA_FN(wk_cpu_load_f32)(xo, slots, 0, c.M * in, dense);
    c.x = dense;
  }
  if (c.dt == WK_BF16) {
    size_t n = (size_t)(c.M * in);
    void *r = malloc(n * (c.M > 4 ? sizeof(uint16_t) : sizeof(float)));
    if (!r) {
      free(dense);
      return wk_error(WK_ERR_OOM, "matmul (bf16 weight): out of memory for a [%lld, %lld] input", (long long)c.M,
                      (long long)in);
    }
    round_to_bf16(c.x, (int64_t)n, c.M > 4 ? r : NULL, c.M > 4 ? NULL : r);
    free(dense);
    if (c.M > 4) {  // W [N, K] is op(B) = W^T (trans) or W itself: row-major, K apart
      wk_gemm_bf16(0, trans, c.M, out, in, 1.0f, r, in, 0, (const uint16_t *)c.w, c.K, 0, 0.0f, c.y, out, 0, 1);
      free(r);
      return WK_OK;
    }
    c.x = dense = r;  // decode: the GEMV reads the rounded values
  }
  if (c.M > 4) {
    wk_gemm_bsrc src = {.col = trans ? bsrc_col : NULL, .row = trans ? NULL : bsrc_row, .ctx = &c,
                        .kalign = trans ? c.blk : 1};
    wk_gemm_f32_bsrc(0, c.M, out, in, c.x, in, &src, 0.0f, c.y, out);
    free(dense);
    return WK_OK;
  }
  int T = wk_threads();
  // Decode (M <= 4 from here on): panels stay in L1 (~32 KB).
  int64_t items, grain;
  if (trans) {
    c.fused = qgemv(c.dt, (int)c.M, c.K, 0, c.x, c.w, c.row_bytes, c.y, c.N);  // probe: a fused kernel for dt?
    c.panel = clamp64(8192 / c.K, 4, 64);
    items = c.N;
    // a thread pays off once it streams ~64 KB of W
    grain = clamp64((int64_t)(65536 / (c.row_bytes ? c.row_bytes : 1)), c.panel, c.N > 0 ? c.N : 1);
  } else {
    items = c.K / c.blk;
    grain = c.cols = clamp64((items + T - 1) / T, 1, items);
    int64_t kw = grain * c.blk;
    c.panel = clamp64(196608 / kw, 16, 256);
  }
  int64_t pw = trans ? c.K : grain * c.blk;
  float *bufs[64];
  float *pool = malloc(sizeof(float) * (size_t)(c.fused ? 1 : c.panel * pw) * (size_t)T); // fused: no panels
  if (!pool || T > 64) {
    free(pool);
    free(dense);
    return wk_error(WK_ERR_OOM, "matmul (quantized): out of memory for %d panel buffers", T);
  }
  for (int t = 0; t < T; t++) bufs[t] = pool + (size_t)t * (size_t)(c.panel * pw);
  c.buf = bufs;
  wk_parallel_for(items, grain, trans ? qmm_nt_task : qmm_nn_task, &c);
  free(pool);
  free(dense);
  return WK_OK;
}

// ---- dequantize: rows in parallel ----
typedef struct {
  wk_dtype dt;
  const uint8_t *src;
  float *dst;
  int64_t nb;       // blocks per row
  size_t row_bytes;
  int64_t row_len;
} deq_ctx;

static void deq_task(void *vc, int64_t r0, int64_t r1, int tid) {
  (void)tid;
  const deq_ctx *c = vc;
  for (int64_t r = r0; r < r1; r++)
    WK_ISA_FN(wk_cpu_dequant)(c->dt, c->src + (size_t)r * c->row_bytes, c->dst + r * c->row_len, c->nb);
}

static wk_status dequantize_kernel(const wk_step *s, void *const *slots) {
  const wk_operand *q = &s->in[0];
  if (!contiguous(&s->out) || s->out.dtype != WK_F32)
    return wk_error(WK_ERR_STATE, "dequantize: the output must be a contiguous f32 buffer");
  int64_t n = numel_of(q), len = q->ndim ? q->shape[q->ndim - 1] : 1;
  if (n == 0 || len == 0) return WK_OK;
  deq_ctx c = {.dt = q->dtype, .src = wk_operand_ptr(q, slots), .dst = wk_operand_ptr(&s->out, slots),
               .nb = len / wk_dtype_block(q->dtype), .row_len = len};
  c.row_bytes = (size_t)c.nb * wk_dtype_block_bytes(q->dtype);
  int64_t rows = n / len;
  wk_parallel_for(rows, clamp64((int64_t)(262144 / (c.row_bytes ? c.row_bytes : 1)), 1, rows), deq_task, &c);
  return WK_OK;
}

wk_status WK_ISA_FN(wk_cpu_qkernel)(const wk_step *s, void *const *slots) {
  return s->op == WK_OP_QMATMUL ? qmatmul_kernel(s, slots) : dequantize_kernel(s, slots);
}
