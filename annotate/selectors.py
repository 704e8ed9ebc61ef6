"""Reads of the human side, shaped for the pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, F, Q

from annotate.access import project_role, projects_for_user
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Guideline,
    ImportJob,
    Judgment,
    JudgmentKind,
    PairKind,
    PreferencePair,
    Project,
    Prompt,
    Split,
)
from annotate.quality import QualityReport, project_quality
from annotate.queue import AVAILABLE_CAP, remaining_for_annotator
from annotate.sql import access as sql_access


@dataclass(frozen=True)
class ProjectCard:
    project: Project
    role: str
    remaining: int  # counted up to AVAILABLE_CAP + 1

    @property
    def remaining_label(self) -> str:
        return remaining_label(self.remaining)


def remaining_label(remaining: int) -> str:
    """A count of available pairs as the pages show it: exact up to the cap, "50+" beyond."""
    return f"{AVAILABLE_CAP}+" if remaining > AVAILABLE_CAP else str(remaining)


def project_cards_for_user(*, user: User | AnonymousUser) -> list[ProjectCard]:
    cards = []
    for project in projects_for_user(user=user):
        role = project_role(user=user, project=project)
        assert isinstance(user, User)
        cards.append(
            ProjectCard(
                project=project,
                role=role.value if role else "",
                remaining=remaining_for_annotator(project=project, annotator=user),
            )
        )
    return cards


@dataclass(frozen=True)
class AnnotatorProgress:
    """Where an annotator stands in a project: what the pair page shows with every pair."""

    judged: int  # live votes
    remaining: int  # pairs they can be handed now (the held one included), up to the cap + 1
    quota: int | None
    guideline_version: int | None  # the project's current guidelines, None before any
    guideline_seen_version: int | None  # None when not a member (a site admin)

    @property
    def remaining_label(self) -> str:
        return remaining_label(self.remaining)


def annotator_progress(
    *, project: Project, annotator: User, remaining: int | None = None
) -> AnnotatorProgress:
    """`remaining`: the count of available pairs when the caller has it already (a claim
    counts them as it looks for one)."""
    judged, guideline_version, quota, seen = sql_access.annotator_counts(
        project_id=project.pk, annotator_id=annotator.pk
    )
    return AnnotatorProgress(
        judged=judged,
        remaining=(
            remaining
            if remaining is not None
            else remaining_for_annotator(project=project, annotator=annotator)
        ),
        quota=quota,
        guideline_version=guideline_version,
        guideline_seen_version=seen,
    )


@dataclass(frozen=True)
class ProjectOverview:
    prompts: int
    prompts_train: int
    prompts_eval: int
    comparisons: int
    comparisons_open: int
    comparisons_complete: int
    judgments: int
    pairs: int
    pairs_by_kind: dict[str, int]
    quality: QualityReport
    rounds: list[dict[str, Any]]


def project_overview(*, project: Project) -> ProjectOverview:
    prompts = Prompt.objects.filter(project=project).aggregate(
        total=Count("id"),
        train=Count("id", filter=Q(split=Split.TRAIN)),
        eval=Count("id", filter=Q(split=Split.EVAL)),
    )
    comparisons = Comparison.objects.filter(project=project).aggregate(
        total=Count("id"),
        open=Count("id", filter=Q(status=ComparisonStatus.OPEN)),
        complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
    )
    kinds = dict(
        PreferencePair.objects.filter(project=project)
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    rounds = [
        dict(row)
        for row in Comparison.objects.filter(project=project)
        .values("round_number", "purpose")
        .annotate(
            comparisons=Count("id"),
            complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
        )
        .order_by("round_number", "purpose")
    ]
    return ProjectOverview(
        prompts=prompts["total"],
        prompts_train=prompts["train"],
        prompts_eval=prompts["eval"],
        comparisons=comparisons["total"],
        comparisons_open=comparisons["open"],
        comparisons_complete=comparisons["complete"],
        judgments=Judgment.objects.filter(
            comparison__project=project, kind=JudgmentKind.VOTE, superseded_at__isnull=True
        ).count(),
        pairs=sum(kinds.values()),
        pairs_by_kind={kind.label: kinds.get(kind.value, 0) for kind in PairKind},
        quality=project_quality(project=project),
        rounds=rounds,
    )


# Review ---------------------------------------------------------------------------------------

REVIEW_REASONS = {
    "split": "Split votes",
    "gold": "Gold misses",
    "annotator": "Low-agreement annotators",
    "sent_back": "Sent back",
    "adjudicated": "Adjudicated",
}
# An annotator whose votes agree with the others' majority less often than this, over at
# least LOW_AGREEMENT_MIN_VOTES votes, has their comparisons listed for review.
LOW_AGREEMENT = 0.6
LOW_AGREEMENT_MIN_VOTES = 5
REVIEW_LIST_LIMIT = 200


@dataclass(frozen=True)
class ReviewItem:
    comparison: Comparison
    votes: dict[str, int]
    agreement: float | None


def low_agreement_annotators(*, report: QualityReport) -> list[int]:
    return [
        a.annotator_id
        for a in report.annotators
        if a.bias.with_majority.n >= LOW_AGREEMENT_MIN_VOTES
        and (a.bias.with_majority.value or 0.0) < LOW_AGREEMENT
    ]


def review_queue(*, project: Project, reason: str) -> list[ReviewItem]:
    """Comparisons a reviewer should look at, for one of REVIEW_REASONS."""
    adjudicated = Judgment.objects.filter(
        kind=JudgmentKind.ADJUDICATION, superseded_at__isnull=True
    ).values("comparison_id")
    base = Comparison.objects.filter(project=project).select_related("prompt", "pair")
    if reason == "split":
        queryset = base.filter(
            status=ComparisonStatus.COMPLETE, gold_choice="", pair__agreement__lt=1.0
        ).exclude(pk__in=adjudicated)
    elif reason == "gold":
        misses = Judgment.objects.filter(
            comparison__project=project,
            comparison__gold_choice__gt="",
            kind=JudgmentKind.VOTE,
            superseded_at__isnull=True,
        ).exclude(choice=F("comparison__gold_choice"))
        queryset = base.filter(pk__in=misses.values("comparison_id"))
    elif reason == "annotator":
        annotators = low_agreement_annotators(report=project_quality(project=project))
        queryset = base.filter(
            gold_choice="",
            judgments__annotator_id__in=annotators,
            judgments__superseded_at__isnull=True,
        ).exclude(pk__in=adjudicated)
    elif reason == "sent_back":
        queryset = base.filter(sent_back_count__gt=0)
    elif reason == "adjudicated":
        queryset = base.filter(pk__in=adjudicated)
    else:
        return []
    comparisons = list(queryset.distinct().order_by("-id")[:REVIEW_LIST_LIMIT])
    counts: dict[int, dict[str, int]] = {c.pk: {} for c in comparisons}
    for comparison_id, choice, n in (
        Judgment.objects.filter(comparison__in=comparisons, superseded_at__isnull=True)
        .filter(kind=JudgmentKind.VOTE)
        .values_list("comparison_id", "choice")
        .annotate(n=Count("id"))
        .values_list("comparison_id", "choice", "n")
    ):
        counts[comparison_id][Choice(choice).label] = n
    return [
        ReviewItem(
            comparison=c,
            votes=counts[c.pk],
            agreement=getattr(getattr(c, "pair", None), "agreement", None),
        )
        for c in comparisons
    ]


@dataclass(frozen=True)
class ComparisonReview:
    comparison: Comparison
    judgments: list[Judgment]
    pair: PreferencePair | None
    adjudication: Judgment | None


def comparison_review(*, comparison: Comparison) -> ComparisonReview:
    judgments = list(
        comparison.judgments.select_related("annotator", "guideline").order_by("created_at", "id")
    )
    live_adjudications = [
        j for j in judgments if j.kind == JudgmentKind.ADJUDICATION and j.superseded_at is None
    ]
    return ComparisonReview(
        comparison=comparison,
        judgments=judgments,
        pair=PreferencePair.objects.filter(comparison=comparison).first(),
        adjudication=live_adjudications[-1] if live_adjudications else None,
    )


def judgments_of_annotator(
    *, project: Project, annotator: User, limit: int = 100
) -> list[Judgment]:
    """An annotator's own judgments, newest first: all they may see of anyone's judgments."""
    return list(
        Judgment.objects.filter(comparison__project=project, annotator=annotator)
        .exclude(kind=JudgmentKind.ADJUDICATION)
        .select_related("comparison__prompt", "guideline")
        .order_by("-created_at", "-id")[:limit]
    )


def guidelines_of_project(*, project: Project) -> list[Guideline]:
    return list(project.guidelines.select_related("created_by").order_by("-version"))


def export_counts(*, project: Project) -> dict[str, int]:
    """Pairs by kind and by prompt split: what the export page offers."""
    rows = (
        PreferencePair.objects.filter(project=project)
        .values_list("kind", "comparison__prompt__split")
        .annotate(n=Count("id"))
        .values_list("kind", "comparison__prompt__split", "n")
    )
    counts: dict[str, int] = {}
    for kind, split, n in rows:
        counts[f"{kind}_{split}"] = counts.get(f"{kind}_{split}", 0) + n
        counts[kind] = counts.get(kind, 0) + n
    return counts


def import_jobs_recent(*, project: Project, limit: int = 5) -> list[ImportJob]:
    """The project's latest imports by a worker, newest first (the import page lists them)."""
    return list(ImportJob.objects.filter(project=project).order_by("-id")[:limit])
