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
    if (g->keys[i] == t) return g->vals[i];
    if (!g->keys[i]) return -1;
  }
}

static bool map_grow(wk_topo *g) {
  int cap = g->mapcap ? g->mapcap * 2 : 256;
  wk_tensor **keys = calloc((size_t)cap, sizeof *keys);
  int *vals = malloc((size_t)cap * sizeof *vals);
  if (!keys || !vals) { free(keys); free(vals); return false; }
  for (int j = 0; j < g->mapcap; j++) {
    if (!g->keys[j]) continue;
    size_t i = ptr_hash(g->keys[j]) & (size_t)(cap - 1);
    while (keys[i]) i = (i + 1) & (size_t)(cap - 1);
    keys[i] = g->keys[j];
    vals[i] = g->vals[j];
  }
  free(g->keys);
  free(g->vals);
  g->keys = keys;
  g->vals = vals;
  g->mapcap = cap;
  return true;
}

// Marks t as visited (value -2 until it is emitted). Returns false on OOM.
static bool map_put(wk_topo *g, wk_tensor *t, int v) {
  if ((g->mapused + 1) * 2 >= g->mapcap && !map_grow(g)) return false;
  size_t i = ptr_hash(t) & (size_t)(g->mapcap - 1);
  while (g->keys[i] && g->keys[i] != t) i = (i + 1) & (size_t)(g->mapcap - 1);
  if (!g->keys[i]) g->mapused++;
  g->keys[i] = t;
  g->vals[i] = v;
  return true;
}

// Lists t after its inputs (all listed already when `walked`, else left out).
static bool emit(wk_topo *g, wk_tensor *t, bool walked) {
  if (g->n == g->cap) {
    int cap = g->cap ? g->cap * 2 : 64;
    wk_tensor **nodes = realloc(g->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return false;
    g->nodes = nodes;
    int *in = realloc(g->in, (size_t)cap * WK_MAX_IN * sizeof *in);
    if (!in) return false;
    g->in = in;
    g->cap = cap;
  }
  int *in = g->in + (size_t)g->n * WK_MAX_IN;
  for (int k = 0; k < WK_MAX_IN; k++) in[k] = walked && k < t->nin && t->in[k] ? wk_topo_index(g, t->in[k]) : -1;
  g->nodes[g->n] = t;
  return map_put(g, t, g->n++);
}

bool wk_topo_build(wk_topo *g, int n, wk_tensor *const *targets, bool (*descend)(const wk_tensor *t)) {
  memset(g, 0, sizeof *g);
  typedef struct { wk_tensor *t; int next; bool walk; } frame;
  int cap = 64, sp = 0;
  frame *st = malloc((size_t)cap * sizeof *st);
  if (!st) return false;
  bool ok = true;
  for (int k = 0; k < n && ok; k++) {
    if (!targets[k] || wk_topo_index(g, targets[k]) != -1) continue;
    ok = map_put(g, targets[k], -2);
    st[sp++] = (frame){targets[k], 0, descend(targets[k])};
    while (sp && ok) {
      frame *f = &st[sp - 1];
      wk_tensor *t = f->t;
      if (f->walk && f->next < t->nin) {
        wk_tensor *c = t->in[f->next++];
        if (!c || wk_topo_index(g, c) != -1) continue;
        if (sp == cap) {
          frame *bigger = realloc(st, (size_t)cap * 2 * sizeof *st);
          if (!bigger) { ok = false; break; }
          st = bigger;
          cap *= 2;
        }
        ok = map_put(g, c, -2);
        st[sp++] = (frame){c, 0, descend(c)};
        continue;
      }
      sp--;
      ok = emit(g, t, f->walk);
    }
  }
  free(st);
  return ok;
}

void wk_topo_free(wk_topo *g) {
  free(g->nodes);
  free(g->in);
  free(g->keys);
  free(g->vals);
  memset(g, 0, sizeof *g);
}
