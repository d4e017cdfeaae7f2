// wick training: the causal-LM loss, datasets and the LoRA trainer.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "base.h"
#include "lora.h"
#include "model.h"
#include "optim.h"
#include "tensor.h"
#include "tokenizer.h"

// Labels equal to this don't count in the loss (the prompt, padding): HF's -100.
#define WK_IGNORE_INDEX (-100)

// Mean cross-entropy of the model's prediction at position t against labels[:, t + 1]
// over the labels that count (HF's causal-LM loss). ids and labels are i32 [B, T],
// T >= 2; padding goes at the end (right), where causal attention keeps it from
// touching earlier positions. Lazy f32 scalar.
wk_tensor *wk_causal_lm_loss(wk_model *m, wk_tensor *ids, wk_tensor *labels);
// The same loss (evaluated, in *loss) and its gradients with respect to the active
// adapter's tensors params[0..n) (in grads, owned by the caller's scope as
// wk_value_and_grad's are), with activation
// checkpointing: the forward keeps only each block's input; the backward recomputes
// one block at a time from it, so activations of one layer are alive at once (about
// one more forward pass of compute). Dropout masks repeat exactly in the recompute.
wk_status wk_causal_lm_value_and_grad_ckpt(wk_model *m, wk_tensor *ids, wk_tensor *labels, int n,
                                           wk_tensor *const *params, wk_tensor **grads, float *loss);

// ---- datasets (JSONL) ----
//
//   wk_dataset_options o = {.max_len = 256};
//   wk_dataset *d = wk_dataset_load("data/train.jsonl", tok, vocab, &o);
//
// One example per line: {"text": ...} (loss on every token; EOS appended),
// {"prompt": ..., "completion": ...} (loss on the completion and EOS),
// {"messages": [{"role", "content"}, ...]} (the model's chat template, chat.h; loss on
// each assistant turn's content and end-of-turn marker), or {"input_ids": [...],
// "labels": [...]} (pre-tokenized; labels optional, -100 masks). Blank lines are
// allowed. A malformed line is reported as "FILE:LINE: why" through warn and
// skipped, or, with strict, stops the load with that message. Examples longer than
// max_len (when > 0) are truncated on the right; examples left with nothing to learn
// are skipped the same way. A file with no example left is an error quoting the first
// skipped line's reason. A role or content with a \u0000 is refused (the template
// would cut the text there).
typedef struct {
  int32_t *ids, *labels;   // n each; labels WK_IGNORE_INDEX where the loss doesn't count
  int64_t n;
} wk_example;

struct wk_chat_template;
typedef struct {
  int64_t max_len;
  bool strict;
  const struct wk_chat_template *chat;        // for {"messages"}; NULL: the tokenizer's own
  void (*warn)(const char *msg, void *user);  // skipped lines (NULL: silent; see wk_dataset_skipped)
  void *user;
} wk_dataset_options;

typedef struct wk_dataset wk_dataset;
// tok may be NULL when every line is {"input_ids"}; vocab (>= 1) bounds the ids.
wk_dataset *wk_dataset_load(const char *path, const wk_tokenizer *tok, int64_t vocab, const wk_dataset_options *o);
void wk_dataset_free(wk_dataset *d);
int64_t wk_dataset_size(const wk_dataset *d);
int64_t wk_dataset_skipped(const wk_dataset *d);
int64_t wk_dataset_tokens(const wk_dataset *d);
const wk_example *wk_dataset_get(const wk_dataset *d, int64_t i);
// Packing (--pack): the examples, in order, concatenated and cut into sequences of
// exactly seq_len tokens (the last may be shorter), labels kept. Attention is not
// masked at example boundaries (as in transformers' packing without position resets).
// A sequence with no label to learn is dropped (counted in wk_dataset_skipped, after
// d's skipped lines); none left is an error. A new dataset; d is unchanged.
wk_dataset *wk_dataset_pack(const wk_dataset *d, int64_t seq_len);

// ---- the trainer ----
//
//   wk_train_options o = wk_train_defaults();
//   o.out_dir = "out"; o.steps = 200; o.batch = 4; o.schedule.lr = 2e-4f;
//   wk_train_result r;
//   if (wk_train(m, adapter, data, &o, &r)) puts(wk_last_error());
//
// wk_train makes `a` the model's active adapter (it stays active afterwards) and trains
// its tensors in place of the old ones. Each step: batch * grad_accum examples (in an
// order shuffled per epoch by the seed,
// or file order), each its own sequence padded on the right to the longest of its
// micro-batch (rounded up to a multiple of 16 so a few compiled plans serve every
// length); loss and adapter gradients in one lazy graph per micro-batch; gradients
// averaged over the micro-batches, clipped by global norm, one optimizer update.
// The data order, the dropout masks and the schedule are functions of (seed, step),
// so --resume continues bit-identically on the CPU. A non-finite loss stops training
// with an error before the update: the last checkpoint stays as it was.
//
// Files in out_dir: checkpoint-<step>/ (adapter_config.json, adapter_model.safetensors,
// optimizer.safetensors, trainer_state.json), written as a temporary directory then
// renamed, every save_every steps and at the end (keep_checkpoints newest kept); the
// final adapter (adapter_config.json + adapter_model.safetensors) at the top;
// metrics.csv (one row per step) and loss.svg (the loss curve).
typedef struct {
  int64_t step, total_steps;    // step counts from 1
  int64_t epoch;
  float loss, lr;
  double grad_norm;             // before clipping
  int64_t tokens;               // non-padding tokens seen so far (this run)
  double tokens_per_s, elapsed_s, eta_s;
  float eval_loss;              // NaN unless evaluated at this step
} wk_train_progress;
// Called after every step; non-zero stops training (after this step's checkpoint, if due).
// Steps of one micro-batch without checkpointing run pipelined: the next step may be
// queued already when the callback runs; a stop takes its update back, so the adapter
// and the checkpoint hold this step's state.
typedef int (*wk_train_callback)(const wk_train_progress *p, void *user);

typedef struct {
  int64_t steps;                // total optimizer steps; 0: from epochs
  double epochs;                // used when steps == 0 (default 1)
  int batch;                    // sequences per micro-batch (default 4)
  int64_t seq_len;              // longest sequence (default 256; the dataset's max_len): longer
                                // examples are cut; one left with no label is an error naming it
  int grad_accum;               // micro-batches per step (default 1)
  bool grad_checkpoint;         // recompute each layer in the backward pass (less memory)
  float clip;                   // global-norm clip (default 1; 0 = off)
  wk_optim_config optim;        // AdamW by default
  wk_schedule schedule;         // lr, kind, warmup, min_lr (total is set from steps)
  uint64_t seed;
  bool shuffle;                 // default true
  const char *out_dir;          // required
  bool overwrite;               // an existing out_dir with files is refused unless set (or resuming)
  int64_t save_every;           // 0: only at the end
  int keep_checkpoints;         // default 2
  const char *resume;           // a checkpoint directory, or an out_dir holding checkpoint-* (the newest);
                                // a NaN or infinite adapter weight in it is an error naming the tensor
  const wk_dataset *eval;       // held-out data, or NULL
  int64_t eval_every;           // steps between evaluations (0: only at the end)
  const char *base_name;        // base_model_name_or_path in adapter_config.json
  wk_train_callback callback;
  void *user;
} wk_train_options;

typedef struct {
  int64_t steps_done;           // the last completed step
  float last_loss, first_loss;
  float eval_loss;              // the last evaluation (NaN if none)
  double seconds, tokens_per_s;
  bool stopped;                 // the callback stopped it
} wk_train_result;

wk_train_options wk_train_defaults(void);
wk_status wk_train(wk_model *m, wk_adapter *a, const wk_dataset *data, const wk_train_options *o, wk_train_result *r);
// Mean loss over a dataset (batches of `batch`, no gradients), weighted by counted tokens.
wk_status wk_eval_loss(wk_model *m, const wk_dataset *d, int batch, float *loss);
