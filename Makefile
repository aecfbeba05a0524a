# Thin wrapper over CMake: `make`, `make run`, `make test`, `make bench`.
BUILD ?= build
CC ?= cc
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all build run test bench clean test-asan test-tsan fuzz install

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

# Host time per alloc + free pair through fl_alloc/fl_free on every trace (examples/,
# ../shared/traces and its hard/ and snapshots/ when present), beside sebbbi's
# OffsetAllocator when OA_DIR names a checkout of it (make bench OA_DIR=/tmp/oa), and the
# threads scaling line; then the compare figures. FL_BENCH_RUNS sets the runs per median.
OA_DIR ?=
BENCH_TRACES = $(wildcard examples/*.csv examples/*/*.csv) $(wildcard ../shared/traces/*.csv) \
	$(wildcard ../shared/traces/hard/*.csv) $(wildcard ../shared/traces/snapshots/*.pickle)
COMPARE_TRACES = $(wildcard examples/*.csv) $(wildcard ../shared/traces/*.csv)
bench: $(BUILD)/CMakeCache.txt
	$(if $(OA_DIR),cmake -S . -B $(BUILD) -DFL_OA_DIR=$(abspath $(OA_DIR)))
	cmake --build $(BUILD) -j $(JOBS) --target fl_bench fragless
	./$(BUILD)/fl_bench $(BENCH_TRACES)
	./$(BUILD)/fragless compare $(COMPARE_TRACES) --capacity 1.05x

# The C library, headers, CLI, pkg-config file and CMake package under PREFIX.
PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

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
FUZZ_TARGETS = csv pickle conf ops state args commands state_report top
fuzz: build
	sh tests/fuzz/suite.sh fuzz-build $(CURDIR) $(abspath $(BUILD)) $(FUZZ_TARGETS)
	rc=0; for t in $(FUZZ_TARGETS); do sh tests/fuzz/suite.sh fuzz $(CURDIR) $(abspath $(BUILD)) $$t $(FUZZ_SECONDS) || rc=1; done; exit $$rc
