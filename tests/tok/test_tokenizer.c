// Tokenizers against HF `tokenizers`: ids for every corpus line equal the ones HF
// produced (tests/fixtures/tok/expected.json, made by tools/gen_tok_fixtures.py), decode
// equals HF's decode, plus the constructor from arrays, lookups and error cases. The
// real SmolLM2 (GGUF) and all-MiniLM-L6-v2 tokenizers are checked when models/ has them.
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "io/file.h"
#include "io/gguf.h"
#include "io/json.h"
#include "wick/gguf.h"
#include "wick/tokenizer.h"


static bool contains_nocase(const char *s, const char *w) {
  for (; *s; s++) {
    size_t i = 0;
    while (w[i] && s[i] && (s[i] | 32) == (w[i] | 32)) i++;
    if (!w[i]) return true;
  }
  return false;
}
static const char *fixture(const char *name) { return fixture_in("tok", name); }

// First file named `name` under dir (depth-first) whose path contains `part` (any
// case), into out.
static bool find_file(const char *dir, const char *name, const char *part, char *out, size_t cap,
                      int depth) {
  DIR *d = opendir(dir);
  if (!d) return false;
  struct dirent *e;
  bool found = false;
  while (!found && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (stat(p, &st)) continue;
    if (S_ISDIR(st.st_mode)) {
      if (depth < 6) found = find_file(p, name, part, out, cap, depth + 1);
    } else if (!strcmp(e->d_name, name) && contains_nocase(p, part)) {
      snprintf(out, cap, "%s", p);
      found = true;
    }
  }
  closedir(d);
  return found;
}

static bool ids_equal(const int32_t *got, size_t n, const wk_json *want, const char *what,
                      const char *tok, size_t line) {
  bool ok = n == wk_json_len(want);
  size_t i = 0;
  for (; ok && i < n; i++) ok = got[i] == wk_json_int(wk_json_at(want, i), -1);
  if (!ok) {
    size_t j = 0;
    while (j < n && j < wk_json_len(want) && got[j] == wk_json_int(wk_json_at(want, j), -1)) j++;
    fprintf(stderr, "  %s line %zu (%s): %zu ids, want %zu; first difference at %zu:", tok, line,
            what, n, wk_json_len(want), j);
    for (size_t k = j; k < j + 6 && k < n; k++) fprintf(stderr, " %d", got[k]);
    fprintf(stderr, " | want");
    for (size_t k = j; k < j + 6 && k < wk_json_len(want); k++)
      fprintf(stderr, " %lld", (long long)wk_json_int(wk_json_at(want, k), -1));
    fprintf(stderr, "\n");
  }
  return ok;
}

// Every corpus line: ids with and without special tokens, decode, streaming bytes.
static void check_corpus(wk_tokenizer *tok, const char *name, const wk_json *lines,
                         const wk_json *exp, bool plain_only, bool skip_mask) {
  size_t bad = 0;
  for (size_t i = 0; i < wk_json_len(lines); i++) {
    const wk_json *line = wk_json_at(lines, i);
    if (skip_mask && (strstr(line->s, "<mask>") || strstr(line->s, "[[tool]]"))) continue;
    int32_t *ids = NULL;
    size_t n = 0;
    bool ok = true;
    if (!plain_only) {
      ok = !wk_tokenizer_encode(tok, line->s, line->n, true, &ids, &n) &&
           ids_equal(ids, n, wk_json_at(wk_json_get(exp, "ids"), i), "add_special", name, i);
      free(ids);
    }
    ok = ok && !wk_tokenizer_encode(tok, line->s, line->n, false, &ids, &n) &&
         ids_equal(ids, n, wk_json_at(wk_json_get(exp, "ids_plain"), i), "plain", name, i);
    if (ok) {
      char *text = NULL;
      size_t len = 0;
      const wk_json *want = wk_json_at(wk_json_get(exp, "decoded"), i);
      ok = !wk_tokenizer_decode(tok, ids, n, &text, &len) && len == want->n &&
           !memcmp(text, want->s, len);
      if (!ok) fprintf(stderr, "  %s line %zu: decode gives \"%s\", want \"%s\"\n", name, i,
                       text ? text : "(error)", want->s);
      // the bytes of each token, concatenated, are the decoded text (streaming)
      if (ok && wk_tokenizer_token_bytes(tok, 0, NULL) && strcmp(name, "wordpiece") &&
          strcmp(name, "minilm_real")) {
        size_t k = 0;
        for (size_t j = 0; ok && j < n; j++) {
          size_t l;
          const char *b = wk_tokenizer_token_bytes(tok, ids[j], &l);
          ok = b && k + l <= len && !memcmp(text + k, b, l);
          k += l;
        }
        ok = ok && k == len;
        if (!ok) fprintf(stderr, "  %s line %zu: token bytes do not add up to the text\n", name, i);
      }
      free(text);
    }
    free(ids);
    if (!ok) bad++;
  }
  CHECK(bad == 0, "%s: %zu of %zu corpus lines differ from HF tokenizers", name, bad,
        wk_json_len(lines));
}

// The same tokenizer rebuilt through wk_tokenizer_from_bpe from its vocabulary arrays.
static void check_from_arrays(const char *file, wk_pretok_kind kind, const wk_json *lines,
                              const wk_json *exp, const char *name) {
  size_t len;
  char *text = wk_read_file(fixture(file), 1 << 26, &len);
  wk_json *doc = text ? wk_json_parse(text, len, file, NULL) : NULL;
  const wk_json *vocab = wk_json_get(wk_json_get(doc, "model"), "vocab");
  const wk_json *merges = wk_json_get(wk_json_get(doc, "model"), "merges");
  const wk_json *added = wk_json_get(doc, "added_tokens");
  size_t nv = wk_json_len(vocab), nm = wk_json_len(merges);
  const char **toks = calloc(nv + 8, sizeof *toks);
  int32_t *types = calloc(nv + 8, sizeof *types);
  char **mstr = calloc(nm + 1, sizeof *mstr);
  size_t n_tok = 0;
  for (size_t i = 0; doc && i < nv; i++) {
    const wk_json *v = wk_json_at(vocab, i);
    toks[v->i] = v->key;
    types[v->i] = WK_TOKEN_NORMAL;
    if ((size_t)v->i + 1 > n_tok) n_tok = (size_t)v->i + 1;
  }
  for (size_t i = 0; i < wk_json_len(added); i++) {
    const wk_json *a = wk_json_at(added, i);
    int64_t id = wk_json_int(wk_json_get(a, "id"), 0);
    if ((size_t)id >= nv + 8) continue;
    toks[id] = wk_json_str(wk_json_get(a, "content"), "");
    types[id] = wk_json_bool(wk_json_get(a, "special"), false) ? WK_TOKEN_CONTROL
                                                              : WK_TOKEN_USER_DEFINED;
    if ((size_t)id + 1 > n_tok) n_tok = (size_t)id + 1;
  }
  for (size_t r = 0; r < nm; r++) {
    const wk_json *m = wk_json_at(merges, r);
    const char *a = wk_json_str(wk_json_at(m, 0), ""), *b = wk_json_str(wk_json_at(m, 1), "");
    mstr[r] = malloc(strlen(a) + strlen(b) + 2);
    sprintf(mstr[r], "%s %s", a, b);
  }
  wk_tokenizer *tok = doc ? wk_tokenizer_from_bpe(n_tok, toks, types, nm,
                                                  (const char *const *)mstr, kind) : NULL;
  CHECK(tok != NULL, "wk_tokenizer_from_bpe(%s)", file);
  if (tok) {
    check_corpus(tok, name, lines, exp, true, true);
    wk_tokenizer_free(tok);
  }
  for (size_t r = 0; r < nm; r++) free(mstr[r]);
  free(mstr);
  free(toks);
  free(types);
  wk_json_free(doc);
  free(text);
}

static wk_tokenizer *from_gguf(const char *path) {
  wk_gguf *f = wk_gguf_open(path);
  wk_tokenizer *tok = f ? wk_tokenizer_from_gguf(f) : NULL;
  wk_gguf_close(f);
  return tok;
}

// Where the value of GGUF key `key` starts in the image (its u32 type just before), or NULL.
static uint8_t *gguf_value_of(uint8_t *b, size_t n, const char *key) {
  size_t kl = strlen(key);
  for (size_t i = 8; i + kl + 4 < n; i++) {
    uint64_t len;
    memcpy(&len, b + i - 8, 8);
    if (len == kl && !memcmp(b + i, key, kl)) return b + i + kl + 4;
  }
  return NULL;
}

// GGUF special token ids of another integer type than u32 (the model loader takes any;
// the tokenizer ignored them, so an i32 bos was never added) and of a non-integer type.
static void check_gguf_special_types(void) {
  size_t n = 0;
  uint8_t *b = (uint8_t *)test_slurp(fixture("smollm2_vocab.gguf"), &n);
  uint8_t *bos = b ? gguf_value_of(b, n, "tokenizer.ggml.bos_token_id") : NULL;
  uint8_t *add = b ? gguf_value_of(b, n, "tokenizer.ggml.add_bos_token") : NULL;
  CHECK(bos && add, "smollm2_vocab.gguf holds bos_token_id and add_bos_token");
  if (!bos || !add) { free(b); return; }
  uint32_t i32 = WK_GGUF_I32, f32 = WK_GGUF_F32;
  memcpy(bos - 4, &i32, 4);
  *add = 1;
  wk_gguf *f = wk_gguf_open_memory(b, n, "i32_bos.gguf");
  wk_tokenizer *t = f ? wk_tokenizer_from_gguf(f) : NULL;
  int32_t *ids = NULL;
  size_t m = 0;
  CHECK(t && wk_tokenizer_bos(t) == 1 && !wk_tokenizer_encode(t, "hi", 2, true, &ids, &m) && m >= 2 && ids[0] == 1,
        "i32 bos_token_id is used and added: %s", wk_last_error());
  free(ids);
  wk_tokenizer_free(t);
  wk_gguf_close(f);
  memcpy(bos - 4, &f32, 4);
  f = wk_gguf_open_memory(b, n, "f32_bos.gguf");
  wk_clear_error();
  t = f ? wk_tokenizer_from_gguf(f) : NULL;
  CHECK(!t && strstr(wk_last_error(), "tokenizer.ggml.bos_token_id") && strstr(wk_last_error(), "f32_bos.gguf"),
        "f32 bos_token_id is refused by name: %s", wk_last_error());
  wk_tokenizer_free(t);
  wk_gguf_close(f);
  free(b);
}

// A tokenizer.chat_template that is not a string (here a u32, then an array of strings)
// is an error naming the key and the type; it was ignored, so chat had no template.
static void check_gguf_template_type(void) {
  size_t n = 0;
  uint8_t *b = (uint8_t *)test_slurp(fixture_in("chat", "vocab.gguf"), &n);
  uint8_t *v = b ? gguf_value_of(b, n, "tokenizer.chat_template") : NULL;
  CHECK(v != NULL, "chat/vocab.gguf holds tokenizer.chat_template");
  if (!v) { free(b); return; }
  // the template is the last key: its value is rewritten and the file ends after it
  // (the tensor-free file needs no data section)
  size_t at = (size_t)(v - 4 - b);
  uint8_t *c = calloc(1, at + 64);
  memcpy(c, b, at);
  uint32_t u32 = WK_GGUF_U32, arr = WK_GGUF_ARRAY, str = WK_GGUF_STRING, seven = 7;
  uint64_t one = 1, len = 2;
  memcpy(c + at, &u32, 4);
  memcpy(c + at + 4, &seven, 4);
  const struct { const char *file, *type; size_t size; } cases[] = {{"u32_template.gguf", "u32", at + 8},
                                                                     {"array_template.gguf", "array", at + 30}};
  for (int k = 0; k < 2; k++) {
    if (k) {   // array[string] of one "hi"
      memcpy(c + at, &arr, 4);
      memcpy(c + at + 4, &str, 4);
      memcpy(c + at + 8, &one, 8);
      memcpy(c + at + 16, &len, 8);
      memcpy(c + at + 24, "hi", 2);
    }
    wk_gguf *f = wk_gguf_open_memory(c, cases[k].size, cases[k].file);
    CHECK(f != NULL, "%s opens: %s", cases[k].file, wk_last_error());
    wk_clear_error();
    wk_tokenizer *t = f ? wk_tokenizer_from_gguf(f) : NULL;
    CHECK(!t && strstr(wk_last_error(), "tokenizer.chat_template") && strstr(wk_last_error(), cases[k].type) &&
              strstr(wk_last_error(), cases[k].file),
          "a chat template of type %s is refused by name: %s", cases[k].type, wk_last_error());
    wk_tokenizer_free(t);
    wk_gguf_close(f);
  }
  free(c);
  free(b);
}

static void put_file(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (f) { fputs(text, f); fclose(f); }
}

// tokenizer_config.json and chat_template.jinja beside tokenizer.json are optional, but
// one that is there and can't be read or parsed is an error: it was skipped silently,
// losing bos / eos and the chat template.
static void check_corrupt_siblings(void) {
  char dir[] = "/tmp/wick_tok_XXXXXX", tj[64], tc[64], cj[64];
  if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
  snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
  snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
  snprintf(cj, sizeof cj, "%s/chat_template.jinja", dir);
  size_t n = 0;
  char *text = test_slurp(fixture("smollm2.json"), &n);
  if (text) put_file(tj, text);
  free(text);
  put_file(tc, "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{{ x }}\"}");
  wk_tokenizer *t = wk_tokenizer_load_json(tj);
  CHECK(t && wk_tokenizer_eos(t) == wk_tokenizer_token_id(t, "<|im_end|>") && wk_tokenizer_eos(t) >= 0 &&
        wk_tokenizer_chat_template(t) && !strcmp(wk_tokenizer_chat_template(t), "{{ x }}"), "siblings read");
  wk_tokenizer_free(t);
  put_file(tc, "{\"eos_token\": \"<|im_end|>\",");
  t = wk_tokenizer_load_json(tj);
  CHECK(!t && strstr(wk_last_error(), "tokenizer_config.json:1:"), "truncated tokenizer_config.json: %s", wk_last_error());
  wk_tokenizer_free(t);
  remove(tc);
  mkdir(cj, 0755);   // there, but not a readable file
  t = wk_tokenizer_load_json(tj);
  CHECK(!t && strstr(wk_last_error(), "chat_template.jinja"), "unreadable chat_template.jinja: %s", wk_last_error());
  wk_tokenizer_free(t);
  rmdir(cj);
  remove(tj);
  rmdir(dir);
}

static void check_errors(void) {
  wk_tokenizer *t = wk_tokenizer_load_json("/nonexistent/tokenizer.json");
  CHECK(!t && strstr(wk_last_error(), "/nonexistent/tokenizer.json"), "missing file names it");
  const char *bad = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}}}";
  t = wk_tokenizer_from_json(bad, strlen(bad), "bad.json");
  CHECK(!t && strstr(wk_last_error(), "bad.json"), "bad JSON names the file");
  const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}";
  t = wk_tokenizer_from_json(uni, strlen(uni), "uni.json");
  CHECK(!t && strstr(wk_last_error(), "uni.json") && strstr(wk_last_error(), "Unigram"),
        "unknown model type is named with the file");
  const char *merge = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, "
                      "\"merges\": [\"a b\"]}}";
  t = wk_tokenizer_from_json(merge, strlen(merge), "merge.json");
  CHECK(!t && strstr(wk_last_error(), "merges[0]"), "merge producing an unknown token");
  const char *hole = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 4000000000}}}";
  t = wk_tokenizer_from_json(hole, strlen(hole), "hole.json");
  CHECK(!t && strstr(wk_last_error(), "bad id"), "huge id refused");
  const char *pre = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                    "\"pre_tokenizer\": {\"type\": \"Metaspace\"}}";
  t = wk_tokenizer_from_json(pre, strlen(pre), "pre.json");
  CHECK(!t && strstr(wk_last_error(), "Metaspace"), "unsupported pre-tokenizer named");
  const char *notobj = "[1, 2]";
  t = wk_tokenizer_from_json(notobj, strlen(notobj), "arr.json");
  CHECK(!t && strstr(wk_last_error(), "arr.json"), "not a tokenizer.json");
  const char *ok = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                   "\"merges\": [[\"a\", \"b\"]]}, \"decoder\": {\"type\": \"Fuse\"}}";
  t = wk_tokenizer_from_json(ok, strlen(ok), "ok.json");
  CHECK(t != NULL, "minimal BPE loads");
  if (t) {
    int32_t *ids;
    size_t n;
    CHECK(!wk_tokenizer_encode(t, "abab", 4, true, &ids, &n) && n == 2 && ids[0] == 2 &&
          ids[1] == 2, "minimal BPE merges");
    free(ids);
    int32_t badid[2] = {0, 7};
    char *text;
    size_t len;
    CHECK(wk_tokenizer_decode(t, badid, 2, &text, &len) && strstr(wk_last_error(), "7"),
          "invalid id in decode is an error");
    badid[1] = -1;
    CHECK(wk_tokenizer_decode(t, badid, 2, &text, &len) != WK_OK, "negative id in decode");
    CHECK(!wk_tokenizer_encode(t, "", 0, true, &ids, &n) && n == 0 && ids, "empty text");
    free(ids);
    CHECK(wk_tokenizer_token_bytes(t, 3, NULL) == NULL, "token_bytes of an invalid id");
    CHECK(wk_tokenizer_set_special(t, 1, 9, false, false) == WK_ERR_ARG && strstr(wk_last_error(), "eos id 9 is not"),
          "set_special names the bad eos id: %s", wk_last_error());
    wk_tokenizer_free(t);
  }
  const char *fb[] = {"a", "b"};
  const char *mb[] = {"a c"};
  CHECK(!wk_tokenizer_from_bpe(2, fb, NULL, 1, mb, WK_PRETOK_GPT2) &&
        strstr(wk_last_error(), "merge 0"), "from_bpe: bad merge");
}

// Text that is not valid UTF-8: byte-level BPE has a token for every byte, so its bytes
// come back from decode unchanged, through the NFC normalizer too (it used to turn them
// into U+FFFD); valid text around them is still normalized.
static void check_invalid_utf8(void) {
  static const char *const inputs[] = {
    "a\xff" "b", "\xcc", "x\xe2\x82", "\x80\xcc\x81", "\xc0\xaf", "\xed\xa0\x80", "ok \xf4\x90\x80\x80 end",
    "\xf0\x9f\x98", "\xe2\x82\xac\xcc\x81", "\xcc\x81\xff\xcc\x81", "e\xff\xcc\x81", "\xfe\xff\xc3\xa9\xc3"};
  const char *files[] = {"gpt2.json", "llama3.json", "qwen2.json", "smollm2.json", "bytefallback.json"};
  for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
    wk_tokenizer *t = wk_tokenizer_load_json(fixture(files[f]));
    CHECK(t != NULL, "load %s", files[f]);
    if (!t) continue;
    for (size_t k = 0; k < sizeof inputs / sizeof *inputs; k++) {
      size_t in = strlen(inputs[k]), n = 0, len = 0;
      int32_t *ids = NULL;
      char *out = NULL;
      bool ok = !wk_tokenizer_encode(t, inputs[k], in, false, &ids, &n) && !wk_tokenizer_decode(t, ids, n, &out, &len);
      CHECK(ok && len == in && !memcmp(out, inputs[k], in), "%s: invalid UTF-8 input %zu round-trips", files[f], k);
      free(ids);
      free(out);
    }
    wk_tokenizer_free(t);
  }
  wk_tokenizer *q = wk_tokenizer_load_json(fixture("qwen2.json"));
  if (!q) return;
  int32_t *ids = NULL;
  size_t n = 0, len = 0;
  char *out = NULL;
  int32_t ff = wk_tokenizer_token_id(q, "\xc3\xbf");   // byte 0xFF's byte-level symbol "ÿ"
  CHECK(ff >= 0 && !wk_tokenizer_encode(q, "\xff", 1, false, &ids, &n) && n == 1 && ids[0] == ff,
        "qwen2: byte 0xFF is its byte token %d (%zu ids)", ff, n);
  free(ids);
  // e + U+0301 composes to U+00E9; the U+0301 after the invalid byte has nothing to join
  const char *mixed = "cafe\xcc\x81\xff\xcc\x81";
  CHECK(!wk_tokenizer_encode(q, mixed, strlen(mixed), false, &ids, &n) && !wk_tokenizer_decode(q, ids, n, &out, &len) &&
        len == 8 && !memcmp(out, "caf\xc3\xa9\xff\xcc\x81", 8), "qwen2: NFC around an invalid byte");
  free(ids);
  free(out);
  wk_tokenizer_free(q);
}

// A long run of combining marks in descending class order (U+0301 is class 230, U+0316
// class 220): NFC sorts it into canonical order. Insertion sort made that quadratic
// (256 KB took 25 s); now it is linear, so the generous bound only catches a regression.
static void check_long_marks(void) {
  wk_tokenizer *q = wk_tokenizer_load_json(fixture("qwen2.json"));
  if (!q) return;
  size_t pairs = 1 << 16, n = 1 + 4 * pairs;
  char *s = malloc(n), *want = malloc(n);
  s[0] = 'a';
  for (size_t i = 0; i < pairs; i++) memcpy(s + 1 + 4 * i, "\xcc\x81\xcc\x96", 4);
  // canonical order puts the 220s first; then a + U+0301 composes to U+00E1
  memcpy(want, "\xc3\xa1", 2);
  for (size_t i = 0; i < pairs; i++) memcpy(want + 2 + 2 * i, "\xcc\x96", 2);
  for (size_t i = 0; i + 1 < pairs; i++) memcpy(want + 2 + 2 * pairs + 2 * i, "\xcc\x81", 2);
  size_t want_len = 2 + 2 * pairs + 2 * (pairs - 1);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int32_t *ids = NULL;
  size_t m = 0, len = 0;
  char *out = NULL;
  bool ok = !wk_tokenizer_encode(q, s, n, false, &ids, &m);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  ok = ok && !wk_tokenizer_decode(q, ids, m, &out, &len);
  CHECK(ok && len == want_len && !memcmp(out, want, len), "qwen2: NFC of 128K combining marks");
  CHECK(secs < 5, "qwen2: 256 KB of combining marks encoded in %.2f s", secs);
  free(ids);
  free(out);
  free(s);
  free(want);
  wk_tokenizer_free(q);
}

int main(void) {
  size_t len;
  char *text = wk_read_file(fixture("expected.json"), 1 << 26, &len);
  wk_json *doc = text ? wk_json_parse(text, len, "expected.json", NULL) : NULL;
  CHECK(doc != NULL, "fixtures (make them with tools/gen_tok_fixtures.py)");
  if (!doc) return check_report();
  const wk_json *lines = wk_json_get(doc, "lines"), *all = wk_json_get(doc, "expected");
  for (size_t k = 0; k < wk_json_len(all); k++) {
    const wk_json *e = wk_json_at(all, k);
    const char *file = wk_json_str(wk_json_get(e, "file"), NULL);
    if (!file) continue;   // a real model's, below
    wk_tokenizer *tok = wk_tokenizer_load_json(fixture(file));
    CHECK(tok != NULL, "load %s", file);
    if (!tok) continue;
    check_corpus(tok, e->key, lines, e, false, false);
    wk_tokenizer_free(tok);
  }

  // lookups on the GPT-2 and Llama-3 style fixtures
  wk_tokenizer *g = wk_tokenizer_load_json(fixture("gpt2.json"));
  wk_tokenizer *l3 = wk_tokenizer_load_json(fixture("llama3.json"));
  wk_tokenizer *wp = wk_tokenizer_load_json(fixture("wordpiece.json"));
  CHECK(g && l3 && wp, "fixtures load");
  if (g && l3 && wp) {
    CHECK(wk_tokenizer_token_id(g, "<|im_end|>") == 2, "special token lookup");
    CHECK(wk_tokenizer_is_special(g, 2) && !wk_tokenizer_is_special(g, 100), "is_special");
    CHECK(wk_tokenizer_token_id(g, "no such token") == -1, "unknown token lookup");
    CHECK(wk_tokenizer_vocab_size(g) == 2002, "vocab size %zu", wk_tokenizer_vocab_size(g));
    int32_t sp = wk_tokenizer_token_id(g, "\xc4\xa0");   // "Ġ"
    size_t bl;
    const char *b = wk_tokenizer_token_bytes(g, sp, &bl);
    CHECK(sp >= 0 && b && bl == 1 && b[0] == ' ', "byte-level token bytes");
    CHECK(wk_tokenizer_bos(l3) == wk_tokenizer_token_id(l3, "<|begin_of_text|>") &&
          wk_tokenizer_bos(l3) >= 0, "bos from the post-processor");
    CHECK(wk_tokenizer_bos(g) == -1 && wk_tokenizer_eos(g) == -1, "no bos / eos in gpt2.json");
    CHECK(wk_tokenizer_token_id(wp, "[CLS]") == 2, "[CLS]");
    // bytes of a token can be an incomplete UTF-8 sequence: "😀" is 4 byte tokens here
    int32_t *ids;
    size_t n;
    CHECK(!wk_tokenizer_encode(g, "\xf0\x9f\x98\x80", 4, false, &ids, &n) && n >= 1, "emoji");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
      wk_tokenizer_token_bytes(g, ids[i], &bl);
      total += bl;
    }
    CHECK(total == 4, "emoji token bytes add up to 4 (%zu)", total);
    free(ids);
    // long words go through the heap merge: same ids as the result of HF for the
    // shorter repeated piece is not known, but decode must round-trip
    size_t big = 100000;
    char *s = malloc(big + 1);
    for (size_t i = 0; i < big; i++) s[i] = "abcdefgh"[i % 8];
    s[big] = 0;
    char *out = NULL;
    size_t ol;
    CHECK(!wk_tokenizer_encode(g, s, big, false, &ids, &n) &&
          !wk_tokenizer_decode(g, ids, n, &out, &ol) && ol == big && !memcmp(out, s, big),
          "100 KB word round-trips");
    free(ids);
    free(out);
    free(s);
  }
  wk_tokenizer_free(g);
  wk_tokenizer_free(l3);
  wk_tokenizer_free(wp);

  // the constructor from arrays (GGUF's layout) gives the same ids
  const wk_json *ex = wk_json_get(doc, "expected");
  check_from_arrays("gpt2.json", WK_PRETOK_GPT2, lines, wk_json_get(ex, "gpt2"), "gpt2 (arrays)");
  check_from_arrays("llama3.json", WK_PRETOK_LLAMA3, lines, wk_json_get(ex, "llama3"),
                    "llama3 (arrays)");
  check_from_arrays("qwen2.json", WK_PRETOK_QWEN2, lines, wk_json_get(ex, "qwen2"), "qwen2 (arrays)");
  check_from_arrays("smollm2.json", WK_PRETOK_SMOLLM, lines, wk_json_get(ex, "smollm2"),
                    "smollm2 (arrays)");

  // GGUF: the SmolLM2-style fixture's vocabulary as tokenizer.ggml.* keys
  wk_tokenizer *gg = from_gguf(fixture("smollm2_vocab.gguf"));
  CHECK(gg != NULL, "wk_tokenizer_from_gguf(smollm2_vocab.gguf)");
  if (gg) {
    check_corpus(gg, "smollm2 (gguf)", lines, wk_json_get(ex, "smollm2"), true, false);
    CHECK(wk_tokenizer_bos(gg) == 1 && wk_tokenizer_eos(gg) == 2, "GGUF bos / eos");
    wk_tokenizer_free(gg);
  }

  check_errors();
  check_invalid_utf8();
  check_long_marks();
  check_gguf_special_types();
  check_gguf_template_type();
  check_corrupt_siblings();

  // real models, when models/ has them (tools/fetch-models)
  const char *mdir = getenv("WICK_MODELS");
  char mbuf[1200], found[2048];
  if (!mdir) { snprintf(mbuf, sizeof mbuf, "%smodels", test_repo_root()); mdir = mbuf; }
  const wk_json *smol = wk_json_get(ex, "smollm2_real"), *mini = wk_json_get(ex, "minilm_real");
  if (smol && find_file(mdir, "SmolLM2-135M-Instruct.Q4_1.gguf", "", found, sizeof found, 0)) {
    wk_tokenizer *t = from_gguf(found);
    CHECK(t != NULL, "SmolLM2 tokenizer from %s", found);
    if (t) { check_corpus(t, "smollm2_real", lines, smol, true, false); wk_tokenizer_free(t); }
  } else {
    printf("skipped: SmolLM2 GGUF not found under %s (tools/fetch-models)\n", mdir);
  }
  bool mini_found = mini && find_file(mdir, "tokenizer.json", "minilm", found, sizeof found, 0);
  if (mini_found) {
    wk_tokenizer *t = wk_tokenizer_load_json(found);
    CHECK(t != NULL, "MiniLM tokenizer %s", found);
    if (t) { check_corpus(t, "minilm_real", lines, mini, false, false); wk_tokenizer_free(t); }
  } else {
    printf("skipped: all-MiniLM-L6-v2 tokenizer.json not found under %s (tools/fetch-models)\n",
           mdir);
  }
  wk_json_free(doc);
  free(text);
  return check_report();
}
