#define _POSIX_C_SOURCE 200809L
// wick bench: the benchmark suite. One JSON object per line with --json:
// {"name", "device", "mode": "lazy"|"eager", "us": median, "p10", "p90", "iters"} plus
// "gflops" or "gbs" where they apply. Timings never decide pass/fail anywhere.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wick.h"

typedef struct bench_case bench_case;
typedef struct {
  wk_tensor *in[8];     // inputs, realized
  wk_tensor *state[8];  // optimizer state carried across iterations
  int nstate;
  int step;
} bench_env;

struct bench_case {
  const char *name;
  void (*setup)(const bench_case *c, bench_env *e);
  // Builds one call's graph and returns the tensors to evaluate (new references).
  int (*run)(const bench_case *c, bench_env *e, wk_tensor **out);
  int64_t a, b, c, d;   // case parameters
  double flops, bytes;  // per call, for gflops / gbs
  unsigned flags;       // CASE_BF16: inputs in bf16; CASE_GPU: skipped on the CPU (too large or slow there)
};
enum { CASE_BF16 = 1, CASE_GPU = 2 };

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static wk_device bench_device = WK_CPU;

// A realized random input on the benchmark's device (made on the CPU, then moved).
static wk_tensor *on_device(wk_tensor *t) {
  wk_tensor *d = wk_to_device(t, bench_device);
  wk_tensor_free(t);
  if (d) wk_eval(1, &d);
  return d;
}

static wk_tensor *input(int nd, const int64_t *shape, float scale, uint64_t seed) {
  return on_device(wk_mul_scalar(wk_randn(nd, shape, WK_F32, seed), scale));
}
// The same in the case's dtype (bf16 cases round the f32 values).
static wk_tensor *input_of(const bench_case *c, int nd, const int64_t *shape, float scale, uint64_t seed) {
  wk_tensor *t = wk_mul_scalar(wk_randn(nd, shape, WK_F32, seed), scale);
  if (c->flags & CASE_BF16) {
    wk_tensor *h = wk_cast(t, WK_BF16);
    wk_tensor_free(t);
    t = h;
  }
  return on_device(t);
}
#define SH(...) (int64_t[]){__VA_ARGS__}

// ---- LoRA ----
static void lora_setup(const bench_case *c, bench_env *e) {
  int64_t n = c->a, r = c->b, rows = c->c;
  e->in[0] = input(3, rows == 1 ? SH(1, 1, n) : SH(8, rows / 8, n), 1.0f, 1);
  e->in[1] = input(2, SH(n, n), 1.0f / sqrtf((float)n), 2);
  e->in[2] = input(2, SH(n, r), 1.0f / sqrtf((float)n), 3);
  e->in[3] = input(2, SH(r, n), 0.01f, 4);
}
static int lora_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  float scale = 2.0f; // alpha / r: 16 / 8 and 32 / 16
  wk_tensor *y = e->in[0];
  int calls = c->d ? (int)c->d : 1;
  wk_scope_begin();
  for (int i = 0; i < calls; i++) y = wk_lora(y, e->in[1], e->in[2], e->in[3], scale);
  out[0] = wk_keep(y);
  wk_scope_end();
  return 1;
}
// The seed's v1.0 LoRA: x@W + s * (x@A)@B written as five primitive ops, which eager
// mode runs one by one as they are built and lazy mode's planner recognizes as LoRA.
static int lora_ops_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  wk_scope_begin();
  wk_tensor *y = wk_reshape(e->in[0], 2, SH(1, c->a));
  for (int i = 0; i < (int)c->d; i++) {
    wk_tensor *xa = wk_matmul(y, e->in[2]);
    y = wk_add(wk_matmul(y, e->in[1]), wk_mul_scalar(wk_matmul(xa, e->in[3]), 2.0f));
  }
  out[0] = wk_keep(y);
  wk_scope_end();
  return 1;
}

// forward, MSE loss, grads to A and B, AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, wd 0.01)
static void train_setup(const bench_case *c, bench_env *e) {
  lora_setup(c, e);
  e->in[4] = input(3, SH(8, c->c / 8, c->a), 1.0f, 5);
  for (int k = 0; k < 4; k++) e->state[k] = on_device(wk_zeros(2, wk_shape(e->in[2 + k / 2]), WK_F32));
  e->nstate = 4;
}
static wk_tensor *adamw(wk_tensor *p, wk_tensor *g, wk_tensor *m, wk_tensor *v, int t, wk_tensor **m2, wk_tensor **v2) {
  const float lr = 1e-4f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
  *m2 = wk_add(wk_mul_scalar(m, b1), wk_mul_scalar(g, 1 - b1));
  *v2 = wk_add(wk_mul_scalar(v, b2), wk_mul_scalar(wk_square(g), 1 - b2));
  float c1 = 1.0f / (1.0f - powf(b1, (float)t)), c2 = 1.0f / (1.0f - powf(b2, (float)t));
  wk_tensor *upd = wk_div(wk_mul_scalar(*m2, c1), wk_add_scalar(wk_sqrt(wk_mul_scalar(*v2, c2)), eps));
  return wk_sub(wk_mul_scalar(p, 1 - lr * wd), wk_mul_scalar(upd, lr));
}
static int train_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  wk_scope_begin();
  wk_tensor *A = e->in[2], *B = e->in[3];
  wk_set_trainable(A, 1);
  wk_set_trainable(B, 1);
  wk_tensor *y = wk_lora(e->in[0], e->in[1], A, B, 2.0f);
  wk_tensor *loss = wk_mean(wk_square(wk_sub(y, e->in[4])), 0, NULL, 0);
  wk_tensor *g[2];
  wk_grad(loss, 2, (wk_tensor *[]){A, B}, g);
  int t = ++e->step;
  wk_tensor *m[2], *v[2];
  wk_tensor *pa = adamw(A, g[0], e->state[0], e->state[1], t, &m[0], &v[0]);
  wk_tensor *pb = adamw(B, g[1], e->state[2], e->state[3], t, &m[1], &v[1]);
  wk_tensor *res[7] = {loss, pa, pb, m[0], v[0], m[1], v[1]};
  for (int k = 0; k < 7; k++) out[k] = wk_keep(res[k]);
  wk_scope_end();
  return 7;
}
// After evaluation the new parameters and moments replace the old ones.
static void train_commit(bench_env *e, wk_tensor **out) {
  wk_tensor *next[6] = {out[1], out[2], out[3], out[4], out[5], out[6]};
  wk_tensor_free(e->in[2]);
  wk_tensor_free(e->in[3]);
  e->in[2] = wk_tensor_ref(next[0]);
  e->in[3] = wk_tensor_ref(next[1]);
  for (int k = 0; k < 4; k++) { wk_tensor_free(e->state[k]); e->state[k] = wk_tensor_ref(next[2 + k]); }
}

// ---- softmax / rmsnorm / chain ----
static void rows_setup(const bench_case *c, bench_env *e) {
  int64_t n = c->a * c->b * c->c;
  e->in[0] = input_of(c, 2, SH(n / c->c, c->c), 1.0f, 7);
  e->in[1] = input_of(c, 1, SH(c->c), 1.0f, 8);
}
static int softmax_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  wk_scope_begin();
  wk_tensor *y = e->in[0];
  for (int i = 0; i < (c->d ? c->d : 1); i++) y = wk_softmax(y, -1);
  out[0] = wk_keep(y);
  wk_scope_end();
  return 1;
}
static int rmsnorm_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  wk_scope_begin();
  wk_tensor *y = e->in[0];
  for (int i = 0; i < (c->d ? c->d : 1); i++) y = wk_rms_norm(y, e->in[1], 1e-5f);
  out[0] = wk_keep(y);
  wk_scope_end();
  return 1;
}
static void chain_setup(const bench_case *c, bench_env *e) {
  e->in[0] = input_of(c, 1, &c->a, 1.0f, 9);
  e->in[1] = input_of(c, 1, &c->a, 1.0f, 10);
}
static int chain_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  wk_scope_begin();
  wk_tensor *x = e->in[0], *y = e->in[1];
  wk_tensor *t = wk_add(x, y);
  t = wk_mul(t, y);
  t = wk_sub(t, x);
  t = wk_mul_scalar(t, 0.5f);
  t = wk_tanh(t);
  t = wk_add_scalar(t, 1.0f);
  t = wk_mul(t, x);
  out[0] = wk_keep(wk_abs(t));
  wk_scope_end();
  return 1;
}
static void matmul_setup(const bench_case *c, bench_env *e) {
  e->in[0] = input_of(c, 2, SH(c->a, c->a), 1.0f, 11);
  e->in[1] = input_of(c, 2, SH(c->a, c->a), 1.0f, 12);
}
static int matmul_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  out[0] = wk_keep(wk_matmul(e->in[0], e->in[1]));
  return 1;
}
// ---- quantized weight (GGUF layout [N, K]): x[M, K] @ W^T, the decoder's linear; d: the type (0: Q4_1) ----
static void qmatmul_setup(const bench_case *c, bench_env *e) {
  wk_dtype dt = c->d ? (wk_dtype)c->d : WK_Q4_1;
  int64_t M = c->a, K = c->b, N = c->c, bs = (int64_t)wk_dtype_block_bytes(dt), nb = N * K / wk_dtype_block(dt);
  uint8_t *w = malloc((size_t)(nb * bs));
  uint64_t r = 0x9E3779B97F4A7C15ull;
  for (int64_t i = 0; i < nb * bs; i++) r = r * 6364136223846793005ull + 1442695040888963407ull, w[i] = (uint8_t)(r >> 56);
  for (uint8_t *p = w; p < w + nb * bs; p += bs) { // f16 scales: d 2^-7, m -2^-7 (Q4_1); 2^-10 (K types)
    if (dt == WK_Q4_1) p[0] = 0, p[1] = 0x20, p[2] = 0, p[3] = 0xA0;
    else if (dt == WK_Q6_K) p[208] = 0, p[209] = 0x14;
    else p[0] = 0, p[1] = 0x14, p[2] = 0, p[3] = 0x14;
  }
  e->in[0] = input(2, SH(M, K), 1.0f, 13);
  e->in[1] = wk_from_data(2, SH(N, K), dt, w);
  free(w);
}
static int qmatmul_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  out[0] = wk_keep(wk_matmul_t(e->in[0], 0, e->in[1], 1));
  return 1;
}

// ---- sentence embeddings: all-MiniLM-L6-v2 on bench/data/sentences.txt (256 sentences
// of ~16 words, made by tools/gen_bench_sentences.py); wk_embed evaluates by itself ----
#define EMBED_MODEL "models/all-minilm-l6-v2"
#define EMBED_SENTENCES "bench/data/sentences.txt"
static struct { int tried; wk_embedder *e; char *text; const char *lines[256]; int n; float *out; } embed_env;

static int embed_available(void) {
  if (!embed_env.tried) {
    embed_env.tried = 1;
    FILE *f = fopen(EMBED_SENTENCES, "rb");
    long len = f && !fseek(f, 0, SEEK_END) ? ftell(f) : -1;
    if (len > 0 && !fseek(f, 0, SEEK_SET) && (embed_env.text = malloc((size_t)len + 1)) &&
        fread(embed_env.text, 1, (size_t)len, f) == (size_t)len) {
      embed_env.text[len] = 0;
      for (char *p = embed_env.text, *nl; embed_env.n < 256 && *p; p = nl + 1) {
        embed_env.lines[embed_env.n++] = p;
        if (!(nl = strchr(p, '\n'))) break;
        *nl = 0;
      }
    }
    if (f) fclose(f);
    if (embed_env.n == 256 && (embed_env.e = wk_embedder_load(EMBED_MODEL)))
      embed_env.out = malloc(sizeof(float) * 256 * (size_t)wk_embedder_dim(embed_env.e));
  }
  return embed_env.out != NULL;
}
static void embed_release(void) {
  wk_embedder_free(embed_env.e);
  free(embed_env.text);
  free(embed_env.out);
  memset(&embed_env, 0, sizeof embed_env);
}
// CASE_BF16: the encoder's matrices in bf16 (bf16 products); f32 reloads the file,
// since rounding back would keep the bf16 values.
static void embed_setup(const bench_case *c, bench_env *e) {
  (void)e;
  wk_dtype want = c->flags & CASE_BF16 ? WK_BF16 : WK_F32;
  if (wk_embedder_weight_dtype(embed_env.e) == want) return;
  if (want == WK_F32) {
    wk_embedder_free(embed_env.e);
    embed_env.e = wk_embedder_load(EMBED_MODEL);
  } else if (wk_embedder_set_weight_dtype(embed_env.e, want)) {
    wk_embedder_free(embed_env.e);
    embed_env.e = NULL;
  }
}
static int embed_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)e;
  (void)out;
  return wk_embed(embed_env.e, (int)c->a, embed_env.lines, embed_env.out) ? -1 : 0;
}

static int copy_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  out[0] = wk_keep(wk_contiguous(e->in[0]));
  return 1;
}

// ---- attention: causal GQA self-attention, D 64 (a = B, b = Hq, c = Hkv, d = T = S) ----
static void attn_setup(const bench_case *c, bench_env *e) {
  e->in[0] = input_of(c, 4, SH(c->a, c->b, c->d, 64), 1.0f, 21);
  e->in[1] = input_of(c, 4, SH(c->a, c->c, c->d, 64), 1.0f, 22);
  e->in[2] = input_of(c, 4, SH(c->a, c->c, c->d, 64), 1.0f, 23);
  e->in[3] = input_of(c, 4, SH(c->a, c->b, c->d, 64), 1.0f, 24);   // dL/dout of the training case
}
static int attn_fwd_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  out[0] = wk_sdpa(e->in[0], e->in[1], e->in[2], NULL, 1, 0);
  return 1;
}
// forward and backward: loss = sum(sdpa(q, k, v) * w), gradients of q, k and v
static int attn_train_run(const bench_case *c, bench_env *e, wk_tensor **out) {
  (void)c;
  wk_scope_begin();
  for (int k = 0; k < 3; k++) wk_set_trainable(e->in[k], 1);
  wk_tensor *y = wk_sdpa(e->in[0], e->in[1], e->in[2], NULL, 1, 0);
  wk_tensor *loss = wk_sum(wk_cast(wk_mul(y, e->in[3]), WK_F32), 0, NULL, 0), *g[3] = {0};
  wk_status st = wk_grad(loss, 3, e->in, g);
  for (int k = 0; k < 3; k++) out[k] = st ? NULL : wk_keep(g[k]);
  out[3] = wk_keep(loss);
  wk_scope_end();
  return 4;
}
// the visible half of the causal score matrix: 4 B Hq T^2 D / 2; backward 2.5x that
#define ATTN_FLOPS(B, H, T, D) (2.0 * (B) * (H) * (T) * (T) * (D))

// flops of x[M,N] @ W[N,N] + s * (x @ A[N,r]) @ B[r,N]: 2MN^2 + 4MNr
#define LORA_FLOPS(M, N, r) (2.0 * (M) * (N) * (N) + 4.0 * (M) * (N) * (r))
#define LORA(n, ...) lora_setup, lora_run, n, 8, 1, __VA_ARGS__
static const bench_case cases[] = {
    {"lora_fwd/512", LORA(512, 0, LORA_FLOPS(1, 512, 8), 0), 0},
    {"lora_fwd/1024", LORA(1024, 0, LORA_FLOPS(1, 1024, 8), 0), 0},
    {"lora_fwd/2048", LORA(2048, 0, LORA_FLOPS(1, 2048, 8), 0), 0},
    {"lora_fwd/512x10", LORA(512, 10, 10 * LORA_FLOPS(1, 512, 8), 0), 0},
    {"lora_ops/512x10", lora_setup, lora_ops_run, 512, 8, 1, 10, 10 * LORA_FLOPS(1, 512, 8), 0, 0},
    // the CUDA issue's cases: 1000 calls chained (each output the next input), one
    // evaluation; per call = the time / 1000 (bench/compare/torch_cuda.py)
    {"lora_fwd/512x1000", LORA(512, 1000, 1000 * LORA_FLOPS(1, 512, 8), 0, CASE_GPU)},
    {"lora_fwd/1024x1000", LORA(1024, 1000, 1000 * LORA_FLOPS(1, 1024, 8), 0, CASE_GPU)},
    {"lora_fwd/2048x1000", LORA(2048, 1000, 1000 * LORA_FLOPS(1, 2048, 8), 0, CASE_GPU)},
    {"lora_fwd/8x128x1024r16", lora_setup, lora_run, 1024, 16, 1024, 0, LORA_FLOPS(1024, 1024, 16), 0, 0},
    // forward, then dB = down^T g, d(down) = g B^T, dA = x^T d(down): 6MNr more
    {"lora_train_step/8x128x1024r16", train_setup, train_run, 1024, 16, 1024, 0,
     LORA_FLOPS(1024, 1024, 16) + 6.0 * 1024 * 1024 * 16, 0, 0},
    {"softmax/4x16x1024", rows_setup, softmax_run, 4, 16, 1024, 0, 0, 8.0 * 65536, 0},
    {"softmax/4x16x1024x10", rows_setup, softmax_run, 4, 16, 1024, 10, 0, 0, 0},
    {"softmax/8x16x512x512", rows_setup, softmax_run, 8 * 16, 512, 512, 0, 0, 8.0 * 128 * 512 * 512, 0},
    {"softmax/4x16x1024x1000", rows_setup, softmax_run, 4, 16, 1024, 1000, 0, 0, CASE_GPU},
    {"softmax/8x16x1024x1024", rows_setup, softmax_run, 8 * 16, 1024, 1024, 0, 0, 8.0 * 128 * 1024 * 1024, CASE_GPU},
    {"softmax/8x16x1024x1024/bf16", rows_setup, softmax_run, 8 * 16, 1024, 1024, 0, 0, 4.0 * 128 * 1024 * 1024,
     CASE_GPU | CASE_BF16},
    {"rmsnorm/4x16x1024", rows_setup, rmsnorm_run, 4, 16, 1024, 0, 0, 8.0 * 65536, 0},
    {"rmsnorm/4x16x1024x10", rows_setup, rmsnorm_run, 4, 16, 1024, 10, 0, 0, 0},
    {"rmsnorm/8x512x2048", rows_setup, rmsnorm_run, 8, 512, 2048, 0, 0, 8.0 * 8 * 512 * 2048, 0},
    {"rmsnorm/4x16x1024x1000", rows_setup, rmsnorm_run, 4, 16, 1024, 1000, 0, 0, CASE_GPU},
    {"rmsnorm/8x2048x4096", rows_setup, rmsnorm_run, 8, 2048, 4096, 0, 0, 8.0 * 8 * 2048 * 4096, CASE_GPU},
    {"rmsnorm/8x2048x4096/bf16", rows_setup, rmsnorm_run, 8, 2048, 4096, 0, 0, 4.0 * 8 * 2048 * 4096, CASE_GPU | CASE_BF16},
    {"chain8/1024", chain_setup, chain_run, 1024, 0, 0, 0, 0, 12.0 * 1024, 0},
    {"chain8/16M", chain_setup, chain_run, 16 << 20, 0, 0, 0, 0, 12.0 * (16 << 20), 0},
    {"chain8/64M", chain_setup, chain_run, 64 << 20, 0, 0, 0, 0, 12.0 * (64 << 20), CASE_GPU},
    {"chain8/64M/bf16", chain_setup, chain_run, 64 << 20, 0, 0, 0, 0, 6.0 * (64 << 20), CASE_GPU | CASE_BF16},
    {"copy/16M", chain_setup, copy_run, 16 << 20, 0, 0, 0, 0, 8.0 * (16 << 20), 0},
    {"matmul/1024", matmul_setup, matmul_run, 1024, 0, 0, 0, 2.0 * 1024 * 1024 * 1024, 0, 0},
    {"matmul/2048", matmul_setup, matmul_run, 2048, 0, 0, 0, 2.0 * 2048 * 2048 * 2048, 0, 0},
    {"matmul/4096", matmul_setup, matmul_run, 4096, 0, 0, 0, 2.0 * 4096 * 4096 * 4096, 0, CASE_GPU},
    {"matmul/4096/bf16", matmul_setup, matmul_run, 4096, 0, 0, 0, 2.0 * 4096 * 4096 * 4096, 0, CASE_GPU | CASE_BF16},
    // SmolLM2-135M's MLP gate (decode and a 128-token prefill) and its tied LM head
    {"qmatmul_q4_1/1x576x1536", qmatmul_setup, qmatmul_run, 1, 576, 1536, 0, 2.0 * 576 * 1536, 576 * 1536 * 20 / 32, 0},
    {"qmatmul_q4_1/128x576x1536", qmatmul_setup, qmatmul_run, 128, 576, 1536, 0, 2.0 * 128 * 576 * 1536, 0, 0},
    {"qmatmul_q4_1/1x576x49152", qmatmul_setup, qmatmul_run, 1, 576, 49152, 0, 2.0 * 576 * 49152,
     576.0 * 49152 * 20 / 32, 0},
    // the K-quants' decode GEMV (a 2048-wide model's projection; 4.5 / 5.5 / 6.6 bits a weight)
    {"qmatmul_q4_k/1x2048x2048", qmatmul_setup, qmatmul_run, 1, 2048, 2048, WK_Q4_K, 2.0 * 2048 * 2048,
     2048.0 * 2048 * 144 / 256, 0},
    {"qmatmul_q5_k/1x2048x2048", qmatmul_setup, qmatmul_run, 1, 2048, 2048, WK_Q5_K, 2.0 * 2048 * 2048,
     2048.0 * 2048 * 176 / 256, 0},
    {"qmatmul_q6_k/1x2048x2048", qmatmul_setup, qmatmul_run, 1, 2048, 2048, WK_Q6_K, 2.0 * 2048 * 2048,
     2048.0 * 2048 * 210 / 256, 0},
    // Qwen2.5-0.5B's training shape (bench/compare/torch_cuda.py: beside torch's flash attention)
    {"sdpa_fwd/8x14x2x512x64", attn_setup, attn_fwd_run, 8, 14, 2, 512, ATTN_FLOPS(8, 14, 512, 64), 0, CASE_GPU},
    {"sdpa_fwd/8x14x2x512x64/bf16", attn_setup, attn_fwd_run, 8, 14, 2, 512, ATTN_FLOPS(8, 14, 512, 64), 0,
     CASE_GPU | CASE_BF16},
    {"sdpa_train/8x14x2x512x64", attn_setup, attn_train_run, 8, 14, 2, 512, 3.5 * ATTN_FLOPS(8, 14, 512, 64), 0, CASE_GPU},
    {"sdpa_train/8x14x2x512x64/bf16", attn_setup, attn_train_run, 8, 14, 2, 512, 3.5 * ATTN_FLOPS(8, 14, 512, 64), 0,
     CASE_GPU | CASE_BF16},
    // sentences per call in a; the rate is sentences/s ("items_s")
    {"embed_minilm/1", embed_setup, embed_run, 1, 0, 0, 0, 0, 0, 0},
    {"embed_minilm/32", embed_setup, embed_run, 32, 0, 0, 0, 0, 0, 0},
    {"embed_minilm/256", embed_setup, embed_run, 256, 0, 0, 0, 0, 0, 0},
    {"embed_minilm_bf16/1", embed_setup, embed_run, 1, 0, 0, 0, 0, 0, CASE_BF16},
    {"embed_minilm_bf16/32", embed_setup, embed_run, 32, 0, 0, 0, 0, 0, CASE_BF16},
    {"embed_minilm_bf16/256", embed_setup, embed_run, 256, 0, 0, 0, 0, 0, CASE_BF16},
};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct { double med, p10, p90; int iters; size_t peak, unplanned; } result;

static int run_case(const bench_case *c, int eager, double budget_us, result *res) {
  bench_env e = {0};
  c->setup(c, &e);
  wk_set_eager(eager);
  int cap = 100000, n = 0;
  double *t = malloc(sizeof(double) * (size_t)cap), start = now_us();
  int ok = 1;
  for (int warm = 1; ok && n < cap;) {
    wk_tensor *out[8];
    double t0 = now_us();
    int k = c->run(c, &e, out);
    if (k < 0) { ok = 0; k = 0; }   // the case failed by itself (it evaluates on its own)
    for (int q = 0; q < k; q++) if (!out[q]) ok = 0;
    if (ok && k && wk_eval(k, out)) ok = 0;
    double t1 = now_us();
    if (ok && c->run == train_run) train_commit(&e, out);
    for (int q = 0; q < k; q++) wk_tensor_free(out[q]);
    if (warm) { warm = 0; continue; } // first call compiles the plan
    t[n++] = t1 - t0;
    if (now_us() - start > budget_us && n >= 5) break;
  }
  wk_set_eager(0);
  if (ok && !eager) {
    wk_eval_stats st;
    wk_last_eval_stats(&st);
    res->peak = st.arena_bytes;
    res->unplanned = st.unplanned_bytes;
  }
  if (ok) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    res->med = t[n / 2];
    res->p10 = t[n / 10];
    res->p90 = t[n * 9 / 10];
    res->iters = n;
  }
  free(t);
  for (int k = 0; k < 8; k++) { wk_tensor_free(e.in[k]); wk_tensor_free(e.state[k]); }
  return ok;
}

static void usage(FILE *f) {
  fprintf(f, "usage: wick bench [--json] [--filter S] [--mode lazy|eager|both] [--device cpu|cuda] [--time SECONDS]\n"
             "  --time: seconds of measurement a case and mode (default 1; 0.01 to 3600)\n");
}

static bool takes_value(const char *a) {
  return !strcmp(a, "--filter") || !strcmp(a, "--time") || !strcmp(a, "--mode") || !strcmp(a, "--device") ||
         !strcmp(a, "-d");
}

int wick_bench_main(int argc, char **argv) {
  int json = 0, modes = 3;
  const char *filter = NULL;
  double budget = 1.0;
  for (int i = 1; i < argc; i++) {
    if (takes_value(argv[i]) && i + 1 == argc) {
      fprintf(stderr, "wick bench: %s needs a value\n", argv[i]);
      return 2;
    }
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
    if (!strcmp(argv[i], "--json")) json = 1;
    else if (!strcmp(argv[i], "--filter")) filter = argv[++i];
    else if (!strcmp(argv[i], "--time")) {
      char *end;
      const char *v = argv[++i];
      budget = strtod(v, &end);
      if (end == v || *end || !(budget >= 0.01 && budget <= 3600)) {
        fprintf(stderr, "wick bench: --time '%s' is not a number of seconds from 0.01 to 3600\n", v);
        return 2;
      }
    } else if (!strcmp(argv[i], "--mode")) {
      const char *m = argv[++i];
      modes = !strcmp(m, "lazy") ? 1 : !strcmp(m, "eager") ? 2 : !strcmp(m, "both") ? 3 : 0;
      if (!modes) { fprintf(stderr, "wick bench: unknown mode '%s' (lazy, eager or both)\n", m); return 2; }
    } else if (!strcmp(argv[i], "--device") || !strcmp(argv[i], "-d")) {
      const char *d = argv[++i];
      if (!strcmp(d, "cpu")) bench_device = WK_CPU;
      else if (!strcmp(d, "cuda")) bench_device = WK_CUDA;
      else { fprintf(stderr, "wick bench: unknown device '%s' (cpu or cuda)\n", d); return 2; }
      if (!wk_device_available(bench_device)) {
        fprintf(stderr, "wick bench: %s\n", wk_last_error());
        return 2;
      }
    } else {
      fprintf(stderr, "wick bench: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (!json) printf("%-32s %-6s %12s %12s %12s %8s %10s\n", "case", "mode", "median us", "p10", "p90", "iters", "rate");
  int failures = 0, ran = 0;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const bench_case *c = &cases[i];
    if (filter && !strstr(c->name, filter)) continue;
    if ((c->flags & CASE_GPU) && bench_device == WK_CPU) continue;
    if (c->run == embed_run && !embed_available()) {
      fprintf(stderr, "wick bench: %s skipped: needs %s and %s (tools/fetch-models; run from the repository)\n",
              c->name, EMBED_MODEL, EMBED_SENTENCES);
      continue;
    }
    for (int m = 0; m < 2; m++) {
      if (!((modes >> m) & 1)) continue;
      result r = {0};
      ran++;
      if (!run_case(c, m, budget * 1e6, &r)) {
        fprintf(stderr, "wick bench: %s (%s) failed: %s\n", c->name, m ? "eager" : "lazy", wk_last_error());
        failures++;
        continue;
      }
      char rate[64] = "";
      if (c->flops > 0) snprintf(rate, sizeof rate, "\"gflops\": %.1f", c->flops / r.med * 1e-3);
      else if (c->bytes > 0) snprintf(rate, sizeof rate, "\"gbs\": %.2f", c->bytes / r.med * 1e-3);
      else if (c->run == embed_run) snprintf(rate, sizeof rate, "\"items_s\": %.1f", (double)c->a / r.med * 1e6);
      if (json) {
        printf("{\"name\": \"%s\", \"device\": \"%s\", \"mode\": \"%s\", \"us\": %.3f, \"p10\": %.3f, \"p90\": %.3f, "
               "\"iters\": %d%s%s",
               c->name, wk_device_name(bench_device), m ? "eager" : "lazy", r.med, r.p10, r.p90, r.iters,
               rate[0] ? ", " : "", rate);
        if (!m && r.unplanned) printf(", \"peak_bytes\": %zu, \"unplanned_bytes\": %zu", r.peak, r.unplanned);
        printf("}\n");
      } else {
        printf("%-32s %-6s %12.2f %12.2f %12.2f %8d %10s\n", c->name, m ? "eager" : "lazy", r.med, r.p10, r.p90, r.iters,
               rate[0] ? strchr(rate, ':') + 2 : "");
      }
      fflush(stdout);
    }
  }
  embed_release();
  if (!ran) {
    fprintf(stderr, "wick bench: no case%s%s%s runs on %s\n", filter ? " matches '" : "", filter ? filter : "",
            filter ? "' that" : "", wk_device_name(bench_device));
    return 2;
  }
  return failures ? 1 : 0;
}
