"""Plug fragless into PyTorch as its CUDA allocator (torch.cuda.memory.CUDAPluggableAllocator).

install() makes fragless the allocator of every CUDA tensor; pool() makes a
torch.cuda.MemPool backed by fragless, for torch.cuda.use_mem_pool(...) around part of a
program only. PyTorch's Python API registers only malloc and free of a pluggable
allocator; its other hooks (statistics, empty_cache, the memory fraction, record_stream,
snapshots, CUDA graph pools) are C++-only or refuse a plug-in. So install() also replaces
PyTorch's memory functions (torch.cuda.*, torch.cuda.memory.*, and torch.accelerator.*
where CUDA is the accelerator) with fragless's, keeping each one's signature, and wraps
torch.cuda.CUDAGraph (and torch.accelerator.Graph) so that the memory fragless keeps for
a graph goes back when the graph is reset or garbage collected. ROUTED lists what each
call does under fragless (docs/pytorch.md's table).

Supported PyTorch: 2.7 and later (MIN_TORCH); install() refuses older ones, saying what
still works.

Every failure raises fragless.Error or a subclass (fragless.InvalidArgumentError for a bad
FRAGLESS_CONF key, fragless.DeviceError without a GPU, ...) with the library's message.
"""
import collections
import ctypes
import functools
import inspect
import os
import pickle
import re
import tempfile
import threading
import weakref

from . import Error, FileError, NotFoundError, library_path, _last, _raise_last
from . import memory_summary as _summary, reset_peak_stats as _reset_peak
from . import set_memory_fraction as _set_fraction, stats as _stats, _library

MIN_TORCH = (2, 7)
# The entry points of pool slots 1..FRAGLESS_TORCH_POOLS (include/fragless_torch.h).
_POOL_ENTRY_POINTS = (("fragless_torch_pool1_malloc", "fragless_torch_pool1_free"),
                      ("fragless_torch_pool2_malloc", "fragless_torch_pool2_free"),
                      ("fragless_torch_pool3_malloc", "fragless_torch_pool3_free"),
                      ("fragless_torch_pool4_malloc", "fragless_torch_pool4_free"))
_installed = False
_lock = threading.Lock()


# ---- versions --------------------------------------------------------------------------

def _version_tuple(text):
    m = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_torch(torch, pools=False):
    """Raise Error unless this PyTorch is one fragless.torch supports: version
    MIN_TORCH or later, with the pluggable-allocator API, PyTorch's out-of-memory type,
    the C++11 string ABI (the out-of-memory exception crosses with it), and for pools
    torch.cuda.MemPool / use_mem_pool."""
    version = getattr(torch, "__version__", "unknown")
    need = "%d.%d" % MIN_TORCH
    still = ("What works without it: the fragless command line (fragless compare, doctor, report and replay "
             "on traces and on torch.cuda.memory._dump_snapshot pickles) and fragless.stats()/snapshot() of "
             "the C library.")
    if _version_tuple(version) < MIN_TORCH:
        raise Error("fragless.torch needs PyTorch %s or later; this is PyTorch %s. %s" % (need, version, still))
    cuda = getattr(torch, "cuda", None)
    memory = getattr(cuda, "memory", None)
    missing = [name for name, ok in (
        ("torch.cuda.memory.CUDAPluggableAllocator", hasattr(memory, "CUDAPluggableAllocator")),
        ("torch.cuda.memory.change_current_allocator", hasattr(memory, "change_current_allocator")),
        ("torch.cuda.OutOfMemoryError", hasattr(cuda, "OutOfMemoryError")),
        ("torch.cuda.MemPool", not pools or hasattr(cuda, "MemPool")),
        ("torch.cuda.use_mem_pool", not pools or hasattr(cuda, "use_mem_pool"))) if not ok]
    if missing:
        raise Error("fragless.torch needs %s, which this PyTorch %s lacks (a build without CUDA?). %s"
                            % (", ".join(missing), version, still))
    abi = getattr(torch, "compiled_with_cxx11_abi", None)
    if abi is not None and not abi():
        raise Error("fragless.torch needs a PyTorch built with the C++11 string ABI (PyTorch's wheels from "
                            "%s on are); this PyTorch %s is not, so an out-of-memory could not arrive as "
                            "torch.OutOfMemoryError. %s" % (need, version, still))


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise Error("fragless.torch needs PyTorch: %s" % e)
    return torch


def _conf_string(conf, base=""):
    """FRAGLESS_CONF text (key:value,key:value, PyTorch's syntax) for the keyword
    arguments on top of `base` (what the environment already says): a keyword replaces
    the same key, other keys of base are kept."""
    merged = {}
    for item in filter(None, (part.strip() for part in base.split(","))):
        key, _, value = item.partition(":")
        merged[key.strip()] = value.strip()
    merged.update((k, str(v)) for k, v in conf.items())
    return ",".join("%s:%s" % (k, v) for k, v in merged.items())


# ---- install and pools -----------------------------------------------------------------

def install(**conf):
    """Make fragless PyTorch's CUDA allocator, with FRAGLESS_CONF keys as keyword arguments
    (e.g. install(limit="40GiB")). Must run before the first CUDA allocation."""
    global _installed
    if _installed:
        return
    torch = _import_torch()
    check_torch(torch)
    if torch.cuda.is_initialized() and torch.cuda.memory_allocated() > 0:
        raise Error("fragless.torch.install() came too late: PyTorch has already allocated CUDA memory "
                            "with its own allocator; call it first thing, before any tensor is put on the GPU")
    merged = _conf_string(conf, os.environ.get("FRAGLESS_CONF", ""))
    if _library().fragless_torch_conf_check(merged.encode()) != 0:
        _raise_last("fragless.torch.install(): nothing was changed")
    if conf:
        os.environ["FRAGLESS_CONF"] = merged
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "fragless_torch_malloc", "fragless_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(alloc)
    except RuntimeError as e:
        raise Error("fragless.torch.install() came too late: %s" % e)
    _route(torch)
    _wrap_graphs(torch)
    _installed = True


def pool(use_on_oom=False, no_split=False, **conf):
    """A torch.cuda.MemPool whose memory comes from fragless, for
    `with torch.cuda.use_mem_pool(p):` around what should live there (a KV cache, the
    activations). conf: FRAGLESS_CONF keys over the environment's, for this pool alone
    (its own allocator per device, e.g. pool(limit="20GiB")). Works with or without
    install(); inside the pool PyTorch's allocator carves tensors out of the segments it
    gets from fragless. use_on_oom, no_split: MemPool's own. At most
    FRAGLESS_TORCH_POOLS (4) pools per process; fragless.stats(device, pool=p) reads
    one's statistics."""
    torch = _import_torch()
    check_torch(torch, pools=True)
    lib = _library()
    slot = lib.fragless_torch_pool_open(_conf_string(conf, os.environ.get("FRAGLESS_CONF", "")).encode())
    if slot < 0:
        _raise_last("fragless.torch.pool()")
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), *_POOL_ENTRY_POINTS[slot - 1])
    kwargs = {}
    params = inspect.signature(torch.cuda.MemPool.__init__).parameters
    if "use_on_oom" in params:
        kwargs["use_on_oom"] = use_on_oom
    if "no_split" in params:
        kwargs["no_split"] = no_split
    mp = torch.cuda.MemPool(alloc.allocator(), **kwargs)
    mp._fragless_slot = slot
    mp._fragless_allocator = alloc  # its function pointers must outlive the pool
    _wrap_graphs(torch)
    return mp


# ---- the routed functions --------------------------------------------------------------

def _device_index(torch, device):
    """PyTorch's device argument as an ordinal. None: the current device once CUDA is
    initialized, else 0 (asking would initialize it)."""
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    index = getattr(device, "index", None)
    if index is None:
        return torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    return index


_POOLS = ("all", "large_pool", "small_pool")
_METRICS = ("current", "peak", "allocated", "freed")
_accumulated_base = {}  # device -> the accumulated values at reset_accumulated_memory_stats


def _pytorch_stats(device):
    """fragless's statistics under PyTorch's memory_stats() keys (docs/pytorch.md: what each means
    under fragless). {} before the device's first allocation, as PyTorch."""
    flat = _stats(device)
    if not flat:
        return {}
    out = collections.OrderedDict()
    for name, src in (("allocation", "allocation"), ("active", "allocation"),
                      ("allocated_bytes", "allocated_bytes"), ("active_bytes", "active_bytes"),
                      ("requested_bytes", "requested_bytes"), ("reserved_bytes", "reserved_bytes")):
        for m in _METRICS:
            v = flat.get("%s.all.%s" % (src, m), 0)
            out["%s.all.%s" % (name, m)] = v
            out["%s.large_pool.%s" % (name, m)] = v  # fragless keeps no separate small pool
            out["%s.small_pool.%s" % (name, m)] = 0
    pages_now = flat.get("num_device_alloc", 0) - flat.get("num_device_free", 0)
    seg = {"current": pages_now, "peak": pages_now, "allocated": flat.get("num_device_alloc", 0),
           "freed": flat.get("num_device_free", 0)}
    split = {"current": flat.get("inactive_split_bytes.all.current", 0),
             "peak": flat.get("inactive_split_bytes.all.peak", 0), "allocated": 0, "freed": 0}
    for m in _METRICS:
        for p in _POOLS:
            out["segment.%s.%s" % (p, m)] = seg[m] if p != "small_pool" else 0
            out["inactive_split.%s.%s" % (p, m)] = 0
            out["inactive_split_bytes.%s.%s" % (p, m)] = split[m] if p != "small_pool" else 0
        out["oversize_allocations.%s" % m] = 0
        out["oversize_segments.%s" % m] = 0
    for key in ("num_alloc_retries", "num_ooms", "num_sync_all_streams", "num_device_alloc", "num_device_free"):
        out[key] = flat.get(key, 0)
    out["max_split_size"] = -1
    base = _accumulated_base.get(device)
    if base:
        for key, v in base.items():
            if key in out:
                out[key] = max(0, out[key] - v)
    out.update((k, v) for k, v in flat.items() if k.startswith("fragless."))
    return out


def _nested(flat):
    nested = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _snapshot_segments(device):
    """fragless's state as PyTorch's memory_snapshot() segments: each run of mapped pages
    (cca: each segment) one segment of active_allocated and inactive blocks."""
    import json
    fd, path = tempfile.mkstemp(suffix=".json", prefix="fragless-state-")
    os.close(fd)
    try:
        try:
            from . import snapshot as _state
            _state(path, device)
        except NotFoundError:
            return []  # nothing allocated on that device yet: no segments, as PyTorch says
        with open(path) as f:
            state = json.load(f)
    finally:
        os.unlink(path)
    segments = []
    for region in state.get("regions", []):
        stream = int(region.get("stream", "0x0"), 16)
        live = sorted((int(b[0], 16), b[1]) for b in region.get("blocks", []) if b[2])
        pages = region.get("pages")
        if pages:
            runs, start, end = [], None, None
            for addr, size, mapped, _pins in ((int(p[0], 16), p[1], p[2], p[3]) for p in pages):
                if mapped and start is not None and addr == end:
                    end += size
                    continue
                if start is not None:
                    runs.append((start, end))
                start, end = (addr, addr + size) if mapped else (None, None)
            if start is not None:
                runs.append((start, end))
        else:
            runs = [(int(region["addr"], 16), int(region["addr"], 16) + region["size"])]
        for lo, hi in runs:
            blocks, at = [], lo
            for addr, size in live:
                if addr < lo or addr >= hi:
                    continue
                if addr > at:
                    blocks.append({"address": at, "size": addr - at, "requested_size": 0, "state": "inactive",
                                   "frames": []})
                blocks.append({"address": addr, "size": size, "requested_size": size, "state": "active_allocated",
                               "frames": []})
                at = addr + size
            if at < hi:
                blocks.append({"address": at, "size": hi - at, "requested_size": 0, "state": "inactive",
                               "frames": []})
            allocated = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
            segments.append({"device": device, "address": lo, "total_size": hi - lo, "allocated_size": allocated,
                             "active_size": allocated, "requested_size": allocated, "stream": stream,
                             "segment_type": "large", "segment_pool_id": (0, 0),
                             "is_expandable": bool(pages), "frames": [], "blocks": blocks})
    return segments


_history = {}  # device -> the CSV file fragless records into for _record_memory_history


def _trace_events(path):
    """The rows of a trace fragless recorded, as PyTorch's device_traces entries."""
    events = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                cols = line.strip().split(",")
                if len(cols) < 6:
                    continue
                h, m, sec = cols[1].split(":")
                t = int((int(h) * 3600 + int(m) * 60 + float(sec)) * 1e6)
                action = {"allocate": "alloc", "free": "free_completed", "allocate failure": "oom"}.get(cols[2])
                if action:
                    events.append({"action": action, "addr": int(cols[3], 16), "size": int(cols[4]),
                                   "stream": int(cols[5] or "0", 16), "time_us": t, "frames": []})
    except OSError as e:
        raise FileError("the memory history fragless records (%s) cannot be read: %s" % (path, e), 5)
    return events


def _make_routes(torch):
    """name -> implementation taking the original's parameters by name."""
    lib = _library()
    idx = functools.partial(_device_index, torch)

    def dev(args):
        return idx(args.get("device", args.get("device_index")))

    def stat(key):
        return lambda a: _pytorch_stats(dev(a)).get(key, 0)

    def empty_cache(a):
        if lib.fragless_torch_empty_cache() != 0:
            _raise_last()

    def set_fraction(a):
        _set_fraction(a["fraction"], dev(a))

    def get_fraction(a):
        s = _stats(dev(a))
        return s["fragless.limit"] / s["fragless.capacity"] if s else 1.0

    def reset_accumulated(a):
        d = dev(a)
        _accumulated_base.pop(d, None)
        now = _pytorch_stats(d)
        _accumulated_base[d] = {k: v for k, v in now.items()
                                if k.endswith((".allocated", ".freed")) or k.startswith("num_")}

    def reset_peak(a):
        _reset_peak(dev(a))

    def mem_get_info(a, original):
        d = dev(a)
        s = _stats(d)
        try:
            free, total = original(d)
        except RuntimeError:
            if not s:
                raise
            free, total = s["fragless.capacity"] - s["reserved_bytes.all.current"], s["fragless.capacity"]
        if s:  # what fragless may still obtain under its limit, cached pages included
            room = s["fragless.limit"] - s["reserved_bytes.all.current"] + s.get("fragless.cached_bytes", 0)
            free = max(0, min(free + s.get("fragless.cached_bytes", 0), room))
        return (free, total)

    def memory_snapshot(a):
        return _snapshot_segments(idx(None))

    def record_history(a):
        enabled = a.get("enabled", "all")
        if isinstance(enabled, bool):  # the legacy signature: enabled=True/False
            enabled = "all" if enabled else None
        d = idx(None)
        if enabled is None:
            if lib.fragless_torch_record(d, None) != 0:
                _raise_last("_record_memory_history(None) under fragless")
            return
        old = _history.get(d)
        if old and lib.fragless_torch_record(d, None) != 0:
            _raise_last("_record_memory_history under fragless")
        try:
            fd, path = tempfile.mkstemp(suffix=".csv", prefix="fragless-history-")
        except OSError as e:
            raise FileError("_record_memory_history under fragless: no file to record into: %s" % e, 5)
        os.close(fd)
        if lib.fragless_torch_record(d, os.fsencode(path)) != 0:
            os.unlink(path)
            _raise_last("_record_memory_history under fragless")
        _history[d] = path
        if old and old != path:
            os.unlink(old)

    def snapshot(a):
        d = idx(a.get("device"))
        traces = [[] for _ in range(d + 1)]
        if d in _history:
            if _library().fragless_torch_record_flush(d) != 0:
                _raise_last("_snapshot under fragless: the recorded history")
            traces[d] = _trace_events(_history[d])
        return {"segments": _snapshot_segments(d), "device_traces": traces,
                "allocator_settings": {"allocator": "fragless", "FRAGLESS_CONF": os.environ.get("FRAGLESS_CONF", "")}}

    def dump_snapshot(a):
        filename = a.get("filename", "dump_snapshot.pickle")
        state = snapshot({})
        try:
            with open(filename, "wb") as f:
                pickle.dump(state, f)
        except OSError as e:
            raise FileError("_dump_snapshot under fragless: cannot write %s: %s" % (filename, e), 5)

    def summary(a):
        return _summary(dev(a))

    return {
        "empty_cache": empty_cache,
        "set_per_process_memory_fraction": set_fraction,
        "get_per_process_memory_fraction": get_fraction,
        "memory_stats": lambda a: _pytorch_stats(dev(a)),
        "memory_stats_as_nested_dict": lambda a: _nested(_pytorch_stats(dev(a))),
        "reset_accumulated_memory_stats": reset_accumulated,
        "reset_peak_memory_stats": reset_peak,
        "reset_max_memory_allocated": reset_peak,
        "reset_max_memory_cached": reset_peak,
        "memory_allocated": stat("allocated_bytes.all.current"),
        "max_memory_allocated": stat("allocated_bytes.all.peak"),
        "memory_reserved": stat("reserved_bytes.all.current"),
        "max_memory_reserved": stat("reserved_bytes.all.peak"),
        "memory_cached": stat("reserved_bytes.all.current"),
        "max_memory_cached": stat("reserved_bytes.all.peak"),
        "memory_summary": summary,
        "memory_snapshot": memory_snapshot,
        "mem_get_info": mem_get_info,
        "get_memory_info": mem_get_info,  # torch.accelerator's name
        "_record_memory_history": record_history,
        "_snapshot": snapshot,
        "_dump_snapshot": dump_snapshot,
    }


# What each call does under fragless (docs/pytorch.md's table says the same in prose).
ROUTED = {
    "empty_cache": "fragless.empty_cache(): cached pages back to the driver (never a CUDA graph's); "
                   "during a capture it raises, giving nothing back",
    "set_per_process_memory_fraction": "fragless's limit = fraction x the device's memory",
    "get_per_process_memory_fraction": "fragless's limit / the device's memory",
    "memory_stats": "fragless's statistics under PyTorch's keys; large_pool = all, small_pool = 0",
    "memory_stats_as_nested_dict": "the same, nested",
    "reset_accumulated_memory_stats": "the .allocated/.freed totals and num_* counters start again from 0",
    "reset_peak_memory_stats": "peaks start again from the current values",
    "reset_max_memory_allocated": "as reset_peak_memory_stats",
    "reset_max_memory_cached": "as reset_peak_memory_stats",
    "memory_allocated": "allocated_bytes.all.current (blocks kept for CUDA graphs excluded)",
    "max_memory_allocated": "allocated_bytes.all.peak",
    "memory_reserved": "reserved_bytes.all.current: physical memory fragless holds",
    "max_memory_reserved": "reserved_bytes.all.peak",
    "memory_cached": "as memory_reserved",
    "max_memory_cached": "as max_memory_reserved",
    "memory_summary": "fragless's summary table",
    "memory_snapshot": "fragless's state as PyTorch-format segments (mapped page runs, blocks)",
    "mem_get_info": "(free, total): the driver's free plus fragless's cached pages, capped by fragless's limit",
    "get_memory_info": "as mem_get_info (torch.accelerator)",
    "_record_memory_history": "fragless records every allocation and free from now on (None: stops)",
    "_snapshot": "segments + the recorded events as device_traces (PyTorch's snapshot format)",
    "_dump_snapshot": "that snapshot as a pickle `fragless compare` and memory_viz read",
}


def _adopt(original, impl, name):
    """impl under original's name, docstring and exact signature: arguments are bound
    by that signature and handed to impl by name."""
    sig = inspect.signature(original)
    takes_original = len(inspect.signature(impl).parameters) > 1

    def routed(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        return impl(a, original) if takes_original else impl(a)

    routed.__name__ = getattr(original, "__name__", name)
    routed.__qualname__ = getattr(original, "__qualname__", name)
    routed.__module__ = getattr(original, "__module__", None)
    routed.__doc__ = "fragless: %s.\n\n%s" % (ROUTED.get(name, ""), getattr(original, "__doc__", "") or "")
    routed.__signature__ = sig
    routed._fragless_original = original
    return routed


def _route(torch):
    """Point PyTorch's memory functions at fragless (ROUTED; names a module lacks are left out)."""
    routes = _make_routes(torch)
    modules = [torch.cuda, getattr(torch.cuda, "memory", None)]
    acc = getattr(torch, "accelerator", None)
    try:
        cuda_accelerator = acc is not None and acc.current_accelerator() is not None and \
            acc.current_accelerator().type == "cuda"
    except Exception:  # noqa: BLE001 - no accelerator API, or none available
        cuda_accelerator = False
    # torch.accelerator's functions call C++ directly: routed when CUDA is the
    # accelerator (on a machine without a GPU, current_accelerator() is None).
    if acc is not None and (cuda_accelerator or os.environ.get("FRAGLESS_ROUTE_ACCELERATOR") == "1"):
        modules += [acc, getattr(acc, "memory", None)]
    for module in filter(None, modules):
        for name, impl in routes.items():
            original = getattr(module, name, None)
            if original is None or not callable(original):
                continue
            original = getattr(original, "_fragless_original", original)
            setattr(module, name, _adopt(original, impl, name))

    lib = _library()
    original = getattr(torch.Tensor.record_stream, "_fragless_original", torch.Tensor.record_stream)

    def record_stream(tensor, stream):
        original(tensor, stream)
        if lib.fragless_torch_record_stream(tensor.untyped_storage().data_ptr(), stream.cuda_stream) != 0:
            error = _last("Tensor.record_stream under fragless")
            # NotFoundError: memory fragless did not allocate (torch.from_blob, DLPack,
            # another process's IPC block, a MemPool's carved tensor), whose owner keeps
            # track of streams, as PyTorch's own allocator leaves such memory alone.
            if not isinstance(error, NotFoundError):
                raise error

    record_stream._fragless_original = original
    torch.Tensor.record_stream = record_stream


# ---- CUDA graphs -----------------------------------------------------------------------

class _GraphPools:
    """Which captures fragless keeps memory for, per PyTorch graph pool: graphs captured
    into one pool (make_graphed_callables' forward and backward, pool=other.pool())
    may use each other's memory, so a pool's captures are released together when its
    last graph is reset or collected."""

    def __init__(self):
        self.pools = {}  # pool id -> {"captures": set((device, capture)), "graphs": count}

    def captured(self, graph, pool_id, device, capture):
        with _lock:
            entry = self.pools.setdefault(pool_id, {"captures": set(), "graphs": 0})
            entry["captures"].add((device, capture))
            if getattr(graph, "_fragless_pool", None) != pool_id:
                self.drop_locked(getattr(graph, "_fragless_pool", None))
                entry["graphs"] += 1
                graph._fragless_pool = pool_id
                graph._fragless_finalizer = weakref.finalize(graph, self.drop, pool_id)

    def drop_locked(self, pool_id):
        entry = self.pools.get(pool_id)
        if entry is None:
            return []
        entry["graphs"] -= 1
        if entry["graphs"] > 0:
            return []
        del self.pools[pool_id]
        return sorted(entry["captures"])

    def drop(self, pool_id):
        """Release the pool's captures once its last graph is gone. A failure raises Error
        after every capture was tried (from garbage collection, where there is no caller,
        Python prints it as an ignored exception)."""
        with _lock:
            captures = self.drop_locked(pool_id)
        lib = _library()
        failed = None
        for device, capture in captures:
            if lib.fragless_torch_graph_release(device, capture) != 0 and failed is None:
                failed = _last("releasing CUDA graph capture 0x%x of device %d" % (capture, device))
        if failed is not None:
            raise failed

    def reset(self, graph):
        finalizer = getattr(graph, "_fragless_finalizer", None)
        graph._fragless_pool = None
        if finalizer is not None:
            finalizer()  # runs drop once; a later collection does nothing


graph_pools = _GraphPools()


def _wrap_graph_class(torch, cls):
    if cls is None or getattr(cls, "_fragless_wrapped", False):
        return
    begin = cls.capture_begin
    end = getattr(cls, "capture_end", None)
    reset = cls.reset

    @functools.wraps(begin)
    def capture_begin(self, *args, **kwargs):
        begin(self, *args, **kwargs)
        stream = torch.cuda.current_stream()
        device = stream.device.index if stream.device.index is not None else 0
        capture = ctypes.c_ulonglong(0)
        if _library().fragless_torch_capture_id(device, stream.cuda_stream, ctypes.byref(capture)) != 0:
            error = _last("CUDAGraph.capture_begin under fragless: the capture was ended")
            try:
                if end is not None:
                    end(self)  # a capture left open would leave the stream unusable
            finally:
                raise error
        if capture.value:
            graph_pools.captured(self, tuple(self.pool()), device, capture.value)

    @functools.wraps(reset)
    def graph_reset(self, *args, **kwargs):
        r = reset(self, *args, **kwargs)
        graph_pools.reset(self)
        return r

    cls.capture_begin = capture_begin
    cls.reset = graph_reset
    cls._fragless_wrapped = True


def _wrap_graphs(torch):
    """torch.cuda.CUDAGraph (behind torch.cuda.graph, make_graphed_callables and
    torch.compile's CUDA graphs) and torch.accelerator.Graph: after capture_begin, the
    capture id the driver gave is noted with the graph's pool; reset() and garbage
    collection release it (fragless.graph_release). Safety does not depend on this:
    fragless keeps every block allocated during a capture by itself."""
    _wrap_graph_class(torch, getattr(torch.cuda, "CUDAGraph", None))
    acc = getattr(torch, "accelerator", None)
    _wrap_graph_class(torch, getattr(acc, "Graph", None))


def graph_pool_release(graph):
    """Give back now what fragless keeps for graph's pool (as its reset() would), once
    no other graph of that pool is alive."""
    graph_pools.reset(graph)
