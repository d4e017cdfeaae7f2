// JSON text output: a growable buffer, string escaping and round-tripping numbers.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/json.h"

void wk_jbuf_free(wk_jbuf *b) {
  free(b->data);
  *b = (wk_jbuf){0};
}

static bool reserve(wk_jbuf *b, size_t extra) {
  if (b->failed) return false;
  if (b->cap - b->len > extra) return true;  // keeps room for the NUL
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len <= extra) {
    if (cap > SIZE_MAX / 2) { b->failed = true; return false; }
    cap *= 2;
  }
  char *d = realloc(b->data, cap);
  if (!d) { b->failed = true; return false; }
  b->data = d;
  b->cap = cap;
  return true;
}

void wk_jbuf_put(wk_jbuf *b, const char *s, size_t n) {
  if (!reserve(b, n)) return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = 0;
}

void wk_jbuf_puts(wk_jbuf *b, const char *s) { wk_jbuf_put(b, s, strlen(s)); }

void wk_jbuf_printf(wk_jbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || !reserve(b, (size_t)n)) { b->failed = true; return; }
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

// Same rules as the parser's check (json.c), repeated to keep the writer standalone.
static size_t valid_utf8(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0], lo = 0x80, hi = 0xBF;
  size_t n;
  if (c < 0x80) return 1;
  else if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) { n = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
  else if (c >= 0xF0 && c <= 0xF4) { n = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
  else return 0;
  if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < n; k++) if ((p[k] & 0xC0) != 0x80) return 0;
  return n;
}

size_t wk_json_utf8_check(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  for (size_t k; p < end; p += k)
    if (!(k = valid_utf8(p, end))) break;
  return (size_t)(p - (const unsigned char *)s);
}

void wk_json_write_string(wk_jbuf *b, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  wk_jbuf_put(b, "\"", 1);
  while (p < end) {
    const unsigned char *run = p;  // copy runs of characters that need no escape at once
    while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
    if (p > run) wk_jbuf_put(b, (const char *)run, (size_t)(p - run));
    if (p >= end) break;
    unsigned c = *p;
    if (c >= 0x80) {
      size_t k = valid_utf8(p, end);
      if (k) wk_jbuf_put(b, (const char *)p, k);
      else wk_jbuf_put(b, "\xEF\xBF\xBD", 3);
      p += k ? k : 1;
      continue;
    }
    p++;
    switch (c) {
      case '"': wk_jbuf_put(b, "\\\"", 2); break;
      case '\\': wk_jbuf_put(b, "\\\\", 2); break;
      case '\n': wk_jbuf_put(b, "\\n", 2); break;
      case '\r': wk_jbuf_put(b, "\\r", 2); break;
      case '\t': wk_jbuf_put(b, "\\t", 2); break;
      case '\b': wk_jbuf_put(b, "\\b", 2); break;
      case '\f': wk_jbuf_put(b, "\\f", 2); break;
      default: wk_jbuf_printf(b, "\\u%04x", c);
    }
  }
  wk_jbuf_put(b, "\"", 1);
}

void wk_json_write_number(wk_jbuf *b, double v) {
  if (!isfinite(v)) { wk_jbuf_put(b, "null", 4); return; }
  if (v == floor(v) && fabs(v) < 9007199254740992.0) { wk_jbuf_printf(b, "%lld", (long long)v); return; }
  // shortest of %.15g / %.17g that reads back exactly; the locale's decimal point is replaced
  char t[40];
  snprintf(t, sizeof t, "%.15g", v);
  if (strtod(t, NULL) != v) snprintf(t, sizeof t, "%.17g", v);
  for (char *c = t; *c; c++) if (*c == ',') *c = '.';
  wk_jbuf_puts(b, t);
}
