"""The data doctor for preference pairs: what makes a pair set silently bad to train on.

Each check is a function of the canonical pairs (and, where lengths matter, their tokenized
form) returning the doctor's `Finding`s (file:line examples). `pair_findings` runs them all;
`check_pairs` is the report for `tunesmith data check` on pairs; `preflight` is the check before
training. The doctor (data/doctor/__init__.py) picks these checks for the "preference" record kind.

    findings = pair_findings(train_pairs, eval_pairs, train_examples, eval_examples, max_seq_len=512)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.data.doctor.detect import find_sensitive, mask, normalize_text
from tunesmith.data.doctor.findings import SEVERITY_ORDER, CheckReport, Finding, finding, make_report
from tunesmith.data.formats import PreferencePair
from tunesmith.data.preference import PairExample

LENGTH_BIAS_SHARE = 0.6  # chosen longer than rejected in more than 60% of pairs: a length signal to learn


def _text(messages: list[dict[str, str]]) -> str:
    return normalize_text("\n".join(f"{m['role']}: {m['content']}" for m in messages))


def _reply(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def empty_replies(pairs: Sequence[PreferencePair]) -> list[Finding]:
    where = [str(p.source) for p in pairs if not _reply(p.chosen).strip() or not _reply(p.rejected).strip()]
    if not where:
        return []
    return [
        finding(
            "empty_replies",
            "error",
            "pairs with an empty chosen or rejected reply",
            len(where),
            where,
            "An empty reply is only an end-of-turn token: the pair teaches the model to stop (or not to). "
            "Usually an export bug; fill in or drop these pairs.",
        )
    ]


def identical_pairs(pairs: Sequence[PreferencePair]) -> list[Finding]:
    where = [str(p.source) for p in pairs if _text(p.chosen) == _text(p.rejected)]
    if not where:
        return []
    return [
        finding(
            "identical_chosen_rejected",
            "warning",
            "pairs whose chosen and rejected replies are identical",
            len(where),
            where,
            "Identical replies have identical log-probs: the pair carries no preference and no gradient, but "
            "counts in the batch. It often means a labelling or join bug; drop these pairs.",
        )
    ]


def duplicate_and_conflicting_pairs(pairs: Sequence[PreferencePair]) -> list[Finding]:
    """Exact repeats of (prompt, chosen, rejected), and the same prompt with A > B and B > A."""
    seen: dict[tuple[str, str, str], str] = {}
    duplicates, conflicts = [], []
    for pair in pairs:
        key = (_text(pair.prompt), _text(pair.chosen), _text(pair.rejected))
        if key[1] == key[2]:
            continue  # identical_pairs reports these
        if key in seen:
            duplicates.append(f"{pair.source} (same as {seen[key]})")
        swapped = (key[0], key[2], key[1])
        if swapped in seen:
            conflicts.append(f"{pair.source} (reverses {seen[swapped]})")
        seen.setdefault(key, str(pair.source))
    findings: list[Finding] = []
    if duplicates:
        findings.append(
            finding(
                "duplicate_pairs",
                "warning",
                "duplicate pairs (same prompt, chosen and rejected)",
                len(duplicates),
                duplicates,
                "Repeated pairs weigh more than the others and inflate held-out accuracy when a copy lands in "
                "eval. Keep one copy (`tunesmith data check --fix` for the other tasks; dedupe pairs by hand).",
            )
        )
    if conflicts:
        findings.append(
            finding(
                "conflicting_pairs",
                "warning",
                "conflicting pairs (the same prompt with A > B and B > A)",
                len(conflicts),
                conflicts,
                "Two opposite preferences on the same replies cancel each other's gradient and cap accuracy at "
                "50% on them. Decide which is right, or drop both.",
            )
        )
    return findings


def length_bias(pairs: Sequence[PreferencePair]) -> list[Finding]:
    """Share of pairs whose chosen reply is longer, in characters of the whole replies (before truncation)."""
    lengths = [(len(_reply(p.chosen)), len(_reply(p.rejected)), str(p.source)) for p in pairs]
    unit = "characters"
    compared = [(c, r, s) for c, r, s in lengths if c != r]
    if not compared:
        return []
    longer = [s for c, r, s in compared if c > r]
    share = len(longer) / len(compared)
    mean_ratio = sum(c / max(r, 1) for c, r, _ in compared) / len(compared)
    biased = share > LENGTH_BIAS_SHARE
    return [
        finding(
            "length_bias",
            "warning" if biased else "info",
            f"chosen reply longer than rejected in {share:.0%} of pairs",
            len(longer),
            longer if biased else [],
            f"Measured in {unit} over {len(compared)} pairs of unequal length; mean chosen/rejected length ratio "
            f"{mean_ratio:.2f}. "
            + (
                "Risk: when 'better' mostly means 'longer', DPO learns verbosity rather than quality (Park et al. "
                "2024, 'Disentangling Length from Quality in DPO'). Balance the lengths, add pairs where the "
                "shorter reply wins, or use a length-normalised loss (preference.loss: simpo or ipo)."
                if biased
                else "No strong length signal."
            ),
        )
    ]


def truncated_pairs(
    examples: Sequence[PairExample],
    max_seq_len: int,
    num_dropped: int = 0,
    dropped_sources: Sequence[str] = (),
) -> list[Finding]:
    """Pairs cut at max_seq_len (their replies lose their ends), and those dropped (a whole reply lost)."""
    findings: list[Finding] = []
    cut = [e.source for e in examples if e.truncated]
    if cut:
        findings.append(
            finding(
                "truncated_pairs",
                "warning",
                f"pairs cut at data.max_seq_len={max_seq_len}",
                len(cut),
                cut,
                "The end of the chosen or rejected reply is cut off, so the preference is judged on part of the "
                "reply (and its end-of-turn token is lost). Raise data.max_seq_len or shorten the prompts.",
            )
        )
    long_prompts = [e.source for e in examples if e.prompt_tokens >= max_seq_len // 2]
    if long_prompts:
        findings.append(
            finding(
                "long_prompts",
                "info",
                f"prompts taking half or more of data.max_seq_len={max_seq_len}",
                len(long_prompts),
                long_prompts,
                "Little room is left for the replies, where the preference signal is.",
            )
        )
    if num_dropped:
        findings.append(
            finding(
                "dropped_pairs",
                "warning",
                "pairs dropped: the prompt fills data.max_seq_len, no reply token is left",
                num_dropped,
                list(dropped_sources),
                "These pairs are not trained on. Raise data.max_seq_len or shorten the prompts.",
            )
        )
    return findings


def eval_leakage(
    train: Sequence[PreferencePair], eval: Sequence[PreferencePair], severity: str = "error"
) -> list[Finding]:
    """Held-out pairs whose prompt also appears in training: their accuracy measures memory."""
    prompts = {_text(p.prompt): str(p.source) for p in train}
    leaked = [f"{p.source} (= {prompts[_text(p.prompt)]})" for p in eval if _text(p.prompt) in prompts]
    if not leaked:
        return []
    return [
        finding(
            "eval_leakage",
            severity,
            "held-out prompts that also appear in training",
            len(leaked),
            leaked,
            "Preference accuracy on these pairs measures memorisation, not generalisation. Remove them from "
            "the eval data (or from train).",
        )
    ]


def sensitive_content(pairs: Sequence[PreferencePair]) -> list[Finding]:
    found = []
    for pair in pairs:
        for kind, value in find_sensitive(
            "\n".join(m["content"] for m in pair.prompt + pair.chosen + pair.rejected)
        ):
            found.append(f"{pair.source} ({kind}: {mask(kind, value)})")
    if not found:
        return []
    return [
        finding(
            "sensitive_content",
            "warning",
            "possible secrets or personal data (keys, emails, card or phone numbers)",
            len(found),
            found,
            "A tuned model can repeat what it was trained on. Remove or mask these values.",
        )
    ]


def pair_findings(
    train: Sequence[PreferencePair],
    eval: Sequence[PreferencePair] = (),
    train_examples: Sequence[PairExample] | None = None,
    eval_examples: Sequence[PairExample] | None = None,
    max_seq_len: int = 512,
    num_dropped: int = 0,
    leakage_severity: str = "error",
    dropped_sources: Sequence[str] = (),
) -> list[Finding]:
    """Every pair check over the train (and eval) pairs, most severe first."""
    everything = list(train) + list(eval)
    findings = [
        *empty_replies(everything),
        *identical_pairs(everything),
        *duplicate_and_conflicting_pairs(everything),
        *length_bias(train),
        *eval_leakage(train, eval, leakage_severity),
        *sensitive_content(everything),
    ]
    if train_examples is not None:
        findings += truncated_pairs(
            list(train_examples) + list(eval_examples or []), max_seq_len, num_dropped, dropped_sources
        )
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.id))


def check_pairs(
    data: Any,
    eval: str | list[str] | None = None,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    data_format: str = "auto",
    fields: dict[str, str] | None = None,
    task: str = "preference",
) -> CheckReport:
    """`tunesmith data check` on pairs: read, tokenize (with a tokenizer) and check them."""
    from tunesmith.data.load import ErrorPolicy, is_sources
    from tunesmith.data.preference import load_pairs, tokenize_pairs
    from tunesmith.data.templates import resolve_chat_template

    policy = ErrorPolicy(on_error="skip", max_skipped=10**12)
    if is_sources(data):
        train = [
            pair
            for index, source in enumerate(data)
            for pair in load_pairs(
                source.path,
                source.format or data_format,
                source.fields or fields,
                None,
                policy,
                f"data.train[{index}]",
            )
        ]
    else:
        train = load_pairs(data, data_format, fields, policy=policy)
    held = load_pairs(eval, data_format, fields, policy=policy, what="eval") if eval else []
    train_examples = eval_examples = None
    dropped, dropped_sources = 0, []
    if tokenizer is not None:
        template = resolve_chat_template(tokenizer)
        train_examples, train_stats = tokenize_pairs(train, tokenizer, template, max_seq_len)
        eval_examples, eval_stats = tokenize_pairs(held, tokenizer, template, max_seq_len, what="eval")
        dropped = train_stats.num_dropped_no_supervised + eval_stats.num_dropped_no_supervised
        dropped_sources = train_stats.dropped_sources + eval_stats.dropped_sources
    findings = pair_findings(
        train, held, train_examples, eval_examples, max_seq_len, dropped, dropped_sources=dropped_sources
    )
    if policy.skipped:
        findings.append(
            finding(
                "bad_rows",
                "error",
                "rows that are not valid preference pairs",
                len(policy.skipped),
                [s.split(": ", 1)[0] for s in policy.skipped],
                "; ".join(policy.skipped[:3]),
            ),
        )
    stats = {"num_train": len(train), "num_eval": len(held), "max_seq_len": max_seq_len}
    return make_report(task, findings, stats)


def preflight(data: Any, prepared: Any, task: str) -> CheckReport:
    """Before training: the pair findings on the prepared data (`prepared.pairs`, data/preference.PairData)."""
    pairs = prepared.pairs
    stats = prepared.stats
    splits = [s for s in (stats.train, stats.eval) if s is not None]
    # A mix of sources repeats pairs (the same object drawn again): each is checked once.
    records = list({id(pair): pair for pair in pairs.train_records}.values())
    examples = list({example.source: example for example in pairs.train}.values())
    findings = pair_findings(
        records,
        prepared.eval_records,
        examples,
        pairs.eval,
        data.max_seq_len,
        sum(s.num_dropped_no_supervised for s in splits),
        leakage_severity="error" if data.eval is not None else "warning",
        dropped_sources=[source for s in splits for source in s.dropped_sources],
    )
    return make_report(task, findings, {"num_train": len(pairs.train), "num_eval": len(pairs.eval)})
