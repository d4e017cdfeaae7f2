// Every differentiable op is in some finite-difference gradient check. The tests that
// include gradcheck.h write the ops of the graphs they checked to $WICK_GRADCOV (ctest
// runs them first and this test after them); this reads the union and compares it with
// the op table. An op with no gradient, or one checked in another way, is named below
// with the reason, so a new op cannot join the table without one or the other.
#include <dirent.h>
#include <string.h>
#include "check.h"
#include "engine/engine.h"

static const char *const exempt[][2] = {
    {"const", "a source"}, {"arange", "a source"}, {"randn", "a source"}, {"rand", "a source"},
    {"stop_grad", "no gradient by definition"}, {"eq", "a comparison"}, {"ne", "a comparison"},
    {"lt", "a comparison"}, {"le", "a comparison"}, {"gt", "a comparison"}, {"ge", "a comparison"},
    {"argmax", "an integer result"}, {"top1", "greedy decoding's statistics, no gradient"},
    {"dequantize", "quantized storage, frozen"}, {"causal_mask", "a constant mask"},
    {"set_slice", "an in-place write (KV cache), refuses a gradient"},
    {"transfer", "needs a second device: test_cuda_train checks gradients across it"},
    {"linear_ce", "CUDA only: test_cuda_train checks it against cross_entropy(matmul), checked here"},
    // backward ops: their VJPs are second derivatives, refused or not needed by training
    {"gelu_bwd", "a backward op"}, {"gelu_tanh_bwd", "a backward op"}, {"softmax_bwd", "a backward op"},
    {"log_softmax_bwd", "a backward op"}, {"rms_norm_bwd", "a backward op"}, {"layer_norm_bwd", "a backward op"},
    {"norm_dw", "a backward op"}, {"embedding_bwd", "a backward op"}, {"sdpa_bwd", "a backward op"},
    {"cross_entropy_bwd", "a backward op"}, {"linear_ce_bwd", "a backward op"},
};

static bool is_exempt(const char *name) {
  for (size_t k = 0; k < sizeof exempt / sizeof exempt[0]; k++)
    if (!strcmp(exempt[k][0], name)) return true;
  return false;
}

int main(void) {
  const char *dir = getenv("WICK_GRADCOV");
  if (!dir) {
    printf("WICK_GRADCOV is not set: run through ctest (ctest -R test_grad_coverage), which runs the gradient checks first\n");
    return 1;
  }
  bool covered[WK_OP_COUNT] = {0};
  int files = 0;
  DIR *d = opendir(dir);
  CHECK(d != NULL, "coverage directory %s", dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    char path[4096], line[64];
    if (!strstr(e->d_name, ".txt") || snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
      continue;
    FILE *f = fopen(path, "r");
    if (!f) continue;
    files++;
    while (fgets(line, sizeof line, f)) {
      line[strcspn(line, "\n")] = 0;
      for (int op = 0; op < WK_OP_COUNT; op++)
        if (!strcmp(wk_ops[op].name, line)) covered[op] = true;
    }
    fclose(f);
  }
  if (d) closedir(d);
  CHECK(files >= 4, "coverage files from the gradient-checking tests (%d)", files);
  for (size_t k = 0; k < sizeof exempt / sizeof exempt[0]; k++) {
    bool known = false;
    for (int op = 0; op < WK_OP_COUNT; op++) known |= !strcmp(wk_ops[op].name, exempt[k][0]);
    CHECK(known, "the exemption '%s' names an op of the table", exempt[k][0]);
  }
  for (int op = 0; op < WK_OP_COUNT; op++) {
    if (is_exempt(wk_ops[op].name)) continue;
    CHECK(covered[op], "op '%s' has a VJP but no finite-difference gradient check", wk_ops[op].name);
  }
  return check_report();
}
