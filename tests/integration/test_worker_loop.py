"""The loop through a real Celery worker, on PostgreSQL and Redis (the production shape)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User

from alignment.models import GenerationJob, ModelVersion, PairingStrategy, Round, TrainingRun
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import SamplingSettings
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from annotate.imports.jobs import import_job_start
from annotate.models import Comparison, ImportJob, Project, Response
from annotate.services.judgments import judgment_submit
from core.jobs import jobs_recover
from core.models import JobStatus
from tests.factories import comparison_make, round_make
from tests.integration.workers import wait_for, worker_start, worker_stop

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(
    real_services: None, tiny_model_dir: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    process = worker_start(tmp_path, "worker")
    yield process
    worker_stop(process, tmp_path, "worker")


def test_it_runs_generation_judging_training_and_the_next_round_through_a_worker(
    worker: subprocess.Popen[bytes], tiny_project: Project, annotator: User
) -> None:
    project = tiny_project
    base = model_version_base_ensure(project=project)
    sampling = SamplingSettings(max_new_tokens=12, temperature=1.0, batch_size=4)

    round1 = round_make(project, policy=base, prompts=6, sampling=sampling, dispatch=True)
    job = wait_for(GenerationJob, round1.generation_jobs.get().pk, worker)
    assert job.progress_done == 6 and job.heartbeat_at is not None and job.metrics
    assert Response.objects.filter(policy=base.policy).count() == 12
    comparisons = list(Comparison.objects.filter(project=project, round_number=1))
    assert comparisons, "the worker created no comparisons"

    for comparison in comparisons:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    run = training_run_start(
        project=project,
        base_version=base,
        training=TrainingSettings(epochs=1, batch_size=2, max_length=96),
    )
    run = wait_for(TrainingRun, run.pk, worker)
    assert run.metrics and run.metrics[-1]["step"] == run.summary["steps"]
    child = ModelVersion.objects.get(produced_by=run)
    assert child.parent == base
    assert (Path(child.adapter_path) / "adapter_model.safetensors").is_file()

    round2 = round_make(
        project,
        policy=child,
        prompts=3,
        eval_prompts=list(project.prompts.filter(split="eval")),
        sampling=sampling,
        strategy=PairingStrategy.BOTH,
        dispatch=True,
    )
    for job in round2.generation_jobs.all():
        wait_for(GenerationJob, job.pk, worker)
    assert Response.objects.filter(policy=child.policy).count() == 3 * 2 + 3 * 2
    assert Round.objects.get(pk=round2.pk).number == 2
    head_to_head = Comparison.objects.filter(project=project, round_number=2, purpose="eval")
    assert head_to_head.count() == 3 * 2
    assert all(
        c.response_a.policy_id == child.policy_id and c.response_b.policy_id == base.policy_id
        for c in head_to_head
    )


def test_a_training_worker_killed_mid_run_is_resumed_by_the_next_worker(
    real_services: None, tiny_project: Project, annotator: User, settings, tmp_path: Path
) -> None:
    project = tiny_project
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    settings.JOB_HEARTBEAT_STALE_SECONDS = 3
    for i, prompt in enumerate(project.prompts.filter(split="train")[:6]):
        comparison_make(
            prompt, texts=(f"Short {i}.", f"A much longer answer {i}."), judged_by=annotator
        )
    worker_env = {"PREFLOOP_CHECKPOINT_STEPS": "3", "JOB_HEARTBEAT_SECONDS": "0.5"}
    first = worker_start(tmp_path, "first", **worker_env)
    try:
        run = training_run_start(
            project=project,
            base_version=model_version_base_ensure(project=project),
            training=TrainingSettings(epochs=12, batch_size=1, max_length=64),
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until a checkpoint is complete, and then some
            run.refresh_from_db()
            assert run.status == JobStatus.RUNNING or run.status == JobStatus.QUEUED, run.error
            if run.metrics and (run.metrics[-1]["checkpoint"] or 0) >= 3:
                break
            assert first.poll() is None, "the first worker died on its own"
            time.sleep(0.2)
        else:
            raise AssertionError("no checkpoint within 180 s")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=20)
    finally:
        worker_stop(first, tmp_path, "first")
    run.refresh_from_db()
    killed_at = run.progress_done
    assert run.status == JobStatus.RUNNING and run.attempts == 1
    assert 0 < killed_at < run.progress_total, "the run was not mid-way when killed"

    assert jobs_recover() == []  # heartbeat still fresh
    time.sleep(settings.JOB_HEARTBEAT_STALE_SECONDS + 1)
    (changed,) = jobs_recover()  # what beat runs every minute
    assert changed[0].pk == run.pk and changed[1] == "requeued"

    second = worker_start(tmp_path, "second", **worker_env)
    try:
        run = wait_for(TrainingRun, run.pk, second)
    finally:
        worker_stop(second, tmp_path, "second")
    assert isinstance(run, TrainingRun)
    resumed_from = run.summary["resumed_from_step"]
    assert run.attempts == 2 and 3 <= resumed_from <= killed_at
    assert f"attempt 2: resumed from the checkpoint at step {resumed_from}" in run.log_tail
    # The step count and the loss curve go on: one point per step, none missing or repeated.
    total = run.summary["steps"]
    assert total == run.progress_total and [p["step"] for p in run.metrics] == list(
        range(1, total + 1)
    )
    assert all(p["loss"] is not None for p in run.metrics)
    child = ModelVersion.objects.get(produced_by=run)
    assert (Path(child.adapter_path) / "adapter_model.safetensors").is_file()


def test_it_hands_an_import_whose_worker_was_killed_mid_file_to_the_next_worker(
    real_services: None, project: Project, lead: User, settings: Any, tmp_path: Path
) -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    settings.DATA_DIR = tmp_path
    settings.JOB_HEARTBEAT_STALE_SECONDS = 3
    rows = 40_000
    data = b"".join(
        json.dumps({"prompt": f"Imported question number {i}, padded out a little?"}).encode()
        + b"\n"
        for i in range(rows)
    )
    before = project.prompts.count()
    worker_env = {"JOB_HEARTBEAT_SECONDS": "0.5"}
    first = worker_start(tmp_path, "first", **worker_env)
    try:
        job = import_job_start(
            project=project,
            kind="prompts",
            upload=io.BytesIO(data),
            file_name="big.jsonl",
            file_type="jsonl",
            created_by=lead,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the worker is part way through the file
            job.refresh_from_db()
            assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING), job.error
            if job.progress_done >= 2_000:
                break
            assert first.poll() is None, "the first worker died on its own"
            time.sleep(0.05)
        else:
            raise AssertionError("the worker checked no rows within 120 s")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=20)
    finally:
        worker_stop(first, tmp_path, "first")
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.attempts == 1
    assert 0 < job.progress_done < rows, "the import was not mid-file when killed"
    assert project.prompts.count() == before  # the killed worker wrote nothing
    assert Path(job.path).is_file()  # and left the file for the next one

    time.sleep(settings.JOB_HEARTBEAT_STALE_SECONDS + 1)
    (changed,) = jobs_recover()
    assert changed[0].pk == job.pk and changed[1] == "requeued"

    second = worker_start(tmp_path, "second", **worker_env)
    try:
        job = wait_for(ImportJob, job.pk, second)
        # The job's success commits with its rows; the worker deletes the file just after.
        deadline = time.monotonic() + 10
        while Path(job.path).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.kill()  # before it embeds the new prompts (the coverage refresh the import asks)
        worker_stop(second, tmp_path, "second")
    assert job.attempts == 2 and job.created_count == rows and job.progress_done == rows
    assert project.prompts.count() == before + rows  # every row once
    assert not Path(job.path).exists()
