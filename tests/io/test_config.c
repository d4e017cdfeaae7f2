// config.json for Llama (4.x and 5.x rope layouts), Qwen2 and BERT; defaults and errors.
#include "io_util.h"
#include <string.h>
#include "check.h"
#include "wick/model.h"

static wk_status parse(const char *json, wk_model_config *c) {
  return wk_model_config_parse(json, strlen(json), "cfg.json", c);
}

static void bad(const char *json, const char *want) {
  wk_model_config c;
  wk_status s = parse(json, &c);
  CHECK(s && strstr(wk_last_error(), "cfg.json") && strstr(wk_last_error(), want), "%s should fail with '%s'", json, want);
}

static void test_llama_4x(void) {
  wk_model_config c;
  wk_status s = wk_model_config_load(fixture("config_llama_4x.json"), &c);
  CHECK(!s, "SmolLM2 config loads");
  CHECK(c.arch == WK_ARCH_LLAMA && !strcmp(c.model_type, "llama") && !strcmp(c.architecture, "LlamaForCausalLM"), "arch");
  CHECK(c.vocab_size == 49152 && c.hidden_size == 576 && c.intermediate_size == 1536 && c.num_hidden_layers == 30,
        "sizes");
  CHECK(c.num_attention_heads == 9 && c.num_key_value_heads == 3 && c.head_dim == 64, "heads");
  CHECK(c.norm_eps == 1e-5 && c.rope_theta == 100000.0 && c.max_position_embeddings == 8192, "eps, theta, positions");
  CHECK(c.rope_scaling.type == WK_ROPE_DEFAULT && c.rope_scaling.factor == 1.0, "rope_scaling null");
  CHECK(c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias, "tied, no biases");
  CHECK(c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2 && c.pad_token_id == 2, "token ids");
  CHECK(!strcmp(c.hidden_act, "silu") && c.has_dtype && c.dtype == WK_BF16 && !strcmp(c.dtype_name, "bfloat16"), "act, dtype");
}

static void test_llama_5x(void) {
  wk_model_config c;
  CHECK(!wk_model_config_load(fixture("config_llama_5x.json"), &c), "5.x config loads");
  CHECK(c.arch == WK_ARCH_LLAMA && c.head_dim == 64 && c.num_key_value_heads == 8, "arch and heads");
  CHECK(c.rope_theta == 500000.0, "rope_theta from rope_parameters: %g", c.rope_theta);
  CHECK(c.rope_scaling.type == WK_ROPE_LLAMA3 && c.rope_scaling.factor == 32.0 && c.rope_scaling.low_freq_factor == 1.0 &&
            c.rope_scaling.high_freq_factor == 4.0 && c.rope_scaling.original_max_position_embeddings == 8192,
        "llama3 rope scaling");
  CHECK(c.n_eos == 3 && c.eos_token_ids[0] == 128001 && c.eos_token_ids[2] == 128009 && c.bos_token_id == 128000, "eos list");
  CHECK(c.has_dtype && c.dtype == WK_F32, "5.x \"dtype\"");
  CHECK(c.pad_token_id == -1, "no pad token");
}

static void test_qwen2(void) {
  wk_model_config c;
  CHECK(!wk_model_config_load(fixture("config_qwen2.json"), &c), "Qwen2 config loads");
  CHECK(c.arch == WK_ARCH_QWEN2 && c.hidden_size == 896 && c.num_attention_heads == 14 && c.num_key_value_heads == 2,
        "qwen2 sizes, GQA");
  CHECK(c.head_dim == 64 && c.intermediate_size == 4864 && c.num_hidden_layers == 24 && c.vocab_size == 151936, "more sizes");
  CHECK(c.qkv_bias && !c.o_bias && !c.mlp_bias, "q/k/v bias only");
  CHECK(c.norm_eps == 1e-6 && c.rope_theta == 1000000.0 && c.tie_word_embeddings, "eps, theta, tied");
  CHECK(c.bos_token_id == 151643 && c.n_eos == 1 && c.eos_token_ids[0] == 151645, "token ids");
  CHECK(!c.use_sliding_window && c.sliding_window == 32768 && c.max_window_layers == 21, "sliding window fields");
}

static void test_bert(void) {
  wk_model_config c;
  CHECK(!wk_model_config_load(fixture("config_bert.json"), &c), "BERT config loads");
  CHECK(c.arch == WK_ARCH_BERT && c.hidden_size == 384 && c.num_hidden_layers == 6 && c.num_attention_heads == 12, "sizes");
  CHECK(c.num_key_value_heads == 12 && c.head_dim == 32 && c.intermediate_size == 1536, "heads");
  CHECK(c.norm_eps == 1e-12 && !strcmp(c.hidden_act, "gelu") && c.rope_theta == 0, "layer_norm_eps, gelu, no rope");
  CHECK(c.type_vocab_size == 2 && c.max_position_embeddings == 512 && c.pad_token_id == 0 && c.vocab_size == 30522, "bert fields");
  CHECK(!strcmp(c.position_embedding_type, "absolute") && !c.has_dtype, "absolute positions, no dtype");
}

static void test_defaults_and_variants(void) {
  wk_model_config c;
  CHECK(!parse("{\"model_type\": \"llama\"}", &c), "minimal llama");
  CHECK(c.vocab_size == 32000 && c.hidden_size == 4096 && c.intermediate_size == 11008 && c.num_hidden_layers == 32 &&
            c.num_attention_heads == 32 && c.num_key_value_heads == 32 && c.head_dim == 128 && c.rope_theta == 10000 &&
            c.norm_eps == 1e-6 && c.max_position_embeddings == 2048 && !c.tie_word_embeddings && c.bos_token_id == 1 &&
            c.eos_token_ids[0] == 2,
        "LlamaConfig defaults");
  CHECK(!parse("{\"architectures\": [\"Qwen2ForCausalLM\"], \"num_key_value_heads\": null, \"head_dim\": null}", &c) &&
            c.arch == WK_ARCH_QWEN2 && !strcmp(c.model_type, "qwen2") && c.num_key_value_heads == 32 && c.head_dim == 128 &&
            c.max_position_embeddings == 32768 && c.n_eos == 0 && c.bos_token_id == -1,
        "architecture without model_type; nulls take defaults");
  CHECK(!parse("{\"model_type\": \"llama\", \"pad_token_id\": -1}", &c) && c.pad_token_id == -1,
        "pad_token_id -1 (no pad token, as original LLaMA conversions write it)");
  bad("{\"model_type\": \"llama\", \"pad_token_id\": -2}", "pad_token_id");
  CHECK(!parse("{\"architectures\": [\"BertForMaskedLM\"], \"hidden_act\": \"gelu_new\"}", &c) && c.arch == WK_ARCH_BERT &&
            c.hidden_size == 768 && !strcmp(c.hidden_act, "gelu_new"),
        "BertForMaskedLM");
  CHECK(!parse("{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}, \"rope_theta\": 5e5}", &c) &&
            c.rope_scaling.type == WK_ROPE_LINEAR && c.rope_scaling.factor == 2.0 && c.rope_theta == 5e5,
        "4.x linear rope_scaling with \"type\"");
  CHECK(!parse("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4, "
               "\"original_max_position_embeddings\": 32768, \"beta_fast\": 16}}", &c) &&
            c.rope_scaling.type == WK_ROPE_YARN && c.rope_scaling.factor == 4 && c.rope_scaling.beta_fast == 16 &&
            c.rope_scaling.beta_slow == 1 && c.rope_scaling.original_max_position_embeddings == 32768,
        "yarn fields and defaults");
  CHECK(!parse("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2}}", &c) &&
            c.rope_scaling.type == WK_ROPE_DYNAMIC,
        "dynamic rope");
  CHECK(!parse("{\"model_type\": \"qwen2\", \"rope_theta\": 1, \"rope_parameters\": {\"rope_type\": \"default\", "
               "\"rope_theta\": 1000000.0}}", &c) && c.rope_theta == 1e6 && c.rope_scaling.type == WK_ROPE_DEFAULT,
        "rope_parameters wins over a top-level rope_theta");
  CHECK(!parse("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_type\": \"default\"}, \"rope_theta\": 7.0}", &c) &&
            c.rope_theta == 7.0,
        "rope_parameters without rope_theta falls back to the top level");
  CHECK(!parse("{\"model_type\": \"llama\", \"attention_bias\": true, \"mlp_bias\": true, \"torch_dtype\": \"float16\","
               " \"eos_token_id\": [5], \"bos_token_id\": null}", &c) &&
            c.qkv_bias && c.o_bias && c.mlp_bias && c.dtype == WK_F16 && c.n_eos == 1 && c.eos_token_ids[0] == 5 &&
            c.bos_token_id == 1,
        "llama attention_bias, dtype, eos list of one");
  CHECK(!parse("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"head_dim\": 32}", &c) &&
            c.head_dim == 32,
        "explicit head_dim");
  // from a directory
  const char *dir = scratch_dir();
  const char *json = "{\"model_type\": \"bert\", \"hidden_size\": 128, \"num_attention_heads\": 2}";
  write_bytes(scratch("config.json"), json, strlen(json));
  CHECK(!wk_model_config_load(dir, &c) && c.arch == WK_ARCH_BERT && c.head_dim == 64, "load from a directory");
  unlink(scratch("config.json"));
  CHECK(wk_model_config_load(dir, &c) && strstr(wk_last_error(), "config.json") && strstr(wk_last_error(), "cannot open"),
        "directory without config.json");
  CHECK(!strcmp(wk_arch_name(WK_ARCH_QWEN2), "qwen2") && !strcmp(wk_arch_name(WK_ARCH_UNKNOWN), "unknown"), "arch names");
}

static void test_errors(void) {
  bad("{\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"]}",
      "unsupported model: model_type \"mistral\", architectures \"MistralForCausalLM\"");
  bad("{\"architectures\": [\"GPT2LMHeadModel\"]}", "model_type \"(none)\", architectures \"GPT2LMHeadModel\"");
  bad("{}", "unsupported model");
  bad("[1]", "not an object");
  bad("{\"model_type\": \"llama\", \"hidden_size\": \"576\"}", "\"hidden_size\" is a string, not an integer");
  bad("{\"model_type\": \"llama\", \"hidden_size\": 57.6}", "\"hidden_size\" is a fractional number");
  bad("{\"model_type\": \"llama\", \"vocab_size\": 0}", "\"vocab_size\" is 0; it must be at least 1");
  bad("{\"model_type\": \"llama\", \"rms_norm_eps\": 1e308}", "\"rms_norm_eps\" is 1e+308, out of the range of a float32");
  bad("{\"model_type\": \"llama\", \"rope_theta\": 1e-300}", "\"rope_theta\" is 1e-300, out of the range");
  bad("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_theta\": 1e39}}", "\"rope_parameters.rope_theta\" is 1e+39");
  bad("{\"model_type\": \"bert\", \"layer_norm_eps\": 1e-50}", "\"layer_norm_eps\" is 1e-50, out of the range");
  bad("{\"model_type\": \"llama\", \"hidden_size\": 100, \"num_attention_heads\": 3}",
      "hidden_size 100 is not a multiple of num_attention_heads 3");
  bad("{\"model_type\": \"qwen2\", \"num_attention_heads\": 14, \"num_key_value_heads\": 4, \"hidden_size\": 896}",
      "num_attention_heads 14 is not a multiple of num_key_value_heads 4");
  bad("{\"model_type\": \"llama\", \"rms_norm_eps\": 0}", "\"rms_norm_eps\" is 0; it must be positive");
  bad("{\"model_type\": \"llama\", \"rms_norm_eps\": \"1e-5\"}", "\"rms_norm_eps\" is a string, not a number");
  bad("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 2}}",
      "\"rope_scaling.rope_type\" \"longrope\" is not supported");
  bad("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8, \"rope_theta\": 5e5}}",
      "\"rope_parameters.low_freq_factor\" is required for rope type llama3");
  bad("{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"linear\"}}", "\"rope_scaling.factor\" is required");
  bad("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_theta\": -1}}", "\"rope_parameters.rope_theta\" is -1");
  bad("{\"model_type\": \"llama\", \"rope_parameters\": {\"full_attention\": {\"rope_theta\": 1e4}}}",
      "\"rope_parameters\" per layer type (\"full_attention\") is not supported");
  bad("{\"model_type\": \"llama\", \"rope_scaling\": 2}", "\"rope_scaling\" is a number, not an object");
  bad("{\"model_type\": \"llama\", \"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", "lists 9 ids");
  bad("{\"model_type\": \"llama\", \"eos_token_id\": [1, \"2\"]}", "\"eos_token_id\"[1] is not");
  bad("{\"model_type\": \"llama\", \"eos_token_id\": \"2\"}", "\"eos_token_id\" is a string");
  bad("{\"model_type\": \"llama\", \"hidden_act\": \"swiglu_weird\"}", "hidden_act \"swiglu_weird\" is not supported");
  bad("{\"model_type\": \"llama\", \"tie_word_embeddings\": 1}", "\"tie_word_embeddings\" is a number, not true or false");
  bad("{\"model_type\": \"bert\", \"position_embedding_type\": \"relative_key\"}", "position_embedding_type \"relative_key\"");
  bad("{\"model_type\": 5}", "\"model_type\" is a number, not a string");
  bad("{\"model_type\": \"llama\",\n \"hidden_size\": 5,,}", "cfg.json:2:19: JSON");
  wk_model_config c;
  CHECK(wk_model_config_load(scratch("nope.json"), &c) && strstr(wk_last_error(), "nope.json"), "missing file");
}

int main(void) {
  test_llama_4x();
  test_llama_5x();
  test_qwen2();
  test_bert();
  test_defaults_and_variants();
  test_errors();
  scratch_cleanup();
  return check_report();
}
