"""Memory estimate (models/memory.py) against the measured peak RSS of real CPU training steps.

Each configuration trains 3 steps (fp32, AdamW, packed rows of 2 documents, chunked loss) in a
fresh process; the peak is that process's ru_maxrss, the baseline its RSS after importing torch,
transformers and peft. Prints a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

from tunesmith.models.memory import MIB, Setting, estimate_memory, shape_from_config
from tunesmith.train.memory_probe import measure_training_peak

CONFIGS = [
    # hidden, intermediate, layers, kv heads, method, batch, seq, gradient checkpointing
    (256, 688, 4, 4, "full", 4, 256, False),
    (256, 688, 4, 4, "lora", 4, 256, False),
    (384, 1024, 6, 2, "full", 8, 256, False),
    (384, 1024, 6, 2, "lora", 8, 256, False),
    (512, 1376, 4, 4, "full", 8, 512, False),
    (512, 1376, 4, 4, "lora", 8, 512, False),
    (512, 1376, 4, 4, "full", 8, 512, True),
    (512, 1376, 4, 4, "lora", 8, 512, True),
]


def main() -> None:
    print(
        "| hidden/MLP/layers | method | batch x seq | grad. ckpt | baseline MiB | measured peak MiB | estimate MiB | error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for hidden, intermediate, layers, kv_heads, method, batch, seq, checkpointing in CONFIGS:
        config = {
            "model_type": "llama",
            "vocab_size": 2928,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": 8,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": True,
        }
        setting = Setting(method, seq, batch, checkpointing, device="cpu")
        measured = measure_training_peak(config, setting, steps=3)
        setting.baseline_bytes = measured["baseline_rss_bytes"]
        estimate = estimate_memory(shape_from_config(config), setting).total
        peak = measured["peak_rss_bytes"]
        print(
            f"| {hidden}/{intermediate}/{layers} | {method} | {batch} x {seq} | {'on' if checkpointing else 'off'} "
            f"| {setting.baseline_bytes / MIB:.0f} | {peak / MIB:.0f} | {estimate / MIB:.0f} | {(estimate - peak) / peak:+.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
