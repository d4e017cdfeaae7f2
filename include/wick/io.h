// wick I/O: safetensors files, read zero-copy through mmap and written atomically.
//
//   wk_st_file *f = wk_st_open("model.safetensors");   // or a sharded index, or a directory
//   if (!f) { puts(wk_last_error()); return 1; }
//   wk_tensor *w = wk_st_get(f, "model.embed_tokens.weight");  // no copy: points into the file
//   wk_st_close(f);                                     // w stays valid: it keeps the mapping
//   ...
//   wk_tensor_free(w);                                  // the file is unmapped here
//
//   const char *names[] = {"a", "b"};
//   wk_tensor *ts[] = {a, b};
//   wk_st_save("out.safetensors", 2, names, ts, (const char *[]){"format", "pt", NULL});
//
// Opening validates the whole header: length within the file (and at most 100 MB),
// well-formed JSON object, known dtypes, shape x dtype size == byte span, and spans
// that tile the data section exactly, as the reference library requires: no overlap,
// no gap between tensors, no byte after the last one (empty tensors hold no bytes and
// may sit anywhere in it). Errors name the file and the tensor, field or byte range.
// Tensors of dtypes wick doesn't compute in (F64, I64, U8, ...) are listed and can be
// inspected with wk_st_info, but wk_st_get refuses them.
// Files are mapped copy-on-write from a read-only descriptor: the file is never
// written, and writing into a loaded tensor (wk_tensor_assign) changes only this
// process's copy. The file must not be truncated while mapped (the OS would fault).
// Little-endian hosts only, as the format stores little-endian data.
#pragma once
#include "tensor.h"

typedef struct wk_st_file wk_st_file;

// Opens `path`: a .safetensors file; a sharded checkpoint's index (a path ending in
// ".index.json", whose "weight_map" names each tensor's shard in the same directory);
// or a directory holding model.safetensors or model.safetensors.index.json.
// NULL with wk_last_error() set on failure. Close with wk_st_close.
wk_st_file *wk_st_open(const char *path);
// Releases the handle. Tensors obtained from it stay valid (they hold the mapping).
void wk_st_close(wk_st_file *f);

// Tensors in header order (for a shard index: weight_map order).
int wk_st_count(const wk_st_file *f);
const char *wk_st_name(const wk_st_file *f, int i);    // owned by f; NULL if out of range
int wk_st_find(const wk_st_file *f, const char *name); // index, or -1 (no error set)

typedef struct {
  const char *name;         // owned by f
  const char *dtype_name;   // as in the file: "F32", "BF16", "I64", ...
  int loadable;             // 1 if wk_st_get can return it (then `dtype` is set)
  wk_dtype dtype;
  int ndim;
  int64_t shape[WK_MAX_DIMS];
  uint64_t nbytes;
  const char *file;         // the file it lives in (the shard, for an index); owned by f
} wk_st_info;
// Describes tensor i without loading it.
wk_status wk_st_tensor_info(const wk_st_file *f, int i, wk_st_info *out);

// The tensor `name` as a wick tensor (a new reference, free with wk_tensor_free):
// zero-copy into the mapping when its data is aligned to its element size, a copy
// otherwise. NULL with a message naming the tensor and file if absent or not loadable.
wk_tensor *wk_st_get(wk_st_file *f, const char *name);

// `__metadata__` values (string -> string). For an index, its "metadata" object
// (numbers written as text) comes first, then each shard's __metadata__.
// NULL if the key is absent (no error set). Strings are owned by f.
const char *wk_st_metadata(const wk_st_file *f, const char *key);
int wk_st_metadata_count(const wk_st_file *f);
const char *wk_st_metadata_key(const wk_st_file *f, int i);

// Writes n tensors to `path` atomically: the tensors are evaluated first, then
// written (contiguous, in their dtype) to a temporary file in the same directory
// ("path.tmp.XXXXXX"), which is fsynced and renamed over `path`, and the directory is
// fsynced. On any failure `path` is left as it was. metadata is NULL or a
// NULL-terminated list of key, value strings: {"format", "pt", NULL}. Names must be
// unique and not "__metadata__"; names and metadata must be UTF-8 (the header is
// JSON). The output is readable by the reference safetensors library (tensors laid
// out by descending element size, then name).
wk_status wk_st_save(const char *path, int n, const char *const *names, wk_tensor *const *tensors,
                     const char *const *metadata);

// WK_OK if text[0..len) is one well-formed JSON value; else an error naming `source`
// and the position (for tools that pass a JSON file's text on, like `wick adapter info`).
wk_status wk_json_check(const char *text, size_t len, const char *source);
