"""Writing an import: everything checked first, then one transaction writes every row, or\nnothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from annotate.coverage import coverage_refresh_request
from annotate.imports.errors import ImportRefused, RowError
from annotate.imports.reading import records_read
from annotate.imports.rows import PairInput, import_validate
from annotate.models import (
    Comparison,
    ComparisonStatus,
    PairKind,
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
    """Validate everything, then write the rows in one transaction. With any bad row the
    import is refused (ImportRefused, nothing written) unless `valid_only`. Rows already in
    the project, or earlier in the same file, are left out and reported (by content hash:
    case, Unicode form and spacing do not count) unless `keep_duplicates`. `on_written` runs
    in that transaction after the writes (a job records its success there)."""
    validated = import_validate(
        project=project, kind=kind, records=records, on_progress=on_progress
    )
    if validated.errors and not valid_only:
        raise ImportRefused(validated.errors)
    if not validated.rows:
        raise ImportRefused(validated.errors, "No valid rows to import.")
    numbered = list(validated.rows)
    duplicates: list[int] = []
    if not keep_duplicates:
        numbered, duplicates = _duplicates_drop(project=project, kind=kind, rows=numbered)
        if not numbered:
            raise ImportRefused(
                validated.errors,
                f"Every row is already in the project ({len(duplicates)} duplicates); nothing "
                "to import. Ask to keep duplicates to import them again.",
            )
    rows = [row for _, row in numbered]
    with transaction.atomic():
        if kind == "prompts":
            prompts_create(project=project, rows=rows)
        else:
            _pairs_write(project=project, rows=rows, round_number=round_number)
        coverage_refresh_request(project=project)  # embed and count the new prompts
        result = ImportResult(
            kind=kind, created=len(rows), skipped=validated.errors, duplicates=duplicates
        )
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
    keep_duplicates: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_written: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    return import_records(
        project=project,
        kind=kind,
        records=records_read(source, file_type),
        valid_only=valid_only,
        keep_duplicates=keep_duplicates,
        on_progress=on_progress,
        on_written=on_written,
    )


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
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        if kind == "prompts":
            seen.update(
                Prompt.objects.filter(project=project, content_hash__in=chunk).values_list(
                    "content_hash", flat=True
                )
            )
        else:
            seen.update(
                _pair_key(*found)
                for found in PreferencePair.objects.filter(
                    project=project,
                    kind=PairKind.PREFERENCE,
                    comparison__prompt__content_hash__in=chunk,
                ).values_list("comparison__prompt__content_hash", "chosen__text", "rejected__text")
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
