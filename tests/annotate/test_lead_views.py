"""Lead and reviewer pages end to end through the client: guidelines, quality, review,
settings, members; and the annotator's undo and guideline banner."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User

from annotate.models import (
    Comparison,
    Judgment,
    Membership,
    PairKind,
    PreferencePair,
    Project,
    Role,
)
from annotate.services.judgments import judgment_submit
from annotate.services.projects import project_settings_update
from tests.factories import client_make, comparison_make, member_make

pytestmark = pytest.mark.django_db


def _split_vote(project: Project) -> Comparison:
    project_settings_update(project=project, overlap=2)
    comparison = comparison_make(project.prompts.filter(split="train").first())
    for name, choice in [("v1", "a"), ("v2", "b")]:
        judgment_submit(
            comparison_id=comparison.pk, annotator=member_make(project, name), choice=choice
        )
    return comparison


def test_it_publishes_guidelines_and_shows_annotators_what_changed(
    project: Project, lead: User, annotator: User
) -> None:
    comparison_make(project.prompts.filter(split="train").first())
    ann = client_make(annotator)
    first = ann.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "Please read the guidelines (v1)" in first
    ann.post(f"/p/{project.slug}/annotate/guidelines-seen/", {"version": "1"})
    assert "data-guideline-banner" not in ann.get(f"/p/{project.slug}/annotate/").content.decode()

    refused = client_make(lead).post(f"/p/{project.slug}/guidelines/", {"body": "", "changes": ""})
    assert refused.status_code == 422 and project.guidelines.count() == 1
    published = client_make(lead).post(
        f"/p/{project.slug}/guidelines/",
        {"body": "# v2\nPrefer short answers.", "changes": "Prefer shorter answers"},
    )
    assert published.status_code == 302 and project.guidelines.count() == 2
    banner = ann.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "The guidelines changed (now v2)" in banner and "Prefer shorter answers" in banner
    # Under htmx the guidelines panel beside the pair is swapped out of band to v2 as well.
    swapped = ann.get(f"/p/{project.slug}/annotate/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="guidelines" aria-label="Guidelines" hx-swap-oob="true"' in swapped
    assert "Guidelines v2" in swapped and "Prefer short answers." in swapped
    ann.post(f"/p/{project.slug}/annotate/guidelines-seen/", {"version": "2"})
    assert Membership.objects.get(user=annotator).guideline_seen_version == 2
    # Annotators read the guidelines but cannot publish.
    assert ann.get(f"/p/{project.slug}/guidelines/").status_code == 200
    denied = ann.post(f"/p/{project.slug}/guidelines/", {"body": "x", "changes": "y"})
    assert denied.status_code == 404 and project.guidelines.count() == 2


def test_it_undoes_through_the_page(project: Project, annotator: User) -> None:
    comparison_make(project.prompts.filter(split="train").first())
    ann = client_make(annotator)
    page = ann.get(f"/p/{project.slug}/annotate/").content.decode()
    key = page.split('name="idempotency_key" value="')[1].split('"')[0]
    comparison_id = int(page.split('data-comparison="')[1].split('"')[0])
    after = ann.post(
        f"/p/{project.slug}/annotate/{comparison_id}/judge/",
        {"choice": "left", "idempotency_key": key},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "Undo or change it" in after and "Nothing left to judge" in after
    judgment = Judgment.objects.get()
    undone = ann.post(
        f"/p/{project.slug}/annotate/undo/", {"judgment": judgment.pk}, HTTP_HX_REQUEST="true"
    )
    assert undone.status_code == 200
    assert f'data-comparison="{comparison_id}"' in undone.content.decode()
    judgment.refresh_from_db()
    assert judgment.superseded_at is not None
    again = ann.post(
        f"/p/{project.slug}/annotate/undo/", {"judgment": judgment.pk}, HTTP_HX_REQUEST="true"
    )
    assert again.status_code == 422 and "Only your last judgment" in again.content.decode()
    mine = ann.get(f"/p/{project.slug}/mine/").content.decode()
    assert "undone" in mine


def test_it_shows_reviewers_quality_and_lets_them_adjudicate(
    project: Project, annotator: User
) -> None:
    comparison = _split_vote(project)
    reviewer = member_make(project, "rev", role=Role.REVIEWER)
    rev = client_make(reviewer)
    quality = rev.get(f"/p/{project.slug}/quality/").content.decode()
    assert 'data-stat="pairwise">0%' in quality and "n=1 vote pairs" in quality
    assert 'data-annotator="v1"' in quality and 'id="quality-data"' in quality
    listed = rev.get(f"/p/{project.slug}/review/").content.decode()
    assert f'data-comparison="{comparison.pk}"' in listed and "data-undecided" in listed
    # A split is undecided: no pair (nothing to export or train on), said so on its page.
    assert not PreferencePair.objects.filter(comparison=comparison).exists()
    undecided = rev.get(f"/p/{project.slug}/review/{comparison.pk}/").content.decode()
    assert "Undecided:" in undecided
    bad = rev.post(f"/p/{project.slug}/review/{comparison.pk}/adjudicate/", {"choice": "left"})
    assert bad.status_code == 422
    assert not PreferencePair.objects.filter(comparison=comparison).exists()
    done = rev.post(
        f"/p/{project.slug}/review/{comparison.pk}/adjudicate/", {"choice": "a", "rationale": ""}
    )
    assert done.status_code == 302
    detail = rev.get(f"/p/{project.slug}/review/{comparison.pk}/").content.decode()
    assert "decided by rev" in detail
    assert PreferencePair.objects.get(comparison=comparison).kind == PairKind.PREFERENCE
    # Gold is a lead's decision; annotators see none of this.
    gold = rev.post(f"/p/{project.slug}/review/{comparison.pk}/gold/", {"gold_choice": "a"})
    assert gold.status_code == 404
    assert client_make(annotator).get(f"/p/{project.slug}/quality/").status_code == 404
    assert client_make(annotator).get(f"/p/{project.slug}/review/").status_code == 404


def test_it_saves_settings_and_refuses_bad_ones_without_change(
    project: Project, lead: User
) -> None:
    client = client_make(lead)
    form = {
        "name": "Renamed",
        "description": "",
        "overlap": "3",
        "allow_tie": "on",
        "use_strength": "on",
        "criteria": "helpfulness, honesty",
        "reason_tags": "substance, length",
        "rationale": "required",
        "gold_rate": "0.1",
        "swap_recheck_rate": "0.05",
        "recheck_gap_items": "20",
        "recheck_gap_minutes": "0",
        "lease_seconds": "600",
        "undo_seconds": "120",
        "judge_kappa_min": "0.6",
        "rating_scale": "five",
        "rating_threshold": "3",
    }
    bad = client.post(f"/p/{project.slug}/settings/", {**form, "gold_rate": "1.5"})
    assert bad.status_code == 422 and "less than or equal to 1" in bad.content.decode()
    bad = client.post(f"/p/{project.slug}/settings/", {**form, "judge_kappa_min": "-2"})
    assert bad.status_code == 422 and "greater than or equal to -1" in bad.content.decode()
    bad = client.post(f"/p/{project.slug}/settings/", {**form, "rating_threshold": "6"})
    assert bad.status_code == 422 and "less than or equal to 5" in bad.content.decode()
    project.refresh_from_db()
    assert project.name == "Test project" and project.gold_rate == 0.0
    assert project.judge_kappa_min == 0.4
    assert client.post(f"/p/{project.slug}/settings/", form).status_code == 302
    project.refresh_from_db()
    assert (project.name, project.overlap, project.allow_both_bad) == ("Renamed", 3, False)
    assert project.criteria == ["helpfulness", "honesty"] and project.undo_seconds == 120
    assert project.judge_kappa_min == 0.6
    assert (project.rating_scale, project.rating_threshold) == ("five", 3)


def test_it_adds_members_and_names_an_unknown_user(
    project: Project, lead: User, make_user: Callable[..., User]
) -> None:
    client = client_make(lead)
    unknown = client.post(f"/p/{project.slug}/members/", {"username": "ghost", "role": "reviewer"})
    assert unknown.status_code == 422 and "There is no user called" in unknown.content.decode()
    make_user("newbie")
    added = client.post(
        f"/p/{project.slug}/members/", {"username": "newbie", "role": "reviewer", "quota": "50"}
    )
    assert added.status_code == 302
    membership = Membership.objects.get(user__username="newbie")
    assert (membership.role, membership.quota) == ("reviewer", 50)


def test_it_removes_a_member_but_never_the_lead_themselves(
    project: Project, lead: User, annotator: User
) -> None:
    client = client_make(lead)
    assert client.post(f"/p/{project.slug}/members/", {"remove": lead.pk}).status_code == 302
    assert Membership.objects.filter(user=lead, project=project).exists()
    assert client.post(f"/p/{project.slug}/members/", {"remove": annotator.pk}).status_code == 302
    assert not Membership.objects.filter(user=annotator, project=project).exists()
    # Out of the project, the annotator's pages are a 404 now.
    assert client_make(annotator).get(f"/p/{project.slug}/annotate/").status_code == 404


def test_it_lets_a_lead_make_a_gold_item_and_names_a_bad_answer(
    project: Project, lead: User
) -> None:
    comparison = comparison_make(project.prompts.filter(split="train").first())
    client = client_make(lead)
    bad = client.post(f"/p/{project.slug}/review/{comparison.pk}/gold/", {"gold_choice": "left"})
    assert bad.status_code == 422 and "Select a valid choice" in bad.content.decode()
    comparison.refresh_from_db()
    assert comparison.gold_choice == ""
    ok = client.post(f"/p/{project.slug}/review/{comparison.pk}/gold/", {"gold_choice": "b"})
    assert ok.status_code == 302
    comparison.refresh_from_db()
    assert comparison.gold_choice == "b"


def _stat_cards(html: str) -> dict[str, str]:
    """Each overview stat card's shown value, by its data-stat name, tags stripped."""
    found = re.findall(r'data-stat="([a-z]+)">(.*?)</span><span class="label">', html)
    return {name: re.sub(r"<[^>]+>", "", value).strip() for name, value in found}


def test_it_fills_every_overview_card_with_a_number_or_says_there_is_not_enough_data(
    project: Project, lead: User
) -> None:
    client = client_make(lead)
    empty = _stat_cards(client.get(f"/p/{project.slug}/").content.decode())
    for name in ("agreement", "left", "longer", "ties"):
        assert empty[name] == "not enough data", name
    project_settings_update(project=project, overlap=2)
    prompts = list(project.prompts.filter(split="train")[:3])
    voters = [member_make(project, f"v{i}") for i in range(2)]
    for index, prompt in enumerate(prompts):
        comparison = comparison_make(prompt, ("short", "a much longer answer"), seed=index)
        for voter, choice in zip(voters, ["a", "b"] if index == 0 else ["b", "b"], strict=True):
            judgment_submit(comparison_id=comparison.pk, annotator=voter, choice=choice)
    cards = _stat_cards(client.get(f"/p/{project.slug}/").content.decode())
    assert re.fullmatch(r"-?\d\.\d\d", cards["agreement"]), cards
    for name in ("left", "longer", "ties"):
        assert re.fullmatch(r"\d+%", cards[name]), (name, cards)
    assert cards["longer"] == "83%" and cards["ties"] == "0%"  # 5 of 6 votes chose "b"


def test_reviewers_browse_prompts_by_text_tag_split_language_round_and_status(
    project: Project, lead: User, annotator: User
) -> None:
    from annotate.services.prompts import PromptInput, prompts_create

    prompts_create(
        project=project,
        rows=[
            PromptInput(messages="Wie spät ist es in Berlin?", tags=["time", "de"]),
            PromptInput(messages="Name a river in Africa & Asia.", tags=["geo"], split="eval"),
        ],
    )
    judged = project.prompts.get(messages__0__content="Question number 0: what is 0 + 0?")
    comparison_make(judged, judged_by=annotator)
    open_one = project.prompts.get(messages__0__content="Question number 1: what is 1 + 1?")
    comparison_make(open_one, round_number=2, seed=1)
    reviewer = member_make(project, "rev", role=Role.REVIEWER)
    client = client_make(reviewer)

    def listed(**query: str) -> set[str]:
        answer = client.get(f"/p/{project.slug}/prompts/", query)
        assert answer.status_code == 200, answer.content[:500]
        return set(re.findall(r'data-prompt="(\d+)"', answer.content.decode()))

    every = listed()
    assert len(every) == project.prompts.count()
    german = project.prompts.get(tags=["time", "de"])
    river = project.prompts.get(tags=["geo"])
    assert listed(q="berlin") == {str(german.pk)}
    assert listed(q="africa & asia") == {str(river.pk)}  # as typed, though stored escaped
    assert listed(tag="geo") == {str(river.pk)}
    assert listed(split="eval") == {str(p.pk) for p in project.prompts.filter(split="eval")}
    assert listed(language="German") == {str(german.pk)}
    assert listed(round="2") == {str(open_one.pk)}
    assert listed(status="judged") == {str(judged.pk)}
    assert listed(status="open") == {str(open_one.pk)}
    assert len(listed(status="new")) == len(every) - 2
    bad = client.get(f"/p/{project.slug}/prompts/", {"round": "99"})
    assert bad.status_code == 422 and "Select a valid choice" in bad.content.decode()

    detail = client.get(f"/p/{project.slug}/prompts/{judged.pk}/").content.decode()
    assert "Question number 0" in detail and "Short answer." in detail
    assert f"{annotator.username}: A better" in detail
    assert client_make(annotator).get(f"/p/{project.slug}/prompts/").status_code == 404
    assert client.get(f"/p/{project.slug}/prompts/999999/").status_code == 404


def test_my_judgments_lists_skips_rationale_and_criteria_and_opens_each_item(
    project: Project, annotator: User
) -> None:
    from annotate.queue import assignment_next, comparison_skip

    project_settings_update(project=project, criteria=["honesty"], rationale="optional")
    first = comparison_make(
        project.prompts.get(messages__0__content__startswith="Question number 0")
    )
    second = comparison_make(
        project.prompts.get(messages__0__content__startswith="Question number 1"), seed=1
    )
    comparison_skip(comparison=second, annotator=annotator, reason="Outside my expertise")
    shown = assignment_next(project=project, annotator=annotator)
    assert shown is not None and shown.comparison == first
    judgment = judgment_submit(
        comparison_id=first.pk,
        annotator=annotator,
        side="right",
        criteria={"honesty": "left"},
        rationale="The right one is complete.",
    )
    client = client_make(annotator)
    page = client.get(f"/p/{project.slug}/mine/").content.decode()
    assert "Outside my expertise" in page and "The right one is complete." in page
    assert "honesty: " in page and f"/p/{project.slug}/mine/{judgment.pk}/" in page
    item = client.get(f"/p/{project.slug}/mine/{judgment.pk}/").content.decode()
    right_text = shown.right.text
    assert item.index(right_text) > item.index('data-side="right"')  # the sides as shown
    assert "Right is better" in item and "honesty: left" in item
    other = member_make(project, "other")
    assert client_make(other).get(f"/p/{project.slug}/mine/{judgment.pk}/").status_code == 404
