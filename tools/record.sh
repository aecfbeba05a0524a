#!/usr/bin/env bash
# Records an RMM CSV allocation trace of tools/record_model.py with the LD_PRELOAD recorder.
# Usage: tools/record.sh OUT.csv [-- args to record_model.py]
set -euo pipefail

usage() {
    echo "usage: $0 OUT.csv [-- args to record_model.py]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
out=$1
shift
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || usage
    shift
fi

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$tools_dir/recorder/recorder.c
python=/usr/bin/python3

# Debian's torch is installed for the system interpreter only, not for a pyenv python3 on PATH
if [ ! -x "$python" ] || ! "$python" -c 'import torch' 2>/dev/null; then
    echo "error: $python cannot import torch; install it with: apt-get install -y python3-torch" >&2
    exit 1
fi

build_dir=${TMPDIR:-/tmp}/fragless-recorder-$(id -u)
so=$build_dir/recorder.so
if [ ! -f "$so" ] || [ "$src" -nt "$so" ]; then
    mkdir -p "$build_dir"
    tmp_so=$(mktemp "$build_dir/recorder.XXXXXX.so")
    gcc -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -pthread -o "$tmp_so" "$src" -ldl
    mv -f "$tmp_so" "$so" # atomic, so a concurrent run never preloads a half-written library
fi

# torch.set_num_threads does not reach OpenBLAS's own pool; one thread keeps runs comparable
FRAGLESS_RECORD=$out OPENBLAS_NUM_THREADS=1 LD_PRELOAD="$so${LD_PRELOAD:+ $LD_PRELOAD}" \
    "$python" "$tools_dir/record_model.py" "$@"

if [ "$(head -n 1 "$out" 2>/dev/null)" != "Thread,Time,Action,Pointer,Size,Stream" ]; then
    echo "error: $out holds no trace; the recorder did not run" >&2
    exit 1
fi

# peak live bytes with every block rounded up to 512 B, as a caching allocator would place it
awk -F, 'NR > 1 {
    events++
    if ($3 == "allocate") {
        r = int(($5 + 511) / 512) * 512
        live[$4] = r
        cur += r
        if (cur > peak) peak = cur
    } else if ($4 in live) {
        cur -= live[$4]
        delete live[$4]
    }
}
END {
    printf "%s: %d events, peak live %d bytes (%.1f MiB, 512-B rounded)\n",
        FILENAME, events, peak, peak / 1048576
}' "$out"
