"""Before/after comparison: metric deltas, the examples tuning fixed and broke, generations side by side.

Works on the metric dicts the tasks' `evaluate` returns (eval/before.json, eval/after.json, or
the two sides of `tunesmith eval`), so the report and the eval command say the same thing.
"""

from __future__ import annotations

import math
from typing import Any

# Metrics where a smaller value is the better one; every other numeric metric is better larger.
LOWER_IS_BETTER = ("loss", "perplexity")
# Counts and sizes, not qualities: shown, never judged.
NEUTRAL = ("support", "majority_baseline", "seconds")
MAX_LISTED_EXAMPLES = 8  # fixed and broken examples shown each
LOSS_CHANGE_THRESHOLD = 0.05  # relative loss change that counts as fixed or broken (noise below)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def format_number(value: Any) -> str:
    """A number as people read it: thousands separated, about four significant digits ('–' for none)."""
    number = _number(value)
    if number is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(number)
    if magnitude >= 1000:
        return f"{number:,.0f}"
    if magnitude >= 100:
        return f"{number:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{number:.3f}"
    if magnitude >= 1e-3:
        return f"{number:.4f}"
    return f"{number:.2e}"


def direction(metric: str) -> str:
    """'lower', 'higher' or 'neutral': which way this metric improves."""
    name = metric.rsplit(".", 1)[-1]
    if name.startswith("num_") or any(part in NEUTRAL for part in metric.split(".")):
        return "neutral"
    if any(name == n or name.endswith(n) for n in LOWER_IS_BETTER):
        return "lower"
    return "higher"


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric metrics as {name: value}; nested ones (general.perplexity) get dotted names."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "benchmarks":  # the harness's results: compared by compare_benchmarks, with their errors
            continue
        if isinstance(value, dict) and key not in ("per_class", "confusion_matrix"):
            flat.update(flat_metrics(value, f"{prefix}{key}."))
        elif (number := _number(value)) is not None:
            flat[f"{prefix}{key}"] = number
    return flat


def metric_deltas(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per numeric metric on either side: before, after, delta, relative change, verdict."""
    old, new = flat_metrics(before), flat_metrics(after)
    rows = []
    for name in list(old) + [n for n in new if n not in old]:
        row: dict[str, Any] = {
            "metric": name,
            "before": old.get(name),
            "after": new.get(name),
            "delta": None,
            "relative": None,
            "verdict": "",
            "direction": direction(name),
        }
        if name in old and name in new:
            delta = new[name] - old[name]
            row["delta"] = delta
            row["relative"] = delta / abs(old[name]) if old[name] else None
            if row["direction"] != "neutral" and delta != 0:
                improved = delta < 0 if row["direction"] == "lower" else delta > 0
                row["verdict"] = "better" if improved else "worse"
        rows.append(row)
    return rows


def fixed_and_broken(
    before: dict[str, Any], after: dict[str, Any], limit: int = MAX_LISTED_EXAMPLES
) -> dict[str, Any]:
    """The held-out examples tuning fixed and the ones it broke.

    Classification examples carry `correct`: fixed = wrong before and right after, broken = the
    reverse. Language-model examples carry `loss`: fixed = loss fell by more than
    LOSS_CHANGE_THRESHOLD (relative), broken = it rose by more; each list is sorted by the size
    of the change. Examples are matched by `source` when both sides have it, else by position.
    """
    old_items, new_items = before.get("examples") or [], after.get("examples") or []
    pairs = _match(old_items, new_items)
    result: dict[str, Any] = {
        "kind": None,
        "fixed": [],
        "broken": [],
        "num_fixed": 0,
        "num_broken": 0,
        "num_compared": len(pairs),
    }
    if not pairs:
        return result
    if all("correct" in old and "correct" in new for old, new in pairs):
        result["kind"] = "correct"
        fixed = [_pair(old, new) for old, new in pairs if not old["correct"] and new["correct"]]
        broken = [_pair(old, new) for old, new in pairs if old["correct"] and not new["correct"]]
    elif all(
        _number(old.get("loss")) is not None and _number(new.get("loss")) is not None for old, new in pairs
    ):
        result["kind"] = "loss"
        changes = [(new["loss"] - old["loss"], old, new) for old, new in pairs]
        threshold = [LOSS_CHANGE_THRESHOLD * max(abs(old["loss"]), 1e-9) for _, old, _ in changes]
        fixed = [_pair(old, new) for (d, old, new), t in zip(changes, threshold, strict=True) if d < -t]
        broken = [_pair(old, new) for (d, old, new), t in zip(changes, threshold, strict=True) if d > t]
        fixed.sort(key=lambda item: item["change"])
        broken.sort(key=lambda item: -item["change"])
    else:
        return result
    result.update(fixed=fixed[:limit], broken=broken[:limit], num_fixed=len(fixed), num_broken=len(broken))
    return result


def _match(old_items: list[dict[str, Any]], new_items: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    if all(i.get("source") for i in old_items + new_items):
        by_source = {i["source"]: i for i in new_items}
        return [(old, by_source[old["source"]]) for old in old_items if old["source"] in by_source]
    return list(zip(old_items, new_items, strict=False))


def _pair(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in new.items() if k not in ("loss", "predicted", "correct")}
    if "loss" in old and "loss" in new:
        item.update(loss_before=old["loss"], loss_after=new["loss"], change=new["loss"] - old["loss"])
    if "predicted" in old or "predicted" in new:
        item.update(predicted_before=old.get("predicted"), predicted_after=new.get("predicted"))
    return item


def paired_generations(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Generations for the same prompts side by side: prompt, reference, before, after (+ scores)."""
    old_items, new_items = before.get("generations") or [], after.get("generations") or []
    by_prompt = {g.get("prompt"): g for g in old_items}
    rows = []
    for index, new in enumerate(new_items):
        old = by_prompt.get(new.get("prompt")) or (old_items[index] if index < len(old_items) else {})
        rows.append(
            {
                "prompt": new.get("prompt", ""),
                "reference": new.get("reference"),
                "before": old.get("output"),
                "after": new.get("output"),
                "rouge_l_before": old.get("rouge_l"),
                "rouge_l_after": new.get("rouge_l"),
                # Preference pairs: the worse reply, shown beside the reference (the chosen one).
                **({"rejected": new["rejected"]} if "rejected" in new else {}),
            }
        )
    if not new_items:  # only the base side exists (eval.after off, or a failed run)
        rows = [
            {
                "prompt": g.get("prompt", ""),
                "reference": g.get("reference"),
                "before": g.get("output"),
                "after": None,
                "rouge_l_before": g.get("rouge_l"),
                "rouge_l_after": None,
                **({"rejected": g["rejected"]} if "rejected" in g else {}),
            }
            for g in old_items
        ]
    return rows


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Everything the report and `tunesmith eval` show about two evaluations of the same data."""
    from tunesmith.evaluate.benchmarks import compare_benchmarks

    return {
        "metrics": metric_deltas(before, after),
        "examples": fixed_and_broken(before, after),
        "generations": paired_generations(before, after),
        "benchmarks": compare_benchmarks(before.get("benchmarks") or {}, after.get("benchmarks") or {}),
    }
