// Hash maps and the arena used by the tokenizers.
#include <stdlib.h>
#include "tok/tok.h"

static size_t pow2_for(size_t expected) {
  size_t cap = 16;
  while (cap < expected * 2 + 16) cap *= 2;
  return cap;
}

bool wk_smap_init(wk_smap *m, size_t expected) {
  size_t cap = pow2_for(expected);
  m->slots = calloc(cap, sizeof *m->slots);
  m->mask = cap - 1;
  m->n = 0;
  return m->slots != NULL;
}

static bool smap_grow(wk_smap *m) {
  wk_smap bigger;
  if (!wk_smap_init(&bigger, (m->mask + 1)))   // doubles the capacity
    return false;
  for (size_t i = 0; i <= m->mask; i++) {
    wk_smap_slot *s = &m->slots[i];
    if (!s->h) continue;
    size_t j = (size_t)s->h & bigger.mask;
    while (bigger.slots[j].h) j = (j + 1) & bigger.mask;
    bigger.slots[j] = *s;
  }
  bigger.n = m->n;
  free(m->slots);
  *m = bigger;
  return true;
}

bool wk_smap_put(wk_smap *m, const char *s, size_t len, int32_t id) {
  if ((m->n + 1) * 2 > m->mask + 1 && !smap_grow(m)) return false;
  uint64_t h = wk_tok_hash(s, len);
  size_t i = (size_t)h & m->mask;
  for (;;) {
    wk_smap_slot *e = &m->slots[i];
    if (!e->h) {
      e->h = h; e->s = s; e->len = (uint32_t)len; e->id = id;
      m->n++;
      return true;
    }
    if (e->h == h && e->len == len && !memcmp(e->s, s, len)) return true;
    i = (i + 1) & m->mask;
  }
}

int32_t wk_smap_get(const wk_smap *m, const char *s, size_t len) {
  if (!m->slots) return -1;
  uint64_t h = wk_tok_hash(s, len);
  size_t i = (size_t)h & m->mask;
  for (;;) {
    const wk_smap_slot *e = &m->slots[i];
    if (!e->h) return -1;
    if (e->h == h && e->len == len && !memcmp(e->s, s, len)) return e->id;
    i = (i + 1) & m->mask;
  }
}

void wk_smap_free(wk_smap *m) { free(m->slots); m->slots = NULL; m->n = 0; }

bool wk_merge_map_init(wk_merge_map *m, size_t expected) {
  size_t cap = pow2_for(expected);
  m->slots = malloc(cap * sizeof *m->slots);
  if (!m->slots) return false;
  for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
  m->mask = cap - 1;
  m->n = 0;
  return true;
}

bool wk_merge_map_put(wk_merge_map *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
  if ((m->n + 1) * 2 > m->mask + 1) {
    wk_merge_map bigger;
    if (!wk_merge_map_init(&bigger, m->mask + 1)) return false;
    for (size_t i = 0; i <= m->mask; i++) {
      wk_merge_slot *s = &m->slots[i];
      if (s->key == UINT64_MAX) continue;
      size_t j = (size_t)((s->key * 0x9E3779B97F4A7C15ull) >> 20) & bigger.mask;
      while (bigger.slots[j].key != UINT64_MAX) j = (j + 1) & bigger.mask;
      bigger.slots[j] = *s;
    }
    bigger.n = m->n;
    free(m->slots);
    *m = bigger;
  }
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
  for (;;) {
    wk_merge_slot *s = &m->slots[i];
    if (s->key == key) return true;   // the first (lowest) rank stays
    if (s->key == UINT64_MAX) {
      s->key = key; s->rank = rank; s->id = id;
      m->n++;
      return true;
    }
    i = (i + 1) & m->mask;
  }
}

void wk_merge_map_free(wk_merge_map *m) { free(m->slots); m->slots = NULL; m->n = 0; }

struct wk_arena_block { wk_arena_block *next; size_t cap; char data[]; };

char *wk_arena_alloc(wk_arena *a, size_t n) {
  if (!a->head || a->cap - a->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    wk_arena_block *b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = a->head;
    b->cap = cap;
    a->head = b;
    a->used = 0;
    a->cap = cap;
  }
  char *p = a->head->data + a->used;
  a->used += n;
  return p;
}

char *wk_arena_strdup(wk_arena *a, const char *s, size_t n) {
  char *p = wk_arena_alloc(a, n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

void wk_arena_free(wk_arena *a) {
  wk_arena_block *b = a->head;
  while (b) {
    wk_arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
  a->used = a->cap = 0;
}
