// Graph walks shared by autograd and the compiler: topological order of the
// nodes that targets depend on, with a pointer -> index map.
#pragma once
#include "engine.h"

typedef struct {
  wk_tensor **nodes;  // topological order: inputs before consumers
  int *in;            // in[i * WK_MAX_IN + k]: index of nodes[i]->in[k] (-1: not visited)
  int n, cap;
  // open-addressing map tensor* -> index in nodes (-2: seen, not listed yet)
  struct wk_topo_slot { wk_tensor *key; int val; } *map;
  int mapcap, mapused;
} wk_topo;

// Visits tensors reachable from targets. `descend(t)` says whether to walk into
// t's inputs (leaves are still listed). Returns false on out-of-memory.
bool wk_topo_build(wk_topo *g, int n, wk_tensor *const *targets, bool (*descend)(const wk_tensor *t));
int wk_topo_index(const wk_topo *g, const wk_tensor *t); // -1 if absent
// The index of node i's input k, found once when i was listed (the compiler asks per
// edge several times per evaluation: CSE, the plan key).
static inline int wk_topo_in(const wk_topo *g, int i, int k) { return g->in[(size_t)i * WK_MAX_IN + (size_t)k]; }
void wk_topo_free(wk_topo *g);
