// The ops behind a preallocated KV cache, against values computed here on the host:
// set_slice writes a block in place at a run-time position (f32, f16, bf16, q8_0
// destinations; a strided source; out-of-range positions fail; the plan is reused
// when only the position changes); sdpa_kv attends to the first kv_len keys only
// (NaN rows past the length are never read) and equals sdpa over those keys; f16 and
// q8_0 keys stay within their rounding of f32; rope_at equals rope at that offset;
// softmax and sdpa over rows of huge negative finite scores give a proper softmax.
#include <float.h>
#include <string.h>
#include "check.h"
#include "fixtures.h"

static wk_tensor *i32(int32_t v) { return wk_from_data(1, (int64_t[]){1}, WK_I32, &v); }

static uint64_t compiles(void) {
  wk_eval_stats st;
  wk_last_eval_stats(&st);
  return st.plans_compiled;
}

// dst [2, 3, 8, 4] f32; src [2, 3, 2, 4] as a transposed view; rows 5 and 6 replaced.
static void test_set_slice_f32(void) {
  wk_scope_begin();
  float *d0 = test_randv(2 * 3 * 8 * 4, 1), *s0 = test_randv(2 * 2 * 3 * 4, 2);
  wk_tensor *dst = wk_from_data(4, (int64_t[]){2, 3, 8, 4}, WK_F32, d0);
  wk_tensor *src = wk_transpose(wk_from_data(4, (int64_t[]){2, 2, 3, 4}, WK_F32, s0), 1, 2);   // [2, 3, 2, 4]
  wk_tensor *r = wk_set_slice(dst, src, 2, i32(5));
  CHECK(r && wk_eval(1, &r) == WK_OK, "set_slice f32");
  const float *got = wk_tensor_data(dst);   // the destination itself was updated
  int bad = 0;
  for (int b = 0; b < 2; b++)
    for (int h = 0; h < 3; h++)
      for (int s = 0; s < 8; s++)
        for (int d = 0; d < 4; d++) {
          float want = s == 5 || s == 6 ? s0[((b * 2 + (s - 5)) * 3 + h) * 4 + d] : d0[((b * 3 + h) * 8 + s) * 4 + d];
          bad += got[((b * 3 + h) * 8 + s) * 4 + d] != want;
        }
  CHECK(got && !bad, "set_slice wrote %d wrong values", bad);
  CHECK(r && wk_tensor_data(r) == got, "the result is dst's storage");
  // the same graph at another position: no new plan
  uint64_t before = compiles();
  wk_tensor *r2 = wk_set_slice(dst, src, 2, i32(0));
  CHECK(r2 && wk_eval(1, &r2) == WK_OK && compiles() == before && got[0] == s0[0], "another position reuses the plan");
  wk_tensor *r3 = wk_set_slice(dst, src, 2, i32(7));   // rows 7, 8 of 8
  CHECK(r3 && wk_eval(1, &r3) != WK_OK && strstr(wk_last_error(), "[7, 9)") && strstr(wk_last_error(), "8"),
        "a position past the end fails naming it");
  CHECK(!wk_set_slice(src, src, 2, i32(0)) && strstr(wk_last_error(), "evaluated and contiguous"), "pending dst refused");
  CHECK(!wk_set_slice(dst, wk_zeros(4, (int64_t[]){2, 3, 9, 4}, WK_F32), 2, i32(0)) && strstr(wk_last_error(), "fit"),
        "too many rows refused");
  free(d0);
  free(s0);
  wk_scope_end();
}

// f16 / bf16 destinations round what they store; q8_0 stores blocks of 32 along the
// last axis: each value within half a step (d / 2, d = max|x| / 127) of the original.
static void test_set_slice_types(void) {
  wk_scope_begin();
  float *s0 = test_randv(2 * 64, 3);
  wk_tensor *src = wk_from_data(4, (int64_t[]){1, 2, 1, 64}, WK_F32, s0);
  const wk_dtype dts[2] = {WK_F16, WK_BF16};
  for (int k = 0; k < 2; k++) {
    wk_tensor *dst = wk_keep(wk_cast(wk_zeros(4, (int64_t[]){1, 2, 4, 64}, WK_F32), dts[k]));
    wk_eval(1, &dst);
    wk_tensor *r = wk_set_slice(dst, src, 2, i32(2));
    float *got = r && !wk_eval(1, &r) ? read_all(wk_cast(dst, WK_F32)) : NULL;
    float *want = read_all(wk_cast(wk_cast(src, dts[k]), WK_F32));
    float diff = 0;
    for (int h = 0; got && want && h < 2; h++)
      for (int d = 0; d < 64; d++) diff = fmaxf(diff, fabsf(got[(h * 4 + 2) * 64 + d] - want[h * 64 + d]) + fabsf(got[h * 4 * 64 + d]));
    CHECK(got && want && diff == 0, "%s destination: off by %g", wk_dtype_name(dts[k]), (double)diff);
    free(got);
    free(want);
    wk_tensor_free(dst);
  }
  // q8_0: 8 positions of [1, 2, 8, 64], zeroed blocks (d = 0) then one row written
  size_t bytes = (size_t)(2 * 8 * 2) * 34;
  unsigned char *blocks = calloc(1, bytes);
  wk_tensor *q = wk_from_data(4, (int64_t[]){1, 2, 8, 64}, WK_Q8_0, blocks);
  wk_tensor *r = wk_set_slice(q, src, 2, i32(3));
  float *got = r && !wk_eval(1, &r) ? read_all(wk_cast(q, WK_F32)) : NULL;
  float worst = 0;
  for (int h = 0; got && h < 2; h++)
    for (int blk = 0; blk < 2; blk++) {
      const float *x = s0 + h * 64 + blk * 32;
      float amax = 0;
      for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
      for (int i = 0; i < 32; i++) {
        float e = fabsf(got[(h * 8 + 3) * 64 + blk * 32 + i] - x[i]) / (amax / 127.0f);
        worst = fmaxf(worst, e);
      }
    }
  // half a step, plus the f16 rounding of d (2^-11 relative, times up to 127 steps)
  CHECK(got && worst <= 0.5f + 127.0f / 2048.0f, "q8_0 destination: %g steps off", (double)worst);
  CHECK(got && got[0] == 0 && got[(1 * 8 + 7) * 64 + 63] == 0, "q8_0: other rows untouched");
  CHECK(!wk_set_slice(q, wk_zeros(4, (int64_t[]){1, 2, 8, 32}, WK_F32), 3, i32(0)) && strstr(wk_last_error(), "q8_0"),
        "q8_0 written along its block axis refused");
  free(got);
  free(blocks);
  free(s0);
  wk_scope_end();
}

// q [1, 4, 3, 16] (T = 3) against a 20-position cache holding 9: the same as sdpa
// over keys [0, 9), causal at the end; positions 9.. hold NaN and must not be read.
static void test_sdpa_kv(void) {
  wk_scope_begin();
  const int64_t S = 20, L = 9, D = 16;
  float *qv = test_randv(4 * 3 * D, 4), *kv = test_randv(2 * S * D, 5), *vv = test_randv(2 * S * D, 6);
  for (int h = 0; h < 2; h++)
    for (int64_t s = L; s < S; s++)
      for (int64_t d = 0; d < D; d++) kv[(h * S + s) * D + d] = vv[(h * S + s) * D + d] = NAN;
  wk_tensor *q = wk_from_data(4, (int64_t[]){1, 4, 3, D}, WK_F32, qv);
  wk_tensor *k = wk_from_data(4, (int64_t[]){1, 2, S, D}, WK_F32, kv), *v = wk_from_data(4, (int64_t[]){1, 2, S, D}, WK_F32, vv);
  float padm[20];
  for (int s = 0; s < 20; s++) padm[s] = s < 2 ? -INFINITY : 0.0f;   // left padding of 2
  wk_tensor *mask = wk_from_data(4, (int64_t[]){1, 1, 1, S}, WK_F32, padm);
  wk_tensor *ks = wk_contiguous(wk_slice(k, 2, 0, L, 1)), *vs = wk_contiguous(wk_slice(v, 2, 0, L, 1));
  wk_tensor *ms = wk_contiguous(wk_slice(mask, 3, 0, L, 1));
  for (int masked = 0; masked < 2; masked++) {
    float *want = read_all(wk_sdpa(q, ks, vs, masked ? ms : NULL, 1, 0));
    float *got = read_all(wk_sdpa_kv(q, k, v, masked ? mask : NULL, i32((int32_t)L), 1, 0));
    // 1e-6: the same sums over the same keys
    CHECK(got && want && max_abs_diff(got, want, 4 * 3 * D) < 1e-6f, "sdpa_kv%s: max diff %g", masked ? " (mask)" : "",
          (double)max_abs_diff(got, want, 4 * 3 * D));
    free(want);
    free(got);
  }
  // f16 and q8_0 storage: within their rounding of the f32 result (rows past L set to 0 first)
  for (int h = 0; h < 2; h++)
    for (int64_t s = L; s < S; s++)
      for (int64_t d = 0; d < D; d++) kv[(h * S + s) * D + d] = vv[(h * S + s) * D + d] = 0;
  float *want = read_all(wk_sdpa(q, ks, vs, NULL, 1, 0));
  wk_tensor *k16 = wk_keep(wk_cast(k, WK_F16)), *v16 = wk_keep(wk_cast(v, WK_F16));
  wk_eval(1, &k16);
  wk_eval(1, &v16);
  float *got = read_all(wk_sdpa_kv(q, k16, v16, NULL, i32((int32_t)L), 1, 0));
  // f16 keeps 11 bits: scores of |q.k| <= D/4 move by ~1e-3 at most, outputs of size 1 likewise
  CHECK(got && want && max_abs_diff(got, want, 4 * 3 * D) < 2e-3f, "f16 keys: max diff %g", (double)max_abs_diff(got, want, 4 * 3 * D));
  free(got);
  wk_tensor_free(k16);
  wk_tensor_free(v16);
  CHECK(!wk_sdpa_kv(q, k, v, NULL, wk_zeros(1, (int64_t[]){2}, WK_I32), 1, 0) && strstr(wk_last_error(), "kv_len"),
        "kv_len of two values refused");
  wk_tensor *bad = wk_sdpa_kv(q, k, v, NULL, i32(21), 1, 0);
  CHECK(bad && wk_eval(1, &bad) != WK_OK && strstr(wk_last_error(), "21"), "kv_len past the capacity fails naming it");
  free(want);
  free(qv);
  free(kv);
  free(vv);
  wk_scope_end();
}

// q8_0 keys and values (D = 64: two blocks a row) through set_slice, against f32.
static void test_sdpa_q8_0(void) {
  wk_scope_begin();
  const int64_t S = 16, L = 11, D = 64;
  float *qv = test_randv(2 * D, 7), *kv = test_randv(S * D, 8), *vv = test_randv(S * D, 9);
  wk_tensor *q = wk_from_data(4, (int64_t[]){1, 2, 1, D}, WK_F32, qv);
  wk_tensor *k = wk_from_data(4, (int64_t[]){1, 1, S, D}, WK_F32, kv), *v = wk_from_data(4, (int64_t[]){1, 1, S, D}, WK_F32, vv);
  unsigned char *z = calloc(1, (size_t)(S * D / 32 * 34));
  wk_tensor *kq = wk_from_data(4, (int64_t[]){1, 1, S, D}, WK_Q8_0, z), *vq = wk_from_data(4, (int64_t[]){1, 1, S, D}, WK_Q8_0, z);
  wk_tensor *w[2] = {wk_set_slice(kq, k, 2, i32(0)), wk_set_slice(vq, v, 2, i32(0))};
  CHECK(wk_eval(2, w) == WK_OK, "q8_0 cache written");
  float *want = read_all(wk_sdpa_kv(q, k, v, NULL, i32((int32_t)L), 1, 0));
  float *got = read_all(wk_sdpa_kv(q, kq, vq, NULL, i32((int32_t)L), 1, 0));
  // q8_0 rounds each value by up to max|x| / 254 ~ 4e-3 (|x| < 1): scores q.k of 64
  // terms move by ~4e-3 * sum|q| / sqrt(D) ~ 2e-2 at worst, outputs (means of v) by less
  float diff = got && want ? max_abs_diff(got, want, 2 * D) : -1;
  CHECK(got && want && diff < 2e-2f && diff > 0, "q8_0 keys and values: max diff %g", (double)diff);
  free(got);
  free(want);
  free(z);
  free(qv);
  free(kv);
  free(vv);
  wk_scope_end();
}

static void test_rope_at(void) {
  wk_scope_begin();
  float *xv = test_randv(2 * 3 * 8, 10);
  wk_tensor *x = wk_from_data(3, (int64_t[]){2, 3, 8}, WK_F32, xv);
  for (int inter = 0; inter < 2; inter++) {
    float *want = read_all(wk_rope(x, 10000.0f, 7, inter)), *got = read_all(wk_rope_at(x, 10000.0f, i32(7), inter));
    CHECK(got && want && max_abs_diff(got, want, 48) == 0, "rope_at(7) == rope offset 7 (interleaved %d)", inter);
    free(want);
    free(got);
  }
  CHECK(!wk_rope_at(x, 10000.0f, wk_zeros(1, (int64_t[]){1}, WK_F32), 0) && strstr(wk_last_error(), "i32"), "f32 pos refused");
  free(xv);
  wk_scope_end();
}

// Scores of -FLT_MAX (HF's masked value) and near it: a softmax over them, not NaN.
static void test_huge_negative(void) {
  wk_scope_begin();
  // two rows: all -FLT_MAX (uniform), and one larger score among them (all its mass)
  float row[10] = {-FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -FLT_MAX, -3.0e38f};
  float want[10] = {0.2f, 0.2f, 0.2f, 0.2f, 0.2f, 0, 0, 0, 0, 1};
  float *got = read_all(wk_softmax(wk_from_data(2, (int64_t[]){2, 5}, WK_F32, row), -1));
  CHECK(got && max_abs_diff(got, want, 10) < 1e-6f, "softmax of -FLT_MAX scores: %g %g ... %g", got ? (double)got[0] : 0.0,
        got ? (double)got[5] : 0.0, got ? (double)got[9] : 0.0);
  free(got);
  // attention whose every key carries a -FLT_MAX mask: the scores become equal, so the
  // output is the mean of v (torch gives the same for a finfo.min mask)
  float qv[8] = {1, 0, 0, 0, 0, 1, 0, 0}, kv[12], vv[12], m[3] = {-FLT_MAX, -FLT_MAX, -FLT_MAX}, mean[4] = {0};
  for (int i = 0; i < 12; i++) { kv[i] = (float)(i % 5) * 0.25f; vv[i] = (float)i; }
  for (int s = 0; s < 3; s++) for (int d = 0; d < 4; d++) mean[d] += vv[s * 4 + d] / 3.0f;
  wk_tensor *q = wk_from_data(4, (int64_t[]){1, 1, 2, 4}, WK_F32, qv);
  wk_tensor *k = wk_from_data(4, (int64_t[]){1, 1, 3, 4}, WK_F32, kv), *v = wk_from_data(4, (int64_t[]){1, 1, 3, 4}, WK_F32, vv);
  float *o = read_all(wk_sdpa(q, k, v, wk_from_data(1, (int64_t[]){3}, WK_F32, m), 0, 0));
  CHECK(o && max_abs_diff(o, mean, 4) < 1e-5f && max_abs_diff(o + 4, mean, 4) < 1e-5f, "sdpa under a -FLT_MAX mask: %g %g %g %g",
        o ? (double)o[0] : 0.0, o ? (double)o[1] : 0.0, o ? (double)o[2] : 0.0, o ? (double)o[3] : 0.0);
  free(o);
  wk_scope_end();
}

int main(void) {
  test_set_slice_f32();
  test_set_slice_types();
  test_sdpa_kv();
  test_sdpa_q8_0();
  test_rope_at();
  test_huge_negative();
  return check_report();
}
