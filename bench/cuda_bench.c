// Micro-benchmark of CUDA backend kernels, timed with cudaEvents on the backend's
// stream (steps built by hand, as the engine's planner would emit them). Prints one
// JSON object a line: {"name", "device", "us" (median), "p10", "p90", "iters", "gbs" | "tflops"}.
//   cuda_bench [iters] [gemv | decode | attn]   (gemv: only the decode GEMV against cuBLAS;
//     decode: a decode layer's RoPE, cache writes, attention; attn: SDPA forward and backward)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "engine/plan.h"   // WK_QMM_* (the QMATMUL step's fused ends)

static const wk_backend *gpu;

static wk_ew_instr ins(int op, int dst, int a, int b, float f0) {
  wk_ew_instr in;
  memset(&in, 0, sizeof in);
  in.op = (uint16_t)op;
  in.dst = (uint8_t)dst;
  in.a = (uint8_t)a;
  in.b = (uint8_t)b;
  in.src = -1;
  in.attrs.f[0] = f0;
  return in;
}
static int cmpf(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

// Times `iters` runs of the steps (or of copy when s == NULL); prints a JSON line.
static void timeit(const char *name, const wk_step *s, void *const *slots, int iters, double bytes, double flops,
                   void *cdst, const void *csrc, size_t cbytes) {
  cudaStream_t st = (cudaStream_t)wk_cuda_stream();
  cudaEvent_t ev[2];
  cudaEventCreate(&ev[0]);
  cudaEventCreate(&ev[1]);
  float *ms = malloc(sizeof(float) * (size_t)iters);
  for (int it = -3; it < iters; it++) {
    cudaEventRecord(ev[0], st);
    wk_status rc = s ? gpu->run(s, slots) : (cudaMemcpyAsync(cdst, csrc, cbytes, cudaMemcpyDeviceToDevice, st) ? 1 : 0);
    cudaEventRecord(ev[1], st);
    if (rc || gpu->sync()) { fprintf(stderr, "%s: failed: %s\n", name, wk_last_error()); free(ms); return; }
    if (it >= 0) cudaEventElapsedTime(&ms[it], ev[0], ev[1]);
  }
  qsort(ms, (size_t)iters, sizeof(float), cmpf);
  double us = ms[iters / 2] * 1e3, p10 = ms[iters / 10] * 1e3, p90 = ms[iters * 9 / 10] * 1e3;
  printf("{\"name\": \"%s\", \"device\": \"cuda\", \"card\": \"%s\", \"us\": %.1f, \"p10\": %.1f, \"p90\": %.1f, \"iters\": %d", name,
         wk_cuda_device_name(), us, p10, p90, iters);
  if (bytes > 0) printf(", \"gbs\": %.0f", bytes / (us * 1e-6) / 1e9);
  if (flops > 0) printf(", \"tflops\": %.1f", flops / (us * 1e-6) / 1e12);
  printf("}\n");
  fflush(stdout);
  free(ms);
  cudaEventDestroy(ev[0]);
  cudaEventDestroy(ev[1]);
}

static void *dev_rand(size_t n, wk_dtype dt) {
  size_t es = wk_dtype_size(dt);
  unsigned char *h = malloc(n * es);
  uint32_t r = 12345;
  for (size_t i = 0; i < n; i++) {
    r = r * 1664525u + 1013904223u;
    float v = (float)(r >> 8) * 0x1p-24f * 2.0f - 1.0f;
    if (dt == WK_F32) memcpy(h + i * 4, &v, 4);
    else { uint16_t b = wk_f32_to_bf16(v); memcpy(h + i * 2, &b, 2); }
  }
  void *d = gpu->alloc(n * es);
  gpu->upload(d, h, n * es);
  gpu->sync();
  free(h);
  return d;
}

// A CUDA step of op with nin inputs, everything else zero.
static wk_step cuda_step(int op, int nin) {
  wk_step s;
  memset(&s, 0, sizeof s);
  s.op = (wk_op)op;
  s.device = WK_CUDA;
  s.src = -1;
  s.nin = nin;
  return s;
}

// Causal SDPA of q (slot 0) over k, v (slots 1, 2) into slot 3, head dim 64 (scale 1/8).
static wk_step sdpa_step(wk_dtype dt, const int64_t *qs, const int64_t *ks) {
  wk_step s = cuda_step(WK_OP_SDPA, 3);
  s.in[0] = wk_operand_dense(0, dt, 4, qs);
  s.in[1] = wk_operand_dense(1, dt, 4, ks);
  s.in[2] = wk_operand_dense(2, dt, 4, ks);
  s.attrs.f[0] = 0.125f;
  s.attrs.i[0] = 1;
  s.out = wk_operand_dense(3, dt, 4, qs);
  return s;
}

// The decode GEMV y[N] = W[N, K] x (bf16 W, f32 accumulation) at Qwen2.5-0.5B's decode
// shapes: wick's one-row kernel (a QMATMUL step, f32 x and y; also with the prologue
// decode fuses in: x = silu(gate) * up or gate * up for down, rms_norm(h) * w for the
// others) against cuBLAS
// (cublasGemmEx, bf16 x, f32 y, the same W). Each of `launches` calls in a row reads
// another copy of W, so that W streams from DRAM as in decode (a model's weights do
// not stay in L2); both sides are captured as one CUDA graph (no host launch time) and
// timed over its replays: µs a call = graph time / launches.
static double graph_us(cudaGraphExec_t ge, cudaStream_t st, int reps) {
  cudaEvent_t ev[2];
  cudaEventCreate(&ev[0]);
  cudaEventCreate(&ev[1]);
  cudaGraphLaunch(ge, st);   // warm-up
  float *ms = malloc(sizeof(float) * (size_t)reps);
  for (int i = 0; i < reps; i++) {
    cudaEventRecord(ev[0], st);
    cudaGraphLaunch(ge, st);
    cudaEventRecord(ev[1], st);
    cudaEventSynchronize(ev[1]);
    cudaEventElapsedTime(&ms[i], ev[0], ev[1]);
  }
  qsort(ms, (size_t)reps, sizeof(float), cmpf);
  double us = ms[reps / 2] * 1e3;
  free(ms);
  cudaEventDestroy(ev[0]);
  cudaEventDestroy(ev[1]);
  return us;
}
// µs a call of launch(ctx, i) for i < launches, all captured as one graph on st and
// timed over reps replays; -1 when a launch, the capture or the graph fails.
static double captured_us(cudaStream_t st, int reps, int launches, bool (*launch)(void *ctx, int i), void *ctx) {
  cudaGraph_t g = NULL;
  cudaGraphExec_t ge = NULL;
  // relaxed: cuBLAS may set up its workspace on its first captured call
  bool ok = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed) == cudaSuccess;
  for (int i = 0; ok && i < launches; i++) ok = launch(ctx, i);
  if (!ok) fprintf(stderr, "cuda_bench: a captured launch failed: %s\n", wk_last_error());
  ok = cudaStreamEndCapture(st, &g) == cudaSuccess && ok;
  cudaGetLastError();
  ok = ok && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess;
  double us = ok ? graph_us(ge, st, reps) / launches : -1;
  if (ge) cudaGraphExecDestroy(ge);
  if (g) cudaGraphDestroy(g);
  return us;
}

// One GEMV call of bench_gemv: side 0 x as stored, 1 cuBLAS, 2 the fused prologue, 3 x = gate * up.
typedef struct {
  cublasHandle_t h;
  void **w, *xf, *xb, *y, *pro;
  int64_t N, K;
  int copies, side, fused;
} gemv_call;
static bool gemv_launch(void *ctx, int i) {
  const gemv_call *c = ctx;
  const int64_t N = c->N, K = c->K;
  if (c->side == 1) {
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmEx(c->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, 1, (int)K, &one, c->w[i % c->copies], CUDA_R_16BF,
                        (int)K, c->xb, CUDA_R_16BF, (int)K, &zero, c->y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  }
  int64_t xs[2] = {1, K}, ws[2] = {N, K}, ys[2] = {1, N};
  void *slots[4] = {c->xf, c->w[i % c->copies], c->y, c->pro};
  const bool sw = c->fused == WK_QMM_SWIGLU;
  wk_step s = cuda_step(WK_OP_QMATMUL, c->side ? 3 : 2);
  s.in[0] = wk_operand_dense(0, WK_F32, 2, xs);
  s.in[1] = wk_operand_dense(1, WK_BF16, 2, ws);
  if (c->side) s.in[2] = wk_operand_dense(3, sw ? WK_F32 : WK_BF16, sw ? 2 : 1, sw ? xs : &xs[1]);
  s.out = wk_operand_dense(2, WK_F32, 2, ys);
  s.attrs.i[0] = 1;
  s.attrs.i[1] = c->side == 3 ? WK_QMM_GLU : c->side ? c->fused : 0;
  s.attrs.f[0] = 1e-6f;
  return gpu->run(&s, slots) == WK_OK;
}
static void bench_gemv(int reps) {
  static const int64_t shapes[][2] = {{1152, 896}, {896, 896}, {9728, 896}, {4864, 896}, {896, 4864}, {151936, 896}};
  static const char *what[] = {"q/k/v as one", "q, o", "gate/up as one", "gate, up", "down", "LM head"};
  cudaStream_t st = (cudaStream_t)wk_cuda_stream();
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "gemv: cublasCreate failed\n"); return; }
  cublasSetStream(h, st);
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
    const int64_t N = shapes[c][0], K = shapes[c][1];
    const size_t wb = (size_t)(N * K) * 2;
    int copies = (int)(((size_t)160 << 20) / wb) + 1, launches = copies < 64 ? 64 : copies;
    if (copies > launches) copies = launches;
    void **w = malloc(sizeof(void *) * (size_t)copies);
    for (int i = 0; i < copies; i++) w[i] = dev_rand((size_t)(N * K), WK_BF16);
    void *xf = dev_rand((size_t)K, WK_F32), *xb = dev_rand((size_t)K, WK_BF16), *y = gpu->alloc((size_t)N * 4);
    void *pro = dev_rand((size_t)K, K == 4864 ? WK_F32 : WK_BF16);   // SwiGLU's up, or the norm's weight
    const int fused = K == 4864 ? WK_QMM_SWIGLU : N != 151936 ? WK_QMM_NORM : 0;
    double us[4] = {0, 0, 0, 0};
    gemv_call call = {h, w, xf, xb, y, pro, N, K, copies, 0, fused};
    for (call.side = 0; call.side < 4; call.side++) {
      if ((call.side == 2 && !fused) || (call.side == 3 && fused != WK_QMM_SWIGLU)) break;
      us[call.side] = captured_us(st, reps, launches, gemv_launch, &call);
    }
    printf("{\"name\": \"gemv %lldx%lld bf16 (%s)\", \"device\": \"cuda\", \"card\": \"%s\", \"us\": %.2f, "
           "\"cublas_us\": %.2f, \"wick_vs_cublas\": %.2f, \"gbs\": %.0f, \"copies\": %d",
           (long long)N, (long long)K, what[c], wk_cuda_device_name(), us[0], us[1], us[0] > 0 ? us[1] / us[0] : 0,
           us[0] > 0 ? (double)wb / (us[0] * 1e-6) / 1e9 : 0, copies);
    if (fused) printf(", \"%s_us\": %.2f", fused == WK_QMM_SWIGLU ? "swiglu_x" : "rmsnorm_x", us[2]);
    if (fused == WK_QMM_SWIGLU) printf(", \"gate_times_up_x_us\": %.2f", us[3]);
    printf("}\n");
    fflush(stdout);
    for (int i = 0; i < copies; i++) gpu->free(w[i]);
    free(w);
    gpu->free(xf);
    gpu->free(xb);
    gpu->free(y);
    gpu->free(pro);
  }
  cublasDestroy(h);
}

// A step run on the backend's slots (bench_decode's captured launches).
typedef struct {
  const wk_step *s;
  void *const *slots;
} step_call;
static bool step_launch(void *ctx, int i) {
  (void)i;
  const step_call *c = ctx;
  return gpu->run(c->s, c->slots) == WK_OK;
}

// One decode layer's small steps at Qwen2.5-0.5B's shapes (B 1, Hq 14, Hkv 2, D 64, a
// bf16 cache of 512 positions, position 200): the RoPE group (q and k), the cache writes
// (k and v) and the attention over 201 keys, each captured `launches` times in a row as
// one graph: µs a launch = graph time / launches. A one-element elementwise step gives
// the floor of a launch.
static void bench_decode(int reps) {
  enum { launches = 64 };
  const int64_t D = 64, cap = 512, pos = 200;
  int64_t qs[4] = {1, 14, 1, D}, ks[4] = {1, 2, 1, D}, cs[4] = {1, 2, cap, D}, one = 1;
  void *q = dev_rand(14 * D, WK_F32), *k = dev_rand(2 * D, WK_F32), *v = dev_rand(2 * D, WK_F32);
  void *qo = gpu->alloc(14 * D * 4), *ko = gpu->alloc(2 * D * 4), *o = gpu->alloc(14 * D * 4);
  void *kc = dev_rand((size_t)(2 * cap * D), WK_BF16), *vc = dev_rand((size_t)(2 * cap * D), WK_BF16);
  int32_t hp[2] = {(int32_t)pos, (int32_t)pos + 1};
  void *p = gpu->alloc(8);
  gpu->upload(p, hp, 8);
  void *e = gpu->alloc(4);
  void *slots[11] = {q, k, v, qo, ko, kc, vc, o, p, (char *)p + 4, e};
  wk_step rope[2], ss[2], at, ew;
  for (int i = 0; i < 2; i++) {
    rope[i] = cuda_step(WK_OP_ROPE, 2);
    rope[i].in[0] = wk_operand_dense(i, WK_F32, 4, i ? ks : qs);
    rope[i].in[1] = wk_operand_dense(8, WK_I32, 1, &one);
    rope[i].attrs.f[0] = 1e6f;
    rope[i].attrs.f[1] = 1.0f;
    rope[i].out = wk_operand_dense(3 + i, WK_F32, 4, i ? ks : qs);
    rope[i].chain = i ? -1 : 2;
    ss[i] = cuda_step(WK_OP_SET_SLICE, 3);
    ss[i].in[0] = wk_operand_dense(5 + i, WK_BF16, 4, cs);
    ss[i].in[1] = wk_operand_dense(i ? 2 : 4, WK_F32, 4, ks);
    ss[i].in[2] = wk_operand_dense(8, WK_I32, 1, &one);
    ss[i].attrs.i[0] = 2;
    ss[i].out = wk_operand_dense(5 + i, WK_BF16, 4, cs);
    ss[i].chain = i ? -1 : 2;
  }
  at = cuda_step(WK_OP_SDPA, 4);
  at.in[0] = wk_operand_dense(3, WK_F32, 4, qs);
  at.in[1] = wk_operand_dense(5, WK_BF16, 4, cs);
  at.in[2] = wk_operand_dense(6, WK_BF16, 4, cs);
  at.in[3] = wk_operand_dense(9, WK_I32, 1, &one);
  at.attrs.f[0] = 0.125f;
  at.attrs.i[0] = 1;
  at.attrs.i[1] = 1;
  at.out = wk_operand_dense(7, WK_F32, 4, qs);
  wk_ew_instr code[] = {ins(WK_EW_LOAD, 0, 0, 0, 0), ins(WK_OP_MUL_SCALAR, 1, 0, 0, 1.5f)};
  ew = cuda_step(WK_STEP_FUSED_EW, 1);
  ew.in[0] = wk_operand_dense(0, WK_F32, 1, &one);
  ew.out = wk_operand_dense(10, WK_F32, 1, &one);
  ew.prog = (wk_ew_prog){2, 2, 1, code};
  const wk_step *which[4] = {rope, ss, &at, &ew};
  const char *name[4] = {"rope group (q [1,14,1,64], k [1,2,1,64])", "cache writes (k, v into [1,2,512,64] bf16)",
                         "decode attention (14 heads over 201 bf16 keys)", "one-element step (the floor)"};
  cudaStream_t st = (cudaStream_t)wk_cuda_stream();
  for (int c = 0; c < 4; c++) {
    // once outside the capture (what a step allocates once, it allocates now)
    step_call call = {which[c], slots};
    const double us = gpu->run(which[c], slots) == WK_OK && gpu->sync() == WK_OK
                          ? captured_us(st, reps, launches, step_launch, &call) : -1;
    printf("{\"name\": \"decode: %s\", \"device\": \"cuda\", \"card\": \"%s\", \"us\": %.2f}\n", name[c],
           wk_cuda_device_name(), us);
    fflush(stdout);
  }
  void *all[] = {q, k, v, qo, ko, o, kc, vc, p, e};
  for (int i = 0; i < 10; i++) gpu->free(all[i]);
}

static void bench_attn(int iters) {
  // attention at the Qwen2.5-0.5B training shape (B 8, Hq 14, Hkv 2, T = S = 512, D 64,
  // causal): the SDPA step and the SDPA_BWD step alone (bench/compare/torch_cuda.py
  // times the same through the engine beside torch's flash attention); then decode, one
  // query against 2048 cached keys (the row kernel). FLOPs count the visible half of the
  // causal score matrix: 4 B Hq T S D / 2 forward, 2.5x that backward.
  for (int k = 0; k < 2; k++) {
    wk_dtype dt = k ? WK_F32 : WK_BF16;
    int64_t qs[4] = {8, 14, 512, 64}, ks[4] = {8, 2, 512, 64}, nq = 8LL * 14 * 512 * 64, nk = 8LL * 2 * 512 * 64;
    int64_t total = nq + 2 * nk;
    void *q = dev_rand((size_t)nq, dt), *kk = dev_rand((size_t)nk, dt), *v = dev_rand((size_t)nk, dt);
    void *o = gpu->alloc((size_t)nq * wk_dtype_size(dt)), *g = dev_rand((size_t)nq, dt), *d = gpu->alloc((size_t)total * 4);
    void *slots[6] = {q, kk, v, o, g, d};
    wk_step s = sdpa_step(dt, qs, ks);
    double fl = 4.0 * 8 * 14 * 512 * 512 * 64 / 2;
    timeit(k ? "sdpa 8x14x2x512x64 causal f32" : "sdpa 8x14x2x512x64 causal bf16", &s, slots, iters, 0, fl, 0, 0, 0);
    s.op = WK_OP_SDPA_BWD;
    s.nin = 5;
    s.in[3] = wk_operand_dense(3, dt, 4, qs);
    s.in[4] = wk_operand_dense(4, dt, 4, qs);
    s.out = wk_operand_dense(5, WK_F32, 1, &total);
    timeit(k ? "sdpa_bwd 8x14x2x512x64 causal f32" : "sdpa_bwd 8x14x2x512x64 causal bf16", &s, slots, iters, 0, 2.5 * fl, 0, 0, 0);
    void *bufs[6] = {q, kk, v, o, g, d};
    for (int i = 0; i < 6; i++) gpu->free(bufs[i]);
  }
  {
    int64_t qs[4] = {1, 14, 1, 64}, ks[4] = {1, 2, 2048, 64};
    void *q = dev_rand(14 * 64, WK_BF16), *kk = dev_rand(2 * 2048 * 64, WK_BF16), *v = dev_rand(2 * 2048 * 64, WK_BF16);
    void *o = gpu->alloc(14 * 64 * 2);
    void *slots[4] = {q, kk, v, o};
    wk_step s = sdpa_step(WK_BF16, qs, ks);
    timeit("sdpa decode 1x14x2 T1 S2048 bf16", &s, slots, iters, 2.0 * 2 * 2048 * 64 * 2, 0, 0, 0, 0);
    gpu->free(q);
    gpu->free(kk);
    gpu->free(v);
    gpu->free(o);
  }
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 50;
  gpu = wk_backend_get(WK_CUDA);
  if (!gpu) { fprintf(stderr, "%s\n", wk_last_error()); return 1; }
  if (argc > 2 && !strcmp(argv[2], "gemv")) {
    bench_gemv(iters);
    return 0;
  }
  if (argc > 2 && !strcmp(argv[2], "decode")) {
    bench_decode(iters);
    return 0;
  }
  if (argc > 2 && !strcmp(argv[2], "attn")) {
    bench_attn(iters);
    return 0;
  }

  // copy bandwidth (the reference for memory-bound kernels): read + write
  size_t cb = (size_t)256 << 20;
  void *c0 = gpu->alloc(cb), *c1 = gpu->alloc(cb);
  timeit("copy 256MB d2d", NULL, NULL, iters, 2.0 * (double)cb, 0, c1, c0, cb);
  gpu->free(c0);
  gpu->free(c1);

  // chain8 on 16M elements: one fused elementwise step, f32 and bf16
  for (int k = 0; k < 2; k++) {
    wk_dtype dt = k ? WK_BF16 : WK_F32;
    int64_t n = (int64_t)16 << 20;
    void *x = dev_rand((size_t)n, dt), *y = gpu->alloc((size_t)n * wk_dtype_size(dt));
    void *slots[2] = {x, y};
    wk_ew_instr code[] = {ins(WK_EW_LOAD, 0, 0, 0, 0), ins(WK_OP_MUL_SCALAR, 1, 0, 0, 1.5f), ins(WK_OP_ADD_SCALAR, 2, 1, 0, 0.25f),
                          ins(WK_OP_TANH, 3, 2, 0, 0),   ins(WK_OP_MUL, 4, 3, 0, 0),          ins(WK_OP_EXP, 5, 4, 0, 0),
                          ins(WK_OP_SIGMOID, 6, 5, 0, 0), ins(WK_OP_ADD, 7, 6, 0, 0),        ins(WK_OP_MUL_SCALAR, 8, 7, 0, 0.5f)};
    wk_step s = cuda_step(WK_STEP_FUSED_EW, 1);
    s.in[0] = wk_operand_dense(0, dt, 1, &n);
    s.out = wk_operand_dense(1, dt, 1, &n);
    s.prog = (wk_ew_prog){9, 9, 8, code};
    timeit(k ? "chain8 16M bf16" : "chain8 16M f32", &s, slots, iters, 2.0 * (double)n * (double)wk_dtype_size(dt), 0, 0, 0, 0);
    gpu->free(x);
    gpu->free(y);
  }

  // softmax (8,16,512,512) f32 and rms_norm (8,2048,4096) f32
  {
    int64_t sh[4] = {8, 16, 512, 512}, n = 8LL * 16 * 512 * 512;
    void *x = dev_rand((size_t)n, WK_F32), *y = gpu->alloc((size_t)n * 4);
    void *slots[2] = {x, y};
    wk_step s = cuda_step(WK_OP_SOFTMAX, 1);
    s.in[0] = wk_operand_dense(0, WK_F32, 4, sh);
    s.out = wk_operand_dense(1, WK_F32, 4, sh);
    timeit("softmax (8,16,512,512) f32", &s, slots, iters, 8.0 * (double)n, 0, 0, 0, 0);
    gpu->free(x);
    gpu->free(y);
  }
  {
    int64_t sh[3] = {8, 2048, 4096}, n = 8LL * 2048 * 4096;
    void *x = dev_rand((size_t)n, WK_F32), *w = dev_rand(4096, WK_F32), *y = gpu->alloc((size_t)n * 4);
    void *slots[3] = {x, w, y};
    wk_step s = cuda_step(WK_OP_RMS_NORM, 2);
    s.in[0] = wk_operand_dense(0, WK_F32, 3, sh);
    s.in[1] = wk_operand_dense(1, WK_F32, 1, &sh[2]);
    s.attrs.f[0] = 1e-5f;
    s.attrs.i[0] = 1;
    s.out = wk_operand_dense(2, WK_F32, 3, sh);
    timeit("rms_norm (8,2048,4096) f32", &s, slots, iters, 8.0 * (double)n, 0, 0, 0, 0);
    gpu->free(x);
    gpu->free(w);
    gpu->free(y);
  }

  // matmul 4096^3, bf16 (f32 accumulate) and f32 (TF32 off)
  for (int k = 0; k < 2; k++) {
    wk_dtype dt = k ? WK_F32 : WK_BF16;
    int64_t sh[2] = {4096, 4096}, n = 4096LL * 4096;
    void *a = dev_rand((size_t)n, dt), *b = dev_rand((size_t)n, dt), *c = gpu->alloc((size_t)n * wk_dtype_size(dt));
    void *slots[3] = {a, b, c};
    wk_step s = cuda_step(WK_OP_MATMUL, 2);
    s.in[0] = wk_operand_dense(0, dt, 2, sh);
    s.in[1] = wk_operand_dense(1, dt, 2, sh);
    s.out = wk_operand_dense(2, dt, 2, sh);
    timeit(k ? "matmul 4096 f32" : "matmul 4096 bf16", &s, slots, k ? iters / 2 + 1 : iters, 0, 2.0 * 4096.0 * 4096.0 * 4096.0, 0, 0, 0);
    gpu->free(a);
    gpu->free(b);
    gpu->free(c);
  }
  bench_attn(iters);
  bench_gemv(iters);
  wk_cuda_mem_stats m;
  wk_cuda_memory_stats(&m);
  printf("{\"name\": \"cuda allocator\", \"reserved\": %zu, \"peak_reserved\": %zu, \"cuda_mallocs\": %llu, \"cache_hits\": %llu}\n",
         m.reserved, m.peak_reserved, m.cuda_mallocs, m.cache_hits);
  return 0;
}
