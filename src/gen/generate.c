#define _POSIX_C_SOURCE 200809L
// Streaming generation: prefill through the KV cache, one-token decode steps,
// sampling, EOS / max tokens / context / stop strings / callback stops.
#include "wick/generate.h"
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include "engine/engine.h"

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

// Logits of the last position of a forward_cached call over ids[0..n).
static wk_tensor *step(wk_model *m, wk_kv_cache *c, const int32_t *ids, size_t n, const float **row, int64_t V) {
  wk_tensor *t = wk_from_data(2, (int64_t[]){1, (int64_t)n}, WK_I32, ids);
  if (!t) return NULL;
  wk_tensor *lg = wk_model_forward_cached(m, t, c);
  wk_tensor_free(t);
  if (!lg) return NULL;
  const float *d = wk_tensor_data(lg);
  if (!d) { wk_tensor_free(lg); return NULL; }
  *row = d + (int64_t)(n - 1) * V;
  return lg;
}

// Generates after prompt[0..n_prompt), of which the cache holds the first
// wk_kv_cache_len(c) (cut back so that at least the last id is prefilled).
static wk_status generate(wk_model *m, const wk_tokenizer *tok, wk_kv_cache *c, const int32_t *prompt,
                          size_t n_prompt, const wk_generate_params *params, wk_gen_callback cb, void *user,
                          wk_generate_result *result) {
  wk_generate_params p = params ? *params : wk_generate_defaults();
  wk_generate_result res;
  memset(&res, 0, sizeof res);
  res.prompt_tokens = (int64_t)n_prompt;
  if (result) *result = res;
  if (!m || !c) return wk_error(WK_ERR_ARG, "generate: model or cache is NULL");
  const wk_model_config *cfg = wk_model_get_config(m);
  int64_t ctx = cfg->max_position_embeddings, V = cfg->vocab_size;
  if (!prompt || !n_prompt) return wk_error(WK_ERR_ARG, "generate: the prompt is empty (0 tokens; want 1 to %lld)", (long long)ctx);
  if (ctx > 0 && (int64_t)n_prompt > ctx)
    return wk_error(WK_ERR_ARG, "generate: the prompt has %zu tokens but the context holds %lld", n_prompt, (long long)ctx);
  if (p.max_tokens < 0) return wk_error(WK_ERR_ARG, "generate: max_tokens %d must be >= 0", p.max_tokens);
  if (p.top_logprobs < 0 || p.top_logprobs > WK_MAX_TOP_LOGPROBS)
    return wk_error(WK_ERR_ARG, "generate: top_logprobs %d outside [0, %d]", p.top_logprobs, WK_MAX_TOP_LOGPROBS);
  for (size_t k = 0; k < p.n_stop; k++) {
    if (!p.stop || !p.stop[k]) return wk_error(WK_ERR_ARG, "generate: stop string %zu is NULL", k);
    if (!tok && p.stop[k][0]) return wk_error(WK_ERR_ARG, "generate: stop strings need a tokenizer");
  }
  int32_t eos_tok = tok ? wk_tokenizer_eos(tok) : -1;
  wk_sampler *s = wk_sampler_new(&p.sampler, V);
  if (!s) return WK_ERR_ARG;
  buf raw = {0}, pend = {0};
  wk_tensor *lg = NULL;
  wk_status st = WK_OK;
  float *probs = NULL;
  wk_gen_alt *alts = NULL;
  if (p.top_logprobs && (!(probs = malloc((size_t)V * sizeof *probs)) ||
                         !(alts = malloc((size_t)p.top_logprobs * sizeof *alts)))) {
    st = wk_error(WK_ERR_OOM, "generate: out of memory");
    goto done;
  }
  int64_t cached = wk_kv_cache_len(c);
  if (cached > (int64_t)n_prompt) {
    st = wk_error(WK_ERR_ARG, "generate: the cache holds %lld tokens, more than the %zu of the prompt",
                  (long long)cached, n_prompt);
    goto done;
  }
  if (cached == (int64_t)n_prompt && (st = wk_kv_cache_truncate(c, --cached))) goto done;
  res.cached_tokens = cached;
  res.prompt_tokens = (int64_t)n_prompt - cached;
  for (size_t i = 0; i < n_prompt; i++)
    if ((st = wk_sampler_accept(s, prompt[i]))) goto done;   // also range-checks the ids
  if (!p.max_tokens) { res.stop = WK_STOP_MAX_TOKENS; goto done; }

  double t0 = now_s(), t1 = t0;
  const float *row;
  if (!(lg = step(m, c, prompt + cached, n_prompt - (size_t)cached, &row, V))) { st = WK_ERR_STATE; goto done; }
  for (;;) {
    wk_sample smp;
    int32_t n_top = 0;
    if (p.top_logprobs) {   // before sampling: the same state, and it draws no randomness
      if ((st = wk_sampler_probs(s, row, probs))) goto done;
      n_top = top_k_alts(tok, probs, V, p.top_logprobs, alts);
    }
    if ((st = wk_sampler_sample(s, row, &smp))) goto done;
    wk_tensor_free(lg);
    lg = NULL;
    if (res.generated_tokens == 0) t1 = now_s();
    res.generated_tokens++;
    wk_gen_token gt = {smp.id, "", 0, smp.prob, smp.logprob, res.generated_tokens - 1, alts, n_top};
    bool eos = !p.ignore_eos && is_eos(cfg, eos_tok, smp.id);
    bool last = eos || res.generated_tokens >= p.max_tokens || (ctx > 0 && wk_kv_cache_len(c) >= ctx);
    size_t emit = 0;
    if (tok) {
      if (!eos) {
        size_t bl = 0;
        const char *b = wk_tokenizer_token_bytes(tok, smp.id, &bl);
        if (!b) { st = wk_error(WK_ERR_ARG, "generate: sampled id %d has no text", smp.id); goto done; }
        if (buf_add(&raw, b, bl)) { st = wk_error(WK_ERR_OOM, "generate: out of memory"); goto done; }
      }
      size_t ok = last ? raw.n : utf8_complete((const unsigned char *)raw.p, raw.n);
      if (buf_add(&pend, raw.p, ok)) { st = wk_error(WK_ERR_OOM, "generate: out of memory"); goto done; }
      buf_drop(&raw, ok);
      emit = pend.n;
      const char *hit = NULL;
      for (size_t k = 0; k < p.n_stop; k++) {
        const char *h = find(pend.p, pend.n, p.stop[k], strlen(p.stop[k]));
        if (h && (!hit || h < hit)) hit = h;
      }
      if (hit) {
        emit = (size_t)(hit - pend.p);
        res.stop = WK_STOP_STRING;
      } else if (!last) {
        emit = pend.n - held_suffix(pend.p, pend.n, &p);
      }
      gt.text = pend.p;
      gt.len = emit;
    }
    if (cb && cb(&gt, user)) { if (!res.stop) res.stop = WK_STOP_CALLBACK; }
    if (tok) buf_drop(&pend, emit);
    if (eos) res.stop = WK_STOP_EOS;
    else if (!res.stop && res.generated_tokens >= p.max_tokens) res.stop = WK_STOP_MAX_TOKENS;
    else if (!res.stop && last) res.stop = WK_STOP_CONTEXT;
    if (res.stop) break;
    if ((st = wk_sampler_accept(s, smp.id))) goto done;
    if (!(lg = step(m, c, &smp.id, 1, &row, V))) { st = WK_ERR_STATE; goto done; }
  }
  double t2 = now_s();
  res.prefill_s = t1 - t0;
  res.decode_s = t2 - t1;
done:
  if (result) *result = res;
  wk_tensor_free(lg);
  free(raw.p);
  free(pend.p);
  free(probs);
  free(alts);
  wk_sampler_free(s);
  return st;
}

wk_status wk_generate(wk_model *m, const wk_tokenizer *tok, const int32_t *prompt, size_t n_prompt,
                      const wk_generate_params *params, wk_gen_callback cb, void *user,
                      wk_generate_result *result) {
  if (result) memset(result, 0, sizeof *result);
  if (!m) return wk_error(WK_ERR_ARG, "generate: model is NULL");
  wk_kv_cache *c = wk_kv_cache_new(m);
  if (!c) return WK_ERR_OOM;
  wk_status st = generate(m, tok, c, prompt, n_prompt, params, cb, user, result);
  wk_kv_cache_free(c);
  return st;
}

wk_status wk_generate_cached(wk_model *m, const wk_tokenizer *tok, wk_kv_cache *cache, const int32_t *ids,
                             size_t n_ids, const wk_generate_params *params, wk_gen_callback cb, void *user,
                             wk_generate_result *result) {
  return generate(m, tok, cache, ids, n_ids, params, cb, user, result);
}
