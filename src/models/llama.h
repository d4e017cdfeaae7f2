// Decoder models (Llama, SmolLM2, Qwen2): weights and the struct behind wk_model.
// Public API in include/wick/model.h.
#pragma once
#include <stdbool.h>
#include "wick/model.h"
#include "wick/tensor.h"

// One transformer block. Linear weights are [out, in] (HF layout) in the file's dtype;
// absent biases are NULL.
typedef struct {
  wk_tensor *attn_norm, *ffn_norm;
  wk_tensor *wq, *wk, *wv, *wo;
  wk_tensor *bq, *bk, *bv, *bo;
  wk_tensor *w_gate, *w_up, *w_down;
  wk_tensor *b_gate, *b_up, *b_down;
} wk_llama_layer;

// The active LoRA adapter as the forward pass sees it (built by src/train/lora.c):
// y = x W^T + scale * (dropout(x) A^T) B^T for each projection that has A and B.
typedef struct {
  float scale, dropout;
  bool training;              // dropout only while training
  uint64_t dropout_seed;      // mixed with the layer and projection; the trainer sets it per step
  wk_tensor **A, **B;         // [layer * WK_PROJ_COUNT + proj]: A [r, in], B [out, r]; NULL where absent
} wk_lora_hook;

struct wk_model {
  wk_model_config cfg;
  const char *format;         // "safetensors" or "gguf"
  int rope_interleaved;       // 1 for llama GGUF files (q/k rows permuted by the converter)
  wk_tensor *embed;           // [V, H]
  wk_tensor *norm;            // [H]
  wk_tensor *lm_head;         // [V, H]; a reference to embed when tied
  wk_tensor *rope_factors;    // [D/2] divisors of RoPE's frequencies (GGUF rope_freqs.weight, Llama 3), or NULL
  wk_llama_layer *layers;     // cfg.num_hidden_layers
  const wk_lora_hook *lora;   // NULL: no adapter active
};

struct wk_kv_cache {
  const wk_model *m;
  int64_t len, batch;
  // per layer [B, Hkv, capacity, D], preallocated at the first forward and written in
  // place (rows past len are undefined); NULL until then
  wk_tensor **k, **v;
  int64_t max_ctx;            // capacity: 0 = the model's max_position_embeddings
  int64_t *pad, pad_batch;    // row b's first pad[b] positions are hidden: left padding, or what
                              // its own sliding window forgot (gen/kv_batch.h)
  wk_dtype dtype;             // k/v storage: f32 (0, the default), f16, bf16 or q8_0
  int64_t shift;              // positions dropped from the front: position of entry i = shift + i
};
// Frees the per-layer storage (the next forward allocates it again).
void wk_kv_cache_release_storage(wk_kv_cache *c);

// The weight slot of projection p in layer l (merging replaces the tensor in it).
wk_tensor **wk_llama_proj_weight(wk_model *m, int64_t layer, wk_proj p);
void wk_llama_set_lora(wk_model *m, const wk_lora_hook *hook);
// Rows of projection p's output (a weight or a LoRA B) between the model's order and
// HF's: llama GGUF files permute q/k rows (see wk_llama_load_gguf). to_hf = 1: model
// -> HF; 0: HF -> model. A new reference (w itself, unpermuted, for other models).
wk_tensor *wk_llama_rows_hf(const wk_model *m, wk_proj p, wk_tensor *w, int to_hf);
// The same rows in llama.cpp's GGUF order (for files llama.cpp reads), whatever the
// model was loaded from. A new reference.
wk_tensor *wk_llama_rows_gguf(const wk_model *m, wk_proj p, wk_tensor *w);
// The decoder in pieces (lazy, scoped like ops), for layer-by-layer recomputation:
// logits = head(block(L-1, ... block(0, embed(ids)))), without a cache or mask.
wk_tensor *wk_llama_embed(wk_model *m, wk_tensor *ids);                          // [B, T, H] f32
wk_tensor *wk_llama_block(wk_model *m, int64_t layer, wk_tensor *x, int64_t pos);  // [B, T, H]
wk_tensor *wk_llama_head(wk_model *m, wk_tensor *x);                            // [B, T, V]
// The head's cross-entropy loss of hidden x [..., H] against targets [...] (mean over
// those counted), without the logits in memory where wk_linear_cross_entropy can.
wk_tensor *wk_llama_head_loss(wk_model *m, wk_tensor *x, wk_tensor *targets, int ignore_index);
// The hidden states [B, T, H] of ids (on the model's device) after the last block, at
// positions 0..T-1: wk_model_forward without the head.
wk_tensor *wk_llama_hidden(wk_model *m, wk_tensor *ids);
// wk_model_forward_cached_last without the evaluation: lazy logits [B, 1, V], and the
// cache already counts the T new positions. The caller evaluates the logits (their plan
// writes the cache) and, if that fails or the step is dropped, cuts the cache back with
// wk_kv_cache_truncate. Generation builds the next step this way while one runs.
wk_tensor *wk_llama_forward_step(wk_model *m, wk_tensor *ids, wk_kv_cache *c);
// Projection p's module inside a block: HF's "self_attn.q_proj", ..., "mlp.down_proj";
// GGUF's "attn_q", ..., "ffn_down".
const char *wk_llama_hf_module(wk_proj p);
const char *wk_llama_gguf_proj_name(wk_proj p);

// RoPE scaling (rope_scaling.c): the inverse frequencies inv[D/2] and the cos/sin factor
// *attn of c's rope type for a sequence of seq_len positions (dynamic NTK depends on it),
// as transformers computes them. false for default RoPE (inv then holds theta^(-2i/D)
// and *attn = 1: the rope kernel computes those itself).
bool wk_llama_rope_freqs(const wk_model_config *c, int64_t seq_len, float *inv, float *attn);

// Loaders (llama.c): fill m->cfg and the weights, or set the error and return nonzero.
wk_status wk_llama_load_safetensors(wk_model *m, const char *dir);
wk_status wk_llama_load_gguf(wk_model *m, const char *path);
