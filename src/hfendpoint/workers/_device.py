"""
Where a model runs: the device asked for, or the first accelerator there
is, one GPU per worker when the gateway runs several (C{--workers N}).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from hfendpoint.wire import WORKER_INDEX_ENV, WORKERS_ENV


def worker_index() -> int:
    """
    This worker's index among the gateway's workers (0 when alone).
    """
    try:
        return max(0, int(os.environ.get(WORKER_INDEX_ENV, "0")))
    except ValueError:
        return 0


def pick_device(requested: Optional[str] = None) -> str:
    """
    C{requested} when given (C{cpu}, C{cuda}, C{cuda:1}, C{mps}); otherwise
    CUDA when present, the GPU chosen by the worker's index so that
    C{--workers N} spreads N workers over the GPUs; otherwise Apple's MPS;
    otherwise the CPU.
    """
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{worker_index() % torch.cuda.device_count()}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def set_cpu_threads(device: str, threads: Optional[int] = None) -> None:
    """
    On the CPU, give torch the cores this worker may use, shared with the
    other workers of the gateway (C{HFENDPOINT_WORKERS}), rather than all of
    the machine's in every worker.
    """
    if not device.startswith("cpu"):
        return
    import torch

    if threads is None:
        try:
            workers = max(1, int(os.environ.get(WORKERS_ENV, "1")))
        except ValueError:
            workers = 1
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
    torch.set_num_threads(threads)


def torch_dtype(name: Optional[str], device: str) -> Any:
    """
    The torch dtype named C{name} (C{float32}, C{float16}, C{bfloat16}), or
    by default half precision on a GPU and full precision elsewhere.
    """
    import torch

    if name:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
        return dtype
    return torch.float16 if device.startswith("cuda") else torch.float32
