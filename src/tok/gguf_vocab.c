// Byte-level BPE tokenizer from a GGUF file's tokenizer.ggml.* metadata.
#include <stdlib.h>
#include "engine/engine.h"
#include "tok/tok.h"
#include "wick/gguf.h"

static const struct { const char *name; wk_pretok_kind kind; } PRE[] = {
  {"default", WK_PRETOK_GPT2}, {"gpt2", WK_PRETOK_GPT2}, {"gpt-2", WK_PRETOK_GPT2},
  {"llama-bpe", WK_PRETOK_LLAMA3}, {"llama3", WK_PRETOK_LLAMA3}, {"qwen2", WK_PRETOK_QWEN2},
  {"smollm", WK_PRETOK_SMOLLM}, {"starcoder", WK_PRETOK_SMOLLM}, {"refact", WK_PRETOK_SMOLLM},
};

// An optional special token id: any integer type, as the model loader reads it (a
// type the getter refuses was ignored, and an i32 bos silently went unused). Absent
// or not a token id (llama.cpp, too, ignores those): -1.
static wk_status token_id(const wk_gguf *f, const char *key, uint64_t nt, int32_t *id) {
  *id = -1;
  int64_t v;
  if (!wk_gguf_has_key(f, key)) return WK_OK;
  wk_status s = wk_gguf_get_int(f, key, &v);
  if (!s && v >= 0 && (uint64_t)v < nt) *id = (int32_t)v;
  return s;
}

wk_tokenizer *wk_tokenizer_from_gguf(const wk_gguf *f) {
  if (!f) { wk_error(WK_ERR_ARG, "wk_tokenizer_from_gguf: NULL file"); return NULL; }
  const char *path = wk_gguf_path(f), *model = NULL, *pre = "default";
  if (wk_gguf_get_str(f, "tokenizer.ggml.model", &model)) return NULL;
  if (strcmp(model, "gpt2")) {
    wk_error(WK_ERR_ARG, "%s: tokenizer.ggml.model '%s' is not supported (gpt2: byte-level BPE)",
             path, model);
    return NULL;
  }
  if (wk_gguf_has_key(f, "tokenizer.ggml.pre") && wk_gguf_get_str(f, "tokenizer.ggml.pre", &pre))
    return NULL;
  int kind = -1;
  for (size_t i = 0; i < sizeof PRE / sizeof PRE[0]; i++)
    if (!strcmp(pre, PRE[i].name)) kind = (int)PRE[i].kind;
  if (kind < 0) {
    wk_error(WK_ERR_ARG, "%s: tokenizer.ggml.pre '%s' is not a supported pre-tokenizer", path, pre);
    return NULL;
  }
  const wk_gguf_str *tk = NULL, *mg = NULL;
  uint64_t nt = 0, nm = 0;
  if (wk_gguf_get_str_array(f, "tokenizer.ggml.tokens", &tk, &nt)) return NULL;
  if (wk_gguf_has_key(f, "tokenizer.ggml.merges") &&
      wk_gguf_get_str_array(f, "tokenizer.ggml.merges", &mg, &nm))
    return NULL;
  if (nt > INT32_MAX || nm > INT32_MAX) {
    wk_error(WK_ERR_ARG, "%s: tokenizer arrays too long", path);
    return NULL;
  }
  // NUL-terminated copies in one block: GGUF strings are length-prefixed
  size_t bytes = 0;
  for (uint64_t i = 0; i < nt; i++) bytes += tk[i].len + 1;
  for (uint64_t i = 0; i < nm; i++) bytes += mg[i].len + 1;
  char *block = malloc(bytes ? bytes : 1);
  const char **ts = malloc((nt + 1) * sizeof *ts), **ms = malloc((nm + 1) * sizeof *ms);
  int32_t *types = NULL;
  wk_tokenizer *t = NULL;
  if (!block || !ts || !ms) {
    wk_error(WK_ERR_OOM, "%s: out of memory for the vocabulary", path);
    goto done;
  }
  char *p = block;
  for (uint64_t i = 0; i < nt + nm; i++) {
    const wk_gguf_str *s = i < nt ? &tk[i] : &mg[i - nt];
    if (memchr(s->ptr, 0, s->len)) {
      wk_error(WK_ERR_ARG, "%s: tokenizer.ggml.%s[%llu] holds a NUL byte", path,
               i < nt ? "tokens" : "merges", (unsigned long long)(i < nt ? i : i - nt));
      goto done;
    }
    memcpy(p, s->ptr, s->len);
    p[s->len] = 0;
    if (i < nt) ts[i] = p; else ms[i - nt] = p;
    p += s->len + 1;
  }
  if (wk_gguf_has_key(f, "tokenizer.ggml.token_type")) {
    types = malloc((nt ? nt : 1) * sizeof *types);
    if (!types) { wk_error(WK_ERR_OOM, "%s: out of memory", path); goto done; }
    if (wk_gguf_get_array_i32(f, "tokenizer.ggml.token_type", types, nt)) goto done;
  }
  t = wk_tokenizer_from_bpe(nt, ts, types, nm, ms, (wk_pretok_kind)kind);
  if (!t) goto done;
  free(t->source);
  t->source = wk_tok_strndup(path, strlen(path));
  int32_t b, e;
  int add_bos = 0, add_eos = 0;
  if (token_id(f, "tokenizer.ggml.bos_token_id", nt, &b) || token_id(f, "tokenizer.ggml.eos_token_id", nt, &e) ||
      (wk_gguf_has_key(f, "tokenizer.ggml.add_bos_token") &&
       wk_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos)) ||
      (wk_gguf_has_key(f, "tokenizer.ggml.add_eos_token") &&
       wk_gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &add_eos))) {
    wk_tokenizer_free(t);
    t = NULL;
    goto done;
  }
  // a template of another type is an error naming it: ignored, chat ran without one
  const char *tpl = NULL;
  if (wk_gguf_has_key(f, "tokenizer.chat_template")) {
    if (wk_gguf_get_str(f, "tokenizer.chat_template", &tpl)) {
      wk_tokenizer_free(t);
      t = NULL;
      goto done;
    }
    t->chat_template = wk_tok_strndup(tpl, strlen(tpl));
  }
  if (!t->source || (tpl && !t->chat_template) ||
      wk_tokenizer_set_special(t, b, e, add_bos && b >= 0, add_eos && e >= 0)) {
    if (!t->source || (tpl && !t->chat_template)) wk_error(WK_ERR_OOM, "%s: out of memory", path);
    wk_tokenizer_free(t);
    t = NULL;
  }
done:
  free(block);
  free(ts);
  free(ms);
  free(types);
  return t;
}
