// Small file helpers shared by the readers in src/io.
#pragma once
#include <stdbool.h>
#include <stddef.h>

// Reads a whole file into a malloc'd, NUL-terminated buffer (caller frees); *len gets
// its size. Files larger than max bytes are refused. NULL with wk_last_error() set
// (naming the path) on failure.
char *wk_read_file(const char *path, size_t max, size_t *len);
// "dir/of/path/" + name, malloc'd (caller frees); the directory of a bare file name is ".".
char *wk_path_sibling(const char *path, const char *name);
// 1 if path names a directory, 0 otherwise.
bool wk_is_dir(const char *path);
// 1 if s ends with suffix.
bool wk_ends_with(const char *s, const char *suffix);

// Writes the concatenation of n pieces (data[i], len[i] bytes) to `path` atomically:
// a temporary file beside it ("path.tmp.XXXXXX"), fsync, rename over `path`, fsync
// of the directory. On failure (a full disk, say) `path` is left as it was and the
// message names the path and the step that failed. The file gets path's old mode, or 0644.
int wk_write_atomic(const char *path, int n, const void *const *data, const size_t *len);
// fsync of the directory holding path (best effort: some filesystems refuse it).
void wk_fsync_parent(const char *path);
// fsync of a directory itself (best effort).
void wk_fsync_dir(const char *dir);
// dir + "/" + name, malloc'd (caller frees); NULL when out of memory.
char *wk_path_join(const char *dir, const char *name);
// Creates dir and its missing parents (mode 0755). Nonzero with a message naming the
// component that could not be made (or that exists and is not a directory).
int wk_mkdirs(const char *dir);
