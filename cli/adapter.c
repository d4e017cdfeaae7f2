#define _POSIX_C_SOURCE 200809L
// wick adapter info DIR [--json]: what a PEFT LoRA adapter directory holds (rank,
// alpha, targets, layers, tensors, bytes), read from its files without a model.
// wick adapter merge [-m MODEL] --adapter DIR -o OUT [--dtype f32|f16|bf16]: the base
// with the adapter folded in, written as a Hugging Face model directory.
#include <stdlib.h>
#include <string.h>
#include "common.h"

static int info(const char *C, const char *dir, bool json) {
  char cfgp[4096], stp[4096];
  snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", dir);
  snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
  if (cli_check_path(C, cfgp, false) || cli_check_path(C, stp, false)) return 2;
  FILE *f = fopen(cfgp, "rb");
  char *text = NULL;
  size_t len = 0;
  if (f) {
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = sz >= 0 && sz < (1 << 20) ? malloc((size_t)sz + 1) : NULL;
    len = text ? fread(text, 1, (size_t)sz, f) : 0;
    fclose(f);
  }
  if (!text) return cli_user_error(C, "%s: can't read it", cfgp);
  // the few fields worth showing, pulled out with the tokenizer-free JSON of the CLI
  wk_st_file *st = wk_st_open(stp);
  if (!st) { free(text); return cli_lib_error(C); }
  uint64_t bytes = 0;
  int64_t max_layer = -1;
  for (int i = 0; i < wk_st_count(st); i++) {
    wk_st_info in;
    if (wk_st_tensor_info(st, i, &in)) continue;
    bytes += in.nbytes;
    const char *p = strstr(in.name, "layers.");
    if (p) {
      long long l = strtoll(p + 7, NULL, 10);
      if (l > max_layer) max_layer = l;
    }
  }
  if (json) {
    printf("{\"dir\": ");
    cli_json_string(stdout, dir, strlen(dir));
    printf(", \"tensors\": %d, \"bytes\": %llu, \"layers\": %lld, \"config\": %.*s}\n", wk_st_count(st),
           (unsigned long long)bytes, (long long)(max_layer + 1), (int)len, text);
  } else {
    printf("adapter %s\n  tensors %d, %llu bytes, layers %lld\n  config:\n%.*s", dir, wk_st_count(st),
           (unsigned long long)bytes, (long long)(max_layer + 1), (int)len, text);
    if (len && text[len - 1] != '\n') putchar('\n');
    for (int i = 0; i < wk_st_count(st) && i < 8; i++) {
      wk_st_info in;
      if (wk_st_tensor_info(st, i, &in)) continue;
      printf("  %-64s %s [%lld, %lld]\n", in.name, in.dtype_name, (long long)in.shape[0],
             (long long)(in.ndim > 1 ? in.shape[1] : 1));
    }
    if (wk_st_count(st) > 8) printf("  ... %d more\n", wk_st_count(st) - 8);
  }
  wk_st_close(st);
  free(text);
  return 0;
}

// Copies src to dst (small text files: the tokenizer's); 0 on success.
static int copy_file(const char *src, const char *dst) {
  FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
  char buf[1 << 16];
  size_t n;
  int rc = in && out ? 0 : 1;
  while (!rc && (n = fread(buf, 1, sizeof buf, in)) > 0) rc = fwrite(buf, 1, n, out) != n;
  if (in) fclose(in);
  if (out && fclose(out)) rc = 1;
  return rc;
}

static int merge(const char *C, int argc, char **argv) {
  const char *model = NULL, *dir = NULL, *out = NULL, *dtype = NULL, *v;
  bool overwrite = false;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; model = v; }
    else if (!strcmp(a, "--adapter")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; dir = v; }
    else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; out = v; }
    else if (!strcmp(a, "--dtype")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; dtype = v; }
    else if (!strcmp(a, "--overwrite")) overwrite = true;
    else return cli_user_error(C, "merge: unknown option '%s'", a);
  }
  if (!dir || !out) return cli_user_error(C, "merge: needs --adapter DIR and -o OUT");
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || cli_check_path(C, dir, false)) return 2;
  char probe[4096];
  snprintf(probe, sizeof probe, "%s/model.safetensors", out);
  FILE *exists = fopen(probe, "rb");
  if (exists) {
    fclose(exists);
    if (!overwrite) return cli_user_error(C, "merge: %s already holds a model (pass --overwrite to replace it)", out);
  }
  wk_model *m = wk_model_load(model);
  wk_adapter *a = m ? wk_adapter_load(m, dir) : NULL;
  if (!a) { wk_model_free(m); return cli_lib_error(C); }
  // the base's float dtype; f16 for a quantized base (never requantized)
  wk_dtype dt = WK_F16;
  const wk_model_config *cfg = wk_model_get_config(m);
  if (cfg->has_dtype && (cfg->dtype == WK_F32 || cfg->dtype == WK_BF16 || cfg->dtype == WK_F16)) dt = cfg->dtype;
  if (dtype) {
    if (!strcmp(dtype, "f32")) dt = WK_F32;
    else if (!strcmp(dtype, "f16")) dt = WK_F16;
    else if (!strcmp(dtype, "bf16")) dt = WK_BF16;
    else { wk_adapter_free(a); wk_model_free(m); return cli_user_error(C, "merge: --dtype '%s' is not f32, f16 or bf16", dtype); }
  }
  int rc = 0;
  if (wk_adapter_merge(a) || wk_model_save(m, out, dt)) rc = cli_lib_error(C);
  if (!rc && cli_is_dir(model)) {   // the tokenizer travels with the weights
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
      char src[4096], dst[4096];
      snprintf(src, sizeof src, "%s/%s", model, files[i]);
      snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
      FILE *f = fopen(src, "rb");
      if (!f) continue;
      fclose(f);
      if (copy_file(src, dst)) rc = cli_user_error(C, "merge: copying %s failed", src);
    }
  }
  if (!rc)
    printf("merged %s into %s: %s (%s)%s\n", dir, model, out, wk_dtype_name(dt),
           cli_is_dir(model) ? "" : "; a GGUF base's tokenizer is not copied: use the GGUF's vocabulary");
  wk_adapter_free(a);
  wk_model_free(m);
  return rc;
}

// wick adapter export [-m MODEL] --adapter DIR -o FILE.gguf [--dtype f32|f16]
static int export_gguf(const char *C, int argc, char **argv) {
  const char *model = NULL, *dir = NULL, *out = NULL, *v;
  wk_dtype dt = WK_F32;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; model = v; }
    else if (!strcmp(a, "--adapter")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; dir = v; }
    else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; out = v; }
    else if (!strcmp(a, "--gguf")) continue;   // the only export format
    else if (!strcmp(a, "--dtype")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) return 2;
      if (!strcmp(v, "f32")) dt = WK_F32;
      else if (!strcmp(v, "f16")) dt = WK_F16;
      else return cli_user_error(C, "export: --dtype '%s' is not f32 or f16", v);
    } else return cli_user_error(C, "export: unknown option '%s'", a);
  }
  if (!dir || !out) return cli_user_error(C, "export: needs --adapter DIR and -o FILE.gguf");
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || cli_check_path(C, dir, false)) return 2;
  wk_model *m = wk_model_load(model);
  wk_adapter *a = m ? wk_adapter_load(m, dir) : NULL;
  int rc = !a || wk_adapter_export_gguf(a, out, dt) ? cli_lib_error(C) : 0;
  if (!rc) printf("wrote %s: llama.cpp LoRA adapter (%s) for %s\n", out, wk_dtype_name(dt), model);
  wk_adapter_free(a);
  wk_model_free(m);
  return rc;
}

int wick_adapter_main(int argc, char **argv) {
  const char *C = "adapter";
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    printf("usage: wick adapter info DIR [--json]    what a PEFT LoRA adapter directory holds\n"
           "       wick adapter merge [-m MODEL] --adapter DIR -o OUT [--dtype f32|f16|bf16] [--overwrite]\n"
           "            the model with the adapter folded in, as a Hugging Face directory (default dtype: the\n"
           "            base's; f16 for a quantized base, which is never requantized)\n"
           "       wick adapter export --gguf [-m MODEL] --adapter DIR -o FILE.gguf [--dtype f32|f16]\n"
           "            llama.cpp's GGUF LoRA format (llama-cli -m BASE.gguf --lora FILE.gguf)\n");
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "info")) {
    const char *dir = NULL;
    bool json = false;
    for (int i = 2; i < argc; i++) {
      if (!strcmp(argv[i], "--json")) json = true;
      else if (argv[i][0] == '-') return cli_user_error(C, "unknown option '%s'", argv[i]);
      else if (!dir) dir = argv[i];
      else return cli_user_error(C, "unexpected argument '%s'", argv[i]);
    }
    if (!dir) return cli_user_error(C, "info: missing the adapter directory");
    return info(C, dir, json);
  }
  if (!strcmp(argv[1], "merge")) return merge(C, argc, argv);
  if (!strcmp(argv[1], "export")) return export_gguf(C, argc, argv);
  return cli_user_error(C, "unknown subcommand '%s' (info, merge, export)", argv[1]);
}
