"""Chat templates and assistant-token masks.

A conversation is rendered with the tokenizer's own chat template (or a built-in default when
it has none) and the loss mask marks exactly the characters of every assistant turn, including
the end-of-turn token. The assistant spans come from rendering growing prefixes of the
conversation, so the mask is right for any template that renders prefixes consistently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
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


# The tokens that close a turn in today's templates: a turn's trained span ends with one of them.
END_OF_TURN_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
    "<|return|>",
    "<|call|>",
)
# Two stand-ins for an assistant message's content that differ from their first character on,
# so the first place where a real rendering departs from both is where the content begins.
SENTINELS = ("\u2460tunesmith-content\u2461", "\u2462tunesmith-content\u2463")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class ChatTemplate:
    template: str
    origin: str  # "tokenizer", "config", "config file PATH", "built-in ChatML", "built-in plain"
    # data.chat_template_kwargs: passed to every render (e.g. enable_thinking=False)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def exported(self) -> str:
        """The template a trained tokenizer carries: the render arguments become its defaults, so
        plain `apply_chat_template` renders what training rendered."""
        header = "".join(
            f"{{%- if {name} is not defined %}}{{%- set {name} = {_jinja_literal(value)} %}}{{%- endif %}}"
            for name, value in self.kwargs.items()
        )
        return header + self.template

    @property
    def supports_tools(self) -> bool:
        return "tool" in self.template

    def render(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        try:
            return self._apply(tokenizer, messages, add_generation_prompt, tools)
        except TypeError:
            # Some templates (DeepSeek) concatenate tool-call arguments as a JSON string.
            as_strings = [_arguments_as_json(m) for m in messages]
            if as_strings == messages:
                raise UserError(self._failure("a type error in the template")) from None
            try:
                return self._apply(tokenizer, as_strings, add_generation_prompt, tools)
            except Exception as exc:
                raise UserError(self._failure(exc)) from None
        except Exception as exc:  # jinja raises TemplateError and friends
            raise UserError(self._failure(exc)) from None

    def _apply(self, tokenizer: Any, messages: list, add_generation_prompt: bool, tools: list | None) -> str:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.kwargs,
        )

    def _failure(self, exc: Any) -> str:
        return (
            f"the chat template ({self.origin}) failed to render a conversation: {exc}; "
            "check the data against what the template expects, or set data.chat_template "
            "(a template string or a path to a .jinja file)"
        )


def _jinja_literal(value: Any) -> str:
    """A JSON-like value as a Jinja literal (true/false, numbers, strings, lists, dicts; None: none)."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    return json.dumps(value)


def _arguments_as_json(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = [
        {**call, "function": {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}}
        for call in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


def load_template_override(value: str) -> ChatTemplate:
    """`data.chat_template`: a Jinja template string, or the path of a .jinja file holding one."""
    if "{{" in value or "{%" in value:
        return ChatTemplate(value, "config")
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(
            f"config key `data.chat_template`: {value!r} is neither a Jinja template nor an existing file; "
            "give the template text or the path of a .jinja file"
        )
    text = path.read_text(encoding="utf-8")
    if "{{" not in text and "{%" not in text:
        raise UserError(f"config key `data.chat_template`: {path} holds no Jinja template")
    return ChatTemplate(text, f"config file {path}")


def resolve_chat_template(
    tokenizer: Any, override: str | None = None, kwargs: dict[str, Any] | None = None
) -> ChatTemplate:
    """The template to use (the config's, the tokenizer's own, or a built-in default), rendered with
    `kwargs` (data.chat_template_kwargs) every time."""
    template = _chosen_template(tokenizer, override)
    if kwargs:
        template.kwargs = dict(kwargs)
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        template.origin = f"{template.origin}, rendered with {shown}"
    return template


def _chosen_template(tokenizer: Any, override: str | None) -> ChatTemplate:
    if override:
        return load_template_override(override)
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


@dataclass
class Sample:
    """One training text and the character spans trained in it."""

    text: str
    spans: list[tuple[int, int]]


def _common_prefix(a: str, b: str) -> int:
    length = min(len(a), len(b))
    for index in range(length):
        if a[index] != b[index]:
            return index
    return length


def _without_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("reasoning_content", "thinking")}


def _turn_end(text: str, tokenizer: Any) -> int:
    """End of a rendered turn: its end-of-turn token, not the layout after it nor a closing EOS
    some templates (Phi-3.5) append to the whole conversation."""
    stripped = text.rstrip()
    eos = tokenizer.eos_token
    if eos and stripped.endswith(eos):
        inner = stripped[: -len(eos)].rstrip()
        if any(inner.endswith(marker) for marker in END_OF_TURN_MARKERS if marker != eos):
            stripped = inner
    return len(stripped)


def render_turn(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    index: int,
    tools: list[dict[str, Any]] | None = None,
    train_on_reasoning: bool = False,
) -> Sample:
    """Messages[:index + 1] as the model sees them when it writes turn `index`, and that turn's span.

    The span starts where the assistant's own words start (its content, its tool calls, or its
    reasoning when `train_on_reasoning`): found by rendering the turn with stand-in content and
    seeing where the real rendering departs. So a template's headers, channel markers and empty
    think blocks stay untrained, and the span ends with the turn's end-of-turn token.
    """
    history, message = messages[:index], messages[index]
    has_reasoning = bool(message.get("reasoning_content"))
    before = template.render(tokenizer, history, add_generation_prompt=True, tools=tools)
    through = template.render(tokenizer, messages[: index + 1], tools=tools)
    stand_in = {"role": "assistant"}
    if has_reasoning and not train_on_reasoning:
        stand_in = {
            **stand_in,
            "reasoning_content": message["reasoning_content"],
            "thinking": message["thinking"],
        }
    stand_ins = [
        template.render(tokenizer, [*history, {**stand_in, "content": sentinel}], tools=tools)
        for sentinel in SENTINELS
    ]
    start = min(_common_prefix(through, rendered) for rendered in stand_ins)
    prompt_end = min(_common_prefix(before, rendered) for rendered in stand_ins)
    end = _turn_end(through, tokenizer)
    opened = before[prompt_end:]
    if opened.rstrip().endswith(THINK_OPEN) and THINK_CLOSE not in through[prompt_end:end]:
        # The generation prompt opens a think block that the template drops from rendered turns
        # (DeepSeek): the model writes its reasoning, closes the block, then answers.
        reasoning = message.get("reasoning_content", "").strip("\n")
        fill = (reasoning + "\n" if reasoning else "") + THINK_CLOSE + "\n\n"
        text = before + fill + through[prompt_end:end]
        shift = len(before) + len(fill) - prompt_end
        span_start = len(before) if (has_reasoning and train_on_reasoning) else start + shift
        sample = Sample(text, [(span_start, end + shift)])
    elif opened or not through.startswith(before):
        opened = opened or before[_common_prefix(before, through) :]
        raise UserError(_mismatch(tokenizer, template, history, before, opened, has_reasoning, tools))
    else:
        sample = Sample(through, [(start, max(start, end))])
    _check_turn(template, message, sample, has_reasoning and train_on_reasoning)
    return sample


def _mismatch(
    tokenizer: Any,
    template: ChatTemplate,
    history: list[dict[str, Any]],
    before: str,
    opened: str,
    has_reasoning: bool,
    tools: list[dict[str, Any]] | None,
) -> str:
    """Why the generation prompt does not lead into the rendered turn, and the fix: a prompt that
    opens a reasoning block the data does not hold (Nemotron 3 Nano, Qwen3 thinking) is switched off
    by the template's own argument."""
    history_text = template.render(tokenizer, history, tools=tools) if history else ""
    generation_prompt = before[_common_prefix(before, history_text) :]
    problem = (
        f"the chat template ({template.origin}) adds {opened!r} to the generation prompt, which its "
        "rendered assistant turns do not contain, so training would not match inference"
    )
    if THINK_OPEN in generation_prompt and not has_reasoning:
        return (
            f"{problem}: its generation prompt opens a reasoning block ({generation_prompt.strip()!r}) and "
            "this data's assistant turns hold no reasoning; set `data.chat_template_kwargs: {enable_thinking: "
            "false}` (the template's switch for answers without reasoning, also the trained tokenizer's "
            "default then), or give the data `reasoning_content`"
        )
    return (
        f"{problem}; set data.chat_template to the template variant that fits the data (e.g. the thinking "
        "one for data with reasoning), or pass the template's own switch in data.chat_template_kwargs"
    )


def _check_turn(
    template: ChatTemplate, message: dict[str, Any], sample: Sample, with_reasoning: bool
) -> None:
    (start, end) = sample.spans[0]
    trained = sample.text[start:end]
    for call in message.get("tool_calls") or []:
        if call["function"]["name"] not in trained:
            raise UserError(
                f"the chat template ({template.origin}) does not render assistant tool calls; "
                "set data.chat_template to a template with tool support (e.g. Qwen2.5's or Llama 3.1's)"
            )
    content = message["content"].strip()
    if content and THINK_CLOSE not in content and content not in trained:
        raise UserError(
            f"the chat template ({template.origin}) does not render the assistant's content where the "
            "turn begins, so its tokens cannot be located; set data.chat_template to a template that does"
        )
    if with_reasoning and message["reasoning_content"].strip() not in trained:
        raise UserError(
            f"the chat template ({template.origin}) does not render `reasoning_content` in the last "
            "assistant turn; set data.train_on_reasoning=false or use a template with reasoning"
        )


def _trained_turns(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0]


def conversation_samples(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    train_on_reasoning: bool = False,
) -> list[Sample]:
    """The samples a conversation trains as.

    One sample with every assistant turn trained when the template renders the conversation
    prefix by prefix (each turn's text up to its end is a prefix of the whole); otherwise (Qwen3
    drops earlier turns' reasoning, gpt-oss ends the last turn differently, DeepSeek opens a think
    block) one sample per assistant turn, each rendered with its own history, as at inference.
    """
    if tools and not template.supports_tools:
        raise UserError(
            f"the chat template ({template.origin}) has no tool support but the data has `tools`; "
            "set data.chat_template to a template with tools (e.g. Qwen2.5's or Llama 3.1's)"
        )
    if not template.supports_tools and any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        raise UserError(
            f"the chat template ({template.origin}) has no tool support but the data has tool calls; "
            "set data.chat_template to a template with tools (e.g. Qwen2.5's or Llama 3.1's)"
        )
    if tools:
        whole = template.render(tokenizer, messages, tools=tools)
        missing = [t["function"]["name"] for t in tools if t["function"]["name"] not in whole]
        if missing:
            raise UserError(
                f"the chat template ({template.origin}) does not render the `tools` schemas "
                f"({', '.join(missing)} missing); set data.chat_template to a template with tools"
            )
    turns = [
        render_turn(tokenizer, template, messages, i, tools, train_on_reasoning)
        for i in _trained_turns(messages)
    ]
    if not turns:
        return []
    whole = template.render(tokenizer, messages, tools=tools)
    if all(whole.startswith(turn.text[: turn.spans[0][1]]) for turn in turns):
        return [Sample(whole, [turn.spans[0] for turn in turns])]
    return turns


def assistant_spans(
    tokenizer: Any, template: ChatTemplate, messages: list[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant turn (one sample)."""
    samples = conversation_samples(tokenizer, template, messages)
    if len(samples) != 1:
        raise UserError(
            f"the chat template ({template.origin}) does not render conversations prefix by prefix; "
            "use conversation_samples, which trains one sample per assistant turn"
        )
    return samples[0].text, samples[0].spans


def encode_sample(tokenizer: Any, sample: Sample) -> tuple[list[int], list[int]]:
    """Token ids and labels (the id on trained tokens, IGNORE_INDEX elsewhere)."""
    # Templates carry their own special tokens (BOS and the like): do not add them twice.
    encoded = tokenizer(sample.text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    spans = sorted(sample.spans)
    span_index = 0
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        # A token belongs to the turn when it starts inside it, or when it straddles the turn's
        # start and carries the turn's first characters: a prompt ending in a space ("Answer: ")
        # puts that space into the completion's first token with sentencepiece ("▁J") and
        # byte-level BPE (" J"); that token is the answer's first word and is trained, as TRL does.
        # A straddling token whose share of the turn is only whitespace (a header's newline merged
        # with the answer's leading newline) stays untrained: at inference the prompt ends there.
        starts_inside = span_start <= start < span_end
        straddles = start < span_start < end and sample.text[span_start : min(end, span_end)].strip()
        if (starts_inside or straddles) and end > start:
            labels[position] = input_ids[position]
    return input_ids, labels


def encode_conversations(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    train_on_reasoning: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every sample of one conversation (see conversation_samples)."""
    samples = conversation_samples(tokenizer, template, messages, tools, train_on_reasoning)
    return [encode_sample(tokenizer, sample) for sample in samples]


def encode_conversation(
    tokenizer: Any, template: ChatTemplate, messages: list[dict[str, Any]]
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation that trains as one sample."""
    text, spans = assistant_spans(tokenizer, template, messages)
    return encode_sample(tokenizer, Sample(text, spans))


def encode_prompt(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn (for generation)."""
    text = template.render(tokenizer, messages, add_generation_prompt=True, tools=tools)
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
