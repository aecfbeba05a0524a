#!/usr/bin/env python3
"""Issue 13's bars on every trace at once: one line per trace and a totals line, from
`fragless compare` (without a limit and at 1.05 x peak live) on ../shared/traces (top
folder, hard/, snapshots/) and on examples/. Run from the repository root:

    python3 bench/issue13.py [-v] [--fragless build/fragless] [--conf CONF]

Columns (-v), fragless's figures unless named:
  minc     min_capacity / peak live; mincC, mincE: cca's and cca-expandable's
  +pgMiB   min_capacity above the page limit (peak live rounded up to 2 MiB pages)
  bar      'ok' when min_capacity <= max(1.01 x peak live, page limit + 4 MiB), else MISS
  res      peak reserved without a limit / peak live; resE: cca-expandable's
  L0       steady-state ("late") device calls without a limit
  L105     late calls at 1.05 x peak live, L105ms their simulated device time; E105ms:
           cca-expandable's
  dev      simulated device time without a limit / cca-expandable's (warm-up bar: 1.5)
  floor    the streams' floor / peak live (`fragless compare`: each stream's most live
           bytes in the steady state, summed; '-' for one stream). Where it is above
           1.05, the trace's L105 cannot be 0: memory must pass between streams, a device
           call each time, for any policy that hands memory over by one
Totals: bar_miss (traces over the bar) and bar_excess_mib (MiB over it, summed);
worse_than_pt (min_capacity above cca's or cca-expandable's); res_miss (peak reserved
above cca-expandable's) and res_excess_mib; late0, late105, late105_ms summed;
devratio_max; late105_floor: the part of late105 on traces whose floor is above 1.05;
dev105_ms, dev105_e_ms: all simulated device time at 1.05 x peak live (warm-up included),
fragless's and cca-expandable's, summed, and dev105_ratio_max, the largest ratio on one
trace (column dev105). The warm-up bar (dev, devratio_max) is measured without a limit;
on a GPU there always is one, and near it fragless maps most pages with handles of their
own (the chunks' share of the limit, ARCHITECTURE.md): dev105 is that warm-up. Only the
standard library; takes a few seconds.

--long also generates long jobs with `fragless gen` (--seed 1, in a temporary folder:
DDP 4 ranks x 100 steps --imbalance 0.2, FSDP 2 x 100, pipeline 4 x 50) and replays each
rank at 1.05 x peak live under fragless and cca-expandable: the examples/ jobs run 8
steps, too few for a steady state that drifts (before mapped runs, pipeline rank 3 made
265 late calls in 8 steps and 9,801 in 50, where cca-expandable makes 0). One line per
rank with -v (late calls
and their ms for both, cca-expandable's failed allocations, the streams' floor), then
long_late105, long_late105_ms, long_late105_e, long_late105_e_ms (cca-expandable's),
long_worse_than_e (ranks where fragless makes more late calls than cca-expandable) and
long_oom_ranks and long_e_oom_ranks (ranks where fragless, cca-expandable runs out of
memory at 1.05x: there the late calls are those of a job that failed).
"""
import argparse
import csv
import glob
import io
import math
import os
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser(description="issue 13's bars on every trace")
ap.add_argument("--fragless", default="build/fragless", help="the fragless binary (default build/fragless)")
ap.add_argument("--conf", default="", help="--conf passed to compare (FRAGLESS_CONF knobs)")
ap.add_argument("-v", action="store_true", help="one line per trace")
ap.add_argument("--long", action="store_true", help="also long jobs made by `fragless gen` (see above)")
args = ap.parse_args()
if not os.access(args.fragless, os.X_OK):
    sys.exit("issue13.py: %s is not an executable (run from the repository root after make build)" % args.fragless)

shared = "../shared/traces"
traces = []
if os.path.isdir(shared):
    for pat in ("*.csv", "hard/*.csv", "snapshots/*.pickle"):
        traces += sorted(glob.glob(os.path.join(shared, pat)))
else:
    print("issue13.py: %s is absent: examples/ only" % shared, file=sys.stderr)
traces += sorted(glob.glob("examples/*.csv")) + sorted(glob.glob("examples/*/*.csv"))
if not traces:
    sys.exit("issue13.py: no traces (run from the repository root)")


def compare(path, capacity):
    cmd = [args.fragless, "compare", path, "--policy", "fragless,cca,cca-expandable", "--format", "csv"]
    if capacity:
        cmd += ["--capacity", capacity]
    if args.conf:
        cmd += ["--conf", args.conf]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("issue13.py: %s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return {row["policy"]: row for row in csv.DictReader(io.StringIO(r.stdout))}


MiB = 1 << 20
tot = dict(bar_miss=0, bar_excess_mib=0.0, worse_than_pt=0, res_miss=0, res_excess_mib=0.0, late0=0, late105=0,
           late105_ms=0.0, devratio_max=0.0, late105_floor=0, dev105_ms=0.0, dev105_e_ms=0.0, dev105_ratio_max=0.0)
if args.v:
    print("%-32s %8s %7s %6s %4s %7s %7s %7s %7s %4s %6s %7s %7s %5s %6s %6s" %
          ("trace", "liveMiB", "minc", "+pgMiB", "bar", "mincC", "mincE", "res", "resE", "L0", "L105", "L105ms",
           "E105ms", "dev", "floor", "dev105"))
for t in traces:
    a, c = compare(t, None), compare(t, "1.05x")
    f, x, e = a["fragless"], a["cca"], a["cca-expandable"]
    live, mc = float(f["peak_live"]), float(f["min_capacity"])
    page_limit = math.ceil(live / (2 * MiB)) * 2 * MiB
    bar = max(1.01 * live, page_limit + 4 * MiB)
    res, res_e = float(f["peak_reserved"]), float(e["peak_reserved"])
    dev = float(f["device_ms"]) / max(float(e["device_ms"]), 1e-9)
    l0 = int(f["late_device_calls"])
    l105 = int(c["fragless"]["capacity_late_device_calls"] or 0)
    l105ms = float(c["fragless"]["capacity_late_device_ms"] or 0)
    e105ms = float(c["cca-expandable"]["capacity_late_device_ms"] or 0)
    tot["bar_miss"] += mc > bar
    tot["bar_excess_mib"] += max(0.0, mc - bar) / MiB
    tot["worse_than_pt"] += mc > min(float(x["min_capacity"]), float(e["min_capacity"]))
    tot["res_miss"] += res > res_e
    tot["res_excess_mib"] += max(0.0, res - res_e) / MiB
    tot["late0"] += l0
    tot["late105"] += l105
    tot["late105_ms"] += l105ms
    tot["devratio_max"] = max(tot["devratio_max"], dev)
    floor = float(f["streams_floor"]) / live if live else 0.0
    if floor > 1.05:
        tot["late105_floor"] += l105
    d105, d105_e = float(c["fragless"]["capacity_device_ms"] or 0), float(c["cca-expandable"]["capacity_device_ms"] or 0)
    dev105 = d105 / max(d105_e, 1e-9)
    tot["dev105_ms"] += d105
    tot["dev105_e_ms"] += d105_e
    tot["dev105_ratio_max"] = max(tot["dev105_ratio_max"], dev105)
    if args.v:
        print("%-32s %8.0f %7.4f %6.0f %4s %7.4f %7.4f %7.4f %7.4f %4d %6d %7.1f %7.1f %5.2f %6s %6.2f" %
              (os.path.basename(t), live / MiB, mc / live, (mc - page_limit) / MiB, "ok" if mc <= bar else "MISS",
               float(x["min_capacity"]) / live, float(e["min_capacity"]) / live, res / live, res_e / live, l0, l105,
               l105ms, e105ms, dev, "%.4f" % floor if floor else "-", dev105))
print(" ".join("%s=%s" % (k, round(v, 2) if isinstance(v, float) else v) for k, v in tot.items()))

LONG_JOBS = (
    ("ddp", ["--kind", "ddp", "--ranks", "4", "--steps", "100", "--imbalance", "0.2"]),
    ("fsdp", ["--kind", "fsdp", "--ranks", "2", "--steps", "100"]),
    ("pipeline", ["--kind", "pipeline", "--ranks", "4", "--steps", "50"]),
)
if args.long:
    lt = dict(long_late105=0, long_late105_ms=0.0, long_late105_e=0, long_late105_e_ms=0.0, long_worse_than_e=0,
              long_oom_ranks=0, long_e_oom_ranks=0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.v:
            print("%-32s %8s %6s %7s %6s %7s %5s %6s" % ("long job rank", "liveMiB", "L105", "L105ms", "E105",
                                                         "E105ms", "Eoom", "floor"))
        for name, gen in LONG_JOBS:
            cmd = [args.fragless, "gen", "--seed", "1", "-o", os.path.join(tmp, name + ".rank%r.csv")] + gen
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("issue13.py: %s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
            for t in sorted(glob.glob(os.path.join(tmp, name + ".rank*.csv"))):
                cmd = [args.fragless, "compare", t, "--policy", "fragless,cca-expandable", "--no-min-capacity",
                       "--capacity", "1.05x", "--format", "csv"]
                if args.conf:
                    cmd += ["--conf", args.conf]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit("issue13.py: %s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
                rows = {row["policy"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
                f, e = rows["fragless"], rows["cca-expandable"]
                live = float(f["peak_live"])
                l, lms = int(f["capacity_late_device_calls"] or 0), float(f["capacity_late_device_ms"] or 0)
                el, ems = int(e["capacity_late_device_calls"] or 0), float(e["capacity_late_device_ms"] or 0)
                lt["long_late105"] += l
                lt["long_late105_ms"] += lms
                lt["long_late105_e"] += el
                lt["long_late105_e_ms"] += ems
                lt["long_worse_than_e"] += l > el
                eoom = int(e["ooms"] or 0)
                lt["long_oom_ranks"] += int(f["ooms"] or 0) > 0
                lt["long_e_oom_ranks"] += eoom > 0
                floor = float(f["streams_floor"]) / live if live else 0.0
                if args.v:
                    print("%-32s %8.0f %6d %7.1f %6d %7.1f %5d %6s" % (os.path.basename(t), live / MiB, l, lms, el, ems,
                                                                       eoom, "%.4f" % floor if floor > 1.0001 else "-"))
    print(" ".join("%s=%s" % (k, round(v, 2) if isinstance(v, float) else v) for k, v in lt.items()))
