"""What every background job shares: the claim, the heartbeat, the recorded outcome, recovery.

A job is claimed with a conditional UPDATE (queued → running) that counts the attempt: a
second delivery of the same message finds nothing to claim and does nothing. Every later
write is fenced by that attempt number, so a worker that lost its job (cancelled, or handed
to another worker when its heartbeat went stale) can no longer change it.

Each kind of job registers itself (`job_kind_register`, in its app's `ready`) with the function
that sends a job id to a worker; `jobs_recover` then hands every kind's lost jobs to the next
worker, and `job_execute` is the one way a worker runs a job of any kind.
"""

from __future__ import annotations

import errno
import logging
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from core.models import Job, JobStatus

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
    """Append a line to the job's log (saved with its next heartbeat or outcome); also logged
    (logger core.jobs, INFO), so a worker's log and the loop check show it as it happens."""
    job.log_tail = (job.log_tail + line.rstrip() + "\n")[-LOG_TAIL_CHARS:]
    logger.info("%s: %s", job, line.rstrip())


def job_succeed(job: Job, *, summary: dict[str, Any], also: Sequence[str] = ()) -> None:
    """Record the job's success, with the kind's own outcome fields named in `also` (saved from
    the job object); JobLost when it is not this attempt's any more (call it in the transaction
    that saves the job's results, so they are not kept either)."""
    job.summary = summary
    job.finished_at = timezone.now()
    fields = ["summary", "finished_at", "log_tail", "metrics", "progress_done", "progress_total"]
    done = (
        _owned(job)
        .filter(status=JobStatus.RUNNING)
        .update(status=JobStatus.SUCCEEDED, **{f: getattr(job, f) for f in [*fields, *also]})
    )
    if not done:
        raise JobLost(f"{job} was cancelled or handed to another worker")
    job.status = JobStatus.SUCCEEDED


def job_fail(job: Job, *, error: BaseException, also: Sequence[str] = ()) -> None:
    """Record the error, with the kind's own outcome fields named in `also`, unless the job is
    not this attempt's any more."""
    job.error = (
        f"{_error_summary(error)}\n\n"
        + "".join(traceback.format_exception(error))[-LOG_TAIL_CHARS:]
    )
    job.finished_at = timezone.now()
    fields = ["error", "finished_at", "log_tail", "metrics", *also]
    failed = (
        _owned(job)
        .filter(status=JobStatus.RUNNING)
        .update(status=JobStatus.FAILED, **{f: getattr(job, f) for f in fields})
    )
    if failed:
        job.status = JobStatus.FAILED


def _error_summary(error: BaseException) -> str:
    """The error's first line, which the job's page shows: what to do where we know it."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" under {Path(error.filename).parent}" if error.filename else ""
        return (
            f"The disk is full{where} (OSError: no space left on device). Free space, then "
            "start the job again; a training run resumes from its last whole checkpoint."
        )
    return f"{type(error).__name__}: {error}"


def job_execute(model: type[J], *, job_id: int, body: Callable[[J], None]) -> J | None:
    """Claim the job and run `body` on it while a thread beats its heartbeat; None when it was
    not queued (a redelivered message). The body records success itself (`job_succeed`, in the
    transaction that saves its results); an error it raises is recorded (`job_fail`) and raised
    again; JobLost (cancelled, or another worker has it now) ends the attempt quietly."""
    job = job_claim(model, job_id=job_id)
    if job is None:
        return None
    try:
        with job_alive(job, every=settings.JOB_HEARTBEAT_SECONDS):
            body(job)
    except JobLost:
        return job
    except Exception as error:
        job_fail(job, error=error)
        raise
    return job


# Recovery --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    dispatch: Callable[[int], None]
    queue: str


_KINDS: dict[type[Job], _Kind] = {}


def job_kind_register(
    model: type[Job], *, dispatch: Callable[[int], None], queue: str = "default"
) -> None:
    """Make `jobs_recover` look after `model`'s jobs; `dispatch(job_id)` queues one for a worker
    (after the transaction commits), on the Celery queue named `queue`."""
    _KINDS[model] = _Kind(dispatch=dispatch, queue=queue)


def job_kinds() -> list[type[Job]]:
    return list(_KINDS)


def jobs_recover() -> list[tuple[Job, str]]:
    """Find jobs of every registered kind whose worker died (no heartbeat for
    JOB_HEARTBEAT_STALE_SECONDS) and hand them to the next worker, or fail them after
    JOB_MAX_ATTEMPTS attempts; and send again the message of a job queued that long whose
    queue holds no message at all (a broker restarted without persistence lost it). A message
    sent twice is harmless: the second finds nothing to claim. What a requeued job does again
    is the kind's own business (a training run resumes from its newest checkpoint, a
    generation job does the prompts not done, an import starts its file over). Runs every
    minute (Celery beat); returns what it changed: (job, "requeued", "failed" or "resent")."""
    before = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_STALE_SECONDS)
    changed: list[tuple[Job, str]] = []
    with transaction.atomic():
        for model, kind in _KINDS.items():
            # Those queued before this pass (a job it requeues has its message on the way).
            queued = model._default_manager.filter(status=JobStatus.QUEUED)
            waiting_ids = list(queued.filter(created_at__lt=before).values_list("pk", flat=True))
            for job, outcome in job_requeue_stale(
                model, heartbeat_before=before, max_attempts=settings.JOB_MAX_ATTEMPTS
            ):
                if outcome == "requeued":
                    kind.dispatch(job.pk)
                changed.append((job, outcome))
            if waiting_ids and _queue_empty(kind.queue):
                for job in queued.filter(pk__in=waiting_ids):
                    job_log(job, "its queue held no message for it (a broker restart?): sent again")
                    model._default_manager.filter(pk=job.pk, status=JobStatus.QUEUED).update(
                        log_tail=job.log_tail
                    )
                    kind.dispatch(job.pk)
                    changed.append((job, "resent"))
    return changed


def _queue_empty(queue: str) -> bool:
    """Whether the broker's `queue` holds no message (a queue the broker does not know, after a
    restart, holds none). False when the broker cannot be asked: then nothing is sent."""
    from celery import current_app
    from kombu.exceptions import ChannelError

    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            try:
                declared = conn.default_channel.queue_declare(queue=queue, passive=True)
            except ChannelError:
                return True  # "no queue" (Redis forgot its bindings): no message either
            return int(declared.message_count) == 0
    except Exception:
        logger.warning("cannot ask the broker about queue %s", queue, exc_info=True)
        return False
