"""CPU training throughput: tunesmith's trainer against Hugging Face Trainer on the same data.

A tiny Llama (stories260k's shape, 260k parameters, random init, fp32), synthetic variable-length
sequences (log-normal lengths, median ~100 tokens, 16..512), about 4k real tokens per
optimizer step for every method, W warm-up steps then S timed steps, 2 threads.

- ours:        tunesmith packing (best-fit rows of 512), CausalLMLoss with the setup-time
               fast path (train/fastpath.py), AdamW from train/optim.py, train/loop.py's loop
- hf-padded:   transformers.Trainer, DataCollatorForLanguageModeling (pad to the batch's longest)
- hf-flatten:  transformers.Trainer, DataCollatorWithFlattening (padding-free, position_ids)

Tokens/s counts real (non-pad) tokens only. Each method runs in its own fresh process (peak
RSS = that process's ru_maxrss), interleaved, `--repeats` times; the table shows medians.

Usage: python benchmarks/bench_cpu.py [--steps 10] [--warmup 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

MAX_LEN = 512
ROWS_PER_STEP = 8  # ours: 8 packed rows of 512 = ~4k tokens per step
VOCAB = 512
MODEL_SHAPE = dict(  # the shape of stories260k (../shared/models/stories260k): 2 busy cores train it
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=5,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=8,
    max_position_embeddings=MAX_LEN,
    tie_word_embeddings=True,
)
LEARNING_RATE = 1e-4
METHODS = ("ours", "hf-padded", "hf-flatten")


def make_lengths(n: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=generator) * 0.9 + math.log(100))
    return [int(min(max(16, x), MAX_LEN)) for x in lengths.tolist()]


def make_sequences(n: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (length,), generator=generator).tolist() for length in make_lengths(n)]


def build_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL_SHAPE, attn_implementation="sdpa"))
    model.config.use_cache = False  # packed rows: transformers detects documents only without a cache
    return model


def sequences_per_step(sequences: list[list[int]]) -> int:
    """HF: as many whole sequences a step as ours packs into its rows, on average."""
    mean = sum(map(len, sequences)) / len(sequences)
    return max(1, round(ROWS_PER_STEP * MAX_LEN * 0.97 / mean))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(sequences: list[list[int]], warmup: int, steps: int) -> dict:
    from tunesmith.config import Config
    from tunesmith.data.pack import RowSchedule, collate_rows, make_rows
    from tunesmith.data.tokenize import Example
    from tunesmith.train.checkpoint import TrainerState
    from tunesmith.train.fastpath import choose_fast_path, compile_blocks
    from tunesmith.train.loop import LoopSettings, train_loop
    from tunesmith.train.loss import CausalLMLoss
    from tunesmith.train.optim import build_optimizer, build_scheduler

    # The first token of each sequence has no target: the same targets as HF's shifted labels.
    examples = [Example(ids, [-100] + ids[1:]) for ids in sequences]
    config = Config.model_validate(
        {
            "model": {"device": "cpu"},
            "adapter": {"method": "full"},
            "data": {"max_seq_len": MAX_LEN},
            "train": {"batch_size": ROWS_PER_STEP, "learning_rate": LEARNING_RATE, "warmup_ratio": 0.0},
        }
    )
    rows = make_rows(examples, MAX_LEN, packing=True)
    model = build_model()
    fast = choose_fast_path(config, "cpu", model, pad_id=0)
    loss_module = CausalLMLoss(model, cross_entropy=fast.cross_entropy)
    if fast.compile:
        compile_blocks(loss_module)
    collate = fast.wrap_collate(lambda r: collate_rows(r, examples, pad_id=0))
    optimizer = build_optimizer(loss_module, config.train, "cpu")
    total = warmup + steps
    scheduler = build_scheduler(optimizer, config.train, total)
    schedule = RowSchedule(len(rows), ROWS_PER_STEP, 1, seed=0)
    real_tokens = [
        sum(len(sequences[i]) for micro in schedule.rows_for_step(s) for row in micro for i in rows[row])
        for s in range(total)
    ]

    def step_batches(step: int) -> list[dict]:
        return [collate([rows[i] for i in micro]) for micro in schedule.rows_for_step(step)]

    marks: dict[int, float] = {}
    losses: list[float] = []

    def on_step(step: int, record: dict) -> None:
        marks[step] = time.perf_counter()
        losses.append(record["loss"])

    train_loop(
        loss_module,
        optimizer,
        scheduler,
        step_batches,
        LoopSettings(total_steps=total, device="cpu"),
        TrainerState(step=0, total_steps=total),
        log=lambda record: None,
        on_step=on_step,
    )
    seconds = marks[total] - marks[warmup]
    return {
        "tokens_per_step": sum(real_tokens[warmup:total]) / steps,
        "tokens_per_s": sum(real_tokens[warmup:total]) / seconds,
        "pad_fraction": 1 - sum(real_tokens) / (total * ROWS_PER_STEP * MAX_LEN),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def run_hf(sequences: list[list[int]], warmup: int, steps: int, flatten: bool) -> dict:
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    per_step = sequences_per_step(sequences)
    marks: dict[int, float] = {}
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            marks[state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    if flatten:
        dataset = [{"input_ids": ids, "labels": ids} for ids in sequences]
        collator = DataCollatorWithFlattening()
    else:
        dataset = [{"input_ids": ids} for ids in sequences]
        collator = DataCollatorForLanguageModeling(_tokenizer(), mlm=False)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-cpu-hf-"),
        max_steps=warmup + steps,
        per_device_train_batch_size=per_step,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        optim="adamw_torch",
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=build_model(), args=args, train_dataset=dataset, data_collator=collator, callbacks=[Timer()]
    )
    # Real tokens per step: the same batches the trainer draws (same seed, same sampler).
    loader = trainer.get_train_dataloader()
    real, padded = [], []
    for index, batch in enumerate(loader):
        if index >= warmup + steps:
            break
        mask = batch.get("attention_mask")
        real.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        padded.append(batch["input_ids"].numel())
    trainer.train()
    seconds = marks[warmup + steps] - marks[warmup]
    return {
        "tokens_per_step": sum(real[warmup:]) / steps,
        "tokens_per_s": sum(real[warmup:]) / seconds,
        "pad_fraction": 1 - sum(real) / sum(padded),
        "first_loss": losses[0] if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
    }


def _tokenizer():  # noqa: ANN202
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def run_one(method: str, warmup: int, steps: int) -> dict:
    torch.set_num_threads(2)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    sequences = make_sequences(int((warmup + steps + 4) * ROWS_PER_STEP * MAX_LEN / 100))
    if method == "ours":
        result = run_ours(sequences, warmup, steps)
    else:
        result = run_hf(sequences, warmup, steps, flatten=method == "hf-flatten")
    result.update(method=method, steps=steps, warmup=warmup, peak_rss_mb=peak_rss_mb())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.warmup, args.steps)), flush=True)
        return

    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        # Interleaved, so a burst of load from other jobs hits every method alike.
        for method in args.methods:
            command = [sys.executable, __file__, "--one", method, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup)]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"FAILED {method}: {out.stderr[-2000:]}", flush=True)
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            result["repeat"] = repeat
            print("RESULT " + json.dumps(result), flush=True)
            results[method].append(result)
            loads.append(os.getloadavg()[0])

    print(
        f"\nload average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    )
    ours = (
        statistics.median(r["tokens_per_s"] for r in results.get("ours", [])) if results.get("ours") else None
    )
    print(
        "\n| method | tokens/step (real) | padding | tok/s (median) | tok/s (all runs) | peak RSS MB (median) | vs ours |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, runs in results.items():
        if not runs:
            continue
        speed = statistics.median(r["tokens_per_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        every = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in runs)
        ratio = f"{ours / speed:.2f}x" if ours and method != "ours" else ""
        print(
            f"| {method} | {runs[0]['tokens_per_step']:,.0f} | {runs[0]['pad_fraction']:.0%} | {speed:,.0f} "
            f"| {every} | {rss:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
