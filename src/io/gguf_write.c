// A small GGUF v3 writer: string / u32 / f32 metadata and F32 / F16 tensors, written
// atomically (used for llama.cpp LoRA adapters).
#define _POSIX_C_SOURCE 200809L
#include "io/gguf_write.h"
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "wick/gguf.h"
#include "wick/ops.h"

#define ALIGN 32

struct wk_gguf_writer {
  wk_jbuf kv;          // encoded key/value pairs
  uint64_t n_kv;
  int n, cap;
  char **names;
  wk_tensor **ts;      // evaluated, contiguous, f32 or f16
};

wk_gguf_writer *wk_gguf_writer_new(void) {
  wk_gguf_writer *w = calloc(1, sizeof *w);
  if (!w) wk_error(WK_ERR_OOM, "gguf writer: out of memory");
  return w;
}

void wk_gguf_writer_free(wk_gguf_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) {
    free(w->names[i]);
    wk_tensor_free(w->ts[i]);
  }
  free(w->names);
  free(w->ts);
  wk_jbuf_free(&w->kv);
  free(w);
}

static void put_u32(wk_jbuf *b, uint32_t v) { wk_jbuf_put(b, (const char *)&v, 4); }
static void put_u64(wk_jbuf *b, uint64_t v) { wk_jbuf_put(b, (const char *)&v, 8); }
static void put_str(wk_jbuf *b, const char *s) {
  put_u64(b, strlen(s));
  wk_jbuf_put(b, s, strlen(s));
}

void wk_gguf_writer_str(wk_gguf_writer *w, const char *key, const char *value) {
  put_str(&w->kv, key);
  put_u32(&w->kv, WK_GGUF_STRING);
  put_str(&w->kv, value);
  w->n_kv++;
}

void wk_gguf_writer_u32(wk_gguf_writer *w, const char *key, uint32_t value) {
  put_str(&w->kv, key);
  put_u32(&w->kv, WK_GGUF_U32);
  put_u32(&w->kv, value);
  w->n_kv++;
}

void wk_gguf_writer_f32(wk_gguf_writer *w, const char *key, float value) {
  put_str(&w->kv, key);
  put_u32(&w->kv, WK_GGUF_F32);
  wk_jbuf_put(&w->kv, (const char *)&value, 4);
  w->n_kv++;
}

wk_status wk_gguf_writer_tensor(wk_gguf_writer *w, const char *name, wk_tensor *t, wk_dtype dt) {
  if (dt != WK_F32 && dt != WK_F16) return wk_error(WK_ERR_DTYPE, "gguf writer: %s: only f32 and f16 tensors", name);
  if (w->n == w->cap) {
    int cap = w->cap ? 2 * w->cap : 64;
    char **nn = realloc(w->names, sizeof *nn * (size_t)cap);
    if (nn) w->names = nn;
    wk_tensor **nt = nn ? realloc(w->ts, sizeof *nt * (size_t)cap) : NULL;
    if (nt) w->ts = nt;
    if (!nn || !nt) return wk_error(WK_ERR_OOM, "gguf writer: out of memory");
    w->cap = cap;
  }
  wk_scope_begin();
  wk_tensor *c = wk_contiguous(wk_tensor_dtype(t) == dt ? t : wk_cast(t, dt));
  c = wk_keep(c && wk_tensor_device(c) != WK_CPU ? wk_to_device(c, WK_CPU) : c);
  wk_scope_end();
  if (!c || wk_eval(1, &c)) { wk_tensor_free(c); return WK_ERR_STATE; }
  w->names[w->n] = strdup(name);
  w->ts[w->n++] = c;
  return w->names[w->n - 1] ? WK_OK : wk_error(WK_ERR_OOM, "gguf writer: out of memory");
}

wk_status wk_gguf_writer_save(wk_gguf_writer *w, const char *path) {
  wk_jbuf h = {0};
  wk_jbuf_put(&h, "GGUF", 4);
  put_u32(&h, 3);
  put_u64(&h, (uint64_t)w->n);
  put_u64(&h, w->n_kv);
  wk_jbuf_put(&h, w->kv.data, w->kv.len);
  uint64_t off = 0;
  for (int i = 0; i < w->n; i++) {
    wk_tensor *t = w->ts[i];
    put_str(&h, w->names[i]);
    put_u32(&h, (uint32_t)wk_ndim(t));
    for (int d = wk_ndim(t) - 1; d >= 0; d--) put_u64(&h, (uint64_t)wk_dim(t, d));   // ggml order: innermost first
    put_u32(&h, wk_tensor_dtype(t) == WK_F32 ? WK_QT_F32 : WK_QT_F16);
    put_u64(&h, off);
    off += ((uint64_t)wk_numel(t) * wk_dtype_size(wk_tensor_dtype(t)) + ALIGN - 1) / ALIGN * ALIGN;
  }
  static const char zeros[ALIGN];
  wk_jbuf_put(&h, zeros, (ALIGN - h.len % ALIGN) % ALIGN);
  int np = 1 + 2 * w->n;
  const void **pieces = calloc((size_t)np, sizeof *pieces);
  size_t *lens = calloc((size_t)np, sizeof *lens);
  wk_status s = h.failed || !pieces || !lens ? wk_error(WK_ERR_OOM, "%s: out of memory", path) : WK_OK;
  if (!s) {
    pieces[0] = h.data, lens[0] = h.len;
    for (int i = 0; i < w->n; i++) {
      size_t bytes = (size_t)wk_numel(w->ts[i]) * wk_dtype_size(wk_tensor_dtype(w->ts[i]));
      pieces[1 + 2 * i] = wk_tensor_data(w->ts[i]), lens[1 + 2 * i] = bytes;
      pieces[2 + 2 * i] = zeros, lens[2 + 2 * i] = (ALIGN - bytes % ALIGN) % ALIGN;
    }
    s = wk_write_atomic(path, np, pieces, lens);
  }
  free(pieces);
  free(lens);
  wk_jbuf_free(&h);
  return s;
}
