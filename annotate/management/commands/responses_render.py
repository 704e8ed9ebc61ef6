"""Render responses whose stored HTML is missing or from an older renderer."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Q

from annotate.models import Response
from annotate.rendering import RENDERER_VERSION, stored_html


class Command(BaseCommand):
    help = (
        "Store the sanitised HTML of every response not yet rendered by the current renderer "
        f"(version {RENDERER_VERSION}). Pages render such responses on the fly meanwhile, so "
        "this only saves that work; run it after upgrading. Safe to interrupt and run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=500, help="responses per transaction")

    def handle(self, *args: Any, batch: int, **options: Any) -> None:
        stale = Response.objects.filter(~Q(html_version=RENDERER_VERSION) | Q(html=""))
        total = stale.count()
        done = 0
        while True:
            chunk = list(stale.order_by("id").only("id", "text")[:batch])
            if not chunk:
                break
            for response in chunk:
                response.html, response.html_version = stored_html(response.text)
            Response.objects.bulk_update(chunk, ["html", "html_version"])
            done += len(chunk)
            self.stdout.write(f"rendered {done}/{total}")
        self.stdout.write(
            self.style.SUCCESS(f"{done} responses rendered (version {RENDERER_VERSION}).")
        )
