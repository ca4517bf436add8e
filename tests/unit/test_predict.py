"""Predictions before training: the steady-state probe's stopping rule, the learning curve's
power-law fit and band, the verdicts, the prediction block and its report section."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tunesmith.errors import UserError
from tunesmith.report.sections import _prediction_section, prediction_lines
from tunesmith.select.curve import nested_subsets, parse_fractions, plan_budget, point_errors
from tunesmith.select.powerlaw import fit_power_law, verdict
from tunesmith.train.prediction import compare, measured_tokens_per_second, within
from tunesmith.train.probe import relative_standard_error, steady_state


class FakeClock:
    """A clock that each step advances by the next programmed duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def step(self) -> int:
        self.now += next(self.durations)
        self.calls += 1
        return 100  # tokens


def test_probe_skips_warmup_and_stops_when_steady() -> None:
    # Two slow warm-up steps (start-up), then steady steps of 0.1s with 2% jitter.
    rng = np.random.default_rng(0)
    clock = FakeClock([5.0, 3.0, *(0.1 * (1 + 0.02 * rng.standard_normal(1000)))])
    result = steady_state(clock.step, clock=clock)
    assert result.stopped_by == "steady"
    assert result.timed_steps == 5  # the minimum: 2% jitter is far below the 10% target
    assert result.seconds_per_step == pytest.approx(0.1, rel=0.05)  # the warm-up is not in it
    assert result.tokens_per_second == pytest.approx(1000, rel=0.05)
    assert result.relative_error <= 0.10


def test_probe_times_more_steps_when_noisy_and_stops_at_the_budget() -> None:
    # Alternating 0.1s / 1.0s: never within 1% -> it runs until the time budget.
    clock = FakeClock(itertools.cycle([0.1, 1.0]))
    result = steady_state(clock.step, warmup_steps=1, target=0.01, time_budget=20.0, clock=clock)
    assert result.stopped_by == "time budget"
    assert 20.0 <= result.seconds_per_step * result.timed_steps < 21.1
    assert result.seconds_per_step == pytest.approx(0.55, rel=0.1)
    noisy = FakeClock(itertools.cycle([0.1, 0.3]))
    capped = steady_state(noisy.step, target=0.0, max_steps=7, time_budget=1e9, clock=noisy)
    assert capped.stopped_by == "step cap" and capped.timed_steps == 7


def test_relative_standard_error() -> None:
    assert relative_standard_error([1.0]) == math.inf
    assert relative_standard_error([2.0, 2.0, 2.0]) == 0.0
    times = [1.0, 2.0, 3.0]
    assert relative_standard_error(times) == pytest.approx(math.sqrt(1.0 / 3) / 2.0)


@pytest.mark.parametrize(("a", "b", "c"), [(1.5, 20.0, 0.5), (0.8, 3.0, 0.25), (2.2, 100.0, 0.9)])
def test_power_law_recovers_known_parameters(a: float, b: float, c: float) -> None:
    sizes = [125, 250, 500, 1000, 2000]
    values = [a + b * n ** (-c) for n in sizes]
    fit = fit_power_law(sizes, values)
    assert fit.a == pytest.approx(a, rel=0.03)
    assert fit.c == pytest.approx(c, rel=0.05)
    assert fit.value(8000) == pytest.approx(a + b * 8000 ** (-c), rel=0.01)


def test_band_covers_the_truth_on_noisy_points() -> None:
    # 40 noisy learning curves of 3 points each: the 90% band at 2x covers the true value ~90%.
    a, b, c, sigma = 1.2, 6.0, 0.4, 0.01
    sizes = [250, 500, 1000]
    rng = np.random.default_rng(3)
    truth = a + b * 2000 ** (-c)
    covered = 0
    for trial in range(40):
        values = [a + b * n ** (-c) + rng.normal(0, sigma) for n in sizes]
        fit = fit_power_law(sizes, values, errors=[sigma] * 3, samples=200, seed=trial)
        low, high = fit.band(2000)
        covered += low <= truth + rng.normal(0, sigma) <= high
    assert covered >= 30  # 75%: the band is neither a point nor missing the truth


def test_higher_is_better_fits_a_rising_curve() -> None:
    sizes = [100, 200, 400, 800]
    values = [0.9 - 0.8 * n ** (-0.5) for n in sizes]
    fit = fit_power_law(sizes, values, higher_is_better=True)
    assert fit.value(3200) > fit.value(800) > fit.value(100)
    assert fit.value(1e9) == pytest.approx(0.9, abs=0.01)


def test_verdicts() -> None:
    steep = fit_power_law([250, 500, 1000], [3.0 + 40 * n**-0.5 for n in (250, 500, 1000)])
    result = verdict(steep, 2000, "loss")
    assert result["more_data_helps"] and "will likely help" in result["verdict"]
    assert result["predictions"]["2x"]["predicted"] < result["predictions"]["1x"]["predicted"]
    assert result["gain_at_4x"] > result["gain_at_2x"] > 0
    flat = fit_power_law([250, 500, 1000], [0.80, 0.805, 0.806], errors=[0.02] * 3, higher_is_better=True)
    result = verdict(flat, 2000, "accuracy")
    assert result["more_data_helps"] is False and result["verdict"].startswith("saturating")
    assert (
        result["gain_at_2x_high"] < 0.02
    )  # even the steepest curve the points allow gains less than the noise
    # SST-2 with stories260k, two repeats a size (their own rows and seeds), 8 epochs: 0.554, 0.596,
    # 0.566, then 0.642 on all 2,000 rows. The best fit is flat, yet rising curves fit the noisy
    # points too: the verdict must not say "saturating".
    values, spread = [0.5539, 0.5963, 0.5659], 0.0191
    errors = [math.sqrt(v * (1 - v) / 872 + spread**2 / 2) for v in values]
    one_run = math.sqrt(0.5659 * 0.4341 / 872 + spread**2)
    noisy = fit_power_law(
        [250, 500, 1000], values, errors=errors, higher_is_better=True, measurement_error=one_run
    )
    result = verdict(noisy, 2000, "accuracy", chance=0.509)
    assert result["more_data_helps"] is None and result["predictable"] is True
    assert result["verdict"].startswith("cannot tell yet") and result["gain_at_2x_high"] > one_run


def test_points_at_chance_give_no_prediction() -> None:
    # SST-2 with stories260k at 250-1,000 rows: every point at the majority-class accuracy (0.509 on
    # 872 held-out sentences); the run on all 2,000 rows then took off to 0.585. A plateau fitted
    # by a saturating law reads "saturating": the verdict must say there is no prediction instead.
    sizes, values = [250, 500, 1000], [0.497, 0.515, 0.492]
    errors = [math.sqrt(v * (1 - v) / 872) for v in values]
    flat = fit_power_law(sizes, values, errors=errors, higher_is_better=True)
    result = verdict(flat, 2000, "accuracy", chance=0.509)
    assert result["predictable"] is False and result["more_data_helps"] is None
    assert result["verdict"].startswith("not learning yet") and "0.509" in result["verdict"]
    assert verdict(flat, 2000, "accuracy")["predictable"] is True  # without a chance level: as before
    # the same curve clearly above chance at its largest point is a curve, whatever its smaller points
    rising = fit_power_law(sizes, [0.51, 0.60, 0.70], errors=[0.017] * 3, higher_is_better=True)
    result = verdict(rising, 2000, "accuracy", chance=0.509)
    assert result["predictable"] is True and result["more_data_helps"] is True


def test_curve_helpers() -> None:
    assert parse_fractions("1/8, 0.25,1/2") == [0.125, 0.25, 0.5]
    for bad in ("0.5,1.0,0.25", "a,b,c", "0.1,0.2"):
        with pytest.raises(UserError):
            parse_fractions(bad)
    subsets = nested_subsets(100, [0.125, 0.25, 0.5], seed=1)
    assert [len(s) for s in subsets.values()] == [13, 25, 50]
    assert set(subsets[0.125]) <= set(subsets[0.25]) <= set(subsets[0.5])
    # A repeat's own subsets (seed + 1): other rows, the same sizes, nested too.
    other = nested_subsets(100, [0.125, 0.25, 0.5], seed=2)
    assert [len(s) for s in other.values()] == [13, 25, 50] and other[0.5] != subsets[0.5]
    assert set(other[0.125]) <= set(other[0.25]) <= set(other[0.5])
    steps, estimate, scale = plan_budget({0.25: 100, 0.5: 200}, 0.5, 10.0, None)
    assert steps == {0.25: 100, 0.5: 200} and estimate == 170.0 and scale == 1.0
    steps, estimate, scale = plan_budget({0.25: 100, 0.5: 200}, 0.5, 10.0, 95.0)
    assert estimate <= 95.0 and steps[0.5] == 2 * steps[0.25] and scale < 1
    with pytest.raises(UserError, match="at least"):
        plan_budget({0.25: 100, 0.5: 200}, 0.5, 10.0, 15.0)
    # Repeated runs cost per run: two seeds of 0.25 and 0.5, one run on all the data.
    runs = {0.25: 2, 0.5: 2, 1.0: 1}
    steps, estimate, _ = plan_budget({0.25: 100, 0.5: 200, 1.0: 400}, 0.5, 10.0, None, runs)
    assert estimate == 2 * (50 + 10) + 2 * (100 + 10) + (200 + 10)
    with pytest.raises(UserError, match="5 runs"):
        plan_budget({0.25: 100, 0.5: 200, 1.0: 400}, 0.5, 10.0, 40.0, runs)


def _task(higher_is_better: bool):
    from types import SimpleNamespace

    return SimpleNamespace(higher_is_better=higher_is_better)


def test_the_seed_spread_of_repeated_runs_enters_the_errors_and_the_band() -> None:
    # SST-2-like: accuracies on 872 held-out sentences, two seeds per size that disagree by ~0.03.
    points = [
        {"rows": 250, "value": 0.54, "runs": [0.52, 0.56]},
        {"rows": 500, "value": 0.575, "runs": [0.56, 0.59]},
        {"rows": 1000, "value": 0.60, "runs": [0.58, 0.62]},
    ]
    errors, one_run, spread = point_errors(_task(True), points, 872)
    binomial = math.sqrt(0.6 * 0.4 / 872)
    pooled = math.sqrt((0.02**2 * 2 + 0.015**2 * 2 + 0.02**2 * 2) / 3)  # variances of the pairs
    assert spread == pytest.approx(pooled)
    assert errors[2] == pytest.approx(math.sqrt(binomial**2 + pooled**2 / 2))  # a mean of 2 runs
    assert one_run == pytest.approx(math.sqrt(binomial**2 + pooled**2))  # one new run
    sizes, values = [p["rows"] for p in points], [p["value"] for p in points]
    with_seeds = fit_power_law(sizes, values, errors=errors, higher_is_better=True, measurement_error=one_run)
    eval_only = fit_power_law(sizes, values, errors=[binomial] * 3, higher_is_better=True)
    low, high = with_seeds.band(2000)
    narrow_low, narrow_high = eval_only.band(2000)
    assert high - low > narrow_high - narrow_low  # the seed noise widens the band
    assert with_seeds.new_point_error(2000) == one_run
    # One run per size and a metric without a known error (a loss): the fit decides, as before.
    single = [{"rows": p["rows"], "value": 1.0 + p["value"], "runs": [1.0 + p["value"]]} for p in points]
    assert point_errors(_task(False), single, 872) == (None, None, None)
    # Repeated losses: the spread alone, never under 1% of the value.
    tight = [{"rows": n, "value": v, "runs": [v, v + 1e-6]} for n, v in ((250, 2.5), (500, 2.2), (1000, 1.9))]
    errors, one_run, _ = point_errors(_task(False), tight, 872)
    assert errors == pytest.approx([0.025, 0.022, 0.019]) and one_run == pytest.approx(0.019)


def test_prediction_block_and_report_section() -> None:
    metrics = [
        {"step": 1, "tokens_per_second": 10.0},
        *({"step": s, "tokens_per_second": 100.0 + s} for s in range(2, 7)),
    ]
    assert measured_tokens_per_second(metrics) == 104.0  # the start-up window is left out
    predicted = {
        "source": "preflight",
        "tokens_per_second": 100.0,
        "peak_memory_bytes": 2 * 1024**3,
        "wall_seconds": None,
    }
    block = compare(
        predicted, {"tokens_per_second": 104.0, "peak_memory_bytes": 1024**3, "wall_seconds": 12.0}
    )
    assert block["tokens_per_second"]["ratio"] == pytest.approx(1.04)
    assert block["peak_memory_bytes"]["ratio"] == pytest.approx(0.5)
    assert block["wall_seconds"] == {"predicted": None, "measured": 12.0, "ratio": None}
    assert within(block, 0.3) == {"tokens_per_second": True, "peak_memory_bytes": False, "wall_seconds": None}
    lines = prediction_lines(block)
    assert ("peak memory", "2.0 GiB", "1.0 GiB", "0.50x") in lines
    html = _prediction_section({"summary": {"prediction": block}})
    assert "predicted 2.0 GiB, used 1.0 GiB" in html and "not predicted" in html
    assert _prediction_section({"summary": {}}) == ""


def test_predicted_wall_time_counts_the_runs_own_padded_tokens() -> None:
    # Batches padded to their longest row: step time follows the batch's shape, so the prediction
    # is the run's tokens (its own schedule and collate) over the token rate, not steps x a probe's step.
    from types import SimpleNamespace

    import torch

    from tunesmith.config import build_config
    from tunesmith.data.pack import RowSchedule
    from tunesmith.train.prediction import planned_tokens_per_step, predict

    lengths = [5 + (17 * i) % 60 for i in range(40)]

    def collate(rows):  # noqa: ANN001, ANN202
        return {"input_ids": torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)}

    prepared = SimpleNamespace(rows=[[0] * n for n in lengths], collate=collate)
    config = build_config(
        {
            "task": "instruct",
            "data": {"train": "x.jsonl", "max_seq_len": 64, "check": False},
            "train": {"batch_size": 4, "seed": 3},
            "prediction": {
                "source": "select",
                "tokens_per_second": 1000.0,
                "seconds_per_step": 9.0,
                "batch_size": 4,
                "max_seq_len": 64,
                "method": "lora",
            },
        }  # fmt: skip
    )
    schedule = RowSchedule(40, 4, 1, 3)
    exact = [sum(len(m) * max(lengths[i] for i in m) for m in schedule.rows_for_step(s)) for s in range(25)]
    assert planned_tokens_per_step(config, prepared, 25) == pytest.approx(sum(exact) / 25)
    figures = predict(config, None, "unused", prepared, "cpu", 25)  # select's rate applies: no probe
    assert figures["wall_seconds"] == pytest.approx(sum(exact) / 1000.0)  # not 25 x 9 s
    static = config.model_copy(update={"train": config.train.model_copy(update={"compile": True})})
    assert planned_tokens_per_step(static, prepared, 25) == 4 * 64  # compiled: every batch padded to 64
