#!/usr/bin/env python3
"""Writes the constructed PyTorch memory snapshots of tests/snapshots/ (deterministic).

Run from anywhere: python3 tests/snapshots/make_snapshots.py. Each snapshot is what
torch.cuda.memory._dump_snapshot() writes for a program run on a small model of PyTorch's
CUDA caching allocator (docs: ../../../shared/brief/FACTS.md, "PyTorch's CUDA caching
allocator"; written from those rules, not from PyTorch's code): requests rounded to
512 B, a small pool (<= 1 MiB, 2 MiB segments) and a large one (20 MiB segments below
10 MiB, else the request rounded to 2 MiB), best fit on the request's stream, the split
rules, merging within a segment, and the out-of-memory path (a failed cudaMalloc gives
back every wholly free segment, then retries; a second failure records an oom entry
with the device's free bytes). Every allocation carries stack frames (C++ frames of the
allocator, then the program's Python frames), as PyTorch records them with
_record_memory_history(stacks="all").

The snapshots (one per case of issue 12's acceptance):
  oom_device1.pickle       two GPUs; device 0 trains normally, device 1 dies of
                           fragmentation: a KV cache's blocks pin every segment
  device1_only.pickle      two device traces, events on device 1 only
  oom_at_capacity.pickle   dies at the capacity: live + asked exceeds it (exhaustion)
  below_peak.pickle        no OOM recorded; doctor --capacity 0.98x is below its peak
  multistream.pickle       three streams, empty_cache() between requests and retries
                           after failed cudaMalloc (segment frees); recording covers it all
  late_start.pickle        the same kind of run, recording started mid-run (segments
                           older than the recording)
  frames.pickle            every block with frames from several sites; an OOM whose
                           fragmented segments are pinned by one site's blocks
  dump_only.pickle         no history at all (recording off): only the segments at dump
"""
import os
import pickle
import random

HERE = os.path.dirname(os.path.abspath(__file__))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SMALL, SMALL_BUFFER, LARGE_BUFFER, MIN_LARGE = 1 * MiB, 2 * MiB, 20 * MiB, 10 * MiB


def round_size(n):
    return max(512, (n + 511) // 512 * 512)


def alloc_size(n):
    if n <= SMALL:
        return SMALL_BUFFER
    if n < MIN_LARGE:
        return LARGE_BUFFER
    return (n + 2 * MiB - 1) // (2 * MiB) * (2 * MiB)


# ---- stack frames ---------------------------------------------------------------------

CPP = [{"name": "torch::unwind::unwind()", "filename": "??", "line": 0},
       {"name": "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(signed char, unsigned long, "
                "CUstream_st*)", "filename": "CUDACachingAllocator.cpp", "line": 0},
       {"name": "at::detail::empty_cuda(c10::ArrayRef<long>, c10::TensorOptions const&)", "filename": "??", "line": 0}]
_frames = {}


def frames(site):
    """One shared list per site (the memo shares it, as PyTorch's symbolizer does)."""
    if site not in _frames:
        if site.startswith("autograd:"):
            node = site.split(":", 1)[1]
            fr = CPP + [{"name": "at::_ops::bmm::call(at::Tensor const&, at::Tensor const&)", "filename": "??", "line": 0},
                        {"name": "torch::autograd::generated::%s::apply(std::vector<at::Tensor>&&)" % node,
                         "filename": "??", "line": 0},
                        {"name": "torch::autograd::Engine::thread_main(std::shared_ptr<torch::autograd::GraphTask> "
                                 "const&)", "filename": "??", "line": 0}]
        else:
            path, line, func = site.split(":")
            fr = CPP + [{"name": "at::_ops::empty::call(c10::ArrayRef<c10::SymInt>)", "filename": "??", "line": 0},
                        {"name": "_call_impl", "filename": "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py",
                         "line": 1750},
                        {"name": func, "filename": "/home/user/project/" + path, "line": int(line)},
                        {"name": "main", "filename": "/home/user/project/train.py", "line": 200}]
        _frames[site] = fr
    return _frames[site]


# ---- the allocator model --------------------------------------------------------------

class Block:
    __slots__ = ("addr", "size", "req", "seg", "allocated", "site")

    def __init__(self, addr, size, seg):
        self.addr, self.size, self.seg = addr, size, seg
        self.req, self.allocated, self.site = 0, False, None


class Segment:
    def __init__(self, addr, size, stream, small):
        self.addr, self.size, self.stream, self.small = addr, size, stream, small
        self.blocks = [Block(addr, size, self)]


class OOM(Exception):
    pass


class Device:
    """One GPU: cudaMalloc'ed ranges at increasing addresses (freed ranges reused first fit)."""

    def __init__(self, index, capacity):
        self.index, self.capacity, self.used = index, capacity, 0
        self.next = 0x7F0000000000 + index * 0x10000000000
        self.holes = []

    def malloc(self, size):
        if self.used + size > self.capacity:
            return None
        self.used += size
        for i, (a, n) in enumerate(self.holes):
            if n >= size:
                self.holes[i] = (a + size, n - size)
                return a
        a, self.next = self.next, self.next + size
        return a

    def free(self, addr, size):
        self.used -= size
        self.holes.append((addr, size))
        self.holes.sort()


class CCA:
    def __init__(self, device, recording=True):
        self.dev, self.segments, self.trace, self.recording = device, [], [], recording
        self.live = {}
        self.t = 1_700_000_000_000_000

    # trace entries, as _dump_snapshot writes them
    def record(self, action, addr, size, stream, site=None, device_free=None):
        self.t += 7
        if not self.recording:
            return
        e = {"action": action, "size": size, "stream": stream, "time_us": self.t,
             "frames": frames(site) if site else []}
        if action == "oom":
            e["device_free"] = device_free
        else:
            e["addr"] = addr
        self.trace.append(e)

    def free_blocks(self, stream, small):
        return [b for s in self.segments if s.stream == stream and s.small == small for b in s.blocks if not b.allocated]

    def release_cached(self):
        for s in list(self.segments):
            if len(s.blocks) == 1 and not s.blocks[0].allocated:
                self.segments.remove(s)
                self.dev.free(s.addr, s.size)
                self.record("segment_free", s.addr, s.size, s.stream)

    empty_cache = release_cached

    def malloc(self, req, stream, site):
        size = round_size(req)
        small = size <= SMALL
        fits = [b for b in self.free_blocks(stream, small) if b.size >= size]
        if fits:
            b = min(fits, key=lambda b: (b.size, b.addr))
        else:
            n = alloc_size(size)
            addr = self.dev.malloc(n)
            if addr is None:
                self.release_cached()
                addr = self.dev.malloc(n)
            if addr is None:
                self.record("oom", 0, req, stream, site, device_free=self.dev.capacity - self.dev.used)
                raise OOM(req)
            seg = Segment(addr, n, stream, small)
            self.segments.append(seg)
            self.record("segment_alloc", addr, n, stream)
            b = seg.blocks[0]
        rest = b.size - size
        if (small and rest >= 512) or (not small and rest > SMALL):
            blocks = b.seg.blocks
            i = blocks.index(b)
            tail = Block(b.addr + size, rest, b.seg)
            b.size = size
            blocks.insert(i + 1, tail)
        b.allocated, b.req, b.site = True, req, site
        self.live[b.addr] = b
        self.record("alloc", b.addr, req, stream, site)
        return b.addr

    def free(self, addr, stream_done=True):
        b = self.live.pop(addr)
        self.record("free_requested", addr, b.req, b.seg.stream)
        self.record("free_completed", addr, b.req, b.seg.stream)
        b.allocated, b.site = False, None
        blocks = b.seg.blocks
        i = blocks.index(b)
        if i + 1 < len(blocks) and not blocks[i + 1].allocated:
            b.size += blocks.pop(i + 1).size
        if i > 0 and not blocks[i - 1].allocated:
            prev = blocks[i - 1]
            prev.size += b.size
            blocks.pop(i)

    def segments_dump(self):
        out = []
        for s in sorted(self.segments, key=lambda s: s.addr):
            blocks = [{"address": b.addr, "size": b.size, "requested_size": b.req if b.allocated else 0,
                       "state": "active_allocated" if b.allocated else "inactive",
                       "frames": frames(b.site) if b.allocated and b.site else []} for b in s.blocks]
            out.append({"device": self.dev.index, "address": s.addr, "total_size": s.size,
                        "allocated_size": sum(b["size"] for b in blocks if b["state"] == "active_allocated"),
                        "active_size": sum(b["size"] for b in blocks if b["state"] == "active_allocated"),
                        "requested_size": sum(b["requested_size"] for b in blocks), "stream": s.stream,
                        "segment_type": "small" if s.small else "large", "segment_pool_id": (0, 0),
                        "is_expandable": False, "frames": [], "blocks": blocks})
        return out


SETTINGS = {"PYTORCH_CUDA_ALLOC_CONF": "", "max_split_size": -1, "garbage_collection_threshold": 0.0,
            "expandable_segments": False, "pinned_num_register_threads": 1, "release_lock_on_cudamalloc": False,
            "pinned_use_cuda_host_register": False, "graph_capture_record_stream_reuse": False,
            "roundup_power2_divisions": {str(1 << i): 0 for i in range(16)}}


def dump(name, allocators, n_devices=None):
    n = n_devices or len(allocators)
    traces = [[] for _ in range(n)]
    segments = []
    for a in allocators:
        traces[a.dev.index] = a.trace
        segments += a.segments_dump()
    snap = {"segments": segments, "device_traces": traces, "allocator_settings": SETTINGS,
            "external_annotations": [], "host_segments": [], "host_traces": []}
    with open(os.path.join(HERE, name), "wb") as f:
        pickle.dump(snap, f, protocol=4)


# ---- workloads ------------------------------------------------------------------------

def training(cca, rng, steps, stream=0, scale=1.0):
    """Weights, then steps of variable-length activations freed in reverse, gradients,
    an optimizer's temporaries."""
    weights = [cca.malloc(int(rng.choice([4, 16, 64]) * MiB * scale), stream, "model.py:31:__init__")
               for _ in range(12)]
    for _ in range(steps):
        seq = rng.randint(64, 512)
        acts = []
        for layer in range(8):
            acts.append(cca.malloc(int(seq * 96 * KiB * scale) + rng.randint(0, 4096), stream, "model.py:57:forward"))
            acts.append(cca.malloc(int(seq * 3 * KiB * scale) + 17, stream, "model.py:61:forward"))
        grads = [cca.malloc(int(seq * 64 * KiB * scale), stream, "autograd:MmBackward0") for _ in range(4)]
        for a in reversed(acts):
            cca.free(a)
        tmp = cca.malloc(int(24 * MiB * scale), stream, "optim.py:88:step")
        for g in grads:
            cca.free(g)
        cca.free(tmp)
    return weights


def fragment(cca, rng, capacity_left, stream=0):
    """A KV cache grown while a batch's activations are built: each 256 MiB segment holds
    a 12 MiB cache block after every 28 MiB activation; when the batch is done, the
    activations go and the cache blocks stay, 28 MiB holes between them."""
    pins, acts = [], []
    while cca.dev.capacity - cca.dev.used > capacity_left:
        big = cca.malloc(256 * MiB - rng.randint(0, 3) * 512, stream, "model.py:140:forward")
        cca.free(big)
        for _ in range(6):
            acts.append(cca.malloc(28 * MiB, stream, "model.py:140:forward"))
            pins.append(cca.malloc(12 * MiB, stream, "kv_cache.py:88:append"))
    for a in acts:
        cca.free(a)
    return pins


def oom_device1():
    rng = random.Random(1)
    d0 = CCA(Device(0, 40 * GiB))
    training(d0, rng, 6)
    d1 = CCA(Device(1, 24 * GiB))
    training(d1, rng, 4)
    fragment(d1, rng, 200 * MiB)
    try:
        d1.malloc(int(4.94 * GiB) // 512 * 512, 0, "model.py:152:forward")
        raise SystemExit("oom_device1: expected an out-of-memory")
    except OOM:
        pass
    dump("oom_device1.pickle", [d0, d1])


def device1_only():
    rng = random.Random(2)
    d1 = CCA(Device(1, 40 * GiB))
    training(d1, rng, 8)
    dump("device1_only.pickle", [d1], n_devices=2)


def oom_at_capacity():
    rng = random.Random(3)
    cap = 80 * GiB - 512 * MiB
    d = CCA(Device(0, cap))
    keep = [d.malloc(2 * GiB + rng.randint(0, 64) * MiB, 0, "model.py:31:__init__") for _ in range(30)]
    training(d, rng, 3, scale=4.0)
    try:
        while True:
            keep.append(d.malloc(int(4.94 * GiB) // 512 * 512, 0, "model.py:152:forward"))
    except OOM:
        pass
    dump("oom_at_capacity.pickle", [d])


def below_peak():
    rng = random.Random(4)
    d = CCA(Device(0, 64 * GiB))
    training(d, rng, 3)
    pins = fragment(d, rng, 40 * GiB)
    for p in pins[::2]:
        d.free(p)
    big = [d.malloc(rng.randint(30, 90) * MiB, 0, "model.py:171:decode") for _ in range(60)]
    for b in big[::3]:
        d.free(b)
    dump("below_peak.pickle", [d])


def serving(cca, rng, requests, streams, empty_cache=True):
    """An inference server: per request, activations on the compute stream, buffers on a
    communication stream and a copy stream; empty_cache() between requests."""
    model = [cca.malloc(rng.choice([8, 32, 96]) * MiB, streams[0], "server.py:20:load") for _ in range(10)]
    for r in range(requests):
        batch = rng.randint(1, 16)
        acts = [cca.malloc(batch * rng.randint(2, 10) * MiB + rng.randint(0, 9999), streams[0], "model.py:57:forward")
                for _ in range(rng.randint(6, 12))]
        comm = [cca.malloc(batch * rng.randint(1, 4) * MiB, streams[1], "dist.py:44:all_gather") for _ in range(3)]
        copy = [cca.malloc(rng.randint(1, 900) * KiB, streams[2], "server.py:77:to_host") for _ in range(5)]
        for a in acts[::-1]:
            cca.free(a)
        for c in comm + copy:
            cca.free(c)
        if empty_cache and r % 3 == 2:
            cca.empty_cache()
    return model


def multistream():
    rng = random.Random(5)
    d = CCA(Device(0, 3 * GiB))
    serving(d, rng, 60, [0x5581A0, 0x5581B0, 0x5581C0])
    d.retries = getattr(d, "retries", 0)
    dump("multistream.pickle", [d])


def late_start():
    rng = random.Random(6)
    d = CCA(Device(0, 3 * GiB), recording=False)
    model = serving(d, rng, 12, [0x5581A0, 0x5581B0, 0x5581C0], empty_cache=False)
    keep = [d.malloc(rng.randint(3, 60) * MiB, 0x5581A0, "cache.py:12:fill") for _ in range(8)]
    for k in keep[::2]:
        d.free(k)
    d.recording = True
    serving(d, rng, 20, [0x5581A0, 0x5581B0, 0x5581C0], empty_cache=False)
    for k in keep[1::2]:
        d.free(k)
    del model
    dump("late_start.pickle", [d])


def frames_case():
    rng = random.Random(7)
    d = CCA(Device(0, 6 * GiB))
    training(d, rng, 4)
    fragment(d, rng, 200 * MiB)
    try:
        d.malloc(600 * MiB, 0, "model.py:152:forward")
        raise SystemExit("frames: expected an out-of-memory")
    except OOM:
        pass
    dump("frames.pickle", [d])


def dump_only():
    rng = random.Random(8)
    d = CCA(Device(0, 40 * GiB), recording=False)
    training(d, rng, 5)
    fragment(d, rng, 36 * GiB)
    dump("dump_only.pickle", [d])


if __name__ == "__main__":
    oom_device1()
    device1_only()
    oom_at_capacity()
    below_peak()
    multistream()
    late_start()
    frames_case()
    dump_only()
    for n in sorted(os.listdir(HERE)):
        if n.endswith(".pickle"):
            print("%-24s %8d bytes" % (n, os.path.getsize(os.path.join(HERE, n))))
