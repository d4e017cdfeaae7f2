// LoRA against peft (fixtures from tools/gen_lora_fixtures.py on the tiny random Qwen2
// of tests/fixtures/models/qwen2): loading peft's adapter, the loss, every adapter
// gradient, three AdamW steps; saving in peft's layout; merge / unmerge; the registry;
// bad adapters.
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "io/file.h"
#include "io/json.h"
#include "models/llama.h"

static const char *qwen2_dir(void) { return fixture_in("models", "qwen2"); }
static const char *lora_fixture(const char *name) { return fixture_in("lora", name); }

// max |a - b| / max(max |b|, floor) over n floats: relative to the tensor's scale
static float rel_diff(const float *a, const float *b, int64_t n) {
  float scale = 1e-6f;
  for (int64_t i = 0; b && i < n; i++) scale = fmaxf(scale, fabsf(b[i]));
  return max_abs_diff(a, b, n) / scale;
}

static float tensor_rel_diff(wk_tensor *a, wk_tensor *b) {
  if (!a || !b || wk_numel(a) != wk_numel(b)) return INFINITY;
  float *x = read_all(a), *y = read_all(b);
  float d = rel_diff(x, y, wk_numel(a));
  free(x);
  free(y);
  return d;
}

// rm -rf of a test's temporary directory
static void remove_tmp(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0, "cleanup of %s", dir);
}

// Gives every B of a (which starts at zero) seeded random values of scale `scale`, so
// the adapter changes the logits.
static void randomize_b(wk_adapter *a, float scale) {
  wk_tensor *ps[256];
  int n = wk_adapter_params(a, NULL) <= 256 ? wk_adapter_params(a, ps) : 0;
  for (int i = 1; i < n; i += 2) {
    wk_scope_begin();
    wk_tensor *b = wk_keep(wk_mul_scalar(wk_randn(2, wk_shape(ps[i]), WK_F32, (uint64_t)i), scale));
    wk_scope_end();
    wk_eval(1, &b);
    wk_adapter_set_param(a, i, b);
    wk_tensor_free(b);
  }
}

// Loss, gradients and three AdamW steps of the adapter in fixture `name` vs peft.
static void against_peft(const char *name, int expect_params) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", lora_fixture(name));
  wk_model *m = wk_model_load(qwen2_dir());
  wk_adapter *a = m ? wk_adapter_load(m, dir) : NULL;
  char refpath[1100];
  snprintf(refpath, sizeof refpath, "%s/reference.safetensors", dir);
  wk_st_file *ref = wk_st_open(refpath);
  CHECK(m && a && ref, "%s: load model, adapter and reference", name);
  if (!m || !a || !ref) goto out;
  int n = wk_adapter_params(a, NULL);
  CHECK(n == expect_params, "%s: %d adapter tensors, expected %d", name, n, expect_params);
  CHECK(wk_model_use_adapter(m, a) == WK_OK, "%s: use adapter", name);
  wk_tensor *ids = wk_st_get(ref, "ids"), *labels = wk_st_get(ref, "labels");
  wk_tensor **params = calloc((size_t)n, sizeof *params), **grads = calloc((size_t)n, sizeof *grads);
  wk_adapter_params(a, params);
  wk_scope_begin();
  wk_tensor *loss = wk_causal_lm_loss(m, ids, labels);
  float value = NAN;
  CHECK(wk_value_and_grad(loss, n, params, grads, &value) == WK_OK, "%s: value_and_grad", name);
  float want = wk_item(wk_st_get(ref, "loss"));
  // f32 forward of two tiny layers: differences are summation order only
  CHECK(fabsf(value - want) <= 1e-5f * fmaxf(1.0f, fabsf(want)), "%s: loss %.7f, peft %.7f", name, (double)value,
        (double)want);
  float worst = 0;
  for (int i = 0; i < n; i++) {
    char gname[256];
    snprintf(gname, sizeof gname, "grad.%s", wk_adapter_param_name(a, i));
    float d = tensor_rel_diff(grads[i], wk_st_get(ref, gname));
    CHECK(d <= 1e-4f, "%s: gradient of %s differs by %g (relative)", name, wk_adapter_param_name(a, i), (double)d);
    worst = fmaxf(worst, d);
  }
  printf("%s: loss %.6f (peft %.6f), worst gradient rel diff %.2g\n", name, (double)value, (double)want, (double)worst);
  wk_scope_end();
  // three AdamW steps on the same batch (torch.optim.AdamW lr 1e-2, wd 0.01)
  wk_optim_config oc = wk_adamw_defaults();
  oc.lr = 1e-2f;
  wk_optim *opt = wk_optim_new(&oc, n, params);
  wk_tensor *sl = wk_st_get(ref, "step_loss");
  float *step_loss = read_all(sl);
  wk_tensor_free(sl);
  for (int k = 1; k <= 3 && opt; k++) {
    wk_scope_begin();
    wk_adapter_params(a, params);
    loss = wk_causal_lm_loss(m, ids, labels);
    CHECK(wk_value_and_grad(loss, n, params, grads, &value) == WK_OK, "%s: step %d grads", name, k);
    CHECK(step_loss && fabsf(value - step_loss[k - 1]) <= 1e-5f * fmaxf(1.0f, step_loss[k - 1]),
          "%s: step %d loss %.7f, peft %.7f", name, k, (double)value, step_loss ? (double)step_loss[k - 1] : 0.0);
    wk_tensor **next = calloc((size_t)n, sizeof *next);
    CHECK(wk_optim_step(opt, params, grads, -1, 1.0f, next) == WK_OK, "%s: AdamW step %d", name, k);
    for (int i = 0; i < n; i++) {
      wk_adapter_set_param(a, i, next[i]);
      wk_tensor_free(next[i]);
    }
    free(next);
    worst = 0;
    for (int i = 0; i < n; i++) {
      char pname[256];
      snprintf(pname, sizeof pname, "step%d.%s", k, wk_adapter_param_name(a, i));
      wk_tensor *p = wk_adapter_params(a, params) ? params[i] : NULL;
      worst = fmaxf(worst, tensor_rel_diff(p, wk_st_get(ref, pname)));
    }
    CHECK(worst <= 1e-5f, "%s: adapter weights after AdamW step %d differ by %g (relative)", name, k, (double)worst);
    wk_scope_end();
  }
  free(step_loss);
  wk_optim_free(opt);
  free(params);
  free(grads);
  wk_tensor_free(ids);
  wk_tensor_free(labels);
out:
  wk_st_close(ref);
  wk_adapter_free(a);
  wk_model_free(m);
}

// Saved files carry peft's tensor names, shapes and config fields: compared with the
// adapter peft saved, reloaded into wick with the same values.
static void save_layout(void) {
  wk_model *m = wk_model_load(qwen2_dir());
  wk_adapter *a = m ? wk_adapter_load(m, lora_fixture("all")) : NULL;
  CHECK(a != NULL, "load the 'all' adapter");
  if (!a) { wk_model_free(m); return; }
  char tmp[] = "/tmp/wick_lora_XXXXXX";
  CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
  char out[256];
  snprintf(out, sizeof out, "%s/adapter", tmp);
  CHECK(wk_adapter_save(a, out, "tests/fixtures/models/qwen2") == WK_OK, "save adapter");
  // tensors: the same names and shapes as peft's file, the same values
  char p1[1100], p2[300];
  snprintf(p1, sizeof p1, "%s/adapter_model.safetensors", lora_fixture("all"));
  snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", out);
  wk_st_file *theirs = wk_st_open(p1), *ours = wk_st_open(p2);
  CHECK(theirs && ours && wk_st_count(theirs) == wk_st_count(ours), "same tensor count");
  for (int i = 0; theirs && ours && i < wk_st_count(theirs); i++) {
    const char *name = wk_st_name(theirs, i);
    CHECK(wk_st_find(ours, name) >= 0, "saved file lacks '%s'", name);
    wk_tensor *x = wk_st_get(theirs, name), *y = wk_st_find(ours, name) >= 0 ? wk_st_get(ours, name) : NULL;
    CHECK(y && tensor_rel_diff(y, x) == 0.0f, "'%s' differs after a save", name);
    wk_tensor_free(x);
    wk_tensor_free(y);
  }
  CHECK(ours && wk_st_metadata(ours, "format") && !strcmp(wk_st_metadata(ours, "format"), "pt"), "format metadata");
  wk_st_close(theirs);
  wk_st_close(ours);
  // config: every field peft's loader needs, with peft's values
  snprintf(p1, sizeof p1, "%s/adapter_config.json", lora_fixture("all"));
  snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
  size_t l1, l2;
  char *t1 = wk_read_file(p1, 1 << 20, &l1), *t2 = wk_read_file(p2, 1 << 20, &l2);
  wk_json *j1 = t1 ? wk_json_parse(t1, l1, p1, NULL) : NULL, *j2 = t2 ? wk_json_parse(t2, l2, p2, NULL) : NULL;
  CHECK(j1 && j2, "parse both configs");
  static const char *const same[] = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora",
                                     "bias", "fan_in_fan_out", "use_dora", "base_model_name_or_path"};
  for (size_t i = 0; j1 && j2 && i < sizeof same / sizeof *same; i++) {
    const wk_json *x = wk_json_get(j1, same[i]), *y = wk_json_get(j2, same[i]);
    int eq = x && y && x->type == y->type &&
             (x->type == WK_JSON_STRING ? !strcmp(x->s, y->s) : x->type == WK_JSON_NUMBER ? x->d == y->d : x->b == y->b);
    CHECK(eq, "config field '%s' differs from peft's", same[i]);
  }
  const wk_json *tm = wk_json_get(j2, "target_modules");
  CHECK(wk_json_len(tm) == 7 && wk_json_len(wk_json_get(j1, "target_modules")) == 7, "target_modules lists 7");
  wk_json_free(j1);
  wk_json_free(j2);
  free(t1);
  free(t2);
  // reload what we wrote: the same forward
  wk_adapter *b = wk_adapter_load(m, out);
  CHECK(b && wk_adapter_config(b)->rank == 2 && wk_adapter_config(b)->rslora &&
            wk_adapter_config(b)->targets == WK_LORA_ALL_LINEAR,
        "reload: rank, rslora, targets");
  wk_adapter_free(b);
  wk_adapter_free(a);
  wk_model_free(m);
  remove_tmp(tmp);
}

static float *logits_of(wk_model *m, wk_tensor *ids) {
  wk_scope_begin();
  float *v = read_all(wk_model_forward(m, ids, 0));
  wk_scope_end();
  return v;
}

// Merging gives the logits of the active adapter; unmerging gives the base back; the
// registry switches between adapters without touching base weights.
static void merge_and_registry(void) {
  wk_model *m = wk_model_load(qwen2_dir());
  wk_adapter_registry *r = m ? wk_registry_new(m) : NULL;
  CHECK(r && wk_registry_load(r, "qv", lora_fixture("qv")) == WK_OK && wk_registry_load(r, "all", lora_fixture("all")) == WK_OK,
        "registry: load two adapters");
  if (!r || wk_registry_count(r) != 2) { wk_registry_free(r); wk_model_free(m); return; }
  int32_t idv[] = {5, 17, 42, 9, 200, 31, 7};
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 7}, WK_I32, idv);
  int64_t n = 7 * wk_model_get_config(m)->vocab_size;
  wk_tensor *wq = *wk_llama_proj_weight(m, 0, WK_PROJ_Q);
  float *base = logits_of(m, ids);
  CHECK(wk_registry_activate(r, "qv") == WK_OK && !strcmp(wk_registry_active(r), "qv"), "activate qv");
  float *with_qv = logits_of(m, ids);
  CHECK(wk_registry_activate(r, "all") == WK_OK, "switch to all");
  float *with_all = logits_of(m, ids);
  CHECK(*wk_llama_proj_weight(m, 0, WK_PROJ_Q) == wq, "switching leaves the base weight tensor alone");
  CHECK(max_abs_diff(base, with_qv, n) > 1e-3f && max_abs_diff(with_qv, with_all, n) > 1e-3f,
        "adapters change the logits");
  CHECK(wk_registry_activate(r, NULL) == WK_OK && !wk_registry_active(r), "deactivate");
  float *again = logits_of(m, ids);
  CHECK(max_abs_diff(base, again, n) == 0.0f, "no adapter: the base logits exactly");
  CHECK(wk_registry_activate(r, "nope") != WK_OK && strstr(wk_last_error(), "nope"), "unknown name is named");
  // the active name follows the model: wk_model_use_adapter directly, then a merge
  // (which deactivates the adapter) are seen
  wk_adapter *qv = wk_registry_get(r, 0);
  CHECK(wk_model_use_adapter(m, wk_registry_get(r, 1)) == WK_OK && wk_registry_active(r) &&
            !strcmp(wk_registry_active(r), "all"),
        "wk_model_use_adapter is seen by wk_registry_active");
  // an adapter registered already is refused and stays registered (not freed twice)
  CHECK(wk_registry_add(r, "again", qv) != WK_OK && strstr(wk_last_error(), "'qv'") && wk_registry_count(r) == 2 &&
            wk_registry_add(r, "qv", qv) != WK_OK && wk_registry_get(r, 0) == qv,
        "adding a registered adapter again is an error naming its entry (%s)", wk_last_error());
  // merge qv: the logits of the active adapter, from base weights alone
  CHECK(wk_registry_activate(r, "qv") == WK_OK && wk_adapter_merge(qv) == WK_OK && wk_adapter_is_merged(qv), "merge");
  CHECK(!wk_registry_active(r), "a merged adapter is no longer reported active (%s)",
        wk_registry_active(r) ? wk_registry_active(r) : "none");
  float *merged = logits_of(m, ids);
  CHECK(max_abs_diff(merged, with_qv, n) <= 1e-5f, "merged logits = adapter logits (diff %g)",
        (double)max_abs_diff(merged, with_qv, n));
  CHECK(wk_registry_activate(r, "qv") != WK_OK, "a merged adapter can't also be activated");
  CHECK(wk_adapter_unmerge(qv) == WK_OK, "unmerge");
  float *unmerged = logits_of(m, ids);
  CHECK(max_abs_diff(unmerged, base, n) <= 1e-5f, "unmerged logits = base (diff %g)",
        (double)max_abs_diff(unmerged, base, n));
  CHECK(wk_registry_remove(r, "all") == WK_OK && wk_registry_count(r) == 1, "remove");
  free(base), free(with_qv), free(with_all), free(again), free(merged), free(unmerged);
  wk_tensor_free(ids);
  wk_registry_free(r);
  wk_model_free(m);
}

// A fresh adapter: peft's initialization (B zero: the logits are the base's; A within
// +-1/sqrt(in)), seeded.
static void fresh_adapter(void) {
  wk_model *m = wk_model_load(qwen2_dir());
  if (!m) { CHECK(0, "load qwen2"); return; }
  wk_lora_config c = wk_lora_defaults();
  c.seed = 7;
  wk_adapter *a = wk_adapter_new(m, &c), *b = wk_adapter_new(m, &c);
  CHECK(a && b && wk_adapter_params(a, NULL) == 2 * 2 * 2, "q,v on 2 layers: 8 tensors");
  if (a && b) {
    wk_tensor *pa[8], *pb[8];
    wk_adapter_params(a, pa);
    wk_adapter_params(b, pb);
    float *A = read_all(pa[0]), *A2 = read_all(pb[0]), *B = read_all(pa[1]);
    int64_t na = wk_numel(pa[0]);
    float bound = 1.0f / sqrtf(32.0f), mx = 0;
    for (int64_t i = 0; i < na; i++) mx = fmaxf(mx, fabsf(A[i]));
    CHECK(mx <= bound && mx > 0.5f * bound, "A within +-1/sqrt(in) and spread (max %g)", (double)mx);
    CHECK(max_abs_diff(A, A2, na) == 0.0f, "same seed, same A");
    float bz = 0;
    for (int64_t i = 0; i < wk_numel(pa[1]); i++) bz = fmaxf(bz, fabsf(B[i]));
    CHECK(bz == 0.0f, "B starts at zero");
    CHECK(wk_adapter_bytes(a) == (size_t)(2 * (8 * 32 + 32 * 8) + 2 * (8 * 32 + 16 * 8)) * 4, "bytes %zu",
          wk_adapter_bytes(a));
    free(A), free(A2), free(B);
  }
  wk_adapter_free(a);
  wk_adapter_free(b);
  wk_model_free(m);
}

// An adapter whose weights hold NaN or inf is refused at load, naming the file, the
// tensor and the element (it loaded, and generation later stopped on non-finite logits
// with no word of the adapter).
static void nonfinite_weights(wk_model *m) {
  wk_adapter *a = m ? wk_adapter_load(m, lora_fixture("qv")) : NULL;
  CHECK(a != NULL, "load the 'qv' adapter");
  if (!a) return;
  char tmp[] = "/tmp/wick_nanlora_XXXXXX";
  CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
  const float bad[] = {NAN, INFINITY, -INFINITY};
  const char *word[] = {"NaN", "+inf", "-inf"};
  for (int k = 0; k < 3; k++) {
    wk_tensor *ps[64];
    int n = wk_adapter_params(a, ps), i = k + 1;   // a B (odd), then an A, then a B
    float *v = read_all(ps[i]);
    int64_t shape[2] = {wk_dim(ps[i], 0), wk_dim(ps[i], 1)};   // ps[i] goes with the replacement
    v[shape[1] + 1] = bad[k];   // element [1, 1]
    wk_tensor *t = wk_from_data(2, shape, WK_F32, v);
    CHECK(n > i && t && !wk_adapter_set_param(a, i, t), "set a %s weight", word[k]);
    char name[200];
    snprintf(name, sizeof name, "%s", wk_adapter_param_name(a, i));
    CHECK(!wk_adapter_save(a, tmp, NULL), "save the adapter");
    wk_clear_error();
    wk_adapter *b = wk_adapter_load(m, tmp);
    CHECK(!b && strstr(wk_last_error(), "adapter_model.safetensors") && strstr(wk_last_error(), name) &&
              strstr(wk_last_error(), word[k]) && strstr(wk_last_error(), "[1, 1]"),
          "%s weight refused at load: %s", word[k], wk_last_error());
    wk_adapter_free(b);
    v[shape[1] + 1] = 0;   // back to finite for the next round
    wk_tensor_free(t);
    t = wk_from_data(2, shape, WK_F32, v);
    CHECK(!wk_adapter_set_param(a, i, t), "restore: %s", wk_last_error());
    wk_tensor_free(t);
    free(v);
  }
  wk_adapter_free(a);
  remove_tmp(tmp);
}

static void bad_input(void) {
  wk_model *m = wk_model_load(qwen2_dir());
  wk_lora_config c = wk_lora_defaults();
  c.rank = 0;
  CHECK(!wk_adapter_new(m, &c) && strstr(wk_last_error(), "rank 0"), "rank 0 is refused");
  unsigned t;
  CHECK(wk_lora_parse_targets("q,lm_head", &t) != WK_OK && strstr(wk_last_error(), "lm_head"), "unknown target named");
  CHECK(wk_lora_parse_targets("q,gate", &t) == WK_OK && t == ((1u << WK_PROJ_Q) | (1u << WK_PROJ_GATE)), "short names");
  CHECK(wk_lora_parse_targets("all-linear", &t) == WK_OK && t == WK_LORA_ALL_LINEAR, "all-linear");
  // the qwen2 adapter on the llama fixture (other widths): shapes named
  wk_model *llama = wk_model_load(fixture_in("models", "llama"));
  CHECK(llama && !wk_adapter_load(llama, lora_fixture("qv")) && strstr(wk_last_error(), "expected"),
        "an adapter for another model is refused with the shape");
  CHECK(!wk_adapter_load(m, "/nonexistent/adapter") && strstr(wk_last_error(), "/nonexistent/adapter"),
        "missing directory named");
  // a config naming a module the model lacks
  char tmp[] = "/tmp/wick_badlora_XXXXXX";
  if (mkdtemp(tmp)) {
    char p[300];
    snprintf(p, sizeof p, "%s/adapter_config.json", tmp);
    FILE *f = fopen(p, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"c_attn\"]}", f);
    fclose(f);
    CHECK(!wk_adapter_load(m, tmp) && strstr(wk_last_error(), "c_attn"), "target module the model lacks is named");
    f = fopen(p, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"use_dora\": true}", f);
    fclose(f);
    CHECK(!wk_adapter_load(m, tmp) && strstr(wk_last_error(), "DoRA"), "DoRA refused");
    // peft options wick can't honor, each named with its own reason (a scalar too)
    const char *opts[][2] = {{"\"layers_to_transform\": 1", "every layer"}, {"\"layers_to_transform\": [0]", "every layer"},
                             {"\"modules_to_save\": [\"lm_head\"]", "modules_to_save"}, {"\"rank_pattern\": {\"q_proj\": 8}", "share r"}};
    for (int k = 0; k < 4; k++) {
      f = fopen(p, "w");
      fprintf(f, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"], %s}", opts[k][0]);
      fclose(f);
      CHECK(!wk_adapter_load(m, tmp) && strstr(wk_last_error(), opts[k][1]), "%s refused: %s", opts[k][0], wk_last_error());
    }
    f = fopen(p, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]", f);
    fclose(f);
    CHECK(!wk_adapter_load(m, tmp) && strstr(wk_last_error(), "adapter_config.json"), "truncated config named");
    remove_tmp(tmp);
  }
  nonfinite_weights(m);
  wk_model_free(llama);
  wk_model_free(m);
}

// QLoRA-style: the adapter on a Q8_0 GGUF base (weights stay in blocks) gives the
// same logits as on the dequantized f32 weights; merging writes f16 projections (never
// requantized) and unmerging brings the original blocks back exactly.
static void quantized_base(void) {
  wk_model *q = wk_model_load(fixture_in("models", "qwen2_q8_0.gguf"));
  wk_adapter *a = q ? wk_adapter_load(q, lora_fixture("qv")) : NULL;
  CHECK(a != NULL, "the qwen2 adapter loads on the Q8_0 GGUF of the same model");
  if (!a) { wk_model_free(q); return; }
  wk_tensor **slot = wk_llama_proj_weight(q, 0, WK_PROJ_Q);
  wk_tensor *blocks = *slot;
  CHECK(wk_tensor_dtype(blocks) == WK_Q8_0, "the base stays Q8_0 in memory");
  int32_t idv[] = {5, 17, 42, 9, 200, 31, 7};
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 7}, WK_I32, idv);
  int64_t n = 7 * wk_model_get_config(q)->vocab_size;
  CHECK(wk_model_use_adapter(q, a) == WK_OK, "use adapter");
  float *active = logits_of(q, ids);
  // gradients flow through the quantized base to the adapter
  wk_tensor *p[8], *g[8];
  int np = wk_adapter_params(a, p);
  wk_scope_begin();
  wk_tensor *labels = wk_from_data(2, (int64_t[]){1, 7}, WK_I32, idv);
  float loss = NAN;
  CHECK(np == 8 && wk_value_and_grad(wk_causal_lm_loss(q, ids, labels), np, p, g, &loss) == WK_OK && isfinite(loss),
        "loss and gradients through a Q8_0 base");
  float gmax = 0;
  for (int i = 0; i < np; i++) {
    float *v = read_all(g[i]);
    for (int64_t k = 0; v && k < wk_numel(g[i]); k++) gmax = fmaxf(gmax, fabsf(v[k]));
    free(v);
  }
  CHECK(gmax > 0 && isfinite(gmax), "adapter gradients are non-zero (max %g)", (double)gmax);
  wk_scope_end();
  CHECK(wk_adapter_merge(a) == WK_OK && wk_tensor_dtype(*slot) == WK_F16, "merge into Q8_0 writes f16");
  float *merged = logits_of(q, ids);
  // f16 rounding of weights of magnitude ~0.1 (relative 2^-11) moves logits by ~1e-3
  CHECK(max_abs_diff(merged, active, n) <= 1e-2f, "merged f16 logits = adapter logits (diff %g)",
        (double)max_abs_diff(merged, active, n));
  CHECK(wk_adapter_unmerge(a) == WK_OK && *slot == blocks, "unmerge restores the original Q8_0 blocks");
  free(active);
  free(merged);
  wk_tensor_free(ids);
  wk_adapter_free(a);
  wk_model_free(q);
}

// An adapter trained on a llama GGUF (q/k rows permuted for ggml's rope) is saved in
// HF row order: loaded into the HF-layout model of the same weights it changes the
// logits the same way; loading it back into the GGUF model gives the same tensors.
static void gguf_row_order(void) {
  wk_model *g = wk_model_load(fixture_in("models", "llama_q8_0.gguf"));
  wk_model *h = wk_model_load(fixture_in("models", "llama"));
  wk_lora_config c = wk_lora_defaults();
  c.targets = (1u << WK_PROJ_Q) | (1u << WK_PROJ_K);
  c.seed = 5;
  wk_adapter *a = g && h ? wk_adapter_new(g, &c) : NULL;
  CHECK(a != NULL, "adapter on the llama Q8_0 GGUF");
  if (!a) { wk_model_free(g); wk_model_free(h); return; }
  randomize_b(a, 0.5f);
  wk_tensor *ps[16];
  int n = wk_adapter_params(a, ps);
  char tmp[] = "/tmp/wick_rows_XXXXXX";
  CHECK(mkdtemp(tmp) && wk_adapter_save(a, tmp, "llama") == WK_OK, "save");
  wk_adapter *ah = wk_adapter_load(h, tmp), *ag = wk_adapter_load(g, tmp);
  CHECK(ah && ag, "load into the HF model and back into the GGUF model");
  int32_t idv[] = {3, 14, 15, 92, 65, 35, 89};
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 7}, WK_I32, idv);
  int64_t nl = 7 * wk_model_get_config(h)->vocab_size;
  float *g0 = logits_of(g, ids), *h0 = logits_of(h, ids);
  wk_model_use_adapter(g, a);
  wk_model_use_adapter(h, ah);
  float *g1 = logits_of(g, ids), *h1 = logits_of(h, ids);
  float base = max_abs_diff(g0, h0, nl), with = max_abs_diff(g1, h1, nl), moved = max_abs_diff(g0, g1, nl);
  // the bases differ by Q8_0 rounding only; a wrong row order would differ by ~moved
  CHECK(moved > 0.1f && with <= 3 * base + 1e-3f, "same adapter effect in both layouts (base diff %g, with adapter %g, "
        "adapter moves logits by %g)", (double)base, (double)with, (double)moved);
  wk_tensor *pa[16], *pg[16];
  wk_adapter_params(a, pa);
  int same = ag && wk_adapter_params(ag, pg) == n;
  for (int i = 0; same && i < n; i++) same = tensor_rel_diff(pg[i], pa[i]) == 0.0f;
  CHECK(same, "save then load on the GGUF model round-trips exactly");
  free(g0), free(h0), free(g1), free(h1);
  wk_tensor_free(ids);
  wk_adapter_free(ah);
  wk_adapter_free(ag);
  wk_adapter_free(a);
  wk_model_free(g);
  wk_model_free(h);
  remove_tmp(tmp);
}

// wk_model_save after a merge: the written HF directory, loaded again, gives the logits
// of the base with the adapter active (f32: summation order only; a Q8_0 llama GGUF
// base written in f16, q/k rows back in HF order: f16 rounding).
static void merged_save(const char *model, const char *adapter_fixture, wk_dtype dt, float tol) {
  wk_model *m = wk_model_load(fixture_in("models", model));
  wk_adapter *a = NULL;
  if (m && adapter_fixture) a = wk_adapter_load(m, lora_fixture(adapter_fixture));
  else if (m) {
    wk_lora_config c = wk_lora_defaults();
    c.targets = WK_LORA_ALL_LINEAR;
    a = wk_adapter_new(m, &c);
    if (a) randomize_b(a, 0.3f);
  }
  CHECK(a != NULL, "%s: adapter", model);
  if (!a) { wk_model_free(m); return; }
  int32_t idv[] = {3, 14, 15, 92, 65, 35, 89};
  wk_tensor *ids = wk_from_data(2, (int64_t[]){1, 7}, WK_I32, idv);
  int64_t n = 7 * wk_model_get_config(m)->vocab_size;
  wk_model_use_adapter(m, a);
  float *active = logits_of(m, ids);
  char tmp[] = "/tmp/wick_merged_XXXXXX";
  CHECK(mkdtemp(tmp) && wk_adapter_merge(a) == WK_OK && wk_model_save(m, tmp, dt) == WK_OK, "%s: merge and save", model);
  wk_model *back = wk_model_load(tmp);
  CHECK(back && wk_model_get_config(back)->num_hidden_layers == wk_model_get_config(m)->num_hidden_layers &&
            wk_tensor_dtype(*wk_llama_proj_weight(back, 0, WK_PROJ_Q)) == dt,
        "%s: the saved directory loads, in %s", model, wk_dtype_name(dt));
  float *saved = back ? logits_of(back, ids) : NULL;
  float d = max_abs_diff(saved, active, n);
  CHECK(d <= tol, "%s: saved merged model logits = adapter logits (diff %g, tolerance %g)", model, (double)d, (double)tol);
  free(active);
  free(saved);
  wk_tensor_free(ids);
  wk_model_free(back);
  wk_adapter_free(a);
  wk_model_free(m);
  remove_tmp(tmp);
}

// The llama.cpp GGUF export, read back: the adapter keys, every tensor's name, shape
// and values, B rows in GGUF order whether the base came from the GGUF (rows permuted)
// or from HF safetensors: the two exports of one adapter are identical.
static void gguf_export(void) {
  wk_model *g = wk_model_load(fixture_in("models", "llama_q8_0.gguf"));
  wk_model *h = wk_model_load(fixture_in("models", "llama"));
  wk_lora_config c = wk_lora_defaults();
  c.targets = WK_LORA_ALL_LINEAR;
  c.rslora = true;
  c.rank = 4;
  wk_adapter *a = g && h ? wk_adapter_new(g, &c) : NULL;
  CHECK(a != NULL, "adapter on the llama GGUF");
  if (!a) { wk_model_free(g); wk_model_free(h); return; }
  randomize_b(a, 1.0f);
  wk_tensor *ps[64];
  int n = wk_adapter_params(a, ps);
  char tmp[] = "/tmp/wick_export_XXXXXX", p1[64], p2[64];
  CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
  snprintf(p1, sizeof p1, "%s/from_gguf.gguf", tmp);
  snprintf(p2, sizeof p2, "%s/from_hf.gguf", tmp);
  CHECK(wk_adapter_export_gguf(a, p1, WK_F32) == WK_OK && wk_adapter_save(a, tmp, "llama") == WK_OK, "export, save");
  wk_adapter *ah = wk_adapter_load(h, tmp);
  CHECK(ah && wk_adapter_export_gguf(ah, p2, WK_F32) == WK_OK, "export from the HF-layout model");
  CHECK(wk_adapter_export_gguf(a, "", WK_F32) != WK_OK && strstr(wk_last_error(), "path is empty"),
        "an empty path is named as such (%s)", wk_last_error());
  wk_gguf *f1 = wk_gguf_open(p1), *f2 = wk_gguf_open(p2);
  CHECK(f1 && f2, "both exports parse as GGUF");
  const char *type = NULL, *atype = NULL;
  float alpha = 0;
  CHECK(f1 && !wk_gguf_get_str(f1, "general.type", &type) && !strcmp(type, "adapter") &&
            !wk_gguf_get_str(f1, "adapter.type", &atype) && !strcmp(atype, "lora") &&
            !wk_gguf_get_f32(f1, "adapter.lora.alpha", &alpha) && fabsf(alpha - 16.0f * 2.0f) < 1e-5f,
        "adapter keys (rsLoRA folded into alpha: %g)", (double)alpha);
  CHECK(f1 && wk_gguf_tensor_count(f1) == n && f2 && wk_gguf_tensor_count(f2) == n, "%d tensors", n);
  const wk_gguf_tensor *ta = f1 ? wk_gguf_find_tensor(f1, "blk.1.ffn_down.weight.lora_a") : NULL;
  const wk_gguf_tensor *tb = f1 ? wk_gguf_find_tensor(f1, "blk.1.attn_q.weight.lora_b") : NULL;
  int64_t qout, qin, din, dout;
  wk_model_proj_dims(g, WK_PROJ_Q, &qout, &qin);
  wk_model_proj_dims(g, WK_PROJ_DOWN, &dout, &din);
  CHECK(ta && ta->ndim == 2 && ta->shape[0] == 4 && ta->shape[1] == din && tb && tb->shape[0] == qout &&
            tb->shape[1] == 4 && tb->type == WK_QT_F32,
        "lora_a is [r, in] and lora_b [out, r] (ggml ne reversed), f32");
  int same = f1 && f2;
  for (int64_t i = 0; same && i < wk_gguf_tensor_count(f1); i++) {
    const char *name = wk_gguf_tensor_at(f1, i)->name;
    wk_tensor *x = wk_gguf_tensor_load(f1, name), *y = wk_gguf_tensor_load(f2, name);
    same = x && y && tensor_rel_diff(x, y) == 0.0f;
    if (!same) printf("differs: %s\n", name);
    wk_tensor_free(x);
    wk_tensor_free(y);
  }
  CHECK(same, "the exports from the GGUF and the HF layouts are identical");
  wk_tensor *a0 = f1 ? wk_gguf_tensor_load(f1, "blk.0.attn_q.weight.lora_a") : NULL;
  CHECK(a0 && tensor_rel_diff(a0, ps[0]) == 0.0f, "lora_a holds A");
  wk_tensor_free(a0);
  wk_gguf_close(f1);
  wk_gguf_close(f2);
  wk_adapter_free(ah);
  wk_adapter_free(a);
  wk_model_free(g);
  wk_model_free(h);
  remove_tmp(tmp);
}

int main(void) {
  gguf_export();
  merged_save("qwen2", "qv", WK_F32, 1e-5f);
  merged_save("llama_q8_0.gguf", NULL, WK_F16, 2e-2f);
  quantized_base();
  gguf_row_order();
  against_peft("qv", 2 * 2 * 2);
  against_peft("all", 2 * 7 * 2);
  save_layout();
  merge_and_registry();
  fresh_adapter();
  bad_input();
  return check_report();
}
