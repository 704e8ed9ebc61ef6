"""Prompts (chat messages, content-hashed) and the responses of a policy to them."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from annotate.diversity import language_guess
from annotate.models import Policy, PolicyKind, Project, Prompt, Response, Split
from annotate.rendering import stored_html, stored_transcript
from core.errors import ValidationFailed

MAX_MESSAGE_CHARS = 32_000


CHAT_ROLES = {"system", "user", "assistant"}


def prompt_messages_normalise(value: str | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validated chat messages from a text or a message list; the last turn is the user's."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, Sequence) or not value:
        raise ValidationFailed("A prompt needs text or a non-empty list of messages.")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValidationFailed(f"Message {index} is not an object with role and content.")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise ValidationFailed(
                f"Message {index} has role {role!r}; expected one of {sorted(CHAT_ROLES)}."
            )
        if not isinstance(content, str) or not content.strip():
            raise ValidationFailed(f"Message {index} has empty or non-text content.")
        if "\x00" in content:
            raise ValidationFailed(f"Message {index} contains a NUL character.")
        if len(content) > MAX_MESSAGE_CHARS:
            raise ValidationFailed(
                f"Message {index} is longer than {MAX_MESSAGE_CHARS} characters."
            )
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise ValidationFailed("The last message of a prompt must be the user's.")
    return messages


def prompt_content_hash(messages: Sequence[Mapping[str, str]]) -> str:
    """Hash of the normalised conversation: case, Unicode form and whitespace do not count."""
    normalised = [
        [m["role"], " ".join(unicodedata.normalize("NFKC", m["content"]).casefold().split())]
        for m in messages
    ]
    return hashlib.sha256(json.dumps(normalised, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class PromptInput:
    messages: str | Sequence[Mapping[str, Any]]
    tags: Sequence[str] = ()
    source: str = ""
    external_id: str = ""
    split: str = Split.TRAIN


def prompt_language(messages: Sequence[Mapping[str, str]]) -> str:
    """The language guess of what the prompt's user turns ask."""
    return language_guess(" ".join(m["content"] for m in messages if m.get("role") == "user"))


def prompts_create(*, project: Project, rows: Iterable[PromptInput]) -> list[Prompt]:
    """Validate every row first, then write all of them in one transaction (or none)."""
    prompts: list[Prompt] = []
    for line, row in enumerate(rows, start=1):
        try:
            messages = prompt_messages_normalise(row.messages)
        except ValidationFailed as error:
            raise ValidationFailed(f"Prompt {line}: {error}") from None
        if row.split not in Split.values:
            raise ValidationFailed(
                f"Prompt {line}: split {row.split!r} is not one of {Split.values}."
            )
        html, version = stored_transcript(messages)
        prompts.append(
            Prompt(
                project=project,
                messages=messages,
                tags=[str(tag) for tag in row.tags],
                source=row.source,
                external_id=row.external_id,
                split=row.split,
                content_hash=prompt_content_hash(messages),
                language=prompt_language(messages),
                html=html,
                html_version=version,
            )
        )
    with transaction.atomic():
        return Prompt.objects.bulk_create(prompts, batch_size=500)


def policy_create(
    *, project: Project, name: str, kind: str = PolicyKind.MODEL, description: str = ""
) -> Policy:
    return Policy.objects.create(project=project, name=name, kind=kind, description=description)


@dataclass(frozen=True)
class ResponseInput:
    prompt_id: int
    text: str
    generation_params: Mapping[str, Any]
    seed: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = ""


def responses_create(*, policy: Policy, rows: Sequence[ResponseInput]) -> list[Response]:
    texts = [row.text.replace("\x00", "") for row in rows]
    return Response.objects.bulk_create(
        [
            Response(
                prompt_id=row.prompt_id,
                policy=policy,
                text=text,
                html=html,
                html_version=version,
                generation_params=dict(row.generation_params),
                seed=row.seed,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                finish_reason=row.finish_reason,
            )
            for row, text in zip(rows, texts, strict=True)
            for html, version in [stored_html(text)]
        ]
    )
