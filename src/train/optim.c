// AdamW and SGD as lazy graphs over all parameters (one plan per step, reused), the
// global gradient norm, and learning-rate schedules.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "wick/ops.h"
#include "wick/optim.h"

struct wk_optim {
  wk_optim_config c;
  int n;
  int per_param;          // state tensors per parameter: 2 (AdamW) or 1 (SGD)
  wk_tensor **state;      // n * per_param, f32, evaluated
  char (*names)[32];
  int64_t steps;
};

wk_optim_config wk_adamw_defaults(void) {
  return (wk_optim_config){.kind = WK_OPT_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                           .weight_decay = 0.01f};
}

wk_optim_config wk_sgd_defaults(void) {
  return (wk_optim_config){.kind = WK_OPT_SGD, .lr = 1e-2f, .momentum = 0.9f};
}

static wk_status check(const wk_optim_config *c) {
  if (!(c->lr >= 0)) return wk_error(WK_ERR_ARG, "optimizer: learning rate %g must be >= 0", c->lr);
  if (!(c->weight_decay >= 0)) return wk_error(WK_ERR_ARG, "optimizer: weight decay %g must be >= 0", c->weight_decay);
  if (c->kind == WK_OPT_ADAMW) {
    if (!(c->beta1 >= 0 && c->beta1 < 1)) return wk_error(WK_ERR_ARG, "AdamW: beta1 %g is outside [0, 1)", c->beta1);
    if (!(c->beta2 >= 0 && c->beta2 < 1)) return wk_error(WK_ERR_ARG, "AdamW: beta2 %g is outside [0, 1)", c->beta2);
    if (!(c->eps > 0)) return wk_error(WK_ERR_ARG, "AdamW: eps %g must be > 0", c->eps);
  } else if (c->kind == WK_OPT_SGD) {
    if (!(c->momentum >= 0 && c->momentum < 1)) return wk_error(WK_ERR_ARG, "SGD: momentum %g is outside [0, 1)", c->momentum);
  } else return wk_error(WK_ERR_ARG, "optimizer: unknown kind %d", (int)c->kind);
  return WK_OK;
}

void wk_optim_free(wk_optim *o) {
  if (!o) return;
  for (int i = 0; o->state && i < o->n * o->per_param; i++) wk_tensor_free(o->state[i]);
  free(o->state);
  free(o->names);
  free(o);
}

wk_optim *wk_optim_new(const wk_optim_config *c, int n, wk_tensor *const *params) {
  if (!c || n < 0 || (n && !params)) { wk_error(WK_ERR_ARG, "optim_new: bad arguments"); return NULL; }
  if (check(c)) return NULL;
  wk_optim *o = calloc(1, sizeof *o);
  if (!o) { wk_error(WK_ERR_OOM, "optim_new: out of memory"); return NULL; }
  o->c = *c;
  o->n = n;
  o->per_param = c->kind == WK_OPT_ADAMW ? 2 : c->momentum > 0 ? 1 : 0;
  size_t ns = (size_t)(n * o->per_param);
  o->state = calloc(ns ? ns : 1, sizeof *o->state);
  o->names = calloc(ns ? ns : 1, sizeof *o->names);
  if (!o->state || !o->names) { wk_optim_free(o); wk_error(WK_ERR_OOM, "optim_new: out of memory"); return NULL; }
  static const char *const kinds[2][2] = {{"exp_avg", "exp_avg_sq"}, {"momentum", ""}};
  for (int i = 0; i < n; i++)
    for (int k = 0; k < o->per_param; k++) {
      wk_tensor *p = params[i];
      wk_tensor *z = wk_keep(wk_zeros(wk_ndim(p), wk_shape(p), WK_F32));
      if (z && wk_tensor_device(p) != WK_CPU) {
        wk_tensor *d = wk_keep(wk_to_device(z, wk_tensor_device(p)));
        wk_tensor_free(z);
        z = d;
      }
      if (!z || wk_eval(1, &z)) { wk_tensor_free(z); wk_optim_free(o); return NULL; }
      o->state[i * o->per_param + k] = z;
      snprintf(o->names[i * o->per_param + k], sizeof o->names[0], "%s.%d", kinds[o->c.kind][k], i);
    }
  return o;
}

// torch's lerp: weight < 0.5 ? a + w (b - a) : b - (b - a)(1 - w)
static wk_tensor *lerp(wk_tensor *a, wk_tensor *b, float w) {
  wk_tensor *d = wk_sub(b, a);
  return w < 0.5f ? wk_add(a, wk_mul_scalar(d, w)) : wk_sub(b, wk_mul_scalar(d, 1.0f - w));
}

// The new parameter (and state in st[]) for one AdamW update, as lazy tensors.
static wk_tensor *adamw(const wk_optim *o, wk_tensor *p, wk_tensor *g, wk_tensor **st, float lr, int64_t t) {
  const wk_optim_config *c = &o->c;
  double bc1 = 1.0 - pow((double)c->beta1, (double)t), bc2 = 1.0 - pow((double)c->beta2, (double)t);
  if (c->weight_decay > 0) p = wk_mul_scalar(p, (float)(1.0 - (double)lr * c->weight_decay));
  st[0] = lerp(st[0], g, 1.0f - c->beta1);
  st[1] = wk_add(wk_mul_scalar(st[1], c->beta2), wk_mul_scalar(wk_mul(g, g), 1.0f - c->beta2));
  wk_tensor *denom = wk_add_scalar(wk_mul_scalar(wk_sqrt(st[1]), (float)(1.0 / sqrt(bc2))), c->eps);
  return wk_add(p, wk_mul_scalar(wk_div(st[0], denom), (float)(-(double)lr / bc1)));
}

static wk_tensor *sgd(const wk_optim *o, wk_tensor *p, wk_tensor *g, wk_tensor **st, float lr) {
  const wk_optim_config *c = &o->c;
  if (c->weight_decay > 0) g = wk_add(g, wk_mul_scalar(p, c->weight_decay));
  if (c->momentum > 0) {
    st[0] = wk_add(wk_mul_scalar(st[0], c->momentum), g);   // zero state: the first step gives g exactly
    g = c->nesterov ? wk_add(g, wk_mul_scalar(st[0], c->momentum)) : st[0];
  }
  return wk_sub(p, wk_mul_scalar(g, lr));
}

// The update as lazy tensors: all[0..n) the new parameters, all[n..) the new state
// (kept references). The gradients are scaled by grad_scale, and by the 0-d tensor
// scale_t when given (a clip factor computed on the device).
wk_status wk_optim_prepare(wk_optim *o, wk_tensor *const *params, wk_tensor *const *grads, float lr, float grad_scale,
                           wk_tensor *scale_t, wk_tensor **all) {
  if (!o || (o->n && (!params || !grads || !all))) return wk_error(WK_ERR_ARG, "optim_step: bad arguments");
  if (lr < 0) lr = o->c.lr;
  int per = o->per_param, n = o->n, total = n * (1 + per);
  wk_scope_begin();
  wk_status s = WK_OK;
  for (int i = 0; i < n && !s; i++) {
    wk_tensor *g = grad_scale == 1.0f ? grads[i] : wk_mul_scalar(grads[i], grad_scale);
    if (scale_t) g = wk_mul(g, scale_t);
    wk_tensor **st = all + n + i * per;
    for (int k = 0; k < per; k++) st[k] = o->state[i * per + k];
    all[i] = o->c.kind == WK_OPT_ADAMW ? adamw(o, params[i], g, st, lr, o->steps + 1) : sgd(o, params[i], g, st, lr);
    if (!all[i]) s = WK_ERR_STATE;
    for (int k = 0; k < per; k++)
      if (!st[k]) s = WK_ERR_STATE;
  }
  for (int i = 0; i < total; i++) all[i] = s ? NULL : wk_keep(all[i]);
  wk_scope_end();
  return s;
}

// Takes the evaluated update: out[i] get the new parameters (the caller's references),
// the state is replaced and the step counted.
void wk_optim_commit(wk_optim *o, wk_tensor **all, wk_tensor **out) {
  int n = o->n;
  for (int i = 0; i < n; i++) out[i] = all[i];
  for (int k = 0; k < n * o->per_param; k++) {
    wk_tensor_free(o->state[k]);
    o->state[k] = all[n + k];
  }
  o->steps++;
}

wk_status wk_optim_step(wk_optim *o, wk_tensor *const *params, wk_tensor *const *grads, float lr, float grad_scale,
                        wk_tensor **out) {
  if (!o || (o->n && (!params || !grads || !out))) return wk_error(WK_ERR_ARG, "optim_step: bad arguments");
  int total = o->n * (1 + o->per_param);
  wk_tensor **all = calloc((size_t)(total ? total : 1), sizeof *all);
  if (!all) return wk_error(WK_ERR_OOM, "optim_step: out of memory");
  wk_status s = wk_optim_prepare(o, params, grads, lr, grad_scale, NULL, all);
  if (!s) s = wk_eval(total, all);
  if (!s) wk_optim_commit(o, all, out);
  else for (int i = 0; i < total; i++) wk_tensor_free(all[i]);
  free(all);
  return s;
}

int64_t wk_optim_steps(const wk_optim *o) { return o ? o->steps : 0; }
void wk_optim_set_steps(wk_optim *o, int64_t steps) { if (o) o->steps = steps; }
int wk_optim_state_count(const wk_optim *o) { return o ? o->n * o->per_param : 0; }

wk_tensor *wk_optim_state(const wk_optim *o, int k, const char **name) {
  if (!o || k < 0 || k >= o->n * o->per_param) return NULL;
  if (name) *name = o->names[k];
  return o->state[k];
}

wk_status wk_optim_set_state(wk_optim *o, int k, wk_tensor *t) {
  if (!o || k < 0 || k >= o->n * o->per_param) return wk_error(WK_ERR_ARG, "optim_set_state: no state %d", k);
  wk_tensor *old = o->state[k];
  char a[160], b[160];
  if (!t || wk_tensor_dtype(t) != WK_F32 || wk_numel(t) != wk_numel(old) || wk_ndim(t) != wk_ndim(old))
    return wk_error(WK_ERR_SHAPE, "optimizer state '%s' is %s, expected %s", o->names[k],
                    t ? wk_shape_str(t, a, sizeof a) : "NULL", wk_shape_str(old, b, sizeof b));
  o->state[k] = wk_tensor_ref(t);
  wk_tensor_free(old);
  return WK_OK;
}

static wk_tensor *sum_of_squares(int n, wk_tensor *const *ts) {
  wk_tensor *acc = NULL;
  for (int i = 0; i < n; i++) {
    wk_tensor *sq = wk_sum(wk_square(ts[i]), 0, NULL, 0);
    acc = acc ? wk_add(acc, sq) : sq;
  }
  return acc;
}

double wk_global_norm(int n, wk_tensor *const *ts) {
  if (n <= 0) return 0;
  wk_scope_begin();
  wk_tensor *acc = sum_of_squares(n, ts);
  double v = acc ? (double)wk_item(acc) : NAN;
  wk_scope_end();
  return sqrt(v);
}

wk_tensor *wk_global_norm_lazy(int n, wk_tensor *const *ts) {
  if (n <= 0) { wk_error(WK_ERR_ARG, "global_norm: no tensors"); return NULL; }
  return wk_sqrt(sum_of_squares(n, ts));
}

wk_tensor *wk_clip_coef_lazy(wk_tensor *norm, float max_norm) {
  // constants made from norm itself (0 * norm + c), so they live on its device
  wk_tensor *zero = wk_mul_scalar(norm, 0.0f);
  if (!(max_norm > 0)) return wk_add_scalar(zero, 1.0f);
  wk_tensor *c = wk_div(wk_add_scalar(zero, max_norm), wk_add_scalar(norm, 1e-6f));
  return wk_minimum(c, wk_add_scalar(zero, 1.0f));
}

float wk_clip_coef(double norm, float max_norm) {
  if (!(max_norm > 0)) return 1.0f;
  double c = (double)max_norm / (norm + 1e-6);
  return c < 1.0 ? (float)c : 1.0f;
}

// ---- schedules ----
float wk_schedule_lr(const wk_schedule *s, int64_t step) {
  int64_t warm = s->warmup;
  if (s->kind == WK_SCHED_WARMUP_COSINE && warm <= 0) warm = s->total / 10 > 0 ? s->total / 10 : 1;
  if (step < warm) return s->lr * (float)((double)step / (double)(warm > 1 ? warm : 1));
  double rate = s->lr > 0 ? (double)s->min_lr / s->lr : 0, f = 1;
  double span = (double)(s->total - warm > 1 ? s->total - warm : 1), progress = (double)(step - warm) / span;
  switch (s->kind) {
    case WK_SCHED_CONSTANT: return s->lr;
    case WK_SCHED_LINEAR: f = fmax(0.0, (double)(s->total - step) / span); break;
    case WK_SCHED_COSINE:
    case WK_SCHED_WARMUP_COSINE: f = 0.5 * (1.0 + cos(3.14159265358979323846 * progress)); break;
  }
  f = f * (1 - rate) + rate;
  return (float)((double)s->lr * fmax(0.0, f));
}

static const char *const sched_names[] = {"constant", "linear", "cosine", "warmup-cosine"};

wk_status wk_schedule_parse(const char *name, wk_schedule_kind *out) {
  for (int i = 0; i < 4; i++)
    if (name && !strcmp(name, sched_names[i])) { *out = (wk_schedule_kind)i; return WK_OK; }
  return wk_error(WK_ERR_ARG, "unknown schedule '%s' (expected constant, linear, cosine or warmup-cosine)",
                  name ? name : "(null)");
}

const char *wk_schedule_name(wk_schedule_kind k) { return (unsigned)k < 4 ? sched_names[k] : "unknown"; }
