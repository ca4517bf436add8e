"""Generating answers through the chat template (side-by-side generations, generate, chat)."""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.data.templates import ChatTemplate, encode_prompt, end_of_turn_ids


@torch.no_grad()
def generate_reply(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, str]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The assistant's next turn for `messages` (greedy unless temperature > 0)."""
    device = next(model.parameters()).device
    prompt_ids = encode_prompt(tokenizer, template, messages, tools)
    input_ids = torch.tensor([prompt_ids], device=device)
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    sampling = temperature > 0
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        eos_token_id=end_of_turn_ids(tokenizer, template),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model.train(was_training)
    return tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True).strip()


def reply_to(
    model: Any,
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
) -> str:
    """The assistant's reply to `prompt` (a string or a list of messages), through the chat template."""
    from tunesmith.data.templates import resolve_chat_template

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    template = resolve_chat_template(tokenizer)
    return generate_reply(model, tokenizer, template, messages, max_new_tokens, temperature)
