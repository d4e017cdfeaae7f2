// CPU kernels compiled once per ISA (scalar, avx2, avx512) from the same source.
// WK_ISA_FN(name) gives the variant's symbol; the dispatcher picks one at run time.
#pragma once
#include "../backend.h"
#include "cpu_isa.h"

#ifndef WK_ISA_SUFFIX
#define WK_ISA_SUFFIX _scalar
#endif
#define WK_CAT2(a, b) a##b
#define WK_CAT(a, b) WK_CAT2(a, b)
#define WK_ISA_FN(name) WK_CAT(name, WK_ISA_SUFFIX)

// Elements per register block of the elementwise VM (fits L1 with a dozen registers).
#define WK_EW_BLOCK 512

// Resolves an operand's base pointer (slots[slot] + offset elements).
static inline void *wk_operand_ptr(const wk_operand *o, void *const *slots) {
  return (char *)slots[o->slot] + o->offset * (int64_t)wk_dtype_size(o->dtype);
}

#define WK_DECLARE_ISA(isa)                                                                       \
  wk_status wk_cpu_ew_##isa(const wk_step *s, void *const *slots);                               \
  /* values of the step's (virtual) input 0, for linear indices [start, start + n) */            \
  void wk_cpu_prologue_##isa(const wk_step *s, void *const *slots, int64_t start, int64_t n,     \
                             float *out);                                                         \
  wk_status wk_cpu_kernel_##isa(const wk_step *s, void *const *slots);                           \
  /* a row chain starting at s (s->chain steps) */                                              \
  wk_status wk_cpu_rowchain_##isa(const wk_step *s, void *const *slots);                         \
  /* a chain of one-row LoRA calls starting at s (s->chain steps) */                            \
  wk_status wk_cpu_lora_chain_##isa(const wk_step *s, void *const *slots);                       \
  /* prog over linear indices [start, start + n); LOAD_ROW reads row[0..n) */                   \
  void wk_cpu_ew_eval_##isa(const wk_ew_prog *prog, const wk_operand *ops, void *const *slots,   \
                            int64_t start, int64_t n, const float *row, float *out);
WK_DECLARE_ISA(scalar)
WK_DECLARE_ISA(avx2)
WK_DECLARE_ISA(avx512)

// LoRA chains run as one job (not call by call) since the process started: for tests.
long long wk_cpu_lora_chain_jobs(void);
void wk_cpu_lora_chain_job_done(void);

