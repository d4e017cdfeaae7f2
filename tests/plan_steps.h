// What the last compiled plan holds, for tests that check a rewrite happened.
#pragma once
#include "engine/plan.h"
#include "wick.h"

// The matmul steps with an epilogue (nin == 3) of the last plan: how many, and the
// epilogue of the last one in *kind.
static inline int epilogue_steps(int *kind) {
  const wk_plan *p = wk_last_plan();
  int n = 0;
  for (int k = 0; p && k < p->nsteps; k++)
    if (p->steps[k].op == WK_OP_MATMUL && p->steps[k].nin == 3) {
      n++;
      *kind = (int)p->steps[k].attrs.i[0];
    }
  return n;
}
