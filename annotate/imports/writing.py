"""Writing an import: everything checked first, then one transaction writes every row, a
chunk at a time, or nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from annotate.coverage import coverage_refresh_request
from annotate.imports.errors import ImportRefused, RowError
from annotate.imports.reading import Source, records_read
from annotate.imports.rows import PairInput, rows_check
from annotate.models import (
    Comparison,
    ComparisonStatus,
    PairKind,
    Policy,
    PolicyKind,
    PreferencePair,
    Project,
    Prompt,
)
from annotate.services.prompts import (
    PromptInput,
    ResponseInput,
    policy_create,
    prompt_content_hash,
    prompt_messages_normalise,
    prompts_create,
    responses_create,
)
from core.errors import ValidationFailed

IMPORTED_POLICY = "imported"


@dataclass(frozen=True)
class ImportResult:
    kind: str
    created: int  # prompts, or pairs
    skipped: list[RowError]  # the bad rows left out (valid_only)
    duplicates: list[int] = field(default_factory=list)  # lines left out as already there

    def summary(self) -> str:
        """One sentence of what the import did, for the page, the CLI and the job."""
        parts = [f"Imported {self.created} {self.kind}"]
        if self.duplicates:
            lines = ", ".join(str(line) for line in self.duplicates[:10])
            more = ", ..." if len(self.duplicates) > 10 else ""
            parts.append(
                f"skipped {len(self.duplicates)} duplicate{'s' if len(self.duplicates) != 1 else ''}"
                f" of {self.kind} already in the project or earlier in the file (lines {lines}{more})"
            )
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} bad rows")
        return "; ".join(parts) + "."


def import_records(
    *,
    project: Project,
    kind: str,
    records: Iterable[tuple[int, Any]],
    valid_only: bool = False,
    keep_duplicates: bool = False,
    round_number: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import rows held in memory (an API body); see `_import`."""
    rows = records if isinstance(records, Sequence) else list(records)
    return _import(
        project=project,
        kind=kind,
        records=lambda: rows,
        valid_only=valid_only,
        keep_duplicates=keep_duplicates,
        round_number=round_number,
        on_progress=on_progress,
        on_written=on_written,
    )


def import_file(
    *,
    project: Project,
    kind: str,
    source: Source,
    file_type: str,
    valid_only: bool = False,
    keep_duplicates: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a file (its bytes, its path, or an open binary file), read as a stream twice:
    once to check it, once to write it; see `_import`."""
    return _import(
        project=project,
        kind=kind,
        records=lambda: records_read(source, file_type),
        valid_only=valid_only,
        keep_duplicates=keep_duplicates,
        on_progress=on_progress,
        on_written=on_written,
    )


# Rows written at once, at most: what an import holds, besides the lines it reports.
WRITE_CHUNK = 1000
WRITE_CHUNK_CHARS = 2 * 2**20


def _import(
    *,
    project: Project,
    kind: str,
    records: Callable[[], Iterable[tuple[int, Any]]],
    valid_only: bool = False,
    keep_duplicates: bool = False,
    round_number: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Check every row, then write the rows in one transaction. With any bad row the import
    is refused (ImportRefused, nothing written) unless `valid_only`. Rows already in the
    project, or earlier in the same file, are left out and reported (by content hash: case,
    Unicode form and spacing do not count) unless `keep_duplicates`. `on_written` runs in that
    transaction after the writes (a job records its success there).

    `records` gives a fresh pass over the rows each call: the first pass keeps only the
    errors, the second writes the rows a chunk at a time, so neither holds the file."""
    errors: list[RowError] = []
    checked = 0
    for _, row in rows_check(
        project=project, kind=kind, records=records(), on_progress=on_progress
    ):
        checked += 1
        if isinstance(row, RowError):
            errors.append(row)
    if errors and not valid_only:
        raise ImportRefused(errors)
    if checked == len(errors):
        raise ImportRefused(errors, "No valid rows to import.")

    def beat(count: int) -> None:  # the rows were counted by the first pass
        if on_progress is not None:
            on_progress(checked)

    with transaction.atomic():
        # The second pass's verdict is the one kept: the project may have changed since the
        # first (an id taken by another import meanwhile).
        errors = []
        writer = _ChunkWriter(
            project=project, kind=kind, keep_duplicates=keep_duplicates, round_number=round_number
        )
        for line, row in rows_check(
            project=project, kind=kind, records=records(), on_progress=beat
        ):
            if isinstance(row, RowError):
                errors.append(row)
            else:
                writer.add(line, row)
        writer.flush()
        if errors and not valid_only:
            raise ImportRefused(errors)
        if not writer.created:
            if writer.duplicates:
                raise ImportRefused(
                    errors,
                    f"Every row is already in the project ({len(writer.duplicates)} "
                    "duplicates); nothing to import. Ask to keep duplicates to import them again.",
                )
            raise ImportRefused(errors, "No valid rows to import.")
        coverage_refresh_request(project=project)  # embed and count the new prompts
        result = ImportResult(
            kind=kind, created=writer.created, skipped=errors, duplicates=writer.duplicates
        )
        if on_written is not None:
            on_written(result)
    return result


class _ChunkWriter:
    """Writes an import's rows a chunk at a time, in the caller's transaction; a row already
    in the project is left out (unless asked to keep it), which finds the duplicates earlier
    in the file too: their chunks are written by then."""

    def __init__(
        self, *, project: Project, kind: str, keep_duplicates: bool, round_number: int
    ) -> None:
        self.project, self.kind = project, kind
        self.keep_duplicates, self.round_number = keep_duplicates, round_number
        self.created = 0
        self.duplicates: list[int] = []
        self._chunk: list[tuple[int, Any]] = []
        self._chunk_chars = 0
        self._policy: Policy | None = None

    def add(self, line: int, row: PromptInput | PairInput) -> None:
        self._chunk.append((line, row))
        self._chunk_chars += _row_chars(row)
        if len(self._chunk) >= WRITE_CHUNK or self._chunk_chars >= WRITE_CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        chunk, self._chunk, self._chunk_chars = self._chunk, [], 0
        if not self.keep_duplicates:
            chunk, duplicates = _duplicates_drop(project=self.project, kind=self.kind, rows=chunk)
            self.duplicates.extend(duplicates)
        if not chunk:
            return
        rows = [row for _, row in chunk]
        if self.kind == "prompts":
            prompts_create(project=self.project, rows=rows)
        else:
            if self._policy is None:
                self._policy = _imported_policy(project=self.project)
            _pairs_write(
                project=self.project,
                policy=self._policy,
                rows=rows,
                round_number=self.round_number,
            )
        self.created += len(rows)


def _row_chars(row: PromptInput | PairInput) -> int:
    if isinstance(row, PairInput):
        return _row_chars(row.prompt) + len(row.chosen) + len(row.rejected)
    messages = row.messages  # normalised by the checks: a list of messages
    return len(messages) if isinstance(messages, str) else sum(len(m["content"]) for m in messages)


def _prompt_key(prompt: PromptInput) -> str | None:
    try:
        return prompt_content_hash(prompt_messages_normalise(prompt.messages))
    except ValidationFailed:
        return None  # refused with its reason when written


def _pair_key(prompt_hash: str, chosen: str, rejected: str) -> str:
    text = "\0".join((prompt_hash, " ".join(chosen.split()), " ".join(rejected.split())))
    return hashlib.sha256(text.encode()).hexdigest()


_LOOKUP_CHUNK = 500


def _duplicates_drop(
    *, project: Project, kind: str, rows: list[tuple[int, Any]]
) -> tuple[list[tuple[int, Any]], list[int]]:
    """The rows that are new, and the lines of those already in the project or earlier in
    the file: a prompt by its content hash; a pair by its prompt's hash and its two texts."""
    prompt_keys = [_prompt_key(row if kind == "prompts" else row.prompt) for _, row in rows]
    wanted = sorted({key for key in prompt_keys if key is not None})
    seen: set[str] = set()
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        # Looked up by hash alone, the project checked here: with the project in the query,
        # SQLite walks every prompt of the project for each chunk (its index on the project
        # is the one it picks), and the project grows with each chunk an import writes.
        found = {
            prompt_id: content_hash
            for prompt_id, project_id, content_hash in Prompt.objects.filter(
                content_hash__in=wanted[start : start + _LOOKUP_CHUNK]
            )
            .order_by()
            .values_list("id", "project_id", "content_hash")
            if project_id == project.pk
        }
        if kind == "prompts":
            seen.update(found.values())
            continue
        prompt_ids = list(found)  # a prompt's text may be that of many pairs' prompts
        for first in range(0, len(prompt_ids), _LOOKUP_CHUNK):
            seen.update(
                _pair_key(found[prompt_id], chosen, rejected)
                for project_id, pair_kind, prompt_id, chosen, rejected in (
                    PreferencePair.objects.filter(
                        comparison__prompt_id__in=prompt_ids[first : first + _LOOKUP_CHUNK]
                    )
                    .order_by()
                    .values_list(
                        "project_id",
                        "kind",
                        "comparison__prompt_id",
                        "chosen__text",
                        "rejected__text",
                    )
                )
                if project_id == project.pk and pair_kind == PairKind.PREFERENCE
            )
    kept: list[tuple[int, Any]] = []
    duplicates: list[int] = []
    for (line, row), prompt_key in zip(rows, prompt_keys, strict=True):
        key = prompt_key
        if key is not None and kind != "prompts":
            key = _pair_key(key, row.chosen, row.rejected)
        if key is not None and key in seen:
            duplicates.append(line)
            continue
        if key is not None:
            seen.add(key)
        kept.append((line, row))
    return kept, duplicates


def _imported_policy(*, project: Project) -> Policy:
    return project.policies.filter(name=IMPORTED_POLICY).first() or policy_create(
        project=project,
        name=IMPORTED_POLICY,
        kind=PolicyKind.EXTERNAL,
        description="Responses of imported preference pairs.",
    )


def _pairs_write(
    *, project: Project, policy: Policy, rows: Sequence[PairInput], round_number: int
) -> None:
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
