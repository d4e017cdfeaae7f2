// A minimal GGUF (v3) writer: metadata of a few types and f32 / f16 tensors.
//
//   wk_gguf_writer *w = wk_gguf_writer_new();
//   wk_gguf_writer_str(w, "general.architecture", "llama");
//   wk_gguf_writer_tensor(w, "blk.0.attn_q.weight.lora_a", A, WK_F32);  // shape as in wick (rows last in ggml)
//   wk_gguf_writer_save(w, "adapter.gguf");                              // atomic
//   wk_gguf_writer_free(w);
#pragma once
#include <stdint.h>
#include "wick/tensor.h"

typedef struct wk_gguf_writer wk_gguf_writer;
wk_gguf_writer *wk_gguf_writer_new(void);
void wk_gguf_writer_free(wk_gguf_writer *w);
void wk_gguf_writer_str(wk_gguf_writer *w, const char *key, const char *value);
void wk_gguf_writer_u32(wk_gguf_writer *w, const char *key, uint32_t value);
void wk_gguf_writer_f32(wk_gguf_writer *w, const char *key, float value);
// Evaluates t converted to dt (f32 or f16) and keeps it until save.
wk_status wk_gguf_writer_tensor(wk_gguf_writer *w, const char *name, wk_tensor *t, wk_dtype dt);
// Header, tensor infos, data aligned to 32 bytes; temporary file, fsync, rename.
wk_status wk_gguf_writer_save(wk_gguf_writer *w, const char *path);
