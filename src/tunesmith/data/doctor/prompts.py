"""The doctor for prompt data (task reward): prompts over the length budget, duplicates, leakage
into the held-out prompts. (References a reward cannot read are counted by the task, which knows
its rewards, and shown with the run's data warnings.)"""

from __future__ import annotations

from typing import Any

from tunesmith.data.doctor.findings import CheckReport, Finding, finding, make_report
from tunesmith.data.load import ErrorPolicy, is_sources
from tunesmith.data.prompts import PromptExample, PromptStats, count_leaked, load_prompts, tokenize_prompts
from tunesmith.data.templates import resolve_chat_template


def prompt_findings(
    train: list[PromptExample],
    held_out: list[PromptExample],
    stats: PromptStats,
    eval_stats: PromptStats | None,
    budget: str,
    leakage_severity: str = "warning",
) -> list[Finding]:
    findings = []
    over = stats.num_over_budget + (eval_stats.num_over_budget if eval_stats else 0)
    if over:
        sources = stats.over_budget_sources + (eval_stats.over_budget_sources if eval_stats else [])
        findings.append(
            finding(
                "prompts_over_budget",
                "warning",
                "prompts over the length budget",
                over,
                sources,
                f"longer than {budget}: left out of training; raise data.max_seq_len or shorten them",
            )  # fmt: skip
        )
    duplicates = _duplicates(train)
    if duplicates:
        findings.append(
            finding(
                "duplicate_prompts",
                "warning",
                "duplicate prompts",
                len(duplicates),
                duplicates,
                "the same prompt more than once: it is sampled (and weighs) more often than the others",
            )  # fmt: skip
        )
    leaked = count_leaked(train, held_out)
    if leaked:
        train_prompts = {tuple(e.prompt_ids) for e in train}
        where = [e.source for e in held_out if tuple(e.prompt_ids) in train_prompts]
        findings.append(
            finding(
                "prompt_leakage",
                leakage_severity,
                "held-out prompts also in training",
                leaked,
                where,
                "the after-score on these measures recall, not learning; remove them from one side",
            )  # fmt: skip
        )
    return findings


def _duplicates(examples: list[PromptExample]) -> list[str]:
    seen: set[tuple[int, ...]] = set()
    repeated = []
    for example in examples:
        key = tuple(example.prompt_ids)
        if key in seen:
            repeated.append(example.source)
        seen.add(key)
    return repeated


def preflight(data: Any, prepared: Any, task: str) -> CheckReport:
    """Before training: the prompt findings on the prepared prompts (`prepared.prompts`)."""
    prompts, stats = prepared.prompts, prepared.stats
    budget = "data.max_seq_len less reward.max_completion_tokens tokens"
    findings = prompt_findings(
        prompts.train, prompts.eval, stats.train, stats.eval, budget,
        leakage_severity="error" if data.eval is not None else "warning",
    )  # fmt: skip
    return make_report(task, findings, {"num_train": len(prompts.train), "num_eval": len(prompts.eval)})


def check_prompts(
    data: Any,
    eval: Any,
    tokenizer: Any,
    max_seq_len: int,
    task: str,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
) -> CheckReport:
    """`tunesmith data check --task reward`: prompts as they are (a `prompt`, `messages` or
    `instruction` column, or built by `prompt_template`, reward.prompt_template), rendered with the
    tokenizer's chat template; `max_seq_len` is the prompt budget. `data` may be data.train's sources."""
    policy = ErrorPolicy(on_error="skip", max_skipped=10**12)
    template = resolve_chat_template(tokenizer)
    sources = data if is_sources(data) else None
    records = (
        [
            record
            for index, source in enumerate(sources)
            for record in load_prompts(
                source.path,
                source.fields or {},
                prompt_template,
                system_prompt,
                policy,
                f"data.train[{index}]",
            )
        ]
        if sources
        else load_prompts(data, {}, prompt_template, system_prompt, policy)
    )
    train, stats = tokenize_prompts(records, tokenizer, template, max_seq_len)
    held: list[PromptExample] = []
    eval_stats = None
    if eval is not None:
        held, eval_stats = tokenize_prompts(
            load_prompts(eval, {}, prompt_template, system_prompt, policy, "--eval"),
            tokenizer,
            template,
            max_seq_len,
        )
    findings = prompt_findings(train, held, stats, eval_stats, f"--max-seq-len {max_seq_len} tokens", "error")
    if policy.skipped:
        findings.append(
            finding(
                "malformed_rows",
                "error",
                "rows without a prompt",
                len(policy.skipped),
                [message.split(": ")[0] for message in policy.skipped],
                policy.skipped[0],
            )  # fmt: skip
        )
    return make_report(task, findings, {"num_train": len(train), "num_eval": len(held)})
