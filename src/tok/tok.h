// Tokenizer internals shared by src/tok/*.c.
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "wick/tokenizer.h"

// ---- hashing and maps (map.c) ----
static inline uint64_t wk_tok_hash(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  uint64_t v = 0;
  memcpy(&v, s, n);
  h = (h ^ v) * 0x94d049bb133111ebull;
  h ^= h >> 29;
  return h | 1;   // 0 marks an empty slot
}

// String -> id, open addressing; keys are not owned (they point into the tokenizer).
typedef struct { uint64_t h; const char *s; uint32_t len; int32_t id; } wk_smap_slot;
typedef struct { wk_smap_slot *slots; size_t mask, n; } wk_smap;
bool wk_smap_init(wk_smap *m, size_t expected);
// Inserts unless the key is present (the first id stays). false on OOM.
bool wk_smap_put(wk_smap *m, const char *s, size_t len, int32_t id);
int32_t wk_smap_get(const wk_smap *m, const char *s, size_t len);   // -1 if absent
void wk_smap_free(wk_smap *m);

// (left id, right id) -> (rank, merged id)
typedef struct { uint64_t key; int32_t rank, id; } wk_merge_slot;
typedef struct { wk_merge_slot *slots; size_t mask, n; } wk_merge_map;
bool wk_merge_map_init(wk_merge_map *m, size_t expected);
bool wk_merge_map_put(wk_merge_map *m, int32_t a, int32_t b, int32_t rank, int32_t id);
static inline const wk_merge_slot *wk_merge_get(const wk_merge_map *m, int32_t a, int32_t b) {
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
  for (;;) {
    const wk_merge_slot *s = &m->slots[i];
    if (s->key == key) return s;
    if (s->key == UINT64_MAX) return NULL;
    i = (i + 1) & m->mask;
  }
}
void wk_merge_map_free(wk_merge_map *m);

// Growable id vector; appends set `oom` instead of failing.
typedef struct { int32_t *v; size_t n, cap; bool oom; } wk_idvec;
static inline void wk_idvec_push(wk_idvec *v, int32_t id) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 256;
    int32_t *p = realloc(v->v, cap * sizeof *p);
    if (!p) { v->oom = true; return; }
    v->v = p;
    v->cap = cap;
  }
  v->v[v->n++] = id;
}

// Chunked arena: allocations never move.
typedef struct wk_arena_block wk_arena_block;
typedef struct { wk_arena_block *head; size_t used, cap; } wk_arena;
char *wk_arena_alloc(wk_arena *a, size_t n);
char *wk_arena_strdup(wk_arena *a, const char *s, size_t n);   // NUL-terminated copy
void wk_arena_free(wk_arena *a);

// Pre-token -> ids cache for BPE (bpe.c).
typedef struct {
  uint64_t h;
  uint32_t key_off, ids_off;
  uint16_t key_len, n_ids;
} wk_cache_slot;
typedef struct {
  pthread_mutex_t mu;
  wk_cache_slot *slots;
  size_t mask, used;
  char *keys;
  size_t keys_len, keys_cap;
  int32_t *ids;
  size_t ids_len, ids_cap;
} wk_tok_cache;

// ---- the tokenizer ----
enum { WK_TF_ADDED = 1, WK_TF_SPECIAL = 2, WK_TF_BYTE = 4 };
enum { WK_MODEL_BPE, WK_MODEL_WORDPIECE };
enum { WK_NORM_NONE, WK_NORM_NFC, WK_NORM_BERT };
enum { WK_DEC_BYTES, WK_DEC_WORDPIECE, WK_DEC_JOIN };
// pre-tokenizer steps, applied in order, each to the pieces of the previous one
enum { WK_PRE_SPLIT_GPT2, WK_PRE_SPLIT_LLAMA3, WK_PRE_SPLIT_QWEN2, WK_PRE_DIGITS,
       WK_PRE_DIGITS_EACH, WK_PRE_PREFIX_SPACE, WK_PRE_BERT };
#define WK_MAX_PRE 6
#define WK_MAX_POST 8

typedef struct {
  const char *s;   // content (in the arena)
  uint32_t len;
  const char *key; // what is matched: the content, normalized when `normalized`
  uint32_t key_len;
  int32_t id;
  bool special, lstrip, rstrip, normalized, single_word;
} wk_added_token;

struct wk_tokenizer {
  char *source;
  int model, norm, decoder;
  size_t n_vocab;            // highest id + 1
  const char **tok_str;      // as in the vocabulary / added token text; NULL for holes
  uint32_t *tok_len;
  const char **tok_raw;      // bytes it decodes to
  uint32_t *tok_raw_len;
  uint8_t *tok_flags;
  wk_smap vocab;             // model vocabulary: string -> id
  wk_smap raw_vocab;         // byte-level models with ignore_merges: raw bytes -> id
  wk_arena arena;
  // added tokens, sorted by (normalized, first byte, length descending)
  wk_added_token *added;
  size_t n_added;
  uint32_t added_first[2][257];   // per pass: index range of tokens by first byte
  uint8_t added_first_mask[2][32];
  bool has_added[2];
  // normalizer
  bool bert_clean, bert_cjk, bert_strip, bert_lower;
  // pre-tokenizer
  int pre[WK_MAX_PRE];
  int n_pre;
  bool add_prefix_space, byte_level;
  // BPE
  wk_merge_map merges;
  int32_t byte_tok[256];     // byte-level: id of each byte's symbol (-1: none)
  int32_t byte_fb[256];      // byte fallback: id of <0xNN> (-1: none)
  bool byte_fallback, ignore_merges, fuse_unk;
  int32_t unk;
  // WordPiece
  const char *wp_prefix;
  size_t wp_prefix_len;
  int64_t wp_max_chars;
  bool wp_cleanup;
  // post-processor
  int32_t prefix_ids[WK_MAX_POST], suffix_ids[WK_MAX_POST];
  int n_prefix, n_suffix;
  int32_t bos, eos;
  char *chat_template;       // the model's chat template (Jinja text), or NULL
  // cache of BPE results per pre-token
  wk_tok_cache *cache;
};

// tokenizer.c
wk_tokenizer *wk_tok_alloc(const char *source);
bool wk_tok_reserve(wk_tokenizer *t, size_t n_vocab);
wk_status wk_tok_finish(wk_tokenizer *t);   // derived tables after the vocabulary is set
char *wk_tok_strndup(const char *s, size_t n);
// byte <-> byte-level unicode (GPT-2's bytes_to_unicode)
extern const uint16_t wk_byte_to_cp[256];
int wk_cp_to_byte(uint32_t cp);   // -1 if cp is not one of the 256

// pretok.c: end of the piece of split kind `kind` that starts at byte i (< n)
size_t wk_pretok_next(int kind, const unsigned char *s, size_t n, size_t i);
// BertPreTokenizer: skips whitespace from i to *start, returns the end of the word or
// punctuation character there (*start == end == n at the end)
size_t wk_pretok_bert(const unsigned char *s, size_t n, size_t i, size_t *start);

// bpe.c
void wk_bpe_word(const wk_tokenizer *t, const char *s, size_t n, wk_idvec *out, bool use_cache);
wk_tok_cache *wk_tok_cache_new(void);
void wk_tok_cache_free(wk_tok_cache *c);

// wordpiece.c
bool wk_bert_normalize(const wk_tokenizer *t, const char *s, size_t n, char **out, size_t *out_len);
void wk_wordpiece_word(const wk_tokenizer *t, const char *s, size_t n, wk_idvec *out);
wk_status wk_wordpiece_decode(const wk_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len);
