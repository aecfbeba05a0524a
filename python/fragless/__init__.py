"""fragless from Python: statistics and cache control of the allocator in libfragless.so.

The library is found through $FRAGLESS_LIB, else next to this package, else the build
folder of the source checkout, else the system's library path. Importing needs no torch;
`fragless.torch.install()` plugs fragless into PyTorch.

Every failing call raises fragless.Error, or the subclass for the library's status
(OutOfMemoryError, InvalidArgumentError, NotFoundError, FileError, DeviceError), with the
library's message; nothing is printed.
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
           "set_memory_fraction", "graph_release", "last_error", "Error", "OutOfMemoryError", "InvalidArgumentError",
           "NotFoundError", "FileError", "DeviceError", "FraglessError"]


# ---- errors ----------------------------------------------------------------------------

class Error(RuntimeError):
    """What every failing call of this package raises (or a subclass): the library's message
    (fl_last_error) as its text, and the fl_status it failed with in `status` (None when
    the failure is the package's own: no library, no PyTorch)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class OutOfMemoryError(Error, MemoryError):
    """Device memory (or the configured limit) ran out: FL_ERR_OOM; the text is
    fragless's out-of-memory report."""


class InvalidArgumentError(Error, ValueError):
    """An argument out of range or malformed (FL_ERR_INVALID), or a configuration or size
    text that does not parse (FL_ERR_PARSE)."""


class NotFoundError(Error, LookupError):
    """What was named does not exist: no allocator on that device yet, no live block at
    that address (FL_ERR_NOT_FOUND)."""


class FileError(Error, OSError):
    """A file could not be read or written (FL_ERR_IO)."""


class DeviceError(Error):
    """The GPU or its driver failed, or there is none (FL_ERR_DEVICE)."""


FraglessError = Error  # the name before 0.2.0: kept for programs that catch it

# fl_status (include/fragless.h) -> the class raised; the others raise Error itself.
_STATUS_ERRORS = {1: OutOfMemoryError, 2: InvalidArgumentError, 3: NotFoundError, 4: InvalidArgumentError,
                  5: FileError, 6: DeviceError}


def _last(context=None):
    """The calling thread's latest library failure as the Error subclass of its status."""
    lib = _library()
    status = lib.fl_last_status()
    message = last_error() or "failed, and the library left no message"
    if context:
        message = "%s: %s" % (context, message)
    return _STATUS_ERRORS.get(status, Error)(message, status)


def _raise_last(context=None):
    raise _last(context)


def _int(value, what, bits=31):
    """An int argument as the library takes it (a C int; bits=64: unsigned long long);
    anything else is InvalidArgumentError (ctypes would cut a large one down silently)."""
    try:
        number = value.__index__() if not isinstance(value, bool) else None
    except (AttributeError, TypeError):
        number = None
    low, high = (-(1 << 31), 1 << 31) if bits == 31 else (0, 1 << 64)
    if number is None or not low <= number < high:
        raise InvalidArgumentError("%s must be an int%s, got %r" % (
            what, " such as 0" if bits == 31 else " from 0 to 2**64-1", value), 2)
    return number


def _device(device):
    return _int(device, "device")


def _path(path, what):
    try:
        return os.fsencode(path)
    except TypeError:
        raise InvalidArgumentError("%s: the path must be a str, bytes or os.PathLike, got %r" % (what, path), 2)


def library_path():
    """Path of libfragless.so, or raise Error saying where it was looked for."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("FRAGLESS_LIB"),
                  os.path.join(here, "libfragless.so"),
                  os.path.join(here, "..", "..", "build", "libfragless.so"),
                  ctypes.util.find_library("fragless")]
    for path in candidates:
        if path and (os.path.exists(path) or not os.path.dirname(path)):
            return path
    raise Error("libfragless.so not found: build it (make) and set FRAGLESS_LIB to its path; "
                "looked in " + ", ".join(c for c in candidates if c))


_lib = None


def _library():
    global _lib
    if _lib is None:
        path = library_path()
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise Error("cannot load %s: %s" % (path, e))
        for name in ("fragless_torch_stats_json", "fragless_torch_memory_summary"):
            getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
            getattr(lib, name).restype = ctypes.c_longlong
        lib.fragless_torch_pool_stats_json.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.fragless_torch_pool_stats_json.restype = ctypes.c_longlong
        lib.fl_last_error.argtypes = []
        lib.fl_last_error.restype = ctypes.c_char_p
        lib.fl_last_status.argtypes = []
        lib.fl_last_status.restype = ctypes.c_int
        lib.fragless_torch_malloc_nothrow.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        lib.fragless_torch_malloc_nothrow.restype = ctypes.c_void_p
        lib.fragless_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        lib.fragless_torch_free.restype = None
        lib.fragless_torch_capture_id.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]
        lib.fragless_torch_capture_id.restype = ctypes.c_int
        lib.fragless_torch_graph_release.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
        lib.fragless_torch_graph_release.restype = ctypes.c_int
        lib.fragless_torch_pool_open.argtypes = [ctypes.c_char_p]
        lib.fragless_torch_pool_open.restype = ctypes.c_int
        lib.fragless_torch_conf_check.argtypes = [ctypes.c_char_p]
        lib.fragless_torch_conf_check.restype = ctypes.c_int
        lib.fragless_torch_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.fragless_torch_record_stream.restype = ctypes.c_int
        lib.fragless_torch_record.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.fragless_torch_record.restype = ctypes.c_int
        lib.fragless_torch_record_flush.argtypes = [ctypes.c_int]
        lib.fragless_torch_record_flush.restype = ctypes.c_int
        lib.fragless_torch_reset_peak_stats.argtypes = [ctypes.c_int]
        lib.fragless_torch_reset_peak_stats.restype = ctypes.c_int
        lib.fragless_torch_snapshot.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.fragless_torch_snapshot.restype = ctypes.c_int
        lib.fragless_torch_empty_cache.argtypes = []
        lib.fragless_torch_empty_cache.restype = ctypes.c_int
        lib.fragless_torch_set_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
        lib.fragless_torch_set_memory_fraction.restype = ctypes.c_int
        _lib = lib
    return _lib


def _text(fn, *args):
    """A text the library writes into a buffer (snprintf's contract); None when the
    device has no allocator yet (-1); a device or slot out of range (-2) raises."""
    n = fn(*(args + (None, 0)))
    if n == -1:
        return None
    if n < 0:
        _raise_last()
    buf = ctypes.create_string_buffer(n + 1)
    fn(*(args + (buf, n + 1)))
    return buf.value.decode()


def last_error():
    """The library's message for the calling thread's latest failure ("" if none)."""
    return (_library().fl_last_error() or b"").decode(errors="replace")


def stats(device=0, pool=None):
    """The device's statistics, flat like torch.cuda.memory_stats(): PyTorch's names
    ("allocated_bytes.all.current", "num_ooms", ...) and fragless's own under
    "fragless." ("fragless.largest_free", "fragless.device_calls.create", ...). Empty
    before the first allocation on that device. pool: a fragless.torch.pool() (its own
    allocator), else install()'s. A device or pool out of range: InvalidArgumentError."""
    slot = getattr(pool, "_fragless_slot", pool)
    if slot is None:
        slot = 0
    elif isinstance(slot, bool) or not isinstance(slot, int):
        raise InvalidArgumentError("pool must be a fragless.torch.pool() (or its slot number), got %r" % (pool,), 2)
    text = _text(_library().fragless_torch_pool_stats_json, slot, _device(device))
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
    return _text(_library().fragless_torch_memory_summary, _device(device)) or ""


def reset_peak_stats(device=0):
    """Peaks start again from the current values (torch.cuda.reset_peak_memory_stats)."""
    if _library().fragless_torch_reset_peak_stats(_device(device)) != 0:
        _raise_last()


def snapshot(path, device=0):
    """Write the allocator's state (address ranges, pages, blocks) as JSON to path, for
    `fragless report`. NotFoundError before the device's first allocation; FileError when
    path cannot be written."""
    if _library().fragless_torch_snapshot(_device(device), _path(path, "snapshot")) != 0:
        _raise_last()


def empty_cache():
    """Return cached device memory that no live block needs (torch.cuda.empty_cache).
    During a CUDA graph capture nothing is given back, and Error says so."""
    if _library().fragless_torch_empty_cache() != 0:
        _raise_last()


def graph_release(capture, device=0):
    """The CUDA graph captured as `capture` (a capture id, see fragless.torch) is gone:
    the memory fragless kept for it goes back (after a synchronize). fragless.torch does
    this by itself when a torch.cuda.CUDAGraph is reset or garbage collected."""
    if _library().fragless_torch_graph_release(_device(device), _int(capture, "capture", bits=64)) != 0:
        _raise_last()


def set_memory_fraction(fraction, device=0):
    """The most of the device's memory fragless may hold (torch.cuda.set_per_process_memory_fraction);
    cached memory above it is given back at once. The device's allocator is made if it
    does not exist yet: DeviceError when there is no GPU; InvalidArgumentError for a
    fraction outside (0, 1]."""
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise InvalidArgumentError("memory fraction must be a number in (0, 1], got %r" % (fraction,), 2)
    if _library().fragless_torch_set_memory_fraction(fraction, _device(device)) != 0:
        _raise_last()
