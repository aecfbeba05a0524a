"""Plug fragless into PyTorch as its CUDA allocator (torch.cuda.memory.CUDAPluggableAllocator)."""
import os

from . import FraglessError, library_path

_installed = False


def _conf_string(conf, base=""):
    """FRAGLESS_CONF text (key:value,key:value, PyTorch's syntax) for the keyword
    arguments on top of `base` (what the environment already says): a keyword replaces
    the same key, other keys of base are kept."""
    merged = {}
    for item in filter(None, (part.strip() for part in base.split(","))):
        key, _, value = item.partition(":")
        merged[key.strip()] = value.strip()
    merged.update((k, str(v)) for k, v in conf.items())
    return ",".join("%s:%s" % (k, v) for k, v in merged.items())


def install(**conf):
    """Make fragless PyTorch's CUDA allocator, with FRAGLESS_CONF keys as keyword arguments
    (e.g. install(limit="40GiB")). Must run before the first CUDA allocation."""
    global _installed
    if _installed:
        return
    try:
        import torch
    except ImportError as e:
        raise FraglessError("fragless.torch.install() needs PyTorch: %s" % e)
    if torch.cuda.is_initialized() and torch.cuda.memory_allocated() > 0:
        raise FraglessError("fragless.torch.install() came too late: PyTorch has already allocated CUDA memory "
                            "with its own allocator; call it first thing, before any tensor is put on the GPU")
    if conf:
        os.environ["FRAGLESS_CONF"] = _conf_string(conf, os.environ.get("FRAGLESS_CONF", ""))
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "fragless_torch_malloc", "fragless_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(alloc)
    except RuntimeError as e:
        raise FraglessError("fragless.torch.install() came too late: %s" % e)
    _installed = True
