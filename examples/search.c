// Semantic search: embeds a corpus (one text per line) and each query with a sentence
// embedding model, then prints the corpus lines closest to the query by cosine
// similarity.
//
//   ./build/example_search "how tall is the highest mountain?"
//   ./build/example_search -m models/all-minilm-l6-v2 -c examples/data/corpus.txt -k 5 "QUERY" ...
//
// Needs tools/fetch-models (all-MiniLM-L6-v2 in models/). The whole corpus is embedded
// in one wk_embed call: wick sorts the texts by length and encodes them in padded,
// masked batches.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wick.h>

typedef struct { float score; int idx; } hit;

static int by_score(const void *a, const void *b) {
  const hit *x = a, *y = b;
  return x->score < y->score ? 1 : x->score > y->score ? -1 : x->idx - y->idx;
}

static float cosine(const float *a, const float *b, int64_t d) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < d; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? (float)(ab / sqrt(aa * bb)) : 0.0f;
}

// The non-empty lines of path (malloc'd strings into *lines); their count, or -1.
static int read_lines(const char *path, char ***lines) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int n = 0, cap = 0;
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  *lines = NULL;
  while ((len = getline(&line, &lcap, f)) >= 0) {
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (!len) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      char **q = realloc(*lines, sizeof *q * (size_t)cap);
      if (!q) { n = -1; break; }
      *lines = q;
    }
    (*lines)[n++] = line;
    line = NULL;
    lcap = 0;
  }
  free(line);
  fclose(f);
  return n;
}

int main(int argc, char **argv) {
  const char *model = "models/all-minilm-l6-v2", *corpus_path = "examples/data/corpus.txt";
  int k = 3, first_query = argc;
  for (int i = 1; i < argc && first_query == argc; i++) {
    if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "-c") && i + 1 < argc) corpus_path = argv[++i];
    else if (!strcmp(argv[i], "-k") && i + 1 < argc) k = atoi(argv[++i]);
    else if (argv[i][0] == '-') { fprintf(stderr, "search: unknown option %s\n", argv[i]); return 2; }
    else first_query = i;
  }
  if (first_query == argc || k < 1) {
    fprintf(stderr, "usage: %s [-m MODEL] [-c CORPUS.txt] [-k K] QUERY...\n", argv[0]);
    return 2;
  }
  char **corpus;
  int n = read_lines(corpus_path, &corpus);
  if (n <= 0) { fprintf(stderr, "search: %s: no lines (or unreadable)\n", corpus_path); return 2; }
  wk_embedder *e = wk_embedder_load(model);
  if (!e) { fprintf(stderr, "search: %s\n", wk_last_error()); return 1; }
  int64_t d = wk_embedder_dim(e);
  float *vecs = malloc(sizeof(float) * (size_t)(n + 1) * (size_t)d);
  hit *hits = malloc(sizeof(hit) * (size_t)n);
  int rc = vecs && hits ? 0 : 1;
  if (!rc && wk_embed(e, n, (const char *const *)corpus, vecs)) rc = 1;
  float *q = vecs + (size_t)n * (size_t)d;
  for (int a = first_query; !rc && a < argc; a++) {
    if (wk_embed(e, 1, (const char *const *)&argv[a], q)) { rc = 1; break; }
    for (int i = 0; i < n; i++) hits[i] = (hit){cosine(q, vecs + (size_t)i * (size_t)d, d), i};
    qsort(hits, (size_t)n, sizeof *hits, by_score);
    printf("%s\n", argv[a]);
    for (int i = 0; i < k && i < n; i++) printf("  %.3f  %s\n", (double)hits[i].score, corpus[hits[i].idx]);
  }
  if (rc) fprintf(stderr, "search: %s\n", wk_last_error());
  for (int i = 0; i < n; i++) free(corpus[i]);
  free(corpus);
  free(vecs);
  free(hits);
  wk_embedder_free(e);
  return rc;
}
