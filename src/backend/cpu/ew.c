// The fused elementwise VM. A fused group is a small register program; each
// thread runs it over blocks of WK_EW_BLOCK elements, so a chain of N ops makes
// one pass over memory with its intermediates held in L1. Compiled per ISA.
#include <math.h>
#include <stdlib.h>
#include "cpu_kernels.h"
#include "../kernel_math.h"
#include "vmath.h"
#include "threadpool.h"
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Outputs this large do not stay in cache: streaming stores skip the read for
// ownership of each output line (a third of the memory traffic of a copy).
#define STREAM_BYTES (4 << 20)

// ---- loads: any dtype, any strides, broadcast -> contiguous f32 ----
static void convert_run(const void *p, wk_dtype dt, int64_t stride, int64_t n, float *out) {
  switch (dt) {
    case WK_F32: {
      const float *s = p;
      if (stride == 1) for (int64_t i = 0; i < n; i++) out[i] = s[i];
      else if (stride == 0) for (int64_t i = 0; i < n; i++) out[i] = s[0];
      else for (int64_t i = 0; i < n; i++) out[i] = s[i * stride];
      break;
    }
    case WK_BF16: {
      const uint16_t *s = p;
      for (int64_t i = 0; i < n; i++) out[i] = wkm_bits2f((uint32_t)s[i * stride] << 16);
      break;
    }
    case WK_F16: {
      const uint16_t *s = p;
      for (int64_t i = 0; i < n; i++) out[i] = wk_f16_to_f32(s[i * stride]);
      break;
    }
    case WK_I32: {
      const int32_t *s = p;
      for (int64_t i = 0; i < n; i++) out[i] = (float)s[i * stride];
      break;
    }
    default: break;
  }
}

static void load(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out) {
  size_t es = wk_dtype_size(o->dtype);
  const char *base = (const char *)slots[o->slot] + o->offset * (int64_t)es;
  int nd = o->ndim;
  if (nd == 0) { convert_run(base, o->dtype, 0, n, out); return; }
  // position of `start` in the operand's index space
  int64_t idx[WK_MAX_DIMS], rem = start, off = 0;
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = o->shape[d] ? rem % o->shape[d] : 0;
    rem = o->shape[d] ? rem / o->shape[d] : 0;
    off += idx[d] * o->stride[d];
  }
  int64_t last = o->shape[nd - 1], st = o->stride[nd - 1];
  while (n > 0) {
    int64_t run = last - idx[nd - 1];
    if (run > n) run = n;
    convert_run(base + off * (int64_t)es, o->dtype, st, run, out);
    out += run;
    n -= run;
    off += run * st;
    idx[nd - 1] += run;
    for (int d = nd - 1; d > 0 && idx[d] == o->shape[d]; d--) { // carry
      off -= idx[d] * o->stride[d];
      idx[d] = 0;
      idx[d - 1]++;
      off += o->stride[d - 1];
    }
  }
}

void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out);
void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out) {
  load(o, slots, start, n, out);
}

static void stream_f32(float *d, const float *v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i < n && ((uintptr_t)(d + i) & 63); i++) d[i] = v[i];
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(d + i, _mm512_loadu_ps(v + i));
#elif defined(__AVX2__)
  for (; i < n && ((uintptr_t)(d + i) & 31); i++) d[i] = v[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(d + i, _mm256_loadu_ps(v + i));
#endif
  for (; i < n; i++) d[i] = v[i];
}

static void store(const wk_operand *o, void *const *slots, int64_t start, int64_t n, const float *v, bool stream) {
  char *p = (char *)slots[o->slot] + (o->offset + start) * (int64_t)wk_dtype_size(o->dtype);
  switch (o->dtype) {
    case WK_F32: {
      float *d = (float *)p;
      if (stream) stream_f32(d, v, n);
      else for (int64_t i = 0; i < n; i++) d[i] = v[i];
      break;
    }
    case WK_BF16: { uint16_t *d = (uint16_t *)p; for (int64_t i = 0; i < n; i++) d[i] = wk_f32_to_bf16(v[i]); break; }
    case WK_F16: { uint16_t *d = (uint16_t *)p; for (int64_t i = 0; i < n; i++) d[i] = wk_f32_to_f16(v[i]); break; }
    case WK_I32: { int32_t *d = (int32_t *)p; for (int64_t i = 0; i < n; i++) d[i] = wkm_f32_to_i32(v[i]); break; }
    default: break;
  }
}

// ---- the interpreter ----
// rp[r] is where register r's values are: its slot in R, or straight in the
// input tensor when a load needed no conversion (no copy).
static void exec_instr(const wk_ew_instr *in, float *R, const float *const *rp, int64_t start, int n) {
  float *restrict d = R + (size_t)in->dst * WK_EW_BLOCK;
  const float *restrict a = rp[in->a], *restrict b = rp[in->b], *restrict c = rp[in->c];
  const float f0 = in->attrs.f[0], f1 = in->attrs.f[1];
  const uint64_t seed = in->attrs.u;
  switch (in->op) {
#define LOOP(expr) for (int i = 0; i < n; i++) d[i] = (expr); break
    case WK_OP_CONST: LOOP(f0);
    case WK_OP_ARANGE: LOOP(f0 + (float)(start + i) * f1);
    case WK_OP_RAND: LOOP(f0 + (f1 - f0) * wkm_u01(seed, (uint64_t)(start + i)));
    case WK_OP_RANDN:
      for (int i = 0; i < n; i++) { // Box-Muller on two hashed uniforms
        uint64_t h = wkm_rng_hash(seed, (uint64_t)(start + i));
        float u1 = ((float)(h >> 40) + 1.0f) * 0x1p-24f, u2 = (float)(h & 0xffffff) * 0x1p-24f;
        d[i] = sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
      }
      break;
    case WK_OP_DROPOUT: LOOP(wkm_u01(seed, (uint64_t)(start + i)) < f0 ? 0.0f : a[i] / (1.0f - f0));
    case WK_OP_CAUSAL_MASK: {
      int64_t T = in->attrs.i[0], S = in->attrs.i[1];
      for (int i = 0; i < n; i++) {
        int64_t k = start + i, col = k % S, row = (k / S) % T;
        d[i] = col > row + (S - T) ? -INFINITY : 0.0f;
      }
      break;
    }
    case WK_OP_NEG: LOOP(-a[i]);
    case WK_OP_ABS: LOOP(fabsf(a[i]));
    case WK_OP_EXP: vm_exp(d, a, n); break;
    case WK_OP_LOG: vm_log(d, a, n); break;
    case WK_OP_SQRT: LOOP(sqrtf(a[i]));
    case WK_OP_RSQRT: LOOP(1.0f / sqrtf(a[i]));
    case WK_OP_SQUARE: LOOP(a[i] * a[i]);
    case WK_OP_TANH: vm_tanh(d, a, n); break;
    case WK_OP_SIGMOID: vm_sigmoid(d, a, n); break;
    case WK_OP_RELU: LOOP(a[i] > 0 || a[i] != a[i] ? a[i] : 0.0f);   // NaN stays NaN, -0 gives +0
    case WK_OP_GELU: vm_gelu(d, a, n); break;
    case WK_OP_GELU_TANH: vm_gelu_tanh(d, a, n); break;
    case WK_OP_SILU: vm_silu(d, a, n); break;
    case WK_OP_ADD_SCALAR: LOOP(a[i] + f0);
    case WK_OP_MUL_SCALAR: LOOP(a[i] * f0);
    case WK_OP_POW_SCALAR:
      if (f0 == 2.0f) { LOOP(a[i] * a[i]); }
      else if (f0 == 0.5f) { LOOP(sqrtf(a[i])); }
      else if (f0 == 1.0f) { LOOP(a[i]); }
      else if (f0 == -1.0f) { LOOP(1.0f / a[i]); }
      else { LOOP(powf(a[i], f0)); }
    case WK_OP_CAST: {
      wk_dtype to = (wk_dtype)in->attrs.i[0];
      if (to == WK_BF16) { LOOP(wk_bf16_to_f32(wk_f32_to_bf16(a[i]))); }
      else if (to == WK_F16) { LOOP(wk_f16_to_f32(wk_f32_to_f16(a[i]))); }
      else if (to == WK_I32) { LOOP(truncf(a[i])); }
      else { LOOP(a[i]); }
    }
    case WK_OP_COPY:
    case WK_OP_STOP_GRAD: LOOP(a[i]);
    case WK_OP_ADD: LOOP(a[i] + b[i]);
    case WK_OP_SUB: LOOP(a[i] - b[i]);
    case WK_OP_MUL: LOOP(a[i] * b[i]);
    case WK_OP_DIV: LOOP(a[i] / b[i]);
    case WK_OP_MAXIMUM: LOOP(a[i] >= b[i] || a[i] != a[i] ? a[i] : b[i]);   // a NaN on either side wins
    case WK_OP_MINIMUM: LOOP(a[i] <= b[i] || a[i] != a[i] ? a[i] : b[i]);
    case WK_OP_EQ: LOOP(a[i] == b[i] ? 1.0f : 0.0f);
    case WK_OP_NE: LOOP(a[i] != b[i] ? 1.0f : 0.0f);
    case WK_OP_LT: LOOP(a[i] < b[i] ? 1.0f : 0.0f);
    case WK_OP_LE: LOOP(a[i] <= b[i] ? 1.0f : 0.0f);
    case WK_OP_GT: LOOP(a[i] > b[i] ? 1.0f : 0.0f);
    case WK_OP_GE: LOOP(a[i] >= b[i] ? 1.0f : 0.0f);
    case WK_OP_GELU_BWD: LOOP(b[i] * wkm_gelu_grad(a[i]));
    case WK_OP_GELU_TANH_BWD: LOOP(b[i] * wkm_gelu_tanh_grad(a[i]));
    case WK_OP_WHERE: LOOP(a[i] != 0.0f ? b[i] : c[i]);
#undef LOOP
    default: break;
  }
}

// Register file per thread: static TLS so that nothing is allocated per call.
static _Thread_local float regfile[WK_EW_MAX_REGS * WK_EW_BLOCK] __attribute__((aligned(64)));
static float *regs_for(int nregs) { (void)nregs; return regfile; }

// Runs prog over [start, start+n) (n <= WK_EW_BLOCK); returns the result register.
// Direct pointer to n f32 values of o at linear index start, when they are stored
// contiguously in the same order; NULL when a conversion or gather is needed.
static const float *direct(const wk_operand *o, void *const *slots, int64_t start, int n) {
  if (o->dtype != WK_F32 || o->ndim == 0 || o->stride[o->ndim - 1] != 1) return NULL;
  int64_t last = o->shape[o->ndim - 1];
  if (start % last + n > last && o->ndim > 1) { // the run crosses rows: rows must be adjacent
    for (int d = o->ndim - 1; d > 0; d--)
      if (o->shape[d] != 1 && o->stride[d - 1] != o->stride[d] * o->shape[d]) return NULL;
  }
  int64_t rem = start, off = 0;
  for (int d = o->ndim - 1; d >= 0; d--) {
    off += (o->shape[d] ? rem % o->shape[d] : 0) * o->stride[d];
    rem = o->shape[d] ? rem / o->shape[d] : 0;
  }
  return (const float *)slots[o->slot] + o->offset + off;
}

// Runs prog over [start, start+n) (n <= WK_EW_BLOCK); returns the result's values.
static int prog_nops(const wk_ew_prog *prog) {
  int n = 0;
  for (int q = 0; q < prog->n; q++)
    if (prog->code[q].op == WK_EW_LOAD && prog->code[q].a + 1 > n) n = prog->code[q].a + 1;
  return n;
}

// f32 operands stored densely in the group's order (the common case): element i
// is at base[i], so a block needs no index arithmetic at all.
typedef struct { const float *base[WK_MAX_IN]; } dense_map;

static void dense_init(dense_map *dm, const wk_operand *ops, int nops, void *const *slots) {
  for (int k = 0; k < nops; k++) {
    const wk_operand *o = &ops[k];
    bool dense = o->dtype == WK_F32 && o->slot >= 0;
    int64_t st = 1;
    for (int d = o->ndim - 1; d >= 0 && dense; d--) {
      if (o->shape[d] != 1 && o->stride[d] != st) dense = false;
      st *= o->shape[d];
    }
    dm->base[k] = dense ? (const float *)slots[o->slot] + o->offset : NULL;
  }
}

static const float *run_block(const wk_ew_prog *prog, const wk_operand *ops, const dense_map *dm, void *const *slots,
                              int64_t start, int n, const float *row, float *R) {
  const float *rp[WK_EW_MAX_REGS];
  for (int q = 0; q < prog->n; q++) {
    const wk_ew_instr *in = &prog->code[q];
    float *reg = R + (size_t)in->dst * WK_EW_BLOCK;
    if (in->op == WK_EW_LOAD_ROW) {
      rp[in->dst] = row;
    } else if (in->op == WK_EW_LOAD) {
      const float *p = dm->base[in->a] ? dm->base[in->a] + start : direct(&ops[in->a], slots, start, n);
      if (!p) load(&ops[in->a], slots, start, n, reg);
      rp[in->dst] = p ? p : reg;
    } else if ((in->op == WK_OP_COPY || in->op == WK_OP_STOP_GRAD) &&
               (rp[in->a] < R || rp[in->a] >= R + WK_EW_MAX_REGS * WK_EW_BLOCK)) {
      rp[in->dst] = rp[in->a]; // identity on tensor memory: no copy (never overwritten)
    } else {
      exec_instr(in, R, rp, start, n);
      rp[in->dst] = reg;
    }
  }
  return rp[prog->out_reg];
}

void WK_ISA_FN(wk_cpu_ew_eval)(const wk_ew_prog *prog, const wk_operand *ops, void *const *slots, int64_t start,
                               int64_t n, const float *row, float *out) {
  float *R = regs_for(prog->nregs);
  dense_map dm;
  dense_init(&dm, ops, prog_nops(prog), slots);
  for (int64_t k = 0; k < n; k += WK_EW_BLOCK) {
    int m = (int)(n - k < WK_EW_BLOCK ? n - k : WK_EW_BLOCK);
    const float *v = run_block(prog, ops, &dm, slots, start + k, m, row ? row + k : NULL, R);
    for (int i = 0; i < m; i++) out[k + i] = v[i];
  }
}

void WK_ISA_FN(wk_cpu_prologue)(const wk_step *s, void *const *slots, int64_t start, int64_t n, float *out) {
  WK_ISA_FN(wk_cpu_ew_eval)(&s->prog, s->pro_in, slots, start, n, NULL, out);
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include "ew_chain.h"
#define HAVE_CHAINS 1
#else
#define HAVE_CHAINS 0
typedef int ch_prog;
#endif

typedef struct {
  const wk_step *s;
  void *const *slots;
  bool stream;
  bool chain; // cp holds the program as an accumulator chain
  ch_prog cp;
} ew_ctx;

static void ew_range(void *ctx, int64_t begin, int64_t end, int tid) {
  (void)tid;
  const ew_ctx *c = ctx;
  float *R = regs_for(c->s->prog.nregs);
  dense_map dm;
  dense_init(&dm, c->s->in, c->s->nin, c->slots);
#if HAVE_CHAINS
  if (c->chain) { // whole groups of CH_U vectors; the block VM below does the rest
    int64_t m = (end - begin) / (CH_U * VM_L) * (CH_U * VM_L);
    ch_run(&c->cp, &dm, begin, m, (float *)wk_operand_ptr(&c->s->out, c->slots) + begin, c->stream);
    begin += m;
  }
#endif
  for (int64_t k = begin; k < end; k += WK_EW_BLOCK) {
    int m = (int)(end - k < WK_EW_BLOCK ? end - k : WK_EW_BLOCK);
    const float *v = run_block(&c->s->prog, c->s->in, &dm, c->slots, k, m, NULL, R);
    store(&c->s->out, c->slots, k, m, v, c->stream);
  }
#if defined(__AVX512F__) || defined(__AVX2__)
  if (c->stream) _mm_sfence();
#endif
}

// d = op(a) for the activations a GEMM epilogue applies (kernels.c).
void WK_ISA_FN(wk_cpu_act)(wk_op op, float *d, const float *a, int64_t n);
void WK_ISA_FN(wk_cpu_act)(wk_op op, float *d, const float *a, int64_t n) {
  for (int64_t i = 0; i < n; i += 1 << 20) {
    int m = (int)(n - i < (1 << 20) ? n - i : 1 << 20);
    if (op == WK_OP_GELU) vm_gelu(d + i, a + i, m);
    else vm_gelu_tanh(d + i, a + i, m);
  }
}

wk_status WK_ISA_FN(wk_cpu_ew)(const wk_step *s, void *const *slots) {
  int64_t n = 1;
  for (int d = 0; d < s->out.ndim; d++) n *= s->out.shape[d];
  ew_ctx c = {.s = s, .slots = slots, .stream = s->out.dtype == WK_F32 && n * 4 >= STREAM_BYTES};
#if HAVE_CHAINS
  dense_map dm;
  dense_init(&dm, s->in, s->nin, slots);
  c.chain = s->out.dtype == WK_F32 && ch_build(&s->prog, &dm, &c.cp);
#endif
  // ~16k elements per task: big enough to amortize dispatch, small enough to balance
  wk_parallel_for(n, 32 * WK_EW_BLOCK, ew_range, &c);
  return WK_OK;
}
