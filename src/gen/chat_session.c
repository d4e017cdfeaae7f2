// A conversation and its KV cache: each turn re-renders the conversation, keeps the
// cache for the prefix its tokens share with the new rendering, and generates.
#include "wick/chat_session.h"
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "gen/kv_batch.h"

struct wk_chat_session {
  wk_model *m;
  const wk_tokenizer *tok;
  const wk_chat_template *tpl;
  wk_kv_cache *cache;
  int32_t *cached;         // the tokens the cache holds (wk_kv_cache_len of them)
  size_t cached_cap;
  wk_chat_message *msgs;   // strings owned (malloc'd)
  size_t n_msgs, cap_msgs;
  size_t n_fixed;          // leading messages kept by reset (the system prompt)
};

static char *dup_str(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) { memcpy(d, s, n); d[n] = 0; }
  return d;
}

static wk_status push_msg(wk_chat_session *s, const char *role, const char *text, size_t len) {
  if (s->n_msgs == s->cap_msgs) {
    size_t cap = s->cap_msgs ? 2 * s->cap_msgs : 8;
    wk_chat_message *q = realloc(s->msgs, cap * sizeof *q);
    if (!q) return wk_error(WK_ERR_OOM, "chat: out of memory");
    s->msgs = q;
    s->cap_msgs = cap;
  }
  char *r = dup_str(role, strlen(role)), *c = dup_str(text, len);
  if (!r || !c) { free(r); free(c); return wk_error(WK_ERR_OOM, "chat: out of memory"); }
  s->msgs[s->n_msgs++] = (wk_chat_message){r, c};
  return WK_OK;
}

static void pop_msgs(wk_chat_session *s, size_t keep) {
  while (s->n_msgs > keep) {
    s->n_msgs--;
    free((char *)s->msgs[s->n_msgs].role);
    free((char *)s->msgs[s->n_msgs].content);
  }
}

wk_chat_session *wk_chat_session_new(wk_model *m, const wk_tokenizer *tok, const wk_chat_template *tpl,
                                     const char *system) {
  if (!m || !tok || !tpl) { wk_error(WK_ERR_ARG, "wk_chat_session_new: model, tokenizer or template is NULL"); return NULL; }
  wk_chat_session *s = calloc(1, sizeof *s);
  if (!s) { wk_error(WK_ERR_OOM, "chat: out of memory"); return NULL; }
  s->m = m;
  s->tok = tok;
  s->tpl = tpl;
  if (!(s->cache = wk_kv_cache_new(m)) || (system && push_msg(s, "system", system, strlen(system)))) {
    wk_chat_session_free(s);
    return NULL;
  }
  s->n_fixed = s->n_msgs;
  return s;
}

void wk_chat_session_free(wk_chat_session *s) {
  if (!s) return;
  pop_msgs(s, 0);
  free(s->msgs);
  free(s->cached);
  wk_kv_cache_free(s->cache);
  free(s);
}

void wk_chat_session_reset(wk_chat_session *s) {
  if (!s) return;
  pop_msgs(s, s->n_fixed);
  wk_kv_cache_reset(s->cache);
}

const wk_chat_message *wk_chat_session_messages(const wk_chat_session *s, size_t *n) {
  if (n) *n = s ? s->n_msgs : 0;
  return s ? s->msgs : NULL;
}

// Collects the reply's text and ids on the way to the user's callback.
typedef struct {
  wk_gen_callback cb;
  void *user;
  char *text;
  size_t len, cap;
  int32_t *ids;
  size_t n_ids, cap_ids;
  bool oom;
} reply;

static int on_token(const wk_gen_token *t, void *u) {
  reply *r = u;
  if (r->len + t->len + 1 > r->cap) {
    size_t cap = r->cap ? 2 * r->cap : 256;
    while (cap < r->len + t->len + 1) cap *= 2;
    char *q = realloc(r->text, cap);
    if (!q) { r->oom = true; return 1; }
    r->text = q;
    r->cap = cap;
  }
  memcpy(r->text + r->len, t->text, t->len);
  r->len += t->len;
  if (r->n_ids == r->cap_ids) {
    size_t cap = r->cap_ids ? 2 * r->cap_ids : 64;
    int32_t *q = realloc(r->ids, cap * sizeof *q);
    if (!q) { r->oom = true; return 1; }
    r->ids = q;
    r->cap_ids = cap;
  }
  r->ids[r->n_ids++] = t->id;
  return r->cb ? r->cb(t, r->user) : 0;
}

// The tokens of the conversation so far, with the generation prompt.
static wk_status render(const wk_chat_session *s, int32_t **ids, size_t *n) {
  char *text;
  size_t len;
  wk_status st = wk_chat_apply(s->tpl, s->msgs, s->n_msgs, true, &text, &len, NULL);
  if (st) return st;
  // the template writes its special tokens; none are added around it (as transformers)
  st = wk_tokenizer_encode(s->tok, text, len, false, ids, n);
  free(text);
  return st;
}

// Cuts the cache back to the prefix it shares with ids.
static wk_status reuse_prefix(wk_chat_session *s, const int32_t *ids, size_t n) {
  size_t held = (size_t)wk_kv_cache_len(s->cache), k = 0;
  while (k < held && k < n && s->cached[k] == ids[k]) k++;
  return wk_kv_cache_truncate(s->cache, (int64_t)k);
}

// Records what the cache holds after a turn: ids, then the reply's fed-back tokens.
static wk_status remember(wk_chat_session *s, const int32_t *ids, size_t n, const reply *r) {
  size_t held = (size_t)wk_kv_cache_len(s->cache);
  if (held > s->cached_cap) {
    int32_t *q = realloc(s->cached, held * sizeof *q);
    if (!q) return wk_error(WK_ERR_OOM, "chat: out of memory");
    s->cached = q;
    s->cached_cap = held;
  }
  for (size_t i = 0; i < held; i++) s->cached[i] = i < n ? ids[i] : r->ids[i - n];
  return WK_OK;
}

wk_status wk_chat_session_say(wk_chat_session *s, const char *user_text, const wk_generate_params *params,
                              wk_gen_callback cb, void *user, wk_generate_result *result) {
  if (!s || !user_text) return wk_error(WK_ERR_ARG, "wk_chat_session_say: session or text is NULL");
  size_t before = s->n_msgs;
  wk_generate_params p = params ? *params : wk_generate_defaults();
  // the session tracks the cache's tokens as a prefix of the conversation: no window
  if (p.sliding_window) return wk_error(WK_ERR_ARG, "chat: a sliding window is not supported; reset when the context is full");
  const char **stops = malloc((p.n_stop + 1) * sizeof *stops);
  if (!stops) return wk_error(WK_ERR_OOM, "chat: out of memory");
  for (size_t i = 0; i < p.n_stop; i++) stops[i] = p.stop[i];
  stops[p.n_stop] = wk_chat_template_end_of_turn(s->tpl);
  p.stop = stops;
  p.n_stop++;
  reply r = {.cb = cb, .user = user};
  int32_t *ids = NULL;
  size_t n = 0;
  wk_status st = push_msg(s, "user", user_text, strlen(user_text));
  if (!st) st = render(s, &ids, &n);
  int64_t ctx = wk_kv_cache_context_for(s->cache, p.max_context);   // what generating will give the cache
  if (!st && ctx > 0 && (int64_t)n >= ctx)
    st = wk_error(WK_ERR_ARG, "chat: the conversation is %zu tokens and the context holds %lld; "
                  "start over (reset) to go on", n, (long long)ctx);
  if (!st) st = reuse_prefix(s, ids, n);
  if (!st) st = wk_generate_cached(s->m, s->tok, s->cache, ids, n, &p, on_token, &r, result);
  if (!st && r.oom) st = wk_error(WK_ERR_OOM, "chat: out of memory");
  if (!st) st = push_msg(s, "assistant", r.text ? r.text : "", r.len);
  if (!st) st = remember(s, ids, n, &r);
  if (st) {   // the conversation as before; the cache no longer matches it
    pop_msgs(s, before);
    wk_kv_cache_reset(s->cache);
  }
  free(ids);
  free(r.text);
  free(r.ids);
  free(stops);
  return st;
}
