// The struct behind wk_adapter (include/wick/lora.h), shared by lora.c, peft.c and
// registry.c.
#pragma once
#include <stdbool.h>
#include "models/llama.h"
#include "wick/lora.h"

struct wk_adapter {
  wk_model *model;          // the model it was made or loaded for
  wk_lora_config cfg;
  int64_t n_layers;
  wk_lora_hook hook;        // what the model's forward pass reads while active
  int n_params;
  wk_tensor **params;       // A and B per adapted projection, in (layer, projection) order
  char **names;             // PEFT's names of params
  wk_tensor **originals;    // per slot: the base weight a merge replaced by one of another dtype
  bool merged;
};

// An empty adapter for m (config checked); fill it with wk_adapter_put.
wk_adapter *wk_adapter_alloc(wk_model *m, const wk_lora_config *c);
// Installs A [r, in] and B [out, r] (evaluated f32; moved to the model's device) for
// projection p of layer l, named and marked trainable. Takes the references, also on
// failure.
wk_status wk_adapter_put(wk_adapter *a, int64_t l, wk_proj p, wk_tensor *A, wk_tensor *B);
wk_status wk_lora_check_config(const wk_lora_config *c, const char *who);
// An error naming path, tensor `name` and the element unless every value of t (an
// evaluated f32 tensor on the host) is finite (and >= 0 with nonneg: AdamW's second
// moments). Checked on loading adapters and optimizer states, before the upload to the
// model's device: bad values would only surface later, as non-finite logits or losses
// that don't name the file. `what` names the values in the message ("adapter weights").
wk_status wk_check_loaded(wk_tensor *t, const char *path, const char *name, const char *what, bool nonneg);
// PEFT's name of A (ab 'A') or B of projection p in layer l:
// "base_model.model.model.layers.<l>.self_attn.q_proj.lora_A.weight".
void wk_lora_peft_name(char *buf, size_t len, int64_t l, wk_proj p, char ab);
