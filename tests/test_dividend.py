"""`labelwise dividend`: the article's first experiment (label the strategy's k and k random images, train on each,
compare the mAP gain per label). The noise decision on numbers here; end to end on the synthetic set with the oracle
(yolo11n.yaml at imgsz 64, 1 epoch) in the slow tests below."""

from __future__ import annotations

import pytest

from labelwise.savings import NOISE_UNKNOWN, WITHIN_NOISE, compare_arms


# -- the noise decision ---------------------------------------------------------------------------------------------


def test_a_difference_inside_the_seed_spread_is_within_noise():
    # the strategy's seeds spread over 0.10 mAP50; it beats random by 0.007 on average
    c = compare_arms([0.50, 0.55, 0.60], [0.52, 0.53, 0.58])
    assert c.verdict == WITHIN_NOISE
    assert c.noise_sd == pytest.approx(0.05)
    assert c.difference.mean == pytest.approx(0.02 / 3)
    assert c.text.startswith("within noise") and "sd 0.050" in c.text


def test_a_difference_beyond_the_spread_with_a_ci_off_zero_is_a_verdict():
    better = compare_arms([0.60, 0.61, 0.62], [0.50, 0.505, 0.51])
    assert better.verdict == "better" and better.difference.low > 0
    assert "better than random by 0.105" in better.text
    worse = compare_arms([0.50, 0.505, 0.51], [0.60, 0.61, 0.62])
    assert worse.verdict == "worse" and worse.difference.high < 0


def test_a_difference_larger_than_the_sd_but_with_a_ci_across_zero_is_within_noise():
    # two seeds: each arm moves little with the seed, but two paired differences give a wide t interval
    c = compare_arms([0.60, 0.62], [0.50, 0.54])  # differences +0.10 and +0.08; noise sd 0.028
    assert abs(c.difference.mean) > c.noise_sd
    assert c.difference.low < 0 < c.difference.high
    assert c.verdict == WITHIN_NOISE and "includes 0" in c.text


def test_one_seed_says_the_noise_is_unknown_and_suggests_three_seeds():
    c = compare_arms([0.61], [0.52])
    assert c.verdict == NOISE_UNKNOWN and c.noise_sd is None
    assert c.difference.mean == pytest.approx(0.09) and c.difference.low is None
    assert "--seeds 3" in c.text


def test_seed_counts_must_match():
    with pytest.raises(ValueError):
        compare_arms([0.5, 0.6], [0.5])
    with pytest.raises(ValueError):
        compare_arms([], [])
