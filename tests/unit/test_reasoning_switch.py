"""Templates that switch reasoning on by default (issue 27): a Nemotron-3-Nano-style template opens
`<think>\\n` in its generation prompt and renders earlier assistant turns with an empty
`<think></think>`. Data without reasoning is refused with the fix named, and trains with
`data.chat_template_kwargs: {enable_thinking: false}`: the masks are checked through
`tunesmith data preview --json`, the run records the arguments and the trained tokenizer renders
with them by default."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tunesmith.cli import app

from ..conftest import write_jsonl

# Written here after NVIDIA-Nemotron-3-Nano's template: reasoning on unless enable_thinking is false.
NEMOTRON_STYLE = (
    "{%- set thinking = enable_thinking if enable_thinking is defined else true -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if message.reasoning_content is defined and message.reasoning_content -%}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n' -}}"
    "{%- else -%}{{- '<think></think>' -}}{%- endif -%}"
    "{{- message.content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if thinking -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n<think></think>' -}}{%- endif -%}"
    "{%- endif -%}"
)


def _conversations() -> list[dict]:
    rows = []
    for i in range(12):
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {i} plus one?"},
                    {"role": "assistant", "content": f"It is {i + 1}."},
                    {"role": "user", "content": "And twice that?"},
                    {"role": "assistant", "content": f"That is {2 * (i + 1)}."},
                ]
            }
        )
    return rows


def _config(tmp_path, model, **data) -> dict:
    train = write_jsonl(tmp_path / "chats.jsonl", _conversations())
    return {
        "task": "instruct",
        "model": {"name": str(model), "device": "cpu"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(train), "chat_template": NEMOTRON_STYLE, "eval_fraction": 0.2, **data},
        "train": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2},
        "eval": {"before": False, "after": False, "forgetting": False},
        "logging": {"progress": False},
        "output_dir": str(tmp_path / "runs"),
        "run_name": "nemotron",
    }


def _preview(tmp_path, values: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return CliRunner().invoke(app, ["data", "preview", str(path), "--json", "-n", "4"])


def test_reasoning_by_default_is_refused_naming_enable_thinking(tmp_path, tiny_llama) -> None:
    result = _preview(tmp_path, _config(tmp_path, tiny_llama))
    assert result.exit_code == 2
    assert "opens a reasoning block" in result.output
    assert "data.chat_template_kwargs: {enable_thinking: false}" in result.output


def test_enable_thinking_false_trains_every_answer_and_no_think_block(tmp_path, tiny_llama) -> None:
    from tunesmith import api
    from tunesmith.config import build_config

    values = _config(tmp_path, tiny_llama, chat_template_kwargs={"enable_thinking": False})
    result = _preview(tmp_path, values)
    assert result.exit_code == 0, result.output
    samples = json.loads(result.stdout)
    assert len(samples) == 4
    for sample in samples:
        line = int(sample["source"].rsplit(":", 1)[1])
        answers = [m["content"] for m in _conversations()[line - 1]["messages"] if m["role"] == "assistant"]
        # Both turns trained (the prompt leads into every rendered turn), each its answer and its
        # end-of-turn token; the empty think block is the template's, never trained.
        assert sample["trained"] == [f"{a}<|im_end|>" for a in answers]
        assert sample["text"].count("<think></think>") == 2 and "<think>\n" not in sample["text"]

    run = api.train(build_config(values))
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert "enable_thinking=False" in summary["data"]["chat_template"]
    recorded = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert recorded["data"]["chat_template_kwargs"] == {"enable_thinking": False}
    # The trained tokenizer renders as training did, without being told; the switch still works.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.final_dir)
    messages = [{"role": "user", "content": "What is 1 plus one?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n<think></think>")
    thinking = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=True
    )
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")


def test_template_arguments_tunesmith_sets_itself_are_refused() -> None:
    import pytest

    from tunesmith.config import build_config
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match="add_generation_prompt"):
        build_config({"data": {"chat_template_kwargs": {"add_generation_prompt": True}}})
