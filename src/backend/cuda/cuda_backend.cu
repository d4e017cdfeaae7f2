// The CUDA backend: one stream, a stream-ordered caching allocator, cuBLAS for
// GEMM (cuBLASLt where a bias / GELU epilogue is fused in), and the dispatcher from scheduled steps to kernels (ew.cu, nn.cu).
//
// Everything is enqueued on one stream, so a block freed to the cache can be
// handed to later work at once: that work is ordered after every earlier reader.
// Errors a kernel finds in its data (an embedding id out of range) land in a
// device record and are reported by sync; faults are reported by sync with
// the last kernel enqueued (WICK_CUDA_SYNC=1 syncs after every step to name it).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <string>
#include "cuda_internal.h"
extern "C" {
#include "../../engine/plan.h"
}

// ---- state ----
static std::once_flag g_once;
static bool g_ok;
static char g_init_err[512];
static cudaStream_t g_stream, g_cap_stream;
static cublasHandle_t g_blas;
static cublasLtHandle_t g_lt;
static DevErr *g_err_host, *g_err_dev;
static int g_sms;
static size_t g_max_smem;
static bool g_sync_each, g_tf32, g_graphs;
static void *g_blas_ws;                 // cuBLAS workspace of our own: none is allocated during capture
#define BLAS_WORKSPACE (32u << 20)
static cudaDeviceProp g_prop;
static const char *g_last_kernel = "none";

// While a thread captures a step into a CUDA graph (graph.cu) it enqueues on the
// capture stream, and the scratch its steps allocate stays allocated: the graph
// keeps those addresses for every replay.
static thread_local cudaStream_t t_capture;
static thread_local std::vector<void *> *t_keep;

cudaStream_t wkc_stream(void) { return t_capture ? t_capture : g_stream; }

static void blas_stream(cudaStream_t s) {
  cublasSetStream(g_blas, s);  // resets the workspace to cuBLAS's own: set ours again
  if (g_blas_ws) cublasSetWorkspace(g_blas, g_blas_ws, BLAS_WORKSPACE);
}

void wkc_capture_mode(std::vector<void *> *keep) {
  t_capture = keep ? g_cap_stream : NULL;
  t_keep = keep;
  blas_stream(wkc_stream());
}
bool wkc_graphs_enabled(void) { return g_graphs && !g_sync_each; }
extern "C" void wk_cuda_set_graphs(int on) { g_graphs = on != 0; }
void wkc_set_last_kernel(const char *what) { g_last_kernel = what; }
DevErr *wkc_dev_err(void) { return g_err_dev; }
int wkc_num_sms(void) { return g_sms; }
size_t wkc_max_smem(void) { return g_max_smem; }
unsigned wkc_resident_blocks(const void *k, int threads, size_t smem) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, threads, smem) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return (unsigned)per_sm * (unsigned)g_sms;
}

unsigned char *wkc_blob_buf(void) {
  alignas(16) static thread_local unsigned char buf[WKC_BLOB_LARGE + 64];
  return buf;
}

wk_status wkc_check_launch(const char *kernel) {
  g_last_kernel = kernel;
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return wk_error(WK_ERR_DEVICE, "cuda: launching %s failed: %s", kernel, cudaGetErrorString(e));
  return WK_OK;
}

// ---- caching allocator ----
// Size classes: 512-byte steps up to 64 KB... then four classes per power of two
// (at most 25% rounding waste). Free blocks wait in per-class lists; the cache
// is bounded (WICK_CUDA_CACHE_MB, default half of device memory): past it, free
// blocks go back to the driver.
namespace {
struct Alloc {
  std::mutex mu;
  std::unordered_map<void *, size_t> live;          // pointer -> class size
  std::unordered_map<size_t, std::vector<void *>> free_lists;
  size_t reserved = 0, peak_reserved = 0, in_use = 0, peak_in_use = 0, cached = 0, limit = 0;
  unsigned long long mallocs = 0, hits = 0;
};
Alloc g_alloc;
}

static size_t class_size(size_t n) {
  if (n <= 512) return 512;
  if (n <= (64u << 10)) return (n + 511) & ~(size_t)511;
  size_t p = 1;
  while (p * 2 <= n) p *= 2;  // p <= n < 2p
  size_t q = p / 4;
  return (n + q - 1) / q * q;
}

static void release_cached_locked(size_t target) { // frees cached blocks until cached <= target
  Alloc &A = g_alloc;
  if (A.cached <= target) return;
  cudaStreamSynchronize(g_stream);
  for (auto &kv : A.free_lists) {
    while (!kv.second.empty() && A.cached > target) {
      cudaFree(kv.second.back());
      kv.second.pop_back();
      A.cached -= kv.first;
      A.reserved -= kv.first;
    }
  }
}

static void *wkc_alloc(size_t bytes) {
  Alloc &A = g_alloc;
  size_t cs = class_size(bytes ? bytes : 1);
  std::lock_guard<std::mutex> lk(A.mu);
  void *p = NULL;
  auto it = A.free_lists.find(cs);
  if (it != A.free_lists.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    A.cached -= cs;
    A.hits++;
  } else {
    cudaError_t e = cudaMalloc(&p, cs);
    if (e != cudaSuccess && !t_capture) { // no stream sync or cudaFree inside a capture
      cudaGetLastError();
      release_cached_locked(0);
      e = cudaMalloc(&p, cs);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t fr = 0, tot = 0;
      cudaMemGetInfo(&fr, &tot);
      wk_error(WK_ERR_OOM, "cuda: out of device memory allocating %zu bytes (wick holds %zu bytes, %zu in use; device has %zu of %zu bytes free)",
               bytes, A.reserved, A.in_use, fr, tot);
      return NULL;
    }
    A.mallocs++;
    A.reserved += cs;
    if (A.reserved > A.peak_reserved) A.peak_reserved = A.reserved;
  }
  A.live[p] = cs;
  if (t_keep) t_keep->push_back(p);
  A.in_use += cs;
  if (A.in_use > A.peak_in_use) A.peak_in_use = A.in_use;
  return p;
}

static void wkc_free(void *p) {
  if (!p) return;
  if (t_keep && std::find(t_keep->begin(), t_keep->end(), p) != t_keep->end()) return; // the graph keeps it
  Alloc &A = g_alloc;
  std::lock_guard<std::mutex> lk(A.mu);
  auto it = A.live.find(p);
  if (it == A.live.end()) return;
  size_t cs = it->second;
  A.live.erase(it);
  A.in_use -= cs;
  A.free_lists[cs].push_back(p);
  A.cached += cs;
  if (A.cached > A.limit && !t_capture) release_cached_locked(A.limit / 2);
}

void *wkc_tmp_alloc(size_t bytes) { return wkc_alloc(bytes); }
void wkc_tmp_free(void *p) { wkc_free(p); }

int *wkc_zeroed_counters(int **p, size_t n) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  if (!*p) {
    void *q = NULL;
    if (cudaMalloc(&q, sizeof(int) * n) != cudaSuccess) {
      cudaGetLastError();
      return NULL;
    }
    cudaMemsetAsync(q, 0, sizeof(int) * n, wkc_stream());
    *p = (int *)q;
  }
  return *p;
}

extern "C" void wk_cuda_memory_stats(wk_cuda_mem_stats *out) {
  Alloc &A = g_alloc;
  std::lock_guard<std::mutex> lk(A.mu);
  out->reserved = A.reserved;
  out->peak_reserved = A.peak_reserved;
  out->in_use = A.in_use;
  out->peak_in_use = A.peak_in_use;
  out->cached_limit = A.limit;
  out->cuda_mallocs = A.mallocs;
  out->cache_hits = A.hits;
}

extern "C" void wk_cuda_empty_cache(void) {
  if (!g_ok) return;
  std::lock_guard<std::mutex> lk(g_alloc.mu);
  release_cached_locked(0);
}

extern "C" void *wk_cuda_stream(void) { return (void *)g_stream; }

extern "C" const char *wk_cuda_device_name(void) { return g_ok ? g_prop.name : ""; }

// ---- transfers and sync ----
// The device keeps the record in device memory (atomics on mapped host memory
// are not guaranteed over PCIe); sync copies it back when a kernel that can set it
// ran since the last check.
static bool g_err_armed;
void wkc_arm_dev_err(void) { g_err_armed = true; }
bool wkc_dev_err_swap(bool armed) {
  bool was = g_err_armed;
  g_err_armed = armed;
  return was;
}

// A host copy of the record (pinned, copied after the kernels): the error it holds, if
// any; the device's record is cleared then.
wk_status wkc_dev_err_report(DevErr *e) {
  if (!e->code) return WK_OK;
  DevErr c = *e;
  memset(e, 0, sizeof *e);
  cudaMemset(g_err_dev, 0, sizeof(DevErr));
  switch (c.kind) {
    case WKC_ERR_EMBED_ID:
      return wk_error(WK_ERR_ARG, "embedding: id %lld at position %lld is out of range for a table of %lld rows", c.a,
                      c.b, c.c);
    case WKC_ERR_CE_TARGET:
      return wk_error(WK_ERR_ARG, "cross_entropy: target %lld at position %lld is out of range [0, %lld) and is not ignore_index",
                      c.a, c.b, c.c);
    default: return wk_error(WK_ERR_DEVICE, "cuda: a kernel reported error kind %d", c.kind);
  }
}

// After a sync that queued the record's copy (wkc_sync): reads it on the host.
static wk_status check_dev_err(bool copied) {
  if (!g_err_armed) return WK_OK;
  g_err_armed = false;
  if (!copied)
    return wk_error(WK_ERR_DEVICE, "cuda: reading the kernel error record failed: %s", cudaGetErrorString(cudaGetLastError()));
  return wkc_dev_err_report(g_err_host);
}

// The error record's copy goes on the stream ahead of the wait (pinned memory): no
// second round trip after it.
static wk_status wkc_sync(void) {
  const bool copied = !g_err_armed || cudaMemcpyAsync(g_err_host, g_err_dev, sizeof(DevErr), cudaMemcpyDeviceToHost, g_stream) == cudaSuccess;
  cudaError_t e = cudaStreamSynchronize(g_stream);
  if (e != cudaSuccess)
    return wk_error(WK_ERR_DEVICE, "cuda: %s (during the steps since the last sync; last kernel enqueued: %s; run with WICK_CUDA_SYNC=1 to name the failing one)",
                    cudaGetErrorString(e), g_last_kernel);
  return check_dev_err(copied);
}

static wk_status wkc_upload(void *dst, const void *src, size_t bytes) {
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream);
  if (e != cudaSuccess) return wk_error(WK_ERR_DEVICE, "cuda: upload of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
  return WK_OK;
}

static wk_status wkc_download(void *dst, const void *src, size_t bytes) {
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream);
  if (e != cudaSuccess) return wk_error(WK_ERR_DEVICE, "cuda: download of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
  return wkc_sync();
}

// ---- GEMM (cuBLAS, row-major operands mapped onto column-major calls) ----
typedef wkc_mat mat;

static bool as_mat(const wk_operand *o, void *const *slots, mat *m) {
  int nd = o->ndim;
  int64_t rows = o->shape[nd - 2], cols = o->shape[nd - 1], s0 = o->stride[nd - 2], s1 = o->stride[nd - 1];
  m->p = (const char *)slots[o->slot] + o->offset * (int64_t)wkc_esize(o->dtype);
  if ((s1 == 1 || cols == 1) && (rows == 1 || s0 >= cols)) {
    m->trans = 0;
    m->ld = rows == 1 ? cols : s0;
    return m->ld >= 1;
  }
  if ((s0 == 1 || rows == 1) && (cols == 1 || s1 >= rows)) {
    m->trans = 1;
    m->ld = cols == 1 ? rows : s1;
    return m->ld >= 1;
  }
  return false;
}

// One stride for the batch axes of o broadcast to out's batch shape (0 = broadcast).
static bool batch_stride(const wk_operand *o, const wk_operand *out, int64_t *bs) {
  int bnd = out->ndim - 2, ond = o->ndim - 2;
  int64_t expect = -1;
  *bs = 0;
  // walk batch axes from the innermost out; collapse
  int64_t span = 1;
  bool first = true;
  for (int d = bnd - 1; d >= 0; d--) {
    int64_t n = out->shape[d];
    if (n == 1) continue;
    int od = d - (bnd - ond);
    int64_t st = od >= 0 && o->shape[od] != 1 ? o->stride[od] : 0;
    if (first) { *bs = st; expect = st * n; first = false; span = n; continue; }
    if (st != expect) return false;
    expect = st * n;
    span *= n;
  }
  (void)span;
  return true;
}

static cudaDataType_t cuda_type(int dt) {
  return dt == WK_BF16 ? CUDA_R_16BF : dt == WK_F16 ? CUDA_R_16F : CUDA_R_32F;
}

static wk_status blas_status(cublasStatus_t st, const char *what) {
  g_last_kernel = what;
  if (st != CUBLAS_STATUS_SUCCESS) return wk_error(WK_ERR_DEVICE, "cuda: %s failed (cuBLAS status %d)", what, (int)st);
  return WK_OK;
}

// C[M,N] (+)= alpha * op(A)[M,K] @ op(B)[K,N], row-major views, `batch` of them.
static wk_status gemm(const mat &a, const mat &b, int64_t sa, int64_t sb, int in_dt, char *c, int out_dt, int64_t M,
                      int64_t N, int64_t K, int64_t batch, float alpha, float beta, const char *what) {
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || batch > INT32_MAX)
    return wk_error(WK_ERR_SHAPE, "%s: dimensions too large for cuBLAS (M=%lld N=%lld K=%lld)", what, (long long)M,
                    (long long)N, (long long)K);
  cublasComputeType_t ct = in_dt == WK_F32 && g_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // row-major C = A B  <=>  column-major C^T = B^T A^T
  cublasStatus_t st = cublasGemmStridedBatchedEx(
      g_blas, b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, a.trans ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha,
      b.p, cuda_type(in_dt), (int)b.ld, (long long)sb, a.p, cuda_type(in_dt), (int)a.ld, (long long)sa, &beta, c,
      cuda_type(out_dt), (int)N, (long long)(M * N), (int)batch, ct, CUBLAS_GEMM_DEFAULT);
  return blas_status(st, what);
}

wk_status wkc_gemm(const wkc_mat &a, const wkc_mat &b, int in_dt, char *c, int64_t M, int64_t N, int64_t K,
                   const char *what, float beta) {
  return gemm(a, b, 0, 0, in_dt, c, WK_F32, M, N, K, 1, 1.0f, beta, what);
}

static wk_status matmul(const wk_step *s, void *const *slots) {
  const wk_operand *out = &s->out;
  wk_operand a = s->in[0], b = s->in[1];
  int nd = out->ndim;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = a.shape[a.ndim - 1];
  int64_t batch = M * N > 0 ? wkc_numel(out) / (M * N) : 0;
  char *c = (char *)slots[out->slot] + out->offset * (int64_t)wkc_esize(out->dtype);
  if (!batch) return WK_OK;
  if (K == 0) {
    cudaMemsetAsync(c, 0, (size_t)(batch * M * N) * wkc_esize(out->dtype), wkc_stream());
    return wkc_check_launch("matmul (K = 0)");
  }
  int dt = a.dtype;
  bool same = a.dtype == b.dtype && a.dtype != WK_I32;
  if (!same) dt = WK_F32;
  void *tmp[2] = {NULL, NULL};
  void *lslots[2];
  wk_operand *ops[2] = {&a, &b};
  mat m[2];
  int64_t bs[2];
  wk_status st = WK_OK;
  for (int k = 0; k < 2 && !st; k++) {
    wk_operand *o = ops[k];
    bool ok = o->dtype == dt && as_mat(o, slots, &m[k]) && batch_stride(o, out, &bs[k]);
    if (ok) continue;
    // densify: the operand broadcast to [out batch..., rows, cols], contiguous, in dtype dt
    wk_operand v = *o;
    int ond = o->ndim;
    v.ndim = nd;
    for (int d = 0; d < nd - 2; d++) {
      int od = d - (nd - ond);
      v.shape[d] = out->shape[d];
      v.stride[d] = od >= 0 && o->shape[od] != 1 ? o->stride[od] : 0;
    }
    v.shape[nd - 2] = o->shape[ond - 2];
    v.shape[nd - 1] = o->shape[ond - 1];
    v.stride[nd - 2] = o->stride[ond - 2];
    v.stride[nd - 1] = o->stride[ond - 1];
    size_t bytes = (size_t)wkc_numel(&v) * wkc_esize(dt);
    if (!(tmp[k] = wkc_alloc(bytes))) { st = WK_ERR_OOM; break; }
    st = wkc_densify(&v, slots, (wk_dtype)dt, tmp[k]);
    if (st) break;
    wk_operand d2 = v;
    d2.slot = k;
    d2.offset = 0;
    d2.dtype = (wk_dtype)dt;
    wk_contiguous_strides(d2.ndim, d2.shape, d2.stride);
    lslots[k] = tmp[k];
    as_mat(&d2, lslots, &m[k]);
    bs[k] = d2.shape[nd - 2] * d2.shape[nd - 1];
  }
  if (!st) {
    if (dt == WK_F32 && out->dtype != WK_F32 && !same) st = wk_error(WK_ERR_DTYPE, "matmul: mixed dtypes");
    else st = gemm(m[0], m[1], bs[0], bs[1], dt, c, out->dtype, M, N, K, batch, wk_matmul_alpha(s), 0.0f,
                "matmul (cublasGemmStridedBatchedEx)");
  }
  wkc_free(tmp[0]);
  wkc_free(tmp[1]);
  return st;
}

// ---- matmul with a fused epilogue (cuBLASLt) ----
// out[M, N] = in[0] @ in[1] + bias (over the rows) [then GELU, tanh form]: one
// cublasLtMatmul with CUBLASLT_EPILOGUE_BIAS / _GELU_BIAS, accumulating in f32
// (TF32 for f32 under WICK_CUDA_TF32=1, as cuBLAS). Descriptors, layouts and the
// heuristic's algorithm are cached by shape, layout, dtype, epilogue and operand
// alignment, so a captured or replayed plan does no descriptor work; the
// workspace is the one preallocated for cuBLAS (every call is ordered on one
// stream, so they never use it at once). Where cuBLASLt offers no algorithm
// (unusual alignment), a cuBLAS GEMM and an in-place elementwise epilogue run instead.
namespace {
struct LtKey {
  int64_t M, N, K, lda, ldb;
  int32_t ta, tb, dt, kind, tf32, align[4];
};
struct LtPlan {
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t a = NULL, b = NULL, c = NULL;
  cublasLtMatmulAlgo_t algo;
  size_t ws = 0;
  bool ok = false;
};
std::mutex g_lt_mu;
std::unordered_map<std::string, LtPlan> g_lt_cache;
const size_t LT_CACHE_MAX = 1024;   // entries; past it the cache starts over
}

static void lt_plan_free(LtPlan &p) {
  if (p.op) cublasLtMatmulDescDestroy(p.op);
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  p = LtPlan();
}

static int32_t align_of(const void *p) {
  uintptr_t v = (uintptr_t)p;
  int32_t a = 256;
  while (a > 1 && (v & (uintptr_t)(a - 1))) a >>= 1;
  return a;
}

// Builds the descriptors and asks the heuristic for an algorithm (the cuBLAS call's
// mapping: row-major C = A B is column-major C^T = B^T A^T, so cuBLASLt's A is our b).
static void lt_plan_build(LtPlan &p, const LtKey &k, const void *bias) {
  cudaDataType_t t = k.dt == WK_BF16 ? CUDA_R_16BF : k.dt == WK_F16 ? CUDA_R_16F : CUDA_R_32F;
  cublasComputeType_t ct = k.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cublasOperation_t ta = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtEpilogue_t epi = k.kind == WK_EPI_BIAS_GELU_TANH ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  bool ok = cublasLtMatmulDescCreate(&p.op, ct, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p.a, t, (uint64_t)(k.tb ? k.K : k.N), (uint64_t)(k.tb ? k.N : k.K), k.ldb) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p.b, t, (uint64_t)(k.ta ? k.M : k.K), (uint64_t)(k.ta ? k.K : k.M), k.lda) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p.c, t, (uint64_t)k.N, (uint64_t)k.M, k.N) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulPreference_t pref = NULL;
  ok = ok && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
  uint64_t ws = g_blas_ws ? BLAS_WORKSPACE : 0;
  uint32_t al[4] = {(uint32_t)k.align[1], (uint32_t)k.align[0], (uint32_t)k.align[2], (uint32_t)k.align[2]};
  const cublasLtMatmulPreferenceAttributes_t which[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  ok = ok && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) ==
                 CUBLAS_STATUS_SUCCESS;
  for (int q = 0; q < 4 && ok; q++)
    ok = cublasLtMatmulPreferenceSetAttribute(pref, which[q], &al[q], sizeof al[q]) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  ok = ok && cublasLtMatmulAlgoGetHeuristic(g_lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found) == CUBLAS_STATUS_SUCCESS &&
       found > 0 && res.workspaceSize <= ws;
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!ok) {
    lt_plan_free(p);
    return;
  }
  p.algo = res.algo;
  p.ws = res.workspaceSize;
  p.ok = true;
}

// Enqueues the fused matmul; false (nothing enqueued) when cuBLASLt has no algorithm.
static bool lt_matmul(const mat &a, const mat &b, int dt, char *c, const void *bias, int64_t M, int64_t N, int64_t K,
                      int kind, wk_status *st) {
  LtKey k;
  memset(&k, 0, sizeof k);
  k.M = M, k.N = N, k.K = K, k.lda = a.ld, k.ldb = b.ld;
  k.ta = a.trans, k.tb = b.trans, k.dt = dt, k.kind = kind, k.tf32 = dt == WK_F32 && g_tf32;
  k.align[0] = align_of(a.p), k.align[1] = align_of(b.p), k.align[2] = align_of(c), k.align[3] = align_of(bias);
  std::lock_guard<std::mutex> lk(g_lt_mu);
  std::string key((const char *)&k, sizeof k);
  auto it = g_lt_cache.find(key);
  if (it == g_lt_cache.end()) {
    if (g_lt_cache.size() >= LT_CACHE_MAX) {
      for (auto &kv : g_lt_cache) lt_plan_free(kv.second);
      g_lt_cache.clear();
    }
    it = g_lt_cache.emplace(key, LtPlan()).first;
    lt_plan_build(it->second, k, bias);
  }
  LtPlan &p = it->second;
  if (!p.ok) return false;
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t r = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
  if (r == CUBLAS_STATUS_SUCCESS)
    r = cublasLtMatmul(g_lt, p.op, &one, b.p, p.a, a.p, p.b, &zero, c, p.c, c, p.c, &p.algo, p.ws ? g_blas_ws : NULL,
                       p.ws, wkc_stream());
  *st = blas_status(r, "matmul with a fused epilogue (cublasLtMatmul)");
  return true;
}

// The epilogue on its own, in place on out [M, N] (the fallback): a fused
// elementwise step out = out + bias [, gelu_tanh].
static wk_status epilogue_ew(char *out, const char *bias, int dt, int64_t M, int64_t N, int kind) {
  wk_ew_instr code[4];
  memset(code, 0, sizeof code);
  for (int q = 0; q < 4; q++) code[q].src = -1;
  code[0].op = WK_EW_LOAD, code[0].dst = 0, code[0].a = 0;
  code[1].op = WK_EW_LOAD, code[1].dst = 1, code[1].a = 1;
  code[2].op = WK_OP_ADD, code[2].dst = 2, code[2].a = 0, code[2].b = 1;
  code[3].op = WK_OP_GELU_TANH, code[3].dst = 3, code[3].a = 2;
  wk_step e;
  memset(&e, 0, sizeof e);
  e.op = WK_STEP_FUSED_EW;
  e.device = WK_CUDA;
  e.src = -1;
  e.prog.n = kind == WK_EPI_BIAS_GELU_TANH ? 4 : 3;
  e.prog.nregs = e.prog.n;
  e.prog.out_reg = e.prog.n - 1;
  e.prog.code = code;
  e.nin = 2;
  e.out = wk_operand{0, (wk_dtype)dt, 2, {M, N}, {N, 1}, 0};
  e.in[0] = e.out;
  e.in[1] = wk_operand{1, (wk_dtype)dt, 2, {M, N}, {0, 1}, 0};
  void *ls[2] = {out, (void *)bias};
  return wkc_ew(&e, ls);
}

static wk_status matmul_epi(const wk_step *s, void *const *slots) {
  const wk_operand *out = &s->out;
  int dt = out->dtype, kind = (int)s->attrs.i[0];
  int64_t M = out->shape[0], N = out->shape[1], K = s->in[0].shape[1];
  for (int q = 0; q < 3; q++)
    if (s->in[q].dtype != dt) return wk_error(WK_ERR_DTYPE, "matmul with bias: operands and output must share a dtype");
  if (kind != WK_EPI_BIAS && kind != WK_EPI_BIAS_GELU_TANH)
    return wk_error(WK_ERR_STATE, "matmul with bias: unknown epilogue %d", kind);
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    return wk_error(WK_ERR_SHAPE, "matmul with bias: dimensions too large (M=%lld N=%lld K=%lld)", (long long)M,
                    (long long)N, (long long)K);
  if (M * N == 0) return WK_OK;
  char *c = (char *)slots[out->slot] + out->offset * (int64_t)wkc_esize(dt);
  void *tmp[3] = {NULL, NULL, NULL}, *lslots[3];
  mat m[2];
  wk_status st = WK_OK;
  // operands cuBLAS cannot read as they are, and a bias that is not dense along N
  for (int q = 0; q < 3 && !st; q++) {
    const wk_operand *o = &s->in[q];
    bool direct = q < 2 ? as_mat(o, slots, &m[q]) : (o->stride[o->ndim - 1] == 1 || N == 1);
    if (direct) continue;
    if (!(tmp[q] = wkc_alloc((size_t)wkc_numel(o) * wkc_esize(dt)))) { st = WK_ERR_OOM; break; }
    if ((st = wkc_densify(o, slots, (wk_dtype)dt, tmp[q]))) break;
    if (q < 2) {
      wk_operand d = *o;
      d.slot = q;
      d.offset = 0;
      wk_contiguous_strides(d.ndim, d.shape, d.stride);
      lslots[q] = tmp[q];
      as_mat(&d, lslots, &m[q]);
    }
  }
  const wk_operand *bo = &s->in[2];
  const char *bias = tmp[2] ? (const char *)tmp[2] : (const char *)slots[bo->slot] + bo->offset * (int64_t)wkc_esize(dt);
  if (!st && K == 0) { // the product is zero: out = epilogue(bias)
    cudaMemsetAsync(c, 0, (size_t)(M * N) * wkc_esize(dt), wkc_stream());
    st = epilogue_ew(c, bias, dt, M, N, kind);
  } else if (!st && !lt_matmul(m[0], m[1], dt, c, bias, M, N, K, kind, &st)) {
    st = gemm(m[0], m[1], 0, 0, dt, c, dt, M, N, K, 1, 1.0f, 0.0f, "matmul (cublasGemmStridedBatchedEx)");
    if (!st) st = epilogue_ew(c, bias, dt, M, N, kind);
  }
  for (int q = 0; q < 3; q++) wkc_free(tmp[q]);
  return st;
}

// out = x@W + scale * (x@A)@B: one launch for a few rows, else three GEMMs on the stream
// (t = scale x@A is [M, r]).
static wk_status lora(const wk_step *s, void *const *slots) {
  int dt = s->in[0].dtype;
  for (int k = 0; k < 4; k++)
    if (s->in[k].dtype != dt) return wk_error(WK_ERR_DTYPE, "lora: operands must share a dtype");
  int64_t M = s->in[0].shape[0], K = s->in[0].shape[1], N = s->in[1].shape[1], r = s->in[2].shape[1];
  mat x, w, a, b;
  void *dense[4] = {NULL, NULL, NULL, NULL};
  void *lslots[4];
  mat *ms[4] = {&x, &w, &a, &b};
  wk_status st = WK_OK;
  for (int k = 0; k < 4 && !st; k++) {
    if (as_mat(&s->in[k], slots, ms[k])) continue;
    wk_operand d = s->in[k];
    if (!(dense[k] = wkc_alloc((size_t)wkc_numel(&d) * wkc_esize(dt)))) { st = WK_ERR_OOM; break; }
    if ((st = wkc_densify(&d, slots, (wk_dtype)dt, dense[k]))) break;
    d.slot = k;
    d.offset = 0;
    wk_contiguous_strides(d.ndim, d.shape, d.stride);
    lslots[k] = dense[k];
    as_mat(&d, lslots, ms[k]);
  }
  char *out = (char *)slots[s->out.slot] + s->out.offset * (int64_t)wkc_esize(s->out.dtype);
  void *t = NULL;
  if (!st && M * N > 0 && K > 0 && dt == WK_F32 && s->out.dtype == WK_F32 && !x.trans && !w.trans && !a.trans &&
      !b.trans && wkc_lora_rows_fits(M, K, N, r, w.p, w.ld)) {  // a few rows: one launch (lora.cu)
    st = wkc_lora_rows((const float *)x.p, x.ld, (const float *)w.p, w.ld, (const float *)a.p, a.ld,
                       (const float *)b.p, b.ld, (float *)out, M, K, N, r, s->attrs.f[0]);
  } else if (!st && M * N > 0) {
    if (!(t = wkc_alloc((size_t)(M * (r ? r : 1)) * wkc_esize(dt)))) st = WK_ERR_OOM;
    if (!st && (K == 0 || r == 0)) {
      cudaMemsetAsync(out, 0, (size_t)(M * N) * wkc_esize(s->out.dtype), wkc_stream());
      cudaMemsetAsync(t, 0, (size_t)(M * (r ? r : 1)) * wkc_esize(dt), wkc_stream());
    }
    if (!st && K > 0 && r > 0)
      st = gemm(x, a, 0, 0, dt, (char *)t, dt, M, r, K, 1, s->attrs.f[0], 0.0f, "lora (x@A)");
    if (!st && K > 0) st = gemm(x, w, 0, 0, dt, out, s->out.dtype, M, N, K, 1, 1.0f, 0.0f, "lora (x@W)");
    if (!st && r > 0) {
      mat tm = {(const char *)t, 0, r};
      st = gemm(tm, b, 0, 0, dt, out, s->out.dtype, M, N, r, 1, 1.0f, 1.0f, "lora (t@B)");
    }
  }
  wkc_free(t);
  for (int k = 0; k < 4; k++) wkc_free(dense[k]);
  return st;
}

// A LoRA chain group (compile_schedule.c): one launch keeping W on the chip when every call
// is one row of f32 reading the previous call's output with the first call's W, A and
// B, else call by call.
struct LoraChain {
  mat x, w, a, b;   // the first call's
  int64_t K, N, r;
  std::vector<float *> outs;
  std::vector<float> scales;
};
static bool lora_chain_calls(const wk_step *s, int n, void *const *slots, LoraChain &c) {
  for (int q = 0; q < n; q++) {
    const wk_step *t = &s[q];
    mat xq, wq, aq, bq, o;
    for (int k = 0; k < 4; k++)
      if (t->in[k].dtype != WK_F32) return false;
    if (t->out.dtype != WK_F32 || !as_mat(&t->in[0], slots, &xq) || !as_mat(&t->in[1], slots, &wq) ||
        !as_mat(&t->in[2], slots, &aq) || !as_mat(&t->in[3], slots, &bq) || !as_mat(&t->out, slots, &o) ||
        xq.trans || wq.trans || aq.trans || bq.trans || o.trans || t->in[0].shape[0] != 1)
      return false;
    const int64_t K = t->in[0].shape[1], N = t->in[1].shape[1], r = t->in[2].shape[1];
    if (!q) {
      c = {xq, wq, aq, bq, K, N, r, {}, {}};
      if (!wkc_lora_chain_fits(K, N, r)) return false;
    } else if (xq.p != (const char *)c.outs.back() || wq.p != c.w.p || wq.ld != c.w.ld || aq.p != c.a.p ||
               aq.ld != c.a.ld || bq.p != c.b.p || bq.ld != c.b.ld || K != c.K || N != c.N || r != c.r) {
      return false;
    }
    // a call's output must not overlap its input: CTAs still read x while others store
    if (o.p < xq.p + 4 * K && xq.p < o.p + 4 * N) return false;
    c.outs.push_back((float *)o.p);
    c.scales.push_back(t->attrs.f[0]);
  }
  return true;
}

static wk_status lora_chain(const wk_step *s, int n, void *const *slots) {
  LoraChain c;
  if (lora_chain_calls(s, n, slots, c))
    return wkc_lora_chain((const float *)c.x.p, (const float *)c.w.p, c.w.ld, (const float *)c.a.p, c.a.ld,
                          (const float *)c.b.p, c.b.ld, c.K, c.N, c.r, n, c.outs.data(), c.scales.data());
  wk_status st = WK_OK;
  for (int q = 0; q < n && !st; q++) st = lora(&s[q], slots);
  return st;
}

// ---- transfers between devices (this backend runs the accelerator's side) ----
static wk_status transfer(const wk_step *s, void *const *slots) {
  int to = (int)s->attrs.i[0], from = (int)s->attrs.i[1];
  size_t bytes = wkc_nbytes(&s->out);
  const char *src = wkc_ptr(&s->in[0], slots);
  char *dst = wkc_ptr(&s->out, slots);
  if (!bytes) return WK_OK;
  g_last_kernel = "transfer";
  if (to == WK_CUDA && from == WK_CPU) return wkc_upload(dst, src, bytes);
  if (to == WK_CPU && from == WK_CUDA) // waits (host steps may read it next), unless the job's completion is deferred
    return wkc_defer_download(dst, src, bytes) ? WK_OK : wkc_download(dst, src, bytes);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, wkc_stream());
  if (e != cudaSuccess) return wk_error(WK_ERR_DEVICE, "cuda: device copy of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
  return WK_OK;
}

// ---- dispatch ----
wk_status wkc_dispatch(const wk_step *s, void *const *slots) {
  if (s->chain > 0) {
    if (s->op == WK_OP_QMATMUL) return wkc_half_matmul_group(s, s->chain, slots);
    if (s->op == WK_OP_ROPE)
      return s->chain == WK_DECODE_ATTN_GROUP ? wkc_decode_attn_group(s, slots) : wkc_rope_group(s, s->chain, slots);
    if (s->op == WK_OP_SET_SLICE) return wkc_set_slice_group(s, s->chain, slots);
    if (s->op == WK_OP_LORA) return lora_chain(s, s->chain, slots);
    return s->op == WK_STEP_FUSED_EW ? wkc_ew_group(s, s->chain, slots) : wkc_rowchain(s, s->chain, slots);
  }
  switch ((int)s->op) {
    case WK_STEP_FUSED_EW: return wkc_ew(s, slots);
    case WK_OP_SUM:
    case WK_OP_MAX: return wkc_reduce(s, slots);
    case WK_OP_ARGMAX: return wkc_argmax(s, slots);
    case WK_OP_TOP1: return wkc_top1(s, slots);
    case WK_OP_CONCAT: return wkc_concat(s, slots);
    case WK_OP_PAD: return wkc_pad(s, slots);
    case WK_OP_MATMUL: return s->nin == 3 ? matmul_epi(s, slots) : matmul(s, slots);
    case WK_OP_LORA: return lora(s, slots);
    case WK_OP_SOFTMAX:
    case WK_OP_LOG_SOFTMAX:
    case WK_OP_RMS_NORM:
    case WK_OP_LAYER_NORM: return wkc_rowchain(s, 1, slots);
    case WK_OP_SOFTMAX_BWD:
    case WK_OP_LOG_SOFTMAX_BWD: return wkc_softmax_bwd(s, slots);
    case WK_OP_RMS_NORM_BWD:
    case WK_OP_LAYER_NORM_BWD: return wkc_norm_bwd(s, slots);
    case WK_OP_NORM_DW: return wkc_norm_dw(s, slots);
    case WK_OP_ROPE: return wkc_rope(s, slots);
    case WK_OP_SET_SLICE: return wkc_set_slice(s, slots);
    case WK_OP_EMBEDDING: return wk_dtype_is_quantized(s->in[0].dtype) ? wkc_qembedding(s, slots) : wkc_embedding(s, slots);
    case WK_OP_EMBEDDING_BWD: return wkc_embedding_bwd(s, slots);
    case WK_OP_SDPA: return wkc_sdpa(s, slots);
    case WK_OP_SDPA_BWD: return wkc_sdpa_bwd(s, slots);
    case WK_OP_CROSS_ENTROPY: return wkc_cross_entropy(s, slots, false);
    case WK_OP_CROSS_ENTROPY_BWD: return wkc_cross_entropy(s, slots, true);
    case WK_OP_LINEAR_CE: return wkc_linear_ce(s, slots, false);
    case WK_OP_LINEAR_CE_BWD: return wkc_linear_ce(s, slots, true);
    case WK_OP_TRANSFER: return transfer(s, slots);
    case WK_OP_QMATMUL: return wkc_qmatmul(s, slots);
    case WK_OP_DEQUANTIZE: return wkc_dequantize(s, slots);
    default:
      return wk_error(WK_ERR_STATE, "%s: no CUDA kernel", (unsigned)s->op < WK_OP_COUNT ? wk_ops[s->op].name : "?");
  }
}

wk_status wkc_run(const wk_step *s, void *const *slots) {
  wk_status st = wkc_dispatch(s, slots);
  if (!st && g_sync_each) {
    st = wkc_sync();
    if (st) {
      const char *name = s->op == WK_STEP_FUSED_EW ? "fused elementwise" : (unsigned)s->op < WK_OP_COUNT ? wk_ops[s->op].name : "?";
      char msg[600];
      snprintf(msg, sizeof msg, "%s", wk_last_error());
      return wk_error(st, "%s step: %s", name, msg);
    }
  }
  return st;
}

// ---- init ----
static void init_once(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    snprintf(g_init_err, sizeof g_init_err, "cuda: no usable device (%s); the CPU backend stays available",
             e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device found");
    cudaGetLastError();
    return;
  }
  int dev = 0;
  const char *env = getenv("WICK_CUDA_DEVICE");
  if (env) dev = atoi(env);
  if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaGetDeviceProperties(&g_prop, dev)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&g_cap_stream, cudaStreamNonBlocking)) != cudaSuccess) {
    snprintf(g_init_err, sizeof g_init_err, "cuda: device %d: %s", dev, cudaGetErrorString(e));
    return;
  }
  if (cublasCreate(&g_blas) != CUBLAS_STATUS_SUCCESS) {
    snprintf(g_init_err, sizeof g_init_err, "cuda: cuBLAS could not be initialized");
    return;
  }
  if (cublasLtCreate(&g_lt) != CUBLAS_STATUS_SUCCESS) {
    snprintf(g_init_err, sizeof g_init_err, "cuda: cuBLASLt could not be initialized");
    return;
  }
  if (cudaMalloc(&g_blas_ws, BLAS_WORKSPACE) != cudaSuccess) { cudaGetLastError(); g_blas_ws = NULL; }
  blas_stream(g_stream);
  cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH);
  if ((e = cudaMallocHost((void **)&g_err_host, sizeof(DevErr))) != cudaSuccess ||
      (e = cudaMalloc((void **)&g_err_dev, sizeof(DevErr))) != cudaSuccess ||
      (e = cudaMemset(g_err_dev, 0, sizeof(DevErr))) != cudaSuccess) {
    snprintf(g_init_err, sizeof g_init_err, "cuda: error record: %s", cudaGetErrorString(e));
    return;
  }
  memset(g_err_host, 0, sizeof(DevErr));
  g_sms = g_prop.multiProcessorCount;
  int smem = 0;
  cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  g_max_smem = (size_t)smem;
  g_sync_each = getenv("WICK_CUDA_SYNC") && atoi(getenv("WICK_CUDA_SYNC"));
  g_tf32 = getenv("WICK_CUDA_TF32") && atoi(getenv("WICK_CUDA_TF32"));
  g_graphs = !getenv("WICK_CUDA_GRAPHS") || atoi(getenv("WICK_CUDA_GRAPHS")); // WICK_CUDA_GRAPHS=0: launch step by step
  const char *lim = getenv("WICK_CUDA_CACHE_MB");
  g_alloc.limit = lim && atol(lim) > 0 ? (size_t)atol(lim) << 20 : g_prop.totalGlobalMem / 2;
  g_ok = true;
}

static const wk_backend cuda_backend = {
    "cuda",        WK_CUDA, wkc_alloc,      wkc_free,        wkc_upload,      wkc_download,
    wkc_run,       wkc_sync, wkc_capturable, wkc_run_segment, wkc_segment_free, wkc_lora_chain_fits,
    wkc_defer_begin, wkc_defer_end, wkc_ticket_done, wkc_finish,
};

extern "C" const wk_backend *wk_backend_cuda(void) {
  std::call_once(g_once, init_once);
  if (!g_ok) {
    wk_error(WK_ERR_DEVICE, "%s", g_init_err);
    return NULL;
  }
  return &cuda_backend;
}
