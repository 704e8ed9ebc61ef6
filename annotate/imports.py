"""Data in: prompts and existing preference pairs from JSONL, CSV or a `datasets` directory.

Everything is read and validated before anything is written. Each bad row is reported with
its line (JSONL, CSV) or row number (a dataset) and what is wrong with it; the whole import is
refused when any row is bad, unless the caller asks for the valid rows only. Then one
transaction writes them all, or nothing.

Prompt rows: {"prompt": "text" | [messages]} (or "messages", or "text"), with optional "tags"
(a list, or comma-separated in CSV), "id", "split" (train / eval) and "source".

Pair rows, in the layouts TRL and common public sets use:
- conversational: {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
- standard: {"prompt": "text", "chosen": "text", "rejected": "text"}
- implicit prompt: {"chosen": [whole conversation], "rejected": [whole conversation]}, the
  prompt being the turns both share and the answers their last assistant turns.
An imported pair becomes a prompt, two responses of the policy "imported", a completed
comparison and its preference pair (agreement 1, no judgments of ours).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from annotate.coverage import coverage_refresh_request
from annotate.models import (
    Comparison,
    ComparisonStatus,
    ImportJob,
    PairKind,
    PolicyKind,
    PreferencePair,
    Project,
    Prompt,
    Split,
)
from annotate.services.prompts import (
    MAX_MESSAGE_CHARS,
    PromptInput,
    ResponseInput,
    policy_create,
    prompt_messages_normalise,
    prompts_create,
    responses_create,
)
from core.errors import ValidationFailed
from core.jobs import JobLost, job_execute, job_fail, job_heartbeat, job_succeed

KINDS = ("prompts", "pairs")
FILE_TYPES = ("jsonl", "csv", "parquet", "dataset")
MAX_FILE_BYTES = 512 * 2**20  # a file bigger than this is refused before it is read
MAX_LINE_BYTES = 2 * 2**20
MAX_ROWS = 2_000_000
MAX_TAGS, MAX_TAG_CHARS, MAX_ID_CHARS = 32, 64, 200
MAX_ERRORS_SHOWN = 100
IMPORTED_POLICY = "imported"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line of a JSONL/CSV file, or row of a dataset
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ImportRefused(ValidationFailed):
    """The import was refused and nothing was written; `errors` says why, row by row."""

    code = "import_refused"

    def __init__(self, errors: Sequence[RowError], message: str = "") -> None:
        self.errors = list(errors)
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(message or f"{len(self.errors)} bad rows, nothing imported: {shown}{more}")

    def details(self) -> dict[str, Any]:
        """The rows refused, with their line (1-based position in the file or list)."""
        return {
            "rows": [{"line": e.line, "message": e.message} for e in self.errors[:MAX_ERRORS_SHOWN]]
        }


class _Bad(ValueError):
    """One row's problem (becomes a RowError with its line)."""


# Reading --------------------------------------------------------------------------------------


def records_read(source: bytes | Path, file_type: str) -> Iterator[tuple[int, Any]]:
    """(line, record) for each row, where a record is a dict or a RowError (the row is bad
    before any field is looked at: invalid UTF-8 or JSON, not an object, too long)."""
    if file_type == "dataset":
        if not isinstance(source, Path):
            raise ImportRefused([], "A dataset is read from a directory on disk.")
        yield from _dataset_records(source)
        return
    data = source.read_bytes() if isinstance(source, Path) else source
    if len(data) > MAX_FILE_BYTES:
        raise ImportRefused([], f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
    if file_type == "jsonl":
        yield from _jsonl_records(data)
    elif file_type == "csv":
        yield from _csv_records(data)
    elif file_type == "parquet":
        yield from _parquet_records(data)
    else:
        raise ImportRefused([], f"Unknown file type {file_type!r}; expected one of {FILE_TYPES}.")


def _jsonl_records(data: bytes) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield line, RowError(line, f"longer than {MAX_LINE_BYTES // 2**20} MB")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield line, RowError(line, f"invalid UTF-8 at byte {error.start}")
            continue
        try:
            record = json.loads(text)
        except RecursionError:
            yield line, RowError(line, "invalid JSON (nested too deep)")
            continue
        except json.JSONDecodeError as error:
            yield line, RowError(line, f"invalid JSON ({error.msg} at column {error.colno})")
            continue
        except ValueError as error:  # e.g. an integer of more digits than Python converts
            yield line, RowError(line, f"invalid JSON ({error})")
            continue
        yield line, record


def _csv_records(data: bytes) -> Iterator[tuple[int, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        yield line, RowError(line, f"invalid UTF-8 at byte {error.start}")
        return
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        yield line, RowError(line, "contains a NUL character")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
        if not header:
            return
        if len(set(header)) != len(header):
            yield 1, RowError(1, "the header repeats a column name")
            return
        for record in reader:
            line = reader.line_num
            if None in record or any(value is None for value in record.values()):
                yield line, RowError(line, f"expected {len(header)} columns")
                continue
            yield line, {key: value for key, value in record.items() if value != ""}
    except csv.Error as error:
        yield reader.line_num, RowError(reader.line_num, f"invalid CSV ({error})")


def _parquet_records(data: bytes) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        batches = parquet.iter_batches(batch_size=2000)
        line = 0
        for batch in batches:
            for record in batch.to_pylist():
                line += 1
                yield line, record
    except (pa.ArrowException, OSError) as error:
        raise ImportRefused([], f"Cannot read the file as Parquet: {error}") from None


def _dataset_records(directory: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    if not directory.is_dir():
        raise ImportRefused([], f"{directory} is not a directory.")
    # A cache of its own: datasets' shared cache is keyed on the path, so a directory whose
    # files changed since an earlier read would give the old rows.
    with tempfile.TemporaryDirectory(prefix="prefloop-import-") as cache:
        try:
            if (directory / "dataset_info.json").exists() or (directory / "state.json").exists():
                loaded: Any = datasets.load_from_disk(str(directory))
            else:
                loaded = datasets.load_dataset(str(directory), cache_dir=cache)
        except Exception as error:  # datasets raises many kinds; all mean "cannot read this"
            raise ImportRefused([], f"Cannot read {directory} as a dataset: {error}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                splits = list(loaded)
                raise ImportRefused([], f"The dataset has no train split (splits: {splits}).")
            loaded = loaded["train"]
        for index, record in enumerate(loaded, start=1):
            yield index, dict(record)


# Validating -----------------------------------------------------------------------------------


def _text(record: Mapping[str, Any], key: str, *, required: bool = False, limit: int = 0) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise _Bad(f'missing field "{key}"')
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str):
        raise _Bad(f'"{key}" must be text, not {type(value).__name__}')
    if "\x00" in value:
        raise _Bad(f'"{key}" contains a NUL character')
    if limit and len(value) > limit:
        raise _Bad(f'"{key}" is longer than {limit} characters')
    return value


def _tags(record: Mapping[str, Any]) -> list[str]:
    value = record.get("tags")
    if value is None:
        return []
    if isinstance(value, str):  # CSV: "math, short"
        value = [tag.strip() for tag in value.split(",") if tag.strip()]
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise _Bad('"tags" must be a list of texts')
    if len(value) > MAX_TAGS:
        raise _Bad(f"more than {MAX_TAGS} tags")
    if any(len(tag) > MAX_TAG_CHARS or "\x00" in tag for tag in value):
        raise _Bad(f"a tag is longer than {MAX_TAG_CHARS} characters or contains NUL")
    return list(dict.fromkeys(value))


def _split(record: Mapping[str, Any]) -> str:
    split = _text(record, "split") or Split.TRAIN
    if split not in Split.values:
        raise _Bad(f'"split" is {split!r}; expected one of {Split.values}')
    return split


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str) and "\x00" in value:
        raise _Bad(f'"{what}" contains a NUL character')
    if not isinstance(value, str | list):
        raise _Bad(f'"{what}" must be text or a list of messages')
    try:
        return prompt_messages_normalise(value)
    except ValidationFailed as error:
        raise _Bad(f'"{what}": {error}') from None


def prompt_row_parse(record: Mapping[str, Any]) -> PromptInput:
    key = next((k for k in ("prompt", "messages", "text") if record.get(k) is not None), None)
    if key is None:
        raise _Bad('missing field "prompt" (or "messages" or "text")')
    value = record[key]
    if isinstance(value, str) and value.lstrip().startswith("[") and key != "text":
        with contextlib.suppress(ValueError, RecursionError):  # CSV: message lists as JSON
            value = json.loads(value)
    return PromptInput(
        messages=_messages(value, key),
        tags=_tags(record),
        source=_text(record, "source", limit=200),
        external_id=_text(record, "id", limit=MAX_ID_CHARS),
        split=_split(record),
    )


@dataclass(frozen=True)
class PairInput:
    prompt: PromptInput
    chosen: str
    rejected: str


def _answer(value: Any, what: str) -> str:
    """An answer given as text or as a list of messages ending with the assistant's turn."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise _Bad(f'"{what}" must end with an assistant message')
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f'"{what}" must be a non-empty text')
    if "\x00" in value:
        raise _Bad(f'"{what}" contains a NUL character')
    if len(value) > MAX_MESSAGE_CHARS:
        raise _Bad(f'"{what}" is longer than {MAX_MESSAGE_CHARS} characters')
    return value


def pair_row_parse(record: Mapping[str, Any]) -> PairInput:
    for key in ("chosen", "rejected"):
        if record.get(key) is None:
            raise _Bad(f'missing field "{key}"')
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is None:
        # Implicit prompt: both sides are whole conversations sharing their first turns.
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise _Bad('missing field "prompt" (or give chosen and rejected as conversations)')
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise _Bad("chosen and rejected must share every turn but their last (the prompt)")
        prompt_value: Any = chosen[:-1]
    else:
        prompt_value = record["prompt"]
    prompt = prompt_row_parse({**record, "prompt": prompt_value})
    pair = PairInput(
        prompt=prompt, chosen=_answer(chosen, "chosen"), rejected=_answer(rejected, "rejected")
    )
    if pair.chosen.strip() == pair.rejected.strip():
        raise _Bad("chosen and rejected are the same text")
    return pair


PARSERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "prompts": prompt_row_parse,
    "pairs": pair_row_parse,
}


@dataclass
class Validated:
    rows: list[tuple[int, Any]] = field(default_factory=list)  # (line, PromptInput|PairInput)
    errors: list[RowError] = field(default_factory=list)


def import_validate(
    *,
    project: Project,
    kind: str,
    records: Iterable[tuple[int, Any]],
    on_progress: Callable[[int], None] | None = None,
) -> Validated:
    """Parse and check every record; nothing is written."""
    if kind not in PARSERS:
        raise ImportRefused([], f"Unknown import kind {kind!r}; expected one of {list(KINDS)}.")
    parse = PARSERS[kind]
    result = Validated()
    seen_ids: dict[str, int] = {}
    existing_ids = set(
        Prompt.objects.filter(project=project)
        .exclude(external_id="")
        .values_list("external_id", flat=True)
    )
    for count, (line, record) in enumerate(records, start=1):
        if count > MAX_ROWS:
            result.errors.append(RowError(line, f"more than {MAX_ROWS} rows; split the file"))
            break
        if on_progress is not None and count % 10_000 == 0:
            on_progress(count)
        if isinstance(record, RowError):
            result.errors.append(record)
            continue
        if not isinstance(record, Mapping):  # a JSON line or an API row of another kind
            what = type(record).__name__
            result.errors.append(RowError(line, f"a row must be a JSON object, not {what}"))
            continue
        try:
            row = parse(record)
        except _Bad as error:
            result.errors.append(RowError(line, str(error)))
            continue
        external_id = (row.prompt if kind == "pairs" else row).external_id
        if external_id:
            if external_id in seen_ids:
                result.errors.append(
                    RowError(line, f'id "{external_id}" repeats line {seen_ids[external_id]}')
                )
                continue
            if external_id in existing_ids:
                result.errors.append(
                    RowError(line, f'id "{external_id}" is already a prompt of this project')
                )
                continue
            seen_ids[external_id] = line
        result.rows.append((line, row))
    return result


# Writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    kind: str
    created: int  # prompts, or pairs
    skipped: list[RowError]  # the bad rows left out (valid_only)


def import_records(
    *,
    project: Project,
    kind: str,
    records: Iterable[tuple[int, Any]],
    valid_only: bool = False,
    round_number: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Validate everything, then write the rows in one transaction. With any bad row the
    import is refused (ImportRefused, nothing written) unless `valid_only`. `on_written` runs
    in that transaction after the writes (a job records its success there)."""
    validated = import_validate(
        project=project, kind=kind, records=records, on_progress=on_progress
    )
    if validated.errors and not valid_only:
        raise ImportRefused(validated.errors)
    if not validated.rows:
        raise ImportRefused(validated.errors, "No valid rows to import.")
    rows = [row for _, row in validated.rows]
    with transaction.atomic():
        if kind == "prompts":
            prompts_create(project=project, rows=rows)
        else:
            _pairs_write(project=project, rows=rows, round_number=round_number)
        coverage_refresh_request(project=project)  # embed and count the new prompts
        result = ImportResult(kind=kind, created=len(rows), skipped=validated.errors)
        if on_written is not None:
            on_written(result)
    return result


def import_file(
    *,
    project: Project,
    kind: str,
    source: bytes | Path,
    file_type: str,
    valid_only: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    return import_records(
        project=project,
        kind=kind,
        records=records_read(source, file_type),
        valid_only=valid_only,
        on_progress=on_progress,
        on_written=on_written,
    )


def file_type_guess(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".parquet"):
        return "parquet"
    return "dataset"


def _pairs_write(*, project: Project, rows: Sequence[PairInput], round_number: int) -> None:
    policy = project.policies.filter(name=IMPORTED_POLICY).first() or policy_create(
        project=project,
        name=IMPORTED_POLICY,
        kind=PolicyKind.EXTERNAL,
        description="Responses of imported preference pairs.",
    )
    batch = 2000
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        prompts = prompts_create(project=project, rows=[row.prompt for row in chunk])
        responses = responses_create(
            policy=policy,
            rows=[
                ResponseInput(prompt_id=prompt.pk, text=text, generation_params={})
                for prompt, row in zip(prompts, chunk, strict=True)
                for text in (row.chosen, row.rejected)
            ],
        )
        comparisons = Comparison.objects.bulk_create(
            [
                Comparison(
                    project=project,
                    prompt=prompt,
                    response_a=responses[2 * i],
                    response_b=responses[2 * i + 1],
                    round_number=round_number,
                    pairing_strategy="imported",
                    status=ComparisonStatus.COMPLETE,
                )
                for i, prompt in enumerate(prompts)
            ]
        )
        PreferencePair.objects.bulk_create(
            [
                PreferencePair(
                    project=project,
                    comparison=comparison,
                    kind=PairKind.PREFERENCE,
                    chosen=comparison.response_a,
                    rejected=comparison.response_b,
                    agreement=1.0,
                    n_judgments=0,
                )
                for comparison in comparisons
            ]
        )


# Large imports, by a worker -------------------------------------------------------------------

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
        job.progress_done = result.created + len(result.skipped)
        job.created_count = result.created
        job.message = f"Imported {result.created} {result.kind}."
        _job_errors_note(job, result.skipped)
        job_succeed(
            job, summary={"created": result.created, "skipped": len(result.skipped)}, also=_OUTCOME
        )

    try:
        import_file(
            project=job.project,
            kind=job.kind,
            source=Path(job.path),
            file_type=job.file_type,
            valid_only=job.valid_only,
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
