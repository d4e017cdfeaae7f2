#define _POSIX_C_SOURCE 200809L
// wick generate on the tiny chat model of tests/fixtures/chat/model: --top-logprobs K
// prints each token's K alternatives, equal to the library's (which
// tests/gen/test_top_logprobs.c checks against the model's logits); several -p decode
// as a batch whose tokens equal separate runs', each prompt with its own context.
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "cli/run_wick.h"
#include "io/json.h"

#define MODEL "tests/fixtures/chat/model"

static char out[1 << 18], err[1 << 16];

typedef struct { int32_t ids[8]; wk_gen_alt top[8][4]; int32_t n_top[8]; int n; } collect;
static int on_tok(const wk_gen_token *t, void *user) {
  collect *c = user;
  if (c->n < 8) {
    c->ids[c->n] = t->id;
    c->n_top[c->n] = t->n_top;
    for (int32_t i = 0; i < t->n_top && i < 4; i++) c->top[c->n][i] = t->top[i];
    c->n++;
  }
  return 0;
}

static void test_top_logprobs(void) {
  const char *args[] = {"generate", "-m", MODEL, "-p", "Hello there", "-n", "3", "--temp", "0", "--json",
                        "--top-logprobs", "4", NULL};
  int rc = run(NULL, out, sizeof out, err, sizeof err, args);
  CHECK(rc == 0, "generate: rc %d: %s", rc, err);
  // the library on the same prompt
  wk_tokenizer *tok = wk_tokenizer_load_json(MODEL "/tokenizer.json");
  wk_model *m = wk_model_load(MODEL);
  int32_t *ids = NULL;
  size_t n = 0;
  collect c = {0};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 3;
  p.top_logprobs = 4;
  CHECK(tok && m && !wk_tokenizer_encode(tok, "Hello there", 11, true, &ids, &n) &&
            !wk_generate(m, tok, ids, n, &p, on_tok, &c, NULL) && c.n == 3, "library generate");
  int line = 0;
  for (const char *l = out; *l && line < 3;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    wk_json *j = wk_json_parse(l, len, "wick output", NULL);
    const wk_json *top = wk_json_get(j, "top");
    CHECK(wk_json_int(wk_json_get(j, "id"), -1) == c.ids[line] && wk_json_len(top) == 4 && c.n_top[line] == 4,
          "token %d: %.*s", line, (int)len, l);
    for (size_t i = 0; i < wk_json_len(top) && i < 4; i++) {
      const wk_json *a = wk_json_at(top, i);
      double lp = wk_json_num(wk_json_get(a, "logprob"), 1);
      CHECK(wk_json_int(wk_json_get(a, "id"), -1) == c.top[line][i].id && fabs(lp - c.top[line][i].logprob) < 1e-6 &&
                wk_json_is(wk_json_get(a, "text"), WK_JSON_STRING),
            "token %d alternative %zu", line, i);
    }
    wk_json_free(j);
    line++;
    l += len + (e != NULL);
  }
  CHECK(line == 3, "3 token lines, got %d", line);
  free(ids);
  wk_model_free(m);
  wk_tokenizer_free(tok);
  const char *bad[] = {"generate", "-m", MODEL, "-p", "Hi", "--top-logprobs", "1000", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, bad);
  CHECK(rc == 2 && strstr(err, "--top-logprobs"), "bad --top-logprobs: rc %d: %s", rc, err);
  const char *nojson[] = {"generate", "-m", MODEL, "-p", "Hi", "--top-logprobs", "2", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, nojson);
  CHECK(rc == 2 && strstr(err, "--json"), "--top-logprobs without --json: rc %d: %s", rc, err);
  const char *badseed[] = {"generate", "-m", MODEL, "-p", "Hi", "--seed", "18446744073709551616", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, badseed);
  CHECK(rc == 2 && strstr(err, "--seed"), "--seed past 2^64 - 1: rc %d: %s", rc, err);
}

// Token ids of --json output lines with "seq" == seq (-1: lines without "seq").
static int ids_of(const char *text, int seq, int32_t *ids, int cap) {
  int n = 0;
  for (const char *l = text; *l;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    wk_json *j = wk_json_parse(l, len, "wick output", NULL);
    const wk_json *id = wk_json_get(j, "id");
    if (id && wk_json_int(wk_json_get(j, "seq"), -1) == seq && n < cap) ids[n++] = (int32_t)wk_json_int(id, -1);
    wk_json_free(j);
    l += len + (e != NULL);
  }
  return n;
}

static void test_batch(void) {
  const char *prompts[] = {"Hello", "How are you doing today, my friend?", "1 2 3"};
  const char *args[] = {"generate", "-m", MODEL, "-n", "6", "--temp", "0", "--json",
                        "-p", prompts[0], "-p", prompts[1], "-p", prompts[2], NULL};
  static char batch[1 << 16];
  int rc = run(NULL, batch, sizeof batch, err, sizeof err, args);
  CHECK(rc == 0 && strstr(batch, "{\"seq\": 2, \"prompt_tokens\""), "batch: rc %d: %s%s", rc, batch, err);
  for (int k = 0; k < 3; k++) {
    const char *one[] = {"generate", "-m", MODEL, "-n", "6", "--temp", "0", "--json", "-p", prompts[k], NULL};
    rc = run(NULL, out, sizeof out, err, sizeof err, one);
    int32_t a[16], b[16];
    int na = ids_of(batch, k, a, 16), nb = ids_of(out, -1, b, 16);
    CHECK(rc == 0 && na == 6 && nb == 6 && !memcmp(a, b, sizeof(int32_t) * 6), "prompt %d: batched tokens differ", k);
  }
  // text mode: each prompt and its completion, in order
  const char *text[] = {"generate", "-m", MODEL, "-n", "3", "--temp", "0", "-p", "Hello", "-p", "Bye", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, text);
  CHECK(rc == 0 && !strncmp(out, "Hello", 5) && strstr(out, "\n\nBye") && strstr(err, "prompt 2:"), "batch text: %s", out);
  const char *empty[] = {"generate", "-m", MODEL, "-p", "Hello", "-p", "", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, empty);
  CHECK(rc == 2 && strstr(err, "prompt 2 is empty"), "empty second prompt: rc %d: %s", rc, err);

  // each prompt has its own context: "Hello" (4 tokens) beside one of 19 under
  // --ctx-size 24 generates 24 - 4 + 1 = 21 tokens, as alone, and the long one 6
  const char *own[] = {"generate", "-m", MODEL, "-n", "40", "--temp", "0", "--json", "--ignore-eos", "--ctx-size", "24",
                       "-p", prompts[0], "-p", prompts[1], NULL};
  rc = run(NULL, batch, sizeof batch, err, sizeof err, own);
  int32_t a[64], b[64];
  int na = ids_of(batch, 0, a, 64), nl = ids_of(batch, 1, b, 64);
  CHECK(rc == 0 && na == 21 && nl == 6 && strstr(batch, "\"generated_tokens\": 21, \"prefill_tok_s\"") &&
            strstr(batch, "\"stop\": \"context\""), "--ctx-size 24 batch: rc %d, %d and %d tokens: %s", rc, na, nl, err);
  const char *alone[] = {"generate", "-m", MODEL, "-n", "40", "--temp", "0", "--json", "--ignore-eos", "--ctx-size", "24",
                         "-p", prompts[0], NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, alone);
  CHECK(rc == 0 && ids_of(out, -1, b, 64) == 21 && !memcmp(a, b, sizeof(int32_t) * 21), "--ctx-size 24 alone: rc %d", rc);
  const char *over[] = {"generate", "-m", MODEL, "--ctx-size", "10", "-p", prompts[0], "-p", prompts[1], NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, over);
  CHECK(rc != 0 && strstr(err, "prompt 2 of 2 (prompts[1]) has 19 tokens but the context holds 10"),
        "a second prompt over --ctx-size: rc %d: %s", rc, err);
}

// --cache-type bf16 runs (tests/gen/test_kv_cache.c checks its logits); bad values, a q8_0 cache
// on a head dim that is not a multiple of 32 and a prompt longer than --ctx-size are named.
static void test_cache_options(void) {
  const char *bf16[] = {"generate", "-m", MODEL, "-p", "Hello there", "-n", "4", "--temp", "0", "--json",
                        "--cache-type", "bf16", "--sliding-window", NULL};
  int rc = run(NULL, out, sizeof out, err, sizeof err, bf16);
  int32_t ids[8];
  CHECK(rc == 0 && ids_of(out, -1, ids, 8) == 4, "--cache-type bf16: rc %d: %s%s", rc, out, err);
  CHECK(strstr(out, "\"cache_type\": \"bf16\""), "--cache-type bf16: the summary names it: %s", out);
  // the default on the CPU: f32 (wk_model_cache_dtype)
  const char *dflt[] = {"generate", "-m", MODEL, "-p", "Hello there", "-n", "2", "--temp", "0", "--json", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, dflt);
  CHECK(rc == 0 && strstr(out, "\"cache_type\": \"f32\""), "the default cache on the CPU is f32: rc %d: %s%s", rc, out, err);
  const char *bad[] = {"generate", "-m", MODEL, "-p", "Hi", "--cache-type", "q4", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, bad);
  CHECK(rc == 2 && strstr(err, "--cache-type 'q4'"), "bad --cache-type: rc %d: %s", rc, err);
  // q8_0 stores blocks of 32 along the head dimension: the fixture's 8 is refused by name
  const char *q8[] = {"generate", "-m", MODEL, "-p", "Hi", "--cache-type", "q8_0", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, q8);
  CHECK(rc != 0 && strstr(err, "head_dim is 8"), "--cache-type q8_0 on head_dim 8: rc %d: %s", rc, err);
  const char *ctx[] = {"generate", "-m", MODEL, "-p", "Hello there my friend", "--ctx-size", "2", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, ctx);
  CHECK(rc != 0 && strstr(err, "context holds 2"), "--ctx-size 2 under a longer prompt: rc %d: %s", rc, err);
  CHECK(!out[0], "a generation that fails at its start prints nothing to stdout: '%s'", out);
  CHECK(!strstr(err, "generate: generate:"), "the command is named once: %s", err);
  // a tokenizer of another model: its ids past this model's vocabulary are named as the prompt's
  const char *tok[] = {"generate", "-m", "tests/fixtures/models/llama", "--tokenizer", "tests/fixtures/chat/model/tokenizer.json",
                       "-p", "Hello there friend", "-n", "2", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, tok);
  CHECK(rc == 1 && strstr(err, "outside the model's vocabulary of 256") && strstr(err, "prompt"),
        "a foreign tokenizer's ids: rc %d: %s", rc, err);
  const char *ctx0[] = {"generate", "-m", MODEL, "-p", "Hi", "--ctx-size", "0", NULL};
  rc = run(NULL, out, sizeof out, err, sizeof err, ctx0);
  CHECK(rc == 2 && strstr(err, "--ctx-size '0'"), "--ctx-size 0: rc %d: %s", rc, err);
  const char *chat[] = {"chat", "-m", MODEL, "--sliding-window", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, chat);
  CHECK(rc == 2 && strstr(err, "--sliding-window"), "chat --sliding-window: rc %d: %s", rc, err);
}

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  test_cache_options();
  test_top_logprobs();
  test_batch();
  return check_report();
}
