// wick LoRA adapters: low-rank updates y = x W^T + s (dropout(x) A^T) B^T on a decoder's
// projections, trained while the base stays frozen, saved and loaded in PEFT's layout.
//
//   wk_model *m = wk_model_load("models/smollm2-135m-instruct/model.gguf");
//   wk_lora_config c = wk_lora_defaults();               // r 8, alpha 16, q_proj + v_proj
//   wk_lora_parse_targets("all-linear", &c.targets);
//   wk_adapter *a = wk_adapter_new(m, &c);               // peft's init: A Kaiming-uniform, B = 0
//   wk_model_use_adapter(m, a);                           // forward passes now include it
//   ... train (train.h) ...
//   wk_adapter_save(a, "out/adapter");                    // adapter_config.json + adapter_model.safetensors
//   wk_adapter *b = wk_adapter_load(m, "peft_adapter/");  // one peft saved
//   wk_model_use_adapter(m, b);                           // a switch: no copy of base weights
//   wk_adapter_free(a); wk_adapter_free(b);               // detaches whichever is active
//
// The scale s is alpha / r, or alpha / sqrt(r) with rsLoRA. Dropout applies to the
// adapter's input while training only. Adapter weights are f32 (the master copy;
// the base may be f32, f16, bf16 or a GGUF block type, and is never written unless
// merged). An adapter belongs to the model it was made or loaded for: its layer
// count and shapes are checked against that model, and it must be freed before it.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "base.h"
#include "model.h"
#include "tensor.h"

#define WK_LORA_ALL_LINEAR ((1u << WK_PROJ_COUNT) - 1u)

typedef struct {
  int rank;             // r >= 1
  float alpha;          // lora_alpha
  float dropout;        // lora_dropout, in [0, 1)
  bool rslora;          // scale alpha / sqrt(r) instead of alpha / r
  unsigned targets;     // bit (1u << wk_proj) per adapted projection
  uint64_t seed;        // initialization of A
} wk_lora_config;

// r 8, alpha 16, dropout 0, q_proj and v_proj (peft's defaults for Llama), seed 0.
wk_lora_config wk_lora_defaults(void);
// "q_proj,v_proj", "q,v", "all-linear" (or "all") into a target mask; an unknown name
// is an error naming it and listing the valid ones.
wk_status wk_lora_parse_targets(const char *list, unsigned *targets);
// The mask as "q_proj,v_proj" into buf.
char *wk_lora_targets_str(unsigned targets, char *buf, size_t len);
// alpha / r or alpha / sqrt(r).
float wk_lora_scale(const wk_lora_config *c);

typedef struct wk_adapter wk_adapter;

// A fresh adapter for every layer's target projections: A [r, in] uniform in
// +-1/sqrt(in) (peft's kaiming_uniform_(a=sqrt(5))), B [out, r] zero. NULL with a
// message for a rank below 1, an alpha <= 0, a dropout outside [0, 1), no targets.
wk_adapter *wk_adapter_new(wk_model *m, const wk_lora_config *c);
// Loads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors, or
// adapter_model.bin is refused with a message) for model m. Checks peft_type LORA, r,
// lora_alpha, use_rslora, target_modules, unsupported features (DoRA, rank/alpha
// patterns, bias training, modules_to_save) and every tensor's name and shape against m;
// a NaN or infinite weight is refused, naming the tensor (checked on the host, before
// the weights move to the model's device).
wk_adapter *wk_adapter_load(wk_model *m, const char *dir);
// Writes dir/adapter_config.json and dir/adapter_model.safetensors in PEFT's layout
// (creating dir), each file atomically. base names the base model in the config.
wk_status wk_adapter_save(const wk_adapter *a, const char *dir, const char *base);
// Writes the adapter as llama.cpp's GGUF LoRA file (llama-cli --lora FILE, on the
// GGUF of the same base): f32 or f16 tensors, B rows in GGUF order, atomically.
// rsLoRA's scale is folded into adapter.lora.alpha (llama.cpp scales by alpha / r).
wk_status wk_adapter_export_gguf(const wk_adapter *a, const char *path, wk_dtype dt);
// Detaches the adapter if its model uses it, then releases it. NULL is fine.
void wk_adapter_free(wk_adapter *a);

const wk_lora_config *wk_adapter_config(const wk_adapter *a);
// The trainable tensors in a fixed order (per layer, per projection: A then B);
// returns their count. out may be NULL to ask for the count. Owned by the adapter.
int wk_adapter_params(const wk_adapter *a, wk_tensor **out);
// PEFT's name of parameter i ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
const char *wk_adapter_param_name(const wk_adapter *a, int i);
// Replaces parameter i with t (same shape, f32; an optimizer's result). Takes a
// reference to t; the adapter keeps it trainable.
wk_status wk_adapter_set_param(wk_adapter *a, int i, wk_tensor *t);
// Bytes of adapter weights.
size_t wk_adapter_bytes(const wk_adapter *a);
// Training mode turns dropout on, with seeds derived from dropout_seed (the trainer
// passes a per-step value, so that a resumed run draws the same masks).
void wk_adapter_set_training(wk_adapter *a, bool on, uint64_t dropout_seed);

// Makes a the model's active adapter (NULL: none). No base weight is copied: the
// forward pass reads the adapter's tensors. a must belong to m.
wk_status wk_model_use_adapter(wk_model *m, wk_adapter *a);
// Folds the adapter into the base weights: W += s B A, computed in f32 and stored in
// W's dtype (f32, f16, bf16); a block-quantized W becomes f16 (never requantized).
// The adapter is deactivated if it was active. Unmerge subtracts it again (an f16 or
// bf16 W comes back within that dtype's rounding; a W that was quantized comes back
// exactly, as the original blocks are kept while merged).
wk_status wk_adapter_merge(wk_adapter *a);
wk_status wk_adapter_unmerge(wk_adapter *a);
bool wk_adapter_is_merged(const wk_adapter *a);

// ---- registry: several adapters on one base model, switched without reloading ----
typedef struct wk_adapter_registry wk_adapter_registry;
wk_adapter_registry *wk_registry_new(wk_model *m);
void wk_registry_free(wk_adapter_registry *r);     // frees its adapters; NULL is fine
// Takes ownership of a (freed on failure too, unless a is registered already: that is
// an error naming its entry, and a stays there). Names are unique.
wk_status wk_registry_add(wk_adapter_registry *r, const char *name, wk_adapter *a);
// wk_adapter_load + add.
wk_status wk_registry_load(wk_adapter_registry *r, const char *name, const char *dir);
// Activates the named adapter (NULL: the base model alone). Costs a pointer swap.
wk_status wk_registry_activate(wk_adapter_registry *r, const char *name);
// The name of the adapter the model uses now (NULL when none, or one not registered):
// merging it or wk_model_use_adapter on the model are seen too.
const char *wk_registry_active(const wk_adapter_registry *r);
int wk_registry_count(const wk_adapter_registry *r);
const char *wk_registry_name(const wk_adapter_registry *r, int i);
wk_adapter *wk_registry_get(const wk_adapter_registry *r, int i);
wk_status wk_registry_remove(wk_adapter_registry *r, const char *name);
