"""A run's headline numbers per step and its change points (copying starts, diversity drops)."""

from __future__ import annotations

from typing import Any

from diffaudit.metrics.trajectory import (
    Point,
    copying_starts,
    diversity_drops,
    headline_numbers,
    trajectory_series,
)
from diffaudit.plots.trajectory import trajectory_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def document(**stages: Any) -> dict[str, Any]:
    return {"version": 1, "stages": stages}


def test_headline_numbers_read_each_stage_that_ran() -> None:
    numbers = headline_numbers(
        document(
            irs={"synthetic": {"irs_inf": 0.5, "irs_inf_lower": 0.4, "irs_inf_upper": 0.6}},
            memorization={
                "spaces": {
                    "pixels": {"extraction": {"fraction_flagged": 0.1}},
                    "features": {"extraction": {"fraction_flagged": 0.2}},
                },
                "volume_growth": {"score": {"mean": 3.0, "median": None}},
            },
            novelty={"tsne": {"majority_count": 12}},
            distribution={"fid": 20.0, "kid_mean": 0.01, "n_real": 100, "intervals": {"fid": [19.0, 21.0]}},
        )
    )
    assert numbers == {
        "irs_inf": (0.5, 0.4, 0.6),
        "copy_rate_pixels": (0.1, None, None),
        "copy_rate_features": (0.2, None, None),
        "volume_growth_mean": (3.0, None, None),  # the median was not computed (None): left out
        "ds_count": (12, None, None),
        "fid": (20.0, 19.0, 21.0),
        "kid_mean": (0.01, None, None),  # no interval given; n_real is a count, not a headline number
    }
    assert headline_numbers(document(sample={"headline": "8 samples"})) == {}


def test_series_are_in_step_order_and_skip_steps_without_the_number() -> None:
    series = trajectory_series([(20, {"a": (2.0, None, None)}), (10, {"a": (1.0, 0.5, 1.5), "b": (9.0, None, None)})])
    assert series == {"a": [Point(10, 1.0, 0.5, 1.5), Point(20, 2.0)], "b": [Point(10, 9.0)]}


def test_copying_starts_at_the_first_step_above_the_threshold_in_any_space() -> None:
    series = {
        "copy_rate_pixels": [Point(1, 0.0), Point(2, 0.01), Point(3, 0.5)],
        "copy_rate_features": [Point(1, 0.0), Point(2, 0.02), Point(3, 0.4)],
        "irs_inf": [Point(1, 0.9)],
    }
    assert copying_starts(series, 0.01) == 2  # features exceed 1% at step 2; pixels only reach it
    assert copying_starts(series, 0.3) == 3
    assert copying_starts(series, 0.6) is None
    assert copying_starts({"irs_inf": [Point(1, 0.9)]}) is None


def test_diversity_drops_where_the_upper_bound_falls_below_the_previous_lower_bound() -> None:
    irs = [Point(1, 0.8, 0.7, 0.9), Point(2, 0.72, 0.66, 0.78), Point(3, 0.6, 0.55, 0.65), Point(4, 0.4, 0.3, 0.5)]
    assert diversity_drops(irs) == 3  # 0.65 < 0.66; step 2 overlaps step 1 (0.78 >= 0.7)
    assert diversity_drops(irs[:2]) is None
    assert diversity_drops([Point(1, 0.8), Point(2, 0.1)]) is None  # no bounds, no claim


def test_trajectory_plot_is_a_png_with_or_without_points() -> None:
    series = {"irs_inf": [Point(1, 0.8, 0.7, 0.9), Point(2, 0.5, 0.4, 0.6)], "ds_count": [Point(1, 3.0)]}
    assert trajectory_png(series, {"copying starts": 2, "diversity drops": None}).startswith(PNG_SIGNATURE)
    assert trajectory_png({}, {}).startswith(PNG_SIGNATURE)
