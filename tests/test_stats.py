"""Intervals and verdicts against hand-computed values."""
from __future__ import annotations

import math

import pytest

from vizcnn.study.stats import (CONTRADICTED, EQUIVALENT, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED, difference_ci, fmt,
                                mean_ci, mean_normal, paired_ci, seeds_needed, verdict, wilson)


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
    assert verdict({"lo": 0.01, "hi": 0.3})[0] == REPRODUCED
    assert verdict({"lo": -0.3, "hi": -0.01})[0] == CONTRADICTED
    assert verdict({"lo": -0.1, "hi": 0.2})[0] == INCONCLUSIVE
    assert verdict({"lo": None, "hi": None})[0] == INCONCLUSIVE  # one seed: no interval
    assert verdict(None)[0] == INCONCLUSIVE
    # equivalence only against a margin stated in advance, and only when the interval is inside it
    assert verdict({"lo": -0.004, "hi": 0.006}, margin=0.01)[0] == EQUIVALENT
    assert verdict({"lo": -0.017, "hi": 0.014}, margin=0.01)[0] == INCONCLUSIVE  # the committed cpu run's accuracy
    assert verdict({"lo": -0.004, "hi": 0.006})[0] == INCONCLUSIVE  # no margin, no equivalence


def test_a_zero_variance_interval_is_never_evidence():
    # paired_ci([1/96]*3, [0]*3) is [0.0104, 0.0104]: it used to read as "reproduced"
    diff = paired_ci([1 / 96] * 3, [0.0] * 3)
    assert diff["lo"] == pytest.approx(diff["hi"])
    assert verdict(diff)[0] == NOT_TESTABLE
    assert verdict(paired_ci([0.0] * 3, [0.0] * 3))[0] == NOT_TESTABLE  # 0 vs 0 across seeds


def test_seeds_needed_matches_a_hand_computation():
    # mean 1, sd 1: n >= (t(n-1) + 0.8416)^2; t(9)=2.262 -> 9.63 > 9, t(10)=2.228 -> 9.42 <= 10
    assert seeds_needed([0.0, 1.0, 2.0]) == 10
    assert seeds_needed([1.0, 1.0]) is None and seeds_needed([0.5]) is None
    assert seeds_needed([1.0, 3.0]) < seeds_needed([1.0, 5.0])


def test_no_negative_zero_in_reports():
    assert fmt({"mean": -0.0001, "lo": -0.0002, "hi": 0.0}) == "0.000 [0.000, 0.000]"
