#define _POSIX_C_SOURCE 200809L
// wick chat through a pipe, on the tiny chat model of tests/fixtures/chat/model (made
// by tools/gen_chat_fixtures.py), greedy: the first turn prefills the rendered
// conversation; the second reuses the cache and prefills only its new tokens; its
// reply equals wk_generate's on the whole rendered conversation from scratch, and
// after /reset the first reply comes again. Bad input exits 2 with a message.
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "cli/run_wick.h"
#include "io/json.h"

#define MODEL "tests/fixtures/chat/model"

// The --json output of one run: token ids and text per turn, and each turn's summary.
typedef struct {
  int32_t ids[4][64];
  int n[4];
  char text[4][1024];
  size_t len[4];
  int64_t prompt[4], cached[4];
  int turns;
} transcript;

static void parse(const char *out, transcript *t) {
  memset(t, 0, sizeof *t);
  for (const char *l = out; *l;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    wk_json *j = wk_json_parse(l, len, "wick output", NULL);
    const wk_json *id = wk_json_get(j, "id"), *turn = wk_json_get(j, "turn");
    int k = t->turns;
    if (id && k < 4 && t->n[k] < 64) {
      t->ids[k][t->n[k]++] = (int32_t)wk_json_int(id, -1);
      const wk_json *tx = wk_json_get(j, "text");
      if (tx && t->len[k] + tx->n < sizeof t->text[k]) {
        memcpy(t->text[k] + t->len[k], tx->s, tx->n);
        t->len[k] += tx->n;
      }
    } else if (turn && k < 4) {
      t->prompt[k] = wk_json_int(wk_json_get(j, "prompt_tokens"), -1);
      t->cached[k] = wk_json_int(wk_json_get(j, "cached_tokens"), -1);
      t->turns++;
    }
    wk_json_free(j);
    l += len + (e != NULL);
  }
}

// Token ids of the conversation rendered with the model's own template (generation prompt on).
static size_t render_ids(const wk_chat_message *m, size_t n, int32_t **ids, char **text) {
  wk_tokenizer *tok = wk_tokenizer_load_json(MODEL "/tokenizer.json");
  wk_chat_template *tpl = wk_chat_template_from_tokenizer(tok, 0);
  size_t len = 0, nid = 0;
  *ids = NULL;
  *text = NULL;
  if (tpl && !wk_chat_apply(tpl, m, n, true, text, &len, NULL)) wk_tokenizer_encode(tok, *text, len, false, ids, &nid);
  wk_chat_template_free(tpl);
  wk_tokenizer_free(tok);
  return nid;
}

static char out[1 << 18], err[1 << 16];

typedef struct { int32_t ids[64]; int n; } collect_ids;
static int on_id(const wk_gen_token *t, void *u) {
  collect_ids *c = u;
  if (c->n < 64) c->ids[c->n++] = t->id;
  return 0;
}

// The reply's bytes from its ids (the JSON text shows stray bytes as U+FFFD).
static size_t reply_bytes(const wk_tokenizer *tok, const int32_t *ids, int n, char *dst, size_t cap) {
  size_t len = 0;
  for (int i = 0; i < n; i++) {
    size_t bl = 0;
    const char *b = wk_tokenizer_token_bytes(tok, ids[i], &bl);
    if (!b || len + bl >= cap) return 0;
    memcpy(dst + len, b, bl);
    len += bl;
  }
  dst[len] = 0;
  return len;
}

static void test_two_turns(void) {
  const char *args[] = {"chat", "-m", MODEL, "--temp", "0", "-n", "8", "--json", NULL};
  int rc = run("Hello there\nHow are you?\n", out, sizeof out, err, sizeof err, args);
  transcript t;
  parse(out, &t);
  CHECK(rc == 0 && t.turns == 2 && t.n[0] == 8 && t.n[1] == 8 && !strstr(out, "\"stop\": \"eos\""),
        "chat: rc %d, %d turns: %s%s", rc, t.turns, out, err);
  if (t.turns != 2) return;
  CHECK(memcmp(t.ids[0], t.ids[1], sizeof(int32_t) * 8), "both replies are equal: the test would not see a stale cache");

  wk_tokenizer *tok = wk_tokenizer_load_json(MODEL "/tokenizer.json");
  wk_model *m = wk_model_load(MODEL);
  CHECK(tok && m, "load " MODEL);
  if (!tok || !m) { wk_tokenizer_free(tok); wk_model_free(m); return; }
  char reply[512];
  CHECK(reply_bytes(tok, t.ids[0], 8, reply, sizeof reply) > 0, "reply bytes");
  wk_chat_message conv[3] = {{"user", "Hello there"}, {"assistant", reply}, {"user", "How are you?"}};
  int32_t *ids1, *ids2;
  char *text1, *text2;
  size_t n1 = render_ids(conv, 1, &ids1, &text1), n2 = render_ids(conv, 3, &ids2, &text2);

  // turn 1: the whole rendered conversation is prefilled
  CHECK(n1 > 20 && t.prompt[0] == (int64_t)n1 && t.cached[0] == 0, "turn 1: %lld prompt + %lld cached tokens, want %zu + 0",
        (long long)t.prompt[0], (long long)t.cached[0], n1);
  // turn 2: the cache held turn 1's prompt and the reply's tokens but the last (never
  // fed back); all that the new rendering shares with them is reused
  size_t held = n1 + 8 - 1, same = 0;
  while (same < held && same < n2 && ids2[same] == (same < n1 ? ids1[same] : t.ids[0][same - n1])) same++;
  CHECK(same > n1 && t.cached[1] == (int64_t)same && t.prompt[1] == (int64_t)(n2 - same),
        "turn 2: %lld prompt + %lld cached tokens, want %zu + %zu (the cache held %zu)", (long long)t.prompt[1],
        (long long)t.cached[1], n2 - same, same, held);
  // this fixture's reply re-tokenizes to its own ids: only the new turn is prefilled
  CHECK(same == held, "the reply re-tokenizes differently at %zu of %zu", same, held);

  // from scratch: greedy generation on the whole rendered conversation gives turn 2's reply
  collect_ids c = {0};
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 8;
  rc = wk_generate(m, tok, ids2, n2, &p, on_id, &c, NULL);
  CHECK(rc == 0 && c.n == 8 && !memcmp(c.ids, t.ids[1], sizeof(int32_t) * 8), "generation from scratch differs from turn 2");
  free(ids1);
  free(ids2);
  free(text1);
  free(text2);
  wk_model_free(m);
  wk_tokenizer_free(tok);

  // /reset: the same first turn again, nothing cached
  const char *again = "Hello there\n/reset\nHello there\n";
  rc = run(again, out, sizeof out, err, sizeof err, args);
  transcript r;
  parse(out, &r);
  CHECK(rc == 0 && r.turns == 2 && r.cached[1] == 0 && r.prompt[1] == (int64_t)n1 &&
            !memcmp(r.ids[1], t.ids[0], sizeof(int32_t) * 8) && strstr(out, "{\"reset\": true}"),
        "after /reset: rc %d: %s", rc, out);
}

static void test_bad_input(void) {
  const char *notpl[] = {"chat", "-m", "tests/fixtures/chat/no_template", NULL};
  int rc = run("hi\n", out, sizeof out, err, sizeof err, notpl);
  CHECK(rc == 2 && strstr(err, "no chat template") && strstr(err, "--chatml"), "no template: rc %d: %s", rc, err);
  const char *chatml[] = {"chat", "-m", "tests/fixtures/chat/no_template", "--chatml", "--temp", "0", "-n", "2", "--json", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, chatml);
  CHECK(rc == 0 && strstr(out, "\"turn\": 1"), "--chatml: rc %d: %s%s", rc, out, err);
  CHECK(strstr(out, "\"cache_type\": \"f32\""), "a turn's summary names the cache (f32 on the CPU): %s", out);
  const char *ok[] = {"chat", "-m", MODEL, "-n", "2", NULL};
  rc = run("\xff\xfe\n", out, sizeof out, err, sizeof err, ok);
  CHECK(rc == 2 && strstr(err, "line 1 is not valid UTF-8"), "bad UTF-8: rc %d: %s", rc, err);
  rc = run("", out, sizeof out, err, sizeof err, ok);
  CHECK(rc == 0 && !out[0], "empty stdin: rc %d: %s", rc, out);
  const char *bad[] = {"chat", "-m", MODEL, "--top-p", "2", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, bad);
  CHECK(rc == 2 && strstr(err, "--top-p"), "bad option: rc %d: %s", rc, err);
  // a turn longer than the context (512): a message that says so, exit 1, no crash
  static char longline[8192];
  size_t n = 0;
  for (int i = 0; i < 700 && n + 8 < sizeof longline; i++) n += (size_t)snprintf(longline + n, sizeof longline - n, "w%d ", i);
  snprintf(longline + n, sizeof longline - n, "\n");
  rc = run(longline, out, sizeof out, err, sizeof err, ok);
  CHECK(rc == 1 && strstr(err, "context holds 512") && strstr(err, "conversation"), "too long: rc %d: %s", rc, err);
  // a turn that overflows a later point of the conversation (--ctx-size 100) is
  // reported and the session goes on: /reset, and the next turn is answered
  const char *small[] = {"chat", "-m", MODEL, "-n", "10", "--ctx-size", "100", "--ignore-eos", "--temp", "0", "--json", NULL};
  rc = run("Hello there\nTell me more about it please\n/reset\nHi\n", out, sizeof out, err, sizeof err, small);
  CHECK(rc == 0 && strstr(err, "context holds 100") && strstr(out, "\"error\": ") && strstr(out, "\"reset\": true") &&
            strstr(out, "\"turn\": 2"),
        "overflow mid-session, then /reset: rc %d: %s%s", rc, out, err);
  const char *missing[] = {"chat", "-m", "tests/fixtures/chat/nonexistent", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, missing);
  CHECK(rc == 2 && strstr(err, "nonexistent"), "missing model: rc %d: %s", rc, err);
}

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  test_two_turns();
  test_bad_input();
  return check_report();
}
