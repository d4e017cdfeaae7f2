// tokenizer.json (HF tokenizers' format) -> wk_tokenizer.
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "tok/tok.h"

#define FAIL(code, ...) do { wk_error(code, __VA_ARGS__); goto fail; } while (0)

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char *type_of(const wk_json *v) { return wk_json_str(wk_json_get(v, "type"), ""); }

static wk_status add_pre(wk_tokenizer *t, int kind) {
  if (t->n_pre == WK_MAX_PRE)
    return wk_error(WK_ERR_ARG, "%s: pre_tokenizer: too many steps", t->source);
  t->pre[t->n_pre++] = kind;
  return WK_OK;
}

static wk_status parse_pre(wk_tokenizer *t, const wk_json *p) {
  if (!p || wk_json_is(p, WK_JSON_NULL)) return WK_OK;
  const char *ty = type_of(p);
  if (!strcmp(ty, "Sequence")) {
    const wk_json *list = wk_json_get(p, "pretokenizers");
    for (size_t i = 0; i < wk_json_len(list); i++)
      if (parse_pre(t, wk_json_at(list, i))) return WK_ERR_ARG;
    return WK_OK;
  }
  if (!strcmp(ty, "ByteLevel")) {
    t->byte_level = true;
    if (wk_json_bool(wk_json_get(p, "add_prefix_space"), true) && add_pre(t, WK_PRE_PREFIX_SPACE))
      return WK_ERR_ARG;
    if (wk_json_bool(wk_json_get(p, "use_regex"), true)) return add_pre(t, WK_PRE_SPLIT_GPT2);
    return WK_OK;
  }
  if (!strcmp(ty, "Digits"))
    return add_pre(t, wk_json_bool(wk_json_get(p, "individual_digits"), false) ? WK_PRE_DIGITS_EACH
                                                                                : WK_PRE_DIGITS);
  if (!strcmp(ty, "BertPreTokenizer")) return add_pre(t, WK_PRE_BERT);
  if (!strcmp(ty, "Split")) {
    const char *re = wk_json_str(wk_json_get(wk_json_get(p, "pattern"), "Regex"), NULL);
    const char *beh = wk_json_str(wk_json_get(p, "behavior"), "");
    if (!re || strcmp(beh, "Isolated") || wk_json_bool(wk_json_get(p, "invert"), false))
      return wk_error(WK_ERR_ARG,
                      "%s: pre_tokenizer Split is supported with a Regex pattern, behavior "
                      "Isolated and invert false only", t->source);
    if (!strcmp(re, GPT2_RE)) return add_pre(t, WK_PRE_SPLIT_GPT2);
    if (!strcmp(re, LLAMA3_RE)) return add_pre(t, WK_PRE_SPLIT_LLAMA3);
    if (!strcmp(re, QWEN2_RE)) return add_pre(t, WK_PRE_SPLIT_QWEN2);
    return wk_error(WK_ERR_ARG, "%s: pre_tokenizer Split pattern \"%.80s\" is not one of the "
                    "supported ones (GPT-2, Llama-3, Qwen2)", t->source, re);
  }
  return wk_error(WK_ERR_ARG, "%s: pre_tokenizer type '%s' is not supported", t->source, ty);
}

static wk_status parse_norm(wk_tokenizer *t, const wk_json *p) {
  if (!p || wk_json_is(p, WK_JSON_NULL)) return WK_OK;
  const char *ty = type_of(p);
  if (!strcmp(ty, "Sequence")) {
    const wk_json *list = wk_json_get(p, "normalizers");
    for (size_t i = 0; i < wk_json_len(list); i++)
      if (parse_norm(t, wk_json_at(list, i))) return WK_ERR_ARG;
    return WK_OK;
  }
  if (t->norm != WK_NORM_NONE)
    return wk_error(WK_ERR_ARG, "%s: normalizer: only one of NFC / BertNormalizer is supported",
                    t->source);
  if (!strcmp(ty, "NFC")) { t->norm = WK_NORM_NFC; return WK_OK; }
  if (!strcmp(ty, "BertNormalizer")) {
    t->norm = WK_NORM_BERT;
    t->bert_clean = wk_json_bool(wk_json_get(p, "clean_text"), true);
    t->bert_cjk = wk_json_bool(wk_json_get(p, "handle_chinese_chars"), true);
    t->bert_lower = wk_json_bool(wk_json_get(p, "lowercase"), true);
    // strip_accents: null means "as lowercase"
    t->bert_strip = wk_json_bool(wk_json_get(p, "strip_accents"), t->bert_lower);
    return WK_OK;
  }
  return wk_error(WK_ERR_ARG, "%s: normalizer type '%s' is not supported", t->source, ty);
}

static wk_status parse_decoder(wk_tokenizer *t, const wk_json *p) {
  if (!p || wk_json_is(p, WK_JSON_NULL)) { t->decoder = WK_DEC_JOIN; return WK_OK; }
  const char *ty = type_of(p);
  if (!strcmp(ty, "Sequence")) {
    const wk_json *list = wk_json_get(p, "decoders");
    t->decoder = WK_DEC_BYTES;
    for (size_t i = 0; i < wk_json_len(list); i++) {
      const char *e = type_of(wk_json_at(list, i));
      if (strcmp(e, "ByteFallback") && strcmp(e, "Fuse") && strcmp(e, "ByteLevel"))
        return wk_error(WK_ERR_ARG, "%s: decoder type '%s' is not supported", t->source, e);
    }
    return WK_OK;
  }
  if (!strcmp(ty, "ByteLevel") || !strcmp(ty, "ByteFallback") || !strcmp(ty, "Fuse")) {
    t->decoder = WK_DEC_BYTES;
    return WK_OK;
  }
  if (!strcmp(ty, "WordPiece")) {
    t->decoder = WK_DEC_WORDPIECE;
    t->wp_cleanup = wk_json_bool(wk_json_get(p, "cleanup"), true);
    return WK_OK;
  }
  return wk_error(WK_ERR_ARG, "%s: decoder type '%s' is not supported", t->source, ty);
}

// Special-token ids of a TemplateProcessing item list, before and after $A.
static wk_status parse_template(wk_tokenizer *t, const wk_json *p) {
  const wk_json *single = wk_json_get(p, "single"), *specials = wk_json_get(p, "special_tokens");
  bool after = false;
  for (size_t i = 0; i < wk_json_len(single); i++) {
    const wk_json *it = wk_json_at(single, i);
    if (wk_json_get(it, "Sequence")) { after = true; continue; }
    const char *name = wk_json_str(wk_json_get(wk_json_get(it, "SpecialToken"), "id"), NULL);
    const wk_json *ids = wk_json_get(wk_json_get(specials, name ? name : ""), "ids");
    if (!name || !wk_json_len(ids))
      return wk_error(WK_ERR_ARG, "%s: post_processor: template item %zu has no special token ids",
                      t->source, i);
    for (size_t k = 0; k < wk_json_len(ids); k++) {
      int64_t id = wk_json_int(wk_json_at(ids, k), -1);
      int *cnt = after ? &t->n_suffix : &t->n_prefix;
      if (id < 0 || (size_t)id >= t->n_vocab || *cnt == WK_MAX_POST)
        return wk_error(WK_ERR_ARG, "%s: post_processor: bad or too many ids for '%s'",
                        t->source, name);
      (after ? t->suffix_ids : t->prefix_ids)[(*cnt)++] = (int32_t)id;
    }
  }
  return WK_OK;
}

static wk_status parse_post(wk_tokenizer *t, const wk_json *p) {
  if (!p || wk_json_is(p, WK_JSON_NULL)) return WK_OK;
  const char *ty = type_of(p);
  if (!strcmp(ty, "Sequence")) {
    const wk_json *list = wk_json_get(p, "processors");
    for (size_t i = 0; i < wk_json_len(list); i++)
      if (parse_post(t, wk_json_at(list, i))) return WK_ERR_ARG;
    return WK_OK;
  }
  if (!strcmp(ty, "ByteLevel")) return WK_OK;
  if (!strcmp(ty, "TemplateProcessing")) return parse_template(t, p);
  if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
    int64_t cls = wk_json_int(wk_json_at(wk_json_get(p, "cls"), 1), -1);
    int64_t sep = wk_json_int(wk_json_at(wk_json_get(p, "sep"), 1), -1);
    if (cls < 0 || sep < 0 || (size_t)cls >= t->n_vocab || (size_t)sep >= t->n_vocab)
      return wk_error(WK_ERR_ARG, "%s: post_processor %s: bad cls / sep", t->source, ty);
    t->prefix_ids[t->n_prefix++] = (int32_t)cls;
    t->suffix_ids[t->n_suffix++] = (int32_t)sep;
    return WK_OK;
  }
  return wk_error(WK_ERR_ARG, "%s: post_processor type '%s' is not supported", t->source, ty);
}

// An id from JSON, checked against the id space.
static int64_t get_id(const wk_json *v, int64_t limit) {
  if (!v || !v->is_int || v->i < 0 || v->i >= limit) return -1;
  return v->i;
}

static const char *merge_parts(const wk_json *m, size_t *la, const char **b, size_t *lb) {
  if (wk_json_is(m, WK_JSON_STRING)) {
    const char *sp = memchr(m->s, ' ', m->n);
    if (!sp || memchr(sp + 1, ' ', m->n - (size_t)(sp + 1 - m->s))) return NULL;
    *la = (size_t)(sp - m->s);
    *b = sp + 1;
    *lb = m->n - *la - 1;
    return m->s;
  }
  if (wk_json_is(m, WK_JSON_ARRAY) && wk_json_len(m) == 2 &&
      wk_json_is(wk_json_at(m, 0), WK_JSON_STRING) && wk_json_is(wk_json_at(m, 1), WK_JSON_STRING)) {
    *la = wk_json_at(m, 0)->n;
    *b = wk_json_at(m, 1)->s;
    *lb = wk_json_at(m, 1)->n;
    return wk_json_at(m, 0)->s;
  }
  return NULL;
}

// tokenizer_config.json's chat_template: a string, or a list of {name, template}
// whose "default" entry is the one transformers applies.
static const char *config_template(const wk_json *cfg) {
  const wk_json *v = wk_json_get(cfg, "chat_template");
  if (wk_json_is(v, WK_JSON_STRING)) return wk_json_str(v, NULL);
  for (size_t i = 0; i < wk_json_len(v); i++) {
    const wk_json *e = wk_json_at(v, i);
    const char *name = wk_json_str(wk_json_get(e, "name"), "");
    if (!strcmp(name, "default")) return wk_json_str(wk_json_get(e, "template"), NULL);
  }
  return NULL;
}

// A side file's text, or NULL with *st = WK_OK when there is no such file. One that is
// there but can't be read is an error: ignoring it would drop bos / eos or the chat
// template without a word.
static char *read_optional(const char *p, size_t *len, wk_status *st) {
  struct stat sb;
  char *text = NULL;
  *st = WK_OK;
  if (stat(p, &sb) == 0 && !(text = wk_read_file(p, 16u << 20, len))) *st = WK_ERR_IO;
  return text;
}

// The files transformers saves next to tokenizer.json: bos / eos and the chat template
// (chat_template.jinja, which transformers prefers, else tokenizer_config.json's).
static wk_status config_from_siblings(wk_tokenizer *t, const char *path) {
  char *cfg_path = wk_path_sibling(path, "tokenizer_config.json"), *jinja = wk_path_sibling(path, "chat_template.jinja");
  if (!cfg_path || !jinja) {
    free(cfg_path);
    free(jinja);
    return wk_error(WK_ERR_OOM, "%s: out of memory", path);
  }
  size_t len;
  wk_status st;
  char *text = read_optional(cfg_path, &len, &st);
  wk_json *cfg = text ? wk_json_parse(text, len, cfg_path, NULL) : NULL;
  if (text && !cfg) st = WK_ERR_IO;
  const char *names[2] = {"bos_token", "eos_token"};
  int32_t *dst[2] = {&t->bos, &t->eos};
  for (int k = 0; k < 2 && cfg; k++) {
    const wk_json *v = wk_json_get(cfg, names[k]);
    const char *s = wk_json_str(v, wk_json_str(wk_json_get(v, "content"), NULL));
    int32_t id = s ? wk_tokenizer_token_id(t, s) : -1;
    if (id >= 0) *dst[k] = id;
  }
  if (!st) t->chat_template = read_optional(jinja, &len, &st);
  const char *tpl = cfg && !t->chat_template ? config_template(cfg) : NULL;
  if (!st && tpl && !(t->chat_template = wk_tok_strndup(tpl, strlen(tpl))))
    st = wk_error(WK_ERR_OOM, "%s: out of memory", path);
  wk_json_free(cfg);
  free(text);
  free(cfg_path);
  free(jinja);
  return st;
}

const char *wk_tokenizer_chat_template(const wk_tokenizer *tok) { return tok ? tok->chat_template : NULL; }
const char *wk_tokenizer_source(const wk_tokenizer *tok) { return tok ? tok->source : NULL; }

wk_tokenizer *wk_tokenizer_from_json(const char *text, size_t len, const char *source) {
  if (!source) source = "tokenizer.json";
  wk_json_limits lim = {.max_bytes = (size_t)1 << 30, .max_values = (size_t)1 << 26};
  wk_json *doc = wk_json_parse(text, len, source, &lim);
  if (!doc) return NULL;
  wk_tokenizer *t = wk_tok_alloc(source);
  if (!t) { wk_json_free(doc); return NULL; }
  const wk_json *model = wk_json_get(doc, "model"), *vocab = wk_json_get(model, "vocab");
  const wk_json *added = wk_json_get(doc, "added_tokens");
  const char *mtype = wk_json_str(wk_json_get(model, "type"), NULL);
  if (!wk_json_is(doc, WK_JSON_OBJECT) || !wk_json_is(model, WK_JSON_OBJECT))
    FAIL(WK_ERR_ARG, "%s: no \"model\" object: not a tokenizer.json", source);
  if (!mtype && wk_json_get(model, "merges")) mtype = "BPE";
  if (!mtype || (strcmp(mtype, "BPE") && strcmp(mtype, "WordPiece")))
    FAIL(WK_ERR_ARG, "%s: model type '%s' is not supported (BPE or WordPiece)", source,
         mtype ? mtype : "(missing)");
  t->model = !strcmp(mtype, "BPE") ? WK_MODEL_BPE : WK_MODEL_WORDPIECE;
  if (!wk_json_is(vocab, WK_JSON_OBJECT))
    FAIL(WK_ERR_ARG, "%s: model.vocab is %s, expected an object", source, wk_json_type_name(vocab));
  if (added && !wk_json_is(added, WK_JSON_ARRAY))
    FAIL(WK_ERR_ARG, "%s: added_tokens is %s, expected an array", source, wk_json_type_name(added));

  // ids must fit an id space a little larger than the entries (holes allowed)
  size_t n_entries = wk_json_len(vocab) + wk_json_len(added);
  int64_t limit = (int64_t)(2 * n_entries + 1024), max_id = -1;
  for (size_t i = 0; i < wk_json_len(vocab); i++) {
    const wk_json *v = wk_json_at(vocab, i);
    int64_t id = get_id(v, limit);
    if (id < 0) FAIL(WK_ERR_ARG, "%s: model.vocab[\"%.60s\"]: bad id", source, v->key);
    if (id > max_id) max_id = id;
  }
  for (size_t i = 0; i < wk_json_len(added); i++) {
    const wk_json *a = wk_json_at(added, i);
    int64_t id = get_id(wk_json_get(a, "id"), limit);
    if (id < 0 || !wk_json_is(wk_json_get(a, "content"), WK_JSON_STRING))
      FAIL(WK_ERR_ARG, "%s: added_tokens[%zu]: needs an id in range and a content string",
           source, i);
    if (id > max_id) max_id = id;
  }
  if (!wk_tok_reserve(t, (size_t)(max_id + 1)) ||
      !(t->added = calloc(wk_json_len(added) + 1, sizeof *t->added)))
    FAIL(WK_ERR_OOM, "%s: out of memory", source);
  for (size_t i = 0; i < wk_json_len(vocab); i++) {
    const wk_json *v = wk_json_at(vocab, i);
    int32_t id = (int32_t)v->i;
    char *s = wk_arena_strdup(&t->arena, v->key, v->keylen);
    if (!s || !wk_smap_put(&t->vocab, s, v->keylen, id)) FAIL(WK_ERR_OOM, "%s: out of memory", source);
    t->tok_str[id] = s;
    t->tok_len[id] = (uint32_t)v->keylen;
  }
  for (size_t i = 0; i < wk_json_len(added); i++) {
    const wk_json *a = wk_json_at(added, i), *c = wk_json_get(a, "content");
    int32_t id = (int32_t)wk_json_get(a, "id")->i;
    wk_added_token *e = &t->added[t->n_added++];
    char *s = wk_arena_strdup(&t->arena, c->s, c->n);
    if (!s) FAIL(WK_ERR_OOM, "%s: out of memory", source);
    e->s = s;
    e->len = (uint32_t)c->n;
    e->id = id;
    e->special = wk_json_bool(wk_json_get(a, "special"), false);
    e->lstrip = wk_json_bool(wk_json_get(a, "lstrip"), false);
    e->rstrip = wk_json_bool(wk_json_get(a, "rstrip"), false);
    e->single_word = wk_json_bool(wk_json_get(a, "single_word"), false);
    e->normalized = wk_json_bool(wk_json_get(a, "normalized"), !e->special);
    t->tok_str[id] = s;
    t->tok_len[id] = (uint32_t)c->n;
    t->tok_raw[id] = s;
    t->tok_raw_len[id] = (uint32_t)c->n;
    t->tok_flags[id] |= WK_TF_ADDED | (e->special ? WK_TF_SPECIAL : 0);
  }

  const char *unk = wk_json_str(wk_json_get(model, "unk_token"), NULL);
  if (unk) {
    t->unk = wk_smap_get(&t->vocab, unk, strlen(unk));
    if (t->unk < 0 && t->model == WK_MODEL_WORDPIECE)
      FAIL(WK_ERR_ARG, "%s: model.unk_token '%s' is not in the vocabulary", source, unk);
  }
  if (t->model == WK_MODEL_WORDPIECE) {
    if (!unk) FAIL(WK_ERR_ARG, "%s: WordPiece model without unk_token", source);
    const char *pre = wk_json_str(wk_json_get(model, "continuing_subword_prefix"), "##");
    t->wp_prefix = wk_arena_strdup(&t->arena, pre, strlen(pre));
    t->wp_prefix_len = strlen(pre);
    t->wp_max_chars = wk_json_int(wk_json_get(model, "max_input_chars_per_word"), 100);
    if (!t->wp_prefix) FAIL(WK_ERR_OOM, "%s: out of memory", source);
  } else {
    const char *cp = wk_json_str(wk_json_get(model, "continuing_subword_prefix"), "");
    const char *ew = wk_json_str(wk_json_get(model, "end_of_word_suffix"), "");
    if (*cp || *ew)
      FAIL(WK_ERR_ARG, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported",
           source);
    if (wk_json_is(wk_json_get(model, "dropout"), WK_JSON_NUMBER) &&
        wk_json_num(wk_json_get(model, "dropout"), 0) > 0)
      FAIL(WK_ERR_ARG, "%s: BPE dropout is not supported", source);
    t->byte_fallback = wk_json_bool(wk_json_get(model, "byte_fallback"), false);
    t->fuse_unk = wk_json_bool(wk_json_get(model, "fuse_unk"), false);
    t->ignore_merges = wk_json_bool(wk_json_get(model, "ignore_merges"), false);
    const wk_json *merges = wk_json_get(model, "merges");
    if (merges && !wk_json_is(merges, WK_JSON_ARRAY))
      FAIL(WK_ERR_ARG, "%s: model.merges is %s, expected an array", source,
           wk_json_type_name(merges));
    if (!wk_merge_map_init(&t->merges, wk_json_len(merges))) FAIL(WK_ERR_OOM, "%s: out of memory", source);
    for (size_t r = 0; r < wk_json_len(merges); r++) {
      size_t la, lb;
      const char *b, *a = merge_parts(wk_json_at(merges, r), &la, &b, &lb);
      if (!a) FAIL(WK_ERR_ARG, "%s: model.merges[%zu] is not \"a b\" or [a, b]", source, r);
      int32_t ia = wk_smap_get(&t->vocab, a, la), ib = wk_smap_get(&t->vocab, b, lb);
      char small[512];
      char *cat = la + lb <= sizeof small ? small : malloc(la + lb);
      if (!cat) FAIL(WK_ERR_OOM, "%s: out of memory", source);
      memcpy(cat, a, la);
      memcpy(cat + la, b, lb);
      int32_t id = wk_smap_get(&t->vocab, cat, la + lb);
      if (cat != small) free(cat);
      if (ia < 0 || ib < 0 || id < 0)
        FAIL(WK_ERR_ARG, "%s: model.merges[%zu] (\"%.*s\" + \"%.*s\"): token not in the vocabulary",
             source, r, (int)(la < 40 ? la : 40), a, (int)(lb < 40 ? lb : 40), b);
      if (!wk_merge_map_put(&t->merges, ia, ib, (int32_t)r, id))
        FAIL(WK_ERR_OOM, "%s: out of memory", source);
    }
  }
  if (parse_norm(t, wk_json_get(doc, "normalizer")) || parse_pre(t, wk_json_get(doc, "pre_tokenizer")) ||
      parse_post(t, wk_json_get(doc, "post_processor")) || parse_decoder(t, wk_json_get(doc, "decoder")))
    goto fail;
  if (t->model == WK_MODEL_WORDPIECE && (t->n_pre != 1 || t->pre[0] != WK_PRE_BERT))
    FAIL(WK_ERR_ARG, "%s: WordPiece is supported with the BertPreTokenizer only", source);
  if (t->model == WK_MODEL_BPE) {
    for (int i = 0; i < t->n_pre; i++)
      if (t->pre[i] == WK_PRE_BERT)
        FAIL(WK_ERR_ARG, "%s: BertPreTokenizer with a BPE model is not supported", source);
  }
  if (t->n_prefix && t->tok_flags[t->prefix_ids[0]] & WK_TF_SPECIAL) t->bos = t->prefix_ids[0];
  if (wk_tok_finish(t)) goto fail;
  wk_json_free(doc);
  return t;
fail:
  wk_json_free(doc);
  wk_tokenizer_free(t);
  return NULL;
}

wk_tokenizer *wk_tokenizer_load_json(const char *path) {
  if (!path) { wk_error(WK_ERR_ARG, "wk_tokenizer_load_json: NULL path"); return NULL; }
  size_t len;
  char *text = wk_read_file(path, (size_t)1 << 30, &len);
  if (!text) return NULL;
  wk_tokenizer *t = wk_tokenizer_from_json(text, len, path);
  free(text);
  if (t && config_from_siblings(t, path)) {
    wk_tokenizer_free(t);
    return NULL;
  }
  return t;
}
