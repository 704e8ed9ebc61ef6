"""Reads of rounds: the list, one round with its generation jobs and comparisons, the drift of\neach round's policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q

from alignment.engine.drift import Drift, drift_of
from alignment.models import GenerationJob, ModelVersion, Round
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Project,
    Response,
    Split,
)


@dataclass
class RoundRow:
    round: Round
    prompt_count: int
    comparisons_created: int
    jobs: list[GenerationJob]


def round_list_for_project(*, project: Project) -> list[RoundRow]:
    """The project's rounds, newest first, with their prompt, comparison and job counts."""
    rounds = (
        Round.objects.filter(project=project)
        .select_related("policy")
        .annotate(prompt_count=Count("prompts", distinct=True))
        .prefetch_related("generation_jobs__model_version")
        .order_by("-number")
    )
    created = dict(
        Comparison.objects.filter(project=project)
        .items()
        .values_list("round_number")
        .annotate(n=Count("id"))
        .values_list("round_number", "n")
    )
    return [
        RoundRow(
            round=round_,
            prompt_count=round_.prompt_count,
            comparisons_created=created.get(round_.number, 0),
            jobs=sorted(round_.generation_jobs.all(), key=lambda job: job.pk),
        )
        for round_ in rounds
    ]


@dataclass
class GenerationJobRow:
    job: GenerationJob
    tokens_per_s: float | None


@dataclass
class RoundComparisonCounts:
    created: int
    judged: int  # with at least one judgment
    complete: int  # with every judgment the project's overlap asks for
    judgments: int


@dataclass
class RoundDetail:
    round: Round
    train_prompt_count: int
    eval_prompt_count: int
    jobs: list[GenerationJobRow]
    comparisons: RoundComparisonCounts

    @property
    def any_active(self) -> bool:
        return any(row.job.is_active for row in self.jobs)


def round_detail_get(*, project: Project, number: int) -> RoundDetail | None:
    round_ = (
        Round.objects.filter(project=project, number=number)
        .select_related("policy__parent", "created_by")
        .first()
    )
    if round_ is None:
        return None
    splits = dict(
        round_.prompts.values_list("split").annotate(n=Count("id")).values_list("split", "n")
    )
    jobs = list(round_.generation_jobs.select_related("model_version").order_by("id"))
    return RoundDetail(
        round=round_,
        train_prompt_count=splits.get(Split.TRAIN, 0),
        eval_prompt_count=splits.get(Split.EVAL, 0),
        jobs=[GenerationJobRow(job=job, tokens_per_s=_tokens_per_s(job)) for job in jobs],
        comparisons=round_comparison_counts(project=project, round_number=number),
    )


def round_comparison_counts(*, project: Project, round_number: int) -> RoundComparisonCounts:
    counts = (
        Comparison.objects.filter(project=project, round_number=round_number).items()
    ).aggregate(
        created=Count("id"),
        judged=Count("id", filter=Q(judgment_count__gt=0)),
        complete=Count("id", filter=Q(status=ComparisonStatus.COMPLETE)),
    )
    judgments = (
        Comparison.objects.filter(project=project, round_number=round_number)
        .items()
        .aggregate(n=Count("judgments"))["n"]
    )
    return RoundComparisonCounts(
        created=counts["created"] or 0,
        judged=counts["judged"] or 0,
        complete=counts["complete"] or 0,
        judgments=judgments or 0,
    )


def _tokens_per_s(job: GenerationJob) -> float | None:
    """The latest throughput: the last progress point while running, the summary when done."""
    if job.is_active:
        for point in reversed(job.metrics or []):
            if isinstance(point, dict) and point.get("tokens_per_s") is not None:
                return float_or_none(point["tokens_per_s"])
    summary_value = (job.summary or {}).get("tokens_per_s")
    if summary_value is not None:
        return float_or_none(summary_value)
    for point in reversed(job.metrics or []):
        if isinstance(point, dict) and point.get("tokens_per_s") is not None:
            return float_or_none(point["tokens_per_s"])
    return None


def float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class RoundDrift:
    round_number: int
    policy: ModelVersion
    drift: Drift


def round_drift(*, project: Project) -> list[RoundDrift]:
    """Per round, oldest first: how the round's own policy's responses read (length,
    refusals, repetition, truncation), so a drift across rounds shows early."""
    rows = []
    rounds = Round.objects.filter(project=project).select_related("policy").order_by("number")
    for round_ in rounds:
        responses = Response.objects.filter(
            policy_id=round_.policy.policy_id, generation__job__round=round_
        ).values_list("text", "finish_reason")
        texts = [text for text, _ in responses]
        drift = drift_of(texts, [reason for _, reason in responses])
        if drift is not None:
            rows.append(RoundDrift(round_number=round_.number, policy=round_.policy, drift=drift))
    return rows
