// KV cache operations the generator needs beyond append (which lives with the model's
// forward pass in src/models/llama.c): cutting back, the maximum context, padding,
// storage type and the sliding window. The storage is preallocated: these move
// lengths and rows, never reallocate a cache that holds positions.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "models/llama.h"

// Moves rows [n, len) of every layer to the front of the storage, in place. Host
// storage moves its bytes (any dtype, q8_0 rows are whole blocks); device storage
// copies the rows out and writes them back with set_slice.
static wk_status shift_rows(wk_kv_cache *c, int64_t n) {
  int64_t L = c->m->cfg.num_hidden_layers, keep = c->len - n;
  if (wk_tensor_device(c->k[0]) == WK_CPU) {
    int64_t cap = wk_dim(c->k[0], 2), bh = wk_dim(c->k[0], 0) * wk_dim(c->k[0], 1);
    size_t row = wk_dtype_bytes(c->dtype, wk_dim(c->k[0], 3));
    for (int64_t i = 0; i < 2 * L; i++) {
      wk_tensor *t = i < L ? c->k[i] : c->v[i - L];
      char *base = (char *)t->buf->data + wk_dtype_bytes(c->dtype, t->offset);
      for (int64_t j = 0; j < bh; j++)
        memmove(base + (size_t)(j * cap) * row, base + (size_t)(j * cap + n) * row, (size_t)keep * row);
    }
    return WK_OK;
  }
  wk_tensor **w = calloc((size_t)(2 * L), sizeof *w);
  if (!w) return wk_error(WK_ERR_OOM, "kv cache: out of memory");
  wk_scope_begin();
  int32_t zero = 0;
  wk_tensor *at = wk_to_device(wk_from_data(1, (int64_t[]){1}, WK_I32, &zero), wk_tensor_device(c->k[0]));
  for (int64_t i = 0; i < 2 * L; i++) {
    wk_tensor *t = i < L ? c->k[i] : c->v[i - L];
    w[i] = wk_set_slice(t, wk_contiguous(wk_slice(t, 2, n, c->len, 1)), 2, at);
  }
  wk_status st = wk_eval((int)(2 * L), w);
  wk_scope_end();
  free(w);
  return st;
}

wk_status wk_kv_cache_truncate(wk_kv_cache *c, int64_t len) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: cache is NULL");
  if (len < 0 || len > c->len)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: length %lld outside [0, %lld]", (long long)len,
                    (long long)c->len);
  if (len == 0) wk_kv_cache_reset(c);
  else c->len = len;   // rows past the length are never read
  return WK_OK;
}

wk_status wk_kv_cache_set_max_context(wk_kv_cache *c, int64_t n) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_max_context: cache is NULL");
  if (n < 1 || n > INT32_MAX)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_set_max_context: %lld positions (want 1 to %d)", (long long)n, INT32_MAX);
  if (c->len)
    return wk_error(WK_ERR_STATE, "wk_kv_cache_set_max_context: the cache already holds %lld positions", (long long)c->len);
  c->max_ctx = n;
  return WK_OK;
}

wk_status wk_kv_cache_set_padding(wk_kv_cache *c, int64_t batch, const int64_t *pad) {
  if (!c || !pad || batch < 1) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_padding: cache or pad is NULL, or batch < 1");
  if (c->len) return wk_error(WK_ERR_STATE, "wk_kv_cache_set_padding: the cache already holds %lld positions", (long long)c->len);
  for (int64_t b = 0; b < batch; b++)
    if (pad[b] < 0) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_padding: pad[%lld] = %lld is negative", (long long)b, (long long)pad[b]);
  int64_t *copy = malloc((size_t)batch * sizeof *copy);
  if (!copy) return wk_error(WK_ERR_OOM, "wk_kv_cache_set_padding: out of memory");
  memcpy(copy, pad, (size_t)batch * sizeof *copy);
  free(c->pad);
  c->pad = copy;
  c->pad_batch = batch;
  return WK_OK;
}

wk_status wk_kv_cache_set_dtype(wk_kv_cache *c, wk_dtype dt) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_dtype: cache is NULL");
  if (dt != WK_F32 && dt != WK_F16 && dt != WK_BF16 && dt != WK_Q8_0)
    return wk_error(WK_ERR_DTYPE, "wk_kv_cache_set_dtype: %s is not a cache type (f32, f16, bf16 or q8_0)", wk_dtype_name(dt));
  int64_t D = c->m->cfg.head_dim;
  if (dt == WK_Q8_0 && D % 32)
    return wk_error(WK_ERR_SHAPE, "wk_kv_cache_set_dtype: a q8_0 cache stores blocks of 32 along the head dimension, "
                    "but this model's head_dim is %lld", (long long)D);
  if (c->len) return wk_error(WK_ERR_STATE, "wk_kv_cache_set_dtype: the cache already holds %lld positions", (long long)c->len);
  c->dtype = dt;
  return WK_OK;
}

wk_status wk_kv_cache_drop_oldest(wk_kv_cache *c, int64_t n) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_drop_oldest: cache is NULL");
  if (n <= 0 || n >= c->len)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_drop_oldest: %lld positions of %lld (want 0 < n < length)", (long long)n,
                    (long long)c->len);
  wk_status st = shift_rows(c, n);
  if (st) return st;
  c->len -= n;
  c->shift += n;
  for (int64_t b = 0; c->pad && b < c->pad_batch; b++) c->pad[b] = c->pad[b] > n ? c->pad[b] - n : 0;
  return WK_OK;
}
