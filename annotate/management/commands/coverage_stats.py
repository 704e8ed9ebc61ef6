"""Compute a project's prompt-diversity and coverage statistics now, in this process."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.coverage import coverage_refresh
from annotate.models import Project


class Command(BaseCommand):
    help = (
        "Embed the project's new prompts (the packaged all-MiniLM-L6-v2), cluster them and "
        "store the statistics of every scope (the project, each round, each dataset snapshot) "
        "that the Coverage page and GET /api/v1/projects/<slug>/coverage/ show. A worker does "
        "the same on its own when the prompts or pairs change; this runs it here, with progress."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project", help="the project's slug")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"There is no project {options['project']!r}.")
        started = time.monotonic()

        def progress(message: str) -> None:
            # Embedding reports as it goes (one line, rewritten); the other steps once each.
            end = "" if message.startswith("embedded ") and "/" in message else "\n"
            self.stderr.write(f"\r{message} ({time.monotonic() - started:.0f} s)", ending=end)
            self.stderr.flush()

        stored = coverage_refresh(project=project, on_progress=progress)
        for stats in stored:
            data = stats.data
            self.stdout.write(
                f"{stats.scope}: {data.get('prompts', 0)} prompts, {data.get('k')} clusters, "
                f"evenness {data.get('evenness')}, Vendi {data.get('vendi')}, "
                f"exact duplicates {data.get('exact_duplicates', {}).get('extra', 0)}, "
                f"near-duplicate pairs {data.get('near_duplicates', {}).get('pairs', 0)}"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Statistics of {len(stored)} scopes stored in {time.monotonic() - started:.1f} s."
            )
        )
