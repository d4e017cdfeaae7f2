// Runtime ISA detection: cpuid for the feature bits, xgetbv to check that the OS
// saves the wide registers (a CPU flag alone is not enough under some hypervisors).
#include "cpu_isa.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define WK_X86 1
#endif

// -1 = not yet detected. Kept separately so wk_cpu_isa_set can cap at hardware.
static _Atomic int wk_hw_isa = -1;
static _Atomic int wk_hw_bf16 = -1;
static _Atomic int wk_active_isa = -1;

#ifdef WK_X86
static unsigned long long wk_xgetbv0(void) {
    unsigned int lo, hi;
    // Encoded by hand so the baseline compile needs no -mxsave.
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

static int wk_bit(unsigned int reg, int bit) { return (int)((reg >> bit) & 1u); }

static void wk_detect(void) {
    int isa = WK_ISA_SCALAR, bf16 = 0;
#ifdef WK_X86
    unsigned int a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int osxsave = wk_bit(c, 27), avx = wk_bit(c, 28), fma = wk_bit(c, 12);
        unsigned long long xcr0 = osxsave ? wk_xgetbv0() : 0;
        int ymm_ok = (xcr0 & 0x6) == 0x6;    // XMM and YMM state
        int zmm_ok = (xcr0 & 0xe6) == 0xe6;  // plus opmask, ZMM_Hi256, Hi16_ZMM
        if (__get_cpuid_max(0, NULL) >= 7) {
            __cpuid_count(7, 0, a, b, c, d);
            int avx2 = wk_bit(b, 5);
            int f = wk_bit(b, 16), dq = wk_bit(b, 17), bw = wk_bit(b, 30), vl = wk_bit(b, 31);
            if (avx && fma && avx2 && ymm_ok) isa = WK_ISA_AVX2;
            if (isa == WK_ISA_AVX2 && f && dq && bw && vl && zmm_ok) isa = WK_ISA_AVX512;
            if (isa == WK_ISA_AVX512) {
                __cpuid_count(7, 1, a, b, c, d);
                bf16 = wk_bit(a, 5);
            }
        }
    }
#endif
    atomic_store(&wk_hw_bf16, bf16);
    atomic_store(&wk_hw_isa, isa);
}

static int wk_hw(void) {
    int hw = atomic_load(&wk_hw_isa);
    if (hw < 0) {
        wk_detect();  // idempotent, so a race between first callers is harmless
        hw = atomic_load(&wk_hw_isa);
    }
    return hw;
}

static int wk_env_isa(int hw) {
    const char *s = getenv("WICK_CPU_ISA");
    if (!s || !*s) return hw;
    int want;
    if (!strcmp(s, "scalar")) want = WK_ISA_SCALAR;
    else if (!strcmp(s, "avx2")) want = WK_ISA_AVX2;
    else if (!strcmp(s, "avx512")) want = WK_ISA_AVX512;
    else {
        fprintf(stderr, "wick: ignoring unknown WICK_CPU_ISA=%s (use scalar|avx2|avx512)\n", s);
        return hw;
    }
    return want < hw ? want : hw;
}

wk_cpu_isa_t wk_cpu_isa(void) {
    int isa = atomic_load_explicit(&wk_active_isa, memory_order_relaxed);
    if (isa < 0) {
        int want = wk_env_isa(wk_hw());
        int expected = -1;
        // First caller wins; a concurrent wk_cpu_isa_set is not overwritten.
        atomic_compare_exchange_strong(&wk_active_isa, &expected, want);
        isa = atomic_load(&wk_active_isa);
    }
    return (wk_cpu_isa_t)isa;
}

void wk_cpu_isa_set(wk_cpu_isa_t isa) {
    int hw = wk_hw();
    int want = (int)isa < hw ? (int)isa : hw;
    if (want < 0) want = WK_ISA_SCALAR;
    atomic_store(&wk_active_isa, want);
}

int wk_cpu_has_bf16(void) {
    return wk_cpu_isa() == WK_ISA_AVX512 && atomic_load(&wk_hw_bf16) == 1;
}

const char *wk_cpu_isa_name(wk_cpu_isa_t isa) {
    switch (isa) {
    case WK_ISA_SCALAR: return "scalar";
    case WK_ISA_AVX2: return "avx2";
    case WK_ISA_AVX512: return "avx512";
    }
    return "unknown";
}
