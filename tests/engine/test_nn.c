// Neural-network ops: forward values against double-precision reference loops,
// finite-difference gradients for every differentiable input, and error cases.
//
// Tolerances: f32 kernels use wkm_exp / f32 accumulation, so results carry a few
// ulps of relative error per element and ~sqrt(D) ulps from the row sums: with
// D <= 64 and O(1) values, 1e-5 absolute covers that with margin (a wrong formula
// is off by > 1e-2). bf16 / f16 outputs add their own rounding: 2^-8 relative for
// bf16 (4e-3 on values <= 1), 2^-11 for f16.
#include <stdbool.h>
#include <string.h>
#include "check.h"
#include "gradcheck.h"
#include "../../src/engine/plan.h"

static int64_t prod(int n, const int64_t *s) {
  int64_t p = 1;
  for (int i = 0; i < n; i++) p *= s[i];
  return p;
}

static wk_tensor *mk(int n, const int64_t *shape, float lo, float hi, uint64_t seed) {
  return gc_input(n, shape, lo, hi, seed);
}

// max |y - ref| over numel(y) values; checks it is <= tol.
static void cmp(const char *what, wk_tensor *y, const double *ref, double tol) {
  float *v = y ? read_all(y) : NULL;
  CHECK(v != NULL, "%s: could not evaluate", what);
  if (!v) return;
  double worst = 0;
  int64_t n = wk_numel(y), at = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)v[i] - ref[i]);
    if (isinf(ref[i]) && v[i] == ref[i]) d = 0;
    if (d > worst || d != d) { worst = d; at = i; }
  }
  CHECK(worst <= tol, "%s: max abs diff %g at %lld (got %g, want %g) > tol %g", what, worst, (long long)at,
        (double)v[at], ref[at], tol);
  free(v);
}

static float *host(wk_tensor *t) { return read_all(t); }

// ---- reference implementations (double) ----
static void ref_softmax(const float *x, int64_t rows, int64_t D, bool log_sm, double *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * D;
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < D; i++) m = xr[i] > m ? xr[i] : m;
    for (int64_t i = 0; i < D; i++) s += exp(xr[i] - m);
    for (int64_t i = 0; i < D; i++) out[r * D + i] = log_sm ? xr[i] - m - log(s) : exp(xr[i] - m) / s;
  }
}
static void ref_rms(const float *x, const float *w, int64_t rows, int64_t D, double eps, double *out) {
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) ss += (double)x[r * D + i] * x[r * D + i];
    double k = 1.0 / sqrt(ss / (double)D + eps);
    for (int64_t i = 0; i < D; i++) out[r * D + i] = x[r * D + i] * k * (w ? w[i] : 1.0);
  }
}
static void ref_ln(const float *x, const float *w, const float *b, int64_t rows, int64_t D, double eps, double *out) {
  for (int64_t r = 0; r < rows; r++) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < D; i++) m += x[r * D + i];
    m /= (double)D;
    for (int64_t i = 0; i < D; i++) v += (x[r * D + i] - m) * (x[r * D + i] - m);
    double k = 1.0 / sqrt(v / (double)D + eps);
    for (int64_t i = 0; i < D; i++) out[r * D + i] = (x[r * D + i] - m) * k * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
  }
}
static void ref_rope(const float *x, int64_t rows, int64_t T, int64_t D, double theta, int64_t off, int inter,
                     double *out) {
  int64_t h = D / 2;
  for (int64_t r = 0; r < rows; r++) {
    int64_t pos = off + r % T;
    const float *xr = x + r * D;
    double *y = out + r * D;
    for (int64_t i = 0; i < h; i++) {
      double a = (double)pos * pow(theta, -2.0 * (double)i / (double)D), c = cos(a), s = sin(a);
      int64_t i0 = inter ? 2 * i : i, i1 = inter ? 2 * i + 1 : i + h;
      y[i0] = xr[i0] * c - xr[i1] * s;
      y[i1] = xr[i1] * c + xr[i0] * s;
    }
  }
}
// q [B,Hq,T,D], k/v [B,Hkv,S,D], mask [B,1,T,S] or NULL (contiguous host arrays)
static void ref_sdpa(const float *q, const float *k, const float *v, const float *mask, int64_t B, int64_t Hq,
                     int64_t Hkv, int64_t T, int64_t S, int64_t D, int causal, double scale, double *out) {
  double *p = malloc(sizeof(double) * (size_t)S);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < T; t++) {
        int64_t hk = h / (Hq / Hkv);
        const float *qr = q + ((b * Hq + h) * T + t) * D;
        double m = -INFINITY, sum = 0;
        for (int64_t s = 0; s < S; s++) {
          const float *kr = k + ((b * Hkv + hk) * S + s) * D;
          double d = 0;
          for (int64_t i = 0; i < D; i++) d += (double)qr[i] * kr[i];
          d *= scale;
          if (mask) d += mask[(b * T + t) * S + s];
          if (causal && s > t + (S - T)) d = -INFINITY;
          p[s] = d;
          if (d > m) m = d;
        }
        for (int64_t s = 0; s < S; s++) { p[s] = exp(p[s] - m); sum += p[s]; }
        double *o = out + ((b * Hq + h) * T + t) * D;
        for (int64_t i = 0; i < D; i++) {
          double acc = 0;
          for (int64_t s = 0; s < S; s++) acc += p[s] * v[((b * Hkv + hk) * S + s) * D + i];
          o[i] = acc / sum;
        }
      }
  free(p);
}

// ---- forward tests ----
static void test_softmax(void) {
  wk_scope_begin();
  int64_t sh[3] = {3, 5, 37};
  wk_tensor *x = mk(3, sh, -4, 4, 1);
  float *xv = host(x);
  double *ref = malloc(sizeof(double) * 3 * 5 * 37);
  ref_softmax(xv, 15, 37, false, ref);
  cmp("softmax last axis", wk_softmax(x, -1), ref, 1e-6);
  ref_softmax(xv, 15, 37, true, ref);
  cmp("log_softmax last axis", wk_log_softmax(x, 2), ref, 1e-5);
  // fused prologue: softmax(2x + 1) == softmax(2x)
  float *x2 = malloc(sizeof(float) * 3 * 5 * 37);
  for (int i = 0; i < 3 * 5 * 37; i++) x2[i] = 2 * xv[i];
  ref_softmax(x2, 15, 37, false, ref);
  cmp("softmax with prologue", wk_softmax(wk_add_scalar(wk_mul_scalar(x, 2), 1), -1), ref, 1e-6);
  // axis 1: compare against the transposed reference
  double *r1 = malloc(sizeof(double) * 3 * 5 * 37), *col = malloc(sizeof(double) * 5);
  for (int a = 0; a < 3; a++)
    for (int c = 0; c < 37; c++) {
      double m = -INFINITY, s = 0;
      for (int b = 0; b < 5; b++) m = fmax(m, xv[(a * 5 + b) * 37 + c]);
      for (int b = 0; b < 5; b++) s += col[b] = exp(xv[(a * 5 + b) * 37 + c] - m);
      for (int b = 0; b < 5; b++) r1[(a * 5 + b) * 37 + c] = col[b] / s;
    }
  wk_tensor *y1 = wk_softmax(x, 1);
  CHECK(y1 && wk_dim(y1, 1) == 5 && wk_dim(y1, 2) == 37, "softmax axis 1 keeps the shape");
  cmp("softmax axis 1", y1, r1, 1e-6);
  for (int a = 0; a < 3; a++)
    for (int c = 0; c < 37; c++) {
      double m = -INFINITY, s = 0;
      for (int b = 0; b < 5; b++) m = fmax(m, xv[(a * 5 + b) * 37 + c]);
      for (int b = 0; b < 5; b++) s += exp(xv[(a * 5 + b) * 37 + c] - m);
      for (int b = 0; b < 5; b++) r1[(a * 5 + b) * 37 + c] = xv[(a * 5 + b) * 37 + c] - m - log(s);
    }
  cmp("log_softmax axis -2", wk_log_softmax(x, -2), r1, 1e-5);
  // non-contiguous input: softmax over the last axis of x^T [37, 5] per batch
  wk_tensor *xt = wk_transpose(x, 1, 2);
  double *rt = malloc(sizeof(double) * 3 * 37 * 5);
  for (int a = 0; a < 3; a++)
    for (int c = 0; c < 37; c++) {
      double m = -INFINITY, s = 0;
      for (int b = 0; b < 5; b++) m = fmax(m, xv[(a * 5 + b) * 37 + c]);
      for (int b = 0; b < 5; b++) s += exp(xv[(a * 5 + b) * 37 + c] - m);
      for (int b = 0; b < 5; b++) rt[(a * 37 + c) * 5 + b] = exp(xv[(a * 5 + b) * 37 + c] - m) / s;
    }
  CHECK(!wk_is_contiguous(xt), "transposed view is strided");
  cmp("softmax of a transposed view", wk_softmax(xt, -1), rt, 1e-6);
  // bf16: compare against the reference on the bf16-rounded inputs
  wk_tensor *xb = wk_cast(x, WK_BF16);
  float *xbv = host(wk_cast(xb, WK_F32));
  ref_softmax(xbv, 15, 37, false, ref);
  wk_tensor *yb = wk_softmax(xb, -1);
  CHECK(yb && wk_tensor_dtype(yb) == WK_BF16, "softmax keeps bf16");
  cmp("softmax bf16", yb, ref, 4e-3);
  ref_softmax(xbv, 15, 37, true, ref);
  cmp("log_softmax f16", wk_log_softmax(wk_cast(xb, WK_F16), -1), ref, 8e-3); // |y| < 8: 2^-11 * 8
  // masked rows: -inf entries give exact zeros
  int64_t sq[2] = {4, 6};
  wk_tensor *s = mk(2, sq, -2, 2, 3);
  float *sv = host(s);
  double rm[24];
  for (int t = 0; t < 4; t++) {
    double m = -INFINITY, z = 0;
    for (int j = 0; j <= t + 2; j++) m = fmax(m, sv[t * 6 + j]);
    for (int j = 0; j <= t + 2; j++) z += exp(sv[t * 6 + j] - m);
    for (int j = 0; j < 6; j++) rm[t * 6 + j] = j <= t + 2 ? exp(sv[t * 6 + j] - m) / z : 0.0;
  }
  wk_tensor *ym = wk_softmax(wk_add(s, wk_causal_mask(4, 6)), -1);
  cmp("softmax + causal mask", ym, rm, 1e-6);
  float *ymv = host(ym);
  CHECK(ymv && ymv[5] == 0.0f && ymv[0 * 6 + 3] == 0.0f, "masked probabilities are exactly 0");
  free(ymv);
  free(sv); free(xv); free(x2); free(xbv); free(ref); free(r1); free(col); free(rt);
  wk_scope_end();
}

static void test_norms(void) {
  wk_scope_begin();
  int64_t sh[3] = {2, 3, 33}, d1 = 33;
  wk_tensor *x = mk(3, sh, -2, 2, 11), *w = mk(1, &d1, 0.5f, 1.5f, 12), *b = mk(1, &d1, -1, 1, 13);
  float *xv = host(x), *wv = host(w), *bv = host(b);
  double *ref = malloc(sizeof(double) * 6 * 33);
  ref_rms(xv, wv, 6, 33, 1e-5, ref);
  cmp("rms_norm", wk_rms_norm(x, w, 1e-5f), ref, 1e-5);
  ref_rms(xv, NULL, 6, 33, 1e-6, ref);
  cmp("rms_norm without weight", wk_rms_norm(x, NULL, 1e-6f), ref, 1e-5);
  ref_ln(xv, wv, bv, 6, 33, 1e-5, ref);
  cmp("layer_norm", wk_layer_norm(x, w, b, 1e-5f), ref, 1e-5);
  ref_ln(xv, wv, NULL, 6, 33, 1e-5, ref);
  cmp("layer_norm weight only", wk_layer_norm(x, w, NULL, 1e-5f), ref, 1e-5);
  ref_ln(xv, NULL, bv, 6, 33, 1e-5, ref);
  cmp("layer_norm bias only", wk_layer_norm(x, NULL, b, 1e-5f), ref, 1e-5);
  ref_ln(xv, NULL, NULL, 6, 33, 1e-5, ref);
  cmp("layer_norm plain", wk_layer_norm(x, NULL, NULL, 1e-5f), ref, 1e-5);
  // fused prologue: rms_norm(x * 3) == rms_norm(x) (up to eps)
  ref_rms(xv, wv, 6, 33, 0, ref);
  cmp("rms_norm with prologue", wk_rms_norm(wk_mul_scalar(x, 3), w, 0), ref, 1e-5);
  // bf16 input, f32 weight: computed in f32, rounded to bf16 (|y| < 4: 2^-8 * 4 = 1.6e-2)
  wk_tensor *xb = wk_cast(x, WK_BF16);
  float *xbv = host(wk_cast(xb, WK_F32));
  ref_rms(xbv, wv, 6, 33, 1e-5, ref);
  wk_tensor *yb = wk_rms_norm(xb, w, 1e-5f);
  CHECK(yb && wk_tensor_dtype(yb) == WK_BF16, "rms_norm keeps bf16");
  cmp("rms_norm bf16", yb, ref, 1.6e-2);
  // non-contiguous input: x^T [2, 33, 3] normalized over its last axis (3)
  wk_tensor *xt = wk_transpose(x, 1, 2);
  double *rt = malloc(sizeof(double) * 6 * 33);
  float *xtv = host(wk_contiguous(xt));
  ref_ln(xtv, NULL, NULL, 66, 3, 1e-5, rt);
  cmp("layer_norm of a transposed view", wk_layer_norm(xt, NULL, NULL, 1e-5f), rt, 1e-5);
  free(xv); free(wv); free(bv); free(xbv); free(xtv); free(ref); free(rt);
  wk_scope_end();
}

static void test_rope(void) {
  wk_scope_begin();
  int64_t sh[4] = {2, 3, 5, 8};
  wk_tensor *x = mk(4, sh, -1, 1, 21);
  float *xv = host(x);
  double *ref = malloc(sizeof(double) * 240);
  for (int inter = 0; inter < 2; inter++) {
    ref_rope(xv, 30, 5, 8, 10000.0, 7, inter, ref);
    // angles up to (7 + 4) rad, f32 angle rounding ~ 1e-6
    cmp(inter ? "rope interleaved" : "rope rotate-half", wk_rope(x, 10000.0f, 7, inter), ref, 5e-6);
  }
  // position 0 is the identity; forward then inverse (the VJP) round-trips
  ref_rope(xv, 30, 5, 8, 500.0, 0, 0, ref);
  cmp("rope theta 500 offset 0", wk_rope(x, 500.0f, 0, 0), ref, 5e-6);
  // non-contiguous: [B, T, H, D] viewed as [B, H, T, D]
  int64_t sb[4] = {2, 5, 3, 8};
  wk_tensor *xb = mk(4, sb, -1, 1, 22);
  wk_tensor *xp = wk_transpose(xb, 1, 2);
  float *xpv = host(wk_contiguous(xp));
  ref_rope(xpv, 30, 5, 8, 10000.0, 3, 0, ref);
  cmp("rope of a transposed view", wk_rope(xp, 10000.0f, 3, 0), ref, 5e-6);
  free(xv); free(xpv); free(ref);
  wk_scope_end();
}

static void test_embedding_masks(void) {
  wk_scope_begin();
  int64_t ts[2] = {10, 6};
  wk_tensor *table = mk(2, ts, -1, 1, 31);
  float *tv = host(table);
  int32_t idv[6] = {3, 0, 9, 3, 5, 1};
  int64_t is[2] = {2, 3};
  wk_tensor *ids = wk_from_data(2, is, WK_I32, idv);
  double ref[36];
  for (int j = 0; j < 6; j++) for (int i = 0; i < 6; i++) ref[j * 6 + i] = tv[idv[j] * 6 + i];
  wk_tensor *e = wk_embedding(table, ids);
  CHECK(e && wk_ndim(e) == 3 && wk_dim(e, 2) == 6, "embedding shape [2,3,6]");
  cmp("embedding", e, ref, 0);
  wk_tensor *eb = wk_embedding(wk_cast(table, WK_BF16), ids);
  cmp("embedding bf16", eb, ref, 4e-3);
  // out of range id: an eval-time error naming it
  int32_t bad[3] = {1, 12, 2};
  int64_t three = 3;
  wk_tensor *be = wk_embedding(table, wk_from_data(1, &three, WK_I32, bad));
  CHECK(be != NULL, "embedding with a bad id builds");
  wk_clear_error();
  wk_status st = wk_eval(1, &be);
  CHECK(st != WK_OK && strstr(wk_last_error(), "12") && strstr(wk_last_error(), "embedding"),
        "bad id is an eval error naming it");
  int32_t neg[1] = {-1};
  int64_t one = 1;
  wk_tensor *ne = wk_embedding(table, wk_from_data(1, &one, WK_I32, neg));
  CHECK(wk_eval(1, &ne) != WK_OK, "negative id is an eval error");
  // masks
  wk_tensor *cm = wk_causal_mask(3, 5);
  double rc[15];
  for (int t = 0; t < 3; t++) for (int s = 0; s < 5; s++) rc[t * 5 + s] = s > t + 2 ? -INFINITY : 0;
  cmp("causal_mask", cm, rc, 0);
  int32_t lens[2] = {2, 4};
  int64_t two = 2;
  wk_tensor *pm = wk_padding_mask(wk_from_data(1, &two, WK_I32, lens), 4);
  CHECK(pm && wk_ndim(pm) == 4 && wk_dim(pm, 0) == 2 && wk_dim(pm, 1) == 1 && wk_dim(pm, 3) == 4,
        "padding_mask shape [2,1,1,4]");
  double rp[8];
  for (int b = 0; b < 2; b++) for (int s = 0; s < 4; s++) rp[b * 4 + s] = s >= lens[b] ? -INFINITY : 0;
  cmp("padding_mask", pm, rp, 0);
  free(tv);
  wk_scope_end();
}

static void test_sdpa(void) {
  wk_scope_begin();
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 5, S = 7, D = 8;
  int64_t qs[4] = {B, Hq, T, D}, ks[4] = {B, Hkv, S, D}, ms[4] = {B, 1, T, S};
  wk_tensor *q = mk(4, qs, -1, 1, 41), *k = mk(4, ks, -1, 1, 42), *v = mk(4, ks, -1, 1, 43);
  float *qv = host(q), *kv = host(k), *vv = host(v);
  float mv[2 * 5 * 7];
  for (int i = 0; i < 70; i++) mv[i] = (float)((i * 37) % 11) * 0.2f - 1.0f;
  mv[3] = -INFINITY; // a masked key
  wk_tensor *mask = wk_from_data(4, ms, WK_F32, mv);
  double *ref = malloc(sizeof(double) * (size_t)(B * Hq * T * D));
  double sc = 1.0 / sqrt((double)D);
  ref_sdpa(qv, kv, vv, NULL, B, Hq, Hkv, T, S, D, 0, sc, ref);
  cmp("sdpa plain (GQA)", wk_sdpa(q, k, v, NULL, 0, 0), ref, 1e-5);
  ref_sdpa(qv, kv, vv, mv, B, Hq, Hkv, T, S, D, 1, sc, ref);
  cmp("sdpa causal + mask (GQA)", wk_sdpa(q, k, v, mask, 1, 0), ref, 1e-5);
  ref_sdpa(qv, kv, vv, NULL, B, Hq, Hkv, T, S, D, 0, 0.5, ref);
  cmp("sdpa scale 0.5", wk_sdpa(q, k, v, NULL, 0, 0.5f), ref, 1e-5);
  // a [T, S] mask (broadcast over B and H) equal to causal
  ref_sdpa(qv, kv, vv, NULL, B, Hq, Hkv, T, S, D, 1, sc, ref);
  cmp("sdpa with causal_mask as mask", wk_sdpa(q, k, v, wk_causal_mask(T, S), 0, 0), ref, 1e-5);
  // non-contiguous q: [B, T, Hq, D] viewed as [B, Hq, T, D]; long S crosses key blocks
  int64_t qb[4] = {B, T, Hq, D}, kl[4] = {B, Hkv, 150, D};
  wk_tensor *qt = wk_transpose(mk(4, qb, -1, 1, 44), 1, 2);
  wk_tensor *k2 = mk(4, kl, -1, 1, 45), *v2 = mk(4, kl, -1, 1, 46);
  float *qtv = host(wk_contiguous(qt)), *k2v = host(k2), *v2v = host(v2);
  ref_sdpa(qtv, k2v, v2v, NULL, B, Hq, Hkv, T, 150, D, 1, sc, ref);
  cmp("sdpa strided q, S = 150, causal", wk_sdpa(qt, k2, v2, NULL, 1, 0), ref, 1e-5);
  // several query tiles (G * T > 64 rows) and key blocks, causal, a bf16 [T, S] mask
  {
    const int64_t T3 = 70, S3 = 75;
    int64_t q3[4] = {1, 4, T3, D}, k3[4] = {1, 2, S3, D}, m3[2] = {T3, S3};
    wk_tensor *qq = mk(4, q3, -1, 1, 47), *kk = mk(4, k3, -1, 1, 48), *vv3 = mk(4, k3, -1, 1, 49);
    wk_tensor *mm = wk_cast(mk(2, m3, -2, 2, 50), WK_BF16);
    float *a = host(qq), *bk = host(kk), *cv = host(vv3), *mf = host(wk_cast(mm, WK_F32));
    double *r3 = malloc(sizeof(double) * (size_t)(4 * T3 * D));
    ref_sdpa(a, bk, cv, mf, 1, 4, 2, T3, S3, D, 1, sc, r3);
    cmp("sdpa 70 x 75 causal, bf16 mask, tiled", wk_sdpa(qq, kk, vv3, mm, 1, 0), r3, 1e-5);
    free(a); free(bk); free(cv); free(mf); free(r3);
  }
  // head sizes that are whole vectors (the register-tile path on AVX-512: D / 16 of 1,
  // 3 and 5 vectors, 10 rows per tile in groups of 4, 23 keys or several blocks)
  for (int64_t Dw = 16; Dw <= 80; Dw += 32)
    for (int64_t Sw = 23; Sw <= 150; Sw += 127) {
      int64_t qw[4] = {B, Hq, T, Dw}, kw[4] = {B, Hkv, Sw, Dw}, mw[4] = {B, 1, T, Sw};
      wk_tensor *qq = mk(4, qw, -1, 1, 51), *kk = mk(4, kw, -1, 1, 52), *vw = mk(4, kw, -1, 1, 53);
      wk_tensor *mm = mk(4, mw, -2, 2, 54);
      float *a = host(qq), *bk = host(kk), *cv = host(vw), *mf = host(mm);
      double *rw = malloc(sizeof(double) * (size_t)(B * Hq * T * Dw));
      ref_sdpa(a, bk, cv, mf, B, Hq, Hkv, T, Sw, Dw, 1, 1.0 / sqrt((double)Dw), rw);
      char name[64];
      snprintf(name, sizeof name, "sdpa D = %lld, S = %lld, causal + mask", (long long)Dw, (long long)Sw);
      cmp(name, wk_sdpa(qq, kk, vw, mm, 1, 0), rw, 1e-5);
      free(a); free(bk); free(cv); free(mf); free(rw);
    }
  // bf16 inputs: output rounding 2^-8 on |o| < 1
  wk_tensor *qh = wk_cast(q, WK_BF16), *kh = wk_cast(k, WK_BF16), *vh = wk_cast(v, WK_BF16);
  float *qhv = host(wk_cast(qh, WK_F32)), *khv = host(wk_cast(kh, WK_F32)), *vhv = host(wk_cast(vh, WK_F32));
  ref_sdpa(qhv, khv, vhv, mv, B, Hq, Hkv, T, S, D, 1, sc, ref);
  wk_tensor *oh = wk_sdpa(qh, kh, vh, mask, 1, 0);
  CHECK(oh && wk_tensor_dtype(oh) == WK_BF16, "sdpa keeps bf16");
  cmp("sdpa bf16", oh, ref, 4e-3);
  // a NaN in a query (a NaN weight upstream) makes its row NaN, not a masked row's zeros
  // (its scores' max is NaN: that read as "every key masked" and hid it); others unchanged
  {
    float *qn = host(q);
    qn[(1 * T + 2) * D + 3] = NAN;   // batch 0, head 1, query 2
    wk_tensor *o = wk_sdpa(wk_from_data(4, qs, WK_F32, qn), k, v, mask, 1, 0);
    float *ov = host(o);
    ref_sdpa(qv, kv, vv, mv, B, Hq, Hkv, T, S, D, 1, sc, ref);
    int nan_row = 1, others = 1;
    for (int64_t i = 0; i < B * Hq * T * D; i++) {
      bool poisoned = i / D == 1 * T + 2;
      if (poisoned) nan_row &= isnan(ov[i]);
      else others &= fabs(ov[i] - ref[i]) < 1e-5;
    }
    CHECK(nan_row && others, "sdpa: a NaN query gives a NaN row (%d), the others as before (%d)", nan_row, others);
    free(qn); free(ov);
  }
  free(qv); free(kv); free(vv); free(qtv); free(k2v); free(v2v); free(qhv); free(khv); free(vhv); free(ref);
  wk_scope_end();
}

static void test_cross_entropy(void) {
  wk_scope_begin();
  int64_t ls[3] = {2, 3, 11}, ts[2] = {2, 3};
  wk_tensor *logits = mk(3, ls, -3, 3, 51);
  float *lv = host(logits);
  int32_t tv[6] = {4, -100, 10, 0, 7, -100};
  wk_tensor *tg = wk_from_data(2, ts, WK_I32, tv);
  double per[6], sum = 0;
  int count = 0;
  for (int r = 0; r < 6; r++) {
    if (tv[r] == -100) { per[r] = 0; continue; }
    double m = -INFINITY, s = 0;
    for (int i = 0; i < 11; i++) m = fmax(m, lv[r * 11 + i]);
    for (int i = 0; i < 11; i++) s += exp(lv[r * 11 + i] - m);
    per[r] = m + log(s) - lv[r * 11 + tv[r]];
    sum += per[r];
    count++;
  }
  wk_tensor *l0 = wk_cross_entropy(logits, tg, -100, 0);
  CHECK(l0 && wk_ndim(l0) == 2 && wk_dim(l0, 1) == 3, "cross_entropy none keeps [2,3]");
  cmp("cross_entropy none", l0, per, 1e-5);
  double mean = sum / count;
  wk_tensor *l1 = wk_cross_entropy(logits, tg, -100, 1);
  CHECK(l1 && wk_ndim(l1) == 0, "cross_entropy mean is a scalar");
  cmp("cross_entropy mean", l1, &mean, 1e-5);
  cmp("cross_entropy sum", wk_cross_entropy(logits, tg, -100, 2), &sum, 2e-5);
  // bf16 logits (loss ~ 3: bf16 rounding 2^-8 * 4)
  wk_tensor *lb = wk_cast(logits, WK_BF16);
  float *lbv = host(wk_cast(lb, WK_F32));
  double mb = 0;
  for (int r = 0; r < 6; r++) {
    if (tv[r] == -100) continue;
    double m = -INFINITY, s = 0;
    for (int i = 0; i < 11; i++) m = fmax(m, lbv[r * 11 + i]);
    for (int i = 0; i < 11; i++) s += exp(lbv[r * 11 + i] - m);
    mb += (m + log(s) - lbv[r * 11 + tv[r]]) / count;
  }
  cmp("cross_entropy bf16 mean", wk_cross_entropy(lb, tg, -100, 1), &mb, 1.6e-2);
  // a target out of range that is not ignore_index: eval error naming it
  int32_t bad[6] = {4, 11, 0, 0, 0, 0};
  wk_tensor *lbad = wk_cross_entropy(logits, wk_from_data(2, ts, WK_I32, bad), -100, 1);
  CHECK(lbad != NULL, "cross_entropy with a bad target builds");
  wk_clear_error();
  CHECK(wk_eval(1, &lbad) != WK_OK && strstr(wk_last_error(), "cross_entropy") && strstr(wk_last_error(), "11"),
        "bad target is an eval error naming it");
  free(lv); free(lbv);
  wk_scope_end();
}

// Outputs of 16 MB and more are written with streaming stores: same values.
static void test_large(void) {
  wk_scope_begin();
  const int64_t R = 2048, D = 2048;
  int64_t sh[2] = {R, D};
  wk_tensor *x = mk(2, sh, -4, 4, 91), *w = mk(1, &sh[1], 0.5f, 1.5f, 92);
  float *xv = host(x), *wv = host(w), *ys = host(wk_softmax(x, -1)), *yr = host(wk_rms_norm(x, w, 1e-5f));
  double *ref = malloc(sizeof(double) * (size_t)D), ws = 0, wr = 0;
  for (int64_t r = 0; r < R; r += 97) {
    ref_softmax(xv + r * D, 1, D, false, ref);
    for (int64_t i = 0; i < D; i++) ws = fmax(ws, fabs(ys[r * D + i] - ref[i]));
    ref_rms(xv + r * D, wv, 1, D, 1e-5, ref);
    for (int64_t i = 0; i < D; i++) wr = fmax(wr, fabs(yr[r * D + i] - ref[i]));
  }
  CHECK(ys && ws <= 1e-6, "softmax [2048, 2048] (streaming stores): max abs diff %g", ws);
  CHECK(yr && wr <= 2e-5, "rms_norm [2048, 2048] (streaming stores): max abs diff %g", wr); // |y| < 7
  free(xv); free(wv); free(ys); free(yr); free(ref);
  wk_scope_end();
}

// ---- gradient checks ----
typedef struct { int axis, mode; int64_t i0; float f0; } gctx;

static wk_tensor *f_softmax(wk_tensor *const *in, void *c) { return wk_softmax(in[0], ((gctx *)c)->axis); }
static wk_tensor *f_log_softmax(wk_tensor *const *in, void *c) { return wk_log_softmax(in[0], ((gctx *)c)->axis); }
static wk_tensor *f_softmax_t(wk_tensor *const *in, void *c) { // non-contiguous input
  (void)c;
  return wk_softmax(wk_transpose(in[0], 0, 1), -1);
}
static wk_tensor *f_rms(wk_tensor *const *in, void *c) { (void)c; return wk_rms_norm(in[0], in[1], 1e-5f); }
static wk_tensor *f_rms_nw(wk_tensor *const *in, void *c) { (void)c; return wk_rms_norm(in[0], NULL, 1e-5f); }
static wk_tensor *f_rms_bcast(wk_tensor *const *in, void *c) { // x [1, D] broadcast to [3, D]
  (void)c;
  int64_t sh[2] = {3, wk_dim(in[0], 1)};
  return wk_rms_norm(wk_broadcast_to(in[0], 2, sh), in[1], 1e-5f);
}
static wk_tensor *f_ln(wk_tensor *const *in, void *c) { (void)c; return wk_layer_norm(in[0], in[1], in[2], 1e-5f); }
static wk_tensor *f_ln_t(wk_tensor *const *in, void *c) { // strided x, bias only
  (void)c;
  return wk_layer_norm(wk_transpose(in[0], 0, 1), NULL, in[1], 1e-5f);
}
static wk_tensor *f_rope(wk_tensor *const *in, void *c) {
  gctx *g = c;
  return wk_rope(in[0], 100.0f, g->i0, g->mode);
}
static wk_tensor *f_embed(wk_tensor *const *in, void *c) {
  (void)c;
  int32_t ids[5] = {2, 0, 2, 3, 2};
  int64_t n = 5;
  return wk_embedding(in[0], wk_from_data(1, &n, WK_I32, ids));
}
static wk_tensor *f_sdpa(wk_tensor *const *in, void *c) {
  gctx *g = c;
  return wk_sdpa(in[0], in[1], in[2], g->mode ? in[3] : NULL, g->axis, 0);
}
static wk_tensor *f_sdpa_t(wk_tensor *const *in, void *c) { // q given as [B, T, H, D]
  (void)c;
  return wk_sdpa(wk_transpose(in[0], 1, 2), in[1], in[2], NULL, 1, 0);
}
static wk_tensor *f_ce(wk_tensor *const *in, void *c) {
  gctx *g = c;
  int32_t t[4] = {1, -1, 4, 0};
  int64_t n = 4;
  return wk_cross_entropy(in[0], wk_from_data(1, &n, WK_I32, t), -1, g->mode);
}

// logits computed in the graph (x @ w): the backward may overwrite them in place
static wk_tensor *f_ce_mm(wk_tensor *const *in, void *c) {
  (void)c;
  int32_t t[4] = {1, -1, 4, 0};
  int64_t n = 4;
  return wk_cross_entropy(wk_matmul(in[0], in[1]), wk_from_data(1, &n, WK_I32, t), -1, 1);
}

// The cross-entropy backward writes the logits' gradient over the logits (compile_memory.c's
// inplace_candidate): the same arena span, and gradients that pass the check.
static void test_ce_in_place(void) {
  wk_scope_begin();
  int64_t xs[2] = {4, 3}, ws[2] = {3, 5};
  wk_tensor *in[2] = {mk(2, xs, -1, 1, 77), mk(2, ws, -1, 1, 78)};
  gradcheck("cross_entropy of x @ w", f_ce_mm, NULL, 2, in, 3);
  wk_tensor *g[2];
  wk_set_trainable(in[0], 1);
  wk_set_trainable(in[1], 1);
  CHECK(wk_value_and_grad(f_ce_mm(in, NULL), 2, in, g, NULL) == WK_OK && wk_eval(2, g) == WK_OK, "value and grad");
  const wk_plan *p = wk_last_plan();
  int first = p->nslots - p->narena, found = 0;
  for (int k = 0; k < p->nsteps; k++) {
    const wk_step *st = &p->steps[k];
    if (st->op != WK_OP_CROSS_ENTROPY_BWD) continue;
    found = st->out.slot >= first && st->in[0].slot >= first &&
            p->arena_off[st->out.slot - first] == p->arena_off[st->in[0].slot - first] ? 1 : -1;
  }
  CHECK(found == 1, "the logits' gradient takes the logits' span (%d)", found);
  wk_scope_end();
}

static void test_grads(void) {
  wk_scope_begin();
  int64_t s35[2] = {3, 5}, s234[3] = {2, 3, 4}, d6 = 6, s46[2] = {4, 6}, s16[2] = {1, 6};
  gctx c = {.axis = -1};
  wk_tensor *x = mk(2, s35, -2, 2, 61), *x3 = mk(3, s234, -2, 2, 62);
  gradcheck("softmax", f_softmax, &c, 1, &x, 1);
  gradcheck("log_softmax", f_log_softmax, &c, 1, &x, 1);
  c.axis = 1;
  gradcheck("softmax axis 1 of 3", f_softmax, &c, 1, &x3, 1);
  gradcheck("log_softmax axis 1 of 3", f_log_softmax, &c, 1, &x3, 1);
  gradcheck("softmax of a transposed view", f_softmax_t, &c, 1, &x, 1);

  wk_tensor *xn = mk(2, s46, -2, 2, 63), *w = mk(1, &d6, 0.5f, 1.5f, 64), *b = mk(1, &d6, -1, 1, 65);
  wk_tensor *in3[3] = {xn, w, b};
  gradcheck("rms_norm (x, w)", f_rms, NULL, 2, in3, 3);
  gradcheck("rms_norm no weight", f_rms_nw, NULL, 1, in3, 1);
  wk_tensor *xb = mk(2, s16, -2, 2, 66), *inb[2] = {xb, w};
  gradcheck("rms_norm broadcast x", f_rms_bcast, NULL, 2, inb, 3);
  gradcheck("layer_norm (x, w, b)", f_ln, NULL, 3, in3, 7);
  int64_t s64[2] = {6, 4};
  wk_tensor *xt = mk(2, s64, -2, 2, 67), *int_[2] = {xt, mk(1, &d6, -1, 1, 68)}; // x^T is [4, 6]
  gradcheck("layer_norm strided x, bias", f_ln_t, NULL, 2, int_, 3);

  int64_t rs[3] = {2, 3, 6};
  wk_tensor *xr = mk(3, rs, -1, 1, 69);
  for (int m = 0; m < 2; m++) {
    gctx rc = {.mode = m, .i0 = 5};
    gradcheck(m ? "rope interleaved" : "rope rotate-half", f_rope, &rc, 1, &xr, 1);
  }

  int64_t tsz[2] = {4, 3};
  wk_tensor *table = mk(2, tsz, -1, 1, 70);
  gradcheck("embedding table", f_embed, NULL, 1, &table, 1);

  int64_t qs[4] = {1, 4, 3, 4}, ks[4] = {1, 2, 5, 4}, ms[2] = {3, 5};
  wk_tensor *qkv[4] = {mk(4, qs, -1, 1, 71), mk(4, ks, -1, 1, 72), mk(4, ks, -1, 1, 73), mk(2, ms, -1, 1, 74)};
  gctx sc = {.axis = 1, .mode = 1};
  gradcheck("sdpa causal + mask (q, k, v, mask)", f_sdpa, &sc, 4, qkv, 15);
  sc = (gctx){.axis = 0, .mode = 0};
  gradcheck("sdpa plain (q, k, v)", f_sdpa, &sc, 3, qkv, 7);
  int64_t qt[4] = {1, 3, 4, 4};
  wk_tensor *qkt[3] = {mk(4, qt, -1, 1, 75), qkv[1], qkv[2]};
  gradcheck("sdpa strided q, causal", f_sdpa_t, NULL, 3, qkt, 7);

  int64_t ls[2] = {4, 5};
  wk_tensor *lg = mk(2, ls, -2, 2, 76);
  for (int r = 0; r < 3; r++) {
    gctx cc = {.mode = r};
    const char *names[3] = {"cross_entropy none", "cross_entropy mean", "cross_entropy sum"};
    gradcheck(names[r], f_ce, &cc, 1, &lg, 1);
  }
  wk_scope_end();
}

// ---- build-time errors: NULL with a message naming the op ----
static void expect_err(wk_tensor *t, const char *op, const char *what) {
  CHECK(t == NULL && strstr(wk_last_error(), op), "%s: expected an error naming %s", what, op);
  wk_clear_error();
}

static void test_errors(void) {
  wk_scope_begin();
  int64_t s23[2] = {2, 3}, d4 = 4, s234[3] = {2, 3, 4}, s235[3] = {2, 3, 5};
  wk_tensor *x = mk(2, s23, 0, 1, 81), *w4 = mk(1, &d4, 0, 1, 82), *x3 = mk(3, s234, 0, 1, 83);
  wk_tensor *ids = wk_zeros(2, s23, WK_I32);
  wk_clear_error();
  expect_err(wk_softmax(ids, -1), "softmax", "softmax of i32");
  expect_err(wk_softmax(x, 2), "softmax", "softmax axis out of range");
  expect_err(wk_log_softmax(wk_scalar(1), 0), "log_softmax", "log_softmax of a scalar");
  expect_err(wk_rms_norm(x, w4, 1e-5f), "rms_norm", "rms_norm weight [4] vs D 3");
  expect_err(wk_rms_norm(x, NULL, -1), "rms_norm", "rms_norm negative eps");
  expect_err(wk_layer_norm(x, NULL, w4, 1e-5f), "layer_norm", "layer_norm bias [4] vs D 3");
  expect_err(wk_rope(x, 10000, 0, 0), "rope", "rope with odd D");
  expect_err(wk_rope(w4, 10000, 0, 0), "rope", "rope of a 1-d tensor");
  expect_err(wk_embedding(x, x), "embedding", "embedding with f32 ids");
  expect_err(wk_embedding(x3, ids), "embedding", "embedding with a 3-d table");
  expect_err(wk_padding_mask(x, 4), "padding_mask", "padding_mask with f32 lengths");
  expect_err(wk_causal_mask(-1, 3), "causal_mask", "causal_mask with T < 0");
  int64_t q4[4] = {1, 3, 2, 4}, k4[4] = {1, 2, 2, 4}, kd[4] = {1, 1, 2, 5};
  wk_tensor *q = wk_zeros(4, q4, WK_F32), *k = wk_zeros(4, k4, WK_F32), *kbad = wk_zeros(4, kd, WK_F32);
  expect_err(wk_sdpa(q, k, k, NULL, 0, 0), "sdpa", "sdpa with Hq % Hkv != 0");
  expect_err(wk_sdpa(x3, x3, x3, NULL, 0, 0), "sdpa", "sdpa with 3-d q");
  expect_err(wk_sdpa(q, kbad, kbad, NULL, 0, 0), "sdpa", "sdpa with mismatched D");
  int64_t q2[4] = {1, 2, 2, 4};
  wk_tensor *qok = wk_zeros(4, q2, WK_F32);
  expect_err(wk_sdpa(qok, k, k, x3, 0, 0), "sdpa", "sdpa with a mask that does not broadcast");
  expect_err(wk_sdpa(wk_cast(qok, WK_BF16), k, k, NULL, 0, 0), "sdpa", "sdpa with mixed dtypes");
  wk_tensor *lg = mk(3, s235, 0, 1, 84);
  expect_err(wk_cross_entropy(lg, wk_zeros(1, &d4, WK_I32), -100, 1), "cross_entropy", "cross_entropy targets shape");
  expect_err(wk_cross_entropy(lg, ids, -100, 3), "cross_entropy", "cross_entropy reduction 3");
  expect_err(wk_cross_entropy(lg, x, -100, 1), "cross_entropy", "cross_entropy f32 targets");
  // the shape message names both shapes
  wk_tensor *bad = wk_rms_norm(x, w4, 1e-5f);
  CHECK(!bad && strstr(wk_last_error(), "[4]") && strstr(wk_last_error(), "[2,3]"), "message names both shapes");
  wk_clear_error();
  wk_scope_end();
}

int main(void) {
  test_softmax();
  test_norms();
  test_rope();
  test_embedding_masks();
  test_sdpa();
  test_cross_entropy();
  test_large();
  test_grads();
  test_ce_in_place();
  test_errors();
  // eager mode runs the same kernels op by op
  wk_set_eager(1);
  test_softmax();
  test_sdpa();
  wk_set_eager(0);
  (void)prod;
  return check_report();
}
