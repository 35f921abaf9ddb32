"""Device and thread choices shared by the trainer and the inference engine."""

from __future__ import annotations

import os

from tunery.settings import get_settings


def pick_device(device: str | None = None) -> str:
    """`device` (ComputeSettings.device; None: the environment's TUNERY_DEVICE) unless it is auto, else the
    best device present: cuda, then mps, then cpu."""
    import torch

    device = device if device is not None else get_settings().compute.device
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def setup_threads(num_threads: int | None = None, reserve: int = 0) -> int:
    """Set torch's CPU threads: `num_threads` (ComputeSettings.num_threads; None: the environment's
    TUNERY_NUM_THREADS), 0 meaning the cores this process may use minus `reserve`
    (at least 1)."""
    import torch

    n = num_threads if num_threads is not None else get_settings().compute.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, n or cores - reserve)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
