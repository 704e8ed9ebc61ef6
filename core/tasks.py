"""Celery tasks that look after every kind of job, and the workers' canary."""

from __future__ import annotations

import socket

from celery import Task, shared_task
from django.utils import timezone

from core import jobs
from core.models import WorkerCanary


@shared_task(name="core.tasks.jobs_recover")
def jobs_recover() -> None:
    jobs.jobs_recover()


@shared_task(name="core.tasks.worker_canary", bind=True)
def worker_canary(self: Task, queue: str) -> None:
    """Sent to `queue` (by beat): a worker consuming it records that it did."""
    hostname = self.request.hostname or socket.gethostname()
    WorkerCanary.objects.update_or_create(
        queue=queue, defaults={"done_at": timezone.now(), "worker": hostname}
    )
