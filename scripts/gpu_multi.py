#!/usr/bin/env python3
"""Two GPUs with fragless, for scripts/gpu-check.sh (step g, machines with 2+ GPUs).

  --peer        one process, run under `fragless run` (every tensor one cudaMallocAsync served
                by fragless): a tensor made on cuda:0 is copied to cuda:1 and back (peer
                copies of mapped memory work only when cuMemSetAccess named the peer) and a
                copy kernel on cuda:1 reads cuda:0's tensor with peer access enabled.
  --allreduce   one rank of `torchrun --nproc-per-node 2`, under `fragless run`: NCCL
                all-reduces of fragless-allocated tensors of several sizes, checked.
  --register    one rank of `torchrun --nproc-per-node 2`, fragless as PyTorch's pluggable
                allocator in a torch.cuda.MemPool whose blocks NCCL registers
                (ProcessGroupNCCL.register_mem_pool, where this PyTorch offers it), then
                all-reduces from the pool; with FRAGLESS_CONF=registrable:SIZE each block is
                one physical allocation, as ncclCommRegister needs.

Each process prints ONE line `GPU_MULTI_RESULT {json}`: ok (every check passed), what ran,
and error (the first failure) or skipped (what this machine or PyTorch does not offer).
Exit 0 when the line was printed with ok or skipped, 1 on a failed check, 3 when it could
not start (no torch, fewer than 2 GPUs).
"""
import argparse
import json
import os
import sys
import time
import traceback

RESULT_TAG = "GPU_MULTI_RESULT"
HERE = os.path.dirname(os.path.abspath(__file__))


def emit(result, code):
    print("%s %s" % (RESULT_TAG, json.dumps(result, sort_keys=True)), flush=True)
    sys.exit(code)


def peer(torch, result):
    n = (64 << 20) // 4  # 64 MiB of float32
    a = torch.arange(n, device="cuda:0", dtype=torch.float32)
    torch.cuda.synchronize(0)
    t0 = time.perf_counter()
    b = a.to("cuda:1")
    torch.cuda.synchronize(1)
    secs = time.perf_counter() - t0
    back = b.to("cuda:0")
    result["copy_0_to_1_gbps"] = round(n * 4 / secs / 1e9, 2) if secs > 0 else None
    result["p2p_0_1"] = bool(torch.cuda.can_device_access_peer(1, 0))
    if not torch.equal(back, a):
        raise AssertionError("cuda:0 -> cuda:1 -> cuda:0 changed the data")
    # A kernel on cuda:1 that reads cuda:0's memory (copy_ between devices runs on the
    # destination's stream and reads the source directly when peer access is on).
    c = torch.empty(n, device="cuda:1", dtype=torch.float32)
    with torch.cuda.device(1):
        c.copy_(a)
    torch.cuda.synchronize(1)
    if not torch.equal(c.cpu(), a.cpu()):
        raise AssertionError("cuda:1 reading cuda:0's tensor saw other data")
    result["checked_bytes"] = n * 4 * 3


def init_rank(torch):
    import torch.distributed as dist
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    try:  # device_id (2.3+) makes the communicator at once, on this rank's GPU
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    except TypeError:
        dist.init_process_group("nccl")
    return dist, rank, local


def allreduce(torch, result, sizes):
    dist, rank, _ = init_rank(torch)
    world = dist.get_world_size()
    want = float(sum(range(1, world + 1)))
    for numel in sizes:
        t = torch.empty(numel, device="cuda", dtype=torch.float32)
        t.fill_(float(rank + 1))
        dist.all_reduce(t)
        torch.cuda.synchronize()
        if not bool((t == want).all()):
            raise AssertionError("all_reduce of %d floats: expected %g everywhere" % (numel, want))
    result["sizes"] = sizes
    result["world"] = world
    return dist


def register(torch, result, sizes):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
    if not hasattr(torch.cuda, "MemPool") or not hasattr(torch.cuda, "use_mem_pool"):
        result["skipped"] = "this PyTorch has no torch.cuda.MemPool (2.5+)"
        return
    import fragless.torch as ft
    plug = torch.cuda.memory.CUDAPluggableAllocator(ft.library_path(), "fragless_torch_malloc", "fragless_torch_free")
    pool = torch.cuda.MemPool(plug.allocator())
    dist, rank, local = init_rank(torch)
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cuda", local))
    if not hasattr(backend, "register_mem_pool"):
        result["skipped"] = "this PyTorch's ProcessGroupNCCL has no register_mem_pool"
        dist.destroy_process_group()
        return
    with torch.cuda.use_mem_pool(pool):
        tensors = [torch.empty(n, device="cuda", dtype=torch.float32) for n in sizes]
    backend.register_mem_pool(pool)
    result["registered_blocks"] = len(tensors)
    want = float(sum(range(1, dist.get_world_size() + 1)))
    for t in tensors:
        t.fill_(float(rank + 1))
        dist.all_reduce(t)
    torch.cuda.synchronize()
    for t in tensors:
        if not bool((t == want).all()):
            raise AssertionError("all_reduce from a registered pool: expected %g" % want)
    if hasattr(backend, "deregister_mem_pool"):
        backend.deregister_mem_pool(pool)
    del tensors
    dist.destroy_process_group()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--peer", action="store_true")
    g.add_argument("--allreduce", action="store_true")
    g.add_argument("--register", action="store_true")
    args = p.parse_args(argv)
    mode = "peer" if args.peer else "allreduce" if args.allreduce else "register"
    result = {"mode": mode, "rank": int(os.environ.get("RANK", "0")), "ok": False,
              "fragless_conf": os.environ.get("FRAGLESS_CONF", ""),
              "pytorch_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    try:
        import torch
    except ImportError as e:
        result["error"] = "no torch: %s" % e
        emit(result, 3)
    result["torch"] = torch.__version__
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        result["error"] = "needs 2 GPUs, torch sees %d" % (torch.cuda.device_count() if torch.cuda.is_available() else 0)
        emit(result, 3)
    sizes = [1, 1000, 1 << 18, (3 << 20) + 7, 16 << 20]
    try:
        if mode == "peer":
            peer(torch, result)
        elif mode == "allreduce":
            dist = allreduce(torch, result, sizes)
            dist.destroy_process_group()
        else:
            register(torch, result, sizes)
        result["ok"] = True
        emit(result, 0)
    except Exception as e:  # a failed check or a crash of the step: the result says which
        result["error"] = ("%s: %s" % (type(e).__name__, e))[:400]
        result["trace"] = traceback.format_exc()[-800:]
        emit(result, 1)


if __name__ == "__main__":
    main(sys.argv[1:])
