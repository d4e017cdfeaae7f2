// The wick command. Subcommands are thin: all logic lives in the library.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "common.h"

int wick_bench_main(int argc, char **argv);
int wick_info_main(int argc, char **argv);
int wick_tokenize_main(int argc, char **argv);
int wick_logits_main(int argc, char **argv);
int wick_embed_main(int argc, char **argv);
int wick_generate_main(int argc, char **argv);
int wick_train_main(int argc, char **argv);
int wick_adapter_main(int argc, char **argv);
int wick_chat_main(int argc, char **argv);

static void usage(FILE *f) {
  fprintf(f,
          "usage: wick <command> [options]\n"
          "  default models (tools/fetch-models): " WICK_DEFAULT_LM ",\n"
          "  " WICK_DEFAULT_EMBED "\n"
          "commands:\n"
          "  info [--json] PATH                                                   architecture, sizes, tensor types\n"
          "                                     (a model directory, a .safetensors or a .gguf file)\n"
          "  tokenize [-m MODEL] [--pieces] [--no-special] [TEXT...]              token ids (stdin lines without TEXT)\n"
          "  logits [-m MODEL] -p PROMPT [--top K] [--json]                       top-K next tokens after the prompt\n"
          "  generate [-m MODEL] -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
          "           [--repeat-penalty R] [--seed S] [--stop STR]... [--json]       stream generated text\n"
          "  chat [-m MODEL] [--system TEXT] [--chatml] [generate's sampling options]  chat on stdin lines\n"
          "  train [-m MODEL] --data FILE -o OUTDIR [options]                     LoRA fine-tuning (--help for options)\n"
          "  adapter info DIR | merge --adapter DIR -o OUT | export --gguf ...     inspect, merge or convert an adapter\n"
          "  embed [-m EMBED_MODEL] [--input FILE] [--batch N]                    one JSON embedding per input line\n"
          "  bench [--json] [--filter S] [--mode lazy|eager|both] [--device cpu]   run the benchmark suite\n"
          "  help                                                                 this text ('wick CMD --help' for one)\n"
          "  version                                                              print the version\n");
}

static int run(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return 2; }
  if (!strcmp(argv[1], "bench")) return wick_bench_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "info")) return wick_info_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "tokenize")) return wick_tokenize_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "logits")) return wick_logits_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "generate")) return wick_generate_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "chat")) return wick_chat_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "train")) return wick_train_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "adapter")) return wick_adapter_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "embed")) return wick_embed_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
    printf("wick %d.%d\n", WICK_VERSION_MAJOR, WICK_VERSION_MINOR);
    return 0;
  }
  if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    if (argc > 2 && strcmp(argv[2], "help")) {   // wick help CMD: that command's help
      char *sub[] = {argv[0], argv[2], "--help", NULL};
      return run(3, sub);
    }
    usage(stdout);
    return 0;
  }
  fprintf(stderr, "wick: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}

int main(int argc, char **argv) {
  int rc = run(argc, argv);
  // what went to stdout (embeddings, ids, generated text) must have arrived: a full
  // disk or a closed pipe is an error, not a silent success
  if (fflush(stdout) || ferror(stdout)) {
    fprintf(stderr, "wick: error writing the standard output: %s\n", strerror(errno));
    return rc ? rc : 1;
  }
  return rc;
}
