#!/usr/bin/env python3
"""One PyTorch training run under one CUDA allocator, for scripts/gpu-check.sh.

A small decoder-only Transformer LM (random tokens, seeded) trains for --steps steps whose
sequence length alternates between --len-a and --len-b, under one allocator:

  default     PyTorch's caching allocator                 (cap: set_per_process_memory_fraction)
  expandable  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True                (same cap)
  fragless    fragless through its Python package      (cap: fragless.torch.install(limit=...))

It prints ONE line `GPU_TRAIN_RESULT {json}` (also written to --out): the allocator, whether
the run completed or hit "CUDA out of memory", the median step time, peak reserved and peak
allocated bytes. It exits 0 whenever that line was printed (an out-of-memory is a result,
not a failure), 2 on bad arguments, 3 when the run could not start (no CUDA device, no
libfragless.so, ...): the line is then printed too, with "error".

Why these shapes (the defaults): the seed scenario, by design. Every activation of this
model is [batch, length, d_model] = T x 256 x 4 bytes (fp32, T = batch x length tokens): the
MLP is 1 x d_model wide, q, k and v are separate projections, one head, and the vocabulary
(256) makes the logits the same size too; only the attention matrices differ. At length 448
(T = 7168) each is 7 MiB. PyTorch's default allocator serves requests of 1 to 10 MiB from 20
MiB segments, and only two 7 MiB blocks fit in one: 6 MiB of every segment stays unused,
too small for the next block. At length 416 (6.5 MiB) three fit, and alternating the two
lengths leaves the segments cut for the other. Replayed through `fragless compare` (a CPU
recording of this loop, 12 layers), the default allocator needs 1.38 x the peak live bytes
however it is capped, expandable segments 1.06 x and fragless 1.02 x. gpu-check.sh sets the
cap between them: 1.15 x the default's peak allocated bytes, measured by a --calibrate run.

--dry-run builds the same model on the CPU and runs 2 steps (one of each length) with no
cap and no fragless, so that this file's logic can be checked on a machine without a GPU.
"""
import argparse
import json
import os
import statistics
import sys
import time
import traceback

RESULT_TAG = "GPU_TRAIN_RESULT"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allocator", choices=("default", "expandable", "fragless"), default="default")
    p.add_argument("--cap-bytes", type=int, default=0,
                   help="memory cap for the allocator in bytes (0: none)")
    p.add_argument("--steps", type=int, default=48, help="training steps (default 48)")
    p.add_argument("--calibrate", action="store_true",
                   help="quick run without a cap (6 steps unless --steps is given) to measure "
                        "the default allocator's peaks")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--len-a", type=int, default=416, help="sequence length of even steps")
    p.add_argument("--len-b", type=int, default=448, help="sequence length of odd steps")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--mlp", type=int, default=1, help="MLP width as a multiple of d_model")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2,
                   help="steps left out of the median step time (default 2: one of each length)")
    p.add_argument("--out", help="also append the result line's JSON to this file")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: for the dry run
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, 2 steps, no cap, no fragless: checks the script without a GPU")
    args = p.parse_args(argv)
    steps_given = any(a == "--steps" or a.startswith("--steps=") for a in argv)
    if args.dry_run:
        args.device = "cpu"
        args.cap_bytes = 0
        if args.allocator != "default":
            p.error("--dry-run runs PyTorch's CPU allocator only (leave --allocator out)")
        if not steps_given:
            args.steps = 2
    if args.calibrate:
        if args.cap_bytes:
            p.error("--calibrate runs without a cap")
        if not steps_given:
            args.steps = 6
    if args.steps < 1 or args.batch < 1 or min(args.len_a, args.len_b) < 2:
        p.error("--steps, --batch must be >= 1 and the lengths >= 2")
    if args.d_model % args.heads:
        p.error("--d-model must be a multiple of --heads")
    if args.cap_bytes < 0:
        p.error("--cap-bytes must be >= 0")
    return args


def parse_conf(text):
    """FRAGLESS_CONF / PYTORCH_CUDA_ALLOC_CONF syntax, key:value,key:value, as a dict (order kept)."""
    conf = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError("FRAGLESS_CONF item %r is not key:value" % item)
        conf[key.strip()] = value.strip()
    return conf


def set_allocator_env(args):
    """PyTorch reads its allocator settings once, at the first CUDA allocation; set or clear
    them before torch is imported so that each run measures exactly one allocator."""
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        os.environ.pop(var, None)
    if args.allocator == "expandable":
        # PYTORCH_ALLOC_CONF is the newer name (PyTorch >= 2.9); older versions ignore it.
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"


def build_model(torch, args):
    nn = torch.nn
    F = torch.nn.functional
    d, heads, hidden = args.d_model, args.heads, args.mlp * args.d_model

    class Block(nn.Module):
        """Pre-norm decoder block; attention written out (no fused kernel) so that the
        tensors it allocates are the same on every device and PyTorch version."""

        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, d)
            self.v = nn.Linear(d, d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, hidden)
            self.fc2 = nn.Linear(hidden, d)

        def forward(self, x, causal):
            b, n, _ = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(b, n, heads, d // heads).transpose(1, 2) for f in (self.q, self.k, self.v))
            att = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
            att = att.masked_fill(causal, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, n, d)
            x = x + self.proj(y)
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(args.vocab, d)
            self.pos = nn.Embedding(max(args.len_a, args.len_b), d)
            self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, args.vocab, bias=False)
            nn.init.normal_(self.tok.weight, std=0.02)
            nn.init.normal_(self.pos.weight, std=0.02)

        def forward(self, ids, causal):
            x = self.tok(ids) + self.pos.weight[: ids.shape[1]]
            for blk in self.blocks:
                x = blk(x, causal)
            return self.head(self.ln(x))

    return LM()


def device_name(torch, args):
    if args.device == "cpu":
        return "cpu"
    try:
        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def is_oom(exc):
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower())


def first_line(exc):
    text = ("%s: %s" % (type(exc).__name__, exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run(args, result):
    t_start = time.perf_counter()
    set_allocator_env(args)
    import torch  # noqa: E402 - after the allocator environment is set

    result["torch"] = torch.__version__
    if args.device != "cpu":
        if not torch.cuda.is_available():
            raise SetupError("torch %s sees no CUDA device" % torch.__version__)
        if args.allocator == "fragless":
            # The package from this checkout unless one is installed; libfragless.so via
            # $FRAGLESS_LIB (gpu-check.sh points it at build-gpu/libfragless.so).
            try:
                import fragless  # noqa: F401
            except ImportError:
                sys.path.insert(0, os.path.join(REPO, "python"))
            import fragless
            import fragless.torch
            # install(**conf) replaces FRAGLESS_CONF with its keywords, so keys given in the
            # environment (trace:PATH from gpu-check.sh) are passed along with the limit.
            conf = parse_conf(os.environ.get("FRAGLESS_CONF"))
            if args.cap_bytes:
                conf["limit"] = str(args.cap_bytes)
            result["fragless_conf"] = ",".join("%s:%s" % kv for kv in conf.items())
            try:
                fragless.torch.install(**conf)
            except Exception as e:  # FraglessError: library missing, too late, ...
                raise SetupError("fragless.torch.install failed: %s" % e)
            # A first tensor: fragless sets up its allocator now (from FRAGLESS_CONF); when it
            # cannot, the allocation raises (RuntimeError, or OutOfMemoryError).
            try:
                probe = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
                ok = probe.data_ptr() != 0
                del probe
            except Exception as e:  # noqa: BLE001 - whatever PyTorch makes of it
                ok, why = False, first_line(e)
            else:
                why = "data_ptr() is 0"
            if not ok:
                raise SetupError("fragless did not serve a first 1 MiB tensor (%s); its reason is on stderr "
                                 "(lines starting with 'fragless:')" % why)
        elif args.cap_bytes:
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = args.cap_bytes / total
            if not 0 < fraction <= 1:
                raise SetupError("cap %d bytes is not within the device's %d bytes" % (args.cap_bytes, total))
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
            result["memory_fraction"] = fraction
        result["device_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        torch.backends.cuda.matmul.allow_tf32 = True  # speed only: shapes and sizes are unchanged
    result["device"] = device_name(torch, args)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = build_model(torch, args).to(dev)
    # foreach=False: one parameter at a time on every device, so that the optimizer's
    # temporaries do not depend on the device's default implementation.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=False)
    gen = torch.Generator().manual_seed(args.seed)  # tokens drawn on the host: same on any device
    masks = {}
    lengths = (args.len_a, args.len_b)
    sync = torch.cuda.synchronize if args.device != "cpu" else (lambda: None)

    times = []
    losses = []
    for step in range(args.steps):
        n = lengths[step % 2]
        result["failed_at_step"] = step
        result["failed_at_len"] = n
        ids = torch.randint(args.vocab, (args.batch, n + 1), generator=gen).to(dev)
        if n not in masks:
            masks[n] = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1)
        sync()
        t0 = time.perf_counter()
        logits = model(ids[:, :-1], masks[n])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
        del logits
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronizes too
        del loss, ids
        sync()
        times.append(time.perf_counter() - t0)
        result["steps_done"] = step + 1
    result.pop("failed_at_step")
    result.pop("failed_at_len")

    timed = times[args.warmup:] or times
    result["median_step_ms"] = round(1000 * statistics.median(timed), 3)
    result["first_loss"] = round(losses[0], 4)
    result["last_loss"] = round(losses[-1], 4)
    result["completed"] = True
    result["wall_s"] = round(time.perf_counter() - t_start, 2)


class SetupError(RuntimeError):
    """The run could not start: not a result."""


def peaks(args, result):
    """Peak reserved / allocated bytes of the allocator that ran (also after an OOM)."""
    if args.device == "cpu":
        return
    import torch
    if args.allocator == "fragless":
        if "fragless" not in sys.modules:
            return
        import fragless
        s = fragless.stats(0)
        result["peak_reserved_bytes"] = s["reserved_bytes.all.peak"]
        result["peak_allocated_bytes"] = s["allocated_bytes.all.peak"]
        result["fragless_num_ooms"] = s["num_ooms"]
        result["fragless_num_alloc_retries"] = s["num_alloc_retries"]
        if s["num_ooms"] and not result.get("oom"):
            # fragless refused an allocation (it raises torch.OutOfMemoryError) but the run
            # caught it and went on, or died of something else: either way it hit the cap.
            result["oom"] = True
            result["completed"] = False
            why = "fragless refused %d allocation(s) (num_ooms)" % s["num_ooms"]
            result["error"] = why + ("; PyTorch then: " + result["error"] if result.get("error") else "")
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(0)
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(0)
        result["num_alloc_retries"] = torch.cuda.memory_stats(0).get("num_alloc_retries", 0)
        # Did PyTorch use expandable segments? Its snapshot says per segment (None: unknown).
        try:
            segs = torch.cuda.memory_snapshot()
            result["expandable_segments"] = any(s.get("is_expandable", False) for s in segs) if segs else None
        except Exception:  # noqa: BLE001 - older PyTorch
            result["expandable_segments"] = None


def main(argv):
    args = parse_args(argv)
    result = {
        "allocator": args.allocator, "mode": "dry-run" if args.dry_run else "calibrate" if args.calibrate else "run",
        "completed": False, "oom": False, "steps": args.steps, "steps_done": 0,
        "cap_bytes": args.cap_bytes, "seed": args.seed, "batch": args.batch,
        "lengths": [args.len_a, args.len_b], "d_model": args.d_model, "layers": args.layers,
        "median_step_ms": None, "peak_reserved_bytes": None, "peak_allocated_bytes": None,
    }
    code = 0
    try:
        run(args, result)
    except SetupError as e:
        result["error"] = str(e)
        code = 3
    except Exception as e:  # noqa: BLE001 - reported in the result line
        result["oom"] = is_oom(e)
        result["error"] = first_line(e)
        if not result["oom"]:
            traceback.print_exc()
    try:
        peaks(args, result)
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA context broken by the error above
        result.setdefault("stats_error", first_line(e))
    line = "%s %s" % (RESULT_TAG, json.dumps(result, sort_keys=True))
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stderr.flush()
    # Leave without Python's teardown: after an error the CUDA context may be unusable, and a
    # crash while tensors are freed at exit would hide the result printed above.
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
