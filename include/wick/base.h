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

typedef enum { WK_F32 = 0, WK_F16 = 1, WK_BF16 = 2, WK_I32 = 3, WK_DTYPE_COUNT } wk_dtype;
typedef enum { WK_CPU = 0, WK_CUDA = 1, WK_DEVICE_COUNT } wk_device;

// Thread-local message for the last failure on this thread (never NULL).
const char *wk_last_error(void);
// Clear the last error message.
void wk_clear_error(void);

const char *wk_dtype_name(wk_dtype dt);
size_t wk_dtype_size(wk_dtype dt);
