// libFuzzer target: config.json parsing (wk_model_config_parse, src/io/config.c).
// A config that parses must be self-consistent enough for the loaders: checked below.
#include <assert.h>
#include <stdint.h>
#include <string.h>
#include "wick/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  wk_model_config c;
  memset(&c, 0xA5, sizeof c);  // anything left unset shows up as garbage under UBSan checks
  wk_status st = wk_model_config_parse((const char *)data, size, "fuzz/config.json", &c);
  if (st != WK_OK) return 0;
  // fixed-size strings must be NUL-terminated
  assert(memchr(c.dtype_name, 0, sizeof c.dtype_name));
  assert(memchr(c.position_embedding_type, 0, sizeof c.position_embedding_type));
  (void)wk_arch_name(c.arch);
  return 0;
}
