#!/bin/sh
# The sanitizer suites and fuzzers that CTest runs (tests/fuzz/fuzz.cmake) and that
# `make test-asan`, `make test-tsan` and `make fuzz` run directly. Each builds the
# project again with clang in a folder of the build directory and runs something there.
#
#   suite.sh asan SRC BIN               the whole project under ASan+UBSan in BIN/asan, all its tests
#   suite.sh tsan SRC BIN REGEX [TARGET..]  under TSan in BIN/tsan, the tests whose names
#                                       match REGEX (built: the TARGETs, else those tests)
#   suite.sh fuzz-build SRC BIN TARGET.. the libFuzzer targets in BIN/fuzz
#   suite.sh fuzz SRC BIN TARGET SECS   TARGET (csv, pickle, conf, ops, state, args, commands,
#                                       state_report, top) for SECS seconds
#
# Exit 77 (CTest's "skipped") when clang, a sanitizer runtime or libFuzzer is missing.
set -eu

JOBS=${FL_SUITE_JOBS:-2}
CC_SAN=${FL_SANITIZER_CC:-clang}
# The one C++ file of libfragless.so (and the C++ tests) with the same compiler family.
CXX_SAN=${FL_SANITIZER_CXX:-$(command -v "${CC_SAN}++" 2>/dev/null || echo c++)}
ASAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -DFL_DEBUG"
TSAN_FLAGS="-fsanitize=thread -fno-omit-frame-pointer"

mode=$1 src=$2 bin=$3
shift 3

skip() {
    echo "SKIPPED: $*"
    exit 77
}

# Whether $CC_SAN links a trivial program with these flags.
can_build() {
    command -v "$CC_SAN" >/dev/null 2>&1 || skip "no $CC_SAN: the sanitizer suites need clang"
    probe=$(mktemp -d)
    printf 'int main(void) { return 0; }\n' >"$probe/p.c"
    if [ "$1" = fuzzer ]; then
        printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe/p.c"
    fi
    ok=0
    "$CC_SAN" $2 "$probe/p.c" -o "$probe/p" >/dev/null 2>&1 && ok=1
    rm -rf "$probe"
    [ $ok = 1 ] || skip "$CC_SAN cannot build with '$2' (sanitizer runtime or libFuzzer not installed)"
}

# configure DIR FLAGS [cmake args...]: a clang build of the whole project, never
# recursing into these suites, with -Werror when the build it runs from has it
# (FRAGLESS_WERROR: `make` and CI turn it on). Shared objects are linked without -z defs:
# a sanitized one leaves the runtime's symbols to the executable that loads it.
configure() {
    dir=$1 flags=$2
    # UBSan's C++-only checks need its C++ runtime, which the C programs that load
    # libfragless.so do not link, and export type_info for function types: off.
    cxx_off=$(case $flags in *undefined*) echo "-fno-sanitize=vptr,function" ;; esac)
    shift 2
    werror=$(sed -n 's/^FRAGLESS_WERROR:BOOL=//p' "$bin/CMakeCache.txt" 2>/dev/null || true)
    cmake -S "$src" -B "$dir" -DCMAKE_C_COMPILER="$CC_SAN" -DCMAKE_CXX_COMPILER="$CXX_SAN" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFRAGLESS_WERROR="${werror:-OFF}" \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags $cxx_off" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
        -DCMAKE_SHARED_LINKER_FLAGS="$flags -Wl,-z,undefs" \
        -DFL_SANITIZER_SUITES=OFF -DFL_SHARED_DIR="$src/../shared" "$@" >"$dir.configure.log" 2>&1 ||
        { cat "$dir.configure.log"; exit 1; }
}

case $mode in
asan)
    can_build sanitizer "$ASAN_FLAGS"
    dir=$bin/asan
    mkdir -p "$dir"
    configure "$dir" "$ASAN_FLAGS"
    cmake --build "$dir" -j "$JOBS"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    # Excluded:
    # - test_preload: `fragless run` LD_PRELOADs the ASan-built libfragless_preload.so into
    #   programs that are not sanitized (sh), where the runtime it needs is absent; the
    #   test also compares LD_PRELOAD exactly, so the runtime cannot be preloaded too.
    # - test_python: the interpreter is not sanitized either; it runs below, separately,
    #   with the ASan runtime preloaded (leak detection off: the interpreter's own
    #   allocations at exit are not ours).
    # - test_install, test_pip_install: they build programs and packages against the
    #   (sanitized) library with plain compilers; they test packaging, not memory.
    # - test_real_torch: PyTorch's interpreter and libraries, not sanitized, with a runtime
    #   shim preloaded already; the plain build runs it.
    rc=0
    (cd "$dir" && ctest --output-on-failure -j "$JOBS" -E '^(test_preload|test_python|test_install|test_pip_install|test_real_torch)$') || rc=1
    if (cd "$dir" && ctest -N -R '^test_python$' | grep -q 'Total Tests: 1'); then
        rt=$("$CC_SAN" -print-file-name=libclang_rt.asan-x86_64.so)
        if [ -f "$rt" ]; then
            (cd "$dir" && LD_PRELOAD=$rt ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
                ctest --output-on-failure -R '^test_python$') || rc=1
        else
            echo "test_python: no shared ASan runtime ($rt), not run"
        fi
    fi
    exit $rc
    ;;
tsan)
    regex=$1
    can_build sanitizer "$TSAN_FLAGS"
    dir=$bin/tsan
    mkdir -p "$dir"
    configure "$dir" "$TSAN_FLAGS"
    shift
    # Only what the matching tests need is built: the targets given after REGEX, else
    # the tests themselves (each test's executable is named like the test).
    tests=$(cd "$dir" && ctest -N -R "$regex" | sed -n 's/^ *Test *#[0-9]*: *\([A-Za-z0-9_]*\).*/\1/p')
    [ -n "$tests" ] || skip "no test matches '$regex'"
    for t in ${*:-$tests}; do
        cmake --build "$dir" -j "$JOBS" --target "$t"
    done
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
    cd "$dir" && ctest --output-on-failure -j "$JOBS" -R "$regex"
    ;;
fuzz-build)
    can_build fuzzer "-fsanitize=fuzzer,address,undefined"
    dir=$bin/fuzz
    mkdir -p "$dir"
    # The library is instrumented for coverage too (fuzzer-no-link); -fsanitize=fuzzer
    # itself is added to the fuzz targets only (FL_LIBFUZZER, tests/fuzz/fuzz.cmake).
    configure "$dir" "$ASAN_FLAGS -fsanitize=fuzzer-no-link" -DFL_LIBFUZZER=ON
    for t in "$@"; do
        cmake --build "$dir" -j "$JOBS" --target "fuzz_$t"
    done
    ;;
fuzz)
    target=$1 secs=${FL_FUZZ_SECONDS:-$2}
    dir=$bin/fuzz
    exe=$dir/fuzz_$target
    can_build fuzzer "-fsanitize=fuzzer,address,undefined"
    [ -x "$exe" ] || { echo "$exe is not built (suite.sh fuzz-build first)"; exit 1; }
    # A copy of the seeds: libFuzzer adds what it finds to its first corpus folder, and
    # the source tree is never written. The crash regressions are read as a second one.
    work=$dir/run/$target
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    cp "$src/tests/fuzz/corpus/$target/"* "$work/corpus/"
    set -- "$work/corpus"
    [ -d "$src/tests/fuzz/crashes/$target" ] && set -- "$@" "$src/tests/fuzz/crashes/$target"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    log=$work/fuzz.log
    rc=0
    "$exe" -max_total_time="$secs" -print_final_stats=1 -error_exitcode=1 -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$work/artifacts/" "$@" >"$log" 2>&1 || rc=$?
    tail -n 40 "$log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz_$target: ${execs:-?} executions in ${secs} s; corpus now $(ls "$work/corpus" | wc -l) files"
    if [ $rc != 0 ]; then
        echo "fuzz_$target: found a crash, saved in $work/artifacts/ (docs/RELIABILITY.md, 'Adding a regression')"
    fi
    exit $rc
    ;;
*)
    echo "usage: suite.sh asan|tsan|fuzz-build|fuzz SRC BIN [...]" >&2
    exit 2
    ;;
esac
