"""Celery tasks: ids in, a worker body does the work. The job row holds the outcome."""

from __future__ import annotations

from celery import shared_task

from alignment.workers.generation import generation_job_execute
from alignment.workers.judging import judge_job_execute
from alignment.workers.training import training_run_execute


@shared_task(name="alignment.tasks.generation_job_run")
def generation_job_run(job_id: int) -> None:
    generation_job_execute(job_id=job_id)


@shared_task(name="alignment.tasks.training_run_run")
def training_run_run(run_id: int) -> None:
    training_run_execute(run_id=run_id)


@shared_task(name="alignment.tasks.judge_job_run")
def judge_job_run(job_id: int) -> None:
    judge_job_execute(job_id=job_id)
