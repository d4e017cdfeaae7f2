// Unicode helpers over the generated tables (see unicode.h).
#include "tok/unicode.h"
#include <stdlib.h>
#include <string.h>

#define F_L WK_UC_L
#define F_N WK_UC_N
#define F_S WK_UC_WS
#define F_P WK_UC_P
#define F_O WK_UC_OTHER
const uint8_t wk_uc_ascii_flags[128] = {
  F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O | F_S, F_O | F_S, F_O | F_S, F_O | F_S,
  F_O | F_S, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O, F_O,
  F_O, F_O,
  F_S, F_P, F_P, F_P, 0, F_P, F_P, F_P, F_P, F_P, F_P, 0, F_P, F_P, F_P, F_P,   // ' '..'/'
  F_N, F_N, F_N, F_N, F_N, F_N, F_N, F_N, F_N, F_N, F_P, F_P, 0, 0, 0, F_P,     // '0'..'?'
  F_P, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L,
  F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_P, F_P, F_P, 0, F_P,  // 'P'..'_'
  0, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L,
  F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_L, F_P, 0, F_P, 0, F_O,   // 'p'..DEL
};

int wk_utf8_encode(uint32_t cp, char *out) {
  unsigned char *o = (unsigned char *)out;
  if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
  if (cp < 0x800) {
    o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (unsigned char)(0xE0 | (cp >> 12)); o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (unsigned char)(0xF0 | (cp >> 18)); o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (cp & 0x3F));
  return 4;
}

// Value of the range containing cp in a packed (start << 8 | value) table.
static unsigned packed_lookup(const uint32_t *t, size_t n, uint32_t cp) {
  size_t lo = 0, hi = n;   // invariant: t[lo].start <= cp (t[0].start == 0)
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if ((t[mid] >> 8) <= cp) lo = mid; else hi = mid;
  }
  return t[lo] & 0xFF;
}

uint32_t wk_uc_flags_slow(uint32_t cp) {
  if (cp > 0x10FFFF) return WK_UC_OTHER;
  return packed_lookup(wk_uc_props, wk_uc_props_n, cp);
}

unsigned wk_uc_ccc_of(uint32_t cp) {
  if (cp < 0x300 || cp > 0x10FFFF) return 0;
  return packed_lookup(wk_uc_ccc, wk_uc_ccc_n, cp);
}

uint32_t wk_uc_lower_of(uint32_t cp) {
  if (cp < 128) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  size_t lo = 0, hi = wk_uc_lower_n;   // first run with start > cp
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (wk_uc_lower[mid].start <= cp) lo = mid + 1; else hi = mid;
  }
  if (lo == 0) return cp;
  const wk_uc_lower_run *r = &wk_uc_lower[lo - 1];
  uint32_t off = cp - r->start;
  if (off % r->stride == 0 && off / r->stride < r->count) return (uint32_t)((int32_t)cp + r->delta);
  return cp;
}

int wk_uc_lower_full(uint32_t cp, uint32_t out[2]) {
  if (cp == 0x130) { out[0] = 'i'; out[1] = 0x307; return 2; }
  out[0] = wk_uc_lower_of(cp);
  return 1;
}

bool wk_cpbuf_push(wk_cpbuf *b, uint32_t cp) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return false;
    b->v = v;
    b->cap = cap;
  }
  b->v[b->n++] = cp;
  return true;
}

void wk_cpbuf_free(wk_cpbuf *b) { free(b->v); b->v = NULL; b->n = b->cap = 0; }

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19,
       VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static const wk_uc_decomp_entry *decomp_find(uint32_t cp) {
  size_t lo = 0, hi = wk_uc_decomp_n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    uint32_t c = wk_uc_decomp[mid].cp & 0x7FFFFFFFu;
    if (c == cp) return &wk_uc_decomp[mid];
    if (c < cp) lo = mid + 1; else hi = mid;
  }
  return NULL;
}

bool wk_uc_decompose(uint32_t cp, wk_cpbuf *out) {
  if (cp >= SBASE && cp < SBASE + SCOUNT) {
    uint32_t s = cp - SBASE;
    if (!wk_cpbuf_push(out, LBASE + s / NCOUNT) || !wk_cpbuf_push(out, VBASE + (s % NCOUNT) / TCOUNT))
      return false;
    if (s % TCOUNT && !wk_cpbuf_push(out, TBASE + s % TCOUNT)) return false;
    return true;
  }
  const wk_uc_decomp_entry *e = cp >= 0xC0 ? decomp_find(cp) : NULL;
  if (!e) return wk_cpbuf_push(out, cp);
  if (!wk_uc_decompose(e->a, out)) return false;
  return e->b ? wk_uc_decompose(e->b, out) : true;
}

// Stable sort of one run of non-starters by combining class. Runs are short in real
// text (insertion sort); a long one gets a counting sort over the 256 classes, since
// insertion sort is quadratic there (64 KB of alternating marks took seconds).
static void sort_marks(uint32_t *cps, size_t n) {
  uint32_t *tmp = n > 32 ? malloc(n * sizeof *tmp) : NULL;
  if (!tmp) {   // short, or no memory: slow but right
    for (size_t i = 1; i < n; i++) {
      uint32_t v = cps[i];
      unsigned c = wk_uc_ccc_of(v);
      size_t j = i;
      for (; j > 0 && wk_uc_ccc_of(cps[j - 1]) > c; j--) cps[j] = cps[j - 1];
      cps[j] = v;
    }
    return;
  }
  size_t start[257] = {0};
  for (size_t i = 0; i < n; i++) start[wk_uc_ccc_of(cps[i]) + 1]++;
  for (int c = 1; c <= 256; c++) start[c] += start[c - 1];
  for (size_t i = 0; i < n; i++) tmp[start[wk_uc_ccc_of(cps[i])]++] = cps[i];
  memcpy(cps, tmp, n * sizeof *tmp);
  free(tmp);
}

void wk_uc_reorder(uint32_t *cps, size_t n) {
  for (size_t i = 0; i < n;) {
    if (!wk_uc_ccc_of(cps[i])) { i++; continue; }
    size_t j = i + 1;
    while (j < n && wk_uc_ccc_of(cps[j])) j++;
    sort_marks(cps + i, j - i);
    i = j;
  }
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
    return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
  if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
      b < TBASE + TCOUNT)
    return a + (b - TBASE);
  size_t lo = 0, hi = wk_uc_compose_n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const wk_uc_compose_entry *e = &wk_uc_compose[mid];
    if (e->a == a && e->b == b) return e->c;
    if (e->a < a || (e->a == a && e->b < b)) lo = mid + 1; else hi = mid;
  }
  return 0;
}

size_t wk_uc_compose_all(uint32_t *cps, size_t n) {
  size_t starter = (size_t)-1, out = 0;
  unsigned last_ccc = 0;   // class of the last character kept after the starter
  for (size_t i = 0; i < n; i++) {
    uint32_t c = cps[i];
    unsigned ccc = wk_uc_ccc_of(c);
    // marks are in canonical order, so c is unblocked iff it is adjacent to the starter
    // or the last mark kept has a lower, nonzero class
    if (starter != (size_t)-1 && (out == starter + 1 || (last_ccc != 0 && last_ccc < ccc))) {
      uint32_t comp = compose_pair(cps[starter], c);
      if (comp) { cps[starter] = comp; continue; }
    }
    if (ccc == 0) starter = out;
    last_ccc = ccc;
    cps[out++] = c;
  }
  return out;
}

// Whether s[0..n) starts with an invalid or truncated sequence: wk_utf8_decode reads
// one byte as U+FFFD (a real U+FFFD takes three).
static bool utf8_invalid_at(const unsigned char *s, size_t n) {
  uint32_t cp;
  return wk_utf8_decode(s, n, &cp) == 1 && cp == 0xFFFD;
}

// Text is normalized piecewise: a character below U+0300 has class 0, is its own NFC
// when alone and never composes with what precedes it, so text can be cut before any
// such character. Only the pieces holding a character >= U+0300 go through the
// decompose / reorder / compose path; the rest is copied.
// Bytes that are not valid UTF-8 are copied as they are and end a piece: the text's
// bytes survive the normalizer (byte-level BPE encodes any byte, so decode gives them
// back) instead of turning into U+FFFD.
bool wk_uc_nfc(const char *s, size_t n, char **out, size_t *out_len) {
  const unsigned char *u = (const unsigned char *)s;
  char *o = malloc(n * 3 + 4);   // NFC grows text by at most 3x (e.g. U+1D160)
  if (!o) return false;
  size_t k = 0, i = 0;
  wk_cpbuf cps = {0};
  while (i < n) {
    if (u[i] < 0xCC || utf8_invalid_at(u + i, n - i)) {
      o[k++] = (char)u[i++];   // below U+0300, or not UTF-8: copied
      continue;
    }
    // back up to the start of the character before, if it is a valid one below U+0300
    // (the piece's starter; it was copied; an invalid byte reads as U+FFFD, not below)
    size_t start = i;
    if (start > 0) {
      size_t j = start - 1;
      while (j > 0 && (u[j] & 0xC0) == 0x80 && start - j < 4) j--;
      uint32_t cp;
      int l = wk_utf8_decode(u + j, start - j, &cp);
      if (j + (size_t)l == start && cp < 0x300) start = j;
    }
    k -= i - start;
    size_t end = i;
    while (end < n) {
      uint32_t cp;
      int l = wk_utf8_decode(u + end, n - end, &cp);
      if ((cp < 0x300 || utf8_invalid_at(u + end, n - end)) && end > i) break;
      end += (size_t)l;
    }
    cps.n = 0;
    for (size_t p = start; p < end;) {
      uint32_t cp;
      p += (size_t)wk_utf8_decode(u + p, end - p, &cp);
      if (!wk_uc_decompose(cp, &cps)) { wk_cpbuf_free(&cps); free(o); return false; }
    }
    wk_uc_reorder(cps.v, cps.n);
    size_t m = wk_uc_compose_all(cps.v, cps.n);
    for (size_t p = 0; p < m; p++) k += (size_t)wk_utf8_encode(cps.v[p], o + k);
    i = end;
  }
  wk_cpbuf_free(&cps);
  o[k] = 0;
  *out = o;
  *out_len = k;
  return true;
}
