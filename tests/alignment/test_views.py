"""The lead's alignment pages, end to end through the client. The ML engine never runs here:
jobs are dispatched on commit, which does not fire inside the test transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from alignment.models import GenerationJob, ModelVersion, Round, TrainingRun
from alignment.services.model_versions import model_version_base_ensure, model_version_register
from alignment.services.rounds import round_start
from alignment.services.training import training_run_start
from alignment.services.training_settings import TrainingSettings
from annotate.models import DatasetSnapshot, PreferencePair, Project, Prompt
from annotate.services.judgments import judgment_submit
from core.jobs import job_claim, job_heartbeat, job_succeed
from tests.factories import RUN_FORM, comparison_make

pytestmark = pytest.mark.django_db

ROUND_FORM = {
    "pairing_strategy": "on_policy",
    "train_prompts": "4",
    "eval_prompts": "2",
    "samples_per_prompt": "2",
    "max_new_tokens": "64",
    "temperature": "0.9",
    "top_p": "0.95",
    "seed": "0",
}


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def base(project: Project) -> ModelVersion:
    return model_version_base_ensure(project=project)


@pytest.fixture
def child(project: Project, base: ModelVersion) -> ModelVersion:
    return model_version_register(
        project=project,
        parent=base,
        adapter_path="/artifacts/runs/1/adapter",
        adapter_sha256="ab" * 32,
    )


@pytest.fixture
def pair(project: Project, lead: User) -> PreferencePair:
    prompt = project.prompts.filter(split="train").first()
    assert prompt is not None
    comparison = comparison_make(prompt, round_number=1)
    judgment_submit(comparison_id=comparison.pk, annotator=lead, choice="a")
    return PreferencePair.objects.get(comparison=comparison)


@pytest.fixture
def round_(project: Project, base: ModelVersion, lead: User) -> Round:
    prompts = list(project.prompts.filter(split="train").order_by("id")[:3])
    return round_start(project=project, policy=base, train_prompts=prompts, created_by=lead)


@pytest.fixture
def run(project: Project, base: ModelVersion, pair: PreferencePair, lead: User) -> TrainingRun:
    return training_run_start(
        project=project, base_version=base, training=TrainingSettings(), created_by=lead
    )


def page_urls(project: Project, round_: Round, run: TrainingRun) -> list[str]:
    slug = project.slug
    return [
        reverse("round_list", args=[slug]),
        reverse("round_new", args=[slug]),
        reverse("round_detail", args=[slug, round_.number]),
        reverse("training_run_list", args=[slug]),
        reverse("training_run_new", args=[slug]),
        reverse("training_run_detail", args=[slug, run.pk]),
        reverse("training_run_metrics", args=[slug, run.pk]),
        reverse("model_version_list", args=[slug]),
    ]


# Access ---------------------------------------------------------------------------------------


def test_it_shows_every_page_to_the_lead(
    project: Project, round_: Round, run: TrainingRun, lead: User
) -> None:
    client = client_for(lead)
    for url in page_urls(project, round_, run):
        response = client.get(url)
        assert response.status_code == 200, url


def test_it_hides_every_page_from_an_annotator_of_the_project(
    project: Project, round_: Round, run: TrainingRun, annotator: User
) -> None:
    client = client_for(annotator)
    for url in page_urls(project, round_, run):
        assert client.get(url).status_code == 404, url


def test_it_hides_every_page_from_a_user_outside_the_project(
    project: Project, round_: Round, run: TrainingRun, outsider: User
) -> None:
    client = client_for(outsider)
    for url in page_urls(project, round_, run):
        assert client.get(url).status_code == 404, url


def test_it_redirects_anonymous_users_to_login(
    project: Project, round_: Round, run: TrainingRun
) -> None:
    client = client_for(None)
    login = reverse("login")
    for url in page_urls(project, round_, run):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(login), url


def test_it_refuses_posts_from_an_annotator(
    project: Project, base: ModelVersion, annotator: User
) -> None:
    response = client_for(annotator).post(
        reverse("round_new", args=[project.slug]), {**ROUND_FORM, "policy": base.pk}
    )
    assert response.status_code == 404
    assert not Round.objects.exists()


def test_it_returns_404_for_a_round_or_run_that_does_not_exist(
    project: Project, lead: User
) -> None:
    client = client_for(lead)
    assert client.get(reverse("round_detail", args=[project.slug, 99])).status_code == 404
    assert client.get(reverse("training_run_detail", args=[project.slug, 99])).status_code == 404
    assert client.get(reverse("training_run_metrics", args=[project.slug, 99])).status_code == 404


# Rounds -------------------------------------------------------------------------------------


def test_it_lists_rounds_with_their_jobs(project: Project, round_: Round, lead: User) -> None:
    response = client_for(lead).get(reverse("round_list", args=[project.slug]))
    content = response.content.decode()
    assert reverse("round_detail", args=[project.slug, round_.number]) in content
    assert "badge-queued" in content
    assert reverse("round_new", args=[project.slug]) in content


def test_it_prefills_the_round_form_with_the_newest_version(
    project: Project, base: ModelVersion, child: ModelVersion, lead: User
) -> None:
    response = client_for(lead).get(reverse("round_new", args=[project.slug]))
    form = response.context["form"]
    assert form["policy"].value() == child.pk
    assert form["train_prompts"].value() == 40
    assert form["eval_prompts"].value() == 20
    assert form["temperature"].value() == 0.9


def test_it_creates_the_base_version_for_a_fresh_project(project: Project, lead: User) -> None:
    response = client_for(lead).get(reverse("round_new", args=[project.slug]))
    assert response.status_code == 200
    assert ModelVersion.objects.filter(project=project, parent=None).count() == 1


def test_it_starts_an_on_policy_round(project: Project, base: ModelVersion, lead: User) -> None:
    response = client_for(lead).post(
        reverse("round_new", args=[project.slug]), {**ROUND_FORM, "policy": base.pk}
    )
    round_ = Round.objects.get(project=project)
    assert response.status_code == 302
    assert response["Location"] == reverse("round_detail", args=[project.slug, round_.number])
    jobs = list(GenerationJob.objects.filter(round=round_))
    assert len(jobs) == 1
    assert jobs[0].model_version == base
    assert jobs[0].progress_total == 4
    assert jobs[0].config["max_new_tokens"] == 64
    assert round_.prompts.count() == 4
    assert round_.created_by == lead


def test_it_starts_a_guided_round_and_refuses_guidance_with_an_odd_k(
    project: Project, base: ModelVersion, lead: User
) -> None:
    url = reverse("round_new", args=[project.slug])
    guidance = "Prefer the response that ends by asking a question."
    odd = client_for(lead).post(
        url, {**ROUND_FORM, "policy": base.pk, "samples_per_prompt": "3", "guidance": guidance}
    )
    assert odd.status_code == 422
    assert "even number of samples per prompt" in odd.content.decode()
    assert not Round.objects.exists()
    client_for(lead).post(url, {**ROUND_FORM, "policy": base.pk, "guidance": guidance})
    round_ = Round.objects.get(project=project)
    assert round_.guidance == guidance
    assert round_.generation_jobs.get().config["guidance"] == guidance
    page = client_for(lead).get(reverse("round_detail", args=[project.slug, 1]))
    assert guidance in page.content.decode()


def test_it_starts_a_head_to_head_round_on_held_out_prompts(
    project: Project, child: ModelVersion, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("round_new", args=[project.slug]),
        {**ROUND_FORM, "policy": child.pk, "pairing_strategy": "both", "eval_prompts": "2"},
    )
    assert response.status_code == 302
    round_ = Round.objects.get(project=project)
    jobs = GenerationJob.objects.filter(round=round_)
    assert sorted(jobs.values_list("purpose", flat=True)) == ["eval", "eval", "train"]
    held_out = list(Prompt.objects.filter(project=project, split="eval").order_by("id")[:2])
    eval_job = jobs.filter(purpose="eval", model_version=child).get()
    assert list(eval_job.prompts.order_by("id")) == held_out


def test_it_rejects_a_negative_temperature(
    project: Project, base: ModelVersion, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("round_new", args=[project.slug]),
        {**ROUND_FORM, "policy": base.pk, "temperature": "-1"},
    )
    assert response.status_code == 422
    assert "temperature must be between 0 and 5." in response.content.decode()
    assert not Round.objects.exists()
    assert not GenerationJob.objects.exists()


def test_it_rejects_head_to_head_on_the_base_version(
    project: Project, base: ModelVersion, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("round_new", args=[project.slug]),
        {**ROUND_FORM, "policy": base.pk, "pairing_strategy": "head_to_head"},
    )
    assert response.status_code == 422
    assert "Head-to-head needs a model version with a parent" in response.content.decode()
    assert not Round.objects.exists()


def test_it_rejects_a_version_of_another_project(
    project: Project, base: ModelVersion, lead: User, outsider: User
) -> None:
    from annotate.services.projects import project_create

    other = project_create(name="Other", slug="other", guidelines="Other.", created_by=outsider)
    foreign = model_version_base_ensure(project=other)
    response = client_for(lead).post(
        reverse("round_new", args=[project.slug]), {**ROUND_FORM, "policy": foreign.pk}
    )
    assert response.status_code == 422
    assert not Round.objects.exists()


def test_it_shows_round_settings_jobs_and_counts(
    project: Project, round_: Round, lead: User
) -> None:
    response = client_for(lead).get(reverse("round_detail", args=[project.slug, round_.number]))
    content = response.content.decode()
    assert response.status_code == 200
    assert "Round 1" in content
    assert 'hx-trigger="every 2s"' in content
    assert "<progress" in content
    assert response.context["detail"].comparisons.created == 0


def test_it_returns_only_the_jobs_fragment_to_htmx(
    project: Project, round_: Round, lead: User
) -> None:
    response = client_for(lead).get(
        reverse("round_detail", args=[project.slug, round_.number]), headers={"HX-Request": "true"}
    )
    content = response.content.decode()
    assert response.status_code == 200
    assert content.lstrip().startswith('<div id="round-jobs"')
    assert "<html" not in content
    assert "<nav" not in content
    assert "Settings" not in content


def test_it_stops_polling_when_every_job_is_done(
    project: Project, round_: Round, lead: User
) -> None:
    job = job_claim(GenerationJob, job_id=round_.generation_jobs.get().pk)
    assert job is not None
    job.metrics = [{"t": 1.0, "done": 3, "tokens": 300, "tokens_per_s": 42.5}]
    job.log_tail = "<script>alert('x')</script>\n"
    job.progress_done = 3
    job_succeed(job, summary={"responses": 6, "comparisons": 3, "tokens_per_s": 40.0})

    response = client_for(lead).get(
        reverse("round_detail", args=[project.slug, round_.number]), headers={"HX-Request": "true"}
    )
    content = response.content.decode()
    assert "hx-trigger" not in content
    assert "badge-succeeded" in content
    assert "40.0 tokens/s" in content
    assert "<script>alert" not in content
    assert "&lt;script&gt;alert" in content


def test_it_counts_comparisons_created_and_judged_for_the_round(
    project: Project, round_: Round, lead: User
) -> None:
    prompts = list(project.prompts.filter(split="train").order_by("id")[:2])
    judged = comparison_make(prompts[0], round_number=round_.number)
    comparison_make(prompts[1], round_number=round_.number)
    comparison_make(prompts[1], round_number=round_.number + 5, seed=1)
    judgment_submit(comparison_id=judged.pk, annotator=lead, choice="b")

    response = client_for(lead).get(reverse("round_detail", args=[project.slug, round_.number]))
    counts = response.context["detail"].comparisons
    assert (counts.created, counts.judged, counts.judgments) == (2, 1, 1)


# Training runs ------------------------------------------------------------------------------


def test_it_shows_how_many_pairs_are_available(
    project: Project, base: ModelVersion, pair: PreferencePair, lead: User
) -> None:
    response = client_for(lead).get(reverse("training_run_new", args=[project.slug]))
    assert response.context["pairs_available"] == 1
    assert response.context["form"]["beta"].value() == TrainingSettings().beta


def test_it_starts_a_training_run(
    project: Project, child: ModelVersion, pair: PreferencePair, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("training_run_new", args=[project.slug]),
        {**RUN_FORM, "base_version": child.pk, "rounds": "1", "loss_type": "ipo"},
    )
    run = TrainingRun.objects.get(project=project)
    assert response.status_code == 302
    assert response["Location"] == reverse("training_run_detail", args=[project.slug, run.pk])
    assert run.base_version == child
    assert run.config["loss_type"] == "ipo"
    assert run.config["epochs"] == 1
    assert run.snapshot.pair_ids == [pair.pk]
    assert run.snapshot.filters["rounds"] == [1]
    assert run.created_by == lead


def test_it_refuses_a_run_without_preference_pairs(
    project: Project, base: ModelVersion, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("training_run_new", args=[project.slug]), {**RUN_FORM, "base_version": base.pk}
    )
    assert response.status_code == 422
    assert "No preference pairs" in response.content.decode()
    assert not TrainingRun.objects.exists()
    assert not DatasetSnapshot.objects.exists()


def test_it_refuses_a_second_run_while_one_is_queued(
    project: Project, base: ModelVersion, run: TrainingRun, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("training_run_new", args=[project.slug]), {**RUN_FORM, "base_version": base.pk}
    )
    assert response.status_code == 422
    assert "already has a training run queued or running" in response.content.decode()
    assert TrainingRun.objects.count() == 1


def test_it_rejects_bad_hyperparameters_with_the_service_message(
    project: Project, base: ModelVersion, pair: PreferencePair, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("training_run_new", args=[project.slug]),
        {**RUN_FORM, "base_version": base.pk, "beta": "0"},
    )
    assert response.status_code == 422
    assert "beta must be above 0 and at most 10." in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_it_rejects_rounds_that_are_not_numbers(
    project: Project, base: ModelVersion, pair: PreferencePair, lead: User
) -> None:
    response = client_for(lead).post(
        reverse("training_run_new", args=[project.slug]),
        {**RUN_FORM, "base_version": base.pk, "rounds": "1, two"},
    )
    assert response.status_code == 422
    assert "comma-separated round numbers" in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_it_lists_training_runs(project: Project, run: TrainingRun, lead: User) -> None:
    response = client_for(lead).get(reverse("training_run_list", args=[project.slug]))
    content = response.content.decode()
    assert reverse("training_run_detail", args=[project.slug, run.pk]) in content
    assert "badge-queued" in content
    assert "v0 (base) →" in content


def _run_with_points(run: TrainingRun, points: list[dict[str, Any]]) -> TrainingRun:
    claimed = job_claim(TrainingRun, job_id=run.pk)
    assert claimed is not None
    job_heartbeat(
        claimed,
        fields={
            "metrics": points,
            "progress_done": len(points),
            "progress_total": 4,
            "log_tail": "step 2/4 <b>loss</b>\n",
        },
    )
    return claimed


POINTS = [
    {
        "step": 1,
        "epoch": 0.5,
        "loss": 0.69,
        "reward_accuracy": 0.5,
        "reward_margin": 0.01,
        "chosen_reward": 0.0,
        "rejected_reward": 0.0,
        "t": 1.0,
    },
    {
        "step": 2,
        "epoch": 1.0,
        "loss": 0.61,
        "reward_accuracy": 0.75,
        "reward_margin": 0.2,
        "chosen_reward": 0.1,
        "rejected_reward": -0.1,
        "t": 2.0,
    },
]


def test_it_returns_the_metric_points_as_json(
    project: Project, run: TrainingRun, lead: User
) -> None:
    _run_with_points(run, POINTS)
    response = client_for(lead).get(reverse("training_run_metrics", args=[project.slug, run.pk]))
    data = response.json()
    assert data["status"] == "running"
    assert [point["step"] for point in data["points"]] == [1, 2]
    assert data["points"][1]["loss"] == 0.61
    assert data["points"][1]["reward_accuracy"] == 0.75


def test_it_shows_run_details_with_a_chart(project: Project, run: TrainingRun, lead: User) -> None:
    _run_with_points(run, POINTS)
    response = client_for(lead).get(reverse("training_run_detail", args=[project.slug, run.pk]))
    content = response.content.decode()
    metrics_url = reverse("training_run_metrics", args=[project.slug, run.pk])
    assert f'data-metrics-url="{metrics_url}"' in content
    assert "js/run-chart.js" in content
    assert "vendor/chart.umd.min.js" in content
    assert run.snapshot.content_hash[:12] in content
    assert 'hx-trigger="every 2s"' in content
    assert "0.6100" in content
    assert "&lt;b&gt;loss&lt;/b&gt;" in content


def test_it_returns_only_the_progress_fragment_to_htmx(
    project: Project, run: TrainingRun, lead: User
) -> None:
    _run_with_points(run, POINTS)
    response = client_for(lead).get(
        reverse("training_run_detail", args=[project.slug, run.pk]), headers={"HX-Request": "true"}
    )
    content = response.content.decode()
    assert content.lstrip().startswith('<section class="card" id="run-progress"')
    assert "<nav" not in content
    assert "data-metrics-url" not in content
    assert "2 / 4" in content


def test_it_stops_polling_a_finished_run(project: Project, run: TrainingRun, lead: User) -> None:
    claimed = _run_with_points(run, POINTS)
    job_succeed(claimed, summary={"steps": 2, "train_loss": 0.65})
    response = client_for(lead).get(
        reverse("training_run_detail", args=[project.slug, run.pk]), headers={"HX-Request": "true"}
    )
    assert "hx-trigger" not in response.content.decode()
    assert "badge-succeeded" in response.content.decode()


# Model versions -----------------------------------------------------------------------------


def test_it_shows_lineage_and_the_producing_run(
    project: Project, base: ModelVersion, run: TrainingRun, lead: User
) -> None:
    v1 = model_version_register(
        project=project, parent=base, adapter_path="/a/1", adapter_sha256="cd" * 32
    )
    run.output_version = v1
    run.save(update_fields=["output_version"])
    v2 = model_version_register(
        project=project, parent=v1, adapter_path="/a/2", adapter_sha256="ef" * 32
    )
    response = client_for(lead).get(reverse("model_version_list", args=[project.slug]))
    content = response.content.decode()
    assert f"{v2.name} ← {v1.name} ← v0 (base)" in content
    assert reverse("training_run_detail", args=[project.slug, run.pk]) in content
    assert "cdcdcdcdcdcd" in content
    tree = response.context["tree"]
    assert [(node.version.name, node.depth) for node in tree.nodes] == [
        ("v0 (base)", 0),
        (v1.name, 1),
        (v2.name, 2),
    ]


def test_it_nests_children_under_their_parents(
    project: Project, base: ModelVersion, child: ModelVersion, lead: User
) -> None:
    sibling = model_version_register(
        project=project, parent=base, adapter_path="/a/s", adapter_sha256="12" * 32
    )
    response = client_for(lead).get(reverse("model_version_list", args=[project.slug]))
    content = response.content.decode()
    tree_html = content[
        content.index('class="model-tree"') : content.index(
            "</section>", content.index('class="model-tree"')
        )
    ]
    # Both children sit in a list nested inside the base's item.
    assert tree_html.count("<ul>") == 1
    assert (
        tree_html.index("v0 (base)") < tree_html.index(child.name) < tree_html.index(sibling.name)
    )


def test_it_does_not_choose_the_prompts_of_a_round_still_generating(
    project: Project, base: ModelVersion, lead: User
) -> None:
    # The project fixture has 6 training prompts; each round takes 3 of them, before any
    # response exists. Both ways of choosing count a prompt a round took as used.
    from annotate.coverage import coverage_refresh
    from tests.factories import embed_bag_of_words

    coverage_refresh(project=project, embed=embed_bag_of_words)  # clusters for "coverage"
    form = {**ROUND_FORM, "policy": base.pk, "train_prompts": "3", "eval_prompts": "0"}
    for choice in ("coverage", "least_used"):
        Round.objects.filter(project=project).delete()
        first, second = (
            client_for(lead).post(
                reverse("round_new", args=[project.slug]), {**form, "prompt_choice": choice}
            )
            for _ in range(2)
        )
        assert first.status_code == second.status_code == 302
        one, two = (
            set(r.prompts.values_list("id", flat=True)) for r in Round.objects.order_by("number")
        )
        assert len(one) == len(two) == 3 and not one & two, choice


def test_it_starts_the_form_from_a_preset_and_checks_each_method(
    project: Project, base: ModelVersion, lead: User
) -> None:
    url = reverse("training_run_new", args=[project.slug])
    page = client_for(lead).get(url, {"preset": "simpo"})
    form = page.context["form"]
    assert (form["method"].initial, form["beta"].initial, form["simpo_gamma"].initial) == (
        "simpo",
        2.0,
        0.5,
    )
    assert b'href="?preset=kto"' in page.content
    # The packaged model's estimate for the preset's settings (SimPO, 2 pairs a pass).
    assert b"data-memory-estimate" in page.content and b"SIMPO at batch size 2" in page.content
    refused = client_for(lead).post(
        url, {**RUN_FORM, "base_version": base.pk, "method": "kto", "batch_size": "1"}
    )
    assert refused.status_code == 422
    assert b"batch_size must be at least 2 for KTO" in refused.content
    assert not TrainingRun.objects.exists()


def test_a_new_project_has_its_base_version_before_any_page_is_seen(lead: User) -> None:
    from annotate.services.projects import project_create

    project = project_create(name="Fresh", slug="fresh", guidelines="Be kind.", created_by=lead)
    (version,) = ModelVersion.objects.filter(project=project)
    assert version.is_base and version.parent is None and version.name == "v0 (base)"
    client_for(lead).get(reverse("round_new", args=[project.slug]))
    client_for(lead).get(reverse("training_run_new", args=[project.slug]))
    assert ModelVersion.objects.filter(project=project).count() == 1  # the pages wrote nothing
