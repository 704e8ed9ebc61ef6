"""After training, the lead sees the pairs the new model ranks against their human label, and
can send them back for fresh judgments."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from annotate.models import Comparison, ComparisonStatus, PreferencePair, Project
from annotate.services.judgments import judgment_submit
from tests.factories import client_make, comparison_make, training_run_make

pytestmark = pytest.mark.django_db


def test_the_lead_sends_the_contradicted_pairs_back(
    tiny_project: Project, annotator: User, lead: User
) -> None:
    prompts = list(tiny_project.prompts.filter(split="train").order_by("id")[:8])
    comparisons = [
        comparison_make(p, texts=(f"Fine, {i}.", f"Number {i} goes on and on at great length."))
        for i, p in enumerate(prompts)
    ]
    flipped = {comparisons[2].pk, comparisons[5].pk}  # the long answer chosen, against the rest
    for comparison in comparisons:
        choice = "b" if comparison.pk in flipped else "a"
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choice)
    run = training_run_make(
        tiny_project, execute=True, epochs=4, batch_size=2, learning_rate=1e-2, max_length=96
    )
    listed = run.summary["contradictions"]
    assert {c["comparison"] for c in listed} == flipped
    assert all(c["margin"] < 0 for c in listed)
    assert f"2 of {len(run.snapshot.pair_ids)} training pairs contradicted" in run.log_tail

    client = client_make(lead)
    url = f"/p/{tiny_project.slug}/runs/{run.pk}/"
    page = client.get(url).content.decode()
    assert page.count("<tr data-comparison=") == 2
    assert "goes on and on" in page  # what the run was trained on, as chosen

    send_back = f"{url}contradictions/send-back/"
    refused = client.post(send_back, {"comparison": [comparisons[0].pk]}, follow=True)
    assert "is not among this run" in refused.content.decode()
    assert PreferencePair.objects.filter(comparison=comparisons[0]).exists()

    target = comparisons[2].pk
    answer = client.post(send_back, {"comparison": [target]}, follow=True)
    assert "Sent 1 pair back for fresh judgments." in answer.content.decode()
    reopened = Comparison.objects.get(pk=target)
    assert reopened.status == ComparisonStatus.OPEN and reopened.sent_back_count == 1
    assert not PreferencePair.objects.filter(comparison_id=target).exists()
    assert PreferencePair.objects.filter(comparison_id=comparisons[5].pk).exists()
    assert "sent back</span>" in client.get(url).content.decode()
