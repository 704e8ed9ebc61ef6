"""Two full rounds on the demo project, from the UI, with the packaged model.

The lead starts rounds and training runs with the pages' forms; two annotators judge every
pair by keyboard (the shorter answer wins); the leaderboard and round 2's summary then show
the head-to-head of v1 against v0. The worker's tasks run eagerly inside the web requests
(Celery's task_always_eager), so each click runs the real generation or training before it
answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.test import override_settings
from playwright.sync_api import Browser, Page, expect
from pytest_django.live_server_helper import LiveServer

from alignment.models import ModelVersion, Round, TrainingRun
from annotate.models import Comparison, ComparisonStatus, Project
from core.models import JobStatus

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB_MS = 240_000  # a click that generates or trains answers when the work is done


@pytest.fixture
def eager_worker(settings, tmp_path) -> Iterator[None]:
    from config.celery import app

    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def _login(browser: Browser, live_server: LiveServer, username: str, password: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.set_default_navigation_timeout(JOB_MS)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.press("#id_password", "Enter")
    page.wait_for_url(f"{live_server.url}/")
    return page


def _judge_everything(page: Page, live_server: LiveServer) -> int:
    """Judge until the queue is empty, preferring the shorter answer; how many were judged."""
    page.goto(f"{live_server.url}/p/demo/annotate/")
    judged = 0
    while page.locator("[data-empty]").count() == 0:
        if page.locator("[data-guideline-banner]").count():
            page.keyboard.press("g")
            expect(page.locator("[data-guideline-banner]")).to_have_count(0)
        left = page.locator('[data-side="left"] .response-body').inner_text()
        right = page.locator('[data-side="right"] .response-body').inner_text()
        page.locator("#pair").focus()
        # Wait for the pair to be swapped, not for another comparison: a swap re-check shows
        # the same comparison again, sides swapped.
        page.evaluate("() => { window.judgedPair = document.getElementById('pair'); }")
        page.keyboard.press("ArrowLeft" if len(left) <= len(right) else "ArrowRight")
        page.wait_for_function("() => document.getElementById('pair') !== window.judgedPair")
        judged += 1
    return judged


def _train(lead: Page, live_server: LiveServer, parent: str) -> TrainingRun:
    lead.goto(f"{live_server.url}/p/demo/runs/new/")
    lead.select_option("#id_base_version", label=parent)
    for field, value in {"epochs": "1", "batch_size": "2", "max_length": "192"}.items():
        lead.fill(f"#id_{field}", value)
    lead.get_by_role("button", name="Start training").click(timeout=JOB_MS)
    lead.wait_for_url(re.compile(r"/p/demo/runs/\d+/$"), timeout=JOB_MS)
    expect(lead.locator(".badge-succeeded")).to_be_visible()
    run = TrainingRun.objects.select_related("output_version").latest("id")
    assert run.status == JobStatus.SUCCEEDED, run.error
    return run


def test_two_full_rounds_from_the_ui_end_on_the_leaderboard(
    eager_worker: None, browser: Browser, live_server: LiveServer
) -> None:
    # `make demo`'s seeding (with DEBUG, as `make demo` runs it), smaller: round 1 is
    # generated as it is queued.
    with override_settings(DEBUG=True):
        call_command("seed_demo", round_prompts=6, max_new_tokens=24, verbosity=0)
    project = Project.objects.get(slug="demo")
    assert Comparison.objects.filter(project=project, round_number=1).exists()
    lead = _login(browser, live_server, "lead", "prefloop-lead")
    # The demo's lead is also its site admin.
    admin = lead.goto(f"{live_server.url}/admin/")
    assert admin is not None and admin.status == 200
    expect(lead.locator("body")).to_contain_text("Site administration")
    annotators = [
        _login(browser, live_server, f"annotator{i}", f"prefloop-annotator{i}") for i in (1, 2)
    ]

    # Round 1: judge (overlap 2), review, train v1.
    for page in annotators:
        assert _judge_everything(page, live_server) > 0
    assert not Comparison.objects.filter(
        project=project, round_number=1, status=ComparisonStatus.OPEN
    ).exists()
    lead.goto(f"{live_server.url}/p/demo/rounds/1/review/")
    lead.get_by_role("button", name="Sign off round 1").click()
    expect(lead.locator("[data-sign-off]")).to_have_count(1)
    first = _train(lead, live_server, "v0 (base)")
    assert first.sign_off is not None
    v1 = first.output_version
    assert v1 is not None and v1.name == "v1"

    # Round 2: v1 makes new training pairs and meets v0 head-to-head on held-out prompts.
    lead.goto(f"{live_server.url}/p/demo/rounds/new/")
    lead.select_option("#id_policy", label="v1 (from v0 (base))")
    lead.select_option("#id_pairing_strategy", value="both")
    for field, value in {
        "train_prompts": "4",
        "eval_prompts": "4",
        "samples_per_prompt": "2",
        "max_new_tokens": "24",
    }.items():
        lead.fill(f"#id_{field}", value)
    lead.get_by_role("button", name="Start round").click(timeout=JOB_MS)
    lead.wait_for_url(f"{live_server.url}/p/demo/rounds/2/", timeout=JOB_MS)
    round2 = Round.objects.get(project=project, number=2)
    assert round2.policy == v1
    head_to_head = Comparison.objects.filter(project=project, round_number=2, purpose="eval")
    assert head_to_head.count() == 4 * 2

    for page in annotators:
        _judge_everything(page, live_server)
    second = _train(lead, live_server, "v1 (from v0 (base))")
    assert second.output_version is not None and second.output_version.parent == v1
    assert ModelVersion.objects.filter(project=project).count() == 3

    # The head-to-head result, on the leaderboard and in round 2's summary.
    lead.goto(f"{live_server.url}/p/demo/leaderboard/")
    verdict = lead.locator('[data-round="2"]')
    expect(verdict).to_contain_text("Round 2: v1 vs v0 (base)")
    expect(verdict).to_contain_text(re.compile(r"over \d+ head-to-heads: \d+ won, \d+ lost"))
    expect(lead.locator("#ratings")).to_contain_text("v1")
    lead.goto(f"{live_server.url}/p/demo/rounds/2/")
    expect(lead.locator("#round-summary [data-verdict]")).to_contain_text("v1 vs v0 (base)")
