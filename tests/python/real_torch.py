"""fragless.torch against a real PyTorch 2.x from PyPI, on a machine without a GPU.

A CUDA build of PyTorch imports and runs without a GPU up to the first device call, so
this checks: the version check; install() building CUDAPluggableAllocator from
libfragless.so and change_current_allocator; every routed function replaced on the real
modules with the real signature; the CUDAGraph wrappers; pool() as far as MemPool goes
without a device. With tests/torchstub's cudart shim preloaded (the two runtime calls
PyTorch makes before it calls a plug-in, answered for device 0), PyTorch's own C++ calls
fragless_torch_malloc on the driver double: torch._C._cuda_cudaCachingAllocator_raw_alloc
then reaches fragless, and an out-of-memory must come out as torch.OutOfMemoryError.

Run: python3 tests/python/real_torch.py (ctest test_real_torch). It looks for a Python
with torch in $FRAGLESS_TORCH_PYTHON, then ~/.cache/fragless/torch-venv (.ci/run makes
it), then the running interpreter; with none it says so and exits 77 (skipped).
"""
import inspect
import os
import subprocess
import sys
import unittest

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


def torch_python():
    candidates = [os.environ.get("FRAGLESS_TORCH_PYTHON"),
                  os.path.expanduser("~/.cache/fragless/torch-venv/bin/python"), sys.executable]
    for py in filter(None, candidates):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def child_env(shim):
    env = dict(os.environ, FRAGLESS_REAL_TORCH_CHILD="1", FRAGLESS_ROUTE_ACCELERATOR="1")
    if shim:
        env["LD_PRELOAD"] = os.path.join(os.environ["FRAGLESS_TORCHSTUB_DIR"], "libcudart_shim.so")
    return env


class RealTorch(unittest.TestCase):
    """Each test in a process of its own (install() changes PyTorch for good)."""

    def run_child(self, name, shim=False):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "child", name], env=child_env(shim),
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, "%s:\n%s\n%s" % (name, r.stdout[-3000:], r.stderr[-6000:]))
        return r

    def test_version_and_routes(self):
        self.run_child("version_and_routes")

    def test_allocations_through_pytorch(self):
        self.run_child("allocations_through_pytorch", shim=True)

    def test_pool(self):
        self.run_child("pool", shim=True)


def child(name):
    import torch
    import warnings
    warnings.simplefilter("ignore")
    import fragless
    import fragless.torch as ft
    print("torch", torch.__version__, "cuda build", torch.version.cuda, "available", torch.cuda.is_available())
    if name == "version_and_routes":
        ft.check_torch(torch, pools=True)
        originals = {}
        for modname in ("torch.cuda", "torch.cuda.memory", "torch.accelerator", "torch.accelerator.memory"):
            module = sys.modules.get(modname) or eval(modname)
            for fn in ft.ROUTED:
                if callable(getattr(module, fn, None)):
                    originals[(modname, fn)] = getattr(module, fn)
        assert len(originals) >= 30, sorted(originals)
        record_stream = torch.Tensor.record_stream
        ft.install()
        assert ft._installed
        current = torch.cuda.memory._get_current_allocator()
        assert current is not None
        for (modname, fn), original in sorted(originals.items()):
            routed = getattr(sys.modules.get(modname) or eval(modname), fn)
            assert routed is not original, (modname, fn)
            assert inspect.signature(routed) == inspect.signature(original), (modname, fn)
            assert routed.__doc__.startswith("fragless:"), (modname, fn)
        assert torch.Tensor.record_stream is not record_stream
        for cls in (torch.cuda.CUDAGraph, getattr(torch.accelerator, "Graph", None)):
            if cls is not None:
                assert cls._fragless_wrapped and cls.capture_begin.__name__ == "capture_begin"
        assert torch.cuda.memory_stats() == {} and torch.cuda.memory_allocated() == 0
        print("routed %d functions; every signature is PyTorch's" % len(originals))
        # A second install is a no-op; an old version is refused before anything changes.
        ft.install()
        torch.__version__ = "1.13.1"
        try:
            ft.check_torch(torch)
            raise AssertionError("1.13.1 accepted")
        except fragless.Error as e:
            assert "2.7" in str(e) and "fragless command line" in str(e), e
    elif name == "allocations_through_pytorch":
        ft.install(limit="64MiB", oom_report="0")
        raw_alloc = torch._C._cuda_cudaCachingAllocator_raw_alloc
        raw_delete = torch._C._cuda_cudaCachingAllocator_raw_delete
        p = raw_alloc(5 * MiB, 0)  # PyTorch's C++ -> CUDAPluggableAllocator -> fragless_torch_malloc
        assert p and p % 512 == 0
        assert torch.cuda.memory_allocated(0) == 5 * MiB, torch.cuda.memory_stats(0)
        s = torch.cuda.memory_stats(0)
        assert s["allocated_bytes.large_pool.current"] == 5 * MiB and s["allocated_bytes.small_pool.current"] == 0
        assert torch.cuda.memory_stats_as_nested_dict(0)["allocation"]["all"]["current"] == 1
        segs = torch.cuda.memory_snapshot()
        assert [(b["address"], b["size"]) for sg in segs for b in sg["blocks"] if b["state"] == "active_allocated"] \
            == [(p, 5 * MiB)], segs
        torch.cuda.set_per_process_memory_fraction(0.5, 0)
        assert abs(torch.cuda.get_per_process_memory_fraction(0) - 0.5) < 1e-3
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        # Failures of routed calls: fragless.Error's subclasses, also the builtin that fits.
        for call, cls, builtin, words in (
                (lambda: torch.cuda.set_per_process_memory_fraction(1.5, 0), fragless.InvalidArgumentError,
                 ValueError, "memory fraction 1.5 is not in (0, 1]"),
                (lambda: torch.cuda.memory_stats(64), fragless.InvalidArgumentError, ValueError,
                 "device 64 is out of range (0..63)"),
                (lambda: torch.cuda.memory._dump_snapshot("/nonexistent-folder/s.pickle"), fragless.FileError,
                 OSError, "cannot write /nonexistent-folder/s.pickle")):
            try:
                call()
                raise AssertionError("no exception: " + words)
            except fragless.Error as e:
                assert isinstance(e, cls) and isinstance(e, builtin) and isinstance(e, RuntimeError), repr(e)
                assert words in str(e), str(e)
        assert abs(torch.cuda.get_per_process_memory_fraction(0) - 1.0) < 1e-3
        # The out-of-memory crosses PyTorch's C++ as PyTorch's own exception.
        try:
            raw_alloc(1 << 30, 0)
            raise AssertionError("no exception")
        except torch.cuda.OutOfMemoryError as e:
            assert isinstance(e, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
            assert "out of memory on device 0" in str(e) and "Verdict" in str(e), str(e)
            print("raised", type(e).__name__, str(e)[:160])
        assert torch.cuda.memory_stats(0)["num_ooms"] == 1
        q = raw_alloc(8 * MiB, 0)  # the loop goes on with a smaller request
        raw_delete(q)
        raw_delete(p)
        assert torch.cuda.memory_allocated(0) == 0
        torch.cuda.empty_cache()
        assert torch.cuda.memory_reserved(0) == 0
        torch.accelerator.empty_cache()
        assert torch.accelerator.memory_allocated(0) == 0
    elif name == "pool":
        p = None
        try:
            p = ft.pool(limit="32MiB")
        except RuntimeError as e:  # MemPool needs a device; say how far it went
            text = str(e)
            assert not isinstance(e, fragless.Error), text
            print("MemPool without a device:", text.splitlines()[0][:200])
            assert fragless.stats(0, pool=1) == {}  # the slot is open, its allocator not made
            return
        print("MemPool made without a device:", p.id)
        with torch.cuda.use_mem_pool(p):
            q = torch._C._cuda_cudaCachingAllocator_raw_alloc(4 * MiB, 0)
        torch._C._cuda_cudaCachingAllocator_raw_delete(q)
    else:
        raise SystemExit("unknown child test %s" % name)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(sys.argv[2])
        sys.exit(0)
    py = torch_python()
    if py is None:
        print("test_real_torch: SKIPPED: no Python with PyTorch (set FRAGLESS_TORCH_PYTHON, or let .ci/run install "
              "it into ~/.cache/fragless/torch-venv: pip install torch)")
        sys.exit(77)
    try:
        import torch  # noqa: F401
        here = True
    except ImportError:
        here = False
    if not here and not os.environ.get("FRAGLESS_REAL_TORCH_REEXEC"):
        os.environ["FRAGLESS_REAL_TORCH_REEXEC"] = "1"
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])
    unittest.main(verbosity=2)
