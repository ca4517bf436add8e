"""DPO: tunesmith's `task: preference` against TRL's DPOTrainer, same model, pairs, budget and length.

Both sides train a LoRA adapter with DPO (sigmoid loss, beta, reference = the base with the adapter
disabled) on the same training pairs, for the same optimizer steps of the same number of pairs,
at the same max length (both cut the end of a too-long sequence), with the same LoRA shape,
learning rate (constant), AdamW settings, clipping and seed. The pairs are those tunesmith keeps
after tokenizing (a pair whose prompt fills max_len is dropped for both), written out in TRL's
conversational form with tunesmith's chat template on the tokenizer, so both render the same text.

Each side runs in a fresh process (peak memory = that process's VmHWM; wall time = setup +
training, without evaluation). Afterwards both adapters, and the base model, are scored by the
same code (tunesmith's pair metrics) on the same held-out pairs: preference accuracy (implicit
reward ranking; for the base its log-prob ranking), mean margin, KL estimate.

TRL lives in its own virtual environment (not a tunesmith dependency):
    python3 -m venv /work/venv-peers && /work/venv-peers/bin/pip install torch==2.13.0 trl transformers peft datasets

Usage (from the repository root, on a quiet machine for the timings):
    python benchmarks/bench_preference.py --steps 100 --batch-size 4 [--peer-python /work/venv-peers/bin/python]
Smoke run: python benchmarks/bench_preference.py --steps 2 --max-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "stories260k"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "dpo_en_demo" / "train.jsonl"
DEFAULT_PEER = "/work/venv-peers/bin/python"


def peak_memory_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss can carry a parent's over fork+exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# The two sides (each in its own process)


def side_ours(args: argparse.Namespace) -> dict:
    from tunesmith import api
    from tunesmith.config import build_config

    work = Path(args.work)
    config = {
        "task": "preference",
        "model": {"name": args.model, "device": "cpu", "dtype": "float32"},
        "adapter": {"method": "lora", "r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0},
        "data": {
            "train": str(work / "train.jsonl"),
            "eval": str(work / "eval.jsonl"),
            "max_seq_len": args.max_len,
            "packing": args.packing,
            "chat_template": (work / "template.jinja").read_text(),
            "check": False,
        },
        "preference": {"loss": "dpo", "beta": args.beta},
        "train": {
            "learning_rate": args.learning_rate,
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "seed": args.seed,
            "num_threads": args.threads,
        },
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(work / "runs"),
        "run_name": "ours",
    }
    started = time.perf_counter()
    result = api.train(build_config(config))
    seconds = time.perf_counter() - started
    return {"adapter": str(result.final_dir), "seconds": seconds, "peak_rss_bytes": peak_memory_bytes()}


def side_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    work = Path(args.work)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.chat_template = (work / "template.jinja").read_text()
    if tokenizer.pad_token is None:  # stories260k has none; tunesmith pads with unk (or eos) likewise
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(work / "train.jsonl"), split="train")
    config = DPOConfig(
        output_dir=str(work / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=args.max_len,
        gradient_checkpointing=False,  # TRL's default is on; tunesmith's is off
        precompute_ref_log_probs=False,  # the reference is the base with the adapter disabled, as ours
        padding_free=args.packing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    trainer.train()
    seconds = time.perf_counter() - started
    adapter = work / "trl" / "final"
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "adapter": str(adapter),
        "seconds": seconds,
        "peak_rss_bytes": peak_memory_bytes(),
        "losses": losses,
    }


# --------------------------------------------------------------------------------------------
# The orchestrator: one split, both sides, one scorer


def prepare_pairs(args: argparse.Namespace, work: Path) -> None:
    """The split and the pairs tunesmith keeps, written for both sides (TRL's conversational form)."""
    from tunesmith.config import build_config
    from tunesmith.models.load import load_tokenizer
    from tunesmith.tasks import preference

    config = build_config(
        {
            "task": "preference",
            "model": {"name": args.model},
            "data": {"train": args.data, "eval_fraction": args.eval_fraction, "max_seq_len": args.max_len},
            "train": {"seed": args.seed},
        }
    )
    tokenizer = load_tokenizer(args.model, config.model)
    prepared = preference.prepare_data(config, tokenizer)
    (work / "template.jinja").write_text(prepared.template.template)
    for name, records, examples in (
        ("train", prepared.pairs.train_records, prepared.pairs.train),
        ("eval", prepared.eval_records, prepared.pairs.eval),
    ):
        kept = {e.source for e in examples}
        with open(work / f"{name}.jsonl", "w") as handle:
            for pair in records:
                if str(pair.source) in kept:
                    row = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
                    handle.write(json.dumps(row) + "\n")


def score(args: argparse.Namespace, work: Path, adapter: str | None) -> dict:
    """Held-out pair metrics of the base model (adapter None) or base + adapter, by tunesmith's code."""
    import torch
    from peft import PeftModel

    from tunesmith.config import build_config
    from tunesmith.models.load import load_causal_lm, load_tokenizer
    from tunesmith.tasks import preference
    from tunesmith.train.preference_loss import PreferenceLoss

    config = build_config(
        {
            "task": "preference",
            "model": {"name": args.model, "device": "cpu", "dtype": "float32"},
            "data": {
                "train": str(work / "train.jsonl"),
                "eval": str(work / "eval.jsonl"),
                "max_seq_len": args.max_len,
                "chat_template": (work / "template.jinja").read_text(),
            },
        }
    )
    tokenizer = load_tokenizer(args.model, config.model)
    prepared = preference.prepare_data(config, tokenizer)
    torch.manual_seed(0)
    model = load_causal_lm(args.model, config.model, "cpu")
    if adapter is None:
        loss = PreferenceLoss(model, "dpo", args.beta, reference="frozen_copy")
    else:
        loss = PreferenceLoss(PeftModel.from_pretrained(model, adapter), "dpo", args.beta)
    metrics = preference.pair_metrics(loss, prepared.pairs.eval, prepared.pad_id, "cpu")
    keys = (
        "num_pairs",
        "accuracy",
        "accuracy_kind",
        "margin",
        "logp_accuracy",
        "chosen_logps",
        "rejected_logps",
    )
    return {k: metrics[k] for k in (*keys, "kl_to_reference", "log_ratio_to_reference") if k in metrics}


def run_side(python: str, side: str, args: argparse.Namespace, work: Path) -> dict:
    command = [python, __file__, "--side", side, "--work", str(work)]
    for key in (
        "model",
        "steps",
        "batch_size",
        "max_len",
        "learning_rate",
        "beta",
        "lora_r",
        "seed",
        "threads",
    ):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.packing:
        command.append("--packing")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if side == "trl":
        env.pop("PYTHONPATH", None)  # the peer venv must not import this checkout
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SIDE ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{side} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("SIDE ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)  # as examples/preference_dpo.yaml
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--packing", action="store_true", help="tunesmith packing / TRL padding_free")
    parser.add_argument("--peer-python", default=DEFAULT_PEER, help="python of the venv that has TRL")
    parser.add_argument("--sides", default="ours,trl", help="comma-separated: ours, trl")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    if args.side:
        result = side_ours(args) if args.side == "ours" else side_trl(args)
        print("SIDE " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-preference-") as tmp:
        work = Path(tmp)
        prepare_pairs(args, work)
        results = {"base": score(args, work, None)}
        for side in args.sides.split(","):
            python = sys.executable if side == "ours" else args.peer_python
            if side == "trl" and not Path(python).exists():
                print(
                    f"skipping trl: {python} not found (see the docstring to create the venv)",
                    file=sys.stderr,
                )
                continue
            trained = run_side(python, side, args, work)
            results[side] = {**trained, "after": score(args, work, trained.pop("adapter"))}
    settings = {k: v for k, v in vars(args).items() if k not in ("side", "work", "out")}
    record = {"settings": settings, "date": time.strftime("%Y-%m-%d %H:%M"), **results}
    print("RESULT " + json.dumps(record))
    base = results["base"]
    print(
        f"\nheld-out pairs: {base['num_pairs']}; base accuracy {base['accuracy']:.3f} ({base['accuracy_kind']})"
    )
    print("| side | accuracy before -> after | margin before -> after | KL est. | wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for side in ("ours", "trl"):
        if side in results:
            r, after = results[side], results[side]["after"]
            print(
                f"| {side} | {base['accuracy']:.3f} -> {after['accuracy']:.3f} | {base['margin']:.3f} -> "
                f"{after['margin']:.3f} | {after.get('kl_to_reference', float('nan')):.4f} | {r['seconds']:.1f} | "
                f"{r['peak_rss_bytes'] / 2**20:.0f} |"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
