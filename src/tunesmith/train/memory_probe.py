"""Measured training memory: one real training step in a fresh process (a clean peak RSS), to
check models/memory.py's estimate on any machine (tests/unit/test_memory.py, benchmarks/bench_memory.py).

It lives in train/ because it trains: the estimate itself (models/memory.py) is arithmetic only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from tunesmith.models.memory import CPU_BASELINE_BYTES, Setting

_CHILD = (
    "import sys, json; from tunesmith.train.memory_probe import _measure_child; _measure_child(sys.argv[1])"
)


def measure_training_peak(
    config: dict[str, Any], setting: Setting, steps: int = 3, timeout: float = 300.0
) -> dict[str, int]:
    """Peak RSS (bytes) of `steps` real training steps of a random-init Llama-like model on CPU.

    Returns {"peak_rss_bytes", "baseline_rss_bytes"}: the baseline is the same process after
    its imports, before any model exists.
    """
    spec = json.dumps({"config": config, "setting": asdict(setting), "steps": steps})
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@lru_cache(maxsize=1)
def measure_cpu_baseline() -> int:
    """RSS of a fresh process that imported torch, transformers and peft (the CPU overhead term)."""
    spec = json.dumps({"baseline_only": True})
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        return CPU_BASELINE_BYTES
    return int(json.loads(done.stdout.strip().splitlines()[-1])["baseline_rss_bytes"])


def _max_rss() -> int:
    """Peak resident memory of this process since it started (exec'd) running Python."""
    # Linux's ru_maxrss survives fork + exec: a child started by a big parent (a long pytest
    # session) would report the parent's size. VmHWM belongs to the exec'd image alone.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _measure_child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import peft  # noqa: F401  (part of the baseline a training process has)
    import torch
    import transformers

    from tunesmith.config import AdapterConfig
    from tunesmith.models.adapters import apply_adapter
    from tunesmith.train.loss import CausalLMLoss

    baseline = _max_rss()
    if spec.get("baseline_only"):
        print(json.dumps({"baseline_rss_bytes": baseline}))
        return
    torch.manual_seed(0)
    setting = Setting(**spec["setting"])
    config = transformers.AutoConfig.for_model(**spec["config"])
    config.use_cache = False
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if setting.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = apply_adapter(model, AdapterConfig(method=setting.method, r=setting.lora_rank, dropout=0.0))
    loss_module = CausalLMLoss(model)
    optimizer = torch.optim.AdamW([p for p in loss_module.parameters() if p.requires_grad], lr=1e-4)
    batch, length = setting.batch_size, setting.seq_len
    input_ids = torch.randint(0, config.vocab_size, (batch, length))
    position_ids = None
    if setting.packed:
        # Two documents per row: the block mask of packed training.
        half = length // 2
        position_ids = torch.cat([torch.arange(half), torch.arange(length - half)]).repeat(batch, 1)
    for _ in range(spec["steps"]):
        out = loss_module(input_ids=input_ids, labels=input_ids, position_ids=position_ids)
        (out["loss_sum"] / input_ids.numel()).backward()
        del out
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"peak_rss_bytes": _max_rss(), "baseline_rss_bytes": baseline}))
