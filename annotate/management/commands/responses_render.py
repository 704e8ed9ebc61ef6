"""Render responses and prompts whose stored HTML is missing or from an older renderer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import models
from django.db.models import Q

from annotate.models import Prompt, Response
from annotate.rendering import RENDERER_VERSION, stored_html, stored_transcript

# model, the field rendered, how it is stored
_RENDERED: list[tuple[type[models.Model], str, Callable[[Any], tuple[str, int]]]] = [
    (Response, "text", stored_html),
    (Prompt, "messages", stored_transcript),
]


class Command(BaseCommand):
    help = (
        "Store the sanitised HTML of every response and prompt not yet rendered by the current "
        f"renderer (version {RENDERER_VERSION}). Pages render such items on the fly "
        "meanwhile, so this only saves that work; run it after upgrading. Safe to interrupt "
        "and run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=500, help="items per transaction")

    def handle(self, *args: Any, batch: int, **options: Any) -> None:
        for model, source, store in _RENDERED:
            stale = model._default_manager.filter(~Q(html_version=RENDERER_VERSION) | Q(html=""))
            name = model._meta.verbose_name_plural
            total = stale.count()
            done = 0
            while True:
                chunk = list(stale.order_by("id").only("id", source)[:batch])
                if not chunk:
                    break
                for item in chunk:
                    item.html, item.html_version = store(getattr(item, source))  # type: ignore[attr-defined]
                model._default_manager.bulk_update(chunk, ["html", "html_version"])
                done += len(chunk)
                self.stdout.write(f"{name}: rendered {done}/{total}")
            self.stdout.write(
                self.style.SUCCESS(f"{done} {name} rendered (version {RENDERER_VERSION}).")
            )
