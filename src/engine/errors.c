// Thread-local error messages: every failure path sets one that names the culprit.
#include <stdio.h>
#include <stdlib.h>
#include "engine.h"

static _Thread_local char last_error[1024];

wk_status wk_error(wk_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  if (getenv("WICK_DEBUG_ERRORS")) fprintf(stderr, "wick: %s\n", last_error);
  return code;
}

const char *wk_last_error(void) { return last_error; }
void wk_clear_error(void) { last_error[0] = 0; }
