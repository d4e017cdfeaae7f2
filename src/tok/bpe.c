// BPE on one pre-token: initial symbols (bytes for byte-level models, characters
// otherwise, with byte fallback and unk), then merges by rank, leftmost first among
// equal ranks, as HF's BPE::merge_word. Results of short pre-tokens are cached.
#include <stdlib.h>
#include "tok/tok.h"
#include "tok/unicode.h"

enum { CACHE_SLOTS = 1 << 16, CACHE_MAX = 1 << 15, CACHE_KEY_MAX = 64, CACHE_IDS_MAX = 64,
       SMALL = 128 };

wk_tok_cache *wk_tok_cache_new(void) {
  wk_tok_cache *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  pthread_mutex_init(&c->mu, NULL);
  return c;
}

void wk_tok_cache_free(wk_tok_cache *c) {
  if (!c) return;
  pthread_mutex_destroy(&c->mu);
  free(c->slots);
  free(c->keys);
  free(c->ids);
  free(c);
}

static const wk_cache_slot *cache_find(const wk_tok_cache *c, const char *s, size_t n,
                                       uint64_t h) {
  if (!c->slots) return NULL;
  size_t i = (size_t)h & c->mask;
  for (;;) {
    const wk_cache_slot *e = &c->slots[i];
    if (!e->h) return NULL;
    if (e->h == h && e->key_len == n && !memcmp(c->keys + e->key_off, s, n)) return e;
    i = (i + 1) & c->mask;
  }
}

static void cache_put(wk_tok_cache *c, const char *s, size_t n, uint64_t h, const int32_t *ids,
                      size_t n_ids) {
  if (c->used >= CACHE_MAX) return;   // full: like HF, stop inserting
  if (!c->slots) {
    c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
    c->keys = malloc(CACHE_MAX * 16);
    c->ids = malloc(CACHE_MAX * 4 * sizeof(int32_t));
    if (!c->slots || !c->keys || !c->ids) {
      free(c->slots); free(c->keys); free(c->ids);
      c->slots = NULL; c->keys = NULL; c->ids = NULL;
      return;
    }
    c->mask = CACHE_SLOTS - 1;
    c->keys_cap = CACHE_MAX * 16;
    c->ids_cap = CACHE_MAX * 4;
  }
  if (c->keys_len + n > c->keys_cap || c->ids_len + n_ids > c->ids_cap) return;
  size_t i = (size_t)h & c->mask;
  while (c->slots[i].h) i = (i + 1) & c->mask;
  wk_cache_slot *e = &c->slots[i];
  e->h = h;
  e->key_off = (uint32_t)c->keys_len;
  e->key_len = (uint16_t)n;
  e->ids_off = (uint32_t)c->ids_len;
  e->n_ids = (uint16_t)n_ids;
  memcpy(c->keys + c->keys_len, s, n);
  c->keys_len += n;
  memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
  c->ids_len += n_ids;
  c->used++;
}

// Merge loop for short words: ranks of adjacent pairs in an array, scanned for the min.
static size_t merge_small(const wk_merge_map *mm, int32_t *ids, size_t m) {
  int32_t rank[SMALL], nid[SMALL];
  for (size_t i = 0; i + 1 < m; i++) {
    const wk_merge_slot *e = wk_merge_get(mm, ids[i], ids[i + 1]);
    rank[i] = e ? e->rank : INT32_MAX;
    nid[i] = e ? e->id : -1;
  }
  while (m > 1) {
    size_t best = 0;
    int32_t br = rank[0];
    for (size_t i = 1; i + 1 < m; i++)
      if (rank[i] < br) { br = rank[i]; best = i; }
    if (br == INT32_MAX) break;
    ids[best] = nid[best];
    for (size_t i = best + 1; i + 1 < m; i++) {
      ids[i] = ids[i + 1];
      rank[i] = rank[i + 1];
      nid[i] = nid[i + 1];
    }
    m--;
    if (best > 0) {
      const wk_merge_slot *e = wk_merge_get(mm, ids[best - 1], ids[best]);
      rank[best - 1] = e ? e->rank : INT32_MAX;
      nid[best - 1] = e ? e->id : -1;
    }
    if (best + 1 < m) {
      const wk_merge_slot *e = wk_merge_get(mm, ids[best], ids[best + 1]);
      rank[best] = e ? e->rank : INT32_MAX;
      nid[best] = e ? e->id : -1;
    }
  }
  return m;
}

// Merge loop for long words: a binary heap of candidate merges with lazy invalidation.
typedef struct { int32_t rank; uint32_t pos; int32_t id; } cand;
static inline bool cand_less(cand a, cand b) {
  return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}
static void heap_push(cand *h, size_t *n, cand c) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!cand_less(c, h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = c;
}
static cand heap_pop(cand *h, size_t *n) {
  cand top = h[0], last = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    cand mv = last;
    if (l < *n && cand_less(h[l], mv)) { m = l; mv = h[l]; }
    if (r < *n && cand_less(h[r], mv)) m = r;
    if (m == i) break;
    h[i] = h[m];
    i = m;
  }
  if (*n) h[i] = last;
  return top;
}

static size_t merge_large(const wk_merge_map *mm, int32_t *ids, size_t m, bool *oom) {
  int32_t *prev = malloc(m * sizeof *prev), *next = malloc(m * sizeof *next);
  cand *heap = malloc(3 * m * sizeof *heap);   // m initial + at most 2 per merge
  if (!prev || !next || !heap) {
    free(prev); free(next); free(heap);
    *oom = true;
    return m;
  }
  size_t hn = 0;
  for (size_t i = 0; i < m; i++) {
    prev[i] = (int32_t)i - 1;
    next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    if (i + 1 < m) {
      const wk_merge_slot *e = wk_merge_get(mm, ids[i], ids[i + 1]);
      if (e) heap_push(heap, &hn, (cand){e->rank, (uint32_t)i, e->id});
    }
  }
  while (hn) {
    cand c = heap_pop(heap, &hn);
    int32_t p = (int32_t)c.pos, r = next[p];
    if (ids[p] < 0 || r < 0) continue;
    const wk_merge_slot *e = wk_merge_get(mm, ids[p], ids[r]);
    if (!e || e->id != c.id) continue;   // stale
    ids[p] = c.id;
    ids[r] = -1;
    next[p] = next[r];
    if (next[r] >= 0) prev[next[r]] = p;
    if (prev[p] >= 0) {
      const wk_merge_slot *f = wk_merge_get(mm, ids[prev[p]], ids[p]);
      if (f) heap_push(heap, &hn, (cand){f->rank, (uint32_t)prev[p], f->id});
    }
    if (next[p] >= 0) {
      const wk_merge_slot *f = wk_merge_get(mm, ids[p], ids[next[p]]);
      if (f) heap_push(heap, &hn, (cand){f->rank, (uint32_t)p, f->id});
    }
  }
  size_t k = 0;
  for (size_t i = 0; i < m; i++)
    if (ids[i] >= 0) ids[k++] = ids[i];
  free(prev); free(next); free(heap);
  return k;
}

// Initial symbols of s[0..n); returns their count (<= n).
static size_t symbols(const wk_tokenizer *t, const char *s, size_t n, int32_t *ids) {
  const unsigned char *u = (const unsigned char *)s;
  size_t m = 0;
  bool last_unk = false;
  if (t->byte_level) {
    for (size_t i = 0; i < n; i++) {
      int32_t id = t->byte_tok[u[i]];
      if (id >= 0) { ids[m++] = id; last_unk = false; }
      else if (t->unk >= 0 && !(t->fuse_unk && last_unk)) { ids[m++] = t->unk; last_unk = true; }
    }
    return m;
  }
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = (size_t)wk_utf8_decode(u + i, n - i, &cp);
    int32_t id = wk_smap_get(&t->vocab, s + i, l);
    if (id >= 0) {
      ids[m++] = id;
      last_unk = false;
    } else {
      bool all = t->byte_fallback;
      for (size_t k = 0; all && k < l; k++) all = t->byte_fb[u[i + k]] >= 0;
      if (all) {
        for (size_t k = 0; k < l; k++) ids[m++] = t->byte_fb[u[i + k]];
        last_unk = false;
      } else if (t->unk >= 0 && !(t->fuse_unk && last_unk)) {
        ids[m++] = t->unk;
        last_unk = true;
      }
    }
    i += l;
  }
  return m;
}

void wk_bpe_word(const wk_tokenizer *t, const char *s, size_t n, wk_idvec *out, bool use_cache) {
  if (t->ignore_merges) {
    int32_t id = wk_smap_get(t->byte_level ? &t->raw_vocab : &t->vocab, s, n);
    if (id >= 0) { wk_idvec_push(out, id); return; }
  }
  uint64_t h = 0;
  use_cache = use_cache && n <= CACHE_KEY_MAX;
  if (use_cache) {
    h = wk_tok_hash(s, n);
    const wk_cache_slot *e = cache_find(t->cache, s, n, h);
    if (e) {
      const int32_t *v = t->cache->ids + e->ids_off;
      for (size_t i = 0; i < e->n_ids; i++) wk_idvec_push(out, v[i]);
      return;
    }
  }
  int32_t small[SMALL];
  int32_t *ids = n <= SMALL ? small : malloc(n * sizeof *ids);
  if (!ids) { out->oom = true; return; }
  size_t m = symbols(t, s, n, ids);
  if (m <= SMALL) m = merge_small(&t->merges, ids, m);
  else m = merge_large(&t->merges, ids, m, &out->oom);
  for (size_t i = 0; i < m; i++) wk_idvec_push(out, ids[i]);
  if (use_cache && m <= CACHE_IDS_MAX) cache_put(t->cache, s, n, h, ids, m);
  if (ids != small) free(ids);
}
