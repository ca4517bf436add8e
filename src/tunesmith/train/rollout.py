"""Rollouts: a group of sampled completions per prompt, as token ids (task reward).

`Sampler` is the seam: anything with `sample(prompts, group_size, generator) -> Rollout` can
stand in (an engine such as vLLM on a GPU). `HFSampler` is ours, on the model being trained:
each prompt is run through the model once (its KV cache is then repeated for the group's
answers, which share it), and the group decodes together with the cache, one token per step,
until every answer has ended (the template's end-of-turn token, or a stop string) or reached the
completion budget. Completions are kept as the sampled token ids: training scores exactly these
tokens, never a re-tokenisation of their text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Rollout:
    """Completions of a batch of prompts, grouped: completion k belongs to prompt k // group_size."""

    group_size: int
    completion_ids: list[list[int]]  # as sampled; the end-of-turn token kept when the answer ended on it
    truncated: list[bool]  # cut at the completion budget without ending
    texts: list[str] = field(default_factory=list)  # the completions decoded (end-of-turn and stop kept out)


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy (the fixed evaluation protocol)
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # strings that end an answer (kept in the text and the ids)
    end_ids: tuple[int, ...] = ()  # token ids that end an answer: the template's end of turn, EOS
    pad_id: int = 0


class Sampler(Protocol):
    def sample(
        self, prompts: list[list[int]], group_size: int, generator: torch.Generator | None = None
    ) -> Rollout: ...


def _next_tokens(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> Any:
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > settings.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if generator is not None and generator.device != probs.device:
        # The seeded generator lives on the CPU: the same draws on any device (and after a resume).
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class HFSampler:
    """Batched sampling with a KV cache on a transformers (or PEFT) causal LM."""

    def __init__(self, model: Any, tokenizer: Any, settings: SamplingSettings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], group_size: int, generator: torch.Generator | None = None
    ) -> Rollout:
        settings, model = self.settings, self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # Left-padded prompts: every row's next token is at the last column.
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), settings.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Each prompt once; the group's answers then share its cache (repeated, not recomputed).
        out = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        # transformers 5 names the KV cache `cache` (earlier: `past_key_values`).
        cache_key = "cache" if "cache" in out else "past_key_values"
        cache = out[cache_key]
        cache.batch_repeat_interleave(group_size)
        logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
        mask = mask.repeat_interleave(group_size, dim=0)
        count = logits.shape[0]
        end_ids = torch.tensor(settings.end_ids or [-1], device=device)
        finished = torch.zeros(count, dtype=torch.bool, device=device)
        columns: list[torch.Tensor] = []
        for _ in range(settings.max_new_tokens):
            tokens = _next_tokens(logits, settings, generator).to(device)
            tokens = torch.where(finished, torch.full_like(tokens, settings.pad_id), tokens)
            columns.append(tokens)
            finished |= torch.isin(tokens, end_ids)
            if settings.stop:
                finished |= self._stopped(torch.stack(columns, dim=1), finished)
            if bool(finished.all()) or len(columns) == settings.max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones((count, 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=(mask.sum(-1, keepdim=True) - 1),
                use_cache=True,
                **{cache_key: cache},
            )
            logits = out.logits[:, -1]
        model.train(was_training)
        return self._rollout(torch.stack(columns, dim=1).tolist(), group_size)

    def _stopped(self, sampled: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """Rows whose text now holds a stop string."""
        hits = torch.zeros_like(finished)
        for row in (~finished).nonzero().flatten().tolist():
            text = self.tokenizer.decode(sampled[row].tolist(), skip_special_tokens=True)
            hits[row] = any(stop in text for stop in self.settings.stop)
        return hits

    def _rollout(self, sampled: list[list[int]], group_size: int) -> Rollout:
        settings = self.settings
        completions, truncated, texts = [], [], []
        for ids in sampled:
            kept, ended = _until_end(ids, settings.end_ids)
            if not ended and settings.stop:
                kept, ended = self._until_stop(kept)
            completions.append(kept)
            truncated.append(not ended)
            body = kept[:-1] if ended and kept and kept[-1] in settings.end_ids else kept
            texts.append(self.tokenizer.decode(body, skip_special_tokens=True))
        return Rollout(group_size, completions, truncated, texts)

    def _until_stop(self, ids: list[int]) -> tuple[list[int], bool]:
        """The shortest prefix whose text holds a stop string (binary search: holding one is monotone)."""

        def holds(length: int) -> bool:
            text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
            return any(stop in text for stop in self.settings.stop)

        if not holds(len(ids)):
            return ids, False
        low, high = 1, len(ids)
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if holds(middle) else (middle + 1, high)
        return ids[:low], True


def _until_end(ids: list[int], end_ids: tuple[int, ...]) -> tuple[list[int], bool]:
    for index, token in enumerate(ids):
        if token in end_ids:
            return ids[: index + 1], True
    return ids, False
