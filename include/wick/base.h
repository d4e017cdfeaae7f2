// wick base types: status codes, dtypes, devices, errors.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define WICK_VERSION_MAJOR 0
#define WICK_VERSION_MINOR 1
#define WK_MAX_DIMS 8

// 0 = ok. Any other value means failure; wk_last_error() says why.
typedef int wk_status;
enum { WK_OK = 0, WK_ERR_ARG = 1, WK_ERR_SHAPE = 2, WK_ERR_DTYPE = 3, WK_ERR_IO = 4,
       WK_ERR_OOM = 5, WK_ERR_DEVICE = 6, WK_ERR_STATE = 7 };

// WK_Q* are ggml's block-quantized storage types (GGUF weights kept as stored): a row
// of a [rows, cols] tensor is cols / block consecutive blocks. Only matmul (as the
// right-hand operand), embedding (as the table) and cast / dequantize read them.
typedef enum { WK_F32 = 0, WK_F16 = 1, WK_BF16 = 2, WK_I32 = 3,
               WK_Q8_0 = 4, WK_Q4_0 = 5, WK_Q4_1 = 6, WK_Q4_K = 7, WK_Q5_K = 8, WK_Q6_K = 9,
               WK_DTYPE_COUNT } wk_dtype;
typedef enum { WK_CPU = 0, WK_CUDA = 1, WK_DEVICE_COUNT } wk_device;

// Thread-local message for the last failure on this thread (never NULL).
const char *wk_last_error(void);
// Clear the last error message.
void wk_clear_error(void);

const char *wk_dtype_name(wk_dtype dt);
// Bytes per element; 0 for block-quantized types, which have none (see below).
size_t wk_dtype_size(wk_dtype dt);
// 1 for the block-quantized types (WK_Q8_0 ... WK_Q6_K).
int wk_dtype_is_quantized(wk_dtype dt);
// Values per block (32 or 256 for quantized types, 1 for the others) and bytes per block.
int64_t wk_dtype_block(wk_dtype dt);
size_t wk_dtype_block_bytes(wk_dtype dt);
