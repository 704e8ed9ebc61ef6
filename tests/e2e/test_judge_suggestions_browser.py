"""A model judge's suggestions in a real Chromium (issue 22): an annotator judging by keyboard
sees what the judge chose only once their own vote is in, never before (it would anchor them),
in the sides they saw; the stored vote is the key pressed, and the suggestion never counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from alignment.models import JudgeKind
from alignment.services.judges import judge_add, judge_run_start
from alignment.workers.judging import judge_job_execute
from annotate.models import Comparison, Judgment, JudgmentKind, PreferencePair, Project
from tests.e2e.conftest import WAIT_MS, Session
from tests.factories import comparison_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHORT, LONG = "Paris.", "The capital of France is Paris, a city on the Seine."


def test_a_suggestion_appears_only_after_the_annotators_vote(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    prompts = list(project.prompts.filter(split="train"))
    comparisons = [
        comparison_make(prompts[i], (SHORT, LONG) if i % 2 else (LONG, SHORT), seed=i)
        for i in range(3)
    ]
    judge = judge_add(project=project, name="Brevity", kind=JudgeKind.RULE, rule="shorter")
    judge_job_execute(job_id=judge_run_start(judge=judge, dispatch=False).pk)
    assert Judgment.objects.filter(kind=JudgmentKind.SUGGESTION).count() == 3

    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    session.page.keyboard.press("g")  # the guidelines, read
    expect(session.page.locator("[data-guideline-banner]")).to_have_count(0, timeout=WAIT_MS)
    for key in ("ArrowLeft", "ArrowRight", "3"):
        comparison_id = session.shown_pair()
        left_is_short = session.left_text().strip() == SHORT
        # Before the vote: nothing of the judge's on this pair (what shows is on the last one).
        expect(session.page.locator(f'[data-suggestions="{comparison_id}"]')).to_have_count(0)
        shown = session.page.locator("[data-suggestions]")
        if shown.count():
            assert shown.get_attribute("data-suggestions") != str(comparison_id)
        session.page.keyboard.press(key)
        session.page.wait_for_function(
            "id => document.getElementById('pair').getAttribute('data-comparison') !== String(id)",
            arg=comparison_id,
            timeout=WAIT_MS,
        )
        suggestion = session.page.locator(f'[data-suggestions="{comparison_id}"] [data-suggestion]')
        expect(suggestion).to_have_count(1, timeout=WAIT_MS)
        # The judge preferred the shorter one, in the sides this annotator saw.
        assert suggestion.get_attribute("data-suggestion") == ("left" if left_is_short else "right")
        pressed = {"ArrowLeft": "left", "ArrowRight": "right", "3": "tie"}[key]
        agrees = pressed == ("left" if left_is_short else "right")
        assert ("as you did" in suggestion.inner_text()) == agrees
        vote = Judgment.objects.get(
            comparison_id=comparison_id, annotator=annotator, kind=JudgmentKind.VOTE
        )
        comparison = Comparison.objects.get(pk=comparison_id)
        expected = {
            "left": "a" if comparison.left_is_a else "b",
            "right": "b" if comparison.left_is_a else "a",
            "tie": "tie",
        }[pressed]
        assert vote.choice == expected  # the key pressed, for the response on screen
        pair = PreferencePair.objects.get(comparison=comparison)
        assert pair.n_judgments == 1  # the suggestion is no vote
    expect(session.page.locator("[data-empty]")).to_be_visible(timeout=WAIT_MS)
    assert {c.pk for c in comparisons} == set(
        Judgment.objects.filter(annotator=annotator).values_list("comparison_id", flat=True)
    )
    assert session.errors == []
