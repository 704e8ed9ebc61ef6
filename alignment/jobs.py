"""What every background job shares: the claim, the heartbeat, and the recorded outcome.

A job is claimed with a conditional UPDATE (queued → running): a second delivery of the same
message finds nothing to claim and does nothing.
"""

from __future__ import annotations

import traceback
from typing import Any, TypeVar

from django.db.models import F
from django.utils import timezone

from alignment.models import Job, JobStatus

J = TypeVar("J", bound=Job)

LOG_TAIL_CHARS = 8_000


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
    manager = type(job)._default_manager
    return bool(manager.filter(pk=job.pk, status=JobStatus.RUNNING).update(**fields))


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
    type(job)._default_manager.filter(pk=job.pk).update(**{f: getattr(job, f) for f in fields})


def job_log(job: Job, line: str) -> None:
    job.log_tail = (job.log_tail + line.rstrip() + "\n")[-LOG_TAIL_CHARS:]


def job_succeed(job: Job, *, summary: dict[str, Any]) -> None:
    job.status = JobStatus.SUCCEEDED
    job.summary = summary
    job.finished_at = timezone.now()
    job.save(
        update_fields=[
            "status",
            "summary",
            "finished_at",
            "log_tail",
            "metrics",
            "progress_done",
            "progress_total",
            "heartbeat_at",
        ]
    )


def job_fail(job: Job, *, error: BaseException) -> None:
    job.status = JobStatus.FAILED
    job.error = (
        f"{type(error).__name__}: {error}\n\n"
        + "".join(traceback.format_exception(error))[-LOG_TAIL_CHARS:]
    )
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "finished_at", "log_tail", "metrics"])
