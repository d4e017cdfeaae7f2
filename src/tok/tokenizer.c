// The tokenizer object: vocabulary tables, added tokens, the encode pipeline (added
// tokens -> normalizer -> pre-tokenizer steps -> model -> post-processor), decode.
#include <stdio.h>
#include <stdlib.h>
#include "engine/engine.h"
#include "tok/tok.h"
#include "tok/unicode.h"

// ---- GPT-2's byte <-> unicode map: printable bytes map to themselves, the other 68 to
// U+0100.. in byte order ----
static const uint8_t extra_bytes[68] = {
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
  26, 27, 28, 29, 30, 31, 32, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139,
  140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156, 157, 158,
  159, 160, 173};

static inline bool printable_byte(uint32_t b) {
  return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static uint32_t byte_to_cp(unsigned b) {
  if (printable_byte(b)) return b;
  if (b <= 32) return 256 + b;
  if (b >= 127 && b <= 160) return 256 + 33 + (b - 127);
  return 323;   // 173
}

int wk_cp_to_byte(uint32_t cp) {
  if (printable_byte(cp)) return (int)cp;
  if (cp >= 256 && cp < 324) return extra_bytes[cp - 256];
  return -1;
}

// ---- construction ----
char *wk_tok_strndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

wk_tokenizer *wk_tok_alloc(const char *source) {
  wk_tokenizer *t = calloc(1, sizeof *t);
  if (!t) { wk_error(WK_ERR_OOM, "tokenizer: out of memory"); return NULL; }
  t->source = wk_tok_strndup(source ? source : "tokenizer", strlen(source ? source : "tokenizer"));
  t->unk = t->bos = t->eos = -1;
  t->wp_max_chars = 100;
  for (int i = 0; i < 256; i++) t->byte_tok[i] = t->byte_fb[i] = -1;
  t->cache = wk_tok_cache_new();
  if (!t->source || !t->cache) {
    wk_tokenizer_free(t);
    wk_error(WK_ERR_OOM, "tokenizer: out of memory");
    return NULL;
  }
  return t;
}

bool wk_tok_reserve(wk_tokenizer *t, size_t n_vocab) {
  t->n_vocab = n_vocab;
  size_t n = n_vocab ? n_vocab : 1;
  t->tok_str = calloc(n, sizeof *t->tok_str);
  t->tok_len = calloc(n, sizeof *t->tok_len);
  t->tok_raw = calloc(n, sizeof *t->tok_raw);
  t->tok_raw_len = calloc(n, sizeof *t->tok_raw_len);
  t->tok_flags = calloc(n, sizeof *t->tok_flags);
  return t->tok_str && t->tok_len && t->tok_raw && t->tok_raw_len && t->tok_flags &&
         wk_smap_init(&t->vocab, n_vocab);
}

void wk_tokenizer_free(wk_tokenizer *t) {
  if (!t) return;
  free(t->source);
  free(t->chat_template);
  free(t->tok_str);
  free(t->tok_len);
  free(t->tok_raw);
  free(t->tok_raw_len);
  free(t->tok_flags);
  free(t->added);
  wk_smap_free(&t->vocab);
  wk_smap_free(&t->raw_vocab);
  wk_merge_map_free(&t->merges);
  wk_tok_cache_free(t->cache);
  wk_arena_free(&t->arena);
  free(t);
}

static int cmp_added(const void *pa, const void *pb) {
  const wk_added_token *a = pa, *b = pb;
  if (a->normalized != b->normalized) return a->normalized ? 1 : -1;
  unsigned ca = (unsigned char)a->key[0], cb = (unsigned char)b->key[0];
  if (ca != cb) return ca < cb ? -1 : 1;
  if (a->key_len != b->key_len) return a->key_len > b->key_len ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

static bool normalize(const wk_tokenizer *t, const char *s, size_t n, char **out, size_t *len);

wk_status wk_tok_finish(wk_tokenizer *t) {
  // raw bytes of every vocabulary token
  for (size_t id = 0; id < t->n_vocab; id++) {
    const char *s = t->tok_str[id];
    if (!s || (t->tok_flags[id] & WK_TF_ADDED)) continue;
    size_t n = t->tok_len[id];
    t->tok_raw[id] = s;
    t->tok_raw_len[id] = (uint32_t)n;
    if (t->byte_level) {
      char *raw = wk_arena_alloc(&t->arena, n + 1);
      if (!raw) return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
      size_t k = 0, i = 0;
      while (i < n) {
        uint32_t cp;
        i += (size_t)wk_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int b = wk_cp_to_byte(cp);
        if (b < 0) break;
        raw[k++] = (char)b;
      }
      if (i == n) {   // else not byte-level text: HF's decoder keeps the token as is
        raw[k] = 0;
        t->tok_raw[id] = raw;
        t->tok_raw_len[id] = (uint32_t)k;
      }
    } else if (t->model == WK_MODEL_BPE && n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
      unsigned v;
      char hex[3] = {s[3], s[4], 0};
      if (sscanf(hex, "%2X", &v) == 1 && ((s[3] >= '0' && s[3] <= '9') || (s[3] >= 'A' && s[3] <= 'F'))) {
        t->byte_fb[v] = (int32_t)id;
        t->tok_flags[id] |= WK_TF_BYTE;
        char *raw = wk_arena_alloc(&t->arena, 1);
        if (!raw) return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
        raw[0] = (char)v;
        t->tok_raw[id] = raw;
        t->tok_raw_len[id] = 1;
      }
    }
  }
  if (t->byte_level) {
    for (unsigned b = 0; b < 256; b++) {
      char u[4];
      int l = wk_utf8_encode(byte_to_cp(b), u);
      t->byte_tok[b] = wk_smap_get(&t->vocab, u, (size_t)l);
    }
    if (t->ignore_merges) {
      if (!wk_smap_init(&t->raw_vocab, t->vocab.n))
        return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
      for (size_t id = 0; id < t->n_vocab; id++)
        if (t->tok_str[id] && !(t->tok_flags[id] & WK_TF_ADDED) &&
            wk_smap_get(&t->vocab, t->tok_str[id], t->tok_len[id]) == (int32_t)id &&
            !wk_smap_put(&t->raw_vocab, t->tok_raw[id], t->tok_raw_len[id], (int32_t)id))
          return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
    }
  }
  // added tokens: match keys (normalized ones through the normalizer), then the index
  size_t keep = 0;
  for (size_t i = 0; i < t->n_added; i++) {
    wk_added_token *a = &t->added[i];
    a->key = a->s;
    a->key_len = a->len;
    if (a->normalized && t->norm != WK_NORM_NONE) {
      char *k;
      size_t kl;
      if (!normalize(t, a->s, a->len, &k, &kl))
        return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
      a->key = wk_arena_strdup(&t->arena, k, kl);
      a->key_len = (uint32_t)kl;
      free(k);
      if (!a->key) return wk_error(WK_ERR_OOM, "%s: out of memory", t->source);
    }
    if (a->key_len) t->added[keep++] = *a;   // an empty pattern never matches
  }
  t->n_added = keep;
  qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
  memset(t->added_first, 0, sizeof t->added_first);
  memset(t->added_first_mask, 0, sizeof t->added_first_mask);
  for (int p = 0; p < 2; p++) {
    size_t i = 0;
    while (i < t->n_added && (int)t->added[i].normalized != p) i++;
    for (unsigned b = 0; b <= 256; b++) {
      t->added_first[p][b] = (uint32_t)i;
      while (b < 256 && i < t->n_added && (int)t->added[i].normalized == p &&
             (unsigned char)t->added[i].key[0] == b) {
        t->added_first_mask[p][b >> 3] |= (uint8_t)(1u << (b & 7));
        t->has_added[p] = true;
        i++;
      }
    }
  }
  return WK_OK;
}

// ---- encode ----
typedef struct {
  const wk_tokenizer *t;
  wk_idvec *out;
  bool cache;
} enc_ctx;

static bool normalize(const wk_tokenizer *t, const char *s, size_t n, char **out, size_t *len) {
  if (t->norm == WK_NORM_NFC) return wk_uc_nfc(s, n, out, len);
  if (t->norm == WK_NORM_BERT) return wk_bert_normalize(t, s, n, out, len);
  *out = malloc(n + 1);
  if (!*out) return false;
  memcpy(*out, s, n);
  (*out)[n] = 0;
  *len = n;
  return true;
}

static void pre_steps(enc_ctx *c, int step, const char *s, size_t n) {
  const wk_tokenizer *t = c->t;
  if (n == 0) return;
  if (step == t->n_pre) {
    if (t->model == WK_MODEL_BPE) wk_bpe_word(t, s, n, c->out, c->cache);
    else wk_wordpiece_word(t, s, n, c->out);
    return;
  }
  int k = t->pre[step];
  const unsigned char *u = (const unsigned char *)s;
  if (k == WK_PRE_PREFIX_SPACE) {
    if (s[0] == ' ') { pre_steps(c, step + 1, s, n); return; }
    char small[256];
    char *b = n + 1 <= sizeof small ? small : malloc(n + 1);
    if (!b) { c->out->oom = true; return; }
    b[0] = ' ';
    memcpy(b + 1, s, n);
    pre_steps(c, step + 1, b, n + 1);
    if (b != small) free(b);
    return;
  }
  if (k == WK_PRE_BERT) {
    size_t i = 0;
    while (i < n) {
      size_t start, e = wk_pretok_bert(u, n, i, &start);
      if (start < e) pre_steps(c, step + 1, s + start, e - start);
      i = e;
    }
    return;
  }
  for (size_t i = 0; i < n;) {
    size_t e = wk_pretok_next(k, u, n, i);
    pre_steps(c, step + 1, s + i, e - i);
    i = e;
  }
}

static bool is_ws_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
  uint32_t cp;
  *len = (size_t)wk_utf8_decode(s + i, n - i, &cp);
  return (wk_uc_flags(cp) & WK_UC_WS) != 0;
}

// start of the character ending just before byte i
static size_t char_before(const unsigned char *s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && (s[j] & 0xC0) == 0x80 && i - j < 4) j--;
  return j;
}

static bool word_char_before(const unsigned char *s, size_t i) {
  if (i == 0) return false;
  size_t j = char_before(s, i);
  uint32_t cp;
  wk_utf8_decode(s + j, i - j, &cp);
  return cp == '_' || (wk_uc_flags(cp) & (WK_UC_L | WK_UC_N)) != 0;
}

static bool word_char_at(const unsigned char *s, size_t n, size_t i) {
  if (i >= n) return false;
  uint32_t cp;
  wk_utf8_decode(s + i, n - i, &cp);
  return cp == '_' || (wk_uc_flags(cp) & (WK_UC_L | WK_UC_N)) != 0;
}

static void plain_segment(enc_ctx *c, int pass, const char *s, size_t n);

// Splits s on the added tokens of one pass (0: matched on raw text, 1: on normalized
// text), leftmost-longest like HF's AddedVocabulary; the rest goes on to plain_segment.
static void split_added(enc_ctx *c, int pass, const char *s, size_t n) {
  const wk_tokenizer *t = c->t;
  const unsigned char *u = (const unsigned char *)s;
  size_t seg = 0, pos = 0;
  if (t->has_added[pass]) {
    const uint8_t *mask = t->added_first_mask[pass];
    while (pos < n) {
      const wk_added_token *m = NULL;
      size_t i = pos;
      for (; i < n && !m; i++) {
        unsigned b = u[i];
        if (!(mask[b >> 3] & (1u << (b & 7)))) continue;
        for (uint32_t k = t->added_first[pass][b]; k < t->added_first[pass][b + 1]; k++) {
          const wk_added_token *a = &t->added[k];
          if (a->key_len <= n - i && !memcmp(s + i, a->key, a->key_len)) { m = a; break; }
        }
      }
      if (!m) break;
      i--;
      size_t start = i, stop = i + m->key_len;
      if (m->single_word && (word_char_before(u, start) || word_char_at(u, n, stop))) {
        pos = stop;   // not a whole word: skipped, and the search goes on after it
        continue;
      }
      if (m->lstrip) {
        while (start > seg) {
          size_t j = char_before(u, start), l;
          if (!is_ws_at(u, n, j, &l)) break;
          start = j;
        }
      }
      if (m->rstrip) {
        size_t l;
        while (stop < n && is_ws_at(u, n, stop, &l)) stop += l;
      }
      plain_segment(c, pass, s + seg, start - seg);
      wk_idvec_push(c->out, m->id);
      seg = pos = stop;
    }
  }
  plain_segment(c, pass, s + seg, n - seg);
}

static void plain_segment(enc_ctx *c, int pass, const char *s, size_t n) {
  if (n == 0) return;
  if (pass == 1) { pre_steps(c, 0, s, n); return; }
  if (c->t->norm == WK_NORM_NONE) { split_added(c, 1, s, n); return; }
  char *ns;
  size_t nn;
  if (!normalize(c->t, s, n, &ns, &nn)) { c->out->oom = true; return; }
  split_added(c, 1, ns, nn);
  free(ns);
}

wk_status wk_tokenizer_encode(const wk_tokenizer *t, const char *text, size_t len,
                              bool add_special, int32_t **ids, size_t *n) {
  if (!t || (!text && len) || !ids || !n)
    return wk_error(WK_ERR_ARG, "wk_tokenizer_encode: NULL argument");
  *ids = NULL;
  *n = 0;
  wk_idvec out = {0};
  // Threads that find the cache busy go on without it rather than wait.
  enc_ctx c = {t, &out, t->cache && pthread_mutex_trylock(&t->cache->mu) == 0};
  if (add_special)
    for (int i = 0; i < t->n_prefix; i++) wk_idvec_push(&out, t->prefix_ids[i]);
  split_added(&c, 0, text ? text : "", len);
  if (add_special)
    for (int i = 0; i < t->n_suffix; i++) wk_idvec_push(&out, t->suffix_ids[i]);
  if (c.cache) pthread_mutex_unlock(&t->cache->mu);
  if (!out.oom && !out.v) {
    out.v = malloc(sizeof *out.v);
    out.oom = !out.v;
  }
  if (out.oom) {
    free(out.v);
    return wk_error(WK_ERR_OOM, "%s: out of memory encoding %zu bytes", t->source, len);
  }
  *ids = out.v;
  *n = out.n;
  return WK_OK;
}

// ---- decode ----
// `what` names the caller's use of the id in the message ("decode: token id").
static wk_status check_id(const wk_tokenizer *t, int32_t id, const char *what) {
  if (id < 0 || (size_t)id >= t->n_vocab || !t->tok_str[id])
    return wk_error(WK_ERR_ARG, "%s: %s %d is not in the vocabulary (size %zu)", t->source, what, (int)id,
                    t->n_vocab);
  return WK_OK;
}

wk_status wk_tokenizer_decode(const wk_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len) {
  if (!t || (!ids && n) || !text)
    return wk_error(WK_ERR_ARG, "wk_tokenizer_decode: NULL argument");
  *text = NULL;
  if (len) *len = 0;
  for (size_t i = 0; i < n; i++)
    if (check_id(t, ids[i], "decode: token id")) return WK_ERR_ARG;
  if (t->decoder == WK_DEC_WORDPIECE) return wk_wordpiece_decode(t, ids, n, text, len);
  size_t total = 1;
  for (size_t i = 0; i < n; i++)
    total += (t->decoder == WK_DEC_JOIN ? t->tok_len[ids[i]] + 1 : t->tok_raw_len[ids[i]]);
  char *o = malloc(total);
  if (!o) return wk_error(WK_ERR_OOM, "%s: out of memory decoding %zu ids", t->source, n);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (t->decoder == WK_DEC_JOIN) {
      if (i) o[k++] = ' ';
      memcpy(o + k, t->tok_str[id], t->tok_len[id]);
      k += t->tok_len[id];
    } else {
      memcpy(o + k, t->tok_raw[id], t->tok_raw_len[id]);
      k += t->tok_raw_len[id];
    }
  }
  o[k] = 0;
  *text = o;
  if (len) *len = k;
  return WK_OK;
}

// ---- lookups ----
const char *wk_tokenizer_token_bytes(const wk_tokenizer *t, int32_t id, size_t *len) {
  if (!t || id < 0 || (size_t)id >= t->n_vocab || !t->tok_str[id]) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = t->tok_raw_len[id];
  return t->tok_raw[id];
}

int32_t wk_tokenizer_token_id(const wk_tokenizer *t, const char *token) {
  if (!t || !token) return -1;
  size_t n = strlen(token);
  for (size_t i = 0; i < t->n_added; i++)
    if (t->added[i].len == n && !memcmp(t->added[i].s, token, n)) return t->added[i].id;
  return wk_smap_get(&t->vocab, token, n);
}

size_t wk_tokenizer_vocab_size(const wk_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t wk_tokenizer_bos(const wk_tokenizer *t) { return t ? t->bos : -1; }
int32_t wk_tokenizer_eos(const wk_tokenizer *t) { return t ? t->eos : -1; }

bool wk_tokenizer_is_special(const wk_tokenizer *t, int32_t id) {
  return t && id >= 0 && (size_t)id < t->n_vocab && (t->tok_flags[id] & WK_TF_SPECIAL);
}

wk_status wk_tokenizer_set_special(wk_tokenizer *t, int32_t bos, int32_t eos, bool add_bos,
                                   bool add_eos) {
  if (!t) return wk_error(WK_ERR_ARG, "wk_tokenizer_set_special: NULL tokenizer");
  if ((bos >= 0 && check_id(t, bos, "set_special: bos id")) || (eos >= 0 && check_id(t, eos, "set_special: eos id")))
    return WK_ERR_ARG;
  if ((add_bos && bos < 0) || (add_eos && eos < 0))
    return wk_error(WK_ERR_ARG, "%s: add_bos / add_eos without that token", t->source);
  t->bos = bos < 0 ? -1 : bos;
  t->eos = eos < 0 ? -1 : eos;
  t->n_prefix = t->n_suffix = 0;
  if (add_bos) t->prefix_ids[t->n_prefix++] = bos;
  if (add_eos) t->suffix_ids[t->n_suffix++] = eos;
  return WK_OK;
}

// ---- from GGUF-style arrays ----
wk_tokenizer *wk_tokenizer_from_bpe(size_t n_tokens, const char *const *tokens,
                                    const int32_t *token_types, size_t n_merges,
                                    const char *const *merges, wk_pretok_kind pre) {
  if (!n_tokens || !tokens || (n_merges && !merges) || n_tokens > INT32_MAX ||
      n_merges > INT32_MAX) {
    wk_error(WK_ERR_ARG, "wk_tokenizer_from_bpe: no tokens or a NULL array");
    return NULL;
  }
  if ((unsigned)pre > WK_PRETOK_NONE) {
    wk_error(WK_ERR_ARG, "wk_tokenizer_from_bpe: unknown pre-tokenizer kind %d", (int)pre);
    return NULL;
  }
  wk_tokenizer *t = wk_tok_alloc("GGUF tokenizer");
  if (!t) return NULL;
  t->model = WK_MODEL_BPE;
  t->decoder = WK_DEC_BYTES;
  t->byte_level = true;
  switch (pre) {
  case WK_PRETOK_GPT2: t->pre[t->n_pre++] = WK_PRE_SPLIT_GPT2; break;
  case WK_PRETOK_LLAMA3: t->pre[t->n_pre++] = WK_PRE_SPLIT_LLAMA3; break;
  case WK_PRETOK_QWEN2:   // HF's Qwen2 tokenizer.json normalizes to NFC first
    t->norm = WK_NORM_NFC;
    t->pre[t->n_pre++] = WK_PRE_SPLIT_QWEN2;
    break;
  case WK_PRETOK_SMOLLM:
    t->pre[t->n_pre++] = WK_PRE_DIGITS_EACH;
    t->pre[t->n_pre++] = WK_PRE_SPLIT_GPT2;
    break;
  case WK_PRETOK_NONE: break;
  }
  size_t n_added = 0;
  for (size_t i = 0; token_types && i < n_tokens; i++)
    if (token_types[i] == WK_TOKEN_CONTROL || token_types[i] == WK_TOKEN_USER_DEFINED) n_added++;
  if (!wk_tok_reserve(t, n_tokens) || !wk_merge_map_init(&t->merges, n_merges) ||
      !(t->added = calloc(n_added ? n_added : 1, sizeof *t->added))) {
    wk_error(WK_ERR_OOM, "GGUF tokenizer: out of memory for %zu tokens", n_tokens);
    goto fail;
  }
  for (size_t i = 0; i < n_tokens; i++) {
    if (!tokens[i]) {
      wk_error(WK_ERR_ARG, "GGUF tokenizer: token %zu is NULL", i);
      goto fail;
    }
    size_t l = strlen(tokens[i]);
    char *s = wk_arena_strdup(&t->arena, tokens[i], l);
    if (!s || !wk_smap_put(&t->vocab, s, l, (int32_t)i)) {
      wk_error(WK_ERR_OOM, "GGUF tokenizer: out of memory");
      goto fail;
    }
    t->tok_str[i] = s;
    t->tok_len[i] = (uint32_t)l;
    int ty = token_types ? token_types[i] : WK_TOKEN_NORMAL;
    if (ty == WK_TOKEN_UNKNOWN && t->unk < 0) t->unk = (int32_t)i;
    if (ty == WK_TOKEN_CONTROL || ty == WK_TOKEN_USER_DEFINED) {
      wk_added_token *a = &t->added[t->n_added++];
      a->s = s;
      a->len = (uint32_t)l;
      a->id = (int32_t)i;
      a->special = ty == WK_TOKEN_CONTROL;
      t->tok_flags[i] |= WK_TF_ADDED | (a->special ? WK_TF_SPECIAL : 0);
      t->tok_raw[i] = s;
      t->tok_raw_len[i] = (uint32_t)l;
    }
  }
  for (size_t r = 0; r < n_merges; r++) {
    const char *m = merges[r], *sp = m ? strchr(m, ' ') : NULL;
    int32_t a = sp ? wk_smap_get(&t->vocab, m, (size_t)(sp - m)) : -1;
    int32_t b = sp ? wk_smap_get(&t->vocab, sp + 1, strlen(sp + 1)) : -1;
    if (a < 0 || b < 0) {
      wk_error(WK_ERR_ARG, "GGUF tokenizer: merge %zu \"%.60s\" is not two vocabulary tokens",
               r, m ? m : "(null)");
      goto fail;
    }
    size_t la = t->tok_len[a], lb = t->tok_len[b];
    char small[256];
    char *cat = la + lb <= sizeof small ? small : malloc(la + lb);
    if (!cat) { wk_error(WK_ERR_OOM, "GGUF tokenizer: out of memory"); goto fail; }
    memcpy(cat, t->tok_str[a], la);
    memcpy(cat + la, t->tok_str[b], lb);
    int32_t id = wk_smap_get(&t->vocab, cat, la + lb);
    if (cat != small) free(cat);
    if (id < 0) {
      wk_error(WK_ERR_ARG, "GGUF tokenizer: merge %zu \"%.60s\" makes a token not in the vocabulary",
               r, m);
      goto fail;
    }
    if (!wk_merge_map_put(&t->merges, a, b, (int32_t)r, id)) {
      wk_error(WK_ERR_OOM, "GGUF tokenizer: out of memory");
      goto fail;
    }
  }
  if (wk_tok_finish(t)) goto fail;
  return t;
fail:
  wk_tokenizer_free(t);
  return NULL;
}
