// LoRA training on the GPU against the CPU: the tiny Qwen2 fixture and its peft
// adapter moved to CUDA give the CPU's loss and adapter gradients (and peft's), the
// checkpointed backward agrees, a few trainer steps follow the CPU's losses, and the
// trained adapter saves from the device. Tolerance 1e-4 relative: f32 throughout,
// cuBLAS (TF32 off) and tree reductions vs the CPU's summation order.
#define _POSIX_C_SOURCE 200809L
#include <stdbool.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "backend/cuda/cuda_backend.h"

static float rel(wk_tensor *a, wk_tensor *b) {
  float *x = read_all(a), *y = read_all(b), scale = 1e-6f;
  int64_t n = wk_numel(a);
  for (int64_t i = 0; y && i < n; i++) scale = fmaxf(scale, fabsf(y[i]));
  float d = max_abs_diff(x, y, n) / scale;
  free(x);
  free(y);
  return d;
}

typedef struct {
  wk_model *m;
  wk_adapter *a;
} setup;

static setup load(wk_device dev) {
  setup s = {wk_model_load(fixture_in("models", "qwen2")), NULL};
  if (s.m && dev != WK_CPU && wk_model_to_device(s.m, dev)) { wk_model_free(s.m); s.m = NULL; }
  if (s.m) s.a = wk_adapter_load(s.m, fixture_in("lora", "all"));
  if (s.a) wk_model_use_adapter(s.m, s.a);
  return s;
}

static void release(setup s) {
  wk_adapter_free(s.a);
  wk_model_free(s.m);
}

static void grads_match(void) {
  setup c = load(WK_CPU), g = load(WK_CUDA);
  CHECK(c.a && g.a && wk_model_device(g.m) == WK_CUDA, "model and adapter on the CPU and on CUDA [%s]", wk_last_error());
  if (!c.a || !g.a) { release(c); release(g); return; }
  wk_st_file *ref = wk_st_open(fixture_in("lora", "all/reference.safetensors"));
  wk_tensor *ids = wk_st_get(ref, "ids"), *labels = wk_st_get(ref, "labels");
  wk_tensor *gids = wk_keep(wk_to_device(ids, WK_CUDA)), *glab = wk_keep(wk_to_device(labels, WK_CUDA));
  int n = wk_adapter_params(c.a, NULL);
  wk_tensor **pc = calloc((size_t)n, sizeof *pc), **pg = calloc((size_t)n, sizeof *pg);
  wk_tensor **gc = calloc((size_t)n, sizeof *gc), **gg = calloc((size_t)n, sizeof *gg), **gk = calloc((size_t)n, sizeof *gk);
  wk_adapter_params(c.a, pc);
  wk_adapter_params(g.a, pg);
  CHECK(wk_tensor_device(pg[0]) == WK_CUDA, "adapter tensors live on the GPU");
  wk_scope_begin();
  float lc = NAN, lg = NAN, lk = NAN;
  CHECK(wk_value_and_grad(wk_causal_lm_loss(c.m, ids, labels), n, pc, gc, &lc) == WK_OK, "CPU gradients");
  CHECK(wk_value_and_grad(wk_causal_lm_loss(g.m, gids, glab), n, pg, gg, &lg) == WK_OK, "GPU gradients [%s]",
        wk_last_error());
  CHECK(wk_causal_lm_value_and_grad_ckpt(g.m, gids, glab, n, pg, gk, &lk) == WK_OK, "GPU checkpointed gradients");
  float want = wk_item(wk_st_get(ref, "loss"));
  CHECK(fabsf(lg - lc) <= 1e-5f * fmaxf(1, fabsf(lc)) && fabsf(lg - want) <= 1e-5f * fmaxf(1, want),
        "loss on the GPU %.7f, CPU %.7f, peft %.7f", (double)lg, (double)lc, (double)want);
  float worst = 0, worst_k = 0;
  for (int i = 0; i < n; i++) {
    worst = fmaxf(worst, rel(gg[i], gc[i]));
    worst_k = fmaxf(worst_k, rel(gk[i], gc[i]));
  }
  CHECK(worst <= 1e-4f, "GPU gradients vs CPU: %g relative", (double)worst);
  CHECK(worst_k <= 1e-4f, "GPU checkpointed gradients vs CPU: %g relative", (double)worst_k);
  printf("GPU loss %.6f (CPU %.6f), gradients within %.2g, checkpointed %.2g\n", (double)lg, (double)lc,
         (double)worst, (double)worst_k);
  wk_scope_end();
  free(pc), free(pg), free(gc), free(gg), free(gk);
  wk_tensor_free(ids), wk_tensor_free(labels), wk_tensor_free(gids), wk_tensor_free(glab);
  wk_st_close(ref);
  release(c);
  release(g);
}

typedef struct {
  float loss[16];
  bool gpu;
  wk_cuda_graph_stats at[16];   // the graph counters after each step (GPU run)
} rec;
static int on_step(const wk_train_progress *p, void *user) {
  rec *r = user;
  if (p->step < 16) {
    r->loss[p->step] = p->loss;
    if (r->gpu) wk_cuda_graph_stats_get(&r->at[p->step]);
  }
  return 0;
}

static void trainer_matches(void) {
  char dir[] = "/tmp/wick_cuda_train_XXXXXX";
  if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
  char data[128], out_c[128], out_g[128];
  snprintf(data, sizeof data, "%s/d.jsonl", dir);
  snprintf(out_c, sizeof out_c, "%s/cpu", dir);
  snprintf(out_g, sizeof out_g, "%s/gpu", dir);
  FILE *f = fopen(data, "w");
  for (int i = 0; f && i < 16; i++) {
    fprintf(f, "{\"input_ids\": [");
    for (int t = 0; t < 6 + i % 5; t++) fprintf(f, "%s%d", t ? ", " : "", (i * 31 + t * 17) % 256);
    fprintf(f, "]}\n");
  }
  if (f) fclose(f);
  rec rc = {.gpu = false}, rg = {.gpu = true};
  for (int k = 0; k < 2; k++) {
    setup s = load(k ? WK_CUDA : WK_CPU);
    wk_dataset *d = wk_dataset_load(data, NULL, 256, NULL);
    wk_train_options o = wk_train_defaults();
    o.steps = 5;
    o.batch = 4;
    o.schedule.lr = 1e-2f;
    o.out_dir = k ? out_g : out_c;
    o.callback = on_step;
    o.user = k ? &rg : &rc;
    wk_train_result r;
    CHECK(s.a && d && wk_train(s.m, s.a, d, &o, &r) == WK_OK, "%s: 5 trainer steps [%s]", k ? "GPU" : "CPU",
          wk_last_error());
    wk_dataset_free(d);
    release(s);
  }
  float worst = 0;
  for (int s = 1; s <= 5; s++) worst = fmaxf(worst, fabsf(rg.loss[s] - rc.loss[s]) / fmaxf(1, fabsf(rc.loss[s])));
  CHECK(worst <= 1e-4f, "GPU trainer losses follow the CPU's (worst %g; step 5: %.6f vs %.6f)", (double)worst,
        (double)rg.loss[5], (double)rc.loss[5]);
  // One micro-batch per step: loss, gradients, norm, clip factor and update are one
  // plan; the replay captures it on its third use, and from then on each step is one
  // graph launch with nothing re-captured.
  for (int s = 4; s <= 5; s++) {
    const wk_cuda_graph_stats *a = &rg.at[s - 1], *b = &rg.at[s];
    CHECK(b->replays - a->replays == 1 && b->captures == a->captures && b->patched == a->patched &&
              b->direct == a->direct,
          "GPU trainer step %d is one graph launch (launches %llu, captures %llu, patched %llu, step by step %llu)", s,
          b->replays - a->replays, b->captures - a->captures, b->patched - a->patched, b->direct - a->direct);
  }
  // the adapter the GPU run saved loads on the CPU
  setup c = load(WK_CPU);
  wk_adapter *back = c.m ? wk_adapter_load(c.m, out_g) : NULL;
  CHECK(back != NULL, "the GPU-trained adapter loads on the CPU");
  wk_adapter_free(back);
  release(c);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0, "cleanup");
}

// Greedy generation (KV cache, batched prompts with left padding) on the GPU gives the
// CPU's tokens.
typedef struct {
  int32_t ids[2][16];
  int n[2];
} tokens;
static int on_token(const wk_gen_token *t, void *user) {
  tokens *k = user;
  if (t->seq >= 0 && t->seq < 2 && k->n[t->seq] < 16) k->ids[t->seq][k->n[t->seq]++] = t->id;
  return 0;
}

static void generation_matches(void) {
  int32_t p0[] = {5, 17, 42, 9, 200}, p1[] = {11, 3, 77};
  const int32_t *prompts[2] = {p0, p1};
  size_t lens[2] = {5, 3};
  wk_generate_params gp = wk_generate_defaults();
  gp.max_tokens = 12;
  gp.ignore_eos = true;
  tokens got[2] = {{{{0}}, {0}}, {{{0}}, {0}}};
  for (int k = 0; k < 2; k++) {
    wk_model *m = wk_model_load(fixture_in("models", "qwen2"));
    if (m && k && wk_model_to_device(m, WK_CUDA)) { wk_model_free(m); m = NULL; }
    CHECK(m && wk_generate_batch(m, NULL, 2, prompts, lens, &gp, on_token, &got[k], NULL) == WK_OK,
          "%s: batched greedy generation [%s]", k ? "GPU" : "CPU", wk_last_error());
    wk_model_free(m);
  }
  CHECK(got[0].n[0] == 12 && got[0].n[1] == 12 && got[1].n[0] == 12 && got[1].n[1] == 12, "12 tokens each");
  CHECK(!memcmp(got[0].ids, got[1].ids, sizeof got[0].ids), "the GPU generates the CPU's tokens");
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  grads_match();
  trainer_matches();
  generation_matches();
  return check_report();
}
