"""select ranks candidates on what each task declares (TaskInfo.fit_ranking), memory fit first."""

from __future__ import annotations

from tunesmith.select import Candidate, rank

MEMORY = {"lora": {"total": 1}}


def candidate(name: str, method: str | None = "lora", **fit: float) -> Candidate:
    return Candidate(name=name, fit={"tokens_per_char": 0.3, **fit}, memory=MEMORY, method=method)


def test_reward_ranks_on_the_held_out_reward_not_on_a_loss_it_does_not_measure():
    ranked = rank(
        [
            candidate("weak", reward_mean=0.0, truncated_share=0.0),
            candidate("strong", reward_mean=0.375, truncated_share=0.5),
            candidate("tied", reward_mean=0.375, truncated_share=0.25),
        ],
        None,
        "reward",
    )
    assert [c.name for c in ranked] == ["tied", "strong", "weak"]  # the truncated share breaks the tie
    assert (
        ranked[0].reasons[0].startswith("highest held-out reward (greedy, your reward functions) (0.375 vs")
    )
    assert (
        ranked[-1].reasons[0]
        == "held-out reward (greedy, your reward functions) 0.000 (best 0.375): fits your data less well"
    )


def test_classify_ranks_on_zero_shot_accuracy_then_label_cross_entropy_and_fit_before_all():
    ranked = rank(
        [
            candidate("sure", zero_shot_accuracy=0.8, loss_per_char=0.4),
            candidate("surer", zero_shot_accuracy=0.8, loss_per_char=0.3),
            candidate("best-but-too-big", method=None, zero_shot_accuracy=0.95, loss_per_char=0.1),
        ],
        None,
        "classify",
    )
    assert [c.name for c in ranked] == ["surer", "sure", "best-but-too-big"]


def test_language_model_tasks_rank_on_the_lowest_loss_per_character():
    ranked = rank([candidate("a", loss_per_char=1.2), candidate("b", loss_per_char=0.9)], None, "instruct")
    assert [c.name for c in ranked] == ["b", "a"]
    assert (
        ranked[0]
        .reasons[0]
        .startswith("lowest loss per character on the tokens you would train (0.900 vs 1.200")
    )
