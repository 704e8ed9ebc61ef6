"""The round review a lead signs off before training: what the round's data is and how it\nchanged since the last snapshot."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.db.models import Count

from alignment.models import Round, RoundSignOff
from alignment.selectors.rounds import RoundComparisonCounts, round_comparison_counts
from annotate.models import (
    DatasetSnapshot,
    PreferencePair,
    Project,
)
from annotate.quality import QualityFilters, QualityReport, project_quality
from annotate.services.snapshots import SnapshotFilters, snapshot_pairs


@dataclass(frozen=True)
class SnapshotChanges:
    """The preference pairs a cumulative run would train on now, against the last snapshot:
    new ones (by round), ones gone (sent back, re-judged to a tie), and ones whose label
    turned round. Pairs are told apart by their two responses."""

    last: DatasetSnapshot | None
    now: int
    added: int
    removed: int
    flipped: int
    added_by_round: list[tuple[int, int]]


@dataclass(frozen=True)
class RoundReview:
    round: Round
    comparisons: RoundComparisonCounts
    pairs_by_kind: dict[str, int]
    quality: QualityReport
    coverage: dict[str, Any] | None  # the stored statistics of the round's prompts
    changes: SnapshotChanges
    sign_offs: list[RoundSignOff]

    def headline(self) -> dict[str, Any]:
        """What a sign-off records of the review."""
        q = self.quality
        return {
            "comparisons": self.comparisons.created,
            "complete": self.comparisons.complete,
            "pairs": self.pairs_by_kind,
            "judgments": q.judgments,
            "alpha": q.alpha.value,
            "alpha_n": q.alpha.n,
            "left_chosen": q.overall.left_chosen.value,
            "chosen_longer": q.overall.chosen_longer.value,
            "prompts_covered": (self.coverage or {}).get("prompts"),
            "added_since_snapshot": self.changes.added,
            "removed_since_snapshot": self.changes.removed,
            "flipped_since_snapshot": self.changes.flipped,
            "last_snapshot": self.changes.last.pk if self.changes.last else None,
        }


def round_review_get(*, project: Project, number: int) -> RoundReview | None:
    round_ = Round.objects.filter(project=project, number=number).select_related("policy").first()
    if round_ is None:
        return None
    kinds = dict(
        PreferencePair.objects.filter(project=project, comparison__round_number=number)
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    coverage = project.coverage.filter(scope=f"round:{number}").first()
    return RoundReview(
        round=round_,
        comparisons=round_comparison_counts(project=project, round_number=number),
        pairs_by_kind={str(k): n for k, n in sorted(kinds.items())},
        quality=project_quality(project=project, filters=QualityFilters(round_number=number)),
        coverage=coverage.data if coverage else None,
        changes=snapshot_changes(project=project),
        sign_offs=list(round_.sign_offs.select_related("signed_off_by")),
    )


def snapshot_changes(*, project: Project) -> SnapshotChanges:
    last = DatasetSnapshot.objects.filter(project=project).order_by("-id").first()
    current = snapshot_pairs(project=project, filters=SnapshotFilters())
    now = {(p.chosen_id, p.rejected_id): p.comparison.round_number for p in current}
    before: set[tuple[int, int]] = set()
    if last is not None:
        before = {(int(c), int(r)) for c, r, *_ in (last.responses or {}).values()}
    added = [key for key in now if key not in before and key[::-1] not in before]
    flipped = sum(1 for key in now if key not in before and key[::-1] in before)
    removed = sum(1 for key in before if key not in now and key[::-1] not in now)
    by_round = Counter(now[key] for key in added)
    return SnapshotChanges(
        last=last,
        now=len(now),
        added=len(added),
        removed=removed,
        flipped=flipped,
        added_by_round=sorted(by_round.items()),
    )
