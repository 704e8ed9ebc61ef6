"""Celery tasks that look after every kind of job."""

from __future__ import annotations

from celery import shared_task

from core import jobs


@shared_task(name="core.tasks.jobs_recover")
def jobs_recover() -> None:
    jobs.jobs_recover()
