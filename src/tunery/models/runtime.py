"""Device and thread choices shared by the trainer and the inference engine."""

from __future__ import annotations

import os

from tunery.settings import Settings, get_settings


def pick_device(settings: Settings | None = None) -> str:
    """TUNERY_DEVICE, or the best device present: cuda, then mps, then cpu."""
    import torch

    settings = settings or get_settings()
    if settings.device and settings.device != "auto":
        return settings.device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def setup_threads(settings: Settings | None = None, reserve: int = 0) -> int:
    """Set torch's CPU threads: TUNERY_NUM_THREADS, else the cores this process may use minus `reserve`
    (at least 1)."""
    import torch

    settings = settings or get_settings()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, settings.num_threads or cores - reserve)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
