"""Writing an import: everything checked first, then one transaction writes every row, or\nnothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
)
from annotate.services.prompts import ResponseInput, policy_create, prompts_create, responses_create

IMPORTED_POLICY = "imported"


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
