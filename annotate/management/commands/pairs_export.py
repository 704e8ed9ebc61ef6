"""Export a project's preference pairs as a dataset directory (data file + dataset card)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.exports import FILE_TYPES, FORMATS, SPLITS, ExportError, ExportFilters, export_write
from annotate.models import Project


class Command(BaseCommand):
    help = (
        "Export preference pairs in TRL's conversational layouts, streamed: OUT_DIR gets "
        "data/train.jsonl (or .parquet) and a dataset card README.md, so "
        "datasets.load_dataset(OUT_DIR) reads it. Formats: "
        + "; ".join(f"{name}: {text}" for name, text in FORMATS.items())
        + ". Held-out (eval) prompts are left out unless --split says otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project", help="the project's slug")
        parser.add_argument("out_dir", type=Path, help="a new or empty directory")
        parser.add_argument("--format", choices=sorted(FORMATS), default="dpo")
        parser.add_argument("--file-type", choices=FILE_TYPES, default="jsonl")
        parser.add_argument("--split", choices=SPLITS, default="train")
        parser.add_argument(
            "--rounds", default="", help="comma-separated round numbers (default: every round)"
        )
        parser.add_argument("--min-agreement", type=float, default=0.0, help="0 to 1")
        parser.add_argument(
            "--tag", action="append", default=[], help="only prompts with this tag (repeatable)"
        )
        parser.add_argument(
            "--no-ties", action="store_true", help="kto: leave ties and both-bad pairs out"
        )
        parser.add_argument(
            "--criterion",
            action="append",
            default=[],
            help="only pairs whose winner also won this criterion, by its votes (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"There is no project {options['project']!r}.")
        try:
            rounds = tuple(int(r) for r in options["rounds"].split(",") if r.strip())
        except ValueError:
            raise CommandError("--rounds takes whole numbers, e.g. 1,2.") from None
        started = time.monotonic()

        def progress(rows: int) -> None:
            rate = rows / max(time.monotonic() - started, 1e-9)
            sys.stderr.write(f"\rexported {rows} rows ({rate:,.0f} rows/s)")
            sys.stderr.flush()

        try:
            result = export_write(
                project=project,
                directory=options["out_dir"],
                format=options["format"],
                file_type=options["file_type"],
                filters=ExportFilters(
                    rounds=rounds,
                    min_agreement=options["min_agreement"],
                    split=options["split"],
                    tags=tuple(options["tag"]),
                    include_ties=not options["no_ties"],
                    criteria=tuple(options["criterion"]),
                ),
                on_progress=progress,
            )
        except ExportError as error:
            raise CommandError(str(error)) from None
        sys.stderr.write("\n")
        self.stdout.write(
            self.style.SUCCESS(
                f"{result.rows} rows in {result.data_file} (card: {result.card_file}) "
                f"in {time.monotonic() - started:.1f} s"
            )
        )
