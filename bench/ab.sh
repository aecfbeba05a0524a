#!/bin/sh
# bench/ab.sh: two fl_bench builds side by side (an A/B of host time per pair). Each round
# runs both as separate processes, in alternating order (A B, then B A), so that machine
# noise and warm caches fall on both alike; a figure is the median over the rounds of the
# per-process medians that fl_bench prints.
#
#   sh bench/ab.sh BEFORE/fl_bench AFTER/fl_bench [ROUNDS]     (from the repository root)
#
# Traces: examples/encoder_varlen.csv and ../shared/traces (with hard/ and snapshots/) when
# present. FL_BENCH_RUNS (default 7) and FL_BENCH_ONLY (default fl_alloc,OA,policy,cca)
# pass through; the clock is the thread's CPU time (FL_BENCH_CLOCK=cpu). fl/OA is the
# median of the per-process ratios, steadier than the ratio of the medians. FL_AB_TRACES
# (paths, space-separated) replaces the trace list: e.g. the inference snapshots alone,
#   FL_AB_TRACES="$(echo ../shared/traces/snapshots/*_infer.pickle)" sh bench/ab.sh A B 6
set -eu
[ $# -ge 2 ] || { echo "usage: sh bench/ab.sh BEFORE_FL_BENCH AFTER_FL_BENCH [ROUNDS]" >&2; exit 2; }
A=$1 B=$2 ROUNDS=${3:-8}
for b in "$A" "$B"; do [ -x "$b" ] || { echo "bench/ab.sh: $b is not an executable" >&2; exit 2; }; done
case $ROUNDS in '' | *[!0-9]* | 0) echo "bench/ab.sh: ROUNDS must be a positive number, not '$ROUNDS'" >&2; exit 2 ;; esac
T=
for f in ${FL_AB_TRACES:-examples/encoder_varlen.csv ../shared/traces/*.csv ../shared/traces/hard/*.csv ../shared/traces/snapshots/*.pickle}; do
    if [ -f "$f" ]; then T="$T $f"; elif [ -n "${FL_AB_TRACES:-}" ]; then echo "bench/ab.sh: FL_AB_TRACES: $f is not a file" >&2; exit 2; fi
done
[ -n "$T" ] || { echo "bench/ab.sh: no traces (run it from the repository root)" >&2; exit 2; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# Both builds run from paths of one length, and each round under an environment variable
# of another length (FL_AB_PAD, the same for A and B in a round): the arguments and the
# environment lie at the top of the stack, so their length decides where every stack
# frame falls, and a build can be faster or slower by 5-10% at one placement than at
# another with nothing else changed (measured: the same two builds, 2-3 ns apart per pair
# on four traces with one argument list, equal with another). Rounds spread the
# placements over a 4 KiB page, so a median is over placements, not one placement's luck.
mkdir "$OUT/a" "$OUT/b"
cp "$A" "$OUT/a/fl_bench" && cp "$B" "$OUT/b/fl_bench" || { echo "bench/ab.sh: cannot copy the builds to $OUT" >&2; exit 1; }
export FL_BENCH_CLOCK=cpu FL_BENCH_RUNS=${FL_BENCH_RUNS:-7} FL_BENCH_ONLY=${FL_BENCH_ONLY:-fl_alloc,OA,policy,cca}
r=0
while [ $r -lt "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 0 ]; then first=A; else first=B; fi
    for w in $first $([ $first = A ] && echo B || echo A); do
        if [ $w = A ]; then bin=$OUT/a/fl_bench; else bin=$OUT/b/fl_bench; fi
        # shellcheck disable=SC2086 # the trace list is split on purpose
        FL_AB_PAD=$(printf "%$((r * 4096 / ROUNDS % 4096 + 1))s" x) "$bin" $T > "$OUT/$w.$r" ||
            { echo "bench/ab.sh: $bin failed (round $r)" >&2; exit 1; }
    done
    r=$((r + 1))
done
echo "bench/ab.sh: $ROUNDS rounds, FL_BENCH_RUNS=$FL_BENCH_RUNS, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "A: $A"
echo "B: $B"
# Each process's table: the header line starting with "trace" names the columns.
for w in A B; do
    for f in "$OUT"/$w.*; do
        awk -v w=$w '$1 == "trace" { for (i = 1; i <= NF; i++) col[$i] = i; ncol = NF; next }
             ncol && NF == ncol && $2 ~ /^[0-9]+$/ {
                 for (c in col) if (c != "trace" && c != "pairs" && $(col[c]) ~ /^[0-9.]+$/) print w, $1, c, $(col[c]) }' "$f"
    done
done | awk '
    function median(k,   n, i, j, t, a) {
        n = split(vals[k], a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 SUBSEP $2 SUBSEP $3; vals[k] = (k in vals ? vals[k] " " : "") $4
      if (!($2 in seen)) { seen[$2] = 1; order[++nt] = $2 } }
    END {
        printf "%-32s %17s %17s %17s %17s %13s\n", "trace", "fl_alloc A->B", "OA A->B", "policy A->B", "cca A->B", "fl/OA A->B"
        for (i = 1; i <= nt; i++) {
            t = order[i]; line = sprintf("%-32s", t)
            split("fl_alloc OA policy cca", cs, " ")
            for (c = 1; c <= 4; c++) {
                ka = "A" SUBSEP t SUBSEP cs[c]; kb = "B" SUBSEP t SUBSEP cs[c]
                line = line ((ka in vals) && (kb in vals) ? sprintf(" %7.1f -> %6.1f", median(ka), median(kb)) : sprintf(" %17s", "-"))
            }
            ka = "A" SUBSEP t SUBSEP "fl/OA"; kb = "B" SUBSEP t SUBSEP "fl/OA"
            line = line ((ka in vals) && (kb in vals) ? sprintf(" %5.2f -> %4.2f", median(ka), median(kb)) : sprintf(" %13s", "-"))
            print line
        }
    }'
