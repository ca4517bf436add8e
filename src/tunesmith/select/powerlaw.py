"""A saturating power law through a learning curve, with an uncertainty band, and its verdict.

    metric(n) = a + b * n^(-c)        (loss: falls towards a; accuracy: a - b * n^(-c) rises to a)

The fit profiles the exponent: for each c on a log grid the best (a, b >= 0) is a weighted linear
least-squares problem, and the c with the smallest weighted error wins. That is exact, needs no
starting point and behaves with as few points as parameters (3), where curve_fit's covariance is
undefined. The band is a parametric bootstrap: each point is redrawn with its standard error
(given, e.g. the binomial error of an accuracy and the spread of repeated runs; else the fit's
residual error when there are more points than parameters; else a stated floor of 1% of the
value), the curve refitted, and the prediction at n taken with the noise a new measurement there
would have (`measurement_error`: one run's noise, when known): a 90% prediction band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXPONENTS = np.geomspace(0.01, 4.0, 400)  # the profiled exponent c
RELATIVE_NOISE_FLOOR = 0.01  # a short run's held-out metric, when nothing better is known
BAND = (5.0, 95.0)  # percentiles: a 90% band
BOOTSTRAP_SAMPLES = 400
# "More data will help" needs the gain at 2x the data to be at least this share of the metric's
# distance to its ceiling/floor... and above the band's noise: see `verdict`.
MIN_RELATIVE_GAIN = 0.01


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    higher_is_better: bool
    sizes: list[float]
    values: list[float]
    errors: list[float]  # the standard error used for each point
    error_source: str  # "given" | "residuals" | "floor"
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # bootstrap (a, b, c)
    # The standard error of one new measurement (one run, scored once); None: the largest point's.
    measurement_error: float | None = None

    @property
    def sign(self) -> float:
        return -1.0 if self.higher_is_better else 1.0

    def value(self, n: float) -> float:
        return self.sign * (self.a + self.b * float(n) ** (-self.c))

    def band(self, n: float, seed: int = 1) -> tuple[float, float]:
        """The 90% prediction band at n: the refits' predictions plus a new measurement's noise."""
        if not self.samples:
            value = self.value(n)
            return value, value
        rng = np.random.default_rng(seed)
        a, b, c = (np.array(x) for x in zip(*self.samples, strict=True))
        noise = rng.normal(0.0, self.new_point_error(n), size=len(a))
        predictions = self.sign * (a + b * float(n) ** (-c)) + noise
        low, high = np.percentile(predictions, BAND)
        return float(low), float(high)

    def gain_band(self, n: float) -> tuple[float, float]:
        """The 90% interval of what twice the data buys at n (the refits' gains; >= 0 by the form)."""
        if not self.samples:
            gain = self.sign * (self.value(n) - self.value(2 * n))
            return gain, gain
        _, b, c = (np.array(x) for x in zip(*self.samples, strict=True))
        gains = b * (float(n) ** (-c) - float(2 * n) ** (-c))
        low, high = np.percentile(gains, BAND)
        return float(low), float(high)

    def new_point_error(self, n: float) -> float:
        """The standard error of a measurement at n: one run's noise when it was measured (repeated
        runs), else the error of the largest point, the nearest."""
        if self.measurement_error is not None:
            return self.measurement_error
        return float(self.errors[int(np.argmax(self.sizes))])

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "higher_is_better": self.higher_is_better,
            "sizes": self.sizes,
            "values": self.values,
            "errors": self.errors,
            "error_source": self.error_source,
            "measurement_error": self.measurement_error,
            "bootstrap_samples": len(self.samples),
        }


def _fit_once(n: np.ndarray, z: np.ndarray, weights: np.ndarray) -> tuple[float, float, float, float]:
    """(a, b, c, weighted squared error) of z = a + b n^-c with b >= 0: the closed-form weighted
    least squares of (a, b) for every c of the grid at once, the best c kept."""
    x = n[None, :] ** (-EXPONENTS[:, None])  # (exponents, points)
    w = weights[None, :]
    sw, sx, sxx = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
    sz, sxz = float((weights * z).sum()), (w * x * z[None, :]).sum(axis=1)
    det = sw * sxx - sx**2
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(det > 0, (sw * sxz - sx * sz) / det, 0.0)
    b = np.where(np.isfinite(b) & (b > 0), b, 0.0)  # worse with more data: the flat line instead
    a = (sz - b * sx) / sw
    errors = (w * (z[None, :] - a[:, None] - b[:, None] * x) ** 2).sum(axis=1)
    best = int(np.argmin(errors))
    return float(a[best]), float(b[best]), float(EXPONENTS[best]), float(errors[best])


def fit_power_law(
    sizes: Sequence[float],
    values: Sequence[float],
    errors: Sequence[float] | None = None,
    higher_is_better: bool = False,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    measurement_error: float | None = None,
) -> PowerLawFit:
    """Fit metric(n) (see the module docstring) to (sizes, values); at least three points.
    `measurement_error`: the noise of one new measurement, for the prediction band."""
    if len(sizes) != len(values) or len(sizes) < 3:
        raise ValueError("a learning curve needs at least three (size, value) points")
    n = np.asarray(sizes, dtype=float)
    sign = -1.0 if higher_is_better else 1.0
    z = sign * np.asarray(values, dtype=float)
    if errors is not None:
        sigma = np.maximum(np.asarray(errors, dtype=float), 1e-12)
        source = "given"
    else:
        sigma = np.full_like(z, 1.0)
        source = "floor"
    a, b, c, error = _fit_once(n, z, 1.0 / sigma**2)
    if errors is None:
        dof = len(n) - 3
        residual = math.sqrt(error / dof) if dof > 0 else 0.0
        floor = RELATIVE_NOISE_FLOOR * np.abs(z)
        if dof > 0 and residual > float(np.mean(floor)):
            sigma, source = np.full_like(z, residual), "residuals"
        else:
            sigma, source = np.maximum(floor, 1e-12), "floor"
    fit = PowerLawFit(
        a,
        b,
        c,
        higher_is_better,
        [float(x) for x in n],
        [float(v) for v in values],
        list(map(float, sigma)),
        source,
        measurement_error=measurement_error,
    )
    rng = np.random.default_rng(seed)
    fitted = a + b * n ** (-c)
    weights = 1.0 / sigma**2
    for _ in range(samples):
        redrawn = fitted + rng.normal(0.0, sigma)
        sa, sb, sc, _ = _fit_once(n, redrawn, weights)
        fit.samples.append((sa, sb, sc))
    return fit


# A point is "at chance" when it is within this many standard errors of the chance level (e.g. the
# majority-class accuracy): a curve whose largest point is there has shown no learning yet.
CHANCE_SIGMAS = 2.0


def at_chance(fit: PowerLawFit, chance: float | None) -> bool:
    """Whether the largest fitted point is no better than `chance` within CHANCE_SIGMAS errors.

    A saturating power law fitted to points on a plateau calls the curve saturated, yet a model at
    chance can still take off with more data or steps: there the curve predicts nothing."""
    if chance is None:
        return False
    largest = int(np.argmax(fit.sizes))
    above = -fit.sign * (fit.values[largest] - chance)  # > 0: better than chance
    return above < CHANCE_SIGMAS * fit.errors[largest]


def _verdict_words(
    fit: PowerLawFit,
    n_all: float,
    metric: str,
    chance: float | None,
    helps: bool | None,
    stuck: bool,
    gain: float,
    gain_high: float,
    noise: float,
) -> str:
    """The verdict's sentence: not learning yet, more data helps, cannot tell yet, or saturating."""
    if stuck:
        return (
            f"not learning yet: at the largest size tried ({max(fit.sizes):,.0f} rows) the held-out {metric} "
            f"is at chance level (~{chance:.4g}, within {CHANCE_SIGMAS:g} standard errors), so the curve cannot say what "
            "more data would buy (a model at chance can still take off past the sizes tried). Train each "
            "size longer (more epochs or steps), raise the learning rate or use a larger base model, "
            "check the labels, then ask again"
        )
    if helps:
        return (
            f"more data of this kind will likely help: {metric} ~{fit.value(n_all):.4g} now, "
            f"~{fit.value(2 * n_all):.4g} with 2x the data (by ~{gain:.3g}), ~{fit.value(4 * n_all):.4g} with 4x"
        )
    if helps is None:
        return (
            f"cannot tell yet: the best fit says twice the data moves {metric} by ~{gain:.2g}, but curves "
            f"within the points' noise allow up to ~{gain_high:.2g} (one run's noise ~{noise:.2g}). More "
            "--repeats or larger --fractions would settle it"
        )
    return (
        f"saturating: twice the data would move {metric} by only ~{gain:.2g} (measurement noise ~{noise:.2g}); "
        "improve quality or diversity instead"
    )


def verdict(fit: PowerLawFit, n_all: float, metric: str, chance: float | None = None) -> dict[str, Any]:
    """What more data of this kind would buy: predictions at 1x, 2x and 4x with bands, and the words.

    `more_data_helps`: True when the fitted gain at 2x the data is above one run's noise (and 1% of
    the metric); False ("saturating") only when even the top of the gain's 90% interval is below
    that; None in between (the points cannot tell a flat curve from a rising one). With `chance`
    (the metric of a model that learnt nothing, e.g. the majority class's accuracy) and the curve's
    largest point no better than it, there is no prediction: `predictable` is False,
    `more_data_helps` None, and the words say what to change before asking again."""
    at = {}
    for factor in (1, 2, 4):
        low, high = fit.band(factor * n_all)
        at[f"{factor}x"] = {
            "n": factor * n_all,
            "predicted": fit.value(factor * n_all),
            "low": low,
            "high": high,
        }
    gain = fit.sign * (fit.value(n_all) - fit.value(2 * n_all))  # > 0: better with twice the data
    gain4 = fit.sign * (fit.value(n_all) - fit.value(4 * n_all))
    scale = abs(fit.value(n_all)) or 1.0
    noise = fit.new_point_error(n_all)
    needed = max(MIN_RELATIVE_GAIN * scale, noise)  # a gain worth the name: above one run's noise
    _, gain_high = fit.gain_band(n_all)
    helps: bool | None = gain >= needed
    if not helps and gain_high >= needed:
        helps = None  # the best fit is flat, but curves the points allow are not: undecided
    stuck = at_chance(fit, chance)
    if stuck:
        helps = None
    words = _verdict_words(fit, n_all, metric, chance, helps, stuck, gain, gain_high, noise)
    return {
        "predictions": at,
        "gain_at_2x": gain,
        "gain_at_2x_high": gain_high,  # the top of its 90% interval
        "gain_at_4x": gain4,
        "more_data_helps": helps,
        "predictable": not stuck,
        "chance": chance,
        "verdict": words,
        "asymptote": fit.sign * fit.a,
    }
