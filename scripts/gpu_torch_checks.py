#!/usr/bin/env python3
"""fragless.torch's contracts on a real GPU, for scripts/gpu-check.sh (step g).

  --check graphs   under fragless.torch.install(limit=4GiB): torch.cuda.graph capture and
                   replays of a small MLP with allocations, frees and empty_cache between
                   replays, outputs equal to eager each time; make_graphed_callables
                   (forward and backward graphs sharing a pool), outputs and gradients
                   equal to eager; the memory fragless kept for the graphs given back once
                   they are gone. Then an out-of-memory: a loop asking for more than the
                   limit catches torch.OutOfMemoryError, halves its batch and goes on.
  --check pool     without install(): x = torch.randn(...) inside
                   torch.cuda.use_mem_pool(fragless.torch.pool(limit=...)) comes from
                   fragless (its statistics), computes what the CPU computes, and the
                   pool's limit raises torch.OutOfMemoryError.
  --check run      under `fragless run` (PyTorch's cudaMallocAsync backend, served by
                   fragless's preload library): torch.cuda.memory_allocated /
                   memory_reserved / max_memory_allocated follow a 64 MiB tensor and
                   reset_peak_memory_stats; empty_cache gives cached memory back; twenty
                   torch.cuda.graph captures with a 64 MiB intermediate, each replayed and
                   deleted, leave memory_reserved within 128 MiB of the first's, with
                   outputs equal to eager.

Each check prints ONE line `GPU_TORCH_CHECK {json}` (ok, detail) and exits 0 when it
printed it (ok false is a result), 3 when it could not start (no GPU, no library).
"""
import argparse
import copy
import gc
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TAG = "GPU_TORCH_CHECK"


def report(result):
    print("%s %s" % (TAG, json.dumps(result, sort_keys=True)), flush=True)


def close(a, b):
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * (1 + b.abs().max()))


def check_graphs(torch, fragless, result):
    import fragless.torch as ft
    ft.install(limit="4GiB")
    torch.manual_seed(0)
    dev = "cuda"
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512)).to(dev)
    static_in = torch.randn(64, 512, device=dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as PyTorch's notes do
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad():
        with torch.cuda.graph(g):
            static_out = model(static_in)
    held = fragless.stats(0)["fragless.graph_bytes"]
    equal = []
    for i in range(5):
        x = torch.randn(64, 512, device=dev)
        static_in.copy_(x)
        g.replay()
        junk = [torch.empty(8 << 20, dtype=torch.uint8, device=dev) for _ in range(16)]  # churn between replays
        del junk
        torch.cuda.empty_cache()
        g.replay()
        with torch.no_grad():
            eager = model(x)
        torch.cuda.synchronize()
        equal.append(close(static_out, eager))
    result["graph_replays_equal_eager"] = equal
    result["graph_bytes_held"] = held
    # make_graphed_callables: forward and backward graphs in one pool.
    module = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).to(dev)
    ref = copy.deepcopy(module)
    sample = (torch.randn(32, 512, device=dev, requires_grad=True),)
    graphed = torch.cuda.make_graphed_callables(module, sample)
    grads_equal = []
    for i in range(3):
        x = torch.randn(32, 512, device=dev, requires_grad=True)
        xr = x.detach().clone().requires_grad_()
        out = graphed(x)
        out.square().sum().backward()
        out_ref = ref(xr)
        out_ref.square().sum().backward()
        torch.cuda.synchronize()
        grads_equal.append(close(out, out_ref) and close(x.grad, xr.grad) and
                           all(close(p.grad, q.grad) for p, q in zip(module.parameters(), ref.parameters())))
        for p in list(module.parameters()) + list(ref.parameters()):
            p.grad = None
    result["graphed_callables_equal_eager"] = grads_equal
    before = fragless.stats(0)["fragless.graph_bytes"]
    del g, graphed, static_out
    gc.collect()
    torch.cuda.synchronize()
    result["graph_bytes_after_release"] = fragless.stats(0)["fragless.graph_bytes"]
    result["graph_bytes_before_release"] = before
    # An out-of-memory as an exception: a loop halving its batch.
    batch, caught, sizes, ok_data = 1 << 13, [], [], False
    while batch:
        try:
            t = torch.empty(batch << 20, dtype=torch.uint8, device=dev)  # batch MiB
            t.fill_(7)
            sizes.append(batch)
            ok_data = int(t[-1].item()) == 7
            del t
            break
        except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203
            caught.append((type(e).__name__, isinstance(e, getattr(torch, "OutOfMemoryError", RuntimeError)),
                           "out of memory on device" in str(e)))
            batch //= 2
    result["oom_caught"] = caught[:3]
    result["oom_then_batch_mib"] = sizes
    result["ok"] = (all(equal) and all(grads_equal) and held > 0 and
                    result["graph_bytes_after_release"] < before and bool(caught) and all(c[1] and c[2] for c in caught)
                    and bool(sizes) and ok_data)


def check_pool(torch, fragless, result):
    import fragless.torch as ft
    p = ft.pool(limit="256MiB")
    torch.manual_seed(0)
    a_cpu = torch.randn(512, 512)
    with torch.cuda.use_mem_pool(p):
        a = a_cpu.to("cuda")
        b = a @ a
        torch.cuda.synchronize()
        s = fragless.stats(0, pool=p)
        try:
            torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
            over = "no exception"
        except torch.cuda.OutOfMemoryError as e:
            over = type(e).__name__
    c = torch.ones(1024, device="cuda")  # outside: PyTorch's allocator
    result["pool_allocated_bytes"] = s.get("allocated_bytes.all.current", 0)
    result["pool_reserved_bytes"] = s.get("reserved_bytes.all.current", 0)
    result["matmul_equal_cpu"] = close(b.cpu(), a_cpu @ a_cpu)
    result["over_limit"] = over
    result["outside_pool_native"] = fragless.stats(0) == {} and c.sum().item() == 1024
    result["ok"] = (result["pool_reserved_bytes"] > 0 and result["matmul_equal_cpu"] and over == "OutOfMemoryError"
                    and result["outside_pool_native"])


def check_run(torch, fragless, result):
    mib = 1 << 20
    result["backend"] = torch.cuda.get_allocator_backend()
    result["preloaded"] = "libfragless_preload" in os.environ.get("LD_PRELOAD", "")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    x = torch.empty(64 * mib, dtype=torch.uint8, device="cuda")
    alloc = torch.cuda.memory_allocated() - base
    reserved = torch.cuda.memory_reserved()
    del x
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    peak_reset = torch.cuda.max_memory_allocated() == torch.cuda.memory_allocated()
    before_empty = torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    after_empty = torch.cuda.memory_reserved()
    result.update(allocated_64mib=alloc, reserved=reserved, peak_reset=peak_reset,
                  reserved_before_empty=before_empty, reserved_after_empty=after_empty)
    # Graphs captured and deleted again and again.
    w = torch.randn(1024, 1024, device="cuda")
    inp = torch.randn(16 * 1024, 1024, device="cuda")  # 64 MiB
    equal, first = True, None
    for i in range(20):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            (inp @ w).relu_()  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = (inp @ w).relu_() * 2  # a 64 MiB intermediate and output
        g.replay()
        torch.cuda.synchronize()
        equal = equal and close(out, (inp @ w).relu_() * 2)
        del g, out
        torch.cuda.synchronize()
        if first is None:
            first = torch.cuda.memory_reserved()
    last = torch.cuda.memory_reserved()
    result.update(graphs_equal=equal, reserved_after_first_graph=first, reserved_after_20_graphs=last)
    result["ok"] = (result["backend"] == "cudaMallocAsync" and result["preloaded"] and alloc >= 64 * mib
                    and reserved >= alloc and peak_reset and after_empty < before_empty and equal
                    and last <= first + 128 * mib)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", choices=("graphs", "pool", "run"), required=True)
    args = ap.parse_args(argv)
    result = {"check": args.check, "ok": False}
    try:
        import torch
        if not torch.cuda.is_available():
            result["error"] = "torch %s sees no CUDA device" % torch.__version__
            report(result)
            return 3
        try:
            import fragless  # noqa: F401
        except ImportError:
            sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
        import fragless
        result["torch"] = torch.__version__
        {"graphs": check_graphs, "pool": check_pool, "run": check_run}[args.check](torch, fragless, result)
    except Exception as e:  # noqa: BLE001 - a result, with its traceback on stderr
        traceback.print_exc()
        result["error"] = ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:300]
    report(result)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
