#define _POSIX_C_SOURCE 200809L
// wick generate [-m MODEL] -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P]
//   [--min-p P] [--repeat-penalty R] [--seed S] [--stop STR]... [--json]:
// streams generated text to stdout (or one JSON object per token and a summary).
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "gen_opts.h"

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

typedef struct { bool json; } gen_ctx;

static int on_token(const wk_gen_token *t, void *user) {
  const gen_ctx *g = user;
  if (g->json) {
    cli_print_token_json(t);
  } else {
    fwrite(t->text, 1, t->len, stdout);
  }
  fflush(stdout);
  return g_interrupted ? 1 : 0;
}

int wick_generate_main(int argc, char **argv) {
  const char *C = "generate", *model = NULL, *prompt = NULL, *v;
  wk_generate_params gp = wk_generate_defaults();
  gp.sampler.temperature = 0.8f;
  bool json = false, special = true;
  const char **stops = calloc((size_t)argc, sizeof *stops);
  if (!stops) return cli_user_error(C, "out of memory");
  size_t n_stop = 0;
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
#define VAL() do { if (!(v = cli_opt_value(C, argc, argv, &i))) { rc = 2; goto out; } } while (0)
    int g = cli_gen_option(C, argc, argv, &i, &gp, stops, &n_stop);
    if (g == 2) { rc = 2; goto out; }
    if (g) continue;
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model = v; }
    else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { VAL(); prompt = v; }
    else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--no-special")) special = false;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick generate [-m MODEL] -p PROMPT [--no-special] [--json]\n" CLI_GEN_USAGE
             "  MODEL: a model directory or a .gguf file (default " WICK_DEFAULT_LM ")\n");
      goto out;
    } else if (a[0] == '-') { rc = cli_user_error(C, "unknown option '%s'", a); goto out; }
    else { rc = cli_user_error(C, "unexpected argument '%s' (the prompt goes after -p)", a); goto out; }
#undef VAL
  }
  if (!prompt) { rc = cli_user_error(C, "missing -p PROMPT"); goto out; }
  if (!prompt[0]) { rc = cli_user_error(C, "the prompt is empty"); goto out; }
  if (!cli_utf8_valid(prompt, strlen(prompt))) { rc = cli_user_error(C, "the prompt is not valid UTF-8"); goto out; }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || cli_check_tokenizer(C, model)) { rc = 2; goto out; }
  gp.stop = stops;
  gp.n_stop = n_stop;

  wk_tokenizer *tok = cli_load_tokenizer(model);
  if (!tok) { rc = cli_lib_error(C); goto out; }
  int32_t *ids = NULL;
  size_t n = 0;
  wk_model *m = NULL;
  if (wk_tokenizer_encode(tok, prompt, strlen(prompt), special, &ids, &n)) { rc = cli_lib_error(C); goto done; }
  if (!n) { rc = cli_user_error(C, "the prompt encodes to no tokens"); goto done; }
  if (!(m = wk_model_load(model))) { rc = cli_lib_error(C); goto done; }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  gen_ctx g = {json};
  wk_generate_result r;
  if (!json) { fputs(prompt, stdout); fflush(stdout); }
  if (wk_generate(m, tok, ids, n, &gp, on_token, &g, &r)) {
    if (!json) putchar('\n');
    rc = cli_lib_error(C);
    goto done;
  }
  double pf = r.prefill_s > 0 ? (double)r.prompt_tokens / r.prefill_s : 0;
  double dc = r.decode_s > 0 && r.generated_tokens > 1 ? (double)(r.generated_tokens - 1) / r.decode_s : 0;
  if (json) {
    printf("{\"prompt_tokens\": %lld, \"generated_tokens\": %lld, \"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, "
           "\"stop\": \"%s\"}\n",
           (long long)r.prompt_tokens, (long long)r.generated_tokens, pf, dc, wk_stop_reason_name(r.stop));
  } else {
    putchar('\n');
    fprintf(stderr, "[%lld prompt tokens, %.2f tok/s prefill; %lld generated, %.2f tok/s decode; stop: %s]\n",
            (long long)r.prompt_tokens, pf, (long long)r.generated_tokens, dc, wk_stop_reason_name(r.stop));
  }
done:
  wk_model_free(m);
  free(ids);
  wk_tokenizer_free(tok);
out:
  free(stops);
  return rc;
}
