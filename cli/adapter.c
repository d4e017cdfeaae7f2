#define _POSIX_C_SOURCE 200809L
// wick adapter info DIR [--json]: what a PEFT LoRA adapter directory holds (rank,
// alpha, targets, layers, tensors, bytes), read from its files without a model.
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

int wick_adapter_main(int argc, char **argv) {
  const char *C = "adapter";
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
    printf("usage: wick adapter info DIR [--json]    what a PEFT LoRA adapter directory holds\n");
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
  return cli_user_error(C, "unknown subcommand '%s' (info)", argv[1]);
}
