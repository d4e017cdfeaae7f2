// GGUF model files (versions 2 and 3) and the ggml block-quantized storage types.
//
//   wk_gguf *f = wk_gguf_open("model.gguf");          // mmap + full validation
//   if (!f) { fprintf(stderr, "%s\n", wk_last_error()); return 1; }
//   uint32_t layers;
//   wk_gguf_get_u32(f, "llama.block_count", &layers);
//   const wk_gguf_tensor *t = wk_gguf_find_tensor(f, "blk.0.attn_q.weight");
//   // t->shape is row-major: t->shape[t->ndim - 1] values per row, t->nrows rows
//   // of t->row_bytes bytes each, starting at t->data (a kernel's (type, row, bytes)).
//   wk_tensor *w = wk_gguf_tensor_f32(f, "token_embd.weight");   // dequantized copy
//   wk_gguf_close(f);                                  // w stays valid
//
// Ownership: wk_gguf_open returns a handle released with wk_gguf_close. Every
// pointer the handle gives out (keys, strings, descriptors, tensor data) lives
// until wk_gguf_close. Tensors made by wk_gguf_tensor_f32 / wk_gguf_tensor_load are
// ordinary wick tensors (free with wk_tensor_free); zero-copy ones keep the file
// mapped after wk_gguf_close until they are freed. The mapping is private and
// writable: writing to a zero-copy tensor (an optimizer step) never changes the file,
// but the handle's descriptors see the new values.
// Scalar byte order: little-endian files only (what every GGUF writer emits).
#pragma once
#include "base.h"
#include "tensor.h"

// ---- storage types: values are ggml's type ids, as stored in GGUF tensor infos ----
typedef enum {
  WK_QT_F32 = 0, WK_QT_F16 = 1, WK_QT_Q4_0 = 2, WK_QT_Q4_1 = 3, WK_QT_Q5_0 = 6,
  WK_QT_Q5_1 = 7, WK_QT_Q8_0 = 8, WK_QT_Q8_1 = 9, WK_QT_Q2_K = 10, WK_QT_Q3_K = 11,
  WK_QT_Q4_K = 12, WK_QT_Q5_K = 13, WK_QT_Q6_K = 14, WK_QT_Q8_K = 15, WK_QT_IQ2_XXS = 16,
  WK_QT_IQ2_XS = 17, WK_QT_IQ3_XXS = 18, WK_QT_IQ1_S = 19, WK_QT_IQ4_NL = 20, WK_QT_IQ3_S = 21,
  WK_QT_IQ2_S = 22, WK_QT_IQ4_XS = 23, WK_QT_I8 = 24, WK_QT_I16 = 25, WK_QT_I32 = 26,
  WK_QT_I64 = 27, WK_QT_F64 = 28, WK_QT_IQ1_M = 29, WK_QT_BF16 = 30, WK_QT_TQ1_0 = 34,
  WK_QT_TQ2_0 = 35, WK_QT_MXFP4 = 39, WK_QT_NVFP4 = 40, WK_QT_Q1_0 = 41,
  WK_QT_COUNT = 42   // one past the largest id; ids in between are unknown
} wk_qtype;

// "Q4_K", or "?" for an unknown id.
const char *wk_qtype_name(int type);
// Values per block (1 for plain types, 32 for Q8_0/Q4_0/Q4_1, 256 for K-quants); 0 if unknown.
int64_t wk_quant_block_size(int type);
// Bytes per block; 0 if unknown. Every ggml type the file format knows has a size,
// so files holding types wick cannot compute with still open and validate.
size_t wk_quant_type_size(int type);
// Bytes of n consecutive values (one row). 0 with an error message if the type is
// unknown, n is not a multiple of the block size or the size overflows (and 0 for n == 0).
size_t wk_quant_row_bytes(int type, int64_t n);
// 1 if wk_dequantize_row handles the type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K.
int wk_quant_can_dequantize(int type);
// Expands n values (a multiple of the block size) stored at src into dst, with the
// arithmetic of ggml's reference dequantizers (results are bit-identical to ggml's
// and gguf-py's). src needs no alignment.
wk_status wk_dequantize_row(int type, const void *src, float *dst, int64_t n);

// ---- GGUF metadata values ----
typedef enum {
  WK_GGUF_U8 = 0, WK_GGUF_I8 = 1, WK_GGUF_U16 = 2, WK_GGUF_I16 = 3, WK_GGUF_U32 = 4,
  WK_GGUF_I32 = 5, WK_GGUF_F32 = 6, WK_GGUF_BOOL = 7, WK_GGUF_STRING = 8, WK_GGUF_ARRAY = 9,
  WK_GGUF_U64 = 10, WK_GGUF_I64 = 11, WK_GGUF_F64 = 12, WK_GGUF_TYPE_COUNT
} wk_gguf_vtype;

// "u32", "string", "array", ...
const char *wk_gguf_vtype_name(int vtype);

// A view of one value inside the mapping (for generic walks: `wick info`, nested arrays).
// GGUF strings are length-prefixed, not NUL-terminated, and numbers may sit at any
// address: read them with memcpy or through the typed getters.
typedef struct {
  wk_gguf_vtype type;
  wk_gguf_vtype elem_type;   // arrays: type of the elements
  uint64_t count;            // arrays: element count; strings: byte length; else 1
  const uint8_t *data;       // scalar bytes, string bytes, or an array's first element
  size_t size;               // bytes at data that the value spans
} wk_gguf_value;

// A string inside the mapping: len bytes at ptr, not NUL-terminated.
typedef struct { const char *ptr; size_t len; } wk_gguf_str;

// ---- tensors ----
// One tensor's descriptor. GGUF stores dims innermost-first (ggml's ne[0] is the
// contiguous one); `shape` here is that list reversed, i.e. row-major like every wick
// tensor: shape[ndim-1] is the row length (ggml ne[0]) and rows follow one another.
typedef struct {
  const char *name;                 // NUL-terminated, owned by the file
  wk_qtype type;
  int ndim;                         // 0..WK_MAX_DIMS
  int64_t shape[WK_MAX_DIMS];       // row-major
  int64_t numel;
  const void *data;                 // inside the mapping, `alignment`-aligned in the file
  size_t bytes;                     // nrows * row_bytes
  uint64_t file_offset;             // absolute offset of data in the file
  int64_t row_len;                  // shape[ndim-1] (1 for 0-d), a multiple of the block size
  int64_t nrows;                    // numel / row_len (0 for empty tensors)
  size_t row_bytes;                 // wk_quant_row_bytes(type, row_len); row r is at data + r*row_bytes
} wk_gguf_tensor;

typedef struct wk_gguf wk_gguf;

// Opens and validates a GGUF file through mmap. NULL on failure, with a message
// naming the file and the field at fault (truncated header, bad magic, unsupported
// version, string or array past the end, bad alignment, dims, unknown tensor type,
// data out of range, misaligned or overlapping). The layout must be the one every
// writer emits (and llama.cpp requires): zero padding before the data section, and
// tensors' data back to back, each padded to the alignment, up to the file's end;
// a header count or offset that disagrees with the file fails here, by name.
wk_gguf *wk_gguf_open(const char *path);
// Releases the handle (NULL is fine). Tensors made from it remain valid.
void wk_gguf_close(wk_gguf *f);

const char *wk_gguf_path(const wk_gguf *f);
uint32_t wk_gguf_version(const wk_gguf *f);
size_t wk_gguf_alignment(const wk_gguf *f);      // general.alignment, default 32
uint64_t wk_gguf_data_offset(const wk_gguf *f);  // start of the tensor data section
size_t wk_gguf_file_size(const wk_gguf *f);

// ---- metadata: enumerate ----
int64_t wk_gguf_kv_count(const wk_gguf *f);
const char *wk_gguf_kv_key(const wk_gguf *f, int64_t i);       // NULL if out of range
wk_status wk_gguf_kv_value(const wk_gguf *f, int64_t i, wk_gguf_value *out);
int64_t wk_gguf_find_key(const wk_gguf *f, const char *key);   // -1 if absent (no error set)
int wk_gguf_has_key(const wk_gguf *f, const char *key);
// The value of key. Missing key -> WK_ERR_ARG with the key and file in the message.
wk_status wk_gguf_get_value(const wk_gguf *f, const char *key, wk_gguf_value *out);
// Element i of an array value: O(1) for fixed-size elements, O(i) for strings and
// nested arrays (for string arrays at the top level use wk_gguf_get_str_array).
wk_status wk_gguf_array_elem(const wk_gguf_value *arr, uint64_t i, wk_gguf_value *out);

// ---- metadata: typed getters ----
// Each requires the stored type to be exactly the one named, else WK_ERR_DTYPE with
// "key 'K' in FILE is <actual>, expected <wanted>". Missing keys give WK_ERR_ARG.
wk_status wk_gguf_get_u8(const wk_gguf *f, const char *key, uint8_t *out);
wk_status wk_gguf_get_i8(const wk_gguf *f, const char *key, int8_t *out);
wk_status wk_gguf_get_u16(const wk_gguf *f, const char *key, uint16_t *out);
wk_status wk_gguf_get_i16(const wk_gguf *f, const char *key, int16_t *out);
wk_status wk_gguf_get_u32(const wk_gguf *f, const char *key, uint32_t *out);
wk_status wk_gguf_get_i32(const wk_gguf *f, const char *key, int32_t *out);
wk_status wk_gguf_get_u64(const wk_gguf *f, const char *key, uint64_t *out);
wk_status wk_gguf_get_i64(const wk_gguf *f, const char *key, int64_t *out);
wk_status wk_gguf_get_f32(const wk_gguf *f, const char *key, float *out);
wk_status wk_gguf_get_f64(const wk_gguf *f, const char *key, double *out);
wk_status wk_gguf_get_bool(const wk_gguf *f, const char *key, int *out);   // 0 or 1
// Lenient forms for model configs written by different tools: any integer type
// (range-checked into int64), any float type.
wk_status wk_gguf_get_int(const wk_gguf *f, const char *key, int64_t *out);
wk_status wk_gguf_get_float(const wk_gguf *f, const char *key, double *out);
// A string value as a NUL-terminated copy owned by the file (an embedded NUL cuts
// it short: wk_gguf_get_value gives the exact bytes).
wk_status wk_gguf_get_str(const wk_gguf *f, const char *key, const char **out);
// A string array: *items points at n views into the mapping, owned by the file.
wk_status wk_gguf_get_str_array(const wk_gguf *f, const char *key, const wk_gguf_str **items,
                                uint64_t *n);
// Array length and element type.
wk_status wk_gguf_get_array_info(const wk_gguf *f, const char *key, wk_gguf_vtype *elem,
                                 uint64_t *n);
// Copies a numeric (or bool) array whose elements are exactly `elem` into out, which
// holds n elements; n must equal the array's length.
wk_status wk_gguf_get_array(const wk_gguf *f, const char *key, wk_gguf_vtype elem, void *out,
                            uint64_t n);
// Shorthands for tokenizer arrays (scores: f32, token types: i32).
wk_status wk_gguf_get_array_f32(const wk_gguf *f, const char *key, float *out, uint64_t n);
wk_status wk_gguf_get_array_i32(const wk_gguf *f, const char *key, int32_t *out, uint64_t n);

// ---- tensors ----
int64_t wk_gguf_tensor_count(const wk_gguf *f);
const wk_gguf_tensor *wk_gguf_tensor_at(const wk_gguf *f, int64_t i);   // file order
// NULL with "tensor 'N' not found in FILE" if absent.
const wk_gguf_tensor *wk_gguf_find_tensor(const wk_gguf *f, const char *name);
// A new f32 tensor with the row-major shape: dequantized (F16, BF16, Q8_0, Q4_0, Q4_1,
// Q4_K, Q5_K, Q6_K) into fresh memory, or, for F32 data, the mapping itself (zero-copy).
wk_tensor *wk_gguf_tensor_f32(wk_gguf *f, const char *name);
// F32, F16, BF16 and the block-quantized types (WK_Q8_0, WK_Q4_0, WK_Q4_1, WK_Q4_K,
// WK_Q5_K, WK_Q6_K) wrapped zero-copy in their own dtype; other types fail. Quantized
// tensors are read in place by matmul and embedding (see wk_matmul in ops.h).
wk_tensor *wk_gguf_tensor_load(wk_gguf *f, const char *name);
