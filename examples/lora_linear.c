// Demo: fit a LoRA adapter on a frozen linear layer.
//
// A frozen W[64,64] must learn to act like W + dW, where dW is an unknown
// rank-4 update. We train A[64,8], B[8,64] (B starts at zero, as in peft) with
// AdamW on random batches and watch the loss fall. Every step is one lazy graph:
// forward, MSE loss, gradients and the optimizer update, evaluated together (the
// LoRA pattern runs fused; the step's plan is compiled once and reused).
#include <math.h>
#include <stdio.h>
#include "wick.h"

#define D 64
#define R 8
#define BATCH 32
#define SH(...) (int64_t[]){__VA_ARGS__}

// One AdamW update of p (lr, betas 0.9 / 0.999, eps 1e-8, weight decay 0).
static wk_tensor *adamw(wk_tensor *p, wk_tensor *g, wk_tensor **m, wk_tensor **v, int t, float lr) {
  wk_tensor *m2 = wk_add(wk_mul_scalar(*m, 0.9f), wk_mul_scalar(g, 0.1f));
  wk_tensor *v2 = wk_add(wk_mul_scalar(*v, 0.999f), wk_mul_scalar(wk_square(g), 0.001f));
  float c1 = 1 / (1 - powf(0.9f, (float)t)), c2 = 1 / (1 - powf(0.999f, (float)t));
  wk_tensor *step = wk_div(wk_mul_scalar(m2, c1), wk_add_scalar(wk_sqrt(wk_mul_scalar(v2, c2)), 1e-8f));
  *m = m2;
  *v = v2;
  return wk_sub(p, wk_mul_scalar(step, lr));
}

static wk_tensor *realize(wk_tensor *t) { wk_eval(1, &t); return wk_keep(t); }

int main(void) {
  wk_tensor *W = realize(wk_mul_scalar(wk_randn(2, SH(D, D), WK_F32, 1), 0.125f));
  wk_tensor *dW = realize(wk_matmul(wk_randn(2, SH(D, 4), WK_F32, 2), wk_mul_scalar(wk_randn(2, SH(4, D), WK_F32, 3), 0.1f)));
  // peft init: A Kaiming-uniform-like, B zero, so the adapter starts as a no-op
  wk_tensor *A = realize(wk_rand(2, SH(D, R), WK_F32, -0.125, 0.125, 4));
  wk_tensor *B = realize(wk_zeros(2, SH(R, D), WK_F32));
  wk_tensor *mA = realize(wk_zeros(2, SH(D, R), WK_F32)), *vA = realize(wk_zeros(2, SH(D, R), WK_F32));
  wk_tensor *mB = realize(wk_zeros(2, SH(R, D), WK_F32)), *vB = realize(wk_zeros(2, SH(R, D), WK_F32));
  const float scale = 16.0f / R; // alpha / r
  printf("LoRA demo: learn a rank-4 update of a frozen %dx%d layer with a rank-%d adapter\n", D, D, R);
  float first = 0, last = 0;
  for (int step = 1; step <= 300; step++) {
    wk_scope_begin();
    wk_set_trainable(A, 1);
    wk_set_trainable(B, 1);
    wk_tensor *x = wk_randn(2, SH(BATCH, D), WK_F32, 1000 + (uint64_t)step);
    wk_tensor *target = wk_matmul(x, wk_add(W, dW));
    wk_tensor *y = wk_lora(x, W, A, B, scale);
    wk_tensor *loss = wk_mean(wk_square(wk_sub(y, target)), 0, NULL, 0);
    wk_tensor *g[2];
    if (wk_grad(loss, 2, (wk_tensor *[]){A, B}, g)) { fprintf(stderr, "grad: %s\n", wk_last_error()); return 1; }
    wk_tensor *mA2 = mA, *vA2 = vA, *mB2 = mB, *vB2 = vB;
    wk_tensor *A2 = adamw(A, g[0], &mA2, &vA2, step, 1e-2f);
    wk_tensor *B2 = adamw(B, g[1], &mB2, &vB2, step, 1e-2f);
    wk_tensor *all[7] = {loss, A2, B2, mA2, vA2, mB2, vB2};
    if (wk_eval(7, all)) { fprintf(stderr, "eval: %s\n", wk_last_error()); return 1; }
    float l = wk_item(loss);
    if (step == 1) first = l;
    last = l;
    if (step == 1 || step % 25 == 0) printf("step %3d  loss %.6f\n", step, l);
    wk_tensor *keep[6] = {A2, B2, mA2, vA2, mB2, vB2}, **dst[6] = {&A, &B, &mA, &vA, &mB, &vB};
    for (int k = 0; k < 6; k++) { wk_tensor_free(*dst[k]); *dst[k] = wk_keep(keep[k]); }
    wk_scope_end(); // releases x, the graph, the gradients and the old state
  }
  wk_eval_stats st;
  wk_last_eval_stats(&st);
  printf("loss %.6f -> %.6f (%.0fx lower); one step = %d graph nodes in %d kernels, %zu B of intermediates "
         "(%zu B unplanned); %llu plans compiled for 300 steps\n",
         first, last, first / last, st.graph_nodes, st.steps, st.arena_bytes, st.unplanned_bytes,
         (unsigned long long)st.plans_compiled);
  wk_tensor *all[9] = {W, dW, A, B, mA, vA, mB, vB, NULL};
  for (int k = 0; all[k]; k++) wk_tensor_free(all[k]);
  return last < first / 10 ? 0 : 1;
}
