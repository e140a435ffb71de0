"""Intervals and verdicts against hand-computed values."""
from __future__ import annotations

import math

import pytest

from vizcnn.study.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, difference_ci, fmt, mean_ci, mean_normal,
                               paired_ci, verdict, wilson)


def test_t_interval_matches_a_hand_computation():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert ci["mean"] == 2 and ci["lo"] == pytest.approx(2 - 4.303 / math.sqrt(3)) and ci["n"] == 3
    assert mean_ci([5.0])["lo"] is None
    assert mean_ci([0.0, 0.1], bounds=(0, 1))["lo"] == 0


def test_paired_interval_is_the_interval_of_the_differences():
    a, b = [0.5, 0.6, 0.7], [0.4, 0.45, 0.62]
    ci, ref = paired_ci(a, b), mean_ci([0.1, 0.15, 0.08])
    assert ci["values"] == pytest.approx(ref["values"]) and ci["lo"] == pytest.approx(ref["lo"])
    with pytest.raises(ValueError):
        paired_ci([1.0], [1.0, 2.0])


def test_wilson_interval_matches_the_textbook_value():
    ci = wilson(8, 10)  # Wilson 95% for 8/10: [0.490, 0.943]
    assert ci["lo"] == pytest.approx(0.4902, abs=1e-3) and ci["hi"] == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 20)["lo"] == 0


def test_weighted_mean_and_difference():
    ci = mean_normal([0.0, 1.0], [1.0, 3.0])
    assert ci["mean"] == pytest.approx(0.75)
    d = difference_ci({"mean": 0.5, "lo": 0.4, "hi": 0.6}, {"mean": 0.2, "lo": 0.1, "hi": 0.3})
    assert d["mean"] == pytest.approx(0.3) and d["hi"] - d["lo"] == pytest.approx(0.2 * math.sqrt(2))


def test_verdicts():
    assert verdict({"lo": 0.01, "hi": 0.3}) == REPRODUCED
    assert verdict({"lo": -0.3, "hi": -0.01}) == NOT_REPRODUCED
    assert verdict({"lo": 0.0, "hi": 0.0}) == NOT_REPRODUCED  # no difference at all
    assert verdict({"lo": -0.1, "hi": 0.2}) == INCONCLUSIVE
    assert verdict({"lo": None, "hi": None}) == INCONCLUSIVE


def test_no_negative_zero_in_reports():
    assert fmt({"mean": -0.0001, "lo": -0.0002, "hi": 0.0}) == "0.000 [0.000, 0.000]"
