"""The judges page: each judge with its latest pass."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import Http404

from alignment.models import Judge, JudgeJob
from annotate.models import Project


@dataclass(frozen=True)
class JudgeRow:
    judge: Judge
    last: JudgeJob | None
    passes: int


def judges_for_project(*, project: Project) -> list[JudgeRow]:
    judges = list(Judge.objects.filter(project=project).select_related("user").order_by("name"))
    latest: dict[int, JudgeJob] = {}
    counts: dict[int, int] = {}
    for job in JudgeJob.objects.filter(judge__in=judges).order_by("id"):
        latest[job.judge_id] = job
        counts[job.judge_id] = counts.get(job.judge_id, 0) + 1
    return [JudgeRow(judge=j, last=latest.get(j.pk), passes=counts.get(j.pk, 0)) for j in judges]


def access_judge(*, project: Project, judge_id: int) -> Judge:
    """A judge of a project the caller already passed `access_project` for; 404 otherwise."""
    judge = Judge.objects.select_related("project", "user").filter(project=project, pk=judge_id)
    found = judge.first()
    if found is None:
        raise Http404("No such judge.")
    return found
