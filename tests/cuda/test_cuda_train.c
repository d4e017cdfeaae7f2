// LoRA training on the GPU against the CPU: the tiny Qwen2 fixture and its peft
// adapter moved to CUDA give the CPU's loss and adapter gradients (and peft's), the
// checkpointed backward agrees, a few trainer steps follow the CPU's losses, and the
// trained adapter saves from the device. Tolerance 1e-4 relative: f32 throughout,
// cuBLAS (TF32 off) and tree reductions vs the CPU's summation order.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "backend/cuda/cuda_backend.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "wick/ops.h"

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
  setup both[2];
  for (int k = 0; k < 2; k++) {
    setup s = both[k] = load(k ? WK_CUDA : WK_CPU);
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
  }
  float worst = 0;
  for (int s = 1; s <= 5; s++) worst = fmaxf(worst, fabsf(rg.loss[s] - rc.loss[s]) / fmaxf(1, fabsf(rc.loss[s])));
  CHECK(worst <= 1e-4f, "GPU trainer losses follow the CPU's (worst %g; step 5: %.6f vs %.6f)", (double)worst,
        (double)rg.loss[5], (double)rc.loss[5]);
  // and so do the parameters after step 5: each step's AdamW step count and learning
  // rate reached its own update (the GPU's steps are queued one ahead, bound while the
  // step before runs)
  int n = both[0].a && both[1].a ? wk_adapter_params(both[0].a, NULL) : 0;
  wk_tensor **pc = calloc((size_t)n + 1, sizeof *pc), **pg = calloc((size_t)n + 1, sizeof *pg);
  if (n) wk_adapter_params(both[0].a, pc), wk_adapter_params(both[1].a, pg);
  float wp = 0;
  for (int i = 0; i < n; i++) wp = fmaxf(wp, rel(pg[i], pc[i]));
  CHECK(n > 0 && wp <= 1e-3f, "GPU-trained parameters follow the CPU's (%g relative)", (double)wp);
  free(pc), free(pg);
  release(both[0]);
  release(both[1]);
  // One micro-batch per step: loss, gradients, norm, clip factor and update are one
  // plan; the replay captures it by its third use, and from then on each step is one
  // graph launch with nothing re-captured. (Steps are queued one ahead: the counters at
  // step s's callback include step s + 1's launch, but for the last step's.)
  for (int s = 3; s <= 4; s++) {
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

// A bf16 model attends in bf16 without a cache (llama.c), which on CUDA is the
// tensor-core attention, forward and backward: the tiny Llama in bf16 against its
// fixture (q, k, v rounded, the rest f32), and a LoRA adapter's gradients against the
// CPU's. The tensor-core kernels also round P (and dS in the backward) to bf16 before
// the products with V (and K, Q), where the CPU keeps f32; that moves the bf16
// rounding of some inputs of the next projection by an ulp (2^-8 relative), so the
// devices agree to bf16's precision, not f32's: 2e-2 on logits of max 2.4 (measured
// 1.1e-2), 5e-2 relative on gradients.
static void bf16_model(void) {
  wk_model *mc = wk_model_load(fixture_in("models", "llama_bf16")), *mg = wk_model_load(fixture_in("models", "llama_bf16"));
  bool ok = mc && mg && wk_model_to_device(mg, WK_CUDA) == WK_OK;
  CHECK(ok, "llama_bf16 on the CPU and on CUDA [%s]", wk_last_error());
  wk_st_file *ref = ok ? wk_st_open(fixture_in("models", "llama_bf16/ref.safetensors")) : NULL;
  wk_tensor *ids = ref ? wk_st_get(ref, "ids") : NULL, *want = ref ? wk_st_get(ref, "logits") : NULL;
  wk_tensor *gids = ids ? wk_keep(wk_to_device(ids, WK_CUDA)) : NULL;
  if (!gids || !want) { CHECK(0, "llama_bf16 reference"); goto out; }
  wk_scope_begin();
  float *a = read_all(wk_to_device(wk_model_forward(mg, gids, 0), WK_CPU)), *b = read_all(want);
  float d = a && b ? max_abs_diff(a, b, wk_numel(want)) : NAN;
  CHECK(d <= 2e-2f, "bf16 model on CUDA: logits differ from the reference by %g", (double)d);
  free(a);
  free(b);
  wk_scope_end();
  // an adapter with random A and B (B is 0 at init, which would make A's gradient 0),
  // saved from the CPU and loaded onto the GPU model
  wk_lora_config cfg = wk_lora_defaults();
  wk_adapter *ac = wk_adapter_new(mc, &cfg), *ag = NULL;
  int n = ac ? wk_adapter_params(ac, NULL) : 0;
  wk_tensor *pc[64], *pg[64], *gc[64], *gg[64];
  char dir[256];
  snprintf(dir, sizeof dir, "%s/wick_bf16_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (n > 0 && n <= 64 && mkdtemp(dir)) {
    wk_adapter_params(ac, pc);
    for (int i = 0; i < n; i++) {
      float *r = test_randv(wk_numel(pc[i]), 100 + (uint64_t)i);
      for (int64_t j = 0; j < wk_numel(pc[i]); j++) r[j] *= 0.1f;
      wk_tensor *t = wk_from_data(wk_ndim(pc[i]), wk_shape(pc[i]), WK_F32, r);
      CHECK(wk_tensor_assign(pc[i], t) == WK_OK, "adapter values [%s]", wk_last_error());
      wk_tensor_free(t);
      free(r);
    }
    if (wk_adapter_save(ac, dir, "llama_bf16") == WK_OK) ag = wk_adapter_load(mg, dir);
    for (int f = 0; f < 2; f++) {
      char path[320];
      snprintf(path, sizeof path, "%s/%s", dir, f ? "adapter_model.safetensors" : "adapter_config.json");
      unlink(path);
    }
    rmdir(dir);
  }
  ok = ag && wk_adapter_params(ag, NULL) == n && wk_model_use_adapter(mc, ac) == WK_OK &&
       wk_model_use_adapter(mg, ag) == WK_OK;
  CHECK(ok, "adapters on the bf16 model [%s]", wk_last_error());
  if (ok) {
    wk_adapter_params(ag, pg);
    wk_scope_begin();
    float lc = NAN, lg = NAN;
    CHECK(wk_value_and_grad(wk_causal_lm_loss(mc, ids, ids), n, pc, gc, &lc) == WK_OK, "bf16 model: CPU gradients");
    CHECK(wk_value_and_grad(wk_causal_lm_loss(mg, gids, gids), n, pg, gg, &lg) == WK_OK, "bf16 model: CUDA gradients [%s]",
          wk_last_error());
    float worst = 0;
    for (int i = 0; i < n; i++) worst = fmaxf(worst, rel(gg[i], gc[i]));
    CHECK(fabsf(lg - lc) <= 1e-3f * fabsf(lc), "bf16 model: loss on CUDA %.6f, CPU %.6f", (double)lg, (double)lc);
    CHECK(worst <= 5e-2f, "bf16 model: CUDA gradients vs CPU: %g relative", (double)worst);
    printf("bf16 model: logits within %.2g of the reference, loss %.6f (CPU %.6f), gradients within %.2g\n", (double)d,
           (double)lg, (double)lc, (double)worst);
    wk_scope_end();
    wk_model_use_adapter(mc, NULL);
    wk_model_use_adapter(mg, NULL);
  }
  wk_adapter_free(ac);
  wk_adapter_free(ag);
out:
  wk_tensor_free(gids);
  wk_tensor_free(ids);
  wk_tensor_free(want);
  wk_st_close(ref);
  wk_model_free(mc);
  wk_model_free(mg);
}

// The head's loss by blocks of rows (wk_linear_cross_entropy, ce.cu's wkc_linear_ce):
// x [3, 100, 64] f32 (300 rows, some targets ignored) and a bf16 W [V, 64], V = 70000
// (rows split over clusters of CTAs) and 3000 (a CTA a row), blocks of 256 rows and 44:
// the loss and dx against the CPU's cross_entropy(x @ W^T), mean and sum. Both round x
// and dlogits to bf16 before their products, so the losses agree to f32 summation order
// (1e-5) and dx to an ulp of bf16 on some dlogits (2e-3 of max |dx|). Then the loss and
// dx evaluated in one plan, where the forward step computes both.
static void head_loss_blocks(int64_t V) {
  const int64_t N0 = 3, N1 = 100, H = 64;
  wk_scope_begin();
  wk_tensor *x = wk_keep(wk_randn(3, (int64_t[]){N0, N1, H}, WK_F32, 61));
  wk_tensor *w = wk_keep(wk_cast(wk_mul_scalar(wk_randn(2, (int64_t[]){V, H}, WK_F32, 62), 0.2f), WK_BF16));
  int32_t *tv = malloc(sizeof(int32_t) * (size_t)(N0 * N1));
  for (int64_t i = 0; tv && i < N0 * N1; i++) tv[i] = i % 7 == 3 ? -100 : (int32_t)((i * 7919) % V);
  wk_tensor *t = wk_keep(wk_from_data(2, (int64_t[]){N0, N1}, WK_I32, tv));
  free(tv);
  wk_eval(1, &w);
  wk_tensor *xg = wk_keep(wk_to_device(x, WK_CUDA)), *wg = wk_keep(wk_to_device(w, WK_CUDA)), *tg = wk_keep(wk_to_device(t, WK_CUDA));
  wk_set_trainable(x, 1);
  wk_set_trainable(xg, 1);
  for (int red = 1; red <= 2; red++) {
    wk_tensor *dc = NULL, *dg = NULL;
    float lc = NAN, lg = NAN;
    CHECK(wk_value_and_grad(wk_cross_entropy(wk_matmul_t(x, 0, w, 1), t, -100, red), 1, &x, &dc, &lc) == WK_OK,
          "CPU head loss [%s]", wk_last_error());
    CHECK(wk_value_and_grad(wk_linear_cross_entropy(xg, wg, tg, -100, red), 1, &xg, &dg, NULL) == WK_OK &&
              wk_eval(1, &dg) == WK_OK, "CUDA head loss by blocks [%s]", wk_last_error());
    const wk_plan *p = wk_last_plan();
    bool fused = false;
    for (int k = 0; p && k < p->nsteps; k++) fused |= p->steps[k].op == WK_OP_LINEAR_CE_BWD;
    lg = wk_item(wk_linear_cross_entropy(xg, wg, tg, -100, red));
    CHECK(fused, "reduction %d: the backward is one LINEAR_CE_BWD step", red);
    float e = dc && dg ? rel(dg, dc) : NAN;
    CHECK(fabsf(lg - lc) <= 1e-5f * fabsf(lc), "reduction %d: loss by blocks %.7f, CPU %.7f", red, (double)lg, (double)lc);
    CHECK(e <= 2e-3f, "reduction %d: dx by blocks vs CPU: %g of max |dx|", red, (double)e);
    printf("head loss by blocks, reduction %d: loss %.7f (CPU %.7f), dx within %.2g\n", red, (double)lg, (double)lc, (double)e);
    // the loss and dx in one plan: the forward step computes both (compile_rewrite.c's
    // match_linear_ce_grad), dx bit for bit the backward step's own, the loss to f32
    // summation order (the rows' statistics come from the backward's cluster split)
    wk_tensor *d1 = NULL, *lt = wk_linear_cross_entropy(xg, wg, tg, -100, red);
    CHECK(wk_grad(lt, 1, &xg, &d1) == WK_OK, "CUDA head loss and dx in one plan [%s]", wk_last_error());
    wk_tensor *both2[2] = {lt, d1};
    CHECK(wk_eval(2, both2) == WK_OK, "CUDA head loss and dx in one plan: eval [%s]", wk_last_error());
    p = wk_last_plan();   // (before the loss is read: that is a plan of its own)
    int both = 0, copies = 0;
    for (int k = 0; p && k < p->nsteps; k++) {
      both += p->steps[k].op == WK_OP_LINEAR_CE && p->steps[k].attrs.i[2];
      copies += p->steps[k].op == WK_OP_LINEAR_CE_BWD && p->steps[k].attrs.i[2];
    }
    CHECK(both == 1 && copies == 1, "reduction %d: the forward step computes dx (%d) and the backward copies it (%d)", red,
          both, copies);
    float *v1 = d1 ? read_all(d1) : NULL, *v0 = dg ? read_all(dg) : NULL;
    CHECK(v1 && v0 && !memcmp(v1, v0, sizeof(float) * (size_t)(N0 * N1 * H)), "reduction %d: dx in one plan = dx alone, bit for bit", red);
    const float l1 = wk_item(lt);
    CHECK(fabsf(l1 - lg) <= 1e-6f * fabsf(lg), "reduction %d: loss in one plan %.7f, alone %.7f", red, (double)l1, (double)lg);
    // again, replayed as a CUDA graph with the results kept, so each evaluation's land
    // at new addresses: relocated slots, the forward's buffer with dx after the loss
    wk_cuda_graph_stats g0, g1;
    wk_cuda_graph_stats_get(&g0);
    wk_tensor *kept[8] = {NULL};
    bool same = v0 != NULL;
    float ldiff = 0.0f;
    for (int it = 0; it < 4 && same; it++) {
      wk_tensor *l2 = wk_linear_cross_entropy(xg, wg, tg, -100, red), *d2 = NULL;
      wk_tensor *pair[2] = {l2, NULL};
      same = wk_grad(l2, 1, &xg, &d2) == WK_OK && (pair[1] = d2) && wk_eval(2, pair) == WK_OK;
      kept[2 * it] = wk_keep(l2), kept[2 * it + 1] = wk_keep(d2);
      float *v2 = same ? read_all(d2) : NULL;
      same = same && v2 && !memcmp(v2, v0, sizeof(float) * (size_t)(N0 * N1 * H));
      free(v2);
      if (same) ldiff = fmaxf(ldiff, fabsf(wk_item(l2) - l1));
    }
    wk_cuda_graph_stats_get(&g1);
    CHECK(same && ldiff == 0.0f && g1.replays > g0.replays,
          "reduction %d: replayed with relocated results, dx bit for bit and the same loss (%g off, %llu replays)", red,
          (double)ldiff, g1.replays - g0.replays);
    for (int k = 0; k < 8; k++) wk_tensor_free(kept[k]);
    free(v1), free(v0);
  }
  // a target past the vocabulary is an evaluation error naming it and its position
  // (row 250: in the second block), as cross_entropy's
  int32_t *bad = malloc(sizeof(int32_t) * 300);
  for (int i = 0; bad && i < 300; i++) bad[i] = i == 250 ? (int32_t)V + 5 : 3;
  char badv[32];
  snprintf(badv, sizeof badv, "%lld", (long long)V + 5);
  wk_tensor *tb = bad ? wk_to_device(wk_from_data(1, (int64_t[]){300}, WK_I32, bad), WK_CUDA) : NULL;
  free(bad);
  wk_tensor *lb = tb ? wk_linear_cross_entropy(wk_reshape(xg, 2, (int64_t[]){300, H}), wg, tb, -100, 1) : NULL;
  wk_clear_error();
  CHECK(lb && wk_eval(1, &lb) != WK_OK && strstr(wk_last_error(), badv) && strstr(wk_last_error(), "position 250"),
        "a bad target is reported: %s", wk_last_error());
  wk_set_trainable(x, 0);
  wk_set_trainable(xg, 0);
  wk_tensor_free(x), wk_tensor_free(w), wk_tensor_free(t), wk_tensor_free(xg), wk_tensor_free(wg), wk_tensor_free(tg);
  wk_scope_end();
}

// A pre-norm residual's input gradient, r + rms_norm_bwd(h, w, dy) (compile_rewrite.c's
// match_norm_bwd_add): one RMS_NORM_BWD step that adds r as it stores, in r's buffer
// (r dies there), for r = e (the gradient of sum(h e)) and exp(e); D = 896 (a warp a
// row) and 100 (a block a row). Against the CPU's gradient, 1e-5 relative (the row
// sums run in another order).
static void norm_bwd_add(int64_t D) {
  const int64_t R = 40;
  wk_scope_begin();
  wk_tensor *h = wk_keep(wk_randn(2, (int64_t[]){R, D}, WK_F32, 71)), *w = wk_keep(wk_randn(1, &D, WK_F32, 72));
  wk_tensor *c = wk_keep(wk_randn(2, (int64_t[]){R, D}, WK_F32, 73)), *e = wk_keep(wk_randn(2, (int64_t[]){R, D}, WK_F32, 74));
  wk_eval(1, &h), wk_eval(1, &w), wk_eval(1, &c), wk_eval(1, &e);
  for (int computed = 0; computed < 2; computed++) {
    wk_tensor *dh[2] = {NULL, NULL};
    int fused = 0, shared = 0;
    for (int d = 0; d < 2; d++) {
      const wk_device dev = d ? WK_CUDA : WK_CPU;
      wk_tensor *hd = wk_keep(wk_to_device(h, dev)), *wd = wk_to_device(w, dev), *cd = wk_to_device(c, dev);
      wk_tensor *ed = wk_to_device(e, dev);
      wk_eval(1, &hd);
      wk_set_trainable(hd, 1);
      wk_tensor *ep = computed ? wk_exp(ed) : ed;   // loss = sum(rms_norm(h, w) c) + sum(h e')
      wk_tensor *loss = wk_add(wk_sum(wk_mul(wk_rms_norm(hd, wd, 1e-6f), cd), 0, NULL, 0), wk_sum(wk_mul(hd, ep), 0, NULL, 0));
      wk_tensor *g = NULL;   // (2 dh: a plan's result has a buffer of its own, not the arena's)
      CHECK(wk_grad(loss, 1, &hd, &g) == WK_OK && (dh[d] = wk_mul_scalar(g, 2.0f)) && wk_eval(1, &dh[d]) == WK_OK,
            "norm + residual gradient on %s [%s]", d ? "cuda" : "cpu", wk_last_error());
      const wk_plan *p = wk_last_plan();
      for (int k = 0; d && p && k < p->nsteps; k++) {
        const wk_step *q = &p->steps[k];
        if (q->op != WK_OP_RMS_NORM_BWD || !q->attrs.i[2]) continue;
        fused++;
        const int first = p->nslots - p->narena, so = q->out.slot, sa = q->in[q->nin - 1].slot;
        shared += so >= first && sa >= first && p->arena_off[so - first] == p->arena_off[sa - first];
      }
      wk_set_trainable(hd, 0);
      wk_tensor_free(hd);
    }
    CHECK(fused == 1, "D %lld, residual %s: one norm backward adding it (%d)", (long long)D, computed ? "exp(e)" : "e", fused);
    CHECK(shared == 1, "D %lld, residual %s: the norm's output takes the addend's buffer", (long long)D,
          computed ? "exp(e)" : "e");
    const float err = dh[0] && dh[1] ? rel(dh[1], dh[0]) : INFINITY;
    CHECK(err <= 1e-5f, "D %lld, residual %s: cuda gradient within %g of the cpu's", (long long)D,
          computed ? "exp(e)" : "e", (double)err);
  }
  wk_tensor_free(h), wk_tensor_free(w), wk_tensor_free(c), wk_tensor_free(e);
  wk_scope_end();
}

// An adapter with a NaN weight is refused at load for a CUDA model too: the check runs
// on the host copy, before the weights move to the device.
static void nonfinite_adapter(void) {
  setup c = load(WK_CPU);
  wk_model *g = wk_model_load(fixture_in("models", "qwen2"));
  bool ok = c.a && g && wk_model_to_device(g, WK_CUDA) == WK_OK;
  char dir[256];
  snprintf(dir, sizeof dir, "%s/wick_nanlora_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (ok && mkdtemp(dir)) {
    wk_tensor *p[64];
    wk_adapter_params(c.a, p);
    float *v = read_all(p[1]);
    v[0] = NAN;
    wk_tensor *t = wk_from_data(2, (int64_t[]){wk_dim(p[1], 0), wk_dim(p[1], 1)}, WK_F32, v);
    ok = wk_adapter_set_param(c.a, 1, t) == WK_OK && wk_adapter_save(c.a, dir, NULL) == WK_OK;
    wk_tensor_free(t);
    free(v);
    wk_clear_error();
    wk_adapter *a = ok ? wk_adapter_load(g, dir) : NULL;
    CHECK(ok && !a && strstr(wk_last_error(), wk_adapter_param_name(c.a, 1)) && strstr(wk_last_error(), "NaN"),
          "a NaN adapter weight is refused for a CUDA model [%s]", wk_last_error());
    wk_adapter_free(a);
    for (int f = 0; f < 2; f++) {
      char path[320];
      snprintf(path, sizeof path, "%s/%s", dir, f ? "adapter_model.safetensors" : "adapter_config.json");
      unlink(path);
    }
    rmdir(dir);
  } else {
    CHECK(0, "CPU adapter and CUDA model [%s]", wk_last_error());
  }
  wk_model_free(g);
  release(c);
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  nonfinite_adapter();
  head_loss_blocks(70000);   // rows split over clusters of CTAs
  head_loss_blocks(3000);    // a CTA a row
  norm_bwd_add(896);
  norm_bwd_add(100);
  bf16_model();
  grads_match();
  trainer_matches();
  generation_matches();
  return check_report();
}
