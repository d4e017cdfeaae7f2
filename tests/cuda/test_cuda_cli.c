#define _POSIX_C_SOURCE 200809L
// wick embed and wick logits with -d cuda on the committed fixtures, against the CPU:
//  - the tiny BERT's embeddings on the GPU (library and `wick embed -d cuda`) vs the
//    CPU's: unit vectors, f32 throughout; cuBLAS and tree reductions sum in another
//    order than the CPU -> 1e-5 absolute; the CLI's npy equals the library's GPU
//    result exactly (same batches, same kernels);
//  - `wick logits -d cuda` on the tiny Llama gives the reference's top-1 token and its
//    logit within 1e-3 (the CPU test's bound; logits are O(1));
//  - an unknown device is a usage error naming it;
//  - wick generate -d cuda keeps a bf16 model's KV cache in bf16 by default;
//  - generated kernels are kept on disk (WICK_CUDA_KERNEL_CACHE): a second process
//    loads every one instead of compiling it and prints the same tokens; a truncated
//    or altered file is compiled again; "0" turns the cache off.
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "cli/run_wick.h"

static char out[1 << 20], err[1 << 16];
#define BERT "tests/fixtures/models/bert_tiny"

static const char *texts[4] = {"hello", "A cat sits on the mat.", "word", "The quick brown fox jumps over the lazy dog."};

static float *embed_on(wk_device dev, int64_t *dim) {
  wk_embedder *e = wk_embedder_load(BERT);
  float *v = NULL;
  if (e && (dev == WK_CPU || !wk_embedder_to_device(e, dev))) {
    *dim = wk_embedder_dim(e);
    v = malloc(sizeof(float) * 4 * (size_t)*dim);
    if (wk_embed(e, 4, texts, v)) { free(v); v = NULL; }
  }
  CHECK(v != NULL, "embed on %s", wk_device_name(dev));
  CHECK(!e || dev == WK_CPU || wk_embedder_device(e) == dev, "embedder weights on %s", wk_device_name(dev));
  wk_embedder_free(e);
  return v;
}

static void test_embed(void) {
  int64_t d = 0;
  float *cpu = embed_on(WK_CPU, &d), *gpu = embed_on(WK_CUDA, &d);
  float diff = cpu && gpu ? max_abs_diff(cpu, gpu, 4 * d) : NAN;
  CHECK(diff <= 1e-5f, "embeddings on cuda vs cpu: max diff %g", (double)diff);
  const char *args[] = {"embed", "-m", BERT, "-d", "cuda", "--format", "npy", "-o", "/tmp/wick_test_cuda_embed.npy", NULL};
  int rc = run("hello\nA cat sits on the mat.\nword\nThe quick brown fox jumps over the lazy dog.\n", out, sizeof out, err,
               sizeof err, args);
  static char file[1 << 16];
  size_t len = 0;
  FILE *f = fopen("/tmp/wick_test_cuda_embed.npy", "rb");
  if (f) { len = fread(file, 1, sizeof file, f); fclose(f); }
  unlink("/tmp/wick_test_cuda_embed.npy");
  size_t data = len >= sizeof(float) * 4 * (size_t)d ? len - sizeof(float) * 4 * (size_t)d : 0;
  CHECK(rc == 0 && data && gpu && !memcmp(file + data, gpu, sizeof(float) * 4 * (size_t)d),
        "wick embed -d cuda equals the library's GPU embeddings: rc %d, %zu bytes: %s", rc, len, err);
  free(cpu);
  free(gpu);
}

static void test_logits(void) {
  wk_st_file *f = wk_st_open("tests/fixtures/models/llama/ref.safetensors");
  wk_tensor *ids = f ? wk_st_get(f, "ids") : NULL, *logits = f ? wk_st_get(f, "logits") : NULL;
  if (f) wk_st_close(f);
  const int32_t *id = ids ? wk_tensor_data(ids) : NULL;
  float *lg = logits ? read_all(logits) : NULL;
  CHECK(id && lg, "the tiny Llama's reference logits");
  if (id && lg) {
    int64_t T = wk_shape(ids)[1], V = wk_shape(logits)[2];
    static char list[1024];
    for (int64_t t = 0, k = 0; t < T; t++) k += snprintf(list + k, sizeof list - (size_t)k, "%s%d", t ? "," : "", id[t]);
    const float *row = lg + (T - 1) * V;
    int64_t best = 0;
    for (int64_t j = 1; j < V; j++) if (row[j] > row[best]) best = j;
    const char *args[] = {"logits", "-m", "tests/fixtures/models/llama", "-d", "cuda", "--top", "3", "--json", "--ids", list, NULL};
    int rc = run(NULL, out, sizeof out, err, sizeof err, args);
    char want[64];
    snprintf(want, sizeof want, "\"top\": [{\"id\": %lld,", (long long)best);
    CHECK(rc == 0 && strstr(out, want), "wick logits -d cuda: top-1 %lld: rc %d: %s %s", (long long)best, rc, out, err);
    const char *lp = strstr(out, "\"logit\": ");
    CHECK(lp && fabs(atof(lp + 9) - row[best]) < 1e-3, "wick logits -d cuda: logit %.20s vs %g", lp ? lp : "?",
          (double)row[best]);
  }
  free(lg);
  wk_tensor_free(ids);
  wk_tensor_free(logits);
  const char *bad[] = {"logits", "-m", "tests/fixtures/models/llama", "-d", "tpu", "--ids", "1,2", NULL};
  int rc = run(NULL, out, sizeof out, err, sizeof err, bad);
  CHECK(rc == 2 && strstr(err, "unknown device 'tpu'"), "wick logits -d tpu: rc %d: %s", rc, err);
}

// wick generate -d cuda keeps a bf16 model's KV cache in bf16 unless --cache-type says
// otherwise (wk_model_cache_dtype: the decode attention kernel reads 2-byte caches),
// and an f32 model's in f32 (a GGUF model's in f16, llama.cpp's default); the chat
// fixture saved as bf16 serves as the bf16 model.
static void test_cache_default(void) {
  const char *chat = "tests/fixtures/chat/model";
  char dir[] = "/tmp/wick_cache_bf16_XXXXXX";
  wk_model *m = wk_model_load(chat);
  bool ok = m && mkdtemp(dir) && wk_model_save(m, dir, WK_BF16) == WK_OK;
  CHECK(ok, "the chat fixture saved as bf16 [%s]", wk_last_error());
  CHECK(wk_model_cache_dtype(m) == WK_F32 && wk_model_cache_dtype(NULL) == WK_F32, "wk_model_cache_dtype on the CPU: f32");
  wk_model *b = ok ? wk_model_load(dir) : NULL;
  ok = b && wk_model_to_device(b, WK_CUDA) == WK_OK;
  CHECK(ok && wk_model_cache_dtype(b) == WK_BF16, "wk_model_cache_dtype of a bf16 model on CUDA: bf16 [%s]", wk_last_error());
  wk_model_free(b);
  wk_model_free(m);
  wk_model *q = wk_model_load("tests/fixtures/models/qwen2_q8_0.gguf");
  bool qok = q && wk_model_to_device(q, WK_CUDA) == WK_OK;
  CHECK(qok && wk_model_cache_dtype(q) == WK_F16, "wk_model_cache_dtype of a GGUF model on CUDA: f16 [%s]", wk_last_error());
  wk_model_free(q);
  static const struct { const char *model, *cache, *want; } cases[] = {
      {NULL, NULL, "bf16"}, {NULL, "f32", "f32"}, {"tests/fixtures/chat/model", NULL, "f32"}};
  for (int k = 0; ok && k < 3; k++) {
    const char *args[20] = {"generate", "-m", cases[k].model ? cases[k].model : dir, "--tokenizer",
                            "tests/fixtures/chat/model/tokenizer.json", "-d", "cuda", "-p", "Hello there", "-n", "3",
                            "--temp", "0", "--json"};
    int n = 14;
    if (cases[k].cache) args[n++] = "--cache-type", args[n++] = cases[k].cache;
    args[n] = NULL;
    int rc = run(NULL, out, sizeof out, err, sizeof err, args);
    char want[64];
    snprintf(want, sizeof want, "\"cache_type\": \"%s\"", cases[k].want);
    CHECK(rc == 0 && strstr(out, want), "wick generate -d cuda, %s model%s%s: cache %s: rc %d: %s%s",
          cases[k].model ? "an f32" : "a bf16", cases[k].cache ? ", --cache-type " : "", cases[k].cache ? cases[k].cache : "",
          cases[k].want, rc, out, err);
  }
  char path[96];
  const char *files[] = {"config.json", "model.safetensors"};
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

// ---- the disk cache of generated kernels (rtc.cu) ----
// Runs wick generate on the tiny chat model with every fused group generated; *compiled
// and *loaded from the NVRTC line WICK_CUDA_GRAPH_STATS prints at exit.
static int gen_counts(char *tokens, size_t cap, unsigned long long *compiled, unsigned long long *loaded) {
  const char *args[] = {"generate", "-m", "tests/fixtures/chat/model", "-d", "cuda", "-p", "Hello there", "-n", "6",
                        "--temp", "0", "--json", NULL};
  int rc = run(NULL, tokens, cap, err, sizeof err, args);
  const char *l = strstr(err, "wick: NVRTC: ");
  if (!l || sscanf(l, "wick: NVRTC: %llu kernels compiled, %llu loaded", compiled, loaded) != 2) return -1;
  return rc;
}

// The token ids of generate's --json lines, space-separated, into ids (the lines also
// carry times, which differ from run to run).
static const char *token_ids(const char *json, char *ids, size_t cap) {
  size_t n = 0;
  ids[0] = 0;
  for (const char *p = json; (p = strstr(p, "{\"id\": ")) && n + 16 < cap; p += 8)
    n += (size_t)snprintf(ids + n, cap - n, "%ld ", strtol(p + 8, NULL, 10));
  return ids;
}
static bool same_tokens(const char *a, const char *b) {
  char x[512], y[512];
  return !strcmp(token_ids(a, x, sizeof x), token_ids(b, y, sizeof y)) && x[0];
}

// The cache's files (*.wkc) in dir: how many, and the path of the i-th in name order.
static int cache_files(const char *dir, int i, char *path, size_t cap) {
  struct dirent **ents;
  int n = scandir(dir, &ents, NULL, alphasort), k = 0;
  for (int e = 0; e < n; e++) {
    const char *d = ents[e]->d_name;
    size_t len = strlen(d);
    if (len > 4 && !strcmp(d + len - 4, ".wkc") && k++ == i && path) snprintf(path, cap, "%s/%s", dir, d);
    free(ents[e]);
  }
  if (n >= 0) free(ents);
  return k;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) ? -1 : (long)st.st_size;
}

static void test_kernel_cache(void) {
  char dir[] = "/tmp/wick_kcache_XXXXXX", path[2][256] = {"", ""};
  static char first[1 << 16], again[1 << 16];
  CHECK(mkdtemp(dir) != NULL, "a directory for the kernel cache");
  setenv("WICK_CUDA_KERNEL_CACHE", dir, 1);
  setenv("WICK_CUDA_GRAPH_STATS", "1", 1);
  setenv("WICK_CUDA_NVRTC", "all", 1);   // the tiny model's groups are under the size threshold
  unsigned long long c1 = 0, l1 = 0, c2 = 0, l2 = 0, c3 = 0, l3 = 0, c4 = 0, l4 = 0;
  int rc = gen_counts(first, sizeof first, &c1, &l1), n = cache_files(dir, 0, NULL, 0);
  CHECK(rc == 0 && c1 > 0 && l1 == 0 && n == (int)c1, "first run: %llu kernels compiled, %llu loaded, %d files: rc %d: %s",
        c1, l1, n, rc, err);
  char named[64];   // the stats line, printed at exit, names the directory (it once printed freed memory)
  snprintf(named, sizeof named, "disk cache (%s)", dir);
  CHECK(strstr(err, named) != NULL, "the stats name the cache directory %s: %s", dir, err);
  rc = gen_counts(again, sizeof again, &c2, &l2);
  CHECK(rc == 0 && c2 == 0 && l2 == c1 && same_tokens(first, again),
        "second run: every kernel from the disk cache (%llu compiled, %llu loaded), the same tokens: rc %d: %s", c2, l2, rc,
        err);
  // one file cut short, another with a byte of its image changed: both compiled again
  for (int i = 0; i < 2 && n >= 2; i++) cache_files(dir, i, path[i], sizeof path[i]);
  long size0 = file_size(path[0]), size1 = file_size(path[1]);
  if (n >= 2 && size0 > 64 && size1 > 64) {
    CHECK(truncate(path[0], size0 / 2) == 0, "truncating %s", path[0]);
    FILE *f = fopen(path[1], "r+b");
    if (f) { fseek(f, size1 - 40, SEEK_SET); int b = fgetc(f); fseek(f, size1 - 40, SEEK_SET); fputc(b ^ 0x5a, f); fclose(f); }
    rc = gen_counts(again, sizeof again, &c3, &l3);
    CHECK(rc == 0 && c3 == 2 && l3 == c1 - 2 && same_tokens(first, again) && file_size(path[0]) == size0,
          "damaged files compiled again and replaced (%llu compiled, %llu loaded; %ld of %ld bytes): rc %d: %s", c3, l3,
          file_size(path[0]), size0, rc, err);
  } else {
    CHECK(0, "two cache files to damage (%d files)", n);
  }
  setenv("WICK_CUDA_KERNEL_CACHE", "0", 1);
  rc = gen_counts(again, sizeof again, &c4, &l4);
  CHECK(rc == 0 && c4 == c1 && l4 == 0 && strstr(err, "disk cache (off)") && same_tokens(first, again),
        "WICK_CUDA_KERNEL_CACHE=0: %llu compiled, %llu loaded: rc %d: %s", c4, l4, rc, err);
  for (char p[256]; cache_files(dir, 0, p, sizeof p) > 0;) unlink(p);
  rmdir(dir);
  unsetenv("WICK_CUDA_KERNEL_CACHE");
  unsetenv("WICK_CUDA_GRAPH_STATS");
  unsetenv("WICK_CUDA_NVRTC");
}

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  SKIP_WITHOUT_CUDA();
  test_embed();
  test_logits();
  test_cache_default();
  test_kernel_cache();
  return check_report();
}
