#define _POSIX_C_SOURCE 200809L
// wick embed and wick logits with -d cuda on the committed fixtures, against the CPU:
//  - the tiny BERT's embeddings on the GPU (library and `wick embed -d cuda`) vs the
//    CPU's: unit vectors, f32 throughout; cuBLAS and tree reductions sum in another
//    order than the CPU -> 1e-5 absolute; the CLI's npy equals the library's GPU
//    result exactly (same batches, same kernels);
//  - `wick logits -d cuda` on the tiny Llama gives the reference's top-1 token and its
//    logit within 1e-3 (the CPU test's bound; logits are O(1));
//  - an unknown device is a usage error naming it;
//  - wick generate -d cuda keeps a bf16 model's KV cache in bf16 by default.
#include <string.h>
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

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  SKIP_WITHOUT_CUDA();
  test_embed();
  test_logits();
  test_cache_default();
  return check_report();
}
