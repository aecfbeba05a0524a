#!/usr/bin/env python3
"""Whether more capacity ever hurts: for each trace, fragless's min_capacity (`fragless
compare`), then a replay at each of the PAGES pages above it (`fragless replay
--capacity`); prints the pages above min_capacity at which a replay runs out of memory.
min_capacity is a binary search that takes more capacity never to hurt, which an online
policy does not promise; the doctor's "fits the capacity?" is a replay for that reason.

Usage (from the repository root, after make build):
    tools/monotone.py [--pages N] [--policy P] [--fragless build/fragless] [TRACE...]
Without traces: ../shared/traces (top folder, hard/, snapshots/) and examples/.
Exit status 1 when some trace is not monotone over the window.
"""
import argparse
import csv
import glob
import io
import subprocess
import sys

ap = argparse.ArgumentParser(description="replays over the pages above min_capacity")
ap.add_argument("traces", nargs="*")
ap.add_argument("--pages", type=int, default=20, help="pages above min_capacity to replay at (default 20)")
ap.add_argument("--policy", default="fragless")
ap.add_argument("--fragless", default="build/fragless")
args = ap.parse_args()
traces = args.traces or (sorted(glob.glob("../shared/traces/*.csv")) + sorted(glob.glob("../shared/traces/hard/*.csv")) +
                         sorted(glob.glob("../shared/traces/snapshots/*.pickle")) + sorted(glob.glob("examples/*.csv")) +
                         sorted(glob.glob("examples/*/*.csv")))
if not traces:
    sys.exit("monotone.py: no traces (run from the repository root)")
bad = 0
for t in traces:
    r = subprocess.run([args.fragless, "compare", t, "--policy", args.policy, "--format", "csv"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("monotone.py: compare %s failed (%d): %s" % (t, r.returncode, r.stderr.strip()))
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    mc, page = int(rows[0]["min_capacity"]), 2 << 20
    fails = []
    for k in range(1, args.pages + 1):
        rc = subprocess.run([args.fragless, "replay", t, "--policy", args.policy, "--capacity", str(mc + k * page),
                             "--format", "csv"], capture_output=True, text=True).returncode
        if rc == 3:
            fails.append(k)
        elif rc != 0:
            sys.exit("monotone.py: replay %s at %d bytes failed (%d)" % (t, mc + k * page, rc))
    bad += bool(fails)
    print("%-34s min_capacity %6d MiB  out of memory at +%s pages" % (t.split("/")[-1], mc >> 20,
                                                                       ",".join(map(str, fails)) or "none of the"),
          flush=True)
print("monotone.py: %d of %d traces run out of memory above their min_capacity (%d pages looked at)" %
      (bad, len(traces), args.pages))
sys.exit(1 if bad else 0)
