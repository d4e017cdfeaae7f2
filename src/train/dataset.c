// JSONL training data: one example per line, tokenized at load, with labels that put
// the loss where the format says ({"text"}: everywhere; {"prompt","completion"}: the
// completion; {"messages"}: assistant turns; {"input_ids"[,"labels"]}: as given).
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "wick/chat.h"
#include "wick/train.h"

struct wk_dataset {
  wk_example *ex;
  int64_t n, cap;
  int64_t skipped;
  int64_t tokens;
};

// A growing pair of id / label arrays.
typedef struct {
  int32_t *ids, *labels;
  int64_t n, cap;
} seq;

static int seq_push(seq *s, const int32_t *ids, size_t n, bool counted) {
  if (s->n + (int64_t)n > s->cap) {
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < s->n + (int64_t)n) cap *= 2;
    int32_t *a = realloc(s->ids, sizeof *a * (size_t)cap);
    if (a) s->ids = a;
    int32_t *b = a ? realloc(s->labels, sizeof *b * (size_t)cap) : NULL;
    if (b) s->labels = b;
    if (!a || !b) return 0;
    s->cap = cap;
  }
  for (size_t i = 0; i < n; i++) {
    s->ids[s->n] = ids[i];
    s->labels[s->n++] = counted ? ids[i] : WK_IGNORE_INDEX;
  }
  return 1;
}

static int seq_text(seq *s, const wk_tokenizer *tok, const char *text, size_t len, bool special, bool counted) {
  int32_t *ids = NULL;
  size_t n = 0;
  if (len && wk_tokenizer_encode(tok, text, len, special, &ids, &n)) return 0;
  int ok = seq_push(s, ids, n, counted);
  free(ids);
  if (!ok) wk_error(WK_ERR_OOM, "dataset: out of memory");
  return ok;
}

static int seq_eos(seq *s, const wk_tokenizer *tok) {
  int32_t eos = wk_tokenizer_eos(tok);
  return eos < 0 || seq_push(s, &eos, 1, true);
}

// {"messages": [{"role", "content"}, ...]}: the template's text, with the loss on each
// assistant turn's content and end-of-turn marker.
static int from_messages(seq *s, const wk_tokenizer *tok, const wk_chat_template *t, const wk_json *msgs) {
  size_t n = wk_json_len(msgs);
  if (!n) { wk_error(WK_ERR_ARG, "\"messages\" is empty"); return 0; }
  wk_chat_message *m = calloc(n, sizeof *m);
  wk_chat_span *sp = calloc(n, sizeof *sp);
  char *text = NULL;
  size_t len = 0;
  int ok = m && sp;
  for (size_t i = 0; ok && i < n; i++) {
    const wk_json *msg = wk_json_at(msgs, i);
    const wk_json *role = wk_json_get(msg, "role"), *content = wk_json_get(msg, "content");
    m[i].role = wk_json_str(role, NULL);
    m[i].content = wk_json_str(content, NULL);
    if (!m[i].role || !m[i].content) {
      wk_error(WK_ERR_ARG, "message %zu needs string \"role\" and \"content\"", i);
      ok = 0;
    } else if (strlen(m[i].role) != role->n || strlen(m[i].content) != content->n) {
      // the template reads C strings: the text after a \u0000 would vanish unseen
      wk_error(WK_ERR_ARG, "message %zu: \"%s\" contains a NUL character (\\u0000)", i,
               strlen(m[i].role) != role->n ? "role" : "content");
      ok = 0;
    }
  }
  ok = ok && !wk_chat_apply(t, m, n, false, &text, &len, sp);
  size_t at = 0;
  for (size_t i = 0; ok && i < n; i++) {
    if (strcmp(m[i].role, "assistant")) continue;
    ok = seq_text(s, tok, text + at, sp[i].content_start - at, at == 0, false) &&
         seq_text(s, tok, text + sp[i].content_start, sp[i].eot_end - sp[i].content_start, false, true);
    at = sp[i].eot_end;
  }
  if (ok) ok = seq_text(s, tok, text + at, len - at, at == 0, false);
  free(text);
  free(m);
  free(sp);
  return ok;
}

static int from_ids(seq *s, const wk_json *line, int64_t vocab) {
  const wk_json *ids = wk_json_get(line, "input_ids"), *labels = wk_json_get(line, "labels");
  size_t n = wk_json_len(ids);
  if (!wk_json_is(ids, WK_JSON_ARRAY) || !n) { wk_error(WK_ERR_ARG, "\"input_ids\" must be a non-empty array"); return 0; }
  if (labels && (!wk_json_is(labels, WK_JSON_ARRAY) || wk_json_len(labels) != n)) {
    wk_error(WK_ERR_ARG, "\"labels\" must be an array as long as \"input_ids\" (%zu)", n);
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    const wk_json *v = wk_json_at(ids, i), *l = labels ? wk_json_at(labels, i) : v;
    if (!v->is_int || v->i < 0 || v->i >= vocab) {
      wk_error(WK_ERR_ARG, "input_ids[%zu] is not a token id in [0, %lld)", i, (long long)vocab);
      return 0;
    }
    if (!l->is_int || (l->i != WK_IGNORE_INDEX && (l->i < 0 || l->i >= vocab))) {
      wk_error(WK_ERR_ARG, "labels[%zu] is neither a token id nor %d", i, WK_IGNORE_INDEX);
      return 0;
    }
    int32_t id = (int32_t)v->i;
    if (!seq_push(s, &id, 1, true)) { wk_error(WK_ERR_OOM, "dataset: out of memory"); return 0; }
    s->labels[s->n - 1] = (int32_t)l->i;
  }
  return 1;
}

// A text line ({"text"}, {"prompt", "completion"} or {"messages"}) through the tokenizer.
static int from_text(seq *s, const wk_json *line, const wk_tokenizer *tok, const wk_chat_template **chat) {
  const wk_json *text = wk_json_get(line, "text"), *prompt = wk_json_get(line, "prompt"),
                *completion = wk_json_get(line, "completion"), *msgs = wk_json_get(line, "messages");
  if (wk_json_is(text, WK_JSON_STRING)) return seq_text(s, tok, text->s, text->n, true, true) && seq_eos(s, tok);
  if (wk_json_is(prompt, WK_JSON_STRING) && wk_json_is(completion, WK_JSON_STRING))
    return seq_text(s, tok, prompt->s, prompt->n, true, false) &&
           seq_text(s, tok, completion->s, completion->n, false, true) && seq_eos(s, tok);
  if (wk_json_is(msgs, WK_JSON_ARRAY)) {
    if (!*chat && !(*chat = wk_chat_template_from_tokenizer(tok, 0))) return 0;
    return from_messages(s, tok, *chat, msgs);
  }
  wk_error(WK_ERR_ARG, "expected {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\"} or {\"input_ids\"}");
  return 0;
}

// One parsed line into s; 0 with the error set.
static int parse_example(seq *s, const wk_json *line, const wk_tokenizer *tok, const wk_chat_template **chat,
                         int64_t vocab) {
  if (!wk_json_is(line, WK_JSON_OBJECT)) { wk_error(WK_ERR_ARG, "a line must be a JSON object"); return 0; }
  if (wk_json_get(line, "input_ids")) return from_ids(s, line, vocab);
  if (!tok) { wk_error(WK_ERR_ARG, "text examples need a tokenizer (only {\"input_ids\"} lines work without)"); return 0; }
  if (!from_text(s, line, tok, chat)) return 0;
  for (int64_t i = 0; vocab > 0 && i < s->n; i++)   // a tokenizer of another model
    if (s->ids[i] < 0 || s->ids[i] >= vocab) {
      wk_error(WK_ERR_ARG, "the tokenizer gave id %d at token %lld, outside the model's vocabulary of %lld", s->ids[i],
               (long long)i, (long long)vocab);
      return 0;
    }
  return 1;
}

static int add_example(wk_dataset *d, seq *s, int64_t max_len) {
  if (max_len > 0 && s->n > max_len) s->n = max_len;   // truncated on the right
  if (d->n == d->cap) {
    int64_t cap = d->cap ? 2 * d->cap : 64;
    wk_example *e = realloc(d->ex, sizeof *e * (size_t)cap);
    if (!e) return 0;
    d->ex = e, d->cap = cap;
  }
  d->ex[d->n++] = (wk_example){.ids = s->ids, .labels = s->labels, .n = s->n};
  d->tokens += s->n;
  *s = (seq){0};
  return 1;
}

// Examples whose labels count nowhere after the shift (nothing to learn) are skipped.
static int has_target(const seq *s, int64_t max_len) {
  int64_t n = max_len > 0 && s->n > max_len ? max_len : s->n;
  for (int64_t t = 1; t < n; t++)
    if (s->labels[t] != WK_IGNORE_INDEX) return 1;
  return 0;
}

static void warn(const wk_dataset_options *o, const char *fmt, ...) {
  if (!o || !o->warn) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  o->warn(msg, o->user);
}

wk_dataset *wk_dataset_load(const char *path, const wk_tokenizer *tok, int64_t vocab, const wk_dataset_options *o) {
  size_t len;
  char *text = path ? wk_read_file(path, (size_t)1 << 34, &len) : NULL;
  if (!text) { if (!path) wk_error(WK_ERR_ARG, "dataset: path is NULL"); return NULL; }
  wk_dataset *d = calloc(1, sizeof *d);
  const wk_chat_template *chat = o ? o->chat : NULL;
  const wk_chat_template *own = chat;
  int64_t max_len = o ? o->max_len : 0;
  bool strict = o && o->strict;
  if (max_len < 0 || vocab < 1) {
    free(text);
    free(d);
    if (vocab < 1)
      wk_error(WK_ERR_ARG, "dataset %s: vocab %lld must be >= 1 (the model's vocabulary size)", path, (long long)vocab);
    else wk_error(WK_ERR_ARG, "dataset %s: max_len %lld must be >= 0 (0: no limit)", path, (long long)max_len);
    return NULL;
  }
  wk_status st = d ? WK_OK : wk_error(WK_ERR_OOM, "dataset %s: out of memory", path);
  size_t lineno = 0;
  char first[960] = "";   // why the first line was skipped: the error if none is left
  for (char *p = text, *end = text + len; !st && p < end;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
    lineno++;
    char *line = p;
    p += n + 1;
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
    if (!n) continue;   // blank lines are allowed
    char where[64];
    snprintf(where, sizeof where, "line %zu", lineno);
    wk_json *j = wk_json_parse(line, n, where, NULL);
    seq s = {0};
    int ok = j && parse_example(&s, j, tok, &own, vocab);
    wk_json_free(j);
    if (ok && !has_target(&s, max_len)) {
      ok = 0;
      wk_error(WK_ERR_ARG, "no token to learn (every label is masked%s)", max_len > 0 ? " or truncated away" : "");
    }
    if (ok && !add_example(d, &s, max_len)) st = wk_error(WK_ERR_OOM, "dataset %s: out of memory", path);
    if (!ok) {
      free(s.ids);
      free(s.labels);
      char why[900];
      snprintf(why, sizeof why, "%s", wk_last_error());
      if (strict) st = wk_error(WK_ERR_ARG, "%s:%zu: %s", path, lineno, why);
      else {
        if (!d->skipped) snprintf(first, sizeof first, "line %zu: %s", lineno, why);
        d->skipped++;
        warn(o, "%s:%zu: skipped: %s", path, lineno, why);
      }
    }
  }
  if (own != chat) wk_chat_template_free((wk_chat_template *)own);
  free(text);
  if (!st && d->n == 0 && !d->skipped) st = wk_error(WK_ERR_ARG, "dataset %s: no examples (the file is empty or blank)", path);
  else if (!st && d->n == 0)
    st = wk_error(WK_ERR_ARG, "dataset %s: no usable examples (%lld lines skipped; the first, %s)", path,
                  (long long)d->skipped, first);
  if (st) { wk_dataset_free(d); return NULL; }
  return d;
}

void wk_dataset_free(wk_dataset *d) {
  if (!d) return;
  for (int64_t i = 0; i < d->n; i++) {
    free(d->ex[i].ids);
    free(d->ex[i].labels);
  }
  free(d->ex);
  free(d);
}

int64_t wk_dataset_size(const wk_dataset *d) { return d ? d->n : 0; }
int64_t wk_dataset_skipped(const wk_dataset *d) { return d ? d->skipped : 0; }
int64_t wk_dataset_tokens(const wk_dataset *d) { return d ? d->tokens : 0; }
const wk_example *wk_dataset_get(const wk_dataset *d, int64_t i) { return d && i >= 0 && i < d->n ? &d->ex[i] : NULL; }

// A packed sequence with nothing to learn (a chunk inside a long system prompt, say) is
// dropped, as an unpacked example would be: a batch of only such chunks has no token
// to average the loss over (0 / 0).
static int add_packed(wk_dataset *p, seq *s) {
  if (has_target(s, 0)) return add_example(p, s, 0);
  p->skipped++;
  s->n = 0;   // (its buffers are reused for the next sequence)
  return 1;
}

wk_dataset *wk_dataset_pack(const wk_dataset *d, int64_t seq_len) {
  if (!d) { wk_error(WK_ERR_ARG, "dataset_pack: the dataset is NULL"); return NULL; }
  if (seq_len < 2) { wk_error(WK_ERR_ARG, "dataset_pack: seq_len %lld must be >= 2", (long long)seq_len); return NULL; }
  wk_dataset *p = calloc(1, sizeof *p);
  seq s = {0};
  int ok = p != NULL;
  for (int64_t i = 0; ok && i < d->n; i++) {
    const wk_example *e = &d->ex[i];
    for (int64_t at = 0; ok && at < e->n;) {
      int64_t take = seq_len - s.n < e->n - at ? seq_len - s.n : e->n - at;
      ok = seq_push(&s, e->ids + at, (size_t)take, true);
      if (ok) memcpy(s.labels + s.n - take, e->labels + at, sizeof *s.labels * (size_t)take);
      at += take;
      if (ok && s.n == seq_len) ok = add_packed(p, &s);
    }
  }
  if (ok && s.n >= 2) ok = add_packed(p, &s);
  free(s.ids);
  free(s.labels);
  if (!ok) { wk_dataset_free(p); wk_error(WK_ERR_OOM, "dataset_pack: out of memory"); return NULL; }
  if (!p->n) {
    wk_dataset_free(p);
    wk_error(WK_ERR_ARG, "dataset_pack: no sequence of %lld tokens has a token to learn (every label in it is masked)",
             (long long)seq_len);
    return NULL;
  }
  p->skipped += d->skipped;   // the lines skipped at load, then the sequences dropped here
  return p;
}
