// LoRA adapters: creation with peft's initialization, activation on a model, merging.
#define _POSIX_C_SOURCE 200809L
// Saving and loading in PEFT's layout are in peft.c; the registry in registry.c.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "models/llama.h"
#include "train/adapter.h"
#include "wick/lora.h"
#include "wick/ops.h"

wk_lora_config wk_lora_defaults(void) {
  return (wk_lora_config){.rank = 8, .alpha = 16, .targets = (1u << WK_PROJ_Q) | (1u << WK_PROJ_V)};
}

float wk_lora_scale(const wk_lora_config *c) {
  return c->rslora ? c->alpha / sqrtf((float)c->rank) : c->alpha / (float)c->rank;
}

wk_status wk_lora_parse_targets(const char *list, unsigned *targets) {
  if (!list || !targets) return wk_error(WK_ERR_ARG, "LoRA targets: NULL argument");
  if (!strcmp(list, "all-linear") || !strcmp(list, "all")) { *targets = WK_LORA_ALL_LINEAR; return WK_OK; }
  unsigned mask = 0;
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ",");
    int found = -1;
    for (int i = 0; i < WK_PROJ_COUNT && found < 0; i++) {
      const char *full = wk_proj_name((wk_proj)i);
      size_t short_len = strlen(full) - 5;   // "q" of "q_proj", "gate" of "gate_proj"
      if ((n == strlen(full) && !strncmp(p, full, n)) || (n == short_len && !strncmp(p, full, n))) found = i;
    }
    if (found < 0)
      return wk_error(WK_ERR_ARG,
                      "LoRA targets: unknown module '%.*s' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, "
                      "up_proj, down_proj, their short forms q, k, ..., or all-linear)", (int)n, p);
    mask |= 1u << found;
    p += n;
    if (*p == ',') p++;
  }
  if (!mask) return wk_error(WK_ERR_ARG, "LoRA targets: the list '%s' names no module", list);
  *targets = mask;
  return WK_OK;
}

char *wk_lora_targets_str(unsigned targets, char *buf, size_t len) {
  size_t at = 0;
  if (len) buf[0] = 0;
  for (int i = 0; i < WK_PROJ_COUNT; i++) {
    if (!(targets & (1u << i))) continue;
    int w = snprintf(buf + at, at < len ? len - at : 0, "%s%s", at ? "," : "", wk_proj_name((wk_proj)i));
    if (w > 0) at += (size_t)w;
  }
  return buf;
}

wk_status wk_lora_check_config(const wk_lora_config *c, const char *who) {
  if (c->rank < 1) return wk_error(WK_ERR_ARG, "%s: rank %d must be >= 1", who, c->rank);
  if (!(c->alpha > 0) || !isfinite(c->alpha)) return wk_error(WK_ERR_ARG, "%s: alpha %g must be finite and > 0", who, c->alpha);
  if (!(c->dropout >= 0 && c->dropout < 1)) return wk_error(WK_ERR_ARG, "%s: dropout %g is outside [0, 1)", who, c->dropout);
  if (!(c->targets & WK_LORA_ALL_LINEAR)) return wk_error(WK_ERR_ARG, "%s: no target projections", who);
  return WK_OK;
}

// ---- construction ----
wk_adapter *wk_adapter_alloc(wk_model *m, const wk_lora_config *c) {
  if (!m || !c) { wk_error(WK_ERR_ARG, "LoRA adapter: model or config is NULL"); return NULL; }
  if (wk_lora_check_config(c, "LoRA adapter")) return NULL;
  int64_t L = m->cfg.num_hidden_layers;
  wk_adapter *a = calloc(1, sizeof *a);
  size_t slots = (size_t)L * WK_PROJ_COUNT;
  if (a) {
    a->hook.A = calloc(slots, sizeof *a->hook.A);
    a->hook.B = calloc(slots, sizeof *a->hook.B);
    a->params = calloc(2 * slots, sizeof *a->params);
    a->names = calloc(2 * slots, sizeof *a->names);
    a->originals = calloc(slots, sizeof *a->originals);
  }
  if (!a || !a->hook.A || !a->hook.B || !a->params || !a->names || !a->originals) {
    wk_adapter_free(a);
    wk_error(WK_ERR_OOM, "LoRA adapter: out of memory");
    return NULL;
  }
  a->model = m;
  a->cfg = *c;
  a->n_layers = L;
  a->hook.scale = wk_lora_scale(c);
  a->hook.dropout = c->dropout;
  return a;
}

void wk_lora_peft_name(char *buf, size_t len, int64_t l, wk_proj p, char ab) {
  snprintf(buf, len, "base_model.model.model.layers.%lld.%s.lora_%c.weight", (long long)l, wk_llama_hf_module(p), ab);
}

// t (an owned reference) on the model's device, evaluated; NULL on failure (t freed).
static wk_tensor *to_model_device(const wk_adapter *a, wk_tensor *t) {
  wk_device dev = wk_model_device(a->model);
  if (!t || wk_tensor_device(t) == dev) return t;
  wk_scope_begin();
  wk_tensor *r = wk_keep(wk_to_device(t, dev));
  wk_scope_end();
  wk_tensor_free(t);
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}

wk_status wk_adapter_put(wk_adapter *a, int64_t l, wk_proj p, wk_tensor *A, wk_tensor *B) {
  size_t i = (size_t)(l * WK_PROJ_COUNT + p);
  A = to_model_device(a, A);
  B = to_model_device(a, B);
  char name[2][160];
  wk_lora_peft_name(name[0], sizeof name[0], l, p, 'A');
  wk_lora_peft_name(name[1], sizeof name[1], l, p, 'B');
  char *n0 = A && B ? strdup(name[0]) : NULL, *n1 = n0 ? strdup(name[1]) : NULL;
  if (!n1) {   // the references are consumed either way
    free(n0);
    wk_tensor_free(A);
    wk_tensor_free(B);
    return A && B ? wk_error(WK_ERR_OOM, "LoRA adapter: out of memory") : WK_ERR_DEVICE;
  }
  wk_set_trainable(A, 1);
  wk_set_trainable(B, 1);
  a->names[a->n_params] = n0;
  a->params[a->n_params++] = A;
  a->names[a->n_params] = n1;
  a->params[a->n_params++] = B;
  a->hook.A[i] = A;
  a->hook.B[i] = B;
  return WK_OK;
}

// splitmix64 step: independent streams per tensor from one seed
static uint64_t seed_of(uint64_t seed, uint64_t k) {
  uint64_t x = seed + 0x9e3779b97f4a7c15ull * (k + 1);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

wk_adapter *wk_adapter_new(wk_model *m, const wk_lora_config *c) {
  wk_adapter *a = wk_adapter_alloc(m, c);
  if (!a) return NULL;
  for (int64_t l = 0; l < a->n_layers; l++)
    for (int p = 0; p < WK_PROJ_COUNT; p++) {
      if (!(c->targets & (1u << p))) continue;
      int64_t out, in;
      wk_model_proj_dims(m, (wk_proj)p, &out, &in);
      // kaiming_uniform_(a=sqrt(5)): bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / 6)
      double bound = 1.0 / sqrt((double)in);
      wk_tensor *A = wk_keep(wk_rand(2, (int64_t[]){c->rank, in}, WK_F32, -bound, bound,
                                     seed_of(c->seed, (uint64_t)(l * WK_PROJ_COUNT + p))));
      wk_tensor *B = wk_keep(wk_zeros(2, (int64_t[]){out, c->rank}, WK_F32));
      if (!A || !B || wk_eval(2, (wk_tensor *[]){A, B})) {
        wk_tensor_free(A);
        wk_tensor_free(B);
        wk_adapter_free(a);
        return NULL;
      }
      if (wk_adapter_put(a, l, (wk_proj)p, A, B)) {   // put consumed A and B
        wk_adapter_free(a);
        return NULL;
      }
    }
  return a;
}

void wk_adapter_free(wk_adapter *a) {
  if (!a) return;
  if (a->model && a->model->lora == &a->hook) wk_llama_set_lora(a->model, NULL);
  if (a->merged) wk_adapter_unmerge(a);
  for (int i = 0; i < a->n_params; i++) {
    wk_tensor_free(a->params[i]);
    free(a->names[i]);
  }
  if (a->originals)
    for (int64_t i = 0; i < a->n_layers * WK_PROJ_COUNT; i++) wk_tensor_free(a->originals[i]);
  free(a->params);
  free(a->names);
  free(a->originals);
  free(a->hook.A);
  free(a->hook.B);
  free(a);
}

const wk_lora_config *wk_adapter_config(const wk_adapter *a) { return a ? &a->cfg : NULL; }

int wk_adapter_params(const wk_adapter *a, wk_tensor **out) {
  if (!a) return 0;
  if (out) memcpy(out, a->params, sizeof *out * (size_t)a->n_params);
  return a->n_params;
}

const char *wk_adapter_param_name(const wk_adapter *a, int i) {
  return a && i >= 0 && i < a->n_params ? a->names[i] : NULL;
}

wk_status wk_adapter_set_param(wk_adapter *a, int i, wk_tensor *t) {
  if (!a || i < 0 || i >= a->n_params) return wk_error(WK_ERR_ARG, "adapter_set_param: no parameter %d", i);
  if (a->merged)   // unmerge would subtract the new product, not the one merged in
    return wk_error(WK_ERR_STATE, "adapter_set_param: the adapter is merged into the base weights; unmerge it first");
  wk_tensor *old = a->params[i];
  char x[160], y[160];
  if (!t || wk_tensor_dtype(t) != WK_F32 || wk_ndim(t) != 2 || wk_dim(t, 0) != wk_dim(old, 0) ||
      wk_dim(t, 1) != wk_dim(old, 1))
    return wk_error(WK_ERR_SHAPE, "adapter_set_param: %s is %s, expected %s", a->names[i],
                    t ? wk_shape_str(t, x, sizeof x) : "NULL", wk_shape_str(old, y, sizeof y));
  t = to_model_device(a, wk_tensor_ref(t));
  if (!t) return WK_ERR_DEVICE;
  wk_set_trainable(t, 1);
  // parameter i is A or B of slot i / 2 in put order: find the hook entry holding old
  for (int64_t s = 0; s < a->n_layers * WK_PROJ_COUNT; s++) {
    if (a->hook.A[s] == old) a->hook.A[s] = t;
    if (a->hook.B[s] == old) a->hook.B[s] = t;
  }
  a->params[i] = t;
  wk_tensor_free(old);
  return WK_OK;
}

size_t wk_adapter_bytes(const wk_adapter *a) {
  size_t n = 0;
  for (int i = 0; a && i < a->n_params; i++) n += (size_t)wk_numel(a->params[i]) * sizeof(float);
  return n;
}

void wk_adapter_set_training(wk_adapter *a, bool on, uint64_t dropout_seed) {
  if (!a) return;
  a->hook.training = on && a->cfg.dropout > 0;
  a->hook.dropout_seed = dropout_seed;
}

wk_status wk_model_use_adapter(wk_model *m, wk_adapter *a) {
  if (!m) return wk_error(WK_ERR_ARG, "use_adapter: model is NULL");
  if (a && a->model != m) return wk_error(WK_ERR_ARG, "use_adapter: the adapter was made for another model");
  if (a && a->merged) return wk_error(WK_ERR_STATE, "use_adapter: the adapter is merged into the base weights already");
  wk_llama_set_lora(m, a ? &a->hook : NULL);
  return WK_OK;
}

// ---- merge ----
static wk_dtype merged_dtype(wk_dtype dt) {
  return dt == WK_F32 || dt == WK_F16 || dt == WK_BF16 ? dt : WK_F16;
}

// W + sign * s * B A in the dtype of the result, evaluated.
static wk_tensor *fold(wk_tensor *W, wk_tensor *A, wk_tensor *B, float scale, wk_dtype out) {
  wk_scope_begin();
  wk_tensor *w = wk_tensor_dtype(W) == WK_F32 ? W : wk_cast(W, WK_F32);
  wk_tensor *r = wk_add(w, wk_mul_scalar(wk_matmul(B, A), scale));
  if (r && out != WK_F32) r = wk_cast(r, out);
  r = wk_keep(r);
  wk_scope_end();
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); r = NULL; }
  return r;
}

// Computes every folded weight first and swaps them in only when all succeeded, so a
// failure (out of memory) leaves the model as it was.
static wk_status fold_all(wk_adapter *a, float sign) {
  size_t n = (size_t)(a->n_layers * WK_PROJ_COUNT);
  wk_tensor **next = calloc(n, sizeof *next);
  if (!next) return wk_error(WK_ERR_OOM, "adapter merge: out of memory");
  wk_status s = WK_OK;
  for (size_t i = 0; i < n && !s; i++) {
    if (!a->hook.A[i] || (sign < 0 && a->originals[i])) continue;
    wk_tensor *W = *wk_llama_proj_weight(a->model, (int64_t)(i / WK_PROJ_COUNT), (wk_proj)(i % WK_PROJ_COUNT));
    next[i] = fold(W, a->hook.A[i], a->hook.B[i], sign * a->hook.scale, merged_dtype(wk_tensor_dtype(W)));
    if (!next[i]) s = WK_ERR_STATE;
  }
  for (size_t i = 0; i < n; i++) {
    if (s) { wk_tensor_free(next[i]); continue; }
    wk_tensor **slot = wk_llama_proj_weight(a->model, (int64_t)(i / WK_PROJ_COUNT), (wk_proj)(i % WK_PROJ_COUNT));
    if (sign < 0 && a->originals[i]) {   // the merge changed the dtype: the original comes back exactly
      wk_tensor_free(*slot);
      *slot = a->originals[i];
      a->originals[i] = NULL;
    } else if (next[i]) {
      if (wk_tensor_dtype(next[i]) != wk_tensor_dtype(*slot)) a->originals[i] = *slot;   // keep the blocks
      else wk_tensor_free(*slot);
      *slot = next[i];
    }
  }
  free(next);
  return s;
}

wk_status wk_adapter_merge(wk_adapter *a) {
  if (!a) return wk_error(WK_ERR_ARG, "adapter_merge: adapter is NULL");
  if (a->merged) return wk_error(WK_ERR_STATE, "adapter_merge: the adapter is merged already");
  if (a->model->lora == &a->hook) wk_llama_set_lora(a->model, NULL);
  if (a->model->lora) return wk_error(WK_ERR_STATE, "adapter_merge: another adapter is active; deactivate it first");
  wk_status s = fold_all(a, 1.0f);
  if (!s) a->merged = true;
  return s;
}

wk_status wk_adapter_unmerge(wk_adapter *a) {
  if (!a) return wk_error(WK_ERR_ARG, "adapter_unmerge: adapter is NULL");
  if (!a->merged) return wk_error(WK_ERR_STATE, "adapter_unmerge: the adapter is not merged");
  wk_status s = fold_all(a, -1.0f);
  if (!s) a->merged = false;
  return s;
}

bool wk_adapter_is_merged(const wk_adapter *a) { return a && a->merged; }
