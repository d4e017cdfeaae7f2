// CPU instruction-set detection and the WICK_CPU_ISA override.
// Kernels compiled for several ISAs pick their variant through wk_cpu_isa().
#pragma once

typedef enum { WK_ISA_SCALAR = 0, WK_ISA_AVX2 = 1, WK_ISA_AVX512 = 2 } wk_cpu_isa_t;

// The ISA kernels should use: the best this CPU supports (AVX2 needs FMA too),
// capped by WICK_CPU_ISA=scalar|avx2|avx512 when set. Cached after the first call.
wk_cpu_isa_t wk_cpu_isa(void);
// Force an ISA (tests use this to cover every path); capped by what the CPU has.
void wk_cpu_isa_set(wk_cpu_isa_t isa);
// 1 when the CPU has AVX512_BF16 (vdpbf16ps) and the active ISA is AVX-512.
int wk_cpu_has_bf16(void);
const char *wk_cpu_isa_name(wk_cpu_isa_t isa);
