"""Before training, the lead reviews a round (coverage, agreement, bias, what changed since
the last snapshot) and signs it off; the next run on that round's policy records it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from alignment.models import RoundSignOff, TrainingRun
from alignment.selectors.review import snapshot_changes
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import round_start
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from annotate.models import Comparison, Project
from annotate.services.comparisons import comparison_send_back
from annotate.services.judgments import judgment_submit
from tests.factories import client_make, comparison_make, member_make, training_run_make

pytestmark = pytest.mark.django_db


def test_the_lead_reviews_a_round_and_signs_it_off(
    project: Project, annotator: User, lead: User
) -> None:
    base = model_version_base_ensure(project=project)
    prompts = list(project.prompts.filter(split="train").order_by("id")[:6])
    round_ = round_start(project=project, policy=base, train_prompts=prompts, dispatch=False)
    comparisons = [
        comparison_make(p, round_number=round_.number, seed=i) for i, p in enumerate(prompts)
    ]
    for comparison in comparisons[:4]:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    client = client_make(lead)
    url = f"/p/{project.slug}/rounds/{round_.number}/review/"
    page = client.get(url).content.decode()
    assert "4 / 6" in page  # complete of created (overlap 1)
    assert "No snapshot yet: a cumulative run would take all 4 preference pairs." in page
    assert "Not signed off yet." in page

    first = training_run_make(project, base_version=base)
    assert first.sign_off is None  # not signed off when it started
    TrainingRun.objects.filter(pk=first.pk).update(status="succeeded")

    # Since that snapshot: two more pairs, one sent back, one re-judged the other way.
    for comparison in comparisons[4:]:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    comparison_send_back(comparison=comparisons[0], reviewer=lead)
    comparison_send_back(comparison=comparisons[1], reviewer=lead)
    other = member_make(project, "other")
    judgment_submit(comparison_id=comparisons[1].pk, annotator=other, choice="b")
    changes = snapshot_changes(project=project)
    assert (changes.last, changes.added, changes.removed, changes.flipped) == (
        first.snapshot,
        2,
        1,
        1,
    )
    assert changes.added_by_round == [(round_.number, 2)]
    page = client.get(url).content.decode()
    assert "data-added>2<" in page and "data-removed>1<" in page and "data-flipped>1<" in page

    answer = client.post(url, {"note": "Agreement fine; two labels re-judged."}, follow=True)
    assert f"Round {round_.number} signed off" in answer.content.decode()
    sign_off = RoundSignOff.objects.get()
    assert sign_off.signed_off_by == lead and sign_off.figures["added_since_snapshot"] == 2
    assert sign_off.figures["complete"] == 5  # comparisons[0] is open again
    run = training_run_start(
        project=project, base_version=base, training=TrainingSettings(), dispatch=False
    )
    assert run.sign_off == sign_off
    shown = client.get(f"/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert f"Round {round_.number} signed off by lead" in shown
    assert client.post(url, {"note": "x" * 4001}, follow=True).status_code == 200
    assert RoundSignOff.objects.count() == 1  # the too-long note was refused
    assert Comparison.objects.filter(project=project).count() == 6
