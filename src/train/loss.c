// The causal language-model loss: position t predicts token t + 1.
#include "engine/engine.h"
#include "wick/model.h"
#include "wick/ops.h"
#include "wick/train.h"

wk_tensor *wk_causal_lm_loss(wk_model *m, wk_tensor *ids, wk_tensor *labels) {
  if (!ids || !labels || wk_ndim(ids) != 2 || wk_ndim(labels) != 2 || wk_dim(ids, 0) != wk_dim(labels, 0) ||
      wk_dim(ids, 1) != wk_dim(labels, 1) || wk_dim(ids, 1) < 2 || wk_tensor_dtype(labels) != WK_I32) {
    char a[160], b[160];
    wk_error(WK_ERR_SHAPE, "causal_lm_loss: ids %s and labels %s must both be i32 [B, T] with T >= 2",
             ids ? wk_shape_str(ids, a, sizeof a) : "NULL", labels ? wk_shape_str(labels, b, sizeof b) : "NULL");
    return NULL;
  }
  int64_t T = wk_dim(ids, 1);
  wk_scope_begin();
  // the last position predicts nothing, so it is left out of the forward pass
  wk_tensor *logits = wk_model_forward(m, wk_slice(ids, 1, 0, T - 1, 1), 0);
  wk_tensor *targets = wk_contiguous(wk_slice(labels, 1, 1, T, 1));
  wk_tensor *loss = wk_keep(wk_cross_entropy(logits, targets, WK_IGNORE_INDEX, 1));
  wk_scope_end();
  return loss ? wk_node_finish(loss) : NULL;
}
