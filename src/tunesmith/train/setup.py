"""The process's torch setup for a run or an evaluation (threads, seed, device), and what a run
records about the machine (environment.json, peak memory)."""

from __future__ import annotations

import platform
from typing import Any

from tunesmith.config import Config


def setup_torch(config: Config) -> str:
    """Threads, seed and device for a run; returns the device."""
    import torch

    from tunesmith.models.inference import quiet_libraries
    from tunesmith.models.load import select_device

    quiet_libraries()
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.train.seed)
    return select_device(config.model.device)


def environment() -> dict[str, Any]:
    """The versions and machine a run ran on (environment.json)."""
    from importlib.metadata import version

    import torch
    import transformers

    from tunesmith import __version__

    info = {
        "tunesmith": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        # Read from the installed metadata: importing peft (and the bitsandbytes it pulls in) costs a
        # full finetune ~190 MB of memory it never uses.
        "peft": version("peft"),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_memory(device: str) -> dict[str, int]:
    """Peak resident memory of this process and, on CUDA, the peak memory torch allocated."""
    import sys

    import torch

    try:
        import resource

        # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    except ImportError:  # Windows: no getrusage; the current RSS is the best we have
        import psutil

        peak = {"peak_rss_bytes": int(psutil.Process().memory_info().rss)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        peak["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak
