// Thread-local error messages: every failure path sets one that names the culprit.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"

static _Thread_local char last_error[1024];

// Formatted into a local buffer first: a caller may pass wk_last_error() itself as an
// argument (to prefix the cause with its own context), which vsnprintf into the same
// buffer would read while overwriting.
wk_status wk_error(wk_status code, const char *fmt, ...) {
  char msg[sizeof last_error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  memcpy(last_error, msg, sizeof msg);
  if (getenv("WICK_DEBUG_ERRORS")) fprintf(stderr, "wick: %s\n", last_error);
  return code;
}

const char *wk_last_error(void) { return last_error; }
void wk_clear_error(void) { last_error[0] = 0; }
