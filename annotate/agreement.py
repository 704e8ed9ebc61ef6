"""Inter-annotator agreement: Krippendorff's alpha and Cohen's kappa for categorical labels,
Kendall's tau-b for two rankings of the same items."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from typing import Any, Protocol, TypeVar

H = TypeVar("H", bound=Hashable)


class _Ordered(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


AnnotatorT = TypeVar("AnnotatorT", bound=_Ordered)
GroupT = TypeVar("GroupT", bound=Hashable)


@dataclass(frozen=True)
class Agreement:
    """A statistic and the size of the sample it rests on.

    `value` is None when the statistic is undefined: nothing could be paired, or the labels
    do not vary, so chance agreement is total and the ratio has a zero denominator.
    """

    value: float | None
    n: int

    def __str__(self) -> str:
        return "—" if self.value is None else f"{self.value:.2f}"


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> Agreement:
    """Krippendorff's alpha with the nominal metric.

    Each unit holds the labels its annotators gave one item, missing ones left out. Units
    with fewer than two labels cannot be paired and are ignored. `n` is the number of
    pairable values (Krippendorff's n..).
    """
    # Sums are kept as Fractions so that perfect agreement gives exactly 1.0 and a label
    # set without variation gives an exact zero expected disagreement, not a rounding residue.
    n = 0
    observed_matches = Fraction(0)  # sum of the coincidence matrix's diagonal, o_cc
    totals: Counter[Hashable] = Counter()  # the coincidence matrix's marginals, n_c
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts = Counter(unit)
        n += m
        totals.update(counts)
        observed_matches += Fraction(sum(k * (k - 1) for k in counts.values()), m - 1)
    if n == 0:
        return Agreement(value=None, n=0)
    # D_o / D_e = (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c * n_k, with both sums
    # taken as the whole matrix minus its diagonal.
    expected_mismatches = n * n - sum(t * t for t in totals.values())
    if expected_mismatches == 0:
        return Agreement(value=None, n=n)
    alpha = 1 - (n - 1) * (n - observed_matches) / expected_mismatches
    return Agreement(value=float(alpha), n=n)


def cohen_kappa(pairs: Iterable[tuple[Hashable, Hashable]]) -> Agreement:
    """Cohen's kappa for two raters; each pair is their two labels on one item.

    `n` is the number of items. `value` is None when there are no items or when chance
    agreement is 1 (both raters used one and the same label throughout).
    """
    n = 0
    agreed = 0
    first: Counter[Hashable] = Counter()
    second: Counter[Hashable] = Counter()
    for label_1, label_2 in pairs:
        n += 1
        agreed += label_1 == label_2
        first[label_1] += 1
        second[label_2] += 1
    if n == 0:
        return Agreement(value=None, n=0)
    observed = Fraction(agreed, n)
    expected = Fraction(sum(count * second[label] for label, count in first.items()), n * n)
    if expected == 1:
        return Agreement(value=None, n=n)
    return Agreement(value=float((observed - expected) / (1 - expected)), n=n)


def kappa_by_annotator_pair(
    ratings: Iterable[tuple[Hashable, AnnotatorT, Hashable]], *, min_items: int = 1
) -> dict[tuple[AnnotatorT, AnnotatorT], Agreement]:
    """Cohen's kappa for every pair of annotators over the units both of them labelled.

    `ratings` are (unit, annotator, label) triples, at most one per (unit, annotator);
    a repeat raises ValueError. Annotators must be mutually orderable. Keys are (a, b) with
    a < b, in sorted order; pairs with fewer than `min_items` (>= 1) common units are left out.
    """
    if min_items < 1:
        raise ValueError(f"min_items must be at least 1, got {min_items}")
    by_unit: dict[Hashable, dict[AnnotatorT, Hashable]] = defaultdict(dict)
    for unit, annotator, label in ratings:
        labels = by_unit[unit]
        if annotator in labels:
            raise ValueError(f"annotator {annotator!r} labelled unit {unit!r} more than once")
        labels[annotator] = label
    # Walking units rather than annotator pairs costs only the pairs that actually overlap.
    common: dict[tuple[AnnotatorT, AnnotatorT], list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for labels in by_unit.values():
        for a, b in combinations(sorted(labels), 2):
            common[(a, b)].append((labels[a], labels[b]))
    return {
        pair: cohen_kappa(common[pair]) for pair in sorted(common) if len(common[pair]) >= min_items
    }


def alpha_by_group(
    ratings: Iterable[tuple[GroupT, Hashable, Hashable, Hashable]],
) -> dict[GroupT, Agreement]:
    """Krippendorff's nominal alpha per group.

    `ratings` are (group, unit, annotator, label) tuples, at most one per (group, unit,
    annotator); a repeat raises ValueError. Every group that occurs gets an entry, in order
    of first occurrence, including groups with nothing pairable (value None, n 0).
    """
    units: dict[GroupT, dict[Hashable, dict[Hashable, Hashable]]] = {}
    for group, unit, annotator, label in ratings:
        labels = units.setdefault(group, {}).setdefault(unit, {})
        if annotator in labels:
            raise ValueError(
                f"annotator {annotator!r} labelled unit {unit!r} of group {group!r} more than once"
            )
        labels[annotator] = label
    return {
        group: krippendorff_alpha_nominal(list(labels.values()) for labels in by_unit.values())
        for group, by_unit in units.items()
    }


def kendall_tau_b(first: Mapping[H, int], second: Mapping[H, int]) -> Agreement:
    """Kendall's tau-b between two rankings (item → rank, ties share a rank) over the items
    both rank: +1 the same order, -1 the reverse. Ties are corrected for (tau-b), so two
    annotators who tie the same items still reach 1. `n` is the number of items both rank;
    the value is None when either ranking puts every common item level."""
    items = [item for item in first if item in second]
    concordant = discordant = tied_first = tied_second = 0
    for x, y in combinations(items, 2):
        a = (first[x] > first[y]) - (first[x] < first[y])
        b = (second[x] > second[y]) - (second[x] < second[y])
        tied_first += a == 0
        tied_second += b == 0
        concordant += a * b > 0
        discordant += a * b < 0
    pairs = len(items) * (len(items) - 1) // 2
    denominator = ((pairs - tied_first) * (pairs - tied_second)) ** 0.5
    if denominator == 0:
        return Agreement(None, len(items))
    return Agreement((concordant - discordant) / denominator, len(items))
