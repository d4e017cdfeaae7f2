// KV cache truncation and generation that continues from a cache, on the tiny llama
// fixture: logits after cutting a cache back and re-feeding equal a full forward's;
// wk_generate_cached over a cache holding part (or all) of the prompt equals wk_generate.
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "wick/generate.h"

typedef struct { int32_t ids[16]; int n; } collect;
static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  if (c->n < 16) c->ids[c->n++] = t->id;
  return 0;
}

static wk_tensor *feed(wk_model *m, wk_kv_cache *c, const int32_t *ids, int64_t n) {
  wk_tensor *t = wk_from_data(2, (int64_t[]){1, n}, WK_I32, ids);
  wk_tensor *lg = wk_model_forward_cached(m, t, c);
  wk_tensor_free(t);
  return lg;
}

static void test_truncate(wk_model *m, int64_t V) {
  int32_t seq[10] = {1, 7, 3, 99, 42, 5, 17, 200, 8, 64}, other[4] = {11, 12, 13, 14};
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 10}, WK_I32, seq);
  wk_tensor *full = wk_model_forward(m, ids, 0);   // no cache: the reference
  const float *want = full ? wk_tensor_data(full) : NULL;
  wk_kv_cache *c = wk_kv_cache_new(m);
  // 6 true tokens, then 4 wrong ones; cut them off and feed the true rest
  wk_tensor *a = feed(m, c, seq, 6), *b = feed(m, c, other, 4);
  CHECK(wk_kv_cache_len(c) == 10, "cache len %lld", (long long)wk_kv_cache_len(c));
  CHECK(wk_kv_cache_truncate(c, 6) == WK_OK && wk_kv_cache_len(c) == 6, "truncate to 6");
  wk_tensor *rest = feed(m, c, seq + 6, 4);
  const float *got = rest ? wk_tensor_data(rest) : NULL;
  // 1e-5: the same math in other block shapes (f32 logits of size ~1)
  CHECK(want && got && max_abs_diff(got, want + 6 * V, 4 * V) < 1e-5f, "logits after truncation: max diff %g",
        (double)max_abs_diff(got, want + 6 * V, 4 * V));
  CHECK(wk_kv_cache_truncate(c, 11) != WK_OK && strstr(wk_last_error(), "11") && wk_kv_cache_len(c) == 10,
        "truncate past the end refused");
  CHECK(wk_kv_cache_truncate(c, -1) != WK_OK && wk_kv_cache_len(c) == 10, "negative length refused");
  CHECK(wk_kv_cache_truncate(c, 10) == WK_OK && wk_kv_cache_len(c) == 10, "truncate to its length: no-op");
  CHECK(wk_kv_cache_truncate(c, 0) == WK_OK && wk_kv_cache_len(c) == 0, "truncate to 0 empties it");
  wk_tensor_free(a); wk_tensor_free(b); wk_tensor_free(rest); wk_tensor_free(full); wk_tensor_free(ids);
  wk_kv_cache_free(c);
}

static void test_generate_cached(wk_model *m) {
  int32_t seq[8] = {1, 9, 4, 77, 31, 2, 250, 6};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 6;
  p.ignore_eos = true;
  p.sampler.repeat_penalty = 1.3f;   // the penalties must see the cached part of the prompt too
  collect ref = {0};
  wk_generate_result r;
  CHECK(wk_generate(m, NULL, seq, 8, &p, on_tok, &ref, &r) == WK_OK && ref.n == 6 && r.cached_tokens == 0 &&
            r.prompt_tokens == 8, "generate");
  for (int held = 0; held <= 8; held += 4) {   // nothing, part, all of the prompt cached
    wk_kv_cache *c = wk_kv_cache_new(m);
    wk_tensor *lg = held ? feed(m, c, seq, held) : NULL;
    wk_tensor_free(lg);
    collect got = {0};
    wk_status st = wk_generate_cached(m, NULL, c, seq, 8, &p, on_tok, &got, &r);
    int64_t want_cached = held == 8 ? 7 : held;   // a full cache is cut back by one
    CHECK(st == WK_OK && got.n == 6 && !memcmp(got.ids, ref.ids, sizeof got.ids) && r.cached_tokens == want_cached &&
              r.prompt_tokens == 8 - want_cached, "cached %d: %d tokens, cached %lld", held, got.n, (long long)r.cached_tokens);
    // afterwards: the prompt and the generated tokens but the last
    CHECK(wk_kv_cache_len(c) == 8 + 6 - 1, "cache holds %lld", (long long)wk_kv_cache_len(c));
    CHECK(wk_generate_cached(m, NULL, c, seq, 8, &p, NULL, NULL, NULL) != WK_OK && strstr(wk_last_error(), "13"),
          "a cache longer than the prompt is refused");
    wk_kv_cache_free(c);
  }
}

int main(void) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  CHECK(m != NULL, "load fixture");
  if (!m) return check_report();
  int64_t V = wk_model_get_config(m)->vocab_size;
  test_truncate(m, V);
  test_generate_cached(m);
  wk_model_free(m);
  return check_report();
}
