// safetensors: reading the reference library's files exactly, sharded checkpoints,
// zero-copy lifetime, atomic save, and clean failures on corrupt or hostile files.
#include "io_util.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <stdint.h>
#include <string.h>
#include "check.h"
#include "io/json.h"
#include "wick/io.h"

#define SHAPE(...) (int64_t[]){__VA_ARGS__}

// Writes a raw safetensors file: 8-byte length, header text, data bytes.
static const char *write_st(const char *name, const char *header, const void *data, size_t ndata) {
  const char *path = scratch(name);
  size_t h = strlen(header);
  char *buf = calloc(1, 8 + h + ndata + 1);
  uint64_t hl = h;
  memcpy(buf, &hl, 8);
  memcpy(buf + 8, header, h);
  if (ndata) memcpy(buf + 8 + h, data, ndata);
  if (write_bytes(path, buf, 8 + h + ndata)) fprintf(stderr, "cannot write %s\n", path);
  free(buf);
  return path;
}

// Opening `path` fails with a message naming the file and containing `want`.
static void open_fails(const char *path, const char *want, const char *what) {
  wk_clear_error();
  wk_st_file *f = wk_st_open(path);
  CHECK(!f && strstr(wk_last_error(), path) && strstr(wk_last_error(), want), "%s: expected failure with '%s'", what, want);
  wk_st_close(f);
}

// Compares every tensor of the fixture against tensors.expected.json, value by value.
static void check_against_expected(wk_st_file *f, const char *label) {
  size_t n;
  char *text = read_bytes(fixture("tensors.expected.json"), &n);
  wk_json *exp = text ? wk_json_parse(text, n, "tensors.expected.json", NULL) : NULL;
  free(text);
  CHECK(exp != NULL, "expected values load");
  const wk_json *ts = wk_json_get(exp, "tensors");
  for (size_t k = 0; k < wk_json_len(ts); k++) {
    const wk_json *e = wk_json_at(ts, k);
    const char *name = e->key, *dt = wk_json_str(wk_json_get(e, "dtype"), "");
    int i = wk_st_find(f, name);
    wk_st_info info;
    CHECK(i >= 0 && !wk_st_tensor_info(f, i, &info) && !strcmp(info.dtype_name, dt), "%s: %s listed as %s", label, name, dt);
    if (i < 0) continue;
    const wk_json *shape = wk_json_get(e, "shape"), *vals = wk_json_get(e, "values");
    bool shape_ok = info.ndim == (int)wk_json_len(shape);
    for (int d = 0; shape_ok && d < info.ndim; d++) shape_ok = info.shape[d] == wk_json_int(wk_json_at(shape, (size_t)d), -1);
    CHECK(shape_ok, "%s: %s shape", label, name);
    if (!strcmp(dt, "I64")) {
      wk_tensor *t = wk_st_get(f, name);
      CHECK(!t && strstr(wk_last_error(), "I64") && strstr(wk_last_error(), name) && strstr(wk_last_error(), "tensors.safetensors"),
            "%s: I64 tensor is recognized and refused", label);
      CHECK(!info.loadable && info.nbytes == 24, "%s: I64 info", label);
      continue;
    }
    wk_tensor *t = wk_st_get(f, name);
    CHECK(t && info.loadable && wk_tensor_dtype(t) == info.dtype && wk_ndim(t) == info.ndim, "%s: %s loads", label, name);
    if (!t) continue;
    int64_t numel = wk_numel(t);
    CHECK(numel == (int64_t)wk_json_len(vals), "%s: %s numel", label, name);
    float *got = read_all(t);
    bool same = got != NULL;
    for (int64_t q = 0; same && q < numel; q++) {
      float want = (float)wk_json_num(wk_json_at(vals, (size_t)q), NAN);
      same = memcmp(&got[q], &want, 4) == 0;  // bit-exact (also tells -0 from 0)
      if (!same) fprintf(stderr, "%s[%lld]: got %.9g want %.9g\n", name, (long long)q, got[q], want);
    }
    CHECK(same, "%s: %s values exact", label, name);
    free(got);
    wk_tensor_free(t);
  }
  wk_json_free(exp);
}

static void test_read_fixture(void) {
  const char *path = fixture("tensors.safetensors");
  wk_st_file *f = wk_st_open(path);
  CHECK(f != NULL, "open %s", path);
  if (!f) return;
  CHECK(wk_st_count(f) == 8, "8 tensors, got %d", wk_st_count(f));
  CHECK(wk_st_name(f, 0) && !wk_st_name(f, 8) && !wk_st_name(f, -1), "names by index");
  CHECK(wk_st_find(f, "w_f32") >= 0 && wk_st_find(f, "nope") == -1, "find");
  check_against_expected(f, "single file");
  CHECK(!strcmp(wk_st_metadata(f, "format"), "pt"), "metadata format");
  CHECK(!strcmp(wk_st_metadata(f, "note"), "wick fixture \xE2\x9C\x93 \"quoted\"\n"), "metadata with escapes and UTF-8");
  CHECK(!wk_st_metadata(f, "absent") && wk_st_metadata_count(f) == 2 && wk_st_metadata_key(f, 0), "metadata queries");
  wk_tensor *t = wk_st_get(f, "nope");
  CHECK(!t && strstr(wk_last_error(), "no tensor named \"nope\"") && strstr(wk_last_error(), path), "missing tensor named with the file");
  // zero-copy: two handles on one tensor share the mapped bytes
  wk_tensor *a = wk_st_get(f, "ramp"), *b = wk_st_get(f, "ramp");
  CHECK(a && b && wk_tensor_data(a) == wk_tensor_data(b), "zero-copy tensors point into the mapping");
  wk_tensor *s = wk_st_get(f, "scalar"), *e = wk_st_get(f, "empty");
  CHECK(s && wk_ndim(s) == 0 && wk_item(s) == 42.0f, "0-d tensor");
  CHECK(e && wk_numel(e) == 0 && wk_dim(e, 1) == 3, "empty tensor");
  wk_st_close(f);
  // tensors outlive the handle; computing on them works after close
  wk_scope_begin();
  CHECK(wk_item(wk_sum(a, 0, NULL, 0)) == 0.0f, "tensor usable after wk_st_close (ramp sums to 0)");
  wk_scope_end();
  // writing into a loaded tensor changes this process's copy, never the file
  float ones[24];
  for (int k = 0; k < 24; k++) ones[k] = 1;
  wk_tensor *src = wk_from_data(3, SHAPE(2, 3, 4), WK_F32, ones);
  CHECK(!wk_tensor_assign(a, src) && ((const float *)wk_tensor_data(b))[0] == 1.0f, "assign into a mapped tensor");
  wk_st_file *g = wk_st_open(path);
  wk_tensor *c = g ? wk_st_get(g, "ramp") : NULL;
  CHECK(c && ((const float *)wk_tensor_data(c))[0] == -11.5f / 8, "file unchanged by the assignment");
  wk_st_close(g);
  wk_tensor_free(c);
  wk_tensor_free(src);
  wk_tensor_free(a);
  wk_tensor_free(b);
  wk_tensor_free(s);
  wk_tensor_free(e);
}

static void test_sharded(void) {
  const char *idx = fixture("sharded/model.safetensors.index.json");
  const char *paths[] = {idx, fixture("sharded"), fixture("sharded/")};
  for (int p = 0; p < 3; p++) {
    wk_st_file *f = wk_st_open(paths[p]);
    CHECK(f && wk_st_count(f) == 4, "sharded open via %s", paths[p]);
    if (!f) continue;
    CHECK(!strcmp(wk_st_name(f, 0), "embed.weight") && !strcmp(wk_st_name(f, 3), "norm.weight"), "weight_map order");
    CHECK(!strcmp(wk_st_metadata(f, "total_size"), "114") && !strcmp(wk_st_metadata(f, "format"), "pt"), "index and shard metadata");
    CHECK(!strcmp(wk_st_metadata(f, "shard"), "00001"), "first shard's metadata wins");
    wk_st_info info;
    CHECK(!wk_st_tensor_info(f, 2, &info) && strstr(info.file, "model-00002-of-00002") && info.dtype == WK_F16, "tensor's shard");
    wk_tensor *emb = wk_st_get(f, "embed.weight"), *eye = wk_st_get(f, "layers.1.weight"), *nw = wk_st_get(f, "norm.weight");
    wk_st_close(f);
    float *e = read_all(emb), *i3 = read_all(eye), *n = read_all(nw);
    CHECK(e && e[0] == 0 && e[11] == 11 && wk_dim(emb, 0) == 4, "shard 1 tensor values");
    CHECK(i3 && i3[0] == 1 && i3[1] == 0 && i3[4] == 1 && i3[8] == 1, "shard 2 f16 tensor values");
    CHECK(n && n[2] == 3, "shard 2 f32 values");
    free(e); free(i3); free(n);
    wk_tensor_free(emb); wk_tensor_free(eye); wk_tensor_free(nw);
  }
  // a broken index: each names the index and the fault
  const char *sh1 = fixture("sharded/model-00001-of-00002.safetensors");
  size_t n;
  char *shard = read_bytes(sh1, &n);
  write_bytes(scratch("s1.safetensors"), shard, n);
  free(shard);
  const char *cases[][2] = {
      {"{\"metadata\": {}}", "\"weight_map\" is missing"},
      {"{\"weight_map\": {\"embed.weight\": \"gone.safetensors\"}}", "shard gone.safetensors"},
      {"{\"weight_map\": {\"norm.weight\": \"s1.safetensors\"}}", "has no such tensor"},
      {"{\"weight_map\": {\"embed.weight\": \"../s1.safetensors\"}}", "must name a shard file"},
      {"{\"weight_map\": {\"embed.weight\": 3}}", "must name a shard file"},
      {"{\"weight_map\": {\"embed.weight\": \"s1.safetensors\",}}", "trailing comma"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const char *p = scratch("bad.index.json");
    write_bytes(p, cases[k][0], strlen(cases[k][0]));
    open_fails(p, cases[k][1], cases[k][0]);
  }
  const char *ok = "{\"weight_map\": {\"embed.weight\": \"s1.safetensors\"}}";
  write_bytes(scratch("good.index.json"), ok, strlen(ok));
  wk_st_file *f = wk_st_open(scratch("good.index.json"));
  CHECK(f && wk_st_count(f) == 1, "index listing a subset of a shard");
  wk_st_close(f);
  unlink(scratch("s1.safetensors"));
  unlink(scratch("bad.index.json"));
  unlink(scratch("good.index.json"));
}

static void test_misaligned(void) {
  // an F32 tensor at data offset 2: not 4-aligned, so it is copied, with the right values
  unsigned char data[10] = {7, 9};
  float v[2] = {1.25f, -3.0f};
  memcpy(data + 2, v, 8);
  const char *hdr = "{\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[2,10]}}     ";
  CHECK(strlen(hdr) % 8 == 0, "test header keeps the data section 8-aligned");
  const char *p = write_st("mis.safetensors", hdr, data, sizeof data);
  wk_st_file *f = wk_st_open(p);
  wk_tensor *x = f ? wk_st_get(f, "x") : NULL;
  const float *xv = x ? wk_tensor_data(x) : NULL;
  CHECK(xv && xv[0] == 1.25f && xv[1] == -3.0f && ((uintptr_t)xv % 4) == 0, "misaligned tensor copied");
  wk_tensor *u = f ? wk_st_get(f, "u") : NULL;
  CHECK(!u && strstr(wk_last_error(), "U8"), "U8 refused for loading");
  wk_st_close(f);
  wk_tensor_free(x);
}

static void test_corrupt(void) {
  unsigned char zeros[64] = {0};
  open_fails(scratch("does-not-exist.safetensors"), "cannot open", "missing file");
  open_fails(scratch_dir(), "neither model.safetensors", "directory without a model");
  write_bytes(scratch("empty.safetensors"), "", 0);
  open_fails(scratch("empty.safetensors"), "too short", "empty file");
  write_bytes(scratch("short.safetensors"), "\x10\0\0", 3);
  open_fails(scratch("short.safetensors"), "too short", "3-byte file");
  // truncations of the real fixture
  size_t n;
  char *good = read_bytes(fixture("tensors.safetensors"), &n);
  uint64_t hlen;
  memcpy(&hlen, good, 8);
  write_bytes(scratch("trunc1.safetensors"), good, 100);
  open_fails(scratch("trunc1.safetensors"), "goes past the end of the file", "truncated in the header");
  write_bytes(scratch("trunc2.safetensors"), good, (size_t)(8 + hlen + 50));
  open_fails(scratch("trunc2.safetensors"), "out of range", "truncated in the data");
  // header length far beyond the file, and over the 100 MB cap (a sparse file)
  uint64_t huge = UINT64_MAX;
  memcpy(good, &huge, 8);
  write_bytes(scratch("hlen.safetensors"), good, n);
  open_fails(scratch("hlen.safetensors"), "goes past the end of the file", "header length 2^64-1");
  {
    const char *p = scratch("sparse.safetensors");
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    uint64_t big = 150000000;
    CHECK(fd >= 0 && write(fd, &big, 8) == 8 && !ftruncate(fd, 200000000), "sparse file");
    close(fd);
    open_fails(p, "more than the limit of 100000000", "header over 100 MB");
    unlink(p);
  }
  free(good);

  struct { const char *hdr; size_t ndata; const char *want; } cases[] = {
      {"{\"a\": }", 0, "header:1:7: JSON: unexpected closing bracket"},
      {"[1, 2]", 0, "not an object"},
      {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "tensor \"a\": unknown dtype \"Q4\""},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, "\"a\" [0, 8] and \"b\" [4, 12] overlap"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "out of range: the data section is 8 bytes"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end before they begin"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "dimension 0 is not a non-negative integer"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, "dimension 0 is not"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "\"shape\" is a JSON number"},
      {"{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "\"dtype\" is a JSON number"},
      {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "\"dtype\" is missing"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 8, "not an array of two integers"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8, "data_offsets[1] is not"},
      {"{\"a\":[1]}", 8, "header entry is a JSON array"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,8]}}", 8,
       "needs more than"},
      {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, "don't fill whole bytes"},
      {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of \"k\" is a JSON number"},
      {"{\"__metadata__\":[]}", 0, "__metadata__ is a JSON array"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
       8, "duplicate key \"a\""},
      {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "contains a NUL"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[[2]],\"data_offsets\":[0,8]}}", 8, "dimension 0 is not"},
      {"[[[[[[[[[[]]]]]]]]]]", 0, "nested deeper"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char name[32];
    snprintf(name, sizeof name, "c%zu.safetensors", k);
    const char *p = write_st(name, cases[k].hdr, zeros, cases[k].ndata);
    open_fails(p, cases[k].want, cases[k].hdr);
    unlink(p);
  }
  {  // bytes after the JSON inside the header length: only whitespace may pad it
    char hdr[80] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t h = strlen(hdr) + 2;  // a space and a NUL
    hdr[h - 2] = ' ';
    unsigned char buf[128] = {0};
    uint64_t hl = h;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, hdr, h);
    write_bytes(scratch("nul.safetensors"), buf, 8 + h + 4);
    open_fails(scratch("nul.safetensors"), "unexpected text after the JSON value", "NUL padding");
    unlink(scratch("nul.safetensors"));
  }
  // bytes no tensor owns: the reference library refuses them (the tensors must cover the
  // data section exactly); wick opened such files
  struct { const char *hdr; size_t ndata; const char *want; } holes[] = {
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
       12, "bytes [4, 8) of the data section, before tensor \"b\", belong to no tensor"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
       "bytes [0, 4) of the data section, before tensor \"a\", belong to no tensor"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
       "bytes [4, 8) of the data section, after the last tensor (\"a\"), belong to no tensor"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 8, "bytes [0, 8) of the data section"},
      {"{}", 1, "bytes [0, 1) of the data section, where the header lists no tensor data"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
       16, "\"a\" [0, 16] and \"b\" [4, 8] overlap"},
  };
  for (size_t k = 0; k < sizeof holes / sizeof holes[0]; k++) {
    const char *p = write_st("hole.safetensors", holes[k].hdr, zeros, holes[k].ndata);
    open_fails(p, holes[k].want, holes[k].hdr);
    unlink(p);
  }
  // ... and edge cases that are valid
  struct { const char *hdr; size_t ndata; } okh[] = {
      {"{}", 0},
      {"{\"__metadata__\":{}}", 0},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}     ", 4},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8},
  };
  for (size_t k = 0; k < sizeof okh / sizeof okh[0]; k++) {
    const char *p = write_st("ok.safetensors", okh[k].hdr, zeros, okh[k].ndata);
    wk_st_file *f = wk_st_open(p);
    CHECK(f != NULL, "valid header %s: %s", okh[k].hdr, f ? "" : wk_last_error());
    if (f && k == 4) {
      wk_st_info info;
      wk_tensor *t = wk_st_get(f, "a");
      CHECK(!t && strstr(wk_last_error(), "9 dimensions") && !wk_st_tensor_info(f, 0, &info) && !info.loadable,
            "9-d tensor listed but not loadable");
    }
    wk_st_close(f);
  }
}

// Every truncation and many byte corruptions of the fixture open or fail cleanly.
static void test_mutations(void) {
  size_t n;
  char *good = read_bytes(fixture("tensors.safetensors"), &n);
  if (!good) { CHECK(0, "fixture readable"); return; }
  const char *p = scratch("mut.safetensors");
  int ok = 0, clean = 0, total = 0;
  for (size_t len = 0; len < n; len += 3) {
    write_bytes(p, good, len);
    wk_clear_error();
    wk_st_file *f = wk_st_open(p);
    total++;
    ok += f != NULL;
    clean += !f && strstr(wk_last_error(), p) != NULL;
    wk_st_close(f);
  }
  CHECK(ok == 0 && clean == total, "truncations: %d of %d failed cleanly", clean, total);
  uint64_t hlen;
  memcpy(&hlen, good, 8);
  const char subs[] = {'"', '9', '-', '[', '}', 0, (char)0x80, ','};
  ok = clean = total = 0;
  for (size_t pos = 0; pos < 8 + hlen; pos++)
    for (size_t k = 0; k < sizeof subs; k++) {
      char save = good[pos];
      if (save == subs[k]) continue;
      good[pos] = subs[k];
      write_bytes(p, good, n);
      good[pos] = save;
      wk_clear_error();
      wk_st_file *f = wk_st_open(p);
      total++;
      if (f) {
        ok++;
        for (int i = 0; i < wk_st_count(f); i++) {  // whatever opened must load safely
          wk_tensor *t = wk_st_get(f, wk_st_name(f, i));
          if (t) wk_tensor_data(t);
          wk_tensor_free(t);
        }
      } else {
        clean += strstr(wk_last_error(), p) != NULL;
      }
      wk_st_close(f);
    }
  CHECK(ok + clean == total, "byte corruptions: %d opened, %d failed cleanly, of %d", ok, clean, total);
  unlink(p);
  free(good);
}

static void test_save_roundtrip(void) {
  wk_st_file *f = wk_st_open(fixture("tensors.safetensors"));
  if (!f) { CHECK(0, "fixture opens"); return; }
  wk_tensor *ramp = wk_st_get(f, "ramp");
  float raw[6] = {1, 2, 3, 4, 5, 6};
  wk_tensor *m = wk_from_data(2, SHAPE(2, 3), WK_F32, raw);
  const char *names[] = {"w_f16", "w_bf16", "ids_i32", "scalar", "empty", "lazy.scaled", "view.transposed", "w_f32"};
  wk_tensor *ts[] = {wk_st_get(f, "w_f16"), wk_st_get(f, "w_bf16"), wk_st_get(f, "ids_i32"), wk_st_get(f, "scalar"),
                     wk_st_get(f, "empty"), wk_mul_scalar(ramp, 2.0f), wk_transpose(m, 0, 1), wk_st_get(f, "w_f32")};
  char path[1024];
  snprintf(path, sizeof path, "%s", scratch("out.safetensors"));
  const char *meta[] = {"format", "pt", "quote\"key", "line\nbreak \xC3\xA9", NULL};
  wk_status s = wk_st_save(path, 8, names, ts, meta);
  CHECK(s == WK_OK, "save");
  CHECK(scratch_count(".tmp.") == 0, "no temporary file left");
  // layout: 8-aligned header, contiguous data to the end of the file
  size_t n;
  char *bytes = read_bytes(path, &n);
  uint64_t hlen = 0;
  if (bytes) memcpy(&hlen, bytes, 8);
  CHECK(bytes && hlen % 8 == 0 && bytes[8] == '{' && (bytes[8 + hlen - 1] == ' ' || bytes[8 + hlen - 1] == '}'),
        "header padded with spaces to 8 bytes");
  wk_st_file *g = wk_st_open(path);
  CHECK(g && wk_st_count(g) == 8, "saved file opens");
  uint64_t sum = 0;
  for (int i = 0; g && i < wk_st_count(g); i++) {
    wk_st_info info;
    wk_st_tensor_info(g, i, &info);
    sum += info.nbytes;
  }
  CHECK(bytes && sum == n - 8 - hlen, "data section fully used: %llu of %zu", (unsigned long long)sum, n);
  free(bytes);
  for (int i = 0; g && i < 8; i++) {
    wk_tensor *t = wk_st_get(g, names[i]);
    float *a = read_all(ts[i]), *b = t ? read_all(t) : NULL;
    bool same = a && b && wk_tensor_dtype(t) == wk_tensor_dtype(ts[i]) && wk_ndim(t) == wk_ndim(ts[i]);
    for (int d = 0; same && d < wk_ndim(t); d++) same = wk_dim(t, d) == wk_dim(ts[i], d);
    same = same && !memcmp(a, b, sizeof(float) * (size_t)wk_numel(t));
    CHECK(same, "round trip of %s", names[i]);
    free(a);
    free(b);
    wk_tensor_free(t);
  }
  CHECK(g && !strcmp(wk_st_metadata(g, "quote\"key"), "line\nbreak \xC3\xA9") && !strcmp(wk_st_metadata(g, "format"), "pt"),
        "metadata round trip");
  // saving over a file that is mapped: the open tensors keep the old bytes
  wk_tensor *old = g ? wk_st_get(g, "w_f32") : NULL;
  wk_st_close(g);
  wk_tensor *z = wk_zeros(2, SHAPE(2, 3), WK_F32);
  const char *zn[] = {"w_f32"};
  CHECK(!wk_st_save(path, 1, zn, &z, NULL), "save over a mapped file");
  const float *ov = old ? wk_tensor_data(old) : NULL;
  CHECK(ov && ov[0] == 1.5f && ov[5] == 7.0f, "tensor from the replaced file still reads its old values");
  g = wk_st_open(path);
  wk_tensor *nz = g ? wk_st_get(g, "w_f32") : NULL;
  wk_scope_begin();
  CHECK(nz && wk_item(wk_sum(nz, 0, NULL, 0)) == 0.0f && wk_st_count(g) == 1 && wk_st_metadata_count(g) == 0, "new contents");
  wk_scope_end();
  wk_st_close(g);
  wk_tensor_free(nz);
  wk_tensor_free(old);
  // a lazily made empty tensor
  wk_tensor *e0 = wk_zeros(2, SHAPE(0, 5), WK_BF16);
  const char *en[] = {"e0"};
  CHECK(!wk_st_save(scratch("e0.safetensors"), 1, en, &e0, NULL), "save a lazy empty tensor");
  g = wk_st_open(scratch("e0.safetensors"));
  wk_tensor *e1 = g ? wk_st_get(g, "e0") : NULL;
  CHECK(e1 && wk_numel(e1) == 0 && wk_dim(e1, 1) == 5 && wk_tensor_dtype(e1) == WK_BF16, "empty tensor read back");
  wk_tensor_free(e1);
  wk_tensor_free(e0);
  wk_st_close(g);
  unlink(scratch("e0.safetensors"));
  // no tensors at all is a valid file
  CHECK(!wk_st_save(scratch("none.safetensors"), 0, NULL, NULL, NULL), "save 0 tensors");
  g = wk_st_open(scratch("none.safetensors"));
  CHECK(g && wk_st_count(g) == 0, "0 tensors read back");
  wk_st_close(g);
  for (int i = 0; i < 8; i++) wk_tensor_free(ts[i]);
  wk_tensor_free(ramp);
  wk_tensor_free(m);
  wk_tensor_free(z);
  wk_st_close(f);
  unlink(scratch("none.safetensors"));
}

// A failed save leaves the existing file exactly as it was, and no temporary file.
static void test_save_failures(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s", scratch("keep.safetensors"));
  float v[3] = {1, 2, 3};
  wk_tensor *good = wk_from_data(1, SHAPE(3), WK_F32, v);
  const char *n1[] = {"x"};
  CHECK(!wk_st_save(path, 1, n1, &good, NULL), "first save");
  size_t n0;
  char *before = read_bytes(path, &n0);

  wk_tensor *huge = wk_zeros(2, SHAPE(1 << 21, 1 << 21), WK_F32);  // 16 TiB: evaluation fails
  wk_tensor *two[] = {good, huge};
  const char *n2[] = {"x", "huge"};
  wk_status s = wk_st_save(path, 2, n2, two, NULL);
  CHECK(s && strstr(wk_last_error(), path) && strstr(wk_last_error(), "evaluating"), "save with a failing tensor fails");
  const char *n_dup[] = {"x", "x"};
  wk_tensor *dup[] = {good, good};
  CHECK(wk_st_save(path, 2, n_dup, dup, NULL) && strstr(wk_last_error(), "given twice"), "duplicate names refused");
  const char *n_meta[] = {"__metadata__"};
  CHECK(wk_st_save(path, 1, n_meta, &good, NULL) && strstr(wk_last_error(), "__metadata__"), "reserved name refused");
  wk_tensor *null_t = NULL;
  CHECK(wk_st_save(path, 1, n1, &null_t, NULL) && strstr(wk_last_error(), "\"x\" is NULL"), "NULL tensor refused");
  const char *bad_meta[] = {"k", NULL};
  CHECK(wk_st_save(path, 1, n1, &good, bad_meta) && strstr(wk_last_error(), "\"k\" has no value"), "odd metadata refused");
  const char *dup_meta[] = {"k", "1", "k", "2", NULL};
  CHECK(wk_st_save(path, 1, n1, &good, dup_meta) && strstr(wk_last_error(), "given twice"), "duplicate metadata refused");
  // the header is JSON: text that is not UTF-8 came back as U+FFFD (another name)
  const char *n_latin1[] = {"caf\xe9"};
  CHECK(wk_st_save(path, 1, n_latin1, &good, NULL) && strstr(wk_last_error(), "tensor name") &&
        strstr(wk_last_error(), "byte 3 is 0xe9"), "name not UTF-8 refused: %s", wk_last_error());
  const char *meta_key[] = {"k\xff", "v", NULL}, *meta_val[] = {"k", "\xc3", NULL};
  CHECK(wk_st_save(path, 1, n1, &good, meta_key) && strstr(wk_last_error(), "metadata key"), "metadata key not UTF-8");
  CHECK(wk_st_save(path, 1, n1, &good, meta_val) && strstr(wk_last_error(), "metadata value"), "metadata value not UTF-8");
  CHECK(wk_st_save("", 1, n1, &good, NULL) == WK_ERR_ARG && strstr(wk_last_error(), "path is empty"), "empty path: %s",
        wk_last_error());
  size_t n1b;
  char *after = read_bytes(path, &n1b);
  CHECK(before && after && n0 == n1b && !memcmp(before, after, n0), "old file intact after failed saves");
  CHECK(scratch_count(".tmp.") == 0, "no temporary files left behind");
  free(after);
  // unwritable destinations
  CHECK(wk_st_save(scratch("no/such/dir/x.safetensors"), 1, n1, &good, NULL) && strstr(wk_last_error(), "temporary file"),
        "missing directory reported");
  CHECK(wk_st_save(scratch("keep.safetensors/x"), 1, n1, &good, NULL) && strstr(wk_last_error(), "keep.safetensors/x"),
        "file as directory reported");
  // a target that is a directory: the rename fails and the temporary file is removed
  mkdir(scratch("adir"), 0755);
  CHECK(wk_st_save(scratch("adir"), 1, n1, &good, NULL) && strstr(wk_last_error(), "rename"), "directory target reported");
  rmdir(scratch("adir"));
  CHECK(scratch_count(".tmp.") == 0, "no temporary files left behind after a failed rename");
  after = read_bytes(path, &n1b);
  CHECK(after && n0 == n1b && !memcmp(before, after, n0), "old file still intact");
  free(before);
  free(after);
  wk_tensor_free(good);
  wk_tensor_free(huge);
  unlink(path);
}

int main(void) {
  test_read_fixture();
  test_sharded();
  test_misaligned();
  test_corrupt();
  test_mutations();
  test_save_roundtrip();
  test_save_failures();
  scratch_cleanup();
  return check_report();
}
