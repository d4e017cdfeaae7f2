// wick chat templates: a conversation rendered into the prompt text a chat model was
// trained on, equal to transformers' tokenizer.apply_chat_template(messages,
// tokenize=False, add_generation_prompt=...).
//
//   wk_chat_template *t = wk_chat_template_from_tokenizer(tok, 0);   // the model's own
//   if (!t) { puts(wk_last_error()); return 1; }   // it has none, or not a known one
//   wk_chat_message msgs[] = {{"user", "Hi!"}, {"assistant", "Hello."}, {"user", "2+2?"}};
//   wk_chat_span spans[3];
//   char *text; size_t len;
//   if (wk_chat_apply(t, msgs, 3, true, &text, &len, spans) == WK_OK) {
//     // "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n"
//     // "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
//     // "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
//     // text[spans[1].content_start .. spans[1].eot_end) == "Hello.<|im_end|>":
//     // what a trainer puts the loss on for an assistant turn
//     free(text);
//   }
//   wk_chat_template_free(t);
//
// Templates are Jinja programs; wick does not run Jinja. It recognizes the ChatML family
// (SmolLM2, Qwen2: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message) from the
// template's text, whatever its quoting, whitespace control or subscript style, and
// takes the default system prompt the template injects when the conversation does not
// start with a system message. Any other template is refused with an error naming it;
// WK_CHAT_FALLBACK_CHATML renders plain ChatML (no default system prompt) instead.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include "wick/base.h"
#include "wick/tokenizer.h"

typedef struct {
  const char *role;      // "system", "user", "assistant" (any role is rendered as given)
  const char *content;   // UTF-8, NUL-terminated
} wk_chat_message;

// Byte offsets into the rendered text for one message. [turn_start, turn_end) is the
// whole turn ("<|im_start|>user\n...<|im_end|>\n"); [content_start, content_end) its
// content; [content_start, eot_end) the content and its end-of-turn marker.
typedef struct {
  size_t turn_start, content_start, content_end, eot_end, turn_end;
} wk_chat_span;

typedef struct wk_chat_template wk_chat_template;

enum { WK_CHAT_FALLBACK_CHATML = 1 };   // flags

// Recognizes a template's text. `source` names it in errors (a file); flags as above
// (with the fallback, NULL text is accepted too). NULL with wk_last_error() on an
// unrecognized template (the message quotes its start) unless the fallback is asked.
wk_chat_template *wk_chat_template_parse(const char *text, const char *source, int flags);
// The template of a loaded tokenizer (wk_tokenizer_chat_template); a tokenizer without
// one is an error naming its file unless the fallback is asked.
wk_chat_template *wk_chat_template_from_tokenizer(const wk_tokenizer *tok, int flags);
// Plain ChatML with an optional default system prompt (NULL: none). Copied.
wk_chat_template *wk_chat_template_chatml(const char *default_system);
void wk_chat_template_free(wk_chat_template *t);   // NULL is fine

// "chatml", or "chatml (fallback)" when the fallback replaced the model's template.
const char *wk_chat_template_name(const wk_chat_template *t);
// The system prompt injected when messages[0] is not a system message; NULL for none.
const char *wk_chat_template_default_system(const wk_chat_template *t);
// The text that ends a turn ("<|im_end|>"): a chat loop stops generating at it.
const char *wk_chat_template_end_of_turn(const wk_chat_template *t);

// Renders messages[0..n) into *text (malloc'd, NUL-terminated, caller frees; *len
// bytes). add_generation_prompt appends the opening of an assistant turn. spans (NULL,
// or n entries) receives each message's offsets. A NULL role or content is an error
// naming the message.
wk_status wk_chat_apply(const wk_chat_template *t, const wk_chat_message *messages, size_t n,
                        bool add_generation_prompt, char **text, size_t *len, wk_chat_span *spans);
