// Buffers ("slots") with a host copy for the CPU backend and a device copy for the
// CUDA backend, so a test can run one hand-built wk_step on both and compare: the
// plumbing the CUDA op tests share (each keeps its own tolerance rule).
// DUAL_SEED (before including) picks the random stream; DUAL_SLOTS the capacity.
#pragma once
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend/backend.h"
#include "check.h"

#ifndef DUAL_SLOTS
#define DUAL_SLOTS 24
#endif
#ifndef DUAL_SEED
#define DUAL_SEED 88172645463325252ull
#endif

static const wk_backend *cpu, *gpu;

// Opens both backends; false (the test is skipped: exit code 77) without a GPU.
static inline bool dual_open(void) {
  cpu = wk_backend_get(WK_CPU);
  gpu = wk_backend_get(WK_CUDA);
  if (!gpu) printf("no CUDA device, skipped: %s\n", wk_last_error());
  return gpu != NULL;
}

typedef struct { void *h, *d; size_t bytes; wk_dtype dt; int64_t n; } tbuf;
static tbuf B[DUAL_SLOTS];
static int nb;
static uint64_t rng = DUAL_SEED;

static inline float frand(float lo, float hi) {
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return lo + (hi - lo) * ((float)(uint32_t)(rng >> 40) * 0x1p-24f);
}
static inline void put(void *p, wk_dtype dt, int64_t i, float v) {
  switch (dt) {
    case WK_F32: ((float *)p)[i] = v; break;
    case WK_BF16: ((uint16_t *)p)[i] = wk_f32_to_bf16(v); break;
    case WK_F16: ((uint16_t *)p)[i] = wk_f32_to_f16(v); break;
    default: ((int32_t *)p)[i] = (int32_t)v; break;
  }
}
static inline float get(const void *p, wk_dtype dt, int64_t i) {
  switch (dt) {
    case WK_F32: return ((const float *)p)[i];
    case WK_BF16: return wk_bf16_to_f32(((const uint16_t *)p)[i]);
    case WK_F16: return wk_f16_to_f32(((const uint16_t *)p)[i]);
    default: return (float)((const int32_t *)p)[i];
  }
}
static inline void reset(void) {
  for (int i = 0; i < nb; i++) { free(B[i].h); gpu->free(B[i].d); }
  nb = 0;
}
// A new slot of n elements of dt (host and device copies), host values from fill.
static inline tbuf *slot_alloc(wk_dtype dt, int64_t n) {
  tbuf *b = &B[nb];
  b->dt = dt;
  b->n = n;
  b->bytes = (size_t)(n > 0 ? n : 1) * wk_dtype_size(dt);
  b->h = calloc(1, b->bytes);
  b->d = gpu->alloc(b->bytes);
  return b;
}
// Copies slot i's host values to its device copy (after a test changed some).
static inline void slot_upload(int i) { gpu->upload(B[i].d, B[i].h, B[i].bytes); }
// Sets element at of an i32 slot, on the host and the device.
static inline void poke_i32(int i, int64_t at, int32_t v) {
  ((int32_t *)B[i].h)[at] = v;
  slot_upload(i);
}
// The device copies' pointers, as a backend's run takes them.
static inline void dev_slots(void **ds) {
  for (int i = 0; i < nb; i++) ds[i] = B[i].d;
}
// A slot of n elements uniform in [lo, hi) (whole numbers for i32).
static inline int buf(wk_dtype dt, int64_t n, float lo, float hi) {
  tbuf *b = slot_alloc(dt, n);
  for (int64_t i = 0; i < n; i++) put(b->h, dt, i, dt == WK_I32 ? floorf(frand(lo, hi)) : frand(lo, hi));
  slot_upload(nb);
  return nb++;
}
// A slot of n copies of v (draws nothing from the random stream).
static inline int buf_value(wk_dtype dt, int64_t n, float v) {
  tbuf *b = slot_alloc(dt, n);
  for (int64_t i = 0; i < n; i++) put(b->h, dt, i, v);
  slot_upload(nb);
  return nb++;
}
static inline int out_buf(wk_dtype dt, int64_t n) { return buf(dt, n, 0, 0); }

// Operands: contiguous, or with the given strides and offset.
static inline wk_operand op_c(int slot, wk_dtype dt, int nd, const int64_t *shape) {
  return wk_operand_dense(slot, dt, nd, shape);
}
static inline wk_operand op_s(int slot, wk_dtype dt, int nd, const int64_t *shape, const int64_t *stride, int64_t off) {
  wk_operand o = op_c(slot, dt, nd, shape);
  memcpy(o.stride, stride, sizeof(int64_t) * (size_t)nd);
  o.offset = off;
  return o;
}
// Elementwise-program instructions: registers a, b, c into dst, or a and two floats.
static inline wk_ew_instr I(int op, int dst, int a, int b, int c) {
  wk_ew_instr in;
  memset(&in, 0, sizeof in);
  in.op = (uint16_t)op;
  in.dst = (uint8_t)dst;
  in.a = (uint8_t)a;
  in.b = (uint8_t)b;
  in.c = (uint8_t)c;
  in.src = -1;
  return in;
}
static inline wk_ew_instr If(int op, int dst, int a, float f0, float f1) {
  wk_ew_instr in = I(op, dst, a, 0, 0);
  in.attrs.f[0] = f0;
  in.attrs.f[1] = f1;
  return in;
}
static inline wk_step step0(int op) {
  wk_step s;
  memset(&s, 0, sizeof s);
  s.op = (wk_op)op;
  s.device = WK_CUDA;
  s.src = -1;
  s.scale_src = -1;
  return s;
}

// Runs s on the device with slot `out` poisoned first (0xff bytes: NaN in every float
// dtype, so an element the kernel never writes shows); returns the result's bytes
// (malloc'd), NULL when the run failed.
static inline unsigned char *run_device(const char *name, const wk_step *s, int out) {
  void *ds[DUAL_SLOTS];
  dev_slots(ds);
  unsigned char *dev = malloc(B[out].bytes);
  memset(dev, 0xff, B[out].bytes);
  gpu->upload(B[out].d, dev, B[out].bytes);
  wk_status sg = gpu->run(s, ds), sy = gpu->sync();
  CHECK(!sg && !sy, "%s: cuda run failed (%d, sync %d)", name, sg, sy);
  gpu->download(dev, B[out].d, B[out].bytes);
  return dev;
}
// Runs s on the host into the slots' host copies (slot `out` zeroed first).
static inline void run_host(const char *name, const wk_step *s, int out) {
  void *hs[DUAL_SLOTS];
  for (int i = 0; i < nb; i++) hs[i] = B[i].h;
  memset(B[out].h, 0, B[out].bytes);
  wk_status sc = cpu->run(s, hs);
  CHECK(!sc, "%s: cpu run failed (%d)", name, sc);
}
