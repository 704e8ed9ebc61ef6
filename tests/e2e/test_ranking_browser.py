"""Ranking K responses by keyboard only (issue 21), in a real Chromium at a laptop's 1366x768
and a phone's 390x844: the stored ranks are what was on screen, in the order shown; an undone
ranking comes back as it was and is ranked again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotate.models import Comparison, Judgment, JudgmentKind, PreferencePair, Project
from tests.e2e.conftest import WAIT_MS, Session
from tests.factories import ranking_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
TEXTS = [
    ("Paris.", "The capital is Paris, on the Seine.", "Lyon, I think.", "No idea, sorry."),
    ("4", "2 + 2 = 4.", "Five.", "It is 4 because two and two make four."),
    ("Blue.", "The sky looks blue: air scatters short wavelengths more.", "Green.", "Grey."),
]


def _rankings(project: Project) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train"))
    return [ranking_make(prompts[i], texts) for i, texts in enumerate(TEXTS)]


def _screen(session: Session) -> list[tuple[int, str]]:
    """(position shown, response text) of the ranking on screen, in the order shown."""
    cards = session.page.locator("[data-position]")
    return [
        (
            int(cards.nth(i).get_attribute("data-position") or 0),
            cards.nth(i).locator(".response-body").inner_text().strip(),
        )
        for i in range(cards.count())
    ]


def _badges(session: Session) -> list[str]:
    return [b.strip() for b in session.page.locator("[data-rank-badge]").all_inner_texts()]


def _guidelines_read(session: Session) -> None:
    """G acknowledges the guidelines; keys pressed before the ranking comes back would be lost."""
    session.page.keyboard.press("g")
    expect(session.page.locator("[data-guideline-banner]")).to_have_count(0, timeout=WAIT_MS)
    expect(session.page.locator("#pair")).to_be_focused(timeout=WAIT_MS)


def _next_shown(session: Session, *, after: int) -> None:
    """Wait until the ranking `after` has been saved and something else is shown."""
    session.page.wait_for_function(
        "id => document.getElementById('pair').getAttribute('data-comparison') !== String(id)",
        arg=after,
        timeout=WAIT_MS,
    )
    expect(session.page.locator("[data-undo]")).to_be_visible(timeout=WAIT_MS)


def _rank_by_keys(session: Session, keys: list[str]) -> None:
    for key in keys:
        session.page.keyboard.press(key)


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_it_ranks_items_by_keyboard_and_stores_the_ranks_shown(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    viewport: dict[str, int],
) -> None:
    rankings = _rankings(project)
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport)
    _guidelines_read(session)
    plans = [
        # (keys pressed, the rank each shown position should get)
        (["3", "1", "4", "2", "Enter"], {3: 1, 1: 2, 4: 3, 2: 4}),
        (["2", "t", "4", "1", "Enter"], {2: 1, 4: 1, 1: 2, 3: 3}),  # a tie; the last one left
        (["4", "3", "2", "1", "Enter"], {4: 1, 3: 2, 2: 3, 1: 4}),
    ]
    seen = []
    for keys, wanted in plans:
        expect(session.page.locator("[data-position]")).to_have_count(4, timeout=WAIT_MS)
        comparison_id = session.shown_pair()
        screen = _screen(session)
        _rank_by_keys(session, keys[:-1])
        badges = _badges(session)
        for position, rank in wanted.items():
            if position in [int(k) for k in keys[:-1] if k.isdigit()]:
                assert badges[position - 1] == f"Rank {rank}"
        shots = os.environ.get("PREFLOOP_SCREENS_DIR")  # for the docs: where to save them
        if shots and not seen:
            name = f"ranking-{viewport['width']}x{viewport['height']}.png"
            # (caret="initial": hiding the caret would inject a style the CSP refuses)
            session.page.screenshot(path=str(Path(shots) / name), caret="initial")
        session.page.keyboard.press("Enter")
        _next_shown(session, after=comparison_id)
        judgment = Judgment.objects.get(
            comparison_id=comparison_id, annotator=annotator, kind=JudgmentKind.VOTE
        )
        texts = {r.pk: r.text for r in judgment.comparison.prompt.responses.all()}
        assert [texts[pk] for pk in judgment.shown] == [text for _, text in screen]
        assert judgment.ranks == [wanted[position] for position, _ in screen]
        seen.append(comparison_id)
    assert sorted(seen) == sorted(r.pk for r in rankings)
    expect(session.page.locator("[data-empty]")).to_be_visible(timeout=WAIT_MS)
    assert PreferencePair.objects.filter(comparison__ranking__in=rankings).count() == 18
    width = session.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1]
    assert session.errors == []


def test_it_undoes_a_ranking_and_ranks_it_again(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    ranking = ranking_make(project.prompts.filter(split="train")[0], TEXTS[0])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", LAPTOP)
    _guidelines_read(session)
    expect(session.page.locator("[data-position]")).to_have_count(4, timeout=WAIT_MS)
    # A pick taken back with Backspace is no pick.
    _rank_by_keys(session, ["1", "2", "Backspace", "3", "2"])
    assert _badges(session) == ["Rank 1", "Rank 3", "Rank 2", ""]
    session.page.keyboard.press("Enter")
    _next_shown(session, after=ranking.pk)
    first = Judgment.objects.get(comparison=ranking, kind=JudgmentKind.VOTE)
    assert first.ranks == [1, 3, 2, 4]
    session.page.keyboard.press("u")
    session.expect_pair(ranking.pk, swapped=True)
    # The earlier ranking comes back marked, in the same order.
    assert _badges(session) == ["Rank 1", "Rank 3", "Rank 2", "Rank 4"]
    assert [text for _, text in _screen(session)] == [
        ranking.prompt.responses.get(pk=pk).text for pk in first.shown
    ]
    _rank_by_keys(session, ["Backspace"] * 4 + ["4", "3", "2", "1", "Enter"])
    expect(session.page.locator("[data-empty]")).to_be_visible(timeout=WAIT_MS)
    first.refresh_from_db()
    assert first.superseded_at is not None
    live = Judgment.objects.get(comparison=ranking, kind=JudgmentKind.VOTE, superseded_at=None)
    assert live.ranks == [4, 3, 2, 1] and live.shown == first.shown
    assert Judgment.objects.filter(source=live).count() == 6
    assert Judgment.objects.filter(source=first, superseded_at__isnull=True).count() == 0
    assert session.errors == []
