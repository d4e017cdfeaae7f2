// Strict recursive-descent JSON parser. Values of a container are collected on a
// scratch stack and copied into the arena in one block when the container closes,
// so the tree costs one node per value and nothing else.
#include "io/json.h"
#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"

#define DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define DEFAULT_MAX_DEPTH 128
#define HARD_MAX_DEPTH 1000   // recursion the stack can afford, even on small thread stacks
#define DEFAULT_MAX_VALUES ((size_t)4 << 20)

// ---- arena ----
typedef struct chunk {
  struct chunk *next;
  size_t used, cap;
  max_align_t data[];
} chunk;

typedef struct {
  chunk *chunks;
  wk_json root;
} doc;

static void *arena_alloc(doc *d, size_t bytes) {
  bytes = (bytes + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
  chunk *c = d->chunks;
  if (!c || c->cap - c->used < bytes) {
    size_t cap = bytes > ((size_t)64 << 10) ? bytes : ((size_t)64 << 10);
    c = malloc(sizeof(chunk) + cap);
    if (!c) return NULL;
    c->cap = cap;
    c->used = 0;
    c->next = d->chunks;
    d->chunks = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += bytes;
  return p;
}

void wk_json_free(wk_json *root) {
  if (!root) return;
  doc *d = (doc *)((char *)root - offsetof(doc, root));
  for (chunk *c = d->chunks, *n; c; c = n) { n = c->next; free(c); }
  free(d);
}

// ---- parser state ----
typedef struct {
  const char *start, *p, *end;
  const char *source;
  wk_json_limits lim;
  size_t nvalues;
  doc *d;
  wk_json *stk;
  size_t nstk, capstk;
  bool failed;
} parser;

static bool fail_at(parser *ps, const char *at, const char *fmt, const char *arg) {
  if (ps->failed) return false;
  ps->failed = true;
  long line = 1, col = 1;
  for (const char *q = ps->start; q < at && q < ps->end; q++) {
    if (*q == '\n') { line++; col = 1; }
    else if (((unsigned char)*q & 0xC0) != 0x80) col++;
  }
  char msg[256];
  snprintf(msg, sizeof msg, fmt, arg ? arg : "");
  wk_error(WK_ERR_IO, "%s:%ld:%ld: JSON: %s", ps->source, line, col, msg);
  return false;
}
#define FAIL(ps, msg) fail_at(ps, (ps)->p, msg, NULL)

static void skip_ws(parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static bool count_value(parser *ps) {
  if (++ps->nvalues <= ps->lim.max_values) return true;
  char lim[32];
  snprintf(lim, sizeof lim, "%zu", ps->lim.max_values);
  return fail_at(ps, ps->p, "more values than the limit of %s", lim);
}

static bool push(parser *ps, const wk_json *v) {
  if (ps->nstk == ps->capstk) {
    size_t cap = ps->capstk ? ps->capstk * 2 : 64;
    wk_json *s = realloc(ps->stk, cap * sizeof *s);
    if (!s) { ps->failed = true; wk_error(WK_ERR_OOM, "%s: JSON: out of memory", ps->source); return false; }
    ps->stk = s;
    ps->capstk = cap;
  }
  ps->stk[ps->nstk++] = *v;
  return true;
}

static void *alloc_or_fail(parser *ps, size_t bytes) {
  void *p = arena_alloc(ps->d, bytes ? bytes : 1);
  if (!p) { ps->failed = true; wk_error(WK_ERR_OOM, "%s: JSON: out of memory", ps->source); }
  return p;
}

// ---- strings ----
static int hex4(const char *p) {
  int v = 0;
  for (int k = 0; k < 4; k++) {
    char c = p[k];
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

static size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

// Length of the valid UTF-8 sequence at p (1..4), or 0 if it is invalid or cut off.
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  size_t n;
  unsigned lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  else if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) { n = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
  else if (c >= 0xF0 && c <= 0xF4) { n = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < n; k++) if ((p[k] & 0xC0) != 0x80) return 0;
  return n;
}

// Parses the string at ps->p (which is '"') into arena memory.
static bool parse_string(parser *ps, char **out, size_t *outlen) {
  const char *open = ps->p++;
  // First pass: find the closing quote and validate, so the decoded copy fits in raw length.
  const char *q = ps->p;
  for (;;) {
    if (q >= ps->end) return fail_at(ps, open, "unterminated string", NULL);
    unsigned char c = (unsigned char)*q;
    if (c == '"') break;
    if (c < 0x20) return fail_at(ps, q, "control character in string (escape it as \\u00XX)", NULL);
    if (c == '\\') {
      if (q + 1 >= ps->end) return fail_at(ps, open, "unterminated string", NULL);
      q += 2;
      continue;
    }
    size_t n = utf8_len((const unsigned char *)q, (const unsigned char *)ps->end);
    if (!n) return fail_at(ps, q, "invalid UTF-8 in string", NULL);
    q += n;
  }
  size_t raw = (size_t)(q - ps->p);
  char *o = alloc_or_fail(ps, raw + 1);
  if (!o) return false;
  size_t len = 0;
  const char *p = ps->p;
  while (p < q) {
    if (*p != '\\') { o[len++] = *p++; continue; }
    const char *esc = p;
    char e = p[1];
    p += 2;
    switch (e) {
      case '"': o[len++] = '"'; break;
      case '\\': o[len++] = '\\'; break;
      case '/': o[len++] = '/'; break;
      case 'b': o[len++] = '\b'; break;
      case 'f': o[len++] = '\f'; break;
      case 'n': o[len++] = '\n'; break;
      case 'r': o[len++] = '\r'; break;
      case 't': o[len++] = '\t'; break;
      case 'u': {
        int h = q - p >= 4 ? hex4(p) : -1;
        if (h < 0) return fail_at(ps, esc, "\\u must be followed by four hex digits", NULL);
        p += 4;
        uint32_t cp = (uint32_t)h;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail_at(ps, esc, "lone low surrogate \\u%.4s", esc + 2);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          int lo = q - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
          if (lo < 0xDC00 || lo > 0xDFFF)
            return fail_at(ps, esc, "high surrogate \\u%.4s not followed by a low surrogate", esc + 2);
          p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
        }
        len += put_utf8(o + len, cp);  // never longer than its escape
        break;
      }
      default: {
        char bad[2] = {e, 0};
        return fail_at(ps, esc, "invalid escape \\%s", bad);
      }
    }
  }
  o[len] = 0;
  ps->p = q + 1;
  *out = o;
  *outlen = len;
  return true;
}

// ---- numbers ----
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool parse_number(parser *ps, wk_json *v) {
  const char *s = ps->p, *p = s;
  bool integral = true;
  if (p < ps->end && *p == '-') p++;
  if (p >= ps->end || !is_digit(*p)) return fail_at(ps, s, "invalid number", NULL);
  if (*p == '0') {
    p++;
    if (p < ps->end && is_digit(*p)) return fail_at(ps, s, "leading zeros are not allowed in numbers", NULL);
  } else {
    while (p < ps->end && is_digit(*p)) p++;
  }
  if (p < ps->end && *p == '.') {
    integral = false;
    p++;
    if (p >= ps->end || !is_digit(*p)) return fail_at(ps, p, "expected a digit after '.'", NULL);
    while (p < ps->end && is_digit(*p)) p++;
  }
  if (p < ps->end && (*p == 'e' || *p == 'E')) {
    integral = false;
    p++;
    if (p < ps->end && (*p == '+' || *p == '-')) p++;
    if (p >= ps->end || !is_digit(*p)) return fail_at(ps, p, "expected a digit in the exponent", NULL);
    while (p < ps->end && is_digit(*p)) p++;
  }
  size_t n = (size_t)(p - s);
  // strtod needs a terminated copy, with the locale's decimal point.
  char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
  if (!buf) { ps->failed = true; wk_error(WK_ERR_OOM, "%s: JSON: out of memory", ps->source); return false; }
  memcpy(buf, s, n);
  buf[n] = 0;
  const char *dp = localeconv()->decimal_point;
  if (dp && dp[0] && dp[0] != '.' && !dp[1]) {
    char *dot = strchr(buf, '.');
    if (dot) *dot = dp[0];
  }
  errno = 0;
  double d = strtod(buf, NULL);
  bool overflow = errno == ERANGE && (d > 1.0 || d < -1.0);
  *v = (wk_json){.type = WK_JSON_NUMBER, .d = d};
  if (integral) {
    // exact int64 from the digits, when it fits
    bool neg = s[0] == '-';
    uint64_t acc = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    bool fits = true;
    for (const char *q = s + neg; q < p && fits; q++) {
      uint64_t dig = (uint64_t)(*q - '0');
      if (acc > (limit - dig) / 10) fits = false;
      else acc = acc * 10 + dig;
    }
    if (fits) {
      v->is_int = true;
      v->i = neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
    }
  } else if (!overflow && d >= -9007199254740992.0 && d <= 9007199254740992.0 && d == (double)(int64_t)d) {
    v->is_int = true;  // like 2.0 or 1e3: integral, and exact in a double
    v->i = (int64_t)d;
  }
  if (buf != small) free(buf);
  if (overflow) return fail_at(ps, s, "number out of the range of a double", NULL);
  ps->p = p;
  return true;
}

// ---- values ----
static bool parse_value(parser *ps, wk_json *v, int depth);

static int key_cmp(const void *a, const void *b) {
  const wk_json *x = *(const wk_json *const *)a, *y = *(const wk_json *const *)b;
  size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
  int c = memcmp(x->key, y->key, n);
  return c ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

static bool check_duplicates(parser *ps, const wk_json *items, size_t n, const char *at) {
  if (n < 2) return true;
  const wk_json *dup = NULL;
  if (n <= 16) {
    for (size_t i = 1; i < n && !dup; i++)
      for (size_t j = 0; j < i; j++)
        if (items[i].keylen == items[j].keylen && !memcmp(items[i].key, items[j].key, items[i].keylen)) {
          dup = &items[i];
          break;
        }
  } else {
    const wk_json **idx = malloc(n * sizeof *idx);
    if (!idx) { ps->failed = true; wk_error(WK_ERR_OOM, "%s: JSON: out of memory", ps->source); return false; }
    for (size_t i = 0; i < n; i++) idx[i] = &items[i];
    qsort(idx, n, sizeof *idx, key_cmp);
    for (size_t i = 1; i < n; i++)
      if (!key_cmp(&idx[i - 1], &idx[i])) { dup = idx[i]; break; }
    free(idx);
  }
  if (dup) return fail_at(ps, at, "duplicate key \"%.100s\" in the object that starts here", dup->key);
  return true;
}

static bool parse_container(parser *ps, wk_json *v, int depth, bool is_obj) {
  const char *open = ps->p;
  if (depth >= ps->lim.max_depth) {
    char lim[32];
    snprintf(lim, sizeof lim, "%d", ps->lim.max_depth);
    return fail_at(ps, open, "arrays and objects nested deeper than the limit of %s", lim);
  }
  char close = is_obj ? '}' : ']';
  ps->p++;
  size_t base = ps->nstk;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
  } else {
    for (;;) {
      wk_json item;
      char *key = NULL;
      size_t keylen = 0;
      skip_ws(ps);
      if (is_obj) {
        if (ps->p >= ps->end || *ps->p != '"')
          return ps->p >= ps->end ? FAIL(ps, "unexpected end of input: expected an object key") : FAIL(ps, "expected a string key");
        if (!parse_string(ps, &key, &keylen)) return false;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') return FAIL(ps, "expected ':' after the object key");
        ps->p++;
      }
      if (!parse_value(ps, &item, depth + 1)) return false;
      item.key = key;
      item.keylen = keylen;
      if (!push(ps, &item)) return false;
      skip_ws(ps);
      if (ps->p >= ps->end)
        return fail_at(ps, ps->p, is_obj ? "unexpected end of input: expected ',' or '}'" : "unexpected end of input: expected ',' or ']'", NULL);
      if (*ps->p == ',') {
        ps->p++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == close) return FAIL(ps, "trailing comma");
        continue;
      }
      if (*ps->p == close) { ps->p++; break; }
      return fail_at(ps, ps->p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'", NULL);
    }
  }
  size_t n = ps->nstk - base;
  *v = (wk_json){.type = is_obj ? WK_JSON_OBJECT : WK_JSON_ARRAY, .n = n};
  if (n) {
    v->items = alloc_or_fail(ps, n * sizeof(wk_json));
    if (!v->items) return false;
    memcpy(v->items, ps->stk + base, n * sizeof(wk_json));
  }
  ps->nstk = base;
  if (is_obj && !check_duplicates(ps, v->items, n, open)) return false;
  return true;
}

static bool literal(parser *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return false;
  ps->p += n;
  return true;
}

static bool parse_value(parser *ps, wk_json *v, int depth) {
  skip_ws(ps);
  if (ps->p >= ps->end) return FAIL(ps, "unexpected end of input: expected a value");
  if (!count_value(ps)) return false;
  char c = *ps->p;
  switch (c) {
    case '{': return parse_container(ps, v, depth, true);
    case '[': return parse_container(ps, v, depth, false);
    case '"':
      *v = (wk_json){.type = WK_JSON_STRING};
      return parse_string(ps, &v->s, &v->n);
    case 't': case 'f': case 'n':
      if (literal(ps, "true")) { *v = (wk_json){.type = WK_JSON_BOOL, .b = true}; return true; }
      if (literal(ps, "false")) { *v = (wk_json){.type = WK_JSON_BOOL, .b = false}; return true; }
      if (literal(ps, "null")) { *v = (wk_json){.type = WK_JSON_NULL}; return true; }
      break;
    default:
      if (c == '-' || is_digit(c)) return parse_number(ps, v);
  }
  if (c == '}' || c == ']') return FAIL(ps, "unexpected closing bracket: expected a value");
  if (c == '\'') return FAIL(ps, "strings must use double quotes");
  return FAIL(ps, "expected a value (object, array, string, number, true, false or null)");
}

wk_json *wk_json_parse(const char *text, size_t len, const char *source, const wk_json_limits *lim) {
  if (!source) source = "<json>";
  if (!text && len) { wk_error(WK_ERR_ARG, "%s: JSON: text is NULL", source); return NULL; }
  if (!text) text = "";
  parser ps = {.start = text, .p = text, .end = text + len, .source = source};
  if (lim) ps.lim = *lim;
  if (!ps.lim.max_bytes) ps.lim.max_bytes = DEFAULT_MAX_BYTES;
  if (ps.lim.max_depth <= 0) ps.lim.max_depth = DEFAULT_MAX_DEPTH;
  if (ps.lim.max_depth > HARD_MAX_DEPTH) ps.lim.max_depth = HARD_MAX_DEPTH;
  if (!ps.lim.max_values) ps.lim.max_values = DEFAULT_MAX_VALUES;
  if (len > ps.lim.max_bytes) {
    wk_error(WK_ERR_IO, "%s: JSON: %zu bytes is more than the limit of %zu", source, len, ps.lim.max_bytes);
    return NULL;
  }
  ps.d = calloc(1, sizeof(doc));
  if (!ps.d) { wk_error(WK_ERR_OOM, "%s: JSON: out of memory", source); return NULL; }
  if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) ps.p += 3;  // RFC 8259 8.1 allows ignoring a BOM
  bool ok = parse_value(&ps, &ps.d->root, 0);
  if (ok) {
    skip_ws(&ps);
    if (ps.p < ps.end) ok = FAIL(&ps, "unexpected text after the JSON value");
  }
  free(ps.stk);
  if (!ok) { wk_json_free(&ps.d->root); return NULL; }
  return &ps.d->root;
}

// ---- lookups ----
const wk_json *wk_json_get(const wk_json *obj, const char *key) {
  if (!obj || obj->type != WK_JSON_OBJECT || !key) return NULL;
  size_t n = strlen(key);
  for (size_t i = 0; i < obj->n; i++)
    if (obj->items[i].keylen == n && !memcmp(obj->items[i].key, key, n)) return &obj->items[i];
  return NULL;
}

const wk_json *wk_json_at(const wk_json *arr, size_t i) {
  if (!arr || (arr->type != WK_JSON_ARRAY && arr->type != WK_JSON_OBJECT) || i >= arr->n) return NULL;
  return &arr->items[i];
}

size_t wk_json_len(const wk_json *v) {
  return v && (v->type == WK_JSON_ARRAY || v->type == WK_JSON_OBJECT) ? v->n : 0;
}

bool wk_json_is(const wk_json *v, wk_json_type t) { return v && v->type == t; }

const char *wk_json_type_name(const wk_json *v) {
  if (!v) return "missing";
  static const char *const names[] = {"null", "boolean", "number", "string", "array", "object"};
  return (unsigned)v->type < 6 ? names[v->type] : "?";
}

double wk_json_num(const wk_json *v, double def) { return v && v->type == WK_JSON_NUMBER ? v->d : def; }
int64_t wk_json_int(const wk_json *v, int64_t def) { return v && v->type == WK_JSON_NUMBER && v->is_int ? v->i : def; }
bool wk_json_bool(const wk_json *v, bool def) { return v && v->type == WK_JSON_BOOL ? v->b : def; }
const char *wk_json_str(const wk_json *v, const char *def) { return v && v->type == WK_JSON_STRING ? v->s : def; }

wk_status wk_json_check(const char *text, size_t len, const char *source) {
  wk_json *root = wk_json_parse(text, len, source, NULL);
  if (!root) return WK_ERR_ARG;   // (the message says why: syntax, limits or memory)
  wk_json_free(root);
  return WK_OK;
}
