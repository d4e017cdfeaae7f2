// The CPU backend: host memory, synchronous execution, ISA dispatch.
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernels.h"
#include "threadpool.h"
#include "../../engine/engine.h"
#include "../../engine/plan.h"

static void *cpu_alloc(size_t bytes) { return aligned_alloc(64, (bytes + 63) & ~(size_t)63); }
static void cpu_free(void *p) { free(p); }
static wk_status cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); return WK_OK; }

// Each ISA's build of the kernels (cpu_kernels.h), chosen once a step.
typedef struct {
  wk_status (*ew)(const wk_step *, void *const *), (*kernel)(const wk_step *, void *const *);
  wk_status (*rowchain)(const wk_step *, void *const *), (*lora_chain)(const wk_step *, void *const *);
} isa_kernels;
#define ISA_KERNELS(isa) {wk_cpu_ew_##isa, wk_cpu_kernel_##isa, wk_cpu_rowchain_##isa, wk_cpu_lora_chain_##isa}
static const isa_kernels by_isa[] = {[WK_ISA_SCALAR] = ISA_KERNELS(scalar), [WK_ISA_AVX2] = ISA_KERNELS(avx2),
                                     [WK_ISA_AVX512] = ISA_KERNELS(avx512)};

static wk_status cpu_run(const wk_step *s, void *const *slots) {
  const isa_kernels *k = &by_isa[wk_cpu_isa()];
  if (s->chain > 0) return s->op == WK_OP_LORA ? k->lora_chain(s, slots) : k->rowchain(s, slots);
  return s->op == WK_STEP_FUSED_EW ? k->ew(s, slots) : k->kernel(s, slots);
}

static wk_status cpu_sync(void) { return WK_OK; }

static _Atomic long long lora_chain_jobs;
long long wk_cpu_lora_chain_jobs(void) { return lora_chain_jobs; }
void wk_cpu_lora_chain_job_done(void) { lora_chain_jobs++; }

// Chains of one-row LoRA calls run as one job (kernels.c's wk_cpu_lora_chain) on more
// than one thread, for ranks of up to 64 (WICK_CPU_LORA_CHAIN=0: call by call).
static bool cpu_lora_chain(int64_t K, int64_t N, int64_t r) {
  static int on = -1;
  return wk_env_on("WICK_CPU_LORA_CHAIN", &on) && K == N && r <= 64 && wk_threads() > 1;
}

static const wk_backend cpu_backend = {
    .name = "cpu", .device = WK_CPU, .alloc = cpu_alloc, .free = cpu_free,
    .upload = cpu_copy, .download = cpu_copy, .run = cpu_run, .sync = cpu_sync, .lora_chain = cpu_lora_chain,
};

const wk_backend *wk_backend_cpu(void) { return &cpu_backend; }

// Constant folding evaluates one element with the scalar VM, so folded values
// are bit-identical to what the kernels would compute.
float wk_ew_scalar(int op, const wk_attrs *attrs, float a, float b, float c) {
  wk_ew_instr code[4] = {
      {.op = WK_OP_CONST, .dst = 0, .attrs = {.f = {a}}},
      {.op = WK_OP_CONST, .dst = 1, .attrs = {.f = {b}}},
      {.op = WK_OP_CONST, .dst = 2, .attrs = {.f = {c}}},
      {.op = (uint16_t)op, .dst = 3, .a = 0, .b = 1, .c = 2, .attrs = *attrs},
  };
  float out = 0;
  void *slots[1] = {&out};
  wk_step s = {.op = WK_STEP_FUSED_EW, .out = {.slot = 0, .dtype = WK_F32, .ndim = 0},
               .prog = {.n = 4, .nregs = 4, .out_reg = 3, .code = code}};
  wk_cpu_ew_scalar(&s, slots);
  return out;
}
