// Optimizer steps on CUDA, where the planner runs the per-parameter updates of one
// program as one launch over all parameters (compile_schedule.c's horizontal_schedule, ew.cu's
// wkc_ew_group): AdamW and SGD with momentum over many parameters of odd sizes, with
// a new learning rate every step (the run-time scalars of each member, also inside
// a replayed CUDA graph) and a device clip factor, against the CPU backend (1e-6
// relative: the same f32 formulas, FMA contraction may differ) and bit for bit
// against the same update evaluated one parameter at a time on CUDA (no group).
#include <string.h>
#include "check.h"
#include "engine/plan.h"
#include "backend/cuda/cuda_backend.h"

#define NP 40

static int64_t sizes[NP][2];

static wk_tensor *on(wk_tensor *t, wk_device d) {
  wk_tensor *r = d == WK_CPU ? wk_tensor_ref(t) : wk_keep(wk_to_device(t, d));
  if (r && wk_eval(1, &r)) { wk_tensor_free(r); return NULL; }
  return r;
}


static bool identical(wk_tensor *a, wk_tensor *b) {
  float *x = read_all(a), *y = read_all(b);
  bool same = x && y && wk_numel(a) == wk_numel(b) && !memcmp(x, y, sizeof(float) * (size_t)wk_numel(a));
  free(x), free(y);
  return same;
}

// Groups in the last plan: how many, and their members in all.
static int groups(int *members) {
  const wk_plan *p = wk_last_plan();
  int g = 0;
  *members = 0;
  for (int k = 0; p && k < p->nsteps; k++)
    if (p->steps[k].op == WK_STEP_FUSED_EW && p->steps[k].chain > 0) { g++; *members += p->steps[k].chain; }
  return g;
}

typedef struct {
  wk_device dev;
  wk_tensor *p[NP];
  wk_optim *o;
} side;

static void side_init(side *s, wk_device dev, const wk_optim_config *oc, wk_tensor *const *init) {
  s->dev = dev;
  for (int i = 0; i < NP; i++) s->p[i] = on(init[i], dev);
  s->o = wk_optim_new(oc, NP, s->p);
}
static void side_free(side *s) {
  for (int i = 0; i < NP; i++) wk_tensor_free(s->p[i]);
  wk_optim_free(s->o);
}

// One step on every side: grads g (CPU tensors), a 0-d clip factor on each device.
// single: evaluate the update of each parameter on its own (one plan per parameter).
static wk_status step(side *s, wk_tensor *const *g, float lr, float clip, bool single) {
  wk_tensor *gd[NP], *all[NP * 3], *next[NP];
  int per = wk_optim_state_count(s->o) / NP, total = NP * (1 + per);
  for (int i = 0; i < NP; i++) gd[i] = on(g[i], s->dev);
  wk_tensor *c0 = wk_full(0, NULL, WK_F32, clip), *c = on(c0, s->dev);
  wk_tensor_free(c0);
  wk_status st = wk_optim_prepare(s->o, s->p, gd, lr, 0.5f, c, all);
  if (!st && !single) st = wk_eval(total, all);
  for (int i = 0; !st && single && i < NP; i++) {
    wk_tensor *one[3] = {all[i]};
    for (int k = 0; k < per; k++) one[1 + k] = all[NP + i * per + k];
    st = wk_eval(1 + per, one);
  }
  if (!st) {
    wk_optim_commit(s->o, all, next);
    for (int i = 0; i < NP; i++) { wk_tensor_free(s->p[i]); s->p[i] = next[i]; }
  } else {
    for (int i = 0; i < total; i++) wk_tensor_free(all[i]);
  }
  for (int i = 0; i < NP; i++) wk_tensor_free(gd[i]);
  wk_tensor_free(c);
  return st;
}

static void run(const char *name, wk_optim_config oc, int expect_groups) {
  wk_tensor *init[NP];
  for (int i = 0; i < NP; i++) init[i] = wk_keep(wk_randn(2, sizes[i], WK_F32, 100 + (uint64_t)i));
  CHECK(!wk_eval(NP, init), "%s: parameters", name);
  side cpu, gpu, one;
  side_init(&cpu, WK_CPU, &oc, init);
  side_init(&gpu, WK_CUDA, &oc, init);
  side_init(&one, WK_CUDA, &oc, init);
  CHECK(cpu.o && gpu.o && one.o, "%s: optimizers", name);
  wk_cuda_graph_stats g0, g1;
  wk_cuda_graph_stats_get(&g0);
  for (int t = 0; t < 6 && cpu.o && gpu.o && one.o; t++) {
    wk_tensor *g[NP];
    for (int i = 0; i < NP; i++) g[i] = wk_keep(wk_randn(2, sizes[i], WK_F32, 1000 + (uint64_t)(t * NP + i)));
    wk_eval(NP, g);
    float lr = 1e-2f / (float)(t + 1), clip = 1.0f - 0.1f * (float)t;
    CHECK(!step(&cpu, g, lr, clip, false), "%s step %d: CPU", name, t);
    CHECK(!step(&gpu, g, lr, clip, false), "%s step %d: CUDA", name, t);
    int members = 0, ng = groups(&members);
    // every update but those of one-element parameters (never grouped), in a handful of launches
    int single = 0;
    for (int i = 0; i < NP; i++) single += sizes[i][0] * sizes[i][1] == 1;
    CHECK(ng >= expect_groups && ng <= 2 * expect_groups && members >= expect_groups * (NP - single),
          "%s step %d: %d groups of %d members in all (want %d to %d groups, at least %d members)", name, t, ng, members,
          expect_groups, 2 * expect_groups, expect_groups * (NP - single));
    if (t == 0) printf("%s: %d parameters, the update in %d groups of %d steps in all\n", name, NP, ng, members);
    CHECK(!step(&one, g, lr, clip, true), "%s step %d: CUDA, one parameter at a time", name, t);
    float worst = 0;
    bool same = true;
    for (int i = 0; i < NP; i++) {
      worst = fmaxf(worst, max_rel_diff(gpu.p[i], cpu.p[i]));
      same = same && identical(gpu.p[i], one.p[i]);
    }
    for (int k = 0; k < wk_optim_state_count(gpu.o); k++) {
      worst = fmaxf(worst, max_rel_diff(wk_optim_state(gpu.o, k, NULL), wk_optim_state(cpu.o, k, NULL)));
      same = same && identical(wk_optim_state(gpu.o, k, NULL), wk_optim_state(one.o, k, NULL));
    }
    CHECK(worst <= 1e-6f, "%s step %d: parameters and state %g relative to the CPU", name, t, (double)worst);
    CHECK(same, "%s step %d: grouped and one-at-a-time CUDA updates are bit-identical", name, t);
    for (int i = 0; i < NP; i++) wk_tensor_free(g[i]);
  }
  wk_cuda_graph_stats_get(&g1);
  CHECK(g1.replays > g0.replays, "%s: the step replayed as a CUDA graph (%llu replays)", name,
        (unsigned long long)(g1.replays - g0.replays));
  side_free(&cpu), side_free(&gpu), side_free(&one);
  for (int i = 0; i < NP; i++) wk_tensor_free(init[i]);
}

int main(void) {
  SKIP_WITHOUT_CUDA();
  // LoRA-like shapes (r x K, N x r), odd sizes, two single elements (0 and 3), and
  // one past the group kernel's solo threshold (it runs on its own inside the group)
  for (int i = 0; i < NP; i++) {
    sizes[i][0] = i % 2 ? 8 + i : 1 + i % 7;
    sizes[i][1] = 1 + (i * 37) % 300;
  }
  sizes[3][0] = 1, sizes[3][1] = 1;
  sizes[7][0] = 2048, sizes[7][1] = 2049;
  wk_optim_config adam = wk_adamw_defaults();
  adam.weight_decay = 0.1f;
  run("AdamW", adam, 4);   // programs: the scaled gradient (read by both moments), the moments, the parameter
  wk_optim_config sgd = wk_sgd_defaults();
  sgd.weight_decay = 0.01f;
  run("SGD momentum", sgd, 2);
  return check_report();
}
