"""Writes of the human side: projects, guidelines, prompts, responses, comparisons, judgments."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from annotate import sql
from annotate.access import project_role
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    DatasetSnapshot,
    Guideline,
    Judgment,
    JudgmentKind,
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
from annotate.queue import JUDGED_BY_SQL, LIVE_OTHERS_SQL, lease_take
from annotate.rendering import stored_html, stored_transcript
from core.errors import ValidationFailed

MAX_MESSAGE_CHARS = 32_000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000
CHAT_ROLES = {"system", "user", "assistant"}


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


PROJECT_SETTINGS = (
    "name",
    "description",
    "overlap",
    "allow_tie",
    "allow_both_bad",
    "use_strength",
    "criteria",
    "reason_tags",
    "rationale",
    "gold_rate",
    "swap_recheck_rate",
    "lease_seconds",
    "undo_seconds",
)


def project_settings_update(*, project: Project, **changes: Any) -> Project:
    """Change annotation settings; judgments already made keep what they were made under."""
    unknown = set(changes) - set(PROJECT_SETTINGS)
    if unknown:
        raise ValidationFailed(f"Unknown project settings: {', '.join(sorted(unknown))}.")
    if "overlap" in changes and changes["overlap"] < 1:
        raise ValidationFailed("Overlap must be at least 1.")
    for name in ("gold_rate", "swap_recheck_rate"):
        if name in changes and not 0 <= changes[name] <= 1:
            raise ValidationFailed(f"{name} must be between 0 and 1.")
    for name, value in changes.items():
        setattr(project, name, value)
    project.save(update_fields=list(changes))
    return project


def membership_set(
    *, project: Project, user: User, role: Role | str, quota: int | None = None
) -> Membership:
    if role not in Role.values:
        raise ValidationFailed(f"Unknown role {role!r}; expected one of {Role.values}.")
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role, "quota": quota}
    )
    return membership


def membership_remove(*, project: Project, user: User) -> None:
    Membership.objects.filter(project=project, user=user).delete()


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


def comparison_create(
    *,
    response_a: Response,
    response_b: Response,
    round_number: int,
    purpose: str = Purpose.TRAIN,
    pairing_strategy: str = "",
    rng: random.Random | None = None,
    gold_choice: str = "",
    selection: dict[str, Any] | None = None,
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
        selection=selection or {},
    )


# Judgments ---------------------------------------------------------------------------------


class JudgmentRejected(ValidationFailed):
    """The judgment cannot be taken (not allowed, already complete, ...)."""


SIDE_CHOICES = {"left", "right", "tie", "both_bad"}


def choice_from_side(*, left_is_a: bool, side: str) -> Choice:
    """What a click on a side means for the comparison's responses, given the layout shown."""
    if side not in SIDE_CHOICES:
        raise JudgmentRejected(f"Unknown choice {side!r}; expected one of {sorted(SIDE_CHOICES)}.")
    if side == "left":
        return Choice.A if left_is_a else Choice.B
    if side == "right":
        return Choice.B if left_is_a else Choice.A
    return Choice(side)


class ComparisonMissing(JudgmentRejected):
    """No such comparison, or not in the project given."""


def judgment_submit(
    *,
    comparison_id: int,
    annotator: User,
    project: Project | None = None,
    choice: str = "",
    side: str = "",
    idempotency_key: str | None = None,
    strength: int | None = None,
    criteria: Mapping[str, str] | None = None,
    rationale: str = "",
    reason_tags: Sequence[str] = (),
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Judgment:
    """Record one annotator's judgment of a comparison.

    Give either `choice` (a / b / tie / both_bad) or `side` (left / right / tie / both_bad, in
    the layout this annotator's lease shows; criteria values are sides too). With `project`,
    a comparison of another project is refused as missing (ComparisonMissing). A retried
    submit with the same idempotency key returns the first judgment unchanged. Votes never
    exceed the project's overlap (gold items excepted: everyone answers them); one live vote
    per (annotator, comparison). A held swapped re-check lease makes this a re-check, which
    never counts as a vote. A vote from someone without a live lease is taken only while the
    pair has a slot that no live lease of another annotator holds.

    The judging hot path: plain SQL (annotate/sql.py), five statements for a vote in three
    round trips (the writes batched).
    """
    if bool(choice) == bool(side):
        raise JudgmentRejected("Give exactly one of a choice (a/b/tie/both_bad) or a side.")
    now = now or timezone.now()
    at = sql.timestamp(now)
    try:
        with transaction.atomic():
            row = sql.one(
                f"SELECT {', '.join(_LOCKED_FIELDS[1:])} FROM {sql.COMPARISON} WHERE id = %s"
                + sql.for_update(),
                [comparison_id],
            )
            if row is None or (project is not None and row[0] != project.pk):
                where = " in this project" if project is not None else ""
                raise ComparisonMissing(f"There is no comparison {comparison_id}{where}.")
            comparison = sql.instance(
                Comparison, dict(zip(_LOCKED_FIELDS, (comparison_id, *row), strict=True))
            )
            if project is None:
                project = Project.objects.get(pk=comparison.project_id)
            comparison.project = project
            if project_role(user=annotator, project=project) is None:
                raise JudgmentRejected("You are not a member of this project.")
            # Read after the lock, so with a snapshot that sees every commit before it: a twin
            # of this request or another claim may have committed while we waited.
            state = sql.one(
                "SELECT l.state, l.left_is_a, l.is_recheck, l.expires_at > %s,"
                f" (SELECT t.id FROM {sql.JUDGMENT} t WHERE t.idempotency_key = %s),"
                f" (SELECT g.id FROM {sql.GUIDELINE} g WHERE g.project_id = c.project_id"
                f" ORDER BY g.version DESC LIMIT 1), {LIVE_OTHERS_SQL}, {JUDGED_BY_SQL}"
                f" FROM {sql.COMPARISON} c LEFT JOIN {sql.LEASE} l"
                " ON l.comparison_id = c.id AND l.annotator_id = %s WHERE c.id = %s",
                [
                    at,
                    idempotency_key,
                    at,
                    False,
                    annotator.pk,
                    annotator.pk,
                    annotator.pk,
                    comparison_id,
                ],
            )
            assert state is not None
            lease_state, lease_left_is_a, lease_recheck, lease_live = state[:4]
            twin_id, guideline_id, live_others, judged_already = state[4:]
            if twin_id is not None:
                twin = Judgment.objects.get(pk=twin_id)
                if twin.annotator_id != annotator.pk or twin.comparison_id != comparison_id:
                    raise JudgmentRejected("This idempotency key belongs to another judgment.")
                return twin
            held = lease_state == LeaseState.HELD
            holding = held and bool(lease_live)
            is_recheck = holding and bool(lease_recheck)
            left_is_a = bool(lease_left_is_a) if held else comparison.left_is_a
            if side:
                choice = choice_from_side(left_is_a=left_is_a, side=side)
                criteria = {
                    name: choice_from_side(left_is_a=left_is_a, side=value)
                    for name, value in (criteria or {}).items()
                }
            choice_value = _choice_validate(project=project, choice=choice)
            _details_validate(
                project=project,
                choice=choice_value,
                strength=strength,
                criteria=criteria or {},
                rationale=rationale,
                reason_tags=reason_tags,
                time_spent_ms=time_spent_ms,
            )
            kind = JudgmentKind.RECHECK if is_recheck else JudgmentKind.VOTE
            counts = kind == JudgmentKind.VOTE
            if counts and judged_already:
                raise JudgmentRejected("You have already judged this comparison.")
            if counts and not comparison.is_gold:
                if (
                    comparison.status != ComparisonStatus.OPEN
                    or comparison.judgment_count >= project.overlap
                ):
                    raise JudgmentRejected(
                        "This comparison already has all the judgments it needs."
                    )
                if not holding and comparison.judgment_count + live_others >= project.overlap:
                    # The remaining slots are leased to others: their work goes first.
                    raise JudgmentRejected(
                        "Your hold on this pair expired and it went to another annotator."
                    )
            elif comparison.status == ComparisonStatus.RETIRED:
                raise JudgmentRejected("This comparison has been retired.")
            judgment = Judgment(
                comparison=comparison,
                project=project,
                annotator=annotator,
                kind=kind,
                choice=choice_value,
                left_was_a=left_is_a,
                strength=strength if choice_value in (Choice.A, Choice.B) else None,
                criteria=dict(criteria or {}),
                rationale=rationale.strip(),
                reason_tags=list(dict.fromkeys(reason_tags)),
                time_spent_ms=time_spent_ms,
                guideline_id=guideline_id,
                idempotency_key=idempotency_key or None,
                superseded_at=None,
                created_at=now,
                updated_at=now,
            )
            # The writes in one round trip on PostgreSQL (see sql.batch), the INSERT last for
            # the id it returns.
            writes = [
                (
                    f"UPDATE {sql.LEASE} SET state = 'submitted', updated_at = %s"
                    " WHERE comparison_id = %s AND annotator_id = %s",
                    [at, comparison_id, annotator.pk],
                ),
                _judgment_insert_statement(judgment),
            ]
            if counts:
                inserted = _votes_changed(comparison=comparison, delta=1, writes=writes)
            else:
                inserted = sql.batch(writes)
            assert inserted is not None
            judgment.pk = inserted[0]
            judgment._state.adding = False
            judgment._state.db = "default"
    except IntegrityError:
        # A concurrent twin of this submit won the race (same key or same annotator).
        if idempotency_key:
            existing = Judgment.objects.filter(idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing
        raise JudgmentRejected("You have already judged this comparison.") from None
    return judgment


# What judgment_submit reads of the comparison it locks.
_LOCKED_FIELDS = (
    "id",
    "project_id",
    "status",
    "judgment_count",
    "gold_choice",
    "left_is_a",
    "response_a_id",
    "response_b_id",
)


def _judgment_insert_statement(judgment: Judgment) -> tuple[str, list[Any]]:
    """The INSERT of a judgment built in memory (every field set), returning its id."""
    return (
        f"INSERT INTO {sql.JUDGMENT} (comparison_id, project_id, annotator_id, kind, choice,"
        " left_was_a, strength, criteria, rationale, reason_tags, time_spent_ms, guideline_id,"
        " idempotency_key, superseded_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s,"
        " %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s) RETURNING id",
        [
            judgment.comparison_id,
            judgment.project_id,
            judgment.annotator_id,
            judgment.kind,
            judgment.choice,
            judgment.left_was_a,
            judgment.strength,
            json.dumps(judgment.criteria),
            judgment.rationale,
            json.dumps(judgment.reason_tags),
            judgment.time_spent_ms,
            judgment.guideline_id,
            judgment.idempotency_key,
            sql.timestamp(judgment.created_at),
            sql.timestamp(judgment.updated_at),
        ],
    )


def _live_adjudications(comparison: Comparison) -> QuerySet[Judgment]:
    return comparison.judgments.filter(kind=JudgmentKind.ADJUDICATION, superseded_at__isnull=True)


def _votes_changed(
    *, comparison: Comparison, delta: int, writes: Sequence[tuple[str, Sequence[Any]]] = ()
) -> tuple[Any, ...] | None:
    """Keep the vote count, the status and the aggregated pair of a locked comparison true.

    The caller holds the comparison's row lock, so its in-memory count is the database's.
    `writes` go in the same round trip as the count's UPDATE, after it (before the pair is
    aggregated); the first row the last of them returns is returned.
    """
    comparison.judgment_count += delta
    was_complete = comparison.status == ComparisonStatus.COMPLETE
    complete = False
    if not comparison.is_gold:
        # A new vote is only taken while the comparison is open, hence not adjudicated.
        adjudicated = delta <= 0 and _live_adjudications(comparison).exists()
        complete = adjudicated or comparison.judgment_count >= comparison.project.overlap
        if comparison.status != ComparisonStatus.RETIRED:
            comparison.status = ComparisonStatus.COMPLETE if complete else ComparisonStatus.OPEN
    # One statement for both (the judging hot path runs this for every vote).
    returned = sql.batch(
        [
            (
                f"UPDATE {sql.COMPARISON} SET judgment_count = %s, status = %s WHERE id = %s",
                [comparison.judgment_count, comparison.status, comparison.pk],
            ),
            *writes,
        ]
    )
    if comparison.is_gold:
        return returned
    if complete:
        pair_aggregate(comparison=comparison)
    elif was_complete or delta <= 0:
        PreferencePair.objects.filter(comparison=comparison).delete()
    return returned


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
    choice: Choice,
    strength: int | None,
    criteria: Mapping[str, str],
    rationale: str,
    reason_tags: Sequence[str],
    time_spent_ms: int | None,
) -> None:
    if time_spent_ms is not None and not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise JudgmentRejected("Time spent must be between 0 and 24 hours (in milliseconds).")
    if strength is not None and strength not in STRENGTHS:
        raise JudgmentRejected("Strength must be 1 (slightly), 2 (clearly) or 3 (much better).")
    if project.use_strength and strength is None and choice in (Choice.A, Choice.B):
        raise JudgmentRejected("Say how much better: slightly (7), clearly (8) or much better (9).")
    unknown = set(criteria) - set(project.criteria)
    if unknown:
        raise JudgmentRejected(f"Unknown criteria: {', '.join(sorted(unknown))}.")
    allowed = {Choice.A, Choice.B, Choice.TIE}
    bad = {name for name, value in criteria.items() if value not in allowed}
    if bad:
        raise JudgmentRejected(f"Criteria with an unknown choice: {', '.join(sorted(bad))}.")
    unknown_tags = set(reason_tags) - set(project.reason_tags)
    if unknown_tags:
        raise JudgmentRejected(f"Unknown reason tags: {', '.join(sorted(unknown_tags))}.")
    if project.rationale == RationaleMode.REQUIRED and not rationale.strip():
        raise JudgmentRejected("This project requires a rationale with each judgment.")
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise JudgmentRejected(f"A rationale is at most {MAX_RATIONALE_CHARS} characters.")


STRENGTHS = {1: "slightly better", 2: "clearly better", 3: "much better"}
MAX_RATIONALE_CHARS = 4000


def judgment_undoable(*, project: Project, annotator: User) -> Judgment | None:
    """The annotator's last judgment in the project, if it may still be undone or edited."""
    last = (
        Judgment.objects.filter(
            comparison__project=project,
            annotator=annotator,
            kind__in=[JudgmentKind.VOTE, JudgmentKind.RECHECK],
        )
        .select_related("comparison")
        .order_by("-id")
        .first()
    )
    if last is None or last.superseded_at is not None:
        return None
    if last.created_at < timezone.now() - timedelta(seconds=project.undo_seconds):
        return None
    return last


def judgment_undo(*, project: Project, annotator: User, judgment_id: int) -> Judgment:
    """Take back the last judgment: it stays on record as superseded, and the pair is held
    for the annotator again with the sides they saw, to judge afresh."""
    with transaction.atomic():
        sql.index_plans()  # the ORM's statements come first
        last = judgment_undoable(project=project, annotator=annotator)
        if last is None or last.pk != judgment_id:
            raise JudgmentRejected(
                "Only your last judgment can be undone, and only within "
                f"{project.undo_seconds // 60} minutes."
            )
        comparison = Comparison.objects.select_for_update().get(pk=last.comparison_id)
        if _live_adjudications(comparison).exists():
            raise JudgmentRejected("A reviewer has already decided this comparison.")
        now = timezone.now()
        last.superseded_at = now
        last.save(update_fields=["superseded_at", "updated_at"])
        if last.kind == JudgmentKind.VOTE:
            _votes_changed(comparison=comparison, delta=-1)
        lease_take(
            comparison=comparison,
            annotator=annotator,
            now=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
            left_is_a=last.left_was_a,
            is_recheck=last.kind == JudgmentKind.RECHECK,
        )
    return last


# Review ---------------------------------------------------------------------------------------


def comparison_adjudicate(
    *, comparison: Comparison, reviewer: User, choice: str, rationale: str = ""
) -> Judgment:
    """A reviewer's decision: it wins aggregation; the annotators' judgments stay as they are."""
    with transaction.atomic():
        sql.index_plans()  # the ORM's statements come first
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        choice_value = _choice_validate(project=comparison.project, choice=choice)
        if len(rationale) > MAX_RATIONALE_CHARS:
            raise JudgmentRejected(f"A note is at most {MAX_RATIONALE_CHARS} characters.")
        now = timezone.now()
        _live_adjudications(comparison).update(superseded_at=now, updated_at=now)
        judgment = Judgment.objects.create(
            comparison=comparison,
            project_id=comparison.project_id,
            annotator=reviewer,
            kind=JudgmentKind.ADJUDICATION,
            choice=choice_value,
            left_was_a=comparison.left_is_a,
            rationale=rationale.strip(),
            guideline=guideline_current(project=comparison.project),
        )
        _votes_changed(comparison=comparison, delta=0)
    return judgment


def comparison_send_back(*, comparison: Comparison, reviewer: User) -> Comparison:
    """Re-open a comparison for fresh judgments; the old ones stay on record, superseded."""
    with transaction.atomic():
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        if comparison.is_gold:
            raise ValidationFailed("A gold item is answered by everyone; it cannot be sent back.")
        now = timezone.now()
        superseded = comparison.judgments.filter(superseded_at__isnull=True).update(
            superseded_at=now, updated_at=now
        )
        if not superseded:
            raise ValidationFailed("This comparison has no judgments to send back.")
        # Released leases let the same annotators be offered the pair again.
        comparison.leases.update(state=LeaseState.RELEASED, is_recheck=False, updated_at=now)
        comparison.judgment_count = 0
        comparison.status = ComparisonStatus.OPEN
        comparison.sent_back_count = F("sent_back_count") + 1
        comparison.save(update_fields=["judgment_count", "status", "sent_back_count"])
        PreferencePair.objects.filter(comparison=comparison).delete()
    comparison.refresh_from_db()
    return comparison


def comparison_gold_set(*, comparison: Comparison, gold_choice: str) -> Comparison:
    """Make a comparison a gold item with a known answer ("" turns it back into a normal one)."""
    if gold_choice and gold_choice not in Choice.values:
        raise ValidationFailed(
            f"Unknown gold answer {gold_choice!r}; expected one of {Choice.values}."
        )
    with transaction.atomic():
        sql.index_plans()  # the ORM's statements come first
        comparison = (
            Comparison.objects.select_for_update().select_related("project").get(pk=comparison.pk)
        )
        comparison.gold_choice = gold_choice
        comparison.save(update_fields=["gold_choice"])
        if not gold_choice:
            _votes_changed(comparison=comparison, delta=0)
    return comparison


def guideline_acknowledge(*, project: Project, user: User, version: int) -> None:
    Membership.objects.filter(project=project, user=user).update(guideline_seen_version=version)


# Aggregation and snapshots ------------------------------------------------------------------


def pair_aggregate(*, comparison: Comparison) -> PreferencePair | None:
    """Majority vote of the comparison's live votes; an adjudication decides alone.

    Agreement is the share of votes that agree with the outcome (with an adjudication: the
    share of annotators who agreed with the reviewer).
    """
    # (kind, choice) of the live judgments, oldest first; plain SQL: it runs for most votes.
    judgments = sql.rows(
        f"SELECT kind, choice FROM {sql.JUDGMENT} WHERE comparison_id = %s"
        " AND superseded_at IS NULL AND kind <> 'recheck' ORDER BY id",
        [comparison.pk],
    )
    if not judgments:
        PreferencePair.objects.filter(comparison=comparison).delete()
        return None
    adjudications = [j for j in judgments if j[0] == JudgmentKind.ADJUDICATION]
    votes = Counter(choice for _, choice in (adjudications[-1:] or judgments))
    (top, top_count), *rest = votes.most_common()
    if rest and rest[0][1] == top_count:
        top = Choice.TIE  # a split vote is no preference
    voters = [j for j in judgments if j[0] == JudgmentKind.VOTE] or judgments
    agreement = Counter(choice for _, choice in voters)[top] / len(voters)
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
    pair = PreferencePair(
        comparison=comparison,
        project_id=comparison.project_id,
        kind=kind,
        chosen_id=chosen,
        rejected_id=rejected,
        agreement=agreement,
        n_judgments=len(voters),
        updated_at=timezone.now(),
    )
    row = sql.one(
        f"INSERT INTO {sql.PREFERENCE_PAIR} (comparison_id, project_id, kind, chosen_id,"
        " rejected_id, agreement, n_judgments, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (comparison_id) DO UPDATE SET kind = excluded.kind,"
        " chosen_id = excluded.chosen_id, rejected_id = excluded.rejected_id,"
        " agreement = excluded.agreement, n_judgments = excluded.n_judgments,"
        " updated_at = excluded.updated_at RETURNING id",
        [
            comparison.pk,
            comparison.project_id,
            kind,
            chosen,
            rejected,
            agreement,
            pair.n_judgments,
            sql.timestamp(pair.updated_at),
        ],
    )
    assert row is not None
    pair.pk = row[0]
    pair._state.adding = False
    return pair


@dataclass(frozen=True)
class SnapshotFilters:
    rounds: tuple[int, ...] = ()  # empty: every round
    min_agreement: float = 0.0
    # Pair kinds taken: preferences only, unless the method trains on ties and both-bad (KTO).
    kinds: tuple[str, ...] = (PairKind.PREFERENCE,)
    # The share of preference pairs held out for validation (none below VALIDATION_MIN_PAIRS).
    validation_share: float = 0.1

    def as_json(self) -> dict[str, Any]:
        return {
            "rounds": list(self.rounds),
            "min_agreement": self.min_agreement,
            "kinds": [str(kind) for kind in self.kinds],
            "validation_share": self.validation_share,
            "purpose": Purpose.TRAIN,
            "split": Split.TRAIN,
        }


def snapshot_pairs(*, project: Project, filters: SnapshotFilters) -> list[PreferencePair]:
    pairs = PreferencePair.objects.filter(
        project=project,
        kind__in=filters.kinds,
        agreement__gte=filters.min_agreement,
        comparison__purpose=Purpose.TRAIN,
        comparison__prompt__split=Split.TRAIN,  # held-out prompts never reach training
    ).select_related("comparison__prompt", "chosen", "rejected")
    if filters.rounds:
        pairs = pairs.filter(comparison__round_number__in=filters.rounds)
    return list(pairs.order_by("id"))


VALIDATION_MIN_PAIRS = 10


def snapshot_validation_split(
    pairs: Sequence[PreferencePair], share: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training, validation): `share` of the preference pairs, at least one, held out when
    there are VALIDATION_MIN_PAIRS of them. The choice hangs on the pair ids alone, so the
    same pairs give the same split (and snapshot hash) every time."""
    if not 0 <= share < 1:
        raise ValidationFailed("The validation share must be at least 0 and below 1.")
    preferences = [p for p in pairs if p.kind == PairKind.PREFERENCE]
    if share == 0 or len(preferences) < VALIDATION_MIN_PAIRS:
        return list(pairs), []
    count = max(1, round(share * len(preferences)))
    ranked = sorted(preferences, key=lambda p: hashlib.sha256(f"pair:{p.pk}".encode()).digest())
    held = {p.pk for p in ranked[:count]}
    return [p for p in pairs if p.pk not in held], [p for p in pairs if p.pk in held]


def snapshot_content_hash(
    pairs: Sequence[PreferencePair], validation: Sequence[PreferencePair] = ()
) -> str:
    digest = hashlib.sha256()
    held = {pair.pk for pair in validation}
    for pair in sorted([*pairs, *validation], key=lambda p: p.pk):
        row = [pair.pk, pair.comparison.prompt.messages, pair.chosen.text, pair.rejected.text]
        if pair.kind != PairKind.PREFERENCE:  # preference-only snapshots keep their old hashes
            row.append(pair.kind)
        if pair.pk in held:
            row.append("validation")
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
    training, validation = snapshot_validation_split(pairs, filters.validation_share)
    return DatasetSnapshot.objects.create(
        project=project,
        pair_ids=[pair.pk for pair in training],
        validation_pair_ids=[pair.pk for pair in validation],
        responses={
            str(pair.pk): [pair.chosen_id, pair.rejected_id, pair.kind]
            for pair in [*training, *validation]
        },
        filters=filters.as_json(),
        content_hash=snapshot_content_hash(training, validation),
        n_pairs=len(training),
        created_by=created_by,
    )
