// Plan replay as CUDA graphs: a run of a cached plan's CUDA steps is captured once
// (stream capture) and later evaluations launch it as one graph.
//
// What a step's kernels see besides the plan's structure are the slot pointers
// (leaves, outputs and arena, bound per evaluation) and the scalar attributes
// patched into the plan (learning rate, bias corrections, clip factor, seeds).
// The elementwise programs' scalars (add/mul/pow_scalar, arange, rand, dropout:
// wkc_rt_reads) live in a device table of the run's: the graph's first node copies
// it from pinned staging that the host fills before each launch, and the captured
// kernels read it through a pointer, so a training step whose learning rate and
// bias corrections change every step replays as it is. The other scalars (norm
// eps, RoPE theta, attention and LoRA scales: per-model constants) and the slot
// pointers are baked into the captured kernel parameters, so before each replay
// every launch unit (a step, or a row chain with its members) compares the
// pointers and scalars it was captured with against the current ones:
//  - all equal: launch the graph as it is;
//  - a few units changed: capture just those units again and swap them into the
//    instantiated graph (cudaGraphExecChildGraphNodeSetParams: each unit is a child
//    graph node, so a change touches one node, and the graph is not re-instantiated);
//  - many changed, or only scalars: launch step by step (patching would cost more
//    than it saves: the host time of both, per unit, is measured as they run);
//  - new pointers of small slots: relocate those slots (below) and capture again.
// That is the patchable form. By default (WICK_CUDA_PDL) a variant is instead one
// stream capture of all its units, so that kernels launched as programmatic
// dependents (wkc_launch) get PDL edges to the kernel before them and start while it
// runs (wkc_pdl_const: which bytes they may read before their wait). Such a graph has
// no child node per unit to swap: a changed pointer set is captured again as another
// variant. Child graphs remain for WICK_CUDA_PDL=0, the tests' forced patching, and a
// run whose one-capture build failed.
// Evaluations mostly recur with the same pointers: the caching allocator hands a
// freed output's block to the next evaluation's output, so each run keeps a few
// variants captured with different pointer sets. A training step is the exception:
// its parameters, gradients and AdamW moments share size classes, and the blocks
// they get drift from step to step without recurring. So a slot seen at a new
// address (and no larger than RELOC_MAX) is relocated: the graphs see it at a
// fixed block of the run's own ("home"), and every launch copies it in from where
// it is now before the units (one kernel for all such slots, from a table the
// host stages with the scalars; not a slot the units overwrite before they read it)
// and copies it back out after them if the units write it. That costs a device
// copy of the moved slots only (the adapter's tensors, not the base weights); a run
// whose slots alias one another with a relocated one among them launches step by
// step. The first capture already relocates what moved since the first evaluation,
// so a decode step (its token ids and outputs alternate between two buffers) is
// captured once.
//
// Scratch that steps allocate while being captured is kept alive with the graph
// (the replay reuses its addresses). Small uploads inside a run (a decode step's
// token ids and positions, made on the host each step) go through the run's "head":
// one pinned block the host fills before each launch with the run-time scalars, the
// copy table and the uploads' bytes, copied to its device twin by the graph's one
// copy node. The uploads the planner put ahead of every kernel (compile_schedule.c) are then
// done by a kernel from the head's table; a copy node between kernels held the rest
// of a graph back until the host's cudaGraphLaunch returned (190 us a decode token
// under CUPTI tracing, H100). An upload after a kernel is captured as a copy from the
// head. So the graph never reads pageable memory, and the host tensor may live at a
// new address every step. Downloads and large uploads are never handed here; a
// capture that fails anyway (a host sync inside a step, say) makes the run launch
// step by step from then on.
// WICK_CUDA_GRAPHS=0 turns replay off.
#include <limits.h>
#include <stdio.h>
#include <algorithm>
#include <time.h>
#include <new>
#include <unordered_map>
#include "cuda_internal.h"
#include "rtc.h"
#include "../../engine/plan.h"   // the tails after outputs

namespace {
const int VARIANTS = 3;        // pointer sets remembered per run of steps
const size_t RELOC_MAX = 4u << 20;     // a moved slot up to this many bytes is relocated
// At most this many bytes of homes per run (WICK_CUDA_RELOC_MB overrides): every
// tensor of a LoRA step's adapter, its gradients' sums and AdamW moments moves each step,
// 210 MB in and out for Qwen2.5-0.5B's all-linear r=16 adapter. A run that cannot
// relocate all of its moved slots launches step by step (that step: ~4,700 launches,
// 120 ms a step at 64 MB against 81 ms of kernels).
size_t reloc_total(void) {
  static size_t v = 0;
  if (!v) {
    const char *e = getenv("WICK_CUDA_RELOC_MB");
    v = (size_t)(e && atoll(e) > 0 ? atoll(e) : 1024) << 20;
  }
  return v;
}
const int REBUILD_AFTER = 8;   // step-by-step runs in a row with new pointers before a variant is replaced
const size_t STAGE_MAX = 1 << 20; // uploads up to this many bytes are staged into the graph

struct USpan {                 // bytes [lo, hi) of a slot a unit writes; ok: known
  int slot;
  int64_t lo, hi;
  bool ok;
};

struct Unit {                  // one launch unit: a step, or a row chain's head and its members
  int first, len;
  std::vector<int> slots;      // the slots its kernels read or write on the device
  bool upload = false;         // a small host -> device transfer, staged in the head
  bool folded = false;         // an upload ahead of every kernel unit: the head's copies do it
  size_t bytes = 0, off = 0;   // an upload's bytes, at head offset off (pinned stage and device twin)
  std::vector<USpan> writes;   // a kernel unit's outputs (wkc_pdl_prior; none for an upload)
};

// Where the units touch a slot, in bytes from its base; ok: every view of it has
// an element size and no negative stride (its span is known).
struct Extent {
  int64_t lo = INT64_MAX, hi = 0;
  int64_t wlo = 0, whi = 0;    // the widest dense write
  bool ok = true, written = false;
  bool read_first = false;     // some read is not covered by a dense write before it
  bool full() const { return wlo <= lo && whi >= hi; }  // the units overwrite all of it
};

struct Copy {                  // one relocated slot's copy, in or out (the device table)
  char *dst;
  const char *src;
  unsigned long long bytes;
};

struct Node {
  cudaGraphNode_t node = NULL; // its child graph node
  std::vector<void *> keep;    // scratch its kernels use
  std::vector<unsigned char> scalars;
};

struct Variant {
  bool flat = false;           // one capture of all units (PDL edges; no child nodes to patch)
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  std::vector<Node> nodes;     // per unit
  std::vector<void *> slots;   // slot pointers it was captured with
  bool arms = false;           // a kernel in it may set the device error record
  unsigned long long used = 0;
};

struct Segment {
  std::vector<Unit> units;
  // run-time scalars of the units' programs: instruction rt[j] at rt_dev[j]
  std::vector<const wk_ew_instr *> rt;
  std::unordered_map<const wk_ew_instr *, int> rt_index;
  // the head, pinned (stage) and on the device: [rt scalars | copy table: in, folded
  // uploads, out | uploads' bytes]; rt_* and cp_* point into it, and an upload's bytes
  // lie at its unit's off
  char *head_stage = NULL, *head_dev = NULL;
  size_t head_bytes = 0;
  // recorded when a launch's copy of the head is done: the host refills the stage for
  // the next launch only after it (the executor may launch a step while one runs)
  cudaEvent_t head_copied = NULL;
  int nup = 0;                 // folded uploads
  unsigned long long up_max = 0; // the largest
  DRt *rt_dev = NULL, *rt_stage = NULL;
  int nslots = 0;              // 1 + the largest slot index the units use
  std::vector<Extent> ext;     // per slot
  std::vector<int> used;       // the slots the units use, once each
  // relocation: home[s] is where the graphs see slot s (NULL: where it is)
  std::vector<void *> home;
  std::vector<void *> eff;     // this evaluation's slot pointers as the graphs see them
  std::vector<void *> first;   // the first evaluation's slot pointers, until the first capture
  size_t home_bytes = 0;
  std::vector<int> copy_in, copy_out; // relocated slots copied in before the units / out after them
  Copy *cp_dev = NULL, *cp_stage = NULL;
  unsigned long long cp_max = 0; // the largest copy
  int uses = 0, streak = 0;
  bool broken = false;         // a capture failed: step by step from now on
  bool no_flat = false;        // a one-capture build failed: child graphs from now on
  Variant *v[VARIANTS] = {};
};

wk_cuda_graph_stats g_stats;
bool g_fail_next;
unsigned long long g_clock;
// Host microseconds per unit, running averages: launching a unit step by step, and
// re-capturing and swapping it into a graph (a first guess until it has been timed).
double g_direct_us = 4, g_patch_us = 20;
bool g_always_patch;   // tests: patch whatever the costs
const Segment *g_capturing;   // the run whose unit is being captured (wkc_rt_scalars)
// While a run is captured as one graph: the bytes its units write (at the addresses
// the graph sees), which no kernel may read before its PDL wait; unknown: some
// write's span is not known, so nothing may.
bool g_pdl;
std::vector<std::pair<uintptr_t, uintptr_t>> g_written;
bool g_written_unknown;
// For wkc_pdl_prior: what the kernel units captured before the current one write.
std::vector<std::pair<uintptr_t, uintptr_t>> g_prior;
bool g_prior_unknown;
// Set while a one-capture build's first kernel is to come: it is launched with a full
// edge to the head's nodes (wkc_pdl_head_edge), so all they write is in place before
// any unit's kernel starts.
bool g_head_edge;

bool overlaps(const std::vector<std::pair<uintptr_t, uintptr_t>> &spans, const void *p, size_t bytes) {
  const uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
  for (const auto &w : spans)
    if (lo < w.second && w.first < hi) return true;
  return false;
}
}

static bool pdl_enabled(void) {
  static int on = -1;
  return wk_env_on("WICK_CUDA_PDL", &on);
}

void wkc_pdl_launched(void) { g_stats.pdl++; }
void wkc_early_launched(void) { g_stats.early++; }

bool wkc_pdl_const(const void *p, size_t bytes) { return g_pdl && !g_written_unknown && !overlaps(g_written, p, bytes); }
bool wkc_pdl_prior(const void *p, size_t bytes) { return g_pdl && !g_prior_unknown && !overlaps(g_prior, p, bytes); }
bool wkc_pdl_head_edge(void) {
  const bool first = g_head_edge;
  g_head_edge = false;
  return first;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}
static void average(double *avg, double total, size_t n) {
  if (n) *avg = 0.8 * *avg + 0.2 * total / (double)n;
}

extern "C" void wk_cuda_graph_stats_get(wk_cuda_graph_stats *out) { *out = g_stats; }
extern "C" void wk_cuda_graph_fail_next_capture(void) { g_fail_next = true; }
extern "C" void wk_cuda_graph_always_patch(int on) { g_always_patch = on != 0; }

static bool is_upload(const wk_step *s) {
  return s->op == WK_OP_TRANSFER && s->attrs.i[0] == WK_CUDA && s->attrs.i[1] == WK_CPU;
}
static size_t upload_bytes(const wk_step *s) { return wkc_nbytes(&s->out); }

bool wkc_capturable(const wk_step *s) {
  if (s->device != WK_CUDA) return false;
  if (is_upload(s)) return upload_bytes(s) <= STAGE_MAX;
  // a download ends in a host sync (the host may read it next): launched on its own
  return s->op != WK_OP_TRANSFER || (s->attrs.i[0] == WK_CUDA && s->attrs.i[1] == WK_CUDA);
}

const DRt *wkc_rt_scalars(const wk_ew_instr *in) {
  if (!g_capturing) return NULL;
  auto it = g_capturing->rt_index.find(in);
  return it == g_capturing->rt_index.end() ? NULL : g_capturing->rt_dev + it->second;
}

// ---- units and their bindings ----
static void add_slot(Unit &u, int slot, int *nslots) {
  if (slot < 0) return;
  u.slots.push_back(slot);
  if (slot >= *nslots) *nslots = slot + 1;
}

// The bytes operand o spans from its slot's base, [*lo, *hi) (empty: no element);
// false: not known (a negative stride or offset, a quantized dtype). *dense: one run.
static bool operand_span(const wk_operand *o, int64_t *lo, int64_t *hi, bool *dense) {
  int64_t span = 0, n = 1, st = 1;
  bool ok = !wk_dtype_is_quantized(o->dtype) && o->offset >= 0;
  *dense = true;
  *lo = *hi = 0;
  for (int d = o->ndim - 1; d >= 0; d--) {
    n *= o->shape[d];
    if (o->stride[d] < 0) ok = false;
    if (o->shape[d] > 1) span += (o->shape[d] - 1) * o->stride[d];
    if (o->shape[d] != 1 && o->stride[d] != st) *dense = false;
    st *= o->shape[d];
  }
  if (!ok || n == 0) return ok;
  const int64_t es = (int64_t)wkc_esize(o->dtype);
  *lo = o->offset * es, *hi = (o->offset + span + 1) * es;
  return true;
}

static void extent_add(Segment *sg, const wk_operand *o, bool write) {
  if (o->slot < 0) return;
  if ((int)sg->ext.size() <= o->slot) sg->ext.resize((size_t)o->slot + 1);
  Extent &e = sg->ext[o->slot];
  if (write) e.written = true;
  int64_t lo, hi;
  bool dense;
  if (!operand_span(o, &lo, &hi, &dense)) e.ok = false;
  if (!write && (!e.ok || lo < e.wlo || hi > e.whi)) e.read_first = true;
  if (!e.ok || hi == lo) return;
  if (write && dense && hi - lo > e.whi - e.wlo) e.wlo = lo, e.whi = hi;
  if (lo < e.lo) e.lo = lo;
  if (hi > e.hi) e.hi = hi;
}

// A kernel unit writes o (wkc_pdl_prior: the units after it see these bytes as written).
static void unit_write(Unit &u, const wk_operand *o) {
  if (o->slot < 0) return;
  USpan w;
  bool dense;
  w.slot = o->slot;
  w.ok = operand_span(o, &w.lo, &w.hi, &dense);
  u.writes.push_back(w);
}

// Steps that keep data after their output in its own buffer (plan.h): an SDPA's row
// statistics, a LINEAR_CE's dx; and the backward steps that read it there. The tail is
// part of the slot's extent, so a relocated slot's home holds it too. *t: the buffer
// from the output's start to the tail's end; false: s has none.
static bool tail_operand(const wk_step *s, wk_operand *t, bool *write) {
  const wk_operand *o = NULL;
  size_t bytes = 0;
  *write = false;
  if ((s->op == WK_OP_SDPA || s->op == WK_OP_SDPA_BWD) && s->attrs.i[2]) {
    *write = s->op == WK_OP_SDPA;
    o = *write ? &s->out : &s->in[3];
    const int64_t D = o->ndim ? o->shape[o->ndim - 1] : 0;
    bytes = wk_sdpa_lse_end(wkc_nbytes(o), D ? wkc_numel(o) / D : 0);
  } else if ((s->op == WK_OP_LINEAR_CE || s->op == WK_OP_LINEAR_CE_BWD) && s->attrs.i[2]) {
    *write = s->op == WK_OP_LINEAR_CE;
    if (!*write && s->nin < 5) return false;
    o = *write ? &s->out : &s->in[4];
    bytes = wk_linear_ce_dx_end(wkc_nbytes(o), wkc_numel(&s->in[0]));
  }
  if (!o || !wkc_is_dense(o)) return false;
  *t = *o;   // in 2-byte units
  t->dtype = WK_BF16;
  t->ndim = 1;
  t->shape[0] = (int64_t)((bytes + 1) / 2);
  t->stride[0] = 1;
  t->offset = (int64_t)((size_t)o->offset * wkc_esize(o->dtype) / 2);
  return true;
}

// Host time spent building graphs (WICK_CUDA_GRAPH_STATS): capturing their units, and
// instantiating them.
static double g_capture_ms, g_instantiate_ms;

// WICK_CUDA_GRAPH_STATS=1: the counters on stderr at exit (how a workload replays).
static void print_stats(void) {
  fprintf(stderr, "wick: CUDA graphs: %llu captured, %llu replays, %llu units patched, %llu runs step by step, "
          "%llu failed captures, %llu PDL launches (%llu decode attention reading early), uploads: %llu in heads, "
          "%llu copy nodes; host time %.2f ms capturing, %.2f ms instantiating\n", g_stats.captures, g_stats.replays,
          g_stats.patched, g_stats.direct, g_stats.fallbacks, g_stats.pdl, g_stats.early, g_stats.folded, g_stats.copied,
          g_capture_ms, g_instantiate_ms);
  unsigned long long compiled, failed, loaded;
  double ms;
  wkc_rtc_counts(&compiled, &failed, &ms, &loaded);
  const char *dir = wkc_rtc_disk_dir();
  fprintf(stderr, "wick: NVRTC: %llu kernels compiled, %llu loaded from the disk cache (%s), %.2f ms; %llu failed\n",
          compiled, loaded, dir[0] ? dir : "off", ms, failed);
}

static size_t align16(size_t b) { return (b + 15) & ~(size_t)15; }

// (Re)allocates the head for the run's scalars, copy table and uploads; false when
// out of memory. The graphs bake head pointers in: a new head needs new variants.
static bool head_build(Segment *sg) {
  if (sg->head_stage) cudaFreeHost(sg->head_stage);
  if (sg->head_dev) cudaFree(sg->head_dev);
  sg->head_stage = sg->head_dev = NULL;
  const size_t ncp = sg->copy_in.size() + (size_t)sg->nup + sg->copy_out.size();
  const size_t rt_end = align16(sizeof(DRt) * sg->rt.size()), cp_end = rt_end + align16(sizeof(Copy) * ncp);
  size_t b = cp_end;
  for (Unit &u : sg->units)
    if (u.upload) u.off = b, b += align16(u.bytes);
  sg->head_bytes = b;
  if (!sg->head_copied && cudaEventCreateWithFlags(&sg->head_copied, cudaEventDisableTiming) != cudaSuccess) {
    cudaGetLastError();
    sg->head_copied = NULL;
    return false;
  }
  if (b && (cudaMallocHost((void **)&sg->head_stage, b) != cudaSuccess || cudaMalloc((void **)&sg->head_dev, b) != cudaSuccess)) {
    cudaGetLastError();
    return false;
  }
  sg->rt_stage = (DRt *)sg->head_stage, sg->rt_dev = (DRt *)sg->head_dev;
  sg->cp_stage = (Copy *)(sg->head_stage + rt_end), sg->cp_dev = (Copy *)(sg->head_dev + rt_end);
  return true;
}

static Segment *segment_new(const wk_step *steps, int n) {
  static bool stats_at_exit = getenv("WICK_CUDA_GRAPH_STATS") && atoi(getenv("WICK_CUDA_GRAPH_STATS")) > 0 &&
                              atexit(print_stats) == 0;
  (void)stats_at_exit;
  Segment *sg = new (std::nothrow) Segment;
  if (!sg) return NULL;
  for (int k = 0; k < n; k++) {
    if (steps[k].chain < 0) continue;
    Unit u;
    u.first = k;
    u.len = steps[k].chain > 0 ? steps[k].chain : 1;
    if (is_upload(&steps[k])) { // the graph reads the head, not the host tensor
      u.upload = true;
      u.bytes = upload_bytes(&steps[k]);
      u.folded = std::none_of(sg->units.begin(), sg->units.end(), [](const Unit &p) { return !p.upload; });
      sg->nup += u.folded;
      if (u.folded && u.bytes > sg->up_max) sg->up_max = u.bytes;
      add_slot(u, steps[k].out.slot, &sg->nslots);
      extent_add(sg, &steps[k].out, true);
      sg->units.push_back(u);
      continue;
    }
    for (int m = k; m < k + u.len && m < n; m++) {
      const wk_step *s = &steps[m];
      for (int q = 0; q < s->nin; q++) add_slot(u, s->in[q].slot, &sg->nslots), extent_add(sg, &s->in[q], false);
      for (int q = 0; q < s->npro; q++) add_slot(u, s->pro_in[q].slot, &sg->nslots), extent_add(sg, &s->pro_in[q], false);
      add_slot(u, s->out.slot, &sg->nslots);
      extent_add(sg, &s->out, true);
      unit_write(u, &s->out);
      wk_operand t;
      bool tw;
      if (tail_operand(s, &t, &tw)) {
        extent_add(sg, &t, tw);
        if (tw) unit_write(u, &t);
      }
      for (int q = 0; q < s->prog.n; q++)
        if (wkc_rt_reads(&s->prog.code[q])) {
          sg->rt_index[&s->prog.code[q]] = (int)sg->rt.size();
          sg->rt.push_back(&s->prog.code[q]);
        }
    }
    sg->units.push_back(u);
  }
  sg->ext.resize((size_t)sg->nslots);
  sg->home.assign((size_t)sg->nslots, NULL);
  std::vector<char> seen((size_t)sg->nslots, 0);
  for (const Unit &u : sg->units)
    for (int s : u.slots)
      if (!seen[s]) seen[s] = 1, sg->used.push_back(s);
  if (!head_build(sg)) sg->broken = true;   // no head: this run launches step by step
  return sg;
}

// The attributes baked into a unit's captured kernels, in order: each step's own
// (not a fused elementwise step's: its kernel reads only its program's) and its
// program's instructions', less those read from the run-time scalar table.
template <class F> static void baked_attrs(const wk_step *steps, const Unit &u, F each) {
  for (int k = u.first; k < u.first + u.len; k++) {
    const wk_step *s = &steps[k];
    if (s->op != WK_STEP_FUSED_EW) each(&s->attrs);
    for (int q = 0; q < s->prog.n; q++)
      if (!wkc_rt_reads(&s->prog.code[q])) each(&s->prog.code[q].attrs);
  }
}

static void scalars_of(const wk_step *steps, const Unit &u, std::vector<unsigned char> *out) {
  out->clear();
  baked_attrs(steps, u, [&](const wk_attrs *a) {
    out->insert(out->end(), (const unsigned char *)a, (const unsigned char *)(a + 1));
  });
}

static bool same_scalars(const wk_step *steps, const Unit &u, const std::vector<unsigned char> &have) {
  size_t off = 0;
  bool same = true;
  baked_attrs(steps, u, [&](const wk_attrs *a) {
    same = same && off + sizeof *a <= have.size() && !memcmp(&have[off], a, sizeof *a);
    off += sizeof *a;
  });
  return same && off == have.size();
}

static bool same_pointers(const Unit &u, const Variant *v, void *const *slots) {
  for (int s : u.slots)
    if (v->slots[s] != slots[s]) return false;
  return true;
}

// ---- capture ----
static void release(std::vector<void *> *keep) {
  for (void *p : *keep) wkc_tmp_free(p);
  keep->clear();
}

// An upload's device copy: from the head's device twin to the step's destination (none
// for a folded one: the head's copies do it). Not from the pinned stage: the host
// refills it for the next launch once head_copied is recorded, while this copy may be
// yet to run. A copy node, not a kernel: the kernel after a copy node waits for it,
// while one after a kernel may start early (PDL) and read the destination before it is
// written (uploads record no writes).
static wk_status upload_from_head(const Segment *sg, const Unit &u, const wk_step *s, void *const *slots) {
  if (!u.bytes || u.folded) return WK_OK;
  cudaError_t e = cudaMemcpyAsync(wkc_ptr(&s->out, slots), sg->head_dev + u.off, u.bytes, cudaMemcpyDeviceToDevice,
                                  wkc_stream());
  return e == cudaSuccess ? WK_OK : wk_error(WK_ERR_DEVICE, "cuda: staged upload of %zu bytes: %s", u.bytes, cudaGetErrorString(e));
}

// Fills the head: the uploads' bytes from the host tensors of this evaluation, the
// run-time scalars from the plan's instructions, the copy table (a folded upload's
// destination where the graphs see it: sg->eff). The launch before has copied it
// (launch waits for head_copied).
static void fill_stages(const Segment *sg, const wk_step *steps, void *const *slots) {
  for (size_t j = 0; j < sg->rt.size(); j++) {
    const wk_attrs *a = &sg->rt[j]->attrs;
    sg->rt_stage[j] = DRt{a->f[0], a->f[1], a->u};
  }
  Copy *c = sg->cp_stage;   // the table: copies in, folded uploads, copies out
  auto home_copy = [&](int s, bool in) {
    const Extent &e = sg->ext[s];
    char *at = (char *)slots[s] + e.lo, *home = (char *)sg->home[s] + e.lo;
    *c++ = in ? Copy{home, at, (unsigned long long)(e.hi - e.lo)} : Copy{at, home, (unsigned long long)(e.hi - e.lo)};
  };
  for (int s : sg->copy_in) home_copy(s, true);
  for (const Unit &u : sg->units) {
    if (!u.upload) continue;
    const wk_step *s = &steps[u.first];
    if (u.bytes) memcpy(sg->head_stage + u.off, wkc_ptr(&s->in[0], slots), u.bytes);
    if (u.folded) *c++ = Copy{wkc_ptr(&s->out, sg->eff.data()), sg->head_dev + u.off, (unsigned long long)u.bytes};
  }
  for (int s : sg->copy_out) home_copy(s, false);
}

// ---- relocation ----
// The copies of a table of relocated slots: block row y walks entries y, y + gridDim.y, ...
__global__ void k_copies(const Copy *tab, int n) {
  const unsigned long long i0 = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x,
                           step = (unsigned long long)gridDim.x * blockDim.x;
  for (int k = blockIdx.y; k < n; k += gridDim.y) {
    const Copy c = tab[k];
    if (!(((uintptr_t)c.dst | (uintptr_t)c.src | c.bytes) & 15)) {
      for (unsigned long long i = i0; i < c.bytes / 16; i += step) ((uint4 *)c.dst)[i] = ((const uint4 *)c.src)[i];
    } else {
      for (unsigned long long i = i0; i < c.bytes; i += step) c.dst[i] = c.src[i];
    }
  }
}

static dim3 copies_grid(int n, unsigned long long max_bytes) {
  unsigned long long blocks = (max_bytes / 16 + 255) / 256;
  return dim3((unsigned)(blocks < 1 ? 1 : blocks > 64 ? 64 : blocks), (unsigned)(n < 1024 ? n : 1024));
}

// Adds a node running the copies tab[0..n) after *prev (which becomes it).
static bool add_copies(cudaGraph_t g, cudaGraphNode_t *prev, const Copy *tab, int n, unsigned long long max_bytes) {
  if (!n) return true;
  cudaKernelNodeParams kp = {};
  void *args[2] = {(void *)&tab, (void *)&n};
  kp.func = (void *)k_copies;
  kp.gridDim = copies_grid(n, max_bytes);
  kp.blockDim = dim3(256);
  kp.kernelParams = args;
  cudaGraphNode_t node;
  if (cudaGraphAddKernelNode(&node, g, *prev ? prev : NULL, *prev ? 1 : 0, &kp) != cudaSuccess) return false;
  *prev = node;
  return true;
}

// Relocates the slots the units use that moved since an evaluation that saw them at
// prev, where they can be (known span, small enough, aligned as cudaMalloc aligns).
// True if any was. A slot the units overwrite before reading it is not copied in.
static bool relocate(Segment *sg, void *const *prev, void *const *eff, void *const *slots) {
  bool any = false;
  for (int s : sg->used) {
    const Extent &e = sg->ext[s];
    size_t bytes = e.hi > e.lo ? (size_t)e.hi : 0;
    if (sg->home[s] || prev[s] == eff[s] || !e.ok || !bytes || bytes > RELOC_MAX || !slots[s] ||
        ((uintptr_t)slots[s] & 255) || sg->home_bytes + bytes > reloc_total())
      continue;
    if (cudaMalloc(&sg->home[s], bytes) != cudaSuccess) {
      cudaGetLastError();
      sg->home[s] = NULL;
      break;
    }
    sg->home_bytes += bytes;
    if (e.read_first || !e.full()) sg->copy_in.push_back(s);
    if (e.written) sg->copy_out.push_back(s);
    if ((unsigned long long)(e.hi - e.lo) > sg->cp_max) sg->cp_max = (unsigned long long)(e.hi - e.lo);
    any = true;
  }
  if (any && !head_build(sg)) sg->broken = true;   // no table for the copies: step by step from now on
  return any;
}

// Whether a relocated slot shares memory with another slot the units use, at this
// evaluation's addresses, where the units write some of it: the graph would see two
// copies where the steps see one memory. (Slots that alias but are only read, such
// as a tensor and a view of it bound as two leaves, read the same values either way.)
static bool aliased(const Segment *sg, void *const *slots) {
  if (sg->copy_in.empty() && sg->copy_out.empty()) return false;
  struct Span { uintptr_t lo, hi; bool moved, written; };
  std::vector<Span> sp;
  sp.reserve(sg->used.size());
  for (int s : sg->used) {
    const Extent &e = sg->ext[s];
    uintptr_t b = (uintptr_t)slots[s];
    bool ok = e.ok && e.hi > e.lo;
    sp.push_back({ok ? b + (uintptr_t)e.lo : b, ok ? b + (uintptr_t)e.hi : b + 1, sg->home[s] != NULL, e.written});
  }
  std::sort(sp.begin(), sp.end(), [](const Span &a, const Span &b) { return a.lo < b.lo; });
  // clusters of overlapping spans: one with a relocated slot and a write is aliased
  uintptr_t end = 0;
  bool moved = false, written = false;
  for (size_t k = 0; k < sp.size(); k++) {
    bool joins = k && sp[k].lo < end;
    if (!joins) moved = written = false;
    moved |= sp[k].moved;
    written |= sp[k].written;
    if (joins && moved && written) return true;
    if (sp[k].hi > end || !joins) end = sp[k].hi;
  }
  return false;
}

// Captures one unit's kernels into *g (scratch they use into *keep). False when the
// capture failed; the step-by-step path then runs the unit and reports real errors.
static bool capture_unit(const Segment *sg, const Unit &u, const wk_step *s, void *const *slots, cudaGraph_t *g,
                         std::vector<void *> *keep) {
  *g = NULL;
  wkc_capture_mode(keep);
  g_capturing = sg;
  cudaStream_t cs = wkc_stream();
  cudaError_t e = cudaStreamBeginCapture(cs, cudaStreamCaptureModeRelaxed);
  wk_status st = WK_OK;
  if (e == cudaSuccess) {
    st = u.upload ? upload_from_head(sg, u, s, slots) : wkc_dispatch(s, slots);
    if (g_fail_next) { // tests: what a host sync inside a step does to a capture
      g_fail_next = false;
      cudaStreamSynchronize(cs);
    }
    e = cudaStreamEndCapture(cs, g);
  }
  wkc_capture_mode(NULL);
  g_capturing = NULL;
  if (!st && e == cudaSuccess) return true;
  cudaGetLastError();
  if (*g) cudaGraphDestroy(*g);
  *g = NULL;
  release(keep);
  return false;
}

// The bytes the units write as the graph sees them (slots at eff), relocated slots'
// homes included (the copies in write them): g_written for wkc_pdl_const.
static void note_writes(const Segment *sg, void *const *eff) {
  g_written.clear();
  g_prior.clear();
  g_written_unknown = g_prior_unknown = false;
  for (int s : sg->used) {
    const Extent &e = sg->ext[s];
    if (!e.written && !sg->home[s]) continue;
    if (!e.ok || !eff[s]) g_written_unknown = true;
    else if (e.hi > e.lo) g_written.push_back({(uintptr_t)eff[s] + (uintptr_t)e.lo, (uintptr_t)eff[s] + (uintptr_t)e.hi});
  }
}

// After unit u is captured: a kernel unit's writes join g_prior. An upload records
// none: a folded one is done by the head, whose writes are in place before any unit's
// kernel starts (g_head_edge); another is a copy node, which the kernel after it waits
// for in full (no programmatic edge), and every later kernel starts after that one.
static void note_unit_writes(const Unit &u, void *const *eff) {
  for (const USpan &w : u.writes) {
    if (!w.ok || !eff[w.slot]) g_prior_unknown = true;
    else if (w.hi > w.lo) g_prior.push_back({(uintptr_t)eff[w.slot] + (uintptr_t)w.lo, (uintptr_t)eff[w.slot] + (uintptr_t)w.hi});
  }
}

// Captures all units into v->graph after node prev, as one stream capture, so that
// kernels launched as programmatic dependents (wkc_launch) get PDL edges to the
// kernels before them, then the copies out. *forced: a test made it fail.
static bool capture_flat(const Segment *sg, Variant *v, const wk_step *steps, void *const *slots, cudaGraphNode_t prev,
                         bool *forced) {
  wkc_capture_mode(&v->nodes[0].keep);
  cudaStream_t cs = wkc_stream();
  cudaError_t e = cudaStreamBeginCaptureToGraph(cs, v->graph, prev ? &prev : NULL, NULL, prev ? 1 : 0,
                                                cudaStreamCaptureModeRelaxed);
  wk_status st = WK_OK;
  if (e == cudaSuccess) {
    g_capturing = sg;
    g_pdl = true;
    g_head_edge = prev != NULL;
    note_writes(sg, slots);
    for (size_t i = 0; !st && i < sg->units.size(); i++) {
      const Unit &u = sg->units[i];
      wkc_capture_mode(&v->nodes[i].keep);
      st = u.upload ? upload_from_head(sg, u, &steps[u.first], slots) : wkc_dispatch(&steps[u.first], slots);
      note_unit_writes(u, slots);
      scalars_of(steps, u, &v->nodes[i].scalars);
    }
    g_pdl = g_head_edge = false;
    g_capturing = NULL;
    const int nin = (int)sg->copy_in.size(), nout = (int)sg->copy_out.size();
    if (!st && nout) k_copies<<<copies_grid(nout, sg->cp_max), 256, 0, cs>>>(sg->cp_dev + nin + sg->nup, nout);
    if ((*forced = g_fail_next)) { // tests: what a host sync inside a step does to a capture
      g_fail_next = false;
      cudaStreamSynchronize(cs);
    }
    cudaGraph_t g = v->graph;
    e = cudaStreamEndCapture(cs, &g);
  }
  wkc_capture_mode(NULL);
  return !st && e == cudaSuccess;
}

static void variant_free(Variant *v) {
  if (!v) return;
  if (v->exec) cudaGraphExecDestroy(v->exec);
  if (v->graph) cudaGraphDestroy(v->graph);
  for (Node &n : v->nodes) release(&n.keep);
  delete v;
}

// Captures every unit, as one capture (PDL) or as a chain of child graphs (patchable;
// WICK_CUDA_PDL=0, the tests' always-patch, or after a one-capture build failed), and
// instantiates it; NULL on failure.
static Variant *variant_build(Segment *sg, const wk_step *steps, void *const *slots) {
  Variant *v = new (std::nothrow) Variant;
  if (!v) return NULL;
  v->flat = pdl_enabled() && !g_always_patch && !sg->no_flat;
  const double t_build = now_us();
  bool armed = wkc_dev_err_swap(false);
  bool ok = cudaGraphCreate(&v->graph, 0) == cudaSuccess;
  v->nodes.resize(sg->units.size());
  cudaGraphNode_t prev = NULL;
  if (ok && sg->head_bytes) { // first: the head, then the copies in, then the folded uploads
    cudaGraphNode_t copied;
    ok = cudaGraphAddMemcpyNode1D(&prev, v->graph, NULL, 0, sg->head_dev, sg->head_stage, sg->head_bytes,
                                  cudaMemcpyHostToDevice) == cudaSuccess &&
         cudaGraphAddEventRecordNode(&copied, v->graph, &prev, 1, sg->head_copied) == cudaSuccess;
  }
  int nin = (int)sg->copy_in.size(), nout = (int)sg->copy_out.size();
  ok = ok && add_copies(v->graph, &prev, sg->cp_dev, nin, sg->cp_max);
  ok = ok && add_copies(v->graph, &prev, sg->cp_dev + nin, sg->nup, sg->up_max);
  bool forced = false;
  if (v->flat) ok = ok && capture_flat(sg, v, steps, slots, prev, &forced);
  for (size_t i = 0; ok && !v->flat && i < sg->units.size(); i++) {
    cudaGraph_t g;
    Node &n = v->nodes[i];
    if (sg->units[i].folded) continue;   // the head's copies do it: no node
    ok = capture_unit(sg, sg->units[i], &steps[sg->units[i].first], slots, &g, &n.keep);
    ok = ok && cudaGraphAddChildGraphNode(&n.node, v->graph, prev ? &prev : NULL, prev ? 1 : 0, g) == cudaSuccess;
    if (g) cudaGraphDestroy(g);
    prev = n.node;
    if (ok) scalars_of(steps, sg->units[i], &n.scalars);
  }
  if (!v->flat) ok = ok && add_copies(v->graph, &prev, sg->cp_dev + nin + sg->nup, nout, sg->cp_max); // last: the copies out
  const double t_inst = now_us();
  g_capture_ms += (t_inst - t_build) * 1e-3;
  ok = ok && cudaGraphInstantiate(&v->exec, v->graph, 0) == cudaSuccess;
  g_instantiate_ms += (now_us() - t_inst) * 1e-3;
  v->arms = wkc_dev_err_swap(armed);
  if (!ok) {
    const bool retry = v->flat && !forced;
    variant_free(v);   // (a graph a failed capture invalidated is freed already: that error too is cleared)
    cudaGetLastError();
    if (!retry) return NULL;
    sg->no_flat = true;   // PDL edges or one-capture builds unsupported here: child graphs
    return variant_build(sg, steps, slots);
  }
  v->slots.assign(slots, slots + sg->nslots);
  g_stats.captures++;
  for (const Unit &u : sg->units)
    if (u.upload) (u.folded ? g_stats.folded : g_stats.copied)++;
  return v;
}

// Re-captures unit i with the current bindings and swaps it into v's executable graph.
static bool variant_patch(Variant *v, const Segment *sg, int i, const wk_step *steps, void *const *slots) {
  std::vector<void *> keep;
  cudaGraph_t g;
  bool armed = wkc_dev_err_swap(false);
  bool ok = capture_unit(sg, sg->units[i], &steps[sg->units[i].first], slots, &g, &keep);
  ok = ok && cudaGraphExecChildGraphNodeSetParams(v->exec, v->nodes[i].node, g) == cudaSuccess;
  if (g) cudaGraphDestroy(g);
  v->arms |= wkc_dev_err_swap(armed);
  if (!ok) {
    cudaGetLastError();
    release(&keep);
    return false;
  }
  release(&v->nodes[i].keep); // stream order: the graph's earlier launches are done with it first
  v->nodes[i].keep.swap(keep);
  scalars_of(steps, sg->units[i], &v->nodes[i].scalars);
  g_stats.patched++;
  return true;
}

// ---- running ----
// measure: time the launches (not on a run's first use, which pays one-time costs
// such as loading kernels).
static wk_status run_direct(const Segment *sg, const wk_step *steps, void *const *slots, bool measure = true) {
  g_stats.direct++;
  double t0 = now_us();
  for (const Unit &u : sg->units) {
    wk_status st = wkc_run(&steps[u.first], slots);
    if (st) return st;
  }
  if (measure) average(&g_direct_us, now_us() - t0, sg->units.size());
  return WK_OK;
}

static wk_status launch(const Segment *sg, Variant *v, const wk_step *steps, void *const *slots) {
  if (sg->head_bytes) cudaEventSynchronize(sg->head_copied);   // the launch before has its copy of the stage
  fill_stages(sg, steps, slots);
  v->used = ++g_clock;
  if (v->arms) wkc_arm_dev_err();
  cudaError_t e = cudaGraphLaunch(v->exec, wkc_stream());
  wkc_set_last_kernel("a replayed CUDA graph of plan steps (WICK_CUDA_GRAPHS=0 launches them one by one)");
  if (e != cudaSuccess) return wk_error(WK_ERR_DEVICE, "cuda: launching a CUDA graph failed: %s", cudaGetErrorString(e));
  g_stats.replays++;
  return WK_OK;
}

// Units whose bindings differ from v's: *changed in all, *moved by pointers.
static void count_changes(const Segment *sg, const Variant *v, const wk_step *steps, void *const *slots, int *changed,
                          int *moved) {
  *changed = *moved = 0;
  for (size_t i = 0; i < sg->units.size(); i++) {
    if (sg->units[i].folded) continue;   // the head's table has its pointers at each launch
    bool p = same_pointers(sg->units[i], v, slots);
    *moved += !p;
    *changed += !p || !same_scalars(steps, sg->units[i], v->nodes[i].scalars);
  }
}

// Builds a variant into slot w (freeing what was there) and launches it.
static wk_status rebuild(Segment *sg, int w, const wk_step *steps, void *const *eff, void *const *slots) {
  variant_free(sg->v[w]);
  sg->v[w] = variant_build(sg, steps, eff);
  sg->streak = 0;
  if (sg->v[w]) return launch(sg, sg->v[w], steps, slots);
  sg->broken = true;
  g_stats.fallbacks++;
  return run_direct(sg, steps, slots);
}

wk_status wkc_run_segment(void **state, const wk_step *steps, int n, void *const *slots) {
  Segment *sg = (Segment *)*state;
  if (!sg && !(sg = segment_new(steps, n))) return wk_error(WK_ERR_OOM, "cuda: out of host memory for a CUDA graph");
  *state = sg;
  // a plan evaluated once pays no capture: the second evaluation captures
  if (!wkc_graphs_enabled() || sg->broken || sg->units.size() < 2 || ++sg->uses < 2 || aliased(sg, slots)) {
    if (sg->uses == 1) sg->first.assign(slots, slots + sg->nslots);
    return run_direct(sg, steps, slots, sg->uses > 1);
  }
  // the pointers as the graphs see them: relocated slots at their homes
  sg->eff.assign(slots, slots + sg->nslots);
  for (int s : sg->used)
    if (sg->home[s]) sg->eff[s] = sg->home[s];
  void *const *eff = sg->eff.data();
  int best = -1, changed = INT_MAX, moved = 0, empty = -1, stalest = 0;
  for (int w = 0; w < VARIANTS; w++) {
    if (!sg->v[w]) { if (empty < 0) empty = w; continue; }
    if (sg->v[stalest] == NULL || sg->v[w]->used < sg->v[stalest]->used) stalest = w;
    int c, m;
    count_changes(sg, sg->v[w], steps, eff, &c, &m);
    if (c < changed) best = w, changed = c, moved = m;
  }
  if (best >= 0 && changed == 0) return launch(sg, sg->v[best], steps, slots);
  // Slots at new addresses are relocated where they can be; the variants then see
  // them at their homes (all are captured again, once). The first capture already
  // relocates what moved since the first evaluation (a decode step's token ids and
  // outputs alternate between two buffers; a training step's tensors drift), rather
  // than capture a variant that the next evaluation would throw away.
  const bool first_capture = best < 0 && !sg->first.empty();
  const bool first_moved = first_capture && std::any_of(sg->used.begin(), sg->used.end(),
                                                        [&](int s) { return sg->first[s] != eff[s]; });
  void *const *prev = first_capture ? sg->first.data() : best >= 0 ? sg->v[best]->slots.data() : NULL;
  const bool relocated = (moved > 0 || first_moved) && !g_always_patch && relocate(sg, prev, eff, slots);
  if (first_capture) sg->first = std::vector<void *>();
  if (relocated) {
    for (Variant *&v : sg->v) variant_free(v), v = NULL;
    if (sg->broken) return run_direct(sg, steps, slots);
    for (int s : sg->used)
      if (sg->home[s]) sg->eff[s] = sg->home[s];
    return rebuild(sg, 0, steps, eff, slots);
  }
  // Patch only where it clearly pays, and not for new scalars alone (the elementwise
  // programs' scalars are read from device memory; the rest are per-model constants).
  bool worth_patching = (best < 0 || !sg->v[best]->flat) &&
                        (g_always_patch || (moved > 0 && 2 * changed * g_patch_us <= (double)sg->units.size() * g_direct_us));
  if (empty >= 0 && (best < 0 || (moved > 0 && !worth_patching))) return rebuild(sg, empty, steps, eff, slots); // a new pointer set
  if (worth_patching) {
    Variant *v = sg->v[best];
    double t0 = now_us();
    for (size_t i = 0; i < sg->units.size(); i++) {
      const Unit &u = sg->units[i];
      if (u.folded || (same_pointers(u, v, eff) && same_scalars(steps, u, v->nodes[i].scalars))) continue;
      if (!variant_patch(v, sg, (int)i, steps, eff)) return rebuild(sg, best, steps, eff, slots);
    }
    v->slots.assign(eff, eff + sg->nslots);
    sg->streak = 0;
    wk_status st = launch(sg, v, steps, slots);  // a launch after updates uploads them: part of the cost
    average(&g_patch_us, now_us() - t0, (size_t)changed);
    return st;
  }
  // new scalars alone come back changed next time too: only new pointers earn a rebuild
  if (moved > 0 && ++sg->streak >= REBUILD_AFTER) return rebuild(sg, stalest, steps, eff, slots);
  return run_direct(sg, steps, slots);
}

void wkc_segment_free(void *state) {
  Segment *sg = (Segment *)state;
  if (!sg) return;
  for (Variant *v : sg->v) variant_free(v);
  if (sg->head_stage) cudaFreeHost(sg->head_stage);
  if (sg->head_dev) cudaFree(sg->head_dev);
  if (sg->head_copied) cudaEventDestroy(sg->head_copied);
  for (void *h : sg->home)
    if (h) cudaFree(h);
  delete sg;
}
