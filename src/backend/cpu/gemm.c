// CPU GEMM: BLIS-style packed GEMM for the general case, and packing-free kernels
// for small M (or small N, by transposing the problem), which are memory bound.
//
// Packed loop nest for one thread's tile of C (M = rows, N = cols, K = depth):
//   jc (NC cols) -> pc (KC depth): pack B block KC x NC, stays in L2
//     -> ic (MC rows): pack A block MC x KC
//       -> ir (MR rows): the A micro-panel MR x KC stays in L1
//         -> jr (NR cols): microkernel streams a B micro-panel from L2
// Threads get disjoint tiles of C, so they never synchronize; each packs its own
// operands (redundant A or B packing is a few percent at the sizes that matter).
#define _GNU_SOURCE
#include "gemm.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_isa.h"
#include "gemm_internal.h"
#include "threadpool.h"

// ---------------------------------------------------------------------------
// Per-thread workspace, reused across calls so steady state never mallocs.

typedef struct {
    void *buf[5];  // 0: packed A, 1: packed B, 2: small-path scratch, 3: K-split partials,
    size_t cap[5]; // 4: B expanded from a wk_gemm_bsrc before packing
} wk_gemm_ws;

static pthread_key_t wk_ws_key;
static pthread_once_t wk_ws_once = PTHREAD_ONCE_INIT;
static _Thread_local wk_gemm_ws *wk_ws_tls;

static void wk_ws_free(void *p) {
    wk_gemm_ws *ws = p;
    for (int i = 0; i < 5; i++) free(ws->buf[i]);
    free(ws);
}
static void wk_ws_key_init(void) { (void)pthread_key_create(&wk_ws_key, wk_ws_free); }

// Returns a 64-byte aligned buffer of at least `bytes`, or NULL when out of memory.
static void *wk_ws_get(int slot, size_t bytes) {
    wk_gemm_ws *ws = wk_ws_tls;
    if (!ws) {
        pthread_once(&wk_ws_once, wk_ws_key_init);
        ws = calloc(1, sizeof *ws);
        if (!ws) return NULL;
        wk_ws_tls = ws;
        // The key's destructor frees a worker's buffers when its thread exits.
        (void)pthread_setspecific(wk_ws_key, ws);
    }
    if (ws->cap[slot] < bytes) {
        free(ws->buf[slot]);
        size_t sz = (bytes + 4095) & ~(size_t)4095;  // page multiple: also a 64 multiple
        ws->buf[slot] = aligned_alloc(64, sz);
        ws->cap[slot] = ws->buf[slot] ? sz : 0;
    }
    return ws->buf[slot];
}

// ---------------------------------------------------------------------------
// Scalar fallback kernels. Plain C that the baseline compile vectorizes with SSE2.

enum { WK_SMR = 4, WK_SNR = 16 };

static void wk_ukr_scalar(int64_t kc, const void *a_, const void *b_, int64_t ldb, float *c,
                          int64_t ldc, int mr, int nr, float alpha, float beta) {
    const float *a = a_, *b = b_;
    float acc[WK_SMR][WK_SNR] = {{0}};
    for (int64_t k = 0; k < kc; k++, a += WK_SMR, b += ldb)
        for (int i = 0; i < WK_SMR; i++)
            for (int j = 0; j < WK_SNR; j++) acc[i][j] += a[i] * b[j];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = alpha * acc[i][j];
            c[i * ldc + j] = beta != 0.0f ? s + beta * c[i * ldc + j] : s;
        }
}
static const wk_ukr wk_ukr_scalar_f32 = {WK_SMR, WK_SNR, 0, wk_ukr_scalar, NULL};

static inline float wk_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float wk_ldw(int bf16, const void *w, int64_t off) {
    return bf16 ? wk_bf16_to_f32(((const uint16_t *)w)[off]) : ((const float *)w)[off];
}

static void wk_gemv_scalar(int bf16, int dot, int rows, int64_t K, int64_t n, const float *x,
                           int64_t ldx, const void *w, int64_t ldw, float *y, int64_t ldy,
                           float alpha, float beta) {
    for (int r = 0; r < rows; r++) {
        float *yr = y + r * ldy;
        const float *xr = x + r * ldx;
        if (dot) {
            for (int64_t j = 0; j < n; j++) {
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) s += xr[k] * wk_ldw(bf16, w, j * ldw + k);
                yr[j] = beta != 0.0f ? alpha * s + beta * yr[j] : alpha * s;
            }
        } else {
            for (int64_t j = 0; j < n; j++) yr[j] = beta != 0.0f ? beta * yr[j] : 0.0f;
            for (int64_t k = 0; k < K; k++) {
                float xa = alpha * xr[k];
                for (int64_t j = 0; j < n; j++) yr[j] += xa * wk_ldw(bf16, w, k * ldw + j);
            }
        }
    }
}
#define WK_DEF_GEMV_SCALAR(name, BF, DOT)                                                       \
    static void name(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const void *w, \
                     int64_t ldw, float *y, int64_t ldy, float alpha, float beta) {             \
        wk_gemv_scalar(BF, DOT, rows, K, n, x, ldx, w, ldw, y, ldy, alpha, beta);                \
    }
WK_DEF_GEMV_SCALAR(wk_gemv_s_axpy_f32, 0, 0)
WK_DEF_GEMV_SCALAR(wk_gemv_s_dot_f32, 0, 1)
WK_DEF_GEMV_SCALAR(wk_gemv_s_axpy_bf16, 1, 0)
WK_DEF_GEMV_SCALAR(wk_gemv_s_dot_bf16, 1, 1)
static const wk_gemv_set wk_gemv_scalar_set = {wk_gemv_s_axpy_f32, wk_gemv_s_dot_f32, wk_gemv_s_axpy_bf16,
                                               wk_gemv_s_dot_bf16, NULL, NULL};

// ---------------------------------------------------------------------------
// The problem, as every path sees it.

typedef struct {
    int serial;  // run on the calling thread (the caller already split the work)
    int bf16;  // A and B hold bf16 bits
    int transA, transB;
    int64_t M, N, K;
    float alpha, beta;
    const void *A, *B;
    int64_t lda, ldb, sA, sB;
    float *C;
    int64_t ldc, sC, batch;
    const wk_gemm_bsrc *bsrc;  // B expands itself (A, lda, transA as usual; B, ldb unused)
    wk_gemm_epi_fn epi;        // run on each finished block of C (batch 1), or NULL
    const void *epi_ctx;
} wk_gemm_args;

static int64_t wk_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t wk_roundup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static size_t wk_esize(const wk_gemm_args *g) { return g->bf16 ? 2 : 4; }
static const void *wk_at(const void *p, int64_t off, size_t es) {
    return (const char *)p + off * (int64_t)es;
}

// ---------------------------------------------------------------------------
// Packing. A panel of width W (MR rows of A, or NR columns of B) over kc depth is
// stored dst[k*W + r]; element (r, k) of the source lives at src[r*rs + k*ks].
// Rows past `w` are zero so the microkernel can always run a full tile.

static void wk_pack_f32(const void *src, int bf16, int64_t rs, int64_t ks, int64_t w, int64_t kc,
                        int W, float *dst) {
    if (!bf16 && rs == 1) {  // contiguous along the panel: row copies
        for (int64_t k = 0; k < kc; k++) {
            const float *s = (const float *)src + k * ks;
            float *d = dst + k * W;
            memcpy(d, s, (size_t)w * sizeof(float));
            for (int64_t r = w; r < W; r++) d[r] = 0.0f;
        }
        return;
    }
#if defined(__x86_64__)
    if (!bf16 && ks == 1 && wk_cpu_isa() == WK_ISA_AVX512) {
        wk_pack_t_avx512(src, rs * 4, w, kc, W, dst);
        return;
    }
#endif
    if (!bf16 && ks == 1) {
        // Transposing copy. Walking all w source rows together in 16-element steps
        // keeps w streams in flight; one row at a time stalls on each row's first miss.
        for (int64_t k0 = 0; k0 < kc; k0 += 16) {
            int64_t kn = kc - k0 < 16 ? kc - k0 : 16;
            float *d = dst + k0 * W;
            for (int64_t r = 0; r < w; r++) {
                const float *sr = (const float *)src + r * rs + k0;
                __builtin_prefetch(sr + 64);
                for (int64_t q = 0; q < kn; q++) d[q * W + r] = sr[q];
            }
            for (int64_t r = w; r < W; r++)
                for (int64_t q = 0; q < kn; q++) d[q * W + r] = 0.0f;
        }
        return;
    }
    for (int64_t r = 0; r < W; r++) {
        if (r < w) {
            if (bf16) {
                const uint16_t *s = (const uint16_t *)src + r * rs;
                for (int64_t k = 0; k < kc; k++) dst[k * W + r] = wk_bf16_to_f32(s[k * ks]);
            } else {
                const float *s = (const float *)src + r * rs;
                for (int64_t k = 0; k < kc; k++) dst[k * W + r] = s[k * ks];
            }
        } else {
            for (int64_t k = 0; k < kc; k++) dst[k * W + r] = 0.0f;
        }
    }
}

// bf16 pairs: unit k2 holds source k = 2*k2 (low half) and 2*k2 + 1 (high half).
static void wk_pack_bf16(const uint16_t *src, int64_t rs, int64_t ks, int64_t w, int64_t kc, int W,
                         uint32_t *dst) {
    int64_t kc2 = (kc + 1) / 2;
#if defined(__x86_64__)
    // Only AVX-512 uses pairs, so these helpers are always available here.
    if (ks == 1) {  // a pair is one aligned-or-not 32-bit load; the odd tail goes below
        wk_pack_t_avx512(src, rs * 2, w, kc / 2, W, (float *)dst);
        if (!(kc & 1)) return;
        for (int64_t r = 0; r < W; r++)
            dst[(kc2 - 1) * W + r] = r < w ? (uint32_t)src[r * rs + kc - 1] : 0;
        return;
    }
    if (rs == 1 && W % 16 == 0) {
        wk_pack_pairs_avx512(src, ks, w, kc, W, dst);
        return;
    }
#endif
    for (int64_t r = 0; r < W; r++) {
        if (r >= w) {
            for (int64_t k2 = 0; k2 < kc2; k2++) dst[k2 * W + r] = 0;
            continue;
        }
        const uint16_t *s = src + r * rs;
        for (int64_t k2 = 0; k2 < kc / 2; k2++)
            dst[k2 * W + r] = (uint32_t)s[2 * k2 * ks] | (uint32_t)s[(2 * k2 + 1) * ks] << 16;
        if (kc & 1) dst[(kc2 - 1) * W + r] = (uint32_t)s[(kc - 1) * ks];
    }
}

// Packs rows [r0, r0+rn) x depth [k0, k0+kc) of an operand into panels of width W.
static void wk_pack_block(const wk_gemm_args *g, const wk_ukr *uk, const void *src, int64_t rs,
                          int64_t ks, int64_t r0, int64_t rn, int64_t k0, int64_t kc, int W,
                          void *dst) {
    size_t es = wk_esize(g);
    int64_t kcu = uk->bf16 ? (kc + 1) / 2 : kc;
    for (int64_t p = 0; p < rn; p += W) {
        int64_t w = rn - p < W ? rn - p : W;
        const void *s = wk_at(src, (r0 + p) * rs + k0 * ks, es);
        if (uk->bf16)
            wk_pack_bf16(s, rs, ks, w, kc, W, (uint32_t *)dst + (p / W) * kcu * W);
        else
            wk_pack_f32(s, g->bf16, rs, ks, w, kc, W, (float *)dst + (p / W) * kcu * W);
    }
}

// B from a wk_gemm_bsrc: columns [j0, j0+nc) x depth [k0, k0+kc) into NR-wide panels.
static void wk_pack_bsrc(const wk_gemm_bsrc *src, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
                         int NR, float *dst) {
    if (src->col) {  // expand NR columns as rows of a scratch tile, then pack it transposed
        float *t = wk_ws_get(4, (size_t)(NR * kc) * sizeof(float));
        if (!t) return;
        for (int64_t p = 0; p < nc; p += NR) {
            int64_t w = nc - p < NR ? nc - p : NR;
            for (int64_t r = 0; r < w; r++) src->col(src->ctx, j0 + p + r, k0, kc, t + r * kc);
            wk_pack_f32(t, 0, kc, 1, w, kc, NR, dst + (p / NR) * kc * NR);
        }
        return;
    }
    float *t = wk_ws_get(4, (size_t)nc * sizeof(float));  // one row of op(B), copied NR-wide
    if (!t) return;
    for (int64_t k = 0; k < kc; k++) {
        src->row(src->ctx, k0 + k, j0, nc, t);
        for (int64_t p = 0; p < nc; p += NR) {
            int64_t w = nc - p < NR ? nc - p : NR;
            float *d = dst + (p / NR) * kc * NR + k * NR;
            memcpy(d, t + p, (size_t)w * sizeof(float));
            for (int64_t r = w; r < NR; r++) d[r] = 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------
// B packed once. A frozen region is memory nobody writes until it is thawed (model
// weights); B operands inside one keep their packed panels from call to call. The
// panels of a whole B: depth block pc (units before it: pcu) holds all Np = N rounded
// up to NR columns as NR-wide panels, at pcu * Np; column j's panel at + j * kcu.

typedef struct wk_bpack {
    struct wk_bpack *next;
    const void *B;  // the key: B's layout and the kernel's panel layout
    int64_t ldb, K, N, KC;
    int transB, bf16;
    const wk_ukr *uk;
    size_t bytes;
    void *panels;
} wk_bpack;

typedef struct {
    const char *lo, *hi;  // [lo, hi)
    wk_bpack *packs;
} wk_frozen;

#define WK_BPACK_BUDGET ((size_t)1 << 30)  // past it B packs per call: no thrashing

static pthread_mutex_t wk_frozen_mu = PTHREAD_MUTEX_INITIALIZER;
static wk_frozen *wk_frozen_v;
static int wk_frozen_n, wk_frozen_cap;
static size_t wk_bpack_bytes;

int wk_gemm_freeze(const void *p, size_t bytes) {
    if (!p || !bytes) return 0;
    int rc = 0;
    pthread_mutex_lock(&wk_frozen_mu);
    bool known = false;
    for (int i = 0; i < wk_frozen_n && !known; i++) known = wk_frozen_v[i].lo == (const char *)p;
    if (!known && wk_frozen_n == wk_frozen_cap) {
        int cap = wk_frozen_cap ? 2 * wk_frozen_cap : 64;
        wk_frozen *v = realloc(wk_frozen_v, (size_t)cap * sizeof *v);
        if (v) wk_frozen_v = v, wk_frozen_cap = cap;
        else rc = -1;
    }
    if (!known && !rc)
        wk_frozen_v[wk_frozen_n++] = (wk_frozen){(const char *)p, (const char *)p + bytes, NULL};
    pthread_mutex_unlock(&wk_frozen_mu);
    return rc;
}

void wk_gemm_thaw(const void *p) {
    pthread_mutex_lock(&wk_frozen_mu);
    for (int i = 0; i < wk_frozen_n; i++) {
        if (wk_frozen_v[i].lo != (const char *)p) continue;
        for (wk_bpack *e = wk_frozen_v[i].packs, *nx; e; e = nx) {
            nx = e->next;
            wk_bpack_bytes -= e->bytes;
            free(e->panels);
            free(e);
        }
        wk_frozen_v[i] = wk_frozen_v[--wk_frozen_n];
        break;
    }
    pthread_mutex_unlock(&wk_frozen_mu);
}

size_t wk_gemm_frozen_bytes(void) {
    pthread_mutex_lock(&wk_frozen_mu);
    size_t b = wk_bpack_bytes;
    pthread_mutex_unlock(&wk_frozen_mu);
    return b;
}

static bool wk_bpack_match(const wk_bpack *e, const wk_gemm_args *g, const wk_ukr *uk, int64_t KC) {
    return e->B == g->B && e->ldb == g->ldb && e->K == g->K && e->N == g->N && e->KC == KC &&
           e->transB == g->transB && e->bf16 == g->bf16 && e->uk == uk;
}

// The frozen region holding [lo, hi) (NULL: none) and, in *hit, g's panels packed
// there already (NULL: none). Under wk_frozen_mu.
static wk_frozen *wk_bpack_find(const char *lo, const char *hi, const wk_gemm_args *g, const wk_ukr *uk,
                                int64_t KC, const void **hit) {
    wk_frozen *r = NULL;
    for (int i = 0; i < wk_frozen_n && !r; i++)
        if (wk_frozen_v[i].lo <= lo && hi <= wk_frozen_v[i].hi) r = &wk_frozen_v[i];
    *hit = NULL;
    for (wk_bpack *e = r ? r->packs : NULL; e && !*hit; e = e->next)
        if (wk_bpack_match(e, g, uk, KC)) *hit = e->panels;
    return r;
}

// The packed panels of g's B for kernel uk and depth blocks of KC, packing them now
// if B lies in a frozen region; NULL when it does not (or out of budget / memory).
static const void *wk_bpack_get(const wk_gemm_args *g, const wk_ukr *uk, int64_t KC) {
    if (g->batch != 1 || g->bsrc) return NULL;
    size_t es = wk_esize(g);
    // B's extent: op(B) is K x N; stored [K, ldb] (or [N, ldb] transposed).
    int64_t rows = g->transB ? g->N : g->K, cols = g->transB ? g->K : g->N;
    const char *lo = g->B, *hi = lo + ((rows - 1) * g->ldb + cols) * (int64_t)es;
    const int NR = uk->nr;
    int64_t Np = wk_roundup(g->N, NR), Ku = uk->bf16 ? wk_roundup(g->K, 2) / 2 : g->K;
    size_t bytes = (size_t)(Np * Ku) * 4;
    pthread_mutex_lock(&wk_frozen_mu);
    const void *hit;
    wk_frozen *r = wk_bpack_find(lo, hi, g, uk, KC, &hit);
    bool room = r && !hit && wk_bpack_bytes + bytes <= WK_BPACK_BUDGET;
    pthread_mutex_unlock(&wk_frozen_mu);
    if (!room) return hit;
    // Packed outside the lock; a region thawed meanwhile is being written, which a
    // concurrent GEMM on it races with anyway. Insert only if it is still frozen.
    wk_bpack *e = calloc(1, sizeof *e);
    void *panels = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!e || !panels) {
        free(e);
        free(panels);
        return NULL;
    }
    int64_t brs = g->transB ? g->ldb : 1, bks = g->transB ? 1 : g->ldb;
    for (int64_t pc = 0; pc < g->K; pc += KC) {
        int64_t kc = wk_min64(KC, g->K - pc), pcu = uk->bf16 ? pc / 2 : pc;
        wk_pack_block(g, uk, g->B, brs, bks, 0, g->N, pc, kc, NR, (float *)panels + pcu * Np);
    }
    *e = (wk_bpack){.B = g->B, .ldb = g->ldb, .K = g->K, .N = g->N, .KC = KC, .transB = g->transB,
                    .bf16 = g->bf16, .uk = uk, .bytes = bytes, .panels = panels};
    pthread_mutex_lock(&wk_frozen_mu);
    r = wk_bpack_find(lo, hi, g, uk, KC, &hit);   // again: the lock was let go while packing
    if (r && !hit && wk_bpack_bytes + bytes <= WK_BPACK_BUDGET) {
        e->next = r->packs;
        r->packs = e;
        wk_bpack_bytes += bytes;
        hit = panels;
        e = NULL;
    }
    pthread_mutex_unlock(&wk_frozen_mu);
    if (e) {
        free(e->panels);
        free(e);
    }
    return hit;
}

// ---------------------------------------------------------------------------
// Packed GEMM.

typedef struct {
    const wk_gemm_args *g;
    const wk_ukr *uk;
    int64_t MC, KC, NC;  // KC in source elements (even for bf16 pairs)
    int tm, tn;          // thread tile grid per matrix
    int64_t mstep, nstep;
    const void *bpk;  // B's panels packed once (wk_bpack_get), or NULL: pack per block
} wk_gemm_plan;

static void wk_gemm_tile(const wk_gemm_plan *pl, int64_t b, int64_t m0, int64_t m1, int64_t n0,
                         int64_t n1) {
    const wk_gemm_args *g = pl->g;
    const wk_ukr *uk = pl->uk;
    const int MR = uk->mr, NR = uk->nr;
    size_t es = wk_esize(g);
    const void *A = wk_at(g->A, b * g->sA, es), *B = wk_at(g->B, b * g->sB, es);
    float *C = g->C + b * g->sC;
    // (row, k) strides of op(A) and (col, k) strides of op(B).
    int64_t ars = g->transA ? 1 : g->lda, aks = g->transA ? g->lda : 1;
    int64_t brs = g->transB ? g->ldb : 1, bks = g->transB ? 1 : g->ldb;
    int64_t kcu_max = uk->bf16 ? pl->KC / 2 : pl->KC;
    float *pa = wk_ws_get(0, (size_t)(wk_roundup(pl->MC, MR) * kcu_max) * 4);
    float *pb = pl->bpk ? NULL : wk_ws_get(1, (size_t)(wk_roundup(pl->NC, NR) * kcu_max) * 4);
    if (!pa || (!pb && !pl->bpk)) return;  // out of memory: nothing sane to do inside a kernel
    // f32 rows of op(A) contiguous along k: the microkernel reads them in place.
    const bool direct_a = uk->da && !g->bf16 && aks == 1;
    for (int64_t jc = n0; jc < n1; jc += pl->NC) {
        int64_t nc = wk_min64(pl->NC, n1 - jc);
        for (int64_t pc = 0; pc < g->K; pc += pl->KC) {
            int64_t kc = wk_min64(pl->KC, g->K - pc);
            int64_t kcu = uk->bf16 ? (kc + 1) / 2 : kc;
            // K blocks after the first accumulate onto what the first wrote.
            float beta = pc == 0 ? g->beta : 1.0f;
            bool last_k = pc + kc >= g->K;
            if (pl->bpk) pb = (float *)pl->bpk + (uk->bf16 ? pc / 2 : pc) * wk_roundup(g->N, NR) + jc * kcu;
            else if (g->bsrc) wk_pack_bsrc(g->bsrc, jc, nc, pc, kc, NR, pb);
            else wk_pack_block(g, uk, B, brs, bks, jc, nc, pc, kc, NR, pb);
            for (int64_t ic = m0; ic < m1; ic += pl->MC) {
                int64_t mc = wk_min64(pl->MC, m1 - ic);
                if (!direct_a) wk_pack_block(g, uk, A, ars, aks, ic, mc, pc, kc, MR, pa);
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    float *cr = C + (ic + ir) * g->ldc + jc;
                    int mr = (int)wk_min64(MR, mc - ir);
                    const float *ar = (const float *)A + (ic + ir) * ars + pc;
                    for (int64_t jr = 0; jr < nc; jr += NR) {
                        int nr = (int)wk_min64(NR, nc - jr);
                        if (direct_a)
                            uk->da(kcu, ar, ars, pb + jr * kcu, NR, cr + jr, g->ldc, mr, nr, g->alpha, beta);
                        else
                            uk->fn(kcu, pa + ir * kcu, pb + jr * kcu, NR, cr + jr, g->ldc, mr, nr, g->alpha, beta);
                    }
                    // Once a row panel (MR rows x nc) is done, not per tile: long rows keep
                    // the epilogue's vector math (erf) busy; short ones leave it latency bound.
                    if (last_k && g->epi) g->epi(cr, g->ldc, mr, jc, nc, g->epi_ctx);
                }
            }
        }
    }
}

static void wk_gemm_task(void *ctx, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const wk_gemm_plan *pl = ctx;
    const wk_gemm_args *g = pl->g;
    int64_t per = (int64_t)pl->tm * pl->tn;
    for (int64_t it = begin; it < end; it++) {
        int64_t b = it / per, t = it % per;
        int64_t m0 = (t / pl->tn) * pl->mstep, n0 = (t % pl->tn) * pl->nstep;
        int64_t m1 = wk_min64(g->M, m0 + pl->mstep), n1 = wk_min64(g->N, n0 + pl->nstep);
        if (m0 < m1 && n0 < n1) wk_gemm_tile(pl, b, m0, m1, n0, n1);
    }
}

static const wk_ukr *wk_pick_ukr(const wk_gemm_args *g, wk_cpu_isa_t isa) {
#if defined(__x86_64__)
    // N <= 8 (LoRA rank): the AVX2 kernel's 8-wide ymm tile wastes no lanes, where a
    // zmm tile would run half empty; Zen 4 does the same FLOPs per cycle with either.
    if (isa == WK_ISA_AVX512 && g->N <= 8 && !g->bf16) return &wk_ukr_avx2_f32[0];
    if (isa == WK_ISA_AVX512) {
        const wk_ukr *set = g->bf16 && wk_cpu_has_bf16() ? wk_ukr_avx512_bf16 : wk_ukr_avx512_f32;
        return g->N <= 16 ? &set[0] : g->N <= 32 ? &set[1] : &set[2];
    }
    if (isa == WK_ISA_AVX2) return g->N <= 8 ? &wk_ukr_avx2_f32[0] : &wk_ukr_avx2_f32[1];
#endif
    (void)g;
    (void)isa;
    return &wk_ukr_scalar_f32;
}

// Threads worth using: each should get >= 250K multiply-adds (~2.5 us), so that the
// ~1 us dispatch and the per-thread packing stay small next to the work.
static int wk_useful_threads(double flops) {
    int nt = wk_threads();
    double per = 5e5;
    int want = (int)(flops / per);
    if (want < 1) want = 1;
    return want < nt ? want : nt;
}

static void wk_gemm_packed(const wk_gemm_args *g, wk_cpu_isa_t isa) {
    wk_gemm_plan pl = {.g = g, .uk = wk_pick_ukr(g, isa)};
    const int MR = pl.uk->mr, NR = pl.uk->nr;
    // KC x MR A micro-panel in L1 (6 KiB), KC x NC B block in L2. NC = 1024 means a
    // 2048-wide problem on 2 threads packs its A once; measured on Zen4 (1 MiB L2),
    // a B block the size of L2 still beats re-packing A for every half.
    pl.KC = pl.uk->bf16 ? 512 : 256;
    pl.NC = 1024;
    pl.MC = wk_roundup(256, MR);
    if (g->bsrc && g->bsrc->kalign > 1) pl.KC = wk_roundup(pl.KC, g->bsrc->kalign);
    if (g->K < pl.KC) pl.KC = pl.uk->bf16 ? wk_roundup(g->K, 2) : g->K;
    if (!g->serial) pl.bpk = wk_bpack_get(g, pl.uk, pl.KC);
    double flops = 2.0 * (double)g->M * (double)g->N * (double)g->K * (double)g->batch;
    int T = g->serial ? 1 : wk_useful_threads(flops);
    pl.tm = pl.tn = 1;
    if (g->batch < T) {
        // Split each matrix into T tiles, choosing the grid that packs least.
        int64_t mb = (g->M + MR - 1) / MR, nb = (g->N + NR - 1) / NR;
        double best = 1e300;
        // Ties go to splitting M: threads then write disjoint rows of C, and no
        // cache line straddles two threads' tiles when C is not 64-byte aligned.
        for (int tm = T; tm >= 1; tm--) {
            if (T % tm) continue;
            int tn = T / tm;
            if (tm > mb || tn > nb) continue;
            double cost = (double)g->M / tm + (double)g->N / tn;
            if (cost < best) best = cost, pl.tm = tm, pl.tn = tn;
        }
    }
    pl.mstep = wk_roundup((g->M + pl.tm - 1) / pl.tm, MR);
    pl.nstep = wk_roundup((g->N + pl.tn - 1) / pl.tn, NR);
    int64_t items = g->batch * pl.tm * pl.tn;
    if (T == 1) wk_gemm_task(&pl, 0, items, 0);
    else wk_parallel_for(items, 1, wk_gemm_task, &pl);
}

// ---------------------------------------------------------------------------
// Small M (or small N, solved as C^T = op(B)^T op(A)^T): Y = X @ W where X has
// `rows` <= 4 rows, packed to f32; W is read in place, once.

typedef struct {
    const wk_gemm_args *g;
    wk_gemv_fn fn;
    int rows, swap;  // swap: X comes from B, W from A, Y is C^T
    int dot;         // W form (see gemm_internal.h)
    int64_t n;       // columns of Y
    int64_t ldw;
    int chunks;      // column chunks per matrix, or K chunks when part != NULL
    float *part;     // K split: chunk t writes rows x n partial sums at part + t*rows*n
} wk_small_plan;

static void wk_small_task(void *ctx, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const wk_small_plan *sp = ctx;
    const wk_gemm_args *g = sp->g;
    const size_t es = wk_esize(g);
    const int rows = sp->rows;
    const int64_t K = g->K;
    int64_t cw = wk_roundup((sp->n + sp->chunks - 1) / sp->chunks, 16);
    // Scratch: X (rows x K), then Y^T (rows x chunk) when C is transposed.
    float *x = wk_ws_get(2, (size_t)(rows * K + (sp->swap ? rows * cw : 0)) * sizeof(float));
    if (!x) return;
    for (int64_t it = begin; it < end; it++) {
        int64_t b = it / sp->chunks, c = it % sp->chunks;
        int64_t j0 = 0, j1 = sp->n, k0 = 0, k1 = K;
        if (sp->part) wk_gemv_k_chunk(K, sp->chunks, (int)c, &k0, &k1);
        else j0 = c * cw, j1 = wk_min64(sp->n, j0 + cw);
        if (j0 >= j1 || k0 >= k1) {
            // K split: rounding the chunks up to 16 can leave the last ones empty, and
            // every chunk's partial sums are added (the scratch holds an older call's)
            if (sp->part) memset(sp->part + c * rows * sp->n, 0, sizeof(float) * (size_t)(rows * sp->n));
            continue;
        }
        int64_t kn = k1 - k0, nw = j1 - j0;
        const void *A = wk_at(g->A, b * g->sA, es), *B = wk_at(g->B, b * g->sB, es);
        float *C = g->C + b * g->sC;
        // X[r][k]: op(A)[r,k], or op(B)[k,r] when swapped; as (r, k) strides.
        const void *xs = sp->swap ? B : A;
        int xt = sp->swap ? !g->transB : g->transA;
        int64_t xld = sp->swap ? g->ldb : g->lda;
        int64_t xrs = xt ? 1 : xld, xks = xt ? xld : 1;
        // f32 rows of X are read in place; other forms are gathered into f32 rows
        const float *xp = (const float *)xs + k0;
        int64_t xl = xrs;
        if (g->bf16 || xks != 1) {
            for (int r = 0; r < rows; r++)
                for (int64_t k = 0; k < kn; k++)
                    x[r * kn + k] = wk_ldw(g->bf16, xs, r * xrs + (k0 + k) * xks);
            xp = x, xl = kn;
        }
        const void *W = sp->swap ? A : B;
        const void *w = wk_at(W, sp->dot ? j0 * sp->ldw + k0 : k0 * sp->ldw + j0, es);
        if (sp->part) {
            sp->fn(rows, kn, nw, xp, xl, w, sp->ldw, sp->part + c * rows * sp->n, sp->n, 1.0f, 0.0f);
        } else if (!sp->swap) {
            sp->fn(rows, kn, nw, xp, xl, w, sp->ldw, C + j0, g->ldc, g->alpha, g->beta);
        } else {
            // Y^T lives in strided C columns: gather, compute contiguous, scatter.
            float *y = x + rows * K;
            if (g->beta != 0.0f)
                for (int r = 0; r < rows; r++)
                    for (int64_t j = 0; j < nw; j++) y[r * nw + j] = C[(j0 + j) * g->ldc + r];
            sp->fn(rows, kn, nw, xp, xl, w, sp->ldw, y, nw, g->alpha, g->beta);
            for (int r = 0; r < rows; r++)
                for (int64_t j = 0; j < nw; j++) C[(j0 + j) * g->ldc + r] = y[r * nw + j];
        }
    }
}

// Memory bound: a thread pays off once it streams ~64 KiB of W.
static int wk_small_threads(int64_t K, int64_t n, size_t esize) {
    double bytes = (double)K * (double)n * (double)esize;
    int T = wk_threads(), want = (int)(bytes / 65536.0);
    return want < 1 ? 1 : want < T ? want : T;
}

// Axpy form reads W row by row: splitting K gives each thread whole contiguous rows
// (one long sequential stream) instead of a slice of every row, at the cost of summing
// the partial results at the end.
int wk_gemv_k_chunks(int64_t K, int64_t n, int dot, int esize) {
    int T = wk_small_threads(K, n, (size_t)esize);
    return T > 1 && !dot && K >= 64 * T ? T : 1;
}

void wk_gemv_k_chunk(int64_t K, int chunks, int c, int64_t *k0, int64_t *k1) {
    int64_t kw = wk_roundup((K + chunks - 1) / chunks, 16);
    *k0 = wk_min64(K, c * kw);
    *k1 = wk_min64(K, *k0 + kw);
}

static const wk_gemv_set *wk_gemv_for_isa(void) {
#if defined(__x86_64__)
    wk_cpu_isa_t isa = wk_cpu_isa();
    if (isa == WK_ISA_AVX512) return &wk_gemv_avx512;
    if (isa == WK_ISA_AVX2) return &wk_gemv_avx2;
#endif
    return &wk_gemv_scalar_set;
}

static void wk_gemm_small(const wk_gemm_args *g, int swap) {
    const wk_gemv_set *set = wk_gemv_for_isa();
    wk_small_plan sp = {.g = g, .swap = swap};
    sp.rows = (int)(swap ? g->N : g->M);
    sp.n = swap ? g->M : g->N;
    // W(k, j) = op(B)[k, j], or op(A)[j, k] when swapped; "dot" when k is contiguous.
    sp.dot = swap ? !g->transA : g->transB;
    sp.ldw = swap ? g->lda : g->ldb;
    sp.fn = sp.dot ? (g->bf16 ? set->dot_bf16 : set->dot_f32)
                   : (g->bf16 ? set->axpy_bf16 : set->axpy_f32);
    wk_gemv_fn narrow = g->bf16 ? set->narrow_bf16 : set->narrow_f32;
    if (!sp.dot && sp.n <= 16 && narrow) sp.fn = narrow;
    int T = g->serial ? 1 : wk_small_threads(g->K, sp.n * g->batch, wk_esize(g));
    if (T == 1) {
        sp.chunks = 1;
        wk_small_task(&sp, 0, g->batch, 0);
        return;
    }
    const int kc = swap || g->batch != 1 ? 1 : wk_gemv_k_chunks(g->K, sp.n, sp.dot, (int)wk_esize(g));
    if (kc > 1) {
        sp.chunks = kc;
        sp.part = wk_ws_get(3, (size_t)(kc * sp.rows * sp.n) * sizeof(float));
        if (sp.part) {
            wk_parallel_for(kc, 1, wk_small_task, &sp);
            // C = alpha (0 + p0 + p1 + ...) + beta C, the partial sums added in chunk order
            // (kernels.c's LoRA chain adds them the same way), a loop over j at a time
            for (int r = 0; r < sp.rows; r++) {
                float *c = g->C + r * g->ldc, *acc = sp.part + r * sp.n;
                for (int64_t j = 0; j < sp.n; j++) acc[j] = 0.0f + acc[j];
                for (int t = 1; t < kc; t++) {
                    const float *pt = sp.part + (t * sp.rows + r) * sp.n;
                    for (int64_t j = 0; j < sp.n; j++) acc[j] += pt[j];
                }
                if (g->beta != 0.0f)
                    for (int64_t j = 0; j < sp.n; j++) c[j] = g->alpha * acc[j] + g->beta * c[j];
                else
                    for (int64_t j = 0; j < sp.n; j++) c[j] = g->alpha * acc[j];
            }
            return;
        }
    }
    sp.part = NULL;
    int64_t maxchunks = (sp.n + 63) / 64;
    sp.chunks = g->batch >= T ? 1 : (int)wk_min64(T, maxchunks);
    wk_parallel_for(g->batch * sp.chunks, 1, wk_small_task, &sp);
}

// ---------------------------------------------------------------------------

static void wk_gemm_scale(const wk_gemm_args *g) {
    for (int64_t b = 0; b < g->batch; b++)
        for (int64_t i = 0; i < g->M; i++) {
            float *c = g->C + b * g->sC + i * g->ldc;
            for (int64_t j = 0; j < g->N; j++) c[j] = g->beta != 0.0f ? g->beta * c[j] : 0.0f;
        }
}

static void wk_gemm_run(const wk_gemm_args *g) {
    if (g->M <= 0 || g->N <= 0 || g->batch <= 0) return;
    if (g->K <= 0 || g->alpha == 0.0f) {
        wk_gemm_scale(g);
        if (g->epi) g->epi(g->C, g->ldc, g->M, 0, g->N, g->epi_ctx);
        return;
    }
    bool small = !g->bsrc && (g->M <= WK_GEMV_MAXROWS || g->N <= WK_GEMV_MAXROWS);  // B read in place
    if (!small) {
        wk_gemm_packed(g, wk_cpu_isa());  // the epilogue runs per block
        return;
    }
    wk_gemm_small(g, g->M > WK_GEMV_MAXROWS);
    if (g->epi) g->epi(g->C, g->ldc, g->M, 0, g->N, g->epi_ctx);  // a few rows or columns: once
}

void wk_gemm_f32_epi(int transA, int transB, int64_t M, int64_t N, int64_t K, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                     wk_gemm_epi_fn epi, const void *epi_ctx) {
    wk_gemm_args g = {.transA = transA != 0, .transB = transB != 0, .M = M, .N = N, .K = K,
                      .alpha = 1.0f, .A = A, .B = B, .lda = lda, .ldb = ldb, .C = C, .ldc = ldc,
                      .batch = 1, .epi = epi, .epi_ctx = epi_ctx};
    wk_gemm_run(&g);
}

void wk_gemm_f32(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                 const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                 int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC,
                 int64_t batch) {
    wk_gemm_args g = {0, 0,     transA != 0, transB != 0, M,   N,   K,   alpha, beta,  A,
                      B,     lda,         ldb,         strideA, strideB, C, ldc, strideC, batch, NULL, NULL, NULL};
    wk_gemm_run(&g);
}

void wk_gemm_f32_serial(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc) {
    wk_gemm_args g = {1, 0, transA != 0, transB != 0, M, N, K, alpha, beta, A, B, lda, ldb, 0, 0,
                      C, ldc, 0, 1, NULL, NULL, NULL};
    wk_gemm_run(&g);
}

void wk_gemm_f32_bsrc(int transA, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                      const wk_gemm_bsrc *B, float beta, float *C, int64_t ldc) {
    wk_gemm_args g = {.transA = transA != 0, .M = M, .N = N, .K = K, .alpha = 1.0f, .beta = beta,
                      .A = A, .lda = lda, .C = C, .ldc = ldc, .batch = 1, .bsrc = B};
    wk_gemm_run(&g);
}

void wk_transpose_rows_f32(const float *src, int64_t ld, int64_t w, int64_t kc, int W, float *dst) {
    wk_pack_f32(src, 0, ld, 1, w, kc, W, dst);
}

void wk_gemv_f32_dot(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const float *w,
                     int64_t ldw, float *y, int64_t ldy, float beta) {
    wk_gemv_for_isa()->dot_f32(rows, K, n, x, ldx, w, ldw, y, ldy, 1.0f, beta);
}

void wk_gemv_bf16_dot(int rows, int64_t K, int64_t n, const float *x, int64_t ldx, const uint16_t *w,
                      int64_t ldw, float *y, int64_t ldy, float beta) {
    wk_gemv_for_isa()->dot_bf16(rows, K, n, x, ldx, w, ldw, y, ldy, 1.0f, beta);
}

void wk_gemm_bf16(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
                  const uint16_t *A, int64_t lda, int64_t strideA, const uint16_t *B, int64_t ldb,
                  int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC,
                  int64_t batch) {
    wk_gemm_args g = {0, 1,     transA != 0, transB != 0, M,   N,   K,   alpha, beta,  A,
                      B,     lda,         ldb,         strideA, strideB, C, ldc, strideC, batch, NULL, NULL, NULL};
    wk_gemm_run(&g);
}
