"""Rollouts (train/rollout.py): the shared-prompt KV-cache sampler against transformers' generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunesmith.train.rollout import HFSampler, SamplingSettings


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    return model, tokenizer


PROMPTS = ["Hello there, how are you today?", "Hi", "Tell me three things about the sea, please."]


def _prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def test_greedy_completions_equal_generate_on_each_prompt_alone(model_and_tokenizer) -> None:
    """Left padding, the prompt's cache repeated for the group, positions: the same tokens as generate."""
    model, tokenizer = model_and_tokenizer
    end_id = tokenizer.eos_token_id
    settings = SamplingSettings(
        max_new_tokens=12, temperature=0.0, end_ids=(end_id,), pad_id=tokenizer.pad_token_id
    )
    rollout = HFSampler(model, tokenizer, settings).sample(_prompt_ids(tokenizer), group_size=2)
    assert len(rollout.completion_ids) == 2 * len(PROMPTS)
    for index, ids in enumerate(_prompt_ids(tokenizer)):
        expected = model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=end_id, pad_token_id=end_id
        )[0, len(ids) :].tolist()
        if end_id in expected:
            expected = expected[: expected.index(end_id) + 1]
        # Both answers of the group are the greedy one; ended answers keep their end token.
        assert rollout.completion_ids[2 * index] == rollout.completion_ids[2 * index + 1] == expected
        assert rollout.truncated[2 * index] == (end_id not in expected)


def test_sampling_is_seeded_ends_on_the_end_token_and_stop_strings(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = _prompt_ids(tokenizer)
    base = SamplingSettings(max_new_tokens=10, temperature=1.0, pad_id=tokenizer.pad_token_id)
    sampler = HFSampler(model, tokenizer, base)
    first = sampler.sample(prompts, 4, torch.Generator().manual_seed(7))
    again = sampler.sample(prompts, 4, torch.Generator().manual_seed(7))
    assert first.completion_ids == again.completion_ids and len(first.completion_ids) == 12
    assert all(first.truncated) and all(len(ids) == 10 for ids in first.completion_ids)
    # The third sampled token of the first answer as the end of a turn: that answer stops there.
    end = first.completion_ids[0][2]
    ended = HFSampler(model, tokenizer, SamplingSettings(**{**base.__dict__, "end_ids": (end,)}))
    rollout = ended.sample(prompts, 4, torch.Generator().manual_seed(7))
    assert rollout.completion_ids[0] == first.completion_ids[0][:3] and not rollout.truncated[0]
    assert all(ids.count(end) <= 1 and (end not in ids or ids[-1] == end) for ids in rollout.completion_ids)
    # A stop string taken from an answer's text: the answer ends at the token that completes it.
    text = tokenizer.decode(first.completion_ids[1], skip_special_tokens=True)
    stop = text.strip()[:3]
    stopped = HFSampler(model, tokenizer, SamplingSettings(**{**base.__dict__, "stop": (stop,)}))
    rollout = stopped.sample(prompts, 4, torch.Generator().manual_seed(7))
    cut = rollout.completion_ids[1]
    assert stop in tokenizer.decode(cut, skip_special_tokens=True)
    assert stop not in tokenizer.decode(cut[:-1], skip_special_tokens=True) and not rollout.truncated[1]
    assert cut == first.completion_ids[1][: len(cut)]  # the sampled ids, cut, never re-tokenised


@pytest.mark.parametrize("attention", ["sdpa", "cpu_varlen"])
def test_answers_on_their_prompts_shared_cache_equal_each_answer_after_its_own_prompt(
    tiny_llama: Path, attention: str
) -> None:
    """The update runs each prompt once and its answers on its KV cache: log-probs and gradients equal
    running every answer after its own copy of the prompt (groups of different sizes, lengths 1..5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.train.fastpath import use_attention
    from tunesmith.train.policy_loss import CompletionBatch, _concatenated_logps, completion_logps

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa")
    if attention == "cpu_varlen":
        use_attention(model, attention)
    prompts = _prompt_ids(tokenizer)[:2]
    completions = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15], [16]]
    owner = torch.tensor([0, 0, 1, 1, 1])
    width, length = max(map(len, prompts)), max(map(len, completions))
    batch = CompletionBatch(
        torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
        torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
        torch.tensor([c + [0] * (length - len(c)) for c in completions]),
        torch.tensor([[1] * len(c) + [0] * (length - len(c)) for c in completions]),
        owner,
    )
    shared = completion_logps(model, batch)
    shared.sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = _concatenated_logps(model, batch, 4096)
    plain.sum().backward()
    assert shared.shape == (sum(map(len, completions)),)
    assert torch.allclose(shared, plain, atol=1e-5)
    for got, expected in zip(shared_grads, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(got, expected, atol=1e-5)
