// safetensors writer: evaluate everything first, then write a temporary file in the
// target's directory, fsync it, rename it over the target and fsync the directory, so
// a crash or a failure at any point leaves either the old file or the new one.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "io/safetensors.h"

typedef struct {
  const char *name;
  wk_tensor *t;
  const void *data;
  size_t bytes;
} item;

// Largest element size first (so that every tensor's offset stays a multiple of its
// element size when the data section is 8-aligned), then by name: the reference
// writer's order.
static int cmp_item(const void *a, const void *b) {
  const item *x = a, *y = b;
  size_t sx = wk_dtype_size(wk_tensor_dtype(x->t)), sy = wk_dtype_size(wk_tensor_dtype(y->t));
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const item *)a)->name, ((const item *)b)->name);
}

static wk_status build_header(const char *path, item *it, int n, const char *const *meta, wk_jbuf *h) {
  wk_jbuf_puts(h, "{");
  bool first = true;
  if (meta && meta[0]) {
    wk_jbuf_puts(h, "\"__metadata__\":{");
    for (int k = 0; meta[k]; k += 2) {
      if (!meta[k + 1]) return wk_error(WK_ERR_ARG, "%s: metadata key \"%.200s\" has no value", path, meta[k]);
      for (int j = 0; j < k; j += 2)
        if (!strcmp(meta[j], meta[k])) return wk_error(WK_ERR_ARG, "%s: metadata key \"%.200s\" given twice", path, meta[k]);
      if (k) wk_jbuf_puts(h, ",");
      wk_json_write_string(h, meta[k], strlen(meta[k]));
      wk_jbuf_puts(h, ":");
      wk_json_write_string(h, meta[k + 1], strlen(meta[k + 1]));
    }
    wk_jbuf_puts(h, "}");
    first = false;
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    wk_tensor *t = it[i].t;
    if (!first) wk_jbuf_puts(h, ",");
    first = false;
    wk_json_write_string(h, it[i].name, strlen(it[i].name));
    wk_jbuf_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", wk_st_dtype_str(wk_tensor_dtype(t)));
    for (int d = 0; d < wk_ndim(t); d++) wk_jbuf_printf(h, "%s%lld", d ? "," : "", (long long)wk_dim(t, d));
    wk_jbuf_printf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                   (unsigned long long)(off + it[i].bytes));
    off += it[i].bytes;
  }
  wk_jbuf_puts(h, "}");
  while (h->len % 8) wk_jbuf_puts(h, " ");  // the data section starts 8-aligned
  if (h->failed) return wk_error(WK_ERR_OOM, "%s: out of memory building the header", path);
  if (h->len > WK_ST_MAX_HEADER)
    return wk_error(WK_ERR_ARG, "%s: header of %zu bytes is over the format's limit of %llu", path, h->len, WK_ST_MAX_HEADER);
  return WK_OK;
}

// The header is JSON, which holds only UTF-8: other bytes would come back as U+FFFD,
// so a name or metadata string that is not UTF-8 is refused rather than changed.
static wk_status check_utf8(const char *path, const char *what, const char *s) {
  size_t n = strlen(s), at = wk_json_utf8_check(s, n);
  if (at == n) return WK_OK;
  return wk_error(WK_ERR_ARG, "%s: %s \"%.200s\" is not valid UTF-8 (byte %zu is 0x%02x): a safetensors header is JSON",
                  path, what, s, at, (unsigned char)s[at]);
}

// (A key without a value ends the list here; build_header reports it.)
static wk_status check_metadata(const char *path, const char *const *meta) {
  wk_status s = WK_OK;
  for (int k = 0; meta && meta[k] && meta[k + 1] && !s; k += 2)
    if (!(s = check_utf8(path, "metadata key", meta[k]))) s = check_utf8(path, "metadata value", meta[k + 1]);
  return s;
}

wk_status wk_st_save(const char *path, int n, const char *const *names, wk_tensor *const *tensors,
                     const char *const *metadata) {
  if (!path || !*path) return wk_error(WK_ERR_ARG, "st_save: path is %s", path ? "empty" : "NULL");
  if (n < 0 || (n && (!names || !tensors))) return wk_error(WK_ERR_ARG, "%s: st_save: bad tensor list (n = %d)", path, n);
  item *it = calloc((size_t)(n ? n : 1), sizeof *it);
  if (!it) return wk_error(WK_ERR_OOM, "%s: out of memory", path);
  wk_status s = WK_OK;
  for (int i = 0; i < n && !s; i++) {
    if (!names[i]) s = wk_error(WK_ERR_ARG, "%s: name %d is NULL", path, i);
    else if (!strcmp(names[i], "__metadata__")) s = wk_error(WK_ERR_ARG, "%s: \"__metadata__\" can't name a tensor", path);
    else if (check_utf8(path, "tensor name", names[i])) s = WK_ERR_ARG;
    else if (!tensors[i] || !wk_tensor_valid(tensors[i], "st_save"))
      s = wk_error(WK_ERR_ARG, "%s: tensor \"%.200s\" is NULL or freed", path, names[i]);
    else if (!wk_st_dtype_str(wk_tensor_dtype(tensors[i])))
      s = wk_error(WK_ERR_DTYPE, "%s: tensor \"%.200s\" has dtype %s, which safetensors can't store", path, names[i],
                   wk_dtype_name(wk_tensor_dtype(tensors[i])));
    else it[i] = (item){.name = names[i], .t = tensors[i]};
  }
  if (!s) s = check_metadata(path, metadata);
  if (!s && n > 1) {
    qsort(it, (size_t)n, sizeof *it, cmp_name);
    for (int i = 1; i < n && !s; i++)
      if (!strcmp(it[i - 1].name, it[i].name)) s = wk_error(WK_ERR_ARG, "%s: tensor name \"%.200s\" given twice", path, it[i].name);
  }
  // Tensors on another device are copied to the host first.
  wk_tensor **host = calloc((size_t)(n ? n : 1), sizeof *host);
  if (!s && !host) s = wk_error(WK_ERR_OOM, "%s: out of memory", path);
  for (int i = 0; i < n && !s; i++) {
    host[i] = wk_tensor_device(it[i].t) == WK_CPU ? wk_tensor_ref(it[i].t) : wk_keep(wk_to_device(it[i].t, WK_CPU));
    if (!host[i]) s = WK_ERR_DEVICE;
    else it[i].t = host[i];
  }
  // Evaluate before touching the file system: a graph that fails leaves nothing behind.
  if (!s && n && wk_eval(n, host)) {
    char why[900];
    snprintf(why, sizeof why, "%s", wk_last_error());
    s = wk_error(WK_ERR_STATE, "%s: not saved: evaluating the tensors failed: %s", path, why);
  }
  for (int i = 0; i < n && !s; i++) {
    it[i].bytes = (size_t)wk_numel(it[i].t) * wk_dtype_size(wk_tensor_dtype(it[i].t));
    if (!it[i].bytes) continue;  // nothing to write (and an empty tensor may have no buffer)
    it[i].data = wk_tensor_data(it[i].t);
    if (!it[i].data) {
      char why[900];
      snprintf(why, sizeof why, "%s", wk_last_error());
      s = wk_error(WK_ERR_STATE, "%s: not saved: tensor \"%.200s\": %s", path, it[i].name, why);
    }
  }
  if (!s && n > 1) qsort(it, (size_t)n, sizeof *it, cmp_item);
  wk_jbuf h = {0};
  if (!s) s = build_header(path, it, n, metadata, &h);
  if (s) {
    for (int i = 0; host && i < n; i++) wk_tensor_free(host[i]);
    free(host);
    free(it);
    wk_jbuf_free(&h);
    return s;
  }

  // header length, header, then each tensor's bytes
  const void **pieces = malloc(sizeof *pieces * (size_t)(n + 2));
  size_t *lens = malloc(sizeof *lens * (size_t)(n + 2));
  uint64_t hlen = h.len;
  if (!pieces || !lens) s = wk_error(WK_ERR_OOM, "%s: out of memory", path);
  else {
    pieces[0] = &hlen, lens[0] = 8;
    pieces[1] = h.data, lens[1] = h.len;
    for (int i = 0; i < n; i++) pieces[i + 2] = it[i].data, lens[i + 2] = it[i].bytes;
    s = wk_write_atomic(path, n + 2, pieces, lens) ? WK_ERR_IO : WK_OK;
  }
  free(pieces);
  free(lens);
  for (int i = 0; i < n; i++) wk_tensor_free(host[i]);
  free(host);
  free(it);
  wk_jbuf_free(&h);
  return s;
}
