from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotate.agreement import (
    Agreement,
    alpha_by_group,
    cohen_kappa,
    kappa_by_annotator_pair,
    krippendorff_alpha_nominal,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four coders,
# twelve units, "*" where a coder gave no value.
KRIPPENDORFF_2011 = """
A: 1 2 3 3 2 1 4 1 2 * * *
B: 1 2 3 3 2 2 4 1 2 5 * 3
C: * 3 3 3 2 3 4 2 2 5 1 *
D: 1 2 3 3 2 4 4 1 2 5 1 *
"""


def _units_from_matrix(matrix: str) -> list[list[int]]:
    rows = [line.split(":")[1].split() for line in matrix.strip().splitlines()]
    return [[int(row[u]) for row in rows if row[u] != "*"] for u in range(len(rows[0]))]


def _wikipedia_pairs() -> list[tuple[str, str]]:
    return [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15


def test_it_matches_krippendorffs_published_nominal_example() -> None:
    result = krippendorff_alpha_nominal(_units_from_matrix(KRIPPENDORFF_2011))

    assert result.value is not None
    assert round(result.value, 3) == 0.743
    assert result.n == 40


def test_it_ignores_units_with_a_single_label() -> None:
    units = _units_from_matrix(KRIPPENDORFF_2011)

    assert krippendorff_alpha_nominal([*units, [7], []]) == krippendorff_alpha_nominal(units)


def test_it_gives_alpha_one_for_perfect_agreement_with_variation() -> None:
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"], ["a", "a"]]) == Agreement(
        value=1.0, n=7
    )


def test_it_leaves_alpha_undefined_when_labels_do_not_vary() -> None:
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a", "a"]]) == Agreement(value=None, n=5)


def test_it_leaves_alpha_undefined_for_no_pairable_units() -> None:
    assert krippendorff_alpha_nominal([]) == Agreement(value=None, n=0)
    assert krippendorff_alpha_nominal([["a"], []]) == Agreement(value=None, n=0)


def test_it_matches_wikipedias_kappa_example() -> None:
    result = cohen_kappa(_wikipedia_pairs())

    assert result.value == pytest.approx(0.4)
    assert result.n == 50


def test_it_matches_sklearn_kappa_on_random_labels() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(20110101)
    for size in (10, 37, 200):
        first = [rng.choice("abc") for _ in range(size)]
        second = [label if rng.random() < 0.6 else rng.choice("abcd") for label in first]

        result = cohen_kappa(zip(first, second, strict=True))

        assert result.value == pytest.approx(metrics.cohen_kappa_score(first, second))
        assert result.n == size


def test_it_gives_kappa_one_for_perfect_agreement_with_variation() -> None:
    assert cohen_kappa([("a", "a"), ("b", "b"), ("a", "a")]) == Agreement(value=1.0, n=3)


def test_it_leaves_kappa_undefined_when_both_raters_use_one_label() -> None:
    assert cohen_kappa([("a", "a")] * 4) == Agreement(value=None, n=4)


def test_it_leaves_kappa_undefined_for_no_items() -> None:
    assert cohen_kappa([]) == Agreement(value=None, n=0)


def test_it_gives_the_same_kappa_in_either_rater_order() -> None:
    pairs = _wikipedia_pairs()

    assert cohen_kappa(pairs) == cohen_kappa([(b, a) for a, b in pairs])


def test_it_formats_agreement_for_display() -> None:
    assert str(Agreement(value=0.7434, n=40)) == "0.74"
    assert str(Agreement(value=None, n=0)) == "—"


def test_it_computes_kappa_for_each_annotator_pair_over_common_units() -> None:
    ratings = [
        # 1 and 3 agree on u1 and u2; 2 says "x" to both, so agrees with each of them once.
        ("u1", 3, "x"),
        ("u1", 1, "x"),
        ("u1", 2, "x"),
        ("u2", 1, "y"),
        ("u2", 3, "y"),
        ("u2", 2, "x"),
        ("u3", 1, "y"),
        ("u4", 2, "y"),
    ]

    result = kappa_by_annotator_pair(ratings)

    assert list(result) == [(1, 2), (1, 3), (2, 3)]
    assert result[(1, 3)] == Agreement(value=1.0, n=2)
    assert result[(1, 2)] == cohen_kappa([("x", "x"), ("y", "x")])
    assert result[(2, 3)] == Agreement(value=0.0, n=2)


def test_it_leaves_out_annotator_pairs_below_min_items() -> None:
    ratings = [
        ("u1", "ann", "x"),
        ("u1", "bob", "x"),
        ("u2", "ann", "y"),
        ("u2", "bob", "y"),
        ("u1", "cat", "y"),
    ]

    result = kappa_by_annotator_pair(ratings, min_items=2)

    assert result == {("ann", "bob"): Agreement(value=1.0, n=2)}


def test_it_refuses_a_repeated_rating_by_one_annotator() -> None:
    with pytest.raises(ValueError, match="more than once"):
        kappa_by_annotator_pair([("u1", 1, "x"), ("u1", 1, "y")])
    with pytest.raises(ValueError, match="more than once"):
        alpha_by_group([("g", "u1", 1, "x"), ("g", "u1", 1, "y")])


def test_it_computes_alpha_separately_for_each_group() -> None:
    units = _units_from_matrix(KRIPPENDORFF_2011)
    ratings = [
        ("paper", unit, coder, label)
        for unit, labels in enumerate(units)
        for coder, label in enumerate(labels)
    ]
    # The same unit and annotator ids recur in the second group: groups must not mix.
    ratings += [("perfect", 0, 0, "a"), ("perfect", 0, 1, "a")]
    ratings += [("perfect", 1, 0, "b"), ("perfect", 1, 1, "b")]
    ratings += [("lonely", 0, 0, "a")]

    result = alpha_by_group(ratings)

    assert result == {
        "paper": krippendorff_alpha_nominal(units),
        "perfect": Agreement(value=1.0, n=4),
        "lonely": Agreement(value=None, n=0),
    }


@given(
    units=st.lists(st.lists(st.integers(min_value=0, max_value=3), max_size=5), max_size=20),
    identical=st.booleans(),
)
def test_it_keeps_alpha_at_most_one_and_exactly_one_for_identical_labels(
    units: list[list[int]], identical: bool
) -> None:
    if identical:
        units = [[unit[0]] * len(unit) for unit in units if unit]

    result = krippendorff_alpha_nominal(units)

    assert result.value is None or result.value <= 1.0
    pairable_labels = {label for unit in units if len(unit) >= 2 for label in unit}
    if identical and len(pairable_labels) >= 2:
        assert result.value == 1.0
