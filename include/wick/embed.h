// wick sentence embeddings: BERT-family encoders (all-MiniLM-L6-v2, E5, BGE ...) as
// sentence-transformers runs them: tokenize, pad, encode with an attention mask, pool,
// normalize.
//
//   wk_embedder *e = wk_embedder_load("models/all-minilm-l6-v2");
//   if (!e) { puts(wk_last_error()); return 1; }
//   const char *texts[] = {"A cat sits on the mat.", "Dogs bark."};
//   float *out = malloc(sizeof(float) * 2 * (size_t)wk_embedder_dim(e));
//   if (wk_embed(e, 2, texts, out)) puts(wk_last_error());  // out[i * dim + j]
//   wk_embedder_free(e);
//
// A model directory holds config.json (model_type "bert"), model.safetensors (or a
// sharded index; tensor names with or without a "bert." prefix; f32, f16 or bf16) and
// tokenizer.json (WordPiece). When sentence-transformers files are present they are
// honored: modules.json (a Normalize module turns L2 normalization on), the Pooling
// module's config.json (mean or CLS; required when modules.json lists the module) and
// sentence_bert_config.json (max_seq_length: a positive integer, or null for no limit of
// its own; another value is an error naming it). Without modules.json: mean pooling, no
// normalization.
// Texts longer than the maximum length (the smallest of max_position_embeddings,
// max_seq_length and the tokenizer's model_max_length) are truncated, keeping [CLS]
// and the final [SEP], as HF tokenizers do.
//
// Ownership: the embedder owns its weights (mapped from the file) and tokenizer;
// wk_embedder_free releases them. An embedder is not thread-safe (one thread at a time).
#pragma once
#include "base.h"
#include "tensor.h"
#include "tokenizer.h"

typedef struct wk_embedder wk_embedder;

typedef enum { WK_POOL_MEAN = 0, WK_POOL_CLS = 1 } wk_pooling;

// Loads the model in `dir`. NULL with wk_last_error() naming the file and field at fault.
wk_embedder *wk_embedder_load(const char *dir);
void wk_embedder_free(wk_embedder *e);   // NULL is fine

int64_t wk_embedder_dim(const wk_embedder *e);         // embedding size (hidden size)
int64_t wk_embedder_max_length(const wk_embedder *e);  // tokens per text, specials included
wk_pooling wk_embedder_pooling(const wk_embedder *e);
int wk_embedder_normalizes(const wk_embedder *e);      // 1 if embeddings are L2-normalized
const wk_tokenizer *wk_embedder_tokenizer(const wk_embedder *e);  // owned by e
// Moves the weights to dev (WK_CUDA: the GPU), all or nothing; wk_embed then runs
// there (ids go over per batch, embeddings come back to out).
wk_status wk_embedder_to_device(wk_embedder *e, wk_device dev);
wk_device wk_embedder_device(const wk_embedder *e);
// Stores the encoder's projection matrices (q, k, v, attention output, FFN) in dt
// (WK_F32, WK_BF16 or WK_F16), all or nothing; embeddings, norms and biases stay
// f32. With bf16 the products run on bf16-rounded inputs with f32 accumulation (see
// wk_matmul): on CPUs with AVX512-BF16 about twice as fast, half the weight memory,
// embeddings within ~1e-3 in cosine of the f32 ones. Back to f32 keeps the rounding.
wk_status wk_embedder_set_weight_dtype(wk_embedder *e, wk_dtype dt);
wk_dtype wk_embedder_weight_dtype(const wk_embedder *e);

// Embeds n texts (NUL-terminated UTF-8) into out[n * dim]. Texts are encoded in
// batches of similar length, padded and masked, so results do not depend on which
// texts share a batch (up to float rounding). n must be >= 1.
wk_status wk_embed(wk_embedder *e, int n, const char *const *texts, float *out);

// ---- lower level: the graph pieces wk_embed is made of (lazy tensors) ----
// Token ids (with [CLS] / [SEP]) of text, truncated to the maximum length; *ids is
// malloc'd (caller frees).
wk_status wk_embedder_tokenize(const wk_embedder *e, const char *text, int32_t **ids, int64_t *n);
// The encoder's last hidden state f32[B, T, D] for ids i32[B, T] whose row b holds
// lengths[b] real tokens followed by padding (lengths: i32[B]). New reference.
wk_tensor *wk_embedder_forward(wk_embedder *e, wk_tensor *ids, wk_tensor *lengths);
// Pools hidden f32[B, T, D] into f32[B, D] as the model is configured (mean over the
// first lengths[b] tokens, or the first token) and normalizes when configured. Each
// lengths[b] must be in [1, T] (it is read, as by wk_embedder_forward).
wk_tensor *wk_embedder_pool(wk_embedder *e, wk_tensor *hidden, wk_tensor *lengths);
