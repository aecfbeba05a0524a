#!/usr/bin/env bash
# scripts/gpu-check.sh: fragless on a real GPU, in one call of a few minutes.
#
#   bash scripts/gpu-check.sh            (from anywhere; it works in the checkout it sits in)
#
# Steps (scripts/README.md has the details and what the summary means):
#   a  the machine (nvidia-smi, driver, torch), then the build:
#      cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFRAGLESS_WERROR=ON && cmake --build build-gpu
#   b  the test suite (ctest, on the project's CUDA driver double) and a smoke test of the
#      public C API on the REAL driver (a small C program written and compiled here)
#   c  a PyTorch training loop with alternating sequence lengths (scripts/gpu_train.py),
#      each allocator in its own process under the same memory cap: PyTorch's default,
#      expandable_segments:True, fragless through its Python package
#   d  the cap: a calibration run without a cap measures the default allocator's peak
#      allocated bytes; the cap is GPU_CHECK_CAP_FACTOR (1.15) times that, which the default
#      allocator cannot fit by design (its 20 MiB segments hold only two of the loop's
#      7 MiB blocks) while fragless needs ~1.02x
#   e  one more fragless run with FRAGLESS_CONF=trace:PATH, and its trace replayed:
#      build-gpu/fragless compare TRACE --capacity 1.05x
#   g  (right after b) fragless.torch's contracts (scripts/gpu_torch_checks.py): torch.cuda.graph
#      and make_graphed_callables under fragless with outputs equal to eager; an out-of-memory
#      caught as torch.OutOfMemoryError and the loop going on with a smaller batch;
#      torch.cuda.use_mem_pool(fragless.torch.pool()); and PyTorch under fragless run:
#      torch.cuda.memory_allocated/memory_reserved/empty_cache and graphs captured and
#      deleted again and again
#   i  (right after g) the CUDA runtime's stream contracts under `fragless run`, with real
#      late work (scripts/gpu_contracts.cu, built here with nvcc -cudart shared): a block
#      freed while a slow kernel still writes it is not handed to another thread's
#      cudaStreamPerThread, nor to the stream made after its own was destroyed; graphs
#      captured and destroyed 100 times give their memory back; with 2+
#      GPUs, cudaMallocAsync on device 1's stream while device 0 is current gives device
#      1's memory; cudaMalloc blocks exported with cudaIpcGetMemHandle are read intact by
#      another process under fragless run (fragless's own handles); then, without fragless,
#      the driver's legacy IPC rules the driver double models (--ipc-rules: an inner
#      address's handle is the allocation's, opened at its start); SKIP without nvcc
#   h  with 2+ GPUs (before c-e): peer copies of tensors fragless allocated (fragless run),
#      NCCL all-reduce of fragless-allocated tensors under torchrun --nproc-per-node 2
#      (fragless run), and NCCL's registration of a fragless MemPool (registrable:1MiB)
#      where PyTorch offers it (scripts/gpu_multi.py); SKIP with one GPU
#   f  ONE summary table at the end
#
# Every step runs under `timeout`, cut to what is left of a total budget (GPU_CHECK_BUDGET_S,
# 420 s), so the whole script ends well inside 8 minutes; a step that no longer fits is
# skipped and says so.
#
# Exit status:
#   0  every step ran. The table holds the results: an allocator running out of memory, or
#      a comparison that goes the wrong way, is a result, not a failure of the script.
#   1  every step ran, but a check failed: a ctest test, the real-driver smoke test, a
#      training run that died of an error other than out-of-memory, or a Release build that
#      only passes without -Werror. The table names it.
#   2  a step could not be run (no GPU, cmake missing, build failed, a timeout, a run that
#      printed no result, ...). The table names it and why; later steps that needed it are
#      skipped.
#
# Settings (environment; the defaults are what the device check uses):
#   GPU_CHECK_BUDGET_S=420      total seconds for all steps
#   GPU_CHECK_CAP_FACTOR=1.15   cap = factor x the default allocator's peak allocated bytes
#   GPU_CHECK_STEPS=48          training steps per run
#   GPU_CHECK_SMOKE_SIZE=4GiB   limit of each allocator in the smoke test
#   GPU_CHECK_BUILD=build-gpu   build folder (removed and rebuilt), in the checkout or absolute
#   GPU_CHECK_PYTHON=python3    interpreter with torch
#   GPU_CHECK_KEEP=DIR          copy the summary, the results, the logs and the trace there
#   GPU_CHECK_DRIVER=libcuda.so.1     driver library for the smoke test
#   GPU_CHECK_ALLOW_NO_GPU=1    self-test without a GPU: the GPU steps are replaced by
#                               gpu_train.py --dry-run and do not count as "could not run"
#                               (with GPU_CHECK_DRIVER=build-gpu/libfakecuda.so the smoke
#                               test runs on the driver double)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD=${GPU_CHECK_BUILD:-build-gpu}
# BUILD as given (relative to the checkout, or absolute) names it in messages; BUILD_DIR is
# its absolute path, for what links against it or loads from it.
case $BUILD in
/*) BUILD_DIR=$BUILD ;;
*) BUILD_DIR=$ROOT/$BUILD ;;
esac
BUILD_DIR=${BUILD_DIR%/}
if [[ -z $BUILD_DIR || $BUILD_DIR -ef $ROOT || $BUILD_DIR -ef / ]]; then
    echo "gpu-check: GPU_CHECK_BUILD=$BUILD names the checkout or /: it is removed and rebuilt, so it must be a folder of its own" >&2
    exit 2
fi
BUDGET_S=${GPU_CHECK_BUDGET_S:-420}
CAP_FACTOR=${GPU_CHECK_CAP_FACTOR:-1.15}
STEPS=${GPU_CHECK_STEPS:-48}
SMOKE_SIZE=${GPU_CHECK_SMOKE_SIZE:-4GiB}
DRIVER=${GPU_CHECK_DRIVER:-libcuda.so.1}
ALLOW_NO_GPU=${GPU_CHECK_ALLOW_NO_GPU:-0}
KEEP=${GPU_CHECK_KEEP:-}
PY=${GPU_CHECK_PYTHON:-python3}
JOBS=$(nproc 2>/dev/null || echo 4)

START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") # every log, result and the trace stay here
echo "gpu-check: $ROOT, logs in $WORK, budget ${BUDGET_S}s"
STEPS_TSV=$WORK/steps.tsv # one line per step: name, status, seconds, note
: >"$STEPS_TSV"
CANNOT="" # steps that could not be run, with why ("; "-separated)
FAILED="" # checks that failed
TRACE=$WORK/fragless-trace.csv

# ---- helpers ------------------------------------------------------------------------------

say() { printf '\n=== %s\n' "$*"; }

elapsed() { echo $(($(date +%s) - START)); }

# Seconds a step may run: its own cap, cut to what is left of the budget (15 s are kept
# for the summary).
box() {
    local cap=$1 left
    left=$((BUDGET_S - $(elapsed) - 15))
    if ((left < cap)); then cap=$left; fi
    echo "$cap"
}

# record NAME STATUS SECONDS NOTE: one line of the summary's step table.
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS_TSV"
    printf -- '--- %s: %s (%ss) %s\n' "$1" "$2" "$3" "$4"
}
cannot() { CANNOT="$CANNOT$1; "; }
failed() { FAILED="$FAILED$1; "; }

# run_boxed CAP LOG CMD...: CMD under timeout (box CAP), stdout and stderr into LOG.
# Sets RC (124/137: timed out; 200: not started, no time left), SECS and LIMIT.
run_boxed() {
    local cap=$1 log=$2 t0
    shift 2
    LIMIT=$(box "$cap")
    SECS=0
    if ((LIMIT < 5)); then
        RC=200
        echo "not started: no time left in the ${BUDGET_S}s budget" >"$log"
        return 0
    fi
    t0=$(date +%s)
    RC=0
    timeout -k 5 "$LIMIT" "$@" >"$log" 2>&1 || RC=$?
    SECS=$(($(date +%s) - t0))
}

# why_not: words for a run_boxed that did not finish by itself.
why_not() {
    case $RC in
    124 | 137) echo "timed out after ${LIMIT}s" ;;
    200) echo "no time left in the ${BUDGET_S}s budget" ;;
    *) echo "exit status $RC" ;;
    esac
}

# The last lines of a log, indented, to show what went wrong.
show_tail() { tail -n "${2:-15}" "$1" | sed 's/^/    | /'; }

# jget FILE KEY: a field of the JSON result gpu_train.py wrote (empty when absent or null).
jget() {
    "$PY" - "$1" "$2" <<'EOF' 2>/dev/null || true
import json, sys
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.strip()]
v = json.loads(lines[-1]).get(sys.argv[2]) if lines else None
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)
EOF
}

summary_and_exit() {
    say "[f] summary"
    local code=0
    [[ -n $FAILED ]] && code=1
    [[ -n $CANNOT ]] && code=2
    SUMMARY_EXIT=$code SUMMARY_CANNOT=$CANNOT SUMMARY_FAILED=$FAILED SUMMARY_ELAPSED=$(elapsed) SUMMARY_BUDGET=$BUDGET_S \
        "$PY" - "$WORK" >"$WORK/summary.txt" 2>"$WORK/summary.err" <<'EOF' || true
import csv, glob, json, os, sys
work = sys.argv[1]
env = os.environ
out = []
def gib(b):
    return "-" if b in (None, "") else "%.2f" % (int(b) / 2**30)
def load(label):
    try:
        with open(os.path.join(work, "run-%s.json" % label)) as f:
            lines = [l for l in f if l.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
def readlines(name):
    try:
        with open(os.path.join(work, name)) as f:
            return [l.rstrip("\n") for l in f]
    except OSError:
        return []

out.append("=" * 100)
out.append("gpu-check summary  (%s)" % work)
for line in readlines("machine.txt"):
    out.append("  " + line)
out.append("")
out.append("  %-30s %-8s %5s  %s" % ("step", "result", "secs", "note"))
for line in readlines("steps.tsv"):
    name, status, secs, note = (line.split("\t") + ["", "", "", ""])[:4]
    out.append("  %-30s %-8s %5s  %s" % (name, status, secs, note))

cap = dict(l.split("=", 1) for l in readlines("cap.txt") if "=" in l)
runs = [(lab, load(lab)) for lab in ("default", "expandable", "fragless", "fragless+trace", "dry-run")]
runs = [(lab, r) for lab, r in runs if r]
emul = {}
for row in csv.reader(l for l in readlines("e-compare-cap.csv") if l and not l.startswith(("warning", "fragless:"))):
    if len(row) > 2 and row[0] != "trace":
        emul.setdefault(row[1], row)
header = [l for l in readlines("e-compare-cap.csv") if l.startswith("trace,policy")]
cols = header[0].split(",") if header else []
def emulated(policy):
    row = emul.get(policy)
    if not row or "ooms" not in cols:
        return ""
    return "%s: %s OOMs" % (policy, row[cols.index("ooms")])
if runs:
    out.append("")
    if cap:
        out.append("  training: %s steps, sequence length alternating %s, batch %s, %s layers; cap %s GiB = %s x the default's"
                   " peak allocated (%s GiB) = %.2f x its peak reserved without a cap (%s GiB)"
                   % (cap.get("steps"), "/".join(map(str, runs[0][1].get("lengths", []))), runs[0][1].get("batch"),
                      runs[0][1].get("layers"), gib(cap["cap"]), cap["factor"], gib(cap["alloc"]),
                      int(cap["cap"]) / max(1, int(cap["reserved"])), gib(cap["reserved"])))
    out.append("  %-15s %-22s %7s %10s %13s %12s  %s" % ("allocator", "result", "steps", "median ms", "peak reserved",
                                                         "peak alloc", "emulated on the trace, same cap"))
    out.append("  %-15s %-22s %7s %10s %13s %12s" % ("", "", "", "", "GiB", "GiB"))
    policy = {"default": "cca", "expandable": "cca-expandable", "fragless": "fragless"}
    for lab, r in runs:
        if r.get("completed"):
            res = "completed"
        elif r.get("oom"):
            res = "OOM at step %s" % r.get("failed_at_step", "?")
        else:
            res = "ERROR"
        note = emulated(policy.get(lab, ""))
        if lab == "expandable" and r.get("expandable_segments") is False:
            note += " (PyTorch did NOT use expandable segments)"
        if lab == "default" and r.get("expandable_segments"):
            note += " (this PyTorch used expandable segments by default)"
        out.append("  %-15s %-22s %3s/%-3s %10s %13s %12s  %s" % (
            lab, res, r.get("steps_done", 0), r.get("steps"), r.get("median_step_ms") or "-",
            gib(r.get("peak_reserved_bytes")), gib(r.get("peak_allocated_bytes")), note))
        if r.get("error"):
            out.append("  %-15s   %s" % ("", r["error"][:160]))
    d, f = dict(runs).get("default"), dict(runs).get("fragless")
    if cap and not (d and f):
        out.append("  seed scenario (default OOMs, fragless completes, same cap): NOT reproduced: the %s run gave no result"
                   % ("default" if not d else "fragless"))
    if d and f:
        if d.get("oom") and f.get("completed"):
            verdict = ("REPRODUCED: PyTorch's default allocator ran out of memory at step %s; fragless completed all %s steps"
                       " under the same cap" % (d.get("failed_at_step"), f.get("steps")))
        else:
            verdict = "NOT reproduced: default %s, fragless %s" % (
                "completed" if d.get("completed") else "OOM" if d.get("oom") else "error",
                "completed" if f.get("completed") else "OOM" if f.get("oom") else "error")
        out.append("  seed scenario (default OOMs, fragless completes, same cap): " + verdict)
cmp_lines = readlines("e-compare.log")
if cmp_lines:
    out.append("")
    out.append("  fragless compare TRACE --capacity 1.05x  (the trace recorded by the fragless+trace run):")
    out.extend("    " + l for l in cmp_lines)
out.append("")
code = env.get("SUMMARY_EXIT", "?")
if env.get("SUMMARY_CANNOT"):
    out.append("  COULD NOT RUN: " + env["SUMMARY_CANNOT"])
if env.get("SUMMARY_FAILED"):
    out.append("  FAILED CHECKS: " + env["SUMMARY_FAILED"])
out.append("  %s s in all (budget %s s)" % (env.get("SUMMARY_ELAPSED", "?"), env.get("SUMMARY_BUDGET", "?")))
out.append("  exit %s: %s" % (code, {"0": "every step ran (results above)", "1": "every step ran, a check failed",
                                      "2": "a step could not be run"}.get(code, "")))
out.append("=" * 100)
print("\n".join(out))
EOF
    if [[ -s $WORK/summary.txt ]]; then
        cat "$WORK/summary.txt"
    else # no Python to format it: the raw step table
        echo "(summary formatting failed: $(head -c 300 "$WORK/summary.err" 2>/dev/null))"
        cat "$STEPS_TSV"
        echo "could not run: ${CANNOT:-none}; failed: ${FAILED:-none}; exit $code"
    fi
    if [[ -n $KEEP ]]; then
        mkdir -p "$KEEP"
        cp "$WORK/summary.txt" "$KEEP/gpu-check-summary.txt" 2>/dev/null || true
        cat "$WORK"/run-*.json >"$KEEP/gpu-check-results.jsonl" 2>/dev/null || true
        tar -C "$WORK" -czf "$KEEP/gpu-check-logs.tar.gz" --exclude fragless-trace.csv --exclude smoke . 2>/dev/null || true
        if [[ -s $TRACE ]]; then gzip -c "$TRACE" >"$KEEP/fragless-trace.csv.gz"; fi
        echo "kept in $KEEP: $(find "$KEEP" -maxdepth 1 -type f -printf '%f ')"
    fi
    exit "$code"
}

# ---- a: the machine -----------------------------------------------------------------------

say "[a] machine"
HAVE_GPU=1
GPU_NOTE=""
NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
    run_boxed 30 "$WORK/a-nvidia-smi.log" nvidia-smi -L
    cat "$WORK/a-nvidia-smi.log"
    if ((RC != 0)); then HAVE_GPU=0 GPU_NOTE="nvidia-smi -L: $(why_not)"; fi
    NGPU=$(grep -c '^GPU ' "$WORK/a-nvidia-smi.log" || true)
    run_boxed 30 "$WORK/a-nvidia-smi-q.log" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    GPU_LINE=$(head -n 1 "$WORK/a-nvidia-smi-q.log")
    echo "gpu 0: $GPU_LINE"
else
    HAVE_GPU=0 GPU_NOTE="nvidia-smi not found"
    GPU_LINE="no nvidia-smi"
fi
run_boxed 120 "$WORK/a-torch.log" "$PY" -c '
import sys, torch
ok = torch.cuda.is_available()
print("python %s, torch %s (CUDA %s), cuda available: %s%s" % (sys.version.split()[0], torch.__version__,
      torch.version.cuda, ok, (", " + torch.cuda.get_device_name(0)) if ok else ""))'
TORCH_LINE=$(tail -n 1 "$WORK/a-torch.log")
echo "$TORCH_LINE"
if ((RC != 0)); then
    HAVE_GPU=0 GPU_NOTE="${GPU_NOTE:+$GPU_NOTE; }$PY cannot import torch ($(why_not))"
elif [[ $TORCH_LINE != *"cuda available: True"* ]]; then
    HAVE_GPU=0 GPU_NOTE="${GPU_NOTE:+$GPU_NOTE; }torch sees no CUDA device"
fi
CMAKE=$(command -v cmake 2>/dev/null || true)
if [[ -z $CMAKE ]]; then # pip's cmake package puts it beside the interpreter
    PYBIN=$(dirname "$(command -v "$PY" 2>/dev/null || echo /nonexistent/python3)")
    [[ -x $PYBIN/cmake ]] && CMAKE=$PYBIN/cmake
fi
CC_BIN=$(command -v cc 2>/dev/null || command -v gcc 2>/dev/null || command -v clang 2>/dev/null || true)
TOOLS="cmake: MISSING"
[[ -n $CMAKE ]] && TOOLS="$("$CMAKE" --version | head -n 1) ($CMAKE)"
TOOLS="$TOOLS; cc: $([[ -n $CC_BIN ]] && "$CC_BIN" --version | head -n 1 || echo MISSING); $JOBS cores"
echo "$TOOLS"
{
    echo "gpu:   $GPU_LINE"
    echo "torch: $TORCH_LINE"
    echo "tools: $TOOLS"
} >"$WORK/machine.txt"
if ((HAVE_GPU)); then
    record "a machine" ok "$(elapsed)" "$GPU_LINE"
elif [[ $ALLOW_NO_GPU == 1 ]]; then
    record "a machine" SKIP "$(elapsed)" "no GPU ($GPU_NOTE): self-test mode, GPU steps replaced by a dry run"
else
    record "a machine" ERROR "$(elapsed)" "no GPU: $GPU_NOTE"
    cannot "a machine: no GPU ($GPU_NOTE)"
fi

# ---- a: build -----------------------------------------------------------------------------

say "[a] build: cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release -DFRAGLESS_WERROR=ON && cmake --build $BUILD -j $JOBS"
if [[ -z $CMAKE ]]; then
    echo "cmake is NOT installed on this machine (not on PATH, not beside $PY): fragless cannot be built here. Stopping."
    record "a build" ERROR 0 "cmake is not installed: nothing can be built or tested"
    cannot "a build: cmake missing"
    summary_and_exit
fi
if [[ -z $CC_BIN ]]; then
    echo "no C compiler (cc, gcc, clang) on this machine: fragless cannot be built here. Stopping."
    record "a build" ERROR 0 "no C compiler"
    cannot "a build: no C compiler"
    summary_and_exit
fi
BUILD_NOTE="$BUILD, Release"
rm -rf "$BUILD_DIR" # always from scratch: the build is part of the check
build() { # build [extra cmake args]: configure + build; RC and SECS of the pair
    local secs
    run_boxed 90 "$WORK/a-configure.log" "$CMAKE" -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@"
    secs=$SECS
    if ((RC == 0)); then
        run_boxed 240 "$WORK/a-build.log" "$CMAKE" --build "$BUILD_DIR" -j "$JOBS"
        SECS=$((SECS + secs))
    else
        cp "$WORK/a-configure.log" "$WORK/a-build.log"
    fi
}
# With -Werror, as CI builds (FRAGLESS_WERROR; a plain Release build has it off).
build -DFRAGLESS_WERROR=ON
if ((RC != 0 && RC != 124 && RC != 137 && RC != 200)) && grep -q "warnings being treated as errors\|-Werror" "$WORK/a-build.log"; then
    # A newer compiler may warn where the CI's does not. Say so, and build again without
    # -Werror so the GPU steps still run.
    FIRST_ERR=$(grep -m 1 "error:" "$WORK/a-build.log" || true)
    echo "the build stopped on a warning made an error: $FIRST_ERR"
    echo "building again with -DFRAGLESS_WERROR=OFF so that the GPU steps can run"
    cp "$WORK/a-build.log" "$WORK/a-build-werror.log"
    rm -rf "$BUILD_DIR"
    build -DFRAGLESS_WERROR=OFF
    BUILD_NOTE="$BUILD, Release, only without -Werror: ${FIRST_ERR#"$ROOT"/}"
    failed "a build: Release fails with -Werror (${FIRST_ERR#"$ROOT"/})"
fi
if ((RC != 0)); then
    show_tail "$WORK/a-build.log" 25
    record "a build" ERROR "$SECS" "build failed: $(why_not) (log: a-build.log)"
    cannot "a build: $(why_not)"
    summary_and_exit
fi
record "a build" "$([[ $BUILD_NOTE == *"without -Werror"* ]] && echo WARN || echo ok)" "$SECS" "$BUILD_NOTE"

# ---- b: the test suite (driver double) and the real-driver smoke test ----------------------

say "[b] ctest (the project's tests but the sanitizer/fuzz runs; the cuda device's run on the driver double)"
CTEST=$(dirname "$CMAKE")/ctest
[[ -x $CTEST ]] || CTEST=ctest
# Without the sanitizer and fuzz runs (label sanitize: minutes of CPU, nothing GPU-specific).
run_boxed 150 "$WORK/b-ctest.log" "$CTEST" --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" -LE sanitize
CTEST_LINE=$(grep -E "tests passed|tests failed" "$WORK/b-ctest.log" | tail -n 1 || true)
grep -E "Failed|\*\*\*|Skipped|Not Run" "$WORK/b-ctest.log" | head -n 20 || true
echo "${CTEST_LINE:-no ctest result line}"
if ((RC == 0)); then
    record "b ctest (driver double)" ok "$SECS" "$CTEST_LINE"
elif [[ -n $CTEST_LINE && $RC != 124 && $RC != 137 ]]; then
    record "b ctest (driver double)" FAIL "$SECS" "$CTEST_LINE; failed: $(grep -oE '[0-9]+ - [a-z_0-9]+' "$WORK/b-ctest.log" | awk '{print $3}' | tr '\n' ' ')"
    failed "b ctest: $CTEST_LINE"
else
    show_tail "$WORK/b-ctest.log"
    record "b ctest (driver double)" ERROR "$SECS" "ctest did not finish: $(why_not)"
    cannot "b ctest: $(why_not)"
fi

say "[b] smoke test of the C API on the real driver ($DRIVER, device 0, limit $SMOKE_SIZE per policy)"
mkdir -p "$WORK/smoke"
cp "$ROOT/scripts/gpu_smoke.c" "$WORK/smoke/smoke.c" # also built and run on the driver double by CI (test gpu_smoke)
run_boxed 60 "$WORK/b-smoke-build.log" "$CC_BIN" -std=c11 -O2 -Wall -Wextra -I "$ROOT/include" \
    -o "$WORK/smoke/smoke" "$WORK/smoke/smoke.c" -L "$BUILD_DIR" -lfragless -Wl,-rpath,"$BUILD_DIR" -ldl
if ((RC != 0)); then
    show_tail "$WORK/b-smoke-build.log"
    record "b smoke (real driver)" ERROR "$SECS" "smoke.c did not compile: $(why_not)"
    cannot "b smoke: did not compile ($(why_not))"
else
    # The real driver: no FRAGLESS_CUDA_LIB (the smoke test names its driver), no FRAGLESS_CONF.
    run_boxed 120 "$WORK/b-smoke.log" env -u FRAGLESS_CUDA_LIB -u FRAGLESS_CONF "$WORK/smoke/smoke" "$DRIVER" "$SMOKE_SIZE"
    cat "$WORK/b-smoke.log"
    # Its own first line (the allocators' out-of-memory reports, on unbuffered stderr, come
    # before it in the log).
    SMOKE_HEAD=$(grep -m 1 '^smoke: ' "$WORK/b-smoke.log" | sed 's/^smoke: //' || true)
    [[ -n $SMOKE_HEAD ]] || SMOKE_HEAD=$(head -n 1 "$WORK/b-smoke.log")
    case $RC in
    0) record "b smoke (real driver)" ok "$SECS" "every policy: $SMOKE_HEAD" ;;
    1)
        record "b smoke (real driver)" FAIL "$SECS" "$(grep -c 'FAIL (' "$WORK/b-smoke.log") failed checks: $(grep -m 1 'FAIL (' "$WORK/b-smoke.log" | sed 's/^ *//')"
        failed "b smoke: $(grep -m 1 'FAIL (' "$WORK/b-smoke.log" | sed 's/^ *FAIL ([^)]*) //')"
        ;;
    2)
        record "b smoke (real driver)" ERROR "$SECS" "$SMOKE_HEAD"
        if ((HAVE_GPU)) || [[ $ALLOW_NO_GPU != 1 ]]; then cannot "b smoke: $SMOKE_HEAD"; fi
        ;;
    124 | 137 | 200)
        record "b smoke (real driver)" ERROR "$SECS" "$(why_not)"
        cannot "b smoke: $(why_not)"
        ;;
    *)
        record "b smoke (real driver)" FAIL "$SECS" "crashed ($(why_not)); see b-smoke.log"
        failed "b smoke: crashed ($(why_not))"
        ;;
    esac
fi

# ---- g: fragless.torch's contracts on the GPU (graphs, out-of-memory, pools) ----------------

# torch_check NAME: scripts/gpu_torch_checks.py --check NAME in its own process (fragless.torch
# changes PyTorch for good), one summary line from its GPU_TORCH_CHECK result.
# TC_PREFIX: a command the check runs under (the run check: fragless run --).
TC_PREFIX=()
torch_check() {
    local name=$1 step="g torch $1" line
    run_boxed 90 "$WORK/g-$name.log" env -u FRAGLESS_CUDA_LIB -u FRAGLESS_CONF -u PYTORCH_CUDA_ALLOC_CONF \
        -u PYTORCH_ALLOC_CONF PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" \
        FRAGLESS_LIB="$BUILD_DIR/libfragless.so" "${TC_PREFIX[@]}" "$PY" scripts/gpu_torch_checks.py --check "$name"
    line=$(grep -h "GPU_TORCH_CHECK" "$WORK/g-$name.log" | tail -n 1 | sed 's/^GPU_TORCH_CHECK //')
    echo "${line:-no result line}" | cut -c 1-600
    if [[ -z $line ]]; then
        show_tail "$WORK/g-$name.log"
        record "$step" "$( ((RC == 124 || RC == 137 || RC == 200)) && echo ERROR || echo FAIL)" "$SECS" "no result: $(why_not) (log: g-$name.log)"
        if ((RC == 124 || RC == 137 || RC == 200)); then cannot "$step: $(why_not)"; else failed "$step: crashed ($(why_not))"; fi
    elif [[ $line == *'"ok": true'* ]]; then
        record "$step" ok "$SECS" "$(echo "$line" | cut -c 1-160)"
    elif ((RC == 3)); then
        record "$step" ERROR "$SECS" "could not start: $(echo "$line" | cut -c 1-160)"
        cannot "$step: could not start"
    else
        show_tail "$WORK/g-$name.log"
        record "$step" FAIL "$SECS" "$(echo "$line" | cut -c 1-200)"
        failed "$step"
    fi
}

if ((HAVE_GPU)); then
    say "[g] fragless.torch on the GPU: torch.cuda.graph and make_graphed_callables equal to eager, out-of-memory caught"
    torch_check graphs
    say "[g] fragless.torch.pool() under torch.cuda.use_mem_pool"
    torch_check pool
    say "[g] PyTorch under fragless run: memory statistics, empty_cache, graphs captured and deleted"
    TC_PREFIX=("$BUILD_DIR/fragless" run --)
    torch_check run
    TC_PREFIX=()
fi

# ---- i: the CUDA runtime's stream contracts under fragless run ------------------------------

if ((HAVE_GPU)); then
    say "[i] stream contracts under fragless run (scripts/gpu_contracts.cu): per-thread streams, destroyed streams, another device's stream"
    NVCC=$(command -v nvcc || true)
    [[ -n $NVCC ]] || NVCC=/usr/local/cuda/bin/nvcc
    if [[ ! -x $NVCC ]]; then
        record "i stream contracts" SKIP 0 "no nvcc on this machine: scripts/gpu_contracts.cu not built"
    else
        run_boxed 90 "$WORK/i-build.log" "$NVCC" -O2 -cudart shared -o "$WORK/gpu_contracts" scripts/gpu_contracts.cu -lpthread
        if ((RC != 0)); then
            show_tail "$WORK/i-build.log"
            record "i stream contracts" ERROR "$SECS" "gpu_contracts.cu did not build: $(why_not) (log: i-build.log)"
            cannot "i stream contracts: did not build ($(why_not))"
        else
            run_boxed 60 "$WORK/i-run.log" env -u FRAGLESS_CUDA_LIB -u FRAGLESS_CONF "$BUILD_DIR/fragless" run -- \
                "$WORK/gpu_contracts"
            cat "$WORK/i-run.log"
            I_LINE=$(grep -m 1 '^GPU_CONTRACTS ' "$WORK/i-run.log" | sed 's/^GPU_CONTRACTS //' || true)
            I_CHECKS=$(grep '^GPU_CONTRACT ' "$WORK/i-run.log" | awk '{print $2 " " $3}' | tr '\n' ',' | sed 's/,$//' || true)
            case $RC in
            0) record "i stream contracts" ok "$SECS" "$I_CHECKS" ;;
            1)
                record "i stream contracts" FAIL "$SECS" "$I_LINE: $I_CHECKS"
                failed "i stream contracts: $(grep -m 1 ' FAIL ' "$WORK/i-run.log" | cut -c 1-160)"
                ;;
            *)
                show_tail "$WORK/i-run.log"
                record "i stream contracts" ERROR "$SECS" "${I_LINE:-no result}: $(why_not) (log: i-run.log)"
                cannot "i stream contracts: $(why_not)"
                ;;
            esac
            # The driver's own legacy IPC, without fragless: what tests/fakecuda models.
            run_boxed 30 "$WORK/i-ipc.log" env -u LD_PRELOAD "$WORK/gpu_contracts" --ipc-rules
            cat "$WORK/i-ipc.log"
            I_IPC=$(grep -m 1 '^GPU_CONTRACT ipc-rules ' "$WORK/i-ipc.log" | cut -d' ' -f3- || true)
            case $RC in
            0) record "i ipc rules (no fragless)" ok "$SECS" "$I_IPC" ;;
            1)
                record "i ipc rules (no fragless)" FAIL "$SECS" "$I_IPC"
                failed "i ipc rules: the driver double's legacy IPC model differs from this driver: $I_IPC"
                ;;
            *)
                show_tail "$WORK/i-ipc.log"
                record "i ipc rules (no fragless)" ERROR "$SECS" "${I_IPC:-no result}: $(why_not) (log: i-ipc.log)"
                cannot "i ipc rules: $(why_not)"
                ;;
            esac
        fi
    fi
fi

# ---- h: two GPUs (peer copies, NCCL) --------------------------------------------------------

# multi LABEL STEP: the step's line from the GPU_MULTI_RESULT lines in g-LABEL.log (one per
# process: ok, skipped or error).
multi() {
    local log=$WORK/h-$1.log step=$2 lines err skip
    lines=$(grep -h "^GPU_MULTI_RESULT " "$log" | sed 's/^GPU_MULTI_RESULT //' || true)
    if [[ -z $lines ]]; then
        show_tail "$log"
        record "$step" ERROR "$SECS" "no result: $(why_not) (log: h-$1.log)"
        cannot "$step: no result ($(why_not))"
        return 0
    fi
    err=$(printf '%s\n' "$lines" | "$PY" -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l)
    if not r.get("ok") and r.get("error"):
        print("rank %s: %s" % (r.get("rank"), r["error"])); break' 2>/dev/null || true)
    skip=$(printf '%s\n' "$lines" | "$PY" -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l)
    if r.get("skipped"):
        print(r["skipped"]); break' 2>/dev/null || true)
    if [[ -n $err ]]; then
        show_tail "$log"
        record "$step" FAIL "$SECS" "$(cut -c 1-200 <<<"$err")"
        failed "$step: $(cut -c 1-160 <<<"$err")"
    elif [[ -n $skip ]]; then
        record "$step" SKIP "$SECS" "$skip"
    else
        record "$step" ok "$SECS" "$(printf '%s\n' "$lines" | wc -l) process(es) ok; $3"
    fi
}

# A trace per process and GPU: how many allocations fragless served, on how many GPUs.
served() {
    local n=0 files=0 f
    for f in "$WORK"/h-"$1"*.csv; do
        [[ -f $f ]] || continue
        files=$((files + 1))
        n=$((n + $(grep -c ',allocate,' "$f" || true)))
    done
    echo "$n allocations served by fragless in $files trace file(s)"
}

if ((HAVE_GPU && NGPU < 2)); then
    record "h two GPUs" SKIP 0 "$NGPU GPU here: the peer-copy and NCCL checks need two"
elif ((HAVE_GPU)); then
    say "[h] two GPUs: peer copies of fragless memory (fragless run -- gpu_multi.py --peer)"
    # Every process of the step: fragless through the preload library (PyTorch's
    # cudaMallocAsync backend, set by fragless run), traces per process and GPU.
    G_ENV=(env -u FRAGLESS_CUDA_LIB -u FRAGLESS_CONF -u PYTORCH_CUDA_ALLOC_CONF -u PYTORCH_ALLOC_CONF
        PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" FRAGLESS_LIB="$BUILD_DIR/libfragless.so")
    run_boxed 120 "$WORK/h-peer.log" "${G_ENV[@]}" "$BUILD_DIR/fragless" run --trace "$WORK/h-peer.csv" -- \
        "$PY" scripts/gpu_multi.py --peer
    multi peer "h peer copy (2 GPUs)" "$(served peer)"
    say "[h] NCCL all-reduce of fragless-allocated tensors: fragless run -- torchrun --nproc-per-node 2"
    run_boxed 180 "$WORK/h-allreduce.log" "${G_ENV[@]}" "$BUILD_DIR/fragless" run --trace "$WORK/h-allreduce.csv" -- \
        "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_multi.py --allreduce
    multi allreduce "h NCCL all-reduce" "$(served allreduce)"
    say "[h] NCCL buffer registration of a fragless MemPool (registrable:1MiB), where PyTorch offers it"
    run_boxed 180 "$WORK/h-register.log" "${G_ENV[@]}" FRAGLESS_CONF=registrable:1MiB \
        "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 scripts/gpu_multi.py --register
    multi register "h NCCL registration" "ProcessGroupNCCL.register_mem_pool of fragless blocks"
fi

# ---- c, d, e: training under one cap, a recorded trace and its replay ----------------------

# train LABEL CAP_SECONDS [VAR=VALUE...] -- [gpu_train.py args]: one run in its own process;
# its result line lands in run-LABEL.json. Sets RESULT_FILE.
train() {
    local label=$1 cap=$2
    shift 2
    local envs=()
    while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    RESULT_FILE=$WORK/run-$label.json
    rm -f "$RESULT_FILE"
    run_boxed "$cap" "$WORK/c-train-$label.log" env -u FRAGLESS_CUDA_LIB -u FRAGLESS_CONF \
        -u PYTORCH_CUDA_ALLOC_CONF -u PYTORCH_ALLOC_CONF PYTHONUNBUFFERED=1 \
        PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" FRAGLESS_LIB="$BUILD_DIR/libfragless.so" \
        ${envs[@]+"${envs[@]}"} "$PY" scripts/gpu_train.py --out "$RESULT_FILE" "$@"
    grep -h "GPU_TRAIN_RESULT" "$WORK/c-train-$label.log" | cut -c 1-400 || true
}

# judge LABEL STEP: a summary line for a training run from its result (or its absence).
judge() {
    local label=$1 step=$2 note
    if [[ ! -s $RESULT_FILE ]]; then
        show_tail "$WORK/c-train-$label.log"
        case $RC in
        124 | 137 | 200)
            record "$step" ERROR "$SECS" "no result: $(why_not) (log: c-train-$label.log)"
            cannot "$step: no result ($(why_not))"
            ;;
        *) # the process died before it could print its result: a crash is a finding
            record "$step" FAIL "$SECS" "crashed without a result: $(why_not) (log: c-train-$label.log)"
            failed "$step: crashed ($(why_not))"
            ;;
        esac
        return 0
    fi
    note=$(awk -v ms="$(jget "$RESULT_FILE" median_step_ms)" -v r="$(jget "$RESULT_FILE" peak_reserved_bytes)" 'BEGIN {
        printf "median %s ms/step, peak reserved %s", ms == "" ? "-" : ms, r == "" ? "-" : sprintf("%.3f GiB", r / 1073741824) }')
    if [[ $(jget "$RESULT_FILE" completed) == true ]]; then
        record "$step" ok "$SECS" "$note"
    elif [[ $(jget "$RESULT_FILE" oom) == true ]]; then
        record "$step" OOM "$SECS" "out of memory at step $(jget "$RESULT_FILE" failed_at_step): $(jget "$RESULT_FILE" error | cut -c 1-120)"
    elif [[ $RC == 3 ]]; then
        record "$step" ERROR "$SECS" "could not start: $(jget "$RESULT_FILE" error | cut -c 1-160)"
        cannot "$step: $(jget "$RESULT_FILE" error | cut -c 1-160)"
    else
        show_tail "$WORK/c-train-$label.log"
        record "$step" FAIL "$SECS" "error (not out of memory): $(jget "$RESULT_FILE" error | cut -c 1-160)"
        failed "$step: $(jget "$RESULT_FILE" error | cut -c 1-160)"
    fi
}

if ((!HAVE_GPU)); then
    if [[ $ALLOW_NO_GPU == 1 ]]; then
        say "[c] no GPU: gpu_train.py --dry-run instead (CPU, 2 steps, no cap, no fragless)"
        train dry-run 180 -- --dry-run
        judge dry-run "c dry run (CPU)"
    else
        record "c-e training" SKIP 0 "no GPU"
    fi
    summary_and_exit
fi

say "[d] calibration: PyTorch's default allocator without a cap"
train calibrate 120 -- --allocator default --calibrate
if [[ ! -s $RESULT_FILE || $(jget "$RESULT_FILE" completed) != true ]]; then
    judge calibrate "d calibrate (default, no cap)"
    record "c-e training" SKIP 0 "no calibration, hence no cap"
    cannot "d calibrate: did not complete"
    summary_and_exit
fi
ALLOC=$(jget "$RESULT_FILE" peak_allocated_bytes)
RESERVED=$(jget "$RESULT_FILE" peak_reserved_bytes)
# cap = factor x peak allocated, rounded up to whole 2 MiB pages
CAP=$(awk -v a="$ALLOC" -v f="$CAP_FACTOR" 'BEGIN { p = 2097152; printf "%.0f", int((a * f + p - 1) / p) * p }')
printf 'steps=%s\nfactor=%s\nalloc=%s\nreserved=%s\ncap=%s\n' "$STEPS" "$CAP_FACTOR" "$ALLOC" "$RESERVED" "$CAP" >"$WORK/cap.txt"
CAL_NOTE=$(awk -v a="$ALLOC" -v r="$RESERVED" -v c="$CAP" -v f="$CAP_FACTOR" 'BEGIN {
    g = 1073741824; printf "peak allocated %.3f GiB, peak reserved %.3f GiB (%.2fx); cap %.3f GiB = %s x allocated = %.2f x reserved",
    a / g, r / g, r / a, c / g, f, c / r }')
echo "$CAL_NOTE"
record "d calibrate (default, no cap)" ok "$SECS" "$CAL_NOTE"
if awk -v a="$ALLOC" -v r="$RESERVED" -v f="$CAP_FACTOR" 'BEGIN { exit !(r < a * f * 1.02) }'; then
    echo "note: without a cap the default allocator reserved only $(awk -v a="$ALLOC" -v r="$RESERVED" 'BEGIN { printf "%.2f", r / a }')x its" \
        "allocated bytes: it did not fragment as designed, so it may well fit under the cap"
fi

say "[c] training under the cap: PyTorch default"
train default 90 -- --allocator default --cap-bytes "$CAP" --steps "$STEPS"
judge default "c train default"
say "[c] training under the cap: expandable_segments:True"
train expandable 90 -- --allocator expandable --cap-bytes "$CAP" --steps "$STEPS"
judge expandable "c train expandable"
say "[c] training under the cap: fragless (Python package, limit:$CAP)"
train fragless 90 -- --allocator fragless --cap-bytes "$CAP" --steps "$STEPS"
judge fragless "c train fragless"
say "[e] fragless again, recording a trace: FRAGLESS_CONF=trace:$TRACE"
rm -f "$TRACE"
train fragless+trace 90 FRAGLESS_CONF="trace:$TRACE" -- --allocator fragless --cap-bytes "$CAP" --steps "$STEPS"
judge fragless+trace "e train fragless+trace"

say "[e] replay of the recorded trace: $BUILD/fragless compare TRACE --capacity 1.05x"
TRACE_ROWS=$( ( [[ -f $TRACE ]] && wc -l <"$TRACE") || echo 0)
if ((TRACE_ROWS < 2)); then
    record "e compare trace" ERROR 0 "no trace was recorded ($TRACE_ROWS lines in $TRACE)"
    cannot "e compare: no trace recorded"
else
    run_boxed 90 "$WORK/e-compare.log" "$BUILD_DIR/fragless" compare "$TRACE" --capacity 1.05x
    cat "$WORK/e-compare.log"
    if ((RC == 0)); then
        # the same trace at the cap the live runs had: did the emulation predict them?
        run_boxed 60 "$WORK/e-compare-cap.csv" "$BUILD_DIR/fragless" compare "$TRACE" --capacity "$CAP" --no-min-capacity --format csv
        record "e compare trace" ok "$SECS" "$((TRACE_ROWS - 1)) events; also replayed at the live cap"
        # the page with the timelines, page maps and the doctor's verdict (kept with GPU_CHECK_KEEP)
        run_boxed 60 "$WORK/e-report.log" "$BUILD_DIR/fragless" report "$TRACE" --capacity "$CAP" -o "$WORK/report.html"
        if ((RC == 0)); then
            record "e report" ok "$SECS" "$WORK/report.html, $(wc -c <"$WORK/report.html") bytes"
        else
            record "e report" ERROR "$SECS" "fragless report: $(why_not): $(tail -n 1 "$WORK/e-report.log")"
            failed "e report"
        fi
    else
        record "e compare trace" ERROR "$SECS" "fragless compare: $(why_not): $(tail -n 1 "$WORK/e-compare.log")"
        cannot "e compare: $(why_not)"
    fi
fi

summary_and_exit
