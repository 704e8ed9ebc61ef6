"""The loop through a real Celery worker, on PostgreSQL and Redis (the production shape)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from alignment.models import (
    GenerationJob,
    JobStatus,
    ModelVersion,
    PairingStrategy,
    Round,
    TrainingRun,
)
from alignment.services import (
    SamplingSettings,
    TrainingSettings,
    model_version_base_ensure,
    round_prompts_choose,
    round_start,
    training_run_start,
)
from annotate.models import Comparison, Project, Response
from annotate.services import judgment_submit
from tests.conftest import MODELS_DIR, REPO

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(
    real_services: None, tiny_model_dir: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DEBUG": "1",
        # The worker must see the test database, which pytest-django created and named.
        "DATABASE_URL": f"postgres://{db['USER'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "PREFLOOP_DATA_DIR": str(tmp_path / "worker-data"),
        "PREFLOOP_MODELS_DIR": str(MODELS_DIR),
        "PREFLOOP_QUANTIZE_4BIT": "0",
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "default,gpu",
            "--pool",
            "solo",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    print((tmp_path / "worker.log").read_text()[-4000:])


def _wait_for(
    model: type[GenerationJob] | type[TrainingRun],
    pk: int,
    worker: subprocess.Popen[bytes],
    timeout: float = 180,
) -> GenerationJob | TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = model.objects.get(pk=pk)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert job.status == JobStatus.SUCCEEDED, job.error
            return job
        assert worker.poll() is None, "the worker died"
        time.sleep(0.5)
    raise AssertionError(
        f"{model.__name__} {pk} still {model.objects.get(pk=pk).status} after {timeout} s"
    )


def test_it_runs_generation_judging_training_and_the_next_round_through_a_worker(
    worker: subprocess.Popen[bytes],
    project: Project,
    annotator: User,
    tiny_model_dir: str,
    settings,
    tmp_path: Path,
) -> None:
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    project.base_model = str(tiny_model_dir)
    project.save(update_fields=["base_model"])
    base = model_version_base_ensure(project=project)
    sampling = SamplingSettings(max_new_tokens=12, temperature=1.0, batch_size=4)

    round1 = round_start(
        project=project,
        policy=base,
        train_prompts=round_prompts_choose(project=project, count=6),
        samples_per_prompt=2,
        sampling=sampling,
    )
    job = _wait_for(GenerationJob, round1.generation_jobs.get().pk, worker)
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
    run = _wait_for(TrainingRun, run.pk, worker)
    assert run.metrics and run.metrics[-1]["step"] == run.summary["steps"]
    child = ModelVersion.objects.get(produced_by=run)
    assert child.parent == base
    assert (Path(child.adapter_path) / "adapter_model.safetensors").is_file()

    round2 = round_start(
        project=project,
        policy=child,
        train_prompts=round_prompts_choose(project=project, count=3),
        eval_prompts=list(project.prompts.filter(split="eval")),
        samples_per_prompt=2,
        sampling=sampling,
        strategy=PairingStrategy.BOTH,
    )
    for job in round2.generation_jobs.all():
        _wait_for(GenerationJob, job.pk, worker)
    assert Response.objects.filter(policy=child.policy).count() == 3 * 2 + 3 * 2
    assert Round.objects.get(pk=round2.pk).number == 2
    head_to_head = Comparison.objects.filter(project=project, round_number=2, purpose="eval")
    assert head_to_head.count() == 3 * 2
    assert all(
        c.response_a.policy_id == child.policy_id and c.response_b.policy_id == base.policy_id
        for c in head_to_head
    )
