"""Workers killed by SIGKILL (the OOM killer, a lost machine) on PostgreSQL and Redis: what they
were doing is finished once by the next worker, or stops at the attempt cap, saying why."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from alignment.models import GenerationJob
from alignment.services.rounds import SamplingSettings
from annotate.models import Project, Response
from core.jobs import job_claim, jobs_recover
from core.models import JobStatus
from tests.factories import round_make
from tests.integration.workers import wait_for, worker_start, worker_stop

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

WORKER_ENV = {"JOB_HEARTBEAT_SECONDS": "0.5"}


def _kill_when(
    worker: subprocess.Popen[bytes], job: GenerationJob, ready: Any, timeout: float = 120
) -> GenerationJob:
    """SIGKILL the worker as soon as `ready(job)` holds for the job's row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING), job.error
        if ready(job):
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=20)
            job.refresh_from_db()
            return job
        assert worker.poll() is None, "the worker died on its own"
        time.sleep(0.02)
    raise AssertionError(f"not ready within {timeout} s: {job.status} {job.progress_done}")


def _requeue_after_silence(outcome: str) -> None:
    time.sleep(settings.JOB_HEARTBEAT_STALE_SECONDS + 1)
    (changed,) = jobs_recover()  # what beat runs every minute
    assert changed[1] == outcome


def test_a_generation_worker_killed_mid_job_is_resumed_without_duplicate_responses(
    real_services: None, tiny_project: Project, settings: Any, tmp_path: Path
) -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    settings.JOB_HEARTBEAT_STALE_SECONDS = 3
    sampling = SamplingSettings(max_new_tokens=16, temperature=1.0, batch_size=1)
    round_ = round_make(tiny_project, prompts=6, sampling=sampling, dispatch=True)
    job = round_.generation_jobs.get()
    first = worker_start(tmp_path, "first", **WORKER_ENV)
    try:
        job = _kill_when(first, job, lambda j: j.progress_done >= 2)
    finally:
        worker_stop(first, tmp_path, "first")
    total = job.progress_total
    assert job.status == JobStatus.RUNNING and 2 <= job.progress_done < total
    done_before = Response.objects.filter(prompt__project=tiny_project).count()
    assert done_before == 2 * job.progress_done, "each committed batch has its responses"

    _requeue_after_silence("requeued")
    second = worker_start(tmp_path, "second", **WORKER_ENV)
    try:
        job = wait_for(GenerationJob, job.pk, second)
    finally:
        worker_stop(second, tmp_path, "second")
    assert job.attempts == 2 and job.progress_done == total
    per_prompt = Counter(
        Response.objects.filter(prompt__project=tiny_project).values_list("prompt_id", flat=True)
    )
    assert sorted(per_prompt.values()) == [2] * total, "every prompt twice: none lost, none doubled"


def test_a_job_that_kills_its_worker_every_time_stops_at_the_attempt_cap(
    real_services: None, tiny_project: Project, settings: Any, tmp_path: Path
) -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    settings.JOB_HEARTBEAT_STALE_SECONDS = 3
    settings.JOB_MAX_ATTEMPTS = 3
    sampling = SamplingSettings(max_new_tokens=16, temperature=1.0, batch_size=1)
    job = round_make(tiny_project, prompts=6, sampling=sampling, dispatch=True)
    job = job.generation_jobs.get()
    for attempt in (1, 2, 3):
        worker = worker_start(tmp_path, f"attempt{attempt}", **WORKER_ENV)
        try:
            job = _kill_when(
                worker, job, lambda j, n=attempt: j.status == JobStatus.RUNNING and j.attempts == n
            )
        finally:
            worker_stop(worker, tmp_path, f"attempt{attempt}")
        _requeue_after_silence("requeued" if attempt < 3 else "failed")
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 3
    assert "stopped answering" in job.error and "attempt 3 of 3" in job.error
    assert job_claim(GenerationJob, job_id=job.pk) is None  # never tried again
