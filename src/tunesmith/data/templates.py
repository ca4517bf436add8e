"""Chat templates and assistant-token masks.

A conversation is rendered with the tokenizer's own chat template (or a built-in default when
it has none) and the loss mask marks exactly the characters of every assistant turn, including
the end-of-turn token. The assistant spans come from rendering growing prefixes of the
conversation, so the mask is right for any template that renders prefixes consistently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UserError

IGNORE_INDEX = -100

# ChatML, for tokenizers that have <|im_start|>/<|im_end|> tokens but no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Plain-text turns ending with the tokenizer's EOS, for tokenizers with no chat tokens at all
# (e.g. base models such as GPT-2 or llama2.c stories): EOS ends the turn so generation stops.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass
class ChatTemplate:
    template: str
    origin: str  # "tokenizer", "config", "built-in ChatML", "built-in plain"

    def render(
        self, tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja raises TemplateError and friends
            raise UserError(
                f"the chat template ({self.origin}) failed to render a conversation: {exc}"
            ) from None


def resolve_chat_template(tokenizer: Any, override: str | None = None) -> ChatTemplate:
    """The template to use: the config's, the tokenizer's own, or a built-in default."""
    if override:
        return ChatTemplate(override, "config")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: take the default one
        own = own.get("default") or next(iter(own.values()), None)
    if own:
        return ChatTemplate(own, "tokenizer")
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return ChatTemplate(CHATML_TEMPLATE, "built-in ChatML")
    if tokenizer.eos_token is None:
        raise UserError(
            "the tokenizer has no chat template and no EOS token, so turns cannot end; set data.chat_template"
        )
    return ChatTemplate(PLAIN_TEMPLATE, "built-in plain (### User / ### Assistant, EOS ends a turn)")


def assistant_spans(
    tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant turn."""
    text = template.render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = template.render(tokenizer, messages[: index + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise UserError(
                f"the chat template ({template.origin}) does not render conversations prefix by prefix, so the "
                "assistant tokens cannot be located; set data.chat_template to a template that does"
            )
        # The turn ends with its end-of-turn token; the template's separator after it (a
        # newline) is layout, not something the model should learn to say.
        spans.append((len(before), max(len(before), len(through.rstrip()))))
    return text, spans


def encode_conversation(
    tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids and labels (the id on assistant tokens, IGNORE_INDEX elsewhere)."""
    text, spans = assistant_spans(tokenizer, template, messages)
    # Templates carry their own special tokens (BOS and the like): do not add them twice.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        # A token belongs to the turn when it starts inside it (byte-level BPE can merge the
        # leading space of the answer with the header's newline: those stay untrained).
        if span_start <= start < span_end and end > start:
            labels[position] = input_ids[position]
    return input_ids, labels


def encode_prompt(tokenizer: Any, template: ChatTemplate, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn (for generation)."""
    text = template.render(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Token ids that end an assistant turn (generation stops on any of them)."""
    ids = []
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if token in vocab and token in template.template + (tokenizer.eos_token or ""):
            ids.append(vocab[token])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
