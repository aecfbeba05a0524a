"""fragless from Python: statistics and cache control of the allocator in libfragless.so.

The library is found through $FRAGLESS_LIB, else next to this package, else the build
folder of the source checkout, else the system's library path. Importing needs no torch;
`fragless.torch.install()` plugs fragless into PyTorch.
"""
import ctypes
import ctypes.util
import os

__all__ = ["library_path", "stats", "empty_cache", "set_memory_fraction", "FraglessError"]


class FraglessError(RuntimeError):
    """libfragless.so could not be found or used."""


class _Stats(ctypes.Structure):
    # Mirrors fl_stats in include/fragless.h.
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "allocated_bytes", "reserved_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
        "num_allocs", "num_frees", "num_alloc_retries", "num_ooms")]


def library_path():
    """Path of libfragless.so, or raise FraglessError saying where it was looked for."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("FRAGLESS_LIB"),
                  os.path.join(here, "libfragless.so"),
                  os.path.join(here, "..", "..", "build", "libfragless.so"),
                  ctypes.util.find_library("fragless")]
    for path in candidates:
        if path and (os.path.exists(path) or not os.path.dirname(path)):
            return path
    raise FraglessError("libfragless.so not found: build it (make) and set FRAGLESS_LIB to its path; "
                        "looked in " + ", ".join(c for c in candidates if c))


_lib = None


def _library():
    global _lib
    if _lib is None:
        path = library_path()
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise FraglessError("cannot load %s: %s" % (path, e))
        lib.fragless_torch_stats.argtypes = [ctypes.c_int, ctypes.POINTER(_Stats)]
        lib.fragless_torch_stats.restype = ctypes.c_int
        lib.fragless_torch_empty_cache.argtypes = []
        lib.fragless_torch_empty_cache.restype = None
        lib.fragless_torch_set_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
        lib.fragless_torch_set_memory_fraction.restype = None
        _lib = lib
    return _lib


def stats(device=0):
    """The device's statistics under torch.cuda.memory_stats()'s key names (all zero
    before the first allocation on that device)."""
    s = _Stats()
    used = _library().fragless_torch_stats(device, ctypes.byref(s)) == 0
    get = (lambda f: getattr(s, f)) if used else (lambda f: 0)
    return {
        "allocated_bytes.all.current": get("allocated_bytes"),
        "allocated_bytes.all.peak": get("peak_allocated_bytes"),
        "reserved_bytes.all.current": get("reserved_bytes"),
        "reserved_bytes.all.peak": get("peak_reserved_bytes"),
        "allocation.all.allocated": get("num_allocs"),
        "allocation.all.freed": get("num_frees"),
        "allocation.all.current": get("num_allocs") - get("num_frees"),
        "num_alloc_retries": get("num_alloc_retries"),
        "num_ooms": get("num_ooms"),
    }


def empty_cache():
    """Return cached device memory that no live block needs (torch.cuda.empty_cache)."""
    _library().fragless_torch_empty_cache()


def set_memory_fraction(fraction, device=0):
    """The most of the device's memory fragless may hold (torch.cuda.set_per_process_memory_fraction);
    cached memory above it is given back at once."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1], got %r" % (fraction,))
    _library().fragless_torch_set_memory_fraction(float(fraction), int(device))
