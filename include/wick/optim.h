// wick optimizers and learning-rate schedules.
//
//   wk_optim_config oc = wk_adamw_defaults();        // lr 1e-3, betas 0.9/0.999, eps 1e-8, wd 0.01
//   wk_optim *opt = wk_optim_new(&oc, n, params);    // state (moments) starts at zero
//   wk_schedule sch = {.kind = WK_SCHED_COSINE, .lr = 2e-4f, .warmup = 10, .total = 500};
//   for (int64_t step = 0; step < 500; step++) {
//     ... grads of the loss (grad.h), evaluated ...
//     float coef = wk_clip_coef(wk_global_norm(n, grads), 1.0f);   // clip by global norm 1
//     wk_tensor *next[n];
//     wk_optim_step(opt, params, grads, wk_schedule_lr(&sch, step), coef, next);  // evaluated
//     ... params[i] = next[i] (wk_adapter_set_param) ...
//   }
//   wk_optim_free(opt);
//
// AdamW is torch.optim.AdamW's arithmetic (decoupled weight decay p *= 1 - lr*wd,
// moments by lerp and addcmul, bias corrections in double, p -= lr/bc1 * m /
// (sqrt(v)/sqrt(bc2) + eps)); SGD is torch.optim.SGD's (weight decay added to the
// gradient, momentum buffer, optional Nesterov). Each update is one lazy graph over
// all parameters, evaluated at once (one compiled plan, reused every step: lr and
// the clip coefficient are run-time scalars). State is f32, on the parameters' device.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "base.h"
#include "tensor.h"

typedef enum { WK_OPT_ADAMW = 0, WK_OPT_SGD } wk_optim_kind;

typedef struct {
  wk_optim_kind kind;
  float lr;             // used when wk_optim_step is given lr < 0
  float beta1, beta2;   // AdamW
  float eps;            // AdamW
  float weight_decay;
  float momentum;       // SGD (0: none)
  bool nesterov;        // SGD
} wk_optim_config;

wk_optim_config wk_adamw_defaults(void);   // torch's: lr 1e-3, betas 0.9/0.999, eps 1e-8, wd 0.01
wk_optim_config wk_sgd_defaults(void);     // lr 1e-2, momentum 0.9, wd 0

typedef struct wk_optim wk_optim;
// State for n parameters (their shapes and device). NULL with a message on a bad
// hyper-parameter (negative lr or decay, beta outside [0, 1), eps <= 0).
wk_optim *wk_optim_new(const wk_optim_config *c, int n, wk_tensor *const *params);
void wk_optim_free(wk_optim *o);
// One update with gradients scaled by grad_scale (clipping, accumulation): writes the
// n new, evaluated parameters to out (new references) and advances the state.
// On failure the state is unchanged.
wk_status wk_optim_step(wk_optim *o, wk_tensor *const *params, wk_tensor *const *grads, float lr, float grad_scale,
                        wk_tensor **out);
// The same in two halves, so that one evaluation can hold a whole training step:
// wk_optim_prepare builds the update lazily into all[0 .. n * (1 + state per param))
// (new references; gradients scaled by grad_scale and, when non-NULL, by the 0-d
// tensor scale_t), the caller evaluates all[] with whatever else it needs, then
// either wk_optim_commit(o, all, out) takes them (out as in wk_optim_step) or it frees
// them and the state is unchanged.
wk_status wk_optim_prepare(wk_optim *o, wk_tensor *const *params, wk_tensor *const *grads, float lr, float grad_scale,
                           wk_tensor *scale_t, wk_tensor **all);
void wk_optim_commit(wk_optim *o, wk_tensor **all, wk_tensor **out);
int64_t wk_optim_steps(const wk_optim *o);   // updates done so far
// The state as named tensors (for checkpoints): "exp_avg.<i>", "exp_avg_sq.<i>" or
// "momentum.<i>"; wk_optim_state_count tells how many. Owned by o.
int wk_optim_state_count(const wk_optim *o);
wk_tensor *wk_optim_state(const wk_optim *o, int k, const char **name);
// Replaces state k (same shape, f32) and the step count, for resuming.
wk_status wk_optim_set_state(wk_optim *o, int k, wk_tensor *t);
void wk_optim_set_steps(wk_optim *o, int64_t steps);

// sqrt(sum of squares of every element of the n tensors), evaluated (NaN on failure).
double wk_global_norm(int n, wk_tensor *const *ts);
// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)); 1 when
// max_norm <= 0 (no clipping).
float wk_clip_coef(double norm, float max_norm);
// Both as lazy 0-d f32 tensors on the tensors' device (f32 arithmetic throughout).
wk_tensor *wk_global_norm_lazy(int n, wk_tensor *const *ts);
wk_tensor *wk_clip_coef_lazy(wk_tensor *norm, float max_norm);

// ---- schedules (transformers' get_*_schedule_with_warmup) ----
typedef enum { WK_SCHED_CONSTANT = 0, WK_SCHED_LINEAR, WK_SCHED_COSINE, WK_SCHED_WARMUP_COSINE } wk_schedule_kind;
typedef struct {
  wk_schedule_kind kind;
  float lr;          // peak learning rate
  int64_t warmup;    // steps of linear warmup from 0 (all kinds; warmup-cosine defaults to 10% when 0)
  int64_t total;     // steps in the run (linear and cosine decay over total - warmup)
  float min_lr;      // floor the decay approaches (cosine: transformers' min_lr_rate = min_lr / lr)
} wk_schedule;
// The learning rate for step (0-based), as transformers' LambdaLR gives it.
float wk_schedule_lr(const wk_schedule *s, int64_t step);
// "constant", "linear", "cosine", "warmup-cosine"; an unknown name is an error naming it.
wk_status wk_schedule_parse(const char *name, wk_schedule_kind *out);
const char *wk_schedule_name(wk_schedule_kind k);
