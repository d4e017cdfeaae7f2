// Batched generation equals one prompt at a time: prompts of different lengths
// (left padding, masked), greedy and seeded sampling, a sequence stopped early by its
// callback while the others go on, and text through a tokenizer with stop strings.
// Models: the tiny llama fixture (ids only) and tests/fixtures/chat/model (text).
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "wick/generate.h"

#define MAXB 4
typedef struct {
  int32_t ids[MAXB][32];
  float prob[MAXB][32];
  int n[MAXB];
  char text[MAXB][256];
  size_t len[MAXB];
  int stop_seq, stop_after;   // the callback stops sequence stop_seq after stop_after tokens
} collect;

static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  int b = t->seq;
  if (b < 0 || b >= MAXB) return 1;
  if (c->n[b] < 32) { c->ids[b][c->n[b]] = t->id; c->prob[b][c->n[b]] = t->prob; }
  c->n[b]++;
  if (c->len[b] + t->len < sizeof c->text[b]) { memcpy(c->text[b] + c->len[b], t->text, t->len); c->len[b] += t->len; }
  return c->stop_after && b == c->stop_seq && c->n[b] >= c->stop_after;
}

// Each prompt alone through wk_generate, into the same layout.
static void one_at_a_time(wk_model *m, const wk_tokenizer *tok, size_t B, const int32_t *const *pr, const size_t *np,
                          const wk_generate_params *p, collect *out) {
  memset(out, 0, sizeof *out);
  for (size_t b = 0; b < B; b++) {
    collect one = {0};
    CHECK(wk_generate(m, tok, pr[b], np[b], p, on_tok, &one, NULL) == WK_OK, "single %zu", b);
    memcpy(out->ids[b], one.ids[0], sizeof one.ids[0]);
    memcpy(out->prob[b], one.prob[0], sizeof one.prob[0]);
    memcpy(out->text[b], one.text[0], sizeof one.text[0]);
    out->n[b] = one.n[0];
    out->len[b] = one.len[0];
  }
}

static void compare(const collect *a, const collect *s, size_t B, const char *what) {
  for (size_t b = 0; b < B; b++) {
    int n = a->n[b] < 32 ? a->n[b] : 32;
    float worst = 0;
    for (int i = 0; i < n; i++) worst = fmaxf(worst, fabsf(a->prob[b][i] - s->prob[b][i]));
    CHECK(a->n[b] == s->n[b] && !memcmp(a->ids[b], s->ids[b], (size_t)n * sizeof(int32_t)),
          "%s: prompt %zu: batched %d tokens differ from one at a time (%d)", what, b, a->n[b], s->n[b]);
    // 1e-4: the same math in other matrix shapes and at padded RoPE positions
    CHECK(worst < 1e-4f, "%s: prompt %zu: probabilities differ by %g", what, b, (double)worst);
    CHECK(a->len[b] == s->len[b] && !memcmp(a->text[b], s->text[b], a->len[b]), "%s: prompt %zu: text differs", what, b);
  }
}

static void test_ids(wk_model *m) {
  static const int32_t p0[] = {1, 5, 9}, p1[] = {1, 40, 41, 42, 43, 44, 45}, p2[] = {7, 100, 3, 200, 9}, p3[] = {12};
  const int32_t *pr[] = {p0, p1, p2, p3};
  size_t np[] = {3, 7, 5, 1};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 12;
  p.ignore_eos = true;
  collect a = {0}, s;
  wk_generate_result r[4];
  CHECK(wk_generate_batch(m, NULL, 4, pr, np, &p, on_tok, &a, r) == WK_OK, "batch greedy");
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  compare(&a, &s, 4, "greedy");
  CHECK(r[1].prompt_tokens == 7 && r[3].prompt_tokens == 1 && r[2].generated_tokens == 12 &&
            r[0].stop == WK_STOP_MAX_TOKENS, "results per prompt");
  bool differ = false;
  for (int b = 1; b < 4; b++) differ |= memcmp(a.ids[0], a.ids[b], 12 * sizeof(int32_t)) != 0;
  CHECK(differ, "all prompts gave the same tokens: the test could not see mixed-up rows");

  // seeded sampling: each sequence draws from its own sampler, seeded alike
  p.sampler.temperature = 1.0f;
  p.sampler.top_k = 20;
  p.sampler.seed = 3;
  memset(&a, 0, sizeof a);
  CHECK(wk_generate_batch(m, NULL, 4, pr, np, &p, on_tok, &a, NULL) == WK_OK, "batch sampled");
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  compare(&a, &s, 4, "sampled");

  // the callback stops prompt 2 after 3 tokens; the others run to the end
  p = wk_generate_defaults();
  p.max_tokens = 10;
  p.ignore_eos = true;
  memset(&a, 0, sizeof a);
  a.stop_seq = 2;
  a.stop_after = 3;
  CHECK(wk_generate_batch(m, NULL, 4, pr, np, &p, on_tok, &a, r) == WK_OK && a.n[2] == 3 && r[2].stop == WK_STOP_CALLBACK &&
            a.n[0] == 10 && a.n[1] == 10 && a.n[3] == 10, "callback stops one sequence (%d %d %d %d)", a.n[0], a.n[1], a.n[2], a.n[3]);
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  s.n[2] = 3;
  compare(&a, &s, 4, "one stopped");

  // bad input names the prompt
  size_t bad[] = {3, 0, 5, 1};
  CHECK(wk_generate_batch(m, NULL, 4, pr, bad, &p, NULL, NULL, NULL) != WK_OK && strstr(wk_last_error(), "prompt 1") &&
            strstr(wk_last_error(), "empty"), "empty prompt in a batch");
  CHECK(wk_generate_batch(m, NULL, 0, pr, np, &p, NULL, NULL, NULL) != WK_OK, "no prompts");
}

// Text and stop strings, through the chat fixture's tokenizer.
static void test_text(void) {
  wk_model *m = wk_model_load(fixture_in("chat", "model"));
  wk_tokenizer *tok = wk_tokenizer_load_json(fixture_in("chat", "model/tokenizer.json"));
  CHECK(m && tok, "chat fixture model");
  if (!m || !tok) { wk_model_free(m); wk_tokenizer_free(tok); return; }
  const char *texts[] = {"Hello", "How are you doing today, my friend?", "日本語 😀", "1 2 3"};
  int32_t *ids[4] = {0};
  size_t np[4] = {0};
  for (int b = 0; b < 4; b++) wk_tokenizer_encode(tok, texts[b], strlen(texts[b]), false, &ids[b], &np[b]);
  CHECK(np[0] != np[1] && np[1] != np[2], "prompt lengths differ (%zu %zu %zu %zu)", np[0], np[1], np[2], np[3]);
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 16;
  const char *stops[] = {"o"};   // these prompts stop at steps 4, 11 and 5; one runs to the end
  p.stop = stops;
  p.n_stop = 1;
  collect a = {0}, s;
  wk_generate_result r[4];
  CHECK(wk_generate_batch(m, tok, 4, (const int32_t *const *)ids, np, &p, on_tok, &a, r) == WK_OK, "batch text");
  one_at_a_time(m, tok, 4, (const int32_t *const *)ids, np, &p, &s);
  compare(&a, &s, 4, "text");
  int stopped = 0, full = 0;
  for (int b = 0; b < 4; b++) {
    stopped += r[b].stop == WK_STOP_STRING;
    full += r[b].stop == WK_STOP_MAX_TOKENS;
  }
  CHECK(stopped >= 2 && full >= 1, "stop strings: %d stopped, %d ran to the end: the test should see both", stopped, full);
  for (int b = 0; b < 4; b++) free(ids[b]);
  wk_tokenizer_free(tok);
  wk_model_free(m);
}

int main(void) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  CHECK(m != NULL, "load fixture");
  if (!m) return check_report();
  test_ids(m);
  wk_model_free(m);
  test_text();
  return check_report();
}
