// wick's greedy decoding of SmolLM2-135M-Instruct Q4_1 (quantized weights read in place)
// against tests/fixtures/models/llama_cpp_greedy.json (tools/gen_llama_cpp_greedy.py):
// the first 32 greedy tokens after each prompt's ids, as transformers computes them (the
// GGUF dequantized, f32: what wick computes) and as llama.cpp does. Equality is asserted
// up to the first near tie: a step where the reference's top-2 logit margin is below
// ref_min_margin (1e-3), or, against llama.cpp, where llama.cpp's margin is below
// llama_cpp_min_margin (0.5: llama.cpp's own logits are up to ~1.5 away from the f32
// computation, see the generator). Skipped when the model is not in models/.
#include <string.h>
#include <sys/stat.h>
#include "check.h"
#include "fixtures.h"
#include "io/json.h"

// Index of the largest of the last row's V logits.
static int32_t argmax_last(wk_tensor *logits) {
  int64_t V = wk_dim(logits, -1), n = wk_numel(logits);
  float *v = read_all(logits);
  if (!v) return -1;
  int64_t best = n - V;
  for (int64_t i = n - V + 1; i < n; i++) if (v[i] > v[best]) best = i;
  free(v);
  return (int32_t)(best - (n - V));
}

// Greedy continuation of `prompt` (n ids) for `steps` tokens; writes them to out.
static int greedy(wk_model *m, const int32_t *prompt, int64_t n, int steps, int32_t *out) {
  wk_kv_cache *c = wk_kv_cache_new(m);
  int ok = c != NULL;
  wk_tensor *ids = ok ? wk_from_data(2, (int64_t[]){1, n}, WK_I32, prompt) : NULL;
  for (int s = 0; ok && s < steps; s++) {
    wk_scope_begin();
    wk_tensor *lg = wk_model_forward_cached(m, ids, c);
    out[s] = lg ? argmax_last(lg) : -1;
    ok = out[s] >= 0;
    wk_scope_end();
    wk_tensor_free(ids);
    ids = ok ? wk_from_data(2, (int64_t[]){1, 1}, WK_I32, &out[s]) : NULL;
  }
  wk_tensor_free(ids);
  wk_kv_cache_free(c);
  return ok;
}

int main(void) {
  size_t len = 0;
  char *text = test_slurp(fixture_in("models", "llama_cpp_greedy.json"), &len);
  wk_json *doc = text ? wk_json_parse(text, len, "llama_cpp_greedy.json", NULL) : NULL;
  CHECK(doc != NULL, "fixture llama_cpp_greedy.json");
  if (!doc) { free(text); return check_report(); }
  char model[2048];
  snprintf(model, sizeof model, "%s%s", test_repo_root(), wk_json_str(wk_json_get(doc, "model"), ""));
  struct stat sb;
  if (stat(model, &sb)) {
    printf("skipped: %s not found (tools/fetch-models)\n", model);
    wk_json_free(doc);
    free(text);
    return check_report();
  }
  CHECK((int64_t)sb.st_size == wk_json_int(wk_json_get(doc, "bytes"), -1), "%s is the file the fixture was made with",
        model);
  wk_model *m = wk_model_load(model);
  CHECK(m != NULL, "load %s", model);
  double ref_min = wk_json_num(wk_json_get(doc, "ref_min_margin"), 1e-3);
  double cpp_min = wk_json_num(wk_json_get(doc, "llama_cpp_min_margin"), 0.5);
  const wk_json *cases = wk_json_get(doc, "cases");
  int held_ref = 0, held_cpp = 0, cpp_tokens = 0, same_cpp = 0;
  for (size_t k = 0; m && k < wk_json_len(cases); k++) {
    const wk_json *c = wk_json_at(cases, k), *pi = wk_json_get(c, "prompt_ids");
    const char *names[2] = {"transformers", "llama.cpp"};
    const wk_json *want[2] = {wk_json_get(c, "ref_ids"), wk_json_get(c, "ids")};
    const wk_json *mg[2] = {wk_json_get(c, "ref_margins"), wk_json_get(c, "margins")};
    double mins[2] = {ref_min, cpp_min};
    int64_t n = (int64_t)wk_json_len(pi);
    int steps = (int)wk_json_len(want[0]);
    int32_t prompt[512], got[64];
    if (n > 512 || steps > 64 || (int)wk_json_len(want[1]) != steps || (int)wk_json_len(mg[0]) != steps ||
        (int)wk_json_len(mg[1]) != steps) {
      CHECK(0, "case %zu malformed", k);
      continue;
    }
    for (int64_t i = 0; i < n; i++) prompt[i] = (int32_t)wk_json_int(wk_json_at(pi, (size_t)i), -1);
    if (!greedy(m, prompt, n, steps, got)) { CHECK(0, "case %zu: generation failed", k); continue; }
    for (int r = 0; r < 2; r++) {
      // the steps before the first near tie are clear calls: those must agree
      int clear = 0;
      while (clear < steps && wk_json_num(wk_json_at(mg[r], (size_t)clear), 0) >= mins[r]) clear++;
      if (r == 0) held_ref += clear == steps;
      else {
        int eq = 1;
        for (int s = 0; s < steps; s++) eq &= got[s] == (int32_t)wk_json_int(wk_json_at(want[1], (size_t)s), -1);
        same_cpp += eq;
        held_cpp += clear == steps, cpp_tokens += clear;
      }
      int first = -1;
      for (int s = 0; s < clear && first < 0; s++)
        if (got[s] != (int32_t)wk_json_int(wk_json_at(want[r], (size_t)s), -1)) first = s;
      CHECK(first < 0, "prompt %zu (%s): token %d is %d, %s's is %lld", k, wk_json_str(wk_json_get(c, "prompt"), "?"),
            first, first >= 0 ? got[first] : 0, names[r],
            first >= 0 ? (long long)wk_json_int(wk_json_at(want[r], (size_t)first), -1) : 0LL);
    }
  }
  size_t nc = wk_json_len(cases);
  printf("equal to transformers on %d of %zu prompts in full (margins >= %g); to llama.cpp on %d in full and on "
         "%d of %zu tokens before its first margin < %g (all 32 tokens equal on %d prompts)\n", held_ref, nc, ref_min,
         held_cpp, cpp_tokens, nc * 32, cpp_min, same_cpp);
  wk_model_free(m);
  wk_json_free(doc);
  free(text);
  return check_report();
}
