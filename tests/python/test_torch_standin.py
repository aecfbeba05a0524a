"""fragless.torch against the stand-in PyTorch (standin_torch.py) on the driver double:
the version check, every routed call, an out-of-memory raised as torch.OutOfMemoryError,
CUDA graphs as torch.cuda.graph and make_graphed_callables make them (every policy, each
in a process of its own: the allocator is made once per process), and pool()."""
import ctypes
import gc
import inspect
import os
import pickle
import subprocess
import sys
import tempfile
import unittest

import fragless
import standin_torch

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


class VersionTest(unittest.TestCase):
    def test_refuses_old_pytorch(self):
        for version, abi, words in (("1.13.1", True, "2.7 or later; this is PyTorch 1.13.1"),
                                    ("2.6.0+cu124", True, "this is PyTorch 2.6.0"),
                                    ("2.8.0", False, "C++11 string ABI")):
            torch = standin_torch.build(version=version, cxx11_abi=abi)
            with standin_torch.installed_module(torch) as ft:
                with self.assertRaises(fragless.FraglessError) as ctx:
                    ft.install()
                self.assertIn(words, str(ctx.exception))
                self.assertIn("fragless command line", str(ctx.exception))
                self.assertIsNone(torch._standin.state["allocator"])  # nothing was changed
        torch = standin_torch.build(version="2.15.0")
        from fragless.torch import check_torch
        check_torch(torch, pools=True)
        del torch.cuda.MemPool
        with self.assertRaises(fragless.FraglessError) as ctx:
            check_torch(torch, pools=True)
        self.assertIn("torch.cuda.MemPool", str(ctx.exception))


def run_child(test, conf):
    """One test of ChildTests in a process with FRAGLESS_CONF=conf."""
    env = dict(os.environ, FRAGLESS_CONF=conf, FRAGLESS_STANDIN_CHILD="1")
    r = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_torch_standin.ChildTests." + test],
                       cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    return r


class ProcessTests(unittest.TestCase):
    def check_child(self, test, conf):
        r = run_child(test, conf)
        self.assertEqual(r.returncode, 0, "%s under %s:\n%s" % (test, conf, r.stderr[-6000:]))

    def test_routed_calls(self):
        self.check_child("test_routed_calls", "policy:fragless,oom_report:0,top:0")

    def test_out_of_memory(self):
        self.check_child("test_out_of_memory", "policy:fragless,top:0")

    def test_graphs_every_policy(self):
        for policy in fragless_policies():
            with self.subTest(policy=policy):
                self.check_child("test_graphs", "policy:%s,oom_report:0,top:0" % policy)

    def test_pool(self):
        self.check_child("test_pool", "policy:fragless,oom_report:0,top:0")

    def test_errors(self):
        r = run_child("test_errors", "policy:fragless,oom_report:0,top:0")
        self.assertEqual(r.returncode, 0, r.stderr[-6000:])
        # Every failure came as an exception: the library printed nothing of its own.
        self.assertEqual([line for line in r.stderr.splitlines() if line.startswith("fragless")], [])


def fragless_policies():
    return ("fragless", "cca", "cca-expandable", "nocache")


@unittest.skipUnless(os.environ.get("FRAGLESS_STANDIN_CHILD"), "run by ProcessTests in a process of its own")
class ChildTests(unittest.TestCase):
    def setUp(self):
        self.torch = standin_torch.build()
        self.ctx = standin_torch.installed_module(self.torch)
        self.ft = self.ctx.__enter__()
        self.fake = self.torch._standin.fake

    def tearDown(self):
        self.ctx.__exit__(None, None, None)

    def test_routed_calls(self):
        torch, ft = self.torch, self.ft
        originals = {name: getattr(torch.cuda.memory, name) for name in ft.ROUTED if hasattr(torch.cuda.memory, name)}
        acc_originals = {name: getattr(torch.accelerator, name) for name in ft.ROUTED if hasattr(torch.accelerator, name)}
        ft.install()
        self.assertIsNotNone(torch._standin.state["allocator"])
        # Every routed function replaced, on every module, with the original's signature.
        for name, original in originals.items():
            for module in (torch.cuda.memory, torch.cuda):
                if not hasattr(module, name):
                    continue
                routed = getattr(module, name)
                self.assertIsNot(routed, original, name)
                self.assertEqual(inspect.signature(routed), inspect.signature(original), name)
        for name, original in acc_originals.items():
            self.assertIsNot(getattr(torch.accelerator, name), original, name)
            self.assertEqual(inspect.signature(getattr(torch.accelerator, name)), inspect.signature(original), name)
        self.assertEqual(torch.cuda.memory_stats(), {})  # nothing allocated yet, as PyTorch says
        x = torch.empty(5 * MiB)
        s = torch.cuda.memory_stats()
        for pool in ("all", "large_pool", "small_pool"):
            for metric in ("current", "peak", "allocated", "freed"):
                for stat in ("allocation", "allocated_bytes", "active", "active_bytes", "reserved_bytes", "segment",
                             "requested_bytes", "inactive_split", "inactive_split_bytes"):
                    self.assertIn("%s.%s.%s" % (stat, pool, metric), s)
        self.assertEqual(s["allocated_bytes.all.current"], 5 * MiB)
        self.assertEqual(s["allocated_bytes.large_pool.current"], 5 * MiB)
        self.assertEqual(s["allocated_bytes.small_pool.current"], 0)
        self.assertEqual(torch.cuda.memory_allocated(), 5 * MiB)
        self.assertEqual(torch.cuda.memory_allocated("cuda:0"), 5 * MiB)
        self.assertEqual(torch.cuda.memory.memory_allocated(device=0), 5 * MiB)
        self.assertGreaterEqual(torch.cuda.memory_reserved(), 5 * MiB)
        self.assertEqual(torch.cuda.memory_cached(0), torch.cuda.memory_reserved(0))
        self.assertEqual(torch.cuda.max_memory_cached(0), torch.cuda.max_memory_reserved(0))
        self.assertEqual(torch.accelerator.memory_allocated(0), 5 * MiB)
        self.assertEqual(torch.accelerator.memory_stats()["num_ooms"], 0)
        nested = torch.cuda.memory_stats_as_nested_dict()
        self.assertEqual(nested["allocated_bytes"]["all"]["current"], 5 * MiB)
        self.assertIn("largest_free", nested["fragless"])
        torch.cuda.reset_accumulated_memory_stats()
        self.assertEqual(torch.cuda.memory_stats()["allocated_bytes.all.allocated"], 0)
        y = torch.empty(MiB)
        self.assertEqual(torch.cuda.memory_stats()["allocated_bytes.all.allocated"], MiB)
        del y
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.reset_max_memory_allocated()
        torch.accelerator.reset_peak_memory_stats()
        self.assertEqual(torch.cuda.max_memory_allocated(), 5 * MiB)
        torch.cuda.set_per_process_memory_fraction(0.5)
        self.assertAlmostEqual(torch.cuda.get_per_process_memory_fraction(), 0.5, places=3)
        free, total = torch.cuda.mem_get_info()
        self.assertEqual(total, 256 * MiB)
        self.assertLessEqual(free, 128 * MiB - 5 * MiB + 1)  # under the limit, what fragless may still get
        self.assertEqual(torch.accelerator.get_memory_info(0), (free, total))
        torch.cuda.set_per_process_memory_fraction(1.0)
        self.assertIn("Allocated memory", torch.cuda.memory_summary())
        # Snapshots: PyTorch's format, from fragless's state and its recorded events.
        segs = torch.cuda.memory_snapshot()
        blocks = [b for seg in segs for b in seg["blocks"] if b["state"] == "active_allocated"]
        self.assertEqual([(b["address"], b["size"]) for b in blocks], [(x.ptr, 5 * MiB)])
        for seg in segs:
            self.assertEqual(sum(b["size"] for b in seg["blocks"]), seg["total_size"])
        torch.cuda.memory._record_memory_history(max_entries=1000)
        z = torch.empty(3 * MiB)
        del z
        w = torch.empty(MiB)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "snap.pickle")
            torch.cuda.memory._dump_snapshot(path)
            with open(path, "rb") as f:
                snap = pickle.load(f)
            actions = [(e["action"], e["size"]) for e in snap["device_traces"][0]]
            self.assertEqual(actions, [("alloc", 3 * MiB), ("free_completed", 3 * MiB), ("alloc", MiB)])
            self.assertEqual(len([b for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"]), 2)
            cli = os.environ.get("FRAGLESS_CLI")
            if cli:  # the CLI reads it back as a trace
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # a sanitized CLI has its own runtime
                r = subprocess.run([cli, "compare", path, "--policies", "fragless"], capture_output=True, text=True,
                                   env=env)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("fragless", r.stdout)
        torch.cuda.memory._record_memory_history(enabled=None)
        del w
        # empty_cache: fragless's (the device's reserved memory back to 0 with nothing live)
        del x
        gc.collect()
        torch.cuda.empty_cache()
        self.assertEqual(torch.cuda.memory_reserved(), 0)
        torch.accelerator.empty_cache()
        self.assertEqual(torch._standin.calls["empty_cache_native"], 0)
        # record_stream goes to fragless too
        t = torch.empty(MiB)
        t.record_stream(types_ns(cuda_stream=0x77))
        self.assertEqual(torch._standin.calls["record_stream"].cuda_stream, 0x77)

    def test_out_of_memory(self):
        torch, ft = self.torch, self.ft
        ft.install(limit="64MiB")
        keep = [torch.empty(20 * MiB)]
        batch = 64
        done = []
        while batch >= 1:  # a training loop shrinking its batch at each out-of-memory
            try:
                act = torch.empty(batch * MiB)
                done.append(batch)
                del act
                break
            except torch.cuda.OutOfMemoryError as e:
                self.assertIn("out of memory on device 0", str(e))
                self.assertIn("Verdict", str(e))
                batch //= 2
        self.assertEqual(done, [32])
        self.assertEqual(torch.cuda.memory_stats()["num_ooms"], 1)
        with self.assertRaises(RuntimeError) as ctx:
            torch.empty(-1)
        self.assertNotIsInstance(ctx.exception, torch.OutOfMemoryError)
        del keep

    def test_graphs(self):
        torch, ft = self.torch, self.ft
        ft.install()
        fake = self.fake
        weights = [torch.empty(3 * MiB + 512 * i) for i in range(3)]
        static_in = torch.empty(2 * MiB)
        # torch.cuda.graph: synchronize, empty_cache (fragless's), capture on a side stream.
        g1 = torch.cuda.CUDAGraph()
        tmp = torch.empty(MiB)
        with torch.cuda.graph(g1):
            del tmp  # a block from before, freed first thing in the capture (seen by its stream)
            a = torch.empty(5 * MiB)
            b = torch.empty(700 * 1024)
            del a  # an intermediate, freed inside
            c = torch.empty(5 * MiB - 4096)
            out1 = torch.empty(MiB + 512)
            del b, c
        self.assertGreater(fragless.stats(0)["fragless.graph_bytes"], 5 * MiB)
        g1.replay()
        del out1  # the output read and dropped: kept for the graph
        self.churn(torch)
        g1.replay()
        # make_graphed_callables' way: a second graph in the first one's pool.
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2, pool=g1.pool()):
            d = torch.empty(9 * MiB)
            e = torch.empty(256 * 1024)
            del d
            f = torch.empty(3 * MiB)
        g2.replay()
        g1.replay()
        del e
        self.churn(torch)
        g1.replay()
        g2.replay()
        self.assertEqual(fake.fakecuda_capture_violations(), 0)
        self.assertEqual(fake.fakecuda_graph_faults(), 0)
        self.assertTrue(all(w.intact() for w in weights) and static_in.intact())
        # Both graphs of the pool gone: their memory back (f still the program's).
        held = fragless.stats(0)["fragless.graph_bytes"]
        del g1
        gc.collect()
        self.assertEqual(fragless.stats(0)["fragless.graph_bytes"], held)  # g2 still uses the pool
        g2.reset()
        self.assertEqual(fragless.stats(0)["fragless.graph_kept_bytes"], 0)
        del f
        self.assertEqual(fragless.stats(0)["fragless.graph_bytes"], 0)
        self.churn(torch)
        self.assertEqual(fake.fakecuda_capture_violations(), 0)

    def churn(self, torch):
        """Outside captures: allocations and frees on two streams, written; empty_cache;
        the device filled until out of memory, then emptied."""
        side = torch.cuda.Stream()
        live = []
        for i in range(30):
            with torch.cuda.stream(side if i % 2 else 0):
                live.append(torch.empty((i % 7 + 1) * 300 * 1024 + 512 * i))
        del live[::2]
        torch.cuda.empty_cache()
        big = []
        try:
            while len(big) < 200:
                big.append(torch.empty(8 * MiB))
        except torch.cuda.OutOfMemoryError:
            pass
        self.assertTrue(all(t.intact() for t in live + big))
        del big, live
        torch.cuda.empty_cache()

    def test_pool(self):
        torch, ft = self.torch, self.ft
        p = ft.pool(limit="32MiB")  # without install(): PyTorch's allocator elsewhere
        self.assertIsInstance(p, torch.cuda.MemPool)
        with torch.cuda.use_mem_pool(p):
            kv = torch.empty(16 * MiB)
            with self.assertRaises(torch.cuda.OutOfMemoryError):
                torch.empty(20 * MiB)  # over the pool's own limit
        s = fragless.stats(0, pool=p)
        self.assertEqual(s["allocated_bytes.all.current"], 16 * MiB)
        self.assertEqual(s["fragless.limit"], 32 * MiB)
        self.assertEqual(fragless.stats(0), {})  # install()'s allocator was never made
        q = ft.pool()
        self.assertNotEqual(p._fragless_slot, q._fragless_slot)
        del kv

    def test_errors(self):
        """Each failing call through fragless.torch and the routed functions raises
        fragless.Error's subclass for the library's status, with its message."""
        torch, ft = self.torch, self.ft
        conf = os.environ["FRAGLESS_CONF"]
        for kwargs, words in (({"limit": "lots"}, "FRAGLESS_CONF: limit: 'lots'"),
                              ({"polcy": "cca"}, "polcy")):
            with self.assertRaises(fragless.InvalidArgumentError) as ctx:
                ft.install(**kwargs)
            self.assertIsInstance(ctx.exception, ValueError)
            self.assertIn("fragless.torch.install(): nothing was changed: ", str(ctx.exception))
            self.assertIn(words, str(ctx.exception))
            self.assertIsNone(torch._standin.state["allocator"])
            self.assertEqual(os.environ["FRAGLESS_CONF"], conf)
        ft.install()
        x = torch.empty(MiB)
        with self.assertRaises(fragless.InvalidArgumentError) as ctx:
            torch.cuda.set_per_process_memory_fraction(2.0)
        self.assertIn("memory fraction 2 is not in (0, 1]", str(ctx.exception))
        with self.assertRaises(fragless.InvalidArgumentError) as ctx:
            torch.cuda.set_per_process_memory_fraction(0.5, device=3)  # the double has one device
        self.assertIn("cannot set up device 3: ", str(ctx.exception))
        with self.assertRaises(fragless.InvalidArgumentError) as ctx:
            torch.cuda.memory_stats(64)
        self.assertIn("device 64 is out of range", str(ctx.exception))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "no-such-folder", "snap.pickle")
            with self.assertRaises(fragless.FileError) as ctx:
                torch.cuda.memory._dump_snapshot(path)
            self.assertIsInstance(ctx.exception, OSError)
            self.assertIn("_dump_snapshot under fragless: cannot write " + path, str(ctx.exception))
        # During a capture empty_cache gives nothing back and says so.
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = torch.empty(MiB)
            with self.assertRaises(fragless.Error) as ctx:
                torch.cuda.empty_cache()
        self.assertIn("empty_cache on device 0: ", str(ctx.exception))
        self.assertIn("capture", str(ctx.exception))
        self.assertNotEqual(ctx.exception.status, None)
        del y, g
        gc.collect()
        # record_stream of memory fragless did not allocate: left to its owner, as PyTorch does.
        foreign = types_ns(untyped_storage=lambda: types_ns(data_ptr=lambda: 0x1234000))
        torch.Tensor.record_stream(foreign, types_ns(cuda_stream=0x77))
        self.assertIs(torch._standin.calls["record_stream"].cuda_stream, 0x77)
        # Pools: a bad key, then more than FRAGLESS_TORCH_POOLS.
        with self.assertRaises(fragless.InvalidArgumentError) as ctx:
            ft.pool(limit="-3")
        self.assertIn("fragless.torch.pool(): pool configuration", str(ctx.exception))
        self.assertIn("limit", str(ctx.exception))
        pools = [ft.pool() for _ in range(4)]
        with self.assertRaises(fragless.Error) as ctx:
            ft.pool()
        self.assertIn("no pool slot left: at most 4", str(ctx.exception))
        del pools, x


def types_ns(**kw):
    import types
    return types.SimpleNamespace(**kw)


if __name__ == "__main__":
    unittest.main()
