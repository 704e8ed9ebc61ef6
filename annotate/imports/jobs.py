"""Large imports, by a worker, on the job machinery every background job shares (core.jobs)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from annotate.imports.errors import MAX_ERRORS_SHOWN, ImportRefused, RowError
from annotate.imports.reading import MAX_FILE_BYTES
from annotate.imports.rows import KINDS
from annotate.imports.writing import ImportResult, import_file
from annotate.models import ImportJob, Project
from core.jobs import JobLost, job_execute, job_fail, job_heartbeat, job_succeed

logger = logging.getLogger(__name__)


# Files above this go to a worker (ImportJob), which reports its progress to the page; below,
# the page imports at once and shows the outcome in its answer.
INLINE_MAX_BYTES = 4 * 2**20


def import_job_start(
    *,
    project: Project,
    kind: str,
    upload: IO[bytes],
    file_name: str,
    file_type: str,
    valid_only: bool = False,
    keep_duplicates: bool = False,
    created_by: User | None = None,
) -> ImportJob:
    """Keep the upload under DATA_DIR/imports/ and queue a worker to import it."""
    if kind not in KINDS:
        raise ImportRefused([], f"Unknown import kind {kind!r}; expected one of {list(KINDS)}.")
    if file_type not in ("jsonl", "csv", "parquet"):
        raise ImportRefused([], f"A worker imports JSONL, CSV or Parquet files, not {file_type}.")
    folder = Path(settings.DATA_DIR) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{file_type}"
    size = 0
    with path.open("wb") as out:
        for chunk in iter(lambda: upload.read(2**20), b""):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                out.close()
                path.unlink(missing_ok=True)
                raise ImportRefused([], f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
            out.write(chunk)
    with transaction.atomic():
        job = ImportJob.objects.create(
            project=project,
            kind=kind,
            file_type=file_type,
            file_name=file_name[:300],
            file_bytes=size,
            path=str(path),
            valid_only=valid_only,
            keep_duplicates=keep_duplicates,
            created_by=created_by,
        )
        import_job_dispatch(job.pk)
    return job


def import_job_dispatch(job_id: int) -> None:
    from annotate.tasks import import_job_run

    transaction.on_commit(lambda: import_job_run.delay(job_id))


def import_job_execute(*, job_id: int) -> ImportJob | None:
    """Claim the job (queued → running, so a redelivered message does nothing) and import its
    file, beating the heartbeat while it reads; None when it was not queued. A worker lost
    mid-file leaves nothing written (the rows are written in one transaction, with the job's
    success) and its file in place: the next attempt imports the whole file again."""
    return job_execute(ImportJob, job_id=job_id, body=_import_run)


# What an import records besides the job's own fields.
_OUTCOME = ("created_count", "error_count", "errors", "message")


def _import_run(job: ImportJob) -> None:
    def progress(rows: int) -> None:
        if not job_heartbeat(job, fields={"progress_done": rows}):
            raise JobLost(f"{job} was cancelled or handed to another worker")

    def succeed(result: ImportResult) -> None:  # in the transaction that writes the rows
        job.progress_done = result.created + len(result.skipped) + len(result.duplicates)
        job.created_count = result.created
        job.message = result.summary()
        _job_errors_note(job, result.skipped)
        job_succeed(
            job,
            summary={
                "created": result.created,
                "skipped": len(result.skipped),
                "duplicates": len(result.duplicates),
            },
            also=_OUTCOME,
        )

    try:
        import_file(
            project=job.project,
            kind=job.kind,
            source=Path(job.path),
            file_type=job.file_type,
            valid_only=job.valid_only,
            keep_duplicates=job.keep_duplicates,
            on_progress=progress,
            on_written=succeed,
        )
    except ImportRefused as refused:
        _job_errors_note(job, refused.errors)
        job.message = str(refused)
        job_fail(job, error=refused, also=_OUTCOME)
    except JobLost:
        raise  # another worker has the job, and needs its file
    except Exception as error:  # the job records why; the worker goes on
        logger.exception("import %s failed", job.pk)
        job.message = f"The import failed: {error}"
        job_fail(job, error=error, also=_OUTCOME)
    Path(job.path).unlink(missing_ok=True)


def _job_errors_note(job: ImportJob, errors: Sequence[RowError]) -> None:
    job.error_count = len(errors)
    job.errors = [[e.line, e.message] for e in errors[:MAX_ERRORS_SHOWN]]
