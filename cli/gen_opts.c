#define _POSIX_C_SOURCE 200809L
#include "gen_opts.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse_float(const char *s, double lo, double hi, float *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= lo && v <= hi)) return -1;
  *out = (float)v;
  return 0;
}

#define WK_STR_(x) #x
#define WK_STR(x) WK_STR_(x)

// Milliseconds since the first call: when each token reached the host (a benchmark's
// steady decode rate leaves the first steps, which capture CUDA graphs, out).
static double ms_since_first(void) {
  static double t0 = -1;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const double t = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
  if (t0 < 0) t0 = t;
  return t - t0;
}

// A token's text that is not whole UTF-8 (a character split across tokens) also goes
// out as its bytes, so that a reader can join tokens exactly.
static void json_text(const char *s, size_t n) {
  cli_json_string(stdout, s, n);
  if (cli_utf8_valid(s, n)) return;
  printf(", \"bytes\": [");
  for (size_t i = 0; i < n; i++) printf("%s%u", i ? ", " : "", (unsigned)(unsigned char)s[i]);
  putchar(']');
}

void cli_print_token_json(const wk_gen_token *t, bool with_seq) {
  if (with_seq) printf("{\"seq\": %d, \"id\": %d, \"text\": ", t->seq, t->id);
  else printf("{\"id\": %d, \"text\": ", t->id);
  json_text(t->text, t->len);
  printf(", \"prob\": %.7g, \"logprob\": %.7g, \"ms\": %.3f", (double)t->prob, (double)t->logprob, ms_since_first());
  if (t->n_top) {
    printf(", \"top\": [");
    for (int32_t i = 0; i < t->n_top; i++) {
      printf("%s{\"id\": %d, \"text\": ", i ? ", " : "", t->top[i].id);
      json_text(t->top[i].text, t->top[i].len);
      printf(", \"logprob\": %.7g}", (double)t->top[i].logprob);
    }
    putchar(']');
  }
  printf("}\n");
}

wk_generate_params cli_gen_defaults(void) {
  wk_generate_params gp = wk_generate_defaults();
  gp.sampler.temperature = 0.8f;
  gp.cache_dtype = CLI_CACHE_AUTO;
  return gp;
}

void cli_gen_resolve(const char *cmd, wk_generate_params *gp, const wk_model *m) {
  if (gp->cache_dtype == CLI_CACHE_AUTO) gp->cache_dtype = wk_model_cache_dtype(m);
  cli_note_past_context(cmd, "--ctx-size", gp->max_context, m);
}

int cli_gen_option(const char *C, int argc, char **argv, int *i, wk_generate_params *gp, const char **stops,
                   size_t *n_stop) {
  const char *a = argv[*i], *v;
  long lv;
  wk_sampler_params *sp = &gp->sampler;
#define IS(name) (!strcmp(a, name))
#define VAL() do { if (!(v = cli_opt_value(C, argc, argv, i))) return 2; } while (0)
#define BAD(what) return cli_user_error(C, "bad %s '%s' (want %s)", a, v, what)
  if (IS("-n") || IS("--n-predict")) { VAL(); if (cli_parse_int(v, 0, INT32_MAX, &lv)) BAD("an integer >= 0"); gp->max_tokens = (int32_t)lv; }
  else if (IS("--temp")) { VAL(); if (parse_float(v, 0, 1e6, &sp->temperature)) BAD("a number >= 0"); }
  else if (IS("--top-k")) { VAL(); if (cli_parse_int(v, 0, INT32_MAX, &lv)) BAD("an integer >= 0"); sp->top_k = (int32_t)lv; }
  else if (IS("--top-p")) { VAL(); if (parse_float(v, 1e-9, 1, &sp->top_p)) BAD("a number in (0, 1]"); }
  else if (IS("--min-p")) { VAL(); if (parse_float(v, 0, 1, &sp->min_p)) BAD("a number in [0, 1]"); }
  else if (IS("--repeat-penalty")) { VAL(); if (parse_float(v, 1e-6, 1e6, &sp->repeat_penalty)) BAD("a number > 0"); }
  else if (IS("--presence-penalty")) { VAL(); if (parse_float(v, -1e6, 1e6, &sp->presence_penalty)) BAD("a number"); }
  else if (IS("--frequency-penalty")) { VAL(); if (parse_float(v, -1e6, 1e6, &sp->frequency_penalty)) BAD("a number"); }
  else if (IS("--seed")) {
    VAL();
    if (cli_parse_u64(v, &sp->seed)) BAD("an integer from 0 to 18446744073709551615");
  }
  else if (IS("--stop")) {
    VAL();
    if (!v[0] || !cli_utf8_valid(v, strlen(v))) BAD("a non-empty UTF-8 string");
    stops[(*n_stop)++] = v;
  }
  else if (IS("--ignore-eos")) gp->ignore_eos = true;
  else if (IS("--sliding-window")) gp->sliding_window = true;
  else if (IS("--cache-type")) {
    VAL();
    if (!strcmp(v, "f32")) gp->cache_dtype = WK_F32;
    else if (!strcmp(v, "f16")) gp->cache_dtype = WK_F16;
    else if (!strcmp(v, "bf16")) gp->cache_dtype = WK_BF16;
    else if (!strcmp(v, "q8_0")) gp->cache_dtype = WK_Q8_0;
    else BAD("f32, f16, bf16 or q8_0");
  }
  else if (IS("--ctx-size")) {
    VAL();
    if (cli_parse_int(v, 1, INT32_MAX, &lv)) BAD("an integer in [1, 2147483647]");
    gp->max_context = lv;
  }
  else if (IS("--top-logprobs")) {
    VAL();
    if (cli_parse_int(v, 0, WK_MAX_TOP_LOGPROBS, &lv)) BAD("an integer in [0, " WK_STR(WK_MAX_TOP_LOGPROBS) "]");
    gp->top_logprobs = (int32_t)lv;
  }
  else return 0;
  return 1;
#undef IS
#undef VAL
#undef BAD
}
