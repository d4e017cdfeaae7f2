// libFuzzer target: tokenizer.json loading (wk_tokenizer_from_json) and encoding.
// The first input byte picks the mode:
//   0..63    : the rest is a tokenizer.json; if it loads, encode and decode a short
//              fixed text and the input itself;
//   64..255  : the rest is text, encoded with a fixture tokenizer (byte % 5 picks
//              llama3, smollm2, gpt2, bytefallback, wordpiece). For llama3 and smollm2
//              (byte-level BPE, no normalizer, no lstrip/rstrip added tokens) valid UTF-8
//              must round-trip: decode(encode(x)) == x.
// Fixtures load from WK_FIXTURE_DIR (set at build time by run.sh) or $WICK_FIXTURES.
#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wick/tokenizer.h"

#ifndef WK_FIXTURE_DIR
#define WK_FIXTURE_DIR "tests/fixtures"
#endif

static const char *fixture_names[5] = {"llama3", "smollm2", "gpt2", "bytefallback", "wordpiece"};
static wk_tokenizer *fixtures[5];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  const char *dir = getenv("WICK_FIXTURES");
  if (!dir) dir = WK_FIXTURE_DIR;
  for (int i = 0; i < 5; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tok/%s.json", dir, fixture_names[i]);
    fixtures[i] = wk_tokenizer_load_json(path);
    if (!fixtures[i]) { fprintf(stderr, "fuzz_tokenizer: %s\n", wk_last_error()); abort(); }
  }
  return 0;
}

static bool valid_utf8(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    size_t len; uint32_t cp, min;
    if (c < 0x80) { i++; continue; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Encodes text, checks ids are in range, decodes; returns the decoded text (caller frees).
static char *encode_decode(const wk_tokenizer *tok, const char *text, size_t len, bool special,
                           size_t *out_len) {
  int32_t *ids = NULL; size_t n = 0;
  if (wk_tokenizer_encode(tok, text, len, special, &ids, &n) != WK_OK) return NULL;
  size_t V = wk_tokenizer_vocab_size(tok);
  for (size_t i = 0; i < n; i++) {
    assert(ids[i] >= 0 && (size_t)ids[i] < V);
    size_t bl;
    (void)wk_tokenizer_token_bytes(tok, ids[i], &bl);
  }
  char *out = NULL; size_t ol = 0;
  wk_status st = wk_tokenizer_decode(tok, ids, n, &out, &ol);
  free(ids);
  if (st != WK_OK) return NULL;
  assert(out && out[ol] == '\0');
  *out_len = ol;
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t mode = data[0];
  const char *rest = (const char *)data + 1;
  size_t n = size - 1;
  if (mode < 64) {
    wk_tokenizer *tok = wk_tokenizer_from_json(rest, n, "fuzz/tokenizer.json");
    if (!tok) return 0;
    size_t ol;
    char *o = encode_decode(tok, "Hello world! 123 <|endoftext|>", 30, true, &ol);
    free(o);
    o = encode_decode(tok, rest, n < 256 ? n : 256, mode & 1, &ol);
    free(o);
    wk_tokenizer_free(tok);
    return 0;
  }
  int which = mode % 5;
  const wk_tokenizer *tok = fixtures[which];
  bool roundtrip = which <= 1 && valid_utf8((const uint8_t *)rest, n);
  size_t ol = 0;
  char *o = encode_decode(tok, rest, n, (mode >> 3) & 1, &ol);
  if (roundtrip) {
    assert(o && "encode/decode failed on valid UTF-8");
    bool special = (mode >> 3) & 1;
    if (!special) {
      if (ol != n || memcmp(o, rest, n) != 0) {
        fprintf(stderr, "round-trip mismatch (%s): in %zu bytes, out %zu bytes\n",
                fixture_names[which], n, ol);
        abort();
      }
    }
  }
  free(o);
  return 0;
}
