#define _POSIX_C_SOURCE 200809L
// wick tokenize [-m MODEL] [--ids|--pieces] [--no-special] [TEXT...]: token ids of each
// TEXT (or of each stdin line), one line per text.
#include <stdlib.h>
#include <string.h>
#include "common.h"

static int tokenize_one(const wk_tokenizer *tok, const char *text, size_t len, bool special, bool pieces) {
  if (!cli_utf8_valid(text, len)) return cli_user_error("tokenize", "text is not valid UTF-8");
  int32_t *ids = NULL;
  size_t n = 0;
  if (wk_tokenizer_encode(tok, text, len, special, &ids, &n)) return cli_lib_error("tokenize");
  for (size_t i = 0; i < n; i++) {
    if (i) putchar(' ');
    printf("%d", ids[i]);
    if (pieces) {
      size_t bl = 0;
      const char *b = wk_tokenizer_token_bytes(tok, ids[i], &bl);
      putchar(':');
      cli_json_piece(stdout, b ? b : "", b ? bl : 0);
    }
  }
  putchar('\n');
  free(ids);
  return 0;
}

int wick_tokenize_main(int argc, char **argv) {
  const char *model = NULL;
  bool pieces = false, special = true;
  char **texts = calloc((size_t)argc, sizeof *texts);
  int ntexts = 0;
  if (!texts) return cli_user_error("tokenize", "out of memory");
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
      if (!(model = cli_opt_value("tokenize", argc, argv, &i))) { free(texts); return 2; }
    } else if (!strcmp(a, "--ids")) pieces = false;
    else if (!strcmp(a, "--pieces")) pieces = true;
    else if (!strcmp(a, "--no-special")) special = false;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick tokenize [-m MODEL] [--ids|--pieces] [--no-special] [TEXT...]\n"
             "  MODEL: a model directory (tokenizer.json), a tokenizer.json or a .gguf file\n"
             "  (default " WICK_DEFAULT_LM "). Without TEXT, each stdin line is one text.\n"
             "  Prints the ids of each text on one line; --pieces prints id:\"piece\".\n");
      free(texts);
      return 0;
    } else if (!strcmp(a, "--")) {
      while (++i < argc) texts[ntexts++] = argv[i];
    } else if (a[0] == '-' && a[1]) {
      free(texts);
      return cli_user_error("tokenize", "unknown option '%s'", a);
    } else texts[ntexts++] = argv[i];
  }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path("tokenize", model, dflt) || cli_check_tokenizer("tokenize", model)) { free(texts); return 2; }
  wk_tokenizer *tok = cli_load_tokenizer(model);
  if (!tok) { free(texts); return cli_lib_error("tokenize"); }
  int rc = 0;
  if (ntexts) {
    for (int i = 0; i < ntexts && !rc; i++) rc = tokenize_one(tok, texts[i], strlen(texts[i]), special, pieces);
  } else {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (!rc && (len = getline(&line, &cap, stdin)) >= 0) {
      if (len && line[len - 1] == '\n') len--;
      if (len && line[len - 1] == '\r') len--;
      rc = tokenize_one(tok, line, (size_t)len, special, pieces);
    }
    free(line);
  }
  wk_tokenizer_free(tok);
  free(texts);
  return rc;
}
