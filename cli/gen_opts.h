// Generation options shared by wick generate and wick chat: sampler values, -n, stop
// strings, EOS handling.
#pragma once
#include "common.h"

// Parses argv[*i] if it is a generation option (advancing *i past its value) into gp;
// stop strings go to stops[*n_stop] (room for argc of them). Returns 1 if it was one,
// 0 if not, and 2 after printing a user error for a bad or missing value.
int cli_gen_option(const char *cmd, int argc, char **argv, int *i, wk_generate_params *gp, const char **stops,
                   size_t *n_stop);
// wk_generate_defaults() with the CLI's temperature (0.8) and the KV cache dtype left
// to cli_gen_resolve (CLI_CACHE_AUTO) unless --cache-type names one.
#define CLI_CACHE_AUTO WK_DTYPE_COUNT
wk_generate_params cli_gen_defaults(void);
// Once the model is loaded: an automatic cache dtype becomes wk_model_cache_dtype(m),
// and a --ctx-size past the model's context gets a note.
void cli_gen_resolve(const char *cmd, wk_generate_params *gp, const wk_model *m);
// Writes a generated token as one JSON line: "seq" (with_seq: batches), id, text, prob,
// logprob and, when the generator reported alternatives, "top": [{id, text, logprob}...].
void cli_print_token_json(const wk_gen_token *t, bool with_seq);
// The option lines of the usage text.
#define CLI_GEN_USAGE                                                                         \
  "  [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"           \
  "  [--presence-penalty X] [--frequency-penalty X] [--seed S] [--stop STR]... [--ignore-eos]\n" \
  "  [--top-logprobs K] [--cache-type f32|f16|bf16|q8_0] [--ctx-size N] [--sliding-window]\n"   \
  "  -n: tokens to generate (default 128); --temp 0 is greedy (default 0.8)\n"                  \
  "  --top-logprobs K: with --json, each token's K most probable alternatives\n"                \
  "  --cache-type: KV cache storage (default f32; on CUDA a bf16 / f16 model's dtype, f16 for\n" \
  "  a GGUF model)\n"                                                                          \
  "  --ctx-size: positions the cache holds (default: the model's context length)\n"          \
  "  --sliding-window: at the context limit drop the oldest half of the cache instead of\n"   \
  "  stopping\n"
