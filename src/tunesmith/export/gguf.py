"""GGUF export for llama.cpp, Ollama and LM Studio: the merged model in one file, an Ollama
Modelfile, and a parity check that the file predicts what the trained model predicted.

The adapter is merged by `tunesmith.export.merge_adapter` (parity-checked itself), the file is
written by llama.cpp's own converter (`tunesmith.export.converter`), and the Modelfile by
`tunesmith.export.modelfile`. Parity: the GGUF file is read back with transformers' GGUF loader
and compared with the merged HF model on a probe batch (max |logit difference| within the
tolerance of the quantisation), and on the greedy tokens of a probe chat prompt; the tokenizer
rebuilt from the file must tokenise the rendered chat template like the trained tokenizer. The
export refuses to finish otherwise, and `out_dir` is then left as it was.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.export import (
    CARD_FILE,
    check_exportable,
    export_inputs,
    merge_into,
    parity_error,
    probe_logits,
)
from tunesmith.export.converter import CONVERTER_PACKAGE, CONVERTER_VERSION, find_converter, run_converter
from tunesmith.export.modelfile import GGUF_FILE, MODELFILE, match_layout, modelfile
from tunesmith.outputs import claim_output, output_directory
from tunesmith.progress import NoProgress, Progress
from tunesmith.tasks.trained import trained_model_task
from tunesmith.train.rundir import MODEL_INFO_FILE, guarded_write, resolve_trained

GGUF_PURPOSE = "export-gguf"  # the output marker of a GGUF export folder (tunesmith.outputs)

# Architectures whose export was checked end to end (conversion, reload, parity); others are
# refused rather than shipped unchecked.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# max |logit difference| against the fp32 merged model, relative to the reference's largest |logit|
# (so it holds for small and large logit scales alike), on a batch of random token ids. f16 rounds
# each weight to 11 significant bits; q8_0 stores blocks of 32 weights as int8 with one scale, so its
# tolerance is looser. Measured: SmolLM2-135M 4.2e-3 (f16) and 5.2e-2 (q8_0); the tiny test models
# 2e-4 to 5e-4 (f16) and 6e-3 to 1.1e-2 (q8_0). The limits leave room for deeper models.
LOGIT_TOLERANCE = {"f32": 1e-5, "f16": 2e-2, "q8_0": 1.5e-1}
PROBE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]
PROBE_NEW_TOKENS = 8


@dataclass
class GgufExport:
    out_dir: Path
    gguf_file: Path
    quant: str
    logit_error: float  # max |logit difference| / max |reference logit| on the probe batch
    tolerance: float
    greedy_tokens: list[int]
    greedy_check: str  # "identical", or "identical up to a near-tie" (quantised only)
    layout: str | None  # the Ollama template layout, None when left to Ollama's detection
    stops: list[str]
    seconds: float
    size_bytes: int


def _architecture(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    return names[0]


def probe_prompt_ids(tokenizer: Any) -> list[int]:
    from tunesmith.data.templates import encode_prompt, resolve_chat_template

    return encode_prompt(tokenizer, resolve_chat_template(tokenizer), PROBE_MESSAGES)


def check_parity(hf_dir: Path, gguf_file: Path, quant: str) -> dict[str, Any]:
    """Compare the GGUF file (read back by transformers) with the merged HF model: probe-batch
    logits, greedy tokens of the probe chat prompt, and the tokenisation of that prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tolerance = LOGIT_TOLERANCE[quant]
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        ).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:
        raise UserError(f"{gguf_file}: not a readable GGUF model ({type(exc).__name__}: {exc})") from None
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    vocab_size = reference.get_input_embeddings().weight.shape[0]
    expected = probe_logits(reference, vocab_size)
    scale = float(expected.abs().max()) or 1.0
    error = parity_error(expected, probe_logits(loaded, vocab_size)) / scale
    if error > tolerance:
        raise UserError(
            f"{gguf_file.name} differs from the merged model: max |logit difference| {error:.2e} of the largest "
            f"logit > {tolerance} ({quant}); nothing was written"
        )
    prompt = probe_prompt_ids(tokenizer)
    rendered = tokenizer.decode(prompt, skip_special_tokens=False)
    if list(gguf_tokenizer(rendered, add_special_tokens=False)["input_ids"]) != prompt:
        raise UserError(
            f"{gguf_file.name}: its tokenizer tokenises the chat template differently from the trained one; "
            "nothing was written"
        )
    input_ids = torch.tensor([prompt])
    greedy = {}
    for name, model in (("reference", reference), ("gguf", loaded)):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=PROBE_NEW_TOKENS,
            min_new_tokens=PROBE_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        greedy[name] = output[0, len(prompt) :].tolist()
    quantised = quant not in ("f32", "f16")
    check = "identical" if greedy["reference"] == greedy["gguf"] else "identical up to a near-tie"
    if greedy["reference"] != greedy["gguf"] and not (
        quantised and _near_tie(reference, prompt, greedy, tolerance * scale)
    ):
        raise UserError(
            f"{gguf_file.name}: greedy tokens {greedy['gguf']} differ from the merged model's {greedy['reference']}; "
            "nothing was written"
        )
    return {
        "logit_error": error,
        "tolerance": tolerance,
        "greedy_tokens": greedy["reference"],
        "greedy_check": check,
    }


def _near_tie(reference: Any, prompt: list[int], greedy: dict[str, list[int]], margin: float) -> bool:
    """A quantised file may pick the runner-up where the reference's top two logits are closer
    than the logit tolerance: allowed for quantised exports only at the first divergence."""
    import torch

    position = next(
        i for i, (a, b) in enumerate(zip(greedy["reference"], greedy["gguf"], strict=True)) if a != b
    )
    ids = torch.tensor([prompt + greedy["reference"][:position]])
    with torch.no_grad():
        logits = reference(input_ids=ids).logits[0, -1]
    gap = float(logits[greedy["reference"][position]] - logits[greedy["gguf"][position]])
    return gap <= margin


def export_gguf(
    model_or_run: str | Path,
    out_dir: str | Path,
    quant: str = "f16",
    llama_cpp: str | Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> GgufExport:
    """Merge the adapter (or take a full model), convert with llama.cpp's converter, check parity,
    and write out_dir/{model.gguf, Modelfile, README.md}: complete or not at all."""
    from transformers import AutoTokenizer

    from tunesmith.data.templates import end_of_turn_ids, resolve_chat_template

    progress = progress or NoProgress()
    if quant not in LOGIT_TOLERANCE:
        raise UserError(f"--quant {quant}: choose one of {', '.join(LOGIT_TOLERANCE)}")
    started = time.perf_counter()
    source = resolve_trained(model_or_run)
    check_exportable(source, model_or_run)
    task = trained_model_task(source)
    if task is not None and task.load_trained is not None:
        raise UserError(
            f"{model_or_run}: GGUF holds language models; a {task.name} model (with its head) exports as an "
            "HF directory: leave out --format gguf"
        )
    inputs = [*export_inputs(model_or_run, source), Path(llama_cpp) if llama_cpp else None]
    claim = claim_output(out_dir, GGUF_PURPOSE, inputs=inputs, overwrite=overwrite)
    converter = find_converter(llama_cpp)
    out_dir = claim.path
    with guarded_write(out_dir, note=f" (nothing replaced {out_dir.name}/)"), output_directory(claim) as temp:
        hf_dir = temp / "hf"
        hf_dir.mkdir()
        merge_into(source, hf_dir, progress)
        architecture = _architecture(hf_dir)
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise UserError(
                f"{model_or_run}: GGUF export supports {', '.join(sorted(SUPPORTED_ARCHITECTURES))} "
                f"(this model is {architecture}); export it as an HF directory instead (no --format gguf)"
            )
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        template = resolve_chat_template(tokenizer)
        # Tokenizers without their own template trained with a built-in one: llama.cpp and
        # Ollama must see that one.
        tokenizer.chat_template = template.template
        tokenizer.save_pretrained(hf_dir)
        turn_ids = end_of_turn_ids(tokenizer, template)
        eot = [i for i in turn_ids if i != tokenizer.eos_token_id]
        gguf_file = temp / GGUF_FILE
        progress.message(f"converting to GGUF ({quant}) with llama.cpp's convert_hf_to_gguf.py")
        run_converter(converter, hf_dir, gguf_file, quant, eot[0] if eot else None)
        parity = check_parity(hf_dir, gguf_file, quant)
        progress.message(
            f"parity check: GGUF == merged model (max |logit difference| {parity['logit_error']:.1e} of the "
            f"largest logit, tolerance {parity['tolerance']}; greedy tokens {parity['greedy_check']})"
        )
        bos = tokenizer.bos_token if tokenizer.bos_token and template.template.find("bos_token") >= 0 else ""
        layout = match_layout(lambda m, g: template.render(tokenizer, m, add_generation_prompt=g), bos or "")
        stops = [str(tokenizer.convert_ids_to_tokens(i)) for i in turn_ids]
        layout_name = layout.name if layout else None
        (temp / MODELFILE).write_text(modelfile(layout.go_template() if layout else None, stops, layout_name))
        card = (hf_dir / CARD_FILE).read_text(encoding="utf-8") if (hf_dir / CARD_FILE).is_file() else ""
        size = gguf_file.stat().st_size
        (temp / CARD_FILE).write_text(
            card + gguf_card(quant, parity, size, layout_name, stops), encoding="utf-8"
        )
        if (hf_dir / MODEL_INFO_FILE).is_file():
            shutil.copy(hf_dir / MODEL_INFO_FILE, temp / MODEL_INFO_FILE)
        shutil.rmtree(hf_dir)  # inside the temporary folder made above: ours
    if claim.kept_as is not None:
        progress.message(f"--overwrite: the old {out_dir} is kept as {claim.kept_as}")
    return GgufExport(
        out_dir=out_dir,
        gguf_file=out_dir / GGUF_FILE,
        quant=quant,
        logit_error=parity["logit_error"],
        tolerance=parity["tolerance"],
        greedy_tokens=parity["greedy_tokens"],
        greedy_check=parity["greedy_check"],
        layout=layout_name,
        stops=stops,
        seconds=time.perf_counter() - started,
        size_bytes=size,
    )


def gguf_card(quant: str, parity: dict[str, Any], size: int, layout: str | None, stops: list[str]) -> str:
    return "\n".join(
        [
            "",
            "## GGUF",
            "",
            f"- `{GGUF_FILE}`: {quant}, {size / 1e6:.1f} MB, written by llama.cpp's convert_hf_to_gguf.py "
            f"({CONVERTER_PACKAGE} {CONVERTER_VERSION} sdist)",
            f"- parity check (read back with transformers): max |logit difference| {parity['logit_error']:.2e} "
            f"of the largest logit (tolerance {parity['tolerance']}), first {PROBE_NEW_TOKENS} greedy tokens "
            f"of a probe chat prompt {parity['greedy_check']}",
            f"- Ollama: `ollama create NAME -f {MODELFILE}`; template: {layout or 'detected by Ollama'}; "
            f"stop tokens: {', '.join(f'`{s}`' for s in stops)}",
            f"- llama.cpp: `llama-cli -m {GGUF_FILE} -cnv` (the chat template is inside the file)",
            "",
        ]
    )
