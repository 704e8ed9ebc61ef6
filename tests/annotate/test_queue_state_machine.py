"""The queue as a state machine: annotators claim, refresh, submit, submit again, skip and walk
away while a simulated clock lets leases expire. A model of the queue predicts every answer
of `comparison_next_for_annotator` and `judgment_submit`, and the database must match it.

Each example builds its own project inside a savepoint that is rolled back at teardown, so
the examples of one test share pytest-django's database without seeing each other.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    Lease,
    LeaseState,
    PreferencePair,
)
from annotate.queue import comparison_next_for_annotator, comparison_skip
from annotate.services.judgments import JudgmentRejected, judgment_submit
from tests.factories import comparison_make, member_make, project_make

ANNOTATORS = 4
OVERLAP = 2
LEASE_SECONDS = 60

annotators = st.integers(0, ANNOTATORS - 1)


@dataclass
class ModelLease:
    state: str
    expires_at: datetime | None = None  # what matters only while held


class QueueMachine(RuleBasedStateMachine):
    """Comparisons and annotators are named by position; the database ids are looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.savepoint = transaction.atomic()
        self.savepoint.__enter__()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self.savepoint.__exit__(None, None, None)

    @initialize(rounds=st.lists(st.sampled_from([1, 2]), min_size=2, max_size=4))
    def build(self, rounds: list[int]) -> None:
        self.project = project_make(
            "machine", prompts=["Which?"], overlap=OVERLAP, lease_seconds=LEASE_SECONDS
        )
        (prompt,) = self.project.prompts.all()
        self.comparisons = [
            comparison_make(prompt, round_number=number, seed=i) for i, number in enumerate(rounds)
        ]
        self.users = [
            member_make(self.project, f"annotator{i}", login=False) for i in range(ANNOTATORS)
        ]
        self.by_pk = {c.pk: position for position, c in enumerate(self.comparisons)}
        self.annotator_of = {user.pk: i for i, user in enumerate(self.users)}
        self.now = timezone.now()
        self.leases: dict[tuple[int, int], ModelLease] = {}  # (comparison, annotator)
        self.judged: list[set[int]] = [set() for _ in self.comparisons]
        self.choices: list[list[str]] = [[] for _ in self.comparisons]  # the votes taken
        self.current: dict[int, int] = {}  # annotator → the pair on their screen
        self.last: dict[int, tuple[str, int, int]] = {}  # annotator → (key, judgment id, pair)
        self.keys = itertools.count()
        self.ready = True

    # The model ------------------------------------------------------------------------------

    def _complete(self, c: int) -> bool:
        return len(self.judged[c]) >= OVERLAP

    def _live(self, c: int, a: int) -> bool:
        lease = self.leases.get((c, a))
        return (
            lease is not None
            and lease.state == LeaseState.HELD
            and lease.expires_at is not None
            and lease.expires_at > self.now
        )

    def _holders(self, c: int) -> set[int]:
        return {a for a in range(ANNOTATORS) if self._live(c, a)}

    def _skipped(self, c: int, a: int) -> bool:
        lease = self.leases.get((c, a))
        return lease is not None and lease.state == LeaseState.SKIPPED

    def _held_open(self, a: int) -> int | None:
        held = [c for c in range(len(self.comparisons)) if self._live(c, a)]
        held = [c for c in held if not self._complete(c)]
        assert len(held) <= 1, f"annotator{a} holds {held}"
        return held[0] if held else None

    def _predict_next(self, a: int) -> tuple[int | None, bool]:
        """The pair `next` must answer, and whether it is a refresh of a held lease."""
        held = self._held_open(a)
        if held is not None:
            return held, True
        available = [
            c
            for c in range(len(self.comparisons))
            if not self._complete(c)
            and a not in self.judged[c]
            and not self._skipped(c, a)
            and len(self.judged[c]) + len(self._holders(c) - {a}) < OVERLAP
        ]
        available.sort(key=lambda c: (-self.comparisons[c].round_number, -len(self.judged[c]), c))
        return (available[0] if available else None), False

    # Rules ----------------------------------------------------------------------------------

    def _load(self, a: int) -> int | None:
        """Annotator `a` opens (or reloads) the annotate page; the pair they are shown."""
        expected, refresh = self._predict_next(a)
        got = comparison_next_for_annotator(
            project=self.project, annotator=self.users[a], now=self.now
        )
        got_c = None if got is None else self.by_pk[got.pk]
        assert got_c == expected, f"annotator{a} got {got_c}, the model says {expected}"
        event(
            "next: refresh" if refresh else "next: new lease" if got_c is not None else "next: None"
        )
        if got_c is None:
            self.current.pop(a, None)
            return None
        assert a not in self.judged[got_c], "offered a pair they judged"
        assert not self._skipped(got_c, a), "offered a pair they skipped"
        if not refresh:
            for (c, holder), lease in self.leases.items():
                if holder == a and c != got_c and lease.state == LeaseState.HELD:
                    lease.state = LeaseState.RELEASED
            self.leases[(got_c, a)] = ModelLease(
                LeaseState.HELD, self.now + timedelta(seconds=LEASE_SECONDS)
            )
            # What is handed out never exceeds the overlap.
            assert len(self.judged[got_c]) + len(self._holders(got_c)) <= OVERLAP
        self.current[a] = got_c
        return got_c

    def _on_screen(self, a: int) -> int | None:
        """The pair annotator `a` has on screen, loading the page first if there is none."""
        return self.current[a] if a in self.current else self._load(a)

    @precondition(lambda self: self.ready)
    @rule(a=annotators)
    def load(self, a: int) -> None:
        self._load(a)

    @precondition(lambda self: self.ready)
    @rule(a=annotators)
    def refresh(self, a: int) -> None:
        """Load the page, then reload it within the lease: the same pair comes back."""
        shown = self._load(a)
        if shown is None:
            return
        again = comparison_next_for_annotator(
            project=self.project, annotator=self.users[a], now=self.now
        )
        assert again is not None
        assert self.by_pk[again.pk] == shown

    @precondition(lambda self: self.ready)
    @rule(a=annotators, choice=st.sampled_from(["a", "b", "tie"]))
    def submit(self, a: int, choice: str) -> None:
        """Submit the pair on screen, whether or not its lease is still live."""
        c = self._on_screen(a)
        if c is None:
            return
        del self.current[a]
        key = f"key-{next(self.keys)}"
        live = self._live(c, a)
        # A live lease reserves its slot; a vote without one needs a slot nobody holds.
        room = len(self.judged[c]) + len(self._holders(c) - {a}) < OVERLAP
        accepted = not self._complete(c) and a not in self.judged[c] and (live or room)
        try:
            judgment = judgment_submit(
                comparison_id=self.comparisons[c].pk,
                annotator=self.users[a],
                choice=choice,
                idempotency_key=key,
                now=self.now,
            )
        except JudgmentRejected:
            event("submit: refused, holder" if live else "submit: refused")
            assert not accepted, f"annotator{a}'s vote on {c} was refused"
            assert not live, "a lease holder was refused"
            return
        assert accepted, f"annotator{a}'s vote on {c} was taken beyond the overlap"
        event("submit: taken" if live else "submit: taken, without a lease")
        self.judged[c].add(a)
        self.choices[c].append(choice)
        if (c, a) in self.leases:
            self.leases[(c, a)] = ModelLease(LeaseState.SUBMITTED)
        self.last[a] = (key, judgment.pk, c)

    @precondition(lambda self: self.ready and bool(self.last))
    @rule(data=st.data(), same_key=st.booleans())
    def submit_again(self, data: st.DataObject, same_key: bool) -> None:
        """A double click (same key) or a second vote from a stale tab (a new key)."""
        a = data.draw(st.sampled_from(sorted(self.last)))
        key, judgment_id, c = self.last[a]
        request: dict[str, Any] = {
            "comparison_id": self.comparisons[c].pk,
            "annotator": self.users[a],
            "choice": "b",
        }
        if same_key:
            again = judgment_submit(**request, idempotency_key=key)
            assert again.pk == judgment_id
        else:
            with pytest.raises(JudgmentRejected):
                judgment_submit(**request, idempotency_key=f"key-{next(self.keys)}")

    @precondition(lambda self: self.ready)
    @rule(a=annotators)
    def skip(self, a: int) -> None:
        c = self._on_screen(a)
        if c is None:
            return
        del self.current[a]
        comparison_skip(comparison=self.comparisons[c], annotator=self.users[a], reason="Unsure")
        self.leases[(c, a)] = ModelLease(LeaseState.SKIPPED)
        event("skip")

    @precondition(lambda self: self.ready)
    @rule(a=annotators)
    def abandon(self, a: int) -> None:
        """Walk away from the pair on screen: the lease stays until it expires."""
        if self._on_screen(a) is not None:
            del self.current[a]
            event("abandon")

    @precondition(lambda self: self.ready)
    @rule(seconds=st.integers(1, LEASE_SECONDS // 2))
    def wait(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: self.ready)
    @rule(beyond=st.integers(1, LEASE_SECONDS))
    def expire(self, beyond: int) -> None:
        """Let every live lease run out."""
        self.now += timedelta(seconds=LEASE_SECONDS + beyond)

    # Invariants -----------------------------------------------------------------------------

    @invariant()
    def votes_match_the_model(self) -> None:
        if not self.ready:
            return
        votes = list(
            Judgment.objects.filter(comparison__project=self.project).values_list(
                "comparison_id", "annotator_id"
            )
        )
        assert len(votes) == len(set(votes)), "an annotator voted twice on one pair"
        judged: list[set[int]] = [set() for _ in self.comparisons]
        for comparison_id, annotator_id in votes:
            judged[self.by_pk[comparison_id]].add(self.annotator_of[annotator_id])
        assert judged == self.judged
        pairs = dict(
            PreferencePair.objects.filter(project=self.project).values_list(
                "comparison_id", "n_judgments"
            )
        )
        for pk, judgment_count, status in Comparison.objects.filter(
            project=self.project
        ).values_list("pk", "judgment_count", "status"):
            votes_here = len(judged[self.by_pk[pk]])
            assert votes_here <= OVERLAP
            assert judgment_count == votes_here
            if votes_here >= OVERLAP:
                assert status == ComparisonStatus.COMPLETE
                counts = sorted(Counter(self.choices[self.by_pk[pk]]).values(), reverse=True)
                if len(counts) > 1 and counts[0] == counts[1]:
                    assert pk not in pairs, "an evenly split vote was aggregated"
                else:
                    assert pairs.get(pk) == OVERLAP, "a complete pair has no aggregate"
            else:
                assert status == ComparisonStatus.OPEN
                assert pk not in pairs

    @invariant()
    def leases_match_the_model(self) -> None:
        if not self.ready:
            return
        stored = {
            (self.by_pk[lease.comparison_id], self.annotator_of[lease.annotator_id]): (
                lease.state,
                lease.expires_at if lease.state == LeaseState.HELD else None,
            )
            for lease in Lease.objects.filter(comparison__project=self.project)
        }
        model = {
            key: (lease.state, lease.expires_at if lease.state == LeaseState.HELD else None)
            for key, lease in self.leases.items()
        }
        assert stored == model
        held = [a for (_, a), (state, _) in stored.items() if state == LeaseState.HELD]
        assert len(held) == len(set(held)), "an annotator holds two leases"

    @invariant()
    def hand_out_stays_within_the_overlap(self) -> None:
        if not self.ready:
            return
        for c in range(len(self.comparisons)):
            if not self._complete(c):
                holders = self._holders(c)
                assert not holders & self.judged[c]
                assert len(self.judged[c]) + len(holders) <= OVERLAP


@pytest.mark.django_db
def test_it_keeps_the_queue_consistent_through_any_sequence_of_actions() -> None:
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
