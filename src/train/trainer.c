// The LoRA trainer: batches, accumulation, clipping, optimizer, schedule, evaluation,
// metrics, checkpoints and resume. Everything that varies per step (data order,
// dropout seeds, learning rate) is a function of (seed, step), so a resumed run
// replays exactly.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "engine/engine.h"
#include "models/llama.h"
#include "train/adapter.h"
#include "train/checkpoint.h"
#include "wick/grad.h"
#include "wick/ops.h"
#include "wick/train.h"

wk_train_options wk_train_defaults(void) {
  wk_train_options o = {0};
  o.epochs = 1;
  o.batch = 4;
  o.seq_len = 256;
  o.grad_accum = 1;
  o.clip = 1.0f;
  o.optim = wk_adamw_defaults();
  o.schedule = (wk_schedule){.kind = WK_SCHED_CONSTANT, .lr = 2e-4f};
  o.shuffle = true;
  o.keep_checkpoints = 2;
  return o;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// ---- data order: example k of the run is perm_epoch(k / N)[k % N] ----
typedef struct {
  const wk_dataset *d;
  uint64_t seed;
  bool shuffle;
  int64_t epoch;     // the epoch perm holds, or -1
  int64_t *perm;
} order;

static int64_t order_at(order *o, int64_t k) {
  int64_t n = wk_dataset_size(o->d), e = k / n;
  if (!o->shuffle) return k % n;
  if (e != o->epoch) {   // Fisher-Yates with a generator seeded by (seed, epoch)
    uint64_t s = mix(o->seed ^ mix((uint64_t)e + 1));
    for (int64_t i = 0; i < n; i++) o->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
      s = mix(s);
      int64_t j = (int64_t)(s % (uint64_t)(i + 1)), t = o->perm[i];
      o->perm[i] = o->perm[j];
      o->perm[j] = t;
    }
    o->epoch = e;
  }
  return o->perm[k % n];
}

// ---- batches: right-padded, lengths rounded up to a multiple of 16 ----
typedef struct {
  wk_tensor *ids, *labels;
  int64_t tokens;    // labels that count
  int64_t real;      // non-padding tokens
} batch_t;

static wk_status make_batch(const wk_dataset *d, const int64_t *idx, int nb, int64_t seq_len, wk_device dev,
                            batch_t *b) {
  int64_t T = 2;
  for (int i = 0; i < nb; i++) {
    int64_t n = wk_dataset_get(d, idx[i])->n;
    if (n > T) T = n;
  }
  if (T > seq_len && seq_len >= 2) T = seq_len;
  int64_t bucket = (T + 15) / 16 * 16;
  if (bucket <= seq_len || seq_len < 2) T = bucket;
  int32_t *ids = calloc((size_t)(nb * T), sizeof *ids), *lab = malloc(sizeof *lab * (size_t)(nb * T));
  if (!ids || !lab) { free(ids); free(lab); return wk_error(WK_ERR_OOM, "train: out of memory for a batch"); }
  b->tokens = b->real = 0;
  for (int i = 0; i < nb; i++) {
    const wk_example *e = wk_dataset_get(d, idx[i]);
    int64_t n = e->n < T ? e->n : T;
    memcpy(ids + i * T, e->ids, sizeof *ids * (size_t)n);
    memcpy(lab + i * T, e->labels, sizeof *lab * (size_t)n);
    for (int64_t t = n; t < T; t++) lab[i * T + t] = WK_IGNORE_INDEX;   // padding id 0 never counts
    for (int64_t t = 1; t < n; t++) b->tokens += lab[i * T + t] != WK_IGNORE_INDEX;
    b->real += n;
  }
  b->ids = wk_keep(wk_from_data(2, (int64_t[]){nb, T}, WK_I32, ids));
  b->labels = wk_keep(wk_from_data(2, (int64_t[]){nb, T}, WK_I32, lab));
  free(ids);
  free(lab);
  for (int k = 0; k < 2 && dev != WK_CPU; k++) {   // the batch goes where the model is
    wk_tensor **t = k ? &b->labels : &b->ids;
    wk_tensor *moved = *t ? wk_keep(wk_to_device(*t, dev)) : NULL;
    wk_tensor_free(*t);
    *t = moved;
  }
  if (!b->ids || !b->labels) {
    wk_tensor_free(b->ids);
    wk_tensor_free(b->labels);
    return WK_ERR_OOM;
  }
  return WK_OK;
}

static void free_batch(batch_t *b) {
  wk_tensor_free(b->ids);
  wk_tensor_free(b->labels);
  b->ids = b->labels = NULL;
}

wk_status wk_eval_loss(wk_model *m, const wk_dataset *d, int batch, float *loss) {
  int64_t n = wk_dataset_size(d);
  if (!m || !d || batch < 1 || !loss) return wk_error(WK_ERR_ARG, "eval_loss: bad arguments");
  const wk_lora_hook *h = m->lora;
  bool was_training = h && h->training;
  if (was_training) ((wk_lora_hook *)h)->training = false;
  double sum = 0;
  int64_t count = 0;
  wk_status s = WK_OK;
  int64_t *idx = malloc(sizeof *idx * (size_t)batch);
  if (!idx) s = wk_error(WK_ERR_OOM, "eval_loss: out of memory");
  for (int64_t at = 0; !s && at < n; at += batch) {
    int nb = (int)(n - at < batch ? n - at : batch);
    for (int i = 0; i < nb; i++) idx[i] = at + i;
    batch_t b;
    if ((s = make_batch(d, idx, nb, INT64_MAX, wk_model_device(m), &b))) break;
    wk_scope_begin();
    float v = wk_item(wk_causal_lm_loss(m, b.ids, b.labels));
    wk_scope_end();
    if (isnan(v) && b.tokens) s = WK_ERR_STATE;
    else if (b.tokens) sum += (double)v * (double)b.tokens, count += b.tokens;
    free_batch(&b);
  }
  free(idx);
  if (was_training) ((wk_lora_hook *)h)->training = true;
  if (!s) *loss = count ? (float)(sum / (double)count) : NAN;
  return s;
}

// ---- one optimizer step: grad_accum micro-batches, averaged ----
typedef struct {
  wk_model *m;
  wk_adapter *a;
  const wk_dataset *data;
  const wk_train_options *o;
  wk_optim *opt;
  order ord;
  int n;                 // adapter tensors
  wk_tensor **params, **acc;
  wk_tensor *loss;       // one_plan: the step's loss, not evaluated yet
} trainer;

// A step of one micro-batch without gradient checkpointing runs as one plan: the
// loss, its gradients, their norm, the clip factor and the update are evaluated
// together (on CUDA one graph launch), and the update is taken only when the loss
// and the norm are finite. Otherwise (accumulation, checkpointing) the micro-batches'
// gradients are evaluated first and the update follows from the norm read back.
static bool one_plan(const wk_train_options *o) { return o->grad_accum == 1 && !o->grad_checkpoint; }

static wk_status micro_step(trainer *t, int64_t step, int micro, float *loss, batch_t *b) {
  const wk_train_options *o = t->o;
  int64_t *idx = malloc(sizeof *idx * (size_t)o->batch);
  if (!idx) return wk_error(WK_ERR_OOM, "train: out of memory");
  int64_t first = ((step - 1) * o->grad_accum + micro) * o->batch;
  for (int i = 0; i < o->batch; i++) idx[i] = order_at(&t->ord, first + i);
  wk_status s = make_batch(t->data, idx, o->batch, o->seq_len, wk_model_device(t->m), b);
  free(idx);
  if (s) return s;
  wk_adapter_set_training(t->a, true, mix(o->seed ^ mix((uint64_t)(step * o->grad_accum + micro))));
  wk_adapter_params(t->a, t->params);
  wk_scope_begin();
  wk_tensor **g = calloc((size_t)t->n, sizeof *g);
  if (!g) s = wk_error(WK_ERR_OOM, "train: out of memory");
  else if (o->grad_checkpoint) {
    s = wk_causal_lm_value_and_grad_ckpt(t->m, b->ids, b->labels, t->n, t->params, g, loss);
  } else if (one_plan(o)) {
    wk_tensor *l = wk_causal_lm_loss(t->m, b->ids, b->labels);
    s = l ? wk_grad(l, t->n, t->params, g) : WK_ERR_STATE;
    if (!s) t->loss = wk_keep(l);
  } else s = wk_value_and_grad(wk_causal_lm_loss(t->m, b->ids, b->labels), t->n, t->params, g, loss);
  for (int i = 0; !s && i < t->n; i++) {
    // accumulate the sum; the optimizer scales by 1 / grad_accum
    wk_tensor *sum = wk_keep(t->acc[i] ? wk_add(t->acc[i], g[i]) : g[i]);   // the scope's reference moves here
    wk_tensor_free(t->acc[i]);
    t->acc[i] = sum;
  }
  if (!s && o->grad_accum > 1 && wk_eval(t->n, t->acc)) s = WK_ERR_STATE;
  wk_scope_end();
  free(g);
  wk_adapter_set_training(t->a, false, 0);
  return s;
}

// A step between its submission and its read-back. One-plan steps (below) are queued
// and their update installed at once, so that the next step's graph can be built while
// this one runs: loss_t and norm_t are read later, and prev holds what the adapter and
// the optimizer had before the step (its parameters, then the optimizer's states),
// restored if the step is not taken. Other steps ran to the end: loss and norm are set.
typedef struct {
  bool live;
  float loss;
  double norm;
  int64_t tokens;
  wk_tensor *loss_t, *norm_t;
  wk_tensor **prev;
  int64_t prev_steps;
} step_job;

// The one-plan step's evaluation, queued: loss, norm and update together; the update
// is installed now and taken back (step_restore) unless the loss and the norm read
// after it are both finite.
static wk_status evaluate_step(trainer *t, int64_t step, step_job *j) {
  const wk_train_options *o = t->o;
  int n = t->n, total = n + wk_optim_state_count(t->opt);
  wk_tensor **all = calloc((size_t)total + 2, sizeof *all), **next = calloc((size_t)n + 1, sizeof *next);
  wk_tensor **prev = calloc((size_t)total + 1, sizeof *prev);
  wk_status s = all && next && prev ? WK_OK : wk_error(WK_ERR_OOM, "train: out of memory");
  bool taken = false;
  wk_scope_begin();
  wk_tensor *nt = s ? NULL : wk_global_norm_lazy(n, t->acc);
  if (!s) s = nt ? WK_OK : WK_ERR_STATE;
  wk_adapter_params(t->a, t->params);
  if (!s) s = wk_optim_prepare(t->opt, t->params, t->acc, wk_schedule_lr(&o->schedule, step - 1), 1.0f,
                               o->clip > 0 ? wk_clip_coef_lazy(nt, o->clip) : NULL, all + 2);
  if (!s) {
    all[0] = t->loss, all[1] = nt;
    s = wk_eval_async(total + 2, all);
  }
  if (!s) {
    for (int i = 0; i < n; i++) prev[i] = wk_tensor_ref(t->params[i]);
    for (int k = n; k < total; k++) prev[k] = wk_tensor_ref(wk_optim_state(t->opt, k - n, NULL));
    j->prev_steps = wk_optim_steps(t->opt);
    wk_optim_commit(t->opt, all + 2, next);
    for (int i = 0; i < n; i++) wk_adapter_set_param(t->a, i, next[i]), wk_tensor_free(next[i]);
    j->loss_t = t->loss;
    j->norm_t = wk_keep(nt);
    j->prev = prev;
    t->loss = NULL;
    prev = NULL;
    taken = true;
  }
  if (!taken)
    for (int i = 2; all && i < total + 2; i++) wk_tensor_free(all[i]);
  wk_scope_end();
  free(all);
  free(next);
  free(prev);
  return s;
}

// Lets go of what job j kept (the state before it, its loss and norm).
static void step_release(trainer *t, step_job *j) {
  int total = t->n + wk_optim_state_count(t->opt);
  for (int k = 0; j->prev && k < total; k++) wk_tensor_free(j->prev[k]);
  free(j->prev);
  wk_tensor_free(j->loss_t);
  wk_tensor_free(j->norm_t);
  memset(j, 0, sizeof *j);
}
// Puts back what the adapter and the optimizer held before job j.
static void step_restore(trainer *t, step_job *j) {
  if (!j->prev) return;
  for (int i = 0; i < t->n; i++) wk_adapter_set_param(t->a, i, j->prev[i]);
  for (int k = 0; k < wk_optim_state_count(t->opt); k++) wk_optim_set_state(t->opt, k, j->prev[t->n + k]);
  wk_optim_set_steps(t->opt, j->prev_steps);
}
// A queued step that is not to be taken (the run stops before it): once it has run,
// its update is put back.
static void step_drop(trainer *t, step_job *j) {
  if (!j->live) return;
  wk_sync();   // its failure, if any, is moot
  step_restore(t, j);
  step_release(t, j);
}

// A non-finite loss or gradient norm stops the run before the step's update.
static wk_status check_loss(float loss, int64_t step) {
  if (isfinite(loss)) return WK_OK;
  return wk_error(WK_ERR_STATE, "train: the loss is %s at step %lld: stopping before the update (the last checkpoint "
                  "is intact); try a lower learning rate or clipping", isnan(loss) ? "NaN" : "infinite", (long long)step);
}
static wk_status check_norm(double norm, int64_t step) {
  if (isfinite(norm)) return WK_OK;
  return wk_error(WK_ERR_STATE, "train: the gradient norm is not finite at step %lld: stopping before the update "
                  "(the last checkpoint is intact)", (long long)step);
}

// A step of grad_accum micro-batches (or with checkpointing), run to its end: the
// micro-batches' gradients summed, the norm read back, then the update.
static wk_status run_step(trainer *t, int64_t step, step_job *j) {
  const wk_train_options *o = t->o;
  double lsum = 0;
  wk_status s = WK_OK;
  for (int k = 0; k < o->grad_accum && !s; k++) {
    batch_t b = {0};
    float l = NAN;
    s = micro_step(t, step, k, &l, &b);
    j->tokens += b.real;
    free_batch(&b);
    if (!s) s = check_loss(l, step);
    lsum += l;
  }
  j->loss = (float)(lsum / o->grad_accum);
  if (!s) j->norm = wk_global_norm(t->n, t->acc) / o->grad_accum;
  if (!s) s = check_norm(j->norm, step);
  if (!s) {
    float lr = wk_schedule_lr(&o->schedule, step - 1);
    float scale = wk_clip_coef(j->norm, o->clip) / (float)o->grad_accum;
    wk_tensor **next = calloc((size_t)t->n, sizeof *next);
    wk_adapter_params(t->a, t->params);
    s = next ? wk_optim_step(t->opt, t->params, t->acc, lr, scale, next) : wk_error(WK_ERR_OOM, "train: out of memory");
    for (int i = 0; !s && i < t->n; i++) wk_adapter_set_param(t->a, i, next[i]);
    for (int i = 0; next && i < t->n; i++) wk_tensor_free(next[i]);
    free(next);
  }
  return s;
}

// Submits step `step` into j: a one-plan step is queued (step_finish reads its loss and
// norm), any other runs to its end.
static wk_status step_submit(trainer *t, int64_t step, step_job *j) {
  memset(j, 0, sizeof *j);
  wk_status s;
  if (one_plan(t->o)) {
    batch_t b = {0};
    float unused;
    s = micro_step(t, step, 0, &unused, &b);
    j->tokens = b.real;
    free_batch(&b);
    if (!s) s = evaluate_step(t, step, j);
  } else {
    s = run_step(t, step, j);
  }
  for (int i = 0; i < t->n; i++) {
    wk_tensor_free(t->acc[i]);
    t->acc[i] = NULL;
  }
  wk_tensor_free(t->loss);
  t->loss = NULL;
  j->live = !s;
  return s;
}

// Completes submitted step j: a queued step's loss and norm are read (its job done); a
// non-finite one stops the run before the update, which is taken back, and so is the
// step queued behind it (next, submitted after j).
static wk_status step_finish(trainer *t, int64_t step, step_job *j, step_job *next, float *loss, double *norm) {
  wk_status s = WK_OK;
  if (j->loss_t) {
    wk_tensor *ts[2] = {j->loss_t, j->norm_t};
    s = wk_eval(2, ts);
    j->loss = s ? NAN : wk_item(j->loss_t);
    j->norm = s ? NAN : (double)wk_item(j->norm_t);
    if (!s) s = check_loss(j->loss, step);
    if (!s) s = check_norm(j->norm, step);
  }
  *loss = j->loss;
  *norm = j->norm;
  if (s) {
    step_drop(t, next);
    step_restore(t, j);
  }
  step_release(t, j);
  return s;
}

// The run's steps: o's, or its epochs over d (a double: check_options bounds it first).
static double planned_steps(const wk_train_options *o, const wk_dataset *d) {
  if (o->steps > 0) return (double)o->steps;
  return ceil(o->epochs * (double)wk_dataset_size(d) / ((double)o->batch * o->grad_accum));
}
static int64_t total_steps(const wk_train_options *o, const wk_dataset *d) {
  int64_t s = (int64_t)planned_steps(o, d);
  return s > 0 ? s : 1;
}

// Every example must count a label within seq_len (batches are cut there): one whose
// targets all lie past it (a long masked prompt, loaded without max_len) would make a
// batch of 0 / 0 tokens, a NaN loss blamed on the learning rate.
static wk_status check_targets(const wk_dataset *d, int64_t seq_len) {
  for (int64_t i = 0; i < wk_dataset_size(d); i++) {
    const wk_example *e = wk_dataset_get(d, i);
    int64_t n = e->n < seq_len ? e->n : seq_len, t = 1;
    while (t < n && e->labels[t] == WK_IGNORE_INDEX) t++;
    if (t >= n)
      return wk_error(WK_ERR_ARG, "train: example %lld has no label to learn in its first %lld tokens (seq_len): load "
                      "the dataset with max_len = seq_len, which skips such examples, or raise seq_len",
                      (long long)i, (long long)seq_len);
  }
  return WK_OK;
}

#define MAX_STEPS (1LL << 40)
static wk_status check_options(const wk_train_options *o, const wk_dataset *d) {
  if (!o->out_dir || !*o->out_dir) return wk_error(WK_ERR_ARG, "train: an output directory is required");
  if (o->batch < 1 || o->batch > 65536) return wk_error(WK_ERR_ARG, "train: batch %d is outside [1, 65536]", o->batch);
  if (o->grad_accum < 1 || o->grad_accum > 65536)
    return wk_error(WK_ERR_ARG, "train: grad_accum %d is outside [1, 65536]", o->grad_accum);
  if (o->seq_len < 2) return wk_error(WK_ERR_ARG, "train: seq_len %lld must be >= 2", (long long)o->seq_len);
  if (o->steps < 0 || o->steps > MAX_STEPS)
    return wk_error(WK_ERR_ARG, "train: steps %lld is outside [0, 2^40] (0: from epochs)", (long long)o->steps);
  if (o->steps == 0 && !(o->epochs > 0 && o->epochs <= 1e9)) return wk_error(WK_ERR_ARG, "train: give steps > 0 or epochs in (0, 1e9]");
  if (!(o->schedule.lr >= 0) || !isfinite(o->schedule.lr))
    return wk_error(WK_ERR_ARG, "train: learning rate %g must be finite and >= 0", o->schedule.lr);
  if (!(o->schedule.min_lr >= 0) || !isfinite(o->schedule.min_lr))
    return wk_error(WK_ERR_ARG, "train: min_lr %g must be finite and >= 0", o->schedule.min_lr);
  if (o->schedule.warmup < 0) return wk_error(WK_ERR_ARG, "train: warmup %lld must be >= 0", (long long)o->schedule.warmup);
  if ((int)o->schedule.kind < 0 || o->schedule.kind > WK_SCHED_WARMUP_COSINE)
    return wk_error(WK_ERR_ARG, "train: schedule kind %d is unknown", (int)o->schedule.kind);
  if (!(o->clip >= 0)) return wk_error(WK_ERR_ARG, "train: clip %g must be >= 0 (0: off)", o->clip);
  if (o->save_every < 0 || o->eval_every < 0)
    return wk_error(WK_ERR_ARG, "train: save_every %lld and eval_every %lld must be >= 0 (0: at the end)",
                    (long long)o->save_every, (long long)o->eval_every);
  if (o->keep_checkpoints < 1) return wk_error(WK_ERR_ARG, "train: keep_checkpoints %d must be >= 1", o->keep_checkpoints);
  if (!d || !wk_dataset_size(d)) return wk_error(WK_ERR_ARG, "train: the dataset is empty");
  if (check_targets(d, o->seq_len)) return WK_ERR_ARG;
  double total = planned_steps(o, d);
  if (total > (double)MAX_STEPS) return wk_error(WK_ERR_ARG, "train: %g epochs make %g steps, more than 2^40", o->epochs, total);
  return WK_OK;
}

wk_status wk_train(wk_model *m, wk_adapter *a, const wk_dataset *data, const wk_train_options *opts,
                   wk_train_result *r) {
  if (!m || !a || !opts) return wk_error(WK_ERR_ARG, "train: model, adapter or options is NULL");
  if (a->model != m) return wk_error(WK_ERR_ARG, "train: the adapter was made for another model");
  if (a->merged) return wk_error(WK_ERR_STATE, "train: the adapter is merged into the base weights; unmerge it first");
  wk_train_options o = *opts;
  wk_status s = check_options(&o, data);
  if (s) return s;
  int64_t total = total_steps(&o, data);
  o.schedule.total = total;
  trainer t = {.m = m, .a = a, .data = data, .o = &o, .ord = {data, o.seed, o.shuffle, -1, NULL}};
  t.n = wk_adapter_params(a, NULL);
  t.params = calloc((size_t)t.n, sizeof *t.params);
  t.acc = calloc((size_t)t.n, sizeof *t.acc);
  t.ord.perm = malloc(sizeof *t.ord.perm * (size_t)wk_dataset_size(data));
  if (!t.params || !t.acc || !t.ord.perm) s = wk_error(WK_ERR_OOM, "train: out of memory");
  wk_optim_config oc = o.optim;
  oc.lr = o.schedule.lr;
  if (!s) {
    wk_adapter_params(a, t.params);
    t.opt = wk_optim_new(&oc, t.n, t.params);
    if (!t.opt) s = WK_ERR_ARG;
  }
  wk_ckpt_state cs = {.seed = o.seed, .batch = o.batch, .grad_accum = o.grad_accum, .total_steps = total};
  int64_t start = 0;
  if (!s) s = wk_ckpt_prepare_dir(o.out_dir, o.overwrite, o.resume != NULL);
  bool replacing = o.overwrite && !o.resume;   // an old run's checkpoints go at this run's first save
  if (!s && o.resume) s = wk_ckpt_load(o.resume, a, t.opt, &cs, &start);
  wk_metrics *mx = s ? NULL : wk_metrics_open(o.out_dir, start);
  if (!s && !mx) s = WK_ERR_IO;
  wk_model_use_adapter(m, a);
  wk_train_result res = {.first_loss = NAN, .last_loss = NAN, .eval_loss = NAN};
  double t0 = now_s();
  int64_t tokens = 0, step = start;
  // One-plan steps run pipelined: step k + 1 is built and queued while step k runs on
  // the device (its graph, batch and plan lookup overlap it), except after a step that
  // evaluates or saves (those read the adapter as step k left it). A stop after step k
  // takes step k + 1's update back.
  step_job cur = {0}, next = {0};
  if (!s && start < total) s = step_submit(&t, start + 1, &cur);
  for (step = start + 1; !s && step <= total; step++) {
    wk_train_progress p = {.step = step, .total_steps = total, .eval_loss = NAN};
    bool eval_now = o.eval && ((o.eval_every > 0 && step % o.eval_every == 0) || step == total);
    bool save_due = (o.save_every > 0 && step % o.save_every == 0) || step == total;
    wk_status s_next = one_plan(&o) && !eval_now && !save_due ? step_submit(&t, step + 1, &next) : WK_OK;
    tokens += cur.tokens;
    s = step_finish(&t, step, &cur, &next, &p.loss, &p.grad_norm);
    if (s) break;
    p.lr = wk_schedule_lr(&o.schedule, step - 1);
    p.epoch = (step * o.batch * o.grad_accum - 1) / wk_dataset_size(data);
    p.tokens = tokens;
    p.elapsed_s = now_s() - t0;
    p.tokens_per_s = (double)tokens / p.elapsed_s;
    p.eta_s = p.elapsed_s / (double)(step - start) * (double)(total - step);
    if (eval_now) {
      s = wk_eval_loss(m, o.eval, o.batch, &p.eval_loss);
      res.eval_loss = p.eval_loss;
    }
    if (isnan(res.first_loss)) res.first_loss = p.loss;
    res.last_loss = p.loss;
    res.steps_done = step;
    if (!s) s = wk_metrics_add(mx, &p);
    int stop = !s && o.callback && o.callback(&p, o.user);
    if (s || stop || s_next) step_drop(&t, &next);   // the adapter and optimizer as step k left them
    cs.step = step;
    cs.loss = p.loss;
    if (!s && (save_due || stop)) {
      s = wk_ckpt_save(o.out_dir, a, t.opt, &cs, o.keep_checkpoints, o.base_name, replacing);
      if (!s) replacing = false;
    }
    if (stop) { res.stopped = true; break; }
    if (!s) s = s_next;
    cur = next;
    memset(&next, 0, sizeof next);
    if (!s && !cur.live && step < total) s = step_submit(&t, step + 1, &cur);
  }
  step_drop(&t, &cur);   // (none is left queued on any path; a guard)
  step_drop(&t, &next);
  if (!s && !res.stopped) s = wk_adapter_save(a, o.out_dir, o.base_name);
  if (mx) {
    wk_status s2 = wk_metrics_close(mx, o.out_dir);
    if (!s) s = s2;
  }
  res.seconds = now_s() - t0;
  res.tokens_per_s = res.seconds > 0 ? (double)tokens / res.seconds : 0;
  if (r) *r = res;
  for (int i = 0; t.acc && i < t.n; i++) wk_tensor_free(t.acc[i]);
  wk_optim_free(t.opt);
  free(t.params);
  free(t.acc);
  free(t.ord.perm);
  return s;
}
