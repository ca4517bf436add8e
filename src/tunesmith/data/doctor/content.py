"""What the text says: secrets and personal data in it, and whether it covers the inputs the model will see.

Coverage compares lengths and vocabulary (Jensen-Shannon divergence) and finds inputs with no
similar training example (TF-IDF cosine).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

import tunesmith.data.doctor.detect as detect  # the module itself, never the package being initialised
from tunesmith.data.doctor.findings import Finding, finding, merged
from tunesmith.data.doctor.scan import CheckOptions, SplitScan


def representativeness_findings(
    train: SplitScan,
    eval: SplitScan,
    target_inputs: list[tuple[str, str]],
    options: CheckOptions,
    stats: dict[str, Any],
) -> list[Finding]:
    findings: list[Finding] = []
    if target_inputs:
        name = "target inputs"
        sample = target_inputs[: options.max_coverage_inputs]
        texts = [text for _, text in sample]
        locations = [where for where, _ in sample]
        word_lists = [detect.words(text) for text in texts]
        counts: Counter = Counter(w for ws in word_lists for w in ws)
        lengths = np.asarray([len(ws) for ws in word_lists])
    elif len(eval):
        name = "eval inputs"
        texts = eval.reservoir
        locations = [eval.location(i) for i in eval.reservoir_index]
        counts = eval.word_counts
        lengths = np.asarray(eval.word_lengths)
    else:
        return findings
    train_lengths = np.asarray(train.word_lengths)
    if not len(train_lengths) or not len(lengths):
        return findings
    edges = [0, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    length_js = detect.js_divergence(
        np.asarray(detect.histogram(train_lengths, edges)), np.asarray(detect.histogram(lengths, edges))
    )
    vocabulary_js = detect.js_divergence(train.word_counts, counts)
    uncovered = detect.uncovered_inputs(train.reservoir, texts, options.min_similarity)
    stats["representativeness"] = {
        "compared": name,
        "length_js": round(length_js, 4),
        "vocabulary_js": round(vocabulary_js, 4),
        "uncovered": len(uncovered),
        "checked": len(texts),
    }
    train_median, other_median = float(np.median(train_lengths)), float(np.median(lengths))
    words_text = f"median {other_median:.0f} words vs {train_median:.0f} in train"
    if length_js > 0.3:
        longer = "longer" if other_median > train_median else "shorter"
        findings.append(
            finding(
                "length_shift",
                "warning",
                f"{name} are {longer} than train",
                len(lengths),
                [],
                f"Length distributions differ (Jensen-Shannon divergence {length_js:.2f} bits; {words_text}). The model "
                f"is trained on inputs unlike the ones it will see; add training samples of that length.",
            )
        )
    missing = detect.overrepresented_words(
        Counter(w for i in uncovered for w in detect.words(texts[i])) if uncovered else counts,
        train.word_counts,
    )
    topics = f" Words frequent there but rare in train: {', '.join(missing)}." if missing else ""
    if vocabulary_js > 0.5:
        findings.append(
            finding(
                "vocabulary_shift",
                "warning",
                f"{name} use different words than train",
                len(lengths),
                [],
                f"Vocabulary Jensen-Shannon divergence {vocabulary_js:.2f} bits (0 = same, 1 = disjoint).{topics}",
            )
        )
    if uncovered:
        share = len(uncovered) / len(texts)
        findings.append(
            finding(
                "uncovered_inputs",
                "warning" if share > 0.2 else "info",
                f"{name} with no similar training example",
                len(uncovered),
                [locations[i] for i in uncovered],
                f"{len(uncovered)} of {len(texts)} checked {name} ({share:.0%}) have no training input with TF-IDF "
                f"cosine similarity >= {options.min_similarity}.{topics} Add training examples like them.",
            )
        )
    elif not findings:
        findings.append(
            finding(
                "representative",
                "info",
                f"{name} resemble train",
                0,
                [],
                f"Length JS divergence {length_js:.2f}, vocabulary JS divergence {vocabulary_js:.2f} bits; "
                f"every checked input has a similar training example ({words_text}).",
            )
        )
    return findings


SENSITIVE_FINDINGS = {
    "private_key": (
        "private_keys",
        "error",
        "private keys",
        "Remove them and rotate the keys: a model can reproduce training text verbatim.",
    ),
    "api_key": (
        "api_keys",
        "error",
        "API keys or access tokens",
        "Remove them and revoke the keys: a model can reproduce training text verbatim.",
    ),
    "email": (
        "emails",
        "warning",
        "e-mail addresses",
        "Replace them with placeholders unless the model should learn them.",
    ),
    "phone_number": ("phone_numbers", "warning", "phone numbers", "Replace them with placeholders."),
    "card_number": ("card_numbers", "warning", "payment card numbers (Luhn-valid)", "Remove or mask them."),
}


def sensitive_findings(train: SplitScan, eval: SplitScan) -> list[Finding]:
    findings = []
    for kind, (id_, severity, title, fix) in SENSITIVE_FINDINGS.items():
        problems = merged([train, eval], kind)
        if problems.count:
            shown = ", ".join(
                f"{value} at {where}" for value, where in zip(problems.notes, problems.examples, strict=False)
            )
            findings.append(
                finding(
                    id_,
                    severity,
                    title,
                    problems.count,
                    problems.examples,
                    f"{problems.count} found (masked: {shown}). {fix}",
                )
            )
    return findings
