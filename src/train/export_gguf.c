// LoRA adapters as llama.cpp's GGUF adapter files (what convert_lora_to_gguf.py writes
// and `llama-cli --lora` loads): general.type "adapter", adapter.type "lora",
// adapter.lora.alpha, tensors blk.<l>.<name>.weight.lora_a / .lora_b with B rows in
// the GGUF base's order.
#include <math.h>
#include <stdio.h>
#include "engine/engine.h"
#include "io/gguf_write.h"
#include "train/adapter.h"

wk_status wk_adapter_export_gguf(const wk_adapter *a, const char *path, wk_dtype dt) {
  if (!a || !path) return wk_error(WK_ERR_ARG, "adapter_export_gguf: adapter or path is NULL");
  if (!*path) return wk_error(WK_ERR_ARG, "adapter_export_gguf: the path is empty");   // the save's error would name no file
  if (dt != WK_F32 && dt != WK_F16) return wk_error(WK_ERR_DTYPE, "adapter_export_gguf: dtype must be f32 or f16");
  const wk_model_config *c = wk_model_get_config(a->model);
  wk_gguf_writer *w = wk_gguf_writer_new();
  if (!w) return WK_ERR_OOM;
  wk_gguf_writer_str(w, "general.architecture", c->arch == WK_ARCH_QWEN2 ? "qwen2" : "llama");
  wk_gguf_writer_str(w, "general.type", "adapter");
  wk_gguf_writer_str(w, "general.name", "wick LoRA adapter");
  wk_gguf_writer_str(w, "adapter.type", "lora");
  // llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) becomes alpha * sqrt(r) / r
  float alpha = a->cfg.rslora ? a->cfg.alpha * sqrtf((float)a->cfg.rank) : a->cfg.alpha;
  wk_gguf_writer_f32(w, "adapter.lora.alpha", alpha);
  wk_status s = WK_OK;
  for (int64_t l = 0; !s && l < a->n_layers; l++)
    for (int p = 0; !s && p < WK_PROJ_COUNT; p++) {
      size_t i = (size_t)(l * WK_PROJ_COUNT + p);
      if (!a->hook.A[i]) continue;
      char name[128];
      snprintf(name, sizeof name, "blk.%lld.%s.weight.lora_a", (long long)l, wk_llama_gguf_proj_name((wk_proj)p));
      s = wk_gguf_writer_tensor(w, name, a->hook.A[i], dt);   // [r, in]: ggml ne {in, r}
      wk_tensor *b = s ? NULL : wk_llama_rows_gguf(a->model, (wk_proj)p, a->hook.B[i]);
      snprintf(name, sizeof name, "blk.%lld.%s.weight.lora_b", (long long)l, wk_llama_gguf_proj_name((wk_proj)p));
      if (!s) s = b ? wk_gguf_writer_tensor(w, name, b, dt) : WK_ERR_STATE;   // [out, r]: ne {r, out}
      wk_tensor_free(b);
    }
  if (!s) s = wk_gguf_writer_save(w, path);
  wk_gguf_writer_free(w);
  return s;
}
