#define _POSIX_C_SOURCE 200809L
// wick train [-m MODEL] --data FILE -o OUTDIR [options]: LoRA fine-tuning with a
// progress bar; the adapter, checkpoints, metrics.csv and loss.svg land in OUTDIR.
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig) { (void)sig; g_interrupted = 1; }

static const char *USAGE =
    "usage: wick train [-m MODEL] --data FILE -o OUTDIR [options]\n"
    "  --rank R (8)  --alpha A (16)  --dropout D (0)  --rslora  --targets LIST (q_proj,v_proj | all-linear)\n"
    "  --lr LR (2e-4)  --schedule constant|linear|cosine|warmup-cosine (constant)  --warmup N (0)  --min-lr LR (0)\n"
    "  --steps N | --epochs E (1)  --batch B (4)  --seq-len L (256)  --grad-accum G (1)  --clip C (1; 0 = off)\n"
    "  --optim adamw|sgd  --weight-decay W (0.01)  --beta1 B1 (0.9)  --beta2 B2 (0.999)  --eps E (1e-8)\n"
    "  --momentum M (SGD, 0.9)  --seed S (0)  --no-shuffle  --pack  --grad-checkpoint  --strict  --overwrite  --quiet\n"
    "  --init-adapter DIR (continue a PEFT adapter: rank, alpha, targets from its config)\n"
    "  --save-every N (0: at the end)  --keep N (2)  --resume DIR  --eval FILE  --eval-every N\n"
    "  -d, --device cpu|cuda (cpu): where the model trains (GGUF blocks become f32 on the GPU)\n"
    "  MODEL: a model directory or a .gguf file (default " WICK_DEFAULT_LM ")\n"
    "  FILE: JSONL lines {\"text\"}, {\"prompt\",\"completion\"}, {\"messages\"} or {\"input_ids\"[,\"labels\"]}\n";

static int parse_float(const char *s, double lo, double hi, float *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= lo && v <= hi)) return 1;
  *out = (float)v;
  return 0;
}

typedef struct {
  bool quiet;
  int64_t last_eval_step;
} progress_ctx;

static void fmt_time(double s, char *buf, size_t n) {
  long t = isfinite(s) && s > 0 ? (long)(s + 0.5) : 0;
  if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static int on_step(const wk_train_progress *p, void *user) {
  progress_ctx *c = user;
  if (!c->quiet) {
    int width = 24, done = (int)(width * p->step / (p->total_steps ? p->total_steps : 1));
    char bar[32], eta[32];
    for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
    bar[width] = 0;
    fmt_time(p->eta_s, eta, sizeof eta);
    fprintf(stderr, "\r[%s] step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s ", bar, (long long)p->step,
            (long long)p->total_steps, (double)p->loss, (double)p->lr, p->tokens_per_s, eta);
    if (!isnan(p->eval_loss)) fprintf(stderr, "\n  eval loss %.4f at step %lld\n", (double)p->eval_loss, (long long)p->step);
    fflush(stderr);
  }
  return g_interrupted ? 1 : 0;
}

static void on_warn(const char *msg, void *user) {
  (void)user;
  fprintf(stderr, "wick train: %s\n", msg);
}

int wick_train_main(int argc, char **argv) {
  const char *C = "train", *model = NULL, *data = NULL, *eval = NULL, *init = NULL, *targets = NULL, *v;
  wk_train_options o = wk_train_defaults();
  wk_lora_config lc = wk_lora_defaults();
  bool strict = false, quiet = false, pack = false, sgd = false, steps_set = false, epochs_set = false;
  // optimizer values apply after parsing, so their order against --optim doesn't matter
  float wd = NAN, beta1 = NAN, beta2 = NAN, eps = NAN, momentum = NAN;
  wk_device device = WK_CPU;
  float f;
  long n;
#define VAL() do { if (!(v = cli_opt_value(C, argc, argv, &i))) return 2; } while (0)
#define FLOAT(lo, hi, dst, what)                                                               \
  do { VAL(); if (parse_float(v, lo, hi, &f)) return cli_user_error(C, "%s: '%s' is not a number in [%g, %g]", what, v, (double)(lo), (double)(hi)); dst = f; } while (0)
#define INT(lo, hi, dst, what)                                                                 \
  do { VAL(); if (cli_parse_int(v, lo, hi, &n)) return cli_user_error(C, "%s: '%s' is not an integer in [%ld, %ld]", what, v, (long)(lo), (long)(hi)); dst = (__typeof__(dst))n; } while (0)
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model = v; }
    else if (!strcmp(a, "--data")) { VAL(); data = v; }
    else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { VAL(); o.out_dir = v; }
    else if (!strcmp(a, "--rank")) INT(0, 65536, lc.rank, "--rank");
    else if (!strcmp(a, "--alpha")) FLOAT(0, 1e6, lc.alpha, "--alpha");
    else if (!strcmp(a, "--dropout")) FLOAT(0, 0.999, lc.dropout, "--dropout");
    else if (!strcmp(a, "--rslora")) lc.rslora = true;
    else if (!strcmp(a, "--targets")) { VAL(); targets = v; }
    else if (!strcmp(a, "--lr")) FLOAT(0, 10, o.schedule.lr, "--lr");
    else if (!strcmp(a, "--schedule")) { VAL(); if (wk_schedule_parse(v, &o.schedule.kind)) return cli_lib_error(C); }
    else if (!strcmp(a, "--warmup")) INT(0, 1L << 40, o.schedule.warmup, "--warmup");
    else if (!strcmp(a, "--min-lr")) FLOAT(0, 10, o.schedule.min_lr, "--min-lr");
    else if (!strcmp(a, "--steps")) { INT(1, 1L << 40, o.steps, "--steps"); steps_set = true; }
    else if (!strcmp(a, "--epochs")) { float e; FLOAT(1e-6, 1e6, e, "--epochs"); o.epochs = e; epochs_set = true; }
    else if (!strcmp(a, "--batch")) INT(1, 4096, o.batch, "--batch");
    else if (!strcmp(a, "--seq-len")) INT(2, 1L << 20, o.seq_len, "--seq-len");
    else if (!strcmp(a, "--grad-accum")) INT(1, 4096, o.grad_accum, "--grad-accum");
    else if (!strcmp(a, "--clip")) FLOAT(0, 1e9, o.clip, "--clip");
    else if (!strcmp(a, "--optim")) {
      VAL();
      if (strcmp(v, "adamw") && strcmp(v, "sgd")) return cli_user_error(C, "--optim: unknown optimizer '%s' (adamw or sgd)", v);
      sgd = !strcmp(v, "sgd");
    } else if (!strcmp(a, "--weight-decay")) FLOAT(0, 10, wd, "--weight-decay");
    else if (!strcmp(a, "--beta1")) FLOAT(0, 0.999999, beta1, "--beta1");
    else if (!strcmp(a, "--beta2")) FLOAT(0, 0.999999, beta2, "--beta2");
    else if (!strcmp(a, "--eps")) FLOAT(1e-30, 1, eps, "--eps");
    else if (!strcmp(a, "--momentum")) FLOAT(0, 0.999999, momentum, "--momentum");
    else if (!strcmp(a, "--seed")) {
      VAL();
      if (cli_parse_u64(v, &o.seed)) return cli_user_error(C, "--seed: '%s' is not an integer from 0 to 2^64 - 1", v);
    }
    else if (!strcmp(a, "--no-shuffle")) o.shuffle = false;
    else if (!strcmp(a, "--strict")) strict = true;
    else if (!strcmp(a, "--overwrite")) o.overwrite = true;
    else if (!strcmp(a, "--quiet")) quiet = true;
    else if (!strcmp(a, "--init-adapter")) { VAL(); init = v; }
    else if (!strcmp(a, "--save-every")) INT(0, 1L << 40, o.save_every, "--save-every");
    else if (!strcmp(a, "--keep")) INT(1, 1000, o.keep_checkpoints, "--keep");
    else if (!strcmp(a, "--resume")) { VAL(); o.resume = v; }
    else if (!strcmp(a, "--eval")) { VAL(); eval = v; }
    else if (!strcmp(a, "--eval-every")) INT(0, 1L << 40, o.eval_every, "--eval-every");
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE, stdout); return 0; }
    else if (!strcmp(a, "--pack")) pack = true;
    else if (!strcmp(a, "--grad-checkpoint")) o.grad_checkpoint = true;
    else if (!strcmp(a, "-d") || !strcmp(a, "--device")) { VAL(); if (cli_parse_device(C, v, &device)) return 2; }
    else return cli_user_error(C, "unknown option '%s' (wick train --help lists them)", a);
  }
#undef VAL
#undef FLOAT
#undef INT
  // options that would be ignored are refused instead
  if (steps_set && epochs_set) return cli_user_error(C, "give --steps or --epochs, not both");
  if (o.eval_every && !eval) return cli_user_error(C, "--eval-every needs --eval FILE");
  if (sgd && (!isnan(beta1) || !isnan(beta2) || !isnan(eps)))
    return cli_user_error(C, "--beta1, --beta2 and --eps are AdamW's; --optim sgd takes --momentum");
  if (!sgd && !isnan(momentum)) return cli_user_error(C, "--momentum is SGD's (--optim sgd)");
  o.optim = sgd ? wk_sgd_defaults() : wk_adamw_defaults();
  if (!isnan(wd)) o.optim.weight_decay = wd;
  if (!isnan(beta1)) o.optim.beta1 = beta1;
  if (!isnan(beta2)) o.optim.beta2 = beta2;
  if (!isnan(eps)) o.optim.eps = eps;
  if (!isnan(momentum)) o.optim.momentum = momentum;
  if (!data) return cli_user_error(C, "missing --data FILE");
  if (!o.out_dir) return cli_user_error(C, "missing -o OUTDIR");
  if (lc.rank < 1) return cli_user_error(C, "--rank %d must be >= 1", lc.rank);
  if (targets && wk_lora_parse_targets(targets, &lc.targets)) return cli_lib_error(C);
  lc.seed = o.seed;
  bool dflt = !model;
  if (!model) model = WICK_DEFAULT_LM;
  if (cli_check_path(C, model, dflt) || cli_check_path(C, data, false) || (eval && cli_check_path(C, eval, false)))
    return 2;

  int rc = 0;
  wk_tokenizer *tok = NULL;
  if (cli_has_tokenizer(model)) tok = cli_load_tokenizer(model);   // none: {"input_ids"} data only
  wk_clear_error();
  wk_model *m = wk_model_load(model);
  if (!m || (device != WK_CPU && wk_model_to_device(m, device))) {
    rc = cli_lib_error(C);
    wk_model_free(m);
    wk_tokenizer_free(tok);
    return rc;
  }
  int64_t vocab = wk_model_get_config(m)->vocab_size;
  cli_note_past_context(C, "--seq-len", o.seq_len, m);
  // packed: examples are joined first, so only the pieces are cut at seq_len
  wk_dataset_options dopt = {.max_len = pack ? 0 : o.seq_len, .strict = strict, .warn = on_warn};
  wk_dataset *train = wk_dataset_load(data, tok, vocab, &dopt);
  if (train && pack) {
    wk_dataset *packed = wk_dataset_pack(train, o.seq_len);
    wk_dataset_free(train);
    train = packed;
  }
  wk_dataset *held = train && eval ? wk_dataset_load(eval, tok, vocab, &dopt) : NULL;
  wk_adapter *a = NULL;
  if (!train || (eval && !held)) { rc = cli_lib_error(C); goto out; }
  a = init ? wk_adapter_load(m, init) : wk_adapter_new(m, &lc);
  if (!a) { rc = cli_lib_error(C); goto out; }
  const wk_lora_config *ac = wk_adapter_config(a);
  char tl[128];
  fprintf(stderr, "wick train: %s, %lld %s (%lld tokens, %lld skipped), LoRA r=%d alpha=%g on %s, %zu adapter bytes\n",
          model, (long long)wk_dataset_size(train), pack ? "packed sequences" : "examples", (long long)wk_dataset_tokens(train),
          (long long)wk_dataset_skipped(train), ac->rank, (double)ac->alpha, wk_lora_targets_str(ac->targets, tl, sizeof tl),
          wk_adapter_bytes(a));
  o.eval = held;
  o.base_name = model;
  progress_ctx pc = {.quiet = quiet};
  o.callback = on_step;
  o.user = &pc;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  wk_train_result r;
  wk_status s = wk_train(m, a, train, &o, &r);
  if (!quiet) fputc('\n', stderr);
  if (s) { rc = cli_lib_error(C); goto out; }
  printf("{\"steps\": %lld, \"first_loss\": %.6f, \"last_loss\": %.6f, \"eval_loss\": ", (long long)r.steps_done,
         (double)r.first_loss, (double)r.last_loss);
  if (isnan(r.eval_loss)) printf("null");
  else printf("%.6f", (double)r.eval_loss);
  printf(", \"seconds\": %.2f, \"tokens_per_s\": %.1f, \"stopped\": %s, \"out\": ", r.seconds, r.tokens_per_s,
         r.stopped ? "true" : "false");
  cli_json_string(stdout, o.out_dir, strlen(o.out_dir));
  printf("}\n");
  if (r.stopped) fprintf(stderr, "wick train: interrupted; continue with --resume %s\n", o.out_dir);
out:
  wk_adapter_free(a);
  wk_dataset_free(train);
  wk_dataset_free(held);
  wk_model_free(m);
  wk_tokenizer_free(tok);
  return rc;
}
