// Row chains: softmax / norm stages with elementwise code between and after them
// run as one pass; results must equal stage-by-stage (eager) evaluation, within a few
// ulps where a stage defers work to the next (softmax's normalization, RMSNorm's scale).
#include <math.h>
#include <string.h>
#include "gradcheck.h"
#include "../../src/engine/engine.h"
#include "../../src/engine/plan.h"

#define SHAPE(...) (int64_t[]){__VA_ARGS__}

typedef wk_tensor *(*chain_fn)(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b);

static wk_tensor *c_softmax3(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)y, (void)w, (void)b;
  return wk_softmax(wk_softmax(wk_softmax(x, -1), -1), -1);
}
static wk_tensor *c_norms(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)y;
  return wk_layer_norm(wk_rms_norm(wk_rms_norm(x, w, 1e-5f), NULL, 1e-6f), w, b, 1e-5f);
}
static wk_tensor *c_rms4(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)y, (void)b; // each norm hands its output's sum of squares and its scale to the next
  return wk_rms_norm(wk_rms_norm(wk_rms_norm(wk_rms_norm(x, w, 1e-5f), NULL, 1e-6f), w, 1e-5f), w, 1e-3f);
}
static wk_tensor *c_prologue_between(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)b; // softmax(rms_norm(x) * 3 + y): elementwise code between two stages
  return wk_softmax(wk_add(wk_mul_scalar(wk_rms_norm(x, w, 1e-5f), 3.0f), y), -1);
}
static wk_tensor *c_epilogue(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)b; // residual add after a norm, and a log-softmax after an elementwise prologue
  return wk_add(wk_log_softmax(wk_exp(wk_mul_scalar(x, 0.5f)), -1), wk_mul(wk_rms_norm(y, w, 1e-5f), y));
}
static wk_tensor *c_broadcast_epilogue(wk_tensor *x, wk_tensor *y, wk_tensor *w, wk_tensor *b) {
  (void)y; // an epilogue operand broadcast along rows
  return wk_mul(wk_softmax(wk_add(x, b), -1), w);
}

static void test_chains(void) {
  // tol: the same f32 math in the same order, only the storage of intermediates differs
  // (1e-6: the values are below 8); consecutive RMSNorms multiply by each one's scale
  // in the next (a rounding or two more a stage on values below 4: 4e-6)
  struct { const char *name; chain_fn f; int min_chain; float tol; } cases[] = {
      {"softmax x3", c_softmax3, 3, 1e-6f}, {"rms, rms, layer norm", c_norms, 3, 4e-6f}, {"rms x4", c_rms4, 4, 4e-6f},
      {"elementwise between stages", c_prologue_between, 2, 1e-6f}, {"epilogues", c_epilogue, 2, 1e-6f},
      {"broadcast epilogue", c_broadcast_epilogue, 2, 1e-6f},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    wk_scope_begin();
    wk_tensor *x = gc_input(3, SHAPE(3, 5, 96), -3, 3, 1 + k), *y = gc_input(3, SHAPE(3, 5, 96), -1, 1, 11 + k);
    wk_tensor *w = gc_input(1, SHAPE(96), 0.5f, 1.5f, 21), *b = gc_input(1, SHAPE(96), -0.5f, 0.5f, 22);
    wk_tensor *lazy = cases[k].f(x, y, w, b);
    float *lv = read_all(lazy);
    const wk_plan *p = wk_last_plan();
    int longest = 0;
    for (int s = 0; p && s < p->nsteps; s++) if (p->steps[s].chain > longest) longest = p->steps[s].chain;
    CHECK(longest >= cases[k].min_chain, "%s: row chain of %d stages (want >= %d)", cases[k].name, longest,
          cases[k].min_chain);
    wk_set_eager(1);
    float *ev = read_all(cases[k].f(x, y, w, b));
    wk_set_eager(0);
    CHECK(max_abs_diff(lv, ev, 3 * 5 * 96) <= cases[k].tol, "%s: fused == stage by stage (%g <= %g)", cases[k].name,
          max_abs_diff(lv, ev, 3 * 5 * 96), cases[k].tol);
    free(lv);
    free(ev);
    wk_scope_end();
  }
}

// A stage whose result is also needed elsewhere is stored, not chained.
static void test_no_chain_when_shared(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(2, SHAPE(4, 64), -1, 1, 31);
  wk_tensor *s1 = wk_softmax(x, -1);
  wk_tensor *out = wk_add(wk_softmax(s1, -1), wk_sum(s1, 1, (int[]){1}, 1));
  float *v = read_all(out);
  const wk_plan *p = wk_last_plan();
  bool chained = false;
  for (int s = 0; s < p->nsteps; s++) chained |= p->steps[s].chain != 0 && p->steps[s].op == WK_OP_SOFTMAX && s == 0;
  CHECK(!chained, "a shared stage is materialized");
  CHECK(fabsf(v[0]) > 0 && v[0] == v[0], "value");
  free(v);
  wk_scope_end();
}

// A one-input op read by several elementwise consumers (silu(gate) in a SwiGLU MLP,
// read by the forward product and by the backward's d_up) is computed in each of them,
// never stored; one consumer that reads it twice computes it once.
static void test_duplicated_unary(void) {
  wk_scope_begin();
  wk_tensor *g = gc_input(2, SHAPE(64, 96), -3, 3, 51), *u = gc_input(2, SHAPE(64, 96), -1, 1, 52);
  wk_tensor *s = wk_silu(g), *o[3] = {wk_mul(s, u), wk_add(s, u), wk_mul(wk_sigmoid(g), wk_neg(wk_sigmoid(g)))};
  CHECK(wk_eval(3, o) == WK_OK, "eval");
  const wk_plan *p = wk_last_plan();
  int silus = 0, sigmoids = 0, stores = 0;
  for (int k = 0; k < p->nsteps; k++) {
    const wk_step *st = &p->steps[k];
    stores += st->op == WK_STEP_FUSED_EW;
    for (int q = 0; q < st->prog.n; q++) {
      silus += st->prog.code[q].op == WK_OP_SILU;
      sigmoids += st->prog.code[q].op == WK_OP_SIGMOID;
    }
  }
  CHECK(stores == 3 && silus == 2 && sigmoids == 1,
        "silu computed in both consumers and sigmoid once in its one (%d steps, %d silu, %d sigmoid)", stores, silus,
        sigmoids);
  // the same through a reshape of a stored value (a matmul's output)
  wk_tensor *w = gc_input(2, SHAPE(96, 96), -0.2f, 0.2f, 53), *u3 = gc_input(3, SHAPE(2, 32, 96), -1, 1, 54);
  wk_tensor *sv = wk_silu(wk_reshape(wk_matmul(g, w), 3, SHAPE(2, 32, 96))), *o2[2] = {wk_mul(sv, u3), wk_add(sv, u3)};
  CHECK(wk_eval(2, o2) == WK_OK, "eval");
  p = wk_last_plan();
  silus = 0;
  for (int k = 0; k < p->nsteps; k++)
    for (int q = 0; q < p->steps[k].prog.n; q++) silus += p->steps[k].prog.code[q].op == WK_OP_SILU;
  CHECK(p->nsteps == 3 && silus == 2, "silu of a reshaped matmul computed in both consumers (%d steps, %d silu)",
        p->nsteps, silus);
  wk_set_eager(1);
  wk_tensor *se = wk_silu(g), *e[3] = {wk_mul(se, u), wk_add(se, u), wk_mul(wk_sigmoid(g), wk_neg(wk_sigmoid(g)))};
  wk_set_eager(0);
  for (int i = 0; i < 3; i++) {
    float *a = read_all(o[i]), *b = read_all(e[i]);
    CHECK(max_abs_diff(a, b, 64 * 96) == 0, "output %d equals eager evaluation", i);
    free(a);
    free(b);
  }
  wk_scope_end();
}

// silu(g) * u through a LoRA-style down projection: (p @ A^T) with p = silu(g) * u.
static wk_tensor *g_swiglu_down(wk_tensor *const *in, void *ctx) {
  (void)ctx;
  wk_tensor *p = wk_mul(wk_silu(in[0]), in[1]);
  return wk_matmul_t(wk_reshape(p, 2, SHAPE(-1, 24)), 0, in[2], 1);
}
static bool has_recomputed_mul(const wk_tensor *t, int depth) {
  if (!t || depth < 0) return false;
  if (t->op == WK_OP_MUL && t->attrs.u == 1) return true;
  for (int k = 0; k < t->nin; k++) if (has_recomputed_mul(t->in[k], depth - 1)) return true;
  return false;
}

// The weight gradient of a matmul whose input is a differentiated product reads that
// product computed again (ops_matmul.c's recomputed), not the forward's copy: the
// gradients pass the finite-difference check, and the graph holds the tagged copy.
static void test_recomputed_product(void) {
  wk_scope_begin();
  wk_tensor *in[3] = {gc_input(3, SHAPE(2, 5, 24), -2, 2, 61), gc_input(3, SHAPE(2, 5, 24), -1, 1, 62),
                      gc_input(2, SHAPE(6, 24), -0.5f, 0.5f, 63)};
  gradcheck("matmul of silu(g) * u: gradients of g, u and the weight", g_swiglu_down, NULL, 3, in, 7);
  for (int i = 0; i < 3; i++) wk_set_trainable(in[i], 1);
  wk_tensor *gr[3];
  CHECK(wk_grad(wk_sum(g_swiglu_down(in, NULL), 0, NULL, 0), 3, in, gr) == WK_OK, "grad");
  CHECK(has_recomputed_mul(gr[2], 6), "the weight's gradient reads a recomputed product");
  wk_set_trainable(in[0], 0), wk_set_trainable(in[1], 0);   // a product off the gradient path is read as it is
  wk_tensor *gw;
  CHECK(wk_grad(wk_sum(g_swiglu_down(in, NULL), 0, NULL, 0), 1, &in[2], &gw) == WK_OK && !has_recomputed_mul(gw, 6),
        "no copy when the product is not differentiated");
  wk_set_trainable(in[2], 0);
  wk_scope_end();
}

// A small result off a chain (sum(a) beside a @ w @ w @ w, targets in that order) runs
// right after a, not after the chain the depth-first order puts first: a dies at the
// chain's first matmul instead of living to the end (compile_schedule.c's pull_up_small_sinks).
static void test_small_sink_pulled_up(void) {
  wk_scope_begin();
  wk_tensor *x = gc_input(2, SHAPE(256, 256), -1, 1, 71), *w = gc_input(2, SHAPE(256, 256), -0.1f, 0.1f, 72);
  wk_tensor *a = wk_mul_scalar(x, 2.0f);
  wk_tensor *t[2] = {wk_matmul(wk_matmul(wk_matmul(a, w), w), w), wk_sum(a, 0, NULL, 0)};
  CHECK(wk_eval(2, t) == WK_OK, "eval");
  const wk_plan *p = wk_last_plan();
  int at = -1;
  for (int k = 0; k < p->nsteps; k++) if (p->steps[k].op == WK_OP_SUM) at = k;
  CHECK(p->nsteps == 5 && at == 1, "the sum runs second of %d steps (at %d)", p->nsteps, at);
  float *v = read_all(x), got = wk_item(t[1]);
  double want = 0;
  for (int i = 0; v && i < 256 * 256; i++) want += 2.0 * v[i];
  CHECK(fabs(got - want) <= 1e-3 * (1 + fabs(want)), "sum %g, want %g", (double)got, want);
  free(v);
  wk_scope_end();
}

// A value in [lo, hi) from a 64-bit LCG state.
static float uniform(uint64_t *st, float lo, float hi) {
  *st = *st * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (hi - lo) * (float)(*st >> 40) / 16777216.0f;
}

// Ten chained softmaxes (one row chain, whose later stages take expm1 by a short
// Taylor polynomial of their bounded input) and the same stage by stage (eager),
// against a double reference, over row lengths and input scales that take each
// Taylor degree and the general exp; rows of -inf masks with one finite entry, and a
// NaN row. Both stay within 4 ulps (worst measured: 1.4 ulps lazy, 2 eager).
static void test_softmax_chain_accuracy(void) {
  const int64_t Ds[] = {1, 2, 5, 16, 96, 1000, 4099};
  const float scales[] = {1e-3f, 1.0f, 8.0f, 40.0f};
  const int R = 3;
  double worst[2] = {0, 0};
  uint64_t st = 12345;
  for (size_t di = 0; di < sizeof Ds / sizeof *Ds; di++)
    for (size_t si = 0; si < sizeof scales / sizeof *scales; si++) {
      int64_t D = Ds[di], n = R * D;
      float *x = malloc(sizeof(float) * (size_t)n);
      double *ref = malloc(sizeof(double) * (size_t)n);
      for (int64_t i = 0; i < n; i++) x[i] = scales[si] * uniform(&st, -1.0f, 1.0f);
      if (D > 1) for (int64_t i = 1; i < D; i++) x[D + i] = -INFINITY; // row 1: a mask
      for (int64_t i = 0; i < n; i++) ref[i] = x[i];
      for (int stage = 0; stage < 10; stage++)
        for (int r = 0; r < R; r++) {
          double m = -INFINITY, sum = 0, *v = ref + r * D;
          for (int64_t i = 0; i < D; i++) m = v[i] > m ? v[i] : m;
          for (int64_t i = 0; i < D; i++) sum += v[i] = exp(v[i] - m);
          for (int64_t i = 0; i < D; i++) v[i] /= sum;
        }
      wk_scope_begin();
      wk_tensor *xt = wk_from_data(2, SHAPE(R, D), WK_F32, x);
      for (int eager = 0; eager < 2; eager++) {
        wk_set_eager(eager);
        wk_tensor *y = xt;
        for (int stage = 0; stage < 10; stage++) y = wk_softmax(y, -1);
        float *v = read_all(y);
        wk_set_eager(0);
        double err = 0;
        for (int64_t i = 0; i < n; i++) {
          double e = fabs(v[i] - ref[i]) / ref[i];
          err = e > err || e != e ? e : err;
        }
        CHECK(err <= 0x1p-22, "softmax x10, D %lld, scale %g, %s: relative error %g <= 2^-22 (4 ulps)",
              (long long)D, scales[si], eager ? "eager" : "lazy", err);
        worst[eager] = err > worst[eager] ? err : worst[eager];
        free(v);
      }
      wk_scope_end();
      free(x);
      free(ref);
    }
  printf("softmax x10 worst relative error: lazy %.3g, eager %.3g (2^-24 = %.3g)\n", worst[0], worst[1], 0x1p-24);
  // a NaN stays NaN through the chain, as stage by stage
  wk_scope_begin();
  wk_tensor *y = wk_from_data(2, SHAPE(1, 4), WK_F32, (float[]){1, NAN, 2, 3});
  for (int stage = 0; stage < 10; stage++) y = wk_softmax(y, -1);
  float *v = read_all(y);
  CHECK(v[0] != v[0] && v[3] != v[3], "softmax x10 of a row with NaN: NaN");
  free(v);
  wk_scope_end();
}

// RMSNorm chains (each stage's scale deferred to the next, its sum of squares handed
// over) against a double reference, lazy and eager: x10 over row lengths, with weights
// near 1, and 60 stages of weights 1/16 and 16 (the deferred scale passes 2^+-32 and is
// applied instead), and one stage without a weight between. Both stay within 8 ulps
// of the largest value (worst measured: see the printed line).
static void test_rms_chain_accuracy(void) {
  const int64_t Ds[] = {1, 7, 64, 96, 1000, 4099};
  const struct { int stages; float lo, hi; } runs[] = {{10, 0.5f, 1.5f}, {60, 0.0625f, 0.0625f}, {60, 16.0f, 16.0f}};
  const int R = 3;
  double worst[2] = {0, 0};
  uint64_t st = 777;
  for (size_t di = 0; di < sizeof Ds / sizeof *Ds; di++)
    for (size_t ri = 0; ri < sizeof runs / sizeof *runs; ri++) {
      int64_t D = Ds[di], n = R * D;
      float *x = malloc(sizeof(float) * (size_t)n), *w = malloc(sizeof(float) * (size_t)D);
      double *ref = malloc(sizeof(double) * (size_t)n);
      for (int64_t i = 0; i < n; i++) x[i] = uniform(&st, -3.0f, 3.0f);
      for (int64_t i = 0; i < D; i++) w[i] = uniform(&st, runs[ri].lo, runs[ri].hi);
      const int plain = runs[ri].stages / 2;   // this stage has no weight
      for (int64_t i = 0; i < n; i++) ref[i] = x[i];
      for (int stage = 0; stage < runs[ri].stages; stage++)
        for (int r = 0; r < R; r++) {
          double ss = 0, *v = ref + r * D;
          for (int64_t i = 0; i < D; i++) ss += v[i] * v[i];
          double k = 1.0 / sqrt(ss / (double)D + 1e-5);
          for (int64_t i = 0; i < D; i++) v[i] *= k * (stage == plain ? 1.0 : (double)w[i]);
        }
      double big = 0;
      for (int64_t i = 0; i < n; i++) big = fabs(ref[i]) > big ? fabs(ref[i]) : big;
      wk_scope_begin();
      wk_tensor *xt = wk_from_data(2, SHAPE(R, D), WK_F32, x), *wt = wk_from_data(1, SHAPE(D), WK_F32, w);
      for (int eager = 0; eager < 2; eager++) {
        wk_set_eager(eager);
        wk_tensor *y = xt;
        for (int stage = 0; stage < runs[ri].stages; stage++) y = wk_rms_norm(y, stage == plain ? NULL : wt, 1e-5f);
        float *v = read_all(y);
        wk_set_eager(0);
        double err = 0;
        for (int64_t i = 0; i < n; i++) {
          double e = fabs(v[i] - ref[i]) / big;
          err = e > err || e != e ? e : err;
        }
        CHECK(err <= 0x1p-21, "rms_norm x%d, D %lld, weights in [%g, %g], %s: error %g of the largest value <= 2^-21",
              runs[ri].stages, (long long)D, runs[ri].lo, runs[ri].hi, eager ? "eager" : "lazy", err);
        worst[eager] = err > worst[eager] ? err : worst[eager];
        free(v);
      }
      wk_scope_end();
      free(x);
      free(w);
      free(ref);
    }
  printf("rms_norm chains worst error (of the largest value): lazy %.3g, eager %.3g (2^-24 = %.3g)\n", worst[0],
         worst[1], 0x1p-24);
}

// A chain of any length is one pass: 200 alternating RMSNorms (with weights) and
// softmaxes were refused past 64 stages; equal to stage by stage.
static void test_long_chain(void) {
  enum { STAGES = 200 };
  wk_scope_begin();
  wk_tensor *x = gc_input(2, SHAPE(6, 40), -2, 2, 41), *w = gc_input(1, SHAPE(40), 0.5f, 1.5f, 42);
  float *v[2];
  for (int eager = 0; eager < 2; eager++) {
    wk_set_eager(eager);
    wk_tensor *y = x;
    for (int k = 0; k < STAGES; k++) y = k % 2 ? wk_softmax(y, -1) : wk_rms_norm(y, w, 1e-5f);
    v[eager] = read_all(y);
    wk_set_eager(0);
    if (!eager) {
      const wk_plan *p = wk_last_plan();
      CHECK(p && p->steps[0].chain == STAGES, "%d stages as one row chain (its head's chain: %d)", STAGES,
            p ? p->steps[0].chain : -1);
    }
  }
  CHECK(v[0] && v[1] && max_abs_diff(v[0], v[1], 6 * 40) <= 1e-6f, "%d-stage chain == stage by stage (%g)", STAGES,
        v[0] && v[1] ? max_abs_diff(v[0], v[1], 6 * 40) : -1.0f);
  free(v[0]);
  free(v[1]);
  wk_scope_end();
}

static wk_tensor *g_chain(wk_tensor *const *in, void *ctx) {
  (void)ctx;
  return wk_softmax(wk_mul_scalar(wk_rms_norm(in[0], in[1], 1e-5f), 2.0f), -1);
}

// Elementwise groups in f16 / bf16 compute in f32 and round once, where a value is
// stored (or explicitly cast); eager mode rounds after every op. So a lazy 2-byte group
// equals the same ops run eagerly in f32 on the 2-byte inputs, rounded at the end, bit
// for bit; and eager's per-op rounding is within a few ulps of it. A chain on a dense
// input (the accumulator path), a shared input (the block interpreter), a longer one,
// and an f16 exp cast back to f32 (no rounding at all: 0.299961 for x = 0.3).
static void test_half_groups(void) {
  const int64_t n = 1000;
  float *xs = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) xs[i] = (float)(i - 500) * 0.00731f;
  for (int dt = 0; dt < 2; dt++)
    for (int form = 0; form < 4; form++) {
      wk_dtype d = dt ? WK_BF16 : WK_F16;
      float *v[3];
      for (int run = 0; run < 3; run++) {   // lazy in d, eager in f32 then rounded, eager in d
        wk_set_eager(run > 0);
        wk_scope_begin();
        wk_tensor *h = wk_cast(wk_from_data(1, SHAPE(n), WK_F32, xs), d), *y;
        if (run == 1) h = wk_cast(h, WK_F32);
        if (form == 0) y = wk_exp(wk_mul_scalar(wk_add_scalar(h, 0.3f), 1.7f));
        else if (form == 1) y = wk_add(wk_mul(h, h), wk_tanh(h));
        else if (form == 2) y = wk_sigmoid(wk_sub(wk_silu(wk_mul_scalar(h, 3.0f)), wk_square(wk_add_scalar(h, -0.25f))));
        else y = wk_cast(wk_exp(h), WK_F32);
        if (run == 1 && form < 3) y = wk_cast(y, d);
        wk_eval(1, &y);   // stored: in d (form 3: f32), rounded once
        v[run] = read_all(wk_cast(y, WK_F32));
        wk_scope_end();
        wk_set_eager(0);
      }
      CHECK(!memcmp(v[0], v[1], sizeof(float) * (size_t)n), "%s group form %d: lazy == f32 ops rounded once, bit for bit",
            dt ? "bf16" : "f16", form);
      // eager's per-op rounding against the single rounding, in ulps of the largest value
      // (each op's rounding carries into the next: exp(1.7 (x + 0.3)) multiplies x's by ~2|x|)
      double worst = 0, big = 0, ulp = dt ? 0x1p-8 : 0x1p-11;
      for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(v[2][i] - v[0][i])), big = fmax(big, fabs(v[0][i]));
      CHECK(worst <= (form == 3 ? 1 : 16) * ulp * big, "%s group form %d: eager within %g ulps (of the largest) of lazy",
            dt ? "bf16" : "f16", form, worst / (ulp * big));
      for (int r = 0; r < 3; r++) free(v[r]);
    }
  free(xs);
}

int main(void) {
  test_half_groups();
  test_chains();
  test_no_chain_when_shared();
  test_duplicated_unary();
  test_recomputed_product();
  test_small_sink_pulled_up();
  test_long_chain();
  test_softmax_chain_accuracy();
  test_rms_chain_accuracy();
  wk_scope_begin();
  wk_tensor *x = gc_input(2, SHAPE(3, 16), -1, 1, 41), *w = gc_input(1, SHAPE(16), 0.5f, 1.5f, 42);
  wk_tensor *in[2] = {x, w};
  gradcheck("softmax(rms_norm(x, w) * 2) gradient", g_chain, NULL, 2, in, 3);
  wk_scope_end();
  return check_report();
}
