// The trainer on the tiny random Qwen2 (tests/fixtures/models/qwen2) with pre-tokenized
// data: the loss falls; a resumed run's losses are bitwise those of an uninterrupted
// run (shuffle, dropout and accumulation on); a non-finite loss stops before the update
// with the last checkpoint intact; a full disk during a save keeps the previous
// checkpoint; kill -9 of `wick train` at random moments always leaves a loadable
// checkpoint; dataset formats and malformed lines.
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "fixtures.h"
#include "models/llama.h"

extern char **environ;

static char g_tmp[64];

static const char *tmp_path(const char *name) { return test_path_in(g_tmp, name); }

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) { fputs(text, f); fclose(f); }
}

// 24 pre-tokenized examples of varied lengths over the tiny vocabulary (256), some with
// masked prompts: "<a b c> -> <c b a>" style sequences the model can learn.
static void write_data(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) return;
  for (int i = 0; i < 24; i++) {
    int n = 3 + i % 5;
    fprintf(f, "{\"input_ids\": [");
    for (int t = 0; t < 2 * n + 1; t++) {
      int id = t < n ? 10 + (i * 7 + t * 13) % 100 : t == n ? 1 : 10 + (i * 7 + (2 * n - t) * 13) % 100;
      fprintf(f, "%s%d", t ? ", " : "", id);
    }
    fprintf(f, "], \"labels\": [");
    for (int t = 0; t < 2 * n + 1; t++) {
      int id = t < n ? 10 + (i * 7 + t * 13) % 100 : t == n ? 1 : 10 + (i * 7 + (2 * n - t) * 13) % 100;
      fprintf(f, "%s%d", t ? ", " : "", t <= n ? -100 : id);
    }
    fprintf(f, "]}\n");
  }
  fclose(f);
}

typedef struct {
  float loss[64];
  double norm[64];
  int64_t n;
  int64_t stop_at;
} recorder;

static int record(const wk_train_progress *p, void *user) {
  recorder *r = user;
  if (p->step < 64) r->loss[p->step] = p->loss, r->norm[p->step] = p->grad_norm;
  r->n = p->step;
  return r->stop_at && p->step >= r->stop_at;
}

static wk_train_options options(const char *out, recorder *rec) {
  wk_train_options o = wk_train_defaults();
  o.steps = 8;
  o.batch = 2;
  o.grad_accum = 2;
  o.seq_len = 32;
  o.schedule = (wk_schedule){.kind = WK_SCHED_WARMUP_COSINE, .lr = 1e-2f, .warmup = 2, .min_lr = 1e-3f};
  o.seed = 11;
  o.out_dir = out;
  o.overwrite = true;
  o.callback = record;
  o.user = rec;
  return o;
}

static wk_adapter *fresh(wk_model *m) {
  wk_lora_config c = wk_lora_defaults();
  c.rank = 4;
  c.dropout = 0.1f;
  c.seed = 3;
  wk_lora_parse_targets("all-linear", &c.targets);
  return wk_adapter_new(m, &c);
}

static void resume_is_exact(wk_model *m, const wk_dataset *d) {
  recorder full = {0}, first = {0}, rest = {0};
  wk_adapter *a = fresh(m);
  wk_train_options o = options(tmp_path("full"), &full);
  wk_train_result r;
  CHECK(a && wk_train(m, a, d, &o, &r) == WK_OK, "uninterrupted run");
  CHECK(full.n == 8 && r.last_loss < r.first_loss, "8 steps, loss falls (%g -> %g)", (double)r.first_loss,
        (double)r.last_loss);
  wk_adapter_free(a);
  // the same run stopped after step 3, then resumed from its directory
  a = fresh(m);
  o = options(tmp_path("split"), &first);
  first.stop_at = 3;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && r.stopped && r.steps_done == 3, "stopped at step 3");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("split"), &rest);
  o.overwrite = false;
  o.resume = tmp_path("split");
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && rest.n == 8, "resumed run reaches step 8");
  int same = 1;
  for (int s = 4; s <= 8; s++) same &= memcmp(&rest.loss[s], &full.loss[s], sizeof(float)) == 0;
  CHECK(same, "losses after resuming are bitwise those of the uninterrupted run (step 8: %.9g vs %.9g)",
        (double)rest.loss[8], (double)full.loss[8]);
  for (int s = 1; s <= 3; s++) same &= memcmp(&first.loss[s], &full.loss[s], sizeof(float)) == 0;
  CHECK(same, "and before the stop too");
  // files of a finished run
  struct stat sb;
  CHECK(!stat(tmp_path("split/adapter_model.safetensors"), &sb) && !stat(tmp_path("split/loss.svg"), &sb) &&
            !stat(tmp_path("split/checkpoint-8/optimizer.safetensors"), &sb),
        "adapter, loss.svg and the last checkpoint exist");
  // metrics.csv: one header and a row per step, no duplicates from the resume
  FILE *f = fopen(tmp_path("split/metrics.csv"), "r");
  int lines = 0;
  char line[512];
  while (f && fgets(line, sizeof line, f)) lines++;
  if (f) fclose(f);
  CHECK(lines == 9, "metrics.csv has a header and 8 rows (got %d lines)", lines);
  // a mismatched resume is refused, naming the field
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("split"), &rest);
  o.resume = tmp_path("split");
  o.batch = 3;
  CHECK(wk_train(m, a, d, &o, &r) != WK_OK && strstr(wk_last_error(), "batch"), "resume with another batch refused");
  // optimizer states that no run can make (NaN; a negative second moment, whose sqrt is
  // NaN) are refused by file and tensor at the resume, not found as a NaN loss after it
  char op[300], orig[310];
  snprintf(op, sizeof op, "%s", tmp_path("split/checkpoint-8/optimizer.safetensors"));
  snprintf(orig, sizeof orig, "%s.orig", op);
  CHECK(rename(op, orig) == 0, "set the optimizer state aside");
  const char *bad[2][2] = {{"exp_avg.0", "NaN"}, {"exp_avg_sq.0", "a negative value"}};
  for (int k = 0; k < 2; k++) {
    wk_st_file *sf = wk_st_open(orig);
    int n = f ? wk_st_count(sf) : 0;
    const char *names[64];
    wk_tensor *ts[64] = {0};
    for (int i = 0; i < n && i < 64; i++) {
      names[i] = wk_st_name(sf, i);
      ts[i] = wk_st_get(sf, names[i]);
      float *v = strcmp(names[i], bad[k][0]) ? NULL : read_all(ts[i]);
      if (v) {
        v[1] = k ? -1.0f : NAN;
        wk_tensor *t = wk_from_data(wk_ndim(ts[i]), wk_shape(ts[i]), WK_F32, v);
        wk_tensor_free(ts[i]);
        ts[i] = t;
        free(v);
      }
    }
    const char *steps = sf ? wk_st_metadata(sf, "optimizer_steps") : NULL;
    CHECK(n > 0 && n <= 64 && steps && !wk_st_save(op, n, names, ts, (const char *[]){"optimizer_steps", steps, NULL}),
          "write %s into %s", bad[k][1], bad[k][0]);
    for (int i = 0; i < n && i < 64; i++) wk_tensor_free(ts[i]);
    wk_st_close(sf);
    o = options(tmp_path("split"), &rest);
    o.overwrite = false;
    o.resume = tmp_path("split/checkpoint-8");
    CHECK(wk_train(m, a, d, &o, &r) != WK_OK && strstr(wk_last_error(), "optimizer.safetensors") &&
              strstr(wk_last_error(), bad[k][0]) && strstr(wk_last_error(), bad[k][1]),
          "an optimizer state holding %s is refused by name: %s", bad[k][1], wk_last_error());
  }
  CHECK(rename(orig, op) == 0, "the optimizer state back");
  // an existing output directory is refused without overwrite or resume
  o = options(tmp_path("split"), &rest);
  o.overwrite = false;
  CHECK(wk_train(m, a, d, &o, &r) != WK_OK && strstr(wk_last_error(), "--overwrite"), "existing output refused");
  wk_adapter_free(a);
}

static int count_rows(const char *path) {
  FILE *f = fopen(path, "r");
  int lines = 0;
  char line[512];
  while (f && fgets(line, sizeof line, f)) lines++;
  if (f) fclose(f);
  return lines - 1;
}

// --overwrite starts a new run over an old one's directory: the old run's checkpoints
// (here 4 and 6) stay until the new run saves its first, then go, so a later resume
// continues the new run, not the old one's newest checkpoint; metrics.csv holds the
// new run's rows only.
static void overwrite_replaces_old_run(wk_model *m, const wk_dataset *d) {
  recorder rec = {0};
  struct stat sb;
  wk_adapter *a = fresh(m);
  wk_train_options o = options(tmp_path("over"), &rec);
  o.steps = 6;
  o.save_every = 2;
  wk_train_result r;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && !stat(tmp_path("over/checkpoint-6"), &sb) &&
            !stat(tmp_path("over/checkpoint-4"), &sb) && stat(tmp_path("over/checkpoint-2"), &sb),
        "old run: checkpoints 4 and 6 kept");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("over"), &rec);
  o.steps = 2;
  o.save_every = 2;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK, "new run over the old directory");
  CHECK(!stat(tmp_path("over/checkpoint-2"), &sb) && stat(tmp_path("over/checkpoint-4"), &sb) &&
            stat(tmp_path("over/checkpoint-6"), &sb),
        "the new run's checkpoint-2 replaced the old run's 4 and 6");
  CHECK(count_rows(tmp_path("over/metrics.csv")) == 2, "metrics.csv holds the new run's 2 rows (%d)",
        count_rows(tmp_path("over/metrics.csv")));
  wk_adapter_free(a);
  a = fresh(m);
  recorder rest = {0};
  o = options(tmp_path("over"), &rest);
  o.steps = 4;
  o.resume = tmp_path("over");
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && rest.loss[2] == 0 && rest.loss[3] != 0 && rest.n == 4,
        "a resume continues the new run from step 2");
  CHECK(count_rows(tmp_path("over/metrics.csv")) == 4, "and metrics.csv then has 4 rows (%d)",
        count_rows(tmp_path("over/metrics.csv")));
  wk_adapter_free(a);
}

// Options and adapters the API sweep found accepted (or crashing): each is refused by name.
static void bad_train_inputs(wk_model *m, const wk_dataset *d) {
  recorder rec = {0};
  wk_adapter *a = fresh(m);
  wk_train_result r;
  struct { const char *what, *want; wk_train_options o; } cases[8];
  for (int k = 0; k < 8; k++) cases[k].o = options(tmp_path("bad"), &rec);
  cases[0].what = "empty out_dir", cases[0].want = "output directory", cases[0].o.out_dir = "";
  cases[1].what = "batch 2^20", cases[1].want = "batch", cases[1].o.batch = 1 << 20;
  cases[2].what = "lr inf", cases[2].want = "learning rate", cases[2].o.schedule.lr = INFINITY;
  cases[3].what = "steps -1", cases[3].want = "steps", cases[3].o.steps = -1;
  cases[4].what = "epochs 1e30", cases[4].want = "epochs", cases[4].o.steps = 0, cases[4].o.epochs = 1e30f;
  cases[5].what = "keep 0", cases[5].want = "keep_checkpoints", cases[5].o.keep_checkpoints = 0;
  cases[6].what = "warmup -5", cases[6].want = "warmup", cases[6].o.schedule.warmup = -5;
  cases[7].what = "clip NaN", cases[7].want = "clip", cases[7].o.clip = NAN;
  for (int k = 0; k < 8; k++)
    CHECK(wk_train(m, a, d, &cases[k].o, &r) != WK_OK && strstr(wk_last_error(), cases[k].want), "train with %s: %s",
          cases[k].what, wk_last_error());
  // seq_len 4 cuts every target off the examples whose prompt is longer (a 0 / 0
  // loss, NaN, blamed on the learning rate): refused up front, naming the example
  wk_train_options cut = options(tmp_path("bad"), &rec);
  cut.seq_len = 4;
  CHECK(wk_train(m, a, d, &cut, &r) != WK_OK && strstr(wk_last_error(), "example 0 has no label") &&
            strstr(wk_last_error(), "seq_len"),
        "examples without a target within seq_len are named: %s", wk_last_error());
  // an adapter of another model, a merged one: refused, the base untouched
  wk_model *other = wk_model_load(fixture_in("models", "llama"));
  wk_adapter *foreign = other ? fresh(other) : NULL;
  wk_train_options o = options(tmp_path("bad"), &rec);
  CHECK(foreign && wk_train(m, foreign, d, &o, &r) != WK_OK && strstr(wk_last_error(), "another model"),
        "train with another model's adapter: %s", wk_last_error());
  wk_adapter_free(foreign);
  wk_model_free(other);
  wk_tensor *p[64];
  int n = wk_adapter_params(a, p);
  CHECK(n > 1 && wk_adapter_merge(a) == WK_OK && wk_adapter_set_param(a, 1, p[1]) != WK_OK &&
            strstr(wk_last_error(), "merged") && wk_train(m, a, d, &o, &r) != WK_OK && wk_adapter_unmerge(a) == WK_OK,
        "a merged adapter's parameters can't change: %s", wk_last_error());
  wk_lora_config c = wk_lora_defaults();
  c.alpha = INFINITY;
  CHECK(!wk_adapter_new(m, &c) && strstr(wk_last_error(), "alpha"), "alpha inf refused");
  wk_adapter_free(a);
}

// An exploding learning rate: the run stops with a message before applying a
// non-finite update; the checkpoint of step 1 still loads.
static void nonfinite_stops(wk_model *m, const wk_dataset *d) {
  recorder rec = {0};
  wk_adapter *a = fresh(m);
  wk_train_options o = options(tmp_path("nan"), &rec);
  o.optim = wk_sgd_defaults();
  o.optim.momentum = 0;
  o.clip = 0;
  o.schedule = (wk_schedule){.kind = WK_SCHED_CONSTANT, .lr = 1e30f};
  o.save_every = 1;
  wk_train_result r;
  wk_status s = wk_train(m, a, d, &o, &r);
  CHECK(s != WK_OK && (strstr(wk_last_error(), "NaN") || strstr(wk_last_error(), "infinite") ||
                       strstr(wk_last_error(), "not finite")),
        "non-finite loss stops training");
  CHECK(strstr(wk_last_error(), "checkpoint is intact") != NULL, "the message says the checkpoint is intact");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("nan"), &rec);
  o.resume = tmp_path("nan");
  o.steps = r.steps_done + 1;
  CHECK(r.steps_done >= 1 && wk_train(m, a, d, &o, &r) != WK_OK, "resuming the exploding run fails again");
  // the checkpoint of step 1 is complete and loads (its weights are what step 1 made)
  wk_adapter *c1 = wk_adapter_load(m, tmp_path("nan/checkpoint-1"));
  CHECK(c1 != NULL, "checkpoint-1 is intact and loads");
  // a NaN written into its weights: the resume names the file and tensor (it ran, and
  // the first step's loss was NaN)
  wk_tensor *p0 = NULL;
  wk_tensor *ps[256];
  int n = c1 && wk_adapter_params(c1, NULL) <= 256 ? wk_adapter_params(c1, ps) : 0;
  float *v = n ? read_all(ps[0]) : NULL;
  if (v) {
    v[0] = NAN;
    p0 = wk_from_data(2, (int64_t[]){wk_dim(ps[0], 0), wk_dim(ps[0], 1)}, WK_F32, v);
  }
  CHECK(p0 && !wk_adapter_set_param(c1, 0, p0) && !wk_adapter_save(c1, tmp_path("nan/checkpoint-1"), NULL),
        "write a NaN into checkpoint-1");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("nan"), &rec);
  o.optim = wk_sgd_defaults();   // the run's optimizer: its state loads
  o.optim.momentum = 0;
  o.resume = tmp_path("nan/checkpoint-1");
  o.steps = 3;
  CHECK(wk_train(m, a, d, &o, &r) != WK_OK && strstr(wk_last_error(), "checkpoint-1/adapter_model.safetensors") &&
            strstr(wk_last_error(), wk_adapter_param_name(c1, 0)) && strstr(wk_last_error(), "NaN"),
        "a checkpoint with a NaN weight is refused by name: %s", wk_last_error());
  wk_tensor_free(p0);
  free(v);
  wk_adapter_free(c1);
  wk_adapter_free(a);
}

// A file-size limit makes every write past it fail (EFBIG), like a full disk.
static void full_disk_keeps_checkpoint(wk_model *m, const wk_dataset *d) {
  recorder rec = {0};
  wk_adapter *a = fresh(m);
  wk_train_options o = options(tmp_path("full_disk"), &rec);
  o.steps = 2;
  wk_train_result r;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK, "two steps");
  wk_adapter_free(a);
  struct rlimit old, small = {.rlim_cur = 2048, .rlim_max = RLIM_INFINITY};
  getrlimit(RLIMIT_FSIZE, &old);
  small.rlim_max = old.rlim_max;
  signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &small);
  a = fresh(m);
  o = options(tmp_path("full_disk"), &rec);
  o.steps = 3;
  o.resume = tmp_path("full_disk");
  wk_status s = wk_train(m, a, d, &o, &r);
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK(s != WK_OK && strstr(wk_last_error(), "not saved"), "a failing save is reported");
  CHECK(strstr(wk_last_error(), "intact") != NULL, "and says earlier checkpoints are intact");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("full_disk"), &rec);
  o.steps = 3;
  o.resume = tmp_path("full_disk/checkpoint-2");
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && r.steps_done == 3, "checkpoint-2 survived and resumes");
  wk_adapter_free(a);
}

// kill -9 of the CLI at random moments: the newest checkpoint always resumes.
static void kill9(const char *data_path) {
  char out[512], data[512];
  snprintf(out, sizeof out, "%s", tmp_path("killed"));
  snprintf(data, sizeof data, "%s", data_path);
  srand((unsigned)time(NULL));
  int killed = 0;
  for (int round = 0; round < 4; round++) {
    char *argv[] = {(char *)WICK_CLI, "train", "-m", (char *)fixture_in("models", "qwen2"), "--data", data,
                    "-o", out, "--steps", "1000000", "--batch", "2", "--save-every", "1", "--quiet",
                    round ? "--resume" : "--overwrite", round ? out : NULL, NULL};
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&pid, WICK_CLI, &fa, NULL, argv, environ)) { CHECK(0, "spawn wick train"); return; }
    posix_spawn_file_actions_destroy(&fa);
    // the first run lives long enough to save a checkpoint, so the others can resume
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(round ? 100 + rand() % 900 : 900) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    killed += WIFSIGNALED(st);
    if (!WIFSIGNALED(st)) fprintf(stderr, "round %d: wick train exited with %d before the kill\n", round, WEXITSTATUS(st));
  }
  // whatever moment the kills hit, a short resume from the newest checkpoint works
  char *argv[] = {(char *)WICK_CLI, "train", "-m", (char *)fixture_in("models", "qwen2"), "--data", data,
                  "-o", out, "--steps", "1000000", "--batch", "2", "--save-every", "1", "--quiet", "--resume",
                  out, NULL};
  pid_t pid;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  CHECK(posix_spawn(&pid, WICK_CLI, &fa, NULL, argv, environ) == 0, "spawn the final resume");
  posix_spawn_file_actions_destroy(&fa);
  struct timespec ts = {.tv_sec = 0, .tv_nsec = 600000000L};
  nanosleep(&ts, NULL);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  // the newest checkpoint is complete: resume it in-process for one more step
  wk_model *m = wk_model_load(fixture_in("models", "qwen2"));
  wk_dataset *d = wk_dataset_load(data, NULL, 256, NULL);
  wk_lora_config c = wk_lora_defaults();
  c.seed = 0;
  wk_adapter *a = m ? wk_adapter_new(m, &c) : NULL;
  wk_train_options o = wk_train_defaults();
  o.out_dir = out;
  o.resume = out;
  o.batch = 2;
  o.steps = 1000000;
  recorder rec = {0};
  rec.stop_at = 1;
  o.callback = record;
  o.user = &rec;
  wk_train_result r;
  CHECK(a && d && wk_train(m, a, d, &o, &r) == WK_OK, "after %d kill -9s the newest checkpoint resumes [%s]", killed,
        wk_last_error());
  CHECK(killed == 4, "every run was killed mid-training (%d of 4)", killed);
  wk_adapter_free(a);
  wk_dataset_free(d);
  wk_model_free(m);
}

typedef struct {
  char msgs[8][512];
  int n;
} warnings;

static void on_warn(const char *msg, void *user) {
  warnings *w = user;
  if (w->n < 8) snprintf(w->msgs[w->n++], sizeof w->msgs[0], "%s", msg);
}

static void datasets(void) {
  const char *p = tmp_path("bad.jsonl");
  write_text(p, "{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [1, 2, \n{\"input_ids\": [1, 999]}\n"
                "{\"input_ids\": [4, 5], \"labels\": [-100, -100]}\n{\"text\": \"needs a tokenizer\"}\n"
                "{\"input_ids\": [7, 8, 9, 10], \"labels\": [-100, 8, 9, 10]}\n");
  warnings w = {0};
  wk_dataset_options o = {.warn = on_warn, .user = &w, .max_len = 3};
  wk_dataset *d = wk_dataset_load(p, NULL, 256, &o);
  CHECK(d && wk_dataset_size(d) == 2 && wk_dataset_skipped(d) == 4, "2 good lines, 4 skipped (%lld, %lld)",
        (long long)wk_dataset_size(d), (long long)wk_dataset_skipped(d));
  CHECK(w.n == 4 && strstr(w.msgs[0], "bad.jsonl:3") && strstr(w.msgs[1], ":4") && strstr(w.msgs[1], "[0, 256)") &&
            strstr(w.msgs[2], ":5") && strstr(w.msgs[2], "no token to learn") && strstr(w.msgs[3], "tokenizer"),
        "each skipped line reported as file:line with the reason (%s | %s)", w.msgs[0], w.n > 1 ? w.msgs[1] : "");
  const wk_example *e = d ? wk_dataset_get(d, 1) : NULL;
  CHECK(e && e->n == 3 && e->labels[0] == WK_IGNORE_INDEX && e->labels[2] == 9, "labels kept, truncated to max_len 3");
  wk_dataset_free(d);
  o.strict = true;
  CHECK(!wk_dataset_load(p, NULL, 256, &o) && strstr(wk_last_error(), "bad.jsonl:3"), "--strict stops at line 3");
  // packing: lengths 5, 7, 4 into pieces of 6 -> 6, 6, 4, in order, labels kept
  write_text(p, "{\"input_ids\": [1, 2, 3, 4, 5]}\n{\"input_ids\": [6, 7, 8, 9, 10, 11, 12], \"labels\": [-100, 7, 8, 9, 10, 11, 12]}\n"
                "{\"input_ids\": [13, 14, 15, 16]}\n");
  wk_dataset *raw = wk_dataset_load(p, NULL, 256, NULL), *packed = raw ? wk_dataset_pack(raw, 6) : NULL;
  CHECK(packed && wk_dataset_size(packed) == 3 && wk_dataset_get(packed, 0)->n == 6 && wk_dataset_get(packed, 1)->n == 6 &&
            wk_dataset_get(packed, 2)->n == 4,
        "pack 5 + 7 + 4 tokens into 6, 6, 4");
  const wk_example *p1 = packed ? wk_dataset_get(packed, 0) : NULL, *p2 = packed ? wk_dataset_get(packed, 1) : NULL;
  CHECK(p1 && p2 && p1->ids[5] == 6 && p1->labels[5] == WK_IGNORE_INDEX && p2->ids[0] == 7 && p2->labels[0] == 7 &&
            p2->ids[5] == 12 && wk_dataset_get(packed, 2)->ids[0] == 13,
        "packed ids and labels follow the examples in order");
  wk_dataset_free(raw);
  wk_dataset_free(packed);
  // a piece with every label masked (inside a long prompt) is dropped, not trained on
  // as 0 / 0 tokens; none left at all is an error
  write_text(p, "{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8, 9], \"labels\": [-100, -100, -100, -100, -100, -100, -100, 8, 9]}\n");
  raw = wk_dataset_load(p, NULL, 256, NULL);
  packed = raw ? wk_dataset_pack(raw, 3) : NULL;
  CHECK(packed && wk_dataset_size(packed) == 1 && wk_dataset_skipped(packed) == 2 && wk_dataset_get(packed, 0)->ids[0] == 7,
        "pack drops the 2 pieces without a target (%lld kept)", packed ? (long long)wk_dataset_size(packed) : -1LL);
  wk_dataset_free(packed);
  packed = raw ? wk_dataset_pack(raw, 2) : NULL;   // pieces [7,8] and [9]: 8 is learnable at position 1
  CHECK(packed && wk_dataset_size(packed) == 1, "a piece whose target sits after position 0 is kept");
  wk_dataset_free(packed);
  write_text(p, "{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, -100, 4]}\n");
  wk_dataset_free(raw);
  raw = wk_dataset_load(p, NULL, 256, NULL);
  packed = raw ? wk_dataset_pack(raw, 2) : NULL;   // [1,2] masked, [3,4]: 4 learnable
  CHECK(packed && wk_dataset_size(packed) == 1, "the last learnable piece is kept");
  wk_dataset_free(packed);
  packed = raw ? wk_dataset_pack(raw, 3) : NULL;   // [1,2,3] masked; [4] alone (< 2 tokens) is not a sequence
  CHECK(!packed && strstr(wk_last_error(), "no sequence"), "no piece with a target: %s", wk_last_error());
  wk_dataset_free(raw);
  CHECK(!wk_dataset_load(tmp_path("missing.jsonl"), NULL, 256, NULL) && strstr(wk_last_error(), "missing.jsonl"),
        "a missing file is named");
}

// Errors of a whole file or call: with nothing left, the error says why (the first
// skipped line's reason: without a warn callback it was seen nowhere); an empty file,
// a vocab below 1 and a NULL dataset to pack are named as such; a \u0000 in a chat
// message (which the template would cut the text at) is refused.
static void dataset_errors(void) {
  const char *p = tmp_path("errors.jsonl");
  write_text(p, "{\"input_ids\": [1, 999]}\n{\"input_ids\": [1, 998]}\n");
  CHECK(!wk_dataset_load(p, NULL, 256, NULL) && strstr(wk_last_error(), "2 lines skipped") &&
            strstr(wk_last_error(), "line 1: input_ids[1] is not a token id in [0, 256)"),
        "no usable line: the error quotes the first one's reason (%s)", wk_last_error());
  write_text(p, "\n  \r\n");
  CHECK(!wk_dataset_load(p, NULL, 256, NULL) && strstr(wk_last_error(), "errors.jsonl") && strstr(wk_last_error(), "empty"),
        "a blank file is named as such (%s)", wk_last_error());
  write_text(p, "{\"input_ids\": [1, 2]}\n");
  CHECK(!wk_dataset_load(p, NULL, 0, NULL) && strstr(wk_last_error(), "vocab 0"), "vocab 0 is named (%s)", wk_last_error());
  CHECK(!wk_dataset_pack(NULL, 4) && strstr(wk_last_error(), "NULL"), "packing NULL is named (%s)", wk_last_error());
  wk_tokenizer *tok = wk_tokenizer_load_json(fixture_in("chat", "model/tokenizer.json"));
  CHECK(tok != NULL, "chat fixture tokenizer [%s]", wk_last_error());
  if (!tok) return;
  write_text(p, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                "{\"role\": \"assistant\", \"content\": \"Hello\\u0000 and the rest\"}]}\n");
  wk_dataset_options o = {.strict = true};
  CHECK(!wk_dataset_load(p, tok, 2000, &o) && strstr(wk_last_error(), "errors.jsonl:1") &&
            strstr(wk_last_error(), "message 1") && strstr(wk_last_error(), "NUL"),
        "a NUL in a message's content is refused, naming line and message (%s)", wk_last_error());
  wk_tokenizer_free(tok);
}

// The text formats need a tokenizer: the real SmolLM2 one when fetched (skipped otherwise).
static void text_formats(void) {
  char path[1200];
  snprintf(path, sizeof path, "%.1000smodels/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", test_repo_root());
  wk_gguf *g = wk_gguf_open(path);
  if (!g) { printf("SKIP text formats: %s not fetched\n", path); wk_clear_error(); return; }
  wk_tokenizer *tok = wk_tokenizer_from_gguf(g);
  wk_gguf_close(g);
  const char *p = tmp_path("text.jsonl");
  write_text(p, "{\"text\": \"Hello world\"}\n{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n"
                "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n");
  wk_dataset *d = wk_dataset_load(p, tok, 49152, NULL);
  CHECK(d && wk_dataset_size(d) == 3, "three formats load [%s]", wk_last_error());
  int32_t eos = wk_tokenizer_eos(tok);
  const wk_example *t = wk_dataset_get(d, 0), *pc = wk_dataset_get(d, 1), *ms = wk_dataset_get(d, 2);
  CHECK(t && t->ids[t->n - 1] == eos && t->labels[0] == t->ids[0], "text: loss everywhere, EOS appended");
  int masked = 0;
  for (int64_t i = 0; pc && i < pc->n; i++) masked += pc->labels[i] == WK_IGNORE_INDEX;
  CHECK(pc && pc->n >= 3 && masked == pc->n - 2 && pc->ids[pc->n - 1] == eos,
        "prompt/completion: only the completion and EOS count (%d of %lld masked)", masked, pc ? (long long)pc->n : 0);
  // messages: the counted tokens decode to the assistant content and its end marker
  int32_t counted[64];
  size_t nc = 0;
  for (int64_t i = 0; ms && i < ms->n && nc < 64; i++)
    if (ms->labels[i] != WK_IGNORE_INDEX) counted[nc++] = ms->ids[i];
  char *text = NULL;
  size_t len = 0;
  CHECK(nc && !wk_tokenizer_decode(tok, counted, nc, &text, &len) && !strcmp(text, "Hello<|im_end|>"),
        "messages: loss on the assistant turn only ('%s')", text ? text : "");
  free(text);
  wk_dataset_free(d);
  wk_tokenizer_free(tok);
  // wick generate --adapter: a zero-B adapter (lr 0) leaves greedy output unchanged; a
  // bad adapter directory is named
  char out[512], cmd[4096];
  snprintf(out, sizeof out, "%s", tmp_path("zero_adapter"));
  snprintf(cmd, sizeof cmd, "%s train -m %s --data %s -o %s --steps 1 --batch 1 --lr 0 --quiet > /dev/null 2>&1",
           WICK_CLI, path, p, out);
  CHECK(system(cmd) == 0, "train a zero adapter on SmolLM2");
  snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'The capital of France is' -n 8 --temp 0 2>/dev/null > %s && "
           "%s generate -m %s --adapter %s -p 'The capital of France is' -n 8 --temp 0 2>/dev/null > %s && cmp -s %s %s",
           WICK_CLI, path, tmp_path("plain.txt"), WICK_CLI, path, out, tmp_path("adapted.txt"), tmp_path("plain.txt"),
           tmp_path("adapted.txt"));
  CHECK(system(cmd) == 0, "generate --adapter with a zero adapter = generate without");
  snprintf(cmd, sizeof cmd, "%s generate -m %s --adapter /nonexistent/ad -p hi 2>&1 | grep -q /nonexistent/ad", WICK_CLI,
           path);
  CHECK(system(cmd) == 0, "a missing adapter directory is named");
}

// wick adapter info / merge through the CLI: runs, refuses to overwrite, names bad options.
static void adapter_cli(void) {
  char cmd[4096], out[512];
  snprintf(out, sizeof out, "%s", tmp_path("merged"));
  snprintf(cmd, sizeof cmd, "%s adapter merge -m %s --adapter %s -o %s > %s 2>&1", WICK_CLI,
           fixture_in("models", "qwen2"), fixture_in("lora", "qv"), out, tmp_path("merge.log"));
  CHECK(system(cmd) == 0, "wick adapter merge");
  wk_model *m = wk_model_load(out);
  CHECK(m && wk_tensor_dtype(*wk_llama_proj_weight(m, 1, WK_PROJ_V)) == WK_F32, "merged model loads (f32 like its base)");
  wk_model_free(m);
  CHECK(system(cmd) != 0, "merging onto an existing model without --overwrite is refused");
  snprintf(cmd, sizeof cmd, "%s adapter merge -m %s --adapter %s -o %s --overwrite --dtype f8 2>&1 | grep -q \"'f8'\"",
           WICK_CLI, fixture_in("models", "qwen2"), fixture_in("lora", "qv"), out);
  CHECK(system(cmd) == 0, "a bad --dtype is named");
  snprintf(cmd, sizeof cmd, "%s adapter info --json %s | grep -q '\"tensors\": 8'", WICK_CLI, fixture_in("lora", "qv"));
  CHECK(system(cmd) == 0, "wick adapter info counts the tensors");
  // a merge into the base's own directory keeps the files it copies elsewhere (it
  // truncated them: the copy read the file it was writing)
  snprintf(cmd, sizeof cmd, "cp -r %s %s && cp %s/tokenizer.json %s/ && %s adapter merge -m %s --adapter %s -o %s "
           "--overwrite > /dev/null && cmp -s %s/tokenizer.json %s/tokenizer.json", fixture_in("models", "qwen2"),
           tmp_path("inplace"), fixture_in("chat", "model"), tmp_path("inplace"), WICK_CLI, tmp_path("inplace"),
           fixture_in("lora", "qv"), tmp_path("inplace"), fixture_in("chat", "model"), tmp_path("inplace"));
  CHECK(system(cmd) == 0, "a merge in place keeps the tokenizer's files");
  // export: an existing file (here the base model itself) is not replaced without --overwrite
  snprintf(cmd, sizeof cmd, "cp %s %s && %s adapter export --gguf -m %s --adapter %s -o %s 2>&1 | grep -q overwrite && "
           "cmp -s %s %s", fixture_in("models", "qwen2_q8_0.gguf"), tmp_path("base.gguf"), WICK_CLI,
           tmp_path("base.gguf"), fixture_in("lora", "qv"), tmp_path("base.gguf"), fixture_in("models", "qwen2_q8_0.gguf"),
           tmp_path("base.gguf"));
  CHECK(system(cmd) == 0, "export refuses an existing file without --overwrite");
  // info: a config that is not JSON is named, not pasted into --json's output
  snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/adapter_model.safetensors %s/ && printf '{\"r\": }' > %s/adapter_config.json"
           " && %s adapter info --json %s 2>&1 | grep -q 'adapter_config.json:1:7'", tmp_path("badcfg"),
           fixture_in("lora", "qv"), tmp_path("badcfg"), tmp_path("badcfg"), WICK_CLI, tmp_path("badcfg"));
  CHECK(system(cmd) == 0, "adapter info names a malformed adapter_config.json");
  snprintf(cmd, sizeof cmd, "%s train -m %s --data /nonexistent.jsonl -o %s 2>&1 | grep -q nonexistent.jsonl", WICK_CLI,
           fixture_in("models", "qwen2"), out);
  CHECK(system(cmd) == 0, "a missing data file is named");
  snprintf(cmd, sizeof cmd, "%s train -m %s --data %s -o %s --rank 0 2>&1 | grep -q 'rank 0'", WICK_CLI,
           fixture_in("models", "qwen2"), tmp_path("train.jsonl"), out);
  CHECK(system(cmd) == 0, "--rank 0 is refused");
  snprintf(cmd, sizeof cmd, "%s train -m %s --data %s -o %s --targets q,c_attn 2>&1 | grep -q c_attn", WICK_CLI,
           fixture_in("models", "qwen2"), tmp_path("train.jsonl"), out);
  CHECK(system(cmd) == 0, "an unknown target module is named");
  snprintf(cmd, sizeof cmd, "%s train -m %s --data %s -o %s --steps 1 --quiet 2>&1 | grep -q overwrite", WICK_CLI,
           fixture_in("models", "qwen2"), tmp_path("train.jsonl"), out);
  CHECK(system(cmd) == 0, "an existing output directory is refused without --overwrite");
  // options that would be ignored are refused, naming them
  const char *conflicts[][2] = {{"--steps 2 --epochs 1", "not both"}, {"--eval-every 2", "--eval FILE"},
                                {"--optim sgd --beta1 0.8", "AdamW's"}, {"--momentum 0.5", "SGD's"}, {"--seed -1", "--seed"}};
  for (int k = 0; k < 5; k++) {
    snprintf(cmd, sizeof cmd, "%s train -m %s --data %s -o %s %s 2>&1 | grep -q -- \"%s\"", WICK_CLI,
             fixture_in("models", "qwen2"), tmp_path("train.jsonl"), tmp_path("never"), conflicts[k][0], conflicts[k][1]);
    CHECK(system(cmd) == 0, "train %s is refused", conflicts[k][0]);
  }
}

// Activation checkpointing gives the gradients of the plain backward pass (dropout on:
// the recomputed masks must repeat), and the trainer's losses with it match.
static void checkpointing(wk_model *m, const wk_dataset *d) {
  wk_adapter *a = fresh(m);
  wk_model_use_adapter(m, a);
  wk_adapter_set_training(a, true, 42);
  int n = wk_adapter_params(a, NULL);
  wk_tensor **p = calloc((size_t)n, sizeof *p), **g1 = calloc((size_t)n, sizeof *g1), **g2 = calloc((size_t)n, sizeof *g2);
  wk_adapter_params(a, p);
  int64_t idx[2] = {0, 5};
  const wk_example *e0 = wk_dataset_get(d, idx[0]), *e1 = wk_dataset_get(d, idx[1]);
  int32_t ids[2][12] = {{0}}, lab[2][12];
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 12; t++) {
      const wk_example *e = b ? e1 : e0;
      ids[b][t] = t < e->n ? e->ids[t] : 0;
      lab[b][t] = t < e->n ? e->labels[t] : WK_IGNORE_INDEX;
    }
  wk_scope_begin();
  wk_tensor *ti = wk_from_data(2, (int64_t[]){2, 12}, WK_I32, ids), *tl = wk_from_data(2, (int64_t[]){2, 12}, WK_I32, lab);
  float l1 = NAN, l2 = NAN;
  CHECK(wk_value_and_grad(wk_causal_lm_loss(m, ti, tl), n, p, g1, &l1) == WK_OK, "plain gradients");
  CHECK(wk_causal_lm_value_and_grad_ckpt(m, ti, tl, n, p, g2, &l2) == WK_OK, "checkpointed gradients");
  CHECK(fabsf(l1 - l2) <= 1e-6f * fmaxf(1, fabsf(l1)), "same loss (%.8g vs %.8g)", (double)l1, (double)l2);
  float worst = 0, scale = 0;
  for (int i = 0; i < n; i++) {
    float *x = read_all(g1[i]), *y = read_all(g2[i]);
    for (int64_t k = 0; x && y && k < wk_numel(g1[i]); k++) scale = fmaxf(scale, fabsf(x[k]));
    worst = fmaxf(worst, max_abs_diff(x, y, wk_numel(g1[i])));
    free(x);
    free(y);
  }
  CHECK(scale > 0 && worst <= 1e-5f * scale, "checkpointed gradients = plain ones (max diff %g of scale %g)",
        (double)worst, (double)scale);
  wk_scope_end();
  wk_adapter_set_training(a, false, 0);
  free(p), free(g1), free(g2);
  wk_adapter_free(a);
  // the trainer with the option: the same losses within rounding
  recorder plain = {0}, ck = {0};
  a = fresh(m);
  wk_train_options o = options(tmp_path("plain"), &plain);
  o.steps = 3;
  wk_train_result r;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK, "plain run");
  wk_adapter_free(a);
  a = fresh(m);
  o = options(tmp_path("ckpt"), &ck);
  o.steps = 3;
  o.grad_checkpoint = true;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK, "checkpointed run");
  wk_adapter_free(a);
  float dl = 0;
  for (int s = 1; s <= 3; s++) dl = fmaxf(dl, fabsf(plain.loss[s] - ck.loss[s]));
  CHECK(dl <= 1e-4f, "losses with and without checkpointing agree (max diff %g)", (double)dl);
}

static float max_param_diff(wk_adapter *a, wk_adapter *b, bool *finite) {
  int n = wk_adapter_params(a, NULL);
  wk_tensor **pa = calloc((size_t)n, sizeof *pa), **pb = calloc((size_t)n, sizeof *pb);
  wk_adapter_params(a, pa);
  wk_adapter_params(b, pb);
  float worst = 0;
  *finite = true;
  for (int i = 0; i < n; i++) {
    float *x = read_all(pa[i]), *y = read_all(pb[i]);
    for (int64_t k = 0; x && y && k < wk_numel(pa[i]); k++) {
      worst = fmaxf(worst, fabsf(x[k] - y[k]));
      *finite = *finite && isfinite(x[k]);
    }
    if (!x || !y) worst = INFINITY;
    free(x), free(y);
  }
  free(pa), free(pb);
  return worst;
}

// One micro-batch per step runs the loss, gradients, norm, clip factor and update as
// one plan; it must follow the step-by-step path (taken with checkpointing) within
// rounding, clipping active, and must not apply a non-finite update.
static void one_plan_step(wk_model *m, const wk_dataset *d) {
  recorder one = {0}, steps = {0};
  wk_adapter *a = fresh(m), *b = fresh(m);
  wk_train_options o = options(tmp_path("one_plan"), &one);
  o.grad_accum = 1;
  o.steps = 4;
  o.clip = 0.05f;   // below the norms here: the factor is applied
  wk_train_result r;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK, "one-plan run: %s", wk_last_error());
  o = options(tmp_path("step_by_step"), &steps);
  o.grad_accum = 1;
  o.steps = 4;
  o.clip = 0.05f;
  o.grad_checkpoint = true;
  CHECK(wk_train(m, b, d, &o, &r) == WK_OK, "step-by-step run: %s", wk_last_error());
  float dl = 0;
  for (int s = 1; s <= 4; s++) dl = fmaxf(dl, fabsf(one.loss[s] - steps.loss[s]));
  bool finite;
  float dp = max_param_diff(a, b, &finite);
  CHECK(dl <= 1e-4f && dp <= 1e-5f, "one plan == step by step (losses %g, parameters %g apart)", (double)dl, (double)dp);
  CHECK(one.norm[1] > 0.05 && fabs(one.norm[1] - steps.norm[1]) <= 1e-4 * steps.norm[1],
        "the clip factor was in play, and both paths saw the same norm (%g, %g)", one.norm[1], steps.norm[1]);
  wk_adapter_free(b);
  // an exploding step stops before its update: the adapter keeps the last finite values
  recorder boom = {0};
  b = fresh(m);
  o = options(tmp_path("one_plan_nan"), &boom);
  o.grad_accum = 1;
  o.optim = wk_sgd_defaults();
  o.optim.momentum = 0;
  o.clip = 0;
  o.schedule = (wk_schedule){.kind = WK_SCHED_CONSTANT, .lr = 1e30f};
  wk_status st = wk_train(m, b, d, &o, &r);
  CHECK(st != WK_OK && strstr(wk_last_error(), "before the update"), "a non-finite step stops: %s", wk_last_error());
  (void)max_param_diff(b, b, &finite);
  CHECK(finite, "the adapter holds no non-finite value after the stop");
  wk_adapter_free(b);
  wk_adapter_free(a);
}

// One-plan steps run pipelined (step k + 1 queued while step k runs); a run that saves
// every step never is. Both must give the same losses and parameters bit for bit; and
// a run its callback stops after step 2 (step 3 queued by then, and taken back) must
// hold the parameters of a 2-step run.
static void pipelined_steps(wk_model *m, const wk_dataset *d) {
  recorder piped = {0}, synced = {0}, stopped = {0}, two = {0};
  wk_adapter *a = fresh(m), *b = fresh(m);
  wk_train_options o = options(tmp_path("piped"), &piped);
  o.grad_accum = 1;
  o.steps = 5;
  wk_train_result r;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && piped.n == 5, "pipelined run: %s", wk_last_error());
  o = options(tmp_path("synced"), &synced);
  o.grad_accum = 1;
  o.steps = 5;
  o.save_every = 1;
  CHECK(wk_train(m, b, d, &o, &r) == WK_OK && synced.n == 5, "run saving every step: %s", wk_last_error());
  bool finite;
  float dp = max_param_diff(a, b, &finite);
  CHECK(!memcmp(&piped.loss[1], &synced.loss[1], 5 * sizeof(float)) && dp == 0.0f,
        "pipelined == saved every step, bit for bit (step 5 loss %.9g vs %.9g, parameters %g apart)",
        (double)piped.loss[5], (double)synced.loss[5], (double)dp);
  wk_adapter_free(a);
  wk_adapter_free(b);
  a = fresh(m), b = fresh(m);
  o = options(tmp_path("stopped"), &stopped);
  o.grad_accum = 1;
  o.steps = 5;
  o.schedule = (wk_schedule){.kind = WK_SCHED_CONSTANT, .lr = 1e-2f};
  stopped.stop_at = 2;
  CHECK(wk_train(m, a, d, &o, &r) == WK_OK && r.stopped && r.steps_done == 2, "stopped after step 2");
  o.steps = 2;
  o.out_dir = tmp_path("two");
  o.user = &two;
  CHECK(wk_train(m, b, d, &o, &r) == WK_OK && two.n == 2, "a 2-step run");
  dp = max_param_diff(a, b, &finite);
  CHECK(dp == 0.0f, "the stopped run holds the 2-step run's parameters (%g apart): step 3 was taken back",
        (double)dp);
  wk_adapter *c = wk_adapter_load(m, tmp_path("stopped/checkpoint-2"));
  dp = c ? max_param_diff(c, b, &finite) : INFINITY;
  CHECK(dp == 0.0f, "and so does its checkpoint (%g apart)", (double)dp);
  wk_adapter_free(c);
  wk_adapter_free(a);
  wk_adapter_free(b);
}

int main(void) {
  snprintf(g_tmp, sizeof g_tmp, "/tmp/wick_trainer_XXXXXX");
  if (!mkdtemp(g_tmp)) { perror("mkdtemp"); return 1; }
  char data[512];
  snprintf(data, sizeof data, "%s", tmp_path("train.jsonl"));
  write_data(data);
  wk_model *m = wk_model_load(fixture_in("models", "qwen2"));
  wk_dataset *d = wk_dataset_load(data, NULL, 256, NULL);
  CHECK(m && d && wk_dataset_size(d) == 24, "model and data");
  if (m && d) {
    checkpointing(m, d);
    one_plan_step(m, d);
    pipelined_steps(m, d);
    resume_is_exact(m, d);
    overwrite_replaces_old_run(m, d);
    bad_train_inputs(m, d);
    nonfinite_stops(m, d);
    full_disk_keeps_checkpoint(m, d);
  }
  wk_dataset_free(d);
  wk_model_free(m);
  kill9(data);
  datasets();
  dataset_errors();
  text_formats();
  adapter_cli();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
  if (system(cmd)) fprintf(stderr, "cleanup of %s failed\n", g_tmp);
  return check_report();
}
