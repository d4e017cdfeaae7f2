// safetensors internals shared by the reader (safetensors.c) and writer (safetensors_save.c).
// The public API is include/wick/io.h.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include "wick/io.h"

// Largest header accepted or written (the reference implementation's limit).
#define WK_ST_MAX_HEADER 100000000ull

// Looks up a dtype name as written in headers ("F32", "BF16", "I64", ...). Returns
// false for names the format doesn't define (or wick doesn't know). *bits gets the
// element size in bits (F4 is 4); *loadable whether wick computes in it, and then *dt.
bool wk_st_dtype_lookup(const char *name, unsigned *bits, bool *loadable, wk_dtype *dt);
// The header name of a wick dtype ("F32", "F16", "BF16", "I32").
const char *wk_st_dtype_str(wk_dtype dt);
