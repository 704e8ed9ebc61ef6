"""Head-to-head statistics."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + ties / 2) / n
    low: float  # Wilson score interval bounds (at the effective sample size)
    high: float
    n: int  # wins + losses + ties
    wins: int
    losses: int
    ties: int
    # n, or fewer when several games share a prompt and agree within it (effective_games).
    effective_n: float | None = None


def effective_games(scores_by_prompt: Iterable[Sequence[float]]) -> float:
    """How many independent games the scores are worth when games of one prompt go together
    (several samples of one prompt tend to agree): n divided by the design effect, the
    cluster-robust variance of the mean score over the variance n independent games would
    have. Between the number of prompts and n; n when the games are as good as independent."""
    clusters = [list(c) for c in scores_by_prompt if len(c)]
    n = sum(len(c) for c in clusters)
    if n == 0:
        return 0.0
    if len(clusters) < 2:
        return float(len(clusters))
    mean = sum(sum(c) for c in clusters) / n
    independent = sum((x - mean) ** 2 for c in clusters for x in c) / n  # per game
    if independent == 0:
        return float(n)
    g = len(clusters)
    robust = g / (g - 1) * sum((sum(c) - mean * len(c)) ** 2 for c in clusters) / n
    return min(float(n), max(float(g), n * independent / robust if robust > 0 else float(n)))


def win_rate(
    *,
    wins: int,
    losses: int,
    ties: int,
    confidence: float = 0.95,
    effective_n: float | None = None,
) -> WinRate:
    """Win rate with ties counted as half a win, and its Wilson score interval.

    The interval treats the comparisons as Bernoulli trials with success share ``rate`` (a
    tie contributing half a success), which is slightly conservative when there are ties,
    at ``effective_n`` trials when given (several games per prompt: see effective_games),
    else n = wins + losses + ties. With n = 0 there is no information: rate 0.5 and the
    interval [0, 1]. Raises ValueError for negative counts or a confidence outside (0, 1).
    """
    for name, value in (("wins", wins), ("losses", losses), ("ties", ties)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = wins + losses + ties
    if n == 0:
        return WinRate(rate=0.5, low=0.0, high=1.0, n=0, wins=0, losses=0, ties=0)
    rate = (wins + 0.5 * ties) / n
    trials = n if effective_n is None else max(min(effective_n, n), 1e-9)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denominator = 1 + z2 / trials
    center = (rate + z2 / (2 * trials)) / denominator
    half_width = (
        z * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials)) / denominator
    )
    return WinRate(
        rate=rate,
        low=max(0.0, center - half_width),
        high=min(1.0, center + half_width),
        n=n,
        wins=wins,
        losses=losses,
        ties=ties,
        effective_n=None if effective_n is None else round(trials, 2),
    )


@dataclass(frozen=True)
class Game:
    """One head-to-head outcome: `score` is 1 when `first` won, 0 when `second` did, 0.5 a tie.
    `prompt`: the prompt both answered (games of one prompt are not independent)."""

    first: int
    second: int
    score: float
    prompt: int | None = None


def _player_scores(
    games: Iterable[Game], player: int, opponent: int
) -> Iterator[tuple[int, Game, float]]:
    """(position, game, the player's score) of each game between the two; others left out."""
    for index, game in enumerate(games):
        if {game.first, game.second} == {player, opponent}:
            yield index, game, game.score if game.first == player else 1 - game.score


def player_scores_by_prompt(
    games: Iterable[Game], *, player: int, opponent: int
) -> list[list[float]]:
    """The player's scores against the opponent, grouped by prompt (a game of no prompt on
    its own), for effective_games."""
    groups: dict[object, list[float]] = {}
    for index, game, score in _player_scores(games, player, opponent):
        key = ("p", game.prompt) if game.prompt is not None else index
        groups.setdefault(key, []).append(score)
    return list(groups.values())


def win_counts(games: Iterable[Game], *, player: int, opponent: int) -> tuple[int, int, int]:
    """(wins, losses, ties) of `player` in its games against `opponent`; games between
    others are left out. A score of 1 for the player is a win, 0 a loss, one half a tie."""
    wins = losses = ties = 0
    for _, _, score in _player_scores(games, player, opponent):
        wins += score == 1.0
        losses += score == 0.0
        ties += score == 0.5
    return wins, losses, ties


@dataclass(frozen=True)
class Rating:
    player: int
    rating: float  # Elo-like scale: 400 points = 10:1 odds; the anchor sits at 1000
    low: float  # bootstrap percentile interval
    high: float
    games: int
    score: float  # share of points won (ties half)


ELO_SCALE = 400 / math.log(10)


def _bt_strengths(games: list[Game], players: list[int], iterations: int = 500) -> dict[int, float]:
    """Bradley-Terry log-strengths by Hunter's MM algorithm, ties as half a win each. Every pair
    that met also gets one virtual tie, a mild prior that keeps an unbeaten player finite."""
    wins = dict.fromkeys(players, 0.0)
    meetings: dict[tuple[int, int], float] = {}
    for game in games:
        wins[game.first] += game.score
        wins[game.second] += 1 - game.score
        key = (min(game.first, game.second), max(game.first, game.second))
        meetings[key] = meetings.get(key, 0.0) + 1
    for a, b in list(meetings):
        wins[a] += 0.5
        wins[b] += 0.5
        meetings[(a, b)] += 1
    strength = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        denominators = dict.fromkeys(players, 0.0)
        for (a, b), n in meetings.items():
            share = n / (strength[a] + strength[b])
            denominators[a] += share
            denominators[b] += share
        updated = {
            p: (wins[p] / denominators[p] if denominators[p] > 0 else strength[p]) for p in players
        }
        log_mean = sum(math.log(v) for v in updated.values()) / len(updated)
        updated = {p: v / math.exp(log_mean) for p, v in updated.items()}
        converged = max(abs(math.log(updated[p] / strength[p])) for p in players) < 1e-9
        strength = updated
        if converged:
            break
    return {p: math.log(v) for p, v in strength.items()}


def bradley_terry(
    games: list[Game],
    *,
    anchor: int | None = None,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Rating]:
    """Ratings of every player in `games`, best first, with bootstrap percentile intervals
    (games resampled with replacement `bootstrap` times). `anchor` (default: the first player
    seen) is rated 1000 in every fit, so the others read as differences from it."""
    players = list(dict.fromkeys(p for g in games for p in (g.first, g.second)))
    if not players:
        return []
    anchor = anchor if anchor in players else players[0]

    def ratings_of(sample: list[Game]) -> dict[int, float]:
        strengths = _bt_strengths(sample, players)
        return {p: 1000 + ELO_SCALE * (s - strengths[anchor]) for p, s in strengths.items()}

    point = ratings_of(games)
    rng = random.Random(seed)
    draws: dict[int, list[float]] = {p: [] for p in players}
    for _ in range(bootstrap):
        sample = [games[rng.randrange(len(games))] for _ in games]
        seen = {p for g in sample for p in (g.first, g.second)}
        fitted = ratings_of(sample)
        for p in players:
            if p in seen:  # a player absent from a resample tells nothing about itself
                draws[p].append(fitted[p])
    tail = (1 - confidence) / 2
    played = dict.fromkeys(players, 0)
    points = dict.fromkeys(players, 0.0)
    for g in games:
        played[g.first] += 1
        played[g.second] += 1
        points[g.first] += g.score
        points[g.second] += 1 - g.score
    result = []
    for p in players:
        values = sorted(draws[p]) or [point[p]]
        low = values[int(tail * (len(values) - 1))]
        high = values[math.ceil((1 - tail) * (len(values) - 1))]
        result.append(
            Rating(
                player=p,
                rating=point[p],
                low=min(low, point[p]),
                high=max(high, point[p]),
                games=played[p],
                score=points[p] / played[p],
            )
        )
    return sorted(result, key=lambda r: -r.rating)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "better", "worse", "undecided"
    win_rate: WinRate
    more_needed: int | None  # head-to-heads that would likely settle it; None when even


def head_to_head_verdict(
    *,
    wins: int,
    losses: int,
    ties: int,
    confidence: float = 0.95,
    effective_n: float | None = None,
) -> Verdict:
    """Is the new policy better than its parent? "better" when the whole interval of its win
    rate is above one half, "worse" when below; otherwise how many more judged head-to-heads,
    at the win rate seen so far, would bring the interval clear of one half."""
    rate = win_rate(
        wins=wins, losses=losses, ties=ties, confidence=confidence, effective_n=effective_n
    )
    if rate.n and rate.low > 0.5:
        return Verdict("better", rate, 0)
    if rate.n and rate.high < 0.5:
        return Verdict("worse", rate, 0)
    gap = abs(rate.rate - 0.5)
    if rate.n == 0 or gap < 1e-9:
        return Verdict("undecided", rate, None)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    # At the games' design effect (several a prompt), each further game is worth less.
    design_effect = rate.n / rate.effective_n if rate.effective_n else 1.0
    needed = math.ceil(design_effect * z * z * rate.rate * (1 - rate.rate) / (gap * gap))
    return Verdict("undecided", rate, max(needed - rate.n, 1))
