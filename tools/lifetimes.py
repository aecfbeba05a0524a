#!/usr/bin/env python3
"""How predictable a block's lifetime is, online, on an RMM CSV trace.

A block's lifetime is counted in allocations of at least --min bytes (the clock of the
lifetime predictor tried for issue 13 and left out, docs/ARCHITECTURE.md "placement by
predicted lifetime": placements of a page or more in a large heap)
between its allocation and its free. At each such allocation the lifetime is predicted
from what was seen before (the last lifetime of the block's key, learned at frees), as
an online allocator would, under four keys:

  size        the exact size (rounded up to 512 B, as the replay rounds it)
  size+prev   the size and the previous such allocation's size
  class       the size class, four per power of two
  class+prev  the class and the previous such allocation's class (the predictor's key)
  size+ord    the size and its ordinal among the blocks of that size since the last
              block of the trace's first counted size (taken for the step's first)

and, as the predictor used it, class+prev only once the key's last three lifetimes agreed
within 1/8 ("conf"). Printed per key: cov, the share of blocks with a prediction; hit,
the share whose prediction is within +-10% of the actual lifetime; x2, within a factor 2.
Blocks never freed are left out.

With --every the clock counts every allocation instead (small ones included).

Usage: tools/lifetimes.py [--min BYTES] [--every] TRACE.csv...
"""
import argparse
import math
import sys

import rmm_csv


def cls(s):
    l = s.bit_length() - 1
    return 4 * l + ((s >> (l - 2)) & 3 if l >= 2 else 0)


def run(path, minsize, every):
    keys = ("size", "size+prev", "class", "class+prev", "size+ord", "conf")
    last = [dict() for _ in keys]
    conf = {}
    stats = [[0, 0, 0] for _ in keys]  # predicted, hit, within x2
    total = 0
    live = {}
    n = prev = 0
    marker, ordinal = None, {}
    for _, action, ptr, size, _ in rmm_csv.events(path):
        if action == 'allocate':
            size = (size + 511) // 512 * 512
            if size < minsize:
                n += every
                continue
            if marker is None:
                marker = size
            if size == marker:
                ordinal.clear()
            o = ordinal[size] = ordinal.get(size, -1) + 1
            k = (size, (size, prev), cls(size), (cls(size), cls(prev) if prev else 0), (size, o))
            k = k + (k[3],)
            preds = [last[i].get(k[i]) for i in range(5)]
            preds.append(preds[3] if conf.get(k[3], 0) >= 2 else None)
            n += 1
            prev = size
            live[ptr] = (n, k, preds)
        elif action == 'free' and ptr in live:
            start, k, preds = live.pop(ptr)
            life = n - start
            total += 1
            for i, p in enumerate(preds):
                if p is None:
                    continue
                s = stats[i]
                s[0] += 1
                s[1] += abs(p - life) <= 0.1 * life
                s[2] += max(p, 1) <= 2 * max(life, 1) and max(life, 1) <= 2 * max(p, 1)
            old = last[3].get(k[3])
            conf[k[3]] = conf.get(k[3], 0) + 1 if old is not None and abs(life - old) <= old // 8 else 0
            for i in range(5):
                last[i][k[i]] = life
    return keys, stats, total


ap = argparse.ArgumentParser(description="online lifetime predictability per trace")
ap.add_argument("--min", type=int, default=2 << 20, help="smallest block counted, bytes (default 2 MiB: a page)")
ap.add_argument("--every", action="store_true", help="count every allocation as the clock")
ap.add_argument("traces", nargs="+")
args = ap.parse_args()
if args.min < 1:
    sys.exit("lifetimes.py: --min must be at least 1 byte")
for path in args.traces:
    keys, stats, total = run(path, args.min, int(args.every))
    cells = []
    for name, (p, h, x2) in zip(keys, stats):
        d = max(total, 1)
        cells.append("%s cov %.2f hit %.2f x2 %.2f" % (name, p / d, h / d, x2 / d))
    print("%-24s blocks %6d | %s" % (path.split('/')[-1][:24], total, " | ".join(cells)))
