// Unicode helpers for the tokenizers: UTF-8 decoding, category flags, lowercase,
// canonical decomposition / composition (NFD, NFC). Tables come from
// tools/gen_unicode_tables.py (unicode_tables.c).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Category flags (bits of wk_uc_flags()).
enum {
  WK_UC_L = 1,      // \p{L}: letters
  WK_UC_N = 2,      // \p{N}: numbers (Nd, Nl, No)
  WK_UC_WS = 4,     // \s: White_Space (Oniguruma's \s and Rust's is_whitespace agree)
  WK_UC_P = 8,      // \p{P}: punctuation
  WK_UC_OTHER = 16, // Cc, Cf, Cn, Co, Cs (BERT's "control")
  WK_UC_MN = 32,    // Mn: nonspacing marks (BERT's accent stripping removes them)
  WK_UC_CJK = 64,   // BERT's "Chinese character" ranges
};

typedef struct { uint32_t start, count; int32_t delta; uint32_t stride; } wk_uc_lower_run;
typedef struct { uint32_t cp, a, b; } wk_uc_decomp_entry;   // cp bit 31: composition excluded
typedef struct { uint32_t a, b, c; } wk_uc_compose_entry;

extern const uint32_t wk_uc_props[];
extern const size_t wk_uc_props_n;
extern const uint32_t wk_uc_ccc[];
extern const size_t wk_uc_ccc_n;
extern const wk_uc_lower_run wk_uc_lower[];
extern const size_t wk_uc_lower_n;
extern const wk_uc_decomp_entry wk_uc_decomp[];
extern const size_t wk_uc_decomp_n;
extern const wk_uc_compose_entry wk_uc_compose[];
extern const size_t wk_uc_compose_n;

// Decodes one code point from s[0..n) (n >= 1) into *cp; returns its length in bytes.
// Invalid or truncated sequences decode as one byte with cp = 0xFFFD.
static inline int wk_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned c = s[0];
  if (c < 0x80) { *cp = c; return 1; }
  if (c >= 0xC2 && c < 0xE0 && n >= 2 && (s[1] & 0xC0) == 0x80) {
    *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    return 2;
  }
  if (c >= 0xE0 && c < 0xF0 && n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
    uint32_t v = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    if (v >= 0x800 && (v < 0xD800 || v > 0xDFFF)) { *cp = v; return 3; }
  }
  if (c >= 0xF0 && c < 0xF5 && n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 &&
      (s[3] & 0xC0) == 0x80) {
    uint32_t v = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
                 (s[3] & 0x3Fu);
    if (v >= 0x10000 && v <= 0x10FFFF) { *cp = v; return 4; }
  }
  *cp = 0xFFFD;
  return 1;
}

// Writes cp as UTF-8 into out (room for 4); returns the length.
int wk_utf8_encode(uint32_t cp, char *out);

extern const uint8_t wk_uc_ascii_flags[128];
uint32_t wk_uc_flags_slow(uint32_t cp);
static inline uint32_t wk_uc_flags(uint32_t cp) {
  return cp < 128 ? wk_uc_ascii_flags[cp] : wk_uc_flags_slow(cp);
}
unsigned wk_uc_ccc_of(uint32_t cp);
// Simple lowercase mapping (one code point). U+0130 lowercases to "i\u0307": callers
// that need the full mapping handle it (wk_uc_lower_full).
uint32_t wk_uc_lower_of(uint32_t cp);
// Full lowercase: writes 1 or 2 code points to out; returns how many.
int wk_uc_lower_full(uint32_t cp, uint32_t out[2]);

// Growable array of code points.
typedef struct { uint32_t *v; size_t n, cap; } wk_cpbuf;
bool wk_cpbuf_push(wk_cpbuf *b, uint32_t cp);
void wk_cpbuf_free(wk_cpbuf *b);

// Appends the canonical decomposition of cp (recursive, Hangul included) to out.
bool wk_uc_decompose(uint32_t cp, wk_cpbuf *out);
// Canonical ordering of combining marks, in place.
void wk_uc_reorder(uint32_t *cps, size_t n);
// Canonical composition in place (input in NFD order); returns the new length.
size_t wk_uc_compose_all(uint32_t *cps, size_t n);

// NFC of s[0..n) into a malloc'd buffer (*out, *out_len); returns false on OOM. Bytes
// that are not valid UTF-8 are copied unchanged (and nothing composes across them).
// Text below U+0300 is NFC already and comes back as a plain copy.
bool wk_uc_nfc(const char *s, size_t n, char **out, size_t *out_len);
