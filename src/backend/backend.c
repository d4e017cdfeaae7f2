// Backend registry: one backend per device kind.
#include "backend.h"

const wk_backend *wk_backend_cpu(void);
#ifdef WICK_CUDA
const wk_backend *wk_backend_cuda(void);
#endif

const wk_backend *wk_backend_get(wk_device dev) {
  switch (dev) {
    case WK_CPU: return wk_backend_cpu();
#ifdef WICK_CUDA
    case WK_CUDA: return wk_backend_cuda();
#endif
    default:
      wk_error(WK_ERR_DEVICE, "%s is not available in this build (configure with -DWICK_CUDA=ON)", wk_device_name(dev));
      return NULL;
  }
}
