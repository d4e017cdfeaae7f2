// Iterative depth-first topological sort (chains of 100k nodes must not recurse).
#include <stdlib.h>
#include <string.h>
#include "graph.h"

static size_t ptr_hash(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x;
}

int wk_topo_index(const wk_topo *g, const wk_tensor *t) {
  if (!g->mapcap) return -1;
  for (size_t i = ptr_hash(t) & (size_t)(g->mapcap - 1);; i = (i + 1) & (size_t)(g->mapcap - 1)) {
    if (g->map[i].key == t) return g->map[i].val;
    if (!g->map[i].key) return -1;
  }
}

static bool map_grow(wk_topo *g) {
  int cap = g->mapcap ? g->mapcap * 2 : 256;
  struct wk_topo_slot *map = calloc((size_t)cap, sizeof *map);
  if (!map) return false;
  for (int j = 0; j < g->mapcap; j++) {
    if (!g->map[j].key) continue;
    size_t i = ptr_hash(g->map[j].key) & (size_t)(cap - 1);
    while (map[i].key) i = (i + 1) & (size_t)(cap - 1);
    map[i] = g->map[j];
  }
  free(g->map);
  g->map = map;
  g->mapcap = cap;
  return true;
}

// t's slot in the map, inserting t (value -2: seen, not listed yet) when absent, with
// *added set; -1 when out of memory.
static int64_t map_slot(wk_topo *g, wk_tensor *t, bool *added) {
  *added = false;
  if ((g->mapused + 1) * 2 >= g->mapcap && !map_grow(g)) return -1;
  size_t i = ptr_hash(t) & (size_t)(g->mapcap - 1);
  while (g->map[i].key && g->map[i].key != t) i = (i + 1) & (size_t)(g->mapcap - 1);
  if (!g->map[i].key) {
    g->mapused++;
    g->map[i].key = t;
    g->map[i].val = -2;
    *added = true;
  }
  return (int64_t)i;
}

// A node being walked: its inputs' indices fill in as they are listed.
typedef struct {
  wk_tensor *t;
  int next;
  bool walk;
  int in[WK_MAX_IN];
} frame;

// Lists f's node after its inputs. Returns its index, or -1 when out of memory.
static int emit(wk_topo *g, const frame *f) {
  if (g->n == g->cap) {
    int cap = g->cap ? g->cap * 2 : 64;
    wk_tensor **nodes = realloc(g->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return -1;
    g->nodes = nodes;
    int *in = realloc(g->in, (size_t)cap * WK_MAX_IN * sizeof *in);
    if (!in) return -1;
    g->in = in;
    g->cap = cap;
  }
  memcpy(g->in + (size_t)g->n * WK_MAX_IN, f->in, sizeof f->in);
  g->nodes[g->n] = f->t;
  bool added;
  int64_t slot = map_slot(g, f->t, &added);
  if (slot < 0) return -1;
  g->map[slot].val = g->n;
  return g->n++;
}

// Pushes t for walking (its inputs unknown yet). Returns false when out of memory.
static bool push(frame **st, int *sp, int *cap, wk_tensor *t, bool (*descend)(const wk_tensor *t)) {
  if (*sp == *cap) {
    frame *bigger = realloc(*st, (size_t)*cap * 2 * sizeof **st);
    if (!bigger) return false;
    *st = bigger;
    *cap *= 2;
  }
  frame *f = &(*st)[(*sp)++];
  f->t = t;
  f->next = 0;
  f->walk = descend(t);
  for (int k = 0; k < WK_MAX_IN; k++) f->in[k] = -1;
  return true;
}

// One map probe per edge: a child is either new (walked now) or listed already (a
// child seen but not listed would be an ancestor: a cycle, impossible here).
bool wk_topo_build(wk_topo *g, int n, wk_tensor *const *targets, bool (*descend)(const wk_tensor *t)) {
  memset(g, 0, sizeof *g);
  int cap = 64, sp = 0;
  frame *st = malloc((size_t)cap * sizeof *st);
  if (!st) return false;
  bool ok = true, added;
  for (int k = 0; k < n && ok; k++) {
    if (!targets[k]) continue;
    if (map_slot(g, targets[k], &added) < 0 || (added && !push(&st, &sp, &cap, targets[k], descend))) ok = false;
    while (sp && ok) {
      frame *f = &st[sp - 1];
      if (f->walk && f->next < f->t->nin) {
        int q = f->next++;
        wk_tensor *c = f->t->in[q];
        if (!c) continue;
        int64_t slot = map_slot(g, c, &added);
        if (slot < 0) ok = false;
        else if (!added) f->in[q] = g->map[slot].val;
        else ok = push(&st, &sp, &cap, c, descend);
        continue;
      }
      int idx = emit(g, f);
      sp--;
      if (idx < 0) ok = false;
      else if (sp) st[sp - 1].in[st[sp - 1].next - 1] = idx;
    }
  }
  free(st);
  return ok;
}

void wk_topo_free(wk_topo *g) {
  free(g->nodes);
  free(g->in);
  free(g->map);
  memset(g, 0, sizeof *g);
}
