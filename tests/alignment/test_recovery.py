"""A job whose worker dies: found by its stale heartbeat, resumed by the next worker, failed
after its attempts; the dead worker's writes fenced off. (The real kill of a worker process
is in tests/integration/test_worker_loop.py.)"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from alignment.models import GenerationJob, ModelVersion, TrainingRun
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from alignment.workers import generation as generation_worker
from alignment.workers import training as training_worker
from alignment.workers.generation import generation_job_execute
from alignment.workers.training import training_run_execute
from annotate.models import Project, Response
from core.errors import ValidationFailed
from core.jobs import JobLost, job_claim, job_heartbeat, job_succeed, jobs_recover
from core.models import JobStatus
from tests.factories import (
    comparison_make,
    generation_job_make,
    judged_round_make,
    training_run_make,
)

pytestmark = pytest.mark.django_db


class WorkerDied(BaseException):
    """What a killed worker amounts to for the job: it stops, and records nothing."""


def _silence(job: GenerationJob | TrainingRun, seconds: float = 3600) -> None:
    type(job).objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )


def _die_at(monkeypatch: pytest.MonkeyPatch, *, progress_done: int) -> None:
    real = training_worker.job_heartbeat  # one function, imported by both workers

    def heartbeat(job: Any, **kwargs: Any) -> bool:
        alive = real(job, **kwargs)
        if kwargs["fields"].get("progress_done") == progress_done:
            raise WorkerDied
        return alive

    for worker in (generation_worker, training_worker):
        monkeypatch.setattr(worker, "job_heartbeat", heartbeat)


def test_a_run_whose_worker_died_resumes_from_its_checkpoint_with_its_steps_continuing(
    tiny_project: Project,
    annotator: User,
    settings,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks,
) -> None:
    settings.TRAINING_CHECKPOINT_STEPS = 2
    judged_round_make(tiny_project, annotator)
    run = training_run_make(tiny_project, epochs=3, batch_size=1, max_length=96)
    with monkeypatch.context() as patch:
        _die_at(patch, progress_done=5)
        with pytest.raises(WorkerDied):
            training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.RUNNING and run.attempts == 1  # as a dead worker leaves it
    assert [p["step"] for p in run.metrics] == [1, 2, 3, 4, 5]
    assert jobs_recover() == []  # its heartbeat is recent: the worker may be busy, not dead

    _silence(run)
    with django_capture_on_commit_callbacks() as dispatched:
        (changed,) = jobs_recover()
    assert changed[0].pk == run.pk and changed[1] == "requeued" and len(dispatched) == 1
    run.refresh_from_db()
    assert run.status == JobStatus.QUEUED and "queued again for attempt 2 of 3" in run.log_tail

    training_run_execute(run_id=run.pk)  # the next worker
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.error
    total = run.summary["steps"]
    assert total == run.progress_total and total > 5
    # One point per step: steps 1-4 from the first attempt, 5 on redone after checkpoint 4.
    assert [p["step"] for p in run.metrics] == list(range(1, total + 1))
    assert run.metrics[4]["checkpoint"] == 4
    assert run.summary["attempts"] == 2 and run.summary["resumed_from_step"] == 4
    assert "attempt 2: resumed from the checkpoint at step 4" in run.log_tail
    assert ModelVersion.objects.filter(produced_by=run).exists()
    assert not (Path(run.output_dir) / "checkpoints").exists()  # done: nothing left to resume


def test_a_job_that_keeps_losing_its_worker_fails_after_its_attempts(
    tiny_project: Project, settings
) -> None:
    settings.JOB_MAX_ATTEMPTS = 2
    job = generation_job_make(tiny_project)
    for attempt in (1, 2):
        claimed = job_claim(GenerationJob, job_id=job.pk)
        assert claimed is not None and claimed.attempts == attempt
        _silence(job)
        (changed,) = jobs_recover()
        assert changed[1] == ("requeued" if attempt == 1 else "failed")
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at is not None
    assert "stopped answering" in job.error and "attempt 2 of 2" in job.error
    assert job_claim(GenerationJob, job_id=job.pk) is None  # not tried again


def test_a_lost_workers_late_writes_change_nothing(tiny_project: Project) -> None:
    job = generation_job_make(tiny_project)
    old = job_claim(GenerationJob, job_id=job.pk)
    assert old is not None
    _silence(job)
    jobs_recover()
    new = job_claim(GenerationJob, job_id=job.pk)
    assert new is not None and new.attempts == 2
    # The first worker was only slow, and wakes up: its heartbeat and its success are refused.
    assert job_heartbeat(old, fields={"progress_done": 3}) is False
    with pytest.raises(JobLost):
        job_succeed(old, summary={"responses": 99})
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.progress_done == 0 and job.summary == {}
    assert job_heartbeat(new, fields={"progress_done": 1}) is True


def test_a_generation_job_resumed_does_only_the_prompts_not_done(
    tiny_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = generation_job_make(tiny_project)
    GenerationJob.objects.filter(pk=job.pk).update(config={**job.config, "batch_size": 2})
    with monkeypatch.context() as patch:
        _die_at(patch, progress_done=2)  # after the first batch of 2 prompts was committed
        with pytest.raises(WorkerDied):
            generation_job_execute(job_id=job.pk)
    assert Response.objects.filter(prompt__project=tiny_project).count() == 4
    _silence(job)
    jobs_recover()
    generation_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2
    assert job.progress_done == job.progress_total == 4
    responses = Response.objects.filter(prompt__project=tiny_project)
    assert responses.count() == 8  # 4 prompts x 2 samples: none twice, none missing
    prompt_ids = job.prompts.values_list("id", flat=True)
    assert {responses.filter(prompt_id=p).count() for p in prompt_ids} == {2}
    assert "2 prompts done before" in job.log_tail


def test_the_database_holds_one_active_run_per_project(project: Project, annotator: User) -> None:
    comparison_make(project.prompts.filter(split="train").first(), judged_by=annotator)
    base = model_version_base_ensure(project=project)
    run = training_run_make(project, base_version=base)
    with pytest.raises(ValidationFailed, match="already has a training run"):
        training_run_start(
            project=project, base_version=base, dispatch=False, training=TrainingSettings()
        )
    # Even past the service's check, as two racing requests would be.
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(
            project=project, base_version=base, snapshot=run.snapshot, status=JobStatus.RUNNING
        )
    TrainingRun.objects.filter(pk=run.pk).update(status=JobStatus.SUCCEEDED)
    assert training_run_start(
        project=project, base_version=base, dispatch=False, training=TrainingSettings()
    )


def _gpu_queue_count(purge: bool = False) -> int:
    """Messages in the broker's gpu queue (0 where the broker knows no such queue)."""
    from celery import current_app
    from kombu.exceptions import ChannelError

    with current_app.connection_for_write() as conn:
        channel = conn.default_channel
        if purge:
            channel.queue_purge("gpu")
        try:
            return int(channel.queue_declare(queue="gpu", passive=True).message_count)
        except ChannelError:
            return 0


def test_a_queued_job_whose_message_the_broker_lost_is_sent_again(
    tiny_project: Project, settings, django_capture_on_commit_callbacks
) -> None:
    job = generation_job_make(tiny_project)  # queued; its message never sent (as if lost)
    _gpu_queue_count(purge=True)
    assert jobs_recover() == [], "queued only now: its message may be on its way"
    GenerationJob.objects.filter(pk=job.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_STALE_SECONDS + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        (changed,) = jobs_recover()
    assert changed[0].pk == job.pk and changed[1] == "resent"
    assert _gpu_queue_count() == 1
    # Its message waits in the queue now: it is not sent a second time.
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs_recover() == []
    assert _gpu_queue_count(purge=True) == 0
    job.refresh_from_db()
    assert "sent again" in job.log_tail and job.status == JobStatus.QUEUED
