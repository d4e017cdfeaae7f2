// Attention backward, fused (FlashAttention-2's backward arranged for a CPU).
// Compiled per ISA like nn.c; the exp loops below vectorize under each ISA's flags.
//
// The gradients of O = softmax(Q K^T * scale + mask) V, with dO given:
//   P = exp(S - L)   (L = log-sum-exp of each row of S, recomputed: the forward keeps nothing)
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta)  with delta = rowsum(dO * O),
//   dQ = dS K * scale,  dK = dS^T Q * scale.
// One task per (batch, kv head): its query rows from all G heads of the group are
// stacked t-major (row r = t*G + g), so under a causal mask the rows that see key
// block [s0, s0 + n) are one contiguous range, and every product is one GEMM of up
// to T*G rows. Key blocks the mask hides from a row range are never touched, which
// halves the work of a causal training step, and no [T, S] matrix is stored: the
// decomposed backward (five batched matmuls, a softmax and its backward over
// [B, H, T, S]) spent twice the FLOPs and the memory traffic of this one.
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernels.h"
#include "gemm.h"
#include "../kernel_math.h"
#include "threadpool.h"
#include "attn_operands.h"

wk_status WK_ISA_FN(wk_cpu_sdpa_bwd)(const wk_step *s, void *const *slots);

#define BK 64     // keys per block: a [rows, BK] score tile per row chunk
#define QR 256    // query rows per chunk: the score and dP tiles stay in L2


typedef struct {
  mat4 q, k, v, o, g;
  const float *mask;
  int64_t ms[4];                // mask strides over [B, Hq, T, S] (0 on broadcast axes)
  int64_t Hq, Hkv, G, T, S, D;
  float scale;
  bool causal;
  float *dq, *dk, *dv;          // the packed output: [B, Hq, T, D], then [B, Hkv, S, D] twice
  _Atomic int oom;
} bwd_ctx;

static const float *row_of(const mat4 *m, int64_t b, int64_t h, int64_t t) {
  return m->p + b * m->s0 + h * m->s1 + t * m->s2;
}

// Scores of rows [ra, rb) against keys [s0, s0 + n) into sc (row stride BK), masked:
// hidden entries become -inf. Q rows are pre-scaled, so these are the softmax inputs.
static void scores(const bwd_ctx *c, int64_t b, int64_t hk, const float *qs, int64_t ra, int64_t rb, int64_t s0,
                   int64_t n, float *sc) {
  const int64_t G = c->G, D = c->D, off = c->S - c->T;
  wk_gemm_f32_serial(0, 1, rb - ra, n, D, 1.0f, qs + ra * D, D, row_of(&c->k, b, hk, s0), c->k.s2, 0.0f, sc, BK);
  for (int64_t r = ra; r < rb; r++) {
    int64_t t = r / G, h = hk * G + r % G;
    float *srow = sc + (r - ra) * BK;
    if (c->mask) {
      const float *mr = c->mask + b * c->ms[0] + h * c->ms[1] + t * c->ms[2] + s0 * c->ms[3];
      for (int64_t j = 0; j < n; j++) srow[j] += mr[j * c->ms[3]];
    }
    if (c->causal) // key s0 + j is visible when s0 + j <= t + off
      for (int64_t j = t + off + 1 - s0 > 0 ? t + off + 1 - s0 : 0; j < n; j++) srow[j] = -INFINITY;
  }
}

// The first stacked row that sees key s0 (rows before it are hidden from every key
// at or after s0 by the causal mask).
static int64_t first_row(const bwd_ctx *c, int64_t s0) {
  if (!c->causal) return 0;
  int64_t t = s0 - (c->S - c->T); // the first query position that sees key s0
  return (t > 0 ? t : 0) * c->G;
}

// Row reductions in 16 lanes: each 16-wide step below compiles to one vector op.
static float row_max(const float *x, int64_t n) {
  float acc[16], m = -INFINITY;
  for (int l = 0; l < 16; l++) acc[l] = -INFINITY;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  for (; j < n; j++) m = x[j] > m ? x[j] : m;
  for (int l = 0; l < 16; l++) m = acc[l] > m ? acc[l] : m;
  return m;
}
static inline float exp_or_0(float x, float m) { return x == -INFINITY ? 0.0f : wkm_exp(x - m); }
// sum exp(x - m) over n entries (-inf entries give 0; m is finite).
static float row_sumexp(const float *x, int64_t n, float m) {
  float acc[16] = {0}, s = 0.0f;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) acc[l] += exp_or_0(x[j + l], m);
  for (; j < n; j++) s += exp_or_0(x[j], m);
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}
static float row_dot(const float *x, const float *y, int64_t n) {
  float acc[16] = {0}, s = 0.0f;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) acc[l] += x[j + l] * y[j + l];
  for (; j < n; j++) s += x[j] * y[j];
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}

// L[r] = logsumexp of row r's scores (-inf when every key is hidden from it).
static void row_lse(const bwd_ctx *c, int64_t b, int64_t hk, const float *qs, int64_t R, float *lse, float *run,
                    float *sc) {
  float *m = run, *l = run + R;
  for (int64_t r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0.0f;
  for (int64_t s0 = 0; s0 < c->S; s0 += BK) {
    int64_t n = c->S - s0 < BK ? c->S - s0 : BK;
    for (int64_t ra = first_row(c, s0); ra < R; ra += QR) {
      int64_t rb = R - ra < QR ? R : ra + QR;
      scores(c, b, hk, qs, ra, rb, s0, n, sc);
      for (int64_t r = ra; r < rb; r++) {
        const float *srow = sc + (r - ra) * BK;
        float bm = row_max(srow, n);
        if (!(bm > -INFINITY)) {   // all masked, or NaN scores (then the row's L is NaN)
          if (scores_nan(srow, n)) l[r] = NAN;
          continue;
        }
        if (bm > m[r]) {
          l[r] *= wkm_exp(m[r] - bm); // m = -inf: l is 0 and stays 0
          m[r] = bm;
        }
        l[r] += row_sumexp(srow, n, m[r]);
      }
    }
  }
  for (int64_t r = 0; r < R; r++) lse[r] = l[r] == 0.0f ? -INFINITY : m[r] + logf(l[r]);
}

// In place: sc = P = exp(sc - L) (0 where hidden or the row sees nothing).
static void probs(float *sc, int64_t rows, int64_t n, const float *lse) {
  for (int64_t i = 0; i < rows; i++) {
    float *p = sc + i * BK, L = lse[i];
    if (L == -INFINITY) { memset(p, 0, sizeof(float) * (size_t)n); continue; }
    for (int64_t j = 0; j < n; j++) {
      p[j] = exp_or_0(p[j], L);
    }
  }
}

typedef struct {
  float *qs, *go, *dq, *lse, *delta, *run, *sc, *dp, *dkb, *dvb;
} bwd_buf;

static bool buf_get(bwd_buf *w, int64_t R, int64_t D) {
  size_t floats = (size_t)(3 * R * D + 4 * R + 2 * QR * BK + 2 * BK * D);
  float *p = malloc(sizeof(float) * floats);
  if (!p) return false;
  w->qs = p, w->go = w->qs + R * D, w->dq = w->go + R * D, w->lse = w->dq + R * D, w->delta = w->lse + R;
  w->run = w->delta + R, w->sc = w->run + 2 * R, w->dp = w->sc + QR * BK, w->dkb = w->dp + QR * BK;
  w->dvb = w->dkb + BK * D;
  return true;
}

// Gathers the group's rows: qs = q * scale, go = dO, delta = rowsum(dO * O); dq = 0.
static void gather(const bwd_ctx *c, int64_t b, int64_t hk, int64_t R, bwd_buf *w) {
  const int64_t G = c->G, D = c->D;
  for (int64_t r = 0; r < R; r++) {
    int64_t t = r / G, h = hk * G + r % G;
    const float *q = row_of(&c->q, b, h, t), *g = row_of(&c->g, b, h, t), *o = row_of(&c->o, b, h, t);
    for (int64_t d = 0; d < D; d++) {
      w->qs[r * D + d] = q[d] * c->scale;
      w->go[r * D + d] = g[d];
      w->dq[r * D + d] = 0.0f;
    }
    float s = row_dot(g, o, D);
    w->delta[r] = s;
  }
}

// dS = P * (dP - delta), in place in p.
static void dscores(float *p, const float *dp, int64_t rows, int64_t n, const float *delta) {
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < n; j++) p[i * BK + j] *= dp[i * BK + j] - delta[i];
}

// One key block: accumulates dQ of the rows that see it, and writes its dK and dV.
static void key_block(const bwd_ctx *c, int64_t b, int64_t hk, int64_t R, int64_t s0, bwd_buf *w) {
  const int64_t D = c->D, n = c->S - s0 < BK ? c->S - s0 : BK;
  const float *kb = row_of(&c->k, b, hk, s0), *vb = row_of(&c->v, b, hk, s0);
  memset(w->dkb, 0, sizeof(float) * (size_t)(n * D));
  memset(w->dvb, 0, sizeof(float) * (size_t)(n * D));
  for (int64_t ra = first_row(c, s0); ra < R; ra += QR) {
    int64_t rb = R - ra < QR ? R : ra + QR, rows = rb - ra;
    scores(c, b, hk, w->qs, ra, rb, s0, n, w->sc);
    probs(w->sc, rows, n, w->lse + ra);
    wk_gemm_f32_serial(1, 0, n, D, rows, 1.0f, w->sc, BK, w->go + ra * D, D, 1.0f, w->dvb, D);     // dV += P^T dO
    wk_gemm_f32_serial(0, 1, rows, n, D, 1.0f, w->go + ra * D, D, vb, c->v.s2, 0.0f, w->dp, BK);   // dP = dO V^T
    dscores(w->sc, w->dp, rows, n, w->delta + ra);
    wk_gemm_f32_serial(0, 0, rows, D, n, 1.0f, w->sc, BK, kb, c->k.s2, 1.0f, w->dq + ra * D, D);    // dQ += dS K
    wk_gemm_f32_serial(1, 0, n, D, rows, 1.0f, w->sc, BK, w->qs + ra * D, D, 1.0f, w->dkb, D);     // dK += dS^T Qs
  }
  size_t bytes = sizeof(float) * (size_t)(n * D);
  int64_t at = ((b * c->Hkv + hk) * c->S + s0) * D;
  memcpy(c->dk + at, w->dkb, bytes); // Qs carries the scale already
  memcpy(c->dv + at, w->dvb, bytes);
}

static void bwd_range(void *vc, int64_t begin, int64_t end, int tid) {
  (void)tid;
  bwd_ctx *c = vc;
  const int64_t R = c->T * c->G, D = c->D;
  bwd_buf w;
  if (!buf_get(&w, R, D)) { c->oom = 1; return; }
  for (int64_t item = begin; item < end; item++) {
    int64_t b = item / c->Hkv, hk = item % c->Hkv;
    gather(c, b, hk, R, &w);
    row_lse(c, b, hk, w.qs, R, w.lse, w.run, w.sc);
    for (int64_t s0 = 0; s0 < c->S; s0 += BK) key_block(c, b, hk, R, s0, &w);
    for (int64_t r = 0; r < R; r++) {
      int64_t t = r / c->G, h = hk * c->G + r % c->G;
      float *dst = c->dq + ((b * c->Hq + h) * c->T + t) * D;
      for (int64_t d = 0; d < D; d++) dst[d] = w.dq[r * D + d] * c->scale;
    }
  }
  free(w.qs);
}

wk_status WK_ISA_FN(wk_cpu_sdpa_bwd)(const wk_step *s, void *const *slots) {
  const wk_operand *q = &s->in[0], *k = &s->in[1];
  bwd_ctx c = {.Hq = q->shape[1], .Hkv = k->shape[1], .T = q->shape[2], .S = k->shape[2], .D = q->shape[3],
               .G = q->shape[1] / k->shape[1], .scale = s->attrs.f[0], .causal = s->attrs.i[0] != 0};
  int64_t B = q->shape[0];
  c.dq = (float *)slots[s->out.slot] + s->out.offset;
  c.dk = c.dq + B * c.Hq * c.T * c.D;
  c.dv = c.dk + B * c.Hkv * c.S * c.D;
  float *owned[6] = {0};
  mat4 *views[5] = {&c.q, &c.k, &c.v, &c.o, &c.g};
  bool fine = true;
  for (int i = 0; i < 5 && fine; i++) fine = attn_mat4(&s->in[i], slots, views[i], &owned[i]);
  if (fine && s->nin > 5) fine = attn_mask(&s->in[5], slots, &c.mask, c.ms, &owned[5]);
  if (fine) {
    int64_t items = B * c.Hkv;
    if (c.T > 0 && c.S > 0 && c.D > 0) wk_parallel_for(items, 1, bwd_range, &c);
    else memset(c.dq, 0, sizeof(float) * (size_t)(B * (c.Hq * c.T + 2 * c.Hkv * c.S) * c.D));
  }
  for (int i = 0; i < 6; i++) free(owned[i]);
  return fine && !c.oom ? WK_OK : wk_error(WK_ERR_OOM, "sdpa backward: out of memory");
}
