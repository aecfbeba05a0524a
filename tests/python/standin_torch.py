"""A stand-in for the parts of PyTorch that fragless.torch meets, built on the CUDA driver
double (FRAGLESS_CUDA_LIB) and the C++ stand-ins of tests/torchstub (FRAGLESS_TORCHSTUB_DIR):

- torch.cuda.memory.CUDAPluggableAllocator / change_current_allocator / MemPool /
  use_mem_pool, tensors whose storage comes from the current allocator's malloc called
  the way PyTorch's C++ calls it (torchstub_malloc: exceptions translated as PyTorch's
  bindings do: c10::OutOfMemoryError -> torch.OutOfMemoryError);
- the memory functions with PyTorch 2.15's signatures, behaving as PyTorch does under a
  pluggable allocator: statistics empty, snapshots and history refused, empty_cache a
  no-op, torch.accelerator.* calling C++ that knows nothing of the plug-in;
- streams, CUDA graphs as torch.cuda.graph makes them: synchronize, empty_cache, then
  capture on a side stream (the double's capture), every kernel of the captured work
  registered with the double (it checks a replay's memory), make_graphed_callables-like
  pool sharing through pool().
"""
import contextlib
import ctypes
import os
import sys
import types


class OutOfMemoryError(RuntimeError):
    pass


def build(version="2.15.0", cxx11_abi=True):
    fake = ctypes.CDLL(os.environ["FRAGLESS_CUDA_LIB"])
    stubdir = os.environ["FRAGLESS_TORCHSTUB_DIR"]
    ctypes.CDLL(os.path.join(stubdir, "libc10.so"), mode=ctypes.RTLD_GLOBAL)  # as PyTorch's libc10
    stub = ctypes.CDLL(os.path.join(stubdir, "libtorchstub.so"))
    stub.torchstub_malloc.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
    stub.torchstub_malloc.restype = ctypes.c_int
    fake.fakecuda_end_capture.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]
    fake.fakecuda_capture_use.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_size_t]
    fake.fakecuda_begin_capture.argtypes = [ctypes.c_void_p, ctypes.c_int]
    fake.fakecuda_graph_launch.argtypes = [ctypes.c_ulonglong]
    fake.fakecuda_graph_destroy.argtypes = [ctypes.c_ulonglong]
    fake.fakecuda_capture_violations.restype = ctypes.c_ulonglong
    fake.fakecuda_graph_faults.restype = ctypes.c_ulonglong

    torch = types.ModuleType("torch")
    torch.__version__ = version
    torch.compiled_with_cxx11_abi = lambda: cxx11_abi
    torch.OutOfMemoryError = OutOfMemoryError
    cuda = types.ModuleType("torch.cuda")
    memory = types.ModuleType("torch.cuda.memory")
    torch.cuda = cuda
    cuda.memory = memory
    cuda.OutOfMemoryError = OutOfMemoryError
    calls = {"synchronize": 0, "empty_cache_native": 0}
    state = {"initialized": False, "stream": 0, "allocator": None, "pool": None, "capturing": None}

    class device:
        def __init__(self, text):
            self.type, _, idx = str(text).partition(":")
            self.index = int(idx) if idx else None

    torch.device = device

    class Stream:
        _next = [0x5000]

        def __init__(self):
            Stream._next[0] += 0x100
            self.cuda_stream = Stream._next[0]
            self.device = device("cuda:0")

    def current_stream(device=None):
        s = state["stream"]
        if isinstance(s, Stream):
            return s
        d = Stream.__new__(Stream)
        d.cuda_stream, d.device = 0, torch.device("cuda:0")
        return d

    @contextlib.contextmanager
    def stream(s):
        old, state["stream"] = state["stream"], s
        try:
            yield
        finally:
            state["stream"] = old

    cuda.Stream, cuda.current_stream, cuda.stream = Stream, current_stream, stream
    cuda.is_initialized = lambda: state["initialized"]
    cuda.is_available = lambda: True
    cuda.current_device = lambda: 0
    cuda.synchronize = lambda device=None: calls.__setitem__("synchronize", calls["synchronize"] + 1)

    # ---- allocators: what PyTorch's C++ does with a plug-in ----------------------------
    class _PluggableAllocator:
        def __init__(self, path, alloc_fn_name, free_fn_name):
            lib = ctypes.CDLL(path)
            self.malloc = ctypes.cast(getattr(lib, alloc_fn_name), ctypes.c_void_p).value
            self.free = getattr(lib, free_fn_name)
            self.free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
            self.names = (alloc_fn_name, free_fn_name)

    class CUDAPluggableAllocator:
        def __init__(self, path_to_so_file, alloc_fn_name, free_fn_name):
            self._allocator = _PluggableAllocator(path_to_so_file, alloc_fn_name, free_fn_name)

        def allocator(self):
            return self._allocator

    def change_current_allocator(allocator):
        if state["initialized"]:
            raise RuntimeError("Can't swap an already initialized allocator")
        state["allocator"] = allocator.allocator()

    class MemPool:
        _next = [0]

        def __init__(self, allocator=None, use_on_oom=False, no_split=False):
            MemPool._next[0] += 1
            self.id = (0, MemPool._next[0])
            self.allocator = allocator

    @contextlib.contextmanager
    def use_mem_pool(pool, device=None):
        old, state["pool"] = state["pool"], pool
        try:
            yield
        finally:
            state["pool"] = old

    memory.CUDAPluggableAllocator = cuda.CUDAPluggableAllocator = CUDAPluggableAllocator
    memory.change_current_allocator = change_current_allocator
    memory.MemPool = cuda.MemPool = MemPool
    memory.use_mem_pool = cuda.use_mem_pool = use_mem_pool

    class Tensor:
        """A storage of nbytes from the allocator in use (the pool's, inside use_mem_pool);
        captured kernels touch it when made or used during a capture."""

        def __init__(self, nbytes):
            alloc = state["pool"].allocator if state["pool"] is not None else state["allocator"]
            if alloc is None:
                raise RuntimeError("stand-in: no allocator")
            state["initialized"] = True
            s = current_stream()
            out = ctypes.c_void_p()
            msg = ctypes.create_string_buffer(4096)
            rc = stub.torchstub_malloc(alloc.malloc, nbytes, 0, s.cuda_stream, ctypes.byref(out), msg, len(msg))
            if rc == 1:
                raise OutOfMemoryError(msg.value.decode())
            if rc:
                raise RuntimeError(msg.value.decode())
            self.ptr, self.nbytes, self.stream, self._free = out.value, nbytes, s.cuda_stream, alloc.free
            self.kernel()

        def kernel(self):
            """Work on this tensor: recorded into the capture when its stream captures,
            else run (the memory written)."""
            cap = state["capturing"]
            if cap is not None and current_stream().cuda_stream == cap.cuda_stream:
                if fake.fakecuda_capture_use(cap.cuda_stream, self.ptr, self.nbytes) != 0:
                    raise RuntimeError("stand-in: a kernel captured on memory that is not there")
            elif self.ptr:
                ctypes.memset(self.ptr, 0x3c, self.nbytes)

        def intact(self):
            return ctypes.string_at(self.ptr, self.nbytes) == b"\x3c" * self.nbytes

        def untyped_storage(self):
            return types.SimpleNamespace(data_ptr=lambda: self.ptr)

        def record_stream(self, stream):
            calls["record_stream"] = stream

        def __del__(self):
            if getattr(self, "ptr", None):
                self._free(self.ptr, self.nbytes, 0, self.stream)
                self.ptr = None

    torch.Tensor = Tensor
    torch.empty = lambda nbytes: Tensor(nbytes)

    # ---- CUDA graphs ---------------------------------------------------------------------
    class CUDAGraph:
        def capture_begin(self, pool=None, capture_error_mode="global"):
            self._stream = current_stream()
            self._pool = tuple(pool) if pool is not None else (0, 1000 + id(self) % 100000)
            mode = {"global": 0, "thread_local": 1, "relaxed": 2}[capture_error_mode]
            if fake.fakecuda_begin_capture(self._stream.cuda_stream, mode) != 0:
                raise RuntimeError("stand-in: capture_begin failed")
            state["capturing"] = self._stream

        def capture_end(self):
            state["capturing"] = None
            gid = ctypes.c_ulonglong()
            rc = fake.fakecuda_end_capture(self._stream.cuda_stream, ctypes.byref(gid))
            if rc:
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture (%d)" % rc)
            self._graph = gid.value

        def replay(self):
            if fake.fakecuda_graph_launch(self._graph) != 0:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (replay)")

        def pool(self):
            return self._pool

        def reset(self):
            if getattr(self, "_graph", None):
                fake.fakecuda_graph_destroy(self._graph)
                self._graph = None

    class graph:
        default_capture_stream = None

        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            if stream is None and graph.default_capture_stream is None:
                graph.default_capture_stream = Stream()
            self.pool = () if pool is None else (pool,)
            self.capture_stream = stream or graph.default_capture_stream
            self.stream_ctx = torch.cuda.stream(self.capture_stream)
            self.cuda_graph = cuda_graph
            self.capture_error_mode = capture_error_mode

        def __enter__(self):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # as torch.cuda.graph does before every capture
            self.stream_ctx.__enter__()
            self.cuda_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)

        def __exit__(self, *exc):
            self.cuda_graph.capture_end()
            self.stream_ctx.__exit__(*exc)

    cuda.CUDAGraph, cuda.graph = CUDAGraph, graph
    cuda.graph_pool_handle = lambda: (0, 900000 + len(calls))

    # ---- the memory functions, as PyTorch 2.15 has them under a plug-in -------------------
    def refused(what):
        def f(*a, **k):
            raise RuntimeError("CUDAPluggableAllocator does not yet support %s. If you need it, please file an "
                               "issue describing your use case." % what)
        return f

    def empty_cache():
        calls["empty_cache_native"] += 1  # the plug-in's reset hook is unset: nothing happens

    def set_per_process_memory_fraction(fraction, device=None):
        pass

    def get_per_process_memory_fraction(device=None):
        raise RuntimeError("CUDAPluggableAllocator does not yet support getMemoryFraction")

    def memory_stats(device=None):
        return refused("getDeviceStats")()

    def memory_stats_as_nested_dict(device=None):
        return refused("getDeviceStats")()

    def reset_accumulated_memory_stats(device=None):
        return refused("resetAccumulatedStats")()

    def reset_peak_memory_stats(device=None):
        return refused("resetPeakStats")()

    def reset_max_memory_allocated(device=None):
        return reset_peak_memory_stats(device)

    def reset_max_memory_cached(device=None):
        return reset_peak_memory_stats(device)

    def memory_allocated(device=None):
        return memory_stats(device).get("allocated_bytes.all.current", 0)

    def max_memory_allocated(device=None):
        return memory_stats(device).get("allocated_bytes.all.peak", 0)

    def memory_reserved(device=None):
        return memory_stats(device).get("reserved_bytes.all.current", 0)

    def max_memory_reserved(device=None):
        return memory_stats(device).get("reserved_bytes.all.peak", 0)

    def memory_cached(device=None):
        return memory_reserved(device)

    def max_memory_cached(device=None):
        return max_memory_reserved(device)

    def memory_snapshot(mempool_id=None, include_traces=True):
        return refused("snapshot")()

    def memory_summary(device=None, abbreviated=False):
        return refused("getDeviceStats")()

    def mem_get_info(device=None):
        free = ctypes.c_size_t()
        total = ctypes.c_size_t()
        # As the runtime's cudaMemGetInfo does: the device's primary context current on
        # this thread first (fragless leaves a thread's context as it found it: none).
        ctx = ctypes.c_void_p()
        fake.cuInit(0)
        fake.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), int(device or 0))
        fake.cuCtxSetCurrent(ctx)
        fake.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))  # the driver's view
        return free.value, total.value

    def _record_memory_history(enabled="all", *args, **kwargs):
        return refused("recordHistory")()

    def _snapshot(device=None, augment_with_fx_traces=False):
        return refused("snapshot")()

    def _dump_snapshot(filename="dump_snapshot.pickle", augment_with_fx_traces=False):
        return _snapshot()

    for fn in (empty_cache, set_per_process_memory_fraction, get_per_process_memory_fraction, memory_stats,
               memory_stats_as_nested_dict, reset_accumulated_memory_stats, reset_peak_memory_stats,
               reset_max_memory_allocated, reset_max_memory_cached, memory_allocated, max_memory_allocated,
               memory_reserved, max_memory_reserved, memory_cached, max_memory_cached, memory_snapshot,
               memory_summary, mem_get_info, _record_memory_history, _snapshot, _dump_snapshot):
        setattr(memory, fn.__name__, fn)
        if not fn.__name__.startswith("_"):
            setattr(cuda, fn.__name__, fn)

    acc = types.ModuleType("torch.accelerator")
    acc.current_accelerator = lambda: device("cuda")

    def acc_empty_cache():
        calls["empty_cache_native"] += 1

    def acc_memory_stats(device_index=None, /):
        return refused("getDeviceStats")()

    def acc_memory_allocated(device_index=None, /):
        return acc_memory_stats(device_index).get("allocated_bytes.all.current", 0)

    def acc_get_memory_info(device_index=None, /):
        return mem_get_info(device_index)

    def acc_reset_peak_memory_stats(device_index=None, /):
        return refused("resetPeakStats")()

    acc.empty_cache, acc.memory_stats, acc.memory_allocated = acc_empty_cache, acc_memory_stats, acc_memory_allocated
    acc.get_memory_info, acc.reset_peak_memory_stats = acc_get_memory_info, acc_reset_peak_memory_stats
    torch.accelerator = acc
    torch._standin = types.SimpleNamespace(fake=fake, calls=calls, state=state)
    return torch


@contextlib.contextmanager
def installed_module(torch):
    """torch as sys.modules['torch'] for the block, fragless.torch's state reset around it."""
    import fragless.torch as ft
    saved = sys.modules.get("torch")
    sys.modules["torch"] = torch
    ft._installed = False
    try:
        yield ft
    finally:
        ft._installed = False
        if saved is None:
            sys.modules.pop("torch", None)
        else:
            sys.modules["torch"] = saved
