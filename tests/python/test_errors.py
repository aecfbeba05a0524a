"""Every failing call of the package raises fragless.Error (or the subclass of the
library's status, also the builtin that fits) with the library's message, and prints
nothing: on the CUDA driver double, and in a process with no GPU at all (its driver
library missing)."""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import unittest

import fragless

MiB = 1 << 20
FL_ERR_OOM, FL_ERR_INVALID, FL_ERR_NOT_FOUND, FL_ERR_PARSE, FL_ERR_IO, FL_ERR_DEVICE = 1, 2, 3, 4, 5, 6


class ErrorTest(unittest.TestCase):
    def raises(self, cls, builtin, status, words, fn, *args, **kwargs):
        """fn(*args) raises cls (a fragless.Error and a builtin) with status and words."""
        with self.assertRaises(cls) as ctx:
            fn(*args, **kwargs)
        e = ctx.exception
        self.assertIsInstance(e, fragless.Error)
        self.assertIsInstance(e, RuntimeError)
        if builtin is not None:
            self.assertIsInstance(e, builtin)
        self.assertEqual(e.status, status, str(e))
        for w in words:
            self.assertIn(w, str(e))
        return e


class PackageErrors(ErrorTest):
    """On the driver double of one device (FRAGLESS_CUDA_LIB, 256 MiB)."""

    def setUp(self):
        lib = fragless._library()
        self.block = lib.fragless_torch_malloc_nothrow(MiB, 0, None)  # device 0 has an allocator
        self.assertTrue(self.block)

    def tearDown(self):
        fragless._library().fragless_torch_free(self.block, MiB, 0, None)

    def test_devices_out_of_range(self):
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["device 64 is out of range (0..63)"],
                    fragless.stats, 64)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["device -1 is out of range"],
                    fragless.memory_summary, -1)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["device 99 is out of range"],
                    fragless.reset_peak_stats, 99)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["pool slot 9 is out of range (0..4)"],
                    fragless.stats, 0, pool=9)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID,
                    ["pool must be a fragless.torch.pool() (or its slot number), got 'kv'"], fragless.stats, 0, pool="kv")
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["device 70 is out of range"],
                    fragless.graph_release, 1, device=70)
        # Not a device ordinal at all, or one a C int cannot hold (ctypes would cut it to 0).
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID,
                    ["device must be an int such as 0, got 'cuda:0'"], fragless.stats, "cuda:0")
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["got 4294967296"],
                    fragless.stats, 1 << 32)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["capture must be an int"],
                    fragless.graph_release, -1)
        self.assertEqual(fragless.stats(63), {})  # in range, no allocator yet: empty, as PyTorch says

    def test_memory_fraction(self):
        for bad in (1.5, 0, -0.25, float("nan")):
            self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID, ["is not in (0, 1]"],
                        fragless.set_memory_fraction, bad)
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID,
                    ["memory fraction must be a number in (0, 1], got 'half'"], fragless.set_memory_fraction, "half")
        limit = fragless.stats(0)["fragless.limit"]
        self.assertEqual(limit, fragless.stats(0)["fragless.capacity"])  # the refused fractions set nothing
        # The double has one device: device 3 cannot be set up, and the driver's count says why.
        self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID,
                    ["cannot set up device 3: ", "no device 3: the driver reports 1 device"],
                    fragless.set_memory_fraction, 0.5, 3)

    def test_snapshots(self):
        with tempfile.TemporaryDirectory() as tmp:
            missing = os.path.join(tmp, "no-such-folder", "state.json")
            e = self.raises(fragless.FileError, OSError, FL_ERR_IO, ["snapshot of device 0: ", missing],
                            fragless.snapshot, missing, 0)
            self.assertFalse(os.path.exists(missing))
            self.raises(fragless.NotFoundError, LookupError, FL_ERR_NOT_FOUND,
                        ["snapshot of device 5: no allocator on that device"], fragless.snapshot,
                        os.path.join(tmp, "s.json"), 5)
            self.raises(fragless.InvalidArgumentError, ValueError, FL_ERR_INVALID,
                        ["snapshot: the path must be a str, bytes or os.PathLike, got None"], fragless.snapshot, None)
            ok = os.path.join(tmp, "ok.json")
            fragless.snapshot(ok, 0)  # and a good one still works after the failures
            with open(ok) as f:
                self.assertEqual(json.load(f)["format"], "fragless-state")
        self.assertIn("No such file or directory", str(e))

    def test_library_failure_classes(self):
        # The C library's out-of-memory report, read the way every call of the package reads
        # a failure: OutOfMemoryError, a MemoryError, with the report's verdict.
        lib = fragless._library()
        self.assertFalse(lib.fragless_torch_malloc_nothrow(1 << 40, 0, None))
        e = fragless._last()
        self.assertIsInstance(e, fragless.OutOfMemoryError)
        self.assertIsInstance(e, MemoryError)
        self.assertEqual(e.status, FL_ERR_OOM)
        self.assertIn("out of memory on device 0", str(e))
        self.assertIn("Verdict", str(e))
        self.assertIs(fragless.FraglessError, fragless.Error)  # the old name still catches


NO_GPU_SCRIPT = r"""
import json, os, sys, tempfile
import fragless
out = {}
def attempt(name, fn, *args):
    try:
        fn(*args)
        out[name] = None
    except Exception as e:
        out[name] = [type(e).__name__, [c.__name__ for c in type(e).__mro__], getattr(e, "status", None), str(e)]
attempt("set_memory_fraction", fragless.set_memory_fraction, 0.5)
attempt("snapshot", fragless.snapshot, os.path.join(tempfile.gettempdir(), "fl-never-written.json"))
attempt("stats", fragless.stats, 0)
attempt("reset_peak_stats", fragless.reset_peak_stats, 0)
attempt("empty_cache", fragless.empty_cache)
print(json.dumps(out))
"""


class NoGpu(ErrorTest):
    """A machine without a GPU: the driver library is not there."""

    def test_no_gpu(self):
        env = dict(os.environ, FRAGLESS_CUDA_LIB="/nonexistent/libcuda.so.1")
        r = subprocess.run([sys.executable, "-c", NO_GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")  # nothing left on stderr: every message is in the exception
        out = json.loads(r.stdout)
        name, mro, status, text = out["set_memory_fraction"]
        self.assertEqual(name, "DeviceError")
        self.assertIn("Error", mro)
        self.assertIn("RuntimeError", mro)
        self.assertEqual(status, FL_ERR_DEVICE)
        self.assertIn("cannot set up device 0: ", text)
        self.assertIn("/nonexistent/libcuda.so.1", text)
        name, mro, status, text = out["snapshot"]
        self.assertEqual((name, status), ("NotFoundError", FL_ERR_NOT_FOUND))
        self.assertIn("LookupError", mro)
        self.assertIn("snapshot of device 0: no allocator on that device", text)
        # Reading statistics, resetting peaks and emptying the cache of no allocator are not
        # failures: PyTorch gives {} and does nothing before the first allocation too.
        self.assertEqual((out["stats"], out["reset_peak_stats"], out["empty_cache"]), (None, None, None))


if __name__ == "__main__":
    unittest.main()
