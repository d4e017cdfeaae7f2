// Top-k alternatives in the streaming callback against the model's own logits (tiny
// llama fixture): greedy, the alternatives are the k largest of log_softmax(logits) of
// a full forward over the prompt and the tokens so far; with temperature and top-k
// they are the log-softmax of the kept logits / T. Bad values are refused.
#include <math.h>
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "wick/generate.h"

typedef struct { int32_t ids[8]; wk_gen_alt top[8][8]; int32_t n_top[8]; float logprob[8]; int n; } collect;
static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  if (c->n < 8) {
    c->ids[c->n] = t->id;
    c->logprob[c->n] = t->logprob;
    c->n_top[c->n] = t->n_top;
    for (int32_t i = 0; i < t->n_top && i < 8; i++) c->top[c->n][i] = t->top[i];
    c->n++;
  }
  return 0;
}

// Last-position logits of a full forward over seq[0..n), in double.
static bool last_logits(wk_model *m, const int32_t *seq, int n, int64_t V, double *out) {
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, n}, WK_I32, seq);
  wk_tensor *lg = wk_model_forward(m, ids, 0);
  const float *d = lg ? wk_tensor_data(lg) : NULL;
  for (int64_t j = 0; d && j < V; j++) out[j] = d[(int64_t)(n - 1) * V + j];
  wk_tensor_free(lg);
  wk_tensor_free(ids);
  return d != NULL;
}

// The k largest of v[0..V) (ties: lower id) into idx.
static void top_ids(const double *v, int64_t V, int k, int32_t *idx) {
  for (int i = 0; i < k; i++) {
    int32_t best = -1;
    for (int64_t j = 0; j < V; j++) {
      bool taken = false;
      for (int q = 0; q < i; q++) taken |= idx[q] == j;
      if (!taken && (best < 0 || v[j] > v[best])) best = (int32_t)j;
    }
    idx[i] = best;
  }
}

// Generates 4 tokens with params p (top_logprobs = k) and checks each step's
// alternatives against log-softmax over the `keep` largest logits (0: all) / temp.
static void check_run(wk_model *m, wk_generate_params *p, int k, int keep, double temp, const char *what) {
  const wk_model_config *cfg = wk_model_get_config(m);
  int64_t V = cfg->vocab_size;
  int32_t seq[16] = {1, 17, 4, 120, 33};
  int np = 5;
  collect c = {0};
  CHECK(wk_generate(m, NULL, seq, (size_t)np, p, on_tok, &c, NULL) == WK_OK && c.n == 4, "%s: generate", what);
  double *lg = malloc((size_t)V * sizeof *lg);
  for (int s = 0; s < c.n && lg; s++) {
    if (!last_logits(m, seq, np + s, V, lg)) { CHECK(0, "forward"); break; }
    int32_t idx[8];
    int want_n = keep && keep < k ? keep : k;
    top_ids(lg, V, want_n, idx);
    double mx = lg[idx[0]], sum = 0;
    for (int64_t j = 0; j < V; j++) {
      bool kept = !keep;
      for (int i = 0; i < want_n && !kept; i++) kept = idx[i] == j;
      if (kept) sum += exp((lg[j] - mx) / temp);
    }
    CHECK(c.n_top[s] == want_n, "%s step %d: %d alternatives, want %d", what, s, c.n_top[s], want_n);
    double worst = 0;
    bool ids_ok = true;
    for (int i = 0; i < want_n && i < c.n_top[s]; i++) {
      double want = (lg[idx[i]] - mx) / temp - log(sum);
      worst = fmax(worst, fabs(c.top[s][i].logprob - want));
      ids_ok &= c.top[s][i].id == idx[i];
    }
    // 2e-5: f32 logits of a cached decode vs a full forward, and f32 probabilities
    CHECK(ids_ok && worst < 2e-5, "%s step %d: alternatives differ from the logits' (max logprob diff %g)", what, s, worst);
    bool chosen_listed = false;
    for (int i = 0; i < c.n_top[s]; i++)
      if (c.top[s][i].id == c.ids[s]) chosen_listed |= fabs(c.top[s][i].logprob - c.logprob[s]) < 1e-5;
    if (temp <= 1 && p->sampler.temperature <= 0) CHECK(chosen_listed && c.top[s][0].id == c.ids[s], "%s step %d: greedy pick first", what, s);
    seq[np + s] = c.ids[s];
  }
  free(lg);
}

int main(void) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  CHECK(m != NULL, "load fixture");
  if (!m) return check_report();
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 4;
  p.ignore_eos = true;
  p.top_logprobs = 5;
  check_run(m, &p, 5, 0, 1.0, "greedy");
  // temperature 0.7 with top-k 3: three alternatives, renormalized over the kept ones
  p.sampler.temperature = 0.7f;
  p.sampler.top_k = 3;
  p.sampler.seed = 5;
  check_run(m, &p, 5, 3, 0.7, "T=0.7 top-k 3");
  // no alternatives unless asked
  p = wk_generate_defaults();
  p.max_tokens = 2;
  collect c = {0};
  int32_t seq[2] = {1, 2};
  CHECK(wk_generate(m, NULL, seq, 2, &p, on_tok, &c, NULL) == WK_OK && c.n == 2 && c.n_top[0] == 0, "none by default");
  p.top_logprobs = WK_MAX_TOP_LOGPROBS + 1;
  CHECK(wk_generate(m, NULL, seq, 2, &p, on_tok, &c, NULL) != WK_OK && strstr(wk_last_error(), "top_logprobs"), "too many refused");
  p.top_logprobs = -1;
  CHECK(wk_generate(m, NULL, seq, 2, &p, on_tok, &c, NULL) != WK_OK, "negative refused");
  wk_model_free(m);
  return check_report();
}
