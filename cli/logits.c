#define _POSIX_C_SOURCE 200809L
// wick logits [-m MODEL] [-d cpu|cuda] (-p PROMPT | --ids 1,2,3) [--top K] [--json]: one forward pass
// over the prompt; the top-K next tokens at the last position with logits and
// probabilities.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

static const float *g_row;
static int by_logit_desc(const void *a, const void *b) {
  float x = g_row[*(const int32_t *)a], y = g_row[*(const int32_t *)b];
  if (x != y) return x > y ? -1 : 1;
  return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

// "1,2,3" -> ids; user error (2) on anything else.
static int parse_ids(const char *s, int32_t **ids, size_t *n) {
  size_t cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  *ids = malloc(cap * sizeof **ids);
  if (!*ids) return cli_user_error("logits", "out of memory");
  *n = 0;
  const char *p = s;
  for (;;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
      free(*ids);
      *ids = NULL;
      return cli_user_error("logits", "bad --ids '%s' (want comma-separated non-negative integers)", s);
    }
    (*ids)[(*n)++] = (int32_t)v;
    if (!*end) break;
    p = end + 1;
  }
  return 0;
}

int wick_logits_main(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *ids_arg = NULL;
  long top = 10;
  bool json = false, special = true;
  wk_device dev = WK_CPU;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
      if (!(model = cli_opt_value("logits", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
      if (!(prompt = cli_opt_value("logits", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "-d") || !strcmp(a, "--device")) {
      if (!(v = cli_opt_value("logits", argc, argv, &i)) || cli_parse_device("logits", v, &dev)) return 2;
    } else if (!strcmp(a, "--ids")) {
      if (!(ids_arg = cli_opt_value("logits", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "--top") || !strcmp(a, "-k")) {
      if (!(v = cli_opt_value("logits", argc, argv, &i))) return 2;
      if (cli_parse_int(v, 1, 1L << 30, &top)) return cli_user_error("logits", "bad --top '%s' (want an integer >= 1)", v);
    } else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--no-special")) special = false;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick logits [-m MODEL] [-d cpu|cuda] (-p PROMPT | --ids 1,2,3) [--top K] [--json] [--no-special]\n"
             "  MODEL: a model directory or a .gguf file (default " WICK_DEFAULT_LM ")\n");
      return 0;
    } else if (a[0] == '-') return cli_user_error("logits", "unknown option '%s'", a);
    else return cli_user_error("logits", "unexpected argument '%s' (the prompt goes after -p)", a);
  }
  if (!prompt && !ids_arg) return cli_user_error("logits", "missing -p PROMPT (or --ids)");
  if (prompt && ids_arg) return cli_user_error("logits", "give -p or --ids, not both");
  if (prompt && !cli_utf8_valid(prompt, strlen(prompt))) return cli_user_error("logits", "the prompt is not valid UTF-8");
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path("logits", model, dflt)) return 2;

  int32_t *ids = NULL;
  size_t n = 0;
  if (ids_arg && parse_ids(ids_arg, &ids, &n)) return 2;
  if (prompt && cli_check_tokenizer("logits", model)) return 2;
  wk_tokenizer *tok = cli_load_tokenizer(model);  // optional with --ids (pieces shown when present)
  if (!tok) {
    if (prompt) { free(ids); return cli_lib_error("logits"); }
    wk_clear_error();
  }
  int rc = 0;
  wk_model *m = NULL;
  wk_adapter *no_adapter = NULL;
  wk_tensor *t_ids = NULL, *logits = NULL, *host = NULL;
  if (prompt && wk_tokenizer_encode(tok, prompt, strlen(prompt), special, &ids, &n)) { rc = cli_lib_error("logits"); goto done; }
  if (!n) { rc = cli_user_error("logits", "the prompt encodes to no tokens"); goto done; }
  if (!(m = cli_load_model(model, dev, NULL, &no_adapter))) { rc = cli_lib_error("logits"); goto done; }
  t_ids = wk_from_data(2, (int64_t[]){1, (int64_t)n}, WK_I32, ids);
  if (t_ids && dev != WK_CPU) { // ids follow the model; the logits come back for the ranking
    wk_tensor *d = wk_to_device(t_ids, dev);
    wk_tensor_free(t_ids);
    t_ids = d;
  }
  if (!t_ids || !(logits = wk_model_forward(m, t_ids, 0)) || !(host = wk_to_device(logits, WK_CPU))) {
    rc = cli_lib_error("logits");
    goto done;
  }
  const float *data = wk_tensor_data(host);
  if (!data) { rc = cli_lib_error("logits"); goto done; }
  int64_t V = wk_shape(logits)[2];
  const float *row = data + (int64_t)(n - 1) * V;
  int64_t bad = 0;
  for (int64_t j = 0; j < V; j++) bad += isnan(row[j]) || row[j] == INFINITY;
  if (bad) {   // a table of NaNs is no answer: the weights (or an input) hold NaN or inf
    rc = cli_user_error("logits", "%lld of the %lld logits at the last position are NaN or +inf: the model's weights "
                        "(or its adapter's) hold non-finite values, or the file is corrupt", (long long)bad, (long long)V);
    goto done;
  }
  double mx = -INFINITY, sum = 0;
  for (int64_t j = 0; j < V; j++) if (row[j] > mx) mx = row[j];
  for (int64_t j = 0; j < V; j++) sum += exp((double)row[j] - mx);
  int32_t *order = malloc((size_t)V * sizeof *order);
  if (!order) { rc = cli_user_error("logits", "out of memory"); goto done; }
  for (int64_t j = 0; j < V; j++) order[j] = (int32_t)j;
  g_row = row;
  qsort(order, (size_t)V, sizeof *order, by_logit_desc);
  if (top > V) top = (long)V;
  if (json) {
    printf("{\"model\": ");
    cli_json_string(stdout, model, strlen(model));
    printf(", \"format\": \"%s\", \"n_tokens\": %zu, \"ids\": [", wk_model_format(m), n);
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    printf("], \"vocab_size\": %lld, \"top\": [", (long long)V);
  } else {
    printf("model: %s (%s), %zu prompt tokens, vocab %lld\n", model, wk_model_format(m), n, (long long)V);
    printf("%4s %8s  %-20s %12s %10s\n", "rank", "id", "token", "logit", "prob");
  }
  for (long r = 0; r < top; r++) {
    int32_t id = order[r];
    double p = exp((double)row[id] - mx) / sum;
    size_t bl = 0;
    const char *b = tok ? wk_tokenizer_token_bytes(tok, id, &bl) : NULL;
    if (json) {
      printf("%s{\"id\": %d, \"token\": ", r ? ", " : "", id);
      if (b) cli_json_string(stdout, b, bl);
      else printf("null");
      printf(", \"logit\": %.7g, \"prob\": %.7g}", (double)row[id], p);
    } else {
      printf("%4ld %8d  ", r + 1, id);
      if (b) cli_json_string(stdout, b, bl);
      else printf("%-2s", "-");
      int w = b ? (int)bl + 2 : 2;
      printf("%*s %12.4f %10.6f\n", w < 20 ? 20 - w : 0, "", (double)row[id], p);
    }
  }
  if (json) printf("]}\n");
  free(order);
done:
  wk_tensor_free(host);
  wk_tensor_free(logits);
  wk_tensor_free(t_ids);
  wk_model_free(m);
  wk_tokenizer_free(tok);
  free(ids);
  return rc;
}
