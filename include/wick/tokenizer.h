// Tokenizers: byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen2 style) and WordPiece (BERT),
// loaded from a Hugging Face tokenizer.json or built from GGUF-style arrays. Ids equal
// those of HF `tokenizers` for the configurations below.
//
//   wk_tokenizer *tok = wk_tokenizer_load_json("models/x/tokenizer.json");
//   if (!tok) { puts(wk_last_error()); return 1; }
//   int32_t *ids; size_t n;
//   if (wk_tokenizer_encode(tok, "Hello world", 11, true, &ids, &n) == WK_OK) {
//     char *text; size_t len;
//     wk_tokenizer_decode(tok, ids, n, &text, &len);   // "Hello world"
//     free(text);
//     free(ids);
//   }
//   wk_tokenizer_free(tok);
//
// Supported tokenizer.json parts: models BPE (merges as "a b" strings or [a, b] pairs;
// byte_fallback, ignore_merges, unk_token, fuse_unk) and WordPiece; normalizers NFC and
// BertNormalizer (clean text, CJK padding, lowercase, accent stripping); pre-tokenizers
// ByteLevel (add_prefix_space, use_regex), Split with the GPT-2, Llama-3 or Qwen2 pattern
// (behavior Isolated), Digits, BertPreTokenizer and Sequences of them; post-processors
// TemplateProcessing (single), BertProcessing, RobertaProcessing, ByteLevel; decoders
// ByteLevel, ByteFallback, Fuse, WordPiece. Added tokens are matched first (leftmost-
// longest, honoring special, normalized, lstrip, rstrip, single_word). Anything else is
// refused at load with an error naming the file and the part.
//
// Text that is not valid UTF-8 is tokenized, not refused or rewritten: each invalid
// byte counts as one character that is neither letter, number nor space (U+FFFD's
// class) when text is split, and the NFC normalizer copies it unchanged. Byte-level
// and byte-fallback BPE have a token for every byte, so decode gives those bytes back:
// decode(encode(x)) == x for any x that normalization and add_prefix_space leave as is.
// (HF tokenizers never see such text; llama.cpp replaces each invalid byte by U+FFFD.)
// WordPiece has no byte tokens: an invalid byte reads as U+FFFD, which BertNormalizer
// removes, as HF does.
//
// Thread safety: a loaded tokenizer is read-only except for an internal cache guarded
// by a lock that is never waited on, so any number of threads may encode at once.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wick/base.h"

typedef struct wk_tokenizer wk_tokenizer;

// Pre-tokenizer split patterns (for wk_tokenizer_from_bpe; GGUF's tokenizer.ggml.pre).
typedef enum {
  WK_PRETOK_GPT2 = 0,  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  WK_PRETOK_LLAMA3,    // Llama-3: case-insensitive contractions, \p{N}{1,3}, newline runs
  WK_PRETOK_QWEN2,     // Llama-3's pattern with single digits (\p{N})
  WK_PRETOK_SMOLLM,    // each digit alone, then GPT-2 (SmolLM / StarCoder)
  WK_PRETOK_NONE,      // no split: the whole text is one pre-token
} wk_pretok_kind;

// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum { WK_TOKEN_NORMAL = 1, WK_TOKEN_UNKNOWN = 2, WK_TOKEN_CONTROL = 3,
       WK_TOKEN_USER_DEFINED = 4, WK_TOKEN_UNUSED = 5, WK_TOKEN_BYTE = 6 };

// Loads a HF tokenizer.json. bos/eos come from a tokenizer_config.json next to it when
// there is one, else bos from the post-processor's leading special token. NULL with
// wk_last_error() naming the file and the part at fault (a tokenizer_config.json or
// chat_template.jinja beside it that can't be read or parsed is such a fault).
wk_tokenizer *wk_tokenizer_load_json(const char *path);
// The same from text in memory; `source` names it in error messages.
wk_tokenizer *wk_tokenizer_from_json(const char *text, size_t len, const char *source);

// Byte-level BPE from arrays, as GGUF stores them: tokens[i] is token i in byte-level
// form ("Ġhello"), token_types[i] a WK_TOKEN_* (NULL: all normal; CONTROL and
// USER_DEFINED tokens are matched in text as special / added tokens), merges[r] the
// merge of rank r as "a b". Inputs are copied. NULL with wk_last_error() on bad input.
wk_tokenizer *wk_tokenizer_from_bpe(size_t n_tokens, const char *const *tokens,
                                    const int32_t *token_types, size_t n_merges,
                                    const char *const *merges, wk_pretok_kind pre);
// Byte-level BPE from a GGUF file's tokenizer.ggml.* keys (model "gpt2"; pre "default",
// "gpt2", "llama-bpe", "qwen2", "smollm", "starcoder"), with its bos / eos and
// add_bos_token, and tokenizer.chat_template (a key of another type than string is an
// error naming it). The tokenizer copies what it needs: f may be closed afterwards.
typedef struct wk_gguf wk_gguf;
wk_tokenizer *wk_tokenizer_from_gguf(const wk_gguf *f);
// Sets bos / eos (-1: none) and whether encode with add_special adds them.
wk_status wk_tokenizer_set_special(wk_tokenizer *tok, int32_t bos, int32_t eos, bool add_bos,
                                   bool add_eos);
void wk_tokenizer_free(wk_tokenizer *tok);

// Encodes text[0..len) (UTF-8) into *ids (malloc'd, caller frees; *n ids). add_special
// adds what the post-processor adds ([CLS] ... [SEP], a leading bos). Special tokens
// written in the text are always recognized.
wk_status wk_tokenizer_encode(const wk_tokenizer *tok, const char *text, size_t len,
                              bool add_special, int32_t **ids, size_t *n);
// Decodes ids into *text (malloc'd, NUL-terminated, caller frees; *len bytes), special
// tokens included, as HF's decode(ids, skip_special_tokens=False). An id outside the
// vocabulary is an error.
wk_status wk_tokenizer_decode(const wk_tokenizer *tok, const int32_t *ids, size_t n, char **text,
                              size_t *len);
// The raw bytes token id stands for (byte-level BPE: the decoded bytes, possibly an
// incomplete UTF-8 sequence; added tokens: their text; WordPiece: the token as in the
// vocabulary, "##" included). Owned by the tokenizer. NULL for an invalid id.
const char *wk_tokenizer_token_bytes(const wk_tokenizer *tok, int32_t id, size_t *len);
// Id of an added / special token by its text, else of a vocabulary entry written as in
// the vocabulary ("Ġhello"); -1 if there is none.
int32_t wk_tokenizer_token_id(const wk_tokenizer *tok, const char *token);
// Number of ids (highest id + 1).
size_t wk_tokenizer_vocab_size(const wk_tokenizer *tok);
bool wk_tokenizer_is_special(const wk_tokenizer *tok, int32_t id);
int32_t wk_tokenizer_bos(const wk_tokenizer *tok);   // -1 if unknown
int32_t wk_tokenizer_eos(const wk_tokenizer *tok);   // -1 if unknown
// The model's chat template (Jinja text) as its files give it: GGUF
// tokenizer.chat_template, or beside tokenizer.json a chat_template.jinja or
// tokenizer_config.json's chat_template. NULL when there is none. Owned by tok. See chat.h.
const char *wk_tokenizer_chat_template(const wk_tokenizer *tok);
// The file the tokenizer was loaded from (for messages). Owned by tok.
const char *wk_tokenizer_source(const wk_tokenizer *tok);
