"""The judging screen at a laptop's and a phone's size, saved as pictures: under
$PREFLOOP_SCREENS_DIR when set (docs/screens/ holds the ones the README and the issues
show), else in a temporary folder. The pair: a poem against a list of names, one cut off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from annotate.models import Project, Response
from tests.factories import comparison_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

POEM = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."
NAMES = "Alice Smith\nBob Jones\nCarol White\nDan Brown\n" + "Eve Green\n" * 3


@pytest.mark.parametrize(
    "name,viewport",
    [("judging-1366x768", (1366, 768)), ("judging-390x844", (390, 844))],
)
def test_the_judging_screen_is_drawn(
    live_server, browser, project: Project, annotator: User, tmp_path: Path, name, viewport
) -> None:
    prompt = project.prompts.filter(split="train").first()
    assert prompt is not None
    comparison = comparison_make(prompt, texts=(POEM, NAMES))
    Response.objects.filter(pk=comparison.response_b_id).update(
        finish_reason="length", completion_tokens=200
    )
    folder = Path(os.environ.get("PREFLOOP_SCREENS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(f"{live_server.url}/login/?next=/p/{project.slug}/annotate/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", "pw-" + annotator.username)
    page.press("#id_password", "Enter")
    page.wait_for_selector(f'#pair[data-comparison="{comparison.pk}"]')
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    context.close()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
