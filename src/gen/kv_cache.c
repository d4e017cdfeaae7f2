// KV cache operations the generator needs beyond append (which lives with the model's
// forward pass in src/models/llama.c): cutting back, the maximum context, padding,
// storage type, the sliding window, and a batch's rows leaving it (gen/kv_batch.h).
// The storage is preallocated: these move lengths and rows; only a batch that shrinks
// gets new (smaller) storage.
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "gen/kv_batch.h"
#include "models/llama.h"

// Row b of the rows kept (rows NULL: all of them, in order).
static int64_t kept_row(const int64_t *rows, int64_t b) { return rows ? rows[b] : b; }

// Copies positions [drop, len) of batch rows rows[0..nb) of every layer's storage to
// the front of rows 0..nb-1 of dk / dv: the cache's own storage (all rows: in place,
// every copy moves down) or new storage of batch nb. Host storage moves bytes (any
// dtype: q8_0 rows are whole blocks); device storage gathers the rows with lazy ops
// and writes them with set_slice.
static wk_status move_rows(wk_kv_cache *c, wk_tensor **dk, wk_tensor **dv, int64_t nb, const int64_t *rows,
                           int64_t drop) {
  int64_t L = c->m->cfg.num_hidden_layers, keep = c->len - drop, H = wk_dim(c->k[0], 1), cap = wk_dim(c->k[0], 2);
  if (wk_tensor_device(c->k[0]) == WK_CPU) {
    wk_status st = wk_sync();   // the bytes move under no job in flight
    if (st) return st;
    size_t row = wk_dtype_bytes(c->dtype, wk_dim(c->k[0], 3));
    for (int64_t i = 0; i < 2 * L; i++) {
      wk_tensor *s = i < L ? c->k[i] : c->v[i - L], *d = i < L ? dk[i] : dv[i - L];
      const char *sb = (const char *)s->buf->data + wk_dtype_bytes(c->dtype, s->offset);
      char *db = (char *)d->buf->data + wk_dtype_bytes(c->dtype, d->offset);
      for (int64_t j = 0; j < nb * H; j++)   // (row, head) j of the kept rows
        memmove(db + (size_t)(j * cap) * row, sb + (size_t)((kept_row(rows, j / H) * H + j % H) * cap + drop) * row,
                (size_t)keep * row);
    }
    return WK_OK;
  }
  wk_tensor **w = calloc((size_t)(2 * L + nb), sizeof *w), **part = w + 2 * L;
  if (!w) return wk_error(WK_ERR_OOM, "kv cache: out of memory");
  wk_scope_begin();
  int32_t zero = 0;
  wk_tensor *at = wk_to_device(wk_from_data(1, (int64_t[]){1}, WK_I32, &zero), wk_tensor_device(c->k[0]));
  for (int64_t i = 0; i < 2 * L; i++) {
    wk_tensor *s = wk_slice(i < L ? c->k[i] : c->v[i - L], 2, drop, c->len, 1);
    for (int64_t b = 0; nb < c->batch && b < nb; b++) part[b] = wk_slice(s, 0, rows[b], rows[b] + 1, 1);
    if (nb < c->batch) s = wk_concat((int)nb, part, 0);
    w[i] = wk_set_slice(i < L ? dk[i] : dv[i - L], wk_contiguous(s), 2, at);
  }
  wk_status st = wk_eval((int)(2 * L), w);
  wk_scope_end();
  free(w);
  return st;
}

// Rows kept in a smaller batch: new [nb, Hkv, capacity, D] storage for every layer
// takes their positions and replaces the old (which is kept on failure).
static wk_status shrink_storage(wk_kv_cache *c, int64_t nb, const int64_t *rows, int64_t drop) {
  int64_t L = c->m->cfg.num_hidden_layers, shape[4];
  wk_tensor **dk = calloc((size_t)(2 * L), sizeof *dk), **dv = dk + L;
  if (!dk) return wk_error(WK_ERR_OOM, "kv cache: out of memory");
  for (int d = 0; d < 4; d++) shape[d] = wk_dim(c->k[0], d);
  shape[0] = nb;
  wk_status st = WK_OK;
  for (int64_t i = 0; i < 2 * L && !st; i++)
    if (!(dk[i] = wk_keep(wk_empty_on(4, shape, c->dtype, wk_tensor_device(c->k[0])))))
      st = wk_error(WK_ERR_OOM, "kv cache: out of memory for %lld rows", (long long)nb);
  if (!st) st = move_rows(c, dk, dv, nb, rows, drop);
  for (int64_t i = 0; i < L; i++) {
    if (!st) { wk_tensor *k = c->k[i], *v = c->v[i]; c->k[i] = dk[i]; c->v[i] = dv[i]; dk[i] = k; dv[i] = v; }
    wk_tensor_free(dk[i]);   // the old storage, or the new one on failure
    wk_tensor_free(dv[i]);
  }
  free(dk);
  return st;
}

// Keeps rows[0..nb) (ascending; NULL: all rows) without their first `drop` positions.
static wk_status keep_rows(wk_kv_cache *c, int64_t nb, const int64_t *rows, int64_t drop) {
  wk_status st = nb < c->batch ? shrink_storage(c, nb, rows, drop) : move_rows(c, c->k, c->v, nb, rows, drop);
  if (st) return st;
  bool hidden = false;   // rows' hidden positions go with the dropped ones (in place: rows[b] >= b)
  for (int64_t b = 0; c->pad && b < nb; b++) {
    int64_t h = c->pad[kept_row(rows, b)];
    hidden |= (c->pad[b] = h > drop ? h - drop : 0) > 0;
  }
  if (!hidden) {   // no mask any more
    free(c->pad);
    c->pad = NULL;
  }
  c->pad_batch = c->batch = nb;
  c->len -= drop;
  c->shift += drop;
  return WK_OK;
}

wk_status wk_kv_cache_truncate(wk_kv_cache *c, int64_t len) {
  if (!c) return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: cache is NULL");
  if (len < 0 || len > c->len)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: length %lld outside [0, %lld]", (long long)len,
                    (long long)c->len);
  for (int64_t b = 0; len && c->pad && b < c->pad_batch; b++)   // the row's next tokens would stay hidden
    if (len < c->pad[b])
      return wk_error(WK_ERR_ARG, "wk_kv_cache_truncate: length %lld cuts into row %lld's padding of %lld positions "
                      "(keep at least those, or 0 to empty the cache)", (long long)len, (long long)b, (long long)c->pad[b]);
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
  for (int64_t b = 0; c->pad && b < c->pad_batch; b++)   // as set_padding checks in the other order
    if (c->pad[b] >= n)
      return wk_error(WK_ERR_ARG, "wk_kv_cache_set_max_context: %lld positions leave row %lld none of its own after "
                      "its padding of %lld (wk_kv_cache_set_padding)", (long long)n, (long long)b, (long long)c->pad[b]);
  c->max_ctx = n;
  return WK_OK;
}

wk_status wk_kv_cache_set_padding(wk_kv_cache *c, int64_t batch, const int64_t *pad) {
  if (!c || !pad || batch < 1) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_padding: cache or pad is NULL, or batch < 1");
  if (c->len) return wk_error(WK_ERR_STATE, "wk_kv_cache_set_padding: the cache already holds %lld positions", (long long)c->len);
  int64_t cap = wk_kv_cache_max_context(c);
  for (int64_t b = 0; b < batch; b++) {
    if (pad[b] < 0) return wk_error(WK_ERR_ARG, "wk_kv_cache_set_padding: pad[%lld] = %lld is negative", (long long)b, (long long)pad[b]);
    if (pad[b] >= cap)   // the mask would hide every key of the row: logits of no context
      return wk_error(WK_ERR_ARG, "wk_kv_cache_set_padding: pad[%lld] = %lld leaves the row no position of its own in "
                      "the cache's capacity of %lld (wk_kv_cache_set_max_context)", (long long)b, (long long)pad[b],
                      (long long)cap);
  }
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
    return wk_error(WK_ERR_DTYPE, "wk_kv_cache_set_dtype: dtype %d (%s) is not a cache type (f32, f16, bf16 or q8_0)",
                    (int)dt, wk_dtype_name(dt));
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
  return keep_rows(c, c->batch, NULL, n);
}

int64_t wk_kv_cache_context_for(const wk_kv_cache *c, int64_t max_context) {
  return !wk_kv_cache_len(c) && max_context > 0 ? max_context : wk_kv_cache_max_context(c);
}

int64_t wk_kv_cache_row_hidden(const wk_kv_cache *c, int64_t row) {
  return c && c->pad && row >= 0 && row < c->pad_batch ? c->pad[row] : 0;
}

wk_status wk_kv_cache_hide_front(wk_kv_cache *c, int64_t row, int64_t n) {
  if (!c || row < 0 || row >= c->batch || n < 0 || n >= c->len - wk_kv_cache_row_hidden(c, row))
    return wk_error(WK_ERR_ARG, "wk_kv_cache_hide_front: row %lld of batch %lld, %lld more positions of %lld (want "
                    "at least one left)", (long long)row, c ? (long long)c->batch : 0LL, (long long)n,
                    c ? (long long)c->len : 0LL);
  if (!c->pad) {
    if (!(c->pad = calloc((size_t)c->batch, sizeof *c->pad))) return wk_error(WK_ERR_OOM, "kv cache: out of memory");
    c->pad_batch = c->batch;
  }
  c->pad[row] += n;
  return WK_OK;
}

wk_status wk_kv_cache_keep_rows(wk_kv_cache *c, int64_t n, const int64_t *rows, int64_t drop) {
  bool ok = c && rows && n >= 1 && n <= c->batch && drop >= 0 && drop < c->len;
  for (int64_t b = 0; ok && b < n; b++) ok = rows[b] >= (b ? rows[b - 1] + 1 : 0) && rows[b] < c->batch;
  if (!ok)
    return wk_error(WK_ERR_ARG, "wk_kv_cache_keep_rows: %lld rows of batch %lld (want 1 or more, ascending, in range), "
                    "dropping %lld of %lld positions (want fewer)", (long long)n, c ? (long long)c->batch : 0LL,
                    (long long)drop, c ? (long long)c->len : 0LL);
  return n == c->batch && !drop ? WK_OK : keep_rows(c, n, rows, drop);
}
