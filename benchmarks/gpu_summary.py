"""Turn gpu_all.sh's results.jsonl into results.json (machine-readable) and results.md (the table).

MFU = tokens/s x FLOPs per token / peak, peak = 989e12 (H100/H200 SXM bf16 dense), with
    ours:  FLOPs/token = 6 N_trainable + 4 N_frozen + 6 L d_attn E[S]   (bench_gpu.py flops_per_token)
    peers: FLOPs/token = 6 N (their own figure: no attention term, every parameter counted as trained)
Tokens are real (non-pad) tokens; peak memory is torch.cuda.max_memory_allocated over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

PEAK_FLOPS = 989e12
MFU_FORMULA = (
    "MFU = tok/s x (6 N_trainable + 4 N_frozen + 6 L d_attn E[S]) / 989e12; E[S] = sum(S_i^2)/sum(S_i) "
    "over the packed documents (causal attention inside each document); peers: tok/s x 6 N / 989e12"
)
# The figures recorded on an H200 on 2026-11-26 (../shared/bench/README.md), quoted for the runs
# this machine cannot repeat (TRL needs datasets -> pyarrow); not measured in this call.
RECORDED = {
    ("qwen2.5-0.5b", "full"): [("TRL packed + Liger", 27733, 31.9), ("TRL packed", 23374, 38.2)],
    ("qwen2.5-0.5b", "lora"): [("TRL packed + Liger", 24967, 32.6), ("TRL packed", 24671, 32.6)],
    ("llama-3.2-1b", "full"): [("TRL packed + Liger", 17812, 37.0), ("TRL packed", 15564, 45.2)],
    ("llama-3.2-1b", "lora"): [("TRL packed + Liger", 17031, 35.9), ("TRL packed", 16975, 35.9)],
}


def _finite(value: Any) -> Any:
    """NaN (no CUDA peak memory on the CPU) as null: strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read(path: Path) -> dict:
    env, ours, peers, notes = {}, [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = _finite(json.loads(line))
        side = record.pop("side", None)
        if side == "env":
            env = record
        elif side == "ours":
            ours.append(record)
        elif side == "peer":
            result = record["result"]
            result["mfu_6n"] = round(result["tflops"] * 1e12 / PEAK_FLOPS, 3)
            peers.append(result)
        elif side == "note":
            notes.append(f"{record['kind']}: {record['text']}")
    return {"env": env, "ours": ours, "peers": peers, "notes": notes, "mfu_formula": MFU_FORMULA}


def markdown(summary: dict, mode: str, seconds: int) -> str:
    env = summary["env"]
    lines = [
        f"# gpu_all.sh ({'CPU dry run, tiny shapes, 2 steps: no speed figure means anything' if mode == 'dry' else 'GPU'})",
        "",
        f"- device: {env.get('device', '?')}; torch {env.get('torch', '?')}, transformers "
        f"{env.get('transformers', '?')}, peft {env.get('peft', '?')}; not installed: "
        f"{', '.join(env.get('missing', [])) or 'none'}; wall {seconds} s",
        f"- {MFU_FORMULA}",
        "",
        "| shape | mode | run | attention | tok/s | peak GiB | TFLOP/s | MFU | compile s | gates |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shapes = sorted({r["arch"] for r in summary["ours"] + summary["peers"]})
    for shape in shapes:
        for mode_name in ("full", "lora"):
            lora = mode_name == "lora"
            for r in summary["ours"]:
                if r["arch"] != shape or r["lora"] != lora:
                    continue
                gates = r["gates"]
                verdict = (
                    "pass"
                    if gates["all_ok"]
                    else "FAIL " + ", ".join(k for k, v in gates.items() if v is False)
                )
                lines.append(
                    f"| {shape} | {mode_name} | {r['name']} ({r.get('cross_entropy', '')}) | {r['attn']} "
                    f"| {r['tokens_per_s']:,} | {r['peak_mem_gib']} | {r['tflops']} | {r['mfu']:.1%} "
                    f"| {r['compile_s_estimate']} | {verdict} (step-0 {gates['step0_loss']:.4f} vs "
                    f"{gates['step0_reference']:.4f}) |"
                )
            for r in summary["peers"]:
                if r["arch"] != shape or r["lora"] != lora:
                    continue
                lines.append(
                    f"| {shape} | {mode_name} | peer {r['name']} (same call) | sdpa | {r['tokens_per_s']:,} "
                    f"| {r['peak_mem_gib']} | {r['tflops']} (6N) | {r['mfu_6n']:.1%} (6N) | | |"
                )
            for name, tps, peak in RECORDED.get((shape, mode_name), []) if mode != "dry" else []:
                lines.append(
                    f"| {shape} | {mode_name} | {name} (recorded 2026-11-26, not this call) | sdpa | {tps:,} "
                    f"| {peak} | | | | |"
                )
    if summary["notes"]:
        lines += ["", "Notes:", *[f"- {note}" for note in summary["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--mode", default="gpu", choices=["gpu", "dry"])
    parser.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    summary = read(args.results)
    summary.update(mode=args.mode, seconds=args.seconds)
    args.json.write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
    table = markdown(summary, args.mode, args.seconds)
    args.markdown.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
