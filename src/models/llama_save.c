// Writes a decoder as a Hugging Face model directory (config.json + model.safetensors,
// HF tensor names and row order), every weight in one float dtype: how a merged
// adapter leaves wick for transformers, peft users and converters.
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "models/llama.h"
#include "wick/io.h"
#include "wick/ops.h"

typedef struct {
  int n, cap;
  char **names;
  wk_tensor **ts;
} tensor_list;

// Adds w (cast to dt; quantized blocks dequantized; q/k rows in HF order) as `name`.
static int add(tensor_list *l, const wk_model *m, const char *name, wk_tensor *w, wk_proj rows_of, wk_dtype dt) {
  if (!w) return 1;
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 64;
    char **nn = realloc(l->names, sizeof *nn * (size_t)cap);
    if (nn) l->names = nn;
    wk_tensor **nt = nn ? realloc(l->ts, sizeof *nt * (size_t)cap) : NULL;
    if (nt) l->ts = nt;
    if (!nn || !nt) return 0;
    l->cap = cap;
  }
  // t: scoped or w itself; r: an owned reference to what is written
  wk_scope_begin();
  wk_tensor *t = wk_tensor_dtype(w) == dt ? w : wk_cast(wk_tensor_dtype(w) == WK_F32 ? w : wk_cast(w, WK_F32), dt);
  wk_tensor *r = NULL;
  if (t && rows_of != WK_PROJ_COUNT) {
    int vec = wk_ndim(t) == 1;   // a bias: its rows are permuted like the weight's
    r = wk_llama_rows_hf(m, rows_of, vec ? wk_reshape(t, 2, (int64_t[]){wk_dim(t, 0), 1}) : t, 1);
    if (r && vec) {
      wk_tensor *flat = wk_keep(wk_reshape(r, 1, (int64_t[]){wk_dim(r, 0)}));
      wk_tensor_free(r);
      r = flat;
    }
  } else if (t) r = t == w ? wk_tensor_ref(w) : wk_keep(t);
  wk_scope_end();
  wk_tensor *t_out = r;
  l->names[l->n] = strdup(name);
  l->ts[l->n] = t_out;
  l->n++;
  return t_out && l->names[l->n - 1];
}

static void write_config(wk_jbuf *b, const wk_model_config *c, wk_dtype dt) {
  int qwen = c->arch == WK_ARCH_QWEN2;
  wk_jbuf_printf(b, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
                 qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen ? "qwen2" : "llama");
  wk_jbuf_printf(b, "  \"vocab_size\": %lld,\n  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n"
                 "  \"num_hidden_layers\": %lld,\n  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n"
                 "  \"head_dim\": %lld,\n  \"max_position_embeddings\": %lld,\n",
                 (long long)c->vocab_size, (long long)c->hidden_size, (long long)c->intermediate_size,
                 (long long)c->num_hidden_layers, (long long)c->num_attention_heads,
                 (long long)c->num_key_value_heads, (long long)c->head_dim, (long long)c->max_position_embeddings);
  wk_jbuf_puts(b, "  \"rms_norm_eps\": ");
  wk_json_write_number(b, c->norm_eps);
  wk_jbuf_puts(b, ",\n  \"rope_theta\": ");
  wk_json_write_number(b, c->rope_theta);
  wk_jbuf_printf(b, ",\n  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": %s,\n",
                 c->tie_word_embeddings ? "true" : "false");
  if (!qwen)
    wk_jbuf_printf(b, "  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n", c->qkv_bias ? "true" : "false",
                   c->mlp_bias ? "true" : "false");
  if (c->bos_token_id >= 0) wk_jbuf_printf(b, "  \"bos_token_id\": %lld,\n", (long long)c->bos_token_id);
  if (c->n_eos == 1) wk_jbuf_printf(b, "  \"eos_token_id\": %lld,\n", (long long)c->eos_token_ids[0]);
  else if (c->n_eos > 1) {
    wk_jbuf_puts(b, "  \"eos_token_id\": [");
    for (int i = 0; i < c->n_eos; i++) wk_jbuf_printf(b, "%s%lld", i ? ", " : "", (long long)c->eos_token_ids[i]);
    wk_jbuf_puts(b, "],\n");
  }
  if (c->pad_token_id >= 0) wk_jbuf_printf(b, "  \"pad_token_id\": %lld,\n", (long long)c->pad_token_id);
  wk_jbuf_printf(b, "  \"torch_dtype\": \"%s\"\n}\n", dt == WK_F32 ? "float32" : dt == WK_F16 ? "float16" : "bfloat16");
}

wk_status wk_model_save(const wk_model *m, const char *dir, wk_dtype dt) {
  if (!m || !dir) return wk_error(WK_ERR_ARG, "model_save: model or directory is NULL");
  if (dt != WK_F32 && dt != WK_F16 && dt != WK_BF16)
    return wk_error(WK_ERR_DTYPE, "model_save: dtype %s is not f32, f16 or bf16", wk_dtype_name(dt));
  if (wk_mkdirs(dir)) return WK_ERR_IO;
  tensor_list l = {0};
  int ok = add(&l, m, "model.embed_tokens.weight", m->embed, WK_PROJ_COUNT, dt) &&
           add(&l, m, "model.norm.weight", m->norm, WK_PROJ_COUNT, dt);
  if (ok && !m->cfg.tie_word_embeddings) ok = add(&l, m, "lm_head.weight", m->lm_head, WK_PROJ_COUNT, dt);
  for (int64_t i = 0; ok && i < m->cfg.num_hidden_layers; i++) {
    const wk_llama_layer *L = &m->layers[i];
    char name[160];
    snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)i);
    ok = add(&l, m, name, L->attn_norm, WK_PROJ_COUNT, dt);
    snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight", (long long)i);
    ok = ok && add(&l, m, name, L->ffn_norm, WK_PROJ_COUNT, dt);
    const wk_tensor *bias[WK_PROJ_COUNT] = {L->bq, L->bk, L->bv, L->bo, L->b_gate, L->b_up, L->b_down};
    for (int p = 0; ok && p < WK_PROJ_COUNT; p++) {
      snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)i, wk_llama_hf_module((wk_proj)p));
      ok = add(&l, m, name, *wk_llama_proj_weight((wk_model *)m, i, (wk_proj)p), (wk_proj)p, dt);
      snprintf(name, sizeof name, "model.layers.%lld.%s.bias", (long long)i, wk_llama_hf_module((wk_proj)p));
      if (ok && bias[p]) ok = add(&l, m, name, (wk_tensor *)bias[p], (wk_proj)p, dt);
    }
  }
  wk_status s = ok ? WK_OK : wk_error(WK_ERR_STATE, "model_save %s: preparing the tensors failed: %s", dir, wk_last_error());
  char *path = wk_path_join(dir, "model.safetensors");
  if (!s) s = path ? wk_st_save(path, l.n, (const char *const *)l.names, l.ts, (const char *[]){"format", "pt", NULL})
                   : WK_ERR_OOM;
  free(path);
  for (int i = 0; i < l.n; i++) {
    wk_tensor_free(l.ts[i]);
    free(l.names[i]);
  }
  free(l.names);
  free(l.ts);
  if (s) return s;
  wk_jbuf b = {0};
  write_config(&b, &m->cfg, dt);
  path = wk_path_join(dir, "config.json");
  s = !path || b.failed ? wk_error(WK_ERR_OOM, "model_save: out of memory")
                        : wk_write_atomic(path, 1, (const void *[]){b.data}, (size_t[]){b.len});
  free(path);
  wk_jbuf_free(&b);
  return s;
}
