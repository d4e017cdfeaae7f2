// config.json -> wk_model_config (public API in include/wick/model.h). This entry
// point takes an already parsed tree, for configs embedded in other files.
#pragma once
#include "io/json.h"
#include "wick/model.h"

wk_status wk_model_config_from_json(const wk_json *root, const char *source, wk_model_config *out);
