#!/bin/sh
# test_pip_install (issue 16): in a fresh virtual environment, offline, `pip install
# ./python` builds libfragless.so and the CLI with CMake and puts them in the package;
# then `import fragless; fragless.__version__`, `python -m fragless compare` and the
# `fragless` entry point work; an editable install works too; and without CMake the
# build stops with a message saying so. Usage: test_pip_install.sh SRC PYTHON3
set -u
src=$1 py=$2
"$py" -c "import venv, ensurepip" 2>/dev/null || { echo "SKIPPED: this Python has no venv/ensurepip (Debian: python3-venv)"; exit 77; }
tmp=$(mktemp -d /tmp/fl_test_pip.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_pip_install: FAIL: $*"; exit 1; }
want=$(sed -n 's/^#define FL_VERSION_STRING "\(.*\)"/\1/p' "$src/include/fragless.h")
[ -n "$want" ] || fail "no FL_VERSION_STRING in include/fragless.h"

"$py" -m venv "$tmp/venv" || fail "venv"
v="$tmp/venv/bin"
"$v/pip" install --no-index --disable-pip-version-check -q "$src/python" >"$tmp/pip.log" 2>&1 || { tail -30 "$tmp/pip.log"; fail "pip install ./python"; }
cd "$tmp"  # away from the checkout: nothing is found through the source tree
got=$(env -u FRAGLESS_LIB -u PYTHONPATH "$v/python" -c "import fragless; print(fragless.__version__); print(fragless.library_path())") || fail "import fragless"
echo "$got" | head -n 1 | grep -qx "$want" || fail "fragless.__version__ is not $want: $got"
echo "$got" | tail -n 1 | grep -q "^$tmp/venv/" || fail "the library is not the package's own: $got"
out=$(env -u FRAGLESS_LIB -u PYTHONPATH "$v/python" -m fragless compare "$src/examples/encoder_varlen.csv" --no-min-capacity) || fail "python -m fragless compare"
echo "$out" | grep -q "fragless" || fail "python -m fragless compare printed no fragless row"
env -u FRAGLESS_LIB -u PYTHONPATH "$v/fragless" compare "$src/examples/encoder_varlen.csv" --no-min-capacity >/dev/null || fail "the fragless entry point"

# Without CMake: a clear message, not a traceback from deep inside.
msg=$(cd "$src/python" && env PATH=/nonexistent "$v/python" -c "import fragless_build; fragless_build.build_wheel('$tmp')" 2>&1) && fail "a build without cmake succeeded"
echo "$msg" | grep -q "needs CMake" || fail "no clear message without cmake: $msg"
echo "test_pip_install: ok (fragless $want; import, python -m fragless, entry point; no-cmake message)"
