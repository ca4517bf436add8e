"""Pre-flight limits of a run: the sequence length against the model's positions, and the memory
estimate (models/memory.py, as `select` uses it) against the memory free now. Both refuse before
anything is loaded or written, naming the key that overrides them deliberately."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError

# Config keys that name a model's context length, by architecture family.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_config_dict(model_path: str, config: Config) -> dict[str, Any]:
    """The model's config.json as a dict ({} when it cannot be read without loading the model)."""
    local = Path(model_path) / "config.json"
    if local.is_file():
        try:
            value = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # load.check_remote_code and the loader name the damaged file
        return value if isinstance(value, dict) else {}
    if os.path.isdir(model_path):
        return {}
    try:
        from transformers import AutoConfig

        hub = AutoConfig.from_pretrained(
            model_path, revision=config.model.revision, token=config.model.token, trust_remote_code=False
        )
        return dict(hub.to_dict())
    except Exception:  # offline, gated, remote code: the loader gives the real error later
        return {}


def context_limit(model_config: dict[str, Any]) -> int | None:
    """The number of positions the model was trained for (None when its config does not say)."""
    if isinstance(model_config.get("text_config"), dict):
        return context_limit(model_config["text_config"])
    for key in POSITION_KEYS:
        value = model_config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context_length(model_config: dict[str, Any], config: Config) -> None:
    """data.max_seq_len must fit the model's positions unless model.allow_longer_context says so."""
    limit = context_limit(model_config)
    if limit is None or config.data.max_seq_len <= limit or config.model.allow_longer_context:
        return
    raise UserError(
        f"data.max_seq_len: {config.data.max_seq_len} is longer than the model's {limit} positions; "
        f"use data.max_seq_len={limit} or less, or set model.allow_longer_context: true if the model "
        "extends its context on purpose (RoPE scaling)"
    )


def free_memory(device: str) -> int | None:
    """Bytes free now on the GPU, or available RAM (None when it cannot be told)."""
    try:
        if device.startswith("cuda"):
            import torch

            return int(torch.cuda.mem_get_info()[0])
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def check_memory(model_config: dict[str, Any], config: Config, device: str) -> None:
    """Refuse a run whose estimated peak memory is over what is free now (train.check_memory: false skips)."""
    if not config.train.check_memory or not model_config:
        return
    from tunesmith.models.memory import Setting, estimate_memory, format_size, shape_from_config

    try:
        shape = shape_from_config(model_config)
    except (KeyError, TypeError, ZeroDivisionError):
        return  # an architecture the estimate does not know
    setting = Setting(
        method=config.adapter.method,
        seq_len=config.data.max_seq_len,
        batch_size=config.batch_rows(),  # on-policy: each prompt and its group's answers
        gradient_checkpointing=config.train.gradient_checkpointing,
        lora_rank=config.adapter.r,
        device="cpu" if device == "cpu" else "cuda",
        packed=config.data.packing,
        baseline_bytes=0,
    )
    estimate = estimate_memory(shape, setting)
    free = free_memory(device)
    if free is None or estimate.total <= free:
        return
    where = "GPU memory" if device.startswith("cuda") else "RAM"
    raise UserError(
        f"this run needs about {format_size(estimate.total)} of {where} (batch {config.batch_rows()} x "
        f"{config.data.max_seq_len} tokens, {config.adapter.method}) but {format_size(free)} is free; lower "
        "train.batch_size or data.max_seq_len, turn on train.gradient_checkpointing, or set "
        "train.check_memory: false to start anyway"
    )
