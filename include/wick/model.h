// wick model configuration: the hyper-parameters of a supported architecture, read
// from a Hugging Face config.json (as written by transformers 4.x or 5.x).
//
//   wk_model_config c;
//   if (wk_model_config_load("models/SmolLM2-135M", &c)) puts(wk_last_error());
//   printf("%s: %lld layers, %lld heads (%lld kv)\n", wk_arch_name(c.arch),
//          (long long)c.num_hidden_layers, (long long)c.num_attention_heads,
//          (long long)c.num_key_value_heads);
//
// Fields the file leaves out (or sets to null) take transformers' defaults for that
// architecture (LlamaConfig, Qwen2Config, BertConfig). A field of the wrong type, an
// impossible value (heads not dividing hidden size, kv heads not dividing heads) or an
// architecture wick doesn't implement fails with a message naming the file and field.
// The struct holds no pointers: copy it freely.
#pragma once
#include <stdbool.h>
#include "base.h"
#include "tensor.h"

typedef enum { WK_ARCH_UNKNOWN = 0, WK_ARCH_LLAMA, WK_ARCH_QWEN2, WK_ARCH_BERT } wk_arch;

// RoPE frequency scaling (transformers' rope_scaling / rope_parameters).
typedef enum { WK_ROPE_DEFAULT = 0, WK_ROPE_LINEAR, WK_ROPE_DYNAMIC, WK_ROPE_LLAMA3, WK_ROPE_YARN } wk_rope_type;
typedef struct {
  wk_rope_type type;
  double factor;                             // 1 for default
  int64_t original_max_position_embeddings;  // llama3, yarn; 0 when absent
  double low_freq_factor, high_freq_factor;  // llama3
  double beta_fast, beta_slow;               // yarn (defaults 32 and 1)
  double mscale, mscale_all_dim;             // yarn; 0 when absent
  double attention_factor;                   // yarn; 0 when absent (derived from factor)
} wk_rope_scaling;

#define WK_MAX_EOS 8

typedef struct {
  wk_arch arch;
  char model_type[32];          // "llama", "qwen2", "bert"
  char architecture[64];        // first of "architectures", or ""
  int64_t vocab_size;
  int64_t hidden_size;
  int64_t intermediate_size;
  int64_t num_hidden_layers;
  int64_t num_attention_heads;
  int64_t num_key_value_heads;  // = num_attention_heads unless given (GQA)
  int64_t head_dim;             // = hidden_size / num_attention_heads unless given
  int64_t max_position_embeddings;
  double norm_eps;              // rms_norm_eps (Llama, Qwen2) or layer_norm_eps (BERT)
  double rope_theta;            // 0 for BERT (absolute position embeddings)
  wk_rope_scaling rope_scaling;
  bool tie_word_embeddings;
  bool qkv_bias;                // biases on q, k, v projections (always on for Qwen2)
  bool o_bias;                  // bias on the output projection
  bool mlp_bias;
  char hidden_act[32];          // "silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu"
  int64_t bos_token_id;         // -1 when none
  int64_t pad_token_id;         // -1 when none
  int n_eos;                    // eos_token_id may be one id or a list
  int64_t eos_token_ids[WK_MAX_EOS];
  char dtype_name[16];          // torch_dtype (4.x) or dtype (5.x): "bfloat16", or ""
  bool has_dtype;               // dtype_name is float32, float16 or bfloat16 ...
  wk_dtype dtype;               // ... and this is it
  // Qwen2
  bool use_sliding_window;
  int64_t sliding_window;       // 0 when none
  int64_t max_window_layers;
  // BERT
  int64_t type_vocab_size;
  char position_embedding_type[16];  // "absolute"
} wk_model_config;

// Reads `path`: a config.json file, or a directory holding one.
wk_status wk_model_config_load(const char *path, wk_model_config *out);
// Parses config.json text; `source` names it in error messages.
wk_status wk_model_config_parse(const char *text, size_t len, const char *source, wk_model_config *out);
// "llama", "qwen2", "bert" (or "unknown").
const char *wk_arch_name(wk_arch arch);

// ---- decoder models (Llama, SmolLM2, Qwen2) ----
//
//   wk_model *m = wk_model_load("models/SmolLM2-135M");   // or "model.gguf"
//   if (!m) { puts(wk_last_error()); return 1; }
//   int32_t tok[] = {1, 2, 3};
//   wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 3}, WK_I32, tok);
//   wk_tensor *logits = wk_model_forward(m, ids, 0);    // lazy f32 [1, 3, V]
//   const float *p = wk_tensor_data(logits);            // evaluates
//   wk_tensor_free(logits); wk_tensor_free(ids);
//   wk_model_free(m);
//
// One decoder covers Llama-family models and Qwen2 (q/k/v bias, GQA, RoPE theta,
// RMSNorm eps, SwiGLU MLP, tied or untied embeddings). Weights stay in the file's
// dtype (f32, bf16, f16: zero-copy through mmap) and are cast to f32 where used;
// quantized GGUF tensors are dequantized to f32 at load for now. Logits are f32.
// Ownership: wk_model_free releases the weights (tensors returned by forward stay
// valid). A model is not thread-safe.
typedef struct wk_model wk_model;

// Loads `path`: a directory with config.json and model.safetensors (or a sharded
// model.safetensors.index.json), or a .gguf file (general.architecture llama or
// qwen2). NULL with a message naming the file and the tensor or field at fault:
// missing files, unknown or unsupported architecture (BERT is an encoder: see
// embed.h), missing tensors, wrong shapes, RoPE scaling or sliding windows that
// aren't implemented yet.
wk_model *wk_model_load(const char *path);
void wk_model_free(wk_model *m);   // NULL is fine
// The model's hyper-parameters (from config.json or the GGUF metadata). Owned by m.
const wk_model_config *wk_model_get_config(const wk_model *m);
// "safetensors" or "gguf".
const char *wk_model_format(const wk_model *m);

// The seven linear projections of a decoder block, the targets LoRA adapts.
typedef enum {
  WK_PROJ_Q, WK_PROJ_K, WK_PROJ_V, WK_PROJ_O, WK_PROJ_GATE, WK_PROJ_UP, WK_PROJ_DOWN, WK_PROJ_COUNT
} wk_proj;
// HF module names: "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj".
const char *wk_proj_name(wk_proj p);
// Projection p's weight is [out, in].
void wk_model_proj_dims(const wk_model *m, wk_proj p, int64_t *out, int64_t *in);

// Moves every weight to dev (WK_CUDA: GGUF blocks are dequantized to f32 on the way,
// as the GPU kernels read floats). All or nothing: on failure the model is unchanged.
wk_status wk_model_to_device(wk_model *m, wk_device dev);
wk_device wk_model_device(const wk_model *m);   // where the weights are

// Writes the model as a Hugging Face directory: config.json and model.safetensors with
// HF tensor names and row order (llama GGUF q/k rows unpermuted), every tensor in dt
// (f32, f16 or bf16; quantized blocks dequantized, never requantized). Each file is
// written atomically. The tokenizer is not written (copy its files alongside).
wk_status wk_model_save(const wk_model *m, const char *dir, wk_dtype dt);

// Logits (lazy f32 [B, T, V]) for ids (i32 [B, T]) at positions pos_offset + t. No
// cache: every token attends to the earlier tokens of ids only (pos_offset only shifts
// RoPE, whose scores depend on relative positions). Ids out of [0, V) fail at
// evaluation with a message naming the id; ids of another dtype or rank fail here.
wk_tensor *wk_model_forward(wk_model *m, wk_tensor *ids, int64_t pos_offset);

// A key/value cache for incremental decoding: each call appends ids after what the
// cache already holds (positions continue from wk_kv_cache_len). Its storage is
// preallocated per layer for the maximum context at the first forward and written in
// place, so every one-token decode step runs the same compiled plan.
typedef struct wk_kv_cache wk_kv_cache;
wk_kv_cache *wk_kv_cache_new(const wk_model *m);
void wk_kv_cache_free(wk_kv_cache *c);             // NULL is fine
int64_t wk_kv_cache_len(const wk_kv_cache *c);     // positions held
void wk_kv_cache_reset(wk_kv_cache *c);            // empties it (keeps the model and its storage)
// The most positions it holds (default: the model's max_position_embeddings). A
// forward that would go past it fails with a message naming it (generation stops, or
// slides with wk_kv_cache_drop_oldest). Set on an empty cache; n >= 1. Host storage
// is reserved, not touched: only the positions written take resident memory.
wk_status wk_kv_cache_set_max_context(wk_kv_cache *c, int64_t n);
int64_t wk_kv_cache_max_context(const wk_kv_cache *c);
// Keeps the first len positions (0 <= len <= wk_kv_cache_len): a conversation whose
// text changed after them re-prefills from there. A padded cache keeps at least each
// row's padding (or 0: empty). src/gen/kv_cache.c.
wk_status wk_kv_cache_truncate(wk_kv_cache *c, int64_t len);
// Left-padded batches: row b's first pad[b] positions hold padding that no position
// attends to; 0 <= pad[b] < wk_kv_cache_max_context (a row keeps a position of its
// own; a later set_max_context must leave it one too). Set on an empty cache, before
// its first forward (pad is copied; reset forgets it). Several prompts of different lengths then decode as one batch
// (wk_generate_batch). src/gen/kv_cache.c.
wk_status wk_kv_cache_set_padding(wk_kv_cache *c, int64_t batch, const int64_t *pad);
// Stores keys and values as dt: WK_F32 (the default), WK_F16 or WK_BF16 (half the
// memory), or WK_Q8_0 (blocks of 32 along the head dimension, which must be a multiple
// of 32: 34 bytes per 32 values; CPU only). New keys are rounded as they are stored,
// attention computes in f32. Set on an empty cache. src/gen/kv_cache.c.
wk_status wk_kv_cache_set_dtype(wk_kv_cache *c, wk_dtype dt);
// The cache dtype that decodes fastest at the model's own precision: on CUDA a bf16
// or f16 model's dtype (transformers keeps such a model's cache in its dtype; CUDA's
// decode attention kernel reads 2-byte caches, an f32 cache takes the tiled kernels,
// several times slower) and f16 for a GGUF model (llama.cpp's default cache), else
// WK_F32. wick generate and chat use it unless --cache-type says otherwise.
wk_dtype wk_model_cache_dtype(const wk_model *m);
// A sliding window: forgets the oldest n positions (0 < n < wk_kv_cache_len). Later
// tokens keep their positions (RoPE distances stay right) and attend to the kept ones
// only (whose keys still carry what their tokens saw before the drop), so the context
// limit no longer stops generation.
wk_status wk_kv_cache_drop_oldest(wk_kv_cache *c, int64_t n);
// Like wk_model_forward at pos_offset = wk_kv_cache_len(c), attending to the cached
// keys and values too. The logits and the cache are evaluated before returning (so
// that the next step does not recompute the prefix); the batch size must match the
// cache's first call. On failure the cache is left as it was.
wk_tensor *wk_model_forward_cached(wk_model *m, wk_tensor *ids, wk_kv_cache *c);
// The same, with the logits of each sequence's last position only ([B, 1, V]): what
// generation samples from, without the LM head over the whole prompt (a prompt of T
// tokens would otherwise cost T rows of it, and a [B, T, V] buffer).
wk_tensor *wk_model_forward_cached_last(wk_model *m, wk_tensor *ids, wk_kv_cache *c);
