"""A real instruct model on tool calling: SmolLM2-135M-Instruct (GGUF) + LoRA on glaive_toolcall_en_demo.

quality     runs examples/instruct_toolcall_smollm2.yaml (15% of the conversations held out, seeded)
            and prints, before -> after, on the held-out turns that call a tool: the share with a
            well-formed call, the right function name, exactly the right arguments (JSON objects
            compared), plus held-out loss; with steps, training time and the command.
throughput  tokens/s of a LoRA and of a full training step on this machine, tunesmith against plain
            transformers.Trainer on the same tokenized data (assistant-only labels) and about the
            same real tokens per step (Trainer pads each batch to its longest; tunesmith packs).
            Each method runs in its own fresh process; tokens/s counts real (non-pad) tokens, the
            median over the timed steps after `--warmup` steps.

Needs `make real-model`. Results go to benchmarks/RESULTS.md by hand, with the machine and date.

Usage: python benchmarks/bench_toolcall.py quality [--max-steps 80]
       python benchmarks/bench_toolcall.py throughput [--steps 6 --warmup 2 --methods ours-lora hf-lora]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "instruct_toolcall_smollm2.yaml"
FIGURES = ("tool_call_well_formed", "tool_call_name", "tool_call_arguments", "loss")
METHODS = ("ours-lora", "hf-lora", "ours-full", "hf-full")
MAX_LEN = 1024
ROWS_PER_STEP = 2  # tunesmith: 2 packed rows of 1024 tokens per step, as in the example


def example_config(overrides: dict) -> dict:
    import yaml

    config = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        config.setdefault(section, {})[key] = value
    return config


def quality(args: argparse.Namespace) -> dict:
    from tunesmith import api
    from tunesmith.config import build_config

    output = tempfile.mkdtemp(prefix="bench-toolcall-")
    overrides = {
        "train.max_steps": args.max_steps,
        "eval.max_tool_call_turns": args.max_tool_call_turns,
        "eval.forgetting": False,
        "eval.num_prompts": 0,
        "logging.progress": False,
    }
    if args.threads:
        overrides["train.num_threads"] = args.threads
    if args.max_eval_examples:  # a smoke run: fewer held-out conversations
        overrides["data.max_eval_examples"] = args.max_eval_examples
    config = example_config(overrides)
    config["output_dir"] = output
    os.chdir(REPO)  # the example's paths are relative to the repository
    started = time.perf_counter()
    result = api.train(build_config(config))
    total = time.perf_counter() - started
    return {
        "bench": "toolcall-quality",
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(total, 1),
        "tool_call_turns": result.after.get("tool_call_turns"),
        "before": {k: result.before.get(k) for k in FIGURES},
        "after": {k: result.after.get(k) for k in FIGURES},
        "command": "python benchmarks/bench_toolcall.py quality --max-steps "
        + str(args.max_steps)
        + (f" --threads {args.threads}" if args.threads else ""),
        "run_dir": str(result.run_dir),
    }


def _prepared(config_dict: dict):  # noqa: ANN202
    from tunesmith.config import build_config
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task

    config = build_config(config_dict)
    path = resolve_model_path(config.model.name)
    tokenizer = load_tokenizer(path, config.model)
    return config, path, tokenizer, get_task(config.task).prepare_data(config, tokenizer)


def run_ours(method: str, warmup: int, steps: int) -> dict:
    from tunesmith import api
    from tunesmith.config import build_config

    output = tempfile.mkdtemp(prefix="bench-toolcall-ours-")
    config = example_config(
        {
            "adapter.method": "lora" if method.endswith("lora") else "full",
            "train.max_steps": warmup + steps,
            "train.batch_size": ROWS_PER_STEP,
            "train.warmup_ratio": 0.0,
            # As the HF Trainer side (its default): the example turns checkpointing on to save memory,
            # which recomputes every forward and would compare unlike steps.
            "train.gradient_checkpointing": False,
            "train.eval_every": 0,
            "train.log_every": 1,
            "data.max_seq_len": MAX_LEN,
            "eval.before": False,
            "eval.after": False,
            "eval.forgetting": False,
            "logging.progress": False,
        }
    )
    config["output_dir"] = output
    os.chdir(REPO)
    result = api.train(build_config(config))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    timed = [r for r in records if "tokens_per_second" in r and r.get("step", 0) > warmup]
    return {
        "tokens_per_s": statistics.median(r["tokens_per_second"] for r in timed),
        "first_loss": next(r["loss"] for r in records if "loss" in r and "step" in r),
        "gradient_checkpointing": False,
    }


def run_hf(method: str, warmup: int, steps: int) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from tunesmith.models.load import load_causal_lm

    os.chdir(REPO)
    config, path, tokenizer, prepared = _prepared(example_config({"data.max_seq_len": MAX_LEN}))
    model = load_causal_lm(path, config.model, "cpu")
    if method.endswith("lora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.adapter.r,
            lora_alpha=config.adapter.alpha,
            lora_dropout=config.adapter.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in prepared.train]
    mean_len = statistics.mean(len(e["input_ids"]) for e in examples)
    per_step = max(1, round(ROWS_PER_STEP * MAX_LEN / mean_len))  # about the same real tokens per step
    marks: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            marks[state.global_step] = time.perf_counter()

    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-toolcall-hf-"),
        max_steps=warmup + steps,
        per_device_train_batch_size=per_step,
        learning_rate=config.train.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(
        model=model, args=arguments, train_dataset=examples, data_collator=collator, callbacks=[Timer()]
    )
    real = []
    for index, batch in enumerate(trainer.get_train_dataloader()):
        if index >= warmup + steps:
            break
        real.append(int(batch["attention_mask"].sum()))
    torch.manual_seed(0)
    trainer.train()
    rates = [real[s] / (marks[s + 1] - marks[s]) for s in range(warmup, warmup + steps) if s in marks]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_step": statistics.mean(real[warmup:]),
        "gradient_checkpointing": arguments.gradient_checkpointing,
    }


def throughput(args: argparse.Namespace) -> list[dict]:
    results = []
    for method in args.methods:
        command = [
            sys.executable,
            __file__,
            "one",
            method,
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("quality", "throughput", "one"))
    parser.add_argument("method", nargs="?", choices=METHODS, help=argparse.SUPPRESS)  # for `one`
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--max-tool-call-turns", type=int, default=50)
    parser.add_argument("--max-eval-examples", type=int, default=None, help="smoke runs only")
    parser.add_argument("--threads", type=int, default=None, help="quality: CPU threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    if args.mode == "one":  # a child process: one method, fresh memory
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        run = run_ours if args.method.startswith("ours") else run_hf
        result = {"method": args.method, **run(args.method, args.warmup, args.steps)}
        print("RESULT " + json.dumps(result))
        return
    results = [quality(args)] if args.mode == "quality" else throughput(args)
    for result in results:
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
