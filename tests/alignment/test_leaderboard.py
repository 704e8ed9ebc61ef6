"""Head-to-head results: a Bradley-Terry leaderboard of model versions and round verdicts."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from alignment.models import ModelVersion, PairingStrategy, Round
from alignment.selectors.leaderboard import leaderboard_get
from alignment.services.model_versions import model_version_base_ensure, model_version_register
from alignment.services.rounds import round_start
from annotate.models import Project, Purpose
from annotate.services.comparisons import comparison_create
from annotate.services.judgments import judgment_submit
from annotate.services.prompts import ResponseInput, responses_create
from tests.factories import client_make

pytestmark = pytest.mark.django_db


def _head_to_heads(
    project: Project,
    round_: Round,
    new: ModelVersion,
    old: ModelVersion,
    outcomes: str,
    judge: User,
) -> None:
    """One judged head-to-head per letter: w (the new version won), l (lost), t (tie), one
    held-out prompt after the other (games of one prompt count as fewer: see
    test_games_of_one_prompt_count_as_fewer_independent_ones)."""
    prompts = list(project.prompts.filter(split="eval"))
    for i, outcome in enumerate(outcomes):
        prompt = prompts[i % len(prompts)]
        mine, theirs = (
            responses_create(
                policy=v.policy,
                rows=[
                    ResponseInput(prompt_id=prompt.pk, text=f"{v.name} {i}", generation_params={})
                ],
            )[0]
            for v in (new, old)
        )
        comparison = comparison_create(
            response_a=mine,
            response_b=theirs,
            round_number=round_.number,
            purpose=Purpose.EVAL,
            pairing_strategy=PairingStrategy.HEAD_TO_HEAD,
        )
        choice = {"w": "a", "l": "b", "t": "tie"}[outcome]
        judgment_submit(comparison_id=comparison.pk, annotator=judge, choice=choice)


def test_it_rates_versions_and_says_whether_each_beat_its_parent(
    project: Project, lead: User
) -> None:
    base = model_version_base_ensure(project=project)
    v1 = model_version_register(
        project=project, parent=base, adapter_path="/a1", adapter_sha256="1"
    )
    v2 = model_version_register(project=project, parent=v1, adapter_path="/a2", adapter_sha256="2")
    held_out = list(project.prompts.filter(split="eval"))
    round1, round2 = (
        round_start(
            project=project,
            policy=version,
            eval_prompts=held_out,
            strategy=PairingStrategy.HEAD_TO_HEAD,
            dispatch=False,
        )
        for version in (v1, v2)
    )
    _head_to_heads(project, round1, v1, base, "w" * 30 + "l" * 8 + "tt", lead)  # clearly better
    _head_to_heads(project, round2, v2, v1, "wwwwwlllll" + "w", lead)  # too close to call

    board = leaderboard_get(project=project)
    assert board.games == 40 + 11
    names = [row.version.name for row in board.rows]
    assert names.index("v1") < names.index("v0 (base)")
    ratings = {row.version.name: row.rating for row in board.rows}
    assert ratings["v0 (base)"].rating == 1000.0
    assert ratings["v1"].low > 1000  # its interval clears the base
    verdicts = {h.round_number: h.verdict for h in board.head_to_heads}
    assert verdicts[round1.number].outcome == "better"
    assert verdicts[round1.number].win_rate.wins == 30
    close = verdicts[round2.number]
    assert close.outcome == "undecided" and close.more_needed and close.more_needed > 50

    client = client_make(lead)
    page = client.get(f"/p/{project.slug}/leaderboard/")
    assert page.status_code == 200
    assert b'data-verdict="better" data-round="1"' in page.content
    assert (
        b"not yet distinguishable" in page.content and b"more judged head-to-head" in page.content
    )
    api = client.get(f"/api/v1/projects/{project.slug}/leaderboard/").json()
    assert api["games"] == 51 and api["ratings"][0]["rating"] == ratings[names[0]].rating
    assert [h["outcome"] for h in api["head_to_heads"]] == ["undecided", "better"]
    summary = client.get(f"/p/{project.slug}/rounds/{round1.number}/")
    assert b'id="round-summary"' in summary.content and b"v1 vs v0 (base)" in summary.content


def test_it_shows_an_empty_leaderboard_before_any_head_to_head(
    project: Project, lead: User
) -> None:
    client = client_make(lead)
    page = client.get(f"/p/{project.slug}/leaderboard/")
    assert page.status_code == 200 and b"No judged head-to-heads yet" in page.content
