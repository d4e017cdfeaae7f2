// Runs the built wick binary (WICK_CLI, set by CMake) for the CLI tests.
#pragma once
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// Runs the wick binary with argv (no shell), stdin from the text `in` (NULL: none),
// stdout into buf (stderr into err when given). Returns the exit status.
static inline int run(const char *in, char *buf, size_t cap, char *err, size_t ecap, const char *const *args) {
  char inpath[] = "/tmp/wick_chat_inXXXXXX", errpath[] = "/tmp/wick_chat_errXXXXXX";
  int infd = mkstemp(inpath), errfd = mkstemp(errpath), pfd[2];
  if (infd < 0 || errfd < 0 || pipe(pfd)) return -1;
  if (in && write(infd, in, strlen(in)) != (ssize_t)strlen(in)) return -1;
  lseek(infd, 0, SEEK_SET);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(infd, 0);
    dup2(pfd[1], 1);
    dup2(errfd, 2);
    close(pfd[0]);
    const char *argv[32] = {WICK_CLI};
    for (int i = 0; args[i] && i < 30; i++) argv[i + 1] = args[i];
    execv(WICK_CLI, (char *const *)argv);
    _exit(127);
  }
  close(pfd[1]);
  size_t n = 0;
  ssize_t r;
  while (n + 1 < cap && (r = read(pfd[0], buf + n, cap - 1 - n)) > 0) n += (size_t)r;
  buf[n] = 0;
  close(pfd[0]);
  int st;
  waitpid(pid, &st, 0);
  if (err) {
    lseek(errfd, 0, SEEK_SET);
    ssize_t e = read(errfd, err, ecap - 1);
    err[e > 0 ? e : 0] = 0;
  }
  close(infd);
  close(errfd);
  unlink(inpath);
  unlink(errpath);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

