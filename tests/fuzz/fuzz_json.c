// libFuzzer target: the strict JSON parser (src/io/json.c) and the writer helpers.
// Invariants on every document that parses:
//   - every string (values and keys) re-written with wk_json_write_string parses back
//     to the same bytes;
//   - the whole tree re-serialized (strings, numbers via wk_json_write_number) parses
//     back to an equal tree (numbers compared as doubles).
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "io/json.h"

static void serialize(wk_jbuf *b, const wk_json *v) {
  switch (v->type) {
  case WK_JSON_NULL: wk_jbuf_puts(b, "null"); break;
  case WK_JSON_BOOL: wk_jbuf_puts(b, v->b ? "true" : "false"); break;
  case WK_JSON_NUMBER: wk_json_write_number(b, v->d); break;
  case WK_JSON_STRING: wk_json_write_string(b, v->s, v->n); break;
  case WK_JSON_ARRAY:
  case WK_JSON_OBJECT:
    wk_jbuf_puts(b, v->type == WK_JSON_ARRAY ? "[" : "{");
    for (size_t i = 0; i < v->n; i++) {
      if (i) wk_jbuf_puts(b, ",");
      if (v->type == WK_JSON_OBJECT) {
        wk_json_write_string(b, v->items[i].key, v->items[i].keylen);
        wk_jbuf_puts(b, ":");
      }
      serialize(b, &v->items[i]);
    }
    wk_jbuf_puts(b, v->type == WK_JSON_ARRAY ? "]" : "}");
    break;
  }
}

static void check_string_roundtrip(const char *s, size_t n) {
  wk_jbuf b = {0};
  wk_json_write_string(&b, s, n);
  assert(!b.failed);
  wk_json *r = wk_json_parse(b.data, b.len, "fuzz-string", NULL);
  assert(r && r->type == WK_JSON_STRING);
  assert(r->n == n && memcmp(r->s, s, n) == 0);
  assert(r->s[n] == '\0');
  wk_json_free(r);
  wk_jbuf_free(&b);
}

static void equal(const wk_json *a, const wk_json *b) {
  assert(a->type == b->type);
  switch (a->type) {
  case WK_JSON_NULL: break;
  case WK_JSON_BOOL: assert(a->b == b->b); break;
  case WK_JSON_NUMBER: assert(a->d == b->d); break;
  case WK_JSON_STRING: assert(a->n == b->n && memcmp(a->s, b->s, a->n) == 0); break;
  case WK_JSON_ARRAY:
  case WK_JSON_OBJECT:
    assert(a->n == b->n);
    assert(wk_json_len(a) == a->n);
    for (size_t i = 0; i < a->n; i++) {
      if (a->type == WK_JSON_OBJECT) {
        assert(a->items[i].keylen == b->items[i].keylen &&
               memcmp(a->items[i].key, b->items[i].key, a->items[i].keylen) == 0);
        // lookups by key agree with positions (keys are unique; an embedded NUL
        // makes the C-string lookup ambiguous, so only check keys without one)
        if (strlen(a->items[i].key) == a->items[i].keylen)
          assert(wk_json_get(a, a->items[i].key) == &a->items[i]);
      }
      assert(wk_json_at(a, i) == &a->items[i]);
      equal(&a->items[i], &b->items[i]);
    }
    break;
  }
}

static void walk_strings(const wk_json *v) {
  if (v->type == WK_JSON_STRING) check_string_roundtrip(v->s, v->n);
  if (v->type == WK_JSON_ARRAY || v->type == WK_JSON_OBJECT)
    for (size_t i = 0; i < v->n; i++) {
      if (v->type == WK_JSON_OBJECT) check_string_roundtrip(v->items[i].key, v->items[i].keylen);
      walk_strings(&v->items[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  // small limits so that deep / huge inputs exercise the limit paths quickly
  wk_json_limits lim = {.max_bytes = 1 << 20, .max_depth = 64, .max_values = 100000};
  wk_json *doc = wk_json_parse((const char *)data, size, "fuzz.json", &lim);
  if (!doc) return 0;
  walk_strings(doc);
  wk_jbuf b = {0};
  serialize(&b, doc);
  assert(!b.failed && b.len > 0);
  wk_json *again = wk_json_parse(b.data, b.len, "fuzz-reserialized", &lim);
  assert(again);
  equal(doc, again);
  wk_json_free(again);
  wk_jbuf_free(&b);
  wk_json_free(doc);
  return 0;
}
