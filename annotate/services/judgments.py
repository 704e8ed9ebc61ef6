"""Judgments: an annotator's vote on a comparison, taken under its lease and the overlap, and\nundone while it is the annotator's last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError
from django.db.models import F, QuerySet
from django.utils import timezone

from annotate import sql
from annotate.access import project_role
from annotate.models import (
    PAIR_CHOICES,
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    LeaseState,
    PreferencePair,
    Project,
    RationaleMode,
)
from annotate.queue import lease_take
from annotate.ranking import RankingInvalid
from annotate.services.pairs import pair_aggregate
from annotate.services.rankings import implied_judgments, ranking_shown, ranks_validate
from annotate.services.ratings import RatingInvalid, rating_read
from annotate.signals import pair_decided
from annotate.sql import judgments as sql_judgments
from core.errors import ValidationFailed

MAX_TIME_SPENT_MS = 24 * 3600 * 1000


STRENGTHS = {1: "slightly better", 2: "clearly better", 3: "much better"}


MAX_RATIONALE_CHARS = 4000


SIDE_CHOICES = {"left", "right", "tie", "both_bad"}


class JudgmentRejected(ValidationFailed):
    """The judgment cannot be taken (not allowed, already complete, ...)."""


class ComparisonMissing(JudgmentRejected):
    """No such comparison, or not in the project given."""


def choice_from_side(*, left_is_a: bool, side: str) -> Choice:
    """What a click on a side means for the comparison's responses, given the layout shown."""
    if side not in SIDE_CHOICES:
        raise JudgmentRejected(f"Unknown choice {side!r}; expected one of {sorted(SIDE_CHOICES)}.")
    if side == "left":
        return Choice.A if left_is_a else Choice.B
    if side == "right":
        return Choice.B if left_is_a else Choice.A
    return Choice(side)


def side_from_choice(*, left_is_a: bool, choice: str) -> str:
    """The side a choice was on in the layout shown (the inverse of choice_from_side)."""
    if choice == Choice.A:
        return "left" if left_is_a else "right"
    if choice == Choice.B:
        return "right" if left_is_a else "left"
    return choice


@dataclass(frozen=True)
class EarlierChoice:
    """A judgment taken back to change it, in the sides of the layout shown again: what the
    pair shows pre-selected."""

    side: str
    strength: int | None
    criteria: dict[str, str]
    rationale: str
    reason_tags: list[str]
    ranks: list[int]  # a ranking's, in the order shown (the same order comes back)
    score: int | None  # a rating's on the 1-5 scale

    @classmethod
    def of(cls, judgment: Judgment) -> EarlierChoice:
        left_is_a = judgment.left_was_a
        if judgment.shown:
            position = {str(r): str(i) for i, r in enumerate(judgment.shown, start=1)}
            criteria = {name: position.get(v, v) for name, v in judgment.criteria.items()}
        else:
            criteria = {
                name: side_from_choice(left_is_a=left_is_a, choice=value)
                for name, value in judgment.criteria.items()
            }
        return cls(
            side=side_from_choice(left_is_a=left_is_a, choice=judgment.choice),
            strength=judgment.strength,
            criteria=criteria,
            rationale=judgment.rationale,
            reason_tags=list(judgment.reason_tags),
            ranks=list(judgment.ranks),
            score=judgment.score,
        )


def judgment_submit(
    *,
    comparison_id: int,
    annotator: User,
    project: Project | None = None,
    choice: str = "",
    side: str = "",
    ranks: Sequence[int] | None = None,
    score: int | None = None,
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
    the layout this annotator's lease shows; criteria values are sides too). A ranking takes
    `ranks` instead: one per response in the order this annotator is shown them (1 the best,
    equal ranks a tie; criteria values are the shown position, 1 to K, of the best on it), or
    both_bad ("all bad"); a vote also writes the implied judgment of each pair. A rating takes
    good or bad as its choice (or side; criteria values good / bad too), or on a project's
    1-5 scale a `score`, good from the project's threshold up. With `project`,
    a comparison of another project is refused as missing (ComparisonMissing). A retried
    submit with the same idempotency key returns the first judgment unchanged; a key is the
    annotator's own (another annotator's same key is another judgment). Votes never
    exceed the project's overlap (gold items excepted: everyone answers them); one live vote
    per (annotator, comparison). A held swapped re-check lease makes this a re-check, which
    never counts as a vote. A vote from someone without a live lease is taken only while the
    pair has a slot that no live lease of another annotator holds.

    The judging hot path: plain SQL (annotate/sql), five statements for a vote in three
    round trips (the writes batched).
    """
    if sum((bool(choice), bool(side), ranks is not None, score is not None)) != 1:
        raise JudgmentRejected(
            "Give exactly one of a choice (a/b/tie/both_bad; a rating: good/bad), a side, "
            "ranks (a ranking) or a score (a rating on a 1-5 scale)."
        )
    now = now or timezone.now()
    try:
        with sql.atomic():
            comparison = _comparison_locked(
                comparison_id=comparison_id, project=project, annotator=annotator
            )
            state = sql_judgments.submit_state(
                comparison_id=comparison_id,
                annotator_id=annotator.pk,
                idempotency_key=idempotency_key,
                now=now,
            )
            if state.twin_id is not None:
                return _twin(
                    twin_id=state.twin_id, annotator=annotator, comparison_id=comparison_id
                )
            judgment = _judgment_build(
                comparison=comparison,
                annotator=annotator,
                state=state,
                side=side,
                choice=choice,
                ranks=ranks,
                score=score,
                criteria=criteria or {},
                details={
                    "strength": strength,
                    "rationale": rationale,
                    "reason_tags": reason_tags,
                    "time_spent_ms": time_spent_ms,
                },
                idempotency_key=idempotency_key,
                now=now,
            )
            _slot_check(comparison=comparison, judgment=judgment, state=state)
            _judgment_write(judgment=judgment, comparison=comparison, now=now)
            judgment.suggested = state.suggested
    except IntegrityError:
        # A concurrent twin of this submit won the race (same key or same comparison).
        if idempotency_key:
            existing = Judgment.objects.filter(
                annotator=annotator, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                return _twin(twin_id=existing.pk, annotator=annotator, comparison_id=comparison_id)
        raise JudgmentRejected("You have already judged this comparison.") from None
    return judgment


def _comparison_locked(
    *, comparison_id: int, project: Project | None, annotator: User
) -> Comparison:
    """The comparison, locked, with its project; refused unless the annotator is a member."""
    comparison = sql_judgments.comparison_lock(comparison_id=comparison_id)
    if comparison is None or (project is not None and comparison.project_id != project.pk):
        where = " in this project" if project is not None else ""
        raise ComparisonMissing(f"There is no comparison {comparison_id}{where}.")
    comparison.project = project or Project.objects.get(pk=comparison.project_id)
    if project_role(user=annotator, project=comparison.project) is None:
        raise JudgmentRejected("You are not a member of this project.")
    return comparison


def _twin(*, twin_id: int, annotator: User, comparison_id: int) -> Judgment:
    """The judgment a retried submit with the same idempotency key already stored (the key
    is looked up among the annotator's own judgments only)."""
    twin = Judgment.objects.get(pk=twin_id, annotator=annotator)
    if twin.comparison_id != comparison_id:
        raise JudgmentRejected("You used this idempotency key for another of your judgments.")
    return twin


def _judgment_build(
    *,
    comparison: Comparison,
    annotator: User,
    state: sql_judgments.SubmitState,
    side: str,
    choice: str,
    ranks: Sequence[int] | None,
    score: int | None,
    criteria: Mapping[str, str],
    details: dict[str, Any],
    idempotency_key: str | None,
    now: datetime,
) -> Judgment:
    """The judgment as the annotator meant it, in the sides (or the order) their lease showed;
    validated."""
    project = comparison.project
    held = state.lease_state == LeaseState.HELD
    is_recheck = held and state.lease_live and state.lease_is_recheck
    # (A ranking's `left_is_a` is True: the annotator's own order, as drawn.)
    left_is_a = bool(state.lease_left_is_a) if held else comparison.left_is_a
    shown: list[int] = []
    dense: list[int] = []
    if ranks is not None and not comparison.is_ranking:
        raise JudgmentRejected(
            "This comparison is a rating: rate it, not ranks."
            if comparison.is_rating
            else "This comparison is a pair: choose a side, not ranks."
        )
    if score is not None and not comparison.is_rating:
        raise JudgmentRejected("This comparison is no rating: give no score.")
    if comparison.is_rating:
        left_is_a = True  # one response, no sides (a re-check shows it again as it was)
        try:
            choice_value, score = rating_read(project=project, choice=choice or side, score=score)
        except RatingInvalid as error:
            raise JudgmentRejected(str(error)) from None
        allowed: set[str] = {Choice.GOOD, Choice.BAD}
    elif comparison.is_ranking:
        shown = ranking_shown(comparison=comparison, annotator_id=annotator.pk, left_is_a=left_is_a)
        choice_value, dense, criteria = _ranking_read(
            project=project, shown=shown, ranks=ranks, choice=choice or side, criteria=criteria
        )
        allowed = {str(r) for r in shown} | {Choice.TIE}
    else:
        if side:
            choice = choice_from_side(left_is_a=left_is_a, side=side)
            criteria = {
                name: choice_from_side(left_is_a=left_is_a, side=value)
                for name, value in criteria.items()
            }
        choice_value = choice_validate(project=project, choice=choice)
        allowed = {Choice.A, Choice.B, Choice.TIE}
    _details_validate(
        project=project, choice=choice_value, criteria=criteria, allowed=allowed, **details
    )
    return Judgment(
        comparison=comparison,
        project=project,
        annotator=annotator,
        kind=JudgmentKind.RECHECK if is_recheck else JudgmentKind.VOTE,
        choice=choice_value,
        left_was_a=left_is_a,
        shown=shown,
        ranks=dense,
        score=score,
        strength=details["strength"] if choice_value in (Choice.A, Choice.B) else None,
        criteria=dict(criteria),
        rationale=details["rationale"].strip(),
        reason_tags=list(dict.fromkeys(details["reason_tags"])),
        time_spent_ms=details["time_spent_ms"],
        guideline_id=state.guideline_id,
        idempotency_key=idempotency_key or None,
        superseded_at=None,
        created_at=now,
        updated_at=now,
    )


def _ranking_read(
    *,
    project: Project,
    shown: list[int],
    ranks: Sequence[int] | None,
    choice: str,
    criteria: Mapping[str, str],
) -> tuple[Choice, list[int], dict[str, str]]:
    """A ranking's choice (ranked, or both_bad for "all bad"), its ranks made dense, and its
    criteria from shown positions (1 to K) to response ids."""
    if ranks is None:
        if choice != Choice.BOTH_BAD:
            raise JudgmentRejected(
                "This comparison is a ranking: give ranks, one per response in the order shown, "
                "or judge them all bad (both_bad)."
            )
        choice_value, dense = choice_validate(project=project, choice=choice), []
    else:
        try:
            dense = ranks_validate(shown=shown, ranks=ranks)
        except RankingInvalid as error:
            raise JudgmentRejected(str(error)) from None
        choice_value = Choice.RANKED
    by_position = {str(i): str(r) for i, r in enumerate(shown, start=1)}
    return (
        choice_value,
        dense,
        {name: by_position.get(str(value), str(value)) for name, value in criteria.items()},
    )


def _slot_check(
    *, comparison: Comparison, judgment: Judgment, state: sql_judgments.SubmitState
) -> None:
    """Refuse a vote the comparison has no room for, or a judgment of a retired one."""
    project = comparison.project
    if judgment.kind != JudgmentKind.VOTE:
        if comparison.status == ComparisonStatus.RETIRED:
            raise JudgmentRejected("This comparison has been retired.")
        return
    if state.judged_already:
        raise JudgmentRejected("You have already judged this comparison.")
    if comparison.is_gold:
        if comparison.status == ComparisonStatus.RETIRED:
            raise JudgmentRejected("This comparison has been retired.")
        return
    if comparison.status != ComparisonStatus.OPEN or comparison.judgment_count >= project.overlap:
        raise JudgmentRejected("This comparison already has all the judgments it needs.")
    holding = state.lease_state == LeaseState.HELD and state.lease_live
    if not holding and comparison.judgment_count + state.live_others >= project.overlap:
        # The remaining slots are leased to others: their work goes first.
        raise JudgmentRejected("Your hold on this pair expired and it went to another annotator.")


def _judgment_write(*, judgment: Judgment, comparison: Comparison, now: datetime) -> None:
    """The lease closed and the judgment inserted (a vote also counted on the comparison), in
    one round trip on PostgreSQL, the INSERT last for the id it returns."""
    writes = [
        sql_judgments.lease_submitted(
            comparison_id=comparison.pk, annotator_id=judgment.annotator_id, now=now
        ),
        sql_judgments.judgment_insert(judgment),
    ]
    ranking_vote = judgment.kind == JudgmentKind.VOTE and comparison.is_ranking
    if judgment.kind == JudgmentKind.VOTE and not ranking_vote:
        inserted = votes_changed(comparison=comparison, delta=1, writes=writes)
    else:
        inserted = sql.batch(writes)
    assert inserted is not None
    judgment.pk = inserted[0]
    judgment._state.adding = False
    judgment._state.db = "default"
    if ranking_vote:
        # The implied judgments first: counting the vote aggregates the pairs they make.
        implied = list(Comparison.objects.filter(ranking_id=comparison.pk).order_by("id"))
        Judgment.objects.bulk_create(implied_judgments(judgment=judgment, implied=implied))
        votes_changed(comparison=comparison, delta=1)


def live_decisions(comparison: Comparison) -> QuerySet[Judgment]:
    """What decides the comparison alone: a reviewer's adjudication, or a model's fill-in."""
    return comparison.judgments.filter(
        kind__in=[JudgmentKind.ADJUDICATION, JudgmentKind.FILL], superseded_at__isnull=True
    )


def votes_changed(
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
        adjudicated = delta <= 0 and live_decisions(comparison).exists()
        complete = adjudicated or comparison.judgment_count >= comparison.project.overlap
        if comparison.status != ComparisonStatus.RETIRED:
            comparison.status = ComparisonStatus.COMPLETE if complete else ComparisonStatus.OPEN
    # One statement for both (the judging hot path runs this for every vote).
    returned = sql.batch([sql_judgments.comparison_counted(comparison=comparison), *writes])
    if comparison.is_gold:
        return returned
    if comparison.is_ranking:
        _implied_settle(ranking=comparison, delta=delta, complete=complete)
        return returned
    if complete:
        pair = pair_aggregate(comparison=comparison)
        if pair is not None:
            pair_decided.send(sender=Comparison, comparison=comparison, pair=pair)
    elif was_complete or delta <= 0:
        PreferencePair.objects.filter(comparison=comparison).delete()
    return returned


def _implied_settle(*, ranking: Comparison, delta: int, complete: bool) -> None:
    """A ranking's implied comparisons follow its count and status; a complete ranking's pairs
    are aggregated from the implied votes (an implied pair a reviewer decided keeps that
    decision), an incomplete one's are gone."""
    implied = Comparison.objects.filter(ranking_id=ranking.pk)
    implied.update(judgment_count=F("judgment_count") + delta, status=ranking.status)
    for pair_comparison in implied.select_related("project"):
        if complete or live_decisions(pair_comparison).exists():
            pair = pair_aggregate(comparison=pair_comparison)
            if complete and pair is not None:
                pair_decided.send(sender=Comparison, comparison=pair_comparison, pair=pair)
        else:
            PreferencePair.objects.filter(comparison=pair_comparison).delete()


def choice_validate(*, project: Project, choice: str) -> Choice:
    allowed = [value for value, _ in PAIR_CHOICES]
    if choice not in allowed:
        raise JudgmentRejected(f"Unknown choice {choice!r}; expected one of {allowed}.")
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
    allowed: set[str],
    rationale: str,
    reason_tags: Sequence[str],
    time_spent_ms: int | None,
) -> None:
    if time_spent_ms is not None and not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise JudgmentRejected("Time spent must be between 0 and 24 hours (in milliseconds).")
    if strength is not None and strength not in STRENGTHS:
        raise JudgmentRejected("Strength must be 1 (slightly), 2 (clearly) or 3 (much better).")
    if project.use_strength and strength is None and choice in (Choice.A, Choice.B):
        raise JudgmentRejected(
            "Say how much better the chosen response is: strength 1 (slightly), 2 (clearly) "
            "or 3 (much better)."
        )
    unknown = set(criteria) - set(project.criteria)
    if unknown:
        raise JudgmentRejected(f"Unknown criteria: {', '.join(sorted(unknown))}.")
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
    with sql.atomic():
        last = judgment_undoable(project=project, annotator=annotator)
        if last is None or last.pk != judgment_id:
            raise JudgmentRejected(
                "Only your last judgment can be undone, and only within "
                f"{project.undo_seconds // 60} minutes."
            )
        comparison = Comparison.objects.select_for_update().get(pk=last.comparison_id)
        if live_decisions(comparison).exists():
            raise JudgmentRejected("A reviewer has already decided this comparison.")
        now = timezone.now()
        last.superseded_at = now
        last.save(update_fields=["superseded_at", "updated_at"])
        last.implied.update(superseded_at=now, updated_at=now)
        if last.kind == JudgmentKind.VOTE:
            votes_changed(comparison=comparison, delta=-1)
        lease_take(
            comparison=comparison,
            annotator=annotator,
            now=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
            left_is_a=last.left_was_a,
            is_recheck=last.kind == JudgmentKind.RECHECK,
        )
    return last
