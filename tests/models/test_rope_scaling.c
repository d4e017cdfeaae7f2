// RoPE scaling against transformers (tests/fixtures/models/rope_scaling.json, made by
// tools/gen_rope_fixtures.py): for linear, dynamic, yarn (with and without mscale) and
// llama3 configs read from config.json, wick's inverse frequencies and attention
// factor equal transformers' ROPE_INIT_FUNCTIONS, and wk_rope_freqs rotates q at each
// position as LlamaRotaryEmbedding + apply_rotary_pos_emb do (the model's own path).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "io/json.h"
#include "models/llama.h"

static float *floats(const wk_json *arr, size_t *n) {
  *n = wk_json_len(arr);
  float *v = malloc(sizeof(float) * (*n ? *n : 1));
  for (size_t i = 0; i < *n; i++) v[i] = (float)wk_json_num(wk_json_at(arr, i), NAN);
  return v;
}

// The case's config through wick's config.json parser.
static bool load_config(const wk_json *c, wk_model_config *cfg) {
  char text[1024];
  int n = snprintf(text, sizeof text,
                   "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128, "
                   "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 16, "
                   "\"max_position_embeddings\": 64, \"rope_theta\": 10000.0, \"rope_scaling\": %s}",
                   wk_json_str(wk_json_get(c, "rope_scaling_json"), "null"));
  return n > 0 && n < (int)sizeof text && wk_model_config_parse(text, (size_t)n, "config.json", cfg) == WK_OK;
}

static void check_case(const wk_json *c) {
  const char *name = wk_json_str(wk_json_get(c, "name"), "?");
  wk_model_config cfg;
  CHECK(load_config(c, &cfg), "%s: config", name);
  size_t nf, nq, nr, np = wk_json_len(wk_json_get(c, "positions"));
  float *want = floats(wk_json_get(c, "inv_freq"), &nf), *q = floats(wk_json_get(c, "q"), &nq);
  float *rot = floats(wk_json_get(c, "rotated"), &nr), inv[8], attn = 0;
  bool scaled = nf == 8 && wk_llama_rope_freqs(&cfg, wk_json_int(wk_json_get(c, "seq_len"), 0), inv, &attn);
  float worst = 0;
  for (size_t i = 0; scaled && i < 8; i++) worst = fmaxf(worst, fabsf(inv[i] - want[i]) / want[i]);
  // transformers computes the frequencies in f32, wick in double rounded once: a few ulps
  CHECK(scaled && worst < 1e-6f, "%s: inv_freq relative error %g", name, (double)worst);
  double want_attn = wk_json_num(wk_json_get(c, "attention_factor"), NAN);
  CHECK(fabs(attn - want_attn) < 1e-6, "%s: attention factor %g, want %g", name, (double)attn, want_attn);
  // each position alone: wk_rope_freqs at that offset, rotate-half (HF's layout)
  float rworst = 0;
  wk_scope_begin();
  wk_tensor *f = wk_from_data(1, (int64_t[]){8}, WK_F32, inv);
  for (size_t p = 0; p < np && nq == np * 16; p++) {
    int64_t at = wk_json_int(wk_json_at(wk_json_get(c, "positions"), p), 0);
    wk_tensor *x = wk_from_data(4, (int64_t[]){1, 1, 1, 16}, WK_F32, q + p * 16);
    float *got = read_all(wk_rope_freqs(x, f, attn, at, NULL, 0));
    rworst = got ? fmaxf(rworst, max_abs_diff(got, rot + p * 16, 16)) : INFINITY;
    free(got);
  }
  wk_scope_end();
  // values of size ~1 at angles up to 250 rad: the f32 angle is the same product on both
  // sides, cos and sin differ by an ulp or two
  CHECK(nr == np * 16 && rworst < 1e-5f, "%s: rotated q differs by %g", name, (double)rworst);
  printf("%-12s inv_freq rel %.2g, attention factor %.6f, rotation %.2g\n", name, (double)worst, (double)attn, (double)rworst);
  free(want);
  free(q);
  free(rot);
}

int main(void) {
  size_t len = 0;
  char *text = test_slurp(fixture_in("models", "rope_scaling.json"), &len);
  wk_json *doc = text ? wk_json_parse(text, len, "rope_scaling.json", NULL) : NULL;
  CHECK(doc != NULL, "fixture rope_scaling.json");
  const wk_json *cases = doc ? wk_json_get(doc, "cases") : NULL;
  CHECK(wk_json_len(cases) == 5, "5 cases");
  for (size_t i = 0; i < wk_json_len(cases); i++) check_case(wk_json_at(cases, i));
  wk_json_free(doc);
  free(text);
  return check_report();
}
