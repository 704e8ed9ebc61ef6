from __future__ import annotations

import random

import pytest

from alignment.engine.selection import pair_select, text_distance


def test_the_most_different_pair_is_the_one_apart_in_words_and_length() -> None:
    texts = [
        "Paris is the capital of France.",
        "Paris is the capital of France!",
        "The capital of France is Paris, a city of about two million people on the Seine.",
        "Paris is the capital of France.",
    ]
    picked = pair_select("most_different", texts, rng=random.Random(0))
    assert {picked.first, picked.second} in ({0, 2}, {1, 2}, {2, 3})
    assert picked.score == pytest.approx(max(text_distance(texts[2], t) for t in texts), abs=1e-6)
    assert text_distance("same words", "same words") == 0.0
    assert 0 < text_distance("a b", "a b c d e") < 1


def test_the_reward_gap_pair_is_the_policys_furthest_apart() -> None:
    texts = ["one", "two", "three", "four"]
    picked = pair_select("reward_gap", texts, rng=random.Random(0), rewards=[0.1, -2.0, 0.3, 1.5])
    assert (picked.first, picked.second, picked.score) == (1, 3, 3.5)
    with pytest.raises(ValueError, match="one implicit reward per sample"):
        pair_select("reward_gap", texts, rng=random.Random(0), rewards=[1.0])


def test_random_is_reproducible_and_never_picks_two_identical_texts() -> None:
    texts = ["same", "same", "other", "same"]
    picks = {
        (p.first, p.second)
        for p in (pair_select("random", texts, rng=random.Random(seed)) for seed in range(30))
    }
    assert picks and all(2 in pick for pick in picks)
    assert pair_select("random", texts, rng=random.Random(5)) == pair_select(
        "random", texts, rng=random.Random(5)
    )
    with pytest.raises(ValueError, match="unknown pair selection"):
        pair_select("best", texts, rng=random.Random(0))
