// safetensors reader: mmap the file, validate the header completely, hand out
// zero-copy tensors that keep the mapping alive through a reference count.
// Layout: 8-byte little-endian header length N, N bytes of JSON header, data section.
#define _POSIX_C_SOURCE 200809L
#include "io/safetensors.h"
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores little-endian data; this reader assumes a little-endian host"
#endif

#define MAX_INDEX_BYTES ((size_t)256 << 20)

// Element sizes in bits: F4 and F6 pack several elements per byte.
static const struct { const char *name; unsigned bits; int wk; } dtypes[] = {
    {"F32", 32, WK_F32}, {"F16", 16, WK_F16}, {"BF16", 16, WK_BF16}, {"I32", 32, WK_I32},
    {"F64", 64, -1}, {"I64", 64, -1}, {"U64", 64, -1}, {"U32", 32, -1}, {"I16", 16, -1}, {"U16", 16, -1},
    {"I8", 8, -1}, {"U8", 8, -1}, {"BOOL", 8, -1}, {"F8_E4M3", 8, -1}, {"F8_E5M2", 8, -1},
    {"F8_E4M3FNUZ", 8, -1}, {"F8_E5M2FNUZ", 8, -1}, {"F8_E8M0", 8, -1}, {"C64", 64, -1},
    {"F4", 4, -1}, {"F6_E2M3", 6, -1}, {"F6_E3M2", 6, -1}};
#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

bool wk_st_dtype_lookup(const char *name, unsigned *bits, bool *loadable, wk_dtype *dt) {
  for (size_t k = 0; k < NDTYPES; k++)
    if (!strcmp(name, dtypes[k].name)) {
      *bits = dtypes[k].bits;
      *loadable = dtypes[k].wk >= 0;
      if (dtypes[k].wk >= 0) *dt = (wk_dtype)dtypes[k].wk;
      return true;
    }
  return false;
}

const char *wk_st_dtype_str(wk_dtype dt) {
  for (size_t k = 0; k < NDTYPES; k++)
    if (dtypes[k].wk == (int)dt) return dtypes[k].name;
  return NULL;
}

// ---- the mapping, shared by the file handle and every tensor taken from it ----
typedef struct {
  atomic_int refs;
  void *base;
  size_t size;
  char *path;
} st_map;

static void map_unref(void *ctx) {
  st_map *m = ctx;
  if (!m || atomic_fetch_sub(&m->refs, 1) != 1) return;
  if (m->base) munmap(m->base, m->size);
  free(m->path);
  free(m);
}

typedef struct {
  char *name;
  const char *dtype_name;   // static, from the table
  unsigned bits;            // element size in bits
  bool loadable;
  wk_dtype dt;
  int ndim;                 // may exceed WK_MAX_DIMS (then only the first dims are kept)
  int64_t shape[WK_MAX_DIMS];
  uint64_t off, nbytes;     // absolute offset in the mapping
  uint64_t rel;             // offset in the data section, as in the header
  st_map *map;
} st_entry;

struct wk_st_file {
  char *path;
  st_map **maps;            // one reference each
  int nmaps;
  st_entry *e;
  int n;
  int32_t *slots;           // open-addressing name index: entry number or -1
  size_t mask;
  char **meta;              // key, value, key, value, ...
  int nmeta;
};

void wk_st_close(wk_st_file *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) free(f->e[i].name);
  for (int i = 0; i < f->nmaps; i++) map_unref(f->maps[i]);
  for (int i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
  free(f->e);
  free(f->maps);
  free(f->slots);
  free(f->meta);
  free(f->path);
  free(f);
}

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static bool build_index(wk_st_file *f) {
  size_t cap = 16;
  while (cap < (size_t)f->n * 2) cap *= 2;
  f->slots = malloc(cap * sizeof *f->slots);
  if (!f->slots) return false;
  memset(f->slots, 0xff, cap * sizeof *f->slots);
  f->mask = cap - 1;
  for (int i = 0; i < f->n; i++) {
    size_t h = (size_t)hash_str(f->e[i].name) & f->mask;
    while (f->slots[h] >= 0) h = (h + 1) & f->mask;
    f->slots[h] = i;
  }
  return true;
}

int wk_st_find(const wk_st_file *f, const char *name) {
  if (!f || !name || !f->slots) return -1;
  for (size_t h = (size_t)hash_str(name) & f->mask; f->slots[h] >= 0; h = (h + 1) & f->mask)
    if (!strcmp(f->e[f->slots[h]].name, name)) return f->slots[h];
  return -1;
}

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) { memcpy(d, s, n); d[n] = 0; }
  return d;
}

// Adds key = value unless the key is already there (the first one wins).
static bool meta_add(wk_st_file *f, const char *key, size_t klen, const char *val, size_t vlen) {
  for (int i = 0; i < f->nmeta; i++)
    if (strlen(f->meta[2 * i]) == klen && !memcmp(f->meta[2 * i], key, klen)) return true;
  char **m = realloc(f->meta, (size_t)(f->nmeta + 1) * 2 * sizeof *m);
  if (!m) return false;
  f->meta = m;
  char *k = dup_n(key, klen), *v = dup_n(val, vlen);
  if (!k || !v) { free(k); free(v); return false; }
  m[2 * f->nmeta] = k;
  m[2 * f->nmeta + 1] = v;
  f->nmeta++;
  return true;
}

static bool add_map(wk_st_file *f, st_map *m) {
  st_map **ms = realloc(f->maps, (size_t)(f->nmaps + 1) * sizeof *ms);
  if (!ms) return false;
  f->maps = ms;
  atomic_fetch_add(&m->refs, 1);
  f->maps[f->nmaps++] = m;
  return true;
}

// "a JSON number", or "missing", for messages.
static const char *kind(const wk_json *v) {
  if (!v) return "missing";
  static const char *const k[] = {"a JSON null", "a JSON boolean", "a JSON number", "a JSON string", "a JSON array",
                                  "a JSON object"};
  return k[v->type];
}

static const char *fmt_json_dims(const wk_json *shape, char *buf, size_t len) {
  size_t o = 0;
  o += (size_t)snprintf(buf, len, "[");
  for (size_t i = 0; i < shape->n && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)shape->items[i].i);
  if (o < len) snprintf(buf + o, len - o, "]");
  return buf;
}

// ---- one file ----
static bool parse_entry(wk_st_file *f, st_entry *e, const wk_json *v, uint64_t data_start,
                        uint64_t data_size) {
  const char *path = f->path, *name = e->name;
  if (v->type != WK_JSON_OBJECT) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": header entry is %s, not an object", path, name, kind(v));
    return false;
  }
  const wk_json *dt = wk_json_get(v, "dtype"), *shape = wk_json_get(v, "shape"),
                *offs = wk_json_get(v, "data_offsets");
  if (!wk_json_is(dt, WK_JSON_STRING)) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": \"dtype\" is %s; it must be a string", path, name, kind(dt));
    return false;
  }
  if (!wk_st_dtype_lookup(dt->s, &e->bits, &e->loadable, &e->dt)) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": unknown dtype \"%.40s\"", path, name, dt->s);
    return false;
  }
  for (size_t k = 0; k < NDTYPES; k++)
    if (!strcmp(dt->s, dtypes[k].name)) e->dtype_name = dtypes[k].name;
  if (!wk_json_is(shape, WK_JSON_ARRAY)) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": \"shape\" is %s; it must be an array", path, name, kind(shape));
    return false;
  }
  // Dims are multiplied with zeros skipped: a 0 makes the tensor empty, but the
  // strides of the other dims must still fit in int64.
  uint64_t numel = 1;
  bool overflow = false, empty = false;
  for (size_t d = 0; d < shape->n; d++) {
    const wk_json *x = &shape->items[d];
    if (x->type != WK_JSON_NUMBER || !x->is_int || x->i < 0) {
      wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": shape dimension %zu is not a non-negative integer", path, name, d);
      return false;
    }
    uint64_t dim = (uint64_t)x->i;
    if (!dim) empty = true;
    else if (numel > (uint64_t)INT64_MAX / 8 / dim) overflow = true;
    else numel *= dim;
    if (d < WK_MAX_DIMS) e->shape[d] = x->i;
  }
  if (empty && !overflow) numel = 0;
  e->ndim = (int)(shape->n < 1000 ? shape->n : 1000);
  if (!overflow && numel > UINT64_MAX / e->bits) overflow = true;
  uint64_t expect = overflow ? 0 : (numel * e->bits + 7) / 8;
  if (!overflow && numel * e->bits % 8) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": %llu elements of %s don't fill whole bytes", path, name,
             (unsigned long long)numel, e->dtype_name);
    return false;
  }
  char dims[160];
  if (!wk_json_is(offs, WK_JSON_ARRAY) || offs->n != 2) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": \"data_offsets\" is not an array of two integers", path, name);
    return false;
  }
  for (int k = 0; k < 2; k++)
    if (offs->items[k].type != WK_JSON_NUMBER || !offs->items[k].is_int || offs->items[k].i < 0) {
      wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": data_offsets[%d] is not a non-negative integer", path, name, k);
      return false;
    }
  uint64_t b = (uint64_t)offs->items[0].i, end = (uint64_t)offs->items[1].i;
  if (b > end) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": data_offsets [%llu, %llu] end before they begin", path, name,
             (unsigned long long)b, (unsigned long long)end);
    return false;
  }
  if (end > data_size) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": data_offsets [%llu, %llu] out of range: the data section is %llu bytes (truncated file?)",
             path, name, (unsigned long long)b, (unsigned long long)end, (unsigned long long)data_size);
    return false;
  }
  if (overflow || expect != end - b) {
    wk_error(WK_ERR_IO, "%s: tensor \"%.200s\": shape %s of %s needs %s%llu bytes but data_offsets [%llu, %llu] span %llu bytes",
             path, name, fmt_json_dims(shape, dims, sizeof dims), e->dtype_name, overflow ? "more than " : "",
             (unsigned long long)(overflow ? UINT64_MAX : expect), (unsigned long long)b, (unsigned long long)end,
             (unsigned long long)(end - b));
    return false;
  }
  e->off = data_start + b;
  e->rel = b;
  e->nbytes = end - b;
  return true;
}

static int cmp_off(const void *a, const void *b) {
  const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
  return (x->off > y->off) - (x->off < y->off);
}

// Non-empty tensors, sorted by offset, must tile the data section: the first starts at
// 0, each where the previous one ends, and the last ends with the file. The reference
// library refuses any other layout (MetadataIncompleteBuffer, InvalidOffset): bytes no
// tensor owns mean wrong offsets or a wrong tensor list, and overlapping tensors alias.
static bool check_layout(wk_st_file *f, uint64_t data_size) {
  st_entry **order = malloc((size_t)(f->n ? f->n : 1) * sizeof *order);
  if (!order) { wk_error(WK_ERR_OOM, "%s: out of memory", f->path); return false; }
  for (int i = 0; i < f->n; i++) order[i] = &f->e[i];
  qsort(order, (size_t)f->n, sizeof *order, cmp_off);
  const st_entry *prev = NULL;
  uint64_t at = 0;   // where the next tensor must start
  bool ok = true;
  for (int i = 0; i < f->n && ok; i++) {
    const st_entry *e = order[i];
    if (!e->nbytes) continue;
    if (e->rel < at) {
      wk_error(WK_ERR_IO, "%s: tensors \"%.200s\" [%llu, %llu] and \"%.200s\" [%llu, %llu] overlap in the data section",
               f->path, prev->name, (unsigned long long)prev->rel, (unsigned long long)at, e->name,
               (unsigned long long)e->rel, (unsigned long long)(e->rel + e->nbytes));
      ok = false;
    } else if (e->rel > at) {
      wk_error(WK_ERR_IO, "%s: bytes [%llu, %llu) of the data section, before tensor \"%.200s\", belong to no tensor "
               "(tensors must cover the data section without gaps: wrong data_offsets?)", f->path,
               (unsigned long long)at, (unsigned long long)e->rel, e->name);
      ok = false;
    }
    at = e->rel + e->nbytes;
    prev = e;
  }
  if (ok && at != data_size) {
    char after[260] = "where the header lists no tensor data";
    if (prev) snprintf(after, sizeof after, "after the last tensor (\"%.200s\")", prev->name);
    wk_error(WK_ERR_IO, "%s: bytes [%llu, %llu) of the data section, %s, belong to no tensor (tensors must cover "
             "the data section exactly: a tensor missing from the header, or bytes appended?)", f->path,
             (unsigned long long)at, (unsigned long long)data_size, after);
    ok = false;
  }
  free(order);
  return ok;
}

static wk_st_file *fail_file(wk_st_file *f, wk_json *doc) {
  wk_json_free(doc);
  wk_st_close(f);
  return NULL;
}

static wk_st_file *open_single(const char *path) {
  wk_st_file *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) { free(f); wk_error(WK_ERR_OOM, "%s: out of memory", path); return NULL; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { wk_error(WK_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return fail_file(f, NULL); }
  struct stat st;
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    close(fd);
    wk_error(WK_ERR_IO, "%s: not a regular file", path);
    return fail_file(f, NULL);
  }
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    close(fd);
    wk_error(WK_ERR_IO, "%s: file is %zu bytes, too short for the 8-byte header length (truncated?)", path, size);
    return fail_file(f, NULL);
  }
  // Copy-on-write from a read-only descriptor: the file is never modified, and a
  // tensor written in place (wk_tensor_assign) can't fault on a read-only page.
  void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  close(fd);
  if (base == MAP_FAILED) {
    wk_error(WK_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(map_errno));
    return fail_file(f, NULL);
  }
  st_map *m = calloc(1, sizeof *m);
  if (!m || !(m->path = strdup(path))) {
    free(m);
    munmap(base, size);
    wk_error(WK_ERR_OOM, "%s: out of memory", path);
    return fail_file(f, NULL);
  }
  atomic_init(&m->refs, 1);
  m->base = base;
  m->size = size;
  f->maps = malloc(sizeof *f->maps);
  if (!f->maps) { map_unref(m); wk_error(WK_ERR_OOM, "%s: out of memory", path); return fail_file(f, NULL); }
  f->maps[0] = m;
  f->nmaps = 1;

  uint64_t hlen;
  memcpy(&hlen, base, 8);
  if (hlen > size - 8) {
    wk_error(WK_ERR_IO, "%s: header length %llu goes past the end of the file (%zu bytes): truncated, or not a safetensors file",
             path, (unsigned long long)hlen, size);
    return fail_file(f, NULL);
  }
  if (hlen > WK_ST_MAX_HEADER) {
    wk_error(WK_ERR_IO, "%s: header length %llu is more than the limit of %llu bytes", path,
             (unsigned long long)hlen, WK_ST_MAX_HEADER);
    return fail_file(f, NULL);
  }
  if (hlen < 2) {
    wk_error(WK_ERR_IO, "%s: header length %llu is too small to hold a JSON object", path, (unsigned long long)hlen);
    return fail_file(f, NULL);
  }
  size_t srclen = strlen(path) + 16;
  char *src = malloc(srclen);
  if (!src) { wk_error(WK_ERR_OOM, "%s: out of memory", path); return fail_file(f, NULL); }
  snprintf(src, srclen, "%s header", path);
  // A header entry is at least ~60 bytes for ~8 values: this bounds the tree's memory.
  wk_json_limits lim = {.max_bytes = (size_t)hlen, .max_depth = 4, .max_values = (size_t)hlen / 4 + 64};
  wk_json *doc = wk_json_parse((const char *)base + 8, (size_t)hlen, src, &lim);
  free(src);
  if (!doc) return fail_file(f, NULL);
  if (doc->type != WK_JSON_OBJECT) {
    wk_error(WK_ERR_IO, "%s: header is %s, not an object", path, kind(doc));
    return fail_file(f, doc);
  }
  uint64_t data_start = 8 + hlen, data_size = size - data_start;
  f->e = calloc(doc->n ? doc->n : 1, sizeof *f->e);
  if (!f->e) { wk_error(WK_ERR_OOM, "%s: out of memory", path); return fail_file(f, doc); }
  for (size_t i = 0; i < doc->n; i++) {
    const wk_json *v = &doc->items[i];
    if (memchr(v->key, 0, v->keylen)) {
      wk_error(WK_ERR_IO, "%s: a tensor name contains a NUL character", path);
      return fail_file(f, doc);
    }
    if (!strcmp(v->key, "__metadata__")) {
      if (v->type != WK_JSON_OBJECT) {
        wk_error(WK_ERR_IO, "%s: __metadata__ is %s, not an object of strings", path, kind(v));
        return fail_file(f, doc);
      }
      for (size_t k = 0; k < v->n; k++) {
        const wk_json *kv = &v->items[k];
        if (kv->type != WK_JSON_STRING) {
          wk_error(WK_ERR_IO, "%s: __metadata__ value of \"%.200s\" is %s, not a string", path, kv->key,
                   kind(kv));
          return fail_file(f, doc);
        }
        if (!meta_add(f, kv->key, kv->keylen, kv->s, kv->n)) {
          wk_error(WK_ERR_OOM, "%s: out of memory", path);
          return fail_file(f, doc);
        }
      }
      continue;
    }
    st_entry *e = &f->e[f->n];
    if (!(e->name = dup_n(v->key, v->keylen))) { wk_error(WK_ERR_OOM, "%s: out of memory", path); return fail_file(f, doc); }
    f->n++;
    e->map = m;
    if (!parse_entry(f, e, v, data_start, data_size)) return fail_file(f, doc);
  }
  wk_json_free(doc);
  if (!check_layout(f, data_size)) return fail_file(f, NULL);
  if (!build_index(f)) { wk_error(WK_ERR_OOM, "%s: out of memory", path); return fail_file(f, NULL); }
  return f;
}

// ---- a sharded checkpoint: index json + shard files ----
static bool shard_name_ok(const char *s, size_t n) {
  if (!n || memchr(s, 0, n) || memchr(s, '/', n) || memchr(s, '\\', n)) return false;
  return strcmp(s, ".") && strcmp(s, "..");
}

static wk_st_file *open_index(const char *path) {
  size_t len;
  char *text = wk_read_file(path, MAX_INDEX_BYTES, &len);
  if (!text) return NULL;
  wk_json *doc = wk_json_parse(text, len, path, NULL);
  free(text);
  if (!doc) return NULL;
  wk_st_file *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) { free(f); wk_json_free(doc); wk_error(WK_ERR_OOM, "%s: out of memory", path); return NULL; }
  const wk_json *wm = wk_json_get(doc, "weight_map"), *meta = wk_json_get(doc, "metadata");
  if (!wk_json_is(wm, WK_JSON_OBJECT)) {
    wk_error(WK_ERR_IO, "%s: \"weight_map\" is %s; it must be an object (not a safetensors index?)", path, kind(wm));
    return fail_file(f, doc);
  }
  // shards opened so far, in first-use order
  wk_st_file **shards = NULL;
  const wk_json **shard_names = NULL;
  int nshards = 0, last = -1;
  bool ok = (f->e = calloc(wm->n ? wm->n : 1, sizeof *f->e)) != NULL;
  if (!ok) wk_error(WK_ERR_OOM, "%s: out of memory", path);
  for (size_t i = 0; ok && i < wm->n; i++) {
    const wk_json *v = &wm->items[i];
    if (v->type != WK_JSON_STRING || !shard_name_ok(v->s, v->n)) {
      wk_error(WK_ERR_IO, "%s: weight_map entry \"%.200s\" must name a shard file in the same directory", path, v->key);
      ok = false;
      break;
    }
    int s = last >= 0 && !strcmp(shard_names[last]->s, v->s) ? last : -1;
    for (int k = 0; s < 0 && k < nshards; k++)
      if (!strcmp(shard_names[k]->s, v->s)) s = k;
    if (s < 0) {
      wk_st_file **ns = realloc(shards, (size_t)(nshards + 1) * sizeof *ns);
      const wk_json **nn = ns ? realloc(shard_names, (size_t)(nshards + 1) * sizeof *nn) : NULL;
      if (ns) shards = ns;
      if (nn) shard_names = nn;
      char *sp = nn ? wk_path_sibling(path, v->s) : NULL;
      if (!sp) { wk_error(WK_ERR_OOM, "%s: out of memory", path); ok = false; break; }
      wk_st_file *sf = open_single(sp);
      free(sp);
      if (!sf) {
        char why[1024];
        snprintf(why, sizeof why, "%s", wk_last_error());
        wk_error(WK_ERR_IO, "%s: shard %.200s: %s", path, v->s, why);
        ok = false;
        break;
      }
      shards[nshards] = sf;
      shard_names[nshards] = v;
      s = nshards++;
      if (!add_map(f, sf->maps[0])) { wk_error(WK_ERR_OOM, "%s: out of memory", path); ok = false; break; }
    }
    last = s;
    int j = wk_st_find(shards[s], v->key);
    if (j < 0) {
      wk_error(WK_ERR_IO, "%s: weight_map puts tensor \"%.200s\" in %s, which has no such tensor", path, v->key, v->s);
      ok = false;
      break;
    }
    st_entry *e = &f->e[f->n];
    *e = shards[s]->e[j];
    if (!(e->name = strdup(e->name))) { wk_error(WK_ERR_OOM, "%s: out of memory", path); ok = false; break; }
    f->n++;
  }
  // metadata: the index's own, then each shard's
  for (size_t k = 0; ok && k < wk_json_len(meta) && meta->type == WK_JSON_OBJECT; k++) {
    const wk_json *kv = &meta->items[k];
    wk_jbuf b = {0};
    if (kv->type == WK_JSON_STRING) wk_jbuf_put(&b, kv->s, kv->n);
    else if (kv->type == WK_JSON_NUMBER) wk_json_write_number(&b, kv->d);
    else if (kv->type == WK_JSON_BOOL) wk_jbuf_puts(&b, kv->b ? "true" : "false");
    else continue;
    if (kv->type == WK_JSON_NUMBER && kv->is_int) { b.len = 0; wk_jbuf_printf(&b, "%lld", (long long)kv->i); }
    ok = !b.failed && meta_add(f, kv->key, kv->keylen, b.data ? b.data : "", b.len);
    wk_jbuf_free(&b);
    if (!ok) wk_error(WK_ERR_OOM, "%s: out of memory", path);
  }
  for (int s = 0; ok && s < nshards; s++)
    for (int k = 0; ok && k < shards[s]->nmeta; k++) {
      const char *key = shards[s]->meta[2 * k], *val = shards[s]->meta[2 * k + 1];
      ok = meta_add(f, key, strlen(key), val, strlen(val));
      if (!ok) wk_error(WK_ERR_OOM, "%s: out of memory", path);
    }
  for (int s = 0; s < nshards; s++) wk_st_close(shards[s]);
  free(shards);
  free(shard_names);
  wk_json_free(doc);
  if (ok && !build_index(f)) { wk_error(WK_ERR_OOM, "%s: out of memory", path); ok = false; }
  if (!ok) { wk_st_close(f); return NULL; }
  return f;
}

wk_st_file *wk_st_open(const char *path) {
  if (!path) { wk_error(WK_ERR_ARG, "st_open: path is NULL"); return NULL; }
  if (wk_is_dir(path)) {
    size_t n = strlen(path);
    char *p = malloc(n + 40);
    if (!p) { wk_error(WK_ERR_OOM, "%s: out of memory", path); return NULL; }
    const char *sep = n && path[n - 1] == '/' ? "" : "/";
    wk_st_file *f = NULL;
    snprintf(p, n + 40, "%s%smodel.safetensors", path, sep);
    if (!access(p, F_OK)) f = open_single(p);
    else {
      snprintf(p, n + 40, "%s%smodel.safetensors.index.json", path, sep);
      if (!access(p, F_OK)) f = open_index(p);
      else wk_error(WK_ERR_IO, "%s: directory has neither model.safetensors nor model.safetensors.index.json", path);
    }
    free(p);
    return f;
  }
  return wk_ends_with(path, ".json") ? open_index(path) : open_single(path);
}

// ---- queries ----
int wk_st_count(const wk_st_file *f) { return f ? f->n : 0; }

const char *wk_st_name(const wk_st_file *f, int i) {
  return f && i >= 0 && i < f->n ? f->e[i].name : NULL;
}

wk_status wk_st_tensor_info(const wk_st_file *f, int i, wk_st_info *out) {
  if (!f || !out) return wk_error(WK_ERR_ARG, "st_tensor_info: NULL argument");
  if (i < 0 || i >= f->n) return wk_error(WK_ERR_ARG, "%s: tensor index %d out of range (%d tensors)", f->path, i, f->n);
  const st_entry *e = &f->e[i];
  *out = (wk_st_info){.name = e->name, .dtype_name = e->dtype_name, .loadable = e->loadable && e->ndim <= WK_MAX_DIMS,
                      .dtype = e->loadable ? e->dt : WK_F32, .ndim = e->ndim, .nbytes = e->nbytes,
                      .file = e->map->path};
  memcpy(out->shape, e->shape, sizeof(int64_t) * (size_t)(e->ndim < WK_MAX_DIMS ? e->ndim : WK_MAX_DIMS));
  return WK_OK;
}

wk_tensor *wk_st_get(wk_st_file *f, const char *name) {
  if (!f || !name) { wk_error(WK_ERR_ARG, "st_get: NULL %s", f ? "name" : "file"); return NULL; }
  int i = wk_st_find(f, name);
  if (i < 0) {
    wk_error(WK_ERR_ARG, "%s: no tensor named \"%.200s\" (the file has %d tensors)", f->path, name, f->n);
    return NULL;
  }
  const st_entry *e = &f->e[i];
  if (!e->loadable) {
    wk_error(WK_ERR_DTYPE, "%s: tensor \"%.200s\" has dtype %s, which wick does not load (F32, F16, BF16 and I32 only)",
             e->map->path, name, e->dtype_name);
    return NULL;
  }
  if (e->ndim > WK_MAX_DIMS) {
    wk_error(WK_ERR_SHAPE, "%s: tensor \"%.200s\" has %d dimensions, more than wick's %d", e->map->path, name, e->ndim,
             WK_MAX_DIMS);
    return NULL;
  }
  char *p = (char *)e->map->base + e->off;
  if ((uintptr_t)p % (e->bits / 8)) return wk_from_data(e->ndim, e->shape, e->dt, p);  // misaligned: copy
  atomic_fetch_add(&e->map->refs, 1);
  wk_tensor *t = wk_from_external(e->ndim, e->shape, e->dt, p, map_unref, e->map);
  // On failure (out of memory only: shape and dtype are valid) the engine may or may
  // not have released the reference; keeping the mapping is the safe side.
  return t;
}

const char *wk_st_metadata(const wk_st_file *f, const char *key) {
  if (!f || !key) return NULL;
  for (int i = 0; i < f->nmeta; i++)
    if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
  return NULL;
}

int wk_st_metadata_count(const wk_st_file *f) { return f ? f->nmeta : 0; }

const char *wk_st_metadata_key(const wk_st_file *f, int i) {
  return f && i >= 0 && i < f->nmeta ? f->meta[2 * i] : NULL;
}
