"""The Ollama Modelfile of a GGUF export: the trained chat template as Ollama's Go template
(when it is one of the layouts here, checked by rendering both), and its end-of-turn stops."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UserError

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"


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
