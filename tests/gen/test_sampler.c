// Samplers against hand-computed distributions: greedy ties, temperature, top-k /
// top-p / min-p cut points and ties, penalties, bias, seeds, and a chi-square check.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "wick/sampler.h"

#define LN(x) ((float)log(x))

static void softmax(const double *l, int n, double *p) {
  double mx = -INFINITY, s = 0;
  for (int i = 0; i < n; i++) if (l[i] > mx) mx = l[i];
  for (int i = 0; i < n; i++) s += l[i] == -INFINITY ? 0 : exp(l[i] - mx);
  for (int i = 0; i < n; i++) p[i] = l[i] == -INFINITY ? 0 : exp(l[i] - mx) / s;
}

// probs of sampler p over logits (n), compared with want (n) to 1e-5.
static void expect_probs(const char *what, const wk_sampler_params *p, const float *logits, int n, const double *want) {
  wk_sampler *s = wk_sampler_new(p, n);
  float got[16];
  CHECK(s && wk_sampler_probs(s, logits, got) == WK_OK, "%s: probs", what);
  for (int i = 0; s && i < n; i++)
    CHECK(fabs(got[i] - want[i]) < 1e-5, "%s: p[%d] = %g, want %g", what, i, (double)got[i], want[i]);
  wk_sampler_free(s);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

// repeat_last_n near INT32_MAX: the first accept allocated the whole window (8 GB). In a
// child whose address space is capped 1 GB above its current size, a few accepts and a
// penalized sample must work. (Not under ASan, whose shadow memory an address-space
// cap breaks.)
static void huge_window(void) {
#ifndef UNDER_ASAN
  pid_t pid = fork();
  if (pid == 0) {
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld", &pages) != 1) _exit(3);
    fclose(f);
    rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)1 << 30);
    struct rlimit r = {cap, cap};
    if (setrlimit(RLIMIT_AS, &r)) _exit(3);
    wk_sampler_params p = wk_sampler_defaults();
    p.repeat_last_n = INT32_MAX;
    p.repeat_penalty = 2;
    wk_sampler *s = wk_sampler_new(&p, 4);
    bool ok = s != NULL;
    for (int i = 0; ok && i < 1000; i++) ok = wk_sampler_accept(s, i % 2) == WK_OK;
    float probs[4];
    ok = ok && wk_sampler_probs(s, (float[]){2, 2, 1, 1}, probs) == WK_OK && fabsf(probs[0] - probs[2]) < 1e-6f;
    if (!ok) fprintf(stderr, "huge window: %s\n", wk_last_error());
    wk_sampler_free(s);
    _exit(ok ? 0 : 1);
  }
  int st = -1;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
        "repeat_last_n INT32_MAX works in 1 GB of address space (child status %d)", st);
#endif
}

int main(void) {
  wk_sampler_params d = wk_sampler_defaults();
  huge_window();
  {   // a bias count with no bias array is an error, not a NULL read
    wk_sampler_params p = d;
    p.n_bias = 3;
    CHECK(!wk_sampler_new(&p, 8) && strstr(wk_last_error(), "NULL"), "n_bias without bias: %s", wk_last_error());
  }

  // greedy: the highest logit, ties to the lowest id; prob under softmax at T = 1
  {
    wk_sampler_params p = d;
    p.temperature = 0;
    float l[4] = {1, 3, 3, 2};
    wk_sampler *s = wk_sampler_new(&p, 4);
    wk_sample r;
    CHECK(s && wk_sampler_sample(s, l, &r) == WK_OK && r.id == 1, "greedy tie -> id 1, got %d", s ? r.id : -1);
    double e = exp(3.0) / (exp(1.0) + 2 * exp(3.0) + exp(2.0));
    CHECK(fabs(r.prob - e) < 1e-6 && fabs(r.logprob - log(e)) < 1e-5, "greedy prob %g want %g", (double)r.prob, e);
    wk_sampler_free(s);
  }
  // temperature: {0, 2 ln 3} / 2 = {0, ln 3} -> {1/4, 3/4}
  {
    wk_sampler_params p = d;
    p.temperature = 2;
    float l[2] = {0, 2 * LN(3)};
    expect_probs("temperature 2", &p, l, 2, (double[]){0.25, 0.75});
    p.temperature = 0.5f;   // {0, 4 ln 3} -> {1/82, 81/82}
    expect_probs("temperature 0.5", &p, l, 2, (double[]){1.0 / 82, 81.0 / 82});
  }
  // top-k: keeps logits >= the k-th highest (ties with the k-th kept)
  {
    float l[4] = {4, 3, 3, 1};
    double w[4];
    wk_sampler_params p = d;
    p.top_k = 1;
    expect_probs("top-k 1", &p, l, 4, (double[]){1, 0, 0, 0});
    p.top_k = 2;
    softmax((double[]){4, 3, 3, -INFINITY}, 4, w);
    expect_probs("top-k 2 (tie kept)", &p, l, 4, w);
    p.top_k = 3;
    expect_probs("top-k 3", &p, l, 4, w);
    p.top_k = 4;
    softmax((double[]){4, 3, 3, 1}, 4, w);
    expect_probs("top-k 4", &p, l, 4, w);
    p.top_k = 100;
    expect_probs("top-k > V", &p, l, 4, w);
  }
  // top-p over {0.5, 0.3, 0.2}: the shortest prefix reaching p
  {
    float l[3] = {LN(0.5), LN(0.3), LN(0.2)};
    wk_sampler_params p = d;
    p.top_p = 0.8f;
    expect_probs("top-p 0.8 (exact cut)", &p, l, 3, (double[]){0.625, 0.375, 0});
    p.top_p = 0.81f;
    expect_probs("top-p 0.81", &p, l, 3, (double[]){0.5, 0.3, 0.2});
    p.top_p = 0.5f;
    expect_probs("top-p 0.5 (exact cut)", &p, l, 3, (double[]){1, 0, 0});
    p.top_p = 0.49f;
    expect_probs("top-p 0.49", &p, l, 3, (double[]){1, 0, 0});
    p.top_p = 0.51f;
    expect_probs("top-p 0.51", &p, l, 3, (double[]){0.625, 0.375, 0});
    // ties: {0.4, 0.3, 0.3} at 0.6 keeps the lower id of the tied pair
    float t[3] = {LN(0.4), LN(0.3), LN(0.3)};
    p.top_p = 0.6f;
    expect_probs("top-p tie", &p, t, 3, (double[]){0.4 / 0.7, 0.3 / 0.7, 0});
    float t2[3] = {LN(0.3), LN(0.4), LN(0.3)};
    expect_probs("top-p tie (order)", &p, t2, 3, (double[]){0.3 / 0.7, 0.4 / 0.7, 0});
  }
  // min-p over {0.5, 0.25, 0.2, 0.05}: keep p >= min_p * 0.5
  {
    float l[4] = {LN(0.5), LN(0.25), LN(0.2), LN(0.05)};
    wk_sampler_params p = d;
    p.min_p = 0.5f;   // threshold 0.25: equality kept
    expect_probs("min-p 0.5", &p, l, 4, (double[]){2.0 / 3, 1.0 / 3, 0, 0});
    p.min_p = 0.51f;
    expect_probs("min-p 0.51", &p, l, 4, (double[]){1, 0, 0, 0});
    p.min_p = 0.1f;   // threshold 0.05: all kept
    expect_probs("min-p 0.1", &p, l, 4, (double[]){0.5, 0.25, 0.2, 0.05});
    p.min_p = 0.4f;   // threshold 0.2
    expect_probs("min-p 0.4", &p, l, 4, (double[]){0.5 / 0.95, 0.25 / 0.95, 0.2 / 0.95, 0});
  }
  // penalties: history {0, 1, 0}; HF repetition 2 then presence 0.5 and frequency 0.25
  {
    float l[4] = {2, -2, 1, 0.5f};
    double w[4];
    wk_sampler_params p = d;
    p.repeat_penalty = 2;
    wk_sampler *s = wk_sampler_new(&p, 4);
    wk_sampler_accept(s, 0); wk_sampler_accept(s, 1); wk_sampler_accept(s, 0);
    float got[4];
    softmax((double[]){1, -4, 1, 0.5}, 4, w);
    CHECK(wk_sampler_probs(s, l, got) == WK_OK, "repeat probs");
    for (int i = 0; i < 4; i++) CHECK(fabs(got[i] - w[i]) < 1e-6, "repeat p[%d] %g want %g", i, (double)got[i], w[i]);
    wk_sampler_free(s);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = wk_sampler_new(&p, 4);
    wk_sampler_accept(s, 0); wk_sampler_accept(s, 1); wk_sampler_accept(s, 0);
    softmax((double[]){0, -4.75, 1, 0.5}, 4, w);
    CHECK(wk_sampler_probs(s, l, got) == WK_OK, "penalties probs");
    for (int i = 0; i < 4; i++) CHECK(fabs(got[i] - w[i]) < 1e-6, "penalties p[%d] %g want %g", i, (double)got[i], w[i]);
    wk_sampler_free(s);
    // a window that grows past its first allocation (256 ids), then wraps: of
    // 0, 1 x 299, 2 the last 300 are seen, so 0 is not
    {
      wk_sampler_params q = d;
      q.repeat_last_n = 300;
      q.frequency_penalty = 0.01f;
      wk_sampler *r3 = wk_sampler_new(&q, 4);
      wk_sampler_accept(r3, 0);
      for (int i = 0; i < 299; i++) wk_sampler_accept(r3, 1);
      wk_sampler_accept(r3, 2);
      softmax((double[]){0, -2.99, -0.01, 0}, 4, w);
      CHECK(wk_sampler_probs(r3, (float[]){0, 0, 0, 0}, got) == WK_OK, "grown window probs");
      for (int i = 0; i < 4; i++)
        CHECK(fabs(got[i] - w[i]) < 1e-6, "grown window p[%d] %g want %g", i, (double)got[i], w[i]);
      wk_sampler_free(r3);
    }
    // window: repeat_last_n = 1 sees only the last id (0)
    p.repeat_last_n = 1;
    s = wk_sampler_new(&p, 4);
    wk_sampler_accept(s, 1); wk_sampler_accept(s, 0);
    softmax((double[]){2 / 2.0 - 0.75, -2, 1, 0.5}, 4, w);
    CHECK(wk_sampler_probs(s, l, got) == WK_OK, "window probs");
    for (int i = 0; i < 4; i++) CHECK(fabs(got[i] - w[i]) < 1e-6, "window p[%d] %g want %g", i, (double)got[i], w[i]);
    wk_sampler_free(s);
  }
  // bias (and a ban), then temperature: order matters
  {
    float l[3] = {0, 0, 0};
    wk_logit_bias b[2] = {{1, 2 * LN(3)}, {2, -INFINITY}};
    wk_sampler_params p = d;
    p.bias = b;
    p.n_bias = 2;
    p.temperature = 2;
    expect_probs("bias + temperature", &p, l, 3, (double[]){0.25, 0.75, 0});
    p.n_order = 2;   // temperature before bias; the other stages are skipped
    p.order[0] = WK_SAMPLER_TEMPERATURE;
    p.order[1] = WK_SAMPLER_BIAS;
    expect_probs("custom order", &p, l, 3, (double[]){0.1, 0.9, 0});
    wk_logit_bias all[3] = {{0, -INFINITY}, {1, -INFINITY}, {2, -INFINITY}};
    p = d;
    p.bias = all;
    p.n_bias = 3;
    wk_sampler *s = wk_sampler_new(&p, 3);
    wk_sample r;
    CHECK(s && wk_sampler_sample(s, l, &r) != WK_OK, "all banned is an error");
    wk_sampler_free(s);
  }
  // bad params
  {
    wk_sampler_params p = d;
    p.top_p = 0;
    CHECK(!wk_sampler_new(&p, 4), "top_p 0 refused");
    p = d; p.top_k = -1;
    CHECK(!wk_sampler_new(&p, 4), "top_k -1 refused");
    p = d; p.min_p = 1.5f;
    CHECK(!wk_sampler_new(&p, 4), "min_p 1.5 refused");
    p = d; p.repeat_penalty = 0;
    CHECK(!wk_sampler_new(&p, 4), "repeat_penalty 0 refused");
    wk_logit_bias b = {7, 1};
    p = d; p.bias = &b; p.n_bias = 1;
    CHECK(!wk_sampler_new(&p, 4), "bias id out of range refused");
    p = d; p.n_order = 2; p.order[0] = WK_SAMPLER_TOP_K; p.order[1] = WK_SAMPLER_TOP_K;
    CHECK(!wk_sampler_new(&p, 4), "repeated stage refused");
  }
  // non-finite logits and stage arithmetic: a NaN logit is refused by id (it was dropped
  // and the rest sampled); +inf logits share the probability; a ban (-inf, from the
  // logits or a bias) stays a ban whatever is added to it (-inf + inf was NaN, which
  // gave NaN probabilities); a temperature so small that x / T overflows keeps the
  // greedy limit (every positive logit became +inf: a uniform tie among them)
  {
    const float I = INFINITY;
    wk_sampler_params p = d;
    wk_sampler *s = wk_sampler_new(&p, 4);
    wk_sample r = {-1, 0, 0};
    float got[4];
    CHECK(s && wk_sampler_sample(s, (float[]){1, NAN, 3, 0.5f}, &r) != WK_OK && strstr(wk_last_error(), "logits[1]") &&
              strstr(wk_last_error(), "NaN"), "a NaN logit refused by id: %s (sampled %d)", wk_last_error(), r.id);
    CHECK(s && wk_sampler_probs(s, (float[]){NAN, NAN, NAN, NAN}, got) != WK_OK && strstr(wk_last_error(), "logits[0]"),
          "NaN logits refused by probs: %s", wk_last_error());
    CHECK(s && wk_sampler_probs(s, (float[]){1, 2, 3, 4}, NULL) != WK_OK && strstr(wk_last_error(), "probs"),
          "probs NULL refused: %s", wk_last_error());
    wk_sampler_free(s);
    expect_probs("two +inf logits", &p, (float[]){1, I, 3, I}, 4, (double[]){0, 0.5, 0, 0.5});
    wk_logit_bias b[2] = {{0, I}, {1, -I}};
    p.bias = b;
    p.n_bias = 2;
    expect_probs("+inf bias on a -inf logit, -inf bias on a +inf one", &p, (float[]){-I, I, 2, 2}, 4,
                 (double[]){0, 0, 0.5, 0.5});
    p.top_p = 0.5f;   // the filters after the bias see no NaN either
    expect_probs("the same under top-p", &p, (float[]){-I, I, 2, LN(0.5) + 2}, 4, (double[]){0, 0, 1, 0});
    p = d;
    p.frequency_penalty = -3e38f;   // a seen -inf logit: -inf - (-inf) was NaN
    s = wk_sampler_new(&p, 3);
    CHECK(s && wk_sampler_accept(s, 0) == WK_OK && wk_sampler_accept(s, 0) == WK_OK &&
              wk_sampler_probs(s, (float[]){-I, 0, 0}, got) == WK_OK && got[0] == 0 && got[1] == 0.5f && got[2] == 0.5f,
          "a penalty of -inf on a banned token keeps it banned: %g %g %g", (double)got[0], (double)got[1], (double)got[2]);
    wk_sampler_free(s);
    p = d;
    for (int k = 0; k < 2; k++) {
      p.temperature = k ? 1e-40f : 1e-30f;   // 1e-30: no overflow, the same answer
      s = wk_sampler_new(&p, 4);
      CHECK(s && wk_sampler_sample(s, (float[]){1, 2, 3, -1}, &r) == WK_OK && r.id == 2 && r.prob == 1,
            "temperature %g: id %d prob %g (want 2, 1)", (double)p.temperature, r.id, (double)r.prob);
      CHECK(s && wk_sampler_probs(s, (float[]){3, I, 3, -1}, got) == WK_OK && got[1] == 1,
            "temperature %g with a +inf logit: p %g", (double)p.temperature, (double)got[1]);
      wk_sampler_free(s);
    }
    // a repeat penalty near 0 boosts seen positive logits past FLT_MAX: they were +inf
    // ties (0.5 each here); the larger one wins, as at 1e-30 where nothing overflows.
    // A huge one sank every seen negative logit to -inf: "every token was removed".
    p = d;
    for (int k = 0; k < 3; k++) {
      p.repeat_penalty = k == 0 ? 1e-30f : k == 1 ? 1e-40f : 1e38f;
      const float *l = k < 2 ? (float[]){1, 2, 3, -1} : (float[]){-4, -5};
      s = wk_sampler_new(&p, k < 2 ? 4 : 2);
      wk_sampler_accept(s, 0);
      wk_sampler_accept(s, 1);
      wk_status st = s ? wk_sampler_probs(s, l, got) : WK_ERR_ARG;
      CHECK(!st && got[0] == (k < 2 ? 0 : 1) && got[1] == (k < 2 ? 1 : 0),
            "repeat_penalty %g: p %g %g (want the %s seen logit alone) %s", (double)p.repeat_penalty, (double)got[0],
            (double)got[1], k < 2 ? "larger" : "least negative", st ? wk_last_error() : "");
      CHECK(s && wk_sampler_sample(s, l, &r) == WK_OK && r.id == (k < 2 ? 1 : 0) && r.prob == 1,
            "repeat_penalty %g: sampled id %d prob %g", (double)p.repeat_penalty, r.id, (double)r.prob);
      wk_sampler_free(s);
    }
    CHECK(isnan(wk_sampler_uniform(NULL)) && strstr(wk_last_error(), "NULL"), "uniform of NULL: %s", wk_last_error());
  }
  // seeds: same seed, same draws; another seed, other draws
  {
    float l[8] = {0, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
    wk_sampler_params p = d;
    p.seed = 42;
    wk_sampler *a = wk_sampler_new(&p, 8), *b = wk_sampler_new(&p, 8);
    p.seed = 43;
    wk_sampler *c = wk_sampler_new(&p, 8);
    int same = 1, diff = 0;
    int32_t first[200];
    for (int i = 0; i < 200; i++) {
      wk_sample x, y, z;
      wk_sampler_sample(a, l, &x); wk_sampler_sample(b, l, &y); wk_sampler_sample(c, l, &z);
      same &= x.id == y.id;
      diff += x.id != z.id;
      first[i] = x.id;
    }
    CHECK(same, "same seed reproduces the draws");
    CHECK(diff > 50, "another seed gives other draws (%d differ)", diff);
    wk_sampler_reset(a, 42);
    same = 1;
    for (int i = 0; i < 200; i++) { wk_sample x; wk_sampler_sample(a, l, &x); same &= x.id == first[i]; }
    CHECK(same, "reset with the seed reproduces the draws");
    wk_sampler_free(a); wk_sampler_free(b); wk_sampler_free(c);
  }
  // chi-square over {0.1, 0.2, 0.3, 0.4}, 40000 draws, fixed seed (3 dof; 99.9%: 16.27)
  {
    float l[4] = {LN(0.1), LN(0.2), LN(0.3), LN(0.4)};
    wk_sampler_params p = d;
    p.seed = 12345;
    wk_sampler *s = wk_sampler_new(&p, 4);
    int cnt[4] = {0};
    const int N = 40000;
    for (int i = 0; i < N; i++) {
      wk_sample r;
      if (wk_sampler_sample(s, l, &r) == WK_OK) cnt[r.id]++;
      if (i == 0) CHECK(fabs(r.prob - (r.id + 1) * 0.1) < 1e-6, "sampled prob %g for id %d", (double)r.prob, r.id);
    }
    double chi = 0;
    for (int i = 0; i < 4; i++) {
      double e = N * 0.1 * (i + 1);
      chi += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    CHECK(chi < 16.27, "chi-square %g (counts %d %d %d %d)", chi, cnt[0], cnt[1], cnt[2], cnt[3]);
    wk_sampler_free(s);
  }
  return check_report();
}
