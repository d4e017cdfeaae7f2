#define _POSIX_C_SOURCE 200809L
// wick embed [-m EMBED_MODEL] [-d cpu|cuda] [--dtype f32|bf16|f16] [--input FILE] [--batch N]
//            [--format json|npy] [-o FILE]:
// embeds each input line (stdin by default). json: one array per line, floats with 7
// significant digits, written as each chunk of lines is done; npy: one float32 [n, dim]
// array (NumPy .npy), written at the end.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

typedef struct {
  FILE *out;
  bool npy;
  int64_t dim;
  float *rows;     // npy: every embedding so far
  size_t n, cap;   // rows held / room for
} sink;

static void write_json(FILE *f, const float *v, int64_t dim) {
  fputc('[', f);
  for (int64_t j = 0; j < dim; j++) {
    if (j) fputs(", ", f);
    if (isfinite(v[j])) fprintf(f, "%.7g", (double)v[j]);
    else fputs("null", f);
  }
  fputs("]\n", f);
}

// NumPy format 1.0: magic, version, header length, a dict padded to 64 bytes, data.
static int write_npy(FILE *f, const float *rows, size_t n, int64_t dim) {
  char dict[128];
  int len = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %lld), }", n,
                     (long long)dim);
  size_t total = ((size_t)len + 1 + 10 + 63) / 64 * 64, hl = total - 10;
  unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xFF), (unsigned char)(hl >> 8)};
  fwrite(head, 1, sizeof head, f);
  fwrite(dict, 1, (size_t)len, f);
  for (size_t k = (size_t)len; k + 1 < hl; k++) fputc(' ', f);
  fputc('\n', f);
  // little-endian hosts only (x86-64, arm64): the floats go out as they are in memory
  return fwrite(rows, sizeof *rows * (size_t)dim, n, f) == n ? 0 : -1;
}

static int flush_batch(wk_embedder *e, int n, char **texts, float *out, sink *s) {
  if (!n) return 0;
  if (wk_embed(e, n, (const char *const *)texts, out)) return cli_lib_error("embed");
  if (!s->npy) {
    for (int i = 0; i < n; i++) write_json(s->out, out + (int64_t)i * s->dim, s->dim);
    fflush(s->out);
    return 0;
  }
  if (s->n + (size_t)n > s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 256;
    while (cap < s->n + (size_t)n) cap *= 2;
    float *q = realloc(s->rows, cap * sizeof *q * (size_t)s->dim);
    if (!q) return cli_user_error("embed", "out of memory");
    s->rows = q;
    s->cap = cap;
  }
  memcpy(s->rows + s->n * (size_t)s->dim, out, sizeof *out * (size_t)n * (size_t)s->dim);
  s->n += (size_t)n;
  return 0;
}

// Embeds every line of `in` in chunks of `batch` lines. Returns the exit code.
static int embed_lines(wk_embedder *e, FILE *in, const char *name, long batch, sink *s) {
  char **texts = calloc((size_t)batch, sizeof *texts);
  float *out = malloc(sizeof(float) * (size_t)batch * (size_t)s->dim);
  int rc = texts && out ? 0 : cli_user_error("embed", "out of memory"), nb = 0;
  long lineno = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while (!rc && (len = getline(&line, &cap, in)) >= 0) {
    lineno++;
    if (len && line[len - 1] == '\n') len--;
    if (len && line[len - 1] == '\r') len--;
    line[len] = 0;
    if (memchr(line, 0, (size_t)len)) {
      rc = cli_user_error("embed", "%s line %ld holds a NUL byte (one text per line)", name, lineno);
      break;
    }
    if (!cli_utf8_valid(line, (size_t)len)) {
      rc = cli_user_error("embed", "%s line %ld is not valid UTF-8 text", name, lineno);
      break;
    }
    texts[nb++] = line;
    line = NULL;
    cap = 0;
    if (nb == batch) {
      rc = flush_batch(e, nb, texts, out, s);
      for (int i = 0; i < nb; i++) free(texts[i]);
      nb = 0;
    }
  }
  free(line);
  if (!rc && ferror(in)) rc = cli_user_error("embed", "error reading %s: %s", name, strerror(errno));
  if (!rc && !lineno) rc = cli_user_error("embed", "no input: %s is empty (one text per line)", name);
  if (!rc) rc = flush_batch(e, nb, texts, out, s);
  for (int i = 0; texts && i < nb; i++) free(texts[i]);
  free(texts);
  free(out);
  return rc;
}

int wick_embed_main(int argc, char **argv) {
  const char *model = NULL, *input = NULL, *output = NULL, *v;
  long batch = 256;
  bool npy = false;
  wk_device dev = WK_CPU;
  wk_dtype wdt = WK_F32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
      if (!(model = cli_opt_value("embed", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "--input") || !strcmp(a, "-i")) {
      if (!(input = cli_opt_value("embed", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "--output") || !strcmp(a, "-o")) {
      if (!(output = cli_opt_value("embed", argc, argv, &i))) return 2;
    } else if (!strcmp(a, "-d") || !strcmp(a, "--device")) {
      if (!(v = cli_opt_value("embed", argc, argv, &i)) || cli_parse_device("embed", v, &dev)) return 2;
    } else if (!strcmp(a, "--dtype")) {
      if (!(v = cli_opt_value("embed", argc, argv, &i))) return 2;
      if (!strcmp(v, "f32")) wdt = WK_F32;
      else if (!strcmp(v, "bf16")) wdt = WK_BF16;
      else if (!strcmp(v, "f16")) wdt = WK_F16;
      else return cli_user_error("embed", "bad --dtype '%s' (want f32, bf16 or f16)", v);
    } else if (!strcmp(a, "--batch")) {
      if (!(v = cli_opt_value("embed", argc, argv, &i))) return 2;
      if (cli_parse_int(v, 1, 4096, &batch)) return cli_user_error("embed", "bad --batch '%s' (want 1..4096)", v);
    } else if (!strcmp(a, "--format")) {
      if (!(v = cli_opt_value("embed", argc, argv, &i))) return 2;
      if (strcmp(v, "json") && strcmp(v, "npy")) return cli_user_error("embed", "bad --format '%s' (want json or npy)", v);
      npy = !strcmp(v, "npy");
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      printf("usage: wick embed [-m EMBED_MODEL] [-d cpu|cuda] [--dtype f32|bf16|f16] [--input FILE] [--batch N]\n"
             "                  [--format json|npy] [-o FILE]\n"
             "  Embeds each line of FILE (default stdin): one JSON array per line, or with --format npy\n"
             "  one float32 [lines, dim] NumPy array, to stdout or -o FILE. Lines are read N at a time\n"
             "  (default 256), sorted by length and encoded 32 at a time; texts longer than the model's\n"
             "  maximum length are truncated.\n"
             "  --dtype: how the encoder's projection matrices are stored (default f32); with bf16 they\n"
             "  multiply bf16-rounded inputs (twice as fast on CPUs with AVX512-BF16, cosine ~0.999 to f32).\n"
             "  EMBED_MODEL: a BERT-family model directory (default " WICK_DEFAULT_EMBED ")\n");
      return 0;
    } else if (a[0] == '-' && a[1]) return cli_user_error("embed", "unknown option '%s'", a);
    else return cli_user_error("embed", "unexpected argument '%s' (texts come from stdin or --input)", a);
  }
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_EMBED;
  if (cli_check_path("embed", model, dflt)) return 2;
  if (input && strcmp(input, "-") && cli_is_dir(input)) return cli_user_error("embed", "--input %s is a directory", input);
  if (output && !strcmp(output, "-")) output = NULL;
  if (output && cli_is_dir(output)) return cli_user_error("embed", "-o %s is a directory", output);
  FILE *in = stdin;
  if (input && strcmp(input, "-") && !(in = fopen(input, "rb")))
    return cli_user_error("embed", "cannot open --input %s: %s", input, strerror(errno));
  sink s = {stdout, npy, 0, NULL, 0, 0};
  int rc = 0;
  wk_embedder *e = wk_embedder_load(model);
  if (!e || (wdt != WK_F32 && wk_embedder_set_weight_dtype(e, wdt)) || (dev != WK_CPU && wk_embedder_to_device(e, dev)))
    rc = cli_lib_error("embed");
  // -o FILE is written beside it and renamed over it at the end: a failed run (an
  // invalid line, say, or FILE given as --input too) leaves it as it was
  cli_file file = {0};
  if (!rc && output) {
    if (cli_file_open(&file, output)) rc = cli_user_error("embed", "cannot create -o %s: %s", output, strerror(errno));
    else s.out = file.f;
  }
  if (!rc) {
    s.dim = wk_embedder_dim(e);
    rc = embed_lines(e, in, input ? input : "stdin", batch, &s);
  }
  if (!rc && npy && write_npy(s.out, s.rows, s.n, s.dim)) rc = cli_user_error("embed", "error writing the output");
  if (file.f && cli_file_commit(&file, !rc) && !rc)
    rc = cli_user_error("embed", "cannot write -o %s: %s", output, strerror(errno));
  free(s.rows);
  wk_embedder_free(e);
  if (in != stdin) fclose(in);
  return rc;
}
