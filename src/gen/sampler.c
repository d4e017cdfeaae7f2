// Samplers over a logits row: penalties, bias, temperature, top-k, top-p, min-p.
#include "wick/sampler.h"
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"

typedef struct { float v; int32_t id; } pair;

struct wk_sampler {
  wk_sampler_params p;
  wk_logit_bias *bias;
  int64_t V;
  float *w;           // processed logits (-INFINITY: removed)
  int32_t *cnt;       // scratch counts (all zero between calls)
  pair *pairs;        // scratch for sorting
  int32_t *hist;      // accepted ids: all of them until repeat_last_n, then a ring
  size_t n_hist, cap_hist, head;
  uint64_t rng[4];
};

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t xoshiro_next(uint64_t *s) {
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t; s[3] = rotl(s[3], 45);
  return r;
}
double wk_sampler_uniform(wk_sampler *s) {
  if (!s) { wk_error(WK_ERR_ARG, "wk_sampler_uniform: sampler is NULL"); return NAN; }
  return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

wk_sampler_params wk_sampler_defaults(void) {
  wk_sampler_params p;
  memset(&p, 0, sizeof p);
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.repeat_penalty = 1.0f;
  p.repeat_last_n = 64;
  return p;
}

void wk_sampler_reset(wk_sampler *s, uint64_t seed) {
  if (!s) return;
  s->n_hist = s->head = 0;
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

void wk_sampler_free(wk_sampler *s) {
  if (!s) return;
  free(s->bias); free(s->w); free(s->cnt); free(s->pairs); free(s->hist);
  free(s);
}

wk_sampler *wk_sampler_new(const wk_sampler_params *pp, int64_t vocab) {
  wk_sampler_params p = pp ? *pp : wk_sampler_defaults();
  if (vocab <= 0 || vocab > INT32_MAX) { wk_error(WK_ERR_ARG, "sampler: vocabulary size %lld is invalid", (long long)vocab); return NULL; }
  if (p.top_k < 0) { wk_error(WK_ERR_ARG, "sampler: top_k %d must be >= 0", p.top_k); return NULL; }
  if (!(p.top_p > 0 && p.top_p <= 1)) { wk_error(WK_ERR_ARG, "sampler: top_p %g must be in (0, 1]", (double)p.top_p); return NULL; }
  if (!(p.min_p >= 0 && p.min_p <= 1)) { wk_error(WK_ERR_ARG, "sampler: min_p %g must be in [0, 1]", (double)p.min_p); return NULL; }
  if (!(p.repeat_penalty > 0) || !isfinite(p.repeat_penalty)) { wk_error(WK_ERR_ARG, "sampler: repeat_penalty %g must be > 0", (double)p.repeat_penalty); return NULL; }
  if (!isfinite(p.presence_penalty) || !isfinite(p.frequency_penalty)) { wk_error(WK_ERR_ARG, "sampler: presence / frequency penalties must be finite"); return NULL; }
  if (isnan(p.temperature) || isinf(p.temperature)) { wk_error(WK_ERR_ARG, "sampler: temperature %g must be finite", (double)p.temperature); return NULL; }
  if (p.repeat_last_n < -1) { wk_error(WK_ERR_ARG, "sampler: repeat_last_n %d must be >= -1", p.repeat_last_n); return NULL; }
  if (p.n_order < 0 || p.n_order > WK_SAMPLER_STAGE_COUNT) { wk_error(WK_ERR_ARG, "sampler: n_order %d out of range", p.n_order); return NULL; }
  int seen[WK_SAMPLER_STAGE_COUNT] = {0};
  for (int i = 0; i < p.n_order; i++) {
    int st = (int)p.order[i];
    if (st < 0 || st >= WK_SAMPLER_STAGE_COUNT || seen[st]++) { wk_error(WK_ERR_ARG, "sampler: order[%d] = %d is unknown or repeated", i, st); return NULL; }
  }
  if (!p.n_order) {
    p.n_order = WK_SAMPLER_STAGE_COUNT;
    for (int i = 0; i < WK_SAMPLER_STAGE_COUNT; i++) p.order[i] = (wk_sampler_stage)i;
  }
  if (p.n_bias && !p.bias) {
    wk_error(WK_ERR_ARG, "sampler: %zu logit biases but the bias array is NULL", p.n_bias);
    return NULL;
  }
  for (size_t i = 0; i < p.n_bias; i++)
    if (p.bias[i].id < 0 || p.bias[i].id >= vocab || isnan(p.bias[i].bias)) {
      wk_error(WK_ERR_ARG, "sampler: logit bias %zu, %g for id %d, is %s (vocabulary %lld)", i, (double)p.bias[i].bias,
               p.bias[i].id, isnan(p.bias[i].bias) ? "NaN" : "outside the vocabulary", (long long)vocab);
      return NULL;
    }
  wk_sampler *s = calloc(1, sizeof *s);
  if (!s) { wk_error(WK_ERR_OOM, "sampler: out of memory"); return NULL; }
  s->V = vocab;
  s->w = malloc((size_t)vocab * sizeof *s->w);
  s->cnt = calloc((size_t)vocab, sizeof *s->cnt);
  s->pairs = malloc((size_t)vocab * sizeof *s->pairs);
  if (p.n_bias) {
    s->bias = malloc(p.n_bias * sizeof *s->bias);
    if (s->bias) memcpy(s->bias, p.bias, p.n_bias * sizeof *s->bias);
  }
  p.bias = s->bias;
  s->p = p;
  if (!s->w || !s->cnt || !s->pairs || (p.n_bias && !s->bias)) {
    wk_sampler_free(s);
    wk_error(WK_ERR_OOM, "sampler: out of memory");
    return NULL;
  }
  wk_sampler_reset(s, p.seed);
  return s;
}

wk_status wk_sampler_accept(wk_sampler *s, int32_t id) {
  if (!s) return wk_error(WK_ERR_ARG, "sampler: NULL");
  if (id < 0 || id >= s->V) return wk_error(WK_ERR_ARG, "sampler: id %d outside the vocabulary (%lld)", id, (long long)s->V);
  int32_t n = s->p.repeat_last_n;
  if (n == 0) return WK_OK;
  // The window grows with the ids accepted, up to n, then turns into a ring: a huge
  // repeat_last_n costs what was seen, not n ids at the first accept (8 GB near INT32_MAX).
  size_t lim = n < 0 ? SIZE_MAX : (size_t)n;
  if (s->n_hist < lim) {
    if (s->n_hist == s->cap_hist) {
      size_t cap = s->cap_hist ? 2 * s->cap_hist : 256;
      if (cap > lim) cap = lim;
      int32_t *h = realloc(s->hist, cap * sizeof *h);
      if (!h) return wk_error(WK_ERR_OOM, "sampler: out of memory");
      s->hist = h;
      s->cap_hist = cap;
    }
    s->hist[s->n_hist++] = id;
    return WK_OK;
  }
  s->hist[s->head] = id;   // full: the oldest (at head) goes
  s->head = (s->head + 1) % lim;
  return WK_OK;
}

// A seen logit penalized, in double: HF's repetition penalty (a positive logit divided
// by R, a negative one multiplied), then the presence and frequency penalties.
static double penalized(const wk_sampler_params *p, float x, int32_t c) {
  double y = x, r = p->repeat_penalty;
  if (r != 1.0) y = y > 0 ? y / r : y * r;
  return y - ((double)p->presence_penalty + (double)p->frequency_penalty * c);
}

// NaN (a ban minus an infinite penalty) stays a ban; y is finite within float's range
// or infinite.
static float to_float(double y) { return y != y || y < -FLT_MAX ? -INFINITY : y > FLT_MAX ? INFINITY : (float)y; }

// Where a finite logit's penalized value leaves float's range (a repeat_penalty near 0
// boosts seen logits past FLT_MAX: +inf ties, far from the order the limit keeps; a huge
// one sinks them to -inf, removed), every logit is shifted by the finite maximum first,
// as apply_temperature does: no probability changes, and the order stays.
static void apply_penalties(wk_sampler *s) {
  const wk_sampler_params *p = &s->p;
  if (!s->n_hist || (p->repeat_penalty == 1.0f && p->presence_penalty == 0 && p->frequency_penalty == 0)) return;
  for (size_t i = 0; i < s->n_hist; i++) s->cnt[s->hist[i]]++;
  bool wide = false;
  for (size_t i = 0; i < s->n_hist && !wide; i++) {
    int32_t id = s->hist[i];
    wide = isfinite(s->w[id]) && fabs(penalized(p, s->w[id], s->cnt[id])) > FLT_MAX;
  }
  if (wide) {
    double top = -INFINITY;
    for (int64_t v = 0; v < s->V; v++) {
      double y = s->cnt[v] ? penalized(p, s->w[v], s->cnt[v]) : s->w[v];
      if (isfinite(y) && y > top) top = y;
    }
    for (int64_t v = 0; v < s->V; v++) {
      s->w[v] = to_float((s->cnt[v] ? penalized(p, s->w[v], s->cnt[v]) : s->w[v]) - top);
      s->cnt[v] = 0;
    }
    return;
  }
  for (size_t i = 0; i < s->n_hist; i++) {
    int32_t id = s->hist[i];
    if (!s->cnt[id]) continue;   // already done
    s->w[id] = to_float(penalized(p, s->w[id], s->cnt[id]));
    s->cnt[id] = 0;
  }
}

// logits /= T. Where some x / T would overflow, every positive logit became +inf (a
// tie among them, far from the greedy limit a tiny T approaches): the finite maximum is
// subtracted first then, which changes no probability and keeps the order.
static void apply_temperature(wk_sampler *s) {
  float T = s->p.temperature, big = 0, top = -INFINITY;
  if (!(T > 0) || T == 1.0f) return;
  for (int64_t i = 0; i < s->V; i++) {
    float x = s->w[i];
    if (!isfinite(x)) continue;
    if (fabsf(x) > big) big = fabsf(x);
    if (x > top) top = x;
  }
  float shift = big / T > FLT_MAX ? top : 0;
  for (int64_t i = 0; i < s->V; i++) s->w[i] = (s->w[i] - shift) / T;
}

static int by_value_desc(const void *a, const void *b) {
  const pair *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

// Kept (finite) entries into s->pairs; returns how many.
static int64_t gather(wk_sampler *s) {
  int64_t n = 0;
  for (int64_t i = 0; i < s->V; i++)
    if (s->w[i] != -INFINITY) s->pairs[n++] = (pair){s->w[i], (int32_t)i};
  return n;
}

static float max_kept(const wk_sampler *s) {
  float m = -INFINITY;
  for (int64_t i = 0; i < s->V; i++) if (s->w[i] > m) m = s->w[i];
  return m;
}

// k-th largest of v[0..n) (1-based k <= n) by quickselect; reorders v.
static float kth_largest(pair *v, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1, want = k - 1;
  while (lo < hi) {
    float piv = v[lo + (hi - lo) / 2].v;
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (v[i].v > piv) i++;
      while (v[j].v < piv) j--;
      if (i <= j) { pair t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else break;
  }
  return v[want].v;
}

static void apply_top_k(wk_sampler *s) {
  int64_t k = s->p.top_k;
  if (k <= 0) return;
  int64_t n = gather(s);
  if (k >= n) return;
  float thr = kth_largest(s->pairs, n, k);
  for (int64_t i = 0; i < s->V; i++) if (s->w[i] < thr) s->w[i] = -INFINITY;
}

static void apply_top_p(wk_sampler *s) {
  double p = s->p.top_p;
  if (p >= 1.0) return;
  int64_t n = gather(s);
  if (n <= 1) return;
  qsort(s->pairs, (size_t)n, sizeof *s->pairs, by_value_desc);
  float mx = s->pairs[0].v;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += exp((double)s->pairs[i].v - mx);
  double cum = 0;
  int64_t keep = n;
  for (int64_t i = 0; i < n; i++) {
    cum += exp((double)s->pairs[i].v - mx) / sum;
    if (cum >= p - 1e-6) { keep = i + 1; break; }
  }
  for (int64_t i = keep; i < n; i++) s->w[s->pairs[i].id] = -INFINITY;
}

static void apply_min_p(wk_sampler *s) {
  double mp = s->p.min_p;
  if (mp <= 0) return;
  float mx = max_kept(s);
  if (mx == -INFINITY) return;
  double thr = mp * (1 - 1e-6);
  for (int64_t i = 0; i < s->V; i++)
    if (s->w[i] != -INFINITY && exp((double)s->w[i] - mx) < thr) s->w[i] = -INFINITY;
}

// Runs the stages into s->w; WK_OK unless every token was removed.
static wk_status process(wk_sampler *s, const float *logits) {
  if (!s || !logits) return wk_error(WK_ERR_ARG, "sampler: NULL argument");
  for (int64_t i = 0; i < s->V; i++) {
    if (isnan(logits[i]))   // a model's failure, not a distribution: refused, not dropped
      return wk_error(WK_ERR_ARG, "sampler: logits[%lld] is NaN (of %lld; -INFINITY bans a token)", (long long)i,
                      (long long)s->V);
    s->w[i] = logits[i];
  }
  for (int k = 0; k < s->p.n_order; k++) {
    switch (s->p.order[k]) {
      case WK_SAMPLER_PENALTIES: apply_penalties(s); break;
      case WK_SAMPLER_BIAS:
        for (size_t i = 0; i < s->p.n_bias; i++) {
          float *x = &s->w[s->bias[i].id];
          *x += s->bias[i].bias;
          if (*x != *x) *x = -INFINITY;   // a ban wins: -inf + inf
        }
        break;
      case WK_SAMPLER_TEMPERATURE: apply_temperature(s); break;
      case WK_SAMPLER_TOP_K: apply_top_k(s); break;
      case WK_SAMPLER_TOP_P: apply_top_p(s); break;
      case WK_SAMPLER_MIN_P: apply_min_p(s); break;
      default: break;
    }
  }
  for (int64_t i = 0; i < s->V; i++) if (s->w[i] == INFINITY) s->w[i] = FLT_MAX;
  if (max_kept(s) == -INFINITY)
    return wk_error(WK_ERR_ARG, "sampler: every token was removed (-INFINITY logits, bans or penalties)");
  return WK_OK;
}

wk_status wk_sampler_probs(wk_sampler *s, const float *logits, float *probs) {
  if (!probs) return wk_error(WK_ERR_ARG, "sampler: probs is NULL");
  wk_status st = process(s, logits);
  if (st) return st;
  float mx = max_kept(s);
  double sum = 0;
  for (int64_t i = 0; i < s->V; i++) sum += s->w[i] == -INFINITY ? 0 : exp((double)s->w[i] - mx);
  for (int64_t i = 0; i < s->V; i++) probs[i] = s->w[i] == -INFINITY ? 0 : (float)(exp((double)s->w[i] - mx) / sum);
  return WK_OK;
}

wk_status wk_sampler_sample(wk_sampler *s, const float *logits, wk_sample *out) {
  wk_status st = process(s, logits);
  if (st) return st;
  if (!out) return wk_error(WK_ERR_ARG, "sampler: out is NULL");
  float mx = max_kept(s);
  double sum = 0;
  int32_t best = -1;
  for (int64_t i = 0; i < s->V; i++) {
    if (s->w[i] == -INFINITY) continue;
    sum += exp((double)s->w[i] - mx);
    if (best < 0 || s->w[i] > s->w[best]) best = (int32_t)i;
  }
  int32_t id = best;
  if (s->p.temperature > 0) {
    double u = wk_sampler_uniform(s) * sum, acc = 0;
    int32_t last = best;
    id = -1;
    for (int64_t i = 0; i < s->V; i++) {
      if (s->w[i] == -INFINITY) continue;
      last = (int32_t)i;
      acc += exp((double)s->w[i] - mx);
      if (u < acc) { id = (int32_t)i; break; }
    }
    if (id < 0) id = last;   // rounding at the top end
  }
  double lp = (double)s->w[id] - mx - log(sum);
  out->id = id;
  out->logprob = (float)lp;
  out->prob = (float)exp(lp);
  return WK_OK;
}
