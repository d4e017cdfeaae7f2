// Accumulator chains: the fast path of the elementwise VM (included by ew.c, so
// compiled per ISA; AVX2 / AVX-512 only).
// Most fused groups are a chain: every op takes the previous op's value and at most
// one tensor operand (tanh((x + y) * y - x) ..., silu(g) * u, a * s + b). The block
// interpreter stores each op's whole block to L1 and loads it back for the next op,
// which costs ~2 cycles per 16 values and op on Zen 4: more than add or mul itself.
// Here the running value stays in vector registers, U vectors at a time, the
// interpreter dispatches once per op and U vectors, and only the result is stored
// (straight to the output). Each op computes exactly what the block interpreter
// computes (same vector functions, same IEEE operations), so which path ran never
// changes a value.
#include <stdbool.h>

#define CH_MAX 32 // ops per chain
// 4 vectors in flight per op: 64 values on AVX-512 cover the FMA latency of exp and
// tanh; on AVX2, whose 16 registers spilled 8 vectors (64 values) around every op,
// 32 values took chain8/16M from 8.5-8.7 to 5.0-5.3 ms (a Zen 4 host, WICK_CPU_ISA=avx2;
// 2 vectors: 6.6-7.1). Two on AVX-512 were slower (6.3-9.7 ms against 5.7-5.9).
#define CH_U 4
#define CH_ACC -2 // operand: the running value itself (x * x)

typedef struct {
  uint16_t op;
  bool rev;    // the running value is the second operand (other - acc, other / acc)
  int8_t src;  // tensor operand index, CH_ACC, or -1 (unary)
  float f0;
} ch_op;

typedef struct {
  int n, first; // first: operand index the running value starts from
  ch_op op[CH_MAX];
} ch_prog;

static bool ch_unary(uint16_t op) {
  switch (op) {
    case WK_OP_NEG: case WK_OP_ABS: case WK_OP_EXP: case WK_OP_LOG: case WK_OP_SQRT: case WK_OP_RSQRT:
    case WK_OP_SQUARE: case WK_OP_TANH: case WK_OP_SIGMOID: case WK_OP_RELU: case WK_OP_GELU:
    case WK_OP_GELU_TANH: case WK_OP_SILU: case WK_OP_ADD_SCALAR: case WK_OP_MUL_SCALAR: return true;
    default: return false;
  }
}
static bool ch_binary(uint16_t op) {
  return op == WK_OP_ADD || op == WK_OP_SUB || op == WK_OP_MUL || op == WK_OP_DIV || op == WK_OP_MAXIMUM ||
         op == WK_OP_MINIMUM;
}

// Recognizes prog as a chain over dense f32 operands (dm); false: use the block VM.
static bool ch_build(const wk_ew_prog *prog, const dense_map *dm, ch_prog *cp) {
  int8_t load_of[WK_EW_MAX_REGS]; // register -> operand index, -1: not a load
  for (int r = 0; r < WK_EW_MAX_REGS; r++) load_of[r] = -1;
  int acc = -1; // register holding the running value
  cp->n = 0;
  cp->first = -1;
  for (int q = 0; q < prog->n; q++) {
    const wk_ew_instr *in = &prog->code[q];
    if (in->op == WK_EW_LOAD) {
      if (!dm->base[in->a]) return false;
      load_of[in->dst] = (int8_t)in->a;
      continue;
    }
    bool un = ch_unary(in->op), bin = ch_binary(in->op);
    bool copy = in->op == WK_OP_COPY || in->op == WK_OP_STOP_GRAD;
    if (!un && !bin && !copy) return false;
    if (acc < 0) { // the first op starts from one of its operands, which must be loads
      if (load_of[in->a] < 0 || (bin && load_of[in->b] < 0)) return false;
      cp->first = load_of[in->a];
      acc = in->a;
    }
    ch_op o = {.op = in->op, .src = -1, .f0 = in->attrs.f[0]};
    if (bin) {
      if (in->a == acc && in->b == acc) o.src = CH_ACC;
      else if (in->a == acc && load_of[in->b] >= 0) o.src = load_of[in->b];
      else if (in->b == acc && load_of[in->a] >= 0) o.src = load_of[in->a], o.rev = true;
      else return false;
    } else if (in->a != acc) {
      return false;
    }
    if (!copy) {
      if (cp->n == CH_MAX) return false;
      cp->op[cp->n++] = o;
    }
    // a load register is never reused, so acc can't alias one unless it is the first load
    if (load_of[in->dst] >= 0) return false;
    acc = in->dst;
  }
  return acc >= 0 && prog->out_reg == acc;
}

typedef struct { vf v[CH_U]; } chv;

#define CH_EACH(expr)                          \
  for (int u = 0; u < CH_U; u++) {             \
    vf a = x.v[u];                             \
    x.v[u] = (expr);                           \
  }
#define CH_EACH2(expr)                         \
  for (int u = 0; u < CH_U; u++) {             \
    vf a = x.v[u], b = s ? vload(s + u * VM_L) : a; \
    if (o->rev) { vf t = a; a = b; b = t; }    \
    x.v[u] = (expr);                           \
  }

#if defined(__AVX512F__)
VM_AI vf ch_ge_or_unord(vf a, vf b, vf x, vf y) { // a >= b || a != a ? x : y
  return vsel((vm)(_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ) | vunord(a)), x, y);
}
VM_AI vf ch_le_or_unord(vf a, vf b, vf x, vf y) {
  return vsel((vm)(_mm512_cmp_ps_mask(a, b, _CMP_LE_OQ) | vunord(a)), x, y);
}
VM_AI vf ch_gt_or_unord(vf a, vf b, vf x, vf y) {
  return vsel((vm)(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) | vunord(a)), x, y);
}
VM_AI vf ch_neg(vf a) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN))); }
VM_AI vf ch_sqrt(vf a) { return _mm512_sqrt_ps(a); }
#else
VM_AI vf ch_ge_or_unord(vf a, vf b, vf x, vf y) {
  return vsel(_mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ), vunord(a)), x, y);
}
VM_AI vf ch_le_or_unord(vf a, vf b, vf x, vf y) {
  return vsel(_mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ), vunord(a)), x, y);
}
VM_AI vf ch_gt_or_unord(vf a, vf b, vf x, vf y) {
  return vsel(_mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), vunord(a)), x, y);
}
VM_AI vf ch_neg(vf a) { return _mm256_xor_ps(a, v1(-0.0f)); }
VM_AI vf ch_sqrt(vf a) { return _mm256_sqrt_ps(a); }
#endif

// The op applied to U vectors; s: the tensor operand at this position (or NULL).
VM_AI chv ch_apply(const ch_op *o, chv x, const float *s) {
  switch (o->op) {
    case WK_OP_NEG: CH_EACH(ch_neg(a)); break;
    case WK_OP_ABS: CH_EACH(vabs(a)); break;
    case WK_OP_EXP: CH_EACH(vexp(a)); break;
    case WK_OP_LOG: CH_EACH(vlog(a)); break;
    case WK_OP_SQRT: CH_EACH(ch_sqrt(a)); break;
    case WK_OP_RSQRT: CH_EACH(vdiv(v1(1.0f), ch_sqrt(a))); break;
    case WK_OP_SQUARE: CH_EACH(vmul(a, a)); break;
    case WK_OP_TANH: CH_EACH(vtanh(a)); break;
    case WK_OP_SIGMOID: CH_EACH(vsigmoid(a)); break;
    case WK_OP_RELU: CH_EACH(ch_gt_or_unord(a, v1(0.0f), a, v1(0.0f))); break; // NaN stays, -0 gives +0
    case WK_OP_GELU: CH_EACH(vgelu(a)); break;
    case WK_OP_GELU_TANH: CH_EACH(vgelu_tanh(a)); break;
    case WK_OP_SILU: CH_EACH(vsilu(a)); break;
    case WK_OP_ADD_SCALAR: CH_EACH(vadd(a, v1(o->f0))); break;
    case WK_OP_MUL_SCALAR: CH_EACH(vmul(a, v1(o->f0))); break;
    case WK_OP_ADD: CH_EACH2(vadd(a, b)); break;
    case WK_OP_SUB: CH_EACH2(vsub(a, b)); break;
    case WK_OP_MUL: CH_EACH2(vmul(a, b)); break;
    case WK_OP_DIV: CH_EACH2(vdiv(a, b)); break;
    case WK_OP_MAXIMUM: CH_EACH2(ch_ge_or_unord(a, b, a, b)); break;
    case WK_OP_MINIMUM: CH_EACH2(ch_le_or_unord(a, b, a, b)); break;
    default: break;
  }
  return x;
}

// out[i] = chain(operands[i]) for i in [begin, begin + n), n a multiple of CH_U * VM_L.
static void ch_run(const ch_prog *cp, const dense_map *dm, int64_t begin, int64_t n, float *out, bool stream) {
  for (int64_t i = begin; i < begin + n; i += CH_U * VM_L) {
    chv x;
    const float *f = dm->base[cp->first] + i;
    for (int u = 0; u < CH_U; u++) x.v[u] = vload(f + u * VM_L);
    for (int q = 0; q < cp->n; q++) {
      const ch_op *o = &cp->op[q];
      x = ch_apply(o, x, o->src >= 0 ? dm->base[o->src] + i : NULL);
    }
    float *d = out + (i - begin);
    bool st = stream && !((uintptr_t)d & (sizeof(vf) - 1)); // streaming stores need aligned addresses
    for (int u = 0; u < CH_U; u++) {
#if defined(__AVX512F__)
      if (st) _mm512_stream_ps(d + u * VM_L, x.v[u]);
#else
      if (st) _mm256_stream_ps(d + u * VM_L, x.v[u]);
#endif
      else vstore(d + u * VM_L, x.v[u]);
    }
  }
}
