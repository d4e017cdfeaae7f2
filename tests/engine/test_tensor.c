// Tensor lifetime, scopes, data access and user-error handling.
#include <string.h>
#include "check.h"

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

int main(void) {
  test_failed_eval();
  test_lifetime();
  test_data_access();
  test_errors();
  return check_report();
}
