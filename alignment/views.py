"""The lead's pages of the machine side: rounds, generation jobs, training runs, model versions,
model judges.

Every view gates on `access_project(..., min_role=Role.LEAD)`: outside that, a 404.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from alignment import lineage
from alignment.engine.spec import TRAINING_PRESETS
from alignment.forms import JudgeAddForm, JudgeRunForm, RoundStartForm, TrainingRunStartForm
from alignment.models import JudgeMode, PairSelection
from alignment.selectors.judges import access_judge, judges_for_project
from alignment.selectors.leaderboard import leaderboard_get, round_head_to_head
from alignment.selectors.review import round_review_get
from alignment.selectors.rounds import round_detail_get, round_drift, round_list_for_project
from alignment.selectors.runs import (
    access_training_run,
    preference_pairs_available_count,
    training_run_contradictions,
    training_run_list_for_project,
    training_run_points,
    training_run_progress,
)
from alignment.selectors.versions import model_version_tree, model_versions_for_project
from alignment.services.judges import judge_add, judge_run_start
from alignment.services.rounds import round_next_start, round_sign_off
from alignment.services.training import (
    contradictions_send_back,
    training_plan_effective,
    training_run_cancel,
    training_run_memory_estimate,
    training_run_start,
)
from alignment.services.training_settings import TrainingSettings
from annotate.access import access_comparison, access_project
from annotate.models import Project, Role
from annotate.services.snapshots import SnapshotFilters
from annotate.views.pages import page_context
from core.errors import ValidationFailed
from core.http import AuthedRequest


def _lead_project(request: AuthedRequest, slug: str) -> Project:
    return access_project(user=request.user, slug=slug, min_role=Role.LEAD)


# Rounds -------------------------------------------------------------------------------------


@login_required
@require_GET
def round_list(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    rows = round_list_for_project(project=project)
    drift = round_drift(project=project)
    return render(
        request, "alignment/round_list.html", page_context(request, project, rows=rows, drift=drift)
    )


@login_required
@require_http_methods(["GET", "POST"])
def round_new(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    versions = model_versions_for_project(project=project)
    if request.method != "POST":
        form = RoundStartForm(versions=versions)
        return render(
            request, "alignment/round_new.html", page_context(request, project, form=form)
        )

    form = RoundStartForm(request.POST, versions=versions)
    if form.is_valid():
        data = form.cleaned_data
        try:
            round_ = round_next_start(
                project=project,
                policy=data["policy"],
                train_count=data["train_prompts"],
                eval_count=data["eval_prompts"],
                samples_per_prompt=data["samples_per_prompt"],
                sampling=form.sampling(),
                strategy=data["pairing_strategy"],
                pair_selection=data["pair_selection"] or PairSelection.ADJACENT,
                created_by=request.user,
                prompt_choice=data["prompt_choice"] or "least_used",
                guidance=data["guidance"],
            )
        except ValidationFailed as error:
            form.add_error(None, str(error))
        else:
            return redirect("round_detail", slug=project.slug, number=round_.number)
    return render(
        request, "alignment/round_new.html", page_context(request, project, form=form), status=422
    )


@login_required
@require_GET
@vary_on_headers("HX-Request")
def round_detail(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    project = _lead_project(request, slug)
    detail = round_detail_get(project=project, number=number)
    if detail is None:
        raise Http404("No such round.")
    template = "alignment/round_detail.html"
    if request.htmx:
        template += "#jobs"
    head_to_head = round_head_to_head(project=project, number=number)
    return render(
        request, template, page_context(request, project, detail=detail, head_to_head=head_to_head)
    )


@login_required
@require_http_methods(["GET", "POST"])
def round_review(request: AuthedRequest, slug: str, number: int) -> HttpResponse:
    """Before training: the round's coverage, agreement, bias and what changed since the last
    snapshot; POST signs the round off."""
    project = _lead_project(request, slug)
    review = round_review_get(project=project, number=number)
    if review is None:
        raise Http404("No such round.")
    if request.method == "POST":
        try:
            round_sign_off(
                round_=review.round,
                figures=review.headline(),
                signed_off_by=request.user,
                note=request.POST.get("note", ""),
            )
        except ValidationFailed as error:
            messages.error(request, str(error))
        else:
            messages.success(
                request,
                f"Round {number} signed off; the next run on {review.round.policy.name}'s data "
                "records it.",
            )
        return redirect("round_review", slug=project.slug, number=number)
    return render(
        request, "alignment/round_review.html", page_context(request, project, review=review)
    )


# Lineage ------------------------------------------------------------------------------------


@login_required
@require_GET
def lineage_comparison(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    steps = lineage.lineage_of_comparison(project=project, comparison=comparison)
    return _lineage_page(request, project, f"Comparison {comparison.pk}", steps)


@login_required
@require_GET
def lineage_run(request: AuthedRequest, slug: str, run_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    run = access_training_run(project=project, run_id=run_id)
    return _lineage_page(
        request,
        project,
        f"Training run #{run.pk}",
        lineage.lineage_of_run(project=project, run=run),
    )


@login_required
@require_GET
def lineage_version(request: AuthedRequest, slug: str, version_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    version = model_versions_for_project(project=project).filter(pk=version_id).first()
    if version is None:
        raise Http404("No such model version.")
    steps = lineage.lineage_of_version(project=project, version=version)
    return _lineage_page(request, project, f"Model version {version.name}", steps)


def _lineage_page(
    request: AuthedRequest, project: Project, subject: str, steps: list[lineage.Step]
) -> HttpResponse:
    return render(
        request,
        "alignment/lineage.html",
        page_context(request, project, subject=subject, steps=steps),
    )


# Training runs ------------------------------------------------------------------------------


@login_required
@require_GET
def training_run_list(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    rows = training_run_list_for_project(project=project)
    return render(
        request, "alignment/training_run_list.html", page_context(request, project, rows=rows)
    )


@login_required
@require_http_methods(["GET", "POST"])
def training_run_new(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    versions = model_versions_for_project(project=project)
    status = 200
    if request.method != "POST":
        form = TrainingRunStartForm(versions=versions, preset=request.GET.get("preset"))
    else:
        form = TrainingRunStartForm(request.POST, versions=versions)
        status = 422
        if form.is_valid():
            data = form.cleaned_data
            try:
                run = training_run_start(
                    project=project,
                    base_version=data["base_version"],
                    training=TrainingSettings.from_mapping(form.settings_mapping()),
                    plan=form.plan(),
                    filters=SnapshotFilters(min_agreement=data["min_agreement"]),
                    created_by=request.user,
                )
            except ValidationFailed as error:
                form.add_error(None, str(error))
            else:
                return redirect("training_run_detail", slug=project.slug, run_id=run.pk)
    pairs_available = preference_pairs_available_count(project=project)
    try:
        shown = (
            TrainingSettings.from_mapping(form.settings_mapping())
            if form.is_bound and form.is_valid()
            else TrainingSettings.from_preset(request.GET.get("preset", "dpo"))
            if request.GET.get("preset") in TRAINING_PRESETS
            else TrainingSettings()
        )
    except ValidationFailed:
        shown = TrainingSettings()
    memory = training_run_memory_estimate(project=project, training=shown)
    return render(
        request,
        "alignment/training_run_new.html",
        page_context(
            request,
            project,
            form=form,
            pairs_available=pairs_available,
            memory=memory,
            memory_settings=shown,
            presets=[(name, label) for name, (label, _) in TRAINING_PRESETS.items()],
        ),
        status=status,
    )


@login_required
@require_GET
@vary_on_headers("HX-Request")
def training_run_detail(request: AuthedRequest, slug: str, run_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    run = access_training_run(project=project, run_id=run_id)
    progress = training_run_progress(run=run)
    template = "alignment/training_run_detail.html"
    if request.htmx:
        template += "#progress"
    contradictions = training_run_contradictions(run=run)
    return render(
        request,
        template,
        page_context(
            request,
            project,
            run=run,
            progress=progress,
            contradictions=contradictions,
            plan=training_plan_effective(run),
        ),
    )


@login_required
@require_POST
def training_run_contradictions_send_back(
    request: AuthedRequest, slug: str, run_id: int
) -> HttpResponse:
    """Send the contradicted pairs the lead ticked back for fresh judgments."""
    project = _lead_project(request, slug)
    run = access_training_run(project=project, run_id=run_id)
    chosen = request.POST.getlist("comparison")
    if not chosen or not all(value.isdigit() and len(value) <= 9 for value in chosen):
        messages.error(request, "Tick the pairs to send back first.")
    else:
        try:
            sent, problems = contradictions_send_back(
                run=run, comparison_ids=[int(v) for v in chosen], reviewer=request.user
            )
        except ValidationFailed as error:
            messages.error(request, str(error))
        else:
            messages.success(
                request,
                f"Sent {sent} pair{'s' if sent != 1 else ''} back for fresh judgments.",
            )
            for problem in problems:
                messages.error(request, problem)
    return redirect(reverse("training_run_detail", args=[project.slug, run.pk]) + "#contradictions")


@login_required
@require_POST
def training_run_cancel_view(request: AuthedRequest, slug: str, run_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    run = access_training_run(project=project, run_id=run_id)
    if training_run_cancel(run=run):
        messages.info(
            request,
            "Cancelled: a queued run will not start; a running one stops after its current "
            "step and keeps its adapter.",
        )
    else:
        messages.info(request, "This run had already finished.")
    return redirect("training_run_detail", slug=project.slug, run_id=run.pk)


@login_required
@require_GET
def training_run_metrics(request: AuthedRequest, slug: str, run_id: int) -> JsonResponse:
    project = _lead_project(request, slug)
    run = access_training_run(project=project, run_id=run_id)
    return JsonResponse(
        {
            "status": run.status,
            "progress": {"done": run.progress_done, "total": run.progress_total},
            "points": training_run_points(run=run),
        }
    )


# Model versions -----------------------------------------------------------------------------


@login_required
@require_GET
def model_version_list(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    tree = model_version_tree(project=project)
    return render(
        request, "alignment/model_version_list.html", page_context(request, project, tree=tree)
    )


# Leaderboard --------------------------------------------------------------------------------


@login_required
@require_GET
def leaderboard(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    board = leaderboard_get(project=project)
    return render(
        request, "alignment/leaderboard.html", page_context(request, project, board=board)
    )


# Model judges ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request")
def judge_list(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _lead_project(request, slug)
    form = JudgeAddForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                judge = judge_add(project=project, created_by=request.user, **form.cleaned_data)
            except ValidationFailed as error:
                form.add_error(None, str(error))
            else:
                messages.success(request, f"Added {judge.name}. Run it to have it judge.")
                return redirect("judge_list", slug=project.slug)
        status = 422
    rows = judges_for_project(project=project)
    context = page_context(
        request,
        project,
        rows=rows,
        form=form,
        mode_choices=JudgeMode.choices,
        active=any(row.last is not None and row.last.is_active for row in rows),
    )
    if request.htmx and request.method == "GET":
        return render(request, "alignment/judge_list.html#judges", context)
    return render(request, "alignment/judge_list.html", context, status=status)


@login_required
@require_POST
def judge_run(request: AuthedRequest, slug: str, judge_id: int) -> HttpResponse:
    project = _lead_project(request, slug)
    judge = access_judge(project=project, judge_id=judge_id)
    form = JudgeRunForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            "; ".join(
                f"{name}: {' '.join(map(str, errors))}" for name, errors in form.errors.items()
            ),
        )
        return redirect("judge_list", slug=project.slug)
    try:
        judge_run_start(
            judge=judge,
            mode=form.cleaned_data["mode"],
            round_number=form.cleaned_data["round_number"],
            limit=form.cleaned_data["limit"],
            created_by=request.user,
        )
    except ValidationFailed as error:
        messages.error(request, str(error))
    else:
        messages.info(
            request,
            f"{judge.name} is queued ({judge.get_mode_display().lower()}): a worker runs it.",
        )
    return redirect("judge_list", slug=project.slug)
