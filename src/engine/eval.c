// wk_eval: collect the graph, find or compile its plan, bind storage, run it.
//
// Plans are cached by the graph's structure (ops, attributes, shapes, strides,
// wiring; not the data), so a training or decode step compiles once. The cache is
// a bounded LRU: variable shapes cannot grow it without limit.
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "plan.h"

#define PLAN_CACHE_MAX 128

// Arenas of cached plans stay allocated for reuse, up to this many bytes in all
// (WICK_ARENA_CACHE_MB); past it the least recently used plans give theirs back,
// except the last few used: a training step evaluates several plans (loss and
// gradients, norm, update) and evicting its big one each step would make it fault
// its pages in again every step.
#define ARENA_CACHE_DEFAULT_MB 1024
#define ARENA_WORKING_SET 4

static wk_plan *cache[PLAN_CACHE_MAX];
static size_t arena_bytes_held;
static int cache_n;
static uint64_t cache_clock;
static uint64_t stat_compiles, stat_hits, stat_ahead;
static _Atomic uint64_t stat_launched_ahead;   // counted on the executor thread
static const wk_plan *last_plan;

const wk_plan *wk_last_plan(void) { return last_plan; }

// ---- structural key ----
typedef struct { unsigned char *b; size_t n, cap; bool oom; } keybuf;

static void put(keybuf *k, const void *p, size_t n) {
  if (k->n + n > k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 4096;
    while (cap < k->n + n) cap *= 2;
    unsigned char *b = realloc(k->b, cap);
    if (!b) { k->oom = true; return; }
    k->b = b;
    k->cap = cap;
  }
  memcpy(k->b + k->n, p, n);
  k->n += n;
}

static int view_base(const wk_topo *g, int i) {
  while (!g->nodes[i]->buf && g->nodes[i]->op == WK_OP_VIEW) i = wk_topo_in(g, i, 0);
  return i;
}

// The key: the graph's structure after merging identical nodes. Scalar
// attributes (attrs.f, attrs.u: scales, eps, seeds) are left out and patched into
// the plan at run time, so a step whose learning rate or seed changes reuses its
// plan; a constant's value is kept (constant folding depends on it).
static void key_build(keybuf *k, const wk_topo *g, const int *rep, int ntargets, const int *targets) {
  for (int i = 0; i < g->n; i++) {
    const wk_tensor *t = g->nodes[i];
    if (rep[i] != i) {
      int32_t alias[2] = {-2, rep[i]};
      put(k, alias, sizeof alias);
      continue;
    }
    int32_t hdr[4] = {t->buf ? -1 : (int32_t)t->op, t->dtype, t->ndim, t->buf ? (int32_t)t->device : t->nin};
    put(k, hdr, sizeof hdr);
    put(k, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    if (t->buf || t->op == WK_OP_VIEW) put(k, t->stride, sizeof(int64_t) * (size_t)t->ndim);
    if (t->buf) continue;
    if (t->op == WK_OP_VIEW) {
      const wk_tensor *b = g->nodes[view_base(g, i)];
      int64_t rel = t->offset - (b->buf ? b->offset : 0);
      put(k, &rel, sizeof rel);
    }
    wk_attrs a = t->attrs;
    if (t->op != WK_OP_CONST) {
      memset(a.f, 0, sizeof a.f);
      a.u = 0;
    }
    put(k, &a, sizeof a);
    for (int q = 0; q < t->nin; q++) {
      int32_t idx = rep[wk_topo_in(g, i, q)];
      put(k, &idx, sizeof idx);
    }
  }
  put(k, &ntargets, sizeof ntargets);
  put(k, targets, sizeof(int) * (size_t)ntargets);
}

// One scalar attribute set of the plan against the graph's: whether they differ, and
// (write) the graph's copied over.
static bool patch_attrs(wk_attrs *dst, const wk_attrs *src, bool write) {
  bool differ = memcmp(dst->f, src->f, sizeof dst->f) || dst->u != src->u;
  if (differ && write) {
    memcpy(dst->f, src->f, sizeof dst->f);
    dst->u = src->u;
  }
  return differ;
}

// Copies this graph's scalar attributes into the (possibly cached) plan (write), or
// only tells whether any differs from the plan's.
static bool patch_scalars(wk_plan *p, const wk_topo *g, bool write) {
  bool differ = false;
  for (int k = 0; k < p->nsteps; k++) {
    wk_step *s = &p->steps[k];
    if (s->op == WK_OP_LORA || (s->op == WK_OP_MATMUL && s->attrs.i[1])) {
      float f = g->nodes[s->scale_src]->attrs.f[0];
      bool d = memcmp(&s->attrs.f[0], &f, sizeof f) != 0;
      if (d && write) s->attrs.f[0] = f;
      differ |= d;
    } else if (s->src >= 0) {
      differ |= patch_attrs(&s->attrs, &g->nodes[s->src]->attrs, write);
    }
    for (int q = 0; q < s->prog.n; q++) {
      wk_ew_instr *in = &s->prog.code[q];
      if (in->src >= 0) differ |= patch_attrs(&in->attrs, &g->nodes[in->src]->attrs, write);
    }
  }
  return differ;
}

// The key is hashed on every evaluation (~100 bytes a node): four independent lanes
// of 8 bytes, so the multiplies overlap instead of waiting on one another.
static uint64_t mix(uint64_t h, uint64_t w) {
  h = (h ^ w) * 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}
static uint64_t key_hash(const unsigned char *p, size_t n) {
  uint64_t h[4] = {0xcbf29ce484222325ull ^ n, 0x84222325cbf29ce4ull, 0x9E3779B97F4A7C15ull, 0x7F4A7C159E3779B9ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    memcpy(w, p + i, 32);
    for (int l = 0; l < 4; l++) h[l] = mix(h[l], w[l]);
  }
  uint64_t r = mix(mix(mix(h[0], h[1]), h[2]), h[3]);
  for (; i < n; i++) r = (r ^ p[i]) * 0x100000001b3ull;
  return r ^ (r >> 32);
}

static bool has_arena(const wk_plan *p) {
  for (int d = 0; d < WK_DEVICE_COUNT; d++) if (p->arena[d]) return true;
  return false;
}

static void plan_drop_arena(wk_plan *p) {
  for (int d = 0; d < WK_DEVICE_COUNT; d++) {
    if (!p->arena[d]) continue;
    const wk_backend *be = wk_backend_get((wk_device)d);
    if (be) be->free(p->arena[d]);
    p->arena[d] = NULL;
    arena_bytes_held -= p->arena_dev_bytes[d];
  }
}

static void arena_budget(const wk_plan *keep);

// Allocates the plan's arenas that are missing (after a cache eviction, say).
static wk_status plan_arenas(wk_plan *p) {
  for (int d = 0; d < WK_DEVICE_COUNT; d++) {
    if (p->arena[d] || !p->arena_dev_bytes[d]) continue;
    const wk_backend *be = wk_backend_get((wk_device)d);
    if (!be) return WK_ERR_DEVICE;
    p->arena[d] = be->alloc(p->arena_dev_bytes[d]);
    if (!p->arena[d])
      return wk_error(WK_ERR_OOM, "eval: out of %s memory for a %zu-byte arena", wk_device_name((wk_device)d),
                      p->arena_dev_bytes[d]);
    arena_bytes_held += p->arena_dev_bytes[d];
  }
  arena_budget(p);
  return WK_OK;
}

static void arena_budget(const wk_plan *keep) {
  static size_t limit;
  if (!limit) {
    const char *e = getenv("WICK_ARENA_CACHE_MB");
    limit = (size_t)(e && atol(e) > 0 ? atol(e) : ARENA_CACHE_DEFAULT_MB) << 20;
  }
  while (arena_bytes_held > limit) {
    wk_plan *victim = NULL;
    for (int i = 0; i < cache_n; i++)
      if (cache[i] != keep && has_arena(cache[i]) && cache[i]->lru + ARENA_WORKING_SET <= cache_clock &&
          (!victim || cache[i]->lru < victim->lru))
        victim = cache[i];
    if (!victim) return;
    plan_drop_arena(victim);
  }
}

static wk_plan *cache_find(uint64_t h, const keybuf *k) {
  for (int i = 0; i < cache_n; i++)
    if (cache[i]->hash == h && cache[i]->keylen == k->n && !memcmp(cache[i]->key, k->b, k->n)) {
      cache[i]->lru = ++cache_clock;
      return cache[i];
    }
  return NULL;
}

static void plan_drop_segments(wk_plan *p) {
  for (int k = 0; p->segments && k < p->nsteps; k++) {
    const wk_backend *be = p->segments[k] ? wk_backend_get(p->steps[k].device) : NULL;
    if (be && be->segment_free) be->segment_free(p->segments[k]);
  }
  free(p->segments);
  p->segments = NULL;
}

static void cache_insert(wk_plan *p) {
  if (cache_n == PLAN_CACHE_MAX) { // evict the least recently used
    int old = 0;
    for (int i = 1; i < cache_n; i++) if (cache[i]->lru < cache[old]->lru) old = i;
    plan_drop_arena(cache[old]);
    plan_drop_segments(cache[old]);
    wk_plan_free(cache[old]);
    cache[old] = cache[--cache_n];
  }
  p->lru = ++cache_clock;
  cache[cache_n++] = p;
}

void wk_last_eval_stats(wk_eval_stats *out) {
  memset(out, 0, sizeof *out);
  out->plans_compiled = stat_compiles;
  out->plan_cache_hits = stat_hits;
  out->bound_ahead = stat_ahead;
  out->launched_ahead = atomic_load(&stat_launched_ahead);
  if (!last_plan) return;
  out->graph_nodes = last_plan->ngraph;
  out->steps = last_plan->nsteps;
  out->fused_ops = last_plan->fused_ops;
  out->arena_bytes = last_plan->arena_bytes;
  out->unplanned_bytes = last_plan->unplanned_bytes;
}

void wk_plan_cache_stats(uint64_t *compiles, uint64_t *hits, int *entries) {
  if (compiles) *compiles = stat_compiles;
  if (hits) *hits = stat_hits;
  if (entries) *entries = cache_n;
}

// ---- running ----
typedef struct job {
  wk_plan *plan;
  void **slots;
  wk_buffer **hold;    // the buffers it reads or writes, kept alive while the plan runs
  int nhold;
  int first_out;       // hold[first_out..]: the buffers it writes (its outputs)
  uint64_t seq;        // its number, in submission order (wk_buffer.job)
  bool gpu;            // a step runs on a device other than the CPU
  const wk_backend *defer;   // every step runs on this backend, which can defer completion
  bool launched;       // its steps are enqueued (job_launch)
  uint64_t ticket;     // deferred: its completion, finished by job_finish
  wk_status status;    // of the launch
  struct job *next;    // in q_done
} job;

// One job runs at a time, on the executor thread; one more may wait behind it (q_next:
// a GPU job of the same plan, bound while the first ran, see bind_ahead). A job whose
// steps all run on a backend that defers completion (CUDA) is enqueued without a wait,
// and the executor launches q_next behind it while it runs (launched ahead): the GPU
// then goes from one decode step to the next with no host work between them. Everything
// else (building the next graph, its plan lookup, reading what finished jobs wrote,
// reference counts) stays on the API thread: a finished job is freed there (q_done),
// not by the executor, because buffer reference counts are not atomic.
static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cv = PTHREAD_COND_INITIALIZER;
static job *q_job;             // in flight, or NULL
static job *q_next;            // submitted behind q_job, or NULL
static job *q_done;            // finished, not yet freed
static uint64_t q_submitted;   // the last job number submitted
static _Atomic uint64_t q_finished;   // the last job number finished (spun on without q_mu)
static atomic_int q_state;     // Q_IDLE, or the kind of job in flight: readable without q_mu
enum { Q_IDLE, Q_CPU, Q_GPU };

static wk_status q_status;     // first failure of async work since the last sync
static char q_message[1024];   // its message (errors are thread-local: copy it over)
static pthread_t q_thread;
static bool q_started;

// WICK_PROFILE=1 prints each step's wall time (synchronizing after every step).
static int profiling(void) {
  static int on = -1;
  if (on < 0) on = getenv("WICK_PROFILE") && atoi(getenv("WICK_PROFILE")) > 0;
  return on;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

// Around GPU jobs, the threads spin on q_state for up to SPIN_US before they sleep: the
// API thread waiting for a job, and the executor waiting for the next one (a decode
// loop submits it at once). A sleeping thread's wake-up took ~100 µs on the GPU hosts'
// VMs, a tenth of a decode step, twice a step. The executor spins inside
// cudaStreamSynchronize during the job anyway. CPU jobs don't spin: their threads need
// the cores.
#define SPIN_US 2000.0

static void pause_cpu(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void spin_while(int state) {
  double t0 = now_us();
  for (int i = 0; atomic_load_explicit(&q_state, memory_order_acquire) == state; i++) {
    pause_cpu();
    if ((i & 63) == 63 && now_us() - t0 > SPIN_US) return;
  }
}

// The same around a GPU job, until job seq has finished.
static void spin_until(uint64_t seq) {
  double t0 = now_us();
  for (int i = 0; atomic_load_explicit(&q_finished, memory_order_acquire) < seq; i++) {
    if (atomic_load_explicit(&q_state, memory_order_acquire) != Q_GPU) return;
    pause_cpu();
    if ((i & 63) == 63 && now_us() - t0 > SPIN_US) return;
  }
}

// "[4,256,576]" or "[576,576]^T" (last two axes swapped in memory), for the profile.
static const char *operand_text(const wk_operand *o, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = 0;
  for (int d = 0; d < o->ndim && n + 24 < cap; d++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? "," : "[", (long long)o->shape[d]);
  bool t = o->ndim >= 2 && o->stride[o->ndim - 1] != 1 && o->stride[o->ndim - 2] == 1;
  snprintf(buf + n, cap - n, "%s]%s", o->ndim ? "" : "[", t ? "^T" : "");
  return buf;
}

static void profile_line(const wk_plan *p, int k, const wk_step *st, double us) {
  char shapes[160] = "", b[48];
  size_t n = 0;
  for (int i = 0; i < st->nin && i < 3 && n < sizeof shapes; i++)
    n += (size_t)snprintf(shapes + n, sizeof shapes - n, "%s ", operand_text(&st->in[i], b, sizeof b));
  if (n < sizeof shapes) snprintf(shapes + n, sizeof shapes - n, "-> %s", operand_text(&st->out, b, sizeof b));
  fprintf(stderr, "wick profile %016llx step %2d %-16s %10.1f us  %s\n", (unsigned long long)p->hash, k,
          st->op == WK_STEP_FUSED_EW ? (st->chain > 0 ? "fused group" : "fused") : wk_ops[st->op].name, us, shapes);
}

// The end of the run of steps from k that k's backend replays as one unit (CUDA
// graphs), or k when there is none. Not while profiling: that times each step.
static int segment_end(wk_plan *p, int k, const wk_backend *be) {
  int e = k;
  if (!be || !be->run_segment || profiling()) return k;
  while (e < p->nsteps && p->steps[e].device == p->steps[k].device && be->capturable(&p->steps[e])) e++;
  if (e - k < 2 || (!p->segments && !(p->segments = calloc((size_t)p->nsteps, sizeof(void *))))) return k;
  return e;
}

// Enqueues j's steps. On a backend that defers completion (j->defer) the work stays in
// flight, its ticket for job_finish; otherwise (or after a failure) this waits for the
// devices j used, which report kernel faults there.
static wk_status job_launch(job *j) {
  bool used[WK_DEVICE_COUNT] = {0};
  wk_status s = WK_OK;
  j->launched = true;
  for (int k = 0; k < j->first_out; k++) {   // an input a failed job was to write: garbage
    const char *f = atomic_load(&j->hold[k]->failed);
    if (f) return wk_error(WK_ERR_STATE, "eval: an input comes from an evaluation that failed: %s", f);
  }
  if (j->defer) j->defer->defer_begin();
  for (int k = 0; k < j->plan->nsteps && !s; k++) {
    const wk_step *st = &j->plan->steps[k];
    if (st->chain < 0) continue; // runs inside its chain's head
    const wk_backend *be = wk_backend_get(st->device);
    int end = segment_end(j->plan, k, be);
    if (end > k) {
      s = be->run_segment(&j->plan->segments[k], st, end - k, j->slots);
      used[st->device] = true;
      k = end - 1;
      continue;
    }
    double t0 = profiling() ? now_us() : 0;
    s = be ? be->run(st, j->slots) : WK_ERR_DEVICE;
    used[st->device] = true;
    if (profiling()) {
      if (be && be->sync) be->sync();
      profile_line(j->plan, k, st, now_us() - t0);
    }
  }
  if (j->defer && (j->ticket = j->defer->defer_end()) && !s) return WK_OK;
  if (j->ticket) j->defer->finish(j->ticket);   // a failed launch: drained, its own error first
  j->ticket = 0;
  for (int d = 0; d < WK_DEVICE_COUNT; d++) {
    const wk_backend *be = used[d] ? wk_backend_get((wk_device)d) : NULL;
    wk_status e = be && be->sync ? be->sync() : WK_OK;
    if (!s) s = e;
  }
  return s;
}

// The rest of a launched job: its deferred work waited for (downloads completed,
// asynchronous errors reported).
static wk_status job_finish(job *j) {
  wk_status s = j->status;
  if (j->ticket) {
    wk_status e = j->defer->finish(j->ticket);
    j->ticket = 0;
    if (!s) s = e;
  }
  return s;
}

// Launches the job queued behind deferred job j while j runs: bind_ahead queued it (a
// GPU job of the same plan), and it runs on the same backend.
static void launch_ahead(const job *j) {
  pthread_mutex_lock(&q_mu);
  job *n = q_next;
  bool go = n && !n->launched && n->defer == j->defer && q_status == WK_OK;
  pthread_mutex_unlock(&q_mu);
  if (!go) return;
  n->status = job_launch(n);
  atomic_fetch_add(&stat_launched_ahead, 1);
}

// Waits for deferred job j, launching the job behind it as soon as it is queued.
static wk_status job_wait(job *j) {
  double t0 = now_us();
  while (!j->defer->ticket_done(j->ticket)) {
    launch_ahead(j);
    if (now_us() - t0 < SPIN_US) {
      pause_cpu();
    } else {
      struct timespec ts = {0, 20000};
      nanosleep(&ts, NULL);
    }
  }
  return job_finish(j);
}

// A failed job's outputs hold garbage: they say so to whoever reads them later.
static void job_fail_outputs(job *j, wk_status s) {
  if (!s) return;
  for (int k = j->first_out; k < j->nhold; k++) wk_buffer_fail(j->hold[k], wk_last_error());
}

static void job_free(job *j) {
  for (int k = 0; k < j->nhold; k++) wk_buffer_release(j->hold[k]);
  free(j->hold);
  free(j->slots);
  free(j);
}

static void *executor(void *arg) {
  (void)arg;
  pthread_mutex_lock(&q_mu);
  for (;;) {
    while (!q_job) pthread_cond_wait(&q_cv, &q_mu);
    job *j = q_job;
    pthread_mutex_unlock(&q_mu);
    if (!j->launched) j->status = job_launch(j);
    wk_status s = j->ticket ? job_wait(j) : j->status;
    job_fail_outputs(j, s);   // (before q_finished says it is done)
    bool gpu = j->gpu;
    pthread_mutex_lock(&q_mu);
    if (s && !q_status) {
      q_status = s;
      snprintf(q_message, sizeof q_message, "%s", wk_last_error());
    }
    atomic_store_explicit(&q_finished, j->seq, memory_order_release);
    j->next = q_done;
    q_done = j;
    q_job = q_next;   // the job queued behind it runs next, at once
    q_next = NULL;
    atomic_store_explicit(&q_state, !q_job ? Q_IDLE : q_job->gpu ? Q_GPU : Q_CPU, memory_order_release);
    pthread_cond_broadcast(&q_cv);
    if (gpu && !q_job) {
      pthread_mutex_unlock(&q_mu);
      spin_while(Q_IDLE);
      pthread_mutex_lock(&q_mu);
    }
  }
  return NULL;
}

// Frees the finished jobs (their holds). Call with q_mu held; unlocks it.
static void reap_unlock(void) {
  job *d = q_done;
  q_done = NULL;
  pthread_mutex_unlock(&q_mu);
  while (d) {
    job *next = d->next;
    job_free(d);
    d = next;
  }
}

wk_status wk_sync(void) {
  spin_while(Q_GPU);
  pthread_mutex_lock(&q_mu);
  while (q_job) pthread_cond_wait(&q_cv, &q_mu);
  wk_status s = q_status;
  q_status = WK_OK;
  reap_unlock();
  if (s) return wk_error(s, "asynchronous evaluation failed: %s", q_message);
  return WK_OK;
}

// The last job that reads or writes the buffers of ts' realized tensors.
static uint64_t last_job(int n, wk_tensor *const *ts) {
  uint64_t m = 0;
  for (int i = 0; i < n; i++)
    if (ts[i]->buf && ts[i]->buf->job > m) m = ts[i]->buf->job;
  return m;
}

// Whether the realized tensors of ts can be read now: no job in flight reads or writes
// their buffers, and no asynchronous failure waits to be reported (wk_sync reports it).
static bool settled(int n, wk_tensor *const *ts) {
  pthread_mutex_lock(&q_mu);
  bool ok = q_status == WK_OK && last_job(n, ts) <= q_finished;
  reap_unlock();
  return ok;
}

// Waits for the jobs that use ts' buffers (not for a job queued after them), or, after
// an asynchronous failure, for all of them (wk_sync, which reports it).
static wk_status wait_for(int n, wk_tensor *const *ts) {
  uint64_t seq = last_job(n, ts);
  spin_until(seq);
  pthread_mutex_lock(&q_mu);
  while (q_finished < seq && q_job && q_status == WK_OK) pthread_cond_wait(&q_cv, &q_mu);   // no job: all are done
  bool failed = q_status != WK_OK;
  reap_unlock();
  return failed ? wk_sync() : WK_OK;
}

// Runs j on this thread (no job is in flight) and frees it.
static wk_status job_run_here(job *j) {
  j->status = job_launch(j);
  wk_status s = job_finish(j);
  job_fail_outputs(j, s);
  atomic_store(&q_finished, j->seq);
  job_free(j);
  return s;
}

static wk_status job_submit(job *j) {
  pthread_mutex_lock(&q_mu);
  if (!q_started) {
    if (pthread_create(&q_thread, NULL, executor, NULL)) {
      pthread_mutex_unlock(&q_mu);
      return job_run_here(j);   // no thread: run inline
    }
    pthread_detach(q_thread);
    q_started = true;
  }
  if (q_job) q_next = j;   // bind_ahead made sure that the slot is free
  else q_job = j;
  atomic_store_explicit(&q_state, q_job->gpu ? Q_GPU : Q_CPU, memory_order_release);
  pthread_cond_broadcast(&q_cv);
  pthread_mutex_unlock(&q_mu);
  return WK_OK;
}

static bool pending(const wk_tensor *t) { return !t->buf; }

// The backend that runs every step of p, if it can defer completion (and steps are
// not being timed one by one). WICK_LAUNCH_AHEAD=0: never.
static const wk_backend *job_defer(const wk_plan *p) {
  static int on = -1;
  if (!wk_env_on("WICK_LAUNCH_AHEAD", &on) || profiling() || !p->nsteps) return NULL;
  for (int k = 1; k < p->nsteps; k++)
    if (p->steps[k].device != p->steps[0].device) return NULL;
  const wk_backend *be = p->steps[0].device != WK_CPU ? wk_backend_get(p->steps[0].device) : NULL;
  return be && be->defer_begin && be->defer_end && be->ticket_done && be->finish ? be : NULL;
}

// Drops the graph behind realized tensors: they become plain leaves.
static void detach(int n, wk_tensor *const *ts) {
  for (int i = 0; i < n; i++) {
    wk_tensor *t = ts[i];
    if (!t || !t->buf) continue;
    for (int q = 0; q < t->nin; q++) wk_tensor_free(t->in[q]);
    t->nin = 0;
  }
}

// Whether an asynchronous evaluation of plan p may be bound and queued behind the job in
// flight instead of waiting for it (a decode step fed ahead while the one before it
// runs): that job is a GPU job of the same plan, so its arenas are there and the GPU
// runs the two in stream order; the scalars are the same, so binding writes nothing the
// executor reads; and no job is queued yet. The executor then starts it as soon as
// the first is done, with no host work between them. WICK_BIND_AHEAD=0 turns it off.
static bool bind_ahead(const wk_plan *p, const wk_topo *g) {
  static int on = -1;
  if (!wk_env_on("WICK_BIND_AHEAD", &on)) return false;
  pthread_mutex_lock(&q_mu);
  bool ok = q_job && !q_next && q_job->plan == p && q_job->gpu && q_status == WK_OK;
  pthread_mutex_unlock(&q_mu);
  return ok && !patch_scalars((wk_plan *)p, g, false);
}

// The host work before a plan runs (the graph, its key and the plan lookup) overlaps the
// job in flight; the wait for it comes only before the plan's storage is bound (its arena
// and scalars are reused; bind_ahead says when that wait can go), before a compile (the
// cache may evict a plan), or when a target is realized already but a job in flight
// uses it.
static wk_status eval_impl(int n, wk_tensor *const *ts, bool async, bool cut) {
  wk_status s = WK_OK;
  int np = 0;
  if (n < 0 || (n && !ts)) return wk_error(WK_ERR_ARG, "eval: %d tensors%s", n, n < 0 ? "" : " at NULL");
  for (int i = 0; i < n; i++) {
    if (!wk_tensor_valid(ts[i], "eval")) return WK_ERR_ARG;
    if (!ts[i]->buf) np++;
  }
  if (!np) {
    if (!settled(n, ts)) s = wait_for(n, ts);
    for (int i = 0; i < n && !s; i++) {
      const char *f = atomic_load(&ts[i]->buf->failed);
      if (f) s = wk_error(WK_ERR_STATE, "eval: this tensor's evaluation failed: %s", f);
    }
    if (!s && cut) detach(n, ts);
    return s;
  }
  wk_topo g;
  if (!wk_topo_build(&g, n, ts, pending)) return wk_error(WK_ERR_OOM, "eval: out of memory");
  int *targets = malloc(sizeof(int) * (size_t)n);
  bool *seen = calloc((size_t)g.n + 1, sizeof *seen);   // a training step has ~1,000 targets
  int nt = 0;
  if (!targets || !seen) { free(targets); free(seen); wk_topo_free(&g); return wk_error(WK_ERR_OOM, "eval: out of memory"); }
  for (int i = 0; i < n; i++) {
    if (ts[i]->buf) continue;
    int idx = wk_topo_index(&g, ts[i]);
    if (idx >= 0 && !seen[idx]) seen[idx] = true, targets[nt++] = idx;   // (every target is in g)
  }
  free(seen);
  keybuf key = {0};
  int *rep = malloc(sizeof(int) * (size_t)(g.n + 1));
  if (!rep) { free(targets); wk_topo_free(&g); return wk_error(WK_ERR_OOM, "eval: out of memory"); }
  wk_graph_cse(&g, rep);
  key_build(&key, &g, rep, nt, targets);
  free(rep);
  if (key.oom) { free(key.b); free(targets); wk_topo_free(&g); return wk_error(WK_ERR_OOM, "eval: out of memory"); }
  uint64_t h = key_hash(key.b, key.n);
  wk_plan *plan = cache_find(h, &key);
  if (plan) {
    stat_hits++;
    free(key.b);
  } else if ((s = wk_sync())) {
    free(key.b);
    free(targets);
    wk_topo_free(&g);
    return s;
  } else {
    plan = wk_plan_compile(&g, nt, targets);
    if (!plan) { free(key.b); free(targets); wk_topo_free(&g); return WK_ERR_STATE; }
    plan->hash = h;
    plan->key = key.b;
    plan->keylen = key.n;
    stat_compiles++;
    if (getenv("WICK_DUMP_GRAPH")) wk_plan_dump(plan, &g);
    cache_insert(plan);
  }
  free(targets);
  if (async && bind_ahead(plan, &g)) stat_ahead++;
  else if ((s = wk_sync())) { wk_topo_free(&g); return s; }
  patch_scalars(plan, &g, true);
  last_plan = plan;
  if ((s = plan_arenas(plan))) { wk_topo_free(&g); return s; }
  job *j = calloc(1, sizeof *j);
  wk_buffer **outs = calloc((size_t)plan->nouts + 1, sizeof *outs);
  if (!j || !outs || !(j->slots = calloc((size_t)plan->nslots + 1, sizeof(void *))) ||
      !(j->hold = calloc((size_t)(plan->nleaves + plan->nouts) + 1, sizeof(wk_buffer *)))) {
    if (j) { free(j->slots); free(j); }
    free(outs);
    wk_topo_free(&g);
    return wk_error(WK_ERR_OOM, "eval: out of memory");
  }
  j->plan = plan;
  j->seq = ++q_submitted;
  j->defer = job_defer(plan);
  for (int k = 0; k < plan->nsteps && !j->gpu; k++) j->gpu = plan->steps[k].device != WK_CPU;
  for (int k = 0; k < plan->nleaves; k++) {
    wk_tensor *t = g.nodes[plan->leaf_nodes[k]];
    if (t->device == WK_CPU && t->buf->job > atomic_load(&q_finished))
      j->defer = NULL;   // reads host data a job in flight may still write: no launch ahead of it
    j->slots[k] = (char *)t->buf->data + t->offset * (int64_t)wk_dtype_size(t->dtype);
    j->hold[j->nhold++] = t->buf;
    t->buf->refcount++;
    t->buf->job = j->seq;   // read, or written in place
  }
  j->first_out = j->nhold;
  for (int o = 0; o < plan->nouts; o++) {
    outs[o] = wk_buffer_alloc(g.nodes[plan->outs[o].node]->device, plan->outs[o].bytes);
    if (!outs[o]) {
      for (int q = 0; q < o; q++) wk_buffer_release(outs[q]);
      free(outs);
      job_free(j);
      wk_topo_free(&g);
      return WK_ERR_OOM;
    }
    j->slots[plan->outs[o].slot] = outs[o]->data;
    outs[o]->job = j->seq;
    outs[o]->refcount++;   // held until the job is freed, even if its tensors go first
    j->hold[j->nhold++] = outs[o];
  }
  int first_arena = plan->nslots - plan->narena;
  for (int k = 0; k < plan->narena; k++)
    j->slots[first_arena + k] = (char *)plan->arena[plan->arena_dev[k]] + plan->arena_off[k];
  // attach storage to the targets now: their data is valid once the job is done
  for (int k = 0; k < plan->ntargets; k++) {
    wk_tensor *t = g.nodes[plan->target_node[k]];
    int o = plan->target_out[k];
    wk_buffer *b;
    if (o >= 0) b = outs[o];
    else b = g.nodes[plan->leaf_nodes[-1 - o]]->buf;
    b->refcount++;
    t->buf = b;
  }
  if (async) {
    s = job_submit(j);
  } else {
    s = job_run_here(j);
  }
  // after submitting: freeing the graph behind the targets (a decode step's: some 500
  // nodes) overlaps the job instead of delaying it; the job holds what it uses
  if (cut) detach(n, ts);
  for (int o = 0; o < plan->nouts; o++) wk_buffer_release(outs[o]);
  free(outs);
  wk_topo_free(&g);
  return s;
}

// Explicit evaluation detaches (so that, say, updated parameters don't chain
// every earlier step's graph); implicit evaluation (eager mode, reading data)
// keeps the graph, so gradients can still be taken through those tensors.
wk_status wk_eval_internal(int n, wk_tensor *const *ts) { return eval_impl(n, ts, false, false); }
wk_status wk_eval(int n, wk_tensor *const *ts) { return eval_impl(n, ts, false, true); }
wk_status wk_eval_async(int n, wk_tensor *const *ts) { return eval_impl(n, ts, true, true); }
