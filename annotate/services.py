"""Writes of the human side: projects, guidelines, prompts, responses, comparisons, judgments."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate.access import project_role
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    DatasetSnapshot,
    Guideline,
    Judgment,
    Lease,
    LeaseState,
    Membership,
    PairKind,
    Policy,
    PolicyKind,
    PreferencePair,
    Project,
    Prompt,
    Purpose,
    RationaleMode,
    Response,
    Role,
    Split,
)

MAX_MESSAGE_CHARS = 32_000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000
CHAT_ROLES = {"system", "user", "assistant"}


class ValidationFailed(Exception):
    """Bad input: the message names what is wrong; nothing was written."""


# Projects, members, guidelines ---------------------------------------------------------------


def project_create(
    *,
    name: str,
    slug: str,
    guidelines: str,
    created_by: User | None = None,
    **settings: Any,
) -> Project:
    with transaction.atomic():
        project = Project.objects.create(name=name, slug=slug, **settings)
        guideline_publish(
            project=project, body=guidelines, changes="First version.", created_by=created_by
        )
        if created_by is not None:
            membership_set(project=project, user=created_by, role=Role.LEAD)
    return project


def membership_set(*, project: Project, user: User, role: Role) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role}
    )
    return membership


def guideline_current(*, project: Project) -> Guideline | None:
    return project.guidelines.order_by("-version").first()


def guideline_publish(
    *, project: Project, body: str, changes: str = "", created_by: User | None = None
) -> Guideline:
    if not body.strip():
        raise ValidationFailed("Guidelines cannot be empty.")
    with transaction.atomic():
        current = guideline_current(project=project)
        version = (current.version if current else 0) + 1
        return Guideline.objects.create(
            project=project, version=version, body=body, changes=changes, created_by=created_by
        )


# Prompts and responses ------------------------------------------------------------------------


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
        if role not in CHAT_ROLES:
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
        prompts.append(
            Prompt(
                project=project,
                messages=messages,
                tags=[str(tag) for tag in row.tags],
                source=row.source,
                external_id=row.external_id,
                split=row.split,
                content_hash=prompt_content_hash(messages),
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
    return Response.objects.bulk_create(
        [
            Response(
                prompt_id=row.prompt_id,
                policy=policy,
                text=row.text.replace("\x00", ""),
                generation_params=dict(row.generation_params),
                seed=row.seed,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                finish_reason=row.finish_reason,
            )
            for row in rows
        ]
    )


def comparison_create(
    *,
    response_a: Response,
    response_b: Response,
    round_number: int,
    purpose: str = Purpose.TRAIN,
    pairing_strategy: str = "",
    rng: random.Random | None = None,
    gold_choice: str = "",
) -> Comparison:
    if response_a.pk == response_b.pk:
        raise ValidationFailed("A comparison needs two different responses.")
    if response_a.prompt_id != response_b.prompt_id:
        raise ValidationFailed("Both responses of a comparison must answer the same prompt.")
    prompt = response_a.prompt
    return Comparison.objects.create(
        project_id=prompt.project_id,
        prompt=prompt,
        response_a=response_a,
        response_b=response_b,
        left_is_a=(rng or random.SystemRandom()).random() < 0.5,
        round_number=round_number,
        purpose=purpose,
        pairing_strategy=pairing_strategy,
        gold_choice=gold_choice,
    )


# Judgments ---------------------------------------------------------------------------------


class JudgmentRejected(ValidationFailed):
    """The judgment cannot be taken (not allowed, already complete, ...)."""


SIDE_CHOICES = {"left", "right", "tie", "both_bad"}


def choice_from_side(*, comparison: Comparison, side: str) -> Choice:
    """What a click on a side means for the comparison's responses."""
    if side not in SIDE_CHOICES:
        raise JudgmentRejected(f"Unknown choice {side!r}; expected one of {sorted(SIDE_CHOICES)}.")
    if side == "left":
        return Choice.A if comparison.left_is_a else Choice.B
    if side == "right":
        return Choice.B if comparison.left_is_a else Choice.A
    return Choice(side)


def judgment_submit(
    *,
    comparison_id: int,
    annotator: User,
    choice: str,
    idempotency_key: str | None = None,
    strength: int | None = None,
    criteria: Mapping[str, str] | None = None,
    rationale: str = "",
    reason_tags: Sequence[str] = (),
    time_spent_ms: int | None = None,
) -> Judgment:
    """Record one annotator's judgment of a comparison.

    A retried submit with the same idempotency key returns the first judgment unchanged.
    Never more judgments than the project's overlap; one per (annotator, comparison).
    """
    if idempotency_key:
        existing = Judgment.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.annotator_id != annotator.pk or existing.comparison_id != comparison_id:
                raise JudgmentRejected("This idempotency key belongs to another judgment.")
            return existing
    try:
        with transaction.atomic():
            comparison = (
                Comparison.objects.select_for_update()
                .select_related("project")
                .get(pk=comparison_id)
            )
            project = comparison.project
            if project_role(user=annotator, project=project) is None:
                raise JudgmentRejected("You are not a member of this project.")
            choice_value = _choice_validate(project=project, choice=choice)
            _details_validate(
                project=project,
                strength=strength,
                criteria=criteria or {},
                rationale=rationale,
                time_spent_ms=time_spent_ms,
            )
            if Judgment.objects.filter(annotator=annotator, comparison=comparison).exists():
                raise JudgmentRejected("You have already judged this comparison.")
            if (
                comparison.status != ComparisonStatus.OPEN
                or comparison.judgment_count >= project.overlap
            ):
                raise JudgmentRejected("This comparison already has all the judgments it needs.")
            judgment = Judgment.objects.create(
                comparison=comparison,
                annotator=annotator,
                choice=choice_value,
                left_was_a=comparison.left_is_a,
                strength=strength,
                criteria=dict(criteria or {}),
                rationale=rationale.strip(),
                reason_tags=list(reason_tags),
                time_spent_ms=time_spent_ms,
                guideline=guideline_current(project=project),
                idempotency_key=idempotency_key or None,
            )
            comparison.judgment_count = F("judgment_count") + 1
            comparison.save(update_fields=["judgment_count"])
            comparison.refresh_from_db(fields=["judgment_count"])
            if comparison.judgment_count >= project.overlap:
                comparison.status = ComparisonStatus.COMPLETE
                comparison.save(update_fields=["status"])
                pair_aggregate(comparison=comparison)
            Lease.objects.filter(comparison=comparison, annotator=annotator).update(
                state=LeaseState.SUBMITTED, updated_at=timezone.now()
            )
    except IntegrityError:
        # A concurrent twin of this submit won the race (same key or same annotator).
        if idempotency_key:
            existing = Judgment.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing
        raise JudgmentRejected("You have already judged this comparison.") from None
    return judgment


def _choice_validate(*, project: Project, choice: str) -> Choice:
    if choice not in Choice.values:
        raise JudgmentRejected(f"Unknown choice {choice!r}; expected one of {Choice.values}.")
    if choice == Choice.TIE and not project.allow_tie:
        raise JudgmentRejected("This project does not allow ties.")
    if choice == Choice.BOTH_BAD and not project.allow_both_bad:
        raise JudgmentRejected("This project does not allow 'both bad'.")
    return Choice(choice)


def _details_validate(
    *,
    project: Project,
    strength: int | None,
    criteria: Mapping[str, str],
    rationale: str,
    time_spent_ms: int | None,
) -> None:
    if time_spent_ms is not None and not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise JudgmentRejected("Time spent must be between 0 and 24 hours (in milliseconds).")
    if strength is not None and strength not in (1, 2, 3):
        raise JudgmentRejected("Strength must be 1 (slightly), 2 (clearly) or 3 (much better).")
    unknown = set(criteria) - set(project.criteria)
    if unknown:
        raise JudgmentRejected(f"Unknown criteria: {', '.join(sorted(unknown))}.")
    bad = {name for name, value in criteria.items() if value not in Choice.values}
    if bad:
        raise JudgmentRejected(f"Criteria with an unknown choice: {', '.join(sorted(bad))}.")
    if project.rationale == RationaleMode.REQUIRED and not rationale.strip():
        raise JudgmentRejected("This project requires a rationale with each judgment.")


# Aggregation and snapshots ------------------------------------------------------------------


def pair_aggregate(*, comparison: Comparison) -> PreferencePair | None:
    """Majority vote of the comparison's judgments (an adjudication decides alone)."""
    judgments = list(comparison.judgments.all())
    if not judgments:
        PreferencePair.objects.filter(comparison=comparison).delete()
        return None
    adjudications = [j for j in judgments if j.is_adjudication]
    votes = Counter(j.choice for j in (adjudications[-1:] or judgments))
    (top, top_count), *rest = votes.most_common()
    if rest and rest[0][1] == top_count:
        top = Choice.TIE  # a split vote is no preference
    agreement = Counter(j.choice for j in judgments)[top] / len(judgments)
    if top == Choice.A:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.response_a_id,
            comparison.response_b_id,
        )
    elif top == Choice.B:
        kind, chosen, rejected = (
            PairKind.PREFERENCE,
            comparison.response_b_id,
            comparison.response_a_id,
        )
    else:
        kind = PairKind.TIE if top == Choice.TIE else PairKind.BOTH_BAD
        chosen, rejected = comparison.response_a_id, comparison.response_b_id
    pair, _ = PreferencePair.objects.update_or_create(
        comparison=comparison,
        defaults={
            "project_id": comparison.project_id,
            "kind": kind,
            "chosen_id": chosen,
            "rejected_id": rejected,
            "agreement": agreement,
            "n_judgments": len(judgments),
        },
    )
    return pair


@dataclass(frozen=True)
class SnapshotFilters:
    rounds: tuple[int, ...] = ()  # empty: every round
    min_agreement: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rounds": list(self.rounds),
            "min_agreement": self.min_agreement,
            "kind": "preference",
            "purpose": Purpose.TRAIN,
            "split": Split.TRAIN,
        }


def snapshot_pairs(*, project: Project, filters: SnapshotFilters) -> list[PreferencePair]:
    pairs = PreferencePair.objects.filter(
        project=project,
        kind=PairKind.PREFERENCE,
        agreement__gte=filters.min_agreement,
        comparison__purpose=Purpose.TRAIN,
        comparison__prompt__split=Split.TRAIN,  # held-out prompts never reach training
    ).select_related("comparison__prompt", "chosen", "rejected")
    if filters.rounds:
        pairs = pairs.filter(comparison__round_number__in=filters.rounds)
    return list(pairs.order_by("id"))


def snapshot_content_hash(pairs: Sequence[PreferencePair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        row = [pair.pk, pair.comparison.prompt.messages, pair.chosen.text, pair.rejected.text]
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def snapshot_create(
    *, project: Project, filters: SnapshotFilters, created_by: User | None = None
) -> DatasetSnapshot:
    pairs = snapshot_pairs(project=project, filters=filters)
    if not pairs:
        raise ValidationFailed(
            "No preference pairs match these filters yet: judge some comparisons first."
        )
    return DatasetSnapshot.objects.create(
        project=project,
        pair_ids=[pair.pk for pair in pairs],
        filters=filters.as_json(),
        content_hash=snapshot_content_hash(pairs),
        n_pairs=len(pairs),
        created_by=created_by,
    )
