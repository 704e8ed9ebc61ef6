"""Checking records: each becomes a prompt or a pair to write, or a RowError naming what is
wrong; nothing is written here."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from annotate.imports.errors import ImportRefused, RowError
from annotate.models import Project, Prompt, Split
from annotate.services.prompts import MAX_MESSAGE_CHARS, PromptInput, prompt_messages_normalise
from core.errors import ValidationFailed

KINDS = ("prompts", "pairs")


MAX_ROWS = 2_000_000


MAX_TAGS = 32


MAX_TAG_CHARS = 64


MAX_ID_CHARS = 200


class _Bad(ValueError):
    """One row's problem (becomes a RowError with its line)."""


# A lone UTF-16 surrogate (JSON's escaped "\ud800", in a file or an API body) makes a str
# that cannot be encoded: not text anything downstream can hash, store or show.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unicode_check(value: str, what: str) -> None:
    if not value.isascii() and (found := _SURROGATE.search(value)):
        raise _Bad(
            f'"{what}" is not valid Unicode (a lone surrogate, U+{ord(found.group()):04X}, '
            f"at character {found.start()})"
        )


def _text(record: Mapping[str, Any], key: str, *, required: bool = False, limit: int = 0) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise _Bad(f'missing field "{key}"')
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str):
        raise _Bad(f'"{key}" must be text, not {type(value).__name__}')
    if "\x00" in value:
        raise _Bad(f'"{key}" contains a NUL character')
    _unicode_check(value, key)
    if limit and len(value) > limit:
        raise _Bad(f'"{key}" is longer than {limit} characters')
    return value


def _tags(record: Mapping[str, Any]) -> list[str]:
    value = record.get("tags")
    if value is None:
        return []
    if isinstance(value, str):  # CSV: "math, short"
        value = [tag.strip() for tag in value.split(",") if tag.strip()]
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise _Bad('"tags" must be a list of texts')
    if len(value) > MAX_TAGS:
        raise _Bad(f"more than {MAX_TAGS} tags")
    if any(len(tag) > MAX_TAG_CHARS or "\x00" in tag for tag in value):
        raise _Bad(f"a tag is longer than {MAX_TAG_CHARS} characters or contains NUL")
    for tag in value:
        _unicode_check(tag, "tags")
    return list(dict.fromkeys(value))


def _split(record: Mapping[str, Any]) -> str:
    split = _text(record, "split") or Split.TRAIN
    if split not in Split.values:
        raise _Bad(f'"split" is {split!r}; expected one of {Split.values}')
    return split


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str) and "\x00" in value:
        raise _Bad(f'"{what}" contains a NUL character')
    if not isinstance(value, str | list):
        raise _Bad(f'"{what}" must be text or a list of messages')
    try:
        messages = prompt_messages_normalise(value)
    except ValidationFailed as error:
        raise _Bad(f'"{what}": {error}') from None
    for message in messages:
        _unicode_check(message["content"], what)
    return messages


def prompt_row_parse(record: Mapping[str, Any]) -> PromptInput:
    key = next((k for k in ("prompt", "messages", "text") if record.get(k) is not None), None)
    if key is None:
        raise _Bad('missing field "prompt" (or "messages" or "text")')
    value = record[key]
    if isinstance(value, str) and value.lstrip().startswith("[") and key != "text":
        with contextlib.suppress(ValueError, RecursionError):  # CSV: message lists as JSON
            value = json.loads(value)
    return PromptInput(
        messages=_messages(value, key),
        tags=_tags(record),
        source=_text(record, "source", limit=200),
        external_id=_text(record, "id", limit=MAX_ID_CHARS),
        split=_split(record),
    )


@dataclass(frozen=True)
class PairInput:
    prompt: PromptInput
    chosen: str
    rejected: str


def _answer(value: Any, what: str) -> str:
    """An answer given as text or as a list of messages ending with the assistant's turn."""
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise _Bad(f'"{what}" must end with an assistant message')
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f'"{what}" must be a non-empty text')
    if "\x00" in value:
        raise _Bad(f'"{what}" contains a NUL character')
    _unicode_check(value, what)
    if len(value) > MAX_MESSAGE_CHARS:
        raise _Bad(f'"{what}" is longer than {MAX_MESSAGE_CHARS} characters')
    return value


def pair_row_parse(record: Mapping[str, Any]) -> PairInput:
    for key in ("chosen", "rejected"):
        if record.get(key) is None:
            raise _Bad(f'missing field "{key}"')
    chosen, rejected = record["chosen"], record["rejected"]
    if record.get("prompt") is None:
        # Implicit prompt: both sides are whole conversations sharing their first turns.
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise _Bad('missing field "prompt" (or give chosen and rejected as conversations)')
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise _Bad("chosen and rejected must share every turn but their last (the prompt)")
        prompt_value: Any = chosen[:-1]
    else:
        prompt_value = record["prompt"]
    prompt = prompt_row_parse({**record, "prompt": prompt_value})
    pair = PairInput(
        prompt=prompt, chosen=_answer(chosen, "chosen"), rejected=_answer(rejected, "rejected")
    )
    if pair.chosen.strip() == pair.rejected.strip():
        raise _Bad("chosen and rejected are the same text")
    return pair


PARSERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "prompts": prompt_row_parse,
    "pairs": pair_row_parse,
}


@dataclass
class Validated:
    rows: list[tuple[int, Any]] = field(default_factory=list)  # (line, PromptInput|PairInput)
    errors: list[RowError] = field(default_factory=list)


def rows_check(
    *,
    project: Project,
    kind: str,
    records: Iterable[tuple[int, Any]],
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Parse and check each record as it comes: (line, PromptInput | PairInput), or (line,
    RowError) for a bad one; nothing is written. `on_progress` hears the count of records
    read every 10,000."""
    if kind not in PARSERS:
        raise ImportRefused([], f"Unknown import kind {kind!r}; expected one of {list(KINDS)}.")
    parse = PARSERS[kind]
    seen_ids: dict[str, int] = {}
    existing_ids = set(
        Prompt.objects.filter(project=project)
        .exclude(external_id="")
        .values_list("external_id", flat=True)
    )
    for count, (line, record) in enumerate(records, start=1):
        if count > MAX_ROWS:
            yield line, RowError(line, f"more than {MAX_ROWS} rows; split the file")
            return
        if on_progress is not None and count % 10_000 == 0:
            on_progress(count)
        if isinstance(record, RowError):
            yield line, record
            continue
        if not isinstance(record, Mapping):  # a JSON line or an API row of another kind
            what = type(record).__name__
            yield line, RowError(line, f"a row must be a JSON object, not {what}")
            continue
        try:
            row = parse(record)
        except _Bad as error:
            yield line, RowError(line, str(error))
            continue
        external_id = (row.prompt if kind == "pairs" else row).external_id
        if external_id:
            if external_id in seen_ids:
                yield (
                    line,
                    RowError(line, f'id "{external_id}" repeats line {seen_ids[external_id]}'),
                )
                continue
            if external_id in existing_ids:
                yield (
                    line,
                    RowError(line, f'id "{external_id}" is already a prompt of this project'),
                )
                continue
            seen_ids[external_id] = line
        yield line, row


def import_validate(
    *,
    project: Project,
    kind: str,
    records: Iterable[tuple[int, Any]],
    on_progress: Callable[[int], None] | None = None,
) -> Validated:
    """Parse and check every record, keeping them all; nothing is written."""
    result = Validated()
    for line, row in rows_check(
        project=project, kind=kind, records=records, on_progress=on_progress
    ):
        if isinstance(row, RowError):
            result.errors.append(row)
        else:
            result.rows.append((line, row))
    return result
