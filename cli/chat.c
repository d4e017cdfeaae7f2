#define _POSIX_C_SOURCE 200809L
// wick chat [-m MODEL] [--system TEXT] [--chatml] [--json] [generation options]:
// one user turn per stdin line, each reply streamed; the conversation and its KV cache
// carry over between turns. "/reset" starts over; EOF or "/exit" ends.
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "gen_opts.h"

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

static int on_token(const wk_gen_token *t, void *user) {
  const bool *json = user;
  if (*json) {
    cli_print_token_json(t, false);
  } else {
    fwrite(t->text, 1, t->len, stdout);
  }
  fflush(stdout);
  return g_interrupted ? 1 : 0;
}

static void report_turn(bool json, long turn, const wk_generate_result *r, wk_dtype cache) {
  double pf = r->prefill_s > 0 ? (double)r->prompt_tokens / r->prefill_s : 0;
  double dc = r->decode_s > 0 && r->generated_tokens > 1 ? (double)(r->generated_tokens - 1) / r->decode_s : 0;
  if (json) {
    printf("{\"turn\": %ld, \"prompt_tokens\": %lld, \"cached_tokens\": %lld, \"generated_tokens\": %lld, "
           "\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f, \"stop\": \"%s\", \"cache_type\": \"%s\"}\n",
           turn, (long long)r->prompt_tokens, (long long)r->cached_tokens, (long long)r->generated_tokens, pf, dc,
           wk_stop_reason_name(r->stop), wk_dtype_name(cache));
  } else {
    putchar('\n');
    fflush(stdout);   // the reply's line before the stats on stderr
    fprintf(stderr, "[%lld new prompt tokens (%lld cached), %.2f tok/s prefill; %lld generated, %.2f tok/s; stop: %s]\n",
            (long long)r->prompt_tokens, (long long)r->cached_tokens, pf, (long long)r->generated_tokens, dc,
            wk_stop_reason_name(r->stop));
  }
  fflush(stdout);
}

// The read-reply loop. Returns the exit code.
static int converse(const char *C, wk_chat_session *s, const wk_generate_params *gp, bool json) {
  bool tty = isatty(STDIN_FILENO);
  char *line = NULL;
  size_t cap = 0;
  long lineno = 0, turn = 0;
  int rc = 0;
  bool failed = false;
  for (;;) {
    if (tty) { fputs("> ", stderr); fflush(stderr); }
    g_interrupted = 0;
    ssize_t got = getline(&line, &cap, stdin);
    if (got < 0) break;   // EOF (or Ctrl-C at the prompt)
    lineno++;
    size_t len = (size_t)got;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (!len) continue;
    if (!cli_utf8_valid(line, len)) { rc = cli_user_error(C, "stdin line %ld is not valid UTF-8", lineno); break; }
    if (strlen(line) != len) { rc = cli_user_error(C, "stdin line %ld holds a NUL byte", lineno); break; }
    if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
    if (!strcmp(line, "/reset")) {
      wk_chat_session_reset(s);
      if (json) printf("{\"reset\": true}\n");
      else fprintf(stderr, "[conversation reset]\n");
      fflush(stdout);
      continue;
    }
    wk_generate_result r;
    wk_status st = wk_chat_session_say(s, line, gp, on_token, &json, &r);
    if (st == WK_ERR_ARG) {   // this turn can't be answered (it doesn't fit): the conversation is as before
      if (json) {
        printf("{\"error\": ");
        cli_json_string(stdout, wk_last_error(), strlen(wk_last_error()));
        printf("}\n");
        fflush(stdout);
      } else {
        putchar('\n');
        fflush(stdout);
      }
      cli_lib_error(C);
      failed = true;   // the exit code says so unless a later turn succeeds
      continue;
    }
    if (st) {
      if (!json) putchar('\n');
      rc = cli_lib_error(C);
      break;
    }
    report_turn(json, ++turn, &r, gp->cache_dtype);
    failed = false;
  }
  free(line);
  return rc ? rc : failed ? 1 : 0;
}

int wick_chat_main(int argc, char **argv) {
  const char *C = "chat", *model = NULL, *system = NULL, *adapter = NULL, *v;
  wk_device dev = WK_CPU;
  wk_generate_params gp = cli_gen_defaults();
  bool json = false, chatml = false;
  const char **stops = calloc((size_t)argc, sizeof *stops);
  if (!stops) return cli_user_error(C, "out of memory");
  size_t n_stop = 0;
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int g = cli_gen_option(C, argc, argv, &i, &gp, stops, &n_stop);
    if (g == 2) { rc = 2; goto out; }
    if (g) continue;
    if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--system") || !strcmp(a, "--adapter")) {
      if (!(v = cli_opt_value(C, argc, argv, &i))) { rc = 2; goto out; }
      if (a[2] == 's') system = v;
      else if (a[2] == 'a') adapter = v;
      else model = v;
    }
    else if (!strcmp(a, "--chatml")) chatml = true;
    else if (!strcmp(a, "-d") || !strcmp(a, "--device")) {
      if (!(v = cli_opt_value(C, argc, argv, &i)) || cli_parse_device(C, v, &dev)) { rc = 2; goto out; }
    }
    else if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick chat [-m MODEL] [-d cpu|cuda] [--adapter DIR] [--system TEXT] [--chatml] [--json]\n" CLI_GEN_USAGE
             "  one user turn per stdin line; /reset starts over, /exit or EOF ends\n"
             "  MODEL: a model directory or a .gguf file (default " WICK_DEFAULT_LM ")\n"
             "  --system: the system prompt (default: the template's); --chatml: plain ChatML when\n"
             "  the model has no chat template or one wick does not recognize\n");
      goto out;
    } else if (a[0] == '-') { rc = cli_user_error(C, "unknown option '%s'", a); goto out; }
    else { rc = cli_user_error(C, "unexpected argument '%s'", a); goto out; }
  }
  if (gp.sliding_window) { rc = cli_user_error(C, "--sliding-window is not supported in chat (/reset when the context is full)"); goto out; }
  if (system && !cli_utf8_valid(system, strlen(system))) { rc = cli_user_error(C, "--system is not valid UTF-8"); goto out; }
  if (gp.top_logprobs && !json) { rc = cli_user_error(C, "--top-logprobs prints with --json only"); goto out; }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || cli_check_tokenizer(C, model)) { rc = 2; goto out; }
  gp.stop = stops;
  gp.n_stop = n_stop;

  wk_tokenizer *tok = cli_load_tokenizer(model);
  wk_chat_template *tpl = NULL;
  wk_model *m = NULL;
  wk_adapter *ad = NULL;
  wk_chat_session *s = NULL;
  if (!tok) { rc = cli_lib_error(C); goto done; }
  if (!(tpl = wk_chat_template_from_tokenizer(tok, chatml ? WK_CHAT_FALLBACK_CHATML : 0))) {
    rc = cli_user_error(C, "%s (--chatml renders plain ChatML instead)", wk_last_error());
    goto done;
  }
  if (!(m = cli_load_model(model, dev, adapter, &ad)) || !(s = wk_chat_session_new(m, tok, tpl, system))) {
    rc = cli_lib_error(C);
    goto done;
  }
  cli_gen_resolve(C, &gp, m);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;   // no SA_RESTART: Ctrl-C at the prompt ends the read
  sigaction(SIGINT, &sa, NULL);
  rc = converse(C, s, &gp, json);
done:
  wk_chat_session_free(s);
  cli_model_free(m, ad);
  wk_chat_template_free(tpl);
  wk_tokenizer_free(tok);
out:
  free(stops);
  return rc;
}
