#define _POSIX_C_SOURCE 200809L
// wick info PATH [--json]: architecture, sizes, tensor types of a model directory,
// a .safetensors file or a .gguf file.
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "common.h"

#define MAX_GROUPS 48

typedef struct {
  char type[16];
  int64_t count, params;
  uint64_t bytes;
} tgroup;

typedef struct {
  const char *path, *format;
  uint64_t file_size;
  // config (-1 / 0 when unknown)
  int have_cfg;
  char arch[64], architecture[64];
  int64_t layers, heads, kv_heads, hidden, intermediate, head_dim, vocab, ctx;
  double rope_theta, norm_eps;
  // tensors
  int64_t params, ntensors;
  tgroup groups[MAX_GROUPS];
  int ngroups;
  // gguf
  const char *g_name, *g_arch, *tok_model;
  int64_t g_file_type, tok_vocab, g_version, g_nkv;
} info;

static void add_tensor(info *in, const char *type, int64_t numel, uint64_t bytes) {
  in->ntensors++;
  in->params += numel;
  int g = 0;
  while (g < in->ngroups && strcmp(in->groups[g].type, type)) g++;
  if (g == in->ngroups) {
    if (g == MAX_GROUPS) g = MAX_GROUPS - 1;  // can't happen: fewer types exist
    else in->ngroups++;
    snprintf(in->groups[g].type, sizeof in->groups[g].type, "%s", type);
  }
  in->groups[g].count++;
  in->groups[g].params += numel;
  in->groups[g].bytes += bytes;
}

static void from_config(info *in, const wk_model_config *c) {
  in->have_cfg = 1;
  snprintf(in->arch, sizeof in->arch, "%s", c->model_type[0] ? c->model_type : wk_arch_name(c->arch));
  snprintf(in->architecture, sizeof in->architecture, "%s", c->architecture);
  in->layers = c->num_hidden_layers;
  in->heads = c->num_attention_heads;
  in->kv_heads = c->num_key_value_heads;
  in->hidden = c->hidden_size;
  in->intermediate = c->intermediate_size;
  in->head_dim = c->head_dim;
  in->vocab = c->vocab_size;
  in->ctx = c->max_position_embeddings;
  in->rope_theta = c->rope_theta;
  in->norm_eps = c->norm_eps;
}

static uint64_t file_size(const char *p) {
  struct stat sb;
  return stat(p, &sb) ? 0 : (uint64_t)sb.st_size;
}

static int info_safetensors(info *in, const char *path, int is_dir) {
  in->format = "safetensors";
  // config.json: in the directory, or next to a lone .safetensors file
  char cfg[4096];
  if (is_dir) snprintf(cfg, sizeof cfg, "%s/config.json", path);
  else {
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 1;
    snprintf(cfg, sizeof cfg, "%.*s/config.json", dl, slash ? path : ".");
  }
  struct stat sb;
  if (!stat(cfg, &sb)) {
    wk_model_config c;
    if (wk_model_config_load(cfg, &c)) {
      if (is_dir) return cli_lib_error("info");
      fprintf(stderr, "wick info: note: %s\n", wk_last_error());  // a neighbour's config: not fatal
    } else {
      from_config(in, &c);
    }
  } else if (is_dir) {
    return cli_user_error("info", "%s has no config.json", path);
  }
  wk_st_file *f = wk_st_open(path);
  if (!f) return cli_lib_error("info");
  const char *files[256];
  int nfiles = 0;
  for (int i = 0; i < wk_st_count(f); i++) {
    wk_st_info ti;
    if (wk_st_tensor_info(f, i, &ti)) { wk_st_close(f); return cli_lib_error("info"); }
    int64_t numel = 1;
    for (int d = 0; d < ti.ndim; d++) numel *= ti.shape[d];
    add_tensor(in, ti.dtype_name, numel, ti.nbytes);
    int k = 0;
    while (k < nfiles && strcmp(files[k], ti.file)) k++;
    if (k == nfiles && nfiles < 256) {
      files[nfiles++] = ti.file;
      in->file_size += file_size(ti.file);
    }
  }
  wk_st_close(f);
  return 0;
}

static int64_t gguf_int_or(wk_gguf *g, const char *arch, const char *key, int64_t dflt) {
  char k[160];
  if (arch) snprintf(k, sizeof k, "%s.%s", arch, key);
  else snprintf(k, sizeof k, "%s", key);
  int64_t v;
  if (!wk_gguf_has_key(g, k) || wk_gguf_get_int(g, k, &v)) return dflt;
  return v;
}

static double gguf_float_or(wk_gguf *g, const char *arch, const char *key, double dflt) {
  char k[160];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  double v;
  if (!wk_gguf_has_key(g, k) || wk_gguf_get_float(g, k, &v)) return dflt;
  return v;
}

static const char *gguf_str_or(wk_gguf *g, const char *key) {
  const char *s;
  if (!wk_gguf_has_key(g, key) || wk_gguf_get_str(g, key, &s)) return NULL;
  return s;
}

static int info_gguf(info *in, wk_gguf *g) {
  in->format = "gguf";
  in->file_size = wk_gguf_file_size(g);
  in->g_version = wk_gguf_version(g);
  in->g_nkv = wk_gguf_kv_count(g);
  in->g_name = gguf_str_or(g, "general.name");
  in->g_arch = gguf_str_or(g, "general.architecture");
  in->g_file_type = gguf_int_or(g, NULL, "general.file_type", -1);
  in->tok_model = gguf_str_or(g, "tokenizer.ggml.model");
  wk_gguf_vtype et;
  uint64_t nt;
  in->tok_vocab = (wk_gguf_has_key(g, "tokenizer.ggml.tokens") &&
                   !wk_gguf_get_array_info(g, "tokenizer.ggml.tokens", &et, &nt)) ? (int64_t)nt : -1;
  if (in->g_arch) {
    const char *a = in->g_arch;
    in->have_cfg = 1;
    snprintf(in->arch, sizeof in->arch, "%s", a);
    in->layers = gguf_int_or(g, a, "block_count", -1);
    in->hidden = gguf_int_or(g, a, "embedding_length", -1);
    in->intermediate = gguf_int_or(g, a, "feed_forward_length", -1);
    in->heads = gguf_int_or(g, a, "attention.head_count", -1);
    in->kv_heads = gguf_int_or(g, a, "attention.head_count_kv", in->heads);
    in->head_dim = gguf_int_or(g, a, "attention.key_length",
                               in->heads > 0 && in->hidden > 0 ? in->hidden / in->heads : -1);
    in->ctx = gguf_int_or(g, a, "context_length", -1);
    in->rope_theta = gguf_float_or(g, a, "rope.freq_base", 0);
    in->norm_eps = gguf_float_or(g, a, "attention.layer_norm_rms_epsilon",
                                 gguf_float_or(g, a, "attention.layer_norm_epsilon", 0));
    in->vocab = gguf_int_or(g, a, "vocab_size", -1);
    const wk_gguf_tensor *emb = NULL;
    for (int64_t i = 0; in->vocab < 0 && i < wk_gguf_tensor_count(g); i++) {
      emb = wk_gguf_tensor_at(g, i);
      if (emb && !strcmp(emb->name, "token_embd.weight") && emb->ndim == 2) in->vocab = emb->shape[0];
    }
    if (in->vocab < 0) in->vocab = in->tok_vocab;
  }
  for (int64_t i = 0; i < wk_gguf_tensor_count(g); i++) {
    const wk_gguf_tensor *t = wk_gguf_tensor_at(g, i);
    if (t) add_tensor(in, wk_qtype_name(t->type), t->numel, t->bytes);
  }
  wk_clear_error();
  return 0;
}

// llama.cpp's llama_ftype names (general.file_type)
static const char *ftype_name(int64_t t) {
  switch (t) {
    case 0: return "ALL_F32"; case 1: return "MOSTLY_F16"; case 2: return "MOSTLY_Q4_0";
    case 3: return "MOSTLY_Q4_1"; case 7: return "MOSTLY_Q8_0"; case 8: return "MOSTLY_Q5_0";
    case 9: return "MOSTLY_Q5_1"; case 10: return "MOSTLY_Q2_K"; case 11: return "MOSTLY_Q3_K_S";
    case 12: return "MOSTLY_Q3_K_M"; case 13: return "MOSTLY_Q3_K_L"; case 14: return "MOSTLY_Q4_K_S";
    case 15: return "MOSTLY_Q4_K_M"; case 16: return "MOSTLY_Q5_K_S"; case 17: return "MOSTLY_Q5_K_M";
    case 18: return "MOSTLY_Q6_K"; case 32: return "MOSTLY_BF16"; default: return "?";
  }
}

static void human(char *buf, size_t n, double v, const char *unit) {
  const char *pre[] = {"", "K", "M", "G", "T"};
  int k = 0, bytes = !strcmp(unit, "B");
  while (v >= (bytes ? 1024.0 : 1000.0) && k < 4) { v /= bytes ? 1024.0 : 1000.0; k++; }
  if (!k) snprintf(buf, n, "%.0f%s%s", v, bytes ? " " : "", unit);
  else snprintf(buf, n, "%.2f %s%s%s", v, pre[k], bytes ? "i" : "", unit);
}

// A string from the file, printed with its control bytes escaped: a crafted name must
// not send escape sequences to the terminal (--json escapes them as JSON does).
static const char *clean(const char *s, char *buf, size_t n) {
  size_t o = 0;
  for (; *s && o + 5 < n; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    else buf[o++] = (char)c;
  }
  buf[o] = 0;
  return buf;
}

static void print_text(const info *in) {
  char b1[32], b2[32];
  printf("path:          %s\n", in->path);
  printf("format:        %s\n", in->format);
  human(b1, sizeof b1, (double)in->file_size, "B");
  printf("file size:     %llu bytes (%s)\n", (unsigned long long)in->file_size, b1);
  if (in->g_name || in->g_arch || in->g_file_type >= 0 || in->tok_model || !strcmp(in->format, "gguf")) {
    printf("gguf version:  %lld, %lld metadata keys\n", (long long)in->g_version, (long long)in->g_nkv);
    char cb[1024];
    if (in->g_name) printf("general.name:  %s\n", clean(in->g_name, cb, sizeof cb));
    if (in->g_arch) printf("general.architecture: %s\n", clean(in->g_arch, cb, sizeof cb));
    if (in->g_file_type >= 0)
      printf("general.file_type: %s (%lld)\n", ftype_name(in->g_file_type), (long long)in->g_file_type);
    if (in->tok_model) printf("tokenizer:     %s (%lld tokens)\n", clean(in->tok_model, cb, sizeof cb), (long long)in->tok_vocab);
  }
  if (in->have_cfg) {
    char ca[256], cb2[256];
    printf("architecture:  %s%s%s%s\n", clean(in->arch, ca, sizeof ca), in->architecture[0] ? " (" : "",
           clean(in->architecture, cb2, sizeof cb2), in->architecture[0] ? ")" : "");
#define FIELD(label, v) if ((v) > 0) printf("%-15s%lld\n", label ":", (long long)(v))
    FIELD("layers", in->layers);
    FIELD("hidden size", in->hidden);
    FIELD("intermediate", in->intermediate);
    FIELD("heads", in->heads);
    FIELD("kv heads", in->kv_heads);
    FIELD("head dim", in->head_dim);
    FIELD("vocab size", in->vocab);
    FIELD("context", in->ctx);
#undef FIELD
    if (in->rope_theta > 0) printf("rope theta:    %g\n", in->rope_theta);
    if (in->norm_eps > 0) printf("norm eps:      %g\n", in->norm_eps);
  }
  human(b1, sizeof b1, (double)in->params, "");
  printf("parameters:    %lld (%s)\n", (long long)in->params, b1);
  printf("tensors:       %lld\n", (long long)in->ntensors);
  for (int g = 0; g < in->ngroups; g++) {
    const tgroup *t = &in->groups[g];
    human(b1, sizeof b1, (double)t->bytes, "B");
    human(b2, sizeof b2, (double)t->params, "");
    printf("  %-8s %5lld tensors  %12lld params (%s)  %14llu bytes (%s)\n", t->type, (long long)t->count,
           (long long)t->params, b2, (unsigned long long)t->bytes, b1);
  }
}

static void json_str(const char *s) {
  if (s) cli_json_string(stdout, s, strlen(s));
  else fputs("null", stdout);
}

static void print_json(const info *in) {
  printf("{\"path\": ");
  json_str(in->path);
  printf(", \"format\": \"%s\", \"file_size\": %llu", in->format, (unsigned long long)in->file_size);
  if (in->have_cfg) {
    printf(", \"architecture\": ");
    json_str(in->arch);
    if (in->architecture[0]) { printf(", \"architectures\": ["); json_str(in->architecture); printf("]"); }
#define FIELD(key, v) if ((v) > 0) printf(", \"" key "\": %lld", (long long)(v))
    FIELD("num_hidden_layers", in->layers);
    FIELD("hidden_size", in->hidden);
    FIELD("intermediate_size", in->intermediate);
    FIELD("num_attention_heads", in->heads);
    FIELD("num_key_value_heads", in->kv_heads);
    FIELD("head_dim", in->head_dim);
    FIELD("vocab_size", in->vocab);
    FIELD("max_position_embeddings", in->ctx);
#undef FIELD
    if (in->rope_theta > 0) printf(", \"rope_theta\": %.17g", in->rope_theta);
    if (in->norm_eps > 0) printf(", \"norm_eps\": %.17g", in->norm_eps);
  }
  printf(", \"parameters\": %lld, \"tensors\": %lld, \"tensor_types\": [", (long long)in->params,
         (long long)in->ntensors);
  for (int g = 0; g < in->ngroups; g++) {
    const tgroup *t = &in->groups[g];
    printf("%s{\"type\": ", g ? ", " : "");
    json_str(t->type);
    printf(", \"count\": %lld, \"params\": %lld, \"bytes\": %llu}", (long long)t->count, (long long)t->params,
           (unsigned long long)t->bytes);
  }
  printf("]");
  if (!strcmp(in->format, "gguf")) {
    printf(", \"gguf\": {\"version\": %lld, \"metadata_keys\": %lld, \"general.name\": ", (long long)in->g_version,
           (long long)in->g_nkv);
    json_str(in->g_name);
    printf(", \"general.architecture\": ");
    json_str(in->g_arch);
    if (in->g_file_type >= 0)
      printf(", \"general.file_type\": %lld, \"file_type_name\": \"%s\"", (long long)in->g_file_type,
             ftype_name(in->g_file_type));
    printf(", \"tokenizer.ggml.model\": ");
    json_str(in->tok_model);
    if (in->tok_vocab >= 0) printf(", \"tokenizer_tokens\": %lld", (long long)in->tok_vocab);
    printf("}");
  }
  printf("}\n");
}

int wick_info_main(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick info [--json] PATH   (a model directory, a .safetensors file or a .gguf file)\n");
      return 0;
    } else if (a[0] == '-' && a[1]) return cli_user_error("info", "unknown option '%s'", a);
    else if (path) return cli_user_error("info", "one PATH only (got '%s' and '%s')", path, a);
    else path = a;
  }
  if (!path) return cli_user_error("info", "missing PATH (a model directory, a .safetensors file or a .gguf file)");
  if (cli_check_path("info", path, false)) return 2;
  info in;
  memset(&in, 0, sizeof in);
  in.path = path;
  in.layers = in.heads = in.kv_heads = in.hidden = in.intermediate = in.head_dim = in.vocab = in.ctx = -1;
  in.g_file_type = in.tok_vocab = -1;
  int rc;
  wk_gguf *g = NULL;
  if (cli_is_dir(path)) rc = info_safetensors(&in, path, 1);
  else if (cli_is_gguf(path)) {
    g = wk_gguf_open(path);
    if (!g) return cli_lib_error("info");
    rc = info_gguf(&in, g);
  } else {
    size_t n = strlen(path);
    int st = n >= 12 && !strcmp(path + n - 12, ".safetensors");
    int idx = n >= 11 && !strcmp(path + n - 11, ".index.json");
    if (!st && !idx)
      return cli_user_error("info", "%s: not a model directory, a .safetensors file or a .gguf file", path);
    rc = info_safetensors(&in, path, 0);
  }
  if (!rc) {
    if (json) print_json(&in);
    else print_text(&in);
  }
  wk_gguf_close(g);  // strings in `in` point into the file until here
  return rc;
}
