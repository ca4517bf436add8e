"""llama.cpp's own GGUF converter: where it comes from, and running it.

The tensors are written by llama.cpp's `convert_hf_to_gguf.py` and its `conversion/` package,
with the `gguf-py` of the same commit, never by a tensor map of ours: it ships in the
`llama-cpp-python` sdist on PyPI (MIT), and `fetch_converter` (or
`python -m tunesmith.export.converter fetch`, `make gguf-tools`) extracts those parts into a
cache. The converter runs in a subprocess (`python -m tunesmith.export.converter convert ...`),
so its `gguf-py` never meets the `gguf` the exporting process imported through transformers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

CONVERTER_PACKAGE = "llama-cpp-python"
CONVERTER_VERSION = "0.3.36"  # the sdist whose vendor/llama.cpp converter was checked here
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
CONVERT_UNSUPPORTED_EXIT = 3
CONVERT_PRE_TOKENIZER_EXIT = 4


def default_converter_dir() -> Path:
    return Path("~/.cache/tunesmith").expanduser() / f"llama.cpp-convert-{CONVERTER_VERSION}"


def _missing_parts(directory: Path) -> list[str]:
    """What of llama.cpp's converter `directory` lacks: the script, its gguf-py and (in llama.cpp
    versions whose script imports it) its conversion/ package."""
    script = directory / "convert_hf_to_gguf.py"
    if not script.is_file():
        return ["convert_hf_to_gguf.py"]
    missing = [] if (directory / "gguf-py" / "gguf").is_dir() else ["gguf-py/"]
    try:
        uses_package = "from conversion" in script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        uses_package = False
    if uses_package and not (directory / "conversion" / "__init__.py").is_file():
        missing.append("conversion/")
    return missing


def _is_converter(directory: Path) -> bool:
    return not _missing_parts(directory)


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """The folder holding llama.cpp's converter: `llama_cpp` (a llama.cpp checkout or a fetched
    cache) if given, else the cache `fetch_converter` fills."""
    directory = Path(llama_cpp).expanduser() if llama_cpp else default_converter_dir()
    missing = _missing_parts(directory)
    if not missing:
        return directory
    where = f"--llama-cpp {directory}" if llama_cpp else str(directory)
    raise UserError(
        f"llama.cpp's GGUF converter is not complete in {where} (missing {', '.join(missing)}; it needs "
        "convert_hf_to_gguf.py, its conversion/ package and gguf-py/). "
        f"Fetch it once with `python -m tunesmith.export.converter fetch` (or `make gguf-tools`): it downloads "
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
                    "`python -m tunesmith.export.converter fetch --sdist FILE.tar.gz`"
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


def run_converter(converter: Path, hf_dir: Path, out_file: Path, quant: str, eot_id: int | None) -> None:
    command = [sys.executable, "-m", "tunesmith.export.converter", "convert", str(converter), str(hf_dir)]
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


# The converter itself, in the subprocess (python -m tunesmith.export.converter convert ...)


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
        return "gpt-2"  # the name llama.cpp (llama-vocab.cpp) and its converter use
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
    print("usage: python -m tunesmith.export.converter fetch [--sdist FILE.tar.gz]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
