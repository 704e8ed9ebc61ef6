"""What every background job shares: the claim, the heartbeat, and the recorded outcome.

A job is claimed with a conditional UPDATE (queued → running) that counts the attempt: a
second delivery of the same message finds nothing to claim and does nothing. Every later
write is fenced by that attempt number, so a worker that lost its job (cancelled, or handed
to another worker when its heartbeat went stale) can no longer change it.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from django.db import DatabaseError, connection
from django.db.models import F, QuerySet
from django.utils import timezone

from alignment.models import Job, JobStatus

J = TypeVar("J", bound=Job)

LOG_TAIL_CHARS = 8_000

logger = logging.getLogger(__name__)


class JobLost(Exception):
    """The job is not this worker's any more: cancelled, or requeued for another worker."""


def _owned(job: Job) -> QuerySet[Any]:
    """The job's row while it still belongs to this attempt."""
    return type(job)._default_manager.filter(pk=job.pk, attempts=job.attempts)


def job_claim(model: type[J], *, job_id: int) -> J | None:
    """The job, now running and owned by the caller; None when it was not queued."""
    now = timezone.now()
    claimed = model._default_manager.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    return model._default_manager.get(pk=job_id)


def job_heartbeat(job: Job, *, fields: dict[str, Any] | None = None) -> bool:
    """Write progress and prove the worker is alive. Only while the job is still running:
    False when it is not any more (a lead cancelled it), and the worker should stop."""
    fields = dict(fields or {})
    fields["heartbeat_at"] = timezone.now()
    for name, value in fields.items():
        setattr(job, name, value)
    return bool(_owned(job).filter(status=JobStatus.RUNNING).update(**fields))


@contextmanager
def job_alive(job: Job, *, every: float) -> Iterator[None]:
    """Beat the job's heartbeat every `every` seconds from a thread while the body runs:
    loading a model or computing reference log-probabilities can take minutes between two
    progress reports, and a silent worker would be taken for a dead one."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                try:
                    mine = _owned(job).filter(status=JobStatus.RUNNING)
                    if not mine.update(heartbeat_at=timezone.now()):
                        return  # not ours any more; the body finds out at its next report
                except DatabaseError as error:  # a busy database: try again at the next beat
                    logger.warning("heartbeat of %s failed: %s", job, error)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{job}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def job_requeue_stale(
    model: type[J], *, heartbeat_before: datetime, max_attempts: int
) -> list[tuple[J, str]]:
    """Running jobs whose worker went silent (no heartbeat since `heartbeat_before`): queued
    again for another worker, or failed once they have had `max_attempts` attempts. Each
    change is a conditional UPDATE on the heartbeat seen, so two checks never both act.
    Returns (job, "requeued" or "failed") for the jobs it changed."""
    changed: list[tuple[J, str]] = []
    stale = model._default_manager.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=heartbeat_before
    )
    for job in stale:
        assert job.heartbeat_at is not None
        silent = f"no heartbeat since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
        seen = model._default_manager.filter(
            pk=job.pk,
            status=JobStatus.RUNNING,
            attempts=job.attempts,
            heartbeat_at=job.heartbeat_at,
        )
        if job.attempts >= max_attempts:
            outcome = "failed"
            job.error = (
                f"The worker running this job stopped answering ({silent}), on attempt "
                f"{job.attempts} of {max_attempts}; it is not tried again."
            )
            job_log(
                job, f"worker lost ({silent}); attempt {job.attempts} of {max_attempts}, failed"
            )
            status = JobStatus.FAILED
            fields: dict[str, Any] = {
                "error": job.error,
                "log_tail": job.log_tail,
                "finished_at": timezone.now(),
            }
        else:
            outcome = "requeued"
            job_log(
                job,
                f"worker lost ({silent}); queued again for attempt {job.attempts + 1} "
                f"of {max_attempts}",
            )
            status = JobStatus.QUEUED
            fields = {"log_tail": job.log_tail}
        if seen.update(status=status, **fields):
            job.status = status
            changed.append((job, outcome))
    return changed


def job_cancel(model: type[J], *, job_id: int) -> bool:
    """Cancel a queued or running job (a conditional UPDATE). A queued one never starts; a
    running one stops at its next heartbeat. Whether it was cancelled now."""
    cancelled = model._default_manager.filter(
        pk=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
    ).update(status=JobStatus.CANCELLED, finished_at=timezone.now())
    return bool(cancelled)


def job_stopped(job: Job, *, summary: dict[str, Any]) -> None:
    """Record what a cancelled job did before it stopped; its status stays cancelled."""
    job.summary = summary
    fields = ["summary", "log_tail", "metrics", "progress_done", "progress_total"]
    _owned(job).filter(status=JobStatus.CANCELLED).update(**{f: getattr(job, f) for f in fields})


def job_log(job: Job, line: str) -> None:
    job.log_tail = (job.log_tail + line.rstrip() + "\n")[-LOG_TAIL_CHARS:]


def job_succeed(job: Job, *, summary: dict[str, Any]) -> None:
    """Record the job's success; JobLost when it is not this attempt's any more (call it in
    the transaction that saves the job's results, so they are not kept either)."""
    job.summary = summary
    job.finished_at = timezone.now()
    fields = ["summary", "finished_at", "log_tail", "metrics", "progress_done", "progress_total"]
    done = (
        _owned(job)
        .filter(status=JobStatus.RUNNING)
        .update(status=JobStatus.SUCCEEDED, **{f: getattr(job, f) for f in fields})
    )
    if not done:
        raise JobLost(f"{job} was cancelled or handed to another worker")
    job.status = JobStatus.SUCCEEDED


def job_fail(job: Job, *, error: BaseException) -> None:
    """Record the error, unless the job is not this attempt's any more."""
    job.error = (
        f"{type(error).__name__}: {error}\n\n"
        + "".join(traceback.format_exception(error))[-LOG_TAIL_CHARS:]
    )
    job.finished_at = timezone.now()
    failed = (
        _owned(job)
        .filter(status=JobStatus.RUNNING)
        .update(
            status=JobStatus.FAILED,
            error=job.error,
            finished_at=job.finished_at,
            log_tail=job.log_tail,
            metrics=job.metrics,
        )
    )
    if failed:
        job.status = JobStatus.FAILED
