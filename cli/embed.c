#define _POSIX_C_SOURCE 200809L
// wick embed [-m EMBED_MODEL] [--input FILE] [--batch N]: one JSON array per input line
// (stdin by default), floats with 7 significant digits.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

static int flush_batch(wk_embedder *e, int n, char **texts, float *out, int64_t dim) {
  if (!n) return 0;
  if (wk_embed(e, n, (const char *const *)texts, out)) return cli_lib_error("embed");
  for (int i = 0; i < n; i++) {
    putchar('[');
    for (int64_t j = 0; j < dim; j++) {
      float v = out[(int64_t)i * dim + j];
      if (j) fputs(", ", stdout);
      if (isfinite(v)) printf("%.7g", (double)v);
      else fputs("null", stdout);
    }
    fputs("]\n", stdout);
  }
  fflush(stdout);
  return 0;
}

int wick_embed_main(int argc, char **argv) {
  const char *model = NULL, *input = NULL, *v;
  long batch = 32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
      if (!(model = cli_opt_value("embed", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "--input") || !strcmp(a, "-i")) {
      if (!(input = cli_opt_value("embed", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "--batch")) {
      if (!(v = cli_opt_value("embed", argc, argv, &i))) return 2;
      if (cli_parse_int(v, 1, 4096, &batch)) return cli_user_error("embed", "bad --batch '%s' (want 1..4096)", v);
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick embed [-m EMBED_MODEL] [--input FILE] [--batch N]\n"
             "  Embeds each line of FILE (default stdin) and prints one JSON array per line.\n"
             "  EMBED_MODEL: a BERT-family model directory (default " WICK_DEFAULT_EMBED ")\n");
      return 0;
    } else if (a[0] == '-' && a[1]) return cli_user_error("embed", "unknown option '%s'", a);
    else return cli_user_error("embed", "unexpected argument '%s' (texts come from stdin or --input)", a);
  }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_EMBED;
  if (cli_check_path("embed", model, dflt)) return 2;
  FILE *in = stdin;
  if (input && strcmp(input, "-")) {
    if (!(in = fopen(input, "rb"))) return cli_user_error("embed", "cannot open --input %s", input);
  }
  int rc = 0;
  wk_embedder *e = wk_embedder_load(model);
  if (!e) { rc = cli_lib_error("embed"); if (in != stdin) fclose(in); return rc; }
  int64_t dim = wk_embedder_dim(e);
  char **texts = calloc((size_t)batch, sizeof *texts);
  float *out = malloc(sizeof(float) * (size_t)batch * (size_t)dim);
  if (!texts || !out) { rc = cli_user_error("embed", "out of memory"); goto done; }
  int nb = 0;
  long lineno = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, in)) >= 0) {
    lineno++;
    if (len && line[len - 1] == '\n') len--;
    if (len && line[len - 1] == '\r') len--;
    line[len] = 0;
    if (!cli_utf8_valid(line, (size_t)len) || memchr(line, 0, (size_t)len)) {
      rc = cli_user_error("embed", "%s line %ld is not valid UTF-8 text", input ? input : "stdin", lineno);
      break;
    }
    texts[nb++] = line;
    line = NULL;
    cap = 0;
    if (nb == batch) {
      if ((rc = flush_batch(e, nb, texts, out, dim))) break;
      for (int i = 0; i < nb; i++) free(texts[i]);
      nb = 0;
    }
  }
  free(line);
  if (!rc && ferror(in)) rc = cli_user_error("embed", "error reading %s", input ? input : "stdin");
  if (!rc && !lineno) rc = cli_user_error("embed", "no input: %s is empty (one text per line)", input ? input : "stdin");
  if (!rc) rc = flush_batch(e, nb, texts, out, dim);
  for (int i = 0; i < nb; i++) free(texts[i]);
done:
  free(texts);
  free(out);
  wk_embedder_free(e);
  if (in != stdin) fclose(in);
  return rc;
}
