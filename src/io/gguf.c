// GGUF reader: mmap, then one validating pass over header, metadata and tensor infos.
//
// File layout (little-endian; "str" is a u64 byte length followed by the bytes):
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count  x { str key | u32 value_type | value }
//                 value: fixed-size scalar, str, or array { u32 elem_type | u64 n | n values }
//   tensor_count x { str name | u32 n_dims | u64 ne[n_dims] (innermost first) | u32 ggml_type
//                    | u64 offset (relative to the data section, a multiple of the alignment) }
//   zero padding to general.alignment (default 32) | data section: each tensor's
//   data padded to the alignment, in any order, back to back to the end of the file
// Versions 2 and 3 share this layout (v3 only allows big-endian files, which are refused);
// version 1 used 32-bit counts and lengths.
//
// Every count and length is checked against the bytes left before it is used, so a
// hostile file fails with a message, never a read past the mapping or a huge allocation.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/engine.h"
#include "io/gguf.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

#define GGUF_MAGIC 0x46554747u  // "GGUF" read as a little-endian u32
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_HEADER_BYTES 24

typedef struct {
  char *key;
  wk_gguf_value val;
  char *cstr;         // STRING: NUL-terminated copy
  wk_gguf_str *strs;  // ARRAY of STRING: one view per element
} gguf_kv;

// Open-addressing table of indices into a name list (keys or tensor names).
typedef struct { int64_t *slot; size_t mask; } name_index;

struct wk_gguf {
  char *path;
  const uint8_t *map;
  size_t size;
  int mapped;           // map came from mmap (munmap it; zero-copy tensors allowed)
  atomic_int refs;      // the handle plus each zero-copy tensor
  uint32_t version;
  size_t alignment;
  uint64_t data_offset;
  int64_t n_kv, n_tensors;
  gguf_kv *kv;
  wk_gguf_tensor *tensors;
  name_index kv_index, tensor_index;
};

// ---- errors ----
static wk_status gguf_fail(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static wk_status gguf_fail(const char *path, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return wk_error(WK_ERR_IO, "gguf: %s: %s", path, msg);
}

// ---- bounded reading ----
typedef struct { const uint8_t *p; size_t size, pos; const char *path; } cursor;

static size_t left(const cursor *c) { return c->size - c->pos; }

static bool need(cursor *c, uint64_t n, const char *what) {
  if (n <= left(c)) return true;
  gguf_fail(c->path, "%s at byte %zu needs %llu bytes, but the file ends at byte %zu", what, c->pos,
            (unsigned long long)n, c->size);
  return false;
}
static bool rd_u32(cursor *c, uint32_t *v, const char *what) {
  if (!need(c, 4, what)) return false;
  memcpy(v, c->p + c->pos, 4);
  c->pos += 4;
  return true;
}
static bool rd_u64(cursor *c, uint64_t *v, const char *what) {
  if (!need(c, 8, what)) return false;
  memcpy(v, c->p + c->pos, 8);
  c->pos += 8;
  return true;
}
// A length-prefixed string; the message names the length field when it is too long.
static bool rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
  if (!rd_u64(c, len, what)) return false;
  if (*len > left(c)) {
    gguf_fail(c->path, "%s: string length %llu at byte %zu runs past the end of the file (%zu bytes left)",
              what, (unsigned long long)*len, c->pos - 8, left(c));
    return false;
  }
  *s = c->p + c->pos;
  c->pos += (size_t)*len;
  return true;
}

// ---- value types ----
static const char *const vtype_names[WK_GGUF_TYPE_COUNT] = {
  "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
static const uint8_t vtype_sizes[WK_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *wk_gguf_vtype_name(int vtype) {
  return vtype >= 0 && vtype < WK_GGUF_TYPE_COUNT ? vtype_names[vtype] : "?";
}
// Fewest bytes one element of the type can take: bounds array counts.
static size_t vtype_min_bytes(uint32_t t) {
  return t == WK_GGUF_STRING ? 8 : t == WK_GGUF_ARRAY ? 12 : vtype_sizes[t];
}
// "u32", "array[string]"
static const char *value_type_str(const wk_gguf_value *v, char *buf, size_t len) {
  if (v->type != WK_GGUF_ARRAY) return wk_gguf_vtype_name(v->type);
  snprintf(buf, len, "array[%s]", wk_gguf_vtype_name(v->elem_type));
  return buf;
}

// Validates one value of type t at the cursor and describes it in *out. `what`
// names the key for messages.
static bool parse_value(cursor *c, uint32_t t, int depth, wk_gguf_value *out, const char *what) {
  *out = (wk_gguf_value){.type = (wk_gguf_vtype)t, .count = 1};
  if (t >= WK_GGUF_TYPE_COUNT) {
    gguf_fail(c->path, "%s: unknown value type %u at byte %zu", what, t, c->pos);
    return false;
  }
  if (t == WK_GGUF_STRING) {
    const uint8_t *s;
    if (!rd_str(c, &s, &out->count, what)) return false;
    out->data = s;
    out->size = (size_t)out->count;
    return true;
  }
  if (t != WK_GGUF_ARRAY) {
    if (!need(c, vtype_sizes[t], what)) return false;
    out->data = c->p + c->pos;
    out->size = vtype_sizes[t];
    c->pos += vtype_sizes[t];
    return true;
  }
  if (depth >= WK_GGUF_MAX_ARRAY_DEPTH) {
    gguf_fail(c->path, "%s: arrays nested more than %d deep at byte %zu", what, WK_GGUF_MAX_ARRAY_DEPTH, c->pos);
    return false;
  }
  uint32_t et;
  uint64_t n;
  if (!rd_u32(c, &et, what) || !rd_u64(c, &n, what)) return false;
  if (et >= WK_GGUF_TYPE_COUNT) {
    gguf_fail(c->path, "%s: array of unknown element type %u at byte %zu", what, et, c->pos - 12);
    return false;
  }
  size_t min = vtype_min_bytes(et);
  if (n > left(c) / min) {
    gguf_fail(c->path, "%s: array count %llu of %s at byte %zu cannot fit in the %zu bytes left",
              what, (unsigned long long)n, vtype_names[et], c->pos - 8, left(c));
    return false;
  }
  out->elem_type = (wk_gguf_vtype)et;
  out->count = n;
  out->data = c->p + c->pos;
  if (et != WK_GGUF_STRING && et != WK_GGUF_ARRAY) {
    c->pos += (size_t)n * min;
  } else {
    wk_gguf_value elem;
    for (uint64_t i = 0; i < n; i++)
      if (!parse_value(c, et, depth + 1, &elem, what)) return false;
  }
  out->size = c->pos - (size_t)(out->data - c->p);
  
  return true;
}

// Bytes spanned by an element of an already validated value (header included).
static size_t elem_span(uint32_t t, const uint8_t *p) {
  if (t == WK_GGUF_STRING) { uint64_t n; memcpy(&n, p, 8); return 8 + (size_t)n; }
  if (t != WK_GGUF_ARRAY) return vtype_sizes[t];
  uint32_t et;
  uint64_t n;
  memcpy(&et, p, 4);
  memcpy(&n, p + 4, 8);
  size_t off = 12;
  if (et != WK_GGUF_STRING && et != WK_GGUF_ARRAY) return off + (size_t)n * vtype_sizes[et];
  for (uint64_t i = 0; i < n; i++) off += elem_span(et, p + off);
  return off;
}

// Describes the element at p (validated) of type t.
static void elem_value(uint32_t t, const uint8_t *p, wk_gguf_value *out) {
  *out = (wk_gguf_value){.type = (wk_gguf_vtype)t, .count = 1, .data = p};
  if (t == WK_GGUF_STRING) {
    memcpy(&out->count, p, 8);
    out->data = p + 8;
    out->size = (size_t)out->count;
  } else if (t == WK_GGUF_ARRAY) {
    uint32_t et;
    memcpy(&et, p, 4);
    memcpy(&out->count, p + 4, 8);
    out->elem_type = (wk_gguf_vtype)et;
    out->data = p + 12;
    out->size = elem_span(t, p) - 12;
  } else {
    out->size = vtype_sizes[t];
  }
}

wk_status wk_gguf_array_elem(const wk_gguf_value *arr, uint64_t i, wk_gguf_value *out) {
  if (!arr || !out) return wk_error(WK_ERR_ARG, "gguf: array_elem: NULL argument");
  if (arr->type != WK_GGUF_ARRAY)
    return wk_error(WK_ERR_DTYPE, "gguf: array_elem: value is %s, not an array", wk_gguf_vtype_name(arr->type));
  if (i >= arr->count)
    return wk_error(WK_ERR_ARG, "gguf: array_elem: index %llu out of range for %llu elements",
                    (unsigned long long)i, (unsigned long long)arr->count);
  uint32_t et = arr->elem_type;
  const uint8_t *p = arr->data;
  if (et != WK_GGUF_STRING && et != WK_GGUF_ARRAY) p += (size_t)i * vtype_sizes[et];
  else for (uint64_t k = 0; k < i; k++) p += elem_span(et, p);
  elem_value(et, p, out);
  return WK_OK;
}

// ---- name index ----
static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static bool index_init(name_index *ix, int64_t n) {
  size_t cap = 16;
  while (cap < (size_t)n * 2) cap *= 2;
  ix->slot = malloc(cap * sizeof *ix->slot);
  if (!ix->slot) return false;
  for (size_t i = 0; i < cap; i++) ix->slot[i] = -1;
  ix->mask = cap - 1;
  return true;
}

// Position of name's slot: either holding it or the empty one where it would go.
static size_t index_probe(const name_index *ix, const char *name, const char *(*get)(const void *, int64_t),
                          const void *ctx) {
  size_t i = (size_t)hash_name(name) & ix->mask;
  while (ix->slot[i] >= 0 && strcmp(get(ctx, ix->slot[i]), name) != 0) i = (i + 1) & ix->mask;
  return i;
}

static const char *kv_name(const void *ctx, int64_t i) { return ((const wk_gguf *)ctx)->kv[i].key; }
static const char *tensor_name(const void *ctx, int64_t i) { return ((const wk_gguf *)ctx)->tensors[i].name; }

// Copies a name out of the file: names are C strings in wick, so an embedded NUL is refused.
static char *dup_name(cursor *c, const uint8_t *s, uint64_t len, const char *what) {
  if (memchr(s, 0, (size_t)len)) {
    gguf_fail(c->path, "%s contains a NUL byte", what);
    return NULL;
  }
  char *d = malloc((size_t)len + 1);
  if (!d) { wk_error(WK_ERR_OOM, "gguf: %s: out of memory", c->path); return NULL; }
  memcpy(d, s, (size_t)len);
  d[len] = 0;
  return d;
}

// ---- lifetime ----
static void gguf_release(wk_gguf *f) {
  if (!f || atomic_fetch_sub(&f->refs, 1) != 1) return;
  for (int64_t i = 0; f->kv && i < f->n_kv; i++) {
    free(f->kv[i].key);
    free(f->kv[i].cstr);
    free(f->kv[i].strs);
  }
  for (int64_t i = 0; f->tensors && i < f->n_tensors; i++) free((char *)f->tensors[i].name);
  free(f->kv);
  free(f->tensors);
  free(f->kv_index.slot);
  free(f->tensor_index.slot);
  if (f->mapped && f->map) munmap((void *)f->map, f->size);
  free(f->path);
  free(f);
}
static void gguf_release_cb(void *ctx) { gguf_release(ctx); }

void wk_gguf_close(wk_gguf *f) { gguf_release(f); }

// ---- parsing ----
static bool parse_kvs(wk_gguf *f, cursor *c) {
  f->kv = calloc((size_t)f->n_kv ? (size_t)f->n_kv : 1, sizeof *f->kv);
  if (!f->kv || !index_init(&f->kv_index, f->n_kv)) {
    wk_error(WK_ERR_OOM, "gguf: %s: out of memory for %lld keys", f->path, (long long)f->n_kv);
    return false;
  }
  char what[160];
  for (int64_t i = 0; i < f->n_kv; i++) {
    gguf_kv *kv = &f->kv[i];
    const uint8_t *s;
    uint64_t len;
    uint32_t t;
    snprintf(what, sizeof what, "key #%lld", (long long)i);
    if (!rd_str(c, &s, &len, what) || !(kv->key = dup_name(c, s, len, what))) return false;
    snprintf(what, sizeof what, "value of key '%.100s'", kv->key);
    if (!rd_u32(c, &t, what) || !parse_value(c, t, 0, &kv->val, what)) return false;
    size_t slot = index_probe(&f->kv_index, kv->key, kv_name, f);
    if (f->kv_index.slot[slot] >= 0) {
      gguf_fail(f->path, "duplicate key '%.100s' (key #%lld)", kv->key, (long long)i);
      return false;
    }
    f->kv_index.slot[slot] = i;
    if (t == WK_GGUF_STRING) {
      kv->cstr = malloc(kv->val.size + 1);
      if (!kv->cstr) return wk_error(WK_ERR_OOM, "gguf: %s: out of memory", f->path), false;
      memcpy(kv->cstr, kv->val.data, kv->val.size);
      kv->cstr[kv->val.size] = 0;
    } else if (t == WK_GGUF_ARRAY && kv->val.elem_type == WK_GGUF_STRING) {
      kv->strs = malloc((size_t)(kv->val.count ? kv->val.count : 1) * sizeof *kv->strs);
      if (!kv->strs) return wk_error(WK_ERR_OOM, "gguf: %s: out of memory", f->path), false;
      const uint8_t *p = kv->val.data;
      for (uint64_t k = 0; k < kv->val.count; k++) {
        uint64_t n;
        memcpy(&n, p, 8);
        kv->strs[k] = (wk_gguf_str){(const char *)p + 8, (size_t)n};
        p += 8 + n;
      }
    }
  }
  return true;
}

static bool parse_alignment(wk_gguf *f) {
  f->alignment = GGUF_DEFAULT_ALIGNMENT;
  int64_t i = wk_gguf_find_key(f, "general.alignment");
  if (i < 0) return true;
  const wk_gguf_value *v = &f->kv[i].val;
  char tb[32];
  if (v->type != WK_GGUF_U32) {
    gguf_fail(f->path, "general.alignment is %s, expected u32", value_type_str(v, tb, sizeof tb));
    return false;
  }
  uint32_t a;
  memcpy(&a, v->data, 4);
  if (a == 0 || (a & (a - 1))) {
    gguf_fail(f->path, "general.alignment %u is not a power of two", a);
    return false;
  }
  f->alignment = a;
  return true;
}

static bool parse_tensor_infos(wk_gguf *f, cursor *c) {
  f->tensors = calloc((size_t)f->n_tensors ? (size_t)f->n_tensors : 1, sizeof *f->tensors);
  if (!f->tensors || !index_init(&f->tensor_index, f->n_tensors)) {
    wk_error(WK_ERR_OOM, "gguf: %s: out of memory for %lld tensors", f->path, (long long)f->n_tensors);
    return false;
  }
  char what[160];
  for (int64_t i = 0; i < f->n_tensors; i++) {
    wk_gguf_tensor *t = &f->tensors[i];
    const uint8_t *s;
    uint64_t len;
    uint32_t ndim, type;
    snprintf(what, sizeof what, "name of tensor #%lld", (long long)i);
    if (!rd_str(c, &s, &len, what) || !(t->name = dup_name(c, s, len, what))) return false;
    size_t slot = index_probe(&f->tensor_index, t->name, tensor_name, f);
    if (f->tensor_index.slot[slot] >= 0) {
      gguf_fail(f->path, "duplicate tensor name '%.100s' (tensor #%lld)", t->name, (long long)i);
      return false;
    }
    f->tensor_index.slot[slot] = i;
    snprintf(what, sizeof what, "tensor '%.100s'", t->name);
    if (!rd_u32(c, &ndim, what)) return false;
    if (ndim > WK_MAX_DIMS) {
      gguf_fail(f->path, "tensor '%.100s' has %u dims (wick reads at most %d)", t->name, ndim, WK_MAX_DIMS);
      return false;
    }
    t->ndim = (int)ndim;
    for (uint32_t d = 0; d < ndim; d++) {
      uint64_t ne;
      if (!rd_u64(c, &ne, what)) return false;
      if (ne > (uint64_t)INT64_MAX) {
        gguf_fail(f->path, "tensor '%.100s' dim %u is %llu", t->name, d, (unsigned long long)ne);
        return false;
      }
      t->shape[ndim - 1 - d] = (int64_t)ne;  // GGUF lists the innermost dim first
    }
    if (!rd_u32(c, &type, what) || !rd_u64(c, &t->file_offset, what)) return false;
    if (!wk_quant_type_size((int)type)) {
      gguf_fail(f->path, "tensor '%.100s' has unknown ggml type %u", t->name, type);
      return false;
    }
    t->type = (wk_qtype)type;
  }
  return true;
}

static int cmp_offset(const void *a, const void *b) {
  const wk_gguf_tensor *x = *(wk_gguf_tensor *const *)a, *y = *(wk_gguf_tensor *const *)b;
  return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

static uint64_t align_up(uint64_t x, size_t a) { return (x + a - 1) / a * a; }

// Non-empty tensors (sorted by offset) must tile the data section: each starts where
// the previous one's data, padded to the alignment, ends (the first at the section's
// start), and the file ends within one alignment of the last one. Every writer lays
// data out so (llama.cpp refuses any other layout); a wrong tensor count or offset
// breaks it, where it would otherwise shift every tensor's bytes unnoticed.
static bool tile_data(const wk_gguf *f, wk_gguf_tensor *const *order, int64_t n) {
  uint64_t expect = f->data_offset;
  for (int64_t i = 0; i < n; i++) {
    const wk_gguf_tensor *a = i ? order[i - 1] : NULL, *b = order[i];
    if (a && a->file_offset + a->bytes > b->file_offset) {
      gguf_fail(f->path, "tensors '%.100s' (bytes %llu..%llu) and '%.100s' (bytes %llu..%llu) overlap",
                a->name, (unsigned long long)a->file_offset, (unsigned long long)(a->file_offset + a->bytes),
                b->name, (unsigned long long)b->file_offset, (unsigned long long)(b->file_offset + b->bytes));
      return false;
    }
    if (b->file_offset != expect) {
      gguf_fail(f->path, "%llu bytes at data offset %llu, before tensor '%.100s', belong to no tensor (wrong "
                "tensor offsets or count?)", (unsigned long long)(b->file_offset - expect),
                (unsigned long long)(expect - f->data_offset), b->name);
      return false;
    }
    expect = align_up(b->file_offset + b->bytes, f->alignment);
  }
  if (n) {
    const wk_gguf_tensor *last = order[n - 1];
    uint64_t end = last->file_offset + last->bytes;
    if (f->size - end >= f->alignment) {
      gguf_fail(f->path, "the last tensor's data ('%.100s') ends at byte %llu, but the file goes on to byte %zu: "
                "%llu bytes belong to no tensor (a tensor count too small?)", last->name, (unsigned long long)end,
                f->size, (unsigned long long)(f->size - end));
      return false;
    }
  }
  return true;
}

// Sizes, offsets and overlaps, once the data section's start is known.
static bool place_tensors(wk_gguf *f) {
  char shape[160];
  for (int64_t i = 0; i < f->n_tensors; i++) {
    wk_gguf_tensor *t = &f->tensors[i];
    // zeros skipped: an empty tensor's other dims must still have strides that fit
    int64_t numel = 1, nonzero = 8;
    for (int d = 0; d < t->ndim; d++)
      if (__builtin_mul_overflow(numel, t->shape[d], &numel) ||
          (t->shape[d] && __builtin_mul_overflow(nonzero, t->shape[d], &nonzero))) {
        gguf_fail(f->path, "tensor '%.100s' shape %s has too many elements", t->name,
                  wk_fmt_shape(t->ndim, t->shape, shape, sizeof shape));
        return false;
      }
    int64_t block = wk_quant_block_size(t->type);
    t->numel = numel;
    t->row_len = t->ndim ? t->shape[t->ndim - 1] : 1;
    if (t->row_len % block) {
      gguf_fail(f->path, "tensor '%.100s' shape %s: rows of %lld values are not a whole number of %s blocks of %lld",
                t->name, wk_fmt_shape(t->ndim, t->shape, shape, sizeof shape), (long long)t->row_len,
                wk_qtype_name(t->type), (long long)block);
      return false;
    }
    t->nrows = t->row_len ? numel / t->row_len : 0;
    uint64_t bytes, start, end;
    uint64_t row_bytes = (uint64_t)(t->row_len / block) * wk_quant_type_size(t->type);
    if (__builtin_mul_overflow(row_bytes, (uint64_t)t->nrows, &bytes) || bytes > SIZE_MAX) {
      gguf_fail(f->path, "tensor '%.100s' shape %s is too large", t->name,
                wk_fmt_shape(t->ndim, t->shape, shape, sizeof shape));
      return false;
    }
    t->row_bytes = (size_t)row_bytes;
    t->bytes = (size_t)bytes;
    if (t->file_offset % f->alignment) {
      gguf_fail(f->path, "tensor '%.100s' data offset %llu is not a multiple of the alignment %zu",
                t->name, (unsigned long long)t->file_offset, f->alignment);
      return false;
    }
    if (__builtin_add_overflow(f->data_offset, t->file_offset, &start) ||
        __builtin_add_overflow(start, bytes, &end) || end > f->size) {
      gguf_fail(f->path, "tensor '%.100s' (%s %s, %llu bytes) at data offset %llu runs past the end of the file (%zu bytes, data section at %llu)",
                t->name, wk_qtype_name(t->type), wk_fmt_shape(t->ndim, t->shape, shape, sizeof shape),
                (unsigned long long)bytes, (unsigned long long)t->file_offset, f->size,
                (unsigned long long)f->data_offset);
      return false;
    }
    t->file_offset = start;  // absolute from here on
    t->data = f->map + start;
  }
  wk_gguf_tensor **order = malloc((size_t)(f->n_tensors ? f->n_tensors : 1) * sizeof *order);
  if (!order) return wk_error(WK_ERR_OOM, "gguf: %s: out of memory", f->path), false;
  int64_t n = 0;
  for (int64_t i = 0; i < f->n_tensors; i++)
    if (f->tensors[i].bytes) order[n++] = &f->tensors[i];
  qsort(order, (size_t)n, sizeof *order, cmp_offset);
  bool ok = tile_data(f, order, n);
  free(order);
  return ok;
}

// The bytes from the end of the tensor infos to the aligned data section are padding,
// which writers fill with zeros (gguf-py, llama.cpp). Anything else there means the
// counts do not describe the file: a tensor info left uncounted starts with its name
// length, and reading on would take every tensor's data from the wrong bytes.
static bool check_padding(const wk_gguf *f, size_t end) {
  size_t stop = f->data_offset < f->size ? (size_t)f->data_offset : f->size;
  for (size_t i = end; i < stop; i++)
    if (f->map[i]) {
      gguf_fail(f->path, "byte %zu, in the padding between the tensor infos (ending at byte %zu) and the data "
                "section (byte %llu), is 0x%02x, not zero: the header's tensor count (%lld) or key count (%lld) "
                "does not match the file", i, end, (unsigned long long)f->data_offset, f->map[i],
                (long long)f->n_tensors, (long long)f->n_kv);
      return false;
    }
  return true;
}

static bool parse(wk_gguf *f) {
  cursor c = {f->map, f->size, 0, f->path};
  if (f->size < GGUF_HEADER_BYTES) {
    gguf_fail(f->path, "truncated header: the file is %zu bytes, a GGUF header needs %d", f->size,
              GGUF_HEADER_BYTES);
    return false;
  }
  uint32_t magic;
  uint64_t nt, nkv;
  rd_u32(&c, &magic, "magic");
  if (magic != GGUF_MAGIC) {
    const uint8_t *m = f->map;
    gguf_fail(f->path, "bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file", m[0], m[1], m[2], m[3]);
    return false;
  }
  rd_u32(&c, &f->version, "version");
  if (f->version != 2 && f->version != 3) {
    uint32_t v = f->version, swapped = __builtin_bswap32(v);
    if (swapped == 2 || swapped == 3)
      gguf_fail(f->path, "big-endian GGUF (version field %u) is not supported", v);
    else if (v == 1)
      gguf_fail(f->path, "GGUF version 1 is not supported (only versions 2 and 3)");
    else
      gguf_fail(f->path, "unsupported GGUF version %u (only versions 2 and 3)", v);
    return false;
  }
  rd_u64(&c, &nt, "tensor count");
  rd_u64(&c, &nkv, "key count");
  // Each key takes at least 13 bytes (length, type, a 1-byte value) and each tensor
  // info at least 24 (name length, n_dims, type, offset).
  if (nkv > left(&c) / 13) {
    gguf_fail(f->path, "key count %llu cannot fit in the %zu bytes after the header", (unsigned long long)nkv, left(&c));
    return false;
  }
  if (nt > left(&c) / 24 || nt * 24 + nkv * 13 > left(&c)) {
    gguf_fail(f->path, "tensor count %llu cannot fit in the %zu bytes after the header", (unsigned long long)nt, left(&c));
    return false;
  }
  f->n_kv = (int64_t)nkv;
  f->n_tensors = (int64_t)nt;
  if (!parse_kvs(f, &c) || !parse_alignment(f) || !parse_tensor_infos(f, &c)) return false;
  f->data_offset = align_up(c.pos, f->alignment);
  return check_padding(f, c.pos) && place_tensors(f);
}

static wk_gguf *gguf_new(const char *name) {
  wk_gguf *f = calloc(1, sizeof *f);
  if (f) f->path = malloc(strlen(name) + 1);
  if (!f || !f->path) {
    free(f);
    wk_error(WK_ERR_OOM, "gguf: %s: out of memory", name);
    return NULL;
  }
  strcpy(f->path, name);
  atomic_init(&f->refs, 1);
  return f;
}

wk_gguf *wk_gguf_open_memory(const void *data, size_t size, const char *name) {
  if (!name) name = "<memory>";
  if (!data && size) { wk_error(WK_ERR_ARG, "gguf: %s: NULL data", name); return NULL; }
  wk_gguf *f = gguf_new(name);
  if (!f) return NULL;
  f->map = data;
  f->size = size;
  if (!parse(f)) { gguf_release(f); return NULL; }
  return f;
}

wk_gguf *wk_gguf_open(const char *path) {
  if (!path) { wk_error(WK_ERR_ARG, "gguf: NULL path"); return NULL; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { gguf_fail(path, "cannot open: %s", strerror(errno)); return NULL; }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    gguf_fail(path, "not a regular file");
    close(fd);
    return NULL;
  }
  wk_gguf *f = gguf_new(path);
  if (!f) { close(fd); return NULL; }
  f->size = (size_t)st.st_size;
  if (f->size) {
    // Private and writable: a zero-copy tensor written to (an optimizer step) gets
    // its own pages instead of faulting, and the file never changes.
    void *m = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      gguf_fail(path, "mmap of %zu bytes failed: %s", f->size, strerror(errno));
      close(fd);
      gguf_release(f);
      return NULL;
    }
    f->map = m;
    f->mapped = 1;
  }
  close(fd);
  if (!parse(f)) { gguf_release(f); return NULL; }
  return f;
}

// ---- accessors ----
const char *wk_gguf_path(const wk_gguf *f) { return f ? f->path : NULL; }
uint32_t wk_gguf_version(const wk_gguf *f) { return f ? f->version : 0; }
size_t wk_gguf_alignment(const wk_gguf *f) { return f ? f->alignment : 0; }
uint64_t wk_gguf_data_offset(const wk_gguf *f) { return f ? f->data_offset : 0; }
size_t wk_gguf_file_size(const wk_gguf *f) { return f ? f->size : 0; }
int64_t wk_gguf_kv_count(const wk_gguf *f) { return f ? f->n_kv : 0; }
int64_t wk_gguf_tensor_count(const wk_gguf *f) { return f ? f->n_tensors : 0; }

const char *wk_gguf_kv_key(const wk_gguf *f, int64_t i) {
  return f && i >= 0 && i < f->n_kv ? f->kv[i].key : NULL;
}

wk_status wk_gguf_kv_value(const wk_gguf *f, int64_t i, wk_gguf_value *out) {
  if (!f || !out) return wk_error(WK_ERR_ARG, "gguf: kv_value: NULL argument");
  if (i < 0 || i >= f->n_kv)
    return wk_error(WK_ERR_ARG, "gguf: %s: key index %lld out of range (%lld keys)", f->path, (long long)i,
                    (long long)f->n_kv);
  *out = f->kv[i].val;
  return WK_OK;
}

int64_t wk_gguf_find_key(const wk_gguf *f, const char *key) {
  if (!f || !key || !f->kv_index.slot) return -1;
  return f->kv_index.slot[index_probe(&f->kv_index, key, kv_name, f)];
}

int wk_gguf_has_key(const wk_gguf *f, const char *key) { return wk_gguf_find_key(f, key) >= 0; }

static wk_status find_kv(const wk_gguf *f, const char *key, const gguf_kv **kv) {
  if (!f || !key) return wk_error(WK_ERR_ARG, "gguf: NULL file or key");
  int64_t i = wk_gguf_find_key(f, key);
  if (i < 0) return wk_error(WK_ERR_ARG, "gguf: key '%s' not found in %s", key, f->path);
  *kv = &f->kv[i];
  return WK_OK;
}

static wk_status type_error(const wk_gguf *f, const char *key, const wk_gguf_value *v, const char *want) {
  char tb[32];
  return wk_error(WK_ERR_DTYPE, "gguf: key '%s' in %s is %s, expected %s", key, f->path,
                  value_type_str(v, tb, sizeof tb), want);
}

// The value of key, which must be of type t (and, for arrays, elements of type et).
static wk_status find_typed(const wk_gguf *f, const char *key, wk_gguf_vtype t, int et, const gguf_kv **kv) {
  wk_status s = find_kv(f, key, kv);
  if (s) return s;
  const wk_gguf_value *v = &(*kv)->val;
  if (v->type != t || (et >= 0 && v->elem_type != (wk_gguf_vtype)et)) {
    char want[32];
    if (t == WK_GGUF_ARRAY && et >= 0) snprintf(want, sizeof want, "array[%s]", wk_gguf_vtype_name(et));
    else snprintf(want, sizeof want, "%s", wk_gguf_vtype_name(t));
    return type_error(f, key, v, want);
  }
  return WK_OK;
}

wk_status wk_gguf_get_value(const wk_gguf *f, const char *key, wk_gguf_value *out) {
  const gguf_kv *kv = NULL;
  wk_status s = find_kv(f, key, &kv);
  if (s) return s;
  if (!out) return wk_error(WK_ERR_ARG, "gguf: get_value: NULL out");
  *out = kv->val;
  return WK_OK;
}

#define GGUF_GETTER(fn, ctype, vt)                                              \
  wk_status wk_gguf_get_##fn(const wk_gguf *f, const char *key, ctype *out) {   \
    const gguf_kv *kv = NULL;                                                          \
    wk_status s = find_typed(f, key, vt, -1, &kv);                              \
    if (s) return s;                                                            \
    if (!out) return wk_error(WK_ERR_ARG, "gguf: get_" #fn ": NULL out");       \
    memcpy(out, kv->val.data, sizeof *out);                                     \
    return WK_OK;                                                               \
  }
GGUF_GETTER(u8, uint8_t, WK_GGUF_U8)
GGUF_GETTER(i8, int8_t, WK_GGUF_I8)
GGUF_GETTER(u16, uint16_t, WK_GGUF_U16)
GGUF_GETTER(i16, int16_t, WK_GGUF_I16)
GGUF_GETTER(u32, uint32_t, WK_GGUF_U32)
GGUF_GETTER(i32, int32_t, WK_GGUF_I32)
GGUF_GETTER(u64, uint64_t, WK_GGUF_U64)
GGUF_GETTER(i64, int64_t, WK_GGUF_I64)
GGUF_GETTER(f32, float, WK_GGUF_F32)
GGUF_GETTER(f64, double, WK_GGUF_F64)
#undef GGUF_GETTER

wk_status wk_gguf_get_bool(const wk_gguf *f, const char *key, int *out) {
  const gguf_kv *kv = NULL;
  wk_status s = find_typed(f, key, WK_GGUF_BOOL, -1, &kv);
  if (s) return s;
  if (!out) return wk_error(WK_ERR_ARG, "gguf: get_bool: NULL out");
  *out = kv->val.data[0] != 0;
  return WK_OK;
}

wk_status wk_gguf_get_int(const wk_gguf *f, const char *key, int64_t *out) {
  const gguf_kv *kv = NULL;
  wk_status s = find_kv(f, key, &kv);
  if (s) return s;
  if (!out) return wk_error(WK_ERR_ARG, "gguf: get_int: NULL out");
  const uint8_t *p = kv->val.data;
  switch (kv->val.type) {
  case WK_GGUF_U8: *out = p[0]; return WK_OK;
  case WK_GGUF_I8: *out = (int8_t)p[0]; return WK_OK;
  case WK_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return WK_OK; }
  case WK_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return WK_OK; }
  case WK_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return WK_OK; }
  case WK_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return WK_OK; }
  case WK_GGUF_I64: memcpy(out, p, 8); return WK_OK;
  case WK_GGUF_U64: {
    uint64_t v;
    memcpy(&v, p, 8);
    if (v > (uint64_t)INT64_MAX)
      return wk_error(WK_ERR_ARG, "gguf: key '%s' in %s is %llu, too large for int64", key, f->path,
                      (unsigned long long)v);
    *out = (int64_t)v;
    return WK_OK;
  }
  default: return type_error(f, key, &kv->val, "an integer");
  }
}

wk_status wk_gguf_get_float(const wk_gguf *f, const char *key, double *out) {
  const gguf_kv *kv = NULL;
  wk_status s = find_kv(f, key, &kv);
  if (s) return s;
  if (!out) return wk_error(WK_ERR_ARG, "gguf: get_float: NULL out");
  if (kv->val.type == WK_GGUF_F32) { float v; memcpy(&v, kv->val.data, 4); *out = v; return WK_OK; }
  if (kv->val.type == WK_GGUF_F64) { memcpy(out, kv->val.data, 8); return WK_OK; }
  return type_error(f, key, &kv->val, "f32 or f64");
}

wk_status wk_gguf_get_str(const wk_gguf *f, const char *key, const char **out) {
  const gguf_kv *kv = NULL;
  wk_status s = find_typed(f, key, WK_GGUF_STRING, -1, &kv);
  if (s) return s;
  if (!out) return wk_error(WK_ERR_ARG, "gguf: get_str: NULL out");
  *out = kv->cstr;
  return WK_OK;
}

wk_status wk_gguf_get_str_array(const wk_gguf *f, const char *key, const wk_gguf_str **items, uint64_t *n) {
  const gguf_kv *kv = NULL;
  wk_status s = find_typed(f, key, WK_GGUF_ARRAY, WK_GGUF_STRING, &kv);
  if (s) return s;
  if (!items || !n) return wk_error(WK_ERR_ARG, "gguf: get_str_array: NULL out");
  *items = kv->strs;
  *n = kv->val.count;
  return WK_OK;
}

wk_status wk_gguf_get_array_info(const wk_gguf *f, const char *key, wk_gguf_vtype *elem, uint64_t *n) {
  const gguf_kv *kv = NULL;
  wk_status s = find_typed(f, key, WK_GGUF_ARRAY, -1, &kv);
  if (s) return s;
  if (elem) *elem = kv->val.elem_type;
  if (n) *n = kv->val.count;
  return WK_OK;
}

wk_status wk_gguf_get_array(const wk_gguf *f, const char *key, wk_gguf_vtype elem, void *out, uint64_t n) {
  if ((unsigned)elem >= WK_GGUF_TYPE_COUNT || elem == WK_GGUF_STRING || elem == WK_GGUF_ARRAY)
    return wk_error(WK_ERR_ARG, "gguf: get_array('%s'): element type %s is not numeric (use get_str_array "
                    "or get_value)", key ? key : "?", wk_gguf_vtype_name(elem));
  const gguf_kv *kv = NULL;
  wk_status s = find_typed(f, key, WK_GGUF_ARRAY, (int)elem, &kv);
  if (s) return s;
  if (n != kv->val.count)
    return wk_error(WK_ERR_ARG, "gguf: key '%s' in %s has %llu elements, the caller expects %llu", key, f->path,
                    (unsigned long long)kv->val.count, (unsigned long long)n);
  if (n && !out) return wk_error(WK_ERR_ARG, "gguf: get_array: NULL out");
  if (n) memcpy(out, kv->val.data, (size_t)n * vtype_sizes[elem]);
  return WK_OK;
}

wk_status wk_gguf_get_array_f32(const wk_gguf *f, const char *key, float *out, uint64_t n) {
  return wk_gguf_get_array(f, key, WK_GGUF_F32, out, n);
}
wk_status wk_gguf_get_array_i32(const wk_gguf *f, const char *key, int32_t *out, uint64_t n) {
  return wk_gguf_get_array(f, key, WK_GGUF_I32, out, n);
}

// ---- tensors ----
const wk_gguf_tensor *wk_gguf_tensor_at(const wk_gguf *f, int64_t i) {
  if (!f || i < 0 || i >= f->n_tensors) {
    wk_error(WK_ERR_ARG, "gguf: tensor index %lld out of range (%lld tensors)", (long long)i,
             (long long)(f ? f->n_tensors : 0));
    return NULL;
  }
  return &f->tensors[i];
}

const wk_gguf_tensor *wk_gguf_find_tensor(const wk_gguf *f, const char *name) {
  if (!f || !name) { wk_error(WK_ERR_ARG, "gguf: find_tensor: NULL file or name"); return NULL; }
  int64_t i = f->tensor_index.slot[index_probe(&f->tensor_index, name, tensor_name, f)];
  if (i < 0) { wk_error(WK_ERR_ARG, "gguf: tensor '%s' not found in %s", name, f->path); return NULL; }
  return &f->tensors[i];
}

// Wraps the mapping without a copy when the memory is ours and element-aligned.
static wk_tensor *wrap_mapped(wk_gguf *f, const wk_gguf_tensor *t, wk_dtype dt) {
  size_t es = wk_dtype_size(dt); // 0 for block types: kernels read their bytes unaligned
  if (!f->mapped || (es && (uintptr_t)t->data % es)) return NULL;
  atomic_fetch_add(&f->refs, 1);
  wk_tensor *x = wk_from_external(t->ndim, t->shape, dt, (void *)t->data, gguf_release_cb, f);
  if (!x) gguf_release(f);
  return x;
}

static void free_cb(void *p) { free(p); }

wk_tensor *wk_gguf_tensor_f32(wk_gguf *f, const char *name) {
  const wk_gguf_tensor *t = wk_gguf_find_tensor(f, name);
  if (!t) return NULL;
  if (!wk_quant_can_dequantize(t->type)) {
    wk_error(WK_ERR_DTYPE, "gguf: tensor '%s' in %s has type %s, which wick cannot dequantize "
             "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)", name, f->path, wk_qtype_name(t->type));
    return NULL;
  }
  if (t->type == WK_QT_F32) {
    wk_tensor *x = wrap_mapped(f, t, WK_F32);
    if (x) return x;
  }
  if ((uint64_t)t->numel > SIZE_MAX / sizeof(float)) {
    wk_error(WK_ERR_OOM, "gguf: tensor '%s' in %s is too large to dequantize", name, f->path);
    return NULL;
  }
  float *buf = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
  if (!buf) {
    wk_error(WK_ERR_OOM, "gguf: out of memory dequantizing tensor '%s' (%lld values)", name, (long long)t->numel);
    return NULL;
  }
  const uint8_t *src = t->data;
  for (int64_t r = 0; r < t->nrows; r++)
    if (wk_dequantize_row(t->type, src + (size_t)r * t->row_bytes, buf + r * t->row_len, t->row_len)) {
      free(buf);
      return NULL;
    }
  wk_tensor *x = wk_from_external(t->ndim, t->shape, WK_F32, buf, free_cb, buf);
  if (!x) free(buf);
  return x;
}

wk_tensor *wk_gguf_tensor_load(wk_gguf *f, const char *name) {
  const wk_gguf_tensor *t = wk_gguf_find_tensor(f, name);
  if (!t) return NULL;
  wk_dtype dt;
  switch (t->type) {
  case WK_QT_F32: dt = WK_F32; break;
  case WK_QT_F16: dt = WK_F16; break;
  case WK_QT_BF16: dt = WK_BF16; break;
  case WK_QT_Q8_0: dt = WK_Q8_0; break;
  case WK_QT_Q4_0: dt = WK_Q4_0; break;
  case WK_QT_Q4_1: dt = WK_Q4_1; break;
  case WK_QT_Q4_K: dt = WK_Q4_K; break;
  case WK_QT_Q5_K: dt = WK_Q5_K; break;
  case WK_QT_Q6_K: dt = WK_Q6_K; break;
  default:
    wk_error(WK_ERR_DTYPE, "gguf: tensor '%s' in %s has type %s: only F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, "
             "Q5_K and Q6_K load as wick tensors", name, f->path, wk_qtype_name(t->type));
    return NULL;
  }
  wk_tensor *x = wrap_mapped(f, t, dt);
  return x ? x : wk_from_data(t->ndim, t->shape, dt, t->data);
}
