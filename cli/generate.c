#define _POSIX_C_SOURCE 200809L
// wick generate [-m MODEL] -p PROMPT [-p PROMPT]... [generation options] [--json]:
// streams generated text to stdout (or one JSON object per token and a summary).
// Several prompts decode as one batch; their texts are printed when all are done.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "gen_opts.h"

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

typedef struct { char *p; size_t n, cap; } text_buf;

typedef struct {
  bool json, batch;
  text_buf *texts;    // batch text mode: each sequence's text, printed at the end
  const char *echo;   // one prompt in text mode: printed with the first token, so a
                      // generation that fails at its start prints nothing to stdout
  bool oom;
} gen_ctx;

static void text_add(gen_ctx *g, text_buf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) { g->oom = true; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

static int on_token(const wk_gen_token *t, void *user) {
  gen_ctx *g = user;
  if (g->echo) { fputs(g->echo, stdout); g->echo = NULL; }
  if (g->json) cli_print_token_json(t, g->batch);
  else if (g->batch) text_add(g, &g->texts[t->seq], t->text, t->len);
  else fwrite(t->text, 1, t->len, stdout);
  fflush(stdout);
  return g_interrupted || g->oom ? 1 : 0;
}

static void report(const gen_ctx *g, size_t k, const wk_generate_result *r, wk_dtype cache) {
  double pf = r->prefill_s > 0 ? (double)r->prompt_tokens / r->prefill_s : 0;
  double dc = r->decode_s > 0 && r->generated_tokens > 1 ? (double)(r->generated_tokens - 1) / r->decode_s : 0;
  if (g->json) {
    if (g->batch) printf("{\"seq\": %zu, ", k); else printf("{");
    printf("\"prompt_tokens\": %lld, \"generated_tokens\": %lld, \"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, "
           "\"stop\": \"%s\", \"cache_type\": \"%s\"}\n",
           (long long)r->prompt_tokens, (long long)r->generated_tokens, pf, dc, wk_stop_reason_name(r->stop),
           wk_dtype_name(cache));
  } else {
    char which[32] = "";
    if (g->batch) snprintf(which, sizeof which, "prompt %zu: ", k + 1);   // as the -p options count
    fprintf(stderr, "[%s%lld prompt tokens, %.2f tok/s prefill; %lld generated, %.2f tok/s decode; stop: %s]\n",
            which, (long long)r->prompt_tokens, pf, (long long)r->generated_tokens, dc, wk_stop_reason_name(r->stop));
  }
}

// Tokenizes the prompts: ids[k] (malloc'd), n[k]. Returns an exit code.
static int encode_prompts(const char *C, const wk_tokenizer *tok, size_t np, const char **prompts, bool special,
                          int32_t **ids, size_t *n) {
  for (size_t k = 0; k < np; k++) {
    if (wk_tokenizer_encode(tok, prompts[k], strlen(prompts[k]), special, &ids[k], &n[k])) return cli_lib_error(C);
    if (!n[k]) return cli_user_error(C, "prompt %zu encodes to no tokens", k + 1);
  }
  return 0;
}

static int run(const char *C, const char *model, const char *tokenizer, wk_device dev, const char *adapter, size_t np,
               const char **prompts,
               bool special, bool json, wk_generate_params *gp) {
  wk_tokenizer *tok = cli_load_tokenizer(tokenizer ? tokenizer : model);
  if (!tok) return cli_lib_error(C);
  int32_t **ids = calloc(np, sizeof *ids);
  size_t *n = calloc(np, sizeof *n);
  wk_generate_result *r = calloc(np, sizeof *r);
  gen_ctx g = {.json = json, .batch = np > 1, .texts = calloc(np, sizeof(text_buf))};
  wk_model *m = NULL;
  wk_adapter *ad = NULL;
  int rc = !ids || !n || !r || !g.texts ? cli_user_error(C, "out of memory") : 0;
  if (!rc) rc = encode_prompts(C, tok, np, prompts, special, ids, n);
  if (!rc && !(m = cli_load_model(model, dev, adapter, &ad))) rc = cli_lib_error(C);
  if (!rc) {
    cli_gen_resolve(C, gp, m);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    if (!json && !g.batch) g.echo = prompts[0];
    wk_status st = g.batch ? wk_generate_batch(m, tok, np, (const int32_t *const *)ids, n, gp, on_token, &g, r)
                           : wk_generate(m, tok, ids[0], n[0], gp, on_token, &g, r);
    if (!st && g.echo) fputs(g.echo, stdout);   // no token came (-n 0, or an end at once)
    if (!json && !g.batch && (!st || !g.echo)) putchar('\n');
    for (size_t k = 0; !st && !json && g.batch && k < np; k++)
      printf("%s%s%.*s\n", k ? "\n" : "", prompts[k], (int)g.texts[k].n, g.texts[k].p ? g.texts[k].p : "");
    fflush(stdout);
    if (st || g.oom) rc = g.oom ? cli_user_error(C, "out of memory") : cli_lib_error(C);
    for (size_t k = 0; !rc && k < np; k++) report(&g, k, &r[k], gp->cache_dtype);
  }
  for (size_t k = 0; k < np; k++) {
    if (ids) free(ids[k]);
    if (g.texts) free(g.texts[k].p);
  }
  free(ids);
  free(n);
  free(r);
  free(g.texts);
  cli_model_free(m, ad);
  wk_tokenizer_free(tok);
  return rc;
}

int wick_generate_main(int argc, char **argv) {
  const char *C = "generate", *model = NULL, *adapter = NULL, *tokenizer = NULL, *v;
  wk_device dev = WK_CPU;
  wk_generate_params gp = cli_gen_defaults();
  bool json = false, special = true;
  const char **stops = calloc((size_t)argc, sizeof *stops), **prompts = calloc((size_t)argc, sizeof *prompts);
  size_t n_stop = 0, np = 0;
  int rc = !stops || !prompts ? cli_user_error(C, "out of memory") : 0;
  for (int i = 1; !rc && i < argc; i++) {
    const char *a = argv[i];
    int g = cli_gen_option(C, argc, argv, &i, &gp, stops, &n_stop);
    if (g) { rc = g == 2 ? 2 : 0; continue; }
    if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "-p") || !strcmp(a, "--prompt")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) rc = 2;
      else if (a[1] == 'm' || a[2] == 'm') model = v;
      else prompts[np++] = v;
    }
    else if (!strcmp(a, "--adapter")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) rc = 2;
      else adapter = v;
    }
    else if (!strcmp(a, "-d") || !strcmp(a, "--device")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) rc = 2;
      else rc = cli_parse_device(C, v, &dev);
    }
    else if (!strcmp(a, "--tokenizer")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) rc = 2;
      else tokenizer = v;
    }
    else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--no-special")) special = false;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick generate [-m MODEL] [-d cpu|cuda] [--adapter DIR] -p PROMPT [-p PROMPT]... [--no-special] [--json]\n"
             CLI_GEN_USAGE "  --adapter: a PEFT LoRA adapter directory (wick train's output) applied to MODEL\n"
             "  --tokenizer PATH: a tokenizer.json or .gguf to use instead of MODEL's own\n"
             "  several -p: the prompts decode as one batch (--json: each token and summary has \"seq\")\n"
             "  MODEL: a model directory or a .gguf file (default " WICK_DEFAULT_LM ")\n");
      goto out;
    } else if (a[0] == '-') rc = cli_user_error(C, "unknown option '%s'", a);
    else rc = cli_user_error(C, "unexpected argument '%s' (the prompt goes after -p)", a);
  }
  if (rc) goto out;
  if (!np) { rc = cli_user_error(C, "missing -p PROMPT"); goto out; }
  if (gp.top_logprobs && !json) { rc = cli_user_error(C, "--top-logprobs prints with --json only"); goto out; }
  for (size_t k = 0; k < np; k++) {
    if (!prompts[k][0]) { rc = cli_user_error(C, "prompt %zu is empty", k + 1); goto out; }
    if (!cli_utf8_valid(prompts[k], strlen(prompts[k]))) { rc = cli_user_error(C, "prompt %zu is not valid UTF-8", k + 1); goto out; }
  }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || (tokenizer ? cli_check_path(C, tokenizer, false) : cli_check_tokenizer(C, model))) {
    rc = 2;
    goto out;
  }
  gp.stop = stops;
  gp.n_stop = n_stop;
  rc = run(C, model, tokenizer, dev, adapter, np, prompts, special, json, &gp);
out:
  free(stops);
  free(prompts);
  return rc;
}
