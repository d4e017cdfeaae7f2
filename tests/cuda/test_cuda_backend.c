// CUDA backend vs CPU backend: every kernel on the same inputs, steps built by hand
// (so the test covers layouts the planner may not produce yet), then a few graphs
// through the public API with wk_to_device. Built and run only with WICK_CUDA.
//
// Tolerances (max |gpu - cpu| <= atol + rtol * |cpu|):
//  - f32 elementwise: the device runs the CPU VM's own polynomial formulas; only
//    FMA contraction differs -> 1e-5 relative.
//  - f32 reductions / row kernels / attention: summation order differs (tree vs
//    16-lane partials) and exp is libm's vs the CPU polynomial (~2e-7 rel) ->
//    1e-4 relative with a small absolute floor.
//  - f32 GEMM: cuBLAS (TF32 off) vs the CPU GEMM, K <= 128 -> 1e-4.
//  - bf16 / f16 outputs: the f32 results may round to neighbouring values: one
//    ulp is 2^-8 (bf16) / 2^-11 (f16) relative -> 8e-3 / 1e-3.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "check.h"
#include "dual_slots.h"

// Runs steps (a chain head when s->chain > 0) on both backends; compares slot `out`.
static void compare(const char *name, const wk_step *s, int out, float atol, float rtol) {
  run_host(name, s, out);
  unsigned char *dev = run_device(name, s, out);
  const tbuf *o = &B[out];
  float worst = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < o->n; i++) {
    float c = get(o->h, o->dt, i), g = get(dev, o->dt, i);
    float err = fabsf(c - g), lim = atol + rtol * fabsf(c);
    bool same_nonfinite = (isnan(c) && isnan(g)) || (isinf(c) && c == g);
    if (same_nonfinite) continue;
    if (!(err <= lim) && (at < 0 || err / lim > worst)) { worst = err / (lim > 0 ? lim : 1); at = i; }
  }
  if (at >= 0)
    CHECK(0, "%s: element %lld: cpu %g, cuda %g (%.1fx the tolerance)", name, (long long)at, get(o->h, o->dt, at),
          get(dev, o->dt, at), worst);
  else
    CHECK(1, "%s", name);
  free(dev);
}

// ---- elementwise ----
static void test_ew(void) {
  int64_t sh[2] = {300, 37}, row[2] = {1, 37};
  int a = buf(WK_F32, 300 * 37, -3, 3), b = buf(WK_F32, 37, -2, 2), o = out_buf(WK_F32, 300 * 37);
  wk_ew_instr code[] = {
      I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_ADD, 2, 0, 1, 0), I(WK_OP_TANH, 3, 2, 0, 0),
      I(WK_OP_SIGMOID, 4, 0, 0, 0), I(WK_OP_MUL, 5, 3, 4, 0), I(WK_OP_GELU, 6, 0, 0, 0), I(WK_OP_SUB, 7, 5, 6, 0),
      I(WK_OP_ABS, 8, 1, 0, 0), If(WK_OP_ADD_SCALAR, 9, 8, 1.0f, 0), I(WK_OP_LOG, 10, 9, 0, 0),
      I(WK_OP_DIV, 11, 7, 9, 0), I(WK_OP_GT, 12, 0, 1, 0), I(WK_OP_WHERE, 13, 12, 11, 10),
      I(WK_OP_SILU, 14, 13, 0, 0), I(WK_OP_GELU_TANH, 15, 14, 0, 0), If(WK_OP_POW_SCALAR, 16, 9, 1.5f, 0),
      I(WK_OP_MAXIMUM, 17, 15, 16, 0), I(WK_OP_EXP, 18, 1, 0, 0), I(WK_OP_GELU_BWD, 19, 0, 18, 0),
      I(WK_OP_GELU_TANH_BWD, 20, 1, 19, 0), I(WK_OP_ADD, 21, 17, 20, 0), I(WK_OP_RSQRT, 22, 9, 0, 0),
      I(WK_OP_MINIMUM, 23, 21, 22, 0), I(WK_OP_SQUARE, 24, 23, 0, 0), I(WK_OP_SQRT, 25, 24, 0, 0),
      I(WK_OP_NEG, 26, 25, 0, 0), I(WK_OP_RELU, 27, 26, 0, 0), I(WK_OP_ADD, 28, 27, 25, 0),
  };
  wk_step s = step0(WK_STEP_FUSED_EW);
  s.nin = 2;
  s.in[0] = op_c(a, WK_F32, 2, sh);
  s.in[1] = op_s(b, WK_F32, 2, sh, (int64_t[]){0, 1}, 0);
  (void)row;
  s.out = op_c(o, WK_F32, 2, sh);
  s.prog = (wk_ew_prog){(int)(sizeof code / sizeof code[0]), 29, 28, code};
  compare("ew f32 chain of 27 ops, broadcast row", &s, o, 1e-5f, 1e-5f);
  reset();

  // strided and mixed dtypes: bf16 transposed view + f16 + i32 -> f16 output, casts
  int64_t sh2[3] = {5, 40, 24};
  int x = buf(WK_BF16, 5 * 24 * 40, -2, 2), y = buf(WK_F16, 24, -1, 1), z = buf(WK_I32, 5 * 40 * 24, -5, 5);
  int o2 = out_buf(WK_F16, 5 * 40 * 24);
  wk_ew_instr code2[] = {
      I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_EW_LOAD, 2, 2, 0, 0), I(WK_OP_MUL, 3, 0, 1, 0),
      I(WK_OP_ADD, 4, 3, 2, 0), If(WK_OP_MUL_SCALAR, 5, 4, 0.37f, 0), If(WK_OP_CAST, 6, 5, 0, 0),
      If(WK_OP_CAST, 7, 4, 0, 0), If(WK_OP_CAST, 8, 5, 0, 0), I(WK_OP_ADD, 9, 6, 7, 0), I(WK_OP_ADD, 10, 9, 8, 0)};
  code2[6].attrs.i[0] = WK_BF16;
  code2[7].attrs.i[0] = WK_I32;
  code2[8].attrs.i[0] = WK_F16;
  wk_step s2 = step0(WK_STEP_FUSED_EW);
  s2.nin = 3;
  s2.in[0] = op_s(x, WK_BF16, 3, sh2, (int64_t[]){24 * 40, 1, 40}, 0); // [5, 24, 40] transposed
  s2.in[1] = op_s(y, WK_F16, 3, sh2, (int64_t[]){0, 0, 1}, 0);
  s2.in[2] = op_c(z, WK_I32, 3, sh2);
  s2.out = op_c(o2, WK_F16, 3, sh2);
  s2.prog = (wk_ew_prog){11, 11, 10, code2};
  compare("ew transposed bf16 + f16 broadcast + i32, casts, f16 out", &s2, o2, 1e-3f, 1e-3f);
  reset();

  // index-based sources inside a group (offset view of the output too)
  int64_t sh3[2] = {64, 96};
  int o3 = out_buf(WK_F32, 64 * 96), in3 = buf(WK_F32, 64 * 96, -1, 1);
  wk_ew_instr code3[] = {
      I(WK_EW_LOAD, 0, 0, 0, 0), If(WK_OP_RAND, 1, 0, -1.0f, 2.0f), I(WK_OP_RANDN, 2, 0, 0, 0),
      If(WK_OP_DROPOUT, 3, 0, 0.3f, 0), If(WK_OP_ARANGE, 4, 0, 0.5f, 0.01f), I(WK_OP_CAUSAL_MASK, 5, 0, 0, 0),
      If(WK_OP_CONST, 6, 0, -1e9f, 0), I(WK_OP_MAXIMUM, 7, 5, 6, 0), I(WK_OP_ADD, 8, 1, 2, 0), I(WK_OP_ADD, 9, 8, 3, 0),
      I(WK_OP_ADD, 10, 9, 4, 0), If(WK_OP_MUL_SCALAR, 11, 7, 1e-9f, 0), I(WK_OP_ADD, 12, 10, 11, 0)};
  code3[1].attrs.u = 7;
  code3[2].attrs.u = 1234567;
  code3[3].attrs.u = 99;
  code3[5].attrs.i[0] = 16;
  code3[5].attrs.i[1] = 96;
  wk_step s3 = step0(WK_STEP_FUSED_EW);
  s3.nin = 1;
  s3.in[0] = op_c(in3, WK_F32, 2, sh3);
  s3.out = op_c(o3, WK_F32, 2, sh3);
  s3.prog = (wk_ew_prog){13, 13, 12, code3};
  compare("ew rand, randn, dropout, arange, causal mask", &s3, o3, 1e-5f, 1e-5f);
  reset();
}

// ---- reductions, argmax, concat, pad ----
static void test_reduce(void) {
  int64_t sh[3] = {6, 50, 33};
  int x = buf(WK_F32, 6 * 50 * 33, -2, 2), y = buf(WK_BF16, 33, -1, 1);
  int o1 = out_buf(WK_F32, 6 * 50), o2 = out_buf(WK_F32, 6 * 33), o3 = out_buf(WK_BF16, 50), o4 = out_buf(WK_F32, 6 * 50);
  wk_step s = step0(WK_OP_SUM);
  s.nin = 1;
  s.in[0] = op_c(x, WK_F32, 3, sh);
  s.attrs.axes = 4;
  s.out = op_c(o1, WK_F32, 2, (int64_t[]){6, 50});
  compare("sum over the last axis", &s, o1, 1e-5f, 1e-4f);
  s.attrs.axes = 2;
  s.out = op_c(o2, WK_F32, 2, (int64_t[]){6, 33});
  compare("sum over the middle axis", &s, o2, 1e-5f, 1e-4f);
  s.op = WK_OP_MAX;
  s.attrs.axes = 5; // scattered: axes 0 and 2
  s.out = op_c(o3, WK_BF16, 1, (int64_t[]){50});
  compare("max over axes 0 and 2 (scattered), bf16 out", &s, o3, 0, 8e-3f);
  // prologue: sum((x * y)^2) over the last axis, x read transposed
  wk_ew_instr pro[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_MUL, 2, 0, 1, 0),
                       I(WK_OP_SQUARE, 3, 2, 0, 0)};
  wk_step p = step0(WK_OP_SUM);
  p.nin = 1;
  p.in[0] = op_c(-1, WK_F32, 3, (int64_t[]){6, 50, 33});
  p.in[0].slot = -1;
  p.attrs.axes = 4;
  p.npro = 2;
  p.pro_in[0] = op_s(x, WK_F32, 3, (int64_t[]){6, 50, 33}, (int64_t[]){1650, 1, 50}, 0);
  p.pro_in[1] = op_s(y, WK_BF16, 3, (int64_t[]){6, 50, 33}, (int64_t[]){0, 0, 1}, 0);
  p.prog = (wk_ew_prog){4, 4, 3, pro};
  p.out = op_c(o4, WK_F32, 2, (int64_t[]){6, 50});
  compare("sum with a prologue over a transposed view", &p, o4, 1e-5f, 1e-4f);
  reset();

  // few outputs, long rows (the two-stage path): sum((x - y)^2) and max(x * y)
  // over 1.2M elements into 1 and into 3 outputs, rows and columns, with a prologue
  {
    const int64_t A = 3, Bn = 400037, N = A * Bn;
    int bx = buf(WK_F32, N, -2, 2), by = buf(WK_BF16, N, -1, 1);
    int r1 = out_buf(WK_F32, 1), r3 = out_buf(WK_F32, 3), rb = out_buf(WK_BF16, 3);
    wk_ew_instr sq[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_SUB, 2, 0, 1, 0),
                        I(WK_OP_SQUARE, 3, 2, 0, 0)};
    wk_ew_instr mu[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_MUL, 2, 0, 1, 0)};
    for (int cols = 0; cols < 2; cols++) {
      int64_t shp[2] = {cols ? Bn : A, cols ? A : Bn};
      for (int mx = 0; mx < 2; mx++)
        for (int into = 0; into < 3; into++) {
          wk_step q = step0(mx ? WK_OP_MAX : WK_OP_SUM);
          q.nin = 1;
          q.in[0] = op_c(-1, WK_F32, 2, shp);
          q.in[0].slot = -1;
          q.npro = 2;
          q.pro_in[0] = op_c(bx, WK_F32, 2, shp);
          q.pro_in[1] = op_c(by, WK_BF16, 2, shp);
          q.prog = mx ? (wk_ew_prog){3, 3, 2, mu} : (wk_ew_prog){4, 4, 3, sq};
          int o = into == 0 ? r1 : into == 1 ? r3 : rb;
          q.attrs.axes = into == 0 ? 3 : cols ? 1 : 2;
          q.out = into == 0 ? op_c(o, WK_F32, 1, (int64_t[]){1}) : op_c(o, into == 1 ? WK_F32 : WK_BF16, 1, (int64_t[]){3});
          char name[128];
          snprintf(name, sizeof name, "%s over %lld x %lld %s into %d%s (prologue)", mx ? "max" : "sum", (long long)shp[0],
                   (long long)shp[1], into == 0 ? "(all)" : cols ? "(axis 0)" : "(axis 1)", into == 0 ? 1 : 3,
                   into == 2 ? ", bf16 out" : "");
          // f32 sums of 400k positive terms in two different orders: 1e-4 relative
          float rt = into == 2 ? 8e-3f : 1e-4f;
          compare(name, &q, o, 1e-5f, rt);
        }
    }
    // no prologue, and a NaN in the middle of a long row: max must give NaN
    ((float *)B[bx].h)[N / 2 + 1] = NAN;
    slot_upload(bx);
    for (int mx = 0; mx < 2; mx++) {
      wk_step q = step0(mx ? WK_OP_MAX : WK_OP_SUM);
      q.nin = 1;
      q.in[0] = op_c(bx, WK_F32, 2, (int64_t[]){A, Bn});
      q.attrs.axes = 3;
      q.out = op_c(r1, WK_F32, 1, (int64_t[]){1});
      compare(mx ? "max over 1.2M elements with a NaN (no prologue)" : "sum over 1.2M elements with a NaN (no prologue)",
              &q, r1, 1e-5f, 1e-4f);
      q.attrs.axes = 2;
      q.out = op_c(r3, WK_F32, 1, (int64_t[]){3});
      compare(mx ? "max into 3 with a NaN in one row" : "sum into 3 with a NaN in one row", &q, r3, 1e-5f, 1e-4f);
    }
    // determinism: the same sum twice gives the same bits
    wk_step q = step0(WK_OP_SUM);
    q.nin = 1;
    q.in[0] = op_c(by, WK_BF16, 2, (int64_t[]){A, Bn});
    q.attrs.axes = 3;
    q.out = op_c(r1, WK_F32, 1, (int64_t[]){1});
    void *ds[DUAL_SLOTS];
    dev_slots(ds);
    float first = 0, again = 0;
    CHECK(!gpu->run(&q, ds) && !gpu->sync(), "deterministic sum: run");
    gpu->download(&first, B[r1].d, sizeof first);
    CHECK(!gpu->run(&q, ds) && !gpu->sync(), "deterministic sum: run again");
    gpu->download(&again, B[r1].d, sizeof again);
    CHECK(memcmp(&first, &again, sizeof first) == 0, "sum over 1.2M elements is deterministic (%a vs %a)", first, again);
  }
  reset();

  int v = buf(WK_F32, 7 * 300 * 5, -4, 4), ai = out_buf(WK_I32, 35), aj = out_buf(WK_I32, 7 * 300);
  wk_step am = step0(WK_OP_ARGMAX);
  am.nin = 1;
  am.in[0] = op_c(v, WK_F32, 3, (int64_t[]){7, 300, 5});
  am.attrs.i[0] = 1;
  am.out = op_c(ai, WK_I32, 2, (int64_t[]){7, 5});
  compare("argmax over axis 1", &am, ai, 0, 0);
  am.attrs.i[0] = 2;
  am.out = op_c(aj, WK_I32, 2, (int64_t[]){7, 300});
  compare("argmax over the last axis", &am, aj, 0, 0);
  reset();

  int c0 = buf(WK_BF16, 4 * 3 * 5, -1, 1), c1 = buf(WK_BF16, 4 * 2 * 5, -1, 1), c2 = buf(WK_BF16, 5 * 4, -1, 1);
  int co = out_buf(WK_BF16, 4 * 6 * 5);
  wk_step cc = step0(WK_OP_CONCAT);
  cc.nin = 3;
  cc.attrs.i[0] = 1;
  cc.in[0] = op_c(c0, WK_BF16, 3, (int64_t[]){4, 3, 5});
  cc.in[1] = op_c(c1, WK_BF16, 3, (int64_t[]){4, 2, 5});
  cc.in[2] = op_s(c2, WK_BF16, 3, (int64_t[]){4, 1, 5}, (int64_t[]){1, 20, 4}, 0); // transposed [5,4] -> [4,1,5]
  cc.out = op_c(co, WK_BF16, 3, (int64_t[]){4, 6, 5});
  compare("concat of 3 (one transposed) along axis 1, bf16", &cc, co, 0, 0);
  int pi = buf(WK_F32, 3 * 7, -1, 1), po = out_buf(WK_F32, 6 * 7);
  wk_step pd = step0(WK_OP_PAD);
  pd.nin = 1;
  pd.in[0] = op_s(pi, WK_F32, 2, (int64_t[]){3, 7}, (int64_t[]){1, 3}, 0);
  pd.attrs.i[0] = 0;
  pd.attrs.i[1] = 2;
  pd.attrs.f[0] = 0.5f;
  pd.out = op_c(po, WK_F32, 2, (int64_t[]){6, 7});
  compare("pad axis 0 (2 before, 1 after) of a transposed view", &pd, po, 0, 0);
  reset();
}

// ---- matmul and lora ----
static void test_matmul(void) {
  int a = buf(WK_F32, 3 * 64 * 48, -1, 1), b = buf(WK_F32, 80 * 48, -1, 1), o = out_buf(WK_F32, 3 * 64 * 80);
  wk_step s = step0(WK_OP_MATMUL);
  s.nin = 2;
  s.in[0] = op_c(a, WK_F32, 3, (int64_t[]){3, 64, 48});
  s.in[1] = op_s(b, WK_F32, 3, (int64_t[]){3, 48, 80}, (int64_t[]){0, 1, 48}, 0); // broadcast, transposed
  s.out = op_c(o, WK_F32, 3, (int64_t[]){3, 64, 80});
  compare("matmul f32 [3,64,48] @ broadcast transposed [48,80]", &s, o, 1e-4f, 1e-4f);
  reset();
  int x = buf(WK_BF16, 2 * 3 * 32 * 16, -1, 1), y = buf(WK_BF16, 3 * 16 * 24, -1, 1), z = out_buf(WK_BF16, 2 * 3 * 32 * 24);
  wk_step t = step0(WK_OP_MATMUL);
  t.nin = 2;
  t.in[0] = op_c(x, WK_BF16, 4, (int64_t[]){2, 3, 32, 16});
  t.in[1] = op_c(y, WK_BF16, 4, (int64_t[]){1, 3, 16, 24});
  t.out = op_c(z, WK_BF16, 4, (int64_t[]){2, 3, 32, 24});
  compare("matmul bf16 [2,3,32,16] @ [1,3,16,24] (batch densified)", &t, z, 2e-2f, 8e-3f);
  int xs = buf(WK_F16, 40 * 2 * 16, -1, 1), yf = buf(WK_F16, 16 * 24, -1, 1), zs = out_buf(WK_F16, 2 * 40 * 24);
  t.in[0] = op_s(xs, WK_F16, 3, (int64_t[]){2, 40, 16}, (int64_t[]){16, 32, 1}, 0); // permuted batch
  t.in[1] = op_c(yf, WK_F16, 2, (int64_t[]){16, 24});
  t.out = op_c(zs, WK_F16, 3, (int64_t[]){2, 40, 24});
  compare("matmul f16 with a permuted batch view", &t, zs, 5e-3f, 1e-3f);
  reset();

  // f32 with one dimension <= 16 (LoRA's rank products): A contiguous along K or along
  // M, K <= 16 (also K = 1), a small M, long K (4100), either operand a transposed view.
  static const int sk[][5] = {{300, 896, 8, 0, 0}, {300, 8, 896, 0, 0}, {96, 300, 8, 1, 0}, {8, 300, 96, 1, 0},
                              {5, 200, 40, 0, 1}, {77, 1000, 13, 0, 0}, {1000, 37, 3, 1, 1}, {64, 1, 50, 0, 0},
                              {16, 4100, 16, 1, 0}, {33, 16, 17, 0, 1}};
  for (int c = 0; c < (int)(sizeof sk / sizeof sk[0]); c++) {
    const int m = sk[c][0], k = sk[c][1], n = sk[c][2], ta = sk[c][3], tb = sk[c][4];
    int sa = buf(WK_F32, m * k, -1, 1), sb = buf(WK_F32, k * n, -1, 1), so = out_buf(WK_F32, m * n);
    wk_step g = step0(WK_OP_MATMUL);
    g.nin = 2;
    g.in[0] = ta ? op_s(sa, WK_F32, 2, (int64_t[]){m, k}, (int64_t[]){1, m}, 0) : op_c(sa, WK_F32, 2, (int64_t[]){m, k});
    g.in[1] = tb ? op_s(sb, WK_F32, 2, (int64_t[]){k, n}, (int64_t[]){1, k}, 0) : op_c(sb, WK_F32, 2, (int64_t[]){k, n});
    g.out = op_c(so, WK_F32, 2, (int64_t[]){m, n});
    char nm[96];
    snprintf(nm, sizeof nm, "matmul f32 [%d,%d]%s @ [%d,%d]%s (one dimension <= 16)", m, k, ta ? "^T view" : "", k, n,
             tb ? "^T view" : "");
    compare(nm, &g, so, 1e-3f, 1e-4f);   // sums of up to 4100 terms of order one
    reset();
  }

  int M = 5, K = 64, N = 48, r = 8;
  int lx = buf(WK_F32, M * K, -1, 1), lw = buf(WK_F32, N * K, -1, 1), la = buf(WK_F32, K * r, -1, 1),
      lb = buf(WK_F32, r * N, -1, 1), lo = out_buf(WK_F32, M * N);
  wk_step l = step0(WK_OP_LORA);
  l.nin = 4;
  l.in[0] = op_c(lx, WK_F32, 2, (int64_t[]){M, K});
  l.in[1] = op_s(lw, WK_F32, 2, (int64_t[]){K, N}, (int64_t[]){1, K}, 0);
  l.in[2] = op_c(la, WK_F32, 2, (int64_t[]){K, r});
  l.in[3] = op_c(lb, WK_F32, 2, (int64_t[]){r, N});
  l.attrs.f[0] = 0.75f;
  l.out = op_c(lo, WK_F32, 2, (int64_t[]){M, N});
  compare("lora f32 (W transposed)", &l, lo, 1e-4f, 1e-4f);
  reset();
  // few rows (decode), row-major W, odd sizes and a rank of one. Up to 4 rows with
  // N % 4 == 0 and rank <= 32 take the one-launch kernel (lora.cu): a partial column
  // tile, K shorter than its cluster, rows of x strided (xpad), the largest rank;
  // the others (8 rows, N = 30, rank 33) the three GEMMs. One row with rank <= 8,
  // K <= 512 and N % 32 == 0 takes k_lora_row1: K short of the threads' rows (300,
  // 17), ranks 8, 5 and 1.
  static const int shapes[][5] = {{1, 512, 512, 8, 0},   {3, 1000, 36, 1, 0},  {8, 64, 256, 16, 0},
                                  {2, 100, 30, 4, 0},    {1, 2048, 2048, 8, 0}, {4, 77, 132, 32, 3},
                                  {2, 5, 8, 3, 0},       {1, 1024, 1024, 33, 0}, {2, 300, 1000, 8, 5},
                                  {1, 300, 64, 8, 0},    {1, 1024, 1024, 8, 0}, {1, 512, 96, 5, 0},
                                  {1, 17, 32, 1, 0}};
  char name[80];
  for (int c = 0; c < (int)(sizeof shapes / sizeof shapes[0]); c++) {
    int m = shapes[c][0], k = shapes[c][1], n = shapes[c][2], rr = shapes[c][3], xpad = shapes[c][4];
    int fx = buf(WK_F32, m * (k + xpad), -1, 1), fw = buf(WK_F32, k * n, -0.1f, 0.1f),
        fa = buf(WK_F32, k * rr, -0.1f, 0.1f), fb = buf(WK_F32, rr * n, -1, 1), fo = out_buf(WK_F32, m * n);
    wk_step f = step0(WK_OP_LORA);
    f.nin = 4;
    f.in[0] = op_s(fx, WK_F32, 2, (int64_t[]){m, k}, (int64_t[]){k + xpad, 1}, 0);
    f.in[1] = op_c(fw, WK_F32, 2, (int64_t[]){k, n});
    f.in[2] = op_c(fa, WK_F32, 2, (int64_t[]){k, rr});
    f.in[3] = op_c(fb, WK_F32, 2, (int64_t[]){rr, n});
    f.attrs.f[0] = 2.0f;
    f.out = op_c(fo, WK_F32, 2, (int64_t[]){m, n});
    snprintf(name, sizeof name, "lora f32 [%d,%d] x [%d,%d] r%d, x rows %d apart", m, k, k, n, rr, k + xpad);
    compare(name, &f, fo, 1e-5f, 1e-4f);
    reset();
  }
}

// ---- row kernels and chains ----
static void test_rows(void) {
  int64_t sh[2] = {64, 1000};
  int x = buf(WK_F32, 64 * 1000, -6, 6), o = out_buf(WK_F32, 64 * 1000), ob = out_buf(WK_BF16, 64 * 1000);
  wk_step s = step0(WK_OP_SOFTMAX);
  s.nin = 1;
  s.in[0] = op_c(x, WK_F32, 2, sh);
  s.out = op_c(o, WK_F32, 2, sh);
  compare("softmax f32 [64,1000]", &s, o, 1e-7f, 1e-4f);
  s.op = WK_OP_LOG_SOFTMAX;
  compare("log_softmax f32", &s, o, 1e-5f, 1e-5f);
  s.out = op_c(ob, WK_BF16, 2, sh);
  compare("log_softmax bf16 out", &s, ob, 1e-3f, 8e-3f);
  s.op = WK_OP_SOFTMAX;
  s.in[0] = op_s(x, WK_F32, 2, (int64_t[]){1000, 64}, (int64_t[]){1, 1000}, 0);
  s.out = op_c(o, WK_F32, 2, (int64_t[]){1000, 64});
  compare("softmax over a transposed view", &s, o, 1e-7f, 1e-4f);
  int w = buf(WK_F32, 1000, 0.5f, 1.5f), bb = buf(WK_BF16, 1000, -0.5f, 0.5f);
  wk_step n = step0(WK_OP_RMS_NORM);
  n.nin = 2;
  n.in[0] = op_c(x, WK_F32, 2, sh);
  n.in[1] = op_c(w, WK_F32, 1, (int64_t[]){1000});
  n.attrs.f[0] = 1e-5f;
  n.attrs.i[0] = 1;
  n.out = op_c(o, WK_F32, 2, sh);
  compare("rms_norm with weight", &n, o, 1e-5f, 1e-4f);
  n.op = WK_OP_LAYER_NORM;
  n.nin = 3;
  n.in[2] = op_c(bb, WK_BF16, 1, (int64_t[]){1000});
  n.attrs.i[1] = 1;
  compare("layer_norm with weight and bf16 bias", &n, o, 1e-5f, 1e-4f);
  // prologue: layer_norm(x + y) without weight
  int y = buf(WK_F32, 64 * 1000, -1, 1);
  wk_ew_instr pro[] = {I(WK_EW_LOAD, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 1, 0, 0), I(WK_OP_ADD, 2, 0, 1, 0)};
  wk_step p = step0(WK_OP_LAYER_NORM);
  p.nin = 1;
  p.in[0] = op_c(-1, WK_F32, 2, sh);
  p.attrs.f[0] = 1e-5f;
  p.npro = 2;
  p.pro_in[0] = op_c(x, WK_F32, 2, sh);
  p.pro_in[1] = op_c(y, WK_F32, 2, sh);
  p.prog = (wk_ew_prog){3, 3, 2, pro};
  p.out = op_c(o, WK_F32, 2, sh);
  compare("layer_norm with a prologue", &p, o, 1e-5f, 1e-4f);

  // row chain: rms_norm(x + y, w) -> * z + 1 -> softmax -> layer_norm(2 row, w, b)
  int z = buf(WK_F32, 64 * 1000, -1, 1);
  wk_step ch[4];
  ch[0] = p;
  ch[0].op = WK_OP_RMS_NORM;
  ch[0].nin = 2;
  ch[0].in[1] = op_c(w, WK_F32, 1, (int64_t[]){1000});
  ch[0].attrs.i[0] = 1;
  ch[0].chain = 4;
  ch[0].out = op_c(-1, WK_F32, 2, sh);
  wk_ew_instr epi[] = {I(WK_EW_LOAD_ROW, 0, 0, 0, 0), I(WK_EW_LOAD, 1, 0, 0, 0), I(WK_OP_MUL, 2, 0, 1, 0),
                       If(WK_OP_ADD_SCALAR, 3, 2, 1.0f, 0)};
  ch[1] = step0(WK_STEP_FUSED_EW);
  ch[1].nin = 1;
  ch[1].in[0] = op_c(z, WK_F32, 2, sh);
  ch[1].prog = (wk_ew_prog){4, 4, 3, epi};
  ch[1].chain = -1;
  ch[1].out = op_c(-1, WK_F32, 2, sh);
  ch[2] = step0(WK_OP_SOFTMAX);
  ch[2].nin = 1;
  ch[2].in[0] = op_c(-1, WK_F32, 2, sh);
  ch[2].chain = -1;
  ch[2].out = op_c(-1, WK_F32, 2, sh);
  wk_ew_instr pro2[] = {I(WK_EW_LOAD_ROW, 0, 0, 0, 0), If(WK_OP_MUL_SCALAR, 1, 0, 200.0f, 0)};
  ch[3] = step0(WK_OP_LAYER_NORM);
  ch[3].nin = 3;
  ch[3].in[0] = op_c(-1, WK_F32, 2, sh);
  ch[3].in[1] = op_c(w, WK_F32, 1, (int64_t[]){1000});
  ch[3].in[2] = op_c(bb, WK_BF16, 1, (int64_t[]){1000});
  ch[3].attrs.f[0] = 1e-5f;
  ch[3].attrs.i[0] = 1;
  ch[3].attrs.i[1] = 1;
  ch[3].prog = (wk_ew_prog){2, 2, 1, pro2};
  ch[3].npro = 0;
  ch[3].chain = -1;
  ch[3].out = op_c(o, WK_F32, 2, sh);
  compare("row chain: rms_norm(prologue) -> ew -> softmax -> layer_norm(prologue)", ch, o, 1e-4f, 1e-3f);
  reset();

  // rows wider than a warp's share (a block per row, the row in shared memory)
  int64_t wide[2] = {16, 2500};
  int wx = buf(WK_BF16, 16 * 2500, -3, 3), ww2 = buf(WK_F32, 2500, 0.5f, 1.5f), wo = out_buf(WK_F32, 16 * 2500);
  wk_step wr = step0(WK_OP_RMS_NORM);
  wr.nin = 2;
  wr.in[0] = op_c(wx, WK_BF16, 2, wide);
  wr.in[1] = op_c(ww2, WK_F32, 1, (int64_t[]){2500});
  wr.attrs.f[0] = 1e-5f;
  wr.attrs.i[0] = 1;
  wr.out = op_c(wo, WK_F32, 2, wide);
  compare("rms_norm bf16 in, 2500-wide rows (block per row)", &wr, wo, 1e-5f, 1e-4f);
  int wf = buf(WK_F32, 16 * 2500, -3, 3);
  wr.op = WK_OP_SOFTMAX;
  wr.nin = 1;
  wr.in[0] = op_c(wf, WK_F32, 2, wide);
  compare("softmax f32, 2500-wide rows (block per row)", &wr, wo, 1e-7f, 1e-4f);

  // a row too long for shared memory: the global scratch path
  int64_t big[2] = {3, 70000};
  int bx = buf(WK_F32, 3 * 70000, -8, 8), bo = out_buf(WK_F32, 3 * 70000);
  wk_step sb = step0(WK_OP_LOG_SOFTMAX);
  sb.nin = 1;
  sb.in[0] = op_c(bx, WK_F32, 2, big);
  sb.out = op_c(bo, WK_F32, 2, big);
  compare("log_softmax of 70000-wide rows (global scratch)", &sb, bo, 1e-4f, 1e-5f);
  reset();

  // backward row kernels and NORM_DW
  int64_t s2[3] = {4, 8, 96};
  int64_t n2 = 4 * 8 * 96;
  int yv = buf(WK_F32, n2, 0, 1), dy = buf(WK_F32, n2, -1, 1), xx = buf(WK_F32, n2, -2, 2), ww = buf(WK_F32, 96, 0.5f, 1.5f);
  int dx = out_buf(WK_F32, n2), dwo = out_buf(WK_F32, 96), dwl = out_buf(WK_F32, 2 * 96), dxb = out_buf(WK_BF16, n2);
  wk_step bw = step0(WK_OP_SOFTMAX_BWD);
  bw.nin = 2;
  bw.in[0] = op_c(yv, WK_F32, 3, s2);
  bw.in[1] = op_c(dy, WK_F32, 3, s2);
  bw.out = op_c(dx, WK_F32, 3, s2);
  compare("softmax_bwd", &bw, dx, 1e-5f, 1e-4f);
  bw.op = WK_OP_LOG_SOFTMAX_BWD;
  compare("log_softmax_bwd", &bw, dx, 1e-5f, 1e-4f);
  wk_step nb2 = step0(WK_OP_RMS_NORM_BWD);
  nb2.nin = 3;
  nb2.in[0] = op_c(xx, WK_F32, 3, s2);
  nb2.in[1] = op_c(ww, WK_F32, 1, (int64_t[]){96});
  nb2.in[2] = op_s(dy, WK_F32, 3, s2, (int64_t[]){768, 96, 1}, 0);
  nb2.attrs.f[0] = 1e-6f;
  nb2.attrs.i[0] = 1;
  nb2.out = op_c(dx, WK_F32, 3, s2);
  compare("rms_norm_bwd with weight", &nb2, dx, 1e-5f, 1e-4f);
  nb2.op = WK_OP_LAYER_NORM_BWD;
  compare("layer_norm_bwd with weight", &nb2, dx, 1e-5f, 1e-4f);
  nb2.out = op_c(dxb, WK_BF16, 3, s2);
  compare("layer_norm_bwd bf16 out", &nb2, dxb, 1e-3f, 8e-3f);
  wk_step dw = step0(WK_OP_NORM_DW);
  dw.nin = 2;
  dw.in[0] = op_c(xx, WK_F32, 3, s2);
  dw.in[1] = op_c(dy, WK_F32, 3, s2);
  dw.attrs.f[0] = 1e-6f;
  dw.out = op_c(dwo, WK_F32, 1, (int64_t[]){96});
  compare("norm_dw (rms)", &dw, dwo, 1e-4f, 1e-4f);
  dw.attrs.i[0] = 1;
  dw.out = op_c(dwl, WK_F32, 2, (int64_t[]){2, 96});
  compare("norm_dw (layer: dw, db)", &dw, dwl, 1e-4f, 1e-4f);
  reset();
}

// ---- RMS / layer norm backward, a warp a row: nn.cu's k_norm_bwd_rows (f32 rows of
// D % 4 == 0, D <= 1024; WICK_CUDA_NORM_BWD_ROWS=0 turns it off) ----
// 37 rows (not a whole number of 8-row CTAs); D = 896 (the model's: 7 float4 a lane),
// D = 900 (a lane's last float4 masked), x read through padded rows; with and without
// a weight, f32 and bf16 out; D = 1028 and 898 take k_norm_bwd. Tolerances as test_rows'.
static void test_norm_bwd_rows(void) {
  const int64_t R = 37, Ds[4] = {896, 900, 1028, 898};
  for (int k = 0; k < 4; k++) {
    const int64_t D = Ds[k], ld = D + 4;
    int x = buf(WK_F32, R * ld, -2, 2), dy = buf(WK_F32, R * D, -1, 1), w = buf(WK_F32, D, 0.5f, 1.5f);
    int dx = out_buf(WK_F32, R * D), dxb = out_buf(WK_BF16, R * D);
    for (int op = 0; op < 2; op++)
      for (int hw = 0; hw < 2; hw++) {
        wk_step ns = step0(op ? WK_OP_LAYER_NORM_BWD : WK_OP_RMS_NORM_BWD);
        ns.nin = hw ? 3 : 2;
        ns.in[0] = op_s(x, WK_F32, 2, (int64_t[]){R, D}, (int64_t[]){ld, 1}, 0);
        if (hw) ns.in[1] = op_c(w, WK_F32, 1, (int64_t[]){D});
        ns.in[ns.nin - 1] = op_c(dy, WK_F32, 2, (int64_t[]){R, D});
        ns.attrs.f[0] = 1e-6f;
        ns.attrs.i[0] = hw;
        char name[96];
        ns.out = op_c(dx, WK_F32, 2, (int64_t[]){R, D});
        snprintf(name, sizeof name, "%s_bwd [%lld, %lld]%s", op ? "layer_norm" : "rms_norm", (long long)R, (long long)D,
                 hw ? " with weight" : "");
        compare(name, &ns, dx, 1e-5f, 1e-4f);
        ns.out = op_c(dxb, WK_BF16, 2, (int64_t[]){R, D});
        strncat(name, ", bf16 out", sizeof name - strlen(name) - 1);
        compare(name, &ns, dxb, 1e-3f, 8e-3f);
      }
    reset();
  }
}

// ---- rope, 4 pairs a thread: nn.cu's rope_vec_body (f32 x with 16-byte aligned rows,
// D % 8 == 0, D <= 512, f32 or bf16 out; WICK_CUDA_ROPE_VEC=0 turns it off) ----
// [2, 7, 33, 40]: 14 (batch, head) rows a position (groups of 4 rows, the last of 2),
// h = 20 (5 float4 a half); halves and interleaved, bf16 out, given inverse
// frequencies, a padded-row view; D = 36 keeps the scalar body. Tolerances as test_nn's.
static void test_rope_vec(void) {
  const int64_t Ds[2] = {40, 36};
  for (int k = 0; k < 2; k++) {
    const int64_t D = Ds[k], sh[4] = {2, 7, 33, D}, n = 2 * 7 * 33 * D, ld = D + 8;
    int x = buf(WK_F32, 2 * 7 * 33 * ld, -1, 1), o = out_buf(WK_F32, n), ob = out_buf(WK_BF16, n);
    int inv = buf(WK_F32, D / 2, 0.001f, 1.0f);
    wk_step r = step0(WK_OP_ROPE);
    r.nin = 1;
    r.in[0] = op_s(x, WK_F32, 4, sh, (int64_t[]){7 * 33 * ld, 33 * ld, ld, 1}, 0);
    r.attrs.f[0] = 10000.0f;
    r.attrs.f[1] = 1.0f;
    r.attrs.i[0] = 5;
    char name[96];
    for (int inter = 0; inter < 2; inter++) {
      r.attrs.i[1] = inter;
      r.out = op_c(o, WK_F32, 4, sh);
      snprintf(name, sizeof name, "rope D=%lld %s, padded rows", (long long)D, inter ? "interleaved" : "halves");
      compare(name, &r, o, 1e-6f, 1e-5f);
      r.out = op_c(ob, WK_BF16, 4, sh);
      strncat(name, ", bf16 out", sizeof name - strlen(name) - 1);
      compare(name, &r, ob, 1e-3f, 8e-3f);
    }
    r.nin = 2;
    r.in[1] = op_c(inv, WK_F32, 1, (int64_t[]){D / 2});
    r.attrs.i[2] = 1;
    r.attrs.f[1] = -1.0f;
    r.out = op_c(o, WK_F32, 4, sh);
    snprintf(name, sizeof name, "rope D=%lld, given inverse frequencies, inverse", (long long)D);
    compare(name, &r, o, 1e-6f, 1e-5f);
    reset();
  }
  // a training step's q ([8, 14, 512, 64], theta 1e6 as Qwen2's): the vector body over
  // many row groups
  const int64_t big[4] = {8, 14, 512, 64}, nbig = 8 * 14 * 512 * 64;
  int bx = buf(WK_F32, nbig, -1, 1), bo = out_buf(WK_F32, nbig);
  wk_step q = step0(WK_OP_ROPE);
  q.nin = 1;
  q.in[0] = op_c(bx, WK_F32, 4, big);
  q.attrs.f[0] = 1000000.0f;
  q.attrs.f[1] = 1.0f;
  q.out = op_c(bo, WK_F32, 4, big);
  compare("rope [8,14,512,64], theta 1e6", &q, bo, 1e-6f, 1e-5f);
  reset();
}

// ---- rope, embedding, sdpa, cross-entropy ----
static void test_nn(void) {
  int64_t sh[4] = {2, 3, 17, 64};
  int64_t n = 2 * 3 * 17 * 64;
  int x = buf(WK_F32, n, -1, 1), o = out_buf(WK_F32, n), ob = out_buf(WK_BF16, n);
  wk_step r = step0(WK_OP_ROPE);
  r.nin = 1;
  r.in[0] = op_c(x, WK_F32, 4, sh);
  r.attrs.f[0] = 10000.0f;
  r.attrs.f[1] = 1.0f;
  r.attrs.i[0] = 3;
  r.out = op_c(o, WK_F32, 4, sh);
  compare("rope (halves), offset 3", &r, o, 1e-6f, 1e-5f);
  r.attrs.i[1] = 1;
  r.attrs.f[1] = -1.0f;
  r.out = op_c(ob, WK_BF16, 4, sh);
  compare("rope (interleaved, inverse), bf16 out", &r, ob, 1e-3f, 8e-3f);
  // a [B, T, H, D] tensor viewed as [B, H, T, D]
  r.in[0] = op_s(x, WK_F32, 4, sh, (int64_t[]){3 * 17 * 64, 64, 3 * 64, 1}, 0);
  r.out = op_c(o, WK_F32, 4, sh);
  compare("rope on a transposed view", &r, o, 1e-6f, 1e-5f);
  reset();

  int tab = buf(WK_F32, 50 * 24, -1, 1), tabh = buf(WK_BF16, 50 * 24, -1, 1), ids = buf(WK_I32, 4 * 7, 0, 50);
  int eo = out_buf(WK_F32, 4 * 7 * 24), eh = out_buf(WK_F32, 4 * 7 * 24);
  wk_step e = step0(WK_OP_EMBEDDING);
  e.nin = 2;
  e.in[0] = op_c(tab, WK_F32, 2, (int64_t[]){50, 24});
  e.in[1] = op_c(ids, WK_I32, 2, (int64_t[]){4, 7});
  e.out = op_c(eo, WK_F32, 3, (int64_t[]){4, 7, 24});
  compare("embedding f32", &e, eo, 0, 0);
  e.in[0] = op_c(tabh, WK_BF16, 2, (int64_t[]){50, 24});
  e.out = op_c(eh, WK_F32, 3, (int64_t[]){4, 7, 24});
  compare("embedding bf16 table -> f32", &e, eh, 0, 0);
  int dy = buf(WK_F32, 4 * 7 * 24, -1, 1), dt = out_buf(WK_F32, 50 * 24), dtb = out_buf(WK_BF16, 50 * 24);
  wk_step eb = step0(WK_OP_EMBEDDING_BWD);
  eb.nin = 2;
  eb.in[0] = op_c(ids, WK_I32, 2, (int64_t[]){4, 7});
  eb.in[1] = op_c(dy, WK_F32, 3, (int64_t[]){4, 7, 24});
  eb.attrs.i[0] = 50;
  eb.out = op_c(dt, WK_F32, 2, (int64_t[]){50, 24});
  compare("embedding_bwd (scatter-add)", &eb, dt, 1e-6f, 1e-5f);
  eb.out = op_c(dtb, WK_BF16, 2, (int64_t[]){50, 24});
  compare("embedding_bwd bf16", &eb, dtb, 1e-3f, 8e-3f);
  reset();

  // GQA causal attention, S > T (a KV cache), plus an additive mask; and bf16
  int64_t qs[4] = {2, 4, 9, 32}, ks[4] = {2, 2, 13, 32};
  int q = buf(WK_F32, 2 * 4 * 9 * 32, -1, 1), k = buf(WK_F32, 2 * 2 * 13 * 32, -1, 1), v = buf(WK_F32, 2 * 2 * 13 * 32, -1, 1);
  int mk = buf(WK_F32, 9 * 13, -2, 0), so = out_buf(WK_F32, 2 * 4 * 9 * 32);
  wk_step a = step0(WK_OP_SDPA);
  a.nin = 3;
  a.in[0] = op_c(q, WK_F32, 4, qs);
  a.in[1] = op_c(k, WK_F32, 4, ks);
  a.in[2] = op_c(v, WK_F32, 4, ks);
  a.attrs.f[0] = 1.0f / sqrtf(32.0f);
  a.attrs.i[0] = 1;
  a.out = op_c(so, WK_F32, 4, qs);
  compare("sdpa GQA causal (T=9, S=13)", &a, so, 1e-5f, 1e-4f);
  a.nin = 4;
  a.in[3] = op_c(mk, WK_F32, 4, (int64_t[]){1, 1, 9, 13});
  a.attrs.i[0] = 0;
  compare("sdpa GQA with an additive mask", &a, so, 1e-5f, 1e-4f);
  // q as a [B, T, H, D] buffer viewed [B, H, T, D]
  a.nin = 3;
  a.attrs.i[0] = 1;
  a.in[0] = op_s(q, WK_F32, 4, qs, (int64_t[]){9 * 4 * 32, 32, 4 * 32, 1}, 0);
  compare("sdpa causal with a transposed q view", &a, so, 1e-5f, 1e-4f);
  int qh = buf(WK_BF16, 2 * 4 * 9 * 32, -1, 1), kh = buf(WK_BF16, 2 * 2 * 13 * 32, -1, 1), vh = buf(WK_BF16, 2 * 2 * 13 * 32, -1, 1);
  int sho = out_buf(WK_BF16, 2 * 4 * 9 * 32);
  a.in[0] = op_c(qh, WK_BF16, 4, qs);
  a.in[1] = op_c(kh, WK_BF16, 4, ks);
  a.in[2] = op_c(vh, WK_BF16, 4, ks);
  a.out = op_c(sho, WK_BF16, 4, qs);
  compare("sdpa bf16 causal GQA", &a, sho, 1e-3f, 8e-3f);
  reset();

  int V = 3000, N = 12;
  int lg = buf(WK_F32, N * V, -5, 5), tg = buf(WK_I32, N, 0, (float)V), ce = out_buf(WK_F32, N), cm = out_buf(WK_F32, 1);
  ((int32_t *)B[tg].h)[3] = -100;
  poke_i32(tg, 7, -100);
  wk_step c = step0(WK_OP_CROSS_ENTROPY);
  c.nin = 2;
  c.in[0] = op_c(lg, WK_F32, 2, (int64_t[]){N, V});
  c.in[1] = op_c(tg, WK_I32, 1, (int64_t[]){N});
  c.attrs.i[0] = -100;
  c.out = op_c(ce, WK_F32, 1, (int64_t[]){N});
  compare("cross_entropy (none) with ignored targets", &c, ce, 1e-5f, 1e-5f);
  c.attrs.i[1] = 1;
  c.out = op_c(cm, WK_F32, 1, (int64_t[]){1});
  compare("cross_entropy (mean)", &c, cm, 1e-5f, 1e-5f);
  c.attrs.i[1] = 2;
  compare("cross_entropy (sum)", &c, cm, 1e-4f, 1e-5f);
  int g1 = buf(WK_F32, 1, 0.5f, 2), gn = buf(WK_F32, N, -1, 1), dl = out_buf(WK_F32, N * V);
  wk_step cb = step0(WK_OP_CROSS_ENTROPY_BWD);
  cb.nin = 3;
  cb.in[0] = c.in[0];
  cb.in[1] = c.in[1];
  cb.in[2] = op_c(g1, WK_F32, 1, (int64_t[]){1});
  cb.attrs.i[0] = -100;
  cb.out = op_c(dl, WK_F32, 2, (int64_t[]){N, V});
  for (int red = 0; red < 3; red++) {
    cb.attrs.i[1] = red;
    cb.in[2] = red == 0 ? op_c(gn, WK_F32, 1, (int64_t[]){N}) : op_c(g1, WK_F32, 1, (int64_t[]){1});
    char name[64];
    snprintf(name, sizeof name, "cross_entropy_bwd (reduction %d)", red);
    compare(name, &cb, dl, 1e-7f, 1e-4f);
  }
  reset();
}

// ---- cross-entropy over long rows: ce.cu's k_ce_split (a row over a cluster of CTAs,
// rows of at least 4096 f32; WICK_CUDA_CE_SPLIT=0 turns it off) ----
// V = 4099: rows not 16-byte aligned (scalar loads) and a last piece shorter than the
// others; V = 8192 through a view with padded rows (float4 loads). Targets at both ends
// of a row, an ignored one, a row whose max sits in its last piece (the combine
// rescales the earlier pieces); the backward also into bf16, and its bits the same on
// a second run (the combine has a fixed order). Tolerances as test_nn's cross-entropy.
static void test_ce_split(void) {
  const int64_t N = 9;
  for (int k = 0; k < 2; k++) {
    const int64_t V = k ? 8192 : 4099, ld = k ? V + 4 : V;
    int lg = buf(WK_F32, N * ld, -6, 6), tg = buf(WK_I32, N, 0, (float)V), ce = out_buf(WK_F32, N), cm = out_buf(WK_F32, 1);
    int g1 = buf(WK_F32, 1, 0.5f, 2), gn = buf(WK_F32, N, -1, 1), dl = out_buf(WK_F32, N * V), dlb = out_buf(WK_BF16, N * V);
    int32_t *t = (int32_t *)B[tg].h;
    t[1] = -100, t[2] = 0, t[3] = (int32_t)V - 1;
    put(B[lg].h, WK_F32, 4 * ld + V - 2, 40.0f);
    put(B[lg].h, WK_F32, 5 * ld, -80.0f);
    slot_upload(tg);
    slot_upload(lg);
    const wk_operand x = op_s(lg, WK_F32, 2, (int64_t[]){N, V}, (int64_t[]){ld, 1}, 0);
    wk_step c = step0(WK_OP_CROSS_ENTROPY);
    c.nin = 2;
    c.in[0] = x;
    c.in[1] = op_c(tg, WK_I32, 1, (int64_t[]){N});
    c.attrs.i[0] = -100;
    char name[96];
    for (int red = 0; red < 3; red++) {
      c.attrs.i[1] = red;
      c.out = red ? op_c(cm, WK_F32, 1, (int64_t[]){1}) : op_c(ce, WK_F32, 1, (int64_t[]){N});
      snprintf(name, sizeof name, "split cross_entropy V=%lld (reduction %d)", (long long)V, red);
      compare(name, &c, red ? cm : ce, 1e-5f, 1e-5f);
    }
    wk_step cb = step0(WK_OP_CROSS_ENTROPY_BWD);
    cb.nin = 3;
    cb.in[0] = x;
    cb.in[1] = c.in[1];
    cb.attrs.i[0] = -100;
    for (int red = 0; red < 3; red++) {
      cb.attrs.i[1] = red;
      cb.in[2] = red == 0 ? op_c(gn, WK_F32, 1, (int64_t[]){N}) : op_c(g1, WK_F32, 1, (int64_t[]){1});
      cb.out = op_c(dl, WK_F32, 2, (int64_t[]){N, V});
      snprintf(name, sizeof name, "split cross_entropy_bwd V=%lld (reduction %d)", (long long)V, red);
      compare(name, &cb, dl, 1e-7f, 1e-4f);
      cb.out = op_c(dlb, WK_BF16, 2, (int64_t[]){N, V});
      snprintf(name, sizeof name, "split cross_entropy_bwd V=%lld (reduction %d), bf16 out", (long long)V, red);
      compare(name, &cb, dlb, 1e-6f, 8e-3f);
    }
    cb.out = op_c(dl, WK_F32, 2, (int64_t[]){N, V});
    unsigned char *r1 = run_device("split cross_entropy_bwd, run 1", &cb, dl), *r2 = run_device("run 2", &cb, dl);
    CHECK(r1 && r2 && !memcmp(r1, r2, B[dl].bytes), "split cross_entropy_bwd V=%lld: the same bits run to run", (long long)V);
    free(r1);
    free(r2);
    reset();
  }
  // a bad target in a split row: reported with its position
  int lg = buf(WK_F32, 4 * 5000, -1, 1), tg = buf(WK_I32, 4, 0, 5000), co = out_buf(WK_F32, 4 * 5000);
  poke_i32(tg, 2, 5003);
  int g1 = buf_value(WK_F32, 1, 1.0f);
  void *ds[DUAL_SLOTS];
  dev_slots(ds);
  wk_step cb = step0(WK_OP_CROSS_ENTROPY_BWD);
  cb.nin = 3;
  cb.in[0] = op_c(lg, WK_F32, 2, (int64_t[]){4, 5000});
  cb.in[1] = op_c(tg, WK_I32, 1, (int64_t[]){4});
  cb.in[2] = op_c(g1, WK_F32, 1, (int64_t[]){1});
  cb.attrs.i[0] = -100;
  cb.attrs.i[1] = 2;
  cb.out = op_c(co, WK_F32, 2, (int64_t[]){4, 5000});
  wk_status st = gpu->run(&cb, ds);
  st = st ? st : gpu->sync();
  CHECK(st == WK_ERR_ARG && strstr(wk_last_error(), "5003") && strstr(wk_last_error(), "position 2"),
        "split cross_entropy_bwd: a bad target reported at sync (%s)", wk_last_error());
  reset();
}

// ---- errors found in the data: reported at sync, nothing crashes ----
static void test_errors(void) {
  int tab = buf(WK_F32, 10 * 8, -1, 1), ids = buf(WK_I32, 6, 0, 10), o = out_buf(WK_F32, 6 * 8);
  poke_i32(ids, 4, 12);
  void *ds[DUAL_SLOTS];
  dev_slots(ds);
  wk_step e = step0(WK_OP_EMBEDDING);
  e.nin = 2;
  e.in[0] = op_c(tab, WK_F32, 2, (int64_t[]){10, 8});
  e.in[1] = op_c(ids, WK_I32, 1, (int64_t[]){6});
  e.out = op_c(o, WK_F32, 2, (int64_t[]){6, 8});
  wk_status st = gpu->run(&e, ds);
  CHECK(!st, "bad id: the launch itself succeeds (asynchronous)");
  st = gpu->sync();
  CHECK(st == WK_ERR_ARG && strstr(wk_last_error(), "embedding") && strstr(wk_last_error(), "12"),
        "bad embedding id reported at sync (status %d)", st);
  st = gpu->sync();
  CHECK(!st, "the error is reported once; the backend stays usable");
  int lg = buf(WK_F32, 4 * 5, -1, 1), tg = buf(WK_I32, 4, 0, 5), co = out_buf(WK_F32, 1);
  poke_i32(tg, 2, 5);
  dev_slots(ds);
  wk_step c = step0(WK_OP_CROSS_ENTROPY);
  c.nin = 2;
  c.in[0] = op_c(lg, WK_F32, 2, (int64_t[]){4, 5});
  c.in[1] = op_c(tg, WK_I32, 1, (int64_t[]){4});
  c.attrs.i[0] = -100;
  c.attrs.i[1] = 1;
  c.out = op_c(co, WK_F32, 1, (int64_t[]){1});
  st = gpu->run(&c, ds);
  st = st ? st : gpu->sync();
  CHECK(st == WK_ERR_ARG && strstr(wk_last_error(), "cross_entropy"), "bad target reported at sync (status %d)", st);
  reset();
  // the allocator: a freed block of the same class comes back without cudaMalloc
  wk_cuda_mem_stats m0, m1;
  void *p = gpu->alloc(1 << 20);
  gpu->free(p);
  wk_cuda_memory_stats(&m0);
  void *q = gpu->alloc((1 << 20) - 100);
  wk_cuda_memory_stats(&m1);
  CHECK(q && m1.cuda_mallocs == m0.cuda_mallocs && m1.cache_hits == m0.cache_hits + 1, "allocator reuses a cached block");
  gpu->free(q);
  CHECK(m1.peak_reserved >= m1.reserved && m1.reserved >= m1.in_use, "allocator stats are consistent");
}

// ---- through the public API (wk_to_device and per-step devices) ----
static void test_public(void) {
  wk_scope_begin();
  int64_t sh[2] = {32, 257};
  wk_tensor *x = wk_randn(2, sh, WK_F32, 5), *w = wk_rand(1, (int64_t[]){257}, WK_F32, 0.5, 1.5, 6);
  wk_tensor *xd = wk_to_device(x, WK_CUDA), *wd = wk_to_device(w, WK_CUDA);
  CHECK(xd && wd && wk_tensor_device(xd) == WK_CUDA, "to_device(cuda)");
  wk_tensor *yc = wk_softmax(wk_rms_norm(wk_add(wk_mul_scalar(x, 2.0f), x), w, 1e-5f), -1);
  wk_tensor *yd = wk_softmax(wk_rms_norm(wk_add(wk_mul_scalar(xd, 2.0f), xd), wd, 1e-5f), -1);
  wk_tensor *yh = wk_to_device(yd, WK_CPU);
  float *a = yc ? read_all(yc) : NULL, *b = yh ? read_all(yh) : NULL;
  float err = a && b ? max_abs_diff(a, b, 32 * 257) : NAN;
  CHECK(err <= 1e-5f, "public API: softmax(rms_norm(2x + x, w)) on cuda vs cpu: max diff %g", err);
  free(a);
  free(b);
  wk_tensor *m = wk_matmul(xd, wk_transpose(xd, 0, 1));
  wk_tensor *mc = wk_matmul(x, wk_transpose(x, 0, 1));
  wk_tensor *mh = m ? wk_to_device(m, WK_CPU) : NULL;
  a = mc ? read_all(mc) : NULL;
  b = mh ? read_all(mh) : NULL;
  err = a && b ? max_abs_diff(a, b, 32 * 32) : NAN;
  CHECK(err <= 1e-3f, "public API: x @ x^T on cuda vs cpu: max diff %g", err);
  free(a);
  free(b);
  wk_scope_end();
}

// wk_top1 on CUDA (top1.cu: a row split over up to 128 blocks, the last merging) against
// the CPU: rows of 151,936 (Qwen2.5's vocabulary), 3000 (a few splits) and 100 (one
// block), with a tie across two splits (the first index wins), the max in the last
// element, a row with two NaNs after a larger value (max and sum NaN, the first NaN's
// index, as wk_argmax), an all -inf row (sum V, index 0), a row with two +inf across
// splits (sum 2, the first), bf16 input and a strided view. The max and index must be
// equal; the sum, an f32 sum of exps against the CPU's double, within 1e-5 relative.
static void test_top1(void) {
  const int64_t Vs[3] = {151936, 3000, 100};
  for (int vi = 0; vi < 3; vi++) {
    for (int bf = 0; bf < 2; bf++) {
      wk_scope_begin();
      const int64_t V = Vs[vi], R = 7;
      float *x = malloc(sizeof(float) * (size_t)(R * V));
      uint64_t st = 7 + (uint64_t)vi;
      for (int64_t i = 0; i < R * V; i++)
        x[i] = (float)((st = st * 6364136223846793005ull + 1442695040888963407ull) >> 40) / 1e6f - 8;
      x[1 * V + 5] = x[1 * V + V - 3] = 40;   // a tie, across splits when the row has several
      x[2 * V + V - 1] = 41;
      x[3 * V + 1] = 50;
      x[3 * V + V / 2] = x[3 * V + V - 1] = NAN;
      for (int64_t i = 0; i < V; i++) x[4 * V + i] = -INFINITY;
      x[6 * V + 2] = x[6 * V + V - 2] = INFINITY;
      wk_tensor *h = wk_from_data(2, (int64_t[]){R, V}, WK_F32, x);
      if (bf) h = wk_cast(h, WK_BF16);
      float *c = read_all(wk_top1(h)), *d = read_all(wk_to_device(wk_top1(wk_to_device(h, WK_CUDA)), WK_CPU));
      int bad = 0;
      for (int64_t r = 0; r < R; r++) {
        bool both_nan = isnan(c[3 * r]) && isnan(d[3 * r]) && isnan(c[3 * r + 1]) && isnan(d[3 * r + 1]);
        bool sums = c[3 * r + 1] == d[3 * r + 1] || fabsf(c[3 * r + 1] - d[3 * r + 1]) <= 1e-5f * c[3 * r + 1];
        bad += c[3 * r + 2] != d[3 * r + 2] || (!both_nan && (c[3 * r] != d[3 * r] || !sums));
      }
      CHECK(bad == 0 && d[5] == 5 && d[8] == (float)(V - 1), "top1 on cuda vs cpu, %lld rows of %lld %s: %d rows differ",
            (long long)R, (long long)V, bf ? "bf16" : "f32", bad);
      CHECK(isnan(d[9]) && isnan(d[10]) && d[11] == (float)(V / 2), "top1 on cuda of a NaN row: %g %g %g (want NaN NaN %lld)",
            (double)d[9], (double)d[10], (double)d[11], (long long)(V / 2));
      CHECK(d[12] == -INFINITY && d[13] == (float)V && d[14] == 0, "top1 on cuda of an all -inf row: %g %g %g (want -inf %lld 0)",
            (double)d[12], (double)d[13], (double)d[14], (long long)V);
      CHECK(d[18] == INFINITY && d[19] == 2 && d[20] == 2, "top1 on cuda of a row with two +inf: %g %g %g (want inf 2 2)",
            (double)d[18], (double)d[19], (double)d[20]);
      free(c);
      free(d);
      free(x);
      wk_scope_end();
    }
  }
  wk_scope_begin();   // a transposed view (made dense first)
  wk_tensor *x = wk_randn(2, (int64_t[]){5000, 3}, WK_F32, 9);
  float *c = read_all(wk_top1(wk_transpose(x, 0, 1)));
  float *d = read_all(wk_to_device(wk_top1(wk_transpose(wk_to_device(x, WK_CUDA), 0, 1)), WK_CPU));
  CHECK(c[0] == d[0] && c[2] == d[2] && c[8] == d[8] && fabsf(c[4] - d[4]) <= 1e-5f * c[4], "top1 of a strided view on cuda");
  free(c);
  free(d);
  wk_scope_end();
}

// The fast row kernel (rows.cu): f32 / bf16 / f16 rows from 8 to 8192 elements (one
// warp to 256 threads a row), 37 rows (dead rows in the last block), rows strided
// wider than they are, and a row length that is not a multiple of the vector width
// (the general kernel). Tolerances as the header's, per output dtype.
static void test_rows_fast(void) {
  static const int64_t Ds[] = {8, 1000, 4096, 8192, 2050};
  static const wk_dtype dts[] = {WK_F32, WK_BF16, WK_F16};
  char name[96];
  for (int t = 0; t < 3; t++)
    for (int k = 0; k < 5; k++) {
      wk_dtype dt = dts[t];
      int64_t D = Ds[k], R = 37, pitch = D + 16;
      float atol = dt == WK_F32 ? 1e-6f : 1e-3f, rtol = dt == WK_F32 ? 1e-4f : dt == WK_BF16 ? 8e-3f : 2e-3f;
      wk_dtype wdt = dt == WK_F16 ? WK_F32 : dt;  // a weight of the rows' dtype loads as vectors
      int x = buf(dt, R * pitch, -6, 6), o = out_buf(dt, R * D), w = buf(wdt, D, 0.5f, 1.5f);
      wk_step s = step0(WK_OP_SOFTMAX);
      s.nin = 1;
      s.in[0] = op_c(x, dt, 2, (int64_t[]){R, D});
      s.out = op_c(o, dt, 2, (int64_t[]){R, D});
      snprintf(name, sizeof name, "fast softmax %s [37,%lld]", wk_dtype_name(dt), (long long)D);
      compare(name, &s, o, atol, rtol);
      s.op = WK_OP_LOG_SOFTMAX;
      s.in[0] = op_s(x, dt, 2, (int64_t[]){R, D}, (int64_t[]){pitch, 1}, 8);
      snprintf(name, sizeof name, "fast log_softmax %s, rows %lld apart", wk_dtype_name(dt), (long long)pitch);
      compare(name, &s, o, atol, rtol);
      s.op = WK_OP_RMS_NORM;
      s.nin = 2;
      s.in[1] = op_c(w, wdt, 1, (int64_t[]){D});
      s.attrs.f[0] = 1e-5f;
      s.attrs.i[0] = 1;
      snprintf(name, sizeof name, "fast rms_norm %s with weight [37,%lld]", wk_dtype_name(dt), (long long)D);
      compare(name, &s, o, atol, rtol);
      reset();
    }
}

// rows.cu's per-op kernel (WICK_CUDA_ROWS_OP, default on) against the kernel before it:
// the same bits on every output, NaN / infinity rows included (bf16 / f16 results
// rounded two at a time, a NaN pair redone one by one), and against the CPU. Rows
// that must not take the fast kernel (an input 3 elements off 16-byte alignment, a
// row length off the vector width, a strided view of every other element) go to
// the general kernel and still match the CPU.
void wkc_rows_test_per_op(int on);  // rows.cu: 1 per-op kernel, 0 the earlier one, -1 the environment's
static void test_rows_fast_bits(void) {
  static const wk_dtype dts[] = {WK_F32, WK_BF16, WK_F16};
  static const int64_t Ds[] = {8, 1024, 4096};
  char name[128];
  for (int t = 0; t < 3; t++)
    for (int k = 0; k < 3; k++) {
      wk_dtype dt = dts[t];
      int64_t D = Ds[k], R = 37;
      float atol = dt == WK_F32 ? 1e-6f : 1e-3f, rtol = dt == WK_F32 ? 1e-4f : dt == WK_BF16 ? 8e-3f : 2e-3f;
      int x = buf(dt, R * D + 8, -6, 6), o = out_buf(dt, R * D), w = buf(dt, D, 0.5f, 1.5f);
      // row 3: one NaN; row 5: +inf; row 9: -inf and a NaN; row 11: huge values
      put(B[x].h, dt, 3 * D + D / 2, NAN);
      put(B[x].h, dt, 5 * D + 1, INFINITY);
      put(B[x].h, dt, 9 * D, -INFINITY);
      put(B[x].h, dt, 9 * D + D - 1, NAN);
      for (int64_t i = 0; i < D; i += 3) put(B[x].h, dt, 11 * D + i, dt == WK_F16 ? 6e4f : 3e38f);
      slot_upload(x);
      for (int op = 0; op < 3; op++) {
        wk_step s = step0(op == 0 ? WK_OP_SOFTMAX : op == 1 ? WK_OP_LOG_SOFTMAX : WK_OP_RMS_NORM);
        s.nin = op == 2 ? 2 : 1;
        s.in[0] = op_c(x, dt, 2, (int64_t[]){R, D});
        s.in[1] = op_c(w, dt, 1, (int64_t[]){D});
        s.attrs.f[0] = 1e-5f;
        s.attrs.i[0] = op == 2;
        s.out = op_c(o, dt, 2, (int64_t[]){R, D});
        snprintf(name, sizeof name, "per-op row kernel, %s %s [37,%lld]", op == 0 ? "softmax" : op == 1 ? "log_softmax" : "rms_norm", wk_dtype_name(dt),
                 (long long)D);
        wkc_rows_test_per_op(0);
        unsigned char *old = run_device(name, &s, o);
        wkc_rows_test_per_op(1);
        unsigned char *cur = run_device(name, &s, o);
        CHECK(old && cur && !memcmp(old, cur, B[o].bytes), "%s: the same bits as the earlier kernel", name);
        free(old);
        free(cur);
        // beside the CPU without the NaN / inf / huge rows (the CPU's exp and sums differ there only in kind)
        if (op == 0 && k == 1) {
          int x2 = buf(dt, R * D + 8, -6, 6);
          s.in[0] = op_s(x2, dt, 2, (int64_t[]){R, D}, (int64_t[]){D, 1}, 3);  // 3 elements off alignment
          snprintf(name, sizeof name, "softmax %s, rows 3 elements off 16-byte alignment", wk_dtype_name(dt));
          compare(name, &s, o, atol, rtol);
          s.op = WK_OP_RMS_NORM;
          s.nin = 2;
          s.attrs.i[0] = 1;
          s.in[0] = op_s(x2, dt, 2, (int64_t[]){R, D / 2}, (int64_t[]){D, 2}, 0);  // every other element
          s.in[1] = op_c(w, dt, 1, (int64_t[]){D / 2});
          int o2 = out_buf(dt, R * (D / 2)), o3 = out_buf(dt, R * (D - 3));  // compare() reads a whole buffer
          s.out = op_c(o2, dt, 2, (int64_t[]){R, D / 2});
          snprintf(name, sizeof name, "rms_norm %s over a view of every other element", wk_dtype_name(dt));
          compare(name, &s, o2, atol, rtol);
          s.in[0] = op_c(x2, dt, 2, (int64_t[]){R, D - 3});  // rows off the vector width
          s.in[1] = op_c(w, dt, 1, (int64_t[]){D - 3});
          s.out = op_c(o3, dt, 2, (int64_t[]){R, D - 3});
          snprintf(name, sizeof name, "rms_norm %s, rows of %lld elements", wk_dtype_name(dt), (long long)(D - 3));
          compare(name, &s, o3, atol, rtol);
        }
      }
      wkc_rows_test_per_op(-1);
      reset();
    }
}

// A row chain longer than one kernel's parameters hold (60 softmax / RMSNorm stages
// with a scalar between them; the CPU backend takes up to 64) runs in pieces; the CPU
// computes the same chain.
static void test_long_chain(void) {
  wk_scope_begin();
  wk_tensor *x = wk_randn(2, (int64_t[]){64, 1024}, WK_F32, 8), *w = wk_rand(1, (int64_t[]){1024}, WK_F32, 0.5, 1.5, 9);
  wk_tensor *y[2] = {x, wk_to_device(x, WK_CUDA)}, *wd[2] = {w, wk_to_device(w, WK_CUDA)};
  for (int i = 0; i < 60; i++)
    for (int d = 0; d < 2; d++)
      y[d] = i % 2 ? wk_softmax(wk_mul_scalar(y[d], 3.0f), -1) : wk_rms_norm(y[d], wd[d], 1e-5f);
  float *a = read_all(y[0]), *b = read_all(wk_to_device(y[1], WK_CPU));
  float err = a && b ? max_abs_diff(a, b, 64 * 1024) : NAN, scale = 1;
  for (int64_t i = 0; a && i < 64 * 1024; i++) scale = fmaxf(scale, fabsf(a[i]));
  CHECK(err <= 1e-4f * scale, "a 60-stage row chain on cuda vs cpu: max diff %g (largest value %g)", err, scale);
  free(a);
  free(b);
  wk_scope_end();
}

// rows.cu's register chain kernel (WICK_CUDA_ROWS_CHAIN, default on): chains of row
// ops alone over rows of at most 1024 values, against the CPU, with the kernel's
// launch count showing which kernel ran; the same chains on nn.cu's general kernel
// (switch off) match the CPU too. Covered: every op, weights and biases of each
// dtype, a bf16 input with a row pitch, a bf16 output, a row length that leaves part
// of a lane's chunk empty (100), softmaxes of softmaxes (which skip the max), the
// seed's 1000 chained softmaxes and RMSNorms, and 1500 stages (two launches handing
// rows over in f32). Rows of 1028 or 102 values
// are not for it.
void wkc_rows_test_chain(int on);       // rows.cu: 1 on, 0 off, -1 the environment's
long long wkc_rows_chain_launches(void);
static wk_step *chain_steps(int n, int x, wk_dtype in_dt, int64_t R, int64_t D, int64_t pitch, int o, wk_dtype out_dt,
                            const int *ops, int nops, int w, wk_dtype wdt, int b, wk_dtype bdt) {
  wk_step *ch = calloc((size_t)n, sizeof *ch);
  int64_t sh[2] = {R, D};
  for (int j = 0; ch && j < n; j++) {
    wk_step *st = &ch[j];
    *st = step0(ops[j % nops]);
    bool norm = st->op == WK_OP_RMS_NORM || st->op == WK_OP_LAYER_NORM;
    st->nin = 1;
    st->in[0] = j ? op_c(-1, WK_F32, 2, sh) : op_s(x, in_dt, 2, sh, (int64_t[]){pitch, 1}, 0);
    if (norm && w >= 0) st->in[st->nin++] = op_c(w, wdt, 1, &D), st->attrs.i[0] = 1;
    if (st->op == WK_OP_LAYER_NORM && b >= 0) st->in[st->nin++] = op_c(b, bdt, 1, &D), st->attrs.i[1] = 1;
    st->attrs.f[0] = 1e-5f;
    st->chain = j ? -1 : n;
    st->out = j + 1 < n ? op_c(-1, WK_F32, 2, sh) : op_c(o, out_dt, 2, sh);
  }
  return ch;
}
static void chain_case(const char *what, int n, wk_dtype in_dt, int64_t R, int64_t D, int64_t pitch, wk_dtype out_dt,
                       const int *ops, int nops, wk_dtype wdt, wk_dtype bdt, long long launches) {
  int x = buf(in_dt, R * pitch, -4, 4), o = out_buf(out_dt, R * D);
  int w = buf(wdt, D, 0.5f, 1.5f), b = buf(bdt, D, -0.5f, 0.5f);
  wk_step *ch = chain_steps(n, x, in_dt, R, D, pitch, o, out_dt, ops, nops, w, wdt, b, bdt);
  float atol = out_dt == WK_F32 ? 1e-6f : 1e-3f, rtol = out_dt == WK_F32 ? 2e-4f : 8e-3f;
  char name[160];
  for (int on = 1; ch && on >= 0; on--) {
    wkc_rows_test_chain(on);
    long long before = wkc_rows_chain_launches();
    snprintf(name, sizeof name, "%s (%s kernel)", what, on ? "register chain" : "general");
    compare(name, ch, o, atol, rtol);
    long long got = wkc_rows_chain_launches() - before;
    CHECK(got == (on ? launches : 0), "%s: %lld register-chain launches, expected %lld", name, got, on ? launches : 0);
  }
  wkc_rows_test_chain(-1);
  free(ch);
  reset();
}
static void test_rows_chain(void) {
  const int all[] = {WK_OP_RMS_NORM, WK_OP_LAYER_NORM, WK_OP_LOG_SOFTMAX, WK_OP_SOFTMAX};
  const int seed[] = {WK_OP_SOFTMAX, WK_OP_RMS_NORM};
  chain_case("chain rms -> ln -> log_softmax -> softmax, f32 [64,1024]", 4, WK_F32, 64, 1024, 1024, WK_F32, all, 4,
             WK_F32, WK_F32, 1);
  chain_case("chain of 8, bf16 rows 104 apart, bf16 weight, f16 bias [37,100] -> bf16", 8, WK_BF16, 37, 100, 104,
             WK_BF16, all, 4, WK_BF16, WK_F16, 1);
  chain_case("chain of 6, f16 weight, bf16 bias [5,896]", 6, WK_F32, 5, 896, 896, WK_F32, all + 1, 3, WK_F16, WK_BF16,
             1);
  chain_case("chain of 5 over [40,512] (four warps a row)", 5, WK_F32, 40, 512, 512, WK_F32, all, 4, WK_F32, WK_F32, 1);
  chain_case("chain of 7 over [9,200] (two warps a row, a part empty)", 7, WK_F32, 9, 200, 200, WK_F32, all, 4, WK_F32,
             WK_F32, 1);
  const int soft[] = {WK_OP_SOFTMAX, WK_OP_SOFTMAX, WK_OP_LOG_SOFTMAX, WK_OP_SOFTMAX, WK_OP_SOFTMAX, WK_OP_RMS_NORM};
  chain_case("chain softmax -> softmax -> log_softmax -> softmax x2 -> rms_norm, x2 [64,1024]", 12, WK_F32, 64, 1024,
             1024, WK_F32, soft, 6, WK_F32, WK_F32, 1);
  chain_case("1000 chained softmaxes [64,1024]", 1000, WK_F32, 64, 1024, 1024, WK_F32, seed, 1, WK_F32, WK_F32, 1);
  chain_case("1000 chained softmax / rms_norm [64,1024]", 1000, WK_F32, 64, 1024, 1024, WK_F32, seed, 2, WK_F32, WK_F32,
             1);
  chain_case("1500 chained softmax / rms_norm [64,256] (two launches)", 1500, WK_F32, 64, 256, 256, WK_F32, seed, 2,
             WK_F32, WK_F32, 2);
  // a NaN (row 2) or an infinity (row 5) makes its row NaN, through RMSNorm and both
  // softmaxes (the second skips the max); the other rows sum to 1
  int x = buf(WK_F32, 8 * 256, -4, 4), o = out_buf(WK_F32, 8 * 256);
  put(B[x].h, WK_F32, 2 * 256 + 17, NAN);
  put(B[x].h, WK_F32, 5 * 256 + 200, INFINITY);
  slot_upload(x);
  const int nan_ops[] = {WK_OP_RMS_NORM, WK_OP_SOFTMAX, WK_OP_SOFTMAX};
  wk_step *ch = chain_steps(3, x, WK_F32, 8, 256, 256, o, WK_F32, nan_ops, 3, -1, WK_F32, -1, WK_F32);
  unsigned char *dev = ch ? run_device("chain with NaN / inf rows", ch, o) : NULL;
  int bad = 0;
  for (int r = 0; dev && r < 8; r++) {
    double sum = 0;
    int nans = 0;
    for (int j = 0; j < 256; j++) {
      float v = get(dev, WK_F32, r * 256 + j);
      nans += isnan(v);
      sum += v;
    }
    bad += (r == 2 || r == 5) ? nans != 256 : (nans || fabs(sum - 1) > 1e-5);
  }
  CHECK(dev && !bad, "register chain: NaN / inf rows all NaN, the others sum to 1 (%d rows wrong)", bad);
  free(dev);
  free(ch);
  reset();
  chain_case("chain over rows of 1028 (general kernel)", 3, WK_F32, 8, 1028, 1028, WK_F32, all, 4, WK_F32, WK_F32, 0);
  chain_case("chain over rows of 102 (general kernel)", 3, WK_F32, 8, 102, 102, WK_F32, all, 4, WK_F32, WK_F32, 0);
}

// lora.cu's chain kernel (WICK_CUDA_LORA_CHAIN, default on): one-row LoRA calls
// chained through the public API (the planner groups them) against the CPU, with the
// kernel's launch count showing which kernel ran; with the switch off the same plan
// runs call by call and matches the CPU too. Covered: the seed's widths (2048 and
// 1024: 16 and 8 columns a CTA), widths off the CTAs' column and row tiles (1100,
// 1030), ranks 8, 5, 4 and 1, scales that change from call to call, a chain broken by
// an output that is also a result (two groups, two launches), 2100 calls (two
// launches; W a cyclic shift, so that values neither grow nor vanish over the chain),
// and a W below the kernel's 4 MB (512: call by call).
void wkc_lora_test_chain(int on);       // lora.cu: 1 on, 0 off, -1 the environment's
long long wkc_lora_chain_launches(void);
static void lora_chain_case(int64_t K, int64_t r, int calls, bool shift, int keep_at, long long launches) {
  wk_scope_begin();
  uint64_t seed = (uint64_t)(K * 31 + r * 7 + calls);
  wk_tensor *x = wk_randn(3, (int64_t[]){1, 1, K}, WK_F32, seed), *w;
  if (shift) {
    float *wv = calloc((size_t)(K * K), sizeof *wv);
    for (int64_t k = 0; wv && k < K; k++) wv[k * K + (k + 1) % K] = 1.0f;
    w = wk_from_data(2, (int64_t[]){K, K}, WK_F32, wv);
    free(wv);
  } else {  // about unit gain a call: entries of variance 0.8 / K
    w = wk_mul_scalar(wk_rand(2, (int64_t[]){K, K}, WK_F32, -1, 1, seed + 1), sqrtf(2.4f / (float)K));
  }
  const float ab = shift ? 0.002f : 0.1f;
  wk_tensor *a = wk_rand(2, (int64_t[]){K, r}, WK_F32, -ab, ab, seed + 2), *b = wk_rand(2, (int64_t[]){r, K}, WK_F32, -ab, ab, seed + 3);
  wk_tensor *in[2][4] = {{x, w, a, b}};
  for (int k = 0; k < 4; k++) in[1][k] = wk_to_device(in[0][k], WK_CUDA);
  wk_tensor *y[2] = {x, in[1][0]}, *kept[2] = {NULL, NULL};
  for (int i = 0; i < calls; i++)
    for (int d = 0; d < 2; d++) {
      y[d] = wk_lora(y[d], in[d][1], in[d][2], in[d][3], i % 3 == 1 ? -0.5f : 2.0f);
      if (i == keep_at) kept[d] = y[d];
    }
  float *ref = read_all(y[0]), *kref = kept[0] ? read_all(kept[0]) : NULL, scale = 1;
  for (int64_t i = 0; ref && i < K; i++) scale = fmaxf(scale, fabsf(ref[i]));
  char name[160];
  for (int on = 1; on >= 0; on--) {
    wkc_lora_test_chain(on);
    wk_tensor *gy = wk_keep(wk_mul_scalar(y[1], 1.0f)), *gk = kept[1] ? wk_keep(wk_mul_scalar(kept[1], 1.0f)) : NULL;
    wk_tensor *outs[2] = {gy, gk};
    long long before = wkc_lora_chain_launches();
    wk_status st = wk_eval(gk ? 2 : 1, outs);
    long long got = wkc_lora_chain_launches() - before;
    float *g = st ? NULL : read_all(gy), *gkv = gk && !st ? read_all(gk) : NULL;
    float err = g && ref ? max_abs_diff(g, ref, K) : NAN, kerr = gkv && kref ? max_abs_diff(gkv, kref, K) : 0;
    snprintf(name, sizeof name, "%d chained lora calls [1,%lld] r%lld%s (%s)", calls, (long long)K, (long long)r,
             keep_at >= 0 ? ", call 5 also a result" : "", on ? "chain kernel" : "call by call");
    CHECK(!st && err <= 1e-4f * scale && kerr <= 1e-4f * scale, "%s: max diff %g, kept output %g (largest value %g)",
          name, err, kerr, scale);
    CHECK(got == (on ? launches : 0), "%s: %lld chain launches, expected %lld", name, got, on ? launches : 0);
    wk_tensor_free(gy);
    if (gk) wk_tensor_free(gk);
    free(g);
    free(gkv);
  }
  wkc_lora_test_chain(-1);
  free(ref);
  free(kref);
  wk_scope_end();
}
static void test_lora_chain(void) {
  lora_chain_case(2048, 8, 12, false, -1, 1);
  lora_chain_case(1024, 8, 12, false, -1, 1);
  lora_chain_case(1100, 5, 9, false, -1, 1);
  lora_chain_case(1030, 1, 7, false, -1, 1);
  lora_chain_case(1500, 8, 20, false, 5, 2);
  lora_chain_case(1024, 4, 2100, true, -1, 2);
  lora_chain_case(512, 8, 12, false, -1, 0);
}

int main(void) {
  if (!dual_open()) return 77;
  printf("device: %s\n", wk_cuda_device_name());
  test_ew();
  test_reduce();
  test_matmul();
  test_rows();
  test_norm_bwd_rows();
  test_nn();
  test_rope_vec();
  test_ce_split();
  test_errors();
  test_public();
  test_top1();
  test_long_chain();
  test_rows_fast();
  test_rows_fast_bits();
  test_rows_chain();
  test_lora_chain();
  wk_cuda_mem_stats ms;
  wk_cuda_memory_stats(&ms);
  printf("cuda memory: reserved %zu, peak reserved %zu, in use %zu, cudaMalloc calls %llu, cache hits %llu\n",
         ms.reserved, ms.peak_reserved, ms.in_use, ms.cuda_mallocs, ms.cache_hits);
  return check_report();
}
