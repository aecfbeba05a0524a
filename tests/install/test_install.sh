#!/bin/sh
# test_install: `cmake --install` into a temporary prefix, then a program built against
# that prefix with pkg-config and with find_package(fragless) (shared and static), run
# with nothing from the source or build tree; the installed library exports what the
# built one does. Usage: test_install.sh SRC BUILD CC CMAKE BUILT_LIBFRAGLESS_SO
set -u
src=$1 build=$2 cc=$3 cmake=$4 built_so=$5
tmp=$(mktemp -d /tmp/fl_test_install.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_install: FAIL: $*"; exit 1; }
prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "cmake --install"; }
libdir=$(dirname "$(find "$prefix" -name libfragless.so -print | head -n 1)")
[ -n "$libdir" ] || fail "no libfragless.so under $prefix"
for f in include/fragless.h include/fragless_torch.h bin/fragless; do
    [ -e "$prefix/$f" ] || fail "$f not installed"
done
for f in libfragless.a libfragless_preload.so pkgconfig/fragless.pc cmake/fragless/fraglessConfig.cmake; do
    [ -e "$libdir/$f" ] || fail "$libdir/$f not installed"
done
"$prefix/bin/fragless" help >/dev/null 2>&1 || fail "the installed CLI does not run"

# pkg-config (relocatable .pc: the prefix was given at install time only)
if command -v pkg-config >/dev/null 2>&1; then
    flags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs fragless) || fail "pkg-config fragless"
    case "$flags" in *"$prefix"*|*"/pkgconfig/.."*) ;; *) fail "pkg-config flags do not point into the prefix: $flags" ;; esac
    "$cc" -std=c11 -o "$tmp/consumer_pc" "$src/tests/install/consumer.c" $flags || fail "build with pkg-config"
    LD_LIBRARY_PATH="$libdir" "$tmp/consumer_pc" || fail "run the pkg-config build"
    LD_LIBRARY_PATH="$libdir" ldd "$tmp/consumer_pc" | grep -q "$libdir/libfragless.so" || fail "the pkg-config build does not use the installed library"
else
    echo "test_install: pkg-config missing: the pkg-config part is skipped"
fi

# find_package
"$cmake" -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" \
    >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "configure with find_package(fragless)"; }
"$cmake" --build "$tmp/consumer" >>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "build with find_package"; }
LD_LIBRARY_PATH="$libdir" "$tmp/consumer/consumer_shared" || fail "run consumer_shared"
"$tmp/consumer/consumer_static" || fail "run consumer_static"

# The installed library exports what the built one does.
if command -v nm >/dev/null 2>&1; then
    nm -D --defined-only "$built_so" | awk '{print $NF}' | sort >"$tmp/built.syms"
    nm -D --defined-only "$libdir/libfragless.so" | awk '{print $NF}' | sort >"$tmp/installed.syms"
    cmp -s "$tmp/built.syms" "$tmp/installed.syms" || { diff "$tmp/built.syms" "$tmp/installed.syms"; fail "exports differ"; }
fi
echo "test_install: ok ($prefix: pkg-config, find_package shared and static, exports equal)"
