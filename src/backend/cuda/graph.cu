// Plan replay as CUDA graphs: a run of a cached plan's CUDA steps is captured once
// (stream capture) and later evaluations launch it as one graph.
//
// What a step's kernels see besides the plan's structure are the slot pointers
// (leaves, outputs and arena, bound per evaluation) and the scalar attributes
// patched into the plan (learning rate, bias corrections, seeds). Both are baked
// into the captured kernel parameters, so before each replay every launch unit
// (a step, or a row chain with its members) compares the pointers and scalars it
// was captured with against the current ones:
//  - all equal: launch the graph as it is;
//  - a few units changed: capture just those units again and swap them into the
//    instantiated graph (cudaGraphExecChildGraphNodeSetParams: each unit is a child
//    graph node, so a change touches one node, and the graph is not re-instantiated);
//  - many changed, or only scalars: launch step by step (patching would cost more
//    than it saves: the host time of both, per unit, is measured as they run).
// Copying inputs into plan-owned buffers at fixed addresses was the alternative;
// it costs a device copy of every leaf per evaluation (the base weights of a
// training step included), where re-pointing costs host time only for the units
// whose bindings changed. Evaluations mostly recur with the same pointers anyway:
// the caching allocator hands a freed output's block to the next evaluation's
// output, and a training step's parameters alternate between two sets of blocks,
// so each run keeps a few variants captured with different pointer sets.
//
// Scratch that steps allocate while being captured is kept alive with the graph
// (the replay reuses its addresses). Small uploads inside a run (a decode step's
// token ids and positions, made on the host each step) are captured as copies from
// a pinned staging buffer of the run's, which the host fills before each launch:
// the graph then never reads pageable memory, and the host tensor may live at a new
// address every step. Downloads and large uploads are never handed here; a capture
// that fails anyway (a host sync inside a step, say) makes the run launch step by
// step from then on.
// WICK_CUDA_GRAPHS=0 turns replay off.
#include <limits.h>
#include <time.h>
#include <new>
#include "cuda_internal.h"

namespace {
const int VARIANTS = 3;        // pointer sets remembered per run of steps
const int REBUILD_AFTER = 8;   // step-by-step runs in a row with new pointers before a variant is replaced
const size_t STAGE_MAX = 1 << 20; // uploads up to this many bytes are staged into the graph

struct Unit {                  // one launch unit: a step, or a row chain's head and its members
  int first, len;
  std::vector<int> slots;      // the slots its kernels read or write on the device
  void *stage = NULL;          // an upload: pinned staging the graph copies from
  size_t bytes = 0;
};

struct Node {
  cudaGraphNode_t node = NULL; // its child graph node
  std::vector<void *> keep;    // scratch its kernels use
  std::vector<unsigned char> scalars;
};

struct Variant {
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  std::vector<Node> nodes;     // per unit
  std::vector<void *> slots;   // slot pointers it was captured with
  bool arms = false;           // a kernel in it may set the device error record
  unsigned long long used = 0;
};

struct Segment {
  std::vector<Unit> units;
  int nslots = 0;              // 1 + the largest slot index the units use
  int uses = 0, streak = 0;
  bool broken = false;         // a capture failed: step by step from now on
  Variant *v[VARIANTS] = {};
};

wk_cuda_graph_stats g_stats;
bool g_fail_next;
unsigned long long g_clock;
// Host microseconds per unit, running averages: launching a unit step by step, and
// re-capturing and swapping it into a graph (a first guess until it has been timed).
double g_direct_us = 4, g_patch_us = 20;
bool g_always_patch;   // tests: patch whatever the costs
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

// ---- units and their bindings ----
static void add_slot(Unit &u, int slot, int *nslots) {
  if (slot < 0) return;
  u.slots.push_back(slot);
  if (slot >= *nslots) *nslots = slot + 1;
}

static Segment *segment_new(const wk_step *steps, int n) {
  Segment *sg = new (std::nothrow) Segment;
  if (!sg) return NULL;
  for (int k = 0; k < n; k++) {
    if (steps[k].chain < 0) continue;
    Unit u;
    u.first = k;
    u.len = steps[k].chain > 0 ? steps[k].chain : 1;
    if (is_upload(&steps[k])) { // the graph reads the staging, not the host tensor
      u.bytes = upload_bytes(&steps[k]);
      if (cudaMallocHost(&u.stage, u.bytes ? u.bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        u.stage = NULL;
        sg->broken = true;   // no pinned memory: this run launches step by step
      }
      add_slot(u, steps[k].out.slot, &sg->nslots);
      sg->units.push_back(u);
      continue;
    }
    for (int m = k; m < k + u.len && m < n; m++) {
      const wk_step *s = &steps[m];
      for (int q = 0; q < s->nin; q++) add_slot(u, s->in[q].slot, &sg->nslots);
      for (int q = 0; q < s->npro; q++) add_slot(u, s->pro_in[q].slot, &sg->nslots);
      add_slot(u, s->out.slot, &sg->nslots);
    }
    sg->units.push_back(u);
  }
  return sg;
}

// The scalar attributes a unit's kernels were built with, in one byte string.
static void scalars_of(const wk_step *steps, const Unit &u, std::vector<unsigned char> *out) {
  out->clear();
  for (int k = u.first; k < u.first + u.len; k++) {
    const unsigned char *a = (const unsigned char *)&steps[k].attrs;
    out->insert(out->end(), a, a + sizeof(wk_attrs));
    for (int q = 0; q < steps[k].prog.n; q++) {
      a = (const unsigned char *)&steps[k].prog.code[q].attrs;
      out->insert(out->end(), a, a + sizeof(wk_attrs));
    }
  }
}

static bool same_scalars(const wk_step *steps, const Unit &u, const std::vector<unsigned char> &have) {
  size_t off = 0;
  for (int k = u.first; k < u.first + u.len; k++) {
    const wk_step *s = &steps[k];
    if (off + sizeof(wk_attrs) * (1 + (size_t)s->prog.n) > have.size()) return false;
    if (memcmp(&have[off], &s->attrs, sizeof(wk_attrs))) return false;
    off += sizeof(wk_attrs);
    for (int q = 0; q < s->prog.n; q++, off += sizeof(wk_attrs))
      if (memcmp(&have[off], &s->prog.code[q].attrs, sizeof(wk_attrs))) return false;
  }
  return off == have.size();
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

// An upload's device copy: from the unit's staging to the step's destination.
static wk_status upload_from_stage(const Unit &u, const wk_step *s, void *const *slots) {
  char *dst = (char *)slots[s->out.slot] + wkc_off_bytes(&s->out);
  if (!u.bytes) return WK_OK;
  cudaError_t e = cudaMemcpyAsync(dst, u.stage, u.bytes, cudaMemcpyHostToDevice, wkc_stream());
  return e == cudaSuccess ? WK_OK : wk_error(WK_ERR_DEVICE, "cuda: staged upload of %zu bytes: %s", u.bytes, cudaGetErrorString(e));
}

// Fills the uploads' staging from the host tensors of this evaluation. The previous
// launch is done with it: the executor syncs after every plan.
static void fill_stages(const Segment *sg, const wk_step *steps, void *const *slots) {
  for (const Unit &u : sg->units) {
    const wk_step *s = &steps[u.first];
    if (u.stage && u.bytes)
      memcpy(u.stage, (const char *)slots[s->in[0].slot] + wkc_off_bytes(&s->in[0]), u.bytes);
  }
}

// Captures one unit's kernels into *g (scratch they use into *keep). False when the
// capture failed; the step-by-step path then runs the unit and reports real errors.
static bool capture_unit(const Unit &u, const wk_step *s, void *const *slots, cudaGraph_t *g, std::vector<void *> *keep) {
  *g = NULL;
  wkc_capture_mode(keep);
  cudaStream_t cs = wkc_stream();
  cudaError_t e = cudaStreamBeginCapture(cs, cudaStreamCaptureModeRelaxed);
  wk_status st = WK_OK;
  if (e == cudaSuccess) {
    st = u.stage ? upload_from_stage(u, s, slots) : wkc_dispatch(s, slots);
    if (g_fail_next) { // tests: what a host sync inside a step does to a capture
      g_fail_next = false;
      cudaStreamSynchronize(cs);
    }
    e = cudaStreamEndCapture(cs, g);
  }
  wkc_capture_mode(NULL);
  if (!st && e == cudaSuccess) return true;
  cudaGetLastError();
  if (*g) cudaGraphDestroy(*g);
  *g = NULL;
  release(keep);
  return false;
}

static void variant_free(Variant *v) {
  if (!v) return;
  if (v->exec) cudaGraphExecDestroy(v->exec);
  if (v->graph) cudaGraphDestroy(v->graph);
  for (Node &n : v->nodes) release(&n.keep);
  delete v;
}

// Captures every unit as a chain of child graphs and instantiates it; NULL on failure.
static Variant *variant_build(const Segment *sg, const wk_step *steps, void *const *slots) {
  Variant *v = new (std::nothrow) Variant;
  if (!v) return NULL;
  bool armed = wkc_dev_err_swap(false);
  bool ok = cudaGraphCreate(&v->graph, 0) == cudaSuccess;
  v->nodes.resize(sg->units.size());
  cudaGraphNode_t prev = NULL;
  for (size_t i = 0; ok && i < sg->units.size(); i++) {
    cudaGraph_t g;
    Node &n = v->nodes[i];
    ok = capture_unit(sg->units[i], &steps[sg->units[i].first], slots, &g, &n.keep);
    ok = ok && cudaGraphAddChildGraphNode(&n.node, v->graph, prev ? &prev : NULL, prev ? 1 : 0, g) == cudaSuccess;
    if (g) cudaGraphDestroy(g);
    prev = n.node;
    if (ok) scalars_of(steps, sg->units[i], &n.scalars);
  }
  ok = ok && cudaGraphInstantiate(&v->exec, v->graph, 0) == cudaSuccess;
  v->arms = wkc_dev_err_swap(armed);
  if (!ok) {
    cudaGetLastError();
    variant_free(v);
    return NULL;
  }
  v->slots.assign(slots, slots + sg->nslots);
  g_stats.captures++;
  return v;
}

// Re-captures unit i with the current bindings and swaps it into v's executable graph.
static bool variant_patch(Variant *v, const Segment *sg, int i, const wk_step *steps, void *const *slots) {
  std::vector<void *> keep;
  cudaGraph_t g;
  bool armed = wkc_dev_err_swap(false);
  bool ok = capture_unit(sg->units[i], &steps[sg->units[i].first], slots, &g, &keep);
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
    bool p = same_pointers(sg->units[i], v, slots);
    *moved += !p;
    *changed += !p || !same_scalars(steps, sg->units[i], v->nodes[i].scalars);
  }
}

// Builds a variant into slot w (freeing what was there) and launches it.
static wk_status rebuild(Segment *sg, int w, const wk_step *steps, void *const *slots) {
  variant_free(sg->v[w]);
  sg->v[w] = variant_build(sg, steps, slots);
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
  if (!wkc_graphs_enabled() || sg->broken || sg->units.size() < 2 || ++sg->uses < 2)
    return run_direct(sg, steps, slots, sg->uses > 1);
  int best = -1, changed = INT_MAX, moved = 0, empty = -1, stalest = 0;
  for (int w = 0; w < VARIANTS; w++) {
    if (!sg->v[w]) { if (empty < 0) empty = w; continue; }
    if (sg->v[stalest] == NULL || sg->v[w]->used < sg->v[stalest]->used) stalest = w;
    int c, m;
    count_changes(sg, sg->v[w], steps, slots, &c, &m);
    if (c < changed) best = w, changed = c, moved = m;
  }
  if (best >= 0 && changed == 0) return launch(sg, sg->v[best], steps, slots);
  // Patch only where it clearly pays, and not for new scalars alone: a LoRA training
  // step whose optimizer units get new bias corrections every step measured slower
  // patched (H200: 228 us against 213 us step by step; the launch after updates costs
  // too). Scalars read from device memory instead of kernel parameters would fix that.
  bool worth_patching = g_always_patch || (moved > 0 && 2 * changed * g_patch_us <= (double)sg->units.size() * g_direct_us);
  if (empty >= 0 && (best < 0 || (moved > 0 && !worth_patching))) return rebuild(sg, empty, steps, slots); // a new pointer set
  if (worth_patching) {
    Variant *v = sg->v[best];
    double t0 = now_us();
    for (size_t i = 0; i < sg->units.size(); i++) {
      const Unit &u = sg->units[i];
      if (same_pointers(u, v, slots) && same_scalars(steps, u, v->nodes[i].scalars)) continue;
      if (!variant_patch(v, sg, (int)i, steps, slots)) return rebuild(sg, best, steps, slots);
    }
    v->slots.assign(slots, slots + sg->nslots);
    sg->streak = 0;
    wk_status st = launch(sg, v, steps, slots);  // a launch after updates uploads them: part of the cost
    average(&g_patch_us, now_us() - t0, (size_t)changed);
    return st;
  }
  // new scalars alone come back changed next time too: only new pointers earn a rebuild
  if (moved > 0 && ++sg->streak >= REBUILD_AFTER) return rebuild(sg, stalest, steps, slots);
  return run_direct(sg, steps, slots);
}

void wkc_segment_free(void *state) {
  Segment *sg = (Segment *)state;
  if (!sg) return;
  for (Variant *v : sg->v) variant_free(v);
  for (Unit &u : sg->units)
    if (u.stage) cudaFreeHost(u.stage);
  delete sg;
}
