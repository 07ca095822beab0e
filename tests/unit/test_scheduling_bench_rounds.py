"""The scheduling bench's figures over several rounds (`--rounds`): each ratio is the median of
the rounds' ratios, a round that lacks a figure is left out of that figure only."""

from __future__ import annotations

from bench.scheduling_bench import median_ratios, ratios


def _arm(wall: float, small: float | None, large: float) -> dict[str, object]:
    figures = ("mean_time_to_admission_s", "mean_time_to_start_s",
               "mean_time_to_admission_from_answer_s", "mean_time_to_admission_from_workload_s")  # fmt: skip
    return {
        "wall_s": wall,
        "classes": {
            "small": dict.fromkeys(figures, small),
            "large": dict.fromkeys(figures, large),
        },
    }


def test_each_ratio_is_the_median_over_the_rounds() -> None:
    rounds = [
        ratios(_arm(60.0, 0.5, 4.0), _arm(66.0, 1.0, 4.4)),  # 1.1x wall, 2x small, 1.1x large
        ratios(_arm(60.0, 0.5, 4.0), _arm(90.0, 2.0, 8.0)),  # an outlier round: 1.5x, 4x, 2x
        ratios(_arm(60.0, 0.5, 4.0), _arm(63.0, 0.75, 4.0)),  # 1.05x, 1.5x, 1x
    ]
    median = median_ratios(rounds)
    assert median["wall"] == 1.1
    assert median["time_to_admission"] == {"small": 2.0, "large": 1.1}
    assert median["time_to_start"] == {"small": 2.0, "large": 1.1}


def test_a_round_without_a_figure_is_left_out_of_it() -> None:
    rounds = [
        ratios(_arm(60.0, None, 4.0), _arm(66.0, None, 4.4)),  # no small job admitted in this round
        ratios(_arm(60.0, 0.5, 4.0), _arm(60.0, 1.0, 4.0)),
    ]
    median = median_ratios(rounds)
    assert median["time_to_admission"]["small"] == 2.0
    assert median["time_to_admission"]["large"] == 1.05
    never = median_ratios([ratios(_arm(60.0, None, 4.0), _arm(60.0, None, 4.0))])
    assert never["time_to_admission"]["small"] is None
