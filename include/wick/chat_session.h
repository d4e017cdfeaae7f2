// wick chat sessions: a conversation with a model that keeps its KV cache between
// turns, so that each turn prefills only the tokens the conversation gained.
//
//   wk_chat_template *tpl = wk_chat_template_from_tokenizer(tok, 0);
//   wk_chat_session *s = wk_chat_session_new(m, tok, tpl, NULL);   // the template's system prompt
//   wk_generate_params p = wk_generate_defaults();
//   wk_generate_result r;
//   wk_chat_session_say(s, "Name a colour.", &p, on_token, NULL, &r);   // streams the reply
//   wk_chat_session_say(s, "Another one?", &p, on_token, NULL, &r);
//   // r.cached_tokens: the first turn and its reply, reused; r.prompt_tokens: the new ones
//   wk_chat_session_free(s);
//
// Each turn renders the whole conversation with the template, tokenizes it, and keeps
// the cache for the longest prefix it shares with the tokens the cache holds (normally
// all of them: only the reply's end-of-turn and the new user turn are prefilled). The
// tokens generated therefore equal wk_generate's on the rendered conversation. A reply
// ends at the template's end-of-turn text or the model's EOS; its text (as streamed)
// becomes the assistant message.
#pragma once
#include "wick/chat.h"
#include "wick/generate.h"

typedef struct wk_chat_session wk_chat_session;

// m, tok and tpl are borrowed: they must outlive the session. system: the system
// prompt (copied); NULL leaves the template's default. NULL on failure.
wk_chat_session *wk_chat_session_new(wk_model *m, const wk_tokenizer *tok, const wk_chat_template *tpl,
                                     const char *system);
void wk_chat_session_free(wk_chat_session *s);   // NULL is fine
// Forgets the conversation and empties the cache (the system prompt stays).
void wk_chat_session_reset(wk_chat_session *s);
// Adds the user's text, generates the reply (each token to cb, as wk_generate does;
// params' stop strings are kept and the end-of-turn text added) and adds it. On failure
// (e.g. the conversation no longer fits the context: the message says so) the user's
// text is dropped and the conversation is as before.
wk_status wk_chat_session_say(wk_chat_session *s, const char *user_text, const wk_generate_params *params,
                              wk_gen_callback cb, void *user, wk_generate_result *result);
// The messages so far (system prompt first when one was given), owned by s.
const wk_chat_message *wk_chat_session_messages(const wk_chat_session *s, size_t *n);
