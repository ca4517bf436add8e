"""The process's torch setup for a run or an evaluation: threads, seed, device."""

from __future__ import annotations

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
