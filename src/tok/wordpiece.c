// BERT: BertNormalizer, WordPiece (greedy longest match, "##" continuations) and the
// WordPiece decoder, following HF tokenizers.
#include <stdlib.h>
#include "engine/engine.h"
#include "tok/tok.h"
#include "tok/unicode.h"

// clean text (drop NUL, U+FFFD and controls; whitespace -> ' '), pad CJK characters with
// spaces, strip accents (NFD, drop Mn), lowercase: in that order, as HF.
bool wk_bert_normalize(const wk_tokenizer *t, const char *s, size_t n, char **out,
                       size_t *out_len) {
  const unsigned char *u = (const unsigned char *)s;
  wk_cpbuf a = {0}, b = {0};
  bool ok = true;
  for (size_t i = 0; i < n && ok;) {
    uint32_t cp;
    i += (size_t)wk_utf8_decode(u + i, n - i, &cp);
    uint32_t f = wk_uc_flags(cp);
    if (t->bert_clean) {
      bool tnr = cp == '\t' || cp == '\n' || cp == '\r';
      if (cp == 0 || cp == 0xFFFD || ((f & WK_UC_OTHER) && !tnr)) continue;
      if (f & WK_UC_WS) cp = ' ';
    }
    if (t->bert_cjk && (f & WK_UC_CJK))
      ok = wk_cpbuf_push(&a, ' ') && wk_cpbuf_push(&a, cp) && wk_cpbuf_push(&a, ' ');
    else
      ok = wk_cpbuf_push(&a, cp);
  }
  wk_cpbuf *cur = &a;
  if (ok && t->bert_strip) {
    for (size_t i = 0; i < a.n && ok; i++) ok = wk_uc_decompose(a.v[i], &b);
    if (ok) {
      wk_uc_reorder(b.v, b.n);
      size_t k = 0;
      for (size_t i = 0; i < b.n; i++)
        if (!(wk_uc_flags(b.v[i]) & WK_UC_MN)) b.v[k++] = b.v[i];
      b.n = k;
      cur = &b;
    }
  }
  char *o = ok ? malloc(cur->n * 8 + 1) : NULL;   // a lowercase may double a character
  if (o) {
    size_t k = 0;
    for (size_t i = 0; i < cur->n; i++) {
      uint32_t lc[2];
      int m = t->bert_lower ? wk_uc_lower_full(cur->v[i], lc) : (lc[0] = cur->v[i], 1);
      for (int j = 0; j < m; j++) k += (size_t)wk_utf8_encode(lc[j], o + k);
    }
    o[k] = 0;
    *out = o;
    *out_len = k;
  }
  wk_cpbuf_free(&a);
  wk_cpbuf_free(&b);
  return o != NULL;
}

void wk_wordpiece_word(const wk_tokenizer *t, const char *s, size_t n, wk_idvec *out) {
  const unsigned char *u = (const unsigned char *)s;
  size_t chars = 0;
  for (size_t i = 0; i < n; i++) chars += (u[i] & 0xC0) != 0x80;
  if ((int64_t)chars > t->wp_max_chars) { wk_idvec_push(out, t->unk); return; }
  size_t pl = t->wp_prefix_len, mark = out->n;
  char small[512];
  char *buf = pl + n <= sizeof small ? small : malloc(pl + n);
  if (!buf) { out->oom = true; return; }
  memcpy(buf, t->wp_prefix, pl);
  size_t start = 0;
  while (start < n) {
    size_t end = n;
    int32_t id = -1;
    while (start < end) {
      const char *key = s + start;
      size_t kl = end - start;
      if (start > 0) {
        memcpy(buf + pl, s + start, kl);
        key = buf;
        kl += pl;
      }
      id = wk_smap_get(&t->vocab, key, kl);
      if (id >= 0) break;
      do end--; while (end > start && (u[end] & 0xC0) == 0x80);   // one character back
    }
    if (id < 0) {   // a piece matches nothing: the whole word is unknown
      out->n = mark;
      wk_idvec_push(out, t->unk);
      break;
    }
    wk_idvec_push(out, id);
    start = end;
  }
  if (buf != small) free(buf);
}

typedef struct { char *v; size_t n, cap; bool oom; } sbuf;
static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->v, cap);
    if (!p) { b->oom = true; return; }
    b->v = p;
    b->cap = cap;
  }
  if (n) memcpy(b->v + b->n, s, n);
  b->n += n;
  b->v[b->n] = 0;
}

// HF's wordpiece cleanup(): a fixed list of replacements, applied to each token
static const char *const CLEAN[][2] = {
  {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
  {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};

static void replace_all(sbuf *b, size_t from, const char *pat, const char *rep) {
  size_t pl = strlen(pat), rl = strlen(rep);
  if (from >= b->n || b->n - from < pl) return;
  sbuf tmp = {0};
  size_t i = from;
  bool hit = false;
  while (i + pl <= b->n) {
    if (!memcmp(b->v + i, pat, pl)) { hit = true; break; }
    i++;
  }
  if (!hit) return;
  sb_put(&tmp, b->v + from, b->n - from);
  if (tmp.oom) { b->oom = true; free(tmp.v); return; }
  b->n = from;
  for (size_t k = 0; k < tmp.n;) {
    if (k + pl <= tmp.n && !memcmp(tmp.v + k, pat, pl)) { sb_put(b, rep, rl); k += pl; }
    else { sb_put(b, tmp.v + k, 1); k++; }
  }
  free(tmp.v);
}

wk_status wk_wordpiece_decode(const wk_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len) {
  sbuf b = {0};
  sb_put(&b, "", 0);
  for (size_t i = 0; i < n; i++) {
    const char *s = t->tok_str[ids[i]];
    size_t l = t->tok_len[ids[i]], from = b.n;
    if (i > 0) {
      if (l >= t->wp_prefix_len && !memcmp(s, t->wp_prefix, t->wp_prefix_len)) {
        s += t->wp_prefix_len;
        l -= t->wp_prefix_len;
      } else {
        sb_put(&b, " ", 1);
      }
    }
    sb_put(&b, s, l);
    if (t->wp_cleanup)
      for (size_t k = 0; k < sizeof CLEAN / sizeof CLEAN[0]; k++)
        replace_all(&b, from, CLEAN[k][0], CLEAN[k][1]);
  }
  if (b.oom) {
    free(b.v);
    return wk_error(WK_ERR_OOM, "%s: out of memory decoding %zu ids", t->source, n);
  }
  *text = b.v;
  if (len) *len = b.n;
  return WK_OK;
}
