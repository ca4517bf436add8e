"""The per-document CPU attention kernel (train/cpu_attention.py) against PyTorch's SDPA.

Forward + backward of one attention layer, fp32, on this machine's CPU, for several head
dimensions and row lengths, on rows of one document (plain causal: SDPA gets is_causal=True, its
best case) and on packed rows of several documents (SDPA gets the dense block-causal mask that
transformers builds for packed rows). Each figure is the median of --repeats timed calls after
warm-up; both run in the same process, interleaved. `model.attn_implementation: auto` uses the
kernel up to cpu_attention.MAX_HEAD_DIM: this is the measurement behind that threshold.

    python benchmarks/bench_cpu_attention.py                 # threads = cores
    python benchmarks/bench_cpu_attention.py --threads 1 --head-dims 8 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tunesmith.train import cpu_attention  # noqa: E402


def timed(call, repeats: int) -> float:  # noqa: ANN001
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    rows: int, length: int, heads: int, kv_heads: int, head_dim: int, documents: int, repeats: int
) -> dict:
    generator = torch.Generator().manual_seed(0)

    def tensor(h: int) -> torch.Tensor:  # [B, H, S, D] views of [B, S, H, D], as transformers makes them
        return torch.randn(rows, length, h, head_dim, generator=generator).transpose(1, 2).requires_grad_()

    q, k, v = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    grad_sdpa = torch.randn(rows, heads, length, head_dim, generator=generator)
    grad_ours = grad_sdpa.transpose(1, 2)
    document = length // documents
    positions = (torch.arange(length) % document).expand(rows, length)
    if documents == 1:
        mask = None
    else:  # transformers' block-causal mask for packed rows
        index = torch.arange(length) // document
        same = index[:, None] == index[None, :]
        mask = (same & (torch.arange(length)[:, None] >= torch.arange(length)[None, :]))[None, None]
    plan = cpu_attention.make_plan(positions, None, rows, length, kv_heads, torch.get_num_threads())

    def sdpa() -> None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        out.backward(grad_sdpa)

    def ours() -> None:
        cpu_attention.document_attention(q, k, v, plan, head_dim**-0.5).backward(grad_ours)

    sdpa_s, ours_s = timed(sdpa, repeats), timed(ours, repeats)
    return {
        "rows": rows,
        "length": length,
        "documents_per_row": documents,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "sdpa_ms": 1000 * sdpa_s,
        "cpu_varlen_ms": 1000 * ours_s,
        "speedup": sdpa_s / ours_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (the cores)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    print("| head dim | heads / kv | rows x length | documents per row | SDPA ms | cpu_varlen ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for head_dim in args.head_dims:
        heads, kv_heads = (8, 4) if head_dim <= 32 else (9, 3)  # stories260k's and SmolLM2's head layouts
        cpu_attention.kernel_library(head_dim)  # build outside the timing
        for rows, length, documents in ((8, 256, 1), (8, 512, 1), (8, 512, 4), (2, 1024, 1)):
            result = measure(rows, length, heads, kv_heads, head_dim, documents, args.repeats)
            results.append(result)
            print(
                f"| {head_dim} | {heads} / {kv_heads} | {rows} x {length} | {documents} | {result['sdpa_ms']:.1f} "
                f"| {result['cpu_varlen_ms']:.1f} | {result['speedup']:.2f}x |",
                flush=True,
            )
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    if args.out:
        args.out.write_text(
            json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
