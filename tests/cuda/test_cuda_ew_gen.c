// Generated kernels for fused elementwise groups (NVRTC, src/backend/cuda/ew_gen.cu)
// against the CPU backend and against the CUDA interpreter they replace.
//
// Each group runs three times on the same inputs: on the CPU (the reference), on
// CUDA with generation forced on for every size (the generation counters must show
// a generated kernel ran), and on CUDA with generation off (the interpreter). The
// generated result must be within tolerance of the CPU's and equal bit for bit to
// the interpreter's: the generator writes each op as the interpreter computes it
// and keeps the compiler from fusing neighbouring ops into FMAs, so any difference
// is a generator bug. Outputs are poisoned with NaN before each run, so elements a
// kernel leaves unwritten show.
//
// Tolerances against the CPU (max |cuda - cpu| <= atol + rtol * |cpu|):
//  - f32 outputs: the same polynomial formulas (kernel_math.h) on both sides; only
//    FMA contraction inside an op's formula differs -> 1e-5 absolute and relative.
//  - f16 / bf16 outputs: the f32 results may round to neighbouring values, one ulp
//    being 2^-11 / 2^-8 relative -> 1e-3 / 8e-3 relative (1e-3 / 8e-3 absolute near 0).
//  - the public-API plan with two matmuls (cuBLAS vs the CPU GEMM, K = 64): 1e-4.
// Covered: chains over dense f32 / bf16 / f16 with sizes that are not multiples of
// the 8-element tile, mixed dtypes, row / column / scalar broadcasts, a transposed
// view, an unaligned operand (the per-element path), index-based sources (rand,
// randn, dropout, arange, causal mask), a program too long for the tiled path, an
// i32 output, zero elements, an op the generator does not know and a source that
// does not compile (both fall back to the interpreter), the default size threshold,
// and a plan captured as a CUDA graph whose scalars change between replays; bf16
// chain8 with NaN / inf in one tile in three (the tile-wide NaN test), an input and
// an output off 16-byte alignment and views of every other element (the
// per-element paths). WICK_CUDA_EWGEN=0..63 runs it on each form of the generator.
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "check.h"
#define DUAL_SEED 0x9e3779b97f4a7c15ull
#include "dual_slots.h"

// A contiguous operand (stride NULL) or a strided one.
static wk_operand opnd(int slot, wk_dtype dt, int nd, const int64_t *shape, const int64_t *stride, int64_t offset) {
  if (stride) return op_s(slot, dt, nd, shape, stride, offset);
  wk_operand o = op_c(slot, dt, nd, shape);
  o.offset = offset;
  return o;
}
static wk_step group(int nin, const wk_operand *in, wk_operand out, wk_ew_instr *code, int n, int nregs) {
  wk_step s;
  memset(&s, 0, sizeof s);
  s.op = (wk_op)WK_STEP_FUSED_EW;
  s.device = WK_CUDA;
  s.src = s.scale_src = -1;
  s.nin = nin;
  memcpy(s.in, in, sizeof(wk_operand) * (size_t)nin);
  s.out = out;
  s.prog = (wk_ew_prog){n, nregs, code[n - 1].dst, code};
  return s;
}
static wk_cuda_ew_gen_stats gen_stats(void) {
  wk_cuda_ew_gen_stats s;
  wk_cuda_ew_gen_stats_get(&s);
  return s;
}

// CPU, generated and interpreted runs of s (see the top of the file); gen: whether
// a generated kernel must have run (false: the interpreter must have run it).
static void check_group(const char *name, const wk_step *s, int out, float atol, float rtol, bool gen) {
  const tbuf *o = &B[out];
  run_host(name, s, out);
  wk_cuda_set_ew_gen(2);
  wk_cuda_ew_gen_stats s0 = gen_stats();
  unsigned char *g = run_device(name, s, out);
  wk_cuda_ew_gen_stats s1 = gen_stats();
  wk_cuda_set_ew_gen(0);
  unsigned char *r = run_device(name, s, out);
  wk_cuda_ew_gen_stats s2 = gen_stats();
  wk_cuda_set_ew_gen(2);
  bool launched = s1.launches > s0.launches;
  CHECK(launched == gen, "%s: %s ran (generated launches %llu, fallbacks %llu)", name,
        gen ? "a generated kernel" : "the interpreter", s1.launches - s0.launches, s1.fallbacks - s0.fallbacks);
  CHECK(s2.launches == s1.launches, "%s: generation off launches no generated kernel", name);
  float worst = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < o->n; i++) {
    float c = get(o->h, o->dt, i), v = get(g, o->dt, i);
    if ((isnan(c) && isnan(v)) || (isinf(c) && c == v)) continue;
    float err = fabsf(c - v), lim = atol + rtol * fabsf(c);
    if (!(err <= lim) && (at < 0 || err / lim > worst)) { worst = err / lim; at = i; }
  }
  if (at >= 0)
    CHECK(0, "%s: element %lld of %lld: cpu %g, cuda %g (%.1fx the tolerance)", name, (long long)at, (long long)o->n,
          get(o->h, o->dt, at), get(g, o->dt, at), worst);
  else
    CHECK(1, "%s", name);
  int64_t es = (int64_t)wk_dtype_size(o->dt), diff = 0, first = -1;
  for (int64_t i = 0; i < o->n; i++)
    if (memcmp(g + i * es, r + i * es, (size_t)es)) { diff++; if (first < 0) first = i; }
  CHECK(diff == 0, "%s: %lld elements differ from the interpreter's bits (first %lld: %g vs %g)", name,
        (long long)diff, (long long)first, first >= 0 ? get(g, o->dt, first) : 0.0f,
        first >= 0 ? get(r, o->dt, first) : 0.0f);
  free(g);
  free(r);
}

static float tol_of(wk_dtype dt) { return dt == WK_BF16 ? 8e-3f : dt == WK_F16 ? 1e-3f : 1e-5f; }

// chain8 of bench/: |(tanh(((x + y) * y - x) * 0.5) + 1) * x|
static wk_ew_instr chain8[10];
static void chain8_init(void) {
  int m = 0;
  chain8[m++] = I(WK_EW_LOAD, 0, 0, 0, 0);
  chain8[m++] = I(WK_EW_LOAD, 1, 1, 0, 0);
  chain8[m++] = I(WK_OP_ADD, 2, 0, 1, 0);
  chain8[m++] = I(WK_OP_MUL, 3, 2, 1, 0);
  chain8[m++] = I(WK_OP_SUB, 2, 3, 0, 0);
  chain8[m++] = If(WK_OP_MUL_SCALAR, 3, 2, 0.5f, 0);
  chain8[m++] = I(WK_OP_TANH, 2, 3, 0, 0);
  chain8[m++] = If(WK_OP_ADD_SCALAR, 3, 2, 1.0f, 0);
  chain8[m++] = I(WK_OP_MUL, 2, 3, 0, 0);
  chain8[m++] = I(WK_OP_ABS, 3, 2, 0, 0);
}

static void run_chain8(const char *name, wk_dtype dt, int64_t n, bool gen) {
  int x = buf(dt, n, -2, 2), y = buf(dt, n, -2, 2), o = buf(dt, n, 0, 0);
  wk_operand in[2] = {opnd(x, dt, 1, &n, NULL, 0), opnd(y, dt, 1, &n, NULL, 0)};
  wk_step s = group(2, in, opnd(o, dt, 1, &n, NULL, 0), chain8, 10, 4);
  check_group(name, &s, o, tol_of(dt), tol_of(dt), gen);
  reset();
}

static void test_dense(void) {
  const wk_dtype dts[3] = {WK_F32, WK_BF16, WK_F16};
  const int64_t sizes[3] = {1000003, 13, 5}; // whole tiles and a tail; a tail only
  char name[96];
  for (int d = 0; d < 3; d++)
    for (int k = 0; k < 3; k++) {
      snprintf(name, sizeof name, "chain8 %s, %lld elements", wk_dtype_name(dts[d]), (long long)sizes[k]);
      run_chain8(name, dts[d], sizes[k], true);
    }
  // mixed dtypes: f32 * bf16 + f16 -> bf16, with a sigmoid and a division
  int64_t n = 4099;
  int a = buf(WK_F32, n, -3, 3), b = buf(WK_BF16, n, -1, 1), c = buf(WK_F16, n, 0.5f, 2);
  int o = buf(WK_BF16, n, 0, 0);
  wk_operand in[3] = {opnd(a, WK_F32, 1, &n, NULL, 0), opnd(b, WK_BF16, 1, &n, NULL, 0), opnd(c, WK_F16, 1, &n, NULL, 0)};
  wk_ew_instr code[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_EW_LOAD, 2, 2, 0, 0),
                        I(WK_OP_MUL, 3, 0, 1, 0), I(WK_OP_ADD, 4, 3, 2, 0), I(WK_OP_SIGMOID, 5, 4, 0, 0),
                        I(WK_OP_DIV, 6, 5, 2, 0)};
  wk_step s = group(3, in, opnd(o, WK_BF16, 1, &n, NULL, 0), code, 7, 7);
  check_group("mixed f32 / bf16 / f16 operands, bf16 out", &s, o, 8e-3f, 8e-3f, true);
  reset();
}

static void test_layouts(void) {
  // row, column and scalar broadcasts over [300, 37]
  int64_t sh[2] = {300, 37}, n = 300 * 37;
  int a = buf(WK_F32, n, -3, 3), r = buf(WK_F32, 37, -2, 2), c = buf(WK_BF16, 300, -1, 1);
  int k = buf(WK_F32, 1, 0.5f, 1.5f), o = buf(WK_F32, n, 0, 0);
  wk_operand in[4] = {opnd(a, WK_F32, 2, sh, NULL, 0), opnd(r, WK_F32, 2, sh, (int64_t[]){0, 1}, 0),
                      opnd(c, WK_BF16, 2, sh, (int64_t[]){1, 0}, 0), opnd(k, WK_F32, 2, sh, (int64_t[]){0, 0}, 0)};
  wk_ew_instr code[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_EW_LOAD, 2, 2, 0, 0),
                        I(WK_EW_LOAD, 3, 3, 0, 0), I(WK_OP_ADD, 4, 0, 1, 0),  I(WK_OP_MUL, 5, 4, 2, 0),
                        I(WK_OP_SUB, 6, 5, 3, 0),  I(WK_OP_SILU, 7, 6, 0, 0), I(WK_OP_GT, 8, 0, 1, 0),
                        I(WK_OP_GELU, 9, 6, 0, 0), I(WK_OP_WHERE, 10, 8, 7, 9)};
  wk_step s = group(4, in, opnd(o, WK_F32, 2, sh, NULL, 0), code, 11, 11);
  check_group("row, column and scalar broadcasts", &s, o, 1e-5f, 1e-5f, true);
  reset();

  // a transposed bf16 view, an f16 row broadcast, i32, casts; f16 out
  int64_t sh2[3] = {5, 40, 24}, n2 = 5 * 40 * 24;
  int x = buf(WK_BF16, n2, -2, 2), y = buf(WK_F16, 24, -1, 1), z = buf(WK_I32, n2, -5, 5);
  int o2 = buf(WK_F16, n2, 0, 0);
  wk_operand in2[3] = {opnd(x, WK_BF16, 3, sh2, (int64_t[]){960, 1, 40}, 0),
                       opnd(y, WK_F16, 3, sh2, (int64_t[]){0, 0, 1}, 0), opnd(z, WK_I32, 3, sh2, NULL, 0)};
  wk_ew_instr code2[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_EW_LOAD, 2, 2, 0, 0),
                         I(WK_OP_MUL, 3, 0, 1, 0), I(WK_OP_ADD, 4, 3, 2, 0), If(WK_OP_MUL_SCALAR, 5, 4, 0.37f, 0),
                         I(WK_OP_CAST, 6, 5, 0, 0), I(WK_OP_CAST, 7, 4, 0, 0), I(WK_OP_CAST, 8, 5, 0, 0),
                         I(WK_OP_ADD, 9, 6, 7, 0), I(WK_OP_ADD, 10, 9, 8, 0)};
  code2[6].attrs.i[0] = WK_BF16;
  code2[7].attrs.i[0] = WK_I32;
  code2[8].attrs.i[0] = WK_F16;
  wk_step s2 = group(3, in2, opnd(o2, WK_F16, 3, sh2, NULL, 0), code2, 11, 11);
  check_group("transposed bf16, f16 broadcast, i32, casts, f16 out", &s2, o2, 1e-3f, 1e-3f, true);
  reset();

  // dense operands one element off 16-byte alignment: the per-element path
  int64_t n3 = 10007;
  int u = buf(WK_F32, n3 + 1, -2, 2), v = buf(WK_F32, n3, -2, 2), o3 = buf(WK_F32, n3, 0, 0);
  wk_operand in3[2] = {opnd(u, WK_F32, 1, &n3, NULL, 1), opnd(v, WK_F32, 1, &n3, NULL, 0)};
  wk_step s3 = group(2, in3, opnd(o3, WK_F32, 1, &n3, NULL, 0), chain8, 10, 4);
  check_group("chain8 with an unaligned operand", &s3, o3, 1e-5f, 1e-5f, true);
  reset();

  // special values stored as bf16 and f16 (a lone load: the values reach the
  // rounding untouched): NaN payloads, infinities, signed zeros, subnormals,
  // overflow, ties to even; 8 tiles and a tail
  const uint32_t special[] = {0x7fc12345u, 0xffa00001u, 0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u,
                              0x00000001u, 0x806d0000u, 0x7f7fffffu, 0x477ff000u, 0x3f808000u, 0x3f818000u,
                              0x3f80c000u, 0xc7fff000u, 0x33800000u, 0x387fe000u};
  int64_t n5 = 67;
  int sv = buf(WK_F32, n5, -1e6f, 1e6f);
  for (int64_t i = 0; i < n5; i++)
    if (i % 3 != 2) memcpy((float *)B[sv].h + i, &special[(i * 7) % 16], 4);
  slot_upload(sv);
  wk_ew_instr code5[] = {I(WK_EW_LOAD, 0, 0, 0, 0)};
  for (int h = 0; h < 2; h++) {
    wk_dtype dt = h ? WK_F16 : WK_BF16;
    int o5 = buf(dt, n5, 0, 0);
    wk_operand in5[1] = {opnd(sv, WK_F32, 1, &n5, NULL, 0)};
    wk_step s5 = group(1, in5, opnd(o5, dt, 1, &n5, NULL, 0), code5, 1, 1);
    check_group(h ? "special values rounded to f16" : "special values rounded to bf16", &s5, o5, 0, tol_of(dt), true);
  }
  reset();

  // bf16 chain8 where one tile in a few holds a NaN or an infinity, at each of the 8
  // places of a tile (the tiled path tests a whole tile for NaN once and redoes only
  // such tiles pair by pair), a tail of 5; then the same data through views that
  // must take the per-element path: an input and an output 1 element off 16-byte
  // alignment, and a view of every other element (strided)
  int64_t n6 = 8 * 64 + 5;
  int x6 = buf(WK_BF16, 2 * n6 + 2, -2, 2), y6 = buf(WK_BF16, 2 * n6 + 2, -2, 2), o6 = buf(WK_BF16, n6, 0, 0);
  int o7 = buf(WK_BF16, n6 + 1, 0, 0);
  for (int t = 0; t < 64; t += 3) {
    int64_t at = (int64_t)t * 8 + t % 8;
    put(B[x6].h, WK_BF16, at, t % 2 ? NAN : INFINITY);
    if (t % 5 == 0) put(B[y6].h, WK_BF16, at + 1 < n6 ? at + 1 : at, t % 2 ? -INFINITY : NAN);
  }
  put(B[x6].h, WK_BF16, n6 - 2, NAN);  // in the tail
  slot_upload(x6);
  slot_upload(y6);
  wk_operand in6[2] = {opnd(x6, WK_BF16, 1, &n6, NULL, 0), opnd(y6, WK_BF16, 1, &n6, NULL, 0)};
  wk_step s6 = group(2, in6, opnd(o6, WK_BF16, 1, &n6, NULL, 0), chain8, 10, 4);
  check_group("bf16 chain8, NaN / inf in one tile in three", &s6, o6, tol_of(WK_BF16), tol_of(WK_BF16), true);
  in6[0] = opnd(x6, WK_BF16, 1, &n6, NULL, 1);
  s6 = group(2, in6, opnd(o6, WK_BF16, 1, &n6, NULL, 0), chain8, 10, 4);
  check_group("bf16 chain8, an input 1 element off alignment", &s6, o6, tol_of(WK_BF16), tol_of(WK_BF16), true);
  // (the output off alignment: element 0 stays unwritten, so against the interpreter only)
  in6[0] = opnd(x6, WK_BF16, 1, &n6, NULL, 0);
  s6 = group(2, in6, opnd(o7, WK_BF16, 1, &n6, NULL, 1), chain8, 10, 4);
  {
    wk_cuda_ew_gen_stats g0 = gen_stats();
    unsigned char *gg = run_device("bf16 chain8, output off alignment", &s6, o7);
    wk_cuda_ew_gen_stats g1 = gen_stats();
    wk_cuda_set_ew_gen(0);
    unsigned char *rr = run_device("bf16 chain8, output off alignment", &s6, o7);
    wk_cuda_set_ew_gen(2);
    CHECK(g1.launches > g0.launches, "bf16 chain8, the output 1 element off alignment: a generated kernel ran");
    CHECK(gg && rr && !memcmp(gg, rr, B[o7].bytes), "bf16 chain8, the output 1 element off alignment: the interpreter's bits");
    free(gg);
    free(rr);
  }
  in6[0] = opnd(x6, WK_BF16, 1, &n6, (int64_t[]){2}, 0);
  in6[1] = opnd(y6, WK_BF16, 1, &n6, (int64_t[]){2}, 1);
  s6 = group(2, in6, opnd(o6, WK_BF16, 1, &n6, NULL, 0), chain8, 10, 4);
  check_group("bf16 chain8 over views of every other element", &s6, o6, tol_of(WK_BF16), tol_of(WK_BF16), true);
  reset();

  // i32 output (a comparison cast to i32)
  int64_t n4 = 1000;
  int p = buf(WK_F32, n4, -1, 1), q = buf(WK_F32, n4, -1, 1), o4 = buf(WK_I32, n4, 0, 0);
  wk_operand in4[2] = {opnd(p, WK_F32, 1, &n4, NULL, 0), opnd(q, WK_F32, 1, &n4, NULL, 0)};
  wk_ew_instr code4[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_GE, 2, 0, 1, 0),
                         If(WK_OP_MUL_SCALAR, 3, 2, 3.0f, 0)};
  wk_step s4 = group(2, in4, opnd(o4, WK_I32, 1, &n4, NULL, 0), code4, 4, 4);
  check_group("comparison stored as i32", &s4, o4, 0, 0, true);
  reset();
}

static void test_programs(void) {
  // sources computed from the element index (the offset output view is dense)
  int64_t sh[2] = {64, 96}, n = 64 * 96;
  int in0 = buf(WK_F32, n, -1, 1), o = buf(WK_F32, n, 0, 0);
  wk_ew_instr code[] = {I(WK_EW_LOAD, 0, 0, 0, 0), If(WK_OP_RAND, 1, 0, -1.0f, 2.0f), I(WK_OP_RANDN, 2, 0, 0, 0),
                        If(WK_OP_DROPOUT, 3, 0, 0.3f, 0), If(WK_OP_ARANGE, 4, 0, 0.5f, 0.01f),
                        I(WK_OP_CAUSAL_MASK, 5, 0, 0, 0), If(WK_OP_CONST, 6, 0, -1e9f, 0), I(WK_OP_MAXIMUM, 7, 5, 6, 0),
                        I(WK_OP_ADD, 8, 1, 2, 0), I(WK_OP_ADD, 9, 8, 3, 0), I(WK_OP_ADD, 10, 9, 4, 0),
                        If(WK_OP_MUL_SCALAR, 11, 7, 1e-9f, 0), I(WK_OP_ADD, 12, 10, 11, 0)};
  code[1].attrs.u = 7;
  code[2].attrs.u = 1234567;
  code[3].attrs.u = 99;
  code[5].attrs.i[0] = 16;
  code[5].attrs.i[1] = 96;
  wk_operand in[1] = {opnd(in0, WK_F32, 2, sh, NULL, 0)};
  wk_step s = group(1, in, opnd(o, WK_F32, 2, sh, NULL, 0), code, 13, 13);
  check_group("rand, randn, dropout, arange, causal mask, const", &s, o, 1e-5f, 1e-5f, true);
  reset();

  // a program of 2 + 4 * 16 = 66 instructions (past the tiled path's 48), a row broadcast
  int64_t sh2[2] = {123, 77}, n2 = 123 * 77;
  int a = buf(WK_F32, n2, -1, 1), b = buf(WK_F32, 77, -1, 1), o2 = buf(WK_F32, n2, 0, 0);
  wk_ew_instr code2[2 + 4 * 16];
  int m = 0;
  code2[m++] = I(WK_EW_LOAD, 0, 0, 0, 0);
  code2[m++] = I(WK_EW_LOAD, 1, 1, 0, 0);
  int acc = 0;
  for (int r = 0; r < 16; r++) { // acc = tanh(acc * b + a) * 0.9 - exp(-|acc|) * 0.1
    int t = 2 + (r & 1) * 2;
    code2[m++] = I(WK_OP_MUL, t, acc, 1, 0);
    code2[m++] = I(WK_OP_ADD, t, t, 0, 0);
    code2[m++] = I(r % 3 == 0 ? WK_OP_SIGMOID : r % 3 == 1 ? WK_OP_TANH : WK_OP_GELU_TANH, t + 1, t, 0, 0);
    code2[m++] = If(WK_OP_MUL_SCALAR, t, t + 1, 0.9f, 0);
    acc = t;
  }
  wk_operand in2[2] = {opnd(a, WK_F32, 2, sh2, NULL, 0), opnd(b, WK_F32, 2, sh2, (int64_t[]){0, 1}, 0)};
  wk_step s2 = group(2, in2, opnd(o2, WK_F32, 2, sh2, NULL, 0), code2, m, 6);
  check_group("a program of 66 instructions (per-element path)", &s2, o2, 1e-5f, 1e-5f, true);
  reset();
}

// Zero elements: nothing launches, nothing fails (and through the public API).
static void test_zero(void) {
  int64_t sh[2] = {0, 5};
  int x = buf(WK_F32, 0, 0, 0), y = buf(WK_F32, 0, 0, 0), o = buf(WK_F32, 0, 0, 0);
  wk_operand in[2] = {opnd(x, WK_F32, 2, sh, NULL, 0), opnd(y, WK_F32, 2, sh, NULL, 0)};
  wk_step s = group(2, in, opnd(o, WK_F32, 2, sh, NULL, 0), chain8, 10, 4);
  void *ds[DUAL_SLOTS];
  dev_slots(ds);
  wk_cuda_ew_gen_stats s0 = gen_stats();
  wk_status st = gpu->run(&s, ds), sy = gpu->sync();
  wk_cuda_ew_gen_stats s1 = gen_stats();
  CHECK(!st && !sy && s1.launches == s0.launches && s1.fallbacks == s0.fallbacks,
        "zero elements: no launch, no error (%d, %d)", st, sy);
  reset();
  wk_scope_begin();
  wk_tensor *a = wk_to_device(wk_zeros(2, sh, WK_BF16), WK_CUDA);
  wk_tensor *r = wk_keep(wk_abs(wk_mul(wk_tanh(wk_add_scalar(a, 1.0f)), a)));
  wk_scope_end();
  CHECK(r && wk_eval(1, &r) == WK_OK && wk_numel(r) == 0, "zero elements through the API");
  wk_tensor_free(r);
}

// Groups the generator cannot take run in the interpreter, with the same results.
static void test_fallbacks(void) {
  wk_cuda_ew_gen_test_faults(WK_OP_TANH, 0);
  wk_cuda_ew_gen_stats s0 = gen_stats();
  run_chain8("an op the generator does not know: the interpreter", WK_F32, 5000, false);
  wk_cuda_ew_gen_stats s1 = gen_stats();
  CHECK(s1.fallbacks > s0.fallbacks && s1.compiled == s0.compiled, "unknown op: a fallback, nothing compiled");
  wk_cuda_ew_gen_test_faults(-1, 1);
  run_chain8("a source that does not compile: the interpreter", WK_BF16, 5000, false);
  wk_cuda_ew_gen_stats s2 = gen_stats();
  CHECK(s2.compile_failures > s1.compile_failures && s2.fallbacks > s1.fallbacks,
        "compile error: counted as a failure and a fallback (failures %llu)", s2.compile_failures - s1.compile_failures);
  wk_cuda_ew_gen_test_faults(-1, 0);
  // a compile error concerns one source: later groups still get generated kernels
  int64_t n = 3001;
  int x = buf(WK_F16, n, -1, 1), y = buf(WK_F32, n, -1, 1), o = buf(WK_F32, n, 0, 0);
  wk_operand in[2] = {opnd(x, WK_F16, 1, &n, NULL, 0), opnd(y, WK_F32, 1, &n, NULL, 0)};
  wk_step s = group(2, in, opnd(o, WK_F32, 1, &n, NULL, 0), chain8, 10, 4);
  check_group("after a compile error, generation goes on", &s, o, 1e-5f, 1e-5f, true);
  reset();
}

// The default mode generates kernels from 4096 elements on.
static void test_threshold(void) {
  const int64_t sizes[2] = {4095, 4096};
  for (int k = 0; k < 2; k++) {
    int64_t n = sizes[k];
    int x = buf(WK_F32, n, -1, 1), y = buf(WK_F32, n, -1, 1), o = buf(WK_F32, n, 0, 0);
    wk_operand in[2] = {opnd(x, WK_F32, 1, &n, NULL, 0), opnd(y, WK_F32, 1, &n, NULL, 0)};
    wk_step s = group(2, in, opnd(o, WK_F32, 1, &n, NULL, 0), chain8, 10, 4);
    wk_cuda_set_ew_gen(1);
    wk_cuda_ew_gen_stats s0 = gen_stats();
    free(run_device("threshold", &s, o));
    wk_cuda_ew_gen_stats s1 = gen_stats();
    wk_cuda_set_ew_gen(2);
    CHECK((s1.launches > s0.launches) == (k == 1), "default mode, %lld elements: %s", (long long)n,
          k ? "generated" : "interpreted");
    reset();
  }
}

// ---- a plan replayed as a CUDA graph, its scalar changing between evaluations ----
static wk_tensor *plan(wk_tensor *x, wk_tensor *w1, wk_tensor *w2, wk_tensor *b, float s) {
  wk_scope_begin();
  wk_tensor *h = wk_matmul(x, w1);
  wk_tensor *g = wk_add(wk_mul(wk_tanh(wk_mul_scalar(h, s)), wk_sigmoid(h)), b); // one fused group
  wk_tensor *y = wk_keep(wk_add_scalar(wk_matmul(g, w2), s));
  wk_scope_end();
  return y;
}
static void test_graph(void) {
  enum { M = 96, K = 64, EVALS = 5 };
  float *xv = malloc(sizeof(float) * M * K), *w1v = malloc(sizeof(float) * K * K), *w2v = malloc(sizeof(float) * K * K);
  float bv[K];
  for (int i = 0; i < M * K; i++) xv[i] = frand(-1, 1);
  for (int i = 0; i < K * K; i++) { w1v[i] = frand(-0.2f, 0.2f); w2v[i] = frand(-0.2f, 0.2f); }
  for (int i = 0; i < K; i++) bv[i] = frand(-1, 1);
  wk_tensor *hx = wk_from_data(2, (int64_t[]){M, K}, WK_F32, xv), *hw1 = wk_from_data(2, (int64_t[]){K, K}, WK_F32, w1v);
  wk_tensor *hw2 = wk_from_data(2, (int64_t[]){K, K}, WK_F32, w2v), *hb = wk_from_data(1, (int64_t[]){K}, WK_F32, bv);
  wk_tensor *d[4], *hs[4] = {hx, hw1, hw2, hb};
  for (int k = 0; k < 4; k++) {
    d[k] = wk_keep(wk_to_device(hs[k], WK_CUDA));
    CHECK(d[k] && wk_eval(1, &d[k]) == WK_OK, "upload %d", k);
  }
  const float scal[EVALS] = {0.5f, 0.25f, 2.0f, 1.0f, -0.75f};
  wk_cuda_set_ew_gen(2);
  wk_cuda_set_graphs(1);
  wk_cuda_graph_stats g0;
  wk_cuda_graph_stats_get(&g0);
  wk_cuda_ew_gen_stats c1 = gen_stats();
  int ok = 0, same = 0;
  for (int e = 0; e < EVALS; e++) {
    if (e == 1) c1 = gen_stats(); // after the first (uncaptured) evaluation compiled the group
    wk_tensor *ref = plan(hx, hw1, hw2, hb, scal[e]), *got = plan(d[0], d[1], d[2], d[3], scal[e]);
    wk_eval(1, &got);
    float *rv = read_all(ref), *gv = read_all(got);
    wk_cuda_set_graphs(0); // the same plan launched step by step
    wk_tensor *step = plan(d[0], d[1], d[2], d[3], scal[e]);
    wk_eval(1, &step);
    wk_cuda_set_graphs(1);
    float *sv = read_all(step);
    bool close = rv && gv;
    for (int i = 0; close && i < M * K; i++) close = fabsf(rv[i] - gv[i]) <= 1e-4f + 1e-4f * fabsf(rv[i]);
    ok += close;
    same += gv && sv && !memcmp(gv, sv, sizeof(float) * M * K);
    free(rv);
    free(gv);
    free(sv);
    wk_tensor_free(ref);
    wk_tensor_free(got);
    wk_tensor_free(step);
  }
  wk_cuda_ew_gen_stats c2 = gen_stats();
  wk_cuda_graph_stats g1;
  wk_cuda_graph_stats_get(&g1);
  CHECK(ok == EVALS, "graph plan: %d of %d evaluations within 1e-4 of the CPU", ok, EVALS);
  CHECK(same == EVALS, "graph plan: %d of %d replays equal the step-by-step launch bit for bit", same, EVALS);
  CHECK(g1.captures > g0.captures && g1.replays > g0.replays, "graph plan: captured (%llu) and replayed (%llu)",
        g1.captures - g0.captures, g1.replays - g0.replays);
  CHECK(c2.compiled == c1.compiled && c2.fallbacks == c1.fallbacks && c2.launches > c1.launches,
        "graph plan: compiled once before the capture, generated kernels after it (compiled %llu, fallbacks %llu)",
        c2.compiled - c1.compiled, c2.fallbacks - c1.fallbacks);
  for (int k = 0; k < 4; k++) { wk_tensor_free(d[k]); wk_tensor_free(hs[k]); }
  free(xv);
  free(w1v);
  free(w2v);
}

int main(void) {
  if (!dual_open()) return 77;
  chain8_init();
  test_dense();
  test_layouts();
  test_programs();
  test_zero();
  test_fallbacks();
  test_threshold();
  test_graph();
  wk_cuda_ew_gen_stats st = gen_stats();
  printf("generated kernels: %llu compiled and %llu loaded from the disk cache in %.0f ms, %llu launches, %llu fallbacks, "
         "%llu compile failures\n", st.compiled, st.cache_loads, st.compile_ms, st.launches, st.fallbacks, st.compile_failures);
  return check_report();
}
