"""Reads of training runs: the list, one run with its metric points and progress, its\ncontradictions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.http import Http404
from django.utils import timezone

from alignment.models import TrainingRun
from alignment.selectors.rounds import float_or_none
from annotate.models import (
    PairKind,
    PreferencePair,
    Project,
    Purpose,
    Response,
    Split,
)


def preference_pairs_available_count(*, project: Project) -> int:
    """Pairs a snapshot with the default filters would take now.

    Mirrors `annotate.services.snapshots.snapshot_pairs` (preference kind, training purpose, train split).
    """
    return PreferencePair.objects.filter(
        project=project,
        kind=PairKind.PREFERENCE,
        comparison__purpose=Purpose.TRAIN,
        comparison__prompt__split=Split.TRAIN,
    ).count()


@dataclass
class TrainingRunRow:
    run: TrainingRun
    steps_done: int
    steps_total: int
    final_loss: float | None


def training_run_list_for_project(*, project: Project) -> list[TrainingRunRow]:
    runs = (
        TrainingRun.objects.filter(project=project)
        .select_related("base_version", "output_version", "snapshot")
        .order_by("-id")
    )
    return [
        TrainingRunRow(
            run=run,
            steps_done=int((run.summary or {}).get("steps") or run.progress_done),
            steps_total=run.progress_total,
            final_loss=_final_loss(run),
        )
        for run in runs
    ]


def access_training_run(*, project: Project, run_id: int) -> TrainingRun:
    """A run of a project the caller already passed `access_project` for; 404 otherwise."""
    run = training_run_get(project=project, run_id=run_id)
    if run is None:
        raise Http404("No such training run.")
    return run


def training_run_get(*, project: Project, run_id: int) -> TrainingRun | None:
    return (
        TrainingRun.objects.filter(project=project, pk=run_id)
        .select_related(
            "base_version",
            "output_version",
            "snapshot",
            "created_by",
            "sign_off__round",
            "sign_off__signed_off_by",
        )
        .first()
    )


POINT_KEYS = (
    "step",
    "epoch",
    "loss",
    "reward_accuracy",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
    "tokens_per_s",
    "memory_mb",
    "eta_s",
    "t",
)


def training_run_points(*, run: TrainingRun) -> list[dict[str, Any]]:
    """The run's metric series as recorded by the worker, one point per logged step."""
    return [
        {key: point.get(key) for key in POINT_KEYS}
        for point in (run.metrics or [])
        if isinstance(point, dict)
    ]


@dataclass
class TrainingRunProgress:
    run: TrainingRun
    latest: dict[str, Any] | None
    elapsed_s: float | None
    heartbeat_age_s: float | None


def training_run_progress(
    *, run: TrainingRun, now: dt.datetime | None = None
) -> TrainingRunProgress:
    now = now or timezone.now()
    points = training_run_points(run=run)
    elapsed: float | None = None
    if run.started_at is not None:
        elapsed = ((run.finished_at or now) - run.started_at).total_seconds()
    heartbeat_age: float | None = None
    if run.heartbeat_at is not None and run.is_active:
        heartbeat_age = max(0.0, (now - run.heartbeat_at).total_seconds())
    return TrainingRunProgress(
        run=run,
        latest=points[-1] if points else None,
        elapsed_s=elapsed,
        heartbeat_age_s=heartbeat_age,
    )


@dataclass(frozen=True)
class ContradictionRow:
    comparison_id: int | None
    margin: float
    prompt: str
    chosen: str  # as the run was trained on it
    rejected: str
    open_again: bool  # sent back since: no preference pair from it now


def training_run_contradictions(*, run: TrainingRun) -> list[ContradictionRow]:
    """The training pairs the run's policy ranks against their human label, most
    disagreeing first, with the texts the run was trained on."""
    listed = (run.summary or {}).get("contradictions") or []
    frozen = {int(k): v for k, v in (run.snapshot.responses or {}).items()}
    response_ids = {r for c in listed for r in frozen.get(c["pair"], [])[:2]}
    responses = Response.objects.select_related("prompt").in_bulk(response_ids)
    paired_now = set(
        PreferencePair.objects.filter(
            comparison_id__in=[c["comparison"] for c in listed if c["comparison"]]
        ).values_list("comparison_id", flat=True)
    )
    rows = []
    for c in listed:
        chosen_id, rejected_id = (frozen.get(c["pair"]) or [None, None])[:2]
        chosen, rejected = responses.get(chosen_id), responses.get(rejected_id)
        prompt = chosen.prompt.messages[-1]["content"] if chosen is not None else ""
        rows.append(
            ContradictionRow(
                comparison_id=c["comparison"],
                margin=float(c["margin"]),
                prompt=prompt,
                chosen=chosen.text if chosen is not None else "",
                rejected=rejected.text if rejected is not None else "",
                open_again=c["comparison"] is not None and c["comparison"] not in paired_now,
            )
        )
    return rows


def _final_loss(run: TrainingRun) -> float | None:
    value = (run.summary or {}).get("train_loss")
    if value is not None:
        return float_or_none(value)
    for point in reversed(run.metrics or []):
        if isinstance(point, dict) and point.get("loss") is not None:
            return float_or_none(point["loss"])
    return None
