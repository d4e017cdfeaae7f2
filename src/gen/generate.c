#define _POSIX_C_SOURCE 200809L
// Streaming generation: prefill through the KV cache, one-token decode steps,
// sampling, EOS / max tokens / context / stop strings / callback stops.
#include "wick/generate.h"
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "engine/engine.h"
#include "gen/kv_batch.h"
#include "models/llama.h"

wk_generate_params wk_generate_defaults(void) {
  wk_generate_params p;
  memset(&p, 0, sizeof p);
  p.sampler = wk_sampler_defaults();
  p.sampler.temperature = 0;
  p.max_tokens = 128;
  return p;
}

const char *wk_stop_reason_name(wk_stop_reason r) {
  switch (r) {
    case WK_STOP_EOS: return "eos";
    case WK_STOP_MAX_TOKENS: return "max_tokens";
    case WK_STOP_CONTEXT: return "context";
    case WK_STOP_STRING: return "stop_string";
    case WK_STOP_CALLBACK: return "callback";
    default: return "none";
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { char *p; size_t n, cap; } buf;
static int buf_add(buf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
  return 0;
}
static void buf_drop(buf *b, size_t n) {   // removes the first n bytes
  memmove(b->p, b->p + n, b->n - n);
  b->n -= n;
}

// Length of the prefix of s[0..n) that does not end inside an incomplete UTF-8
// sequence (invalid bytes count as complete: they are passed on as they are).
static size_t utf8_complete(const unsigned char *s, size_t n) {
  for (size_t back = 1; back <= 4 && back <= n; back++) {
    unsigned char c = s[n - back];
    if ((c & 0xC0) == 0x80) continue;   // continuation byte: look further back
    size_t need = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

static const char *find(const char *h, size_t hn, const char *nd, size_t nn) {
  if (!nn || nn > hn) return NULL;
  for (size_t i = 0; i + nn <= hn; i++)
    if (h[i] == nd[0] && !memcmp(h + i, nd, nn)) return h + i;
  return NULL;
}

// Longest suffix of s[0..n) that is a proper prefix of some stop string.
static size_t held_suffix(const char *s, size_t n, const wk_generate_params *p) {
  size_t best = 0;
  for (size_t k = 0; k < p->n_stop; k++) {
    size_t sl = strlen(p->stop[k]);
    for (size_t l = sl ? sl - 1 : 0; l > best; l--)
      if (l <= n && !memcmp(s + n - l, p->stop[k], l)) { best = l; break; }
  }
  return best;
}

// The k most probable ids of probs[0..V) into alt (prob > 0 only; ties: lower id
// first), by insertion: k is small. Returns how many.
static int32_t top_k_alts(const wk_tokenizer *tok, const float *probs, int64_t V, int32_t k, wk_gen_alt *alt) {
  int32_t n = 0;
  for (int64_t j = 0; j < V; j++) {   // .logprob holds the probability until the end
    float pj = probs[j];
    if (!(pj > 0) || (n == k && pj <= alt[n - 1].logprob)) continue;
    int32_t at = n < k ? n++ : k - 1;
    while (at > 0 && alt[at - 1].logprob < pj) { alt[at] = alt[at - 1]; at--; }
    alt[at] = (wk_gen_alt){(int32_t)j, "", 0, pj};
  }
  for (int32_t i = 0; i < n; i++) {
    alt[i].logprob = logf(alt[i].logprob);
    const char *b = tok ? wk_tokenizer_token_bytes(tok, alt[i].id, &alt[i].len) : NULL;
    alt[i].text = b ? b : "";
    if (!b) alt[i].len = 0;
  }
  return n;
}

static bool is_eos(const wk_model_config *cfg, int32_t eos_tok, int32_t id) {
  if (id == eos_tok && eos_tok >= 0) return true;
  for (int i = 0; i < cfg->n_eos; i++) if (cfg->eos_token_ids[i] == id) return true;
  return false;
}

// One sequence's decoding state.
typedef struct {
  wk_sampler *s;
  buf raw, pend;            // bytes not yet released: incomplete UTF-8, possible stop-string starts
  wk_generate_result res;
  int32_t next;             // the id it feeds at the next step
  bool done;
} seq_state;

// What the sequences of a batch share.
typedef struct {
  const wk_tokenizer *tok;
  const wk_model_config *cfg;
  const wk_generate_params *p;
  int32_t eos_tok;
  int64_t ctx, V;           // ctx: the context of each sequence (its own positions, not padding)
  wk_gen_callback cb;
  void *user;
  float *probs;             // top_logprobs: the distribution and the alternatives
  wk_gen_alt *alts;
} gen_shared;

// The text piece a sampled token releases (into q->pend; *emit bytes of it), and
// whether it completes a stop string.
static wk_status release_text(const gen_shared *g, seq_state *q, int32_t id, bool eos, bool last, size_t *emit) {
  if (!eos) {
    size_t bl = 0;
    const char *b = wk_tokenizer_token_bytes(g->tok, id, &bl);
    if (!b) return wk_error(WK_ERR_ARG, "generate: sampled id %d has no text", id);
    if (buf_add(&q->raw, b, bl)) return wk_error(WK_ERR_OOM, "generate: out of memory");
  }
  size_t ok = last ? q->raw.n : utf8_complete((const unsigned char *)q->raw.p, q->raw.n);
  if (buf_add(&q->pend, q->raw.p, ok)) return wk_error(WK_ERR_OOM, "generate: out of memory");
  buf_drop(&q->raw, ok);
  *emit = q->pend.n;
  const char *hit = NULL;
  for (size_t k = 0; k < g->p->n_stop; k++) {
    const char *h = find(q->pend.p, q->pend.n, g->p->stop[k], strlen(g->p->stop[k]));
    if (h && (!hit || h < hit)) hit = h;
  }
  if (hit) {
    *emit = (size_t)(hit - q->pend.p);
    q->res.stop = WK_STOP_STRING;
  } else if (!last) {
    *emit = q->pend.n - held_suffix(q->pend.p, q->pend.n, g->p);
  }
  return WK_OK;
}

// A row holding NaN or +inf comes from non-finite weights (or an overflow), not from a
// distribution: refused, where the sampler would drop a NaN and pick among the rest.
static wk_status check_row(const gen_shared *g, const seq_state *q, int32_t index, const float *row) {
  for (int64_t j = 0; j < g->V; j++)
    if (isnan(row[j]) || row[j] == INFINITY)
      return wk_error(WK_ERR_STATE, "generate: the logits for token %lld of sequence %d are %s at id %lld: the "
                      "model's weights (or its adapter's) hold non-finite values, or the file is corrupt",
                      (long long)q->res.generated_tokens, index, isnan(row[j]) ? "NaN" : "+inf", (long long)j);
  return WK_OK;
}

// Samples sequence `index`'s next token from its logits row and streams it; marks it
// done when it stops. held: the sequence's own positions in the cache.
// pre: the token already picked on the device (greedy_on_device), or NULL: sample row.
static wk_status seq_token(const gen_shared *g, seq_state *q, int32_t index, const float *row, const wk_sample *pre,
                           int64_t held) {
  const wk_generate_params *p = g->p;
  wk_sample smp;
  int32_t n_top = 0;
  wk_status st;
  if (row && (st = check_row(g, q, index, row))) return st;
  if (p->top_logprobs) {   // before sampling: the same state, and it draws no randomness
    if ((st = wk_sampler_probs(q->s, row, g->probs))) return st;
    n_top = top_k_alts(g->tok, g->probs, g->V, p->top_logprobs, g->alts);
  }
  if (pre) smp = *pre;
  else if ((st = wk_sampler_sample(q->s, row, &smp))) return st;
  q->res.generated_tokens++;
  wk_gen_token gt = {smp.id, "", 0, smp.prob, smp.logprob, q->res.generated_tokens - 1, g->alts, n_top, index};
  bool eos = !p->ignore_eos && is_eos(g->cfg, g->eos_tok, smp.id);
  bool full = g->ctx > 0 && held >= g->ctx && !(p->sliding_window && g->ctx > 1);   // a window of 1 can't slide
  bool last = eos || q->res.generated_tokens >= p->max_tokens || full;
  size_t emit = 0;
  if (g->tok) {
    if ((st = release_text(g, q, smp.id, eos, last, &emit))) return st;
    gt.text = q->pend.p;
    gt.len = emit;
  }
  if (g->cb && g->cb(&gt, g->user) && !q->res.stop) q->res.stop = WK_STOP_CALLBACK;
  if (g->tok) buf_drop(&q->pend, emit);
  if (eos) q->res.stop = WK_STOP_EOS;
  else if (!q->res.stop && q->res.generated_tokens >= p->max_tokens) q->res.stop = WK_STOP_MAX_TOKENS;
  else if (!q->res.stop && last) q->res.stop = WK_STOP_CONTEXT;
  q->done = q->res.stop != WK_STOP_NONE;
  q->next = smp.id;
  return q->done ? WK_OK : wk_sampler_accept(q->s, smp.id);
}

// Whether greedy picks can be made where the logits are: temperature 0 and no stage
// that moves the maximum or the distribution's normalizer (penalties, bias, top-k/p,
// min-p; those would change the logprob), no top_logprobs. Then each row needs only its
// maximum, argmax and sum of exp(logit - max): the sampler's own formulas, with the sum
// in f32 on the device instead of double (a logprob within ~1e-6 of the host's; the id
// is the same, the first maximum). WICK_DEVICE_SAMPLE=0 keeps the host path (to compare).
static bool greedy_on_device(const wk_generate_params *p) {
  static int env = -1;
  if (env < 0) {
    const char *e = getenv("WICK_DEVICE_SAMPLE");
    env = !(e && !strcmp(e, "0"));
  }
  const wk_sampler_params *s = &p->sampler;
  bool penalties = s->repeat_last_n != 0 &&
                   (s->repeat_penalty != 1.0f || s->presence_penalty != 0 || s->frequency_penalty != 0);
  return env && !(s->temperature > 0) && !p->top_logprobs && !s->n_bias && s->top_k <= 0 && s->top_p >= 1 &&
         s->min_p <= 0 && !penalties;
}

// The logits of one step: on the host, or (greedy_on_device) left on the device with
// each row's (max, sum of exp(logit - max), argmax) in top[B * 3] on the host (wk_top1).
// A row whose max or sum is not finite (NaN or infinite logits; the sampler has rules
// for those) falls back to the host logits, copied on demand.
typedef struct {
  wk_tensor *lg, *top;
  wk_tensor *next;       // the device's picks as i32 [B, 1] on the device: a step's input
  const float *host;     // lg's data on the host, once copied
  int64_t len, end;      // the cache's length before and after the step
} step_out;

static void step_free(step_out *o) {
  wk_tensor_free(o->lg);
  wk_tensor_free(o->top);
  wk_tensor_free(o->next);
  memset(o, 0, sizeof *o);
}

// Row i's logits on the host (copies the step's logits once); NULL on failure.
static const float *step_row(step_out *o, int64_t i, int64_t V) {
  if (!o->host) {
    if (wk_tensor_device(o->lg) != WK_CPU) {
      wk_tensor *h = wk_keep(wk_to_device(o->lg, WK_CPU));
      if (!h) return NULL;
      wk_tensor_free(o->lg);
      o->lg = h;
    }
    if (!(o->host = wk_tensor_data(o->lg))) return NULL;
  }
  return o->host + i * V;
}

// The device's pick for row i, when it has one (finite max and sum).
static bool step_pick(const step_out *o, int64_t i, int64_t V, wk_sample *smp) {
  if (!o->top) return false;
  const float *t = (const float *)wk_tensor_data(o->top) + 3 * i;
  if (!isfinite(t[0]) || !isfinite(t[1]) || !(t[1] >= 1.0f) || !(t[2] >= 0.0f && t[2] < (float)V))
    return false;   // the max's own term is 1
  double lp = -log((double)t[1]);   // the sampler's w[id] - max - log(sum), w[id] = max
  smp->id = (int32_t)t[2];
  smp->logprob = (float)lp;
  smp->prob = (float)exp(lp);
  return true;
}

// Builds the step that feeds ids [B, T] (i32, on the host or the device) through the
// cache and evaluates it: the last position's logits [B, 1, V] and, when greedy picks
// are made on the device, top and next from the same plan, submitted without waiting.
static wk_status step_submit(wk_model *m, wk_kv_cache *c, wk_tensor *ids, bool greedy, step_out *o) {
  memset(o, 0, sizeof *o);
  o->len = wk_kv_cache_len(c);
  if (!(o->lg = wk_llama_forward_step(m, ids, c))) return WK_ERR_STATE;
  o->end = wk_kv_cache_len(c);
  const int64_t B = wk_dim(o->lg, 0);
  if (wk_tensor_device(o->lg) != WK_CPU && greedy && wk_dim(o->lg, -1) <= (1 << 24)) {   // else the host samples
    wk_scope_begin();
    wk_tensor *top = wk_reshape(wk_top1(o->lg), 2, (int64_t[]){B, 3});
    o->top = wk_keep(wk_to_device(top, WK_CPU));
    o->next = wk_keep(wk_cast(wk_slice(top, 1, 2, 3, 1), WK_I32));   // [B, 1]
    wk_scope_end();
    if (!o->top || !o->next) {
      wk_kv_cache_truncate(c, o->len);
      step_free(o);
      return WK_ERR_STATE;
    }
  }
  // asynchronous only where a step can be fed ahead: elsewhere the host waits at once
  wk_tensor *ts[3] = {o->lg, o->top, o->next};
  wk_status st = o->top ? wk_eval_async(3, ts) : wk_eval(1, ts);
  if (st) {
    wk_kv_cache_truncate(c, o->len);
    step_free(o);
  }
  return st;
}

// step_submit from host ids [B, T].
static wk_status step_host(wk_model *m, wk_kv_cache *c, const int32_t *ids, int64_t B, int64_t T, bool greedy,
                           step_out *o) {
  memset(o, 0, sizeof *o);
  wk_tensor *t = wk_from_data(2, (int64_t[]){B, T}, WK_I32, ids);
  if (!t) return WK_ERR_STATE;
  wk_status st = step_submit(m, c, t, greedy, o);
  wk_tensor_free(t);
  return st;
}

// Waits until a submitted step's results can be read on the host.
static wk_status step_wait(step_out *o) {
  bool ok = o->top ? wk_tensor_data(o->top) != NULL : step_row(o, 0, 0) != NULL;
  return ok ? WK_OK : WK_ERR_STATE;
}

// Drops a step that was fed ahead (a sequence stopped, or the host sampled another id):
// once it has run, the cache forgets its position.
static void step_drop(wk_kv_cache *c, step_out *o) {
  wk_sync();   // its failure, if any, is moot
  wk_kv_cache_truncate(c, o->len);
  step_free(o);
}

static wk_status check_args(const wk_generate_params *p, const wk_tokenizer *tok, int64_t ctx, int64_t vocab, size_t B,
                            const int32_t *const *prompts, const size_t *n_prompts) {
  for (size_t b = 0; b < B; b++) {
    char which[96] = "the prompt";   // both numberings: the CLI's -p count and the array index
    if (B > 1) snprintf(which, sizeof which, "prompt %zu of %zu (prompts[%zu])", b + 1, B, b);
    if (!prompts[b] || !n_prompts[b])
      return wk_error(WK_ERR_ARG, "generate: %s is empty (0 tokens; want 1 to %lld)", which, (long long)ctx);
    if (ctx > 0 && (int64_t)n_prompts[b] > ctx)
      return wk_error(WK_ERR_ARG, "generate: %s has %zu tokens but the context holds %lld", which, n_prompts[b],
                      (long long)ctx);
    for (size_t i = 0; vocab > 0 && i < n_prompts[b]; i++)
      if (prompts[b][i] < 0 || prompts[b][i] >= vocab)
        return wk_error(WK_ERR_ARG, "generate: %s's token %zu is id %d, outside the model's vocabulary of %lld "
                        "(a tokenizer of another model?)", which, i, prompts[b][i], (long long)vocab);
  }
  if (p->max_tokens < 0) return wk_error(WK_ERR_ARG, "generate: max_tokens %d must be >= 0", p->max_tokens);
  if (p->top_logprobs < 0 || p->top_logprobs > WK_MAX_TOP_LOGPROBS)
    return wk_error(WK_ERR_ARG, "generate: top_logprobs %d outside [0, %d]", p->top_logprobs, WK_MAX_TOP_LOGPROBS);
  if (p->cache_dtype != WK_F32 && p->cache_dtype != WK_F16 && p->cache_dtype != WK_BF16 && p->cache_dtype != WK_Q8_0)
    return wk_error(WK_ERR_ARG, "generate: cache_dtype %d (%s) is not f32, f16, bf16 or q8_0", (int)p->cache_dtype,
                    wk_dtype_name(p->cache_dtype));
  for (size_t k = 0; k < p->n_stop; k++) {
    if (!p->stop || !p->stop[k]) return wk_error(WK_ERR_ARG, "generate: stop string %zu is NULL", k);
    if (!tok && p->stop[k][0]) return wk_error(WK_ERR_ARG, "generate: stop strings need a tokenizer");
  }
  return WK_OK;
}

// The prompts left-padded into one [B, T] block (T = the longest; the first `cached`
// ids of a single prompt are already in the cache), each row's padding in pad[b].
static int32_t *pack_prompts(size_t B, const int32_t *const *prompts, const size_t *n_prompts, int64_t cached,
                             int64_t *pad, int64_t *T) {
  size_t longest = 0;
  for (size_t b = 0; b < B; b++) if (n_prompts[b] > longest) longest = n_prompts[b];
  *T = (int64_t)longest - cached;
  int32_t *ids = malloc(B * (size_t)*T * sizeof *ids);
  if (!ids) return NULL;
  for (size_t b = 0; b < B; b++) {
    pad[b] = (int64_t)(longest - n_prompts[b]);
    for (int64_t t = 0; t < *T; t++)   // padding repeats the first id: any valid id does
      ids[(int64_t)b * *T + t] = t < pad[b] ? prompts[b][0] : prompts[b][t - pad[b] + cached];
  }
  return ids;
}

// The sequences still decoding: cache row i holds sequence live[i] (n of them).
typedef struct {
  int64_t *live, *rows, n;   // rows: scratch for the rows kept
  int32_t *next;             // the ids fed at the next step
} batch;

// After each sampling step: the sequences that stopped leave the batch, one whose own
// context is full forgets its oldest half (sliding_window, as one sequence alone
// would), and the positions no live row sees any more (padding, forgotten ones) are
// dropped: one move of the cache's rows, and the next steps compute only live rows.
static wk_status settle(const gen_shared *g, wk_kv_cache *c, const seq_state *q, batch *bt) {
  int64_t len = wk_kv_cache_len(c), kept = 0, drop = len, half = g->ctx / 2;
  for (int64_t i = 0; i < bt->n; i++) {
    if (q[bt->live[i]].done) continue;
    int64_t hidden = wk_kv_cache_row_hidden(c, i);
    if (g->p->sliding_window && half && len - hidden >= g->ctx) {
      wk_status st = wk_kv_cache_hide_front(c, i, half);
      if (st) return st;
      hidden += half;
    }
    bt->rows[kept] = i;
    bt->live[kept++] = bt->live[i];
    if (hidden < drop) drop = hidden;
  }
  bool changed = kept < bt->n || drop;
  bt->n = kept;
  return kept && changed ? wk_kv_cache_keep_rows(c, kept, bt->rows, drop) : WK_OK;
}

// Whether the step after o can be fed from o's device picks before the host has seen
// them: it is kept if every row's pick came from the device and no sequence stopped, so
// the batch must be one that settle() leaves alone then (no padding left to drop, no
// sliding window), and no row may be known to stop at this token (its last token, or its
// context full), nor the cache be full (building the step would fail before this
// step's picks were read).
// WICK_FEED_AHEAD=0 turns it off (to compare).
static bool feed_ahead(const gen_shared *g, const wk_kv_cache *c, const seq_state *q, const batch *bt,
                       const step_out *o) {
  static int on = -1;
  if (!wk_env_on("WICK_FEED_AHEAD", &on) || !o->next || g->p->sliding_window || o->end + 1 > wk_kv_cache_max_context(c)) return false;
  int64_t min_hidden = INT64_MAX;
  for (int64_t i = 0; i < bt->n; i++) {
    int64_t hidden = wk_kv_cache_row_hidden(c, i);
    if (hidden < min_hidden) min_hidden = hidden;
    if (q[bt->live[i]].res.generated_tokens + 1 >= g->p->max_tokens || (g->ctx > 0 && o->end - hidden >= g->ctx))
      return false;
  }
  return min_hidden == 0;
}

// Prefills ids [B, T] (pad: each row's left padding), then samples and feeds back the
// live sequences' tokens until every one has stopped. *t1: when the first tokens were
// sampled (the end of prefill). With greedy picks on the device, each decode step is
// built and submitted while the one before it runs, its ids taken from that step's picks
// on the device (feed_ahead); the host reads the picks afterwards, and a step fed ahead
// is dropped when the host's view differs (a sequence stopped, or the host sampled).
static wk_status run_batch(wk_model *m, wk_kv_cache *c, const gen_shared *g, seq_state *q, batch *bt,
                           const int32_t *ids, const int64_t *pad, int64_t T, double *t1) {
  bool padded = false, greedy = greedy_on_device(g->p);
  for (int64_t b = 0; b < bt->n; b++) padded |= pad[b] > 0;
  wk_status st = padded ? wk_kv_cache_set_padding(c, bt->n, pad) : WK_OK;
  step_out o = {0}, ahead = {0};
  if (!st) st = step_host(m, c, ids, bt->n, T, greedy, &o);
  for (int64_t b = 0; b < bt->n; b++) bt->live[b] = b;
  while (!st && o.lg) {
    if (feed_ahead(g, c, q, bt, &o)) st = step_submit(m, c, o.next, greedy, &ahead);
    if (!st) st = step_wait(&o);
    if (st) {   // o's picks were not read: the cache forgets its positions too
      if (ahead.lg) step_drop(c, &ahead);
      wk_kv_cache_truncate(c, o.len);
      break;
    }
    bool keep = ahead.lg != NULL;
    for (int64_t i = 0; !st && i < bt->n; i++) {   // each counts its own positions against the context
      wk_sample pick;
      bool picked = step_pick(&o, i, g->V, &pick);
      const float *row = picked ? NULL : step_row(&o, i, g->V);
      if (!picked && !row) st = WK_ERR_STATE;
      else st = seq_token(g, &q[bt->live[i]], (int32_t)bt->live[i], row, picked ? &pick : NULL,
                          o.end - wk_kv_cache_row_hidden(c, i));
      keep &= picked && !q[bt->live[i]].done;
    }
    if (*t1 == 0.0) *t1 = now_s();   // the first token: prefill ends here
    step_free(&o);
    if (ahead.lg && (st || !keep)) step_drop(c, &ahead);
    if (st) break;
    if (ahead.lg) {   // settle() has nothing to do: no sequence stopped
      o = ahead;
      memset(&ahead, 0, sizeof ahead);
      continue;
    }
    if ((st = settle(g, c, q, bt)) || !bt->n) break;
    for (int64_t i = 0; i < bt->n; i++) bt->next[i] = q[bt->live[i]].next;
    st = step_host(m, c, bt->next, bt->n, 1, greedy, &o);
  }
  step_free(&o);
  return st;
}

// Generates after B prompts at once (B > 1: an empty cache, left padding); with B = 1
// the cache may hold the prompt's first wk_kv_cache_len(c) ids (cut back so that at
// least the last one is prefilled).
static wk_status generate(wk_model *m, const wk_tokenizer *tok, wk_kv_cache *c, size_t B,
                          const int32_t *const *prompts, const size_t *n_prompts, const wk_generate_params *params,
                          wk_gen_callback cb, void *user, wk_generate_result *results) {
  wk_generate_params p = params ? *params : wk_generate_defaults();
  for (size_t b = 0; results && b < B; b++) {
    memset(&results[b], 0, sizeof results[b]);
    results[b].prompt_tokens = (int64_t)n_prompts[b];
  }
  const wk_model_config *cfg = wk_model_get_config(m);
  if (p.max_context < 0) return wk_error(WK_ERR_ARG, "generate: max_context %lld must be >= 0", (long long)p.max_context);
  // the arguments against the context this call would give the cache, before it does:
  // a call that fails leaves the cache as it was
  int64_t ctx = wk_kv_cache_context_for(c, p.max_context);
  wk_status st = check_args(&p, tok, ctx, cfg->vocab_size, B, prompts, n_prompts);
  if (!st && !wk_kv_cache_len(c) && p.max_context) st = wk_kv_cache_set_max_context(c, p.max_context);
  if (st) return st;
  gen_shared g = {tok, cfg, &p, tok ? wk_tokenizer_eos(tok) : -1, wk_kv_cache_max_context(c), cfg->vocab_size,
                  cb, user, NULL, NULL};
  int64_t cached = wk_kv_cache_len(c);
  if (cached > (int64_t)n_prompts[0] || (B > 1 && cached))
    return wk_error(WK_ERR_ARG, "generate: the cache holds %lld tokens, more than the %zu of the prompt",
                    (long long)cached, n_prompts[0]);
  seq_state *q = calloc(B, sizeof *q);
  batch bt = {malloc(3 * B * sizeof *bt.live), NULL, (int64_t)B, malloc(B * sizeof *bt.next)};
  int32_t *ids = NULL;
  int64_t *pad = NULL;   // each prompt's left padding
  if (!q || !bt.live || !bt.next) { st = wk_error(WK_ERR_OOM, "generate: out of memory"); goto done; }
  bt.rows = bt.live + B;
  pad = bt.live + 2 * B;
  if (p.top_logprobs && (!(g.probs = malloc((size_t)g.V * sizeof *g.probs)) ||
                         !(g.alts = malloc((size_t)p.top_logprobs * sizeof *g.alts)))) {
    st = wk_error(WK_ERR_OOM, "generate: out of memory");
    goto done;
  }
  if (cached == (int64_t)n_prompts[0] && (st = wk_kv_cache_truncate(c, --cached))) goto done;
  if (!cached && (st = wk_kv_cache_set_dtype(c, p.cache_dtype))) goto done;
  for (size_t b = 0; b < B; b++) {
    if (!(q[b].s = wk_sampler_new(&p.sampler, g.V))) { st = WK_ERR_ARG; goto done; }
    q[b].res.cached_tokens = cached;
    q[b].res.prompt_tokens = (int64_t)n_prompts[b] - cached;
    for (size_t i = 0; i < n_prompts[b]; i++)   // also range-checks the ids
      if ((st = wk_sampler_accept(q[b].s, prompts[b][i]))) goto done;
    if (!p.max_tokens) q[b].res.stop = WK_STOP_MAX_TOKENS;
  }
  if (!p.max_tokens) goto done;
  int64_t T;
  if (!(ids = pack_prompts(B, prompts, n_prompts, cached, pad, &T))) { st = wk_error(WK_ERR_OOM, "generate: out of memory"); goto done; }
  double t0 = now_s(), t1 = 0;
  if ((st = run_batch(m, c, &g, q, &bt, ids, pad, T, &t1))) goto done;
  double t2 = now_s();
  for (size_t b = 0; b < B; b++) {
    q[b].res.prefill_s = t1 - t0;
    q[b].res.decode_s = t2 - t1;
  }
done:
  for (size_t b = 0; q && b < B; b++) {
    if (results) results[b] = q[b].res;
    free(q[b].raw.p);
    free(q[b].pend.p);
    wk_sampler_free(q[b].s);
  }
  free(q);
  free(ids);
  free(bt.live);
  free(bt.next);
  free(g.probs);
  free(g.alts);
  return st;
}

wk_status wk_generate(wk_model *m, const wk_tokenizer *tok, const int32_t *prompt, size_t n_prompt,
                      const wk_generate_params *params, wk_gen_callback cb, void *user,
                      wk_generate_result *result) {
  if (result) memset(result, 0, sizeof *result);
  if (!m) return wk_error(WK_ERR_ARG, "generate: model is NULL");
  wk_kv_cache *c = wk_kv_cache_new(m);
  if (!c) return WK_ERR_OOM;
  wk_status st = generate(m, tok, c, 1, &prompt, &n_prompt, params, cb, user, result);
  wk_kv_cache_free(c);
  return st;
}

wk_status wk_generate_cached(wk_model *m, const wk_tokenizer *tok, wk_kv_cache *cache, const int32_t *ids,
                             size_t n_ids, const wk_generate_params *params, wk_gen_callback cb, void *user,
                             wk_generate_result *result) {
  if (result) memset(result, 0, sizeof *result);
  if (!m || !cache) return wk_error(WK_ERR_ARG, "generate: model or cache is NULL");
  return generate(m, tok, cache, 1, &ids, &n_ids, params, cb, user, result);
}

wk_status wk_generate_batch(wk_model *m, const wk_tokenizer *tok, size_t n, const int32_t *const *prompts,
                            const size_t *n_prompts, const wk_generate_params *params, wk_gen_callback cb,
                            void *user, wk_generate_result *results) {
  if (!m || !n || !prompts || !n_prompts) return wk_error(WK_ERR_ARG, "generate: model or prompts NULL, or no prompts");
  wk_kv_cache *c = wk_kv_cache_new(m);
  if (!c) return WK_ERR_OOM;
  wk_status st = generate(m, tok, c, n, prompts, n_prompts, params, cb, user, results);
  wk_kv_cache_free(c);
  return st;
}
