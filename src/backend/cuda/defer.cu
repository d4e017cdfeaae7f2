// Deferred completion, for the executor's pipelining (eval.c): a job whose steps all
// run here is enqueued without a wait, and the executor launches the next decode step
// behind it while it runs, so the host's work between steps (its sync, the next graph's
// launch) no longer leaves the GPU idle. Between defer_begin and defer_end, a download
// of up to DEFER_MAX bytes lands in the ticket's pinned staging instead of waiting;
// defer_end records an event after the job's work (and queues a copy of the kernel
// error record if a kernel may have set it). finish() waits for the event, copies the
// staged downloads to their host destinations and reports the record.
#include <vector>
#include "cuda_internal.h"

namespace {
const int TICKETS = 4;                 // outstanding: one in flight, one launched behind it
const size_t DEFER_MAX = 1 << 20;      // staging per ticket; a larger download waits

struct Staged {
  void *dst;
  size_t off, bytes;
};

struct Ticket {
  cudaEvent_t ev = NULL;
  char *stage = NULL;                  // DEFER_MAX bytes, pinned (allocated on first use)
  size_t used = 0;
  std::vector<Staged> copies;
  DevErr *err = NULL;                  // pinned copy of the error record, when armed
  bool armed = false;
  uint64_t id = 0;                     // 0: free
};

Ticket g_t[TICKETS];
uint64_t g_next = 1;
Ticket *g_open;                        // between defer_begin and defer_end

Ticket *slot(uint64_t id) { return &g_t[id % TICKETS]; }
}

void wkc_defer_begin(void) {
  Ticket *t = slot(g_next);
  g_open = t->id ? NULL : t;           // a ticket not yet finished: no deferral this time
  if (!g_open) return;
  t->used = 0;
  t->copies.clear();
  t->armed = false;
}

bool wkc_defer_download(void *dst, const void *src, size_t bytes) {
  Ticket *t = g_open;
  const size_t off = t ? (t->used + 15) & ~(size_t)15 : 0;
  if (!t || off + bytes > DEFER_MAX) return false;
  if (!t->stage && cudaMallocHost((void **)&t->stage, DEFER_MAX) != cudaSuccess) {
    cudaGetLastError();
    t->stage = NULL;
    return false;
  }
  if (cudaMemcpyAsync(t->stage + off, src, bytes, cudaMemcpyDeviceToHost, wkc_stream()) != cudaSuccess) return false;
  t->copies.push_back({dst, off, bytes});
  t->used = off + bytes;
  return true;
}

uint64_t wkc_defer_end(void) {
  Ticket *t = g_open;
  g_open = NULL;
  if (!t) return 0;
  cudaError_t e = cudaSuccess;
  if (!t->ev) e = cudaEventCreateWithFlags(&t->ev, cudaEventDisableTiming);
  if (e == cudaSuccess && !t->err) e = cudaMallocHost((void **)&t->err, sizeof(DevErr));
  if (e == cudaSuccess && wkc_dev_err_swap(false)) {
    t->armed = true;
    e = cudaMemcpyAsync(t->err, wkc_dev_err(), sizeof(DevErr), cudaMemcpyDeviceToHost, wkc_stream());
  }
  if (e == cudaSuccess) e = cudaEventRecord(t->ev, wkc_stream());
  if (e != cudaSuccess) {   // the caller syncs instead (wkc_sync reports the record): the downloads land now
    if (t->armed) wkc_arm_dev_err();
    cudaGetLastError();
    if (cudaStreamSynchronize(wkc_stream()) == cudaSuccess)
      for (const Staged &c : t->copies) memcpy(c.dst, t->stage + c.off, c.bytes);
    return 0;
  }
  t->id = g_next++;
  return t->id;
}

bool wkc_ticket_done(uint64_t id) {
  Ticket *t = slot(id);
  return t->id != id || cudaEventQuery(t->ev) != cudaErrorNotReady;
}

wk_status wkc_finish(uint64_t id) {
  Ticket *t = slot(id);
  if (t->id != id) return WK_OK;
  cudaError_t e = cudaEventSynchronize(t->ev);
  t->id = 0;
  if (e != cudaSuccess)
    return wk_error(WK_ERR_DEVICE, "cuda: %s (during an evaluation enqueued without waiting; run with WICK_CUDA_SYNC=1 "
                    "to name the failing kernel)", cudaGetErrorString(e));
  for (const Staged &c : t->copies) memcpy(c.dst, t->stage + c.off, c.bytes);
  return t->armed ? wkc_dev_err_report(t->err) : WK_OK;
}
