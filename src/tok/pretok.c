// Pre-tokenizer split patterns, matched by hand with the semantics of the regexes HF
// runs (Oniguruma: leftmost alternative wins, greedy quantifiers backtrack):
//   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:   Llama-3's with \p{N} instead of \p{N}{1,3}
// Every character matches some alternative, so matches tile the text.
#include "tok/tok.h"
#include "tok/unicode.h"

typedef struct { uint32_t cp, flags; size_t len; } ch;

static inline ch at(const unsigned char *s, size_t n, size_t i) {
  ch c;
  if (s[i] < 128) {
    c.cp = s[i];
    c.flags = wk_uc_ascii_flags[s[i]];
    c.len = 1;
    return c;
  }
  c.len = (size_t)wk_utf8_decode(s + i, n - i, &c.cp);
  c.flags = wk_uc_flags_slow(c.cp);
  return c;
}

enum { LNW = WK_UC_L | WK_UC_N | WK_UC_WS };

// end of the run from i of characters having any of `flags` (or, with neg, none of them)
static inline size_t run(const unsigned char *s, size_t n, size_t i, uint32_t flags, bool neg) {
  while (i < n) {
    ch c = at(s, n, i);
    if (((c.flags & flags) != 0) == neg) break;
    i += c.len;
  }
  return i;
}

// contraction after an apostrophe at i: end or 0
static size_t contraction(const unsigned char *s, size_t n, size_t i, bool icase) {
  if (i + 1 >= n) return 0;
  unsigned a = s[i + 1];
  if (icase) {
    if (a == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return i + 3;   // U+017F folds to s
    if (a >= 'A' && a <= 'Z') a += 32;
  }
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= n) return 0;
  unsigned b = s[i + 2];
  if (icase && b >= 'A' && b <= 'Z') b += 32;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// \s+(?!\S)|\s+ at i (s[i] is whitespace)
static size_t spaces(const unsigned char *s, size_t n, size_t i) {
  size_t j = i, last = i;
  while (j < n) {
    ch c = at(s, n, j);
    if (!(c.flags & WK_UC_WS)) break;
    last = j;
    j += c.len;
  }
  if (j == n || last == i) return j;   // at the end, or one space before a non-space
  return last;                          // leave the last space to the next word
}

static size_t next_gpt2(const unsigned char *s, size_t n, size_t i) {
  ch c = at(s, n, i);
  if (c.cp == '\'') {
    size_t e = contraction(s, n, i, false);
    if (e) return e;
  }
  size_t p = i;
  ch d = c;
  if (c.cp == ' ' && i + 1 < n) {
    d = at(s, n, i + 1);
    if (d.flags & (WK_UC_L | WK_UC_N) || !(d.flags & WK_UC_WS)) p = i + 1;
    else d = c;
  }
  if (d.flags & WK_UC_L) return run(s, n, p + d.len, WK_UC_L, false);
  if (d.flags & WK_UC_N) return run(s, n, p + d.len, WK_UC_N, false);
  if (!(d.flags & LNW)) return run(s, n, p + d.len, LNW, true);
  return spaces(s, n, i);
}

static size_t next_llama(const unsigned char *s, size_t n, size_t i, int max_digits) {
  ch c = at(s, n, i);
  if (c.cp == '\'') {
    size_t e = contraction(s, n, i, true);
    if (e) return e;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!(c.flags & (WK_UC_L | WK_UC_N)) && c.cp != '\r' && c.cp != '\n' && i + c.len < n) {
    ch d = at(s, n, i + c.len);
    if (d.flags & WK_UC_L) return run(s, n, i + c.len + d.len, WK_UC_L, false);
  }
  if (c.flags & WK_UC_L) return run(s, n, i + c.len, WK_UC_L, false);
  if (c.flags & WK_UC_N) {
    size_t j = i + c.len;
    for (int k = 1; k < max_digits && j < n; k++) {
      ch d = at(s, n, j);
      if (!(d.flags & WK_UC_N)) break;
      j += d.len;
    }
    return j;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t p = i;
  ch d = c;
  if (c.cp == ' ' && i + 1 < n) {
    d = at(s, n, i + 1);
    if (!(d.flags & LNW)) p = i + 1;
    else d = c;
  }
  if (!(d.flags & LNW)) {
    size_t j = run(s, n, p + d.len, LNW, true);
    while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
    return j;
  }
  // c is whitespace. \s*[\r\n]+ : up to the last \r or \n of the whitespace run
  size_t j = i, nl = SIZE_MAX;
  while (j < n) {
    ch e = at(s, n, j);
    if (!(e.flags & WK_UC_WS)) break;
    if (e.cp == '\r' || e.cp == '\n') nl = j;
    j += e.len;
  }
  if (nl != SIZE_MAX) return nl + 1;
  return spaces(s, n, i);
}

size_t wk_pretok_next(int kind, const unsigned char *s, size_t n, size_t i) {
  switch (kind) {
  case WK_PRE_SPLIT_GPT2: return next_gpt2(s, n, i);
  case WK_PRE_SPLIT_LLAMA3: return next_llama(s, n, i, 3);
  case WK_PRE_SPLIT_QWEN2: return next_llama(s, n, i, 1);
  case WK_PRE_DIGITS:
  case WK_PRE_DIGITS_EACH: {
    ch c = at(s, n, i);
    if (c.flags & WK_UC_N)
      return kind == WK_PRE_DIGITS_EACH ? i + c.len : run(s, n, i + c.len, WK_UC_N, false);
    return run(s, n, i + c.len, WK_UC_N, true);
  }
  default: return n;
  }
}

size_t wk_pretok_bert(const unsigned char *s, size_t n, size_t i, size_t *start) {
  while (i < n) {
    ch c = at(s, n, i);
    if (!(c.flags & WK_UC_WS)) break;
    i += c.len;
  }
  *start = i;
  if (i == n) return n;
  ch c = at(s, n, i);
  // BERT punctuation: Unicode P* and all ASCII punctuation (which includes $+<=>^`|~)
  bool ascii_punct = c.cp < 128 && c.cp > 32 && c.cp != 127 && !(c.flags & (WK_UC_L | WK_UC_N));
  if ((c.flags & WK_UC_P) || ascii_punct) return i + c.len;
  while (i < n) {
    c = at(s, n, i);
    ascii_punct = c.cp < 128 && c.cp > 32 && c.cp != 127 && !(c.flags & (WK_UC_L | WK_UC_N));
    if ((c.flags & (WK_UC_WS | WK_UC_P)) || ascii_punct) break;
    i += c.len;
  }
  return i;
}
