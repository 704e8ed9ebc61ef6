"""Head-to-heads: the leaderboard of model versions and each round's verdict."""

from __future__ import annotations

from dataclasses import dataclass

from alignment.engine.stats import (
    Game,
    Rating,
    Verdict,
    bradley_terry,
    effective_games,
    head_to_head_verdict,
    player_scores_by_prompt,
    win_counts,
)
from alignment.models import ModelVersion, Round
from annotate.models import (
    PairKind,
    PreferencePair,
    Project,
    Purpose,
)


@dataclass
class HeadToHead:
    """One round's blind head-to-head: its policy against its parent on held-out prompts."""

    round_number: int
    new: ModelVersion
    parent: ModelVersion
    verdict: Verdict


@dataclass
class LeaderboardRow:
    version: ModelVersion
    rating: Rating


@dataclass
class Leaderboard:
    rows: list[LeaderboardRow]
    head_to_heads: list[HeadToHead]  # newest round first
    games: int


def _head_to_head_games(*, project: Project) -> list[tuple[int, Game]]:
    """(round number, game between model versions) of every judged head-to-head comparison,
    by its aggregated outcome: the winner's point, or half each for a tie or both bad."""
    version_of = dict(ModelVersion.objects.filter(project=project).values_list("policy_id", "id"))
    pairs = PreferencePair.objects.filter(
        project=project, comparison__purpose=Purpose.EVAL
    ).values_list(
        "kind",
        "chosen_id",
        "comparison__round_number",
        "comparison__response_a_id",
        "comparison__response_a__policy_id",
        "comparison__response_b__policy_id",
        "comparison__prompt_id",
    )
    games = []
    for kind, chosen_id, round_number, a_id, a_policy, b_policy, prompt in pairs.order_by("id"):
        first, second = version_of.get(a_policy), version_of.get(b_policy)
        if first is None or second is None or first == second:
            continue  # responses of no model version (imported), or a version against itself
        score = (1.0 if chosen_id == a_id else 0.0) if kind == PairKind.PREFERENCE else 0.5
        games.append((round_number, Game(first=first, second=second, score=score, prompt=prompt)))
    return games


def leaderboard_get(*, project: Project, bootstrap: int = 200) -> Leaderboard:
    """A Bradley-Terry rating of every model version from all head-to-heads (the base version
    anchored at 1000), and each round's verdict on its policy against its parent."""
    games = _head_to_head_games(project=project)
    versions = {v.pk: v for v in ModelVersion.objects.filter(project=project)}
    root = next(
        (v.pk for v in sorted(versions.values(), key=lambda v: v.pk) if v.parent_id is None), None
    )
    ratings = bradley_terry([g for _, g in games], anchor=root, bootstrap=bootstrap)
    return Leaderboard(
        rows=[LeaderboardRow(version=versions[r.player], rating=r) for r in ratings],
        head_to_heads=_round_verdicts(project=project, games=games),
        games=len(games),
    )


def _round_verdicts(*, project: Project, games: list[tuple[int, Game]]) -> list[HeadToHead]:
    """Each round's verdict on its policy against its parent, newest round first."""
    by_round: dict[int, list[Game]] = {}
    for round_number, game in games:
        by_round.setdefault(round_number, []).append(game)
    head_to_heads = []
    rounds = Round.objects.filter(project=project, number__in=by_round).select_related(
        "policy__parent"
    )
    for round_ in sorted(rounds, key=lambda r: -r.number):
        new, parent = round_.policy, round_.policy.parent
        if parent is None:
            continue
        played = by_round[round_.number]
        wins, losses, ties = win_counts(played, player=new.pk, opponent=parent.pk)
        # Several samples of one prompt are not independent games: the interval counts them
        # at their effective number.
        effective = effective_games(
            player_scores_by_prompt(played, player=new.pk, opponent=parent.pk)
        )
        head_to_heads.append(
            HeadToHead(
                round_number=round_.number,
                new=new,
                parent=parent,
                verdict=head_to_head_verdict(
                    wins=wins, losses=losses, ties=ties, effective_n=effective
                ),
            )
        )
    return head_to_heads


def round_head_to_head(*, project: Project, number: int) -> HeadToHead | None:
    """The verdict of one round's head-to-head, when it had one (no ratings are fitted)."""
    games = [(n, g) for n, g in _head_to_head_games(project=project) if n == number]
    return next(iter(_round_verdicts(project=project, games=games)), None)
