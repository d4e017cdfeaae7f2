// RoPE scaling read from GGUF files (llama.cpp's keys and Llama 3's rope_freqs tensor).
// The tiny Llama GGUF fixture is rewritten (weights widened to f32) with scaling keys or
// a rope_freqs tensor. Two independent routes to the same frequencies must agree:
// rope.scaling.type linear with factor 4 divides every frequency by 4, and so does a
// rope_freqs tensor of fours; a rope_freqs of ones changes nothing; scaling does change
// the logits. yarn's keys land in the config; unknown types and missing factors are
// errors naming the key. (The scaled frequencies themselves are checked against
// transformers in test_rope_scaling.)
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "io/gguf_write.h"
#include "wick/gguf.h"

static char g_dir[64];

static const char *tmp(const char *name) { return test_path_in(g_dir, name); }

typedef struct {
  const char *type;   // rope.scaling.type, or NULL
  float factor;       // rope.scaling.factor (0: left out)
  uint32_t orig_ctx;  // rope.scaling.original_context_length (0: left out)
  float freqs;        // a rope_freqs.weight of this value (0: none)
  const char *zero;   // an int key written as 0 (a corrupt header), or NULL
} variant;

// The fixture's metadata and tensors (f32) plus the variant's scaling, written to path.
static bool write_variant(const char *path, const variant *v) {
  wk_gguf *g = wk_gguf_open(fixture_in("models", "llama_q8_0.gguf"));
  if (!g) return false;
  wk_gguf_writer *w = wk_gguf_writer_new();
  wk_gguf_writer_str(w, "general.architecture", "llama");
  const char *ints[] = {"block_count", "context_length", "embedding_length", "feed_forward_length",
                        "attention.head_count", "attention.head_count_kv", "rope.dimension_count"};
  const char *floats[] = {"rope.freq_base", "attention.layer_norm_rms_epsilon"};
  char k[128];
  int64_t iv, head_dim = 0;
  double fv;
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    snprintf(k, sizeof k, "llama.%s", ints[i]);
    if (wk_gguf_get_int(g, k, &iv)) { wk_gguf_close(g); wk_gguf_writer_free(w); return false; }
    wk_gguf_writer_u32(w, k, v->zero && !strcmp(v->zero, ints[i]) ? 0u : (uint32_t)iv);
    if (!strcmp(ints[i], "rope.dimension_count")) head_dim = iv;
  }
  for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
    snprintf(k, sizeof k, "llama.%s", floats[i]);
    if (wk_gguf_get_float(g, k, &fv)) { wk_gguf_close(g); wk_gguf_writer_free(w); return false; }
    wk_gguf_writer_f32(w, k, (float)fv);
  }
  if (v->type) wk_gguf_writer_str(w, "llama.rope.scaling.type", v->type);
  if (v->factor > 0) wk_gguf_writer_f32(w, "llama.rope.scaling.factor", v->factor);
  if (v->orig_ctx) wk_gguf_writer_u32(w, "llama.rope.scaling.original_context_length", v->orig_ctx);
  wk_scope_begin();
  bool ok = true;
  for (int64_t i = 0; ok && i < wk_gguf_tensor_count(g); i++) {
    const wk_gguf_tensor *d = wk_gguf_tensor_at(g, i);
    wk_tensor *t = wk_gguf_tensor_load(g, d->name);
    ok = t && !wk_gguf_writer_tensor(w, d->name, wk_cast(t, WK_F32), WK_F32);
  }
  if (ok && v->freqs > 0) {
    int64_t half = head_dim / 2;
    ok = !wk_gguf_writer_tensor(w, "rope_freqs.weight", wk_full(1, &half, WK_F32, v->freqs), WK_F32);
  }
  ok = ok && !wk_gguf_writer_save(w, path);
  wk_scope_end();
  wk_gguf_writer_free(w);
  wk_gguf_close(g);
  return ok;
}

// Logits of 24 tokens (positions far enough apart for the frequencies to matter).
static float *logits_of(const char *path, int64_t *n) {
  wk_model *m = wk_model_load(path);
  if (!m) return NULL;
  int32_t ids[24];
  for (int i = 0; i < 24; i++) ids[i] = (int32_t)((i * 37 + 11) % 256);
  wk_scope_begin();
  wk_tensor *y = wk_model_forward(m, wk_from_data(2, (int64_t[]){1, 24}, WK_I32, ids), 0);
  float *v = y ? read_all(y) : NULL;
  *n = y ? wk_numel(y) : 0;
  wk_scope_end();
  wk_model_free(m);
  return v;
}

static float max_diff(const float *a, const float *b, int64_t n) {
  float d = 0;
  for (int64_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
  return a && b ? d : INFINITY;
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/wick-gguf-rope-XXXXXX");
  CHECK(mkdtemp(g_dir) != NULL, "temporary directory");
  const variant plain = {0}, linear = {"linear", 4, 0, 0, NULL}, freqs4 = {NULL, 0, 0, 4, NULL},
                freqs1 = {NULL, 0, 0, 1, NULL}, yarn = {"yarn", 4, 64, 0, NULL}, bad = {"su", 4, 0, 0, NULL},
                nofactor = {"linear", 0, 0, 0, NULL};
  const char *names[] = {"plain.gguf", "linear.gguf", "freqs4.gguf", "freqs1.gguf", "yarn.gguf", "bad.gguf", "nofactor.gguf"};
  const variant *vs[] = {&plain, &linear, &freqs4, &freqs1, &yarn, &bad, &nofactor};
  for (int i = 0; i < 7; i++) CHECK(write_variant(tmp(names[i]), vs[i]), "write %s: %s", names[i], wk_last_error());

  int64_t n0 = 0, n1 = 0, n2 = 0, n3 = 0;
  float *l0 = logits_of(tmp("plain.gguf"), &n0), *l1 = logits_of(tmp("linear.gguf"), &n1);
  float *l2 = logits_of(tmp("freqs4.gguf"), &n2), *l3 = logits_of(tmp("freqs1.gguf"), &n3);
  CHECK(l0 && l1 && l2 && l3 && n0 == n1 && n0 == n2 && n0 == n3 && n0 > 0, "forward of every variant: %s",
        wk_last_error());
  if (l0 && l1 && l2 && l3) {
    CHECK(max_diff(l1, l0, n0) > 1e-3f, "linear scaling changes the logits (max diff %g)", (double)max_diff(l1, l0, n0));
    CHECK(max_diff(l2, l1, n0) <= 1e-5f, "rope_freqs of 4 == linear factor 4 (max diff %g)", (double)max_diff(l2, l1, n0));
    CHECK(max_diff(l3, l0, n0) <= 1e-5f, "rope_freqs of 1 == plain RoPE (max diff %g)", (double)max_diff(l3, l0, n0));
  }
  free(l0), free(l1), free(l2), free(l3);

  wk_model *m = wk_model_load(tmp("yarn.gguf"));
  const wk_model_config *c = m ? wk_model_get_config(m) : NULL;
  CHECK(c && c->rope_scaling.type == WK_ROPE_YARN && c->rope_scaling.factor == 4 &&
            c->rope_scaling.original_max_position_embeddings == 64 && c->rope_scaling.beta_fast == 32,
        "yarn keys read into the config: %s", wk_last_error());
  wk_model_free(m);
  CHECK(!wk_model_load(tmp("bad.gguf")) && strstr(wk_last_error(), "rope.scaling.type") && strstr(wk_last_error(), "su"),
        "an unknown scaling type is named: %s", wk_last_error());
  CHECK(!wk_model_load(tmp("nofactor.gguf")) && strstr(wk_last_error(), "rope.scaling.factor"),
        "a missing factor is named: %s", wk_last_error());
  // a size of 0 is named as such (embedding_length 0 read as "partial RoPE": head dim 0)
  const variant zero_emb = {.zero = "embedding_length"}, zero_kv = {.zero = "attention.head_count_kv"};
  CHECK(write_variant(tmp("zero_emb.gguf"), &zero_emb) && !wk_model_load(tmp("zero_emb.gguf")) &&
            strstr(wk_last_error(), "embedding_length is 0"),
        "embedding_length 0 is named: %s", wk_last_error());
  CHECK(write_variant(tmp("zero_kv.gguf"), &zero_kv) && !wk_model_load(tmp("zero_kv.gguf")) &&
            strstr(wk_last_error(), "head_count_kv is 0"),
        "head_count_kv 0 is named: %s", wk_last_error());
  remove(tmp("zero_emb.gguf"));
  remove(tmp("zero_kv.gguf"));
  for (int i = 0; i < 7; i++) remove(tmp(names[i]));
  rmdir(g_dir);
  return check_report();
}
