"""Recovery of jobs whose worker died."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alignment.jobs import job_requeue_stale
from alignment.models import GenerationJob, TrainingRun
from alignment.services.rounds import generation_dispatch
from alignment.services.training import training_run_dispatch


def jobs_recover() -> list[tuple[GenerationJob | TrainingRun, str]]:
    """Find jobs whose worker died (no heartbeat for JOB_HEARTBEAT_STALE_SECONDS) and hand
    them to the next worker, or fail them after JOB_MAX_ATTEMPTS attempts. A requeued
    training run resumes from its newest complete checkpoint; a generation job does the
    prompts it had not done. Runs every minute (Celery beat); returns what it changed."""
    heartbeat_before = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_STALE_SECONDS)
    changed: list[tuple[GenerationJob | TrainingRun, str]] = []
    kinds: list[tuple[type[GenerationJob] | type[TrainingRun], Callable[[int], None]]] = [
        (GenerationJob, generation_dispatch),
        (TrainingRun, training_run_dispatch),
    ]
    with transaction.atomic():
        for model, dispatch in kinds:
            for job, outcome in job_requeue_stale(
                model, heartbeat_before=heartbeat_before, max_attempts=settings.JOB_MAX_ATTEMPTS
            ):
                if outcome == "requeued":
                    dispatch(job.pk)
                changed.append((job, outcome))
    return changed
