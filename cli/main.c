// The wick command. Subcommands are thin: all logic lives in the library.
#include <stdio.h>
#include <string.h>
#include "wick.h"

int wick_bench_main(int argc, char **argv);

static void usage(FILE *f) {
  fprintf(f,
          "usage: wick <command> [options]\n"
          "commands:\n"
          "  bench [--json] [--filter S] [--mode lazy|eager|both] [--device cpu]   run the benchmark suite\n"
          "  version                                                              print the version\n");
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return 2; }
  if (!strcmp(argv[1], "bench")) return wick_bench_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
    printf("wick %d.%d\n", WICK_VERSION_MAJOR, WICK_VERSION_MINOR);
    return 0;
  }
  if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) { usage(stdout); return 0; }
  fprintf(stderr, "wick: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
