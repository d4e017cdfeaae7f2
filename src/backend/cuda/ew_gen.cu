// Generated kernels for fused elementwise groups: the planner's register program
// (wk_ew_prog) becomes straight-line CUDA C++, compiled at run time (rtc.cu).
//
// Why NVRTC rather than templates built with the library: the kernel that reaches
// copy bandwidth has the group's program inlined, and programs are known only once
// the planner has fused a graph (up to 128 ops over 8 operands, any mix of dtypes
// and layouts). Templates would cover a few fixed patterns and cost every build;
// NVRTC compiles exactly the groups a process runs, once each (tens of ms), and
// whatever it cannot do (an op the generator does not know, NVRTC missing or
// failing) runs in the interpreter (ew.cu), which stays the reference.
//
// The kernel: each thread takes tiles of 8 consecutive elements. Dense operands
// load as 16-byte vectors (f32 two, 2-byte dtypes one), the next tile's while this
// one is computed (a chain like bench's chain8 costs ~50 instructions an element,
// so a bf16 group is about as much arithmetic as memory traffic, and the two must
// overlap); operands broadcast to a single value load once per thread, other
// strided or broadcast operands by index math on the collapsed group shape (axes
// where an operand's stride is 0 add no term); the program runs per element in
// f32 and the tile is stored as vectors, bf16 and f16 rounded two at a time.
// Elements past the last whole tile, and groups whose pointers are not 16-byte
// aligned, take a per-element loop. The source depends on the group's structure
// only (ops, operand dtypes and layouts, index width), never on sizes, pointers or
// scalar values: scalars are kernel parameters (inside a captured graph, pointers
// to the device table graph.cu fills), so one compilation serves every size and
// every evaluation of a plan.
//
// Exactness: each op is the interpreter's own expression, and the ops' top-level
// +, -, *, / are __f*_rn intrinsics, which the compiler never contracts into an
// FMA with a neighbouring op (the interpreter, dispatching op by op, never does
// either): both paths give the same bits.
//
// WICK_CUDA_NVRTC=0 keeps every group in the interpreter; =all generates kernels
// for groups of every size (tests); the default does so from MIN_ELEMS elements.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>
#include "ew_gen.h"
#include "rtc.h"

namespace {
// Smaller groups are bound by the launch, where the interpreter is as fast, and a
// model's many small groups would otherwise add a compilation each to start-up. From
// 4096 (was 65536): an optimizer's moment updates of a rank-8 LoRA matrix ([8, 896],
// 7168 values) took ~12 us a launch interpreted against ~4 generated (H200), 144 of
// them a Qwen2.5-0.5B q,v training step (every group generated: 57.6 -> 55.7 ms of
// GPU a step, ncu).
const int64_t MIN_ELEMS = 1 << 12;
const int TILE = 8;           // elements per thread and tile: a 16-byte chunk of a 2-byte dtype
const int THREADS = 256;
const int MAX_SCALARS = 256;  // instructions with scalars (a program has at most 256)
const size_t MAX_SIGS = 16384; // structures remembered (past that, a new one is generated and looked up each time)

// The kernel's parameter block, one text for the host struct and the generated one.
#define WKG_HEAD                                                                           \
  long long n;                                                                             \
  char *out;                                                                               \
  int vec, pad;               /* vec: dense operands and out are 16-byte aligned */        \
  long long shape[8];         /* the collapsed group shape */                              \
  const char *p[8];           /* operand k's first element */                              \
  long long stride[8][8];     /* operand k's strides over the group shape, in elements */
#define WKG_SCAL                                                                           \
  float f0, f1;               /* an instruction's attrs.f[0], attrs.f[1] */                \
  unsigned long long u;       /* attrs.u (seed); CAUSAL_MASK: T | S << 32 */              \
  const void *rt;             /* inside a captured graph: a DRt with the three in device memory */
#define WKG_STR2(...) #__VA_ARGS__
#define WKG_STR(...) WKG_STR2(__VA_ARGS__)
struct GHead { WKG_HEAD };
struct GScal { WKG_SCAL };
static_assert(WK_MAX_DIMS == 8 && WK_MAX_IN == 8, "WKG_HEAD spells the array sizes out");
static_assert(sizeof(GHead) % 8 == 0 && sizeof(GScal) == 24, "the scalars follow the head with no padding");
static_assert(sizeof(DRt) == 16 && offsetof(DRt, u) == 8, "the generated GRt mirrors DRt");

enum Kind { K_DENSE, K_SCALAR, K_STRIDED };
struct Opnd {
  int kind, dtype;
  unsigned zmask;  // bit d: stride 0 on axis d
};

std::atomic<int> g_mode{-1};         // 0 off, 1 groups of >= MIN_ELEMS elements, 2 every group
std::atomic<int> g_variant{-1};       // WICK_CUDA_EWGEN bits (see variant())
std::atomic<int> g_unknown_op{-1};   // tests: an op the generator treats as unknown
std::atomic<int> g_broken{0};        // tests: generated sources get a syntax error
std::atomic<unsigned long long> g_launches{0}, g_fallbacks{0};
std::mutex g_mu;
std::unordered_map<std::string, cudaKernel_t> g_by_sig;  // NULL: unsupported or failed to compile

int mode(void) {
  int m = g_mode.load();
  if (m < 0) {
    const char *e = getenv("WICK_CUDA_NVRTC");
    m = !e ? 1 : !strcmp(e, "all") ? 2 : atoi(e) != 0;
    g_mode.store(m);
  }
  return m;
}

// Which of the generator's later forms to use (WICK_CUDA_EWGEN, a bit mask; 0 gives
// the source of commit 1ca3d18). Measured on an H200, chain8 64M f32 / bf16, wall
// µs per lazy call, two rounds: 0: 199.1-200.7 / 125.1-125.9; 1 (one NaN test a
// tile, kept): 199.2-206.3 / 121.2-122.3; 2 (__ldcs / __stcs): 216.5-218.8 /
// 125.6; 3: 203.5 / 123.8-124.3; 4 (8 blocks an SM, 32 registers, spills):
// 444-445 / 140; 5: 444-448 / 132-133; 7: 400 / 130-131.
// Bits 8, 16 and 32 cut instructions and keep every result bit (the hot path of
// chain8 bf16's tiled loop, SASS from NVRTC for sm_90, instructions an 8-element
// tile: 1: 360; 9: 299; 17: 357; 33: 345; 57: 283; f32 1: 338, 57: 260). On an
// H200, µs per lazy call, two rounds, bf16 / f32: 1: 124.0-125.7 / 199.7-204.9;
// 9: 114.7-115.9 / 214.0-216.7; 57: 109.1-111.9 / 217.0-218.3. bf16 gains, f32
// loses: without the division's call ptxas sinks the next tile's loads to the end
// of the loop (SASS), which a copy-bound f32 group feels; an L2 prefetch of the
// next tile with this tile's loads at the top was slower still (242 / 115-117).
// 8: tanh's and sigmoid's divisions by reciprocal and corrections (kernel_math.h,
//    wkm_div12): no range check, slow-path branch or the constants reloaded around it;
// 16: the next tile's load from a clamped index (no zero fill, no branch), and a
//    bf16 tile's NaN test two values a compare (wg_pk_bf16p);
// 32: |a * b| as one multiply of |a| and |b|.
// The default: 1, and 8 | 16 | 32 for a group whose result is 2 bytes an element
// (bf16, f16), whose fewer bytes leave it bound by instructions. WICK_CUDA_EWGEN sets
// one mask for every group.
const int DEFAULT_VARIANT = 1, HALF_VARIANT = 1 | 8 | 16 | 32;
int variant(int out_dtype) {
  int v = g_variant.load();
  if (v == -1) {
    const char *e = getenv("WICK_CUDA_EWGEN");
    v = e ? atoi(e) & 63 : -2;
    g_variant.store(v);
  }
  if (v >= 0) return v;
  return out_dtype == WK_BF16 || out_dtype == WK_F16 ? HALF_VARIANT : DEFAULT_VARIANT;
}

void addf(std::string *s, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  *s += buf;
}

const char *dt_name(int dt) {
  switch (dt) {
    case WK_F32: return "f32";
    case WK_BF16: return "bf16";
    case WK_F16: return "f16";
    case WK_I32: return "i32";
    default: return NULL;
  }
}

// Scalars an op reads: bit 0 f0, bit 1 f1, bit 2 u.
int op_scalars(int op) {
  switch (op) {
    case WK_OP_CONST: case WK_OP_ADD_SCALAR: case WK_OP_MUL_SCALAR: case WK_OP_POW_SCALAR: return 1;
    case WK_OP_ARANGE: return 3;
    case WK_OP_RAND: return 7;
    case WK_OP_RANDN: case WK_OP_CAUSAL_MASK: return 4;
    case WK_OP_DROPOUT: return 5;
    default: return 0;
  }
}

// The statement computing instruction q into t<q> from x, y, z (its operands'
// values), i (the element's linear index) and f0_<q>, f1_<q>, u_<q>; the
// interpreter's expressions (cuda_internal.h, ew_run). Empty: an op this does not
// know (arity says how many of x, y, z it reads).
std::string op_stmt(const wk_ew_instr &in, int q, const std::string &x, const std::string &y, const std::string &z,
                    int *arity) {
  std::string e;
  char f0[24], f1[24], u[24];
  snprintf(f0, sizeof f0, "f0_%d", q);
  snprintf(f1, sizeof f1, "f1_%d", q);
  snprintf(u, sizeof u, "u_%d", q);
  const char *X = x.c_str(), *Y = y.c_str(), *Z = z.c_str();
  std::string s;
  auto un = [&](const char *fmt) { *arity = 1; addf(&e, fmt, X, X, X, X); };   // (up to four uses of x)
  auto bin = [&](const char *fmt) { *arity = 2; addf(&e, fmt, X, Y, X, Y); };
  *arity = 0;
  switch (in.op) {
    case WK_OP_CONST: e = f0; break;
    case WK_OP_ARANGE: addf(&e, "%s + (float)(long long)i * %s", f0, f1); break;
    case WK_OP_RAND: addf(&e, "%s + (%s - %s) * wkm_u01(%s, (unsigned long long)i)", f0, f1, f0, u); break;
    case WK_OP_RANDN:
      addf(&s, "  float t%d;\n  {\n    const unsigned long long h = wkm_rng_hash(%s, (unsigned long long)i);\n", q, u);
      s += "    const float u1 = ((float)(h >> 40) + 1.0f) * 0x1p-24f, u2 = (float)(h & 0xffffff) * 0x1p-24f;\n";
      addf(&s, "    t%d = __fmul_rn(sqrtf(-2.0f * logf(u1)), cosf(6.283185307f * u2));\n  }\n", q);
      return s;
    case WK_OP_DROPOUT:
      *arity = 1;
      addf(&e, "wkm_u01(%s, (unsigned long long)i) < %s ? 0.0f : %s / (1.0f - %s)", u, f0, X, f0);
      break;
    case WK_OP_CAUSAL_MASK:
      addf(&s, "  float t%d;\n  {\n    const long long T = (long long)(unsigned)(%s & 0xffffffffull), "
               "S = (long long)(unsigned)(%s >> 32);\n", q, u, u);
      addf(&s, "    const long long col = (long long)i %% S, rw = ((long long)i / S) %% T;\n"
               "    t%d = col > rw + (S - T) ? -INFINITY : 0.0f;\n  }\n", q);
      return s;
    case WK_OP_NEG: un("-%s"); break;
    case WK_OP_ABS: un("fabsf(%s)"); break;
    case WK_OP_EXP: un("wkm_exp(%s)"); break;
    case WK_OP_LOG: un("wkm_log(%s)"); break;
    case WK_OP_SQRT: un("sqrtf(%s)"); break;
    case WK_OP_RSQRT: un("1.0f / sqrtf(%s)"); break;
    case WK_OP_SQUARE: un("__fmul_rn(%s, %s)"); break;
    case WK_OP_TANH: un("wkm_tanh(%s)"); break;
    case WK_OP_SIGMOID: un("wkm_sigmoid(%s)"); break;
    case WK_OP_RELU: un("%s > 0 || %s != %s ? %s : 0.0f"); break;
    case WK_OP_GELU: un("__fmul_rn(0.5f * %s, 1.0f + wkm_erf(%s * 0.70710678118f))"); break;
    case WK_OP_GELU_TANH:
      *arity = 1;
      addf(&e, "__fmul_rn(0.5f * %s, 1.0f + wkm_tanh(0.7978845608f * (%s + 0.044715f * %s * %s * %s)))", X, X, X, X, X);
      break;
    case WK_OP_SILU: un("__fmul_rn(%s, wkm_sigmoid(%s))"); break;
    case WK_OP_ADD_SCALAR: *arity = 1; addf(&e, "__fadd_rn(%s, %s)", X, f0); break;
    case WK_OP_MUL_SCALAR: *arity = 1; addf(&e, "__fmul_rn(%s, %s)", X, f0); break;
    case WK_OP_POW_SCALAR:
      *arity = 1;
      addf(&e, "%s == 2.0f ? __fmul_rn(%s, %s) : %s == 0.5f ? sqrtf(%s) : %s == 1.0f ? %s : %s == -1.0f ? 1.0f / %s : "
               "powf(%s, %s)", f0, X, X, f0, X, f0, X, f0, X, X, f0);
      break;
    case WK_OP_CAST: {
      *arity = 1;
      int to = (int)in.attrs.i[0];
      if (to == WK_BF16) addf(&e, "__uint_as_float((unsigned)wkm_f32_to_bf16(%s) << 16)", X);
      else if (to == WK_F16) addf(&e, "wg_f16_round(%s)", X);
      else if (to == WK_I32) addf(&e, "truncf(%s)", X);
      else e = x;
      break;
    }
    case WK_OP_COPY:
    case WK_OP_STOP_GRAD: *arity = 1; e = x; break;
    case WK_OP_WHERE: *arity = 3; addf(&e, "%s != 0.0f ? %s : %s", X, Y, Z); break;
    case WK_OP_ADD: *arity = 2; addf(&e, "__fadd_rn(%s, %s)", X, Y); break;
    case WK_OP_SUB: *arity = 2; addf(&e, "__fsub_rn(%s, %s)", X, Y); break;
    case WK_OP_MUL: *arity = 2; addf(&e, "__fmul_rn(%s, %s)", X, Y); break;
    case WK_OP_DIV: *arity = 2; addf(&e, "__fdiv_rn(%s, %s)", X, Y); break;
    case WK_OP_MAXIMUM: *arity = 2; addf(&e, "%s >= %s || %s != %s ? %s : %s", X, Y, X, X, X, Y); break;
    case WK_OP_MINIMUM: *arity = 2; addf(&e, "%s <= %s || %s != %s ? %s : %s", X, Y, X, X, X, Y); break;
    case WK_OP_EQ: bin("%s == %s ? 1.0f : 0.0f"); break;
    case WK_OP_NE: bin("%s != %s ? 1.0f : 0.0f"); break;
    case WK_OP_LT: bin("%s < %s ? 1.0f : 0.0f"); break;
    case WK_OP_LE: bin("%s <= %s ? 1.0f : 0.0f"); break;
    case WK_OP_GT: bin("%s > %s ? 1.0f : 0.0f"); break;
    case WK_OP_GE: bin("%s >= %s ? 1.0f : 0.0f"); break;
    case WK_OP_GELU_BWD: *arity = 2; addf(&e, "__fmul_rn(%s, wkm_gelu_grad(%s))", Y, X); break;
    case WK_OP_GELU_TANH_BWD: *arity = 2; addf(&e, "__fmul_rn(%s, wkm_gelu_tanh_grad(%s))", Y, X); break;
    default: return std::string();
  }
  addf(&s, "  const float t%d = ", q);
  return s + e + ";\n";
}

// Loads, stores and conversions (bf16 rounding: wkm_f32_to_bf16 of kernel_math.h, to
// nearest even, NaN kept quiet with its sign and payload; f16 through the same cvt
// instructions as cuda_fp16.h). Tiles move as 16-byte chunks (uint4): cv unpacks
// one into floats (4 of a 4-byte dtype, 8 of a 2-byte one), pk packs it back.
const char k_helpers[] = R"(
#define WG_FN static __device__ __forceinline__
WG_FN float wg_h2f(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
WG_FN unsigned short wg_f2h(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
WG_FN float wg_f16_round(float f) { return wg_h2f(wg_f2h(f)); }
WG_FN float wg_ld_f32(const char *p, long long o) { return ((const float *)p)[o]; }
WG_FN float wg_ld_bf16(const char *p, long long o) { return __uint_as_float((unsigned)((const unsigned short *)p)[o] << 16); }
WG_FN float wg_ld_f16(const char *p, long long o) { return wg_h2f(((const unsigned short *)p)[o]); }
WG_FN float wg_ld_i32(const char *p, long long o) { return (float)((const int *)p)[o]; }
WG_FN void wg_st_f32(char *p, long long o, float v) { ((float *)p)[o] = v; }
WG_FN void wg_st_bf16(char *p, long long o, float v) { ((unsigned short *)p)[o] = wkm_f32_to_bf16(v); }
WG_FN void wg_st_f16(char *p, long long o, float v) { ((unsigned short *)p)[o] = wg_f2h(v); }
WG_FN void wg_st_i32(char *p, long long o, float v) { ((int *)p)[o] = (int)v; }
// two values as a bf16 / f16 pair, the first in the low half
WG_FN unsigned wg_pair_bf16(float a, float b) {
#if __CUDA_ARCH__ >= 800
  unsigned r;  // one instruction for both; NaN then gets wkm_f32_to_bf16's bits (the instruction's is canonical)
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
  if (a != a) r = (r & 0xffff0000u) | (unsigned)wkm_f32_to_bf16(a);
  if (b != b) r = (r & 0xffffu) | (unsigned)wkm_f32_to_bf16(b) << 16;
  return r;
#else
  return (unsigned)wkm_f32_to_bf16(a) | (unsigned)wkm_f32_to_bf16(b) << 16;
#endif
}
WG_FN unsigned wg_pair_f16(float a, float b) {
#if __CUDA_ARCH__ >= 800
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
  return r;
#else
  return (unsigned)wg_f2h(a) | (unsigned)wg_f2h(b) << 16;
#endif
}
WG_FN void wg_cv_f32(const uint4 c, float *v) { v[0] = __uint_as_float(c.x); v[1] = __uint_as_float(c.y); v[2] = __uint_as_float(c.z); v[3] = __uint_as_float(c.w); }
WG_FN void wg_cv_i32(const uint4 c, float *v) { v[0] = (float)(int)c.x; v[1] = (float)(int)c.y; v[2] = (float)(int)c.z; v[3] = (float)(int)c.w; }
WG_FN void wg_cv_bf16(const uint4 c, float *v) {
  const unsigned w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int k = 0; k < 4; k++) { v[2 * k] = __uint_as_float(w[k] << 16); v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
}
WG_FN void wg_cv_f16(const uint4 c, float *v) {
  const unsigned w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int k = 0; k < 4; k++) { v[2 * k] = wg_h2f((unsigned short)(w[k] & 0xffffu)); v[2 * k + 1] = wg_h2f((unsigned short)(w[k] >> 16)); }
}
WG_FN uint4 wg_pk_f32(const float *v) { return uint4{__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])}; }
WG_FN uint4 wg_pk_i32(const float *v) { return uint4{(unsigned)(int)v[0], (unsigned)(int)v[1], (unsigned)(int)v[2], (unsigned)(int)v[3]}; }
WG_FN uint4 wg_pk_bf16(const float *v) { return uint4{wg_pair_bf16(v[0], v[1]), wg_pair_bf16(v[2], v[3]), wg_pair_bf16(v[4], v[5]), wg_pair_bf16(v[6], v[7])}; }
// the tile's eight as bf16: four cvt instructions, one NaN test for the tile (the
// unordered compares chain into one predicate), and only a tile with a NaN redone
// pair by pair as above: the same bits as wg_pk_bf16 with fewer instructions
WG_FN uint4 wg_pk_bf16t(const float *v) {
#if __CUDA_ARCH__ >= 800
  unsigned r[4];
#pragma unroll
  for (int k = 0; k < 4; k++) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r[k]) : "f"(v[2 * k + 1]), "f"(v[2 * k]));
  const bool nan = (v[0] != v[0]) | (v[1] != v[1]) | (v[2] != v[2]) | (v[3] != v[3]) | (v[4] != v[4]) | (v[5] != v[5]) |
                   (v[6] != v[6]) | (v[7] != v[7]);
  if (nan) return wg_pk_bf16(v);
  return uint4{r[0], r[1], r[2], r[3]};
#else
  return wg_pk_bf16(v);
#endif
}
// as wg_pk_bf16t, the NaN test an unordered compare of two values at a time (true
// when either is NaN): four instructions for the tile where the compiler made eight
WG_FN uint4 wg_pk_bf16p(const float *v) {
#if __CUDA_ARCH__ >= 800
  unsigned r[4], nan;
#pragma unroll
  for (int k = 0; k < 4; k++) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r[k]) : "f"(v[2 * k + 1]), "f"(v[2 * k]));
  asm("{\n .reg .pred p;\n setp.nan.f32 p, %1, %2;\n setp.nan.or.f32 p, %3, %4, p;\n setp.nan.or.f32 p, %5, %6, p;\n"
      " setp.nan.or.f32 p, %7, %8, p;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(nan) : "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]), "f"(v[4]), "f"(v[5]), "f"(v[6]), "f"(v[7]));
  if (nan) return wg_pk_bf16(v);
  return uint4{r[0], r[1], r[2], r[3]};
#else
  return wg_pk_bf16(v);
#endif
}
WG_FN uint4 wg_pk_f16(const float *v) { return uint4{wg_pair_f16(v[0], v[1]), wg_pair_f16(v[2], v[3]), wg_pair_f16(v[4], v[5]), wg_pair_f16(v[6], v[7])}; }
)";

// Whether the kernel has the tiled path: a long program unrolled over a tile
// compiles slowly (seconds at 100 ops) and is bound by arithmetic rather than by
// memory, which per-element loads (still coalesced) serve as well.
bool vector_path(const wk_ew_prog *pg) { return pg->n <= 48; }

// The kernel's source for a program over operands od (group of nd axes); empty
// when the program holds something the generator does not know.
std::string generate(const wk_ew_prog *pg, const Opnd *od, int nops, int nd, bool idx64, int out_dtype, int nsc) {
  std::string body;
  int prod[WK_EW_MAX_REGS]; // register -> the instruction whose value it holds
  for (int r = 0; r < WK_EW_MAX_REGS; r++) prod[r] = -1;
  int unknown = g_unknown_op.load();
  const int var = variant(out_dtype);
  std::vector<std::string> mul_of((size_t)pg->n); // a product's operands, "A), fabsf(B": for |A * B| (bit 32)
  std::string hoist; // per-thread constants: scalars of instructions
  int sc = 0;
  for (int q = 0; q < pg->n; q++) {
    const wk_ew_instr &in = pg->code[q];
    if (in.dst >= WK_EW_MAX_REGS) return std::string();
    if (in.op == WK_EW_LOAD) {
      if (in.a >= nops) return std::string();
      addf(&body, "  const float t%d = %c%d;\n", q, od[in.a].kind == K_SCALAR ? 's' : 'l', in.a);
      prod[in.dst] = q;
      continue;
    }
    if ((int)in.op == unknown) return std::string();
    int regs[3] = {in.a, in.b, in.c};
    std::string v[3];
    for (int k = 0; k < 3; k++)
      if (regs[k] < WK_EW_MAX_REGS && prod[regs[k]] >= 0) v[k] = "t" + std::to_string(prod[regs[k]]);
    int arity = 0;
    std::string st = op_stmt(in, q, v[0], v[1], v[2], &arity);
    if (st.empty()) return std::string();
    if (in.op == WK_OP_MUL) mul_of[q] = v[0] + "), fabsf(" + v[1];
    // |a * b| as |a| * |b|: the multiply takes both absolute values as operand
    // modifiers, one instruction for two. The same bits: rounding to nearest is
    // symmetric, and a NaN product is the GPU's one canonical, positive NaN either way.
    if ((var & 32) && in.op == WK_OP_ABS && !v[0].empty() && !mul_of[prod[in.a]].empty())
      st = "  const float t" + std::to_string(q) + " = __fmul_rn(fabsf(" + mul_of[prod[in.a]] + "));\n";
    for (int k = 0; k < arity; k++)
      if (v[k].empty()) return std::string(); // reads a register nothing wrote
    int need = op_scalars(in.op);
    if (need) {
      const char *fld[3] = {"f0", "f1", "u"};
      for (int f = 0; f < 3; f++)
        if (need >> f & 1)
          addf(&hoist, "  const %s %s_%d = a.sc[%d].rt ? ((const GRt *)a.sc[%d].rt)->%s : a.sc[%d].%s;\n",
               f == 2 ? "unsigned long long" : "float", fld[f], q, sc, sc, fld[f], sc, fld[f]);
      sc++;
    }
    body += st;
    prod[in.dst] = q;
  }
  if (sc != nsc || pg->out_reg < 0 || pg->out_reg >= WK_EW_MAX_REGS || prod[pg->out_reg] < 0) return std::string();
  const char *odt = dt_name(out_dtype);

  std::string s = "// wick: a fused elementwise group (generated by src/backend/cuda/ew_gen.cu)\n";
  if (var & 8) s += "#define WKM_DIV12_RCP 1\n";
  s += "#include \"kernel_math.h\"\n";
  addf(&s, "typedef %s wg_idx;\n", idx64 ? "unsigned long long" : "unsigned int");
  s += "struct GScal { " WKG_STR(WKG_SCAL) " };\nstruct GRt { float f0, f1; unsigned long long u; };\n";
  s += "struct GArgs { " WKG_STR(WKG_HEAD);
  if (nsc) addf(&s, " GScal sc[%d];", nsc);
  s += " };\n";
  s += k_helpers;
  if ((var & 4) && vector_path(pg))
    addf(&s, "extern \"C\" __global__ void __launch_bounds__(%d, %d) wk_ew_gen(const __grid_constant__ GArgs a) {\n", THREADS,
         2048 / THREADS);
  else
    addf(&s, "extern \"C\" __global__ void __launch_bounds__(%d) wk_ew_gen(const __grid_constant__ GArgs a) {\n", THREADS);
  s += hoist;
  s += "  const wg_idx n = (wg_idx)a.n;\n";
  // operands: pointers, per-thread values of broadcast scalars, strides of strided ones
  int nstr = 0, str_of[WK_MAX_IN];
  for (int k = 0; k < nops; k++) {
    const char *dt = dt_name(od[k].dtype);
    addf(&s, "  const char *const p%d = a.p[%d];\n", k, k);
    if (od[k].kind == K_SCALAR) addf(&s, "  const float s%d = wg_ld_%s(p%d, 0);\n", k, dt, k);
    str_of[k] = od[k].kind == K_STRIDED ? nstr++ : -1;
  }
  if (nstr) { // element offsets of the strided operands from the linear index
    for (int d = 1; d < nd; d++) addf(&s, "  const wg_idx S%d = (wg_idx)a.shape[%d];\n", d, d);
    s += "  auto offs = [&](wg_idx r, long long *o) {\n";
    for (int k = 0; k < nops; k++)
      if (str_of[k] >= 0) addf(&s, "    o[%d] = 0;\n", str_of[k]);
    for (int d = nd - 1; d >= 0; d--) {
      if (d > 0) addf(&s, "    { const wg_idx c = r %% S%d; r /= S%d;\n", d, d);
      else s += "    { const wg_idx c = r;\n";
      for (int k = 0; k < nops; k++)
        if (str_of[k] >= 0 && !(od[k].zmask >> d & 1)) addf(&s, "      o[%d] += (long long)c * a.stride[%d][%d];\n", str_of[k], k, d);
      s += "    }\n";
    }
    s += "  };\n";
  }
  // the program, one element: operand values in, result out
  s += "  auto prog = [&](";
  for (int k = 0; k < nops; k++)
    if (od[k].kind != K_SCALAR) addf(&s, "const float l%d, ", k);
  s += "const wg_idx i) -> float {\n  (void)i;\n" + body;
  addf(&s, "  return t%d;\n  };\n", prod[pg->out_reg]);
  s += "  const wg_idx tid = (wg_idx)blockIdx.x * blockDim.x + threadIdx.x, nth = (wg_idx)gridDim.x * blockDim.x;\n"
       "  wg_idx done = 0;\n";
  if (vector_path(pg)) {
    const int E = TILE;  // 16-byte chunks per tile: f32 and i32 2, bf16 and f16 1
    auto chunks = [&](int dt) { return E * (int)wkc_esize(dt) / 16; };
    auto per = [&](int dt) { return 16 / (int)wkc_esize(dt); };
    addf(&s, "  if (a.vec) {\n    const wg_idx tiles = n / %d;\n    wg_idx t = tid;\n", E);
    // raw 16-byte chunks of the dense operands: this tile's (c), the next one's (x)
    std::string raw_load_c, raw_load_x, shift;
    for (int k = 0; k < nops; k++) {
      if (od[k].kind != K_DENSE) continue;
      int nc = chunks(od[k].dtype);
      addf(&s, "    uint4 c%d[%d];\n", k, nc);
      if (var & 2) {
        addf(&raw_load_c, "      for (int j = 0; j < %d; j++) c%d[j] = __ldcs((const uint4 *)p%d + (long long)t * %d + j);\n", nc, k, k, nc);
        addf(&raw_load_x, "        for (int j = 0; j < %d; j++) x%d[j] = __ldcs((const uint4 *)p%d + (long long)tn * %d + j);\n", nc, k, k, nc);
      } else {
        addf(&raw_load_c, "      for (int j = 0; j < %d; j++) c%d[j] = ((const uint4 *)p%d)[(long long)t * %d + j];\n", nc, k, k, nc);
        addf(&raw_load_x, "        for (int j = 0; j < %d; j++) x%d[j] = ((const uint4 *)p%d)[(long long)tn * %d + j];\n", nc, k, k, nc);
      }
      addf(&shift, "      for (int j = 0; j < %d; j++) c%d[j] = x%d[j];\n", nc, k, k);
    }
    s += "    if (t < tiles) {\n" + raw_load_c + "    }\n";
    s += "    for (; t < tiles; t += nth) {\n";
    addf(&s, "      const wg_idx i0 = t * %d, tn = t + nth;\n", E);
    if (var & 16) { // the last tile's "next" is itself again: no zero fill, no branch
      for (int k = 0; k < nops; k++)
        if (od[k].kind == K_DENSE) addf(&s, "      uint4 x%d[%d];\n", k, chunks(od[k].dtype));
      s += "      {\n        const wg_idx tn = t + nth < tiles ? t + nth : t;\n" + raw_load_x + "      }\n";
    } else {
      for (int k = 0; k < nops; k++)
        if (od[k].kind == K_DENSE) addf(&s, "      uint4 x%d[%d] = {};\n", k, chunks(od[k].dtype));
      s += "      if (tn < tiles) {\n" + raw_load_x + "      }\n";
    }
    addf(&s, "      float y[%d];\n", E);
    for (int k = 0; k < nops; k++) {
      if (od[k].kind == K_SCALAR) continue;
      addf(&s, "      float l%d[%d];\n", k, E);
      if (od[k].kind == K_DENSE)
        addf(&s, "      for (int j = 0; j < %d; j++) wg_cv_%s(c%d[j], l%d + j * %d);\n", chunks(od[k].dtype),
             dt_name(od[k].dtype), k, k, per(od[k].dtype));
    }
    if (nstr) {
      addf(&s, "#pragma unroll\n      for (int v = 0; v < %d; v++) {\n        long long o[%d];\n        offs(i0 + v, o);\n", E, nstr);
      for (int k = 0; k < nops; k++)
        if (str_of[k] >= 0) addf(&s, "        l%d[v] = wg_ld_%s(p%d, o[%d]);\n", k, dt_name(od[k].dtype), k, str_of[k]);
      s += "      }\n";
    }
    addf(&s, "#pragma unroll\n      for (int v = 0; v < %d; v++) y[v] = prog(", E);
    for (int k = 0; k < nops; k++)
      if (od[k].kind != K_SCALAR) addf(&s, "l%d[v], ", k);
    s += "i0 + v);\n";
    int oc = chunks(out_dtype);
    const char *pk = (var & 1) && out_dtype == WK_BF16 ? (var & 16 ? "bf16p" : "bf16t") : odt;
    if (var & 2)
      addf(&s, "      for (int j = 0; j < %d; j++) __stcs((uint4 *)a.out + (long long)t * %d + j, wg_pk_%s(y + j * %d));\n", oc,
           oc, pk, per(out_dtype));
    else
      addf(&s, "      for (int j = 0; j < %d; j++) ((uint4 *)a.out)[(long long)t * %d + j] = wg_pk_%s(y + j * %d);\n", oc, oc,
           pk, per(out_dtype));
    s += shift;
    addf(&s, "    }\n    done = tiles * %d;\n  }\n", E);
  }
  s += "  for (wg_idx i = done + tid; i < n; i += nth) {\n";
  if (nstr) addf(&s, "    long long o[%d];\n    offs(i, o);\n", nstr);
  addf(&s, "    wg_st_%s(a.out, i, prog(", odt);
  for (int k = 0; k < nops; k++) {
    const char *dt = dt_name(od[k].dtype);
    if (od[k].kind == K_DENSE) addf(&s, "wg_ld_%s(p%d, i), ", dt, k);
    else if (od[k].kind == K_STRIDED) addf(&s, "wg_ld_%s(p%d, o[%d]), ", dt, k, str_of[k]);
  }
  s += "i));\n  }\n}\n";
  if (g_broken.load()) s += "this does not compile\n";
  return s;
}
}  // namespace

extern "C" void wk_cuda_set_ew_gen(int m) { g_mode.store(m < 0 ? 0 : m > 2 ? 2 : m); }

extern "C" void wk_cuda_ew_gen_stats_get(wk_cuda_ew_gen_stats *out) {
  memset(out, 0, sizeof *out);
  wkc_rtc_counts(&out->compiled, &out->compile_failures, &out->compile_ms, &out->cache_loads);
  out->launches = g_launches.load();
  out->fallbacks = g_fallbacks.load();
}

extern "C" void wk_cuda_ew_gen_test_faults(int unknown_op, int broken_source) {
  g_unknown_op.store(unknown_op);
  g_broken.store(broken_source != 0);
}

bool wkc_ew_gen(const wk_ew_prog *pg, const wk_operand *ops, int nops, void *const *slots, int nd, const int64_t *shape,
                int64_t n, char *out, int out_dtype, wk_status *st) {
  int m = mode();
  if (m == 0 || (m == 1 && n < MIN_ELEMS)) return false;
  // The structure the source depends on, as the cache key: header, operands, program.
  Opnd od[WK_MAX_IN];
  std::string sig;
  sig.reserve(16 + 3 * (size_t)nops + 7 * (size_t)pg->n);
  bool idx64 = n > 0x7fffffffLL, known = dt_name(out_dtype) != NULL;
  int nsc = 0;
  for (int q = 0; q < pg->n; q++) nsc += pg->code[q].op != WK_EW_LOAD && op_scalars(pg->code[q].op) != 0;
  sig += (char)out_dtype;
  sig += (char)idx64;
  sig += (char)nd;
  sig += (char)nops;
  sig += (char)g_broken.load();
  sig += (char)variant(out_dtype);
  sig += std::to_string(g_unknown_op.load()) + ":";
  for (int k = 0; k < nops; k++) {
    const wk_operand &o = ops[k];
    bool all0 = true, dense = true;
    int64_t want = 1;
    od[k].zmask = 0;
    for (int d = nd - 1; d >= 0; d--) {
      if (o.stride[d] != 0) all0 = false;
      else od[k].zmask |= 1u << d;
      if (o.stride[d] != want) dense = false;
      want *= shape[d];
    }
    od[k].kind = all0 ? K_SCALAR : dense ? K_DENSE : K_STRIDED;
    od[k].dtype = o.dtype;
    known = known && dt_name(o.dtype) != NULL && o.slot >= 0;
    sig += (char)od[k].kind;
    sig += (char)o.dtype;
    sig += (char)od[k].zmask;
  }
  for (int q = 0; q < pg->n; q++) {
    const wk_ew_instr &in = pg->code[q];
    sig += (char)(in.op & 0xff);
    sig += (char)(in.op >> 8);
    sig += (char)in.dst;
    sig += (char)in.a;
    sig += (char)in.b;
    sig += (char)in.c;
    sig += (char)(in.op == WK_OP_CAST ? in.attrs.i[0] : 0);
  }
  if (!known || nsc > MAX_SCALARS) {
    g_fallbacks++;
    return false;
  }
  cudaKernel_t kern = NULL;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_by_sig.find(sig);
    if (it != g_by_sig.end()) {
      kern = it->second;
    } else {
      // Compiling and loading are no stream work: inside a capture the interpreter
      // runs this group (the first, uncaptured evaluation of a plan compiles it).
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(wkc_stream(), &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        g_fallbacks++;
        return false;
      }
      std::string src = generate(pg, od, nops, nd, idx64, out_dtype, nsc), why;
      if (!src.empty()) kern = wkc_rtc_kernel(src, "wk_ew_gen", &why);
      if (g_by_sig.size() < MAX_SIGS) g_by_sig.emplace(sig, kern); // bounded like rtc.cu's cache
    }
  }
  if (!kern) {
    g_fallbacks++;
    return false;
  }
  // the parameter block: the head, then one GScal per instruction with scalars
  alignas(16) static thread_local unsigned char buf[sizeof(GHead) + MAX_SCALARS * sizeof(GScal)];
  GHead *h = (GHead *)buf;
  GScal *sc = (GScal *)(buf + sizeof(GHead));
  memset(h, 0, sizeof *h);
  h->n = n;
  h->out = out;
  bool vec = ((uintptr_t)out & 15) == 0;
  for (int d = 0; d < nd; d++) h->shape[d] = shape[d];
  for (int k = 0; k < nops; k++) {
    const wk_operand &o = ops[k];
    h->p[k] = (const char *)slots[o.slot] + o.offset * (int64_t)wkc_esize(o.dtype);
    for (int d = 0; d < nd; d++) h->stride[k][d] = o.stride[d];
    if (od[k].kind == K_DENSE && ((uintptr_t)h->p[k] & 15)) vec = false;
  }
  vec = vec && vector_path(pg);
  h->vec = vec;
  int j = 0;
  for (int q = 0; q < pg->n; q++) {
    const wk_ew_instr &in = pg->code[q];
    if (in.op == WK_EW_LOAD || !op_scalars(in.op)) continue;
    GScal &g = sc[j++];
    g.f0 = in.attrs.f[0];
    g.f1 = in.attrs.f[1];
    g.u = in.op == WK_OP_CAUSAL_MASK ? (uint64_t)(uint32_t)in.attrs.i[0] | (uint64_t)(uint32_t)in.attrs.i[1] << 32
                                     : in.attrs.u;
    g.rt = wkc_rt_reads(&in) ? wkc_rt_scalars(&in) : NULL;
  }
  int64_t units = vec ? (n / TILE > 0 ? n / TILE : 1) : n, cap = (int64_t)wkc_num_sms() * 64;
  int64_t grid = (units + THREADS - 1) / THREADS;
  if (grid > cap) grid = cap;
  void *params[] = {buf};
  cudaError_t e = cudaLaunchKernel((const void *)kern, dim3((unsigned)grid), dim3(THREADS), params, 0, wkc_stream());
  g_launches++;
  *st = e == cudaSuccess ? WK_OK : wk_error(WK_ERR_DEVICE, "cuda: launching a generated elementwise kernel: %s", cudaGetErrorString(e));
  if (e != cudaSuccess) cudaGetLastError();
  return true;
}
