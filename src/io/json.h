// A small, strict JSON (RFC 8259) parser into a read-only tree, and a writer helper.
//
//   wk_json *doc = wk_json_parse(text, len, "config.json", NULL);
//   if (!doc) puts(wk_last_error());  // "config.json:3:14: JSON: expected ',' or '}' ..."
//   int64_t layers = wk_json_int(wk_json_get(doc, "num_hidden_layers"), 12);
//   const char *act = wk_json_str(wk_json_get(doc, "hidden_act"), "gelu");
//   wk_json_free(doc);
//
// Strict: one value with optional surrounding whitespace; no comments, trailing
// commas, NaN/Infinity, leading zeros, control characters in strings, invalid UTF-8,
// lone surrogates or duplicate object keys. Strings are decoded to UTF-8 (\uXXXX
// surrogate pairs combined); they are NUL-terminated and also carry their length
// (a "\u0000" escape makes them shorter as C strings). Objects keep member order.
// Ownership: the whole tree lives in one arena that wk_json_free releases; every
// pointer obtained from it dies with it. Getters accept NULL and return the default,
// so lookups chain: wk_json_int(wk_json_get(wk_json_get(doc, "a"), "b"), 0).
// Error positions are 1-based line:column, columns counted in characters.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { WK_JSON_NULL, WK_JSON_BOOL, WK_JSON_NUMBER, WK_JSON_STRING, WK_JSON_ARRAY,
               WK_JSON_OBJECT } wk_json_type;

typedef struct wk_json wk_json;
struct wk_json {
  wk_json_type type;
  bool b;              // BOOL
  bool is_int;         // NUMBER whose value is integral and fits int64 (then i is exact)
  double d;            // NUMBER (nearest double)
  int64_t i;           // NUMBER, when is_int
  size_t n;            // STRING: bytes; ARRAY / OBJECT: items
  union {
    char *s;           // STRING
    wk_json *items;    // ARRAY / OBJECT: n contiguous values
  };
  const char *key;     // member name when this value is inside an object
  size_t keylen;
};

typedef struct {
  size_t max_bytes;    // longest input accepted (default 64 MiB)
  int max_depth;       // deepest nesting of arrays/objects (default 128)
  size_t max_values;   // most values in the document (default 4M): bounds the memory used
} wk_json_limits;

// Parses len bytes of text. `source` names the input in error messages (a file name).
// lim may be NULL for the defaults; zero fields also take the defaults.
// Returns the root value (free with wk_json_free) or NULL with wk_last_error() set.
wk_json *wk_json_parse(const char *text, size_t len, const char *source, const wk_json_limits *lim);
void wk_json_free(wk_json *root);

// ---- lookups (NULL in, NULL out; no error is set for a missing key) ----
const wk_json *wk_json_get(const wk_json *obj, const char *key);   // object member
const wk_json *wk_json_at(const wk_json *arr, size_t i);           // array or object item
size_t wk_json_len(const wk_json *v);                              // items; 0 for scalars
bool wk_json_is(const wk_json *v, wk_json_type t);
const char *wk_json_type_name(const wk_json *v);                   // "object", ..., "missing"

// ---- typed getters: the default when v is NULL or not of that type ----
double wk_json_num(const wk_json *v, double def);
int64_t wk_json_int(const wk_json *v, int64_t def);   // integral numbers only
bool wk_json_bool(const wk_json *v, bool def);
const char *wk_json_str(const wk_json *v, const char *def);

// ---- writer: a growable text buffer (json_write.c) ----
// Appends never fail visibly: after an allocation failure `failed` is set and further
// appends are ignored, so a caller checks once at the end.
typedef struct {
  char *data;          // NUL-terminated when len > 0; owned, release with wk_jbuf_free
  size_t len, cap;
  bool failed;
} wk_jbuf;

void wk_jbuf_free(wk_jbuf *b);
void wk_jbuf_put(wk_jbuf *b, const char *s, size_t n);
void wk_jbuf_puts(wk_jbuf *b, const char *s);
void wk_jbuf_printf(wk_jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Writes s[0..n) as a quoted JSON string: ", \ and control characters escaped,
// valid UTF-8 kept as is, invalid bytes replaced by U+FFFD so the output is valid JSON.
void wk_json_write_string(wk_jbuf *b, const char *s, size_t n);
// Offset of the first byte of s[0..n) that is not valid UTF-8 (what JSON text must
// be), or n when all of it is: writers that must not alter text check first.
size_t wk_json_utf8_check(const char *s, size_t n);
// Writes a number that parses back to the same double (integers without exponent);
// NaN and infinities, which JSON can't express, are written as null.
void wk_json_write_number(wk_jbuf *b, double v);
