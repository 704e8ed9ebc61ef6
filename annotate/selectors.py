"""Reads of the human side, shaped for the pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Q

from annotate.access import project_role, projects_for_user
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    PairKind,
    PreferencePair,
    Project,
    Prompt,
    Split,
)
from annotate.quality import QualitySummary, project_quality
from annotate.queue import remaining_for_annotator


@dataclass(frozen=True)
class ProjectCard:
    project: Project
    role: str
    remaining: int


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
    judged: int
    remaining: int
    quota: int | None


def annotator_progress(*, project: Project, annotator: User) -> AnnotatorProgress:
    membership = project.memberships.filter(user=annotator).first()
    return AnnotatorProgress(
        judged=Judgment.objects.filter(comparison__project=project, annotator=annotator).count(),
        remaining=remaining_for_annotator(project=project, annotator=annotator),
        quota=membership.quota if membership else None,
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
    quality: QualitySummary
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
        judgments=Judgment.objects.filter(comparison__project=project).count(),
        pairs=sum(kinds.values()),
        pairs_by_kind={kind.label: kinds.get(kind.value, 0) for kind in PairKind},
        quality=project_quality(project=project),
        rounds=rounds,
    )
