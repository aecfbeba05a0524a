"""Plug fragless into PyTorch as its CUDA allocator (torch.cuda.memory.CUDAPluggableAllocator).

PyTorch's Python API registers only malloc and free of a pluggable allocator; its other
hooks (empty_cache, the memory fraction, record_stream, statistics) are C++-only. So
install() also routes torch.cuda.empty_cache, set_per_process_memory_fraction,
memory_stats, memory_allocated, memory_reserved, their max_ variants,
reset_peak_memory_stats, memory_summary and Tensor.record_stream to fragless."""
import ctypes
import os

from . import FraglessError, library_path
from . import empty_cache as _empty_cache, memory_summary as _summary, reset_peak_stats as _reset_peak
from . import set_memory_fraction as _set_fraction, stats as _stats, _library

_installed = False


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


def install(**conf):
    """Make fragless PyTorch's CUDA allocator, with FRAGLESS_CONF keys as keyword arguments
    (e.g. install(limit="40GiB")). Must run before the first CUDA allocation."""
    global _installed
    if _installed:
        return
    try:
        import torch
    except ImportError as e:
        raise FraglessError("fragless.torch.install() needs PyTorch: %s" % e)
    if torch.cuda.is_initialized() and torch.cuda.memory_allocated() > 0:
        raise FraglessError("fragless.torch.install() came too late: PyTorch has already allocated CUDA memory "
                            "with its own allocator; call it first thing, before any tensor is put on the GPU")
    if conf:
        os.environ["FRAGLESS_CONF"] = _conf_string(conf, os.environ.get("FRAGLESS_CONF", ""))
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "fragless_torch_malloc", "fragless_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(alloc)
    except RuntimeError as e:
        raise FraglessError("fragless.torch.install() came too late: %s" % e)
    _route(torch)
    _installed = True


def _route(torch):
    """Point PyTorch's memory functions at fragless (see the module's docstring)."""
    cuda = torch.cuda

    def index(device=None):
        if device is None:
            return cuda.current_device()
        if isinstance(device, int):
            return device
        if isinstance(device, str):
            device = torch.device(device)
        return device.index if getattr(device, "index", None) is not None else cuda.current_device()

    def stat(key):
        return lambda device=None: _stats(index(device)).get(key, 0)

    def empty_cache():
        _empty_cache()

    def set_per_process_memory_fraction(fraction, device=None):
        _set_fraction(fraction, index(device))

    def memory_stats(device=None):
        return _stats(index(device))

    def reset_peak_memory_stats(device=None):
        _reset_peak(index(device))

    def memory_summary(device=None, abbreviated=False):
        return _summary(index(device))

    for name, fn in (("empty_cache", empty_cache),
                     ("set_per_process_memory_fraction", set_per_process_memory_fraction),
                     ("memory_stats", memory_stats),
                     ("memory_allocated", stat("allocated_bytes.all.current")),
                     ("max_memory_allocated", stat("allocated_bytes.all.peak")),
                     ("memory_reserved", stat("reserved_bytes.all.current")),
                     ("max_memory_reserved", stat("reserved_bytes.all.peak")),
                     ("reset_peak_memory_stats", reset_peak_memory_stats),
                     ("memory_summary", memory_summary)):
        setattr(cuda, name, fn)
        if hasattr(cuda, "memory"):
            setattr(cuda.memory, name, fn)

    lib = _library()
    lib.fragless_torch_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.fragless_torch_record_stream.restype = None
    original = torch.Tensor.record_stream

    def record_stream(tensor, stream):
        original(tensor, stream)
        ptr = tensor.untyped_storage().data_ptr()
        lib.fragless_torch_record_stream(ptr, stream.cuda_stream)

    torch.Tensor.record_stream = record_stream
