// Adapter registry: named adapters over one base model; switching is a pointer swap
// in the model's LoRA hook (no base weight is copied or touched).
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "train/adapter.h"

typedef struct {
  char *name;
  wk_adapter *a;
} entry;

struct wk_adapter_registry {
  wk_model *m;
  entry *e;
  int n, cap;
};

wk_adapter_registry *wk_registry_new(wk_model *m) {
  if (!m) { wk_error(WK_ERR_ARG, "registry_new: model is NULL"); return NULL; }
  wk_adapter_registry *r = calloc(1, sizeof *r);
  if (!r) { wk_error(WK_ERR_OOM, "registry_new: out of memory"); return NULL; }
  r->m = m;
  return r;
}

void wk_registry_free(wk_adapter_registry *r) {
  if (!r) return;
  for (int i = 0; i < r->n; i++) {
    wk_adapter_free(r->e[i].a);
    free(r->e[i].name);
  }
  free(r->e);
  free(r);
}

static int find(const wk_adapter_registry *r, const char *name) {
  for (int i = 0; i < r->n; i++)
    if (!strcmp(r->e[i].name, name)) return i;
  return -1;
}

static int find_adapter(const wk_adapter_registry *r, const wk_adapter *a) {
  for (int i = 0; i < r->n; i++)
    if (r->e[i].a == a) return i;
  return -1;
}

wk_status wk_registry_add(wk_adapter_registry *r, const char *name, wk_adapter *a) {
  // registered already: the registry owns it, so it is neither added twice (a double
  // free) nor freed here (the entry would dangle)
  int i = r && a ? find_adapter(r, a) : -1;
  if (i >= 0)
    return wk_error(WK_ERR_ARG, "registry_add: this adapter is registered already, as '%s' (not added as '%s')",
                    r->e[i].name, name ? name : "(NULL)");
  wk_status s = WK_OK;
  if (!r || !name || !a) s = wk_error(WK_ERR_ARG, "registry_add: NULL argument");
  else if (!*name) s = wk_error(WK_ERR_ARG, "registry_add: the name is empty");
  else if (a->model != r->m) s = wk_error(WK_ERR_ARG, "registry_add: adapter '%s' was made for another model", name);
  else if (find(r, name) >= 0) s = wk_error(WK_ERR_ARG, "registry_add: an adapter named '%s' is registered already", name);
  else if (r->n == r->cap) {
    int cap = r->cap ? 2 * r->cap : 4;
    entry *e = realloc(r->e, sizeof *e * (size_t)cap);
    if (!e) s = wk_error(WK_ERR_OOM, "registry_add: out of memory");
    else r->e = e, r->cap = cap;
  }
  char *copy = s ? NULL : strdup(name);
  if (!s && !copy) s = wk_error(WK_ERR_OOM, "registry_add: out of memory");
  if (s) { wk_adapter_free(a); return s; }
  r->e[r->n++] = (entry){copy, a};
  return WK_OK;
}

wk_status wk_registry_load(wk_adapter_registry *r, const char *name, const char *dir) {
  if (!r) return wk_error(WK_ERR_ARG, "registry_load: registry is NULL");
  wk_adapter *a = wk_adapter_load(r->m, dir);
  return a ? wk_registry_add(r, name, a) : WK_ERR_ARG;
}

wk_status wk_registry_activate(wk_adapter_registry *r, const char *name) {
  if (!r) return wk_error(WK_ERR_ARG, "registry_activate: registry is NULL");
  int i = name ? find(r, name) : -1;
  if (name && i < 0) return wk_error(WK_ERR_ARG, "registry_activate: no adapter named '%s'", name);
  return wk_model_use_adapter(r->m, i >= 0 ? r->e[i].a : NULL);
}

// Read from the model, not remembered: a merge, wk_model_use_adapter or
// wk_adapter_free also change which adapter the model uses.
const char *wk_registry_active(const wk_adapter_registry *r) {
  if (!r || !r->m->lora) return NULL;
  for (int i = 0; i < r->n; i++)
    if (r->m->lora == &r->e[i].a->hook) return r->e[i].name;
  return NULL;
}
int wk_registry_count(const wk_adapter_registry *r) { return r ? r->n : 0; }
const char *wk_registry_name(const wk_adapter_registry *r, int i) { return r && i >= 0 && i < r->n ? r->e[i].name : NULL; }
wk_adapter *wk_registry_get(const wk_adapter_registry *r, int i) { return r && i >= 0 && i < r->n ? r->e[i].a : NULL; }

wk_status wk_registry_remove(wk_adapter_registry *r, const char *name) {
  if (!r || !name) return wk_error(WK_ERR_ARG, "registry_remove: %s is NULL", r ? "the name" : "the registry");
  int i = find(r, name);
  if (i < 0) return wk_error(WK_ERR_ARG, "registry_remove: no adapter named '%s'", name);
  wk_adapter_free(r->e[i].a);   // detaches it if active
  free(r->e[i].name);
  memmove(r->e + i, r->e + i + 1, sizeof *r->e * (size_t)(r->n - i - 1));
  r->n--;
  return WK_OK;
}
