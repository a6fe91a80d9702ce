"""Class balance (thesis the thesis, Ch. 4) against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.metrics.balance import class_balance, goodman_intervals


def test_two_classes_seventy_thirty_against_fifty_fifty():
    train = np.repeat([0, 1], 100)
    gen = np.repeat([0, 1], [70, 30])
    report = class_balance(train, gen)
    json.dumps(report)
    # chi-square: (70-50)^2/50 + (30-50)^2/50 = 16 on 1 dof, p = 6.334e-5.
    assert report["chi_square"]["statistic"] == pytest.approx(16.0)
    assert report["chi_square"]["dof"] == 1
    assert report["chi_square"]["p_value"] == pytest.approx(6.334e-5, rel=1e-3)
    assert report["chi_square"]["valid"]
    # Goodman, C = 2: A = chi2(1) quantile at 0.975 = 5.0239; sqrt(A (A + 4*70*30/100)) = 21.148;
    # class 0: (5.0239 + 140 -+ 21.148) / 210.048 = 0.58975, 0.79112 -> ratio / 0.5 = 1.1795, 1.5822;
    # class 1: (5.0239 + 60 -+ 21.148) / 210.048 = 0.20888, 0.41025 -> ratio 0.4178, 0.8205.
    zero, one = report["per_class"]
    assert zero["class"] == 0 and zero["ratio"] == pytest.approx(1.4)
    assert (zero["ratio_lower"], zero["ratio_upper"]) == pytest.approx((1.1795, 1.5822), abs=1e-4)
    assert (one["ratio_lower"], one["ratio_upper"]) == pytest.approx((0.4178, 0.8205), abs=1e-4)
    assert report["over_produced"] == [0] and report["under_produced"] == [1]


def test_matching_shares_flag_nothing():
    train = np.repeat(["cat", "dog", "owl"], [200, 100, 100])
    gen = np.repeat(["cat", "dog", "owl"], [102, 49, 49])
    report = class_balance(train, gen)
    assert report["chi_square"]["statistic"] == pytest.approx(0.04 + 0.02 + 0.02)  # 2^2/100 + 1/50 + 1/50
    assert report["over_produced"] == [] and report["under_produced"] == []
    assert [p["class"] for p in report["per_class"]] == ["cat", "dog", "owl"]
    assert all(p["status"] == "ok" for p in report["per_class"])


def test_goodman_intervals_are_simultaneous_and_contain_the_shares():
    lower, upper = goodman_intervals(np.array([30, 50, 20]))
    assert np.all(lower < np.array([0.3, 0.5, 0.2])) and np.all(np.array([0.3, 0.5, 0.2]) < upper)
    narrow_lower, narrow_upper = goodman_intervals(np.array([30, 50, 20]), confidence=0.5)
    assert np.all(narrow_upper - narrow_lower < upper - lower)


def test_unseen_generated_class_is_an_error():
    with pytest.raises(ValueError, match="do not occur"):
        class_balance(np.array([0, 1]), np.array([0, 2]))
