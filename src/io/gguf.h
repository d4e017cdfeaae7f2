// GGUF reader internals shared with tests and fuzz targets; the API is wick/gguf.h.
#pragma once
#include "wick/gguf.h"

// Parses a GGUF image already in memory (a fuzz target's input, a test's crafted
// bytes). No copy: the caller keeps data alive and unchanged until wk_gguf_close.
// `name` stands for the file in error messages. Tensors made from such a handle are
// always copies.
wk_gguf *wk_gguf_open_memory(const void *data, size_t size, const char *name);

// Limits beyond what the file size bounds.
#define WK_GGUF_MAX_ARRAY_DEPTH 32   // arrays nested deeper are rejected
