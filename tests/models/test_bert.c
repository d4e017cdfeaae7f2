// BERT encoder and sentence embeddings (embed.h) against references made by
// tools/gen_bert_fixtures.py (transformers BertModel, sentence-transformers pooling):
// a random-initialized tiny model (hidden states and pooled embeddings), batching,
// truncation, bad input, and — when tools/fetch-models has run — all-MiniLM-L6-v2.
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "io/file.h"
#include "io/json.h"

// Tolerances. Hidden states: 1e-4 as the issue sets for f32 logits (values are O(1)
// after LayerNorm; float summation order differs from torch's). Embeddings are unit
// vectors, so their entries are smaller: 1e-5. Batch vs one-at-a-time differs only by
// GEMM blocking over a different number of rows: 1e-5.
#define TOL_HIDDEN 1e-4f
#define TOL_EMB 1e-5f
#define TOL_BATCH 1e-5f

static const char *path(const char *rel) {
  static char buf[4][2048];
  static int k;
  char *out = buf[k++ & 3];
  snprintf(out, 2048, "%s%s", test_repo_root(), rel);
  return out;
}

static const char *fixture(const char *rel) { return fixture_in("models", rel); }

// A JSON array of strings from a file: *n strings, malloc'd copies (free with free_strs).
static char **load_strings(const char *file, int *n) {
  size_t len;
  char *text = wk_read_file(file, 1 << 20, &len);
  wk_json *doc = text ? wk_json_parse(text, len, file, NULL) : NULL;
  free(text);
  if (!doc) return NULL;
  *n = (int)wk_json_len(doc);
  char **s = calloc((size_t)*n + 1, sizeof *s);
  for (int i = 0; s && i < *n; i++) {
    const char *v = wk_json_str(wk_json_at(doc, (size_t)i), "");
    s[i] = malloc(strlen(v) + 1);
    if (s[i]) strcpy(s[i], v);
  }
  wk_json_free(doc);
  return s;
}

static void free_strs(char **s, int n) {
  if (!s) return;
  for (int i = 0; i < n; i++) free(s[i]);
  free(s);
}

static float cosine(const float *a, const float *b, int64_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
  return (float)(ab / (sqrt(aa) * sqrt(bb) + 1e-30));
}

static void test_tiny(void) {
  wk_embedder *e = wk_embedder_load(fixture("bert_tiny"));
  CHECK(e != NULL, "load bert_tiny (make it with tools/gen_bert_fixtures.py)");
  if (!e) return;
  CHECK(wk_embedder_dim(e) == 32, "dim %lld", (long long)wk_embedder_dim(e));
  CHECK(wk_embedder_max_length(e) == 64, "max_length %lld", (long long)wk_embedder_max_length(e));
  CHECK(wk_embedder_pooling(e) == WK_POOL_MEAN && wk_embedder_normalizes(e) == 1,
        "mean pooling + normalize from modules.json");

  int n = 0;
  char **sent = load_strings(fixture("bert_tiny/sentences.json"), &n);
  wk_st_file *ref = wk_st_open(fixture("bert_tiny/reference.safetensors"));
  CHECK(sent && ref && n == 6, "reference files");
  if (!sent || !ref) { free_strs(sent, n); wk_st_close(ref); wk_embedder_free(e); return; }
  wk_scope_begin();
  wk_tensor *ids = wk_st_get(ref, "ids"), *lens = wk_st_get(ref, "lengths");
  wk_tensor *href = wk_st_get(ref, "last_hidden_state"), *eref = wk_st_get(ref, "embeddings");
  int64_t B = wk_dim(ids, 0), T = wk_dim(ids, 1), D = 32;
  const int32_t *rid = wk_tensor_data(ids), *rlen = wk_tensor_data(lens);
  const float *rh = wk_tensor_data(href), *re = wk_tensor_data(eref);

  // tokenization with [CLS]/[SEP] and truncation at 64 equals HF's
  for (int b = 0; b < n; b++) {
    int32_t *tid = NULL;
    int64_t tn = 0;
    CHECK(wk_embedder_tokenize(e, sent[b], &tid, &tn) == WK_OK, "tokenize %d", b);
    int same = tn == rlen[b];
    for (int64_t t = 0; same && t < tn; t++) same = tid[t] == rid[b * T + t];
    CHECK(same, "sentence %d: %lld ids, HF has %d (or ids differ)", b, (long long)tn, rlen[b]);
    free(tid);
  }

  // lengths outside [1, T] are refused (a row of length 0 would pool nothing)
  int32_t badlen[64] = {0};
  wk_tensor *bl = wk_from_data(1, (int64_t[]){B}, WK_I32, badlen);
  CHECK(B <= 64 && !wk_embedder_forward(e, ids, bl) && strstr(wk_last_error(), "lengths[0] = 0"), "length 0 refused: %s",
        wk_last_error());
  // the same for pooling on its own: length -2 pooled nothing (zeros), 99 > T counted
  // tokens that are not there
  wk_tensor *hid = wk_zeros(3, (int64_t[]){1, 4, D}, WK_F32);
  wk_tensor *neg = wk_from_data(1, (int64_t[]){1}, WK_I32, (int32_t[]){-2});
  wk_tensor *past = wk_from_data(1, (int64_t[]){1}, WK_I32, (int32_t[]){99});
  CHECK(!wk_embedder_pool(e, hid, neg) && strstr(wk_last_error(), "embedder_pool: lengths[0] = -2 is outside [1, 4]"),
        "pool: negative length refused: %s", wk_last_error());
  CHECK(!wk_embedder_pool(e, hid, past) && strstr(wk_last_error(), "lengths[0] = 99"), "pool: length past T refused");
  // hidden states of the padded batch, real positions only
  wk_tensor *h = wk_embedder_forward(e, ids, lens);
  float *hv = h ? read_all(h) : NULL;
  CHECK(hv != NULL, "forward");
  float worst = 0;
  for (int64_t b = 0; hv && b < B; b++) {
    float d = max_abs_diff(hv + b * T * D, rh + b * T * D, rlen[b] * D);
    if (d > worst || d != d) worst = d;
  }
  CHECK(hv && worst <= TOL_HIDDEN, "last_hidden_state max-abs-diff %g > %g", (double)worst,
        (double)TOL_HIDDEN);
  printf("tiny: hidden max-abs-diff %.3g\n", (double)worst);
  free(hv);

  // pooled + normalized, from the graph pieces and from wk_embed
  wk_tensor *p = wk_embedder_pool(e, h, lens);
  float *pv = p ? read_all(p) : NULL;
  float dp = max_abs_diff(pv, re, B * D);
  CHECK(pv && dp <= TOL_EMB, "pooled embeddings max-abs-diff %g", (double)dp);
  free(pv);

  float *all = malloc(sizeof(float) * (size_t)(n * D)), *one = malloc(sizeof(float) * (size_t)D);
  CHECK(wk_embed(e, n, (const char *const *)sent, all) == WK_OK, "wk_embed batch");
  float de = max_abs_diff(all, re, n * D);
  CHECK(de <= TOL_EMB, "wk_embed vs reference max-abs-diff %g", (double)de);
  printf("tiny: embeddings max-abs-diff %.3g\n", (double)de);
  float db = 0;
  for (int b = 0; b < n; b++) {
    CHECK(wk_embed(e, 1, (const char *const *)&sent[b], one) == WK_OK, "wk_embed one %d", b);
    float d = max_abs_diff(one, all + b * D, D);
    if (d > db || d != d) db = d;
  }
  CHECK(db <= TOL_BATCH, "batch vs one-at-a-time max-abs-diff %g", (double)db);
  printf("tiny: batch vs single max-abs-diff %.3g\n", (double)db);
  // order within the batch doesn't matter either
  const char *rev[6];
  for (int b = 0; b < n; b++) rev[b] = sent[n - 1 - b];
  float *allr = malloc(sizeof(float) * (size_t)(n * D));
  CHECK(wk_embed(e, n, rev, allr) == WK_OK, "wk_embed reversed");
  float dr = 0;
  for (int b = 0; b < n; b++) {
    float d = max_abs_diff(allr + (n - 1 - b) * D, all + b * D, D);
    if (d > dr || d != d) dr = d;
  }
  CHECK(dr <= TOL_BATCH, "reversed batch max-abs-diff %g", (double)dr);

  // bad input to wk_embed
  CHECK(wk_embed(e, 0, (const char *const *)sent, all) != WK_OK &&
        strstr(wk_last_error(), "no texts"), "empty text list is an error");
  const char *withnull[2] = {"ok", NULL};
  CHECK(wk_embed(e, 2, withnull, all) != WK_OK && strstr(wk_last_error(), "texts[1]"),
        "NULL text is an error naming it");
  CHECK(wk_embed(e, 1, withnull, NULL) != WK_OK, "NULL out is an error");
  // an empty string still embeds ([CLS] [SEP])
  const char *empty[1] = {""};
  CHECK(wk_embed(e, 1, empty, one) == WK_OK && fabsf(cosine(one, one, D) - 1) < 1e-5f,
        "empty string embeds");

  free(all);
  free(allr);
  free(one);
  wk_scope_end();
  wk_st_close(ref);
  free_strs(sent, n);
  wk_embedder_free(e);
}

static void write_text(const char *file, const char *text) {
  FILE *f = fopen(file, "wb");
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

static void copy_file(const char *from, const char *to) {
  size_t len;
  char *d = wk_read_file(from, 64 << 20, &len);
  FILE *f = d ? fopen(to, "wb") : NULL;
  if (f) { fwrite(d, 1, len, f); fclose(f); }
  free(d);
}

static void test_errors(void) {
  CHECK(wk_embedder_load("/nonexistent/wick-model") == NULL &&
        strstr(wk_last_error(), "/nonexistent/wick-model"), "missing dir names the path");
  CHECK(wk_embedder_load(NULL) == NULL, "NULL dir");

  char tmpl[] = "/tmp/wick-bert-XXXXXX";
  char *dir = mkdtemp(tmpl);
  CHECK(dir != NULL, "mkdtemp");
  if (!dir) return;
  char f[1100];
  // no config.json
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "config.json"),
        "missing config.json is named");
  // a decoder's config
  snprintf(f, sizeof f, "%s/config.json", dir);
  write_text(f, "{\"model_type\": \"llama\", \"hidden_size\": 32, \"num_attention_heads\": 4}");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "bert"), "non-BERT config");
  // impossible hyper-parameters
  write_text(f, "{\"model_type\": \"bert\", \"hidden_size\": 30, \"num_attention_heads\": 4}");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "config.json"),
        "bad config names the file: %s", wk_last_error());
  // malformed JSON
  write_text(f, "{\"model_type\": \"bert\",");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "config.json"), "malformed config");
  // good config, no weights
  copy_file(fixture("bert_tiny/config.json"), f);
  CHECK(wk_embedder_load(dir) == NULL, "no model.safetensors: %s", wk_last_error());
  // weights but a config that disagrees with them
  char w[1100];
  snprintf(w, sizeof w, "%s/model.safetensors", dir);
  copy_file(fixture("bert_tiny/model.safetensors"), w);
  write_text(f, "{\"model_type\": \"bert\", \"vocab_size\": 1500, \"hidden_size\": 32, "
                "\"num_attention_heads\": 4, \"num_hidden_layers\": 3, \"intermediate_size\": 64, "
                "\"max_position_embeddings\": 64}");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "encoder.layer.2"),
        "missing layer tensor is named: %s", wk_last_error());
  // no tokenizer
  copy_file(fixture("bert_tiny/config.json"), f);
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "tokenizer.json"),
        "missing tokenizer.json is named: %s", wk_last_error());
  // unsupported pooling
  char t[1100], m[1100], pd[1100], pc[1200];
  snprintf(t, sizeof t, "%s/tokenizer.json", dir);
  copy_file(fixture("bert_tiny/tokenizer.json"), t);
  snprintf(m, sizeof m, "%s/modules.json", dir);
  write_text(m, "[{\"type\": \"sentence_transformers.models.Transformer\", \"path\": \"\"},"
                " {\"type\": \"sentence_transformers.models.Pooling\", \"path\": \"1_Pooling\"}]");
  snprintf(pd, sizeof pd, "%s/1_Pooling", dir);
  mkdir(pd, 0755);
  snprintf(pc, sizeof pc, "%s/config.json", pd);
  write_text(pc, "{\"pooling_mode_max_tokens\": true}");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "pooling"),
        "max pooling refused: %s", wk_last_error());
  // CLS pooling, no Normalize module
  write_text(pc, "{\"pooling_mode_cls_token\": true}");
  wk_embedder *e = wk_embedder_load(dir);
  CHECK(e && wk_embedder_pooling(e) == WK_POOL_CLS && !wk_embedder_normalizes(e), "CLS pooling");
  if (e) {
    const char *txt[1] = {"Hello world!"};
    float out[32];
    CHECK(wk_embed(e, 1, txt, out) == WK_OK, "CLS embed");
    // CLS pooling = hidden state of token 0, unnormalized
    wk_scope_begin();
    int32_t *ids = NULL;
    int64_t n = 0;
    wk_embedder_tokenize(e, txt[0], &ids, &n);
    int32_t len = (int32_t)n;
    wk_tensor *h = wk_embedder_forward(e, wk_from_data(2, (int64_t[]){1, n}, WK_I32, ids),
                                       wk_from_data(1, (int64_t[]){1}, WK_I32, &len));
    float *hv = h ? read_all(h) : NULL;
    CHECK(hv && max_abs_diff(out, hv, 32) <= 1e-6f, "CLS = first hidden state");
    free(hv);
    free(ids);
    wk_scope_end();
    wk_embedder_free(e);
  }
  // sentence_bert_config.json's max_seq_length: a positive integer or null; other values
  // were ignored (the model's full length was used)
  char sb[1200];
  snprintf(sb, sizeof sb, "%s/sentence_bert_config.json", dir);
  const char *bad_len[][2] = {{"\"16\"", "a string (\"16\")"}, {"16.5", "16.5"}, {"0", "is 0;"}, {"-3", "is -3;"},
                              {"[16]", "an array"}, {"true", "a boolean"}};
  for (int k = 0; k < 6; k++) {
    char text[96];
    snprintf(text, sizeof text, "{\"max_seq_length\": %s, \"do_lower_case\": false}", bad_len[k][0]);
    write_text(sb, text);
    wk_clear_error();
    e = wk_embedder_load(dir);
    CHECK(!e && strstr(wk_last_error(), "sentence_bert_config.json") && strstr(wk_last_error(), "max_seq_length") &&
              strstr(wk_last_error(), bad_len[k][1]),
          "max_seq_length %s refused: %s", bad_len[k][0], wk_last_error());
    wk_embedder_free(e);
  }
  // accepted limits: the smaller of the model's (64) and the file's; tokenizer_config.json's
  // model_max_length too (a float: 1e30 means no limit)
  char tc[1200];
  snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
  const struct { const char *file, *json; int64_t want; } fine[] = {
      {sb, "{\"max_seq_length\": 16}", 16}, {sb, "{\"max_seq_length\": null}", 64},
      {tc, "{\"model_max_length\": 1e30}", 64}, {tc, "{\"model_max_length\": 24}", 24}};
  for (size_t k = 0; k < sizeof fine / sizeof fine[0]; k++) {
    write_text(fine[k].file, fine[k].json);
    e = wk_embedder_load(dir);
    CHECK(e && wk_embedder_max_length(e) == fine[k].want, "%s: the limit is %lld", fine[k].json, (long long)fine[k].want);
    wk_embedder_free(e);
    remove(fine[k].file);
  }
  write_text(tc, "{\"model_max_length\": \"512\"}");
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "tokenizer_config.json: model_max_length is a string"),
        "model_max_length as a string refused: %s", wk_last_error());
  remove(tc);
  // a Pooling module whose config.json is not there: sentence-transformers fails; wick
  // pooled by mean, whatever the model was trained with
  remove(pc);
  CHECK(wk_embedder_load(dir) == NULL && strstr(wk_last_error(), "1_Pooling/config.json is missing") &&
        strstr(wk_last_error(), "modules.json"), "missing pooling config refused: %s", wk_last_error());
  rmdir(pd);
  remove(m);
  remove(t);
  remove(w);
  remove(f);
  rmdir(dir);
}

// bf16 matrices: the products run on bf16-rounded inputs, so the embeddings move
// (they must: else nothing was rounded) but stay near the f32 reference; the
// embeddings, norms and biases stay f32; a non-float dtype is refused by name.
static void test_bf16_weights(void) {
  wk_embedder *e = wk_embedder_load(fixture("bert_tiny"));
  int n = 0;
  char **sent = load_strings(fixture("bert_tiny/sentences.json"), &n);
  wk_st_file *ref = wk_st_open(fixture("bert_tiny/reference.safetensors"));
  CHECK(e && sent && ref && n == 6, "bert_tiny and its reference");
  if (!e || !sent || !ref) { free_strs(sent, n); wk_st_close(ref); wk_embedder_free(e); return; }
  wk_scope_begin();
  wk_tensor *eref = wk_st_get(ref, "embeddings");
  const float *re = wk_tensor_data(eref);
  const int64_t D = 32;
  float *out = malloc(sizeof(float) * (size_t)(n * D));
  CHECK(wk_embedder_weight_dtype(e) == WK_F32 && wk_embedder_set_weight_dtype(e, WK_BF16) == WK_OK &&
            wk_embedder_weight_dtype(e) == WK_BF16, "matrices to bf16: %s", wk_last_error());
  CHECK(wk_embed(e, n, (const char *const *)sent, out) == WK_OK, "wk_embed with bf16 matrices");
  float worst = 1;
  for (int b = 0; b < n; b++) worst = fminf(worst, cosine(out + b * D, re + b * D, D));
  float moved = max_abs_diff(out, re, n * D);
  CHECK(worst >= 0.999f && moved > 1e-6f, "bf16 matrices: worst cosine %.6f to the f32 reference, max-abs-diff %g",
        (double)worst, (double)moved);
  printf("tiny bf16: worst cosine %.7f, max-abs-diff %.3g\n", (double)worst, (double)moved);
  CHECK(wk_embedder_set_weight_dtype(e, WK_I32) != WK_OK && strstr(wk_last_error(), "i32") &&
            wk_embedder_weight_dtype(e) == WK_BF16, "i32 matrices refused, embedder unchanged: %s", wk_last_error());
  CHECK(wk_embedder_set_weight_dtype(e, WK_F32) == WK_OK && wk_embedder_weight_dtype(e) == WK_F32 &&
            wk_embed(e, n, (const char *const *)sent, out) == WK_OK,
        "back to f32 matrices");
  free(out);
  wk_scope_end();
  wk_st_close(ref);
  free_strs(sent, n);
  wk_embedder_free(e);
}

static void test_minilm(void) {
  const char *env = getenv("WICK_MODELS");
  char dir[1200];
  if (env) snprintf(dir, sizeof dir, "%s/all-minilm-l6-v2", env);
  else snprintf(dir, sizeof dir, "%s", path("models/all-minilm-l6-v2"));
  char cfg[1300];
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  if (access(cfg, R_OK) != 0) {
    printf("minilm: skipped: run tools/fetch-models\n");
    return;
  }
  wk_embedder *e = wk_embedder_load(dir);
  CHECK(e != NULL, "load MiniLM");
  int n = 0;
  char **sent = load_strings(fixture("minilm_sentences.json"), &n);
  wk_st_file *ref = wk_st_open(fixture("minilm_reference.safetensors"));
  CHECK(sent && ref, "MiniLM reference fixtures");
  if (e && sent && ref) {
    CHECK(wk_embedder_dim(e) == 384 && wk_embedder_max_length(e) == 256 &&
          wk_embedder_normalizes(e) && wk_embedder_pooling(e) == WK_POOL_MEAN, "MiniLM setup");
    int32_t *ids = NULL;
    int64_t nt = 0;
    CHECK(wk_embedder_tokenize(e, sent[n - 1], &ids, &nt) == WK_OK && nt == 256 && ids[255] == 102,
          "last sentence truncated to 256 tokens ending in [SEP] (got %lld)", (long long)nt);
    free(ids);
    wk_scope_begin();
    wk_tensor *rt = wk_st_get(ref, "embeddings");
    const float *rv = rt ? wk_tensor_data(rt) : NULL;
    float *out = malloc(sizeof(float) * 384 * (size_t)n);
    CHECK(rv && wk_embed(e, n, (const char *const *)sent, out) == WK_OK, "MiniLM embed");
    float worst = 1;
    for (int i = 0; rv && i < n; i++) {
      float c = cosine(out + i * 384, rv + i * 384, 384);
      CHECK(c >= 0.9999f, "sentence %d: cosine %.6f < 0.9999", i, (double)c);
      if (c < worst) worst = c;
    }
    printf("minilm: %d sentences, worst cosine %.7f, max-abs-diff %.3g\n", n, (double)worst,
           rv ? (double)max_abs_diff(out, rv, 384 * n) : -1.0);
    free(out);
    wk_scope_end();
  }
  wk_st_close(ref);
  free_strs(sent, n);
  wk_embedder_free(e);
}

int main(void) {
  test_tiny();
  test_errors();
  test_bf16_weights();
  test_minilm();
  return check_report();
}
