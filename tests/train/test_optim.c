// Optimizers and schedules against torch and transformers on recorded sequences
// (tests/fixtures/lora/optim.json from tools/gen_lora_fixtures.py), gradient clipping,
// and bad hyper-parameters.
#include <string.h>
#include "check.h"
#include "fixtures.h"
#include "io/file.h"
#include "io/json.h"

static float *floats(const wk_json *arr, int64_t *n) {
  *n = (int64_t)wk_json_len(arr);
  float *v = malloc(sizeof(float) * (size_t)(*n ? *n : 1));
  for (int64_t i = 0; v && i < *n; i++) v[i] = (float)wk_json_num(wk_json_at(arr, (size_t)i), NAN);
  return v;
}

static wk_tensor *tensor_of(const wk_json *arr) {
  int64_t n;
  float *v = floats(arr, &n);
  wk_tensor *t = wk_from_data(1, &n, WK_F32, v);
  free(v);
  return t;
}

// Replays torch's steps: the parameters after each one within 1e-6 (f32 rounding of
// the same arithmetic, values of order 1).
static void replay(const wk_json *rec, wk_optim_config oc, const char *what) {
  wk_tensor *p = tensor_of(wk_json_get(rec, "init"));
  wk_optim *o = wk_optim_new(&oc, 1, &p);
  const wk_json *grads = wk_json_get(rec, "grads"), *after = wk_json_get(rec, "after");
  CHECK(o && wk_json_len(grads) == 5, "%s: setup", what);
  for (size_t k = 0; o && k < wk_json_len(grads); k++) {
    wk_tensor *g = tensor_of(wk_json_at(grads, k)), *next = NULL;
    CHECK(wk_optim_step(o, &p, &g, -1, 1.0f, &next) == WK_OK, "%s: step %zu", what, k);
    int64_t n;
    float *want = floats(wk_json_at(after, k), &n), *got = next ? read_all(next) : NULL;
    float d = max_abs_diff(got, want, n);
    CHECK(d <= 1e-6f, "%s: after step %zu the parameters differ from torch's by %g", what, k + 1, (double)d);
    free(want);
    free(got);
    wk_tensor_free(g);
    wk_tensor_free(p);
    p = next;
  }
  CHECK(wk_optim_steps(o) == 5, "%s: 5 steps counted", what);
  wk_optim_free(o);
  wk_tensor_free(p);
}

static void schedules(const wk_json *s) {
  int64_t steps = wk_json_int(wk_json_get(s, "steps"), 0), warm = wk_json_int(wk_json_get(s, "warmup"), 0);
  struct { const char *key; wk_schedule sch; } cases[] = {
      {"constant", {WK_SCHED_CONSTANT, 1.0f, 0, steps, 0}},
      {"linear", {WK_SCHED_LINEAR, 1.0f, 0, steps, 0}},
      {"linear_warmup", {WK_SCHED_LINEAR, 1.0f, warm, steps, 0}},
      {"cosine", {WK_SCHED_COSINE, 1.0f, 0, steps, 0}},
      {"warmup_cosine", {WK_SCHED_WARMUP_COSINE, 1.0f, warm, steps, 0}},
      {"warmup_cosine_min", {WK_SCHED_WARMUP_COSINE, 1.0f, warm, steps, 0.1f}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    const wk_json *want = wk_json_get(s, cases[c].key);
    CHECK((int64_t)wk_json_len(want) == steps, "schedule %s recorded", cases[c].key);
    double worst = 0;
    for (int64_t i = 0; i < steps; i++)
      worst = fmax(worst, fabs((double)wk_schedule_lr(&cases[c].sch, i) - wk_json_num(wk_json_at(want, (size_t)i), NAN)));
    CHECK(worst <= 1e-6, "schedule %s differs from transformers' by %g", cases[c].key, worst);
  }
  wk_schedule_kind k;
  CHECK(wk_schedule_parse("warmup-cosine", &k) == WK_OK && k == WK_SCHED_WARMUP_COSINE, "parse warmup-cosine");
  CHECK(wk_schedule_parse("cosine-ish", &k) != WK_OK && strstr(wk_last_error(), "cosine-ish"), "unknown schedule named");
}

static void clipping(void) {
  wk_tensor *a = wk_from_data(1, (int64_t[]){2}, WK_F32, (float[]){3, 0});
  wk_tensor *b = wk_from_data(1, (int64_t[]){1}, WK_F32, (float[]){4});
  double norm = wk_global_norm(2, (wk_tensor *[]){a, b});
  CHECK(fabs(norm - 5.0) < 1e-9, "global norm %g, expected 5", norm);
  CHECK(fabsf(wk_clip_coef(norm, 1.0f) - (float)(1.0 / (5.0 + 1e-6))) < 1e-7f, "clip coef (torch's 1e-6 guard)");
  CHECK(wk_clip_coef(norm, 10.0f) == 1.0f && wk_clip_coef(norm, 0) == 1.0f, "no clipping below the limit or when off");
  wk_tensor_free(a);
  wk_tensor_free(b);
}

static void bad_hparams(void) {
  wk_tensor *p = wk_zeros(1, (int64_t[]){3}, WK_F32);
  wk_optim_config c = wk_adamw_defaults();
  c.beta2 = 1.0f;
  CHECK(!wk_optim_new(&c, 1, &p) && strstr(wk_last_error(), "beta2"), "beta2 = 1 refused");
  c = wk_adamw_defaults();
  c.lr = -1;
  CHECK(!wk_optim_new(&c, 1, &p) && strstr(wk_last_error(), "learning rate"), "negative lr refused");
  c = wk_sgd_defaults();
  c.momentum = 1.5f;
  CHECK(!wk_optim_new(&c, 1, &p) && strstr(wk_last_error(), "momentum"), "momentum 1.5 refused");
  wk_tensor_free(p);
}

int main(void) {
  size_t len;
  char *text = wk_read_file(fixture_in("lora", "optim.json"), 1 << 20, &len);
  wk_json *j = text ? wk_json_parse(text, len, "optim.json", NULL) : NULL;
  CHECK(j != NULL, "read optim.json");
  if (j) {
    const wk_json *ad = wk_json_get(j, "adamw"), *hp = wk_json_get(ad, "hparams");
    wk_optim_config a = wk_adamw_defaults();
    a.lr = (float)wk_json_num(wk_json_get(hp, "lr"), 0);
    a.beta1 = (float)wk_json_num(wk_json_at(wk_json_get(hp, "betas"), 0), 0);
    a.beta2 = (float)wk_json_num(wk_json_at(wk_json_get(hp, "betas"), 1), 0);
    a.eps = (float)wk_json_num(wk_json_get(hp, "eps"), 0);
    a.weight_decay = (float)wk_json_num(wk_json_get(hp, "weight_decay"), 0);
    replay(ad, a, "AdamW");
    const wk_json *sg = wk_json_get(j, "sgd");
    hp = wk_json_get(sg, "hparams");
    wk_optim_config s = wk_sgd_defaults();
    s.lr = (float)wk_json_num(wk_json_get(hp, "lr"), 0);
    s.momentum = (float)wk_json_num(wk_json_get(hp, "momentum"), 0);
    s.weight_decay = (float)wk_json_num(wk_json_get(hp, "weight_decay"), 0);
    replay(sg, s, "SGD");
    schedules(wk_json_get(j, "schedules"));
  }
  clipping();
  bad_hparams();
  wk_json_free(j);
  free(text);
  return check_report();
}
