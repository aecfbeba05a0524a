"""Plug fragless into PyTorch as its CUDA allocator (torch.cuda.memory.CUDAPluggableAllocator)."""
import os

from . import FraglessError, library_path

_installed = False


def _conf_string(conf):
    # FRAGLESS_CONF syntax: key:value,key:value (PyTorch's). True/False spelled as Python does.
    return ",".join("%s:%s" % (k, v) for k, v in conf.items())


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
        os.environ["FRAGLESS_CONF"] = _conf_string(conf)
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "fragless_torch_malloc", "fragless_torch_free")
    try:
        torch.cuda.memory.change_current_allocator(alloc)
    except RuntimeError as e:
        raise FraglessError("fragless.torch.install() came too late: %s" % e)
    _installed = True
