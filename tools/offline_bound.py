#!/usr/bin/env python3
"""How close to the page limit an offline plan gets on an RMM CSV trace.

With every block's lifetime known in advance (what no online allocator has), place
the blocks by decreasing size, each at the lowest offset that no block already placed
holds during its lifetime (the sort-by-size order of XLA's heap simulator), in one
address space. A 2 MiB page costs memory while any live block touches it, as in the
fragless policy; the figure printed is the most pages pinned at once, against the page
limit (peak live bytes rounded up to pages) and the issue 13 bar
max(1.01 x peak live, page limit + 4 MiB). It answers "is the bar reachable at all
on this trace", not "what does fragless do" (`fragless compare` says that).

Usage: tools/offline_bound.py TRACE.csv [--page BYTES]

Streams are ignored (one address space for every stream). Sizes are rounded up to
512 B as the replay rounds them. The placement is quadratic in the number of blocks
alive at once: a minute or two for the traces in ../shared/traces.
"""
import sys

import rmm_csv


def load(path):
    """Blocks as [start op, end op, size]; blocks never freed end after the last op."""
    live, blocks, n = {}, [], 0
    for _, action, ptr, size, _ in rmm_csv.events(path):
        if action == 'allocate':
            live[ptr] = (n, (size + 511) // 512 * 512)
        elif action == 'free' and ptr in live:
            start, size = live.pop(ptr)
            blocks.append((start, n, size))
        n += 1
    blocks.extend((start, n, size) for start, size in live.values())
    return blocks


def peak_live(blocks):
    events = sorted([(s, z) for s, _, z in blocks] + [(e, -z) for _, e, z in blocks])
    cur = peak = 0
    for _, d in events:  # at one op, frees (negative) come first
        cur += d
        peak = max(peak, cur)
    return peak


def plan(blocks):
    """Offsets by decreasing size, lowest free offset over each block's lifetime."""
    order = sorted(range(len(blocks)), key=lambda k: (-blocks[k][2], blocks[k][0]))
    placed, offset = [], [0] * len(blocks)
    for k in order:
        start, end, size = blocks[k]
        busy = sorted((o, o + z) for o, s, e, z in placed if s < end and start < e)
        x = 0
        for lo, hi in busy:
            if x + size <= lo:
                break
            x = max(x, hi)
        offset[k] = x
        placed.append((x, start, end, size))
    return offset


def most_pages_pinned(blocks, offset, page):
    refs, pinned, most = {}, 0, 0
    events = sorted([(e, 0, k) for k, (_, e, _) in enumerate(blocks)] +
                    [(s, 1, k) for k, (s, _, _) in enumerate(blocks)])
    for _, alloc, k in events:  # frees first at the same op
        size = blocks[k][2]
        for p in range(offset[k] // page, (offset[k] + size - 1) // page + 1):
            if alloc:
                pinned += refs.get(p, 0) == 0
                refs[p] = refs.get(p, 0) + 1
            else:
                refs[p] -= 1
                pinned -= refs[p] == 0
        most = max(most, pinned)
    return most


def main():
    args = sys.argv[1:]
    page = 2 << 20
    if '--page' in args:
        i = args.index('--page')
        page = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__.split('\n\n')[3])
    blocks = load(args[0])
    peak = peak_live(blocks)
    limit = -(-peak // page) * page
    bar = max(1.01 * peak, limit + (4 << 20))
    pinned = most_pages_pinned(blocks, plan(blocks), page) * page
    mib = 1 << 20
    print(f"{args[0]}: {len(blocks)} blocks, peak live {peak / mib:.1f} MiB, page limit "
          f"{limit / mib:.0f} MiB, bar {bar / mib:.1f} MiB; offline plan by size: "
          f"{pinned / mib:.0f} MiB pinned at most ({pinned / peak:.4f} x peak live, "
          f"{(pinned - limit) / mib:.0f} MiB above the page limit)")


if __name__ == '__main__':
    main()
