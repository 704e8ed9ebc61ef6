from __future__ import annotations

import random

import pytest

from alignment.engine.generation import messages_guided
from alignment.engine.selection import ladder_next, pair_select, text_distance


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


def test_no_pair_of_two_cut_off_answers_while_a_complete_one_is_there() -> None:
    texts = ["cut off one", "cut off two", "a complete answer", "cut off three"]
    complete = [False, False, True, False]
    for strategy in ("random", "most_different", "winner_stays"):
        for seed in range(10):
            picked = pair_select(strategy, texts, rng=random.Random(seed), complete=complete)
            assert 2 in (picked.first, picked.second), strategy
    # All cut off: still a pair (the annotators may skip it).
    assert pair_select("winner_stays", texts[:2], rng=random.Random(0), complete=[False] * 2)


def test_the_ladder_starts_with_the_first_two_that_differ() -> None:
    picked = pair_select("winner_stays", ["same", "same", "other"], rng=random.Random(0))
    assert (picked.first, picked.second) == (0, 2)


def test_the_ladders_champion_meets_every_sample_it_has_not_met_fresh_ones_first() -> None:
    texts = ["s0", "s1", "s2", "s3", "s4"]
    # 0 met 1 (a tie), then 2 beat 0: 2 meets 3 and 4 (never shown) before 1.
    met = {frozenset((0, 1)), frozenset((0, 2))}
    shown = {0, 1, 2}
    assert ladder_next(2, texts, met=met, shown=shown) == 3
    met |= {frozenset((2, 3))}
    assert ladder_next(2, texts, met=met, shown=shown | {3}) == 4
    met |= {frozenset((2, 4))}
    assert ladder_next(2, texts, met=met, shown=shown | {3, 4}) == 1
    met |= {frozenset((2, 1))}
    assert ladder_next(2, texts, met=met, shown=set(range(5))) is None


def test_the_ladder_skips_copies_of_the_champion_and_cut_off_against_cut_off() -> None:
    texts = ["champ", "champ", "cut", "fine"]
    complete = [False, True, False, True]
    assert ladder_next(0, texts, met=set(), shown={0}, complete=complete) == 3
    assert ladder_next(0, texts, met={frozenset((0, 3))}, shown={0, 3}, complete=complete) is None
    with pytest.raises(ValueError, match="no sample 7"):
        ladder_next(7, texts, met=set(), shown=set())


def test_a_guided_prompt_adds_the_guidance_to_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How do I boil an egg?"},
    ]
    guided = messages_guided(messages, "  Prefer numbered steps. ")
    assert guided[:3] == messages[:3]
    assert guided[3]["content"] == "How do I boil an egg?\n\n(Guidelines: Prefer numbered steps.)"
    assert messages[3]["content"] == "How do I boil an egg?"  # the prompt itself is kept
    with pytest.raises(ValueError, match="needs a user message"):
        messages_guided([{"role": "system", "content": "x"}], "y")
