// Tensor lifetime, scopes, data access and user-error handling.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "check.h"
#include "engine/engine.h"

#define SHAPE(...) (int64_t[]){__VA_ARGS__}

static int released;
static void on_release(void *ctx) { released += *(int *)ctx; }

static void test_lifetime(void) {
  float data[4] = {1, 2, 3, 4};
  int one = 1;
  wk_tensor *ext = wk_from_external(1, SHAPE(4), WK_F32, data, on_release, &one);
  wk_tensor *view = wk_slice(ext, 0, 1, 3, 1);
  wk_tensor_free(ext);
  CHECK(released == 0, "a view keeps external memory alive");
  wk_scope_begin();
  CHECK(wk_item(wk_sum(view, 0, NULL, 0)) == 5.0f, "view of external data");
  wk_scope_end();
  wk_tensor_free(view);
  CHECK(released == 1, "external memory released with its last view");
  // scopes release what they made; wk_keep moves a tensor out
  wk_scope_begin();
  wk_tensor *a = wk_ones(1, SHAPE(3), WK_F32);
  wk_tensor *b = wk_keep(wk_add(a, a));
  wk_scope_end();
  wk_scope_begin();
  CHECK(wk_item(wk_sum(b, 0, NULL, 0)) == 6.0f, "kept tensor outlives its scope and its inputs' handles");
  wk_scope_end();
  wk_tensor_free(b);
  // a 100k-node chain builds, evaluates and frees without deep recursion
  wk_tensor *x = wk_zeros(1, SHAPE(2), WK_F32);
  for (int i = 0; i < 100000; i++) {
    wk_tensor *y = wk_add_scalar(x, 1.0f);
    wk_tensor_free(x);
    x = y;
  }
  const float *v = wk_tensor_data(x);
  CHECK(v && v[0] == 100000.0f, "100k-op chain: %g", v ? v[0] : -1.0);
  wk_tensor_free(x);
}

static void test_data_access(void) {
  wk_scope_begin();
  wk_tensor *x = wk_arange(0, 6, 1, WK_F32);
  wk_tensor *m = wk_reshape(x, 2, SHAPE(2, 3));
  wk_tensor *t = wk_transpose(m, 0, 1);
  const float *tv = wk_tensor_data(t);   // evaluates and makes the view contiguous
  CHECK(tv && tv[1] == 3.0f && tv[2] == 1.0f && wk_is_contiguous(t), "data of a transposed view");
  float out[6];
  CHECK(wk_tensor_read_f32(wk_cast(m, WK_BF16), out, 6) == WK_OK && out[5] == 5.0f, "read_f32 converts bf16");
  CHECK(wk_tensor_read_f32(m, out, 3) != WK_OK && strstr(wk_last_error(), "holds 3"), "short read rejected");
  CHECK(isnan(wk_item(m)) && strstr(wk_last_error(), "6 elements"), "item of a non-scalar");
  wk_tensor *dst = wk_zeros(2, SHAPE(2, 3), WK_F32);
  wk_eval(1, &dst);
  CHECK(wk_tensor_assign(dst, wk_mul_scalar(m, 2)) == WK_OK && ((const float *)wk_tensor_data(dst))[4] == 8.0f,
        "assign overwrites in place");
  CHECK(wk_tensor_assign(dst, x) != WK_OK && strstr(wk_last_error(), "[6]"), "assign shape mismatch named");
  char buf[64];
  CHECK(!strcmp(wk_shape_str(m, buf, sizeof buf), "f32[2,3]"), "shape_str: %s", buf);
  wk_scope_end();
}

static void test_errors(void) {
  // a message that quotes the last one (context added to a cause) reads it whole
  wk_error(WK_ERR_ARG, "the cause");
  wk_error(WK_ERR_ARG, "model m: %s", wk_last_error());
  CHECK(!strcmp(wk_last_error(), "model m: the cause"), "an error may quote wk_last_error() [%s]", wk_last_error());
  wk_scope_begin();
  wk_clear_error();
  CHECK(wk_add(NULL, NULL) == NULL, "NULL input propagates");
  wk_tensor *x = wk_ones(1, SHAPE(3), WK_F32);
  CHECK(wk_exp(wk_add(x, wk_ones(1, SHAPE(4), WK_F32))) == NULL && strstr(wk_last_error(), "[3]"),
        "the first failure's message survives the expression");
  CHECK(wk_from_data(9, SHAPE(1, 1, 1, 1, 1, 1, 1, 1, 1), WK_F32, NULL) == NULL, "more than 8 dims rejected");
  // a zero dim makes numel 0, but the strides of the other dims must still fit
  CHECK(wk_zeros(3, SHAPE(0, (int64_t)1 << 40, (int64_t)1 << 40), WK_F32) == NULL && strstr(wk_last_error(), "too large"),
        "shape whose strides overflow rejected");
  CHECK(wk_arange(0, 1, 0, WK_F32) == NULL && strstr(wk_last_error(), "arange"), "arange step 0");
  CHECK(wk_cast(x, (wk_dtype)42) == NULL && strstr(wk_last_error(), "dtype"), "unknown dtype");
  // out of memory is an error, not a crash: 2^42 floats
  wk_tensor *huge = wk_zeros(2, SHAPE(1 << 21, 1 << 21), WK_F32);
  CHECK(huge && wk_eval(1, &huge) != WK_OK && strstr(wk_last_error(), "out of memory"), "huge allocation fails cleanly");
  wk_scope_end();
  // devices: a CPU "transfer" is the same tensor; an absent device is a clear error
  wk_scope_begin();
  wk_tensor *h = wk_ones(1, SHAPE(3), WK_F32);
  CHECK(wk_to_device(h, WK_CPU) == h, "to_device on the same device");
  if (!wk_device_available(WK_CUDA)) {
    CHECK(wk_to_device(h, WK_CUDA) == NULL && strstr(wk_last_error(), "cuda"), "missing device named");
  }
  CHECK(!strcmp(wk_device_name(WK_CUDA), "cuda"), "device names");
  wk_scope_end();
#ifdef WICK_DEBUG
  wk_tensor *dead = wk_ones(1, SHAPE(2), WK_F32);
  wk_tensor_free(dead);
  CHECK(wk_exp(dead) == NULL && strstr(wk_last_error(), "freed"), "use after free is caught in debug builds");
  // the inspection calls too: a freed handle reads as nothing, with an error naming the call
  wk_clear_error();
  CHECK(wk_ndim(dead) == 0 && strstr(wk_last_error(), "ndim: tensor") && strstr(wk_last_error(), "freed"), "ndim of a freed tensor");
  CHECK(wk_shape(dead) == NULL && strstr(wk_last_error(), "shape: "), "shape of a freed tensor");
  CHECK(wk_numel(dead) == 0 && strstr(wk_last_error(), "numel: "), "numel of a freed tensor");
  CHECK(!wk_is_evaluated(dead) && strstr(wk_last_error(), "is_evaluated: "), "is_evaluated of a freed tensor");
  CHECK(!wk_is_contiguous(dead) && strstr(wk_last_error(), "is_contiguous: "), "is_contiguous of a freed tensor");
  CHECK(wk_tensor_ref(dead) == NULL && strstr(wk_last_error(), "tensor_ref: "), "ref of a freed tensor");
  CHECK(wk_keep(dead) == NULL && strstr(wk_last_error(), "keep: "), "keep of a freed tensor");
  char sb[32];
  CHECK(!strcmp(wk_shape_str(dead, sb, sizeof sb), "(freed)"), "shape_str of a freed tensor");
  wk_clear_error();
  CHECK(wk_ndim(NULL) == 0 && !wk_last_error()[0], "ndim of NULL is 0 without an error (a failed op's message stays)");
#endif
}

// An evaluation that fails in a kernel (an id past the table: found only when it runs)
// leaves its tensors failed, not holding garbage that reads as valid: evaluating or
// reading them again, or evaluating what uses them, returns the first error; the same
// after wk_eval_async, whose failure wk_sync reports.
static void test_failed_eval(void) {
  wk_scope_begin();
  float tab[4] = {1, 2, 3, 4};
  int32_t id = 7;
  wk_tensor *t = wk_from_data(2, (int64_t[]){2, 2}, WK_F32, tab), *i = wk_from_data(1, (int64_t[]){1}, WK_I32, &id);
  for (int async = 0; async < 2; async++) {
    wk_tensor *y = wk_add_scalar(wk_embedding(t, i), 1.0f);
    wk_status s = async ? wk_eval_async(1, &y) : wk_eval(1, &y);
    if (async) CHECK(s == WK_OK && wk_sync() != WK_OK, "async: wk_sync reports the failure");
    else CHECK(s != WK_OK && strstr(wk_last_error(), "id 7"), "the failing evaluation: %s", wk_last_error());
    CHECK(!wk_is_evaluated(y), "a failed tensor is not evaluated (async %d)", async);
    float o[2];
    CHECK(wk_tensor_read_f32(y, o, 2) != WK_OK && strstr(wk_last_error(), "failed") && strstr(wk_last_error(), "id 7"),
          "reading it again fails, naming the first error: %s", wk_last_error());
    CHECK(wk_eval(1, &y) != WK_OK, "evaluating it again fails");
    wk_tensor *z = wk_mul_scalar(y, 2.0f);
    CHECK(wk_eval(1, &z) != WK_OK && strstr(wk_last_error(), "an input comes from an evaluation that failed"),
          "what uses it fails: %s", wk_last_error());
    CHECK(wk_tensor_read_f32(z, o, 2) != WK_OK, "and reads as failed too");
  }
  wk_tensor *ok = wk_add_scalar(t, 1.0f);
  float o[4];
  CHECK(wk_tensor_read_f32(ok, o, 4) == WK_OK && o[3] == 5.0f, "the next evaluation is fine");
  wk_scope_end();
}

// Arguments the API sweep found crashing (NULL arrays, int64 overflow) or accepted with
// a wrong result: each is now an error naming it, or the documented value.
static void test_bad_arguments(void) {
  wk_scope_begin();
  wk_tensor *x = wk_ones(2, SHAPE(2, 3), WK_F32), *parts[2];
  float buf[6];
  CHECK(wk_eval(1, NULL) != WK_OK && wk_eval(-1, &x) != WK_OK, "wk_eval of NULL or -1 tensors");
  CHECK(wk_tensor_read_f32(x, NULL, 6) != WK_OK, "read into NULL");
  CHECK(!wk_sum(x, 1, NULL, 0) && !wk_sum(x, -1, (int[]){0}, 0) && !wk_sum(x, 2, (int[]){0, 0}, 0) &&
            strstr(wk_last_error(), "twice"),
        "reduction axes: NULL, -1 of them, one given twice: %s", wk_last_error());
  CHECK(!wk_permute(x, NULL), "permute NULL");
  CHECK(wk_split(x, 1, 2, SHAPE(4, -1), parts) != WK_OK && strstr(wk_last_error(), "part 0"), "split sizes 4, -1 of 3");
  CHECK(wk_split(x, 1, 2, NULL, NULL) != WK_OK, "split into NULL");
  CHECK(!wk_reshape(x, 3, SHAPE((int64_t)1 << 62, 4, 0)) && strstr(wk_last_error(), "too large"), "reshape overflow");
  wk_tensor *s = wk_slice(x, 1, 0, 3, INT64_MAX);
  CHECK(s && wk_shape(s)[1] == 1 && wk_item(wk_sum(s, 0, NULL, 0)) == 2.0f, "slice with step INT64_MAX: one column");
  CHECK(!wk_pad(x, SHAPE(0, 0), SHAPE(0, INT64_MAX), 0) && strstr(wk_last_error(), "too large"), "pad overflow");
  CHECK(!wk_rope(wk_ones(2, SHAPE(3, 4), WK_F32), 1e4f, INT64_MAX, 0), "rope offset INT64_MAX");
  CHECK(!wk_concat(2, (wk_tensor *[]){wk_scalar(1), wk_scalar(2)}, 0) && strstr(wk_last_error(), "0-d"), "concat of scalars");
  CHECK(!wk_concat(2, (wk_tensor *[]){x, wk_cast(x, WK_BF16)}, 0) && strstr(wk_last_error(), "bf16"), "concat dtypes named");
  wk_tensor *e = wk_expand_dims(x, -1);
  CHECK(e && wk_ndim(e) == 3 && wk_shape(e)[2] == 1 && !wk_expand_dims(x, -4), "expand_dims -1 appends; -4 of 2-d refused");
  wk_tensor *empty = wk_zeros(2, SHAPE(0, 3), WK_F32);
  CHECK(!wk_argmax(empty, 0, 0) && !wk_max(empty, 1, (int[]){0}, 0), "argmax and max over an empty axis");
  CHECK(wk_tensor_read_f32(wk_mean(empty, 1, (int[]){0}, 0), buf, 3) == WK_OK && isnan(buf[0]), "mean of none is NaN");
  CHECK(!wk_from_external(1, SHAPE(4), WK_F32, NULL, NULL, NULL) &&
            !wk_from_external(1, SHAPE(2), WK_F32, (char *)buf + 1, NULL, NULL),
        "from_external: NULL or misaligned data");
  CHECK(!wk_full(1, SHAPE(2), WK_I32, 1e20) && !wk_full(1, SHAPE(2), WK_I32, NAN) && !wk_full(1, SHAPE(2), WK_I32, 0.5),
        "full: i32 values it can't hold");
  CHECK(!wk_arange(2147483640.0, 2147483650.0, 1, WK_I32) && !wk_randn(1, SHAPE(3), WK_I32, 1), "arange past 2^24, randn i32");
  float big[3] = {1e10f, -1e10f, NAN};
  wk_tensor *ci = wk_cast(wk_from_data(1, SHAPE(3), WK_F32, big), WK_I32);
  const int32_t *cv = ci ? wk_tensor_data(ci) : NULL;
  CHECK(cv && cv[0] == INT32_MAX && cv[1] == INT32_MIN && cv[2] == 0, "cast to i32 saturates, NaN -> 0");
  float nv[3] = {NAN, 1, -2};
  wk_tensor *a = wk_from_data(1, SHAPE(3), WK_F32, nv), *one = wk_ones(1, SHAPE(3), WK_F32);
  float mx[3], mn[3], rl[3];
  CHECK(!wk_tensor_read_f32(wk_maximum(one, a), mx, 3) && !wk_tensor_read_f32(wk_minimum(a, one), mn, 3) &&
            !wk_tensor_read_f32(wk_relu(a), rl, 3) && isnan(mx[0]) && isnan(mn[0]) && isnan(rl[0]) && mx[1] == 1 &&
            mn[2] == -2 && rl[2] == 0,
        "maximum, minimum and relu keep a NaN");
  wk_tensor *w = wk_ones(1, SHAPE(3), WK_F32), *g[2];
  wk_set_trainable(w, 1);
  CHECK(wk_grad(wk_sum(w, 0, NULL, 0), 2, (wk_tensor *[]){w, w}, g) != WK_OK && strstr(wk_last_error(), "again"),
        "grad with one parameter twice");
  CHECK(wk_grad(wk_sum(w, 0, NULL, 0), 1, NULL, g) != WK_OK, "grad with NULL params");
  CHECK(!wk_zeros(2, NULL, WK_F32) && strstr(wk_last_error(), "NULL"), "a NULL shape is named: %s", wk_last_error());
  CHECK(!wk_lora(wk_ones(2, SHAPE(1, 4), WK_F32), wk_ones(2, SHAPE(4, 5), WK_F32), wk_ones(2, SHAPE(4, 2), WK_F32),
                 wk_ones(2, SHAPE(2, 6), WK_F32), 1.0f) && strstr(wk_last_error(), "lora: x f32[1,4], W f32[4,5]"),
        "LoRA shapes named as LoRA's: %s", wk_last_error());
  wk_scope_end();
}

int main(void) {
  test_failed_eval();
  test_bad_arguments();
  test_lifetime();
  test_data_access();
  test_errors();
  return check_report();
}
