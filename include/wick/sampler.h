// wick samplers: pick the next token from a row of logits.
//
//   wk_sampler_params p = wk_sampler_defaults();   // temperature 1, nothing else
//   p.temperature = 0.7f; p.top_k = 40; p.top_p = 0.95f; p.seed = 42;
//   wk_sampler *s = wk_sampler_new(&p, V);
//   wk_sample r;
//   wk_sampler_sample(s, logits_row, &r);          // r.id, r.prob, r.logprob
//   wk_sampler_accept(s, r.id);                    // history for the penalties
//   wk_sampler_free(s);
//
// Stages (default order: penalties -> bias -> temperature -> top-k -> top-p -> min-p;
// params.order / n_order give another):
//   penalties   repetition penalty (HF: a seen token's logit is divided by R when
//               positive, multiplied by R when negative; each distinct token once),
//               presence (logit -= presence if seen) and frequency (logit -= frequency
//               * count) penalties (OpenAI), over the last repeat_last_n accepted ids
//               (-1: all of them). Any R > 0 works: where a penalized logit would
//               leave float's range (R near 0 boosting, a huge R sinking), every logit
//               is first shifted by the largest finite one, which changes no
//               probability, so the seen token with the larger logit still wins (not
//               a tie of +inf).
//   bias        logit += bias for the listed ids (-INFINITY bans a token; a ban stays
//               one whatever is added to it, a +INFINITY bias or penalty included).
//   temperature logits /= T. T <= 0 is greedy: the highest logit wins (ties: lowest
//               id); the filters still run (so prob is the token's probability under
//               the filtered distribution at temperature 1).
//   top-k       keeps tokens whose logit >= the k-th highest (HF: ties with the k-th
//               are kept). 0: off.
//   top-p       sorts by probability (ties: lower id first) and keeps the shortest
//               prefix whose cumulative probability reaches p (a 1e-6 tolerance
//               absorbs rounding, so p = 0.8 over 0.5, 0.3, 0.2 keeps two); always at
//               least one token. 1: off.
//   min-p       keeps tokens with prob >= min_p * max prob (equality kept). 0: off.
// The chosen token's prob / logprob are under the final distribution (softmax over
// the kept tokens of the processed logits). Logits of -INFINITY are removed tokens;
// +INFINITY ones share the probability equally; a NaN logit is an error naming it. The RNG (xoshiro256**, seeded through
// splitmix64) makes a given seed reproduce the same draws.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wick/base.h"

typedef enum {
  WK_SAMPLER_PENALTIES = 0, WK_SAMPLER_BIAS, WK_SAMPLER_TEMPERATURE, WK_SAMPLER_TOP_K,
  WK_SAMPLER_TOP_P, WK_SAMPLER_MIN_P, WK_SAMPLER_STAGE_COUNT
} wk_sampler_stage;

typedef struct { int32_t id; float bias; } wk_logit_bias;

typedef struct {
  float temperature;        // 1; <= 0: greedy
  int32_t top_k;            // 0: off
  float top_p;              // 1: off
  float min_p;              // 0: off
  float repeat_penalty;     // 1: off
  float presence_penalty;   // 0: off
  float frequency_penalty;  // 0: off
  int32_t repeat_last_n;    // window of accepted ids the penalties look at; -1: all (default 64).
                            // Its memory grows with the ids accepted: a huge value costs no more
                            // than -1 until that many were seen
  uint64_t seed;
  const wk_logit_bias *bias;  // copied by wk_sampler_new
  size_t n_bias;
  int n_order;                // 0: the default order
  wk_sampler_stage order[WK_SAMPLER_STAGE_COUNT];
} wk_sampler_params;

typedef struct {
  int32_t id;
  float prob;      // under the final distribution
  float logprob;
} wk_sample;

typedef struct wk_sampler wk_sampler;

wk_sampler_params wk_sampler_defaults(void);
// NULL with wk_last_error() on an invalid value (negative top_k, top_p outside (0, 1],
// min_p outside [0, 1], repeat_penalty <= 0, a bias id outside [0, vocab), a stage twice).
wk_sampler *wk_sampler_new(const wk_sampler_params *p, int64_t vocab);
void wk_sampler_free(wk_sampler *s);      // NULL is fine
// Records an id (prompt or generated) for the penalties.
wk_status wk_sampler_accept(wk_sampler *s, int32_t id);
// Forgets the history and reseeds the RNG with `seed`.
void wk_sampler_reset(wk_sampler *s, uint64_t seed);
// Samples from logits[0..vocab) (not modified). Errors: a NaN logit (named), every
// token removed.
wk_status wk_sampler_sample(wk_sampler *s, const float *logits, wk_sample *out);
// The final distribution the sampler would draw from: probs[0..vocab) (0 for removed
// tokens). Uses no randomness. For tests and inspection.
wk_status wk_sampler_probs(wk_sampler *s, const float *logits, float *probs);
// Uniform double in [0, 1) from the sampler's RNG (advances it); NaN for a NULL sampler.
double wk_sampler_uniform(wk_sampler *s);
