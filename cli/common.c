#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_user_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "wick %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 2;
}

int cli_lib_error(const char *cmd) {
  const char *e = wk_last_error();
  size_t n = strlen(cmd);
  if (!strncmp(e, cmd, n) && !strncmp(e + n, ": ", 2)) e += n + 2;   // "wick chat: chat: ..." says it once
  fprintf(stderr, "wick %s: %s\n", cmd, e);
  return 1;
}

const char *cli_opt_value(const char *cmd, int argc, char **argv, int *i) {
  if (*i + 1 >= argc) {
    cli_user_error(cmd, "option %s needs a value", argv[*i]);
    return NULL;
  }
  return argv[++*i];
}

int cli_parse_int(const char *s, long lo, long hi, long *out) {
  if (!s || !*s) return 1;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return 1;
  *out = v;
  return 0;
}

int cli_check_path(const char *cmd, const char *path, bool is_default) {
  struct stat sb;
  if (!stat(path, &sb)) return 0;
  if (is_default)
    return cli_user_error(cmd, "default model %s not found: run tools/fetch-models (or pass -m MODEL)", path);
  return cli_user_error(cmd, "%s: no such file or directory", path);
}

bool cli_is_dir(const char *path) {
  struct stat sb;
  return !stat(path, &sb) && S_ISDIR(sb.st_mode);
}

int cli_file_open(cli_file *w, const char *path) {
  w->path = path;
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
  w->f = fopen(w->tmp, "wb");
  return w->f ? 0 : -1;
}

int cli_file_commit(cli_file *w, bool ok) {
  if (!w->f) return -1;
  if (fflush(w->f) || fsync(fileno(w->f))) ok = false;
  if (fclose(w->f)) ok = false;
  w->f = NULL;
  if (ok && !rename(w->tmp, w->path)) return 0;
  int err = errno;
  remove(w->tmp);
  errno = err;
  return -1;
}

void cli_note_past_context(const char *cmd, const char *opt, int64_t n, const wk_model *m) {
  int64_t ctx = wk_model_get_config(m)->max_position_embeddings;
  if (ctx > 0 && n > ctx)
    fprintf(stderr, "wick %s: note: %s %lld is past the model's context of %lld positions (it was never trained "
            "beyond them)\n", cmd, opt, (long long)n, (long long)ctx);
}

bool cli_is_gguf(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  char mg[4] = {0};
  size_t n = fread(mg, 1, 4, f);
  fclose(f);
  return n == 4 && !memcmp(mg, "GGUF", 4);
}

bool cli_has_tokenizer(const char *path) {
  if (!cli_is_dir(path)) return true;
  char p[4096];
  snprintf(p, sizeof p, "%s/tokenizer.json", path);
  struct stat sb;
  return !stat(p, &sb);
}

int cli_check_tokenizer(const char *cmd, const char *path) {
  return cli_has_tokenizer(path) ? 0 : cli_user_error(cmd, "%s has no tokenizer.json", path);
}

wk_tokenizer *cli_load_tokenizer(const char *path) {
  if (cli_is_dir(path)) {
    size_t n = strlen(path) + sizeof "/tokenizer.json";
    char *p = malloc(n);
    if (!p) return NULL;
    snprintf(p, n, "%s/tokenizer.json", path);
    wk_tokenizer *t = wk_tokenizer_load_json(p);
    free(p);
    return t;
  }
  if (cli_is_gguf(path)) {
    wk_gguf *g = wk_gguf_open(path);
    if (!g) return NULL;
    wk_tokenizer *t = wk_tokenizer_from_gguf(g);
    wk_gguf_close(g);
    return t;
  }
  return wk_tokenizer_load_json(path);
}

// Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if invalid.
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
  else return 0;
  if (len > n) return 0;
  unsigned cp = c & (0x7Fu >> len);
  for (size_t k = 1; k < len; k++) {
    if ((s[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[k] & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool cli_utf8_valid(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq(u + i, n - i);
    if (!l) return false;
    i += l;
  }
  return true;
}

static void json_string(FILE *f, const char *s, size_t n, bool hex_bytes) {
  const unsigned char *u = (const unsigned char *)s;
  fputc('"', f);
  for (size_t i = 0; i < n;) {
    unsigned c = u[i];
    size_t l = utf8_seq(u + i, n - i);
    if (l > 1) { fwrite(u + i, 1, l, f); i += l; continue; }
    i++;
    if (!l) {   // not UTF-8: the replacement character, or the byte written out as text
      if (hex_bytes) fprintf(f, "<0x%02X>", c);
      else fputs("\\ufffd", f);
      continue;
    }
    switch (c) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (c < 0x20 || c == 0x7F) fprintf(f, "\\u%04x", c);
        else fputc((int)c, f);
    }
  }
  fputc('"', f);
}
int cli_parse_u64(const char *s, uint64_t *out) {
  if (!s[0] || s[0] < '0' || s[0] > '9') return -1;   // no sign, no space
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end || errno == ERANGE) return -1;
  *out = (uint64_t)v;
  return 0;
}

void cli_json_string(FILE *f, const char *s, size_t n) { json_string(f, s, n, false); }
void cli_json_piece(FILE *f, const char *s, size_t n) { json_string(f, s, n, true); }

wk_model *cli_load_model(const char *path, wk_device dev, const char *adapter_dir, wk_adapter **adapter) {
  *adapter = NULL;
  wk_model *m = wk_model_load(path);
  if (m && dev != WK_CPU && wk_model_to_device(m, dev)) {
    wk_model_free(m);
    return NULL;
  }
  if (!m || !adapter_dir) return m;
  *adapter = wk_adapter_load(m, adapter_dir);
  if (!*adapter || wk_model_use_adapter(m, *adapter)) {
    wk_adapter_free(*adapter);
    *adapter = NULL;
    wk_model_free(m);
    return NULL;
  }
  return m;
}

void cli_model_free(wk_model *m, wk_adapter *adapter) {
  wk_adapter_free(adapter);   // before its model
  wk_model_free(m);
}

int cli_parse_device(const char *cmd, const char *v, wk_device *dev) {
  if (!strcmp(v, "cpu")) *dev = WK_CPU;
  else if (!strcmp(v, "cuda")) *dev = WK_CUDA;
  else return cli_user_error(cmd, "--device: unknown device '%s' (cpu or cuda)", v);
  return 0;
}
