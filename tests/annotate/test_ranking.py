"""What a ranking of K responses implies (annotate/ranking.py), and Kendall's tau-b."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import kendalltau

from annotate.agreement import kendall_tau_b
from annotate.ranking import K_MAX, K_MIN, RankingInvalid, ranking_pairs, ranks_check

SHOWN = ["r1", "r2", "r3", "r4"]


def test_it_derives_every_pair_with_the_better_ranked_response_chosen() -> None:
    # Shown r1..r4; ranked r3 first, then r1 and r4 level, then r2.
    pairs = ranking_pairs({"r1": 2, "r2": 3, "r3": 1, "r4": 2}, shown=SHOWN)
    assert [(p.chosen, p.rejected, p.ranks, p.tie) for p in pairs] == [
        ("r1", "r2", (2, 3), False),
        ("r3", "r1", (1, 2), False),
        ("r1", "r4", (2, 2), True),
        ("r3", "r2", (1, 3), False),
        ("r4", "r2", (2, 3), False),
        ("r3", "r4", (1, 2), False),
    ]


def test_tied_ranks_are_made_dense() -> None:
    assert ranks_check({"r1": 1, "r2": 1, "r3": 3, "r4": 4}, shown=SHOWN) == {
        "r1": 1,
        "r2": 1,
        "r3": 2,
        "r4": 3,
    }


@pytest.mark.parametrize(
    ("ranks", "shown", "message"),
    [
        ({"r1": 1, "r2": 2}, ["r1", "r2"], "3 to 6 responses"),
        ({"r1": 1, "r2": 2, "r3": 3}, SHOWN, "missing ['r4']"),
        ({"r1": 1, "r2": 2, "r3": 3, "r4": 4, "r9": 5}, SHOWN, "not shown ['r9']"),
        ({"r1": 0, "r2": 2, "r3": 3, "r4": 4}, SHOWN, "from 1 to 4, not 0"),
        ({"r1": 1, "r2": 2, "r3": 3, "r4": 5}, SHOWN, "from 1 to 4, not 5"),
        ({"r1": 1, "r2": 2, "r3": "3", "r4": 4}, SHOWN, "not '3'"),
        ({"r1": True, "r2": 2, "r3": 3, "r4": 4}, SHOWN, "not True"),
    ],
)
def test_it_refuses_ranks_that_do_not_order_the_responses_shown(
    ranks: dict[str, object], shown: list[str], message: str
) -> None:
    with pytest.raises(RankingInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        ranking_pairs(ranks, shown=shown)  # type: ignore[arg-type]


rankings = st.integers(K_MIN, K_MAX).flatmap(
    lambda k: st.lists(st.integers(1, k), min_size=k, max_size=k)
)


@given(rankings)
def test_a_ranking_implies_one_pair_per_two_responses_consistent_with_its_ranks(
    ranks: list[int],
) -> None:
    shown = [f"r{i}" for i in range(len(ranks))]
    pairs = ranking_pairs(dict(zip(shown, ranks, strict=True)), shown=shown)
    k = len(shown)
    assert len(pairs) == k * (k - 1) // 2
    assert {frozenset((p.chosen, p.rejected)) for p in pairs} == {
        frozenset((a, b)) for i, a in enumerate(shown) for b in shown[i + 1 :]
    }
    for p in pairs:
        assert p.ranks[0] <= p.ranks[1] and p.tie == (p.ranks[0] == p.ranks[1])


@given(rankings, st.randoms(use_true_random=False))
def test_kendall_tau_b_is_scipys(ranks: list[int], rng) -> None:
    other = ranks[:]
    rng.shuffle(other)
    items = [f"r{i}" for i in range(len(ranks))]
    ours = kendall_tau_b(dict(zip(items, ranks, strict=True)), dict(zip(items, other, strict=True)))
    theirs = kendalltau(ranks, other, variant="b").statistic
    if math.isnan(theirs):
        assert ours.value is None
    else:
        assert ours.value == pytest.approx(theirs) and ours.n == len(items)


def test_kendall_tau_b_is_one_for_the_same_order_and_minus_one_for_the_reverse() -> None:
    ranks = {"a": 1, "b": 2, "c": 2, "d": 3}
    assert kendall_tau_b(ranks, ranks).value == pytest.approx(1.0)
    reverse = {item: 4 - rank for item, rank in ranks.items()}
    assert kendall_tau_b(ranks, reverse).value == pytest.approx(-1.0)
    # Only the items both rank count.
    assert kendall_tau_b(ranks, {"a": 1, "b": 2, "z": 3}).n == 2
