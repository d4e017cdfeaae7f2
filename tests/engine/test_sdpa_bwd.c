// The fused attention backward (CPU) against the same gradients taken through
// primitive ops (matmul, softmax, add: each gradient-checked on its own), at shapes
// that cross the kernel's key blocks (64) and row chunks (256 stacked rows), with
// GQA, causal masks with S != T, additive masks holding -inf, a fully masked row,
// strided and bf16 inputs. The small-shape finite-difference checks are in test_nn.
#include <math.h>
#include <stdlib.h>
#include "check.h"

typedef struct {
  const char *name;
  int64_t B, Hq, Hkv, T, S, D;
  int causal;
  int mask;        // 0 none, 1 random [T, S] with some -inf, 2 like 1 plus a fully masked row (row `dead`)
  wk_dtype dtype;
  double tol;      // on max |fused - ref| / max |ref|
} cfg;

static wk_tensor *rnd(int64_t a, int64_t b, int64_t c, int64_t d, uint64_t seed) {
  int64_t sh[4] = {a, b, c, d};
  return wk_rand(4, sh, WK_F32, -1.0, 1.0, seed);
}

static wk_tensor *to5(wk_tensor *t, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  int64_t sh[5] = {a, b, c, d, e};
  return wk_reshape(t, 5, sh);
}

// O = softmax(q k^T * scale + mask [+ causal]) v from primitives, GQA by broadcasting.
static wk_tensor *attention_ref(const cfg *c, wk_tensor *q, wk_tensor *k, wk_tensor *v, wk_tensor *mask) {
  int64_t G = c->Hq / c->Hkv;
  wk_tensor *q5 = to5(wk_cast(q, WK_F32), c->B, c->Hkv, G, c->T, c->D);
  wk_tensor *k5 = to5(wk_cast(k, WK_F32), c->B, c->Hkv, 1, c->S, c->D);
  wk_tensor *v5 = to5(wk_cast(v, WK_F32), c->B, c->Hkv, 1, c->S, c->D);
  wk_tensor *s = wk_mul_scalar(wk_matmul_t(q5, 0, k5, 1), (float)(1.0 / sqrt((double)c->D)));
  if (mask) s = wk_add(s, mask);
  if (c->causal) s = wk_add(s, wk_causal_mask(c->T, c->S));
  wk_tensor *o = wk_matmul(wk_softmax(s, -1), v5);
  int64_t sh[4] = {c->B, c->Hq, c->T, c->D};
  return wk_reshape(o, 4, sh);
}

// Random additive mask [T, S]: ~10% -inf (never a whole row, except row `dead` in mode 2).
static wk_tensor *make_mask(const cfg *c, int64_t dead, int zero_dead) {
  int64_t n = c->T * c->S, sh[2] = {c->T, c->S};
  float *m = malloc(sizeof(float) * (size_t)n);
  uint64_t x = 88172645463325252ull;
  for (int64_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int64_t t = i / c->S, s = i % c->S;
    float u = (float)(x % 1000) / 1000.0f;
    m[i] = u < 0.1f && s != 0 ? -INFINITY : u - 0.5f;
    if (c->mask == 2 && t == dead) m[i] = zero_dead ? 0.0f : -INFINITY;
  }
  wk_tensor *t = wk_from_data(2, sh, WK_F32, m);
  free(m);
  return t;
}

static double max_abs(const float *a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fabs((double)a[i]) > m ? fabs((double)a[i]) : m;
  return m;
}

static void check_case(const cfg *c) {
  wk_scope_begin();
  int64_t dead = c->T / 2;
  wk_tensor *q = wk_cast(rnd(c->B, c->Hq, c->T, c->D, 1), c->dtype);
  wk_tensor *k = wk_cast(rnd(c->B, c->Hkv, c->S, c->D, 2), c->dtype);
  wk_tensor *v = wk_cast(rnd(c->B, c->Hkv, c->S, c->D, 3), c->dtype);
  wk_tensor *r = rnd(c->B, c->Hq, c->T, c->D, 4);
  wk_tensor *rref = r;
  if (c->mask == 2) { // the dead row's output is 0 whatever r says; the reference gets r = 0 there
    int64_t sh[4] = {1, 1, c->T, 1};
    float *keep = malloc(sizeof(float) * (size_t)c->T);
    for (int64_t t = 0; t < c->T; t++) keep[t] = t == dead ? 0.0f : 1.0f;
    rref = wk_mul(r, wk_from_data(4, sh, WK_F32, keep));
    free(keep);
  }
  wk_tensor *leaves[3] = {q, k, v};
  CHECK(wk_eval(3, leaves) == WK_OK, "%s: inputs", c->name);
  for (int i = 0; i < 3; i++) wk_set_trainable(leaves[i], 1);
  wk_tensor *mask = c->mask ? make_mask(c, dead, 0) : NULL, *mref = c->mask ? make_mask(c, dead, 1) : NULL;

  wk_tensor *fused = wk_sdpa(q, k, v, mask, c->causal, 0);
  wk_tensor *lf = wk_sum(wk_mul(wk_cast(fused, WK_F32), r), 0, NULL, 0);
  wk_tensor *lr = wk_sum(wk_mul(attention_ref(c, q, k, v, mref), rref), 0, NULL, 0);
  wk_tensor *gf[3], *gr[3];
  CHECK(wk_grad(lf, 3, leaves, gf) == WK_OK && wk_grad(lr, 3, leaves, gr) == WK_OK, "%s: grad", c->name);
  const char *what[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; i++) {
    float *a = read_all(gf[i]), *b = read_all(gr[i]);
    CHECK(a && b, "%s %s: evaluate", c->name, what[i]);
    if (!a || !b) { free(a), free(b); continue; }
    int64_t n = wk_numel(gf[i]);
    double worst = 0, scale = max_abs(b, n);
    for (int64_t j = 0; j < n; j++) {
      double d = fabs((double)a[j] - (double)b[j]);
      if (d > worst || d != d) worst = d;
    }
    CHECK(scale > 0 && worst <= c->tol * scale, "%s %s: max |fused - primitive| %g vs max |ref| %g (tol %g)", c->name,
          what[i], worst, scale, c->tol);
    free(a), free(b);
  }
  wk_scope_end();
}

// A causal mask with S < T hides every key from the first T - S rows: their output
// is 0, and so are their query gradients.
static void check_hidden_rows(void) {
  wk_scope_begin();
  int64_t T = 80, S = 50, D = 8;
  wk_tensor *q = rnd(1, 2, T, D, 5), *k = rnd(1, 1, S, D, 6), *v = rnd(1, 1, S, D, 7);
  wk_tensor *leaves[3] = {q, k, v};
  CHECK(wk_eval(3, leaves) == WK_OK, "hidden rows: inputs");
  wk_set_trainable(q, 1);
  wk_tensor *loss = wk_sum(wk_mul(wk_sdpa(q, k, v, NULL, 1, 0), rnd(1, 2, T, D, 8)), 0, NULL, 0), *g;
  CHECK(wk_grad(loss, 1, &q, &g) == WK_OK, "hidden rows: grad");
  float *dq = read_all(g);
  int bad = 0, live = 0;
  for (int64_t h = 0; h < 2; h++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t d = 0; d < D; d++) {
        float x = dq ? dq[(h * T + t) * D + d] : NAN;
        if (t < T - S ? x != 0.0f : !isfinite(x)) bad++;
        live += t >= T - S && x != 0.0f;
      }
  CHECK(dq && !bad && live > 0, "hidden rows: %d wrong query gradients (rows that see no key must get 0)", bad);
  free(dq);
  wk_scope_end();
}

int main(void) {
  const cfg cases[] = {
      {"causal GQA 150x150", 2, 4, 2, 150, 150, 16, 1, 0, WK_F32, 2e-5},
      {"causal S > T, mask", 1, 6, 2, 70, 200, 32, 1, 1, WK_F32, 2e-5},
      {"full, masked row", 1, 3, 3, 65, 129, 8, 0, 2, WK_F32, 2e-5},
      {"causal MHA 300 rows", 1, 2, 2, 300, 300, 64, 1, 0, WK_F32, 2e-5},
      {"causal bf16", 1, 4, 1, 96, 96, 32, 1, 0, WK_BF16, 2e-2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
  check_hidden_rows();
  return check_report();
}
