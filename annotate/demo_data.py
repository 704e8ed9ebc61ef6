"""The demo project's prompt bank and guidelines, written for Prefloop (annotate/demo/)."""

from __future__ import annotations

import json
from pathlib import Path

from annotate.models import Split
from annotate.services.prompts import PromptInput

DEMO_DIR = Path(__file__).resolve().parent / "demo"
# Every n-th prompt of the bank is held out for evaluation and never trained on.
HELD_OUT_EVERY = 6


def demo_guidelines() -> str:
    return (DEMO_DIR / "guidelines.md").read_text(encoding="utf-8")


def demo_prompts() -> list[PromptInput]:
    rows = []
    lines = (DEMO_DIR / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(line for line in lines if line.strip()):
        item = json.loads(line)
        rows.append(
            PromptInput(
                messages=item["messages"],
                tags=item.get("tags", []),
                source="prefloop-demo",
                external_id=item["id"],
                split=Split.EVAL if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else Split.TRAIN,
            )
        )
    return rows
