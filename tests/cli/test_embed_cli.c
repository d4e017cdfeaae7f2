#define _GNU_SOURCE   // memmem
// wick embed's outputs on the tiny BERT fixture (tests/fixtures/models/bert_tiny, whose
// embeddings tests/models/test_bert.c checks against sentence-transformers): --format
// npy writes a NumPy float32 [lines, dim] array equal to the library's wk_embed; the
// JSON lines agree with it to their 7 digits; how lines are chunked (--batch) does not
// change the results; a line longer than the model's maximum is truncated, not refused.
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "cli/run_wick.h"

#define MODEL "tests/fixtures/models/bert_tiny"

static char out[1 << 20], err[1 << 16];

// The float32 data of an .npy file, after checking its header's dtype and shape.
static const float *npy_data(const char *p, size_t len, int rows, int64_t dim) {
  if (len < 10 || memcmp(p, "\x93NUMPY\x01\x00", 8)) return NULL;
  size_t hl = (size_t)(unsigned char)p[8] | (size_t)(unsigned char)p[9] << 8;
  char want[96];
  snprintf(want, sizeof want, "'shape': (%d, %lld)", rows, (long long)dim);
  if (10 + hl > len || (10 + hl) % 64 || !memmem(p + 10, hl, "'descr': '<f4'", 14) || !memmem(p + 10, hl, want, strlen(want)) ||
      p[10 + hl - 1] != '\n' || len - 10 - hl != sizeof(float) * (size_t)rows * (size_t)dim)
    return NULL;
  return (const float *)(p + 10 + hl);
}

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  // five lines of different lengths, the last far beyond the model's 64 tokens
  static char input[4096];
  int n = snprintf(input, sizeof input, "hello\nA cat sits on the mat.\nword\nThe quick brown fox jumps over the lazy dog.\n");
  for (int i = 0; i < 80; i++) n += snprintf(input + n, sizeof input - (size_t)n, "long%d ", i);
  snprintf(input + n, sizeof input - (size_t)n, "\n");
  const char *texts[5] = {"hello", "A cat sits on the mat.", "word", "The quick brown fox jumps over the lazy dog.", NULL};
  char *last = strdup(input + strlen("hello\nA cat sits on the mat.\nword\nThe quick brown fox jumps over the lazy dog.\n"));
  last[strlen(last) - 1] = 0;
  texts[4] = last;

  wk_embedder *e = wk_embedder_load(MODEL);
  CHECK(e != NULL, "load " MODEL);
  if (!e) return check_report();
  int64_t d = wk_embedder_dim(e);
  float *want = malloc(sizeof(float) * 5 * (size_t)d);
  CHECK(wk_embed(e, 5, texts, want) == WK_OK, "library embed");

  // -o FILE (stdout would do as well; a file keeps the binary's length exact)
  // (one name per process: ctest runs this test once per CPU path, side by side)
  size_t len = 0;
  char npy[64];
  snprintf(npy, sizeof npy, "/tmp/wick_test_embed_%ld.npy", (long)getpid());
  const char *o[] = {"embed", "-m", MODEL, "--format", "npy", "-o", npy, NULL};
  int rc = run(input, out, sizeof out, err, sizeof err, o);
  static char file[1 << 16];
  FILE *f = fopen(npy, "rb");
  if (f) { len = fread(file, 1, sizeof file, f); fclose(f); }
  unlink(npy);
  const float *got = npy_data(file, len, 5, d);
  CHECK(rc == 0 && got, "npy: rc %d, %zu bytes, header %.80s: %s", rc, len, file + 10, err);
  CHECK(got && max_abs_diff(got, want, 5 * d) == 0, "npy data differs from wk_embed by %g",
        got ? (double)max_abs_diff(got, want, 5 * d) : -1.0);

  // JSON lines, in chunks of 2 lines: the same numbers to 7 significant digits
  const char *js[] = {"embed", "-m", MODEL, "--batch", "2", NULL};
  rc = run(input, out, sizeof out, err, sizeof err, js);
  int rows = 0;
  double worst = 0;
  for (char *p = out; rc == 0 && *p && rows < 5; rows++) {
    if (*p != '[') break;
    p++;
    for (int64_t j = 0; j < d; j++) {
      char *end;
      double v = strtod(p, &end);
      worst = fmax(worst, fabs(v - want[rows * d + j]));
      p = end + (*end == ',' ? 2 : 0);
    }
    p = strchr(p, '\n');
    if (!p) break;
    p++;
  }
  // Unit vectors, so absolute differences: %.7g keeps 7 digits (<= 5e-8 here), and chunks
  // of 2 lines pad to other lengths than one call of 5, so the GEMMs block their sums
  // differently: f32 rounding through 6 layers, observed up to ~1e-7 -> 2e-6.
  printf("json worst abs diff %g\n", worst);
  CHECK(rc == 0 && rows == 5 && worst < 2e-6, "json: rc %d, %d rows, worst abs diff %g", rc, rows, worst);

  const char *bad[] = {"embed", "-m", MODEL, "--format", "csv", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, bad);
  CHECK(rc == 2 && strstr(err, "--format 'csv'"), "bad format: rc %d: %s", rc, err);
  const char *bad_dt[] = {"embed", "-m", MODEL, "--dtype", "q4_0", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, bad_dt);
  CHECK(rc == 2 && strstr(err, "--dtype 'q4_0'"), "bad dtype: rc %d: %s", rc, err);
  const char *noout[] = {"embed", "-m", MODEL, "-o", "/nonexistent/dir/x.npy", NULL};
  rc = run("hi\n", out, sizeof out, err, sizeof err, noout);
  CHECK(rc == 2 && strstr(err, "/nonexistent/dir/x.npy"), "bad -o: rc %d: %s", rc, err);
  // a run that fails (an invalid line) leaves an existing -o FILE as it was
  FILE *old = fopen(npy, "wb");
  if (old) { fputs("kept\n", old); fclose(old); }
  const char *keep[] = {"embed", "-m", MODEL, "-o", npy, NULL};
  rc = run("fine\nbad \xff line\n", out, sizeof out, err, sizeof err, keep);
  char back[16] = {0};
  if ((f = fopen(npy, "rb"))) { if (!fread(back, 1, sizeof back - 1, f)) back[0] = 0; fclose(f); }
  unlink(npy);
  CHECK(rc == 2 && strstr(err, "line 2") && !strcmp(back, "kept\n"), "failed run keeps -o: rc %d, file '%s': %s", rc, back,
        err);
  free(want);
  free(last);
  wk_embedder_free(e);
  return check_report();
}
