#define _POSIX_C_SOURCE 200809L
// wick adapter info DIR [--json]: what a PEFT LoRA adapter directory holds (rank,
// alpha, targets, layers, tensors, bytes), read from its files without a model.
// wick adapter merge [-m MODEL] --adapter DIR -o OUT [--dtype f32|f16|bf16]: the base
// with the adapter folded in, written as a Hugging Face model directory.
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
  if (wk_json_check(text, len, cfgp)) { free(text); return cli_lib_error(C); }   // (--json embeds it)
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

static bool same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return !stat(a, &sa) && !stat(b, &sb) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Copies src to dst (small text files: the tokenizer's) through a temporary file and a
// rename, so dst is either as it was or complete; nothing to do when they are one file
// (a merge into the base's own directory). 0 on success.
static int copy_file(const char *src, const char *dst) {
  if (same_file(src, dst)) return 0;
  FILE *in = fopen(src, "rb");
  cli_file out;
  if (!in) return 1;
  if (cli_file_open(&out, dst)) { fclose(in); return 1; }
  char buf[1 << 16];
  size_t n;
  bool ok = true;
  while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out.f) == n;
  ok = ok && !ferror(in);
  fclose(in);
  return cli_file_commit(&out, ok) ? 1 : 0;
}

// The options merge and export share: -m MODEL, --adapter DIR, -o OUT, --dtype and
// --overwrite (export also accepts --gguf, its only format).
typedef struct {
  const char *model, *dir, *out, *dtype;
  bool overwrite, is_default;
} job;

static int parse_job(const char *C, const char *sub, int argc, char **argv, job *j) {
  const char *v;
  bool export = !strcmp(sub, "export");
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **dst = !strcmp(a, "-m") || !strcmp(a, "--model") ? &j->model
                     : !strcmp(a, "--adapter")                   ? &j->dir
                     : !strcmp(a, "-o") || !strcmp(a, "--out")   ? &j->out
                     : !strcmp(a, "--dtype")                     ? &j->dtype
                                                                 : NULL;
    if (dst) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) return 2;
      *dst = v;
    } else if (!strcmp(a, "--overwrite")) j->overwrite = true;
    else if (!(export && !strcmp(a, "--gguf"))) return cli_user_error(C, "%s: unknown option '%s'", sub, a);
  }
  if (!j->dir || !j->out) return cli_user_error(C, "%s: needs --adapter DIR and -o OUT", sub);
  j->is_default = !j->model;
  if (!j->model) j->model = WICK_DEFAULT_LM;
  return cli_check_path(C, j->model, j->is_default) || cli_check_path(C, j->dir, false) ? 2 : 0;
}

// f32, f16 or (allow_bf16) bf16 into *dt; 2 after a user error.
static int parse_dtype(const char *C, const char *sub, const char *v, bool allow_bf16, wk_dtype *dt) {
  if (!strcmp(v, "f32")) *dt = WK_F32;
  else if (!strcmp(v, "f16")) *dt = WK_F16;
  else if (allow_bf16 && !strcmp(v, "bf16")) *dt = WK_BF16;
  else return cli_user_error(C, "%s: --dtype '%s' is not f32, f16%s", sub, v, allow_bf16 ? " or bf16" : "");
  return 0;
}

static int merge(const char *C, int argc, char **argv) {
  job j = {0};
  int rc = parse_job(C, "merge", argc, argv, &j);
  if (rc) return rc;
  char probe[4096];
  snprintf(probe, sizeof probe, "%s/model.safetensors", j.out);
  FILE *exists = fopen(probe, "rb");
  if (exists) {
    fclose(exists);
    if (!j.overwrite) return cli_user_error(C, "merge: %s already holds a model (pass --overwrite to replace it)", j.out);
  }
  wk_adapter *a;
  wk_model *m = cli_load_model(j.model, WK_CPU, j.dir, &a);
  if (!m) return cli_lib_error(C);
  // the base's float dtype; f16 for a quantized base (never requantized)
  wk_dtype dt = WK_F16;
  const wk_model_config *cfg = wk_model_get_config(m);
  if (cfg->has_dtype && (cfg->dtype == WK_F32 || cfg->dtype == WK_BF16 || cfg->dtype == WK_F16)) dt = cfg->dtype;
  if (j.dtype) rc = parse_dtype(C, "merge", j.dtype, true, &dt);
  if (!rc && (wk_adapter_merge(a) || wk_model_save(m, j.out, dt))) rc = cli_lib_error(C);
  if (!rc && cli_is_dir(j.model)) {   // the tokenizer travels with the weights
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
      char src[4096], dst[4096];
      snprintf(src, sizeof src, "%s/%s", j.model, files[i]);
      snprintf(dst, sizeof dst, "%s/%s", j.out, files[i]);
      FILE *f = fopen(src, "rb");
      if (!f) continue;
      fclose(f);
      if (copy_file(src, dst)) rc = cli_user_error(C, "merge: copying %s failed", src);
    }
  }
  if (!rc)
    printf("merged %s into %s: %s (%s)%s\n", j.dir, j.model, j.out, wk_dtype_name(dt),
           cli_is_dir(j.model) ? "" : "; a GGUF base's tokenizer is not copied: use the GGUF's vocabulary");
  cli_model_free(m, a);
  return rc;
}

// wick adapter export --gguf [-m MODEL] --adapter DIR -o FILE.gguf [--dtype f32|f16] [--overwrite]
static int export_gguf(const char *C, int argc, char **argv) {
  job j = {0};
  wk_dtype dt = WK_F32;
  int rc = parse_job(C, "export", argc, argv, &j);
  if (!rc && j.dtype) rc = parse_dtype(C, "export", j.dtype, false, &dt);
  if (rc) return rc;
  if (cli_is_dir(j.out)) return cli_user_error(C, "export: -o %s is a directory; give the .gguf file to write", j.out);
  struct stat sb;
  if (!stat(j.out, &sb) && !j.overwrite)
    return cli_user_error(C, "export: %s already exists (pass --overwrite to replace it)", j.out);
  if (same_file(j.out, j.model)) return cli_user_error(C, "export: -o %s is the base model itself", j.out);
  wk_adapter *a;
  wk_model *m = cli_load_model(j.model, WK_CPU, j.dir, &a);
  rc = !m || wk_adapter_export_gguf(a, j.out, dt) ? cli_lib_error(C) : 0;
  if (!rc) printf("wrote %s: llama.cpp LoRA adapter (%s) for %s\n", j.out, wk_dtype_name(dt), j.model);
  cli_model_free(m, a);
  return rc;
}

int wick_adapter_main(int argc, char **argv) {
  const char *C = "adapter";
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    printf("usage: wick adapter info DIR [--json]    what a PEFT LoRA adapter directory holds\n"
           "       wick adapter merge [-m MODEL] --adapter DIR -o OUT [--dtype f32|f16|bf16] [--overwrite]\n"
           "            the model with the adapter folded in, as a Hugging Face directory (default dtype: the\n"
           "            base's; f16 for a quantized base, which is never requantized)\n"
           "       wick adapter export --gguf [-m MODEL] --adapter DIR -o FILE.gguf [--dtype f32|f16] [--overwrite]\n"
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
