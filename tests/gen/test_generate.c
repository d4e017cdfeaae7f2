#define _POSIX_C_SOURCE 200809L   // mkdtemp
// Generation on the tiny llama fixture (ids only; a byte tokenizer for stop strings):
// greedy through the KV cache equals repeated full forward argmax; callback and
// stop-string stops; bad prompts; NaN logits.
#include <string.h>
#include "check.h"
#include "model_copy.h"
#include "wick/generate.h"

static const char *fixture(const char *name) {
  static char out[1024];
  const char *env = getenv("WICK_FIXTURES");
  if (env) { snprintf(out, sizeof out, "%s/models/%s", env, name); return out; }
  const char *src = __FILE__, *cut = strstr(src, "tests/gen/");
  int n = cut ? (int)(cut - src) : 0;
  snprintf(out, sizeof out, "%.*stests/fixtures/models/%s", n, src, name);
  return out;
}

typedef struct { int32_t ids[64]; float prob[64]; int n, stop_at; char text[256]; size_t len; } collect;
static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  if (c->n < 64) { c->ids[c->n] = t->id; c->prob[c->n] = t->prob; }
  c->n++;
  if (c->len + t->len < sizeof c->text) { memcpy(c->text + c->len, t->text, t->len); c->len += t->len; }
  return c->stop_at && c->n >= c->stop_at;
}

// GPT-2's byte-level form of byte b (its code point as UTF-8) into o; returns the length.
static int byte_form(int b, char *o) {
  int extra = 0;   // bytes without a printable code point map to 256, 257, ... in order
  for (int k = 0; k < b; k++) extra += !((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174);
  int cp = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174) ? b : 256 + extra;
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  o[0] = (char)(0xC0 | (cp >> 6));
  o[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

// A byte-level tokenizer of 256 single-byte tokens, no merges; with `multi`, token 200
// stands for those bytes instead.
static wk_tokenizer *byte_tokenizer_with(const char *multi) {
  static char store[256][64];
  const char *toks[256];
  for (int b = 0; b < 256; b++) {
    char *o = store[b];
    int n = 0;
    if (b == 200 && multi)
      for (const unsigned char *u = (const unsigned char *)multi; *u && n < 56; u++) n += byte_form(*u, o + n);
    else
      n = byte_form(b, o);
    o[n] = 0;
    toks[b] = o;
  }
  return wk_tokenizer_from_bpe(256, toks, NULL, 0, NULL, WK_PRETOK_NONE);
}
static wk_tokenizer *byte_tokenizer(void) { return byte_tokenizer_with(NULL); }

typedef struct { char piece[8][32]; size_t len[8]; int n; } pieces;
static int on_piece(const wk_gen_token *t, void *user) {
  pieces *p = user;
  if (p->n < 8 && t->len < 32) { memcpy(p->piece[p->n], t->text, t->len); p->len[p->n] = t->len; }
  p->n++;
  return 0;
}

// UTF-8 streaming: one token repeated whose bytes are "\x80" + 日 (E6 97 A5) + the
// first three bytes of 😀 (F0 9F 98 80): the emoji is split across every pair of
// tokens. Each piece must hold whole characters only: the emoji's head waits for the
// token that completes it; a stray continuation byte passes as it is; at the end the
// incomplete head is flushed.
static void test_utf8_stream(wk_model *m, const int32_t *prompt, int np) {
  wk_tokenizer *tok = byte_tokenizer_with("\x80\xE6\x97\xA5\xF0\x9F\x98");
  CHECK(tok != NULL, "tokenizer with a multi-byte token");
  if (!tok) return;
  size_t bl = 0;
  const char *b = wk_tokenizer_token_bytes(tok, 200, &bl);
  CHECK(bl == 7 && !memcmp(b, "\x80\xE6\x97\xA5\xF0\x9F\x98", 7), "token 200's bytes");
  wk_logit_bias force = {200, 1e4f};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 3;
  p.ignore_eos = true;
  p.sampler.bias = &force;
  p.sampler.n_bias = 1;
  pieces got = {0};
  CHECK(wk_generate(m, tok, prompt, (size_t)np, &p, on_piece, &got, NULL) == WK_OK && got.n == 3, "generate");
  const char *want[3] = {"\x80\xE6\x97\xA5", "\xF0\x9F\x98\x80\xE6\x97\xA5", "\xF0\x9F\x98\x80\xE6\x97\xA5\xF0\x9F\x98"};
  for (int i = 0; i < 3 && i < got.n; i++)
    CHECK(got.len[i] == strlen(want[i]) && !memcmp(got.piece[i], want[i], got.len[i]), "piece %d: %zu bytes", i, got.len[i]);
  // a stop string made of whole characters matches across the split: 😀日 stops at token 2
  const char *stops[] = {"\xF0\x9F\x98\x80\xE6\x97\xA5"};
  p.stop = stops;
  p.n_stop = 1;
  memset(&got, 0, sizeof got);
  wk_generate_result r;
  CHECK(wk_generate(m, tok, prompt, (size_t)np, &p, on_piece, &got, &r) == WK_OK && got.n == 2 &&
            r.stop == WK_STOP_STRING && got.len[1] == 0, "stop string across the split (%d tokens, %s)", got.n,
        wk_stop_reason_name(r.stop));
  wk_tokenizer_free(tok);
}

// lm_head's row 7 gets a NaN: logit 7 is NaN at every position, the others are finite.
static wk_tensor *poison_head(const char *name, wk_tensor *t) {
  if (!t || strcmp(name, "lm_head.weight")) return t;
  int64_t k = wk_numel(t);
  float *v = malloc(sizeof(float) * (size_t)k);
  wk_tensor *w = v && !wk_tensor_read_f32(t, v, k) ? (v[7 * 64 + 3] = NAN, wk_from_data(wk_ndim(t), wk_shape(t), WK_F32, v)) : NULL;
  free(v);
  wk_tensor_free(t);
  return w;
}

// A NaN logit is an error that names it, greedy, sampled or with top_logprobs: the
// sampler dropped it and picked among the others (a silent answer from a broken model).
static void test_nan_logits(void) {
  char dir[] = "/tmp/wick_test_gen_nan_XXXXXX", cmd[512];
  if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
  CHECK(test_model_copy(fixture("llama"), dir, poison_head), "write the model with a NaN in lm_head");
  wk_model *m = wk_model_load(dir);
  CHECK(m != NULL, "load the poisoned model: %s", wk_last_error());
  int32_t prompt[3] = {1, 5, 9};
  for (int mode = 0; m && mode < 3; mode++) {
    wk_generate_params p = wk_generate_defaults();
    p.max_tokens = 3;
    p.ignore_eos = true;
    if (mode == 1) p.sampler.temperature = 1;
    if (mode == 2) p.top_logprobs = 2;
    wk_generate_result r;
    wk_status st = wk_generate(m, NULL, prompt, 3, &p, NULL, NULL, &r);
    CHECK(st != WK_OK && strstr(wk_last_error(), "NaN") && strstr(wk_last_error(), "id 7") && r.generated_tokens == 0,
          "generation %d over NaN logits: status %d, %lld tokens, %s", mode, st, (long long)r.generated_tokens,
          wk_last_error());
  }
  wk_model_free(m);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) fprintf(stderr, "cleanup of %s failed\n", dir);
}

int main(void) {
  test_nan_logits();
  wk_model *m = wk_model_load(fixture("llama"));
  CHECK(m != NULL, "load fixture");
  if (!m) return check_report();
  int64_t V = wk_model_get_config(m)->vocab_size;

  // greedy with the cache == argmax of full forwards without it
  int32_t seq[64] = {1, 5, 9, 20, 33};
  int np = 5, ng = 5;
  collect c;
  memset(&c, 0, sizeof c);
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = ng;
  p.ignore_eos = true;
  wk_generate_result r;
  CHECK(wk_generate(m, NULL, seq, (size_t)np, &p, on_tok, &c, &r) == WK_OK, "generate");
  CHECK(c.n == ng && r.generated_tokens == ng && r.prompt_tokens == np && r.stop == WK_STOP_MAX_TOKENS,
        "5 tokens, max_tokens stop (got %d, stop %s)", c.n, wk_stop_reason_name(r.stop));
  for (int k = 0; k < ng; k++) {
    int n = np + k;
    wk_tensor *ids = wk_from_data(2, (int64_t[]){1, n}, WK_I32, seq);
    wk_tensor *lg = wk_model_forward(m, ids, 0);
    const float *d = lg ? wk_tensor_data(lg) : NULL;
    CHECK(d != NULL, "forward %d", k);
    if (!d) break;
    const float *row = d + (int64_t)(n - 1) * V;
    int32_t best = 0;
    double mx = row[0], sum = 0;
    for (int64_t j = 1; j < V; j++) if (row[j] > row[best]) best = (int32_t)j;
    mx = row[best];
    for (int64_t j = 0; j < V; j++) sum += exp(row[j] - mx);
    CHECK(c.ids[k] == best, "token %d: cached %d, full forward %d", k, c.ids[k], best);
    CHECK(fabs(c.prob[k] - 1 / sum) < 1e-4, "token %d prob %g want %g", k, (double)c.prob[k], 1 / sum);
    seq[n] = best;
    wk_tensor_free(lg);
    wk_tensor_free(ids);
  }

  // the callback stops generation
  memset(&c, 0, sizeof c);
  c.stop_at = 2;
  p.max_tokens = 10;
  CHECK(wk_generate(m, NULL, seq, (size_t)np, &p, on_tok, &c, &r) == WK_OK && c.n == 2 && r.generated_tokens == 2 &&
            r.stop == WK_STOP_CALLBACK, "callback stop after 2 (got %d, %s)", c.n, wk_stop_reason_name(r.stop));

  // sampling with a seed is reproducible
  p.sampler.temperature = 1;
  p.sampler.seed = 9;
  collect a, b;
  memset(&a, 0, sizeof a); memset(&b, 0, sizeof b);
  wk_generate(m, NULL, seq, (size_t)np, &p, on_tok, &a, NULL);
  wk_generate(m, NULL, seq, (size_t)np, &p, on_tok, &b, NULL);
  CHECK(a.n == 10 && b.n == 10 && !memcmp(a.ids, b.ids, sizeof a.ids), "seeded generation reproducible");

  // stop strings across token boundaries: force 'a' (byte 97) every step; "aaa" stops at
  // the third token and nothing is emitted (the first two were held back)
  wk_tokenizer *tok = byte_tokenizer();
  CHECK(tok != NULL, "byte tokenizer");
  if (tok) {
    wk_logit_bias force = {97, 1e4f};
    const char *stops[] = {"xyz", "aaa"};
    p = wk_generate_defaults();
    p.max_tokens = 10;
    p.ignore_eos = true;
    p.sampler.bias = &force;
    p.sampler.n_bias = 1;
    p.stop = stops;
    p.n_stop = 2;
    memset(&c, 0, sizeof c);
    CHECK(wk_generate(m, tok, seq, (size_t)np, &p, on_tok, &c, &r) == WK_OK && c.n == 3 && c.len == 0 &&
              r.stop == WK_STOP_STRING, "stop string across tokens (n %d, len %zu, %s)", c.n, c.len, wk_stop_reason_name(r.stop));
    // a held-back prefix is released once it can't start the stop string (at the end)
    const char *stops2[] = {"aab"};
    p.stop = stops2;
    p.n_stop = 1;
    p.max_tokens = 4;
    memset(&c, 0, sizeof c);
    CHECK(wk_generate(m, tok, seq, (size_t)np, &p, on_tok, &c, &r) == WK_OK && c.n == 4 && c.len == 4 &&
              !memcmp(c.text, "aaaa", 4) && r.stop == WK_STOP_MAX_TOKENS, "no stop: all text out (len %zu)", c.len);
    // UTF-8: force 0xC3 then 0xA9 ("é") cannot be forced with one bias; a lone lead byte
    // held back until the end is flushed as is
    wk_logit_bias lead = {0xC3, 1e4f};
    p.sampler.bias = &lead;
    p.n_stop = 0;
    p.max_tokens = 1;
    memset(&c, 0, sizeof c);
    CHECK(wk_generate(m, tok, seq, (size_t)np, &p, on_tok, &c, &r) == WK_OK && c.len == 1 && (unsigned char)c.text[0] == 0xC3,
          "incomplete byte flushed at the end");
    wk_tokenizer_free(tok);
  }

  // bad prompts: empty, longer than the context (128)
  p = wk_generate_defaults();
  CHECK(wk_generate(m, NULL, seq, 0, &p, NULL, NULL, NULL) != WK_OK && strstr(wk_last_error(), "empty"), "empty prompt");
  int32_t big[129];
  for (int i = 0; i < 129; i++) big[i] = 3;
  CHECK(wk_generate(m, NULL, big, 129, &p, NULL, NULL, NULL) != WK_OK && strstr(wk_last_error(), "129") &&
            strstr(wk_last_error(), "128"), "too long prompt names the lengths");
  p.cache_dtype = (wk_dtype)77;   // an unknown dtype by its number (its name is "?")
  CHECK(wk_generate(m, NULL, seq, 3, &p, NULL, NULL, NULL) != WK_OK && strstr(wk_last_error(), "cache_dtype 77"),
        "an unknown cache dtype named: %s", wk_last_error());
  p.cache_dtype = WK_F32;
  // the context limit stops generation: 126 prompt tokens leave room for 3 more
  p.max_tokens = 10;
  p.ignore_eos = true;
  CHECK(wk_generate(m, NULL, big, 126, &p, NULL, NULL, &r) == WK_OK && r.stop == WK_STOP_CONTEXT && r.generated_tokens == 3,
        "context stop (%lld, %s)", (long long)r.generated_tokens, wk_stop_reason_name(r.stop));
  test_utf8_stream(m, seq, np);
  wk_model_free(m);
  return check_report();
}
