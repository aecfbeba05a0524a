"""The Python package without PyTorch: import, statistics, empty_cache, and the
pluggable-allocator entry points driven through ctypes as PyTorch would, on the CUDA
driver test double. Parts that need torch are skipped with a message when it is absent."""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import unittest

import fragless


class PackageTest(unittest.TestCase):
    def test_stats_and_entry_points(self):
        lib = fragless._library()
        malloc = lib.fragless_torch_malloc_nothrow  # ctypes cannot take fragless_torch_malloc's exception
        self.assertEqual(fragless.stats(5), {})  # no allocator on that device
        self.assertEqual(fragless.memory_summary(5), "")
        p = malloc(3 << 20, 0, None)
        self.assertTrue(p)
        s = fragless.stats(0)
        self.assertEqual(s["allocated_bytes.all.current"], 3 << 20)
        self.assertGreaterEqual(s["reserved_bytes.all.current"], 3 << 20)
        self.assertEqual(s["allocation.all.current"], 1)
        self.assertEqual(s["requested_bytes.all.current"], 3 << 20)
        self.assertEqual(s["fragless.device_calls.create"], s["num_device_alloc"])
        self.assertIn("Allocated memory", fragless.memory_summary(0))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state.json")
            fragless.snapshot(path, 0)
            with open(path) as f:
                state = json.load(f)
            self.assertEqual(state["format"], "fragless-state")
            live = [b for r in state["regions"] for b in r.get("blocks", []) if b[2]]
            self.assertEqual([(int(b[0], 16), b[1]) for b in live], [(p, 3 << 20)])
        ctypes.memset(p, 0x5a, 3 << 20)  # real memory in the driver double
        lib.fragless_torch_free(p, 1 << 20, 0, None)  # the wrong size: refused, still live
        self.assertEqual(fragless.stats(0)["allocation.all.current"], 1)
        lib.fragless_torch_free(p, 3 << 20, 0, None)
        self.assertEqual(fragless.stats(0)["allocated_bytes.all.current"], 0)
        fragless.empty_cache()
        self.assertEqual(fragless.stats(0)["reserved_bytes.all.current"], 0)
        # A quarter of the double's 256 MiB: 100 MiB no longer fits, 40 MiB does.
        ooms_before = fragless.stats(0)["num_ooms"]
        fragless.set_memory_fraction(0.25, 0)
        self.assertFalse(malloc(100 << 20, 0, None))
        q = malloc(40 << 20, 0, None)
        self.assertTrue(q)
        self.assertEqual(fragless.stats(0)["num_ooms"], ooms_before + 1)
        lib.fragless_torch_free(q, 40 << 20, 0, None)
        fragless.set_memory_fraction(1.0, 0)
        with self.assertRaises(ValueError):
            fragless.set_memory_fraction(1.5)

    def test_bad_library_is_a_clear_error(self):
        saved_env, saved_lib = os.environ.get("FRAGLESS_LIB"), fragless._lib
        os.environ["FRAGLESS_LIB"] = os.path.abspath(__file__)  # exists, but is no library
        fragless._lib = None
        try:
            with self.assertRaises(fragless.FraglessError) as ctx:
                fragless.stats(0)
            self.assertIn("cannot load", str(ctx.exception))
        finally:
            fragless._lib = saved_lib
            if saved_env is None:
                del os.environ["FRAGLESS_LIB"]
            else:
                os.environ["FRAGLESS_LIB"] = saved_env

    def test_offline_install(self):
        # README's install line, with no package index: the in-tree backend needs nothing.
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python")
        with tempfile.TemporaryDirectory() as target:
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--target", target, src],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run([sys.executable, "-c", "import fragless, fragless.torch; print(fragless.__name__)"],
                               capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=target))
            self.assertEqual(r.stdout.strip(), "fragless", r.stderr)

    def test_conf_merge(self):
        from fragless.torch import _conf_string
        self.assertEqual(_conf_string({"limit": "8GiB"}, "policy:fragless,limit:4GiB"),
                         "policy:fragless,limit:8GiB")
        self.assertEqual(_conf_string({"expandable_segments": True}, ""), "expandable_segments:True")
        self.assertEqual(_conf_string({}, " trace:/tmp/t.csv "), "trace:/tmp/t.csv")

    def test_torch_install(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            self.skipTest("torch is not installed: fragless.torch.install() not exercised")
        import fragless.torch as ft
        if not torch.cuda.is_available():
            self.skipTest("no CUDA device: fragless.torch.install() needs one")
        ft.install()


if __name__ == "__main__":
    unittest.main()
