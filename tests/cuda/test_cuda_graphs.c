// CUDA graph replay of cached plans: every plan here is evaluated several times with
// replay off (step-by-step launches, the reference) and again with replay on, and
// each evaluation's results must be equal bit for bit: the same kernels run on the
// same data, only the way they are launched differs. The replay counters prove the
// graphs were used (captured, replayed, patched with new pointers or scalars).
// Covered: chained LoRA / softmax / RMSNorm calls (one plan of many steps; 1024-wide
// LoRA calls as one chain kernel, lora.cu), chained
// LoRA calls and bf16 GEMVs captured with programmatic dependent launches, a plan
// split by host steps, LoRA training steps with gradient clipping and AdamW under a
// warmup-cosine schedule (new parameter buffers, learning rate, bias corrections and
// clip factor every step; one graph launch per plan), a model forward, decode steps
// with the KV cache (one graph launch each), transfers inside a plan (an upload done
// by the graph's head, a download after the device steps), outputs that alternate
// between buffers (relocated at the first capture: captured once), a capture that fails
// (the step-by-step fallback), and an evaluation launched while the one before it runs.
#include <stdlib.h>
#include <string.h>
#include "backend/cuda/cuda_backend.h"
#include "check.h"
#include "fixtures.h"

// t (lazy, made in the caller's scope) realized on the GPU, as a reference of the caller's.
static wk_tensor *on_gpu(wk_tensor *t) {
  wk_tensor *d = wk_keep(wk_to_device(t, WK_CUDA));
  if (d && wk_eval(1, &d)) { wk_tensor_free(d); d = NULL; }
  return d;
}

// Values scale * N(0, 1) of dtype dt on the GPU (the graph that made them goes with the scope).
static wk_tensor *rnd_as(wk_dtype dt, int nd, const int64_t *shape, float scale, uint64_t seed) {
  wk_scope_begin();
  wk_tensor *v = wk_mul_scalar(wk_randn(nd, shape, WK_F32, seed), scale);
  wk_tensor *d = on_gpu(dt == WK_F32 ? v : wk_cast(v, dt));
  wk_scope_end();
  return d;
}
static wk_tensor *rnd(int nd, const int64_t *shape, float scale, uint64_t seed) {
  return rnd_as(WK_F32, nd, shape, scale, seed);
}

// Token ids i32 [rows, cols] on the GPU.
static wk_tensor *ids_gpu(int64_t rows, int64_t cols, const int32_t *data) {
  wk_scope_begin();
  wk_tensor *d = on_gpu(wk_from_data(2, (int64_t[]){rows, cols}, WK_I32, data));
  wk_scope_end();
  return d;
}

static bool same_bits(wk_tensor *a, wk_tensor *b) {
  if (!a || !b || wk_numel(a) != wk_numel(b)) return false;
  float *x = read_all(a), *y = read_all(b);
  bool eq = x && y && !memcmp(x, y, sizeof(float) * (size_t)wk_numel(a));
  free(x);
  free(y);
  return eq;
}

static wk_cuda_graph_stats stats(void) {
  wk_cuda_graph_stats s;
  wk_cuda_graph_stats_get(&s);
  return s;
}

// ---- many steps in one plan: each call's output is the next call's input ----
#define CALLS 12
static wk_tensor *chain(int kind, wk_tensor *x, wk_tensor *const *w, float scale) {
  wk_scope_begin();
  wk_tensor *y = x;
  for (int i = 0; i < CALLS; i++) {
    float s = i == 0 ? scale : 1.0f;  // one call's scalar changes between evaluations
    if (kind == 0 || kind == 3) y = wk_lora(y, w[0], w[1], w[2], s);
    // row ops on alternating axes: each call is its own kernel (consecutive row ops
    // on the same rows would fuse into one row-chain kernel, leaving nothing to replay)
    else if (kind == 1) y = wk_softmax(wk_transpose(wk_mul_scalar(y, s), 1, 2), -1);
    else y = wk_rms_norm(wk_transpose(wk_add_scalar(y, s), 1, 2), NULL, 1e-5f);
  }
  if (kind == 3) y = wk_tanh(y);   // one LoRA chain launch (lora.cu), then a step: a run of two
  wk_tensor *out = wk_keep(y);
  wk_scope_end();
  return out;
}

// Evaluates the chain `evals` times (new output buffers each time, a scalar that
// changes on some evaluations) into out[].
static void run_chains(int kind, wk_tensor *x, wk_tensor *const *w, int evals, wk_tensor **out) {
  for (int e = 0; e < evals; e++) {
    float scale = e % 3 == 2 ? 0.5f : 1.0f + 0.25f * (float)(e & 1);
    out[e] = chain(kind, x, w, scale);
    CHECK(out[e] && wk_eval(1, &out[e]) == WK_OK, "chain %d eval %d", kind, e);
  }
}

static void test_chains(void) {
  wk_tensor *x = rnd(3, (int64_t[]){1, 1, 512}, 1.0f, 1);
  wk_tensor *w[3] = {rnd(2, (int64_t[]){512, 512}, 0.044f, 2), rnd(2, (int64_t[]){512, 8}, 0.044f, 3),
                     rnd(2, (int64_t[]){8, 512}, 0.1f, 4)};
  wk_tensor *rows = rnd(3, (int64_t[]){4, 16, 512}, 1.0f, 6);
  wk_tensor *x2 = rnd(3, (int64_t[]){1, 1, 1024}, 1.0f, 8);   // kind 3: 1024-wide, one chain kernel
  wk_tensor *w2[3] = {rnd(2, (int64_t[]){1024, 1024}, 0.05f, 9), rnd(2, (int64_t[]){1024, 8}, 0.031f, 10),
                      rnd(2, (int64_t[]){8, 1024}, 0.1f, 11)};
  enum { EVALS = 7 };
  for (int kind = 0; kind < 4; kind++) {
    wk_tensor *ref[EVALS], *got[EVALS];
    wk_tensor *in = kind == 0 ? x : kind == 3 ? x2 : rows, *const *win = kind == 3 ? w2 : w;
    wk_cuda_set_graphs(0);
    run_chains(kind, in, win, EVALS, ref);
    wk_cuda_set_graphs(1);
    wk_cuda_graph_always_patch(1);  // whether patching pays depends on timings; here it must run
    wk_cuda_graph_stats s0 = stats();
    run_chains(kind, in, win, EVALS, got);
    wk_cuda_graph_stats s1 = stats();
    wk_cuda_graph_always_patch(0);
    int same = 0;
    for (int e = 0; e < EVALS; e++) same += same_bits(ref[e], got[e]);
    CHECK(same == EVALS, "chain %d: %d of %d evaluations equal bit for bit with and without replay", kind, same, EVALS);
    CHECK(s1.captures > s0.captures && s1.replays >= s0.replays + EVALS - 2,
          "chain %d: captured and replayed (captures %llu, replays %llu, patched %llu)", kind,
          s1.captures - s0.captures, s1.replays - s0.replays, s1.patched - s0.patched);
    CHECK(s1.patched > s0.patched && s1.patched - s0.patched < (unsigned long long)(EVALS * CALLS / 2),
          "chain %d: new scalars and output pointers re-capture only the steps that use them (patched %llu)", kind,
          s1.patched - s0.patched);
    for (int e = 0; e < EVALS; e++) { wk_tensor_free(ref[e]); wk_tensor_free(got[e]); }
  }
  wk_tensor_free(x);
  wk_tensor_free(x2);
  wk_tensor_free(rows);
  for (int k = 0; k < 3; k++) wk_tensor_free(w[k]), wk_tensor_free(w2[k]);
}

// ---- PDL: a run captured as one graph; a kernel starts before the one it follows ends ----
// Chained LoRA calls, and decode-style bf16 GEMVs (RMSNorm in, residual added): replay
// gives the bits of step-by-step launches, and the kernels that stream a weight were
// captured as programmatic dependents. A weight computed inside the plan is written by
// one of its steps, so no kernel may read it before its wait: none is launched that way.
#define PDL_CALLS 10   // not CALLS: test_chains' LoRA plan, cached with child-graph variants, is another
static wk_tensor *pdl_chain(int kind, wk_tensor *x, wk_tensor *const *w) {
  wk_scope_begin();
  wk_tensor *y = x, *W = kind == 2 ? wk_mul_scalar(w[0], 0.5f) : w[0];
  for (int i = 0; i < PDL_CALLS; i++)
    y = kind == 1 ? wk_add(y, wk_matmul_t(wk_rms_norm(y, wk_cast(w[3], WK_F32), 1e-5f), 0, w[4], 1))
                  : wk_lora(y, W, w[1], w[2], 1.0f);
  wk_tensor *out = wk_keep(y);
  wk_scope_end();
  return out;
}

void wkc_lora_test_chain(int on);   // lora.cu: 1 on, 0 off, -1 the environment's

static void test_pdl(void) {
  wkc_lora_test_chain(0);   // LoRA calls one by one: a chain would be one launch (lora.cu)
  const char *env = getenv("WICK_CUDA_PDL");
  const bool on = !env || atoi(env);
  wk_tensor *x = rnd(3, (int64_t[]){1, 1, 512}, 1.0f, 41);
  wk_tensor *w[5] = {rnd(2, (int64_t[]){512, 512}, 0.044f, 42), rnd(2, (int64_t[]){512, 8}, 0.044f, 43),
                     rnd(2, (int64_t[]){8, 512}, 0.1f, 44), rnd_as(WK_BF16, 1, (int64_t[]){512}, 0.1f, 45),
                     rnd_as(WK_BF16, 2, (int64_t[]){512, 512}, 0.03f, 46)};
  // kind 3: 2048-wide LoRA, the cluster kernel (lora.cu k_lora_rows), whose W tiles
  // outlast the loads issued before the wait
  wk_tensor *x2 = rnd(3, (int64_t[]){1, 1, 2048}, 1.0f, 47);
  wk_tensor *w2[3] = {rnd(2, (int64_t[]){2048, 2048}, 0.022f, 48), rnd(2, (int64_t[]){2048, 8}, 0.022f, 49),
                      rnd(2, (int64_t[]){8, 2048}, 0.1f, 50)};
  enum { EVALS = 4 };
  for (int kind = 0; kind < 4; kind++) {
    wk_tensor *ref[EVALS], *got[EVALS];
    wk_tensor *xin = kind == 3 ? x2 : x, *const *win = kind == 3 ? w2 : w;
    wk_cuda_set_graphs(0);
    for (int e = 0; e < EVALS; e++) {
      ref[e] = pdl_chain(kind, xin, win);
      CHECK(wk_eval(1, &ref[e]) == WK_OK, "pdl chain %d: reference %d", kind, e);
    }
    wk_cuda_set_graphs(1);
    wk_cuda_graph_stats s0 = stats();
    for (int e = 0; e < EVALS; e++) {
      got[e] = pdl_chain(kind, xin, win);
      CHECK(wk_eval(1, &got[e]) == WK_OK, "pdl chain %d: eval %d", kind, e);
    }
    wk_cuda_graph_stats s1 = stats();
    int same = 0;
    for (int e = 0; e < EVALS; e++) same += same_bits(ref[e], got[e]);
    CHECK(same == EVALS, "pdl chain %d: %d of %d evaluations equal bit for bit with and without replay", kind, same, EVALS);
    const unsigned long long pdl = s1.pdl - s0.pdl;
    CHECK(s1.replays > s0.replays && (kind == 2 || !on ? pdl == 0 : pdl >= PDL_CALLS - 1),
          "pdl chain %d: replayed (%llu), %llu kernels captured as programmatic dependents", kind,
          s1.replays - s0.replays, pdl);
    for (int e = 0; e < EVALS; e++) { wk_tensor_free(ref[e]); wk_tensor_free(got[e]); }
  }
  wk_tensor_free(x);
  wk_tensor_free(x2);
  for (int k = 0; k < 5; k++) wk_tensor_free(w[k]);
  for (int k = 0; k < 3; k++) wk_tensor_free(w2[k]);
  wkc_lora_test_chain(-1);
}

// ---- a plan with a host step in the middle: two replayed runs around it ----
static wk_tensor *split_plan(wk_tensor *x) {
  wk_scope_begin();
  wk_tensor *a = wk_softmax(wk_tanh(wk_mul_scalar(x, 2.0f)), -1);
  a = wk_add_scalar(wk_exp(a), 1.0f);
  wk_tensor *h = wk_sqrt(wk_to_device(a, WK_CPU));  // computed by the CPU backend
  wk_tensor *b = wk_to_device(h, WK_CUDA);
  b = wk_softmax(wk_mul(wk_rms_norm(b, NULL, 1e-5f), x), -1);
  wk_tensor *out = wk_keep(wk_sum(wk_mul_scalar(b, 3.0f), 1, (int[]){-1}, 0));
  wk_scope_end();
  return out;
}

static void test_split(void) {
  wk_tensor *x = rnd(2, (int64_t[]){64, 256}, 1.0f, 7);
  enum { EVALS = 4 };
  wk_tensor *ref[EVALS], *got[EVALS];
  for (int on = 0; on < 2; on++) {
    wk_cuda_set_graphs(on);
    for (int e = 0; e < EVALS; e++) {
      wk_tensor **o = on ? &got[e] : &ref[e];
      *o = split_plan(x);
      CHECK(*o && wk_eval(1, o) == WK_OK, "split plan eval %d", e);
    }
  }
  int same = 0;
  for (int e = 0; e < EVALS; e++) same += same_bits(ref[e], got[e]);
  CHECK(same == EVALS, "plan with a host step: %d of %d evaluations equal bit for bit", same, EVALS);
  for (int e = 0; e < EVALS; e++) { wk_tensor_free(ref[e]); wk_tensor_free(got[e]); }
  wk_tensor_free(x);
}

// ---- LoRA training on the tiny Qwen2 with AdamW: losses and parameters ----
// As the trainer does: gradients and loss, the global gradient norm read back for
// clipping, then the AdamW update with a warmup-cosine learning rate. The learning
// rate, the bias corrections and the clip factor change every step; they are
// elementwise scalars that a captured graph reads from device memory. The
// parameters, gradients and moments get new blocks every step (they drift through
// the allocator's cache without recurring), so the second step's capture sees them
// move and relocates them (graph.cu): the first step runs step by step, the next
// two capture, and from the fourth step on each of the three plans is one graph
// launch with nothing re-captured.
enum { TSTEPS = 8, TPLANS = 3, TSTEADY = 3 };
#define TCLIP 1e-3f   // below every step's gradient norm: each step is clipped
typedef struct {
  float loss[TSTEPS], lr[TSTEPS];
  double norm[TSTEPS];
  wk_cuda_graph_stats step[TSTEPS];   // counters of each step (differences)
  int n;
  wk_tensor **params;  // after the last step (references)
} trained;

static wk_cuda_graph_stats stats_since(wk_cuda_graph_stats a) {
  wk_cuda_graph_stats b = stats();
  b.captures -= a.captures, b.replays -= a.replays, b.patched -= a.patched, b.direct -= a.direct;
  b.fallbacks -= a.fallbacks;
  return b;
}

static trained train(void) {
  trained r = {.n = 0};
  wk_model *m = wk_model_load(fixture_in("models", "qwen2"));
  wk_adapter *a = NULL;
  if (m && !wk_model_to_device(m, WK_CUDA)) a = wk_adapter_load(m, fixture_in("lora", "all"));
  if (a) wk_model_use_adapter(m, a);
  CHECK(a != NULL, "tiny Qwen2 with its adapter on CUDA");
  if (!a) { wk_model_free(m); return r; }
  int32_t idv[2 * 12], labv[2 * 12];
  for (int i = 0; i < 24; i++) idv[i] = (i * 37 + 11) % 256, labv[i] = i % 12 < 3 ? -100 : (i * 53 + 7) % 256;
  wk_tensor *ids = ids_gpu(2, 12, idv), *labels = ids_gpu(2, 12, labv);
  r.n = wk_adapter_params(a, NULL);
  wk_tensor **p = calloc((size_t)r.n, sizeof *p), **g = calloc((size_t)r.n, sizeof *g), **next = calloc((size_t)r.n, sizeof *next);
  wk_optim_config oc = wk_adamw_defaults();
  oc.weight_decay = 0.01f;
  wk_adapter_params(a, p);
  wk_optim *opt = wk_optim_new(&oc, r.n, p);
  wk_schedule sch = {.kind = WK_SCHED_WARMUP_COSINE, .lr = 1e-2f, .min_lr = 1e-3f, .warmup = 2, .total = TSTEPS};
  for (int s = 0; s < TSTEPS; s++) {
    wk_cuda_graph_stats s0 = stats();
    wk_adapter_params(a, p);
    wk_scope_begin();
    CHECK(wk_value_and_grad(wk_causal_lm_loss(m, ids, labels), r.n, p, g, &r.loss[s]) == WK_OK, "step %d gradients", s);
    r.norm[s] = wk_global_norm(r.n, g);
    r.lr[s] = wk_schedule_lr(&sch, s);
    CHECK(wk_optim_step(opt, p, g, r.lr[s], wk_clip_coef(r.norm[s], TCLIP), next) == WK_OK, "step %d AdamW", s);
    for (int i = 0; i < r.n; i++) {
      wk_adapter_set_param(a, i, next[i]);
      wk_tensor_free(next[i]);
    }
    wk_scope_end();
    r.step[s] = stats_since(s0);
  }
  wk_adapter_params(a, p);
  for (int i = 0; i < r.n; i++) p[i] = wk_tensor_ref(p[i]);
  r.params = p;
  free(g);
  free(next);
  wk_optim_free(opt);
  wk_tensor_free(ids);
  wk_tensor_free(labels);
  wk_adapter_free(a);
  wk_model_free(m);
  return r;
}

static void test_train(void) {
  wk_cuda_set_graphs(0);
  trained ref = train();
  wk_cuda_set_graphs(1);
  trained got = train();
  if (!ref.params || !got.params) return;
  CHECK(!memcmp(ref.loss, got.loss, sizeof ref.loss), "training losses equal bit for bit (step %d: %.9g vs %.9g)",
        TSTEPS, (double)ref.loss[TSTEPS - 1], (double)got.loss[TSTEPS - 1]);
  CHECK(!memcmp(ref.norm, got.norm, sizeof ref.norm), "gradient norms equal bit for bit (step %d: %.9g vs %.9g)",
        TSTEPS, ref.norm[TSTEPS - 1], got.norm[TSTEPS - 1]);
  int same = 0, clipped = 0, lrs = 0;
  for (int i = 0; i < ref.n; i++) same += same_bits(ref.params[i], got.params[i]);
  CHECK(same == ref.n, "adapter parameters after %d AdamW steps: %d of %d equal bit for bit", TSTEPS, same, ref.n);
  for (int s = 0; s < TSTEPS; s++) {
    clipped += got.norm[s] > TCLIP;
    lrs += s == 0 || got.lr[s] != got.lr[s - 1];
    const wk_cuda_graph_stats *c = &got.step[s];
    printf("training step %d: lr %.6g, grad norm %.6g, loss %.7g; captures %llu, replays %llu, patched units %llu, "
           "step-by-step runs %llu\n", s, (double)got.lr[s], got.norm[s], (double)got.loss[s], c->captures, c->replays,
           c->patched, c->direct);
    if (s >= TSTEADY)
      CHECK(c->replays == TPLANS && !c->captures && !c->patched && !c->direct && !c->fallbacks,
            "training step %d: its %d plans are %d graph launches, nothing re-captured (replays %llu, captures %llu, "
            "patched %llu, step-by-step %llu)", s, TPLANS, TPLANS, c->replays, c->captures, c->patched, c->direct);
  }
  CHECK(clipped == TSTEPS && lrs == TSTEPS, "every step clipped (%d of %d) with its own learning rate (%d)", clipped,
        TSTEPS, lrs);
  for (int i = 0; i < ref.n; i++) { wk_tensor_free(ref.params[i]); wk_tensor_free(got.params[i]); }
  free(ref.params);
  free(got.params);
}

// ---- a model forward (the decode path's plan shape) ----
static void test_forward(void) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  CHECK(m && !wk_model_to_device(m, WK_CUDA), "tiny Llama on CUDA");
  if (!m) return;
  int32_t idv[5] = {1, 17, 42, 99, 7};
  wk_tensor *ids = ids_gpu(1, 5, idv);
  enum { EVALS = 4 };
  wk_tensor *ref[EVALS], *got[EVALS];
  wk_cuda_graph_stats s0 = stats();
  for (int on = 0; on < 2; on++) {
    wk_cuda_set_graphs(on);
    if (on) s0 = stats();
    for (int e = 0; e < EVALS; e++) {
      wk_tensor **o = on ? &got[e] : &ref[e];
      *o = wk_model_forward(m, ids, 0);
      CHECK(*o && wk_eval(1, o) == WK_OK, "forward %d", e);
    }
  }
  wk_cuda_graph_stats s1 = stats();
  int same = 0;
  for (int e = 0; e < EVALS; e++) same += same_bits(ref[e], got[e]);
  CHECK(same == EVALS, "model forward: %d of %d evaluations equal bit for bit", same, EVALS);
  CHECK(s1.replays - s0.replays >= EVALS - 2, "model forward replayed as one graph (%llu replays)", s1.replays - s0.replays);
  for (int e = 0; e < EVALS; e++) { wk_tensor_free(ref[e]); wk_tensor_free(got[e]); }
  wk_tensor_free(ids);
  wk_model_free(m);
}

// ---- decode steps with the KV cache: each step after the first few is one graph launch ----
enum { PREFILL = 4, DECODE = 10 };
// As the generator does: host ids in, each step's logits read back and released
// (so the next step's logits take the same block and the graph replays as it is).
static void decode(wk_model *m, float **logits, unsigned long long *replays, unsigned long long *direct) {
  wk_kv_cache *c = wk_kv_cache_new(m);
  wk_kv_cache_set_max_context(c, 64);
  int32_t prompt[PREFILL] = {1, 17, 42, 99};
  for (int t = 0; t <= DECODE; t++) {
    if (t == DECODE - 3) { wk_cuda_graph_stats s = stats(); *replays = s.replays; *direct = s.direct; }
    int32_t id = (int32_t)((t * 37 + 5) % 200);
    wk_tensor *ids = t ? wk_from_data(2, (int64_t[]){1, 1}, WK_I32, &id) : wk_from_data(2, (int64_t[]){1, PREFILL}, WK_I32, prompt);
    wk_tensor *lg = wk_model_forward_cached(m, ids, c);
    logits[t] = lg ? read_all(lg) : NULL;
    CHECK(logits[t] != NULL, "decode step %d", t);
    wk_tensor_free(lg);
    wk_tensor_free(ids);
  }
  wk_cuda_graph_stats s = stats();
  *replays = s.replays - *replays;
  *direct = s.direct - *direct;
  wk_kv_cache_free(c);
}

static void test_decode(void) {
  wk_model *m = wk_model_load(fixture_in("models", "llama"));
  CHECK(m && !wk_model_to_device(m, WK_CUDA), "tiny Llama on CUDA");
  if (!m) return;
  float *ref[DECODE + 1], *got[DECODE + 1];
  unsigned long long r0, d0, r1, d1;
  wk_cuda_set_graphs(0);
  decode(m, ref, &r0, &d0);
  wk_cuda_set_graphs(1);
  decode(m, got, &r1, &d1);
  int same = 0;
  for (int t = 0; t <= DECODE; t++) // logits [1, T, 256]: T = PREFILL for the prefill, then 1
    same += ref[t] && got[t] && !memcmp(ref[t], got[t], sizeof(float) * (size_t)(t ? 1 : PREFILL) * 256);
  CHECK(same == DECODE + 1, "prefill and %d decode steps: %d of %d logits equal bit for bit", DECODE, same, DECODE + 1);
  CHECK(r1 == 4 && d1 == 0, "the last 4 decode steps ran as 4 graph launches (%llu launches, %llu step-by-step runs)", r1, d1);
  for (int t = 0; t <= DECODE; t++) { free(ref[t]); free(got[t]); }
  wk_model_free(m);
}

// ---- transfers inside a plan (compile_schedule.c): a small upload moves ahead of the kernels,
// where the graph's head does it (no copy node between kernels); a download moves
// after the device steps that do not read it, so they stay in one graph. The upload's
// values change every evaluation. ----
#define TN 96
static void transfers_plan(wk_tensor *x, const float *bias, wk_tensor **host_y, wk_tensor **z) {
  wk_scope_begin();
  wk_tensor *h = wk_softmax(wk_mul_scalar(x, 0.5f), -1);   // a kernel before the upload in the walk's order
  wk_tensor *y = wk_add(h, wk_to_device(wk_from_data(1, (int64_t[]){TN}, WK_F32, bias), WK_CUDA));
  *host_y = wk_keep(wk_to_device(y, WK_CPU));
  // two device steps after the download (row ops on different axes: two kernels)
  *z = wk_keep(wk_softmax(wk_transpose(wk_rms_norm(y, NULL, 1e-5f), 0, 1), -1));
  wk_scope_end();
}

static void test_transfers(void) {
  enum { EVALS = 4 };
  wk_tensor *x = rnd(2, (int64_t[]){TN, TN}, 1.0f, 21), *ref[EVALS][2], *got[EVALS][2];
  float bias[EVALS][TN];
  for (int e = 0; e < EVALS; e++)
    for (int i = 0; i < TN; i++) bias[e][i] = 0.01f * (float)((i * 7 + e * 13) % 29) - 0.1f * (float)e;
  wk_cuda_graph_stats s0 = {0}, s1 = {0};
  for (int pass = 0; pass < 2; pass++) {
    wk_cuda_set_graphs(pass);
    if (pass) s0 = stats();
    for (int e = 0; e < EVALS; e++) {
      wk_tensor **o = pass ? got[e] : ref[e];
      transfers_plan(x, bias[e], &o[0], &o[1]);
      CHECK(o[0] && o[1] && wk_eval(2, o) == WK_OK, "transfers plan, eval %d (graphs %s)", e, pass ? "on" : "off");
    }
    if (pass) s1 = stats();
  }
  int same = 0;
  for (int e = 0; e < EVALS; e++) same += same_bits(ref[e][0], got[e][0]) && same_bits(ref[e][1], got[e][1]);
  CHECK(same == EVALS, "transfers: %d of %d evaluations equal bit for bit with and without graphs", same, EVALS);
  CHECK(s1.replays - s0.replays == EVALS - 1 && s1.copied == s0.copied && s1.folded > s0.folded,
        "transfers: one graph launch an evaluation after the first (%llu launches for %d), the upload in the head "
        "(%llu in heads, %llu copy nodes)", s1.replays - s0.replays, EVALS, s1.folded - s0.folded, s1.copied - s0.copied);
  for (int e = 0; e < EVALS; e++)
    for (int k = 0; k < 2; k++) { wk_tensor_free(ref[e][k]); wk_tensor_free(got[e][k]); }
  wk_tensor_free(x);
}

// ---- launched ahead (eval.c): an asynchronous evaluation of the same plan, queued
// while a long one runs (8 GEMMs of 2048^3, some 3 ms), is launched behind it at once;
// both give what synchronous evaluations give, their downloads included ----
static void ahead_plan(wk_tensor *x, wk_tensor *w, wk_tensor **out) {
  wk_scope_begin();
  wk_tensor *h = x;
  for (int i = 0; i < 8; i++) h = wk_tanh(wk_matmul(h, w));
  out[0] = wk_keep(h);
  out[1] = wk_keep(wk_to_device(wk_slice(h, 0, 5, 9, 1), WK_CPU));   // rows 5..8 on the host
  wk_scope_end();
}

static void test_launch_ahead(void) {
  const int64_t n = 2048;
  wk_tensor *w = rnd(2, (int64_t[]){n, n}, 0.03f, 31), *x[2] = {rnd(2, (int64_t[]){n, n}, 1.0f, 32),
                                                                   rnd(2, (int64_t[]){n, n}, 1.0f, 33)};
  wk_tensor *ref[2][2], *got[2][2];
  for (int i = 0; i < 2; i++) {
    ahead_plan(x[i], w, ref[i]);
    CHECK(wk_eval(2, ref[i]) == WK_OK, "launch ahead: reference %d", i);
  }
  wk_eval_stats e0, e1;
  wk_last_eval_stats(&e0);
  for (int i = 0; i < 2; i++) {
    ahead_plan(x[i], w, got[i]);
    CHECK(wk_eval_async(2, got[i]) == WK_OK, "launch ahead: asynchronous evaluation %d", i);
  }
  CHECK(wk_sync() == WK_OK, "launch ahead: sync: %s", wk_last_error());
  wk_last_eval_stats(&e1);
  CHECK(e1.bound_ahead - e0.bound_ahead == 1 && e1.launched_ahead - e0.launched_ahead == 1,
        "launch ahead: the second evaluation bound (%llu) and launched (%llu) while the first ran",
        (unsigned long long)(e1.bound_ahead - e0.bound_ahead), (unsigned long long)(e1.launched_ahead - e0.launched_ahead));
  int same = 0;
  for (int i = 0; i < 2; i++) same += same_bits(ref[i][0], got[i][0]) + same_bits(ref[i][1], got[i][1]);
  CHECK(same == 4, "launch ahead: %d of 4 results (device and downloaded) equal the synchronous ones bit for bit", same);
  for (int i = 0; i < 2; i++)
    for (int k = 0; k < 2; k++) { wk_tensor_free(ref[i][k]); wk_tensor_free(got[i][k]); }
  wk_tensor_free(w), wk_tensor_free(x[0]), wk_tensor_free(x[1]);
}

// ---- outputs that alternate between buffers (as a decode step fed ahead): each
// evaluation reads the one before's output and writes new ones while the old stay
// alive. The first capture relocates what moved since the first evaluation, so every
// later evaluation replays it: one capture in all. y is written before it is read
// (no copy in needed); x moves and is only read. ----
static void pingpong_plan(wk_tensor *x, wk_tensor **y, wk_tensor **z) {
  wk_scope_begin();
  *y = wk_keep(wk_softmax(wk_mul_scalar(x, 0.9f), -1));
  *z = wk_keep(wk_rms_norm(wk_transpose(wk_add_scalar(*y, 0.25f), 0, 1), NULL, 1e-5f));
  wk_scope_end();
}

static void test_pingpong(void) {
  enum { EVALS = 6 };
  wk_tensor *x0 = rnd(2, (int64_t[]){48, 48}, 1.0f, 41), *out[2][EVALS][2];
  wk_cuda_graph_stats s0 = {0}, s1 = {0};
  for (int on = 0; on < 2; on++) {
    wk_cuda_set_graphs(on);
    if (on) s0 = stats();
    for (int e = 0; e < EVALS; e++) {
      wk_tensor **o = out[on][e];
      pingpong_plan(e ? out[on][e - 1][1] : x0, &o[0], &o[1]);
      CHECK(o[0] && o[1] && wk_eval(2, o) == WK_OK, "ping-pong eval %d (graphs %s)", e, on ? "on" : "off");
    }
    if (on) s1 = stats();
  }
  int same = 0;
  for (int e = 0; e < EVALS; e++) same += same_bits(out[0][e][0], out[1][e][0]) && same_bits(out[0][e][1], out[1][e][1]);
  CHECK(same == EVALS, "ping-pong: %d of %d evaluations equal bit for bit with and without graphs", same, EVALS);
  CHECK(s1.captures - s0.captures == 1 && s1.replays - s0.replays == EVALS - 1 && s1.direct - s0.direct == 1,
        "ping-pong: captured once, at the second evaluation (captures %llu, launches %llu, step by step %llu)",
        s1.captures - s0.captures, s1.replays - s0.replays, s1.direct - s0.direct);
  for (int on = 0; on < 2; on++)
    for (int e = 0; e < EVALS; e++) wk_tensor_free(out[on][e][0]), wk_tensor_free(out[on][e][1]);
  wk_tensor_free(x0);
}

// ---- a capture that fails: the run launches step by step, results unchanged ----
static wk_tensor *fallback_plan(wk_tensor *x, wk_tensor *w) {
  wk_scope_begin();
  wk_tensor *y = wk_keep(wk_softmax(wk_matmul(wk_softmax(wk_mul_scalar(x, 0.7f), -1), w), -1));
  wk_scope_end();
  return y;
}

static void test_fallback(void) {
  wk_tensor *x = rnd(2, (int64_t[]){32, 128}, 1.0f, 9), *w = rnd(2, (int64_t[]){128, 128}, 0.1f, 10);
  wk_tensor *ref = NULL, *got[3] = {NULL, NULL, NULL};
  wk_cuda_set_graphs(0);
  ref = fallback_plan(x, w);
  CHECK(wk_eval(1, &ref) == WK_OK, "reference");
  wk_cuda_set_graphs(1);
  wk_cuda_graph_stats s0 = stats();
  wk_cuda_graph_fail_next_capture();
  for (int e = 0; e < 3; e++) {
    got[e] = fallback_plan(x, w);
    CHECK(wk_eval(1, &got[e]) == WK_OK, "eval %d after a failed capture", e);
    CHECK(same_bits(ref, got[e]), "eval %d after a failed capture equals the step-by-step result", e);
  }
  wk_cuda_graph_stats s1 = stats();
  CHECK(s1.fallbacks == s0.fallbacks + 1 && s1.replays == s0.replays, "the failed capture fell back (fallbacks %llu)",
        s1.fallbacks - s0.fallbacks);
  wk_tensor_free(ref);
  for (int e = 0; e < 3; e++) wk_tensor_free(got[e]);
  wk_tensor_free(x);
  wk_tensor_free(w);
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  test_chains();
  test_pdl();
  test_split();
  test_train();
  test_forward();
  test_decode();
  test_transfers();
  test_pingpong();
  test_launch_ahead();
  test_fallback();
  return check_report();
}
