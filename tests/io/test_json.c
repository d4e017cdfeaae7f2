// JSON parser and writer: values, escapes, numbers, strictness, error positions, limits.
#include "io_util.h"
#include <string.h>
#include "check.h"
#include "io/json.h"

static wk_json *parse(const char *s) { return wk_json_parse(s, strlen(s), "t.json", NULL); }

// Parsing `s` fails with a message that contains `want`.
static void bad(const char *s, const char *want) {
  wk_json *j = parse(s);
  CHECK(!j && strstr(wk_last_error(), want) && strstr(wk_last_error(), "t.json"), "'%s' should fail with '%s'", s, want);
  wk_json_free(j);
}

static void test_values(void) {
  const char *s = "{\"s\": \"hi\", \"n\": -12.5, \"i\": 42, \"t\": true, \"f\": false, \"z\": null,"
                  " \"a\": [1, [2, 3], {\"k\": \"v\"}], \"o\": {}, \"e\": []}";
  wk_json *j = parse(s);
  CHECK(j && j->type == WK_JSON_OBJECT && wk_json_len(j) == 9, "object with 9 members");
  CHECK(!strcmp(wk_json_str(wk_json_get(j, "s"), ""), "hi"), "string member");
  CHECK(wk_json_num(wk_json_get(j, "n"), 0) == -12.5, "number member");
  CHECK(wk_json_int(wk_json_get(j, "i"), 0) == 42, "int member");
  CHECK(wk_json_int(wk_json_get(j, "n"), -7) == -7, "fractional number is not an int");
  CHECK(wk_json_bool(wk_json_get(j, "t"), false) && !wk_json_bool(wk_json_get(j, "f"), true), "bools");
  CHECK(wk_json_is(wk_json_get(j, "z"), WK_JSON_NULL), "null");
  const wk_json *a = wk_json_get(j, "a");
  CHECK(wk_json_len(a) == 3 && wk_json_int(wk_json_at(a, 0), 0) == 1, "array");
  CHECK(wk_json_int(wk_json_at(wk_json_at(a, 1), 1), 0) == 3, "nested array");
  CHECK(!strcmp(wk_json_str(wk_json_get(wk_json_at(a, 2), "k"), ""), "v"), "object in array");
  CHECK(wk_json_is(wk_json_get(j, "o"), WK_JSON_OBJECT) && wk_json_len(wk_json_get(j, "o")) == 0, "empty object");
  CHECK(wk_json_is(wk_json_get(j, "e"), WK_JSON_ARRAY) && wk_json_len(wk_json_get(j, "e")) == 0, "empty array");
  // member order is kept, and wk_json_at walks object members
  CHECK(!strcmp(wk_json_at(j, 0)->key, "s") && !strcmp(wk_json_at(j, 8)->key, "e"), "member order");
  // missing keys, wrong types and NULL give defaults
  CHECK(!wk_json_get(j, "missing") && !wk_json_at(a, 3) && !wk_json_get(a, "x"), "missing lookups are NULL");
  CHECK(wk_json_int(NULL, 5) == 5 && wk_json_num(wk_json_get(j, "s"), 1.5) == 1.5, "defaults");
  CHECK(!strcmp(wk_json_str(wk_json_get(j, "i"), "d"), "d") && wk_json_bool(NULL, true), "more defaults");
  CHECK(!strcmp(wk_json_type_name(NULL), "missing") && !strcmp(wk_json_type_name(a), "array"), "type names");
  wk_json_free(j);
  // scalars at the top level, surrounding whitespace, a byte-order mark
  j = parse(" \t\r\n 17 \n");
  CHECK(j && wk_json_int(j, 0) == 17, "top-level number");
  wk_json_free(j);
  j = parse("\xEF\xBB\xBF\"x\"");
  CHECK(j && !strcmp(wk_json_str(j, ""), "x"), "BOM skipped");
  wk_json_free(j);
  wk_json_free(NULL);
}

static void test_numbers(void) {
  struct { const char *s; double d; int is_int; long long i; } ok[] = {
      {"0", 0, 1, 0}, {"-0", 0, 1, 0}, {"123", 123, 1, 123}, {"-45", -45, 1, -45},
      {"9223372036854775807", 9223372036854775807.0, 1, 9223372036854775807LL},
      {"-9223372036854775808", -9223372036854775808.0, 1, (-9223372036854775807LL - 1)},
      {"9223372036854775808", 9223372036854775808.0, 0, 0},
      {"9007199254740993", 9007199254740992.0, 1, 9007199254740993LL},  // exact as int, rounded as double
      {"1.5", 1.5, 0, 0}, {"2.0", 2.0, 1, 2}, {"1e3", 1000, 1, 1000}, {"1E-2", 0.01, 0, 0},
      {"-1.25e+2", -125, 1, -125}, {"0.1", 0.1, 0, 0}, {"1e-400", 0, 1, 0}, {"5e-324", 5e-324, 0, 0},
      {"1.7976931348623157e308", 1.7976931348623157e308, 0, 0}, {"1e20", 1e20, 0, 0}};
  for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
    wk_json *j = parse(ok[k].s);
    CHECK(j && j->type == WK_JSON_NUMBER && j->d == ok[k].d && j->is_int == (bool)ok[k].is_int &&
              (!ok[k].is_int || j->i == ok[k].i),
          "number %s: d=%.17g is_int=%d i=%lld", ok[k].s, j ? j->d : -1, j ? j->is_int : -1, j ? (long long)j->i : 0);
    wk_json_free(j);
  }
  const char *badnum[] = {"01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity", "1.e5"};
  for (size_t k = 0; k < sizeof badnum / sizeof badnum[0]; k++) {
    wk_json *j = parse(badnum[k]);
    CHECK(!j, "'%s' is not a JSON number", badnum[k]);
    wk_json_free(j);
  }
  bad("1e400", "out of the range");
  bad("[-1e999]", "out of the range");
}

static void test_strings(void) {
  wk_json *j = parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"");
  CHECK(j && j->n == 8 && !memcmp(j->s, "\"\\/\b\f\n\r\t", 8), "simple escapes");
  wk_json_free(j);
  j = parse("\"\\u00e9\\u20AC\\ud83d\\ude00\"");
  CHECK(j && !strcmp(j->s, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"), "\\u escapes and a surrogate pair to UTF-8");
  wk_json_free(j);
  j = parse("\"a\\u0000b\"");
  CHECK(j && j->n == 3 && j->s[1] == 0 && j->s[2] == 'b', "\\u0000 kept, length tells");
  wk_json_free(j);
  j = parse("\"\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80 e\xCC\x81\"");
  CHECK(j && !strcmp(j->s, "\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80 e\xCC\x81"), "raw UTF-8 kept");
  wk_json_free(j);
  bad("\"\\ud83d\"", "not followed by a low surrogate");
  bad("\"\\ud83d\\u0041\"", "not followed by a low surrogate");
  bad("\"\\ude00\"", "lone low surrogate");
  bad("\"\\x41\"", "invalid escape \\x");
  bad("\"\\u12\"", "four hex digits");
  bad("\"\\u12G4\"", "four hex digits");
  bad("\"a\nb\"", "control character");
  bad("\"a\tb\"", "control character");
  bad("\"\xC0\xAF\"", "invalid UTF-8");       // overlong '/'
  bad("\"\xED\xA0\x80\"", "invalid UTF-8");   // UTF-8-encoded surrogate
  bad("\"\xF5\x80\x80\x80\"", "invalid UTF-8");
  bad("\"\xE2\x82\"", "invalid UTF-8");       // cut off
  bad("\"\x80\"", "invalid UTF-8");
  bad("\"abc", "unterminated string");
  bad("\"abc\\", "unterminated string");
  bad("'abc'", "double quotes");
}

static void test_structure(void) {
  bad("[1, 2,]", "trailing comma");
  bad("{\"a\": 1,}", "trailing comma");
  bad("{\"a\" 1}", "expected ':'");
  bad("{\"a\": 1 \"b\": 2}", "expected ',' or '}'");
  bad("[1 2]", "expected ',' or ']'");
  bad("[1, 2", "unexpected end of input");
  bad("{\"a\": ", "unexpected end of input");
  bad("{a: 1}", "expected a string key");
  bad("1 2", "unexpected text after");
  bad("", "unexpected end of input");
  bad("   ", "unexpected end of input");
  bad("// c\n1", "expected a value");
  bad("[1] /* c */", "unexpected text after");
  bad("tru", "expected a value");
  bad("nul", "expected a value");
  bad("]", "unexpected closing bracket");
  bad("{\"a\": 1, \"b\": 2, \"a\": 3}", "duplicate key \"a\"");
  // duplicates in a large object are found through the sorted path
  char big[8192];
  size_t o = (size_t)snprintf(big, sizeof big, "{");
  for (int k = 0; k < 300; k++) o += (size_t)snprintf(big + o, sizeof big - o, "\"k%d\": %d, ", k, k);
  snprintf(big + o, sizeof big - o, "\"k123\": 0}");
  bad(big, "duplicate key \"k123\"");
  big[o - 2] = '}';  // same object without the duplicate
  big[o - 1] = 0;
  wk_json *j = parse(big);
  CHECK(j && wk_json_len(j) == 300 && wk_json_int(wk_json_get(j, "k299"), 0) == 299, "300-member object");
  wk_json_free(j);
  // keys differing only after an embedded NUL are different keys
  j = parse("{\"a\\u0000x\": 1, \"a\\u0000y\": 2}");
  CHECK(j && wk_json_len(j) == 2, "keys with NUL compared by length");
  wk_json_free(j);
}

static void test_positions(void) {
  bad("{\n  \"a\": tru\n}", "t.json:2:8: JSON: expected a value");
  bad("[\"\xC3\xA9\", x]", "t.json:1:7:");     // columns count characters, not bytes
  bad("[1,\n2,\n\n  3 4]", "t.json:4:5:");
  bad("{\"k\": \"v\n\"}", "t.json:1:9: JSON: control character");
  bad("{\"a\": 1, \"a\": 2}", "t.json:1:1: JSON: duplicate key");
}

static void test_limits(void) {
  char deep[1024];
  int n = 200;
  for (int k = 0; k < n; k++) deep[k] = '[';
  for (int k = 0; k < n; k++) deep[n + k] = ']';
  deep[2 * n] = 0;
  bad(deep, "nested deeper than the limit of 128");
  wk_json_limits lim = {.max_depth = 300};
  wk_json *j = wk_json_parse(deep, strlen(deep), "t.json", &lim);
  CHECK(j != NULL, "deep nesting within a raised limit");
  wk_json_free(j);
  lim = (wk_json_limits){.max_values = 3};
  j = wk_json_parse("[1,2,3]", 7, "t.json", &lim);
  CHECK(!j && strstr(wk_last_error(), "more values than the limit of 3"), "value count limit");
  lim = (wk_json_limits){.max_values = 4};
  j = wk_json_parse("[1,2,3]", 7, "t.json", &lim);
  CHECK(j != NULL, "value count within the limit");
  wk_json_free(j);
  lim = (wk_json_limits){.max_bytes = 4};
  j = wk_json_parse("[1,2,3]", 7, "t.json", &lim);
  CHECK(!j && strstr(wk_last_error(), "more than the limit of 4"), "size limit");
  // lengths are honoured: no NUL terminator needed, text after len ignored
  j = wk_json_parse("[1,2]garbage", 5, "t.json", NULL);
  CHECK(j && wk_json_len(j) == 2, "parse stops at len");
  wk_json_free(j);
}

// Every prefix and many one-byte corruptions of a document fail cleanly or parse.
static void test_robustness(void) {
  const char *doc = "{\"a\": [1, -2.5e3, \"x\\u00e9\\ud83d\\ude00\", {\"b\": null}], \"c\": true, \"\xC3\xA9\": \"\\n\"}";
  size_t len = strlen(doc);
  int parsed = 0, failed = 0;
  for (size_t n = 0; n <= len; n++) {
    char *buf = malloc(n ? n : 1);  // exactly n bytes, so ASan sees any over-read
    memcpy(buf, doc, n);
    wk_json *j = wk_json_parse(buf, n, "t.json", NULL);
    if (j) parsed++;
    else failed += strstr(wk_last_error(), "t.json:") != NULL;
    wk_json_free(j);
    free(buf);
  }
  CHECK(parsed == 1 && failed == (int)len, "prefixes: %d parsed, %d failed with a position", parsed, failed);
  const char subs[] = {'"', '\\', '{', '}', '[', ']', ',', ':', 0, (char)0xFF, 'u', '1', ' '};
  int crashes_avoided = 0;
  for (size_t p = 0; p < len; p++)
    for (size_t k = 0; k < sizeof subs; k++) {
      char *buf = malloc(len);
      memcpy(buf, doc, len);
      buf[p] = subs[k];
      wk_clear_error();
      wk_json *j = wk_json_parse(buf, len, "t.json", NULL);
      crashes_avoided += j != NULL || wk_last_error()[0] != 0;
      wk_json_free(j);
      free(buf);
    }
  CHECK(crashes_avoided == (int)(len * sizeof subs), "mutations handled");
}

static void test_writer(void) {
  wk_jbuf b = {0};
  char all[160];
  size_t n = 0;
  for (int c = 1; c < 128; c++) all[n++] = (char)c;
  memcpy(all + n, "\xC3\xA9\xF0\x9F\x98\x80", 6);
  n += 6;
  wk_json_write_string(&b, all, n);
  CHECK(!b.failed && strstr(b.data, "\\u0001") && strstr(b.data, "\\n") && strstr(b.data, "\\\""), "escapes written");
  wk_json *j = wk_json_parse(b.data, b.len, "w.json", NULL);
  CHECK(j && j->n == n && !memcmp(j->s, all, n), "string round trip");
  wk_json_free(j);
  wk_jbuf_free(&b);
  // NUL and invalid UTF-8 still give valid JSON
  wk_json_write_string(&b, "a\0b\xFF\xC3", 5);
  j = wk_json_parse(b.data, b.len, "w.json", NULL);
  CHECK(j && j->n == 9 && !memcmp(j->s, "a\0b\xEF\xBF\xBD\xEF\xBF\xBD", 9), "NUL escaped, bad bytes replaced: %s", b.data);
  wk_json_free(j);
  wk_jbuf_free(&b);
  double nums[] = {0, 1, -5, 123456789012345, 0.1, 1.0 / 3, -2.5e-300, 1.7976931348623157e308, 5e-324, 1e21};
  wk_jbuf_puts(&b, "[");
  for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
    if (k) wk_jbuf_puts(&b, ",");
    wk_json_write_number(&b, nums[k]);
  }
  wk_jbuf_puts(&b, ",");
  wk_json_write_number(&b, NAN);
  wk_jbuf_printf(&b, ",%d]", 7);
  j = wk_json_parse(b.data, b.len, "w.json", NULL);
  bool same = j && wk_json_len(j) == sizeof nums / sizeof nums[0] + 2;
  for (size_t k = 0; same && k < sizeof nums / sizeof nums[0]; k++) same = wk_json_num(wk_json_at(j, k), -1) == nums[k];
  CHECK(same && wk_json_is(wk_json_at(j, 10), WK_JSON_NULL) && wk_json_int(wk_json_at(j, 11), 0) == 7,
        "numbers round trip: %s", b.data);
  CHECK(strstr(b.data, "123456789012345,") != NULL, "integers written without exponent");
  wk_json_free(j);
  wk_jbuf_free(&b);
}

int main(void) {
  test_values();
  test_numbers();
  test_strings();
  test_structure();
  test_positions();
  test_limits();
  test_robustness();
  test_writer();
  return check_report();
}
