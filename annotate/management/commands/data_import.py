"""Import prompts or preference pairs into a project from a file or a datasets directory."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.imports.errors import ImportRefused
from annotate.imports.reading import FILE_TYPES, file_type_guess
from annotate.imports.rows import KINDS
from annotate.imports.writing import import_file
from annotate.models import Project


class Command(BaseCommand):
    help = (
        "Import prompts or existing preference pairs (TRL conversational or standard layout, "
        "or chosen/rejected conversations with an implicit prompt) from JSONL, CSV, Parquet or "
        "a Hugging Face datasets directory. Every row is checked first; with any bad row "
        "nothing is written and each bad row is listed with its line, unless --valid-only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project", help="the project's slug")
        parser.add_argument(
            "source", type=Path, help="a .jsonl, .csv or .parquet file, or a directory"
        )
        parser.add_argument("--kind", choices=KINDS, default="prompts")
        parser.add_argument(
            "--file-type",
            choices=FILE_TYPES,
            default=None,
            help="default: from the name (.jsonl/.json, .csv, .parquet; a directory is a dataset)",
        )
        parser.add_argument(
            "--valid-only", action="store_true", help="import the valid rows, skip the bad ones"
        )
        parser.add_argument(
            "--keep-duplicates",
            action="store_true",
            help="import rows already in the project (same content hash) again; by default "
            "they are skipped and their lines listed",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"There is no project {options['project']!r}.")
        source: Path = options["source"]
        if not source.exists():
            raise CommandError(f"{source} does not exist.")
        file_type = options["file_type"] or (
            "dataset" if source.is_dir() else file_type_guess(source.name)
        )
        started = time.monotonic()

        def progress(rows: int) -> None:
            sys.stderr.write(f"\rchecked {rows} rows ({time.monotonic() - started:.0f} s)")
            sys.stderr.flush()

        try:
            result = import_file(
                project=project,
                kind=options["kind"],
                source=source,
                file_type=file_type,
                valid_only=options["valid_only"],
                keep_duplicates=options["keep_duplicates"],
                on_progress=progress,
            )
        except ImportRefused as refused:
            for error in refused.errors[:100]:
                self.stderr.write(str(error))
            if len(refused.errors) > 100:
                self.stderr.write(f"... and {len(refused.errors) - 100} more")
            raise CommandError(str(refused)) from None
        for error in result.skipped[:100]:
            self.stderr.write(f"skipped {error}")
        self.stdout.write(
            self.style.SUCCESS(
                f"{project.slug}: {result.summary()} ({time.monotonic() - started:.1f} s)"
            )
        )
