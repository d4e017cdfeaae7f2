// Chat templates: recognize a Jinja template as ChatML by its normalized shape, then
// render conversations the way transformers' apply_chat_template does.
//
// wick runs no Jinja. A template is normalized the way transformers' Jinja environment
// reads it (trim_blocks, lstrip_blocks, "-" whitespace control), with the differences
// that don't change the output erased (spacing inside tags, quote style, escapes,
// x['a'] vs x.a, 'a' + 'b' vs 'ab'), and compared with the canonical ChatML shapes. A
// template that normalizes to anything else is refused rather than guessed at.
#include "wick/chat.h"
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "tok/tok.h"

// Markers in normalized text: string literals are LIT_OPEN content LIT_CLOSE, the
// default system prompt of a canonical shape is SYS. Templates holding them are refused.
#define LIT_OPEN '\x01'
#define LIT_CLOSE '\x02'
#define SYS '\x03'

struct wk_chat_template {
  char *default_system;   // NULL: none
  bool fallback;
};

typedef struct { char *p; size_t n, cap; bool failed; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) { b->failed = true; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_chr(sbuf *b, char c) { sb_add(b, &c, 1); }

// A literal's content, folded into the previous literal when only "+" separates them.
static void emit_literal(sbuf *out, const char *s, size_t n) {
  if (out->n >= 2 && out->p[out->n - 2] == LIT_CLOSE && out->p[out->n - 1] == '+') {
    out->n -= 2;
  } else {
    sb_chr(out, LIT_OPEN);
  }
  sb_add(out, s, n);
  sb_chr(out, LIT_CLOSE);
}

// Parses the string literal at t[*i] (a quote) into lit; advances *i past it.
// false for an escape wick does not decode or an unterminated literal.
static bool read_literal(const char *t, size_t n, size_t *i, sbuf *lit) {
  char q = t[(*i)++];
  lit->n = 0;
  sb_add(lit, "", 0);
  while (*i < n && t[*i] != q) {
    char c = t[(*i)++];
    if (c == '\\') {
      if (*i >= n) return false;
      char e = t[(*i)++];
      switch (e) {
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case '\\': case '\'': case '"': c = e; break;
        default: return false;
      }
    }
    sb_chr(lit, c);
  }
  if (*i >= n) return false;
  (*i)++;
  return true;
}

static bool is_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_ident(const char *s, size_t n) {
  if (!n || (s[0] >= '0' && s[0] <= '9')) return false;
  for (size_t k = 0; k < n; k++)
    if (!is_word(s[k])) return false;
  return true;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Two characters that spaces between them keep apart: words ("f or" is no "for"), the
// halves of a tag's delimiter ("% }" is no "%}") or of an operator ("! =" is no "!="):
// Jinja refuses the one and runs the other.
static bool kept_apart(char a, char b) {
  return (is_word(a) && is_word(b)) || ((a == '%' || a == '}' || a == '#') && b == '}') ||
         (a == '{' && (b == '%' || b == '{' || b == '#')) || (a && strchr("!=<>", a) && b == '=') ||
         ((a == '*' || a == '/') && a == b);
}

// The code inside a {{ }} or {% %} tag, t[from..to), spaces dropped but where they keep
// two characters apart.
static bool emit_code(sbuf *out, const char *t, size_t from, size_t to, sbuf *lit) {
  bool gap = false;
  for (size_t i = from; i < to;) {
    char c = t[i];
    if (is_space(c)) { gap = true; i++; continue; }
    if (gap && out->n && kept_apart(out->p[out->n - 1], c)) sb_chr(out, ' ');
    gap = false;
    if (c == '\'' || c == '"') {
      if (!read_literal(t, to, &i, lit)) return false;
      emit_literal(out, lit->p, lit->n);
      continue;
    }
    if (c == '[') {   // x['name'] reads as x.name
      size_t j = i + 1;
      while (j < to && is_space(t[j])) j++;
      if (j < to && (t[j] == '\'' || t[j] == '"')) {
        size_t k = j;
        if (read_literal(t, to, &k, lit) && is_ident(lit->p, lit->n)) {
          while (k < to && is_space(t[k])) k++;
          if (k < to && t[k] == ']') {
            sb_chr(out, '.');
            sb_add(out, lit->p, lit->n);
            i = k + 1;
            continue;
          }
        }
      }
    }
    sb_chr(out, c);
    i++;
  }
  return true;
}

// Template data between tags: what survives trimming is output text, written as
// {{ 'text' }} so that data and printed literals compare alike.
static void emit_data(sbuf *out, const char *t, size_t from, size_t to, bool strip_left, bool trim_newline,
                      bool strip_right, bool lstrip_block) {
  if (strip_left) while (from < to && is_space(t[from])) from++;
  else if (trim_newline && from < to && t[from] == '\n') from++;
  if (strip_right) {
    while (to > from && is_space(t[to - 1])) to--;
  } else if (lstrip_block) {   // spaces from the line's start up to a block tag
    size_t k = to;
    while (k > from && (t[k - 1] == ' ' || t[k - 1] == '\t')) k--;
    if ((k > from && t[k - 1] == '\n') || k == 0) to = k;
  }
  if (to <= from) return;
  sb_str(out, "{{");
  emit_literal(out, t + from, to - from);
  sb_str(out, "}}");
}

// Jinja's lexer first turns \r\n and \r into \n and drops one trailing newline
// (keep_trailing_newline is off in transformers).
static bool unify_newlines(const char *s, sbuf *out) {
  sb_add(out, "", 0);
  for (; *s; s++) {
    if (*s == '\r' && s[1] == '\n') continue;
    sb_chr(out, *s == '\r' ? '\n' : *s);
  }
  if (out->n && out->p[out->n - 1] == '\n') out->p[--out->n] = 0;
  return !out->failed;
}

// Normalizes template text into out. false if it can't be read (unterminated tag or
// literal, an unknown escape, marker bytes: SYS only where is_shape).
static bool normalize(const char *src, bool is_shape, sbuf *out) {
  sbuf lines = {0};
  bool ok = unify_newlines(src, &lines);
  const char *t = lines.p;
  size_t n = lines.n, i = 0;
  sbuf lit = {0};
  bool prev_strip = false, prev_block = false;
  for (size_t k = 0; ok && k < n; k++)
    if (t[k] == LIT_OPEN || t[k] == LIT_CLOSE || (t[k] == SYS && !is_shape)) ok = false;
  while (ok && i <= n) {
    const char *open = NULL;
    for (const char *s = t + i; (s = strchr(s, '{')) != NULL; s++)
      if (s[1] == '{' || s[1] == '%' || s[1] == '#') { open = s; break; }
    size_t j = open ? (size_t)(open - t) : n;
    char kind = open ? open[1] : 0;
    char mark = open && j + 2 < n ? t[j + 2] : 0;
    bool block = kind == '%' || kind == '#';
    emit_data(out, t, i, j, prev_strip, prev_block, mark == '-', block && mark != '+');
    if (!open) break;
    const char *close_s = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    bool plus = block && mark == '+';   // "{%+" and "+%}" are blocks' alone: "{{+ x" is a unary plus
    size_t from = j + 2 + (mark == '-' || plus);
    // the closing marker, outside string literals
    size_t e = from;
    for (; e + 1 < n; e++) {
      if (kind != '#' && (t[e] == '\'' || t[e] == '"')) {
        size_t k = e;
        if (!read_literal(t, n, &k, &lit)) { ok = false; break; }
        e = k - 1;
        continue;
      }
      if (t[e] == close_s[0] && t[e + 1] == close_s[1]) break;
    }
    if (!ok || e + 1 >= n) { ok = false; break; }
    size_t to = e;
    prev_strip = to > from && t[to - 1] == '-';
    plus = block && to > from && t[to - 1] == '+';
    prev_block = block && !plus;   // "+%}" keeps the newline after it
    if (prev_strip || plus) to--;
    if (kind != '#') {
      sb_chr(out, '{');
      sb_chr(out, kind);
      ok = emit_code(out, t, from, to, &lit);
      sb_str(out, kind == '{' ? "}}" : "%}");
    }
    i = e + 2;
  }
  free(lit.p);
  free(lines.p);
  return ok && !out->failed;
}

// The canonical ChatML shapes; SYS stands for the default system prompt.
static const char *const SHAPES[] = {
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
  "{{ '<|im_start|>system\n\x03<|im_end|>\n' }}{% endif %}"
  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
  "{% for message in messages %}"
  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
};

// Matches normalized text against a normalized shape; *sys gets the text that stands
// in for SYS (malloc'd) or NULL when the shape has none.
static bool match_shape(const sbuf *text, const sbuf *shape, char **sys) {
  *sys = NULL;
  const char *s = memchr(shape->p, SYS, shape->n);
  if (!s) return text->n == shape->n && !memcmp(text->p, shape->p, text->n);
  size_t pre = (size_t)(s - shape->p), post = shape->n - pre - 1;
  if (text->n < pre + post || memcmp(text->p, shape->p, pre) ||
      memcmp(text->p + text->n - post, s + 1, post))
    return false;
  size_t len = text->n - pre - post;
  const char *mid = text->p + pre;
  if (memchr(mid, LIT_OPEN, len) || memchr(mid, LIT_CLOSE, len)) return false;
  *sys = wk_tok_strndup(mid, len);
  return *sys != NULL;
}

wk_chat_template *wk_chat_template_chatml(const char *default_system) {
  wk_chat_template *t = calloc(1, sizeof *t);
  if (t && default_system) t->default_system = wk_tok_strndup(default_system, strlen(default_system));
  if (!t || (default_system && !t->default_system)) {
    wk_chat_template_free(t);
    wk_error(WK_ERR_OOM, "chat template: out of memory");
    return NULL;
  }
  return t;
}

static wk_chat_template *fallback(void) {
  wk_chat_template *t = wk_chat_template_chatml(NULL);
  if (t) t->fallback = true;
  return t;
}

// "its first bytes", newlines shown as \n, for the error message.
static void quote_start(const char *text, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; text[i] && o + 4 < cap && i < 60; i++) {
    if (text[i] == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
    else out[o++] = text[i];
  }
  // no cut character at the end: a last lead byte goes unless all its continuation bytes
  // followed (stray continuation bytes go too)
  size_t k = o;
  while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80) k--;
  unsigned char lead = k > 0 ? (unsigned char)out[k - 1] : 0;
  size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (len == 1) o = k;
  else if (o - (k - 1) < len) o = k - 1;
  out[o] = 0;
}

wk_chat_template *wk_chat_template_parse(const char *text, const char *source, int flags) {
  if (!source) source = "chat template";
  if (!text) {
    if (flags & WK_CHAT_FALLBACK_CHATML) return fallback();
    wk_error(WK_ERR_ARG, "%s: no chat template", source);
    return NULL;
  }
  sbuf norm = {0}, shape = {0};
  wk_chat_template *t = NULL;
  if (normalize(text, false, &norm)) {
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0] && !t; k++) {
      shape.n = 0;
      char *sys;
      if (normalize(SHAPES[k], true, &shape) && match_shape(&norm, &shape, &sys)) {
        t = calloc(1, sizeof *t);
        if (t) t->default_system = sys;
        else free(sys);
      }
    }
  }
  bool oom = norm.failed || shape.failed;
  free(norm.p);
  free(shape.p);
  if (t) return t;
  if (oom) { wk_error(WK_ERR_OOM, "%s: out of memory", source); return NULL; }
  if (flags & WK_CHAT_FALLBACK_CHATML) return fallback();
  char q[128];
  quote_start(text, q, sizeof q);
  wk_error(WK_ERR_ARG, "%s: the chat template is not one wick recognizes (ChatML, as SmolLM2's and "
           "Qwen2's); it begins \"%s\"", source, q);
  return NULL;
}

wk_chat_template *wk_chat_template_from_tokenizer(const wk_tokenizer *tok, int flags) {
  if (!tok) { wk_error(WK_ERR_ARG, "chat template: tokenizer is NULL"); return NULL; }
  const char *src = tok->source ? tok->source : "tokenizer";
  if (!tok->chat_template && !(flags & WK_CHAT_FALLBACK_CHATML)) {
    wk_error(WK_ERR_ARG, "%s: the model has no chat template (no tokenizer.chat_template, "
             "chat_template.jinja or tokenizer_config.json chat_template)", src);
    return NULL;
  }
  return wk_chat_template_parse(tok->chat_template, src, flags);
}

void wk_chat_template_free(wk_chat_template *t) {
  if (!t) return;
  free(t->default_system);
  free(t);
}

const char *wk_chat_template_name(const wk_chat_template *t) {
  return t && t->fallback ? "chatml (fallback)" : "chatml";
}
const char *wk_chat_template_default_system(const wk_chat_template *t) { return t ? t->default_system : NULL; }
const char *wk_chat_template_end_of_turn(const wk_chat_template *t) { (void)t; return "<|im_end|>"; }

wk_status wk_chat_apply(const wk_chat_template *t, const wk_chat_message *messages, size_t n,
                        bool add_generation_prompt, char **text, size_t *len, wk_chat_span *spans) {
  if (!t || !text || !len || (n && !messages))
    return wk_error(WK_ERR_ARG, "wk_chat_apply: template, messages, text or len is NULL");
  for (size_t i = 0; i < n; i++)
    if (!messages[i].role || !messages[i].content)
      return wk_error(WK_ERR_ARG, "wk_chat_apply: message %zu has a NULL %s", i,
                      messages[i].role ? "content" : "role");
  sbuf b = {0};
  sb_add(&b, "", 0);
  // the shape injects it inside the message loop: only when there are messages
  if (n && t->default_system && strcmp(messages[0].role, "system")) {
    sb_str(&b, "<|im_start|>system\n");
    sb_str(&b, t->default_system);
    sb_str(&b, "<|im_end|>\n");
  }
  for (size_t i = 0; i < n; i++) {
    wk_chat_span s;
    s.turn_start = b.n;
    sb_str(&b, "<|im_start|>");
    sb_str(&b, messages[i].role);
    sb_str(&b, "\n");
    s.content_start = b.n;
    sb_str(&b, messages[i].content);
    s.content_end = b.n;
    sb_str(&b, "<|im_end|>");
    s.eot_end = b.n;
    sb_str(&b, "\n");
    s.turn_end = b.n;
    if (spans) spans[i] = s;
  }
  if (add_generation_prompt) sb_str(&b, "<|im_start|>assistant\n");
  if (b.failed) {
    free(b.p);
    return wk_error(WK_ERR_OOM, "wk_chat_apply: out of memory");
  }
  *text = b.p;
  *len = b.n;
  return WK_OK;
}
