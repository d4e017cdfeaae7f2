// Helpers shared by the wick subcommands: error exits, option values, model paths,
// tokenizer loading and JSON string output. Thin: no model logic lives here.
#pragma once
#include <stdbool.h>
#include <stdio.h>
#include "wick.h"

#define WICK_DEFAULT_LM "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
#define WICK_DEFAULT_EMBED "models/all-minilm-l6-v2"

// Prints "wick <cmd>: <message>" to stderr and returns 2 (a user error).
int cli_user_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prints "wick <cmd>: <wk_last_error()>" to stderr and returns 1 (a library error).
int cli_lib_error(const char *cmd);
// The value of option argv[*i] (advances *i); NULL with a message if it is missing.
const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i);
// Parses a decimal integer in [0, 2^64 - 1] (a seed): no sign; 0 on success.
int cli_parse_u64(const char *s, uint64_t *out);
// Parses a decimal integer in [lo, hi]; 0 on success.
int cli_parse_int(const char *s, long lo, long hi, long *out);
// 0 if path exists; else prints a user error (with a fetch-models hint when is_default).
int cli_check_path(const char *cmd, const char *path, bool is_default);
bool cli_is_dir(const char *path);
// A note on stderr when an option's n positions (--ctx-size, --seq-len) pass m's context.
void cli_note_past_context(const char *cmd, const char *opt, int64_t n, const wk_model *m);
// A file written whole or not at all: cli_file_open creates "PATH.tmp.<pid>" beside PATH
// (0, or -1 with errno); cli_file_commit flushes it to disk and renames it over PATH when
// ok, else (or when that fails: -1 with errno) removes it, leaving PATH as it was.
typedef struct { FILE *f; const char *path; char tmp[4200]; } cli_file;
int cli_file_open(cli_file *w, const char *path);
int cli_file_commit(cli_file *w, bool ok);
bool cli_is_gguf(const char *path);
// A tokenizer for `path`: a model directory (its tokenizer.json), a tokenizer.json
// file or a .gguf file (its vocabulary). NULL with wk_last_error() set.
wk_tokenizer *cli_load_tokenizer(const char *path);
// False only for a directory without tokenizer.json.
bool cli_has_tokenizer(const char *path);
// 0 unless path is a directory without tokenizer.json (then a user error, 2).
int cli_check_tokenizer(const char *cmd, const char *path);
// Loads the model at path onto dev and, when adapter_dir is not NULL, a PEFT LoRA
// adapter for it (made active; freed by cli_model_free). NULL with wk_last_error() set.
wk_model *cli_load_model(const char *path, wk_device dev, const char *adapter_dir, wk_adapter **adapter);
// "-d"/"--device" values: "cpu" or "cuda" into *dev; 2 after a user error.
int cli_parse_device(const char *cmd, const char *v, wk_device *dev);
void cli_model_free(wk_model *m, wk_adapter *adapter);
// 1 if s[0..n) is valid UTF-8.
bool cli_utf8_valid(const char *s, size_t n);
// Writes s[0..n) as a JSON string (quotes included); a byte that is not part of valid
// UTF-8 is written as U+FFFD (\ufffd), as JSON strings are Unicode text: callers that
// need the exact bytes give them apart (cli_print_token_json's "bytes").
void cli_json_string(FILE *f, const char *s, size_t n);
// The same for a token's piece shown to a person: a stray byte is written as "<0xCE>".
void cli_json_piece(FILE *f, const char *s, size_t n);
