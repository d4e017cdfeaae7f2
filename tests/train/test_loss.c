// The causal-LM loss with most labels ignored (prompt-completion data): the head then
// runs on the counted rows only (src/train/loss.c). Its loss and adapter gradients must
// equal those of the head over every row, built here from wk_model_forward and
// wk_cross_entropy, on the plain and the checkpointed backward; and with every label
// counted (the full path) too. Tiny random Qwen2 with peft's all-linear adapter.
#include <math.h>
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "wick/lora.h"
#include "wick/train.h"

enum { B = 2, T = 100 };

static float max_rel(wk_tensor *const *a, wk_tensor *const *b, int n) {
  float worst = 0, scale = 0;
  for (int i = 0; i < n; i++) {
    float *x = read_all(a[i]), *y = read_all(b[i]);
    for (int64_t k = 0; x && y && k < wk_numel(a[i]); k++) {
      scale = fmaxf(scale, fabsf(y[k]));
      worst = fmaxf(worst, fabsf(x[k] - y[k]));
    }
    if (!x || !y) worst = INFINITY;
    free(x), free(y);
  }
  return scale > 0 ? worst / scale : INFINITY;
}

// Loss over every row: logits of positions 0..T-2 against labels 1..T-1.
static wk_tensor *reference_loss(wk_model *m, wk_tensor *ids, wk_tensor *labels) {
  wk_tensor *logits = wk_model_forward(m, wk_slice(ids, 1, 0, T - 1, 1), 0);
  return wk_cross_entropy(logits, wk_contiguous(wk_slice(labels, 1, 1, T, 1)), WK_IGNORE_INDEX, 1);
}

static void compare(wk_model *m, wk_adapter *a, int counted_every, const char *what) {
  int32_t ids[B][T], lab[B][T];
  uint32_t x = 12345;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      x = x * 1664525u + 1013904223u;
      ids[b][t] = (int32_t)(x >> 24);  // the tiny vocabulary has 256 ids
      lab[b][t] = counted_every == 1 || t % counted_every == 1 ? ids[b][t] : WK_IGNORE_INDEX;
    }
  int n = wk_adapter_params(a, NULL);
  wk_tensor *p[64], *g0[64], *g1[64], *g2[64];
  CHECK(n > 0 && n <= 64, "%s: adapter parameters", what);
  wk_adapter_params(a, p);
  wk_scope_begin();
  int64_t sh[2] = {B, T};
  wk_tensor *ti = wk_from_data(2, sh, WK_I32, ids), *tl = wk_from_data(2, sh, WK_I32, lab);
  float l0 = NAN, l1 = NAN, l2 = NAN;
  CHECK(wk_value_and_grad(reference_loss(m, ti, tl), n, p, g0, &l0) == WK_OK, "%s: reference", what);
  CHECK(wk_value_and_grad(wk_causal_lm_loss(m, ti, tl), n, p, g1, &l1) == WK_OK, "%s: causal_lm_loss", what);
  CHECK(wk_causal_lm_value_and_grad_ckpt(m, ti, tl, n, p, g2, &l2) == WK_OK, "%s: checkpointed", what);
  CHECK(isfinite(l0) && fabsf(l1 - l0) <= 1e-5f * fabsf(l0) && fabsf(l2 - l0) <= 1e-5f * fabsf(l0),
        "%s: losses %.8g (plain) %.8g (checkpointed) vs %.8g over every row", what, (double)l1, (double)l2, (double)l0);
  float e1 = max_rel(g1, g0, n), e2 = max_rel(g2, g0, n);
  CHECK(e1 <= 1e-5f && e2 <= 1e-5f, "%s: adapter gradients off by %g (plain) and %g (checkpointed) of their scale",
        what, (double)e1, (double)e2);
  wk_scope_end();
}

int main(void) {
  wk_model *m = wk_model_load(fixture_in("models", "qwen2"));
  wk_adapter *a = m ? wk_adapter_load(m, fixture_in("lora", "all")) : NULL;
  CHECK(a != NULL, "load the tiny Qwen2 and its all-linear adapter: %s", wk_last_error());
  if (a) {
    wk_model_use_adapter(m, a);
    compare(m, a, 5, "1 label in 5 (counted rows only)");
    compare(m, a, 1, "every label (full head)");
    wk_adapter_free(a);
  }
  wk_model_free(m);
  return check_report();
}
