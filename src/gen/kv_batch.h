// Batch bookkeeping of a KV cache (src/gen/kv_cache.c) for the generator: the rows of
// a left-padded batch are sequences with their own context; they slide their windows
// and leave the batch one by one, so that decode steps compute only the live ones.
#pragma once
#include <stdint.h>
#include "wick/model.h"

// The context a generation asking for max_context (0: none asked) gives c: max_context
// while c is empty (it resizes a fresh cache), else c's own.
int64_t wk_kv_cache_context_for(const wk_kv_cache *c, int64_t max_context);
// Row `row`'s leading positions that no query sees: its padding, and what its sliding
// window forgot (wk_kv_cache_hide_front). Its own tokens are the rest: len - hidden.
int64_t wk_kv_cache_row_hidden(const wk_kv_cache *c, int64_t row);
// Hides row `row`'s first n more positions (at least one stays visible): one sequence
// forgets its oldest tokens while the others keep theirs. They stay stored until no
// row sees them (wk_kv_cache_keep_rows drops them).
wk_status wk_kv_cache_hide_front(wk_kv_cache *c, int64_t row, int64_t n);
// Keeps batch rows rows[0..n) (ascending; the others' sequences are done) as rows
// 0..n-1, and forgets the first `drop` positions of all (0 <= drop < length; later
// tokens keep their RoPE positions, as after wk_kv_cache_drop_oldest). A smaller batch
// gets new storage of its shape (decode steps then compile one plan for it); keeping
// every row moves the positions in place.
wk_status wk_kv_cache_keep_rows(wk_kv_cache *c, int64_t n, const int64_t *rows, int64_t drop);
