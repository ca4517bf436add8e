"""tunesmith against the usual tools on three real CPU cases, in one invocation (issue 20).

Same real model (stories260k), same data, same budget, fp32, `--threads` threads:

- sst2:        classification, 300 steps x 32, lr 1e-3 (warm-up 20%, cosine, weight decay 0.1),
               peer: transformers.Trainer + DataCollatorWithPadding; quality: validation accuracy
- shakespeare: continued pretraining, 200 steps x 8 x 256 tokens, lr 1e-3 (warm-up 5%, cosine),
               peer: transformers.Trainer on run_clm-style 256-token blocks; quality: perplexity of
               the validation text in 256-token blocks
- gsm8k:       SFT, completion-only loss, 200 steps x 8, lr 1e-3 (warm-up 5%, cosine), records
               {"prompt": "Question: ...\\nAnswer: ", "completion": "..."}, peer: trl.SFTTrainer
               (completion_only_loss, no gradient checkpointing, no packing); quality: loss on the
               completion tokens (+ EOS) of test examples

Every run is its own subprocess: the peer under `--peer-python` (a venv with transformers, trl,
datasets; never tunesmith's dependencies), ours under this interpreter with tunesmith importable.
Runs are interleaved (seed by seed, case by case, the side that goes first alternating), so a
burst of load from other jobs hits both sides alike. Each child scores its final model with the
same function (`score_*` below: plain torch + transformers, batch 1, no padding), so quality is
measured identically. Training time is the wall and CPU time of the training phase only (the
peer's `trainer.train()`, ours from the training bar's start to its end), peak RSS is the child's
VmHWM read right after training (the high-water mark of the whole process up to then: imports,
data, model, training) and, for reference, the child's ru_maxrss over its whole life.

Usage:
    python benchmarks/bench_peers_cpu.py --seeds 42 1 2                  # the full comparison
    python benchmarks/bench_peers_cpu.py --quick                         # a few steps, to check it runs
    python benchmarks/bench_peers_cpu.py --cases sst2 --seeds 42 --out /tmp/sst2.json
Writes `--out` (JSON, every run) and `--table` (markdown, medians over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" if (REPO.parent / "shared").exists() else Path("/work/shared")
MODEL = SHARED / "models" / "stories260k"
DATA = SHARED / "datasets"
CASES = ("sst2", "shakespeare", "gsm8k")
SIDES = ("peer", "ours")

# Budgets of the full comparison; --quick shrinks steps and evaluation sizes.
FULL = {
    "sst2": {"steps": 300, "batch": 32, "lr": 1e-3, "warmup": 0.2, "weight_decay": 0.1, "max_len": 128},
    "shakespeare": {
        "steps": 200,
        "batch": 8,
        "lr": 1e-3,
        "warmup": 0.05,
        "weight_decay": 0.0,
        "max_len": 256,
    },
    "gsm8k": {"steps": 200, "batch": 8, "lr": 1e-3, "warmup": 0.05, "weight_decay": 0.0, "max_len": 512},
}
EVAL_FULL = {"sst2": None, "shakespeare": None, "gsm8k": 300}  # None: the whole eval file
EVAL_QUICK = {"sst2": 64, "shakespeare": 8, "gsm8k": 16}
QUICK_STEPS = 6
CONCAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# Shared by both sides' children: data and scoring (plain torch + transformers only)


def gsm8k_record(row: dict) -> dict:
    return {"prompt": f"Question: {row['instruction']}\nAnswer: ", "completion": row["output"]}


def read_jsonl(path: Path) -> list[dict]:
    # split on newlines only: the texts hold U+2028 and other characters str.splitlines() breaks at
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def completion_mask(tokenizer, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]]:  # noqa: ANN001
    """ids of prompt + completion + EOS, and 1 on every token that holds completion text (a token
    straddling the boundary counts as completion) and on the EOS."""
    text = prompt + completion
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(encoded["input_ids"]) + [tokenizer.eos_token_id]
    mask = [int(end > len(prompt)) for _, end in encoded["offset_mapping"]] + [1]
    return ids[:max_len], mask[:max_len]


def score_sst2(model, tokenizer, limit: int | None) -> dict:  # noqa: ANN001
    import torch

    rows = read_jsonl(DATA / "sst2" / "validation.jsonl")[:limit]
    correct = 0
    model.eval()
    with torch.inference_mode():
        for row in rows:
            ids = tokenizer(row["text"], truncation=True, max_length=FULL["sst2"]["max_len"])["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits
            correct += int(int(logits[0].argmax()) == int(row["label"]))
    return {"accuracy": correct / len(rows), "eval_examples": len(rows)}


def score_shakespeare(model, tokenizer, limit: int | None) -> dict:  # noqa: ANN001
    import math

    import torch

    ids = tokenizer((DATA / "tinyshakespeare" / "validation.txt").read_text())["input_ids"]
    block = FULL["shakespeare"]["max_len"]
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)][:limit]
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for chunk in blocks:
            x = torch.tensor([chunk])
            logits = model(input_ids=x).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(chunk) - 1
    return {"perplexity": math.exp(total / count), "eval_tokens": count}


def score_gsm8k(model, tokenizer, limit: int | None) -> dict:  # noqa: ANN001
    import torch

    rows = [gsm8k_record(r) for r in read_jsonl(DATA / "gsm8k" / "test.jsonl")[:limit]]
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for row in rows:
            ids, mask = completion_mask(tokenizer, row["prompt"], row["completion"], FULL["gsm8k"]["max_len"])
            x = torch.tensor([ids])
            targets = torch.tensor([t if m else -100 for t, m in zip(ids, mask, strict=True)])[1:]
            logits = model(input_ids=x).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += int((targets != -100).sum())
    return {"eval_loss": total / count, "eval_tokens": count}


SCORERS = {"sst2": score_sst2, "shakespeare": score_shakespeare, "gsm8k": score_gsm8k}


def load_tokenizer():  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


# ----------------------------------------------------------------------------------------------
# The peer (runs under --peer-python: transformers, trl, datasets; no tunesmith)


def peer_train(case: str, budget: dict, seed: int, work: Path) -> tuple[object, object, dict]:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = load_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token  # stories260k has no pad token (../shared/NOTES.md)
    common = dict(
        output_dir=str(work / "peer-out"),
        max_steps=budget["steps"],
        per_device_train_batch_size=budget["batch"],
        learning_rate=budget["lr"],
        warmup_steps=round(budget["warmup"] * budget["steps"]),  # the same whole number of steps as ours
        weight_decay=budget["weight_decay"],
        lr_scheduler_type="cosine",
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    extra: dict = {}
    if case == "sst2":
        rows = read_jsonl(DATA / "sst2" / "train_2k.jsonl")
        dataset = [
            {**tokenizer(r["text"], truncation=True, max_length=budget["max_len"]), "labels": int(r["label"])}
            for r in rows
        ]
        model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
    elif case == "shakespeare":
        ids = tokenizer((DATA / "tinyshakespeare" / "train.txt").read_text())["input_ids"]
        block = budget["max_len"]
        dataset = [{"input_ids": ids[i : i + block]} for i in range(0, len(ids) - block + 1, block)]
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=dataset,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        rows = [gsm8k_record(r) for r in read_gsm8k_train()]
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                **common,
                completion_only_loss=True,
                packing=False,
                gradient_checkpointing=False,  # TRL turns it on by default (../shared/NOTES.md)
                max_length=budget["max_len"],
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        loader = trainer.get_train_dataloader()
        trained = 0
        for index, batch in enumerate(loader):
            if index >= budget["steps"]:
                break
            trained += int((batch["labels"][:, 1:] != -100).sum())
        extra["trained_tokens"] = trained
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    extra.update(train_wall_s=time.perf_counter() - wall, train_cpu_s=time.process_time() - cpu)
    return trainer.model, tokenizer, extra


def read_gsm8k_train() -> list[dict]:
    return [r for path in sorted((DATA / "gsm8k").glob("train-*.jsonl")) for r in read_jsonl(path)]


# ----------------------------------------------------------------------------------------------
# tunesmith (runs under this interpreter)


class TimingProgress:
    """tunesmith's Progress interface, recording when the training bar starts and ends."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float]] = {}
        self.title = ""

    def start(self, total: int, done: int = 0, title: str = "train") -> None:
        self.title = title  # other bars (the token cache's build) come and go before training
        if title == "train":
            self.marks["start"] = (time.perf_counter(), time.process_time())

    def step(self, step: int, record: dict) -> None:
        pass

    def message(self, text: str, level: str = "info") -> None:
        pass

    def close(self) -> None:
        if self.title == "train":
            self.marks["end"] = (time.perf_counter(), time.process_time())
        self.title = ""


def ours_train(case: str, budget: dict, seed: int, work: Path) -> tuple[object, object, dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tunesmith import api

    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    if case == "sst2":
        data = {
            "train": str(DATA / "sst2" / "train_2k.jsonl"),
            "eval": str(DATA / "sst2" / "validation.jsonl"),
            "labels": ["0", "1"],
            "class_weights": "none",
        }
    elif case == "shakespeare":
        data = {
            "train": str(DATA / "tinyshakespeare" / "train.txt"),
            "eval": str(DATA / "tinyshakespeare" / "validation.txt"),
        }
    else:
        train_file = data_dir / "gsm8k_train.jsonl"
        train_file.write_text("".join(json.dumps(gsm8k_record(r)) + "\n" for r in read_gsm8k_train()))
        eval_file = data_dir / "gsm8k_test.jsonl"
        eval_file.write_text(
            "".join(
                json.dumps(gsm8k_record(r)) + "\n" for r in read_jsonl(DATA / "gsm8k" / "test.jsonl")[:50]
            )
        )
        # An explicit eval file: no training record is held out (the peer trains on all of them).
        # The texts joined as they are (BOS + prompt + completion + EOS), as TRL trains
        # non-conversational {prompt, completion} records and as score_gsm8k scores them.
        data = {"train": str(train_file), "eval": str(eval_file), "chat_template": CONCAT_TEMPLATE}
    task = {"sst2": "classify", "shakespeare": "pretrain", "gsm8k": "instruct"}[case]
    config = api.Config.model_validate(
        {
            "task": task,
            "model": {"name": str(MODEL), "device": "cpu"},
            "adapter": {"method": "full"},
            "data": {
                **data,
                "max_seq_len": budget["max_len"],
                "check": os.environ.get("BENCH_DATA_CHECK", "1") == "1",
            },
            "train": {
                "learning_rate": budget["lr"],
                "max_steps": budget["steps"],
                "batch_size": budget["batch"],
                "warmup_ratio": budget["warmup"],
                "weight_decay": budget["weight_decay"],
                "min_lr_ratio": 0.0,  # the peers' cosine decays to 0
                "eval_every": 0,
                "log_every": 1,  # every step's num_targets: the trained tokens
                "seed": seed,
            },
            "eval": {"before": False, "after": False, "forgetting": False},
            "output_dir": str(work / "runs"),
            "run_name": f"{case}-{seed}",
        }
    )
    progress = TimingProgress()
    result = api.train(config, progress=progress)
    (wall0, cpu0), (wall1, cpu1) = progress.marks["start"], progress.marks["end"]
    extra = {"train_wall_s": wall1 - wall0, "train_cpu_s": cpu1 - cpu0}
    metrics = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    extra["trained_tokens"] = int(sum(m.get("num_targets", 0) for m in metrics if "num_targets" in m))
    loader = AutoModelForSequenceClassification if case == "sst2" else AutoModelForCausalLM
    model = loader.from_pretrained(result.final_dir, dtype=torch.float32)
    return model, load_tokenizer(), extra


# ----------------------------------------------------------------------------------------------
# One child run, and the parent that interleaves them


def child(side: str, case: str, seed: int, quick: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    budget = dict(FULL[case])
    if quick:
        budget["steps"] = QUICK_STEPS
    with tempfile.TemporaryDirectory(prefix=f"bench-peers-{side}-{case}-") as tmp:
        train = peer_train if side == "peer" else ours_train
        model, tokenizer, extra = train(case, budget, seed, Path(tmp))
        peak = vm_hwm_mb()
        quality = SCORERS[case](model, tokenizer, (EVAL_QUICK if quick else EVAL_FULL)[case])
    return {
        "side": side,
        "case": case,
        "seed": seed,
        "steps": budget["steps"],
        **extra,
        **quality,
        "peak_rss_mb": peak,
    }


def run_child(python: str, side: str, case: str, seed: int, args: argparse.Namespace) -> dict | None:
    command = [python, str(Path(__file__).resolve()), "--child", side, case, str(seed)]
    command += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    if side == "peer":
        env.pop("PYTHONPATH", None)  # the peer must not see tunesmith
    else:
        env["PYTHONPATH"] = str(REPO / "src")
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        print(f"FAILED {side} {case} seed {seed} (exit {process.returncode}):\n{stderr[-3000:]}", flush=True)
        return None
    result = json.loads(lines[-1][len("RESULT ") :])
    result.update(
        process_wall_s=time.perf_counter() - started,
        process_maxrss_mb=usage.ru_maxrss / 1024,
        load_after=os.getloadavg()[0],
    )
    return result


QUALITY = {
    "sst2": ("accuracy", "higher"),
    "shakespeare": ("perplexity", "lower"),
    "gsm8k": ("eval_loss", "lower"),
}


def table(results: list[dict]) -> str:
    lines = [
        "| case | side | quality (median; per seed) | train wall s | train CPU s | peak RSS MB | "
        "speed ours/peer (wall) | trained tokens | speed ours/peer (per trained token) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        runs = {s: [r for r in results if r["case"] == case and r["side"] == s] for s in SIDES}
        if not any(runs.values()):
            continue
        key, _ = QUALITY[case]
        walls = {s: statistics.median(r["train_wall_s"] for r in v) for s, v in runs.items() if v}
        # Trained tokens per second of training, where both sides count them (GSM8K: ours packs rows of
        # 512, TRL pads 8 examples, so a step trains different amounts of text).
        rates = {
            s: statistics.median(r["trained_tokens"] / r["train_wall_s"] for r in v)
            for s, v in runs.items()
            if v and all(r.get("trained_tokens") for r in v)
        }
        for side in SIDES:
            got = runs[side]
            if not got:
                lines.append(f"| {case} | {side} | FAILED | | | | | | |")
                continue
            values = ", ".join(f"{r[key]:.3f}" for r in got)
            speed = f"{walls['peer'] / walls['ours']:.2f}x" if side == "ours" and "peer" in walls else ""
            per_token = f"{rates['ours'] / rates['peer']:.2f}x" if side == "ours" and len(rates) == 2 else ""
            tokens = statistics.median(r.get("trained_tokens", 0) for r in got)
            lines.append(
                f"| {case} | {side} | {key} {statistics.median(r[key] for r in got):.3f} ({values}) "
                f"| {walls[side]:.1f} | {statistics.median(r['train_cpu_s'] for r in got):.1f} "
                f"| {statistics.median(r['peak_rss_mb'] for r in got):,.0f} | {speed} "
                f"| {tokens:,.0f} | {per_token} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, small evaluations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-python", default="/work/venv-peers/bin/python")
    parser.add_argument("--out", default=str(HERE / "peers_cpu.json"))
    parser.add_argument("--table", default=str(HERE / "peers_cpu.md"))
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "CASE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, case, seed = args.child
        print("RESULT " + json.dumps(child(side, case, int(seed), args.quick, args.threads)), flush=True)
        return

    results: list[dict] = []
    loads = [os.getloadavg()[0]]
    for index, seed in enumerate(args.seeds):
        for number, case in enumerate(args.cases):
            order = SIDES if (index + number) % 2 == 0 else SIDES[::-1]
            for side in order:
                python = args.peer_python if side == "peer" else sys.executable
                result = run_child(python, side, case, seed, args)
                if result is not None:
                    print("RESULT " + json.dumps(result), flush=True)
                    results.append(result)
                    loads.append(result["load_after"])
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_range": [min(loads), max(loads)],
        "quick": args.quick,
        "runs": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    markdown = table(results)
    note = (
        f"\nload average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    )
    Path(args.table).write_text(markdown + "\n" + note + "\n")
    print("\n" + markdown + "\n" + note)


if __name__ == "__main__":
    main()
