#!/usr/bin/env python3
"""How close to last in, first out the large blocks of an RMM CSV trace are freed.

Per stream (fragless keeps a large heap per stream), the live large blocks (at least
256 KiB, the fragless policy's large heap with the defaults) form a stack ordered by
allocation time. For each free of a large block, its depth in that stack is 0 when it is
the newest live block, 1 when one newer block still lives, and so on. Printed per trace:
the large frees, their MiB, and the share of them (by count, then by bytes) at depth
below 1, 2, 4 and 8 (top1 .. top8), then the count shares at depth exactly 0, 1, 2 and 3
or more. A depth of 1 is the pattern "allocate the next block, then free the one below
it" (an op's output allocated before its input is freed).

Usage: tools/lifo_share.py TRACE.csv [TRACE.csv ...] [--large BYTES]

Blocks never freed and frees of unknown pointers are skipped. Only the standard library;
a few seconds for every trace of ../shared/traces.
"""
import argparse

import rmm_csv

ap = argparse.ArgumentParser(description="LIFO share of the large frees of RMM CSV traces")
ap.add_argument("traces", nargs="+", metavar="TRACE.csv")
ap.add_argument("--large", type=int, default=256 << 10, help="smallest large block in bytes (default 262144)")
args = ap.parse_args()
KS = (1, 2, 4, 8)


def measure(path):
    stacks, live = {}, {}
    n = nbytes = 0
    by_count = dict.fromkeys(KS, 0)
    by_bytes = dict.fromkeys(KS, 0)
    depth = [0, 0, 0, 0]
    for _, action, ptr, size, stream in rmm_csv.events(path):
        if action == 'allocate':
            if size >= args.large:
                live[ptr] = (size, stream)
                stacks.setdefault(stream, []).append(ptr)
        elif action == 'free' and ptr in live:
            size, stream = live.pop(ptr)
            stack = stacks[stream]
            i = len(stack) - 1
            while stack[i] != ptr:
                i -= 1
            d = len(stack) - 1 - i
            del stack[i]
            n += 1
            nbytes += size
            depth[min(d, 3)] += 1
            for k in KS:
                if d < k:
                    by_count[k] += 1
                    by_bytes[k] += size
    return n, nbytes, by_count, by_bytes, depth


print("%-44s %6s %8s | %5s %5s %5s %5s | %5s %5s %5s %5s | %5s %5s %5s %5s" %
      ("trace", "frees", "MiB", "top1", "top2", "top4", "top8", "b1", "b2", "b4", "b8", "d0", "d1", "d2", "d3+"))
for path in args.traces:
    n, nb, c, b, d = measure(path)
    if n == 0:
        print("%-44s no large frees" % path)
        continue
    print("%-44s %6d %8.0f | %5.1f %5.1f %5.1f %5.1f | %5.1f %5.1f %5.1f %5.1f | %5.1f %5.1f %5.1f %5.1f" %
          ((path, n, nb / (1 << 20)) + tuple(100 * c[k] / n for k in KS) + tuple(100 * b[k] / nb for k in KS) +
           tuple(100 * x / n for x in d)))
