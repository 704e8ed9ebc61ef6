"""Coverage statistics: computed by the service a worker runs, read by the page."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from annotate.coverage import coverage_is_stale, coverage_refresh, prompt_embeddings_ensure
from annotate.models import CoverageStats, Project, Prompt
from annotate.services.prompts import PromptInput, prompts_create
from annotate.services.snapshots import SnapshotFilters, snapshot_create
from tests.factories import client_make, comparison_make, project_make
from tests.factories import embed_bag_of_words as bag_of_words

pytestmark = pytest.mark.django_db

TOPICS = {
    "code": "python function bug error code debug loop variable",
    "bread": "bread bake oven flour yeast dough recipe crust",
    "garden": "garden plant soil water seed flower grow leaf",
}


def _topic_project(lead: User, annotator: User) -> Project:
    rows = []
    for topic, vocabulary in TOPICS.items():
        vocab = vocabulary.split()
        for i in range(12):
            chosen = [vocab[(i + j) % len(vocab)] for j in range(5)]
            rows.append(
                PromptInput(messages=f"Question {i} about " + " ".join(chosen), tags=[topic])
            )
    rows.append(PromptInput(messages="QUESTION 0 about python function bug error code"))
    return project_make(
        "topics", guidelines="Judge.", created_by=lead, annotators=[annotator], prompts=rows
    )


def test_it_computes_clusters_duplicates_and_coverage(lead: User, annotator: User) -> None:
    project = _topic_project(lead, annotator)
    code_prompts = [p for p in project.prompts.order_by("id") if "code" in p.tags][:4]
    for i, prompt in enumerate(code_prompts):
        comparison_make(
            prompt,
            (f"Fix {i}.", f"A longer fix, number {i}."),
            seed=i,
            judged_by=annotator,
            choice="b",
        )
    assert coverage_is_stale(project=project)
    stored = coverage_refresh(project=project, embed=bag_of_words)
    assert [s.scope for s in stored] == ["project", "round:1"]
    data = stored[0].data
    assert data["prompts"] == 37 and data["k"] == 3
    assert sorted(c["size"] for c in data["clusters"]) == [12, 12, 13]
    assert data["exact_duplicates"] == {
        "groups": 1,
        "extra": 1,
        "examples": [{"text": "Question 0 about python function bug error code", "count": 2}],
    }
    # The exact duplicate is no near-duplicate too: the count and the list agree.
    near = data["near_duplicates"]
    assert near["pairs"] == len(near["examples"]), near
    assert isinstance(data["weak_clustering"], bool)
    assert data["weak_clustering"] == (data["silhouette"] <= 0.25)
    # The code cluster holds every judged pair; the other two are flagged.
    flagged = {tuple(sorted(c["terms"][:3])): c["under_covered"] for c in data["clusters"]}
    assert sorted(flagged.values()) == [False, True, True]
    code = next(c for c in data["clusters"] if not c["under_covered"])
    assert code["pairs"] == 4 and code["pair_share"] == 1.0
    assert set(code["terms"]) & set(TOPICS["code"].split())
    assert data["evenness"] > 0.99 and 2.0 < data["vendi"] < 37
    assert data["languages"] == [["English", 37]]
    assert sorted(data["tags"]) == [["bread", 12], ["code", 12], ["garden", 12]]
    assert data["untagged"] == 1
    assert data["pairs"]["by_kind"] == [["preference", 4], ["tie", 0], ["both_bad", 0]]
    assert data["pairs"]["length_difference"]["longer_chosen_share"] == 1.0
    assert len(data["map"]["x"]) == 37
    # Embeddings are computed once and stored; clusters are stored on the prompts.
    assert Prompt.objects.filter(project=project, embedding__isnull=True).count() == 0
    assert prompt_embeddings_ensure(project=project, embed=bag_of_words) == 0
    assert Prompt.objects.filter(project=project, cluster__isnull=True).count() == 0
    assert not coverage_is_stale(project=project)
    round_only = stored[1].data
    assert round_only["prompts"] == 4 and round_only["pairs"]["total"] == 4


def test_snapshots_get_their_own_scope_and_changes_make_it_stale(
    lead: User, annotator: User
) -> None:
    project = _topic_project(lead, annotator)
    prompt = project.prompts.first()
    assert prompt is not None
    comparison_make(prompt, ("One.", "Two, longer."), seed=1, judged_by=annotator)
    snapshot = snapshot_create(project=project, filters=SnapshotFilters())
    coverage_refresh(project=project, embed=bag_of_words)
    scope = CoverageStats.objects.get(project=project, scope=f"snapshot:{snapshot.pk}")
    assert scope.data["prompts"] == 1 and scope.data["pairs"]["total"] == 1
    prompts_create(project=project, rows=[PromptInput(messages="A new garden question?")])
    assert coverage_is_stale(project=project)


def test_the_page_shows_the_stored_figures_to_reviewers(
    lead: User, annotator: User, make_user
) -> None:
    project = _topic_project(lead, annotator)
    client = client_make(lead)
    empty = client.get(f"/p/{project.slug}/coverage/")
    assert empty.status_code == 200 and b"data-coverage-empty" in empty.content
    assert b"data-coverage-stale" in empty.content
    coverage_refresh(project=project, embed=bag_of_words)
    page = client.get(f"/p/{project.slug}/coverage/")
    assert b'data-stat="prompts">37<' in page.content
    assert b"data-coverage-stale" not in page.content
    assert page.content.count(b"data-under-covered") == 3  # no pairs at all yet
    assert b'id="coverage-data"' in page.content
    assert client.get(f"/p/{project.slug}/coverage/", {"scope": "round:9"}).status_code == 404


def test_the_packaged_embedder_groups_prompts_by_meaning(lead: User, annotator: User) -> None:
    from annotate.diversity import clusters_fit, embedder_default, vendi_score

    embed = embedder_default()
    code = [
        "How do I reverse a list in Python?",
        "Why does my JavaScript loop never end?",
        "What is a segmentation fault in C?",
        "Explain recursion with a code example.",
        "How do I fix a null pointer exception in Java?",
        "What does git rebase do to my commits?",
    ]
    cooking = [
        "How long should I knead bread dough?",
        "What temperature do I bake sourdough at?",
        "Why did my cake sink in the middle?",
        "How do I make a fluffy omelette?",
        "How much salt goes into pasta water?",
        "Can I freeze homemade tomato sauce?",
    ]
    vectors = embed(code + cooking)
    assert vectors.shape == (12, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    labels = clusters_fit(vectors).labels.tolist()
    code_label = max(set(labels[:6]), key=labels[:6].count)
    cooking_label = max(set(labels[6:]), key=labels[6:].count)
    assert code_label != cooking_label
    assert labels[:6].count(code_label) >= 5 and labels[6:].count(cooking_label) >= 5
    assert 1.5 < (vendi_score(vectors) or 0) < 12


def test_coverage_aware_choice_fills_the_under_covered_clusters(
    lead: User, annotator: User
) -> None:
    from annotate.coverage import prompts_for_coverage

    project = _topic_project(lead, annotator)
    prompts_create(
        project=project,
        rows=[PromptInput(messages="Held-out bread flour oven question", split="eval")],
    )
    code_prompts = [p for p in project.prompts.order_by("id") if "code" in p.tags][:6]
    for i, prompt in enumerate(code_prompts):
        comparison_make(prompt, (f"Fix {i}.", f"Another fix {i}."), seed=i, judged_by=annotator)
    # Before any statistics: the least used prompts.
    fallback = prompts_for_coverage(project=project, count=3)
    assert all(p.split == "train" for p in fallback) and not set(fallback) & set(code_prompts)
    coverage_refresh(project=project, embed=bag_of_words)
    chosen = prompts_for_coverage(project=project, count=8)
    topics = [p.tags[0] if p.tags else "none" for p in chosen]
    # Code already has every pair: the picks go to bread and garden, evenly, never held out.
    assert topics.count("bread") == 4 and topics.count("garden") == 4
    assert all(p.split == "train" for p in chosen)
    assert prompts_for_coverage(project=project, count=0) == []


def test_it_computes_the_statistics_from_the_command_line(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaged embedder is the slow test's; here the bag-of-words stand-in embeds.
    monkeypatch.setattr("annotate.coverage.diversity.embedder_default", lambda: bag_of_words)
    out, err = io.StringIO(), io.StringIO()
    call_command("coverage_stats", project.slug, stdout=out, stderr=err)
    stats = CoverageStats.objects.get(project=project, scope="project")
    assert f"project: {stats.data['prompts']} prompts, {stats.data['k']} clusters" in out.getvalue()
    assert "embedded" in err.getvalue()
    with pytest.raises(CommandError, match="no project"):
        call_command("coverage_stats", "nope", stdout=out, stderr=err)


def test_a_stale_page_asks_for_a_refresh_by_post_never_by_get(
    lead: User, annotator: User, django_capture_on_commit_callbacks: Any
) -> None:
    project = _topic_project(lead, annotator)
    client = client_make(lead)
    with django_capture_on_commit_callbacks() as sent:
        page = client.get(f"/p/{project.slug}/coverage/")
    assert page.status_code == 200 and b"data-coverage-stale" in page.content
    assert sent == []  # a GET sends no work to a worker
    # The page asks itself, once loaded, with an htmx POST.
    assert f'hx-post="/p/{project.slug}/coverage/"'.encode() in page.content
    assert b'hx-trigger="load"' in page.content
    with django_capture_on_commit_callbacks() as sent:
        asked = client.post(
            f"/p/{project.slug}/coverage/", {"refresh": "1"}, headers={"HX-Request": "true"}
        )
    assert asked.status_code == 204 and len(sent) == 1
