// KV cache operations the generator needs beyond append (which lives with the model's
// forward pass in src/models/llama.c).
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "models/llama.h"

// Keeps positions [from, from + len) of every layer (a copy: the old buffers go).
static wk_status keep_range(wk_kv_cache *c, int64_t from, int64_t len) {
  int64_t n = c->m->cfg.num_hidden_layers;
  wk_tensor **kv = calloc((size_t)(2 * n), sizeof *kv);
  if (!kv) return wk_error(WK_ERR_OOM, "kv cache: out of memory");
  wk_scope_begin();
  for (int64_t i = 0; i < n; i++) {   // [B, Hkv, len, D]
    kv[i] = wk_contiguous(wk_slice(c->k[i], 2, from, from + len, 1));
    kv[n + i] = wk_contiguous(wk_slice(c->v[i], 2, from, from + len, 1));
  }
  wk_status st = wk_eval((int)(2 * n), kv);
  if (!st) {
    for (int64_t i = 0; i < n; i++) {
      wk_tensor_free(c->k[i]);
      wk_tensor_free(c->v[i]);
      c->k[i] = wk_keep(kv[i]);
      c->v[i] = wk_keep(kv[n + i]);
    }
    c->len = len;
  }
  wk_scope_end();
  free(kv);
  return st;
}

wk_status wk_kv_cache_truncate(wk_kv_cache *c, int64_t len) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: cache is NULL");
  if (len < 0 || len > c->len)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: length %lld outside [0, %lld]", (long long)len,
                    (long long)c->len);
  if (len == c->len) return WK_OK;
  if (len == 0) { wk_kv_cache_reset(c); return WK_OK; }
  return keep_range(c, 0, len);
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
  if (dt != WK_F32 && dt != WK_F16 && dt != WK_BF16)
    return wk_error(WK_ERR_DTYPE, "wk_kv_cache_set_dtype: %s is not a cache type (f32, f16 or bf16)", wk_dtype_name(dt));
  if (c->len) return wk_error(WK_ERR_STATE, "wk_kv_cache_set_dtype: the cache already holds %lld positions", (long long)c->len);
  c->dtype = dt;
  return WK_OK;
}

wk_status wk_kv_cache_drop_oldest(wk_kv_cache *c, int64_t n) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_drop_oldest: cache is NULL");
  if (n <= 0 || n >= c->len)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_drop_oldest: %lld positions of %lld (want 0 < n < length)", (long long)n,
                    (long long)c->len);
  wk_status st = keep_range(c, n, c->len - n);
  if (st) return st;
  c->shift += n;
  for (int64_t b = 0; c->pad && b < c->pad_batch; b++) c->pad[b] = c->pad[b] > n ? c->pad[b] - n : 0;
  return WK_OK;
}
