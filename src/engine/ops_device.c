// Device transfers: explicit ops, so the planner sees every copy between devices.
#include "engine.h"
#include "../backend/backend.h"

static const char *const device_names[WK_DEVICE_COUNT] = {"cpu", "cuda"};

const char *wk_device_name(wk_device dev) {
  return (unsigned)dev < WK_DEVICE_COUNT ? device_names[dev] : "unknown device";
}

int wk_device_available(wk_device dev) {
  if (dev == WK_CPU) return 1;
  return wk_backend_get(dev) != NULL;
}

wk_tensor *wk_to_device(wk_tensor *t, wk_device dev) {
  if (!wk_tensor_valid(t, "to_device")) return NULL;
  if ((unsigned)dev >= WK_DEVICE_COUNT) {
    wk_error(WK_ERR_DEVICE, "to_device: unknown device %d", dev);
    return NULL;
  }
  if (t->device == dev) return wk_node_finish(wk_tensor_ref(t));
  if (wk_dtype_is_quantized(t->dtype) && !wk_is_contiguous(t)) { // blocks move as bytes: whole rows of them
    char b[160];
    wk_error(WK_ERR_DEVICE, "to_device: quantized tensor %s is a strided view; only contiguous blocks move to %s",
             wk_shape_str(t, b, sizeof b), wk_device_name(dev));
    return NULL;
  }
  if (!wk_backend_get(dev == WK_CPU ? t->device : dev)) return NULL; // message names the device
  // transfers copy dense memory: make strided views contiguous on their own device first
  wk_tensor *src = wk_is_contiguous(t) ? wk_tensor_ref(t) : wk_keep(wk_contiguous(t));
  if (!src) return NULL;
  wk_attrs at = {.i = {dev, t->device}};
  wk_tensor *r = wk_node_new(WK_OP_TRANSFER, t->dtype, t->ndim, t->shape, 1, &src, &at);
  wk_tensor_free(src);
  if (!r) return NULL;
  r->device = dev;
  return wk_node_finish(r);
}

wk_status wk_vjp_TRANSFER(wk_tensor *node, wk_tensor *g, const bool *need, wk_tensor **gin) {
  (void)need;
  gin[0] = wk_keep(wk_to_device(g, node->in[0]->device));
  return gin[0] ? WK_OK : WK_ERR_DEVICE;
}
