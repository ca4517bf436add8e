"""Test tokenizers for the real chat templates in ../shared/chat_templates: the embedded tokenizer
with each family's special tokens added and its BOS/EOS set, so templates render as they do for
the real models."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from transformers import AutoTokenizer

from ..conftest import ASSETS, SHARED

TEMPLATES = SHARED / "chat_templates"
# family -> (bos, eos); the EOS is what a generation stops on at the end of a reply.
SPECIAL = {
    "cohere": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "deepseekv3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "gemma3": ("<bos>", "<eos>"),
    "gptoss": ("<|startoftext|>", "<|return|>"),
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3_2": ("<|begin_of_text|>", "<|eot_id|>"),
    "phi3_5": ("<s>", "<|endoftext|>"),
    "qwen2_5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "qwen3_5_nothink": (None, "<|im_end|>"),
    "qwen3_5_think": (None, "<|im_end|>"),
    "qwen3_instruct_2507": (None, "<|im_end|>"),
}
TOKEN = re.compile(
    r"<\|[A-Za-z_]+\|>|<｜[^｜]+｜>|</?(?:start_of_turn|end_of_turn|think|tool_call|tool_response)>"
)


def families() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.jinja"))


def template_text(family: str) -> str:
    return (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")


@cache
def family_tokenizer(family: str):
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "base-model")
    text = template_text(family)
    bos, eos = SPECIAL[family]
    tokens = sorted(set(TOKEN.findall(text)) | {t for t in (bos, eos) if t})
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    if bos:
        tokenizer.bos_token = bos
    tokenizer.eos_token = eos
    tokenizer.chat_template = text
    return tokenizer


def shared_path() -> Path:
    return SHARED
