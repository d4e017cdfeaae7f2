// Tokenizer throughput: encode MB/s on the test corpus (tests/fixtures/tok/expected.json,
// its lines joined by "\n" and repeated 200 times, as tools/gen_tok_fixtures.py --bench
// times HF tokenizers), as one call and line by line. One JSON object per line.
//
//   cc -O2 -Iinclude -Isrc bench/tok_bench.c -Lbuild -lwick -lm -lpthread -o tok_bench
//   ./tok_bench tests/fixtures/tok/gpt2.json [more tokenizer.json or .gguf files ...]
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "io/file.h"
#include "io/json.h"
#include "wick/gguf.h"
#include "wick/tokenizer.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s tokenizer.json... (run from the repository root)\n", argv[0]);
    return 2;
  }
  size_t flen;
  const char *fx = getenv("WICK_TOK_CORPUS");
  char *ftext = wk_read_file(fx ? fx : "tests/fixtures/tok/expected.json", 1 << 26, &flen);
  wk_json *doc = ftext ? wk_json_parse(ftext, flen, "expected.json", NULL) : NULL;
  if (!doc) { fprintf(stderr, "%s\n", wk_last_error()); return 1; }
  const wk_json *lines = wk_json_get(doc, "lines");
  size_t nl = wk_json_len(lines), one = 0;
  for (size_t i = 0; i < nl; i++) one += wk_json_at(lines, i)->n + (i + 1 < nl);
  enum { REPS = 200 };
  size_t total = REPS * one + (REPS - 1);
  char *text = malloc(total + 1);
  size_t k = 0;
  for (int r = 0; r < REPS; r++) {
    if (r) text[k++] = '\n';
    for (size_t i = 0; i < nl; i++) {
      const wk_json *l = wk_json_at(lines, i);
      memcpy(text + k, l->s, l->n);
      k += l->n;
      if (i + 1 < nl) text[k++] = '\n';
    }
  }
  text[k] = 0;
  for (int a = 1; a < argc; a++) {
    size_t al = strlen(argv[a]);
    wk_tokenizer *tok = NULL;
    if (al > 5 && !strcmp(argv[a] + al - 5, ".gguf")) {
      wk_gguf *f = wk_gguf_open(argv[a]);
      tok = f ? wk_tokenizer_from_gguf(f) : NULL;
      wk_gguf_close(f);
    } else {
      tok = wk_tokenizer_load_json(argv[a]);
    }
    if (!tok) { fprintf(stderr, "%s\n", wk_last_error()); continue; }
    for (int mode = 0; mode < 2; mode++) {
      enum { ITERS = 9 };
      double t[ITERS];
      size_t n_ids = 0;
      for (int it = -1; it < ITERS; it++) {   // it = -1 warms the cache, like HF's run
        double t0 = now();
        int32_t *ids;
        size_t n;
        if (mode == 0) {
          wk_tokenizer_encode(tok, text, total, false, &ids, &n);
          n_ids = n;
          free(ids);
        } else {
          n_ids = 0;
          for (int r = 0; r < REPS; r++)
            for (size_t i = 0; i < nl; i++) {
              const wk_json *l = wk_json_at(lines, i);
              wk_tokenizer_encode(tok, l->s, l->n, false, &ids, &n);
              n_ids += n;
              free(ids);
            }
        }
        if (it >= 0) t[it] = now() - t0;
      }
      qsort(t, ITERS, sizeof t[0], cmp_d);
      const char *name = strrchr(argv[a], '/') ? strrchr(argv[a], '/') + 1 : argv[a];
      printf("{\"name\": \"tok_encode_%s/%s\", \"device\": \"cpu\", \"mode\": \"eager\", "
             "\"us\": %.1f, \"p10\": %.1f, \"p90\": %.1f, \"iters\": %d, \"bytes\": %zu, "
             "\"ids\": %zu, \"mbs\": %.2f}\n",
             mode ? "lines" : "whole", name, t[ITERS / 2] * 1e6, t[0] * 1e6, t[ITERS - 1] * 1e6,
             ITERS, total, n_ids, (double)total / t[ITERS / 2] / 1e6);
    }
    wk_tokenizer_free(tok);
  }
  wk_json_free(doc);
  free(ftext);
  free(text);
  return 0;
}
