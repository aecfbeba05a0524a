#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

Run from anywhere: python3 tests/fuzz/make_corpus.py. Deterministic (fixed seeds), so a
rerun rewrites the same files. The pickles are shaped like PyTorch memory snapshots
(torch.cuda.memory._dump_snapshot), as tests/test_snapshot.c builds them, written by
Python's own pickle module in protocols 2 to 5.
"""
import os
import pickle
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")
HEADER = "Thread,Time,Action,Pointer,Size,Stream\n"


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- csv ------------------------------------------------------------------------------

def csv_corpus():
    with open(os.path.join(ROOT, "examples", "encoder_varlen.csv")) as f:
        lines = f.readlines()
    write("csv", "example_head.csv", "".join(lines[:40]))
    # A slice from the middle: frees of blocks allocated before it (skipped by prepare).
    write("csv", "example_middle.csv", HEADER + "".join(lines[20000:20030]))
    write("csv", "empty.csv", "")
    write("csv", "header_only.csv", HEADER)
    write("csv", "header_cut.csv", HEADER[:17])
    write("csv", "crlf.csv", (HEADER + "1,00:00:00.000001,allocate,0x1000,512,0\n"
                              "1,00:00:00.000002,free,0x1000,512,0\n").replace("\n", "\r\n"))
    write("csv", "failures.csv", HEADER +
          "7,00:00:01.5,allocate failure,(nil),1073741824,0x7f00\n"
          "7,00:00:01.6,allocate failure,0x0,2048,7f00\n"
          "7,00:00:01.7,allocate failure,0,4096,0\n"
          "7,00:00:01.8,allocate failure,,4096,0\n"
          "7,00:00:01.9,allocate,0xdead000,4096,0\n")
    write("csv", "streams.csv", HEADER +
          "1,00:00:00.000001,allocate,0x200000,2097152,0x1\n"
          "2,00:00:00.000002,allocate,0x400000,3000000,0x2\n"
          "1,00:00:00.000003,free,0x200000,0,0x1\n"
          "2,00:00:00.000004,allocate,0x200000,1024,0x2\n"
          "2,00:00:00.000005,free,0x400000,3000000,0x2\n"
          "1,00:00:00.000006,free,0xbad,64,0x1\n")
    write("csv", "time_edges.csv", HEADER +
          "18446744073709551615,5124095575:59:59.123456789,allocate,0xffffffffffffffff,18446744073709551615,ffffffffffffffff\n"
          "0,00:59:59.9,free,0xffffffffffffffff,0,0\n")
    write("csv", "trailing_empty.csv", HEADER + "1,00:00:00.000001,allocate,0x1000,512,0\n\n\n")
    write("csv", "truncated_last.csv", HEADER + "1,00:00:00.000001,allocate,0x1000,512,0\n1,00:00:00.0000")
    write("csv", "nul_tail.csv", HEADER + "1,00:00:00.000001,allocate,0x1000,512,0\n" + "\0" * 8)
    write("csv", "bad_row.csv", HEADER + "1,00:00:00.000001,allocate,0x1000,512\n")
    write("csv", "realloc_live.csv", HEADER +
          "1,00:00:00.000001,allocate,0x1000,512,0\n1,00:00:00.000002,allocate,0x1000,512,0\n")
    # A short replayable loop with sizes around the pools' limits.
    rng = random.Random(6)
    rows, live, t = [], [], 0
    for _ in range(40):
        t += rng.randint(1, 900)
        stamp = "%02d:%02d:%02d.%06d" % (t // 3600000000, t // 60000000 % 60, t // 1000000 % 60, t % 1000000)
        if live and rng.random() < 0.45:
            p, sz = live.pop(rng.randrange(len(live)))
            rows.append("3,%s,free,0x%x,%d,0\n" % (stamp, p, sz))
        else:
            sz = rng.choice([1, 512, 4096, 1 << 20, (1 << 20) + 1, 10 << 20, 21 << 20, rng.randint(1, 3 << 20)])
            p = 0x7f0000000000 + len(rows) * 0x4000000
            live.append((p, sz))
            rows.append("3,%s,allocate,0x%x,%d,0\n" % (stamp, p, sz))
    write("csv", "loop.csv", HEADER + "".join(rows))


# ---- pickle ---------------------------------------------------------------------------

def entry(action, addr, size, stream=0, t=None, device_free=None):
    e = {"action": action, "addr": addr, "size": size, "stream": stream, "frames": []}
    if action == "oom":
        del e["addr"]
        e["device_free"] = device_free if device_free is not None else addr
    e["time_us"] = t
    return e


def block(size, requested, state, addr=None):
    b = {"size": size, "requested_size": requested, "state": state, "frames": []}
    if addr is not None:
        b["address"] = addr
    return b


def segment(device, addr, stream, blocks, expandable=False):
    total = sum(b["size"] for b in blocks)
    return {"device": device, "address": addr, "total_size": total,
            "allocated_size": sum(b["size"] for b in blocks if b["state"] == "active_allocated"),
            "active_size": sum(b["size"] for b in blocks if b["state"].startswith("active")),
            "requested_size": sum(b["requested_size"] for b in blocks),
            "stream": stream, "segment_type": "large" if total > (2 << 20) else "small",
            "segment_pool_id": (0, 0), "is_expandable": expandable, "frames": [], "blocks": blocks}


def snapshot(free_completed=True, settings=True, big=False):
    S0, S1 = 0x7F0000000000, 0x7F0000200000
    A1, B2, X = 0x7F1000000000, 0x7F1000100000, 0x7F0000100000
    fc = "free_completed" if free_completed else "free_requested"
    trace0 = [
        entry("free_requested", A1, 1000, 0, 5), entry(fc, A1, 1000, 0, 6),
        entry("alloc", X, 2048, 0, 10), entry("alloc", S1, 4096, 7, 11),
        entry("free_requested", X, 2048, 0, 12), entry(fc, X, 2048, 0, 13),
        entry("segment_alloc", S1, 20 << 20, 7, 14), entry("oom", 0, 1 << 30, 0, 15, device_free=123),
        entry(fc, B2, 3000, 7, 16), entry("snapshot", 0, 0, 0, 17),
    ]
    if free_completed:
        trace0.append(entry("free_requested", S1, 4096, 7, 18))
    if big:
        for i in range(60):
            a = 0x7F2000000000 + i * 0x200000
            trace0.append(entry("alloc", a, (i * 7919) % (3 << 20) + 1, i % 2, 100 + i))
            if i % 3:
                trace0.append(entry(fc, a, (i * 7919) % (3 << 20) + 1, i % 2, 200 + i))
    segments = [
        segment(0, S0, 0, [block(512, 100, "active_allocated"), block(1536, 1536, "inactive", S0 + 512),
                           block(2048, 2000, "active_allocated"), block((2 << 20) - 4096, 0, "inactive")]),
        segment(0, S1, 7, [block(4096, 4096, "active_pending_free", S1),
                           block(1 << 20, 1000000, "active_pending_free", S1 + 4096),
                           block((20 << 20) - 4096 - (1 << 20), 0, "inactive", S1 + 4096 + (1 << 20))],
                expandable=True),
        segment(1, 0x7E0000000000, 0, [block(2 << 20, 2 << 20, "active_allocated", 0x7E0000000000)]),
    ]
    snap = {"segments": segments,
            "device_traces": [trace0, [entry("alloc", 0x7E0000000000, 4096, 0, None)]]}
    if settings:
        snap["allocator_settings"] = {
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True,roundup_power2_divisions:[256:4,>:8]",
            "max_split_size": -1, "garbage_collection_threshold": 0.5, "expandable_segments": True,
            "roundup_power2_divisions": {str(1 << i): (4 if i < 8 else 8) for i in range(16)},
        }
    return snap


def snapshot_followed():
    """What the emulation follows (issue 12): segments older than the recording (in
    `segments`, and given back in the trace), segment events, an oom after a release,
    frames on entries and blocks, a private pool, the newer setting names."""
    fr = [{"name": "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc()",
           "filename": "CUDACachingAllocator.cpp", "line": 0},
          {"name": "forward", "filename": "/home/u/model.py", "line": 42}]
    old1, old2, new1, priv = 0x7F5000000000, 0x7F5100000000, 0x7F5200000000, 0x7F5400000000
    seg = segment(0, old1, 0, [block(4 << 20, (4 << 20) - 100, "active_allocated", old1),
                               block(16 << 20, 0, "inactive", old1 + (4 << 20))])
    seg["blocks"][0]["frames"] = fr
    p = segment(0, priv, 0, [block(2 << 20, 1 << 20, "active_allocated", priv)])
    p["segment_pool_id"] = (1, 2)
    trace = [{"action": "segment_alloc", "addr": new1, "size": 18 << 20, "stream": 0},
             dict(entry("alloc", new1, 18 << 20, 0, 100), frames=fr),
             entry("free_requested", new1, 18 << 20, 0, 101), entry("free_completed", new1, 18 << 20, 0, 102),
             {"action": "segment_free", "addr": new1, "size": 18 << 20, "stream": 0, "device_memory_used": 1},
             {"action": "segment_free", "addr": old2, "size": 2 << 20, "stream": 0},
             dict(entry("oom", 0, 100 << 20, 0, 103, device_free=30 << 20), frames=fr),
             {"action": "segment_unmap", "addr": old1 + (4 << 20), "size": 2 << 20, "stream": 0}]
    return {"segments": [seg, p], "device_traces": [trace, []], "host_segments": [], "host_traces": [],
            "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "", "PYTORCH_ALLOC_CONF": "max_split_size_mb:1024",
                                   "max_split_size": 1 << 30, "garbage_collection_threshold": 0.0,
                                   "expandable_segments": False,
                                   "roundup_power2_divisions": [0, 0, 0, 4] + [0] * 12}}


def pickle_corpus():
    shapes = {
        "snap_followed": snapshot_followed(),
        "snap": snapshot(),
        "snap_requested": snapshot(free_completed=False, settings=False),
        "snap_big": snapshot(big=True),
        "no_history": {"segments": snapshot()["segments"], "device_traces": [[]]},
    }
    for proto in (2, 3, 4, 5):
        for name, obj in shapes.items():
            if name != "snap" and proto in (3, 5):
                continue
            write("pickle", "%s_p%d.pickle" % (name, proto), pickle.dumps(obj, protocol=proto))
    # Plain values: every type the reader builds, memo sharing, a self-containing list.
    shared = ["x" * 3, 2 ** 70, -(2 ** 63), 1.5e300, b"\0\1", bytearray(b"ab"), None, True]
    plain = {"ints": [0, 1, 255, 256, 65535, 2 ** 31, -1, 2 ** 64, -(2 ** 100)], "shared": [shared, shared],
             "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)], "set": {1, 2}, "fs": frozenset({3}),
             "unicode": "\u00e9\u4e2d\U0001f600", "nested": [[[[[]]]]]}
    loop = [1]
    loop.append(loop)
    for proto in (2, 4, 5):
        write("pickle", "plain_p%d.pickle" % proto, pickle.dumps(plain, protocol=proto))
    write("pickle", "loop_p4.pickle", pickle.dumps(loop, protocol=4))
    # Refused: an opcode that imports code (GLOBAL), and a truncated snapshot.
    write("pickle", "global_p4.pickle", pickle.dumps(OSError, protocol=4))
    write("pickle", "cut_p4.pickle", pickle.dumps(snapshot(), protocol=4)[:300])


# ---- conf -----------------------------------------------------------------------------

def conf_corpus():
    confs = [
        "", "policy:fragless", "policy:cca,max_split_size_mb:128", "policy:cca-expandable",
        "policy:nocache,limit:32MiB", "expandable_segments:True,policy:cca",
        "roundup_power2_divisions:4", "roundup_power2_divisions:[256:1,512:2,>:8]",
        "roundup_power2_divisions:[1:0, 64:16 ,>:2]", "garbage_collection_threshold:0.8",
        "garbage_collection_threshold:1e-3", "small_size:128KiB,limit:1.5GB",
        " policy : cca , max_split_size_mb : 20 ,", "trace:/dev/null", "oom_report:0,top:false",
        "backend:native", "bogus:1", "policy", "max_split_size_mb:19", "limit:1", "small_size:512",
    ]
    for i, c in enumerate(confs):
        write("conf", "conf_%02d.txt" % i, c)


# ---- ops ------------------------------------------------------------------------------

def ops_corpus():
    rng = random.Random(8)
    for i, n in enumerate([16, 64, 256, 2048]):
        write("ops", "random_%02d.bin" % i, bytes(rng.randrange(256) for _ in range(n)))
    # alloc (op 0) of size class 3 (whole MiB) on stream 0, then free (op 7) of it, ...
    def alloc(cls, v, stream=0):
        return bytes([0, cls]) + struct.pack(">I", v) + bytes([stream])
    seq = b"".join(alloc(3, i, i % 3) for i in range(40))           # fill the device
    seq += b"".join(bytes([7, 0]) for _ in range(20))               # free half
    seq += bytes([14]) + b"".join(alloc(5, 1 << 24 | i) for i in range(10))
    seq += bytes([16, 9]) + alloc(3, 31) + bytes([16, 0]) + bytes([13, 0x41, 19, 77])
    write("ops", "fill_free.bin", seq)
    write("ops", "edges.bin", alloc(6, 0) + alloc(6, 1) + alloc(7, 5) + bytes([11, 2, 12, 3, 1, 2, 3, 4, 5]))


# ---- args -----------------------------------------------------------------------------

def args_corpus():
    # Command lines: the words after `fragless`, separated by NULs (fuzz_args.c).
    lines = [
        ["replay", "examples/encoder_varlen.csv", "--policy", "cca", "--capacity", "1.05x", "--timeline", "10",
         "--format", "json", "--min-capacity"],
        ["replay", "t.csv", "--conf", "policy:cca,max_split_size_mb:128", "--granularity", "64KiB"],
        ["compare", "a.csv", "b.pickle", "--policies", "fragless,cca", "--no-min-capacity", "--format", "csv",
         "--capacity", "80GiB"],
        ["compare", "-", "--granularity", "4KiB", "--capacity", "1e6x"],
        ["doctor", "t.csv", "--format", "text", "--conf", "expandable_segments:True", "--policy", "cca"],
        ["doctor", "s.pickle", "--capacity", "0.95x", "--format", "json"],
        ["report", "s.json", "t.csv", "-o", "r.html", "--capacity", "512MiB", "--policies", "cca,nocache"],
        ["report", "t.csv", "--output", "r.html", "--granularity", "1GiB", "--conf", "limit:1GiB"],
        ["import", "snap.pickle", "-o", "t.csv", "--device", "1"],
        ["import", "--device", "1023", "--output", "x", "y"],
        ["fidelity", "a.pickle", "b.pickle", "--format", "csv"],
        ["fidelity", "--format", "table", "a.pickle"],
        ["top", "--once", "--interval", "0.5", "--dir", "/nonexistent"],
        ["top", "--interval", "3600"],
        ["run", "--conf", "policy:cca", "--trace", "t.csv", "--", "python", "x.py"],
        ["run", "--trace", "/abs/t.csv", "sh", "-c", "true"],
        ["help", "report"], ["version"], ["replay", "--help"], ["top", "-h"],
        # refusals
        ["replay", "x", "--capacity", "0x"], ["report", "x", "-o"], ["doctor", "a", "b"],
        ["compare", "a", "--granularity", "3MiB"], ["replay", "a", "--timeline", "0"],
        ["doctor", "a", "--format", "csv"], ["run", "--conf", "bogus:1", "--", "true"],
        ["import", "a", "--device", "-1", "-o", "x"], ["top", "stray"], ["frobnicate", "--capacity", "1e300x"],
        ["compare"] + ["t%d.csv" % i for i in range(60)],
        ["gen", "--kind", "fsdp", "--ranks", "4", "-o", "job/t.rank%r.csv", "--steps", "3", "--bucket", "8MiB",
         "--jitter", "0.5", "--imbalance", "0.3", "--empty-cache-every", "1", "--no-prefetch", "--seed", "99"],
        ["gen", "--kind", "pipeline", "--ranks", "1", "-o", "x.csv"],
        ["gen", "--kind", "ddp", "-o", "x%q%%.csv", "--hidden", "100"],
    ]
    for i, words in enumerate(lines):
        write("args", "args_%02d.bin" % i, "\0".join(words))


# ---- commands -------------------------------------------------------------------------

def commands_corpus():
    # Byte 0: the options (fuzz_commands.c: capacity, json, --policy, granularity,
    # --policies, fidelity csv); then the file.
    csvs = {
        "failures": HEADER + "7,00:00:01.5,allocate failure,(nil),1073741824,0x7f00\n"
                             "7,00:00:01.9,allocate,0xdead000,4096,0\n"
                             "7,00:00:02.0,allocate,0xdeae000,3000000,0\n"
                             "7,00:00:02.1,free,0xdead000,4096,0\n",
        "streams": HEADER + "1,00:00:00.000001,allocate,0x200000,2097152,0x1\n"
                            "2,00:00:00.000002,allocate,0x400000,3000000,0x2\n"
                            "1,00:00:00.000003,free,0x200000,0,0x1\n"
                            "2,00:00:00.000004,allocate,0x200000,1024,0x2\n"
                            "2,00:00:00.000005,free,0x400000,3000000,0x2\n",
        "one_failure": HEADER + "1,00:00:00.000001,allocate failure,0x0,4096,0\n",
        "header_only": HEADER,
        "bad_row": HEADER + "1,00:00:00.000001,allocate,0x1000,512\n",
    }
    rng = random.Random(15)
    rows, live, t = [], [], 0
    for _ in range(48):
        t += rng.randint(1, 900)
        stamp = "00:00:%02d.%06d" % (t // 1000000 % 60, t % 1000000)
        if live and rng.random() < 0.45:
            p, sz = live.pop(rng.randrange(len(live)))
            rows.append("3,%s,free,0x%x,%d,0\n" % (stamp, p, sz))
        else:
            sz = rng.choice([512, 4096, 1 << 20, (1 << 20) + 1, 10 << 20, 21 << 20, rng.randint(1, 3 << 20)])
            p = 0x7f0000000000 + len(rows) * 0x4000000
            live.append((p, sz))
            rows.append("3,%s,allocate,0x%x,%d,0\n" % (stamp, p, sz))
    csvs["loop"] = HEADER + "".join(rows)
    opts = [0x00, 0x05, 0x1a, 0x46, 0x33, 0x8d, 0x52, 0xe7]
    for i, (name, text) in enumerate(sorted(csvs.items())):
        write("commands", "%s_%02x.bin" % (name, opts[i % len(opts)]), bytes([opts[i % len(opts)]]) + text.encode())
    snaps = {
        "snap": snapshot(),
        "snap_requested": snapshot(free_completed=False, settings=False),
        "no_history": {"segments": snapshot()["segments"], "device_traces": [[]]},
        "no_segments": {"segments": [], "device_traces": [snapshot()["device_traces"][0]]},
    }
    for i, (name, obj) in enumerate(sorted(snaps.items())):
        for k, proto in enumerate((2, 4)):
            o = opts[(i * 2 + k + 3) % len(opts)]
            write("commands", "%s_p%d_%02x.bin" % (name, proto, o), bytes([o]) + pickle.dumps(obj, protocol=proto))
    write("commands", "state_00.bin", b"\0" + b'{"format":"fragless-state","version":1}')
    write("commands", "binary_00.bin", b"\0\x01\x02\x03")


# ---- state_report ---------------------------------------------------------------------

def state_doc(regions, stats=True, policy="fragless", granularity=2 << 20):
    head = '{"format":"fragless-state","version":1,"policy":%s,"granularity":%d,"capacity":%d' % (
        json_str(policy), granularity, 64 << 20)
    if stats:
        head += ',"stats":{"allocated_bytes.all.current":4096,"reserved_bytes.all.current":%d,"num_ooms":1,' \
                '"fragless":{"cached_bytes":0,"largest_free":2097152,"external_fragmentation":0.5}}' % (4 << 20)
    return head + ',"regions":[' + ",".join(regions) + "]}\n"


def json_str(s):
    import json
    return json.dumps(s)


def region(kind, addr, size, pages=None, blocks=(), stream=0):
    r = '{"kind":%s,"addr":"0x%x","size":%d,"stream":"0x%x"' % (json_str(kind), addr, size, stream)
    if pages is not None:
        r += ',"pages":[' + ",".join('["0x%x",%d,%d,%d]' % p for p in pages) + "]"
    r += ',"blocks":[' + ",".join('["0x%x",%d,%d]' % b for b in blocks) + "]}"
    return r


def state_report_corpus():
    d = os.path.join(OUT, "state")
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            write("state_report", name, f.read())
    A = 0x10000000000
    M = 2 << 20
    write("state_report", "no_regions.json", state_doc([]))
    write("state_report", "no_stats.json", state_doc([region("segment", A, 4 * M, None, [(A, 512, 1), (A + 512, M, 0)])],
                                                     stats=False))
    write("state_report", "no_blocks.json", state_doc([region("heap", A, 64 * M, [(A, M, 1, 0), (A + M, M, 0, 0)])]))
    # Pages larger than the granularity (expandable segments' 20 MiB), and smaller (4 KiB).
    write("state_report", "page_sizes.json", state_doc([
        region("expandable segment", A, 80 * M, [(A, 20 * M, 1, 2), (A + 20 * M, 20 * M, 0, 0)],
               [(A, 512, 1), (A + 4096, 3 * M, 1)]),
        region("heap", A + 100 * M, 8 * M, [(A + 100 * M + i * 4096, 4096, 1, i % 3) for i in range(5)])]))
    # 8000 units: several pages per cell (k > 1).
    write("state_report", "many_units.json", state_doc([region("segment", A, 8000 * M, None,
                                                               [(A + i * 7 * M, 5 * M, i % 2) for i in range(100)])]))
    # Names from the file are text, never markup.
    write("state_report", "markup.json", state_doc([region("<script>alert(1)</script>", A, 2 * M, None, [(A, 512, 1)])],
                                                   policy='<img src=x onerror="a()">&'))
    write("state_report", "granularity_4k.json", state_doc([region("block", A, 10000, None, [(A, 10000, 1)])],
                                                           granularity=4096))


# ---- top ------------------------------------------------------------------------------

TOP_RECORD = 496  # sizeof(fli_pub_record), version 2


def top_record(pid=1, comm=b"python", seq=2, device=0, stats=None, rank=-1, uuid=b"GPU-8b0e1c2d-0000-1111-2222-333344445555"):
    # fli_pub_record (src/allocator/allocator.h), version 2: magic, version, size, device,
    # pid, start_time, comm[32], rank, reserved, uuid[48], seq, then updated_ns and
    # fl_stats as 64-bit words.
    rec = struct.pack("<IIIiQQ32siI48sQ", 0x504f5446, 2, TOP_RECORD, device, pid, 0, comm, rank, 0, uuid, seq)
    words = stats if stats is not None else [1700000000000000000] + [(i * 2654435761) % (1 << 40) for i in range(45)]
    rec += b"".join(struct.pack("<Q", w) for w in words)
    return rec[:TOP_RECORD].ljust(TOP_RECORD, b"\0")


def top_corpus():
    # Byte 0: what fuzz_top.c makes right (1 our pid, 2 its start time, 4 header, 8 exact
    # size, 16 two records, 32 a hidden temporary file, 64 even seq); then the records.
    write("top", "ours.bin", bytes([1 | 2 | 4 | 8 | 64]) + top_record())
    write("top", "ours_two.bin", bytes([1 | 4 | 8 | 16 | 64]) + top_record(comm=b"a") + top_record(comm=b"b", device=3))
    write("top", "busy.bin", bytes([1 | 4 | 8]) + top_record(seq=3))
    write("top", "escapes.bin", bytes([1 | 8 | 64]) + top_record(comm=b"\x1b[2J\x1b]0;x\x07\xc2\x9b\xff\xe2\x82\xac"))
    write("top", "utf8.bin", bytes([1 | 2 | 4 | 8 | 64]) + top_record(comm="\u00e9\u4e2d\U0001f600".encode(), rank=3))
    write("top", "uuid_escapes.bin", bytes([1 | 2 | 4 | 8 | 64]) + top_record(uuid=b"GPU-\x1b]52;c;eA==\x07\xe0\x80\x9b", rank=7))
    write("top", "foreign.bin", bytes([4 | 8 | 32]) + top_record(pid=1))
    write("top", "gone.bin", bytes([8]) + top_record(pid=2 ** 31 - 2))
    write("top", "short.bin", bytes([1 | 4]) + top_record()[:100])
    write("top", "long.bin", bytes([1 | 4]) + top_record() + b"x")
    write("top", "bad_magic.bin", bytes([1 | 8 | 64]) + b"XXXX" + top_record()[4:])
    write("top", "bad_version.bin", bytes([1 | 8 | 64]) + top_record()[:4] + b"\x03\0\0\0" + top_record()[8:])
    write("top", "temp_only.bin", bytes([32 | 1]))


if __name__ == "__main__":
    csv_corpus()
    pickle_corpus()
    conf_corpus()
    ops_corpus()
    args_corpus()
    commands_corpus()
    state_report_corpus()
    top_corpus()
