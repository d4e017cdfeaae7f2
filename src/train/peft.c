// LoRA adapters in PEFT's layout: adapter_config.json + adapter_model.safetensors with
// names "base_model.model.model.layers.<l>.<self_attn|mlp>.<proj>.lora_<A|B>.weight".
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "train/adapter.h"
#include "wick/io.h"
#include "wick/ops.h"

static int parse_name(const char *name, int64_t *layer, int *proj, char *ab);

// ---- save ----
static void write_config(wk_jbuf *b, const wk_lora_config *c, const char *base) {
  wk_jbuf_puts(b, "{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": ");
  if (base) wk_json_write_string(b, base, strlen(base));
  else wk_jbuf_puts(b, "null");
  wk_jbuf_puts(b, ",\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"inference_mode\": true,\n"
                  "  \"init_lora_weights\": true,\n  \"layer_replication\": null,\n  \"layers_pattern\": null,\n"
                  "  \"layers_to_transform\": null,\n  \"loftq_config\": {},\n  \"lora_alpha\": ");
  wk_json_write_number(b, c->alpha);
  wk_jbuf_puts(b, ",\n  \"lora_bias\": false,\n  \"lora_dropout\": ");
  wk_json_write_number(b, c->dropout);
  wk_jbuf_puts(b, ",\n  \"megatron_config\": null,\n  \"megatron_core\": \"megatron.core\",\n"
                  "  \"modules_to_save\": null,\n  \"peft_type\": \"LORA\",\n  \"r\": ");
  wk_jbuf_printf(b, "%d", c->rank);
  wk_jbuf_puts(b, ",\n  \"rank_pattern\": {},\n  \"revision\": null,\n  \"target_modules\": [");
  int first = 1;
  for (int p = 0; p < WK_PROJ_COUNT; p++)
    if (c->targets & (1u << p)) {
      wk_jbuf_printf(b, "%s\n    \"%s\"", first ? "" : ",", wk_proj_name((wk_proj)p));
      first = 0;
    }
  wk_jbuf_printf(b, "\n  ],\n  \"task_type\": \"CAUSAL_LM\",\n  \"use_dora\": false,\n  \"use_rslora\": %s\n}\n",
                 c->rslora ? "true" : "false");
}

wk_status wk_adapter_save(const wk_adapter *a, const char *dir, const char *base) {
  if (!a || !dir) return wk_error(WK_ERR_ARG, "adapter_save: adapter or directory is NULL");
  if (wk_mkdirs(dir)) return WK_ERR_IO;
  char *path = wk_path_join(dir, "adapter_model.safetensors");
  if (!path) return wk_error(WK_ERR_OOM, "adapter_save: out of memory");
  // PEFT files hold HF row order: q/k B rows of a llama GGUF base are unpermuted
  wk_tensor **hf = calloc((size_t)(a->n_params ? a->n_params : 1), sizeof *hf);
  wk_status s = hf ? WK_OK : wk_error(WK_ERR_OOM, "adapter_save: out of memory");
  for (int i = 0; !s && i < a->n_params; i++) {
    int64_t l;
    int p;
    char ab;
    parse_name(a->names[i], &l, &p, &ab);
    hf[i] = ab == 'B' ? wk_llama_rows_hf(a->model, (wk_proj)p, a->params[i], 1) : wk_tensor_ref(a->params[i]);
    if (!hf[i]) s = WK_ERR_STATE;
  }
  if (!s) s = wk_st_save(path, a->n_params, (const char *const *)a->names, hf, (const char *[]){"format", "pt", NULL});
  for (int i = 0; hf && i < a->n_params; i++) wk_tensor_free(hf[i]);
  free(hf);
  free(path);
  if (s) return s;
  wk_jbuf b = {0};
  write_config(&b, &a->cfg, base);
  if (b.failed) { wk_jbuf_free(&b); return wk_error(WK_ERR_OOM, "adapter_save: out of memory"); }
  path = wk_path_join(dir, "adapter_config.json");
  s = path ? wk_write_atomic(path, 1, (const void *[]){b.data}, (size_t[]){b.len}) : WK_ERR_OOM;
  free(path);
  wk_jbuf_free(&b);
  return s;
}

// ---- load ----
// "base_model.model.model.layers.12.mlp.up_proj.lora_B.weight" -> layer 12, UP, 'B'.
static int parse_name(const char *name, int64_t *layer, int *proj, char *ab) {
  const char *prefix = "base_model.model.model.layers.";
  size_t pl = strlen(prefix);
  if (strncmp(name, prefix, pl)) return 0;
  char *end;
  long long l = strtoll(name + pl, &end, 10);
  if (end == name + pl || *end != '.' || l < 0) return 0;
  const char *rest = end + 1;
  for (int p = 0; p < WK_PROJ_COUNT; p++) {
    char want[96];
    for (int k = 0; k < 2; k++) {
      snprintf(want, sizeof want, "%s.lora_%c.weight", wk_llama_hf_module((wk_proj)p), k ? 'B' : 'A');
      if (!strcmp(rest, want)) {
        *layer = l, *proj = p, *ab = k ? 'B' : 'A';
        return 1;
      }
    }
  }
  return 0;
}

// Refuses the PEFT features wick does not implement, naming the field.
static wk_status check_features(const wk_json *cfg, const char *path) {
  const char *type = wk_json_str(wk_json_get(cfg, "peft_type"), "LORA");
  if (strcmp(type, "LORA")) return wk_error(WK_ERR_ARG, "%s: peft_type '%s' is not LORA", path, type);
  if (wk_json_bool(wk_json_get(cfg, "use_dora"), false))
    return wk_error(WK_ERR_ARG, "%s: use_dora is true: DoRA adapters are not supported", path);
  const char *bias = wk_json_str(wk_json_get(cfg, "bias"), "none");
  if (strcmp(bias, "none")) return wk_error(WK_ERR_ARG, "%s: bias '%s' is not supported (only \"none\")", path, bias);
  if (wk_json_bool(wk_json_get(cfg, "fan_in_fan_out"), false))
    return wk_error(WK_ERR_ARG, "%s: fan_in_fan_out is true (a GPT-2-style Conv1D base) and not supported", path);
  // fields that must be null or empty, and why wick can't honor them
  static const struct { const char *key, *why; } unsupported[] = {
      {"rank_pattern", "every adapted module must share r"},
      {"alpha_pattern", "every adapted module must share alpha"},
      {"modules_to_save", "wick adapts projections only; fully trained copies of other modules are not loaded"},
      {"layers_to_transform", "wick adapts the targets in every layer"},
      {"layer_replication", "layers are not replicated"},
  };
  for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
    const wk_json *v = wk_json_get(cfg, unsupported[i].key);
    bool empty = !v || wk_json_is(v, WK_JSON_NULL) ||
                 ((wk_json_is(v, WK_JSON_ARRAY) || wk_json_is(v, WK_JSON_OBJECT)) && !wk_json_len(v));
    if (!empty)
      return wk_error(WK_ERR_ARG, "%s: %s is set, which wick does not support (%s)", path, unsupported[i].key,
                      unsupported[i].why);
  }
  return WK_OK;
}

static wk_status read_config(const char *dir, wk_lora_config *c, unsigned *listed) {
  char *path = wk_path_join(dir, "adapter_config.json");
  if (!path) return wk_error(WK_ERR_OOM, "adapter_load: out of memory");
  size_t len;
  char *text = wk_read_file(path, 1 << 20, &len);
  wk_json *cfg = text ? wk_json_parse(text, len, path, NULL) : NULL;
  wk_status s = cfg ? check_features(cfg, path) : WK_ERR_IO;
  if (!s) {
    *c = wk_lora_defaults();
    const wk_json *r = wk_json_get(cfg, "r"), *alpha = wk_json_get(cfg, "lora_alpha");
    if (!r || !r->is_int) s = wk_error(WK_ERR_ARG, "%s: \"r\" is missing or not an integer", path);
    else if (!wk_json_is(alpha, WK_JSON_NUMBER)) s = wk_error(WK_ERR_ARG, "%s: \"lora_alpha\" is missing or not a number", path);
    else {
      c->rank = r->i > 0 && r->i < (1 << 20) ? (int)r->i : 0;
      c->alpha = (float)alpha->d;
      c->dropout = (float)wk_json_num(wk_json_get(cfg, "lora_dropout"), 0.0);
      c->rslora = wk_json_bool(wk_json_get(cfg, "use_rslora"), false);
      if (c->rank < 1) s = wk_error(WK_ERR_ARG, "%s: r = %lld must be >= 1", path, (long long)r->i);
    }
  }
  // target_modules: a list of module names (checked here), or a string ("all-linear"
  // or a regular expression) that the tensors present then define.
  *listed = 0;
  const wk_json *tm = wk_json_get(cfg, "target_modules");
  for (size_t i = 0; !s && wk_json_is(tm, WK_JSON_ARRAY) && i < wk_json_len(tm); i++) {
    const char *name = wk_json_str(wk_json_at(tm, i), "");
    int found = -1;
    for (int p = 0; p < WK_PROJ_COUNT; p++)
      if (!strcmp(name, wk_proj_name((wk_proj)p))) found = p;
    if (found < 0)
      s = wk_error(WK_ERR_ARG, "%s: target module '%s' is not a projection of this model (q_proj, k_proj, v_proj, "
                   "o_proj, gate_proj, up_proj, down_proj)", path, name);
    else *listed |= 1u << found;
  }
  wk_json_free(cfg);
  free(text);
  free(path);
  return s;
}

// Loads, checks and converts one tensor to an evaluated f32 copy.
static wk_tensor *load_param(wk_st_file *f, const char *name, int64_t d0, int64_t d1, const char *path) {
  wk_tensor *t = wk_st_get(f, name);
  if (!t) return NULL;
  char b[160];
  if (wk_ndim(t) != 2 || wk_dim(t, 0) != d0 || wk_dim(t, 1) != d1) {
    wk_error(WK_ERR_SHAPE, "%s: tensor '%s' is %s, expected [%lld, %lld] for this model and rank", path, name,
             wk_shape_str(t, b, sizeof b), (long long)d0, (long long)d1);
    wk_tensor_free(t);
    return NULL;
  }
  // a copy, so the adapter owns its memory and the file can be overwritten by a later save
  wk_tensor *c = wk_tensor_dtype(t) == WK_F32 ? wk_add_scalar(t, 0.0f) : wk_cast(t, WK_F32);
  wk_tensor_free(t);
  if (c && (wk_eval(1, &c) || wk_check_loaded(c, path, name, "adapter weights", false))) { wk_tensor_free(c); c = NULL; }
  return c;
}

wk_status wk_check_loaded(wk_tensor *t, const char *path, const char *name, const char *what, bool nonneg) {
  const float *d = wk_tensor_data(t);
  if (!d) return WK_ERR_STATE;
  int64_t n = wk_numel(t), cols = wk_ndim(t) == 2 ? wk_dim(t, 1) : n;
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(d[i]) || (nonneg && d[i] < 0))
      return wk_error(WK_ERR_ARG, "%s: tensor '%s' holds %s at [%lld, %lld]: %s must be %s (a diverged training "
                      "run, or a corrupt file)", path, name, isnan(d[i]) ? "NaN" : isinf(d[i]) ? (d[i] > 0 ? "+inf" : "-inf") : "a negative value",
                      (long long)(i / cols), (long long)(i % cols), what, nonneg ? "finite and >= 0" : "finite");
  return WK_OK;
}

// Every name must be a LoRA weight of a projection in range, A and B in pairs; the
// pairs are installed in (layer, projection) order, the order wk_adapter_new uses.
static wk_status load_tensors(wk_adapter *a, wk_st_file *f, const char *path, unsigned *found) {
  int64_t r = a->cfg.rank;
  int n = wk_st_count(f);
  *found = 0;
  for (int i = 0; i < n; i++) {
    const char *name = wk_st_name(f, i);
    int64_t l;
    int p;
    char ab;
    if (!parse_name(name, &l, &p, &ab))
      return wk_error(WK_ERR_ARG, "%s: tensor '%s' is not a LoRA weight of a decoder projection wick knows", path, name);
    if (l >= a->n_layers)
      return wk_error(WK_ERR_SHAPE, "%s: tensor '%s' is for layer %lld but the model has %lld layers", path, name,
                      (long long)l, (long long)a->n_layers);
    char other[192];
    snprintf(other, sizeof other, "%.*s_%c.weight", (int)(strlen(name) - strlen("_A.weight")), name, ab == 'A' ? 'B' : 'A');
    if (wk_st_find(f, other) < 0) return wk_error(WK_ERR_ARG, "%s: tensor '%s' has no matching '%s'", path, name, other);
  }
  for (int64_t l = 0; l < a->n_layers; l++)
    for (int p = 0; p < WK_PROJ_COUNT; p++) {
      char name[192], bname[192];
      wk_lora_peft_name(name, sizeof name, l, (wk_proj)p, 'A');
      if (wk_st_find(f, name) < 0) continue;
      wk_lora_peft_name(bname, sizeof bname, l, (wk_proj)p, 'B');
      int64_t out, in;
      wk_model_proj_dims(a->model, (wk_proj)p, &out, &in);
      wk_tensor *A = load_param(f, name, r, in, path);
      wk_tensor *B = A ? load_param(f, bname, out, r, path) : NULL;
      if (B) {   // HF row order -> the model's (llama GGUF q/k)
        wk_tensor *Bm = wk_llama_rows_hf(a->model, (wk_proj)p, B, 0);
        wk_tensor_free(B);
        B = Bm && !wk_eval(1, &Bm) ? Bm : NULL;
      }
      if (!A || !B) {
        wk_tensor_free(A);
        wk_tensor_free(B);
        return WK_ERR_ARG;
      }
      if (wk_adapter_put(a, l, (wk_proj)p, A, B)) return WK_ERR_ARG;   // put consumed A and B
      *found |= 1u << p;
    }
  if (!*found) return wk_error(WK_ERR_ARG, "%s: no LoRA tensors", path);
  return WK_OK;
}

wk_adapter *wk_adapter_load(wk_model *m, const char *dir) {
  if (!m || !dir) { wk_error(WK_ERR_ARG, "adapter_load: model or directory is NULL"); return NULL; }
  if (!wk_is_dir(dir)) { wk_error(WK_ERR_IO, "adapter %s: not a directory (expected a PEFT adapter directory)", dir); return NULL; }
  wk_lora_config c;
  unsigned listed = 0;
  if (read_config(dir, &c, &listed)) return NULL;
  char *path = wk_path_join(dir, "adapter_model.safetensors");
  if (!path) { wk_error(WK_ERR_OOM, "adapter_load: out of memory"); return NULL; }
  struct stat st;
  if (stat(path, &st)) {
    char *bin = wk_path_join(dir, "adapter_model.bin");
    int has_bin = bin && !stat(bin, &st);
    free(bin);
    wk_error(WK_ERR_IO, "adapter %s: adapter_model.safetensors not found%s", dir,
             has_bin ? " (adapter_model.bin is a pickle, which wick does not read: save with safe_serialization=True)" : "");
    free(path);
    return NULL;
  }
  c.targets = listed ? listed : WK_LORA_ALL_LINEAR;   // refined from the tensors below
  wk_adapter *a = wk_adapter_alloc(m, &c);
  wk_st_file *f = a ? wk_st_open(path) : NULL;
  unsigned found = 0;
  wk_status s = f ? load_tensors(a, f, path, &found) : WK_ERR_IO;
  if (!s && listed && found != listed) {
    char x[128], y[128];
    s = wk_error(WK_ERR_ARG, "%s: adapter_config.json targets %s but the tensors cover %s", path,
                 wk_lora_targets_str(listed, x, sizeof x), wk_lora_targets_str(found, y, sizeof y));
  }
  wk_st_close(f);
  free(path);
  if (s) { wk_adapter_free(a); return NULL; }
  a->cfg.targets = found;
  return a;
}
