// GGUF reader and ggml block formats against fixtures written by gguf-py
// (tools/gen_gguf_fixtures.py), plus crafted and mutated hostile files.
// Tolerances: none. Dequantization repeats ggml's f32 arithmetic operation for operation
// (gguf-py's numpy code does the same), so every value must match bit for bit; the
// reference quantizers must produce the same bytes as gguf-py's.
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "io/gguf.h"
#include "io/quant.h"

static char fixdir[512];

// ---- expected values (expected.txt / expected.bin) ----
typedef struct { char file[64], tensor[64], kind[8]; int64_t count, offset; } expect;
static expect exps[64];
static int nexp;
static float *expvals;

static void fixture_path(char *out, size_t len, const char *name) { snprintf(out, len, "%s/%s", fixdir, name); }

static int load_expected(void) {
  char p[600];
  fixture_path(p, sizeof p, "expected.txt");
  FILE *f = fopen(p, "r");
  if (!f) return 0;
  while (nexp < 64 && fscanf(f, "%63s %63s %7s %lld %lld", exps[nexp].file, exps[nexp].tensor, exps[nexp].kind,
                             (long long *)&exps[nexp].count, (long long *)&exps[nexp].offset) == 5)
    nexp++;
  fclose(f);
  fixture_path(p, sizeof p, "expected.bin");
  f = fopen(p, "rb");
  if (!f) return 0;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  expvals = malloc((size_t)n + 4);
  size_t got = fread(expvals, 1, (size_t)n, f);
  fclose(f);
  return got == (size_t)n && nexp > 0;
}

static const expect *find_expect(const char *file, const char *tensor, const char *kind) {
  for (int i = 0; i < nexp; i++)
    if (!strcmp(exps[i].file, file) && !strcmp(exps[i].tensor, tensor) && !strcmp(exps[i].kind, kind)) return &exps[i];
  return NULL;
}

// Bitwise float comparison (so -0.0 vs 0.0 or a NaN payload would count as different).
static int64_t first_bit_diff(const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], 4)) return i;
  return -1;
}

static wk_gguf *open_fixture(const char *name) {
  char p[600];
  fixture_path(p, sizeof p, name);
  return wk_gguf_open(p);
}

// ---- metadata ----
static void test_metadata(void) {
  wk_gguf *f = open_fixture("all_types.gguf");
  CHECK(f != NULL, "open all_types.gguf");
  if (!f) return;
  CHECK(wk_gguf_version(f) == 3, "version %u", wk_gguf_version(f));
  CHECK(wk_gguf_alignment(f) == 32, "default alignment");
  CHECK(wk_gguf_kv_count(f) == 33, "kv count %lld", (long long)wk_gguf_kv_count(f));
  const char *s = NULL;
  CHECK(!wk_gguf_get_str(f, "general.architecture", &s) && s && !strcmp(s, "llama"), "architecture");
  uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
  float f32; double f64; int b;
  CHECK(!wk_gguf_get_u32(f, "llama.block_count", &u32) && u32 == 2, "llama.block_count");
  CHECK(!wk_gguf_get_u8(f, "test.u8", &u8) && u8 == 200, "u8");
  CHECK(!wk_gguf_get_i8(f, "test.i8", &i8) && i8 == -100, "i8");
  CHECK(!wk_gguf_get_u16(f, "test.u16", &u16) && u16 == 60000, "u16");
  CHECK(!wk_gguf_get_i16(f, "test.i16", &i16) && i16 == -30000, "i16");
  CHECK(!wk_gguf_get_u32(f, "test.u32", &u32) && u32 == 4000000000u, "u32");
  CHECK(!wk_gguf_get_i32(f, "test.i32", &i32) && i32 == -2000000000, "i32");
  CHECK(!wk_gguf_get_u64(f, "test.u64", &u64) && u64 == UINT64_MAX - 4, "u64");
  CHECK(!wk_gguf_get_i64(f, "test.i64", &i64) && i64 == -(INT64_C(1) << 62) - 7, "i64");
  CHECK(!wk_gguf_get_f32(f, "test.f32", &f32) && f32 == 0.15625f, "f32");
  CHECK(!wk_gguf_get_f64(f, "test.f64", &f64) && f64 == 2.718281828459045, "f64");
  CHECK(!wk_gguf_get_bool(f, "test.bool_true", &b) && b == 1, "bool true");
  CHECK(!wk_gguf_get_bool(f, "test.bool_false", &b) && b == 0, "bool false");
  CHECK(!wk_gguf_get_str(f, "test.string", &s) && !strcmp(s, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93"), "utf-8 string");
  CHECK(!wk_gguf_get_str(f, "test.empty_string", &s) && s[0] == 0, "empty string");
  // lenient integer / float forms
  CHECK(!wk_gguf_get_int(f, "test.i8", &i64) && i64 == -100, "get_int of i8");
  CHECK(!wk_gguf_get_int(f, "test.u32", &i64) && i64 == 4000000000, "get_int of u32");
  CHECK(wk_gguf_get_int(f, "test.u64", &i64) != 0 && strstr(wk_last_error(), "test.u64"), "u64 beyond int64");
  CHECK(!wk_gguf_get_float(f, "test.f32", &f64) && f64 == 0.15625, "get_float of f32");
  // errors name the key and both types
  CHECK(wk_gguf_get_u32(f, "test.u8", &u32) == WK_ERR_DTYPE && strstr(wk_last_error(), "'test.u8'") &&
        strstr(wk_last_error(), "is u8, expected u32") && strstr(wk_last_error(), "all_types.gguf"),
        "type mismatch message");
  CHECK(wk_gguf_get_str(f, "test.arr_str", &s) == WK_ERR_DTYPE && strstr(wk_last_error(), "array[string], expected string"),
        "array vs string message");
  CHECK(wk_gguf_get_u32(f, "no.such.key", &u32) == WK_ERR_ARG && strstr(wk_last_error(), "'no.such.key' not found"),
        "missing key message");
  CHECK(wk_gguf_find_key(f, "no.such.key") == -1 && wk_gguf_has_key(f, "test.u8"), "find_key / has_key");
  CHECK(wk_gguf_get_int(f, "test.string", &i64) == WK_ERR_DTYPE && strstr(wk_last_error(), "expected an integer"),
        "get_int of a string");

  // numeric arrays of every element type, read back exactly
  uint8_t au8[3]; int8_t ai8[3]; uint16_t au16[2]; int16_t ai16[2]; uint32_t au32[2]; int32_t ai32[3];
  uint64_t au64[2]; int64_t ai64[2]; float af32[3]; double af64[2]; uint8_t abool[3];
  CHECK(!wk_gguf_get_array(f, "test.arr_u8", WK_GGUF_U8, au8, 3) && au8[0] == 0 && au8[1] == 1 && au8[2] == 255, "arr u8");
  CHECK(!wk_gguf_get_array(f, "test.arr_i8", WK_GGUF_I8, ai8, 3) && ai8[0] == -128 && ai8[2] == 127, "arr i8");
  CHECK(!wk_gguf_get_array(f, "test.arr_u16", WK_GGUF_U16, au16, 2) && au16[1] == 65535, "arr u16");
  CHECK(!wk_gguf_get_array(f, "test.arr_i16", WK_GGUF_I16, ai16, 2) && ai16[0] == -32768 && ai16[1] == 32767, "arr i16");
  CHECK(!wk_gguf_get_array(f, "test.arr_u32", WK_GGUF_U32, au32, 2) && au32[1] == UINT32_MAX, "arr u32");
  CHECK(!wk_gguf_get_array_i32(f, "test.arr_i32", ai32, 3) && ai32[0] == INT32_MIN && ai32[1] == INT32_MAX && ai32[2] == 7,
        "arr i32");
  CHECK(!wk_gguf_get_array(f, "test.arr_u64", WK_GGUF_U64, au64, 2) && au64[0] == 0 && au64[1] == UINT64_MAX, "arr u64");
  CHECK(!wk_gguf_get_array(f, "test.arr_i64", WK_GGUF_I64, ai64, 2) && ai64[0] == INT64_MIN && ai64[1] == INT64_MAX,
        "arr i64");
  CHECK(!wk_gguf_get_array_f32(f, "test.arr_f32", af32, 3) && af32[0] == 1.5f && af32[1] == -0.25f && af32[2] == 1e30f,
        "arr f32");
  CHECK(!wk_gguf_get_array(f, "test.arr_f64", WK_GGUF_F64, af64, 2) && af64[0] == 1e-300 && af64[1] == -2.5, "arr f64");
  CHECK(!wk_gguf_get_array(f, "test.arr_bool", WK_GGUF_BOOL, abool, 3) && abool[0] == 1 && abool[1] == 0 && abool[2] == 1,
        "arr bool");
  CHECK(wk_gguf_get_array_f32(f, "test.arr_i32", af32, 3) == WK_ERR_DTYPE &&
        strstr(wk_last_error(), "is array[i32], expected array[f32]"), "array element type mismatch");
  CHECK(wk_gguf_get_array_i32(f, "test.arr_i32", ai32, 2) == WK_ERR_ARG && strstr(wk_last_error(), "has 3 elements"),
        "array length mismatch");
  wk_gguf_vtype et;
  uint64_t n = 0;
  CHECK(!wk_gguf_get_array_info(f, "tokenizer.ggml.scores", &et, &n) && et == WK_GGUF_F32 && n == 4, "array info");
  float scores[4];
  int32_t types[4];
  CHECK(!wk_gguf_get_array_f32(f, "tokenizer.ggml.scores", scores, 4) && scores[1] == -1.5f && scores[3] == -1000.0f,
        "tokenizer scores");
  CHECK(!wk_gguf_get_array_i32(f, "tokenizer.ggml.token_type", types, 4) && types[1] == 3 && types[2] == 6,
        "tokenizer token types");

  // string arrays
  const wk_gguf_str *strs = NULL;
  const char *want[] = {"a", "", "\xc4\xa0the", "\xe6\x97\xa5\xe6\x9c\xac", "\xf0\x9f\x99\x82", "<|im_start|>"};
  CHECK(!wk_gguf_get_str_array(f, "test.arr_str", &strs, &n) && n == 6, "string array");
  for (uint64_t i = 0; strs && i < n && i < 6; i++)
    CHECK(strs[i].len == strlen(want[i]) && !memcmp(strs[i].ptr, want[i], strs[i].len), "string array item %d",
          (int)i);

  // nested arrays through the generic value API
  wk_gguf_value v, e, e2;
  CHECK(!wk_gguf_get_value(f, "test.nested_i32", &v) && v.type == WK_GGUF_ARRAY && v.elem_type == WK_GGUF_ARRAY &&
        v.count == 3, "nested array header");
  int32_t flat[6], k = 0;
  for (uint64_t i = 0; i < v.count; i++) {
    CHECK(!wk_gguf_array_elem(&v, i, &e) && e.type == WK_GGUF_ARRAY && e.elem_type == WK_GGUF_I32, "nested elem %d", (int)i);
    for (uint64_t j = 0; j < e.count && k < 6; j++)
      if (!wk_gguf_array_elem(&e, j, &e2)) memcpy(&flat[k++], e2.data, 4);
  }
  CHECK(k == 6 && flat[0] == 1 && flat[2] == 3 && flat[3] == 4 && flat[5] == 6, "nested i32 values");
  CHECK(!wk_gguf_get_value(f, "test.nested_str", &v) && !wk_gguf_array_elem(&v, 1, &e) && e.count == 1 &&
        !wk_gguf_array_elem(&e, 0, &e2) && e2.type == WK_GGUF_STRING && e2.count == 2 && !memcmp(e2.data, "\xc3\xa9", 2),
        "nested string array");
  CHECK(!wk_gguf_get_value(f, "test.nested_str", &v) && !wk_gguf_array_elem(&v, 0, &e) &&
        !wk_gguf_array_elem(&e, 1, &e2) && e2.count == 2 && !memcmp(e2.data, "yz", 2), "nested string array 2");
  wk_gguf_value e3;
  float fv = 0;
  CHECK(!wk_gguf_get_value(f, "test.nested2_f32", &v) && !wk_gguf_array_elem(&v, 1, &e) && e.count == 2 &&
        !wk_gguf_array_elem(&e, 0, &e2) && e2.count == 2 && !wk_gguf_array_elem(&e2, 1, &e3) &&
        e3.type == WK_GGUF_F32 && (memcpy(&fv, e3.data, 4), fv == 3.5f), "doubly nested f32");
  CHECK(wk_gguf_array_elem(&v, 2, &e) == WK_ERR_ARG, "array_elem out of range");
  // enumeration covers every key
  int seen = 0;
  for (int64_t i = 0; i < wk_gguf_kv_count(f); i++) {
    const char *key = wk_gguf_kv_key(f, i);
    seen += key && wk_gguf_find_key(f, key) == i && !wk_gguf_kv_value(f, i, &v);
  }
  CHECK(seen == 33, "enumerate keys: %d", seen);
  wk_gguf_close(f);
}

// ---- tensors ----
static void check_tensors_of(const char *file) {
  wk_gguf *f = open_fixture(file);
  CHECK(f != NULL, "open %s", file);
  if (!f) return;
  int checked = 0;
  for (int i = 0; i < nexp; i++) {
    const expect *x = &exps[i];
    if (strcmp(x->file, file) || strcmp(x->kind, "deq")) continue;
    const wk_gguf_tensor *t = wk_gguf_find_tensor(f, x->tensor);
    CHECK(t != NULL, "%s: tensor %s", file, x->tensor);
    if (!t) continue;
    const float *want = expvals + x->offset;
    CHECK(t->numel == x->count, "%s numel %lld vs %lld", x->tensor, (long long)t->numel, (long long)x->count);
    CHECK(t->file_offset % wk_gguf_alignment(f) == 0 && t->file_offset >= wk_gguf_data_offset(f),
          "%s data aligned", x->tensor);
    CHECK(t->bytes == (size_t)t->nrows * t->row_bytes && t->row_bytes == wk_quant_row_bytes(t->type, t->row_len),
          "%s row geometry", x->tensor);
    if (!wk_quant_can_dequantize(t->type)) {
      CHECK(wk_gguf_tensor_f32(f, x->tensor) == NULL && strstr(wk_last_error(), wk_qtype_name(t->type)) &&
            strstr(wk_last_error(), x->tensor), "%s: unsupported type refused", x->tensor);
      continue;
    }
    // row by row through the kernel-facing descriptor
    float *row = malloc((size_t)(t->row_len ? t->row_len : 1) * sizeof(float));
    int64_t bad = -1;
    for (int64_t r = 0; r < t->nrows && bad < 0; r++) {
      if (wk_dequantize_row(t->type, (const uint8_t *)t->data + r * (int64_t)t->row_bytes, row, t->row_len)) bad = r;
      else if (first_bit_diff(row, want + r * t->row_len, t->row_len) >= 0) bad = r;
    }
    CHECK(bad < 0, "%s (%s): row %lld differs from gguf-py", x->tensor, wk_qtype_name(t->type), (long long)bad);
    free(row);
    // whole tensor as a wick tensor
    wk_tensor *w = wk_gguf_tensor_f32(f, x->tensor);
    CHECK(w && wk_ndim(w) == t->ndim && wk_numel(w) == t->numel, "%s as wick tensor", x->tensor);
    if (w && t->numel) {
      const float *p = wk_tensor_data(w);
      int64_t d = p ? first_bit_diff(p, want, t->numel) : 0;
      CHECK(d < 0, "%s: element %lld differs (%.9g vs %.9g)", x->tensor, (long long)d, p && d >= 0 ? p[d] : 0.0,
            d >= 0 ? want[d] : 0.0);
    }
    wk_tensor_free(w);
    checked++;
  }
  CHECK(checked > 0, "%s: tensors checked", file);
  wk_gguf_close(f);
}

static void test_tensors(void) {
  check_tensors_of("all_types.gguf");
  wk_gguf *f = open_fixture("all_types.gguf");
  if (!f) return;
  CHECK(wk_gguf_tensor_count(f) == 13, "tensor count");
  // shapes are row-major (GGUF's dims reversed)
  const wk_gguf_tensor *t = wk_gguf_find_tensor(f, "f32.mat");
  CHECK(t && t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 5 && t->row_len == 5 && t->nrows == 3, "f32.mat [3,5]");
  t = wk_gguf_find_tensor(f, "q8_0.3d");
  CHECK(t && t->ndim == 3 && t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 32 && t->nrows == 6 &&
        t->row_bytes == 34 && t->type == WK_QT_Q8_0, "q8_0.3d [2,3,32]");
  t = wk_gguf_find_tensor(f, "q4_k");
  CHECK(t && t->shape[0] == 2 && t->shape[1] == 512 && t->row_bytes == 2 * 144 && t->bytes == 576, "q4_k geometry");
  t = wk_gguf_find_tensor(f, "q6_k");
  CHECK(t && t->row_bytes == 210 && t->nrows == 3, "q6_k geometry");
  t = wk_gguf_find_tensor(f, "empty");
  CHECK(t && t->numel == 0 && t->bytes == 0 && t->shape[0] == 0 && t->shape[1] == 4, "empty tensor");
  t = wk_gguf_find_tensor(f, "q5_0");
  CHECK(t && t->type == WK_QT_Q5_0 && t->bytes == 22, "Q5_0 stored, described");
  CHECK(wk_gguf_find_tensor(f, "nope") == NULL && strstr(wk_last_error(), "'nope' not found"), "missing tensor");
  wk_tensor *h = wk_gguf_tensor_load(f, "f16.mat");
  CHECK(h && wk_tensor_dtype(h) == WK_F16 && wk_dim(h, 0) == 4 && wk_dim(h, 1) == 6, "F16 loads as f16");
  const expect *x = find_expect("all_types.gguf", "f16.mat", "deq");
  float hv[24];
  CHECK(h && x && !wk_tensor_read_f32(h, hv, 24) && first_bit_diff(hv, expvals + x->offset, 24) < 0, "f16 values");
  // quantized tensors load zero-copy in their block dtype; reading them dequantizes (the kernels' path)
  wk_tensor *q = wk_gguf_tensor_load(f, "q4_0");
  const wk_gguf_tensor *qd = wk_gguf_find_tensor(f, "q4_0");
  x = find_expect("all_types.gguf", "q4_0", "deq");
  float *qv = qd ? malloc(sizeof(float) * (size_t)qd->numel) : NULL;
  CHECK(q && wk_tensor_dtype(q) == WK_Q4_0 && qd && wk_tensor_data(q) == qd->data, "Q4_0 loads zero-copy as q4_0");
  CHECK(q && x && qv && !wk_tensor_read_f32(q, qv, qd->numel) && first_bit_diff(qv, expvals + x->offset, qd->numel) < 0,
        "q4_0 values through the dequantize kernel");
  free(qv);
  wk_tensor_free(q);
  CHECK(wk_gguf_tensor_load(f, "q5_0") == NULL && strstr(wk_last_error(), "Q5_0"), "Q5_0 load refused");
  // a zero-copy f32 tensor outlives the handle
  wk_tensor *z = wk_gguf_tensor_f32(f, "f32.mat");
  wk_gguf_close(f);
  x = find_expect("all_types.gguf", "f32.mat", "deq");
  const float *zp = z ? wk_tensor_data(z) : NULL;
  CHECK(zp && x && first_bit_diff(zp, expvals + x->offset, 15) < 0, "f32 tensor after close");
  wk_scope_begin();
  CHECK(z && wk_item(wk_sum(wk_mul_scalar(z, 2.0f), 0, NULL, 0)) == wk_item(wk_sum(wk_add(z, z), 0, NULL, 0)),
        "mapped tensor computes");
  wk_scope_end();
  wk_tensor_free(z);
  wk_tensor_free(h);
}

static void test_v2(void) {
  wk_gguf *f = open_fixture("v2_align64.gguf");
  CHECK(f && wk_gguf_version(f) == 2 && wk_gguf_alignment(f) == 64, "v2 file, alignment 64");
  if (!f) return;
  CHECK(wk_gguf_data_offset(f) % 64 == 0, "data section aligned to 64");
  const char *s;
  CHECK(!wk_gguf_get_str(f, "general.name", &s) && !strcmp(s, "v2 fixture"), "v2 metadata");
  wk_gguf_close(f);
  check_tensors_of("v2_align64.gguf");
}

// ---- quantizers: same bytes as gguf-py's ----
static void test_quantizers(void) {
  const char *files[] = {"all_types.gguf", "all_types.gguf", "all_types.gguf", "all_types.gguf", "all_types.gguf",
                         "v2_align64.gguf"};
  const char *names[] = {"q8_0", "q4_0", "q4_1", "q8_0.3d", "bf16.mat", "b"};
  for (int i = 0; i < 6; i++) {
    wk_gguf *f = open_fixture(files[i]);
    const wk_gguf_tensor *t = f ? wk_gguf_find_tensor(f, names[i]) : NULL;
    const expect *x = find_expect(files[i], names[i], "src");
    CHECK(t && x && x->count == t->numel, "%s source", names[i]);
    if (t && x) {
      uint8_t *q = malloc(t->row_bytes);
      int64_t bad = -1;
      for (int64_t r = 0; r < t->nrows && bad < 0; r++) {
        if (wk_quantize_row(t->type, expvals + x->offset + r * t->row_len, q, t->row_len)) bad = r;
        else if (memcmp(q, (const uint8_t *)t->data + r * (int64_t)t->row_bytes, t->row_bytes)) bad = r;
      }
      CHECK(bad < 0, "%s: quantized row %lld differs from gguf-py's bytes", names[i], (long long)bad);
      free(q);
    }
    wk_gguf_close(f);
  }
  // round trip on fresh random data: error within half a quantization step
  float x[256], y[256];
  uint8_t q[256 * 2];
  uint64_t s = 12345;
  for (int i = 0; i < 256; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 8.0 - 4.0);
  }
  int types[] = {WK_QT_Q8_0, WK_QT_Q4_0, WK_QT_Q4_1};
  for (int k = 0; k < 3; k++) {
    CHECK(!wk_quantize_row(types[k], x, q, 256) && !wk_dequantize_row(types[k], q, y, 256), "round trip %s",
          wk_qtype_name(types[k]));
    float steps = types[k] == WK_QT_Q8_0 ? 127.0f : types[k] == WK_QT_Q4_0 ? 8.0f : 15.0f;
    float worst = 0;
    for (int b = 0; b < 8; b++) {
      float lo = x[b * 32], hi = x[b * 32], amax = 0;
      for (int j = 0; j < 32; j++) {
        float v = x[b * 32 + j];
        lo = fminf(lo, v); hi = fmaxf(hi, v); amax = fmaxf(amax, fabsf(v));
      }
      float step = types[k] == WK_QT_Q4_1 ? (hi - lo) / steps : amax / steps;
      for (int j = 0; j < 32; j++) worst = fmaxf(worst, fabsf(x[b * 32 + j] - y[b * 32 + j]) / step);
    }
    // Half a step from rounding (a full step for Q4_0, whose far end clamps to 7), plus
    // the f16-rounded scale's relative error 2^-11 times the largest level; 0.01 covers
    // Q4_1's f16-rounded minimum.
    float bound = (types[k] == WK_QT_Q4_0 ? 1.0f : 0.5f) + steps / 2048.0f + 0.01f;
    CHECK(worst <= bound, "%s round-trip error %.3f steps", wk_qtype_name(types[k]), worst);
  }
  CHECK(wk_quantize_row(WK_QT_Q4_K, x, q, 256) == WK_ERR_DTYPE, "no reference quantizer for Q4_K");
  CHECK(wk_dequantize_row(WK_QT_Q8_0, q, y, 33) == WK_ERR_SHAPE, "partial block refused");
  CHECK(wk_quant_row_bytes(WK_QT_Q6_K, 512) == 420 && wk_quant_row_bytes(WK_QT_Q4_K, 100) == 0, "row bytes");
  // sizes past the address space are refused, not wrapped; NULL buffers are named
  wk_clear_error();
  CHECK(wk_quant_row_bytes(WK_QT_F32, INT64_MAX) == 0 && strstr(wk_last_error(), "too large"), "row bytes overflow: %s",
        wk_last_error());
  wk_clear_error();
  CHECK(wk_quant_row_bytes(WK_QT_F32, INT64_C(1) << 62) == 0 && strstr(wk_last_error(), "too large"),
        "2^64 bytes (it wrapped to 0 with no error)");
  CHECK(wk_quant_row_bytes(WK_QT_F32, (INT64_C(1) << 62) - 1) == SIZE_MAX - 3, "the largest F32 row");
  CHECK(wk_dequantize_row(WK_QT_Q8_0, NULL, y, 32) == WK_ERR_ARG && strstr(wk_last_error(), "NULL src"), "NULL src");
  CHECK(wk_dequantize_row(WK_QT_F16, q, NULL, 32) == WK_ERR_ARG && strstr(wk_last_error(), "NULL dst"), "NULL dst");
  CHECK(wk_quantize_row(WK_QT_Q8_0, x, NULL, 32) == WK_ERR_ARG, "quantize into NULL");
  CHECK(wk_dequantize_row(WK_QT_Q8_0, NULL, NULL, 0) == WK_OK, "no values, no buffers");
  CHECK(wk_quant_block_size(WK_QT_Q5_K) == 256 && wk_quant_type_size(WK_QT_Q5_K) == 176 &&
        wk_quant_type_size(4) == 0 && !strcmp(wk_qtype_name(WK_QT_BF16), "BF16"), "type table");
}

// ---- hostile files ----
typedef struct { uint8_t *b; size_t n, cap; } buf;
static void put(buf *w, const void *p, size_t n) {
  if (w->n + n > w->cap) {
    w->cap = (w->n + n) * 2 + 64;
    w->b = realloc(w->b, w->cap);
  }
  memcpy(w->b + w->n, p, n);
  w->n += n;
}
static void u32(buf *w, uint32_t v) { put(w, &v, 4); }
static void u64(buf *w, uint64_t v) { put(w, &v, 8); }
static void str(buf *w, const char *s) { u64(w, strlen(s)); put(w, s, strlen(s)); }
static void header(buf *w, uint32_t version, uint64_t nt, uint64_t nkv) {
  put(w, "GGUF", 4); u32(w, version); u64(w, nt); u64(w, nkv);
}
static void kv_u32(buf *w, const char *k, uint32_t v) { str(w, k); u32(w, WK_GGUF_U32); u32(w, v); }
// Tensor info with dims given row-major (written reversed, as GGUF wants).
static void tinfo(buf *w, const char *name, int nd, const uint64_t *shape, uint32_t type, uint64_t off) {
  str(w, name); u32(w, (uint32_t)nd);
  for (int d = nd - 1; d >= 0; d--) u64(w, shape[d]);
  u32(w, type); u64(w, off);
}
static void pad(buf *w, size_t align, size_t extra) {
  static const uint8_t z[256];
  while (w->n % align) put(w, z, 1);
  while (extra) { size_t k = extra < 256 ? extra : 256; put(w, z, k); extra -= k; }
}

static char tmpdir[256];

// Writes the image to a file, opens it, expects failure naming the file and `fault`.
static void expect_fail(const char *label, buf *w, const char *fault) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s.gguf", tmpdir, label);
  FILE *fp = fopen(path, "wb");
  if (fp) { fwrite(w->b, 1, w->n, fp); fclose(fp); }
  wk_clear_error();
  wk_gguf *f = wk_gguf_open(path);
  CHECK(f == NULL, "%s: opened a corrupt file", label);
  CHECK(strstr(wk_last_error(), path) && strstr(wk_last_error(), fault), "%s: message should name the file and '%s'",
        label, fault);
  wk_gguf_close(f);
  unlink(path);
  free(w->b);
  *w = (buf){0};
}

static void test_corrupt(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/wick_gguf_XXXXXX");
  if (!mkdtemp(tmpdir)) { CHECK(0, "mkdtemp"); return; }
  buf w = {0};
  const uint64_t s4[] = {4}, s8[] = {8}, s16[] = {16}, s32[] = {32};

  put(&w, "GGUF\x03\0\0\0\0\0", 10);
  expect_fail("truncated_header", &w, "truncated header");
  header(&w, 3, 0, 0); memcpy(w.b, "GGML", 4);
  expect_fail("bad_magic", &w, "bad magic");
  header(&w, 1, 0, 0);
  expect_fail("version1", &w, "version 1 is not supported");
  header(&w, 0x03000000u, 0, 0);
  expect_fail("big_endian", &w, "big-endian");
  header(&w, 7, 0, 0);
  expect_fail("version7", &w, "unsupported GGUF version 7");
  header(&w, 3, 0, 1); u64(&w, 1000); put(&w, "abcdefgh", 8);
  expect_fail("key_past_eof", &w, "string length 1000");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, WK_GGUF_STRING); u64(&w, UINT64_MAX); put(&w, "xy", 2);
  expect_fail("string_past_eof", &w, "string length 18446744073709551615");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, WK_GGUF_ARRAY); u32(&w, WK_GGUF_U32); u64(&w, UINT64_C(1) << 62); u32(&w, 1);
  expect_fail("array_count_huge", &w, "array count 4611686018427387904");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, WK_GGUF_ARRAY); u32(&w, WK_GGUF_STRING); u64(&w, 2); str(&w, "a");
  u64(&w, 5); put(&w, "b", 1);
  expect_fail("string_elem_past_eof", &w, "string length 5");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, 13); u32(&w, 0);
  expect_fail("unknown_value_type", &w, "unknown value type 13");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, WK_GGUF_ARRAY); u32(&w, 77); u64(&w, 0);
  expect_fail("unknown_elem_type", &w, "unknown element type 77");
  header(&w, 3, 0, 1); str(&w, "k"); u32(&w, WK_GGUF_ARRAY);
  for (int i = 0; i < 40; i++) { u32(&w, WK_GGUF_ARRAY); u64(&w, 1); }
  u32(&w, WK_GGUF_U8); u64(&w, 0);
  expect_fail("nested_too_deep", &w, "nested more than");
  header(&w, 3, 0, UINT64_C(1) << 40); u32(&w, 0);
  expect_fail("kv_count_huge", &w, "key count 1099511627776");
  header(&w, 3, UINT64_C(1) << 40, 0); u32(&w, 0);
  expect_fail("tensor_count_huge", &w, "tensor count 1099511627776");
  header(&w, 3, 0, 2); kv_u32(&w, "dup", 1); kv_u32(&w, "dup", 2);
  expect_fail("duplicate_key", &w, "duplicate key 'dup'");
  header(&w, 3, 0, 1); u64(&w, 3); put(&w, "a\0b", 3); u32(&w, WK_GGUF_U8); put(&w, "x", 1);
  expect_fail("nul_in_key", &w, "NUL byte");
  header(&w, 3, 0, 1); kv_u32(&w, "general.alignment", 48);
  expect_fail("alignment_not_pow2", &w, "alignment 48 is not a power of two");
  header(&w, 3, 0, 1); str(&w, "general.alignment"); u32(&w, WK_GGUF_U64); u64(&w, 32);
  expect_fail("alignment_type", &w, "general.alignment is u64, expected u32");
  // tensor infos
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s4, WK_QT_F32, 1024); pad(&w, 32, 16);
  expect_fail("offset_out_of_range", &w, "tensor 't' (F32 [4], 16 bytes) at data offset 1024 runs past the end");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s4, WK_QT_F32, 0);
  expect_fail("data_past_eof", &w, "runs past the end");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s4, WK_QT_F32, UINT64_MAX - 31); pad(&w, 32, 16);
  expect_fail("offset_overflow", &w, "runs past the end");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s4, WK_QT_F32, 4); pad(&w, 32, 64);
  expect_fail("misaligned_offset", &w, "data offset 4 is not a multiple of the alignment 32");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s32, 99, 0); pad(&w, 32, 256);
  expect_fail("unknown_type", &w, "unknown ggml type 99");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s32, 4, 0); pad(&w, 32, 256);
  expect_fail("retired_type", &w, "unknown ggml type 4");
  header(&w, 3, 2, 0); tinfo(&w, "a", 1, s16, WK_QT_F32, 0); tinfo(&w, "b", 1, s8, WK_QT_F32, 32); pad(&w, 32, 64);
  expect_fail("overlap", &w, "tensors 'a' (bytes");
  header(&w, 3, 2, 0); tinfo(&w, "a", 1, s8, WK_QT_F32, 0); tinfo(&w, "a", 1, s8, WK_QT_F32, 32); pad(&w, 32, 64);
  expect_fail("duplicate_tensor", &w, "duplicate tensor name 'a'");
  header(&w, 3, 1, 0); str(&w, "t"); u32(&w, 9); for (int i = 0; i < 9; i++) u64(&w, 1);
  u32(&w, 0); u64(&w, 0); pad(&w, 32, 4);
  expect_fail("too_many_dims", &w, "has 9 dims");
  { const uint64_t big[] = {UINT64_C(1) << 40, UINT64_C(1) << 40};
    header(&w, 3, 1, 0); tinfo(&w, "t", 2, big, WK_QT_F32, 0); pad(&w, 32, 4); }
  expect_fail("numel_overflow", &w, "too many elements");
  { const uint64_t neg[] = {UINT64_MAX};
    header(&w, 3, 1, 0); tinfo(&w, "t", 1, neg, WK_QT_F32, 0); pad(&w, 32, 4); }
  expect_fail("dim_too_large", &w, "dim 0 is 18446744073709551615");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s16, WK_QT_Q4_K, 0); pad(&w, 32, 256);
  expect_fail("partial_block", &w, "not a whole number of Q4_K blocks of 256");
  // the data section must be the padded tensors, back to back: else the counts or
  // offsets do not describe the file and every tensor would read shifted bytes
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s8, WK_QT_F32, 0); while (w.n % 32) put(&w, "\xff", 1); pad(&w, 32, 32);
  expect_fail("nonzero_padding", &w, "is 0xff, not zero: the header's tensor count (1)");
  header(&w, 3, 2, 0); tinfo(&w, "a", 1, s4, WK_QT_F32, 0); tinfo(&w, "b", 1, s8, WK_QT_F32, 64); pad(&w, 32, 96);
  expect_fail("gap_between", &w, "32 bytes at data offset 32, before tensor 'b', belong to no tensor");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s8, WK_QT_F32, 32); pad(&w, 32, 64);
  expect_fail("gap_first", &w, "32 bytes at data offset 0, before tensor 't'");
  header(&w, 3, 1, 0); tinfo(&w, "t", 1, s4, WK_QT_F32, 0); pad(&w, 32, 64);
  expect_fail("gap_at_end", &w, "ends at byte 80, but the file goes on to byte 128: 48 bytes belong to no tensor");
  // A tensor count one too small where the infos it still covers end on the alignment
  // (no padding to check): the uncounted info and its data are left over at the end.
  header(&w, 3, 1, 0); tinfo(&w, "aaaaaaaa", 1, s8, WK_QT_F32, 0); tinfo(&w, "b", 1, s8, WK_QT_F32, 32);
  pad(&w, 32, 64);
  CHECK(w.n == 192, "aligned-count image is %zu bytes", w.n);
  expect_fail("count_low_aligned", &w, "belong to no tensor (a tensor count too small?)");
  wk_clear_error();
  CHECK(wk_gguf_open("/nonexistent/x.gguf") == NULL && strstr(wk_last_error(), "/nonexistent/x.gguf"), "missing file");
  CHECK(wk_gguf_open(tmpdir) == NULL && strstr(wk_last_error(), "not a regular file"), "directory");

  // a valid minimal file: no tensors, no padding
  header(&w, 3, 0, 1); kv_u32(&w, "a", 5);
  wk_gguf *f = wk_gguf_open_memory(w.b, w.n, "minimal");
  uint32_t a = 0;
  CHECK(f && !wk_gguf_get_u32(f, "a", &a) && a == 5 && wk_gguf_tensor_count(f) == 0, "minimal file");
  wk_gguf_close(f);
  free(w.b);
  rmdir(tmpdir);
}

// Real files with the header's tensor count one too small: each fails by name (the
// uncounted info sits where padding should be), never opens with shifted data.
static void test_count_lowered(void) {
  const char *dirs[] = {"models", "models", "gguf", "gguf"};
  const char *names[] = {"llama_q8_0.gguf", "qwen2_q8_0.gguf", "all_types.gguf", "v2_align64.gguf"};
  for (int k = 0; k < 4; k++) {
    size_t n = 0;
    uint8_t *b = (uint8_t *)test_slurp(fixture_in(dirs[k], names[k]), &n);
    if (!b || n < 24) { CHECK(0, "read %s", names[k]); free(b); continue; }
    wk_gguf *f = wk_gguf_open_memory(b, n, names[k]);
    CHECK(f != NULL, "%s opens: %s", names[k], wk_last_error());
    wk_gguf_close(f);
    uint64_t nt;
    memcpy(&nt, b + 8, 8);
    nt--;
    memcpy(b + 8, &nt, 8);
    wk_clear_error();
    f = wk_gguf_open_memory(b, n, names[k]);
    CHECK(f == NULL && strstr(wk_last_error(), names[k]) && strstr(wk_last_error(), "tensor count"),
          "%s with one tensor uncounted: %s", names[k], f ? "opened" : wk_last_error());
    wk_gguf_close(f);
    free(b);
  }
}

// Touches everything a loader would read, so sanitizers see any bad access.
static volatile uint8_t sink;
static void walk(wk_gguf *f) {
  wk_gguf_value v, e;
  for (int64_t i = 0; i < wk_gguf_kv_count(f); i++) {
    if (wk_gguf_kv_value(f, i, &v)) continue;
    for (size_t k = 0; k < v.size; k++) sink ^= v.data[k];
    if (v.type == WK_GGUF_ARRAY)
      for (uint64_t j = 0; j < v.count && j < 64; j++) wk_gguf_array_elem(&v, j, &e);
  }
  for (int64_t i = 0; i < wk_gguf_tensor_count(f); i++) {
    const wk_gguf_tensor *t = wk_gguf_tensor_at(f, i);
    if (!wk_quant_can_dequantize(t->type) || t->numel > (1 << 20)) continue;
    wk_tensor *x = wk_gguf_tensor_f32(f, t->name);
    wk_tensor_free(x);
  }
}

// Every truncation and many byte mutations of a real file: never a crash or an
// out-of-bounds read (ASan), and a truncated file never opens.
static void test_mutations(void) {
  char p[600];
  fixture_path(p, sizeof p, "all_types.gguf");
  FILE *fp = fopen(p, "rb");
  if (!fp) { CHECK(0, "read %s", p); return; }
  fseek(fp, 0, SEEK_END);
  size_t n = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *orig = malloc(n);
  if (fread(orig, 1, n, fp) != n) n = 0;
  fclose(fp);
  wk_gguf *f = wk_gguf_open_memory(orig, n, "orig");
  size_t data_end = 0;
  for (int64_t i = 0; f && i < wk_gguf_tensor_count(f); i++) {
    const wk_gguf_tensor *t = wk_gguf_tensor_at(f, i);
    if (t->file_offset + t->bytes > data_end) data_end = t->file_offset + t->bytes;
  }
  wk_gguf_close(f);
  CHECK(data_end > 0 && data_end <= n, "data end %zu of %zu", data_end, n);
  int opened = 0;
  for (size_t len = 0; len < data_end; len++) {
    uint8_t *cut = malloc(len ? len : 1);  // exact size: ASan flags any read past it
    memcpy(cut, orig, len);
    f = wk_gguf_open_memory(cut, len, "cut");
    opened += f != NULL;
    wk_gguf_close(f);
    free(cut);
  }
  CHECK(opened == 0, "%d truncated images opened", opened);
  uint64_t s = 99;
  size_t hdr = (size_t)(data_end > 2200 ? 2200 : data_end);  // metadata and tensor infos
  int ok = 0;
  for (int it = 0; it < 3000; it++) {
    uint8_t *m = malloc(n);
    memcpy(m, orig, n);
    int flips = 1 + it % 4;
    for (int k = 0; k < flips; k++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      size_t pos = (size_t)(s >> 33) % hdr;
      uint8_t v = (uint8_t)(s >> 13);
      m[pos] = (uint8_t)((it & 1) ? v : (m[pos] ^ (1u << (v & 7))));
    }
    f = wk_gguf_open_memory(m, n, "mutated");
    if (f) { ok++; walk(f); }
    wk_gguf_close(f);
    free(m);
  }
  printf("mutations: %d of 3000 still parse\n", ok);
  free(orig);
}

int main(void) {
  const char *env = getenv("WICK_GGUF_FIXTURES");
  if (env) snprintf(fixdir, sizeof fixdir, "%s", env);
  else {
    // __FILE__ is tests/io/test_gguf.c under the source tree
    snprintf(fixdir, sizeof fixdir, "%s", __FILE__);
    char *slash = strrchr(fixdir, '/');
    if (slash) *slash = 0;
    slash = strrchr(fixdir, '/');
    if (slash) *slash = 0;
    strncat(fixdir, "/fixtures/gguf", sizeof fixdir - strlen(fixdir) - 1);
  }
  CHECK(load_expected(), "fixtures in %s (make them with tools/gen_gguf_fixtures.py)", fixdir);
  if (!nexp) return check_report();
  test_metadata();
  test_tensors();
  test_v2();
  test_quantizers();
  test_corrupt();
  test_count_lowered();
  test_mutations();
  free(expvals);
  return check_report();
}
