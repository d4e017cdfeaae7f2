// The attention kernels' operand views (nn.c's sdpa, sdpa_bwd.c's backward): a
// [B, H, N, D] tensor as f32 rows with a unit last stride, and the additive mask as
// f32 with strides over [B, Hq, T, S]. Each reads in place where it can and converts
// into an owned buffer otherwise. Included by per-ISA sources (WK_ISA_FN).
#pragma once
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernels.h"

void WK_ISA_FN(wk_cpu_load_f32)(const wk_operand *o, void *const *slots, int64_t start, int64_t n, float *out);

typedef struct { const float *p; int64_t s0, s1, s2; } mat4; // unit stride on the last axis

static inline int64_t attn_numel(const wk_operand *o) {
  int64_t n = 1;
  for (int d = 0; d < o->ndim; d++) n *= o->shape[d];
  return n;
}

// o converted to f32 into a new buffer (*owned, freed by the caller); false when out of memory.
static inline const float *attn_load(const wk_operand *o, void *const *slots, float **owned) {
  int64_t n = attn_numel(o);
  if (!(*owned = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1)))) return NULL;
  WK_ISA_FN(wk_cpu_load_f32)(o, slots, 0, n, *owned);
  return *owned;
}

// A [B, H, N, D] operand as f32 with a unit last stride (converted into *owned if needed).
static inline bool attn_mat4(const wk_operand *o, void *const *slots, mat4 *m, float **owned) {
  *owned = NULL;
  bool direct = o->slot >= 0 && o->dtype == WK_F32 && (o->stride[3] == 1 || o->shape[3] == 1);
  if (direct) {
    *m = (mat4){(const float *)slots[o->slot] + o->offset, o->stride[0], o->stride[1], o->stride[2]};
    return true;
  }
  const float *p = attn_load(o, slots, owned);
  *m = (mat4){p, o->shape[1] * o->shape[2] * o->shape[3], o->shape[2] * o->shape[3], o->shape[3]};
  return p != NULL;
}

// The mask mk (broadcasting to [B, Hq, T, S]) as f32 in *mask with strides ms (0 on
// broadcast axes), converted into *owned when it is not f32.
static inline bool attn_mask(const wk_operand *mk, void *const *slots, const float **mask, int64_t ms[4],
                             float **owned) {
  int64_t st[WK_MAX_DIMS];
  *owned = NULL;
  if (mk->dtype == WK_F32) {
    *mask = (const float *)slots[mk->slot] + mk->offset;
    memcpy(st, mk->stride, sizeof st);
  } else {
    if (!(*mask = attn_load(mk, slots, owned))) return false;
    wk_contiguous_strides(mk->ndim, mk->shape, st);
  }
  for (int d = 0; d < mk->ndim; d++) ms[4 - mk->ndim + d] = mk->shape[d] == 1 ? 0 : st[d];
  return true;
}

// A block of scores whose max is -inf or NaN: every key masked (the row skips the
// block), unless a score is NaN (a NaN query or key upstream), which must make the
// row NaN rather than read as masked. The max alone can't tell: vector max drops NaNs.
static inline bool scores_nan(const float *s, int64_t n) {
  for (int64_t j = 0; j < n; j++)
    if (s[j] != s[j]) return true;
  return false;
}
