"""fragless from Python: statistics and cache control of the allocator in libfragless.so.

The library is found through $FRAGLESS_LIB, else next to this package, else the build
folder of the source checkout, else the system's library path. Importing needs no torch;
`fragless.torch.install()` plugs fragless into PyTorch.
"""
import ctypes
import ctypes.util
import json
import os

def _read_version():
    """The C library's version: fixed in a built package (_version.py), else read from
    the checkout's include/fragless.h."""
    try:
        from fragless._version import __version__ as v
        return v
    except ImportError:
        import re
        header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "fragless.h")
        try:
            with open(header) as f:
                m = re.search(r'#define FL_VERSION_STRING "([0-9.]+)"', f.read())
            return m.group(1) if m else "unknown"
        except OSError:
            return "unknown"


__version__ = _read_version()

__all__ = ["__version__", "library_path", "stats", "memory_summary", "reset_peak_stats", "snapshot", "empty_cache",
           "set_memory_fraction", "graph_release", "FraglessError"]


class FraglessError(RuntimeError):
    """libfragless.so could not be found or used."""


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
        for name in ("fragless_torch_stats_json", "fragless_torch_memory_summary"):
            getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
            getattr(lib, name).restype = ctypes.c_longlong
        lib.fragless_torch_pool_stats_json.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.fragless_torch_pool_stats_json.restype = ctypes.c_longlong
        lib.fl_last_error.argtypes = []
        lib.fl_last_error.restype = ctypes.c_char_p
        lib.fragless_torch_malloc_nothrow.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        lib.fragless_torch_malloc_nothrow.restype = ctypes.c_void_p
        lib.fragless_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        lib.fragless_torch_free.restype = None
        lib.fragless_torch_capture_id.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.fragless_torch_capture_id.restype = ctypes.c_ulonglong
        lib.fragless_torch_graph_release.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
        lib.fragless_torch_graph_release.restype = ctypes.c_int
        lib.fragless_torch_pool_open.argtypes = [ctypes.c_char_p]
        lib.fragless_torch_pool_open.restype = ctypes.c_int
        lib.fragless_torch_record.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.fragless_torch_record.restype = ctypes.c_int
        lib.fragless_torch_record_flush.argtypes = [ctypes.c_int]
        lib.fragless_torch_record_flush.restype = None
        lib.fragless_torch_reset_peak_stats.argtypes = [ctypes.c_int]
        lib.fragless_torch_reset_peak_stats.restype = None
        lib.fragless_torch_snapshot.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.fragless_torch_snapshot.restype = ctypes.c_int
        lib.fragless_torch_empty_cache.argtypes = []
        lib.fragless_torch_empty_cache.restype = ctypes.c_int
        lib.fragless_torch_set_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
        lib.fragless_torch_set_memory_fraction.restype = None
        _lib = lib
    return _lib


def _text(fn, *args):
    """A text the library writes into a buffer (snprintf's contract); None when the
    device has no allocator yet."""
    args = tuple(int(a) for a in args)
    n = fn(*(args + (None, 0)))
    if n < 0:
        return None
    buf = ctypes.create_string_buffer(n + 1)
    fn(*(args + (buf, n + 1)))
    return buf.value.decode()


def last_error():
    """The library's message for the calling thread's latest failure."""
    return (_library().fl_last_error() or b"").decode(errors="replace")


def stats(device=0, pool=None):
    """The device's statistics, flat like torch.cuda.memory_stats(): PyTorch's names
    ("allocated_bytes.all.current", "num_ooms", ...) and fragless's own under
    "fragless." ("fragless.largest_free", "fragless.device_calls.create", ...). Empty
    before the first allocation on that device. pool: a fragless.torch.pool() (its own
    allocator), else install()'s."""
    slot = 0 if pool is None else getattr(pool, "_fragless_slot", pool)
    text = _text(_library().fragless_torch_pool_stats_json, slot, device)
    if text is None:
        return {}
    flat = {}

    def walk(prefix, obj):
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(prefix + key + ".", value)
            else:
                flat[prefix + key] = value
    walk("", json.loads(text))
    return flat


def memory_summary(device=0):
    """A table like torch.cuda.memory_summary() ("" before the first allocation)."""
    return _text(_library().fragless_torch_memory_summary, device) or ""


def reset_peak_stats(device=0):
    """Peaks start again from the current values (torch.cuda.reset_peak_memory_stats)."""
    _library().fragless_torch_reset_peak_stats(int(device))


def snapshot(path, device=0):
    """Write the allocator's state (address ranges, pages, blocks) as JSON to path, for
    `fragless report`."""
    if _library().fragless_torch_snapshot(int(device), os.fsencode(path)) != 0:
        raise FraglessError("snapshot of device %d to %s failed (reason on stderr)" % (device, path))


def empty_cache():
    """Return cached device memory that no live block needs (torch.cuda.empty_cache).
    During a CUDA graph capture nothing is given back: FraglessError says so."""
    if _library().fragless_torch_empty_cache() != 0:
        raise FraglessError(last_error())


def graph_release(capture, device=0):
    """The CUDA graph captured as `capture` (a capture id, see fragless.torch) is gone:
    the memory fragless kept for it goes back (after a synchronize). fragless.torch does
    this by itself when a torch.cuda.CUDAGraph is reset or garbage collected."""
    if _library().fragless_torch_graph_release(int(device), int(capture)) != 0:
        raise FraglessError(last_error())


def set_memory_fraction(fraction, device=0):
    """The most of the device's memory fragless may hold (torch.cuda.set_per_process_memory_fraction);
    cached memory above it is given back at once."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1], got %r" % (fraction,))
    _library().fragless_torch_set_memory_fraction(float(fraction), int(device))
