"""Rankings of K responses (a judging mode, issue 21): what one ranking implies, pair by pair.

Plain Python, no Django. A ranking maps each response shown to its rank, 1 the best; tied
responses share a rank (an annotator marks ties between adjacent ranks). It implies one pair
per two responses, K(K-1)/2 in all: the better ranked one chosen over the other, or a tie
where the ranks are level.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Generic, TypeVar

K_MIN, K_MAX = 3, 6  # responses a ranking orders

T = TypeVar("T", bound=Hashable)


class RankingInvalid(ValueError):
    """The ranks do not order the responses shown; the message says how."""


@dataclass(frozen=True)
class ImpliedPair(Generic[T]):
    """Two responses of one ranking: `chosen` ranked above `rejected`, or, when `tie`, level
    (then `chosen` is the one shown first). `ranks` are theirs, in that order."""

    chosen: T
    rejected: T
    ranks: tuple[int, int]
    tie: bool


def ranks_check(ranks: Mapping[T, int], *, shown: list[T]) -> dict[T, int]:
    """The ranks of exactly the responses `shown`, made dense (1, 2, 2, 3: a tie takes one
    rank), or RankingInvalid naming what is wrong."""
    if not K_MIN <= len(shown) <= K_MAX:
        raise RankingInvalid(f"A ranking orders {K_MIN} to {K_MAX} responses, not {len(shown)}.")
    missing = [item for item in shown if item not in ranks]
    extra = [item for item in ranks if item not in shown]
    if missing or extra:
        raise RankingInvalid(
            f"Rank every response shown, and only those: missing {missing}, not shown {extra}."
        )
    for item in shown:
        rank = ranks[item]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= len(shown):
            raise RankingInvalid(f"A rank is a whole number from 1 to {len(shown)}, not {rank!r}.")
    dense = {rank: index for index, rank in enumerate(sorted(set(ranks.values())), start=1)}
    return {item: dense[ranks[item]] for item in shown}


def ranking_pairs(ranks: Mapping[T, int], *, shown: list[T]) -> list[ImpliedPair[T]]:
    """Every pair the ranking implies, in the order the responses were shown."""
    checked = ranks_check(ranks, shown=shown)
    pairs = []
    for first, second in combinations(shown, 2):
        a, b = checked[first], checked[second]
        if b < a:
            pairs.append(ImpliedPair(second, first, (b, a), tie=False))
        else:
            pairs.append(ImpliedPair(first, second, (a, b), tie=a == b))
    return pairs


def shown_order(items: list[T], *, seed: str, reverse: bool = False) -> list[T]:
    """The order one annotator is shown a ranking's items in: drawn from `seed` (so the same on
    every refresh and after an undo), reversed for a swapped re-check."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order[::-1] if reverse else order


def wins_minus_losses(items: Iterable[T], decided: Iterable[tuple[T, T]]) -> dict[T, int]:
    """Each item's wins minus losses over decided (winner, loser) pairs: a ranking's order as
    its pairs give it (a Copeland score), 0 for an item that never won or lost."""
    score = dict.fromkeys(items, 0)
    for winner, loser in decided:
        score[winner] += 1
        score[loser] -= 1
    return score
