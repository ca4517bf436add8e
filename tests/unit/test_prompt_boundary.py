"""Prompt/completion boundaries: a prompt that ends in a space ("...\\nAnswer: ") gives that space to
the completion's first token ("▁She" with sentencepiece, "ĠJ" with byte-level BPE). That token is
the answer's first word: it is trained (as TRL trains it), not lost to the prompt."""

from __future__ import annotations

import pytest

from tunesmith.data.templates import IGNORE_INDEX, ChatTemplate, conversation_samples, encode_sample

from ..conftest import ASSETS, SHARED

# The template a TRL-style {prompt, completion} user writes: the two texts joined as they are.
CONCAT = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
STORIES = SHARED / "models" / "stories260k"


def _trained_tokens(tokenizer, prompt: str, completion: str) -> list[str]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    (sample,) = conversation_samples(tokenizer, ChatTemplate(CONCAT, "config"), messages)
    ids, labels = encode_sample(tokenizer, sample)
    return tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX])


@pytest.mark.parametrize(
    "model, completion, first",
    [
        pytest.param(STORIES, "She sells 9 eggs.", "▁She", id="sentencepiece"),
        pytest.param(ASSETS / "base-model", "Janet sells 9 eggs.", "ĠJ", id="byte-level"),
    ],
)
def test_the_completions_first_token_is_trained_when_the_prompt_ends_in_a_space(model, completion, first):
    if not model.is_dir():
        pytest.skip(f"{model} not available")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = "Question: how many eggs does she sell?\nAnswer: "
    whole = tokenizer.convert_ids_to_tokens(
        tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    )
    assert first in whole  # the token really straddles the boundary (space + first letter)
    trained = _trained_tokens(tokenizer, prompt, completion)
    assert trained[0] == first
    assert trained[-1] == tokenizer.eos_token
    # Everything of the completion is trained, nothing of the prompt but the shared space.
    text = tokenizer.convert_tokens_to_string(trained[:-1])
    assert text.strip() == completion
