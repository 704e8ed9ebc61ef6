"""Many annotators working one small queue at once, on PostgreSQL: no vote lost, none doubled.

Each thread is one annotator's browser: it asks for the next pair, sometimes refreshes, a few
annotators skip once, and it submits with an idempotency key, sometimes twice in a row (a
double click) or twice at once from two connections (a retried request). The client side
records every submit that succeeded; the database must agree with it exactly.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    Lease,
    LeaseState,
    PreferencePair,
    Project,
)
from annotate.queue import available_ids, comparison_next_for_annotator, comparison_skip
from annotate.services.judgments import JudgmentRejected, judgment_submit
from tests.factories import (
    comparisons_make,
    member_make,
    project_make,
    ranking_make,
    ratings_make,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ANNOTATORS = 32
COMPARISONS = 12
OVERLAP = 2
# Annotators whose index is a multiple of this skip the first pair they are handed, once.
SKIPPER_EVERY = 4
DEADLINE_S = 60.0
# Retried requests open a second connection each; this keeps the total well under
# PostgreSQL's default max_connections (100) even with other sessions on the server.
TWIN_SLOTS = threading.BoundedSemaphore(8)


def _project_with_queue(mode: str) -> tuple[Project, list[Comparison], list[User]]:
    """COMPARISONS pairs, or as many rankings of 4 responses (mode "ranking"), or ratings."""
    project = project_make("concurrency", prompts=[f"Question {i}?" for i in range(4)], overlap=2)
    if mode == "rating":
        prompts = list(project.prompts.all())
        comparisons = [
            rating
            for i in range(COMPARISONS // 2)
            for rating in ratings_make(prompts[i % 4], [f"Answer {j} to {i}." for j in range(2)])
        ]
    elif mode == "ranking":
        prompts = list(project.prompts.all())
        comparisons = [
            ranking_make(prompts[i % 4], [f"Answer {j} to {i}." for j in range(4)])
            for i in range(COMPARISONS)
        ]
    else:
        comparisons = comparisons_make(project, COMPARISONS)
    users = [member_make(project, f"annotator{i:02d}", login=False) for i in range(ANNOTATORS)]
    return project, comparisons, users


@dataclass
class ClientLog:
    """What the annotators' browsers saw, written from many threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # (judgment id, idempotency key, annotator index, comparison id) of every submit that succeeded
    submits: list[tuple[int, str, int, int]] = field(default_factory=list)
    # keys submitted twice, with the ids of both answers
    repeats: list[tuple[str, str, int, int]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    # a repeated key refused although its first submit made a judgment
    repeat_refused: list[str] = field(default_factory=list)
    refresh_changed: list[str] = field(default_factory=list)
    skips: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    none_while_available: int = 0
    timed_out: list[int] = field(default_factory=list)

    def add(self, name: str, item: object) -> None:
        with self.lock:
            getattr(self, name).append(item)


def _submit(
    log: ClientLog,
    *,
    index: int,
    user: User,
    comparison: Comparison,
    key: str,
    choice: str | list[int],
) -> int | str:
    """The judgment id, or the refusal's message. A list `choice` is a ranking's ranks."""
    answer: dict[str, Any] = {"ranks": choice} if isinstance(choice, list) else {"choice": choice}
    try:
        judgment = judgment_submit(
            comparison_id=comparison.pk, annotator=user, idempotency_key=key, **answer
        )
    except JudgmentRejected as error:
        return f"annotator{index:02d} key {key} on comparison {comparison.pk}: {error}"
    log.add("submits", (judgment.pk, key, index, comparison.pk))
    return judgment.pk


def _submit_once(log: ClientLog, **request: Any) -> None:
    answer = _submit(log, **request)
    if isinstance(answer, str):
        log.add("rejected", answer)


def _submit_twice(log: ClientLog, *, at_once: bool, **request: Any) -> None:
    """A double click (one after the other), or a retried request arriving on a second
    connection at the same moment as the first."""
    answers: list[int | str] = ["", ""]
    if not at_once:
        answers = [_submit(log, **request), _submit(log, **request)]
    else:
        gate = threading.Barrier(2)

        def send(slot: int) -> None:
            try:
                gate.wait()
                answers[slot] = _submit(log, **request)
            except Exception as error:
                log.add("errors", f"twin {slot} of {request['key']}: {error!r}")
            finally:
                connection.close()

        with TWIN_SLOTS:
            twins = [threading.Thread(target=send, args=(slot,)) for slot in (0, 1)]
            for twin in twins:
                twin.start()
            for twin in twins:
                twin.join()
    how = "at once" if at_once else "double click"
    first, second = answers
    if isinstance(first, str) and isinstance(second, str):
        log.add("rejected", f"{how}: {first}")
    elif isinstance(first, str) or isinstance(second, str):
        log.add("repeat_refused", f"{how}: {first if isinstance(first, str) else second}")
    else:
        log.add("repeats", (how, request["key"], first, second))


def _work_left(*, project: Project, user: User) -> bool:
    """Whether an open comparison remains that this annotator has neither judged nor skipped."""
    judged = Judgment.objects.filter(annotator=user).values("comparison_id")
    skipped = Lease.objects.filter(annotator=user, state=LeaseState.SKIPPED).values("comparison_id")
    return (
        Comparison.objects.filter(project=project, status=ComparisonStatus.OPEN)
        .items()
        .exclude(pk__in=judged)
        .exclude(pk__in=skipped)
        .exists()
    )


def _annotator(
    *, index: int, user: User, project: Project, start: threading.Barrier, log: ClientLog
) -> Callable[[], None]:
    def work() -> None:
        rng = random.Random(index)
        skipped = False
        try:
            start.wait()
            deadline = time.monotonic() + DEADLINE_S
            while True:
                if time.monotonic() > deadline:
                    log.add("timed_out", index)
                    return
                comparison = comparison_next_for_annotator(project=project, annotator=user)
                if comparison is None:
                    # None while pairs remain: others hold them (they will submit) or a
                    # concurrent claim has them locked. The browser shows "check back soon".
                    if available_ids(project=project, annotator=user, now=timezone.now()):
                        with log.lock:
                            log.none_while_available += 1
                    if not _work_left(project=project, user=user):
                        return
                    time.sleep(rng.uniform(0.1, 0.3))
                    continue
                key = f"{index:02d}-{comparison.pk}-{uuid.uuid4().hex[:12]}"
                request = {
                    "index": index,
                    "user": user,
                    "comparison": comparison,
                    "key": key,
                    "choice": (
                        [rng.randint(1, 4) for _ in comparison.responses]
                        if comparison.is_ranking
                        else rng.choice(["good", "bad"])
                        if comparison.is_rating
                        else rng.choice(["a", "b", "tie"])
                    ),
                }
                roll = rng.random()
                if index % SKIPPER_EVERY == 0 and not skipped:
                    comparison_skip(comparison=comparison, annotator=user, reason="Not sure")
                    log.add("skips", (index, comparison.pk))
                    skipped = True
                elif roll < 0.15:
                    again = comparison_next_for_annotator(project=project, annotator=user)
                    if again != comparison:
                        log.add(
                            "refresh_changed",
                            f"annotator{index:02d}: {comparison.pk} became {again and again.pk}",
                        )
                elif roll < 0.40:
                    _submit_twice(log, at_once=False, **request)
                elif roll < 0.65:
                    _submit_twice(log, at_once=True, **request)
                else:
                    _submit_once(log, **request)
        except Exception as error:
            log.add("errors", f"annotator{index:02d}: {error!r}")
        finally:
            connection.close()

    return work


@pytest.mark.parametrize("mode", ["pair", "ranking", "rating"])
def test_it_keeps_every_vote_exactly_once_under_concurrent_annotators(
    real_services: None, mode: str
) -> None:
    project, comparisons, users = _project_with_queue(mode)
    log = ClientLog()
    start = threading.Barrier(ANNOTATORS)
    threads = [
        threading.Thread(
            target=_annotator(index=i, user=user, project=project, start=start, log=log),
            name=f"annotator{i:02d}",
        )
        for i, user in enumerate(users)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S + 30)
    seconds = time.monotonic() - began
    assert not any(thread.is_alive() for thread in threads), "an annotator thread hung"

    # The annotators' own judgments (a ranking's implied ones are checked below).
    judgments = Judgment.objects.filter(comparison__project=project).exclude(kind="implied")
    total = judgments.count()
    keys = {key for _, key, _, _ in log.submits}
    ids_by_key: dict[str, set[int]] = defaultdict(set)
    for judgment_id, key, _, _ in log.submits:
        ids_by_key[key].add(judgment_id)
    duplicates = (
        judgments.values("annotator", "comparison").annotate(n=Count("id")).filter(n__gt=1).count()
    )
    real_counts = dict(
        Comparison.objects.filter(project=project)
        .items()
        .annotate(n=Count("judgments"))
        .values_list("id", "n")
    )
    over_overlap = sum(1 for n in real_counts.values() if n > OVERLAP)
    skips_per_comparison: dict[int, int] = defaultdict(int)
    for _, comparison_id in log.skips:
        skips_per_comparison[comparison_id] += 1
    # Skipped by so many that fewer than `overlap` annotators were left to judge it.
    unreachable = {c for c, n in skips_per_comparison.items() if n > ANNOTATORS - OVERLAP}
    refreshed = {c.pk: c for c in Comparison.objects.filter(project=project).items()}
    assert set(refreshed) == {c.pk for c in comparisons}
    lost = sum(
        1
        for c in refreshed.values()
        if c.pk not in unreachable and c.status != ComparisonStatus.COMPLETE
    )
    print(
        f"judgments={total}, duplicates={duplicates}, over_overlap={over_overlap}, "
        f"lost={lost}, seconds={seconds:.1f} (skips={len(log.skips)}, "
        f"repeats={len(log.repeats)}, none_while_available={log.none_while_available})"
    )

    assert log.errors == []
    assert log.timed_out == []
    assert log.rejected == [], "a submit by the lease holder was refused"
    assert log.repeat_refused == [], "a repeated key was refused instead of answered"
    assert log.refresh_changed == []
    # Every repeated key answered with the one judgment it made the first time.
    assert [r for r in log.repeats if r[2] != r[3]] == []
    assert {key: ids for key, ids in ids_by_key.items() if len(ids) != 1} == {}
    # The client's successes and the table are the same set of judgments.
    assert total == len(keys)
    assert set(judgments.values_list("id", flat=True)) == {
        next(iter(ids)) for ids in ids_by_key.values()
    }
    assert set(judgments.values_list("idempotency_key", flat=True)) == keys
    assert duplicates == 0
    assert over_overlap == 0
    assert unreachable == set()
    assert lost == 0
    assert total == OVERLAP * COMPARISONS
    for comparison in refreshed.values():
        assert comparison.judgment_count == real_counts[comparison.pk], comparison
    decided = list(refreshed.values())
    if mode == "ranking":
        # Each ranking vote implied one judgment per pair, all live, on its implied pairs.
        implied = Judgment.objects.filter(comparison__project=project, kind="implied")
        assert implied.count() == 6 * total
        assert set(implied.values_list("source_id", flat=True)) == set(
            judgments.values_list("id", flat=True)
        )
        decided = list(Comparison.objects.filter(project=project, ranking__isnull=False))
        assert len(decided) == 6 * COMPARISONS
        for pair in decided:
            assert pair.judgment_count == OVERLAP
            assert pair.judgments.filter(kind="implied").count() == OVERLAP
    for comparison in decided:
        if comparison.judgment_count >= OVERLAP:
            assert comparison.status == ComparisonStatus.COMPLETE, comparison
            pairs = PreferencePair.objects.filter(comparison=comparison)
            votes = Counter(
                Judgment.objects.filter(comparison=comparison, superseded_at__isnull=True)
                .exclude(kind="recheck")
                .values_list("choice", flat=True)
            ).most_common()
            if len(votes) > 1 and votes[0][1] == votes[1][1]:
                assert not pairs.exists(), comparison  # an even split is undecided: no pair
            else:
                assert [p.n_judgments for p in pairs] == [OVERLAP], comparison
    # Nothing is left stranded by a lease: every thread acted on the last pair it held.
    assert Lease.objects.filter(comparison__project=project, state=LeaseState.HELD).count() == 0
    assert seconds < 30


# Two races, reproduced deterministically (both were bugs once).


def _hold_row_locks(
    *, project: Project, locked: threading.Event, release: threading.Event
) -> Callable[[], None]:
    """What an in-flight claim or submit does: hold FOR UPDATE locks on comparison rows."""

    def hold() -> None:
        try:
            with transaction.atomic():
                list(Comparison.objects.filter(project=project).select_for_update())
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    return hold


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE NOT l.granted AND a.datname = current_database()"
        )
        return int(cursor.fetchone()[0])


def test_it_waits_for_briefly_locked_rows_instead_of_answering_nothing_left(
    real_services: None,
) -> None:
    project, _, users = _project_with_queue("pair")
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_hold_row_locks(project=project, locked=locked, release=release)
    )
    holder.start()
    try:
        assert locked.wait(10)
        # The in-flight transaction ends soon, as a claim or a submit does.
        threading.Timer(0.3, release.set).start()
        assert available_ids(project=project, annotator=users[0], now=timezone.now())
        got = comparison_next_for_annotator(project=project, annotator=users[0])
    finally:
        release.set()
        holder.join()
    assert got is not None


def test_it_answers_a_retried_submit_that_waited_behind_its_twin_with_the_same_judgment(
    real_services: None,
) -> None:
    project, comparisons, users = _project_with_queue("pair")
    comparison, user = comparisons[0], users[0]
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_hold_row_locks(project=project, locked=locked, release=release)
    )
    answers: dict[int, object] = {}

    def send(slot: int) -> None:
        try:
            answers[slot] = judgment_submit(
                comparison_id=comparison.pk, annotator=user, choice="a", idempotency_key="retry-1"
            ).pk
        except JudgmentRejected as error:
            answers[slot] = str(error)
        finally:
            connection.close()

    holder.start()
    assert locked.wait(10)
    twins = [threading.Thread(target=send, args=(slot,)) for slot in (0, 1)]
    for twin in twins:
        twin.start()
    # Both twins have passed the key look-up and wait on the comparison's row lock.
    deadline = time.monotonic() + 10
    while _waiting_on_locks() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    holder.join()
    for twin in twins:
        twin.join()
    assert Judgment.objects.filter(idempotency_key="retry-1").count() == 1
    assert answers[0] == answers[1]
