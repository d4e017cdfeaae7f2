#define _GNU_SOURCE   // memmem
// The wick command on the committed fixtures: runs the built binary (WICK_CLI, set by
// CMake) from the source directory (WICK_SOURCE_DIR) and checks its output and exits.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "model_copy.h"

// Runs `wick ARGS` (stderr folded into stdout); returns the exit status, output in buf.
static int run(char *buf, size_t cap, const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", WICK_CLI, args);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = fread(buf, 1, cap - 1, p);
  buf[n] = 0;
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char out[1 << 20];

static void test_info(void) {
  int rc = run(out, sizeof out, "info tests/fixtures/models/llama");
  CHECK(rc == 0, "info llama: rc %d: %s", rc, out);
  CHECK(strstr(out, "architecture:  llama"), "info llama: no architecture: %s", out);
  CHECK(strstr(out, "layers:        2"), "info llama: no layers: %s", out);
  CHECK(strstr(out, "parameters:    106816"), "info llama: parameter count: %s", out);
  rc = run(out, sizeof out, "info --json tests/fixtures/models/llama_q8_0.gguf");
  CHECK(rc == 0, "info gguf: rc %d: %s", rc, out);
  CHECK(out[0] == '{' && strstr(out, "\"architecture\": \"llama\""), "info gguf json: %s", out);
  CHECK(strstr(out, "\"num_hidden_layers\": 2") && strstr(out, "\"type\": \"Q8_0\""), "info gguf json: %s", out);
  CHECK(strstr(out, "\"general.name\": \"tiny-llama\""), "info gguf json: %s", out);
  // a control byte in general.name is escaped, not sent to the terminal
  {
    FILE *f = fopen("tests/fixtures/models/llama_q8_0.gguf", "rb");
    static char bytes[1 << 18];
    size_t n = f ? fread(bytes, 1, sizeof bytes, f) : 0;
    if (f) fclose(f);
    char *at = n ? memmem(bytes, n, "tiny-llama", 10) : NULL;
    char path[] = "/tmp/wick_test_esc_XXXXXX";
    int fd = mkstemp(path);
    if (at) at[4] = 0x1b;
    CHECK(at && fd >= 0 && write(fd, bytes, n) == (ssize_t)n, "write a GGUF with an escape in its name");
    if (fd >= 0) close(fd);
    char args[128];
    snprintf(args, sizeof args, "info %s", path);
    rc = run(out, sizeof out, args);
    unlink(path);
    CHECK(rc == 0 && strstr(out, "general.name:  tiny\\x1bllama") && !strchr(out, 0x1b), "escaped name: rc %d: %s", rc, out);
  }
  rc = run(out, sizeof out, "info tests/fixtures/models/bert_tiny/model.safetensors");
  CHECK(rc == 0 && strstr(out, "architecture:  bert"), "info safetensors file: rc %d: %s", rc, out);
}

static void test_tokenize(void) {
  // the ids the library gives (themselves checked against HF in tests/tok)
  wk_tokenizer *tok = wk_tokenizer_load_json("tests/fixtures/tok/smollm2.json");
  CHECK(tok != NULL, "load smollm2.json");
  if (!tok) return;
  int32_t *ids = NULL;
  size_t n = 0;
  const char *text = "Hello world, it's 2024!";
  CHECK(!wk_tokenizer_encode(tok, text, strlen(text), true, &ids, &n), "encode");
  char want[1024] = "";
  for (size_t i = 0; i < n; i++)
    snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? " " : "", ids[i]);
  strcat(want, "\n");
  free(ids);
  wk_tokenizer_free(tok);
  int rc = run(out, sizeof out, "tokenize -m tests/fixtures/tok/smollm2.json \"Hello world, it's 2024!\"");
  CHECK(rc == 0 && !strcmp(out, want), "tokenize: rc %d: got '%s' want '%s'", rc, out, want);
  rc = run(out, sizeof out, "tokenize -m tests/fixtures/tok/smollm2.json < /dev/null");
  CHECK(rc == 0 && !out[0], "tokenize empty stdin: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "tokenize -m tests/fixtures/models/bert_tiny --pieces 'Hello, World'");
  CHECK(rc == 0 && strstr(out, ":\"[CLS]\"") && strstr(out, ":\"[SEP]\""), "tokenize pieces: rc %d: %s", rc, out);
  // byte-level pieces that split a character show their stray bytes as <0xXX>
  rc = run(out, sizeof out, "tokenize -m tests/fixtures/chat/model --pieces 'Παλιά'");
  CHECK(rc == 0 && strstr(out, "141:\"<0xCE>\" 257:\"<0xA0>\""), "pieces of a split character: rc %d: %s", rc, out);
  // generate --json: such a token's text has U+FFFD and its exact bytes beside it
  rc = run(out, sizeof out, "generate -m tests/fixtures/chat/model -p 'Παλιά' -n 12 --temp 0 --json --top-logprobs 3");
  int split = 0, with_bytes = 0;
  for (const char *q = out; (q = strstr(q, "\\ufffd")); q++) {
    const char *end = strchr(q, '}');
    split++;
    with_bytes += end && memmem(q, (size_t)(end - q), "\"bytes\": [", 10) != NULL;
  }
  CHECK(rc == 0 && split > 0 && split == with_bytes,
        "generate --json: %d texts with U+FFFD, %d with bytes: %.300s", split, with_bytes, out);
}

static void test_logits(void) {
  wk_st_file *f = wk_st_open("tests/fixtures/models/llama/ref.safetensors");
  CHECK(f != NULL, "open ref");
  if (!f) return;
  wk_tensor *ids = wk_st_get(f, "ids"), *logits = wk_st_get(f, "logits");
  wk_st_close(f);
  const int32_t *id = ids ? wk_tensor_data(ids) : NULL;
  float *lg = logits ? read_all(logits) : NULL;
  CHECK(id && lg, "read ref");
  if (id && lg) {
    int64_t T = wk_shape(ids)[1], V = wk_shape(logits)[2];
    char args[1024];
    int k = snprintf(args, sizeof args, "logits -m tests/fixtures/models/llama --top 3 --json --ids ");
    for (int64_t t = 0; t < T; t++) k += snprintf(args + k, sizeof args - (size_t)k, "%s%d", t ? "," : "", id[t]);
    const float *row = lg + (T - 1) * V;  // batch row 0, last position
    int64_t best = 0;
    for (int64_t j = 1; j < V; j++) if (row[j] > row[best]) best = j;
    int rc = run(out, sizeof out, args);
    CHECK(rc == 0, "logits: rc %d: %s", rc, out);
    char want[64];
    snprintf(want, sizeof want, "\"top\": [{\"id\": %lld,", (long long)best);
    CHECK(strstr(out, want), "logits: top-1 is not the reference argmax %lld: %s", (long long)best, out);
    const char *lp = strstr(out, "\"logit\": ");
    CHECK(lp && fabs(atof(lp + 9) - row[best]) < 1e-3, "logits: logit %s vs %g", lp ? lp : "?", (double)row[best]);
    int n_top = 0;
    for (const char *p = out; (p = strstr(p, "\"prob\": ")); p++) n_top++;
    CHECK(n_top == 3, "logits: %d entries, want 3", n_top);
  }
  free(lg);
  wk_tensor_free(ids);
  wk_tensor_free(logits);
}

static void test_embed(void) {
  char path[] = "/tmp/wick_test_cli_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp");
  if (fd < 0) return;
  const char *lines3 = "hello\nworld\nA cat.\n";
  CHECK(write(fd, lines3, strlen(lines3)) == (ssize_t)strlen(lines3), "write input");
  close(fd);
  char args[256];
  snprintf(args, sizeof args, "embed -m tests/fixtures/models/bert_tiny --batch 2 --input %s", path);
  int rc = run(out, sizeof out, args);
  unlink(path);
  CHECK(rc == 0, "embed: rc %d: %s", rc, out);
  int lines = 0;
  for (const char *p = out; *p; p++) lines += *p == '\n';
  CHECK(lines == 3 && out[0] == '[', "embed: %d lines: %.200s", lines, out);
  rc = run(out, sizeof out, "embed -m tests/fixtures/models/bert_tiny < /dev/null");
  CHECK(rc == 2 && strstr(out, "wick embed: "), "embed empty input: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "embed -m tests/fixtures/models/bert_tiny < tests/fixtures/models/bert_tiny/model.safetensors");
  CHECK(rc == 2 && (strstr(out, "not valid UTF-8") || strstr(out, "NUL byte")), "embed binary input: rc %d: %s", rc, out);
}

static void test_errors(void) {
  int rc = run(out, sizeof out, "info tests/fixtures/models/nonexistent");
  CHECK(rc == 2 && strstr(out, "wick info: "), "info missing: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "logits -m tests/fixtures/models/nonexistent -p hi");
  CHECK(rc == 2 && strstr(out, "wick logits: "), "logits missing model: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "logits -m tests/fixtures/models/llama --ids 1,2 --top x");
  CHECK(rc == 2 && strstr(out, "--top"), "logits bad top: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "logits -m tests/fixtures/models/llama --ids 1,100000");
  CHECK(rc == 1 && strstr(out, "wick logits: "), "logits bad id: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "embed -m tests/fixtures/models/llama < /dev/null");
  CHECK(rc == 1 && strstr(out, "wick embed: "), "embed decoder: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "tokenize --frobnicate");
  CHECK(rc == 2 && strstr(out, "unknown option"), "tokenize bad option: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "nosuchcommand");
  CHECK(rc == 2, "unknown command: rc %d", rc);
  // output that could not be written is a failure (a full disk here), not a success
  rc = run(out, sizeof out, "tokenize -m tests/fixtures/tok/smollm2.json hello > /dev/full");
  CHECK(rc == 1, "stdout on a full disk: rc %d", rc);
  rc = run(out, sizeof out, "bench --time nan");
  CHECK(rc == 2 && strstr(out, "--time 'nan'"), "bench --time nan: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "bench --filter no_such_case");
  CHECK(rc == 2 && strstr(out, "no_such_case"), "bench filter matching nothing: rc %d: %s", rc, out);
  rc = run(out, sizeof out, "help embed");
  CHECK(rc == 0 && strstr(out, "usage: wick embed"), "wick help embed: rc %d: %.80s", rc, out);
}

// A NaN in one q_proj weight: the logits are NaN (a masked attention row's zeros hid
// it), and `wick logits` says so instead of printing a table of nan.
static wk_tensor *poison_q(const char *name, wk_tensor *t) {
  if (!t || !strstr(name, "layers.0.self_attn.q_proj.weight")) return t;
  int64_t k = wk_numel(t);
  float *v = malloc(sizeof(float) * (size_t)k);
  wk_tensor *w = v && !wk_tensor_read_f32(t, v, k) ? (v[k / 2] = NAN, wk_from_data(wk_ndim(t), wk_shape(t), WK_F32, v)) : NULL;
  free(v);
  wk_tensor_free(t);
  return w;
}

static void test_nan_weights(void) {
  char dir[] = "/tmp/wick_test_nan_XXXXXX", args[512];
  if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
  CHECK(test_model_copy(fixture_in("models", "llama"), dir, poison_q), "write the poisoned model");
  snprintf(args, sizeof args, "logits -m %s --ids 1,2,3", dir);
  int rc = run(out, sizeof out, args);
  CHECK(rc == 2 && strstr(out, "NaN"), "logits of a NaN weight: rc %d: %.200s", rc, out);
  snprintf(args, sizeof args, "rm -rf %s", dir);
  if (system(args)) fprintf(stderr, "cleanup of %s failed\n", dir);
}

int main(void) {
  if (chdir(WICK_SOURCE_DIR)) { perror(WICK_SOURCE_DIR); return 1; }
  test_info();
  test_tokenize();
  test_logits();
  test_embed();
  test_errors();
  test_nan_weights();
  return check_report();
}
