"""The demo: the embedded model finetuned on the embedded sample instructions, on CPU in about a minute."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import Config


def demo_config(output_dir: str = "runs", max_steps: int | None = None) -> Config:
    """The demo's config: full finetuning of the embedded model, evaluation before and after."""
    from tunesmith.models.load import ASSETS_DIR

    samples = ASSETS_DIR / "samples"
    return Config.model_validate(
        {
            "task": "instruct",
            "model": {"name": "embedded", "device": "cpu"},
            "adapter": {"method": "full"},
            "data": {
                "train": str(samples / "instruct.jsonl"),
                "eval": str(samples / "instruct_eval.jsonl"),
                "max_seq_len": 256,
            },
            "train": {
                "learning_rate": 1e-3,
                "max_steps": max_steps or 250,
                "batch_size": 4,
                "eval_every": 40,
                "warmup_ratio": 0.05,
                "log_every": 5,
            },
            "eval": {"num_prompts": 4, "max_new_tokens": 32},
            "output_dir": output_dir,
            "run_name": default_demo_name(output_dir),
        }
    )


def default_demo_name(output_dir: str) -> str:
    """demo, demo-2, demo-3 ...: the first name not taken under `output_dir`."""
    name, index = "demo", 1
    while (Path(output_dir) / name).exists():
        index += 1
        name = f"demo-{index}"
    return name
