// Checkpoints and metrics of the trainer (trainer.c).
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "wick/lora.h"
#include "wick/optim.h"
#include "wick/train.h"

// What trainer_state.json records; a resume checks seed, batch and grad_accum against
// the run's (they define the data order) and continues from step.
typedef struct {
  int64_t step, total_steps;
  uint64_t seed;
  int batch, grad_accum;
  float loss;
} wk_ckpt_state;

// Creates out_dir; refuses one that holds files unless overwrite or resume; removes
// temporary checkpoint directories a killed run left behind.
wk_status wk_ckpt_prepare_dir(const char *out_dir, bool overwrite, bool resume);
// Writes out_dir/checkpoint-<step>/ through a temporary directory and a rename, then
// deletes all but the `keep` newest checkpoints, or (replace_others: a new run's first
// save over an old run's directory) every other one. On failure nothing older is touched.
wk_status wk_ckpt_save(const char *out_dir, const wk_adapter *a, const wk_optim *opt, const wk_ckpt_state *st,
                       int keep, const char *base, bool replace_others);
// Loads a checkpoint (or the newest in an out_dir) into a and opt; *step gets its step.
// st holds the run's seed, batch and grad_accum, checked against the checkpoint's.
wk_status wk_ckpt_load(const char *path, wk_adapter *a, wk_optim *opt, const wk_ckpt_state *st, int64_t *step);

// metrics.csv (rows of steps <= start kept from an earlier run) and loss.svg at close.
// The file is rewritten at the first row added, so a run that fails before its first
// step leaves an earlier run's metrics.csv and loss.svg as they were.
typedef struct wk_metrics wk_metrics;
wk_metrics *wk_metrics_open(const char *out_dir, int64_t start);
wk_status wk_metrics_add(wk_metrics *m, const wk_train_progress *p);
wk_status wk_metrics_close(wk_metrics *m, const char *out_dir);
