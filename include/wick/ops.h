// wick ops: each call records a node (shape and dtype inferred at once) and returns.
// Binary ops broadcast NumPy-style. Axes may be negative. All ops return new
// references (see tensor.h) and NULL with wk_last_error() on bad shapes or dtypes.
#pragma once
#include "tensor.h"

// ---- elementwise ----
wk_tensor *wk_add(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_sub(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_mul(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_div(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_maximum(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_minimum(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_add_scalar(wk_tensor *a, float s);
wk_tensor *wk_mul_scalar(wk_tensor *a, float s);
wk_tensor *wk_pow_scalar(wk_tensor *a, float exponent);
wk_tensor *wk_neg(wk_tensor *a);
wk_tensor *wk_abs(wk_tensor *a);
wk_tensor *wk_exp(wk_tensor *a);
wk_tensor *wk_log(wk_tensor *a);
wk_tensor *wk_sqrt(wk_tensor *a);
wk_tensor *wk_rsqrt(wk_tensor *a);
wk_tensor *wk_square(wk_tensor *a);
wk_tensor *wk_tanh(wk_tensor *a);
wk_tensor *wk_sigmoid(wk_tensor *a);
wk_tensor *wk_relu(wk_tensor *a);
wk_tensor *wk_gelu(wk_tensor *a);        // erf form (exact)
wk_tensor *wk_gelu_tanh(wk_tensor *a);   // tanh approximation
wk_tensor *wk_silu(wk_tensor *a);
// Comparisons give 1.0 / 0.0 in a's float dtype (not differentiable).
wk_tensor *wk_eq(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_ne(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_lt(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_le(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_gt(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_ge(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_where(wk_tensor *cond, wk_tensor *a, wk_tensor *b); // cond != 0 ? a : b
wk_tensor *wk_cast(wk_tensor *a, wk_dtype dt);
wk_tensor *wk_stop_gradient(wk_tensor *a);

// ---- reductions (keepdims = 1 keeps reduced axes as size 1) ----
// axes = NULL with naxes = 0 reduces over every axis.
wk_tensor *wk_sum(wk_tensor *a, int naxes, const int *axes, int keepdims);
wk_tensor *wk_mean(wk_tensor *a, int naxes, const int *axes, int keepdims);
wk_tensor *wk_max(wk_tensor *a, int naxes, const int *axes, int keepdims);
wk_tensor *wk_argmax(wk_tensor *a, int axis, int keepdims);    // i32
// Greedy decoding's statistics of each row along the last axis, f32 [..., 3]: the max,
// the sum of exp(x - max) (so log-probability of the max = -log(sum)), and the index of
// the first max as a float (exact below 2^24): always wk_argmax's index. Rows that are
// not finite: a NaN anywhere gives max NaN, sum NaN and the first NaN's index (as
// wk_argmax, torch.argmax); values equal to an infinite max count as equal values
// (exp(0) = 1), where log_softmax gives NaN: a row of V values all -inf gives (-inf, V,
// 0), the uniform distribution's -log(V); a row with k values +inf gives (+inf, k, the
// first of them), as the sampler shares the probability among them.
wk_tensor *wk_top1(wk_tensor *a);

// ---- linear algebra ----
// a[..., M, K] @ b[..., K, N]; batch dims broadcast. trans_a / trans_b use the
// transpose of the last two axes (no copy).
wk_tensor *wk_matmul(wk_tensor *a, wk_tensor *b);
wk_tensor *wk_matmul_t(wk_tensor *a, int trans_a, wk_tensor *b, int trans_b);
// A block-quantized b (WK_Q8_0 ... WK_Q6_K, 2-d [N, K] as stored in GGUF) is read in
// place, dequantized on the fly: wk_matmul_t(x, 0, W, 1) is x[..., K] @ W^T -> [..., N]
// and wk_matmul(g, W) is g[..., N] @ W -> [..., K]. x is f32 and gradients flow to it;
// W itself is frozen (dequantize it to train it). Other uses of a quantized operand fail.
// A frozen, realized, contiguous f16 or bf16 b (a model's weight) under an f32 a is
// taken the same way instead of being refused for its dtype: the result is f32. A
// bf16 b multiplies a rounded to bf16 (round to nearest even) with f32 accumulation,
// at every batch size (on CPUs with AVX512-BF16 at twice the f32 rate; on CUDA a
// GEMV for up to 8 rows, the tensor cores for more); an f16 b widens exactly.
// Operands of other mixed dtypes are refused.
// Block-quantized -> f32 (the same as wk_cast(q, WK_F32)).
wk_tensor *wk_dequantize(wk_tensor *q);

// ---- shape and views (no copy where strides allow) ----
wk_tensor *wk_reshape(wk_tensor *a, int ndim, const int64_t *shape); // one -1 allowed
wk_tensor *wk_permute(wk_tensor *a, const int *perm);
wk_tensor *wk_transpose(wk_tensor *a, int axis0, int axis1);
wk_tensor *wk_slice(wk_tensor *a, int axis, int64_t start, int64_t stop, int64_t step);
wk_tensor *wk_broadcast_to(wk_tensor *a, int ndim, const int64_t *shape);
wk_tensor *wk_expand_dims(wk_tensor *a, int axis);
wk_tensor *wk_squeeze(wk_tensor *a, int axis);
wk_tensor *wk_contiguous(wk_tensor *a);
wk_tensor *wk_concat(int n, wk_tensor *const *ts, int axis);
// Splits along axis into n parts of sizes[i] (sizes NULL = equal parts); out gets n tensors.
wk_status wk_split(wk_tensor *a, int axis, int n, const int64_t *sizes, wk_tensor **out);
// Pads each axis with before[i] / after[i] elements of `value`.
wk_tensor *wk_pad(wk_tensor *a, const int64_t *before, const int64_t *after, float value);

// ---- neural-network ops (each one fused kernel) ----
wk_tensor *wk_softmax(wk_tensor *a, int axis);
wk_tensor *wk_log_softmax(wk_tensor *a, int axis);
// Over the last axis: x / sqrt(mean(x^2) + eps) * weight (weight may be NULL).
wk_tensor *wk_rms_norm(wk_tensor *x, wk_tensor *weight, float eps);
// Over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (either may be NULL).
wk_tensor *wk_layer_norm(wk_tensor *x, wk_tensor *weight, wk_tensor *bias, float eps);
// Rotary embedding on x[..., T, D] (T = second-to-last axis) at positions
// offset + t. interleaved = 0: rotate-half (Llama/HF); 1: pairs (x0,x1),(x2,x3) (GPT-J).
wk_tensor *wk_rope(wk_tensor *x, float theta, int64_t offset, int interleaved);
// The same at positions pos[0] + t, pos an i32 tensor of one element read when the
// graph runs: a decode step's graph (and its compiled plan) stays the same from token
// to token while the position moves.
wk_tensor *wk_rope_at(wk_tensor *x, float theta, wk_tensor *pos, int interleaved);
// Scaled RoPE (transformers' rope_scaling): angles (offset [+ pos[0]] + t) * inv_freq[i]
// with inv_freq f32 [D/2] given (linear, dynamic, yarn, llama3 frequencies), and cos and
// sin multiplied by scale (yarn's attention factor; 1 otherwise). pos may be NULL.
wk_tensor *wk_rope_freqs(wk_tensor *x, wk_tensor *inv_freq, float scale, int64_t offset, wk_tensor *pos,
                         int interleaved);
// table[V, D], ids i32[...] -> [..., D]
wk_tensor *wk_embedding(wk_tensor *table, wk_tensor *ids);
// Additive masks (0 or -inf) in f32: causal [T, S] where query t sees keys s <= t + (S - T);
// padding [B, 1, 1, S] from lengths i32[B] (positions >= length are masked).
wk_tensor *wk_causal_mask(int64_t T, int64_t S);
wk_tensor *wk_padding_mask(wk_tensor *lengths, int64_t S);
// q[B, Hq, T, D], k/v[B, Hkv, S, D] with Hq % Hkv == 0 (GQA); mask additive,
// broadcastable to [B, Hq, T, S], or NULL. scale <= 0 means 1/sqrt(D).
wk_tensor *wk_sdpa(wk_tensor *q, wk_tensor *k, wk_tensor *v, wk_tensor *mask, int causal, float scale);
// Attention over a preallocated KV cache: k/v [B, Hkv, S, D] hold S positions of which
// only the first kv_len[0] exist (kv_len: one i32 value read at run time, 0..S); the
// causal diagonal ends at key kv_len[0] - 1 (query t sees keys <= t + kv_len - T). k
// and v may be stored as f16, bf16 or q8_0 (blocks along D) under an f32 q. kv_len NULL
// is wk_sdpa. No gradient with kv_len (a cache is inference only).
wk_tensor *wk_sdpa_kv(wk_tensor *q, wk_tensor *k, wk_tensor *v, wk_tensor *mask, wk_tensor *kv_len, int causal,
                      float scale);
// Writes src into the evaluated, contiguous dst at dst[..., start:start + n, ...] along
// axis (start: one i32 value read at run time; the rest of dst keeps its contents) and
// returns dst's updated storage: an in-place update (no copy of dst), the way a KV
// cache takes each step's keys. src is converted to dst's dtype (f32, f16, bf16, or
// q8_0 blocks along the last axis, which must then not be `axis`). Read dst through
// the result so that the read runs after the write. A start that does not fit fails
// at evaluation. No gradient.
wk_tensor *wk_set_slice(wk_tensor *dst, wk_tensor *src, int axis, wk_tensor *start);
// logits[..., V], targets i32[...]; targets == ignore_index don't count.
// reduction: 0 = none (per-position losses), 1 = mean over counted (NaN when none
// counts, as in PyTorch; its gradient is 0), 2 = sum.
wk_tensor *wk_cross_entropy(wk_tensor *logits, wk_tensor *targets, int ignore_index, int reduction);
// wk_cross_entropy(wk_matmul_t(x, 0, W, 1), ...) for x [..., H] and W [V, H] (a language
// model's head), reduction 1 or 2. On CUDA with a bf16 W the logits never exist whole:
// one op computes them by blocks of rows, in the backward again (one GEMM more, the
// [..., V] logits and their gradient less). Elsewhere it is that graph.
wk_tensor *wk_linear_cross_entropy(wk_tensor *x, wk_tensor *W, wk_tensor *targets, int ignore_index, int reduction);
// Zeroes elements with probability p and scales the rest by 1/(1-p); identity when training == 0.
wk_tensor *wk_dropout(wk_tensor *a, float p, uint64_t seed, int training);
// LoRA: x @ W + scale * (x @ A) @ B, run as one fused kernel: one node when the kernels
// take the operands as stored (f32, x contiguous, W / A / B row-major or transposed),
// else primitives that the fusion pass recognizes.
wk_tensor *wk_lora(wk_tensor *x, wk_tensor *W, wk_tensor *A, wk_tensor *B, float scale);
