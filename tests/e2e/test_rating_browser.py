"""Rating single responses by keyboard (issue 22), in a real Chromium: the stored label is the
key pressed for the response on screen, good / bad or a score on the 1-5 scale; an undone
rating comes back marked as it was and is rated again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotate.models import Comparison, Judgment, JudgmentKind, PairKind, PreferencePair, Project
from annotate.services.projects import project_settings_update
from tests.e2e.conftest import WAIT_MS, Session
from tests.factories import ratings_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def _ratings(project: Project) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train"))
    return [
        *ratings_make(prompts[0], ["Four.", "2 + 2 makes 4."]),
        *ratings_make(prompts[1], ["It is 8.", "Nine, I think."]),
    ]


def _start(session: Session) -> None:
    session.page.keyboard.press("g")  # the guidelines, read
    expect(session.page.locator("[data-guideline-banner]")).to_have_count(0, timeout=WAIT_MS)
    expect(session.page.locator("#pair")).to_be_focused(timeout=WAIT_MS)


def _rate(session: Session, key: str) -> tuple[int, str]:
    """Press `key` on the rating shown; (its comparison, the response text that was on screen),
    once the next item replaced it."""
    expect(session.page.locator("[data-rated]")).to_have_count(1, timeout=WAIT_MS)
    comparison_id = session.shown_pair()
    text = session.page.locator("[data-rated] .response-body").inner_text().strip()
    session.page.keyboard.press(key)
    session.page.wait_for_function(
        "id => document.getElementById('pair').getAttribute('data-comparison') !== String(id)",
        arg=comparison_id,
        timeout=WAIT_MS,
    )
    return comparison_id, text


def _vote(comparison_id: int, annotator: User) -> Judgment:
    return Judgment.objects.select_related("comparison__response_a").get(
        comparison_id=comparison_id,
        annotator=annotator,
        kind=JudgmentKind.VOTE,
        superseded_at__isnull=True,
    )


def test_it_rates_by_keyboard_and_stores_the_label_of_the_key_pressed(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    ratings = _ratings(project)
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    _start(session)
    shots = os.environ.get("PREFLOOP_SCREENS_DIR")
    if shots:
        session.page.screenshot(path=str(Path(shots) / "rating-1280x800.png"), caret="initial")
    pressed = {"ArrowUp": "good", "x": "bad", "a": "good", "ArrowDown": "bad"}
    rated = []
    for key, label in pressed.items():
        comparison_id, text = _rate(session, key)
        vote = _vote(comparison_id, annotator)
        assert vote.comparison.response_a.text == text  # the response that was on screen
        assert vote.choice == label and vote.score is None
        rated.append(comparison_id)
    assert sorted(rated) == sorted(r.pk for r in ratings)
    expect(session.page.locator("[data-empty]")).to_be_visible(timeout=WAIT_MS)
    labels = dict(PreferencePair.objects.values_list("comparison_id", "kind"))
    assert [labels[c] for c in rated] == [PairKind.GOOD, PairKind.BAD, PairKind.GOOD, PairKind.BAD]

    # U brings the last rating back, its earlier label marked; the key pressed now replaces it.
    session.page.keyboard.press("u")
    expect(session.page.locator("[data-rated]")).to_have_count(1, timeout=WAIT_MS)
    assert session.shown_pair() == rated[-1]
    expect(session.page.locator("button[value='bad'].earlier")).to_have_count(1)
    _rate(session, "ArrowUp")
    assert _vote(rated[-1], annotator).choice == "good"
    assert (
        Judgment.objects.filter(comparison_id=rated[-1], superseded_at__isnull=False).count() == 1
    )
    assert PreferencePair.objects.get(comparison_id=rated[-1]).kind == PairKind.GOOD
    assert session.errors == []


def test_it_rates_on_the_five_point_scale_good_from_the_threshold_up(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, rating_scale="five", rating_threshold=4)
    _ratings(project)
    session = open_session(annotator, f"/p/{project.slug}/annotate/", PHONE)
    _start(session)
    expect(session.page.locator("[data-score]")).to_have_count(5, timeout=WAIT_MS)
    shots = os.environ.get("PREFLOOP_SCREENS_DIR")  # for the docs: where to save them
    if shots:  # (caret="initial": hiding the caret would inject a style the CSP refuses)
        session.page.screenshot(path=str(Path(shots) / "rating-390x844.png"), caret="initial")
    for key, label in (("5", "good"), ("2", "bad"), ("4", "good"), ("3", "bad")):
        comparison_id, text = _rate(session, key)
        vote = _vote(comparison_id, annotator)
        assert vote.comparison.response_a.text == text
        assert (vote.score, vote.choice) == (int(key), label)
    width = session.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1]
    assert session.errors == []
