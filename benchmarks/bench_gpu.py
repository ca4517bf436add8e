"""GPU training throughput of tunesmith's trainer, under the protocol of ../shared/bench/peers_gpu.py.

Same shapes (random-init Qwen2.5-0.5B / Llama-3.2-1B, or `tiny`), same synthetic data
(peers_gpu.make_rows: log-normal lengths, median ~350, max 2048), ~16k tokens per optimizer
step, W warm-up + S timed steps, bf16 weights, fp32 AdamW states, full finetuning and LoRA r16
on all linear layers (dropout 0). Our run uses tunesmith's own pieces: best-fit packing
(data/pack.py), CausalLMLoss with the fast path chosen at setup (train/fastpath.py:
fused linear cross-entropy, compiled decoder blocks on static rows), build_optimizer (fused
AdamW on CUDA) and train/loop.py's train_loop.

Reported per run (one `RESULT {json}` line): real (non-pad) tokens/s over the timed steps,
peak memory (torch.cuda.max_memory_allocated over the timed steps, as the peers), warm-up
seconds (compile included) and the compile estimate, MFU against 989 TFLOP/s (H100/H200 bf16
dense) with

    FLOPs per token = 6 N_trainable + 4 N_frozen + 6 L d_attn E[S]

N = parameters doing matmuls (tied embeddings counted once: the LM head; a frozen weight costs
forward + input gradient = 4 FLOPs per parameter, a trained one 6), L layers, d_attn = heads x
head_dim, E[S] = sum(S_i^2) / sum(S_i) over the documents of the timed steps (causal attention
inside each packed document: QK^T and AV cost 2 x 2 x d_attn x S^2 / 2 forward per document
and layer, x3 for forward + backward).

Correctness gates (a fast number that fails one does not count):
  1. step-0 loss == the reference on the same packed batch (plain HF forward with labels and
     position_ids; rel. tolerance 5e-3 in bf16, 1e-4 in fp32);
  2. mean loss over steps 46-50 within 2% of a reference run (plain PyTorch loop: HF's own
     loss, same batches, same AdamW, same clipping) from the same initial weights;
  3. gradient norm finite and > 0 at every step.

Usage:
  python benchmarks/bench_gpu.py --arch qwen2.5-0.5b --peers      # peers + ours, one machine
  python benchmarks/bench_gpu.py --arch tiny --device cpu --steps 3  # CPU smoke check
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEERS_CANDIDATES = [
    REPO.parent / "shared" / "bench" / "peers_gpu.py",
    REPO / "benchmarks" / "peers" / "peers_gpu.py",
]
PEAK_FLOPS = 989e12  # H100 / H200 SXM, bf16 dense
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _load_peers():  # noqa: ANN202
    """The peers' module (ARCHS, make_rows, build_model), so both sides use the same shapes and data."""
    for path in PEERS_CANDIDATES:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("peers_gpu", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module, path
    return None, None


PEERS, PEERS_PATH = _load_peers()
if PEERS is not None:
    ARCHS = PEERS.ARCHS
    make_rows = PEERS.make_rows
else:  # the same shapes and data as peers_gpu.py, replicated
    ARCHS = {
        "qwen2.5-0.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                          max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)),
        "llama-3.2-1b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                          num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                          max_position_embeddings=131072, rope_theta=5e5, tie_word_embeddings=True)),
        "tiny": ("LlamaConfig", dict(vocab_size=1024, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, tie_word_embeddings=True)),
    }  # fmt: skip

    def make_rows(n: int, max_len: int, vocab: int) -> list[dict]:
        generator = torch.Generator().manual_seed(0)
        lengths = torch.exp(torch.randn(n, generator=generator) * 0.9 + math.log(350))
        lengths = [int(min(max(32, x), max_len)) for x in lengths.tolist()]
        generator = torch.Generator().manual_seed(1)
        return [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist()} for n in lengths]


def build_model(arch: str, device: str, dtype: torch.dtype, attn: str) -> torch.nn.Module:
    import transformers

    attn = "sdpa" if attn == "auto" else attn  # auto: loaded with SDPA, the fast path may switch
    class_name, kwargs = ARCHS[arch]
    config = getattr(transformers, class_name)(**kwargs)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False  # packed rows: documents are detected only without a cache
    return model


def flops_per_token(model: torch.nn.Module, arch: str, mean_doc_tokens: float) -> float:
    config = ARCHS[arch][1]
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    trainable = frozen = 0
    for name, parameter in model.named_parameters():
        if "embed_tokens" in name and not config.get("tie_word_embeddings"):
            continue  # an untied input embedding is a lookup, not a matmul
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    return 6 * trainable + 4 * frozen + 6 * layers * heads * head_dim * mean_doc_tokens


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_ours(arch: str, lora: bool, args: argparse.Namespace) -> dict:
    import transformers

    from tunesmith.config import AdapterConfig, Config
    from tunesmith.data.pack import RowSchedule, collate_rows
    from tunesmith.data.pack import make_rows as pack_rows
    from tunesmith.data.tokenize import Example
    from tunesmith.models.adapters import apply_adapter
    from tunesmith.train.checkpoint import TrainerState
    from tunesmith.train.fastpath import choose_fast_path, compile_blocks, use_attention
    from tunesmith.train.loop import LoopSettings, train_loop
    from tunesmith.train.loss import CausalLMLoss
    from tunesmith.train.optim import build_optimizer, build_scheduler

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    vocab = ARCHS[arch][1]["vocab_size"]
    rows_per_step = max(1, args.tokens_per_step // args.max_len)
    total = max(args.warmup + args.steps, args.gate_steps)
    sequences = [
        r["input_ids"] for r in make_rows(int(total * args.tokens_per_step / 350 * 1.3), args.max_len, vocab)
    ]
    # HF's shifted labels score tokens 1..n-1 of each sequence: our labels ignore token 0.
    examples = [Example(ids, [-100] + ids[1:]) for ids in sequences]
    config = Config.model_validate(
        {
            "adapter": {"method": "lora" if lora else "full", "r": 16, "alpha": 32, "dropout": 0.0,
                        "target_modules": LORA_TARGETS},
            "model": {"attn_implementation": args.attn},
            "data": {"max_seq_len": args.max_len},
            "train": {"batch_size": rows_per_step, "learning_rate": 1e-5, "warmup_ratio": 0.0,
                      "lr_scheduler": "constant", "compile": args.compile},
        }
    )  # fmt: skip
    rows = pack_rows(examples, args.max_len, packing=True)
    collate = lambda r: collate_rows(r, examples, pad_id=0)  # noqa: E731
    schedule = RowSchedule(len(rows), rows_per_step, 1, seed=0)
    step_rows = [[rows[i] for i in schedule.rows_for_step(s)[0]] for s in range(total)]
    doc_lengths = [[len(sequences[i]) for row in rs for i in row] for rs in step_rows]

    model = apply_adapter(
        build_model(arch, device, dtype, args.attn), AdapterConfig(**config.adapter.model_dump())
    )
    first_batch = collate(step_rows[0])
    reference_loss = _hf_loss(model, first_batch, device)
    fast = choose_fast_path(config, device, model, pad_id=0)
    # auto: flex attention with the document BlockMask on CUDA (the reference stays on SDPA).
    use_attention(model, fast.attention)
    attention_used = model.config._attn_implementation
    loss_module = CausalLMLoss(model, cross_entropy=fast.cross_entropy)
    if fast.compile:
        compile_blocks(loss_module)
    collate = fast.wrap_collate(collate)
    optimizer = build_optimizer(loss_module, config.train, device)
    scheduler = build_scheduler(optimizer, config.train, total)

    def step_batches(step: int) -> list[dict]:
        return [collate(step_rows[step])]

    marks: dict[int, float] = {}
    records: list[dict] = []
    started = time.perf_counter()

    def on_step(step: int, record: dict) -> None:
        _sync(device)
        marks[step] = time.perf_counter()
        records.append(record)
        if step == args.warmup and device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # as the peers: peak over the timed steps
        if step == args.warmup + args.steps and device == "cuda":
            marks["peak"] = torch.cuda.max_memory_allocated()

    train_loop(
        loss_module, optimizer, scheduler, step_batches,
        LoopSettings(total_steps=total, device=device, max_grad_norm=1.0),
        TrainerState(step=0, total_steps=total), log=lambda record: None, on_step=on_step,
    )  # fmt: skip
    timed = range(args.warmup, args.warmup + args.steps)
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    real_tokens = sum(sum(doc_lengths[s]) for s in timed)
    mean_doc = sum(n * n for s in timed for n in doc_lengths[s]) / real_tokens
    tokens_per_s = real_tokens / seconds
    step_seconds = seconds / args.steps
    warmup_seconds = marks[args.warmup] - started
    flops = flops_per_token(model, arch, mean_doc)
    ours_losses = [r["loss"] for r in records]
    grad_norms = [r["grad_norm"] for r in records]
    del loss_module, optimizer, scheduler, model
    _free(device)

    # Gate 2: a plain reference loop (HF loss, eager, no fast path) on the same batches.
    reference_losses = _reference_run(arch, lora, config, [collate(rs) for rs in step_rows], args)
    window = slice(max(0, total - 5), total)
    ours_end = sum(ours_losses[window]) / len(ours_losses[window])
    reference_end = sum(reference_losses[window]) / len(reference_losses[window])
    tolerance = 5e-3 if dtype == torch.bfloat16 else 1e-4
    gates = {
        "step0_loss": ours_losses[0],
        "step0_reference": reference_loss,
        "step0_ok": abs(ours_losses[0] - reference_loss) <= tolerance * abs(reference_loss),
        f"loss_at_{total}": ours_end,
        f"reference_at_{total}": reference_end,
        "end_ok": abs(ours_end - reference_end) <= 0.02 * abs(reference_end),
        "grad_norm_ok": all(math.isfinite(g) and g > 0 for g in grad_norms),
    }
    gates["all_ok"] = gates["step0_ok"] and gates["end_ok"] and gates["grad_norm_ok"]
    peak = marks.get("peak", float("nan"))
    return {
        "name": "tunesmith" + (" compiled" if args.compile else ""),
        "arch": arch,
        "lora": lora,
        "attn": attention_used,
        "cross_entropy": getattr(fast.cross_entropy, "__name__", str(fast.cross_entropy)),
        "tokens_per_step": round(real_tokens / args.steps),
        "pad_fraction": round(1 - real_tokens / (args.steps * rows_per_step * args.max_len), 3),
        "steps_timed": args.steps,
        "tokens_per_s": round(tokens_per_s),
        "peak_mem_gib": round(peak / 2**30, 2) if device == "cuda" else float("nan"),
        "flops_per_token": flops,
        "mean_doc_tokens_weighted": round(mean_doc, 1),
        "tflops": round(tokens_per_s * flops / 1e12, 1),
        "mfu": round(tokens_per_s * flops / PEAK_FLOPS, 3),
        "warmup_s": round(warmup_seconds, 1),
        "compile_s_estimate": round(max(0.0, warmup_seconds - args.warmup * step_seconds), 1),
        "gates": gates,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _hf_loss(model: torch.nn.Module, batch: dict, device: str) -> float:
    """The reference loss: HF's forward with labels on the packed batch (mean over targets)."""
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"].to(device),
            position_ids=batch["position_ids"].to(device),
            labels=batch["labels"].to(device),
            use_cache=False,
        )
    return float(out.loss)


def _reference_run(
    arch: str, lora: bool, config, batches: list[dict], args: argparse.Namespace
) -> list[float]:  # noqa: ANN001
    from tunesmith.config import AdapterConfig
    from tunesmith.models.adapters import apply_adapter

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = apply_adapter(
        build_model(arch, device, dtype, args.attn), AdapterConfig(**config.adapter.model_dump())
    )
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.train.learning_rate, weight_decay=0.0,
                                  fused=device == "cuda")  # fmt: skip
    losses = []
    for batch in batches:
        out = model(**{k: v.to(device) for k, v in batch.items() if k != "num_targets"}, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        del out
    del model, optimizer
    _free(device)
    return losses


def run_peers(args: argparse.Namespace) -> list[dict]:
    if PEERS_PATH is None:
        print(
            "peers_gpu.py not found (looked in ../shared/bench and benchmarks/peers): no peers run",
            flush=True,
        )
        return []
    command = [sys.executable, str(PEERS_PATH), "--arch", args.arch, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--tokens-per-step", str(args.tokens_per_step),
               "--max-len", str(args.max_len), "--modes", *args.modes]  # fmt: skip
    if args.peer_variants:
        command += ["--only", *args.peer_variants]
    print("running peers:", " ".join(command), flush=True)
    results = []
    with subprocess.Popen(command, cwd=PEERS_PATH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:  # fmt: skip
        for line in process.stdout:
            print("[peers] " + line, end="", flush=True)
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT ") :]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="qwen2.5-0.5b", choices=list(ARCHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="*", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=None, help="default 5 (1 on CPU)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="default 16384 (2048 on CPU)")
    parser.add_argument("--max-len", type=int, default=None, help="default 2048 (512 on CPU)")
    parser.add_argument("--gate-steps", type=int, default=None, help="steps of the loss gate, default 50")
    parser.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"],
        help="auto: the fast path's choice (flex attention on CUDA, SDPA on the CPU)",
    )
    parser.add_argument("--results", type=Path, default=None, help="append each RESULT as a JSON line here")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the decoder blocks (default: on CUDA)")  # fmt: skip
    parser.add_argument("--peers", action="store_true", help="also run peers_gpu.py in this invocation")
    parser.add_argument("--peer-variants", nargs="*", default=None, help="peers_gpu.py --only")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 5)
    args.tokens_per_step = args.tokens_per_step or (2048 if cpu else 16384)
    args.max_len = args.max_len or (512 if cpu else 2048)
    args.gate_steps = args.gate_steps or (args.warmup + args.steps if cpu else 50)
    args.compile = (not cpu) if args.compile is None else args.compile
    if cpu:
        torch.set_num_threads(min(2, torch.get_num_threads()))

    peers = run_peers(args) if args.peers else []
    ours = []
    for mode in args.modes:
        try:
            result = run_ours(args.arch, mode == "lora", args)
        except Exception as exc:  # one failing mode must not hide the other
            print(f"FAILED tunesmith {mode}: {type(exc).__name__}: {exc}", flush=True)
            continue
        print("RESULT " + json.dumps(result), flush=True)
        ours.append(result)
        if args.results is not None:
            with args.results.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"side": "ours", **result}) + "\n")

    print(f"\n| run | mode | tok/s | peak GiB | TFLOP/s | MFU | gates | arch {args.arch} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in peers:
        print(f"| {r['name']} | {'lora' if r['lora'] else 'full'} | {r['tokens_per_s']:,} | {r['peak_mem_gib']} "
              f"| {r['tflops']} (6N) | | | |")  # fmt: skip
    for r in ours:
        gates = "pass" if r["gates"]["all_ok"] else "FAIL " + json.dumps(r["gates"])
        print(f"| {r['name']} | {'lora' if r['lora'] else 'full'} | {r['tokens_per_s']:,} | {r['peak_mem_gib']} "
              f"| {r['tflops']} | {r['mfu']:.1%} | {gates} | compile ~{r['compile_s_estimate']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
