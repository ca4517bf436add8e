"""GGUF export for llama.cpp, Ollama and LM Studio: the merged model in one file, an Ollama
Modelfile, and a parity check that the file predicts what the trained model predicted.

The tensors are written by llama.cpp's own converter (`convert_hf_to_gguf.py` and its
`conversion/` package, with the `gguf-py` of the same commit), never by a tensor map of ours:
it ships in the `llama-cpp-python` sdist on PyPI (MIT), and `fetch_converter` (or
`python -m tunesmith.export_gguf fetch`, `make gguf-tools`) extracts those parts into a cache.
The converter runs in a subprocess, so its `gguf-py` never meets the `gguf` this process
imported through transformers.

Parity: the GGUF file is read back with transformers' GGUF loader and compared with the merged
HF model on a probe batch (max |logit difference| within the tolerance of the quantisation),
and on the greedy tokens of a probe chat prompt; the tokenizer rebuilt from the file must
tokenise the rendered chat template like the trained tokenizer. The export refuses to finish
otherwise, and `out_dir` is then left as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

CONVERTER_PACKAGE = "llama-cpp-python"
CONVERTER_VERSION = "0.3.36"  # the sdist whose vendor/llama.cpp converter was checked here
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
CARD_FILE = "README.md"
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
CONVERT_UNSUPPORTED_EXIT = 3
CONVERT_PRE_TOKENIZER_EXIT = 4


def default_converter_dir() -> Path:
    return Path("~/.cache/tunesmith").expanduser() / f"llama.cpp-convert-{CONVERTER_VERSION}"


def _is_converter(directory: Path) -> bool:
    return (directory / "convert_hf_to_gguf.py").is_file() and (directory / "gguf-py" / "gguf").is_dir()


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """The folder holding llama.cpp's converter: `llama_cpp` (a llama.cpp checkout or a fetched
    cache) if given, else the cache `fetch_converter` fills."""
    directory = Path(llama_cpp).expanduser() if llama_cpp else default_converter_dir()
    if _is_converter(directory):
        return directory
    where = f"--llama-cpp {directory}" if llama_cpp else str(directory)
    raise UserError(
        f"llama.cpp's GGUF converter is not in {where} (it needs convert_hf_to_gguf.py and gguf-py/). "
        f"Fetch it once with `python -m tunesmith.export_gguf fetch` (or `make gguf-tools`): it downloads "
        f"the {CONVERTER_PACKAGE}=={CONVERTER_VERSION} source from PyPI and keeps llama.cpp's converter "
        "(MIT) in that folder; or pass --llama-cpp DIR pointing at a llama.cpp checkout"
    )


def fetch_converter(target: Path | None = None, sdist: Path | None = None) -> Path:
    """Extract llama.cpp's converter from the llama-cpp-python sdist (downloaded from PyPI with
    pip unless `sdist` is given) into `target`; complete or absent, never half-written."""
    target = target or default_converter_dir()
    if _is_converter(target):
        return target
    with tempfile.TemporaryDirectory() as scratch:
        if sdist is None:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}",
                "-d",
                scratch,
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            archives = sorted(Path(scratch).glob("*.tar.gz"))
            if done.returncode != 0 or not archives:
                raise UserError(
                    f"could not download the {CONVERTER_PACKAGE}=={CONVERTER_VERSION} sdist with pip "
                    f"({done.stderr.strip()[-300:]}); download it by hand and pass it: "
                    "`python -m tunesmith.export_gguf fetch --sdist FILE.tar.gz`"
                )
            sdist = archives[0]
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in CONVERTER_PARTS:
                    continue
                if not (member.isfile() or member.isdir()):
                    continue  # no links or devices out of an archive
                destination = partial.joinpath(*parts[3:])
                if member.isdir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                destination.write_bytes(source.read())
        if not _is_converter(partial):
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py and gguf-py/ in it")
        (partial / "SOURCE").write_text(
            f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION} sdist from PyPI, vendor/llama.cpp (MIT, see LICENSE)\n"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


# The Ollama Modelfile


@dataclass(frozen=True)
class TemplateLayout:
    """A chat layout both as Python string formats (to compare with the trained jinja
    template) and as Ollama's Go template (built from the same pieces)."""

    name: str
    system: str  # with {content}
    user: str
    assistant: str  # starts with `generation`
    generation: str  # the prompt that opens the assistant's turn
    default_system: str | None = None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text = ""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            text += self.system.format(content=self.default_system)
        for message in messages:
            text += getattr(self, message["role"]).format(content=message["content"])
        return text + (self.generation if add_generation_prompt else "")

    def go_template(self) -> str:
        def go(piece: str, value: str) -> str:
            return piece.replace("{content}", value)

        system = go(self.system, "{{ .System }}")
        if self.default_system is not None:
            default = go(self.system, self.default_system)
            head = f"{{{{ if .System }}}}{system}{{{{ else }}}}{default}{{{{ end }}}}"
        else:
            head = f"{{{{ if .System }}}}{system}{{{{ end }}}}"
        # Ollama keeps system messages in .System; the assistant header follows each user turn,
        # which is the trained layout for alternating conversations.
        reply = go(self.assistant[len(self.generation) :], "{{ .Content }}")
        return (
            head + '{{ range .Messages }}{{ if eq .Role "user" }}'
            f"{go(self.user, '{{ .Content }}')}{self.generation}"
            f'{{{{ else if eq .Role "assistant" }}}}{reply}{{{{ end }}}}{{{{ end }}}}'
        )


LAYOUTS = (
    TemplateLayout(
        "ChatML",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        generation="<|im_start|>assistant\n",
    ),
    TemplateLayout(
        "Llama 3",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
)
_CONVERSATIONS = (
    ([{"role": "user", "content": "Hi there"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}], True),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        True,
    ),
    ([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}], False),
)


def match_layout(render: Any, bos: str = "") -> TemplateLayout | None:
    """The layout that renders exactly like `render(messages, add_generation_prompt)` (the
    trained jinja template), with the default system prompt it adds, if any; None when none does."""
    for layout in LAYOUTS:
        first = render(*_CONVERSATIONS[0])
        first = first[len(bos) :] if bos and first.startswith(bos) else first
        head, _, rest = layout.system.partition("{content}")
        default = None
        if first.startswith(head) and rest in first:
            default = first[len(head) : first.index(rest, len(head))]
        for candidate in (layout, TemplateLayout(**{**layout.__dict__, "default_system": default})):
            if candidate.default_system is None and candidate is not layout:
                continue
            if all(
                render(messages, generation) == bos + candidate.render(messages, generation)
                for messages, generation in _CONVERSATIONS
            ):
                return candidate
    return None


def _go_quote(text: str) -> str:
    if '"""' in text:
        raise UserError('the chat template contains """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(template: str | None, stops: list[str], layout_name: str | None) -> str:
    """An Ollama Modelfile for ./model.gguf: the Go template (when the trained chat template was
    converted) and one `stop` per end-of-turn token."""
    lines = [
        f"# Ollama Modelfile written by tunesmith: `ollama create NAME -f {MODELFILE}`",
        f"FROM ./{GGUF_FILE}",
    ]
    if template is not None:
        lines += [f"# the trained chat template ({layout_name}) in Ollama's Go template syntax"]
        lines += [f"TEMPLATE {_go_quote(template)}"]
    else:
        lines += [
            "# The trained chat template has no Go-template equivalent here: Ollama picks its template from",
            "# tokenizer.chat_template inside model.gguf. Check `ollama show NAME --template` before use.",
        ]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """{from, template, stops} of a Modelfile (what tunesmith writes: one-line or \"\"\" quoting)."""
    result: dict[str, Any] = {"from": None, "template": None, "stops": []}
    rest = text
    while rest:
        line, _, rest = rest.partition("\n")
        if line.startswith("FROM "):
            result["from"] = line[5:].strip()
        elif line.startswith("TEMPLATE "):
            value = line[len("TEMPLATE ") :]
            if value.startswith('"""'):
                body = value[3:] + ("\n" + rest if '"""' not in value[3:] else "")
                result["template"], _, tail = body.partition('"""')
                rest = tail.partition("\n")[2] if '"""' not in value[3:] else rest
            else:
                result["template"] = value
        elif line.startswith("PARAMETER stop "):
            result["stops"].append(json.loads(line[len("PARAMETER stop ") :]))
    return result


# Export


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


def _run_converter(converter: Path, hf_dir: Path, out_file: Path, quant: str, eot_id: int | None) -> None:
    command = [sys.executable, "-m", "tunesmith.export_gguf", "convert", str(converter), str(hf_dir)]
    command += [str(out_file), quant, str(-1 if eot_id is None else eot_id)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == CONVERT_UNSUPPORTED_EXIT:
        raise UserError(
            f"{hf_dir}: llama.cpp's converter does not support this architecture ({done.stdout.strip()})"
        )
    if done.returncode == CONVERT_PRE_TOKENIZER_EXIT:
        raise UserError(
            f"{hf_dir}: llama.cpp does not know this tokenizer's pre-tokenizer, so a GGUF file would tokenise "
            "text differently from training; export to HF (`tunesmith export` without --format gguf) instead"
        )
    if done.returncode != 0 or not out_file.is_file():
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"llama.cpp's converter failed (exit {done.returncode}):\n{tail}")


def probe_prompt_ids(tokenizer: Any) -> list[int]:
    from tunesmith.data.templates import encode_prompt, resolve_chat_template

    return encode_prompt(tokenizer, resolve_chat_template(tokenizer), PROBE_MESSAGES)


def check_parity(hf_dir: Path, gguf_file: Path, quant: str) -> dict[str, Any]:
    """Compare the GGUF file (read back by transformers) with the merged HF model: probe-batch
    logits, greedy tokens of the probe chat prompt, and the tokenisation of that prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith import export

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
    expected = export.probe_logits(reference, vocab_size)
    scale = float(expected.abs().max()) or 1.0
    error = export.parity_error(expected, export.probe_logits(loaded, vocab_size)) / scale
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
    console: Any = None,
) -> GgufExport:
    """Merge the adapter (or take a full model), convert with llama.cpp's converter, check parity,
    and write out_dir/{model.gguf, Modelfile, README.md}: complete or not at all."""
    import time

    from tunesmith import api
    from tunesmith.data.templates import end_of_turn_ids, resolve_chat_template

    if quant not in LOGIT_TOLERANCE:
        raise UserError(f"--quant {quant}: choose one of {', '.join(LOGIT_TOLERANCE)}")
    started = time.perf_counter()
    source = api.resolve_trained(str(model_or_run))
    if not (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
        raise UserError(f"{model_or_run}: not a run, adapter or model directory")
    converter = find_converter(llama_cpp)
    out_dir = Path(out_dir)
    temp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        hf_dir = api.merge_adapter(str(source), temp / "hf", console=console)
        architecture = _architecture(hf_dir)
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise UserError(
                f"{model_or_run}: GGUF export supports {', '.join(sorted(SUPPORTED_ARCHITECTURES))} "
                f"(this model is {architecture}); export it as an HF directory instead (no --format gguf)"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        template = resolve_chat_template(tokenizer)
        # Tokenizers without their own template trained with a built-in one: llama.cpp and
        # Ollama must see that one.
        tokenizer.chat_template = template.template
        tokenizer.save_pretrained(hf_dir)
        turn_ids = end_of_turn_ids(tokenizer, template)
        eot = [i for i in turn_ids if i != tokenizer.eos_token_id]
        gguf_file = temp / GGUF_FILE
        _run_converter(converter, hf_dir, gguf_file, quant, eot[0] if eot else None)
        parity = check_parity(hf_dir, gguf_file, quant)
        bos = tokenizer.bos_token if tokenizer.bos_token and template.template.find("bos_token") >= 0 else ""
        layout = match_layout(lambda m, g: template.render(tokenizer, m, add_generation_prompt=g), bos or "")
        stops = [tokenizer.convert_ids_to_tokens(i) for i in turn_ids]
        (temp / MODELFILE).write_text(
            modelfile(layout.go_template() if layout else None, stops, layout.name if layout else None)
        )
        card = (hf_dir / CARD_FILE).read_text(encoding="utf-8") if (hf_dir / CARD_FILE).is_file() else ""
        size = gguf_file.stat().st_size
        card += gguf_card(quant, parity, size, layout.name if layout else None, stops)
        (temp / CARD_FILE).write_text(card, encoding="utf-8")
        for name in ("tunesmith.json",):
            if (hf_dir / name).is_file():
                shutil.copy(hf_dir / name, temp / name)
        shutil.rmtree(hf_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    temp.rename(out_dir)
    return GgufExport(
        out_dir=out_dir,
        gguf_file=out_dir / GGUF_FILE,
        quant=quant,
        logit_error=parity["logit_error"],
        tolerance=parity["tolerance"],
        greedy_tokens=parity["greedy_tokens"],
        greedy_check=parity["greedy_check"],
        layout=layout.name if layout else None,
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


# The converter, run in a subprocess (python -m tunesmith.export_gguf convert ...)


# The split patterns of the pre-tokenizers llama.cpp implements, by the name it gives them.
_SPLIT_PATTERNS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _pre_tokenizer_by_structure(model_dir: Path) -> str | None:
    """llama.cpp names a BPE pre-tokenizer by hashing how the whole tokenizer splits a test
    string, so a tokenizer trained here (like tunesmith's embedded one) is unknown to it even
    when its pre-tokenizer is one llama.cpp implements: those are recognised from tokenizer.json
    (plain GPT-2 byte-level, or a Qwen2 / Llama 3 split followed by byte-level)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2 and steps[1].get("type") == "ByteLevel":
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if steps[0].get("type") == "Split" and not steps[1].get("use_regex", True):
            return next((name for name, known in _SPLIT_PATTERNS.items() if known == pattern), None)
    return None


def _convert_main(converter: str, model_dir: str, out_file: str, quant: str, eot: str) -> int:
    sys.path[:0] = [str(Path(converter) / "gguf-py"), converter]
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    directory = Path(model_dir)
    hparams = ModelBase.load_hparams(directory, False)
    architecture = get_model_architecture(hparams, ModelType.TEXT)
    try:
        model_class = get_model_class(architecture)
    except NotImplementedError:
        print(architecture)
        return CONVERT_UNSUPPORTED_EXIT
    eot_id = int(eot)

    class Export(model_class):  # type: ignore[misc, valid-type]
        model_arch = model_class.model_arch

        def get_vocab_base_pre(self, tokenizer: Any) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                name = _pre_tokenizer_by_structure(directory)
                if name is None:
                    raise SystemExit(CONVERT_PRE_TOKENIZER_EXIT) from None
                return name

        def set_vocab(self) -> None:
            super().set_vocab()
            if eot_id >= 0:  # the template's end-of-turn token, for llama.cpp's end-of-generation set
                self.gguf_writer.add_eot_token_id(eot_id)

    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    with torch.inference_mode():
        Export(directory, file_types[quant], Path(out_file)).write()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["convert"] and len(argv) == 6:
        return _convert_main(*argv[1:])
    if argv[:1] == ["fetch"]:
        sdist = Path(argv[argv.index("--sdist") + 1]) if "--sdist" in argv else None
        try:
            print(fetch_converter(sdist=sdist))
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m tunesmith.export_gguf fetch [--sdist FILE.tar.gz]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
