// The `make demo` program: SmolLM2-135M-Instruct answers held-out questions of a task
// it was never taught, is LoRA-fine-tuned on data/demo/train.jsonl, and answers again;
// exact-match scores before and after.
//
//   demo_finetune [MODEL] [--data DIR] [--steps N] [--out DIR] [--eval N]
//
// DIR holds train.jsonl ({"messages"} chat examples) and heldout.jsonl (the same
// format; the assistant's content is the exact answer).
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wick.h"

#define DEFAULT_MODEL "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct {
  char *question, *answer;
} qa;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// The user and assistant contents of each {"messages"} line (a tiny reader: the demo's
// own file, written by tools/gen_demo_data.py, keeps one message object per role).
static char *field_after(const char *line, const char *role) {
  char key[64];
  snprintf(key, sizeof key, "\"role\": \"%s\", \"content\": \"", role);
  const char *p = strstr(line, key);
  if (!p) return NULL;
  p += strlen(key);
  const char *e = strchr(p, '"');
  return e ? strndup(p, (size_t)(e - p)) : NULL;
}

static int load_heldout(const char *path, qa **out) {
  FILE *f = fopen(path, "r");
  if (!f) { fprintf(stderr, "demo: can't open %s\n", path); return -1; }
  char line[4096];
  int n = 0, cap = 0;
  qa *v = NULL;
  while (fgets(line, sizeof line, f)) {
    char *q = field_after(line, "user"), *a = field_after(line, "assistant");
    if (!q || !a) { free(q); free(a); continue; }
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      qa *nv = realloc(v, sizeof *v * (size_t)cap);
      if (!nv) break;
      v = nv;
    }
    v[n++] = (qa){q, a};
  }
  fclose(f);
  *out = v;
  return n;
}

typedef struct {
  char buf[256];
  size_t len;
} answer_buf;

static int collect(const wk_gen_token *t, void *user) {
  answer_buf *b = user;
  if (b->len + t->len < sizeof b->buf) {
    memcpy(b->buf + b->len, t->text, t->len);
    b->len += t->len;
  }
  return 0;
}

// Greedy answer to one question through the chat template (NUL-terminated, trimmed).
static int ask(wk_model *m, wk_tokenizer *tok, const wk_chat_template *ct, const char *q, answer_buf *out) {
  wk_chat_message msg = {"user", q};
  char *text;
  size_t len, n;
  int32_t *ids;
  if (wk_chat_apply(ct, &msg, 1, true, &text, &len, NULL)) return -1;
  int rc = wk_tokenizer_encode(tok, text, len, false, &ids, &n);
  free(text);
  if (rc) return -1;
  wk_generate_params p = wk_generate_defaults();
  p.max_tokens = 24;
  const char *stop[] = {wk_chat_template_end_of_turn(ct), "\n"};
  p.stop = stop;
  p.n_stop = 2;
  out->len = 0;
  rc = wk_generate(m, tok, ids, n, &p, collect, out, NULL);
  free(ids);
  while (out->len && (out->buf[out->len - 1] == ' ' || out->buf[out->len - 1] == '.')) out->len--;
  out->buf[out->len] = 0;
  return rc;
}

// Exact-match score over the held-out questions; prints the first `show`.
static int score(wk_model *m, wk_tokenizer *tok, const wk_chat_template *ct, qa *h, int n, int show, const char *when) {
  int right = 0;
  printf("\n== %s ==\n", when);
  for (int i = 0; i < n; i++) {
    answer_buf b;
    if (ask(m, tok, ct, h[i].question, &b)) { fprintf(stderr, "demo: %s\n", wk_last_error()); return -1; }
    const char *s = b.buf;
    while (*s == ' ') s++;
    int ok = !strcmp(s, h[i].answer);
    right += ok;
    if (i < show) {
      printf("  Q: %s\n  A: %-40s %s (expected %s)\n", h[i].question, s, ok ? "right" : "WRONG", h[i].answer);
      fflush(stdout);
    }
  }
  printf("  exact match: %d / %d\n", right, n);
  return right;
}

// Training progress: a line every 10 steps.
static int on_step(const wk_train_progress *p, void *user) {
  (void)user;
  if (p->step % 10 == 0 || p->step == p->total_steps) {
    printf("  step %3lld/%lld  loss %.4f  lr %.1e  %.0f tokens/s  %.0f s\n", (long long)p->step,
           (long long)p->total_steps, (double)p->loss, (double)p->lr, p->tokens_per_s, p->elapsed_s);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *model = DEFAULT_MODEL, *data = "data/demo", *out = "build/demo-adapter";
  long steps = 50, n_eval = 40;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = strtol(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--eval") && i + 1 < argc) n_eval = strtol(argv[++i], NULL, 10);
    else if (argv[i][0] != '-') model = argv[i];
    else { fprintf(stderr, "usage: demo_finetune [MODEL] [--data DIR] [--steps N] [--out DIR] [--eval N]\n"); return 2; }
  }
  char train_path[1024], held_path[1024];
  snprintf(train_path, sizeof train_path, "%s/train.jsonl", data);
  snprintf(held_path, sizeof held_path, "%s/heldout.jsonl", data);
  double t0 = now_s();
  wk_model *m = wk_model_load(model);
  wk_gguf *g = m ? wk_gguf_open(model) : NULL;
  wk_tokenizer *tok = g ? wk_tokenizer_from_gguf(g) : NULL;
  wk_gguf_close(g);
  wk_chat_template *ct = tok ? wk_chat_template_from_tokenizer(tok, 0) : NULL;
  if (!ct) { fprintf(stderr, "demo: %s\n", wk_last_error()); return 1; }
  qa *held = NULL;
  int n_held = load_heldout(held_path, &held);
  if (n_held <= 0) { fprintf(stderr, "demo: no held-out examples in %s\n", held_path); return 1; }
  if (n_eval > n_held) n_eval = n_held;
  printf("wick demo: %s\ntask: %s (held-out questions the model never trains on)\n", model, held[0].question);
  int before = score(m, tok, ct, held, (int)n_eval, 4, "before fine-tuning");

  wk_dataset_options dopt = {.max_len = 256};
  wk_dataset *train = wk_dataset_load(train_path, tok, wk_model_get_config(m)->vocab_size, &dopt);
  wk_lora_config lc = wk_lora_defaults();
  wk_lora_parse_targets("all-linear", &lc.targets);
  wk_adapter *a = train ? wk_adapter_new(m, &lc) : NULL;
  if (!a) { fprintf(stderr, "demo: %s\n", wk_last_error()); return 1; }
  wk_train_options o = wk_train_defaults();
  o.steps = steps;
  o.batch = 8;
  o.schedule = (wk_schedule){.kind = WK_SCHED_WARMUP_COSINE, .lr = 1e-3f, .warmup = 10, .min_lr = 1e-4f};
  o.out_dir = out;
  o.overwrite = true;
  o.base_name = model;
  o.callback = on_step;
  printf("\n== LoRA fine-tuning: r=%d, alpha %g, all linear projections, %ld steps of %d examples (%lld in %s) ==\n",
         lc.rank, (double)lc.alpha, steps, o.batch, (long long)wk_dataset_size(train), train_path);
  fflush(stdout);
  wk_train_result r;
  if (wk_train(m, a, train, &o, &r)) { fprintf(stderr, "demo: %s\n", wk_last_error()); return 1; }
  printf("  loss %.3f -> %.3f in %.0f s (%.0f tokens/s); adapter, metrics.csv and loss.svg in %s\n", (double)r.first_loss,
         (double)r.last_loss, r.seconds, r.tokens_per_s, out);
  int after = score(m, tok, ct, held, (int)n_eval, 4, "after fine-tuning");
  printf("\nexact match: %d / %ld before, %d / %ld after (%.0f s in all)\n", before, n_eval, after, n_eval, now_s() - t0);
  for (int i = 0; i < n_held; i++) free(held[i].question), free(held[i].answer);
  free(held);
  wk_adapter_free(a);
  wk_dataset_free(train);
  wk_chat_template_free(ct);
  wk_tokenizer_free(tok);
  wk_model_free(m);
  return after > before ? 0 : 1;
}
