// wick text generation: prefill the prompt through the KV cache, then decode one
// token at a time, sampling (sampler.h) and streaming each token to a callback.
//
//   static int on_token(const wk_gen_token *t, void *user) {
//     fwrite(t->text, 1, t->len, stdout);   // UTF-8 complete pieces
//     return 0;                             // non-zero stops generation
//   }
//   wk_generate_params p = wk_generate_defaults();   // greedy, 128 tokens
//   p.max_tokens = 32;
//   wk_generate_result r;
//   if (wk_generate(m, tok, ids, n_ids, &p, on_token, NULL, &r)) puts(wk_last_error());
//
// Stops at: an EOS id (the tokenizer's eos and the model config's eos_token_id list;
// its own text is not emitted), max_tokens, the context limit (the cache's maximum
// context: wk_kv_cache_max_context, by default the model's max_position_embeddings,
// counting the sequence's own positions; with sliding_window its oldest half is dropped
// instead: wk_kv_cache_drop_oldest), a stop string (matched in the generated text across token
// boundaries; the text from the stop string on is not emitted, and text that might
// begin a stop string is held back until it can't), or the callback returning
// non-zero. Text pieces are UTF-8 complete: the bytes of a character split over
// several tokens reach the callback with the token that completes it (at the end,
// leftover incomplete bytes are flushed as they are). Without a tokenizer (NULL)
// pieces are empty and stop strings are refused. Logits holding NaN or +inf (a model
// with non-finite weights) are an error naming the token and the id, not a sample.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wick/base.h"
#include "wick/model.h"
#include "wick/sampler.h"
#include "wick/tokenizer.h"

typedef struct {
  wk_sampler_params sampler;    // temperature 0 (greedy) by default
  int32_t max_tokens;           // generated tokens at most (default 128)
  const char *const *stop;      // stop strings (n_stop of them; empty ones ignored)
  size_t n_stop;
  bool ignore_eos;              // keep going past EOS ids
  int32_t top_logprobs;         // alternatives reported with each token (0 to WK_MAX_TOP_LOGPROBS)
  wk_dtype cache_dtype;         // KV cache storage: WK_F32 (default), WK_F16, WK_BF16, WK_Q8_0 (a fresh cache only)
  int64_t max_context;          // positions the cache holds (0: the model's; a fresh cache only)
  bool sliding_window;          // at the context limit, forget the oldest half instead of stopping
} wk_generate_params;

#define WK_MAX_TOP_LOGPROBS 100

typedef enum {
  WK_STOP_NONE = 0, WK_STOP_EOS, WK_STOP_MAX_TOKENS, WK_STOP_CONTEXT, WK_STOP_STRING, WK_STOP_CALLBACK
} wk_stop_reason;

// One of the most probable tokens at a step.
typedef struct {
  int32_t id;
  const char *text;   // the token's bytes (not NUL-terminated; may be part of a character)
  size_t len;
  float logprob;
} wk_gen_alt;

typedef struct {
  int32_t id;
  const char *text;   // the piece released with this token (not NUL-terminated)
  size_t len;
  float prob, logprob;
  int64_t index;      // 0 for the first generated token
  // With params.top_logprobs = K: the K most probable tokens of the distribution the
  // token was drawn from (the one prob / logprob refer to), most probable first (ties:
  // lower id), tokens the filters removed left out, so n_top <= K. Owned by the
  // generator, valid during the callback.
  const wk_gen_alt *top;
  int32_t n_top;
  int32_t seq;        // which prompt it continues (wk_generate_batch); 0 otherwise
} wk_gen_token;

// Return non-zero to stop after this token.
typedef int (*wk_gen_callback)(const wk_gen_token *t, void *user);

typedef struct {
  int64_t prompt_tokens;        // prompt tokens prefilled (not counting cached_tokens)
  int64_t cached_tokens;        // prompt tokens the cache already held (wk_generate_cached)
  int64_t generated_tokens;
  wk_stop_reason stop;
  double prefill_s, decode_s;   // prefill: the prompt pass (and first sample); decode: the rest
} wk_generate_result;

wk_generate_params wk_generate_defaults(void);
const char *wk_stop_reason_name(wk_stop_reason r);   // "eos", "max_tokens", ...

// Generates after prompt[0..n_prompt) (batch 1). cb may be NULL; result may be NULL.
// An empty prompt, or one that does not fit the context, is an error naming the lengths.
wk_status wk_generate(wk_model *m, const wk_tokenizer *tok, const int32_t *prompt, size_t n_prompt,
                      const wk_generate_params *params, wk_gen_callback cb, void *user,
                      wk_generate_result *result);

// Continues a sequence whose beginning is already in `cache`: ids[0..n_ids) is the whole
// prompt, and the cache must hold its first wk_kv_cache_len(cache) tokens (the caller
// keeps track; cut a longer cache back with wk_kv_cache_truncate). Only the rest is
// prefilled (at least the last id), and the penalties see all of ids, so the tokens
// equal wk_generate's on the same ids. Afterwards the cache holds ids and the generated
// tokens that were fed back: all but the last one sampled. A chat keeps one cache for
// the whole conversation this way (see chat_session.h).
wk_status wk_generate_cached(wk_model *m, const wk_tokenizer *tok, wk_kv_cache *cache, const int32_t *ids,
                             size_t n_ids, const wk_generate_params *params, wk_gen_callback cb, void *user,
                             wk_generate_result *result);

// Several prompts decoded as one batch: left-padded to the longest (the padding is
// masked out: wk_kv_cache_set_padding), one forward per step for the sequences still
// going. Each behaves as if alone: its own sampler (params.sampler, the same seed),
// stop state and result (results: n entries, or NULL), and its own context (max_context
// counts its own tokens, not its padding; with sliding_window it forgets its own oldest
// half when its own context is full). A sequence that stops leaves the batch: the
// cache keeps the live rows only (and drops leading positions none of them sees), so
// later steps compute only those; each batch size compiles its decode plan once. The
// callback gets t->seq = the prompt's index and its return stops that sequence only.
// Tokens equal wk_generate's one prompt at a time up to float rounding (other matrix
// shapes; RoPE at positions shifted by the padding, which leaves the scores' relative
// positions as they are), which changes a greedy choice only where the top two logits
// are within ~1e-5. An empty prompt or one longer than the context is an error naming
// it as "prompt K of N (prompts[K-1])".
wk_status wk_generate_batch(wk_model *m, const wk_tokenizer *tok, size_t n, const int32_t *const *prompts,
                            const size_t *n_prompts, const wk_generate_params *params, wk_gen_callback cb,
                            void *user, wk_generate_result *results);
