// A CUPTI injection library: the start and end of every kernel on the GPU, graph
// replays included. ncu runs kernels one at a time, so it cannot show how a replayed
// decode step's kernels overlap (PDL) or where the GPU waits between them; this can.
// Loaded by the CUDA driver through CUDA_INJECTION64_PATH; writes CSV to $WICK_TIMELINE
// (default wick_timeline.csv) at exit: start_ns,end_ns,graph_node,grid,block,name;
// copies and memsets too, and with WICK_TIMELINE_API=1 the host's CUDA runtime calls.
//   CUDA_INJECTION64_PATH=build-gpu/libwick_timeline.so WICK_TIMELINE=/tmp/t.csv
//     build-gpu/wick generate -m /tmp/qw -d cuda -p "..." -n 64 --temp 0 --ignore-eos
//   python3 bench/compare/timeline.py /tmp/t.csv
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *g_out;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
  *size = (size_t)8 << 20;
  *buffer = aligned_alloc(8, *size);
  *max_records = 0;   // as many as fit
}

// One CSV row. Copies and memsets are named by kind with their bytes as "grid"; host
// API calls (CUDA runtime) are named "api:<function>", with graph_node 0.
static void row(uint64_t start, uint64_t end, uint64_t node, uint64_t grid, uint32_t block, const char *name) {
  fprintf(g_out, "%llu,%llu,%llu,%llu,%u,%s\n", (unsigned long long)start, (unsigned long long)end,
          (unsigned long long)node, (unsigned long long)grid, block, name);
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  (void)ctx, (void)stream, (void)size;
  CUpti_Activity *rec = NULL;
  while (g_out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
      row(k->start, k->end, k->graphNodeId, (uint64_t)k->gridX * k->gridY * k->gridZ, (uint32_t)(k->blockX * k->blockY * k->blockZ),
          k->name ? k->name : "?");
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)rec;
      static const char *kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH", "PtoP"};
      char name[32];
      snprintf(name, sizeof name, "memcpy:%s", m->copyKind < 11 ? kinds[m->copyKind] : "?");
      row(m->start, m->end, m->graphNodeId, m->bytes, 0, name);
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)rec;
      row(m->start, m->end, m->graphNodeId, m->bytes, 0, "memset");
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const CUpti_ActivityAPI *api = (const CUpti_ActivityAPI *)rec;
      const char *fn = NULL;
      char name[96];
      cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, api->cbid, &fn);
      snprintf(name, sizeof name, "api:%s", fn ? fn : "?");
      row(api->start, api->end, 0, 0, 0, name);
    }
  }
  free(buffer);
}

static void flush_at_exit(void) {
  cuptiActivityFlushAll(1);
  if (g_out) fclose(g_out);
  g_out = NULL;
}

int InitializeInjection(void) {
  const char *path = getenv("WICK_TIMELINE");
  g_out = fopen(path && *path ? path : "wick_timeline.csv", "w");
  if (!g_out) return 0;
  fprintf(g_out, "start_ns,end_ns,graph_node,grid,block,name\n");
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET) != CUPTI_SUCCESS ||
      (getenv("WICK_TIMELINE_API") && cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME) != CUPTI_SUCCESS)) {
    fprintf(stderr, "wick_timeline: CUPTI activity tracing is unavailable\n");
    return 0;
  }
  atexit(flush_at_exit);
  return 1;
}
