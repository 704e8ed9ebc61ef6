from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from annotate.models import LeaseState, Project
from annotate.queue import comparison_next_for_annotator, comparison_skip
from annotate.services.judgments import judgment_submit
from tests.factories import comparisons_make, member_make

pytestmark = pytest.mark.django_db


def test_it_returns_the_same_held_pair_on_refresh(project: Project, annotator: User) -> None:
    comparisons_make(project, 3)
    first = comparison_next_for_annotator(project=project, annotator=annotator)
    again = comparison_next_for_annotator(project=project, annotator=annotator)
    assert first is not None
    assert again == first
    assert first.leases.get(annotator=annotator).state == LeaseState.HELD


def test_it_hides_a_leased_pair_from_others_until_the_lease_expires(
    project: Project, annotator: User
) -> None:
    (only,) = comparisons_make(project, 1)
    other = member_make(project, "other")
    assert comparison_next_for_annotator(project=project, annotator=annotator) == only
    assert comparison_next_for_annotator(project=project, annotator=other) is None
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 1)
    assert comparison_next_for_annotator(project=project, annotator=other, now=later) == only


def test_it_offers_current_round_first_then_nearest_completion(
    project: Project, annotator: User
) -> None:
    project.overlap = 2
    project.save()
    old = comparisons_make(project, 1, round_number=1)[0]
    newer = comparisons_make(project, 2, round_number=2)
    helper = member_make(project, "helper")
    judgment_submit(comparison_id=newer[1].pk, annotator=helper, choice="a")
    assert comparison_next_for_annotator(project=project, annotator=annotator) == newer[1]
    assert old.round_number == 1


def test_it_never_offers_a_judged_or_skipped_pair_again(project: Project, annotator: User) -> None:
    comparisons_make(project, 2)
    got = comparison_next_for_annotator(project=project, annotator=annotator)
    assert got is not None
    judgment_submit(comparison_id=got.pk, annotator=annotator, choice="a")
    nxt = comparison_next_for_annotator(project=project, annotator=annotator)
    assert nxt is not None and nxt != got
    comparison_skip(comparison=nxt, annotator=annotator, reason="not sure")
    assert comparison_next_for_annotator(project=project, annotator=annotator) is None
    assert nxt.leases.get(annotator=annotator).skip_reason == "not sure"


def test_it_keeps_handing_out_a_pair_until_its_overlap_is_reached(
    project: Project, annotator: User
) -> None:
    project.overlap = 2
    project.save()
    (only,) = comparisons_make(project, 1)
    others = [member_make(project, f"o{i}") for i in range(2)]
    assert comparison_next_for_annotator(project=project, annotator=annotator) == only
    assert comparison_next_for_annotator(project=project, annotator=others[0]) == only
    assert comparison_next_for_annotator(project=project, annotator=others[1]) is None
