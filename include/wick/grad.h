// Autograd as a graph transformation.
//
//   wk_set_trainable(w, 1);
//   wk_tensor *loss = ...;                       // scalar built from w
//   wk_tensor *g;
//   wk_grad(loss, 1, &w, &g);                    // g is lazy: nothing computed yet
//   wk_eval(2, (wk_tensor *[]){loss, g});        // forward and backward in one plan
#pragma once
#include "tensor.h"

// Builds lazy gradients of the scalar `loss` with respect to params[i] into grads[i]
// (new references). A param that is not trainable, or that loss does not depend on,
// gets zeros. Gradients do not flow through wk_stop_gradient or into non-trainable leaves.
wk_status wk_grad(wk_tensor *loss, int n, wk_tensor *const *params, wk_tensor **grads);

// Builds the gradients and evaluates them together with the loss in one plan:
// *value gets the loss, grads[i] (new references) the realized gradients.
wk_status wk_value_and_grad(wk_tensor *loss, int n, wk_tensor *const *params, wk_tensor **grads, float *value);
