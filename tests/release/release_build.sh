#!/bin/sh
# release_build (CTest): what a user builds from a release — the library, libfragless.so,
# the preload library and the CLI — configured from scratch with CMAKE_BUILD_TYPE=Release
# (-O3) in a folder of its own, with every C compiler found here (gcc and clang: their
# warnings differ, and -O3 finds some -O2 does not), and -Werror as in CI. The tests are
# not rebuilt: `make test` builds and runs them already. Exit 77 when no second compiler
# and no cmake are there to try.
#
#   release_build.sh SRC BIN
set -eu
src=$1 bin=$2
JOBS=${FL_SUITE_JOBS:-2}
command -v cmake >/dev/null 2>&1 || { echo "SKIPPED: no cmake"; exit 77; }
tried=0 failed=""
for cc in gcc clang; do
    command -v "$cc" >/dev/null 2>&1 || { echo "release_build: no $cc here: not tried"; continue; }
    dir="$bin/release-$cc"
    rm -rf "$dir"
    tried=$((tried + 1))
    log="$bin/release-$cc.log"
    if cmake -S "$src" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DFRAGLESS_WERROR=ON \
        -DFL_SANITIZER_SUITES=OFF >"$log" 2>&1 &&
        cmake --build "$dir" -j "$JOBS" --target fragless fragless_shared fragless_preload >>"$log" 2>&1; then
        echo "release_build: $cc Release (-Werror): ok"
        rm -rf "$dir" "$log"
    else
        echo "release_build: $cc Release (-Werror) FAILED; the first errors ($log):"
        grep -m 10 -E "error|warning" "$log" || tail -n 20 "$log"
        failed="$failed $cc"
    fi
done
[ $tried -gt 0 ] || { echo "SKIPPED: no gcc, no clang"; exit 77; }
[ -z "$failed" ] || exit 1
