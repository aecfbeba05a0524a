# Thin wrapper over CMake: `make`, `make run`, `make test`, `make bench`.
BUILD ?= build
CC ?= cc
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all build run test bench clean test-asan test-tsan fuzz

all: build

# -Werror here (development and CI), not in CMakeLists.txt's defaults: a release built with
# plain cmake warns instead of failing. CMAKE_FLAGS=-DFRAGLESS_WERROR=OFF turns it off.
$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_C_COMPILER=$(CC) -DFRAGLESS_WERROR=ON $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# The main job: how much memory the example trace needs under each allocator.
run: build
	./$(BUILD)/fragless compare examples/encoder_varlen.csv

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Host time medians per policy, then the compare figures, on the example trace and
# ../shared/traces when present.
BENCH_TRACES = $(wildcard examples/*.csv) $(wildcard ../shared/traces/*.csv)
bench: build
	./$(BUILD)/fl_bench $(BENCH_TRACES)
	./$(BUILD)/fragless compare $(BENCH_TRACES) --capacity 1.05x

clean:
	rm -rf $(BUILD)

# Sanitizer suites and fuzzers (docs/RELIABILITY.md; `make test` runs them too):
# the project rebuilt with clang under ASan+UBSan / TSan in $(BUILD)/asan, $(BUILD)/tsan.
test-asan: build
	cd $(BUILD) && ctest --output-on-failure -R '^sanitize_asan$$'

test-tsan: build
	cd $(BUILD) && ctest --output-on-failure -R '^sanitize_tsan$$'

# Each libFuzzer target for FUZZ_SECONDS on a copy of its seeds (make fuzz FUZZ_SECONDS=600).
FUZZ_SECONDS ?= 30
FUZZ_TARGETS = csv pickle conf ops state
fuzz: build
	sh tests/fuzz/suite.sh fuzz-build $(CURDIR) $(abspath $(BUILD)) $(FUZZ_TARGETS)
	rc=0; for t in $(FUZZ_TARGETS); do sh tests/fuzz/suite.sh fuzz $(CURDIR) $(abspath $(BUILD)) $$t $(FUZZ_SECONDS) || rc=1; done; exit $$rc
