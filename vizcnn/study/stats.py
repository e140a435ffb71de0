"""Intervals and verdicts for comparisons over seeds (the ZFNet study).

Every number a study reports over N seeds is a mean with a 95% confidence interval
(Student's t, N − 1 degrees of freedom); two designs are compared *paired by seed*
(the same seed fixes init, data order and dropout for both), so the interval is the
one of the per-seed differences. One model per design (``--trained``) has no seeds:
there the intervals are over what the number is an average of — Wilson's interval for
a fraction of filters or of held-out images, the normal interval of a mean over
projections — and two models are compared by the normal interval of the difference.

A claim's verdict reads the interval of the difference, oriented so that a positive
difference is what the paper claims (:func:`verdict`):

- *reproduced*: the whole interval lies on the paper's side of 0;
- *contradicted*: the whole interval lies on the other side;
- *equivalent within the margin*: the interval lies inside ±margin, for a claim whose
  margin was stated before the run (held-out accuracy: ±1 point);
- *not testable*: the phenomenon is absent from every network of both designs, or the
  differences have no variance (a zero-width interval is never evidence), or a network
  learned too little to be compared (held-out top-1 under twice chance);
- *inconclusive*: anything else, including a single seed (no interval).

With one model per design (``--trained``) there are no seeds to repeat: its numbers are
*descriptive*, with no verdict.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

#: two-sided 95% quantiles of Student's t, by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
Z975 = 1.959964

REPRODUCED, CONTRADICTED, EQUIVALENT = "reproduced", "contradicted", "equivalent within the margin"
NOT_TESTABLE, INCONCLUSIVE, DESCRIPTIVE = "not testable", "inconclusive", "descriptive (one model per design)"
VERDICTS = (REPRODUCED, CONTRADICTED, EQUIVALENT, NOT_TESTABLE, INCONCLUSIVE, DESCRIPTIVE)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (the table's
    entry at or below df, which errs wide; the normal quantile beyond 120)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if df > 120:
        return Z975
    return _T975[max(k for k in _T975 if k <= df)]


def _clean(x: float) -> float:
    return 0.0 if x == 0 else float(x)  # no negative zero in reports


def interval(mean: float, half: float | None, n: int, values: Sequence[float] | None = None,
             method: str = "t") -> dict:
    lo = hi = None
    if half is not None and math.isfinite(half):
        lo, hi = _clean(mean - half), _clean(mean + half)
    out = {"mean": _clean(mean), "lo": lo, "hi": hi, "n": n, "method": method}
    if values is not None:
        out["values"] = [_clean(v) for v in values]
    return out


def mean_ci(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict:
    """Mean of ``values`` with its 95% t-interval (no interval for a single value),
    clipped to ``bounds`` when the quantity cannot leave them (a fraction: (0, 1))."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    m = sum(v) / n
    if n < 2:
        return interval(m, None, n, v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    out = interval(m, t975(n - 1) * sd / math.sqrt(n), n, v)
    if bounds is not None:
        out["lo"], out["hi"] = _clean(max(bounds[0], out["lo"])), _clean(min(bounds[1], out["hi"]))
    return out


def paired_ci(a: Sequence[float], b: Sequence[float]) -> dict:
    """The per-seed differences a_i − b_i, their mean and 95% t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)])


def wilson(k: float, n: int) -> dict:
    """A fraction k / n with Wilson's 95% score interval."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = k / n
    z2 = Z975 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    out = interval(p, None, n, method="wilson")
    out["lo"], out["hi"] = _clean(max(0.0, centre - half)), _clean(min(1.0, centre + half))
    return out


def mean_normal(values: Sequence[float], weights: Sequence[float] | None = None) -> dict:
    """A (weighted) mean over many items with the normal 95% interval of that mean."""
    v = [float(x) for x in values]
    w = [1.0] * len(v) if weights is None else [float(x) for x in weights]
    total = sum(w)
    if not v or total <= 0:
        return interval(0.0, None, 0, method="normal")
    m = sum(wi * x for wi, x in zip(w, v)) / total
    n_eff = total ** 2 / sum(wi * wi for wi in w)  # Kish's effective sample size
    if len(v) < 2 or n_eff < 2:
        return interval(m, None, len(v), method="normal")
    var = sum(wi * (x - m) ** 2 for wi, x in zip(w, v)) / total
    return interval(m, Z975 * math.sqrt(var / n_eff), len(v), method="normal")


def difference_ci(a: dict, b: dict) -> dict:
    """a − b for two independent estimates with intervals (normal approximation)."""
    d = a["mean"] - b["mean"]
    if None in (a["lo"], a["hi"], b["lo"], b["hi"]):
        return interval(d, None, 0, method="normal")
    se_a, se_b = (a["hi"] - a["lo"]) / (2 * Z975), (b["hi"] - b["lo"]) / (2 * Z975)
    return interval(d, Z975 * math.hypot(se_a, se_b), 0, method="normal")


def verdict(diff: dict | None, *, margin: float | None = None) -> tuple[str, str]:
    """(verdict, why) for a claim from the interval of its difference, oriented so that
    positive is the claimed direction (see the module docstring). The callers decide
    beforehand what makes a claim *not testable* at all (absent phenomenon, networks at
    chance); here a difference without spread is."""
    if diff is None or diff.get("lo") is None or diff.get("hi") is None:
        return INCONCLUSIVE, "no interval (fewer than 2 seeds)"
    lo, hi = diff["lo"], diff["hi"]
    values = diff.get("values")
    if hi - lo <= 1e-12 or (values is not None and len(values) > 1 and max(values) - min(values) <= 1e-12):
        return NOT_TESTABLE, "the differences have no variance across seeds: a zero-width interval is no evidence"
    if lo > 0:
        return REPRODUCED, "the interval lies on the paper's side of 0"
    if hi < 0:
        return CONTRADICTED, "the interval lies on the other side of 0"
    if margin is not None and -margin < lo and hi < margin:
        return EQUIVALENT, f"the interval lies inside ±{margin:g}, the margin stated in advance"
    return INCONCLUSIVE, "the interval straddles 0" + ("" if margin is None else f" and reaches beyond ±{margin:g}")


def seeds_needed(values: Sequence[float], power: float = 0.8) -> int | None:
    """How many seeds a paired difference with this mean and spread would need for its
    95% interval to exclude 0 with probability ``power`` (normal approximation, iterated
    on Student's t): ``n ≥ ((t(n−1) + z_power) · sd / |mean|)²``. None when there is no
    spread or no effect to detect."""
    v = [float(x) for x in values]
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    if sd <= 0 or m == 0:
        return None
    z = {0.8: 0.841621, 0.9: 1.281552}[power]
    n = 2
    while n < 10_000 and n < ((t975(n - 1) + z) * sd / abs(m)) ** 2:
        n += 1
    return n


def number(x: float, digits: int = 3) -> str:
    """x to ``digits`` decimals, never as negative zero."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt(ci: dict, digits: int = 3) -> str:
    """``mean [lo, hi]`` for reports."""
    m = number(ci["mean"], digits)
    if ci.get("lo") is None:
        return m
    return f"{m} [{number(ci['lo'], digits)}, {number(ci['hi'], digits)}]"


__all__ = ["mean_ci", "paired_ci", "wilson", "mean_normal", "difference_ci", "verdict", "seeds_needed", "fmt",
           "number", "t975", "REPRODUCED", "CONTRADICTED", "EQUIVALENT", "NOT_TESTABLE", "INCONCLUSIVE", "DESCRIPTIVE",
           "VERDICTS"]
