// Crash-safe checkpoints: every file is written into a temporary directory (each file
// fsynced), which is then renamed to checkpoint-<step> and the parent fsynced. A kill
// at any moment leaves either no new checkpoint or a complete one; the loader only
// ever sees complete ones, as it ignores names that aren't checkpoint-<digits>.
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "train/adapter.h"
#include "train/checkpoint.h"
#include "wick/io.h"
#include "wick/ops.h"

// rm -r of a directory holding files only (what a checkpoint holds)
static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *p = wk_path_join(dir, e->d_name);
    if (p) unlink(p);
    free(p);
  }
  closedir(d);
  rmdir(dir);
}

// checkpoint-<digits> -> step; -1 for other names
static int64_t ckpt_step(const char *name) {
  const char *pre = "checkpoint-";
  if (strncmp(name, pre, strlen(pre))) return -1;
  const char *p = name + strlen(pre);
  if (!*p) return -1;
  int64_t v = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9' || v > INT64_MAX / 10 - 10) return -1;
    v = v * 10 + (*p - '0');
  }
  return v;
}

wk_status wk_ckpt_prepare_dir(const char *out, bool overwrite, bool resume) {
  struct stat st;
  if (!stat(out, &st)) {
    if (!S_ISDIR(st.st_mode)) return wk_error(WK_ERR_IO, "output %s exists and is not a directory", out);
    DIR *d = opendir(out);
    if (!d) return wk_error(WK_ERR_IO, "output %s: can't read it: %s", out, strerror(errno));
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      if (!strncmp(e->d_name, ".checkpoint-", 12)) {   // left by a killed run
        char *p = wk_path_join(out, e->d_name);
        if (p) remove_dir(p);
        free(p);
        continue;
      }
      files++;
    }
    closedir(d);
    if (files && !overwrite && !resume)
      return wk_error(WK_ERR_ARG, "output directory %s exists and is not empty: pass --overwrite to write into it, "
                      "or --resume %s to continue its run", out, out);
    return WK_OK;
  }
  return wk_mkdirs(out) ? WK_ERR_IO : WK_OK;
}

static wk_status write_state(const char *path, const wk_ckpt_state *s) {
  wk_jbuf b = {0};
  wk_jbuf_printf(&b, "{\n  \"step\": %lld,\n  \"total_steps\": %lld,\n  \"seed\": \"%llu\",\n  \"batch\": %d,\n"
                 "  \"grad_accum\": %d,\n  \"examples_seen\": %lld,\n  \"loss\": ",
                 (long long)s->step, (long long)s->total_steps, (unsigned long long)s->seed, s->batch, s->grad_accum,
                 (long long)(s->step * s->batch * s->grad_accum));
  wk_json_write_number(&b, s->loss);
  wk_jbuf_puts(&b, ",\n  \"rng\": \"data order and dropout masks derive from (seed, step)\"\n}\n");
  wk_status st = b.failed ? wk_error(WK_ERR_OOM, "%s: out of memory", path)
                          : wk_write_atomic(path, 1, (const void *[]){b.data}, (size_t[]){b.len});
  wk_jbuf_free(&b);
  return st;
}

static wk_status save_optim(const char *path, const wk_optim *opt) {
  int n = wk_optim_state_count(opt);
  const char **names = calloc((size_t)(n ? n : 1), sizeof *names);
  wk_tensor **ts = calloc((size_t)(n ? n : 1), sizeof *ts);
  wk_status s = names && ts ? WK_OK : wk_error(WK_ERR_OOM, "%s: out of memory", path);
  for (int k = 0; !s && k < n; k++) ts[k] = wk_optim_state(opt, k, &names[k]);
  char steps[32];
  snprintf(steps, sizeof steps, "%lld", (long long)wk_optim_steps(opt));
  if (!s) s = wk_st_save(path, n, names, ts, (const char *[]){"optimizer_steps", steps, NULL});
  free(names);
  free(ts);
  return s;
}

// Deletes all but the `keep` newest checkpoints up to `newest` (later ones, left by a run
// resumed from an earlier checkpoint, stay); or, with `others`, every one but `newest`:
// the first save of a run that overwrites a directory. The old run's checkpoints would
// otherwise mix with the new run's (a resume takes the newest, --keep counts them);
// until the new run has one of its own, they stay as they were.
static void prune(const char *out, int keep, int64_t newest, bool others) {
  if (!others && keep < 1) return;
  DIR *d = opendir(out);
  if (!d) return;
  int64_t steps[4096];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < 4096) {
    int64_t v = ckpt_step(e->d_name);
    if (v >= 0 && (others || v <= newest)) steps[n++] = v;
  }
  closedir(d);
  for (int i = 0; i < n; i++) {
    int newer = 0;
    for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
    if (others ? steps[i] == newest : newer < keep) continue;
    char name[64];
    snprintf(name, sizeof name, "checkpoint-%lld", (long long)steps[i]);
    char *p = wk_path_join(out, name);
    if (p) remove_dir(p);
    free(p);
  }
}

wk_status wk_ckpt_save(const char *out, const wk_adapter *a, const wk_optim *opt, const wk_ckpt_state *st, int keep,
                       const char *base, bool replace_others) {
  char name[64], tmpname[96];
  snprintf(name, sizeof name, "checkpoint-%lld", (long long)st->step);
  snprintf(tmpname, sizeof tmpname, ".checkpoint-%lld.tmp.%d", (long long)st->step, (int)getpid());
  char *dir = wk_path_join(out, name), *tmp = wk_path_join(out, tmpname);
  char *optp = tmp ? wk_path_join(tmp, "optimizer.safetensors") : NULL;
  char *statep = tmp ? wk_path_join(tmp, "trainer_state.json") : NULL;
  wk_status s = dir && tmp && optp && statep ? WK_OK : wk_error(WK_ERR_OOM, "checkpoint: out of memory");
  if (!s) {
    remove_dir(tmp);
    if (mkdir(tmp, 0755)) s = wk_error(WK_ERR_IO, "checkpoint %s: can't create %s: %s", dir, tmp, strerror(errno));
  }
  if (!s) s = wk_adapter_save(a, tmp, base);
  if (!s) s = save_optim(optp, opt);
  if (!s) s = write_state(statep, st);
  if (!s) {
    wk_fsync_dir(tmp);
    struct stat sb;
    if (!stat(dir, &sb)) remove_dir(dir);   // the same step saved again (a resumed run)
    if (rename(tmp, dir)) s = wk_error(WK_ERR_IO, "checkpoint %s: rename failed: %s", dir, strerror(errno));
    else wk_fsync_dir(out);
  }
  if (s) {
    char why[900];
    snprintf(why, sizeof why, "%s", wk_last_error());
    remove_dir(tmp);
    s = wk_error(WK_ERR_IO, "checkpoint at step %lld not saved (earlier checkpoints are intact): %s",
                 (long long)st->step, why);
  } else prune(out, keep, st->step, replace_others);
  free(dir);
  free(tmp);
  free(optp);
  free(statep);
  return s;
}

// The checkpoint directory path names: itself if it holds trainer_state.json, else
// its newest checkpoint-<step> (malloc'd).
static char *find_checkpoint(const char *path) {
  char *state = wk_path_join(path, "trainer_state.json");
  struct stat sb;
  int direct = state && !stat(state, &sb);
  free(state);
  if (direct) return strdup(path);
  DIR *d = opendir(path);
  if (!d) { wk_error(WK_ERR_IO, "resume %s: not a directory: %s", path, strerror(errno)); return NULL; }
  int64_t best = -1;
  struct dirent *e;
  while ((e = readdir(d))) {
    int64_t v = ckpt_step(e->d_name);
    if (v > best) best = v;
  }
  closedir(d);
  if (best < 0) { wk_error(WK_ERR_ARG, "resume %s: no checkpoint-<step> directory in it", path); return NULL; }
  char name[64];
  snprintf(name, sizeof name, "checkpoint-%lld", (long long)best);
  return wk_path_join(path, name);
}

// Tensor `name` of f (at path) copied into memory the run owns (a later save replaces
// the file), evaluated and its values checked (wk_check_loaded); NULL with the error set.
static wk_tensor *load_copy(wk_st_file *f, const char *path, const char *name, const char *what, bool nonneg) {
  wk_tensor *t = wk_st_get(f, name);
  wk_tensor *c = t ? wk_add_scalar(t, 0.0f) : NULL;
  wk_tensor_free(t);
  if (c && (wk_eval(1, &c) || wk_check_loaded(c, path, name, what, nonneg))) {
    wk_tensor_free(c);
    c = NULL;
  }
  return c;
}

static wk_status load_params(const char *dir, wk_adapter *a) {
  char *p = wk_path_join(dir, "adapter_model.safetensors");
  wk_st_file *f = p ? wk_st_open(p) : NULL;
  wk_status s = f ? WK_OK : WK_ERR_IO;
  int n = wk_adapter_params(a, NULL);
  if (!s && wk_st_count(f) != n)
    s = wk_error(WK_ERR_ARG, "resume %s: the checkpoint has %d adapter tensors, this run's adapter %d (different "
                 "rank or targets?)", p, wk_st_count(f), n);
  for (int i = 0; !s && i < n; i++) {
    wk_tensor *c = load_copy(f, p, wk_adapter_param_name(a, i), "adapter weights", false);
    if (!c || wk_adapter_set_param(a, i, c)) s = WK_ERR_ARG;
    wk_tensor_free(c);
  }
  wk_st_close(f);
  free(p);
  return s;
}

static wk_status load_optim(const char *dir, wk_optim *opt) {
  char *p = wk_path_join(dir, "optimizer.safetensors");
  wk_st_file *f = p ? wk_st_open(p) : NULL;
  wk_status s = f ? WK_OK : WK_ERR_IO;
  for (int k = 0; !s && k < wk_optim_state_count(opt); k++) {
    const char *name;
    wk_optim_state(opt, k, &name);
    wk_tensor *c = load_copy(f, p, name, "optimizer states", !strncmp(name, "exp_avg_sq", 10));
    if (!c || wk_optim_set_state(opt, k, c)) s = WK_ERR_ARG;
    wk_tensor_free(c);
  }
  const char *steps = f ? wk_st_metadata(f, "optimizer_steps") : NULL;
  if (!s && !steps) s = wk_error(WK_ERR_ARG, "resume %s: metadata optimizer_steps is missing", p);
  if (!s) wk_optim_set_steps(opt, strtoll(steps, NULL, 10));
  wk_st_close(f);
  free(p);
  return s;
}

wk_status wk_ckpt_load(const char *path, wk_adapter *a, wk_optim *opt, const wk_ckpt_state *run, int64_t *step) {
  char *dir = find_checkpoint(path);
  if (!dir) return WK_ERR_ARG;
  char *sp = wk_path_join(dir, "trainer_state.json");
  size_t len;
  char *text = sp ? wk_read_file(sp, 1 << 20, &len) : NULL;
  wk_json *j = text ? wk_json_parse(text, len, sp, NULL) : NULL;
  wk_status s = j ? WK_OK : WK_ERR_IO;
  int64_t at = wk_json_int(wk_json_get(j, "step"), -1);
  if (!s && at < 0) s = wk_error(WK_ERR_ARG, "resume %s: \"step\" is missing", sp);
  // the data order depends on these: a resume with other values would not replay
  struct { const char *key; int64_t want; } same[] = {{"batch", run->batch}, {"grad_accum", run->grad_accum}};
  for (size_t i = 0; !s && i < 2; i++)
    if (wk_json_int(wk_json_get(j, same[i].key), -1) != same[i].want)
      s = wk_error(WK_ERR_ARG, "resume %s: the checkpoint was made with %s = %lld, this run has %lld (pass the same "
                   "value: the data order depends on it)", sp, same[i].key,
                   (long long)wk_json_int(wk_json_get(j, same[i].key), -1), (long long)same[i].want);
  const char *seed = wk_json_str(wk_json_get(j, "seed"), "");
  if (!s && strtoull(seed, NULL, 10) != run->seed)
    s = wk_error(WK_ERR_ARG, "resume %s: the checkpoint was made with seed %s, this run has %llu (pass the same "
                 "--seed)", sp, seed, (unsigned long long)run->seed);
  if (!s && at > run->total_steps)
    s = wk_error(WK_ERR_ARG, "resume %s: the checkpoint is at step %lld, past this run's %lld steps", sp, (long long)at,
                 (long long)run->total_steps);
  if (!s) s = load_params(dir, a);
  if (!s) s = load_optim(dir, opt);
  if (!s) *step = at;
  wk_json_free(j);
  free(text);
  free(sp);
  free(dir);
  return s;
}
