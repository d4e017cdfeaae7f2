// The causal language-model loss: position t predicts token t + 1.
#include <stdlib.h>
#include "engine/engine.h"
#include "models/llama.h"
#include "wick/grad.h"
#include "wick/model.h"
#include "wick/ops.h"
#include "wick/train.h"

// The head only where a label counts. Prompt-completion and chat data leave most
// positions unlabelled, and each position costs the model's widest matmul twice
// (2 x 49152 x 576 multiply-adds on SmolLM2) plus a V-wide softmax: so the hidden
// rows whose next token counts are gathered first (an embedding lookup into the
// hidden states; its gradient scatters back). The count is padded with ignored
// rows to a multiple of 64, so a handful of plan shapes serve every batch.
typedef struct {
  wk_tensor *rows;     // i32 [n]: rows of the flattened [B * (T - 1)] positions, or NULL: every row
  wk_tensor *targets;  // i32 [1, n]: their labels (pads ignored)
} counted_rows;

#define COUNTED_ALIGN 64

// From labels [B, T] (position t + 1's label is row b * (T - 1) + t's target), read on
// the host: a batch made there is read in place, a device one is copied back (a
// transfer, not a kernel). The selection is made on dev.
static counted_rows select_counted(wk_tensor *labels, wk_device dev) {
  counted_rows c = {0};
  wk_tensor *host = wk_tensor_device(labels) == WK_CPU ? labels : wk_to_device(labels, WK_CPU);
  const int32_t *lab = host ? wk_tensor_data(host) : NULL;
  int64_t B = wk_dim(labels, 0), T = wk_dim(labels, 1), total = B * (T - 1), n = 0;
  for (int64_t b = 0; lab && b < B; b++)
    for (int64_t t = 1; t < T; t++) n += lab[b * T + t] != WK_IGNORE_INDEX;
  int64_t padded = (n + COUNTED_ALIGN - 1) / COUNTED_ALIGN * COUNTED_ALIGN;
  int32_t *idx = lab && padded && padded * 4 <= total * 3 ? malloc(sizeof(int32_t) * (size_t)padded * 2) : NULL;
  if (idx) { // worth it when at least a quarter of the rows go
    int32_t *tg = idx + padded;
    int64_t k = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 1; t < T; t++)
        if (lab[b * T + t] != WK_IGNORE_INDEX) idx[k] = (int32_t)(b * (T - 1) + t - 1), tg[k++] = lab[b * T + t];
    for (; k < padded; k++) idx[k] = 0, tg[k] = WK_IGNORE_INDEX;
    int64_t shape[2] = {1, padded};
    c.rows = wk_to_device(wk_from_data(1, &padded, WK_I32, idx), dev);
    c.targets = wk_to_device(wk_from_data(2, shape, WK_I32, tg), dev);
    free(idx);
  }
  return c;
}

// The mean loss of the counted rows of hidden x [B, T', H] (or of every row) against
// their targets.
static wk_tensor *head_loss(wk_model *m, wk_tensor *x, const counted_rows *c, wk_tensor *targets) {
  if (c->rows) {
    int64_t H = wk_dim(x, 2), flat[2] = {wk_dim(x, 0) * wk_dim(x, 1), H}, one[3] = {1, wk_dim(c->rows, 0), H};
    x = wk_reshape(wk_embedding(wk_reshape(x, 2, flat), c->rows), 3, one);
  }
  return wk_llama_head_loss(m, x, targets, WK_IGNORE_INDEX);
}

static bool check_loss_args(const char *op, wk_tensor *ids, wk_tensor *labels) {
  if (!ids || !labels || wk_ndim(ids) != 2 || wk_ndim(labels) != 2 || wk_dim(ids, 0) != wk_dim(labels, 0) ||
      wk_dim(ids, 1) != wk_dim(labels, 1) || wk_dim(ids, 1) < 2 || wk_tensor_dtype(labels) != WK_I32) {
    char a[160], b[160];
    wk_error(WK_ERR_SHAPE, "%s: ids %s and labels %s must both be i32 [B, T] with T >= 2", op,
             ids ? wk_shape_str(ids, a, sizeof a) : "NULL", labels ? wk_shape_str(labels, b, sizeof b) : "NULL");
    return false;
  }
  return true;
}

wk_tensor *wk_causal_lm_loss(wk_model *m, wk_tensor *ids, wk_tensor *labels) {
  if (!check_loss_args("causal_lm_loss", ids, labels)) return NULL;
  int64_t T = wk_dim(ids, 1);
  wk_scope_begin();
  wk_device dev = wk_model_device(m);   // host batches follow the weights
  counted_rows c = select_counted(labels, dev);
  if (wk_tensor_device(ids) != dev) ids = wk_to_device(ids, dev);
  if (wk_tensor_device(labels) != dev) labels = wk_to_device(labels, dev);
  // the last position predicts nothing, so it is left out of the forward pass
  wk_tensor *in = wk_slice(ids, 1, 0, T - 1, 1);
  wk_tensor *targets = c.rows ? c.targets : wk_contiguous(wk_slice(labels, 1, 1, T, 1));
  wk_tensor *loss = wk_keep(head_loss(m, wk_llama_hidden(m, in), &c, targets));
  wk_scope_end();
  return loss ? wk_node_finish(loss) : NULL;
}

// ---- activation checkpointing ----
// The adapter tensors of layer l among params[0..n), by identity with the model's hook.
static int layer_params(const wk_model *m, int64_t l, int n, wk_tensor *const *params, int *idx) {
  const wk_lora_hook *h = m->lora;
  int k = 0;
  for (int i = 0; h && i < n; i++)
    for (int p = 0; p < WK_PROJ_COUNT; p++) {
      size_t s = (size_t)(l * WK_PROJ_COUNT + p);
      if (params[i] == h->A[s] || params[i] == h->B[s]) { idx[k++] = i; break; }
    }
  return k;
}

wk_status wk_causal_lm_value_and_grad_ckpt(wk_model *m, wk_tensor *ids, wk_tensor *labels, int n,
                                           wk_tensor *const *params, wk_tensor **grads, float *loss) {
  int64_t L = wk_model_get_config(m)->num_hidden_layers, T = wk_dim(ids, 1);
  wk_tensor **xs = calloc((size_t)L + 1, sizeof *xs);
  wk_tensor **targets = calloc((size_t)n + 1, sizeof *targets), **gs = calloc((size_t)n + 1, sizeof *gs);
  int *idx = calloc((size_t)n + 1, sizeof *idx);
  wk_status s = xs && targets && gs && idx ? WK_OK : wk_error(WK_ERR_OOM, "checkpointed loss: out of memory");
  for (int i = 0; i < n; i++) grads[i] = NULL;
  // forward, keeping only each block's input
  wk_scope_begin();
  wk_tensor *in = wk_slice(ids, 1, 0, T - 1, 1);
  counted_rows c = select_counted(labels, wk_tensor_device(labels));
  wk_tensor *tg = c.rows ? c.targets : wk_contiguous(wk_slice(labels, 1, 1, T, 1));
  if (!s) s = (xs[0] = wk_keep(wk_llama_embed(m, in))) && !wk_eval(1, &xs[0]) ? WK_OK : WK_ERR_STATE;
  for (int64_t l = 0; !s && l < L; l++) {
    wk_scope_begin();
    xs[l + 1] = wk_keep(wk_llama_block(m, l, xs[l], 0));
    wk_scope_end();
    s = xs[l + 1] && !wk_eval(1, &xs[l + 1]) ? WK_OK : WK_ERR_STATE;   // explicit: a plain leaf
  }
  // the head: loss and d loss / d x_L
  wk_tensor *g = NULL;
  if (!s) {
    wk_set_trainable(xs[L], 1);
    wk_scope_begin();
    wk_tensor *l = head_loss(m, xs[L], &c, tg);
    s = wk_value_and_grad(l, 1, &xs[L], &g, loss);
    wk_keep(g);
    wk_scope_end();
    wk_set_trainable(xs[L], 0);
  }
  // each block again, from its input, with the incoming gradient as the seed
  for (int64_t l = L - 1; !s && l >= 0; l--) {
    int k = layer_params(m, l, n, params, idx), first = l > 0;
    if (first) targets[0] = xs[l];
    for (int j = 0; j < k; j++) targets[first + j] = params[idx[j]];
    if (!k && !first) break;
    wk_set_trainable(xs[l], first);
    wk_scope_begin();
    wk_tensor *y = wk_llama_block(m, l, xs[l], 0);
    wk_tensor *seed = wk_sum(wk_mul(y, wk_stop_gradient(g)), 0, NULL, 0);
    float unused;
    s = wk_value_and_grad(seed, first + k, targets, gs, &unused);
    for (int j = 0; !s && j < first + k; j++) wk_keep(gs[j]);
    wk_scope_end();
    wk_set_trainable(xs[l], 0);
    if (s) break;
    for (int j = 0; j < k; j++) grads[idx[j]] = gs[first + j];
    wk_tensor_free(g);
    g = first ? gs[0] : NULL;
  }
  wk_tensor_free(g);
  for (int i = 0; !s && i < n; i++)   // a tensor no layer reads gets a zero gradient
    if (!grads[i]) grads[i] = wk_keep(wk_zeros(wk_ndim(params[i]), wk_shape(params[i]), WK_F32));
  wk_scope_end();
  for (int64_t l = 0; xs && l <= L; l++) wk_tensor_free(xs[l]);
  for (int i = 0; i < n; i++) {   // like wk_value_and_grad's: the caller's scope owns them
    if (s) wk_tensor_free(grads[i]), grads[i] = NULL;
    else wk_node_finish(grads[i]);
  }
  free(xs);
  free(targets);
  free(gs);
  free(idx);
  return s;
}
