// Batched generation equals one prompt at a time: prompts of different lengths
// (left padding, masked; 1 to 90 tokens), greedy and seeded sampling, a sequence
// stopped early by its callback while the others go on, sequences ending at different
// steps (EOS, callback, max tokens, stop strings), and text through a tokenizer. Each
// sequence has its own context (padding takes none of it; its own sliding window), and
// one that stops leaves the batch: later steps compute only the live rows, with one
// compiled plan per batch size. Models: the tiny llama fixture (ids only) and
// tests/fixtures/chat/model (text).
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "engine/plan.h"
#include "wick/generate.h"

#define MAXB 4
#define MAXT 64
static int64_t g_vocab;   // the model's vocabulary: a step's batch is its logits' bytes / (V * 4)

typedef struct {
  int32_t ids[MAXB][MAXT];
  float prob[MAXB][MAXT];
  int64_t rows[MAXB][MAXT];        // the batch of the step that gave each token
  uint64_t compiled[MAXB][MAXT];   // plans compiled so far, at each token
  int n[MAXB];
  char text[MAXB][256];
  size_t len[MAXB];
  int stop_seq, stop_after;   // the callback stops sequence stop_seq after stop_after tokens
} collect;

static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  int b = t->seq;
  if (b < 0 || b >= MAXB) return 1;
  if (c->n[b] < MAXT) {
    c->ids[b][c->n[b]] = t->id;
    c->prob[b][c->n[b]] = t->prob;
    const wk_plan *pl = wk_last_plan();   // the step that made the logits (CPU: nothing runs after it)
    c->rows[b][c->n[b]] = pl && g_vocab ? (int64_t)(pl->outs[pl->target_out[0]].bytes / ((size_t)g_vocab * sizeof(float))) : -1;
    wk_eval_stats es;
    wk_last_eval_stats(&es);
    c->compiled[b][c->n[b]] = es.plans_compiled;
  }
  c->n[b]++;
  if (c->len[b] + t->len < sizeof c->text[b]) { memcpy(c->text[b] + c->len[b], t->text, t->len); c->len[b] += t->len; }
  return c->stop_after && b == c->stop_seq && c->n[b] >= c->stop_after;
}

// Each prompt alone through wk_generate, into the same layout (the callback stops
// out->stop_seq as in the batch).
static void one_at_a_time(wk_model *m, const wk_tokenizer *tok, size_t B, const int32_t *const *pr, const size_t *np,
                          const wk_generate_params *p, collect *out) {
  int stop_seq = out->stop_seq, stop_after = out->stop_after;
  memset(out, 0, sizeof *out);
  for (size_t b = 0; b < B; b++) {
    collect one = {0};
    one.stop_after = (int)b == stop_seq ? stop_after : 0;
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
    int n = a->n[b] < MAXT ? a->n[b] : MAXT;
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
  collect a = {0}, s = {0};
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
  s.stop_seq = 2;
  s.stop_after = 3;
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  compare(&a, &s, 4, "one stopped");

  // bad input names the prompt
  size_t bad[] = {3, 0, 5, 1};
  CHECK(wk_generate_batch(m, NULL, 4, pr, bad, &p, NULL, NULL, NULL) != WK_OK &&
            strstr(wk_last_error(), "prompt 2 of 4 (prompts[1])") && strstr(wk_last_error(), "empty"),
        "empty prompt in a batch: %s", wk_last_error());
  CHECK(wk_generate_batch(m, NULL, 0, pr, np, &p, NULL, NULL, NULL) != WK_OK, "no prompts");
}

// A token sampled at step k (0: the prefill) came from a batch of the sequences that
// were still going then, those that gave a token k; steps of the same batch ran one
// plan, compiled at most once (at its first step).
static void check_batches(const collect *a, size_t B, const char *what) {
  for (size_t b = 0; b < B; b++) {
    int n = a->n[b] < MAXT ? a->n[b] : MAXT;
    for (int k = 0; k < n; k++) {
      int64_t live = 0;
      for (size_t j = 0; j < B; j++) live += a->n[j] > k;
      CHECK(a->rows[b][k] == live, "%s: prompt %zu, token %d: a step of %lld rows, but %lld were live", what, b, k,
            (long long)a->rows[b][k], (long long)live);
      if (k >= 2 && a->rows[b][k] == a->rows[b][k - 1])
        CHECK(a->compiled[b][k] == a->compiled[b][k - 1], "%s: prompt %zu, token %d: a decode step of %lld rows "
              "compiled again", what, b, k, (long long)a->rows[b][k]);
    }
  }
}

// Prompts of 1 to 90 tokens: up to 89 positions of padding, masked.
static void test_lengths(wk_model *m) {
  int32_t longp[90];
  for (int i = 0; i < 90; i++) longp[i] = (int32_t)(i * 37 % 250) + 1;
  static const int32_t p0[] = {12}, p2[] = {7, 100, 3, 200, 9};
  const int32_t *pr[] = {p0, longp, p2};
  size_t np[] = {1, 90, 5};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 24;   // 90 + 24 fit the context of 128
  p.ignore_eos = true;
  collect a = {0}, s = {0};
  CHECK(wk_generate_batch(m, NULL, 3, pr, np, &p, on_tok, &a, NULL) == WK_OK, "batch of 1, 90 and 5 tokens");
  one_at_a_time(m, NULL, 3, pr, np, &p, &s);
  compare(&a, &s, 3, "1, 90 and 5 tokens");
}

// Each sequence's own tokens count against the context, not its padding: under a
// context of 24, a prompt of 3 tokens batched with one of 20 generates 24 - 3 + 1 = 22
// tokens, as alone (the last one fills the context); the long one 5. With a sliding
// window each forgets its own oldest half when its own context is full, as alone.
static void test_own_context(wk_model *m) {
  int32_t longp[30];
  for (int i = 0; i < 30; i++) longp[i] = (int32_t)(i * 53 % 250) + 1;
  static const int32_t shortp[] = {7, 100, 3};
  const int32_t *pr[] = {longp, shortp};
  size_t np[] = {20, 3};
  wk_generate_params p = wk_generate_defaults();
  p.max_context = 24;
  p.max_tokens = 60;
  p.ignore_eos = true;
  collect a = {0}, s = {0};
  wk_generate_result r[2];
  CHECK(wk_generate_batch(m, NULL, 2, pr, np, &p, on_tok, &a, r) == WK_OK, "batch under a context of 24");
  CHECK(r[0].generated_tokens == 5 && r[0].stop == WK_STOP_CONTEXT && r[1].generated_tokens == 22 &&
            r[1].stop == WK_STOP_CONTEXT, "own contexts: %lld (%s) and %lld (%s) tokens, want 5 and 22 (context)",
        (long long)r[0].generated_tokens, wk_stop_reason_name(r[0].stop), (long long)r[1].generated_tokens,
        wk_stop_reason_name(r[1].stop));
  one_at_a_time(m, NULL, 2, pr, np, &p, &s);
  compare(&a, &s, 2, "context of 24");
  check_batches(&a, 2, "context of 24");

  p.sliding_window = true;
  p.max_tokens = 50;   // the long one slides 4 times, the short one twice
  memset(&a, 0, sizeof a);
  CHECK(wk_generate_batch(m, NULL, 2, pr, np, &p, on_tok, &a, r) == WK_OK && r[0].stop == WK_STOP_MAX_TOKENS &&
            r[1].stop == WK_STOP_MAX_TOKENS && a.n[0] == 50 && a.n[1] == 50, "sliding windows: %d and %d tokens", a.n[0], a.n[1]);
  one_at_a_time(m, NULL, 2, pr, np, &p, &s);
  compare(&a, &s, 2, "sliding windows");

  // a prompt longer than the context is named in both numberings
  np[0] = 30;
  p.sliding_window = false;
  CHECK(wk_generate_batch(m, NULL, 2, pr, np, &p, NULL, NULL, NULL) != WK_OK &&
            strstr(wk_last_error(), "prompt 1 of 2 (prompts[0]) has 30 tokens") && strstr(wk_last_error(), "holds 24"),
        "a prompt over the context: %s", wk_last_error());
}

// Sequences end at different steps: at EOS (the model's eos id made one that the
// first prompt generates early), at the callback, at max tokens. The survivors go on
// as alone, in batches of the live ones; a second run compiles nothing.
static void test_finish_steps(wk_model *m) {
  static const int32_t p0[] = {1, 5, 9}, p1[] = {1, 40, 41, 42, 43, 44, 45}, p2[] = {7, 100, 3, 200, 9}, p3[] = {12};
  const int32_t *pr[] = {p0, p1, p2, p3};
  size_t np[] = {3, 7, 5, 1};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 20;
  p.ignore_eos = true;
  collect a = {0}, s = {0};
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  wk_model_config *cfg = (wk_model_config *)wk_model_get_config(m), saved = *cfg;
  cfg->n_eos = 1;
  cfg->eos_token_ids[0] = s.ids[0][5];
  p.ignore_eos = false;
  a.stop_seq = s.stop_seq = 2;
  a.stop_after = s.stop_after = 3;
  wk_generate_result r[4];
  CHECK(wk_generate_batch(m, NULL, 4, pr, np, &p, on_tok, &a, r) == WK_OK, "batch ending at different steps");
  one_at_a_time(m, NULL, 4, pr, np, &p, &s);
  compare(&a, &s, 4, "different ends");
  check_batches(&a, 4, "different ends");
  int eos = 0, cbk = 0, full = 0;
  for (int b = 0; b < 4; b++) {
    eos += r[b].stop == WK_STOP_EOS;
    cbk += r[b].stop == WK_STOP_CALLBACK;
    full += r[b].stop == WK_STOP_MAX_TOKENS;
  }
  CHECK(eos >= 1 && cbk == 1 && full >= 1 && a.n[0] <= 6 && a.n[0] != 3,
        "ends: %d eos, %d callback, %d max tokens (%d %d %d %d tokens): the test should see all three at different steps",
        eos, cbk, full, a.n[0], a.n[1], a.n[2], a.n[3]);
  wk_eval_stats e0, e1;
  wk_last_eval_stats(&e0);
  collect again = {0};
  again.stop_seq = 2;
  again.stop_after = 3;
  CHECK(wk_generate_batch(m, NULL, 4, pr, np, &p, on_tok, &again, NULL) == WK_OK, "the same batch again");
  wk_last_eval_stats(&e1);
  CHECK(e1.plans_compiled == e0.plans_compiled, "the same batch again compiled %llu plans",
        (unsigned long long)(e1.plans_compiled - e0.plans_compiled));
  *cfg = saved;
}

// Text and stop strings, through the chat fixture's tokenizer.
static void test_text(void) {
  wk_model *m = wk_model_load(fixture_in("chat", "model"));
  wk_tokenizer *tok = wk_tokenizer_load_json(fixture_in("chat", "model/tokenizer.json"));
  CHECK(m && tok, "chat fixture model");
  if (!m || !tok) { wk_model_free(m); wk_tokenizer_free(tok); return; }
  g_vocab = wk_model_get_config(m)->vocab_size;
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
  collect a = {0}, s = {0};
  wk_generate_result r[4];
  CHECK(wk_generate_batch(m, tok, 4, (const int32_t *const *)ids, np, &p, on_tok, &a, r) == WK_OK, "batch text");
  one_at_a_time(m, tok, 4, (const int32_t *const *)ids, np, &p, &s);
  compare(&a, &s, 4, "text");
  check_batches(&a, 4, "text");
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
  g_vocab = wk_model_get_config(m)->vocab_size;
  test_ids(m);
  test_lengths(m);
  test_own_context(m);
  test_finish_steps(m);
  wk_model_free(m);
  test_text();
  return check_report();
}
