// Generated kernels for fused elementwise groups (ew_gen.cu), the fast path of
// the elementwise interpreter in ew.cu.
#pragma once
#include "cuda_internal.h"

// Runs a fused elementwise group with a kernel generated for its program, ops
// already collapsed to the group shape (nd, shape; n elements, n > 0) and out dense.
// True: a kernel was launched and *st is the launch's status. False: nothing was
// launched and the interpreter must run the group (generation off, the group below
// the size that pays for a compilation, an op or dtype the generator does not know,
// NVRTC unavailable or failing, or not compiled yet while a graph is being captured).
bool wkc_ew_gen(const wk_ew_prog *pg, const wk_operand *ops, int nops, void *const *slots, int nd, const int64_t *shape,
                int64_t n, char *out, int out_dtype, wk_status *st);
