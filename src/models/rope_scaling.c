// RoPE frequency scaling as transformers computes it (modeling_rope_utils.py, 4.57:
// ROPE_INIT_FUNCTIONS and dynamic_rope_update): the inverse frequencies [D/2] and the
// factor cos and sin are multiplied by, for each rope type of wk_rope_scaling.
// Computed in double and stored as f32 (transformers computes in f32: the two agree
// to ~1e-7 relative; tests/fixtures/models/rope_scaling.json, tools/gen_rope_fixtures.py).
#include <math.h>
#include "models/llama.h"

#define TWO_PI 6.283185307179586476925286766559

static double base_inv(double base, int64_t i, int64_t dim) { return 1.0 / pow(base, (double)(2 * i) / (double)dim); }

// yarn's attention factor for a scale (get_mscale)
static double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0; }

// The dimension whose frequency turns num_rotations times over the original context.
static double yarn_correction_dim(double num_rotations, int64_t dim, double base, double max_pos) {
  return ((double)dim * log(max_pos / (num_rotations * TWO_PI))) / (2 * log(base));
}

static void yarn(const wk_model_config *c, float *inv, float *attn) {
  const wk_rope_scaling *r = &c->rope_scaling;
  int64_t dim = c->head_dim;
  double base = c->rope_theta, factor = r->factor, af = r->attention_factor;
  if (!(af > 0))
    af = r->mscale != 0 && r->mscale_all_dim != 0 ? yarn_mscale(factor, r->mscale) / yarn_mscale(factor, r->mscale_all_dim)
                                                  : yarn_mscale(factor, 1);
  double orig = (double)(r->original_max_position_embeddings > 0 ? r->original_max_position_embeddings
                                                                  : c->max_position_embeddings);
  double fast = r->beta_fast > 0 ? r->beta_fast : 32, slow = r->beta_slow > 0 ? r->beta_slow : 1;
  // the correction range, truncated to whole dimensions (transformers' default)
  double low = floor(yarn_correction_dim(fast, dim, base, orig)), high = ceil(yarn_correction_dim(slow, dim, base, orig));
  if (low < 0) low = 0;
  if (high > (double)(dim - 1)) high = (double)(dim - 1);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; i++) {
    double ramp = ((double)i - low) / (high - low), extrap = 1 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
    double f = base_inv(base, i, dim);
    inv[i] = (float)(f / factor * (1 - extrap) + f * extrap);
  }
  *attn = (float)af;
}

static void llama3(const wk_model_config *c, float *inv) {
  const wk_rope_scaling *r = &c->rope_scaling;
  double old = (double)r->original_max_position_embeddings, lo = r->low_freq_factor, hi = r->high_freq_factor;
  double low_wavelen = old / lo, high_wavelen = old / hi;
  for (int64_t i = 0; i < c->head_dim / 2; i++) {
    double f = base_inv(c->rope_theta, i, c->head_dim), wavelen = TWO_PI / f;
    double v = wavelen > low_wavelen ? f / r->factor : f;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {   // medium: smoothed between the two
      double s = (old / wavelen - lo) / (hi - lo);
      v = (1 - s) * v / r->factor + s * v;
    }
    inv[i] = (float)v;
  }
}

bool wk_llama_rope_freqs(const wk_model_config *c, int64_t seq_len, float *inv, float *attn) {
  const wk_rope_scaling *r = &c->rope_scaling;
  int64_t dim = c->head_dim;
  *attn = 1.0f;
  switch (r->type) {
    case WK_ROPE_LINEAR:
      for (int64_t i = 0; i < dim / 2; i++) inv[i] = (float)(base_inv(c->rope_theta, i, dim) / r->factor);
      return true;
    case WK_ROPE_DYNAMIC: {   // the base grows with the sequence past max_position_embeddings
      double maxp = (double)c->max_position_embeddings, len = (double)seq_len > maxp ? (double)seq_len : maxp;
      double base = c->rope_theta * pow(r->factor * len / maxp - (r->factor - 1), (double)dim / (double)(dim - 2));
      for (int64_t i = 0; i < dim / 2; i++) inv[i] = (float)base_inv(base, i, dim);
      return true;
    }
    case WK_ROPE_LLAMA3: llama3(c, inv); return true;
    case WK_ROPE_YARN: yarn(c, inv, attn); return true;
    default:   // plain RoPE: the frequencies all the same (a rope_freqs tensor divides them)
      for (int64_t i = 0; i < dim / 2; i++) inv[i] = (float)base_inv(c->rope_theta, i, dim);
      return false;
  }
}
