// Chat templates against transformers: every conversation of tests/fixtures/chat/
// cases.json (made by tools/gen_chat_fixtures.py) renders to the exact text of
// apply_chat_template; spans point at each message's content and turn; templates that
// aren't ChatML are refused by name; templates are found in tokenizer.json
// directories (chat_template.jinja, tokenizer_config.json) and GGUF files.
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "io/file.h"
#include "io/json.h"
#include "wick/chat.h"
#include "wick/gguf.h"

static const char *fixture(const char *name) { return fixture_in("chat", name); }

static bool span_is(const char *text, size_t a, size_t b, const char *want) {
  return b >= a && b - a == strlen(want) && !memcmp(text + a, want, b - a);
}

static void check_case(const wk_chat_template *t, const wk_json *c, size_t k) {
  const wk_json *msgs = wk_json_get(c, "messages");
  size_t n = wk_json_len(msgs);
  wk_chat_message m[8];
  wk_chat_span sp[8];
  if (n > 8) { CHECK(0, "case %zu: too many messages", k); return; }
  for (size_t i = 0; i < n; i++) {
    m[i].role = wk_json_str(wk_json_get(wk_json_at(msgs, i), "role"), NULL);
    m[i].content = wk_json_str(wk_json_get(wk_json_at(msgs, i), "content"), NULL);
  }
  bool gen = wk_json_bool(wk_json_get(c, "add_generation_prompt"), false);
  const wk_json *want = wk_json_get(c, "text");
  char *text = NULL;
  size_t len = 0;
  wk_status st = wk_chat_apply(t, m, n, gen, &text, &len, sp);
  CHECK(st == WK_OK && len == want->n && !memcmp(text, want->s, len) && strlen(text) == len,
        "case %zu (%s): rendered\n%s\nwant\n%s", k, wk_json_str(wk_json_get(c, "template"), ""),
        text ? text : "(null)", want->s);
  for (size_t i = 0; st == WK_OK && i < n; i++) {
    char head[64];
    snprintf(head, sizeof head, "<|im_start|>%s\n", m[i].role);
    CHECK(span_is(text, sp[i].content_start, sp[i].content_end, m[i].content), "case %zu msg %zu content span", k, i);
    CHECK(span_is(text, sp[i].turn_start, sp[i].content_start, head), "case %zu msg %zu turn head", k, i);
    CHECK(span_is(text, sp[i].content_end, sp[i].eot_end, "<|im_end|>"), "case %zu msg %zu end of turn", k, i);
    CHECK(span_is(text, sp[i].eot_end, sp[i].turn_end, "\n"), "case %zu msg %zu turn end", k, i);
    if (i + 1 < n) CHECK(sp[i].turn_end == sp[i + 1].turn_start, "case %zu: turns %zu, %zu not adjacent", k, i, i + 1);
  }
  free(text);
}

static void test_fixture_cases(const wk_json *doc) {
  const wk_json *tpls = wk_json_get(doc, "templates"), *sys = wk_json_get(doc, "default_system");
  const wk_json *cases = wk_json_get(doc, "cases");
  CHECK(wk_json_len(tpls) == 4 && wk_json_len(cases) == 48, "fixture: %zu templates, %zu cases",
        wk_json_len(tpls), wk_json_len(cases));
  for (size_t k = 0; k < wk_json_len(tpls); k++) {
    const char *name = wk_json_at(tpls, k)->key;
    wk_chat_template *t = wk_chat_template_parse(wk_json_at(tpls, k)->s, name, 0);
    CHECK(t != NULL, "template %s not recognized", name);
    if (!t) continue;
    const char *want_sys = wk_json_str(wk_json_get(sys, name), NULL), *got = wk_chat_template_default_system(t);
    CHECK((!want_sys && !got) || (want_sys && got && !strcmp(want_sys, got)), "template %s: default system '%s', want '%s'",
          name, got ? got : "(none)", want_sys ? want_sys : "(none)");
    CHECK(!strcmp(wk_chat_template_name(t), "chatml"), "template %s: name %s", name, wk_chat_template_name(t));
    for (size_t c = 0; c < wk_json_len(cases); c++)
      if (!strcmp(wk_json_str(wk_json_get(wk_json_at(cases, c), "template"), ""), name))
        check_case(t, wk_json_at(cases, c), c);
    wk_chat_template_free(t);
  }
}

static void test_refused(const wk_json *doc) {
  const wk_json *bad = wk_json_get(doc, "unsupported");
  CHECK(wk_json_len(bad) == 3, "fixture: %zu refused templates", wk_json_len(bad));
  for (size_t k = 0; k < wk_json_len(bad); k++) {
    const char *text = wk_json_at(bad, k)->s;
    wk_chat_template *t = wk_chat_template_parse(text, "bad.jinja", 0);
    CHECK(!t && strstr(wk_last_error(), "bad.jinja") && strstr(wk_last_error(), "not one wick recognizes") &&
              strstr(wk_last_error(), "{% for message in messages %}"),
          "template %s accepted or unclear error", wk_json_at(bad, k)->key);
    wk_chat_template_free(t);
    t = wk_chat_template_parse(text, "bad.jinja", WK_CHAT_FALLBACK_CHATML);
    CHECK(t && !strcmp(wk_chat_template_name(t), "chatml (fallback)") && !wk_chat_template_default_system(t),
          "fallback for %s", wk_json_at(bad, k)->key);
    wk_chat_template_free(t);
  }
  // the quoted start keeps a complete multibyte character at its end, drops a cut one
  const struct { const char *text, *begins; } quoted[] = {
      {"caf\xc3\xa9", "begins \"caf\xc3\xa9\""},
      {"\xe2\x9c\x93", "begins \"\xe2\x9c\x93\""},
      {"{{ x }}\xf0\x9f\x99\x82", "begins \"{{ x }}\xf0\x9f\x99\x82\""},
      {"0123456789012345678901234567890123456789012345678901234567\xe2\x9c\x93",
       "begins \"0123456789012345678901234567890123456789012345678901234567\""},
  };
  for (size_t k = 0; k < sizeof quoted / sizeof *quoted; k++) {
    wk_chat_template *q = wk_chat_template_parse(quoted[k].text, "q.jinja", 0);
    CHECK(!q && strstr(wk_last_error(), quoted[k].begins), "quoted start %zu: %s", k, wk_last_error());
    wk_chat_template_free(q);
  }
  wk_chat_template *t;
  t = wk_chat_template_parse("{% for message in messages %}{{ 'x' }", "open", 0);
  CHECK(!t && strstr(wk_last_error(), "open"), "unterminated tag");
  wk_chat_template_free(t);
}

// Rewrites of SmolLM2's template: accepted exactly when transformers renders them as
// the original (whitespace control, trim_blocks, quoting), and then rendered alike.
static void test_variants(const wk_json *doc) {
  const wk_json *vs = wk_json_get(doc, "variants");
  int same = 0;
  CHECK(wk_json_len(vs) >= 10, "fixture: %zu variants", wk_json_len(vs));
  for (size_t k = 0; k < wk_json_len(vs); k++) {
    const wk_json *v = wk_json_at(vs, k);
    bool want = wk_json_bool(wk_json_get(v, "same"), false);
    same += want;
    wk_chat_template *t = wk_chat_template_parse(wk_json_str(wk_json_get(v, "template"), ""), "variant", 0);
    CHECK((t != NULL) == want, "variant %zu: %s, but transformers renders it %s", k, t ? "accepted" : "refused",
          want ? "as the original" : "differently");
    if (t) check_case(t, v, k);
    wk_chat_template_free(t);
  }
  CHECK(same >= 5 && same < (int)wk_json_len(vs), "variants: %d of %zu render alike", same, wk_json_len(vs));
}

// SmolLM2's template with its first `from` replaced by `to`, parsed: whether it is
// recognized. (Each case's answer is Jinja's own, checked with jinja2 3.1.)
static bool smol_with(const wk_json *doc, const char *from, const char *to) {
  const char *smol = wk_json_str(wk_json_get(wk_json_get(doc, "templates"), "smollm2"), "");
  const char *at = strstr(smol, from);
  if (!at) return false;
  size_t n = strlen(smol) + strlen(to) + 1;
  char *t = malloc(n);
  if (!t) return false;
  snprintf(t, n, "%.*s%s%s", (int)(at - smol), smol, to, at + strlen(from));
  wk_chat_template *c = wk_chat_template_parse(t, "variant", 0);
  free(t);
  wk_chat_template_free(c);
  return c != NULL;
}

// Found by mutating templates and rendering them with jinja2: a space inside a word of
// a tag ("{% f or"), which Jinja refuses, was dropped and the template taken as ChatML;
// so were "% }" and "! ="; "+#}" or "+%}" (which keep the newline after the tag: Jinja
// prints it) were trimmed as if plain, and ChatML rendered without that newline; "{{+"
// read as a modifier (a unary plus). All refused now; spacing between words and "+"
// without a newline after it still change nothing.
static void test_words_and_plus(const wk_json *doc) {
  CHECK(!smol_with(doc, "{% for", "{% f or"), "a tag word split by a space refused");
  CHECK(smol_with(doc, "{% for message in messages %}", "{%for  message\n in messages%}"), "spacing between words");
  CHECK(!smol_with(doc, "{% for", "{# c +#}\n{% for"), "a newline kept by +#} refused");
  CHECK(!smol_with(doc, "{% endfor %}", "{% endfor +%}\n"), "a newline kept by +%%} refused");
  CHECK(smol_with(doc, "{% for", "{# c +#}{% for"), "+#} without a newline after it");
  CHECK(!smol_with(doc, "messages %}", "messages % }"), "a delimiter split by a space refused");
  CHECK(!smol_with(doc, "!= 'system'", "! = 'system'"), "an operator split by a space refused");
  CHECK(!smol_with(doc, "{% endif %}{{'<|im_start|>'", "{% endif %}{{+'<|im_start|>'"), "{{+ (a unary plus) refused");
}

static char *template_of(const char *path, bool gguf) {
  wk_tokenizer *tok = NULL;
  if (gguf) {
    wk_gguf *g = wk_gguf_open(path);
    tok = g ? wk_tokenizer_from_gguf(g) : NULL;
    wk_gguf_close(g);
  } else {
    tok = wk_tokenizer_load_json(path);
  }
  CHECK(tok != NULL, "load %s", path);
  const char *t = wk_tokenizer_chat_template(tok);
  char *copy = t ? strdup(t) : NULL;
  wk_tokenizer_free(tok);
  return copy;
}

static void test_sources(const wk_json *doc) {
  const char *smol = wk_json_get(wk_json_get(doc, "templates"), "smollm2")->s;
  const char *files[] = {"hf/tokenizer.json", "hf_legacy/tokenizer.json", "vocab.gguf"};
  for (int k = 0; k < 3; k++) {
    char *t = template_of(fixture(files[k]), k == 2);
    CHECK(t && !strcmp(t, smol), "%s: template %.40s", files[k], t ? t : "(none)");
    free(t);
  }
  // no template: a clear error naming the file, unless the fallback is asked
  const char *plain = fixture_in("tok", "smollm2.json");
  wk_tokenizer *tok = wk_tokenizer_load_json(plain);
  CHECK(tok && !wk_tokenizer_chat_template(tok), "smollm2.json has a template");
  wk_chat_template *t = wk_chat_template_from_tokenizer(tok, 0);
  CHECK(!t && strstr(wk_last_error(), "smollm2.json") && strstr(wk_last_error(), "no chat template"),
        "missing template error");
  wk_chat_template_free(t);
  t = wk_chat_template_from_tokenizer(tok, WK_CHAT_FALLBACK_CHATML);
  CHECK(t && !strcmp(wk_chat_template_name(t), "chatml (fallback)"), "fallback without a template");
  wk_chat_template_free(t);
  wk_tokenizer_free(tok);
}

// The real SmolLM2 GGUF, when tools/fetch-models has run.
static void test_real_model(void) {
  char dir[1200];
  snprintf(dir, sizeof dir, "%smodels/smollm2-135m-instruct", test_repo_root());
  DIR *d = opendir(dir);
  char path[1600] = "";
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".gguf")) snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
  if (d) closedir(d);
  if (!path[0]) { printf("skip: no SmolLM2 GGUF under models/\n"); return; }
  wk_gguf *g = wk_gguf_open(path);
  wk_tokenizer *tok = g ? wk_tokenizer_from_gguf(g) : NULL;
  wk_gguf_close(g);
  wk_chat_template *t = wk_chat_template_from_tokenizer(tok, 0);
  const char *sys = wk_chat_template_default_system(t);
  CHECK(t && sys && !strcmp(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        "SmolLM2 default system '%s'", sys ? sys : "(none)");
  wk_chat_template_free(t);
  wk_tokenizer_free(tok);
}

static void test_bad_args(void) {
  wk_chat_template *t = wk_chat_template_chatml("sys");
  char *text = NULL;
  size_t len = 0;
  wk_chat_message m[2] = {{"user", "hi"}, {"assistant", NULL}};
  CHECK(wk_chat_apply(t, m, 2, false, &text, &len, NULL) && strstr(wk_last_error(), "message 1") &&
            strstr(wk_last_error(), "content"), "NULL content");
  CHECK(wk_chat_apply(t, m, 1, false, &text, &len, NULL) == WK_OK &&
            !strcmp(text, "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"), "chatml with system");
  free(text);
  CHECK(wk_chat_apply(t, NULL, 0, true, &text, &len, NULL) == WK_OK && !strcmp(text, "<|im_start|>assistant\n"),
        "no messages: no system turn (the template injects it inside its message loop)");
  free(text);
  wk_chat_template_free(t);
}

int main(void) {
  size_t len;
  char *text = wk_read_file(fixture("cases.json"), 1 << 24, &len);
  wk_json *doc = text ? wk_json_parse(text, len, "cases.json", NULL) : NULL;
  CHECK(doc != NULL, "read cases.json");
  if (doc) {
    test_fixture_cases(doc);
    test_refused(doc);
    test_variants(doc);
    test_words_and_plus(doc);
    test_sources(doc);
  }
  test_real_model();
  test_bad_args();
  wk_json_free(doc);
  free(text);
  return check_report();
}
