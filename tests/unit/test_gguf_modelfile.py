"""The Ollama Modelfile (template conversion, stops), the pre-tokenizer fallback and the converter fetch."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

from tunesmith.data.templates import ChatTemplate, end_of_turn_ids, resolve_chat_template
from tunesmith.errors import UserError
from tunesmith.export import converter, modelfile

from ..conftest import ASSETS

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Qwen2.5-style: a default system prompt when the conversation has none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a kind bot.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Sky colour?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Grass?"},
]


def go_to_jinja(template: str) -> str:
    """Translate the Go-template subset tunesmith writes into jinja, to render it here as Ollama would."""
    out, stack, position = [], [], 0
    for match in re.finditer(r"\{\{-?\s*(.*?)\s*-?\}\}", template):
        out.append(template[position : match.start()].replace("{", "{{ '{' }}"))
        position = match.end()
        action = match.group(1)
        if action.startswith("if "):
            stack.append("if")
            out.append("{% if " + _expression(action[3:]) + " %}")
        elif action.startswith("else if "):
            out.append("{% elif " + _expression(action[8:]) + " %}")
        elif action == "else":
            out.append("{% else %}")
        elif action.startswith("range "):
            stack.append("for")
            out.append("{% for m in " + action[7:] + " %}")
        elif action == "end":
            out.append("{% endif %}" if stack.pop() == "if" else "{% endfor %}")
        else:
            out.append("{{ " + _expression(action) + " }}")
    out.append(template[position:])
    return "".join(out)


def _expression(expression: str) -> str:
    equal = re.fullmatch(r'eq \.(\w+) "(\w+)"', expression)
    if equal:
        return f"m.{equal.group(1)} == '{equal.group(2)}'"
    name = expression.lstrip(".")
    return f"m.{name}" if name in ("Content", "Role") else name


def ollama_render(go_template: str, messages: list[dict[str, str]]) -> str:
    """What Ollama renders: .System holds the system messages, .Messages every message."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    values = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return jinja2.Template(go_to_jinja(go_template), keep_trailing_newline=True).render(
        System=system, Messages=values
    )


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS / "base-model")


@pytest.mark.parametrize(
    ("template", "layout_name"),
    [(None, "ChatML"), (LLAMA3_TEMPLATE, "Llama 3"), (DEFAULT_SYSTEM_TEMPLATE, "ChatML")],
)
def test_the_go_template_renders_what_the_trained_template_renders(tokenizer, template, layout_name):
    chat = ChatTemplate(template, "config") if template else resolve_chat_template(tokenizer)
    bos = tokenizer.bos_token or ""
    layout = modelfile.match_layout(lambda m, g: chat.render(tokenizer, m, add_generation_prompt=g), bos)
    assert layout is not None and layout.name == layout_name
    go = layout.go_template()
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        expected = chat.render(tokenizer, messages, add_generation_prompt=True)
        assert expected.startswith(bos)
        assert ollama_render(go, messages) == expected[len(bos) :]


def test_a_template_with_no_go_equivalent_is_left_to_ollama(tokenizer):
    odd = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    chat = ChatTemplate(odd, "config")
    assert modelfile.match_layout(lambda m, g: chat.render(tokenizer, m, add_generation_prompt=g)) is None
    text = modelfile.modelfile(None, ["<|im_end|>"], None)
    parsed = modelfile.parse_modelfile(text)
    assert (
        parsed["template"] is None and parsed["from"] == "./model.gguf" and parsed["stops"] == ["<|im_end|>"]
    )


def test_modelfile_stops_are_the_templates_end_of_turn_tokens(tokenizer):
    chat = resolve_chat_template(tokenizer)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer, chat)]
    layout = modelfile.match_layout(lambda m, g: chat.render(tokenizer, m, add_generation_prompt=g))
    parsed = modelfile.parse_modelfile(modelfile.modelfile(layout.go_template(), stops, layout.name))
    assert "<|im_end|>" in parsed["stops"] and set(parsed["stops"]) == set(stops)
    assert parsed["template"] == layout.go_template()


def test_pre_tokenizer_fallback_recognises_only_what_llama_cpp_implements(tmp_path):
    def write(pre):
        (tmp_path / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": pre}))
        return converter._pre_tokenizer_by_structure(tmp_path)

    assert write({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}) == "gpt-2"
    split = {
        "type": "Split",
        "pattern": {"Regex": converter._SPLIT_PATTERNS["qwen2"]},
        "behavior": "Isolated",
    }
    byte_level = {"type": "ByteLevel", "use_regex": False}
    assert write({"type": "Sequence", "pretokenizers": [split, byte_level]}) == "qwen2"
    split["pattern"]["Regex"] = r"\s+|\w+"
    assert write({"type": "Sequence", "pretokenizers": [split, byte_level]}) is None
    assert write({"type": "Metaspace"}) is None


def test_pre_tokenizer_fallback_names_are_llama_cpps_own():
    # llama.cpp refuses a file whose pre-tokenizer name it does not know ("unknown pre-tokenizer
    # type: 'gpt2'": its name is "gpt-2"); the names must be ones the converter itself writes.
    try:
        directory = converter.find_converter()
    except UserError:
        pytest.skip("llama.cpp's converter is not fetched (make gguf-tools)")
    written = set(re.findall(r'res = "([^"]+)"', (directory / "conversion" / "base.py").read_text()))
    assert {"gpt-2", *converter._SPLIT_PATTERNS} <= written


def test_a_missing_converter_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="python -m tunesmith.export.converter fetch"):
        converter.find_converter(tmp_path / "nowhere")


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"llama_cpp_python-{converter.CONVERTER_VERSION}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_fetch_keeps_only_the_converter_from_the_sdist(tmp_path):
    sdist = _sdist(
        tmp_path / "llama.tar.gz",
        {
            "vendor/llama.cpp/convert_hf_to_gguf.py": "# converter",
            "vendor/llama.cpp/conversion/__init__.py": "",
            "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
            "vendor/llama.cpp/LICENSE": "MIT License",
            "vendor/llama.cpp/src/llama.cpp": "// not wanted",
            "llama_cpp/__init__.py": "# not wanted",
        },
    )
    target = converter.fetch_converter(tmp_path / "cache", sdist=sdist)
    assert converter.find_converter(target) == target
    kept = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert kept == [
        "LICENSE",
        "SOURCE",
        "conversion/__init__.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]


def test_fetch_refuses_an_archive_without_the_converter(tmp_path):
    sdist = _sdist(tmp_path / "other.tar.gz", {"README.md": "hello"})
    with pytest.raises(UserError, match="no vendor/llama.cpp/convert_hf_to_gguf.py"):
        converter.fetch_converter(tmp_path / "cache", sdist=sdist)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache.partial").exists()
