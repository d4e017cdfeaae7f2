// Reverse-mode autodiff as a graph transformation: walks the forward graph from
// the loss backwards, calling each op's VJP to build lazy gradient nodes.
#include <stdlib.h>
#include <string.h>
#include "graph.h"

wk_op_info wk_ops[WK_OP_COUNT] = {
#define WK_OP(name, kind, nin) {#name, WK_KIND_##kind, nin},
#include "ops.def"
#undef WK_OP
};

// Names appear in error messages and plan dumps: lowercase, like the public API.
static char lower_names[WK_OP_COUNT][32];
__attribute__((constructor)) static void lowercase_op_names(void) {
  for (int i = 0; i < WK_OP_COUNT; i++) {
    const char *n = wk_ops[i].name;
    size_t k = 0;
    for (; n[k] && k < 31; k++) lower_names[i][k] = (char)(n[k] >= 'A' && n[k] <= 'Z' ? n[k] - 'A' + 'a' : n[k]);
    lower_names[i][k] = 0;
    wk_ops[i].name = lower_names[i];
  }
}

static const wk_vjp_fn vjps[WK_OP_COUNT] = {
#define WK_OP(name, kind, nin) wk_vjp_##name,
#include "ops.def"
#undef WK_OP
};

// Walk into every tensor that still has its inputs: pending nodes, and realized
// ones that were not detached (eager mode, data reads, views of trainable leaves).
static bool grad_descend(const wk_tensor *t) { return t->nin > 0; }

static void accumulate(wk_tensor **slot, wk_tensor *g) {
  if (!*slot) { *slot = g; return; }
  wk_tensor *sum = wk_keep(wk_add(*slot, g));
  wk_tensor_free(*slot);
  wk_tensor_free(g);
  *slot = sum;
}

wk_status wk_grad(wk_tensor *loss, int n, wk_tensor *const *params, wk_tensor **grads) {
  if (!wk_tensor_valid(loss, "grad")) return WK_ERR_ARG;
  if (n < 0 || (n && (!params || !grads)))
    return wk_error(WK_ERR_ARG, "grad: %d parameters%s", n, n < 0 ? "" : ", with params or grads NULL");
  for (int i = 0; i < n; i++) {
    grads[i] = NULL;
    if (!wk_tensor_valid(params[i], "grad")) return WK_ERR_ARG;
    for (int j = 0; j < i; j++)   // one tensor, two gradients: they would share one reference
      if (params[j] == params[i]) return wk_error(WK_ERR_ARG, "grad: parameter %d is parameter %d again", i, j);
  }
  if (wk_numel(loss) != 1) {
    char b[160];
    return wk_error(WK_ERR_SHAPE, "grad: loss must have one element, got %s", wk_shape_str(loss, b, sizeof b));
  }
  wk_topo g;
  if (!wk_topo_build(&g, 1, &loss, grad_descend)) return wk_error(WK_ERR_OOM, "grad: out of memory");
  bool *req = calloc((size_t)g.n, sizeof *req);
  wk_tensor **cot = calloc((size_t)g.n, sizeof *cot);
  if (!req || !cot) {
    free(req); free(cot); wk_topo_free(&g);
    return wk_error(WK_ERR_OOM, "grad: out of memory");
  }
  for (int i = 0; i < g.n; i++) {
    wk_tensor *t = g.nodes[i];
    bool leaf = !grad_descend(t) || t->nin == 0;
    req[i] = leaf ? t->trainable : false;
    if (!leaf && t->op != WK_OP_STOP_GRAD)
      for (int k = 0; k < t->nin; k++) if (t->in[k] && req[wk_topo_in(&g, i, k)]) req[i] = true;
  }
  wk_status st = WK_OK;
  wk_scope_begin();
  cot[g.n - 1] = wk_keep(wk_full_on(loss->ndim, loss->shape, loss->dtype, 1.0, loss->device));
  for (int i = g.n - 1; i >= 0 && st == WK_OK; i--) {
    wk_tensor *t = g.nodes[i];
    if (!cot[i] || !req[i] || !grad_descend(t) || t->nin == 0) continue;
    bool need[WK_MAX_IN] = {0};
    wk_tensor *gin[WK_MAX_IN] = {0};
    for (int k = 0; k < t->nin; k++) need[k] = t->in[k] && req[wk_topo_in(&g, i, k)];
    st = vjps[t->op](t, cot[i], need, gin);
    for (int k = 0; k < t->nin; k++) {
      if (!gin[k]) continue; // no differentiable path (comparisons, integer outputs)
      if (need[k]) accumulate(&cot[wk_topo_in(&g, i, k)], gin[k]);
      else wk_tensor_free(gin[k]);
    }
  }
  wk_scope_end();
  for (int i = 0; i < n && st == WK_OK; i++) {
    int k = wk_topo_index(&g, params[i]);
    if (k >= 0 && cot[k]) {
      grads[i] = wk_node_finish(wk_tensor_ref(cot[k]));
    } else {
      grads[i] = wk_full_on(params[i]->ndim, params[i]->shape, params[i]->dtype, 0.0, params[i]->device);
    }
    if (!grads[i]) st = WK_ERR_STATE;
  }
  for (int i = 0; i < g.n; i++) wk_tensor_free(cot[i]);
  free(req);
  free(cot);
  wk_topo_free(&g);
  return st;
}

wk_status wk_value_and_grad(wk_tensor *loss, int n, wk_tensor *const *params, wk_tensor **grads, float *value) {
  wk_status st = wk_grad(loss, n, params, grads);
  if (st) return st;
  wk_tensor **all = malloc(sizeof *all * (size_t)(n + 1));
  if (!all) return wk_error(WK_ERR_OOM, "value_and_grad: out of memory");
  all[0] = loss;
  for (int i = 0; i < n; i++) all[i + 1] = grads[i];
  st = wk_eval(n + 1, all);
  free(all);
  if (!st && value) *value = wk_item(loss);
  return st;
}
