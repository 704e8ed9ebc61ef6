"""Review: the comparisons to look at, a reviewer's decision, sending a pair back, gold items;\nand the quality page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotate import selectors
from annotate.access import access_comparison, access_project
from annotate.forms import AdjudicateForm, GoldForm, PromptFilterForm
from annotate.models import Project, Role
from annotate.quality import QualityFilters, project_quality
from annotate.services.comparisons import (
    comparison_adjudicate,
    comparison_gold_set,
    comparison_send_back,
    ranking_gold_set,
)
from annotate.views.pages import int_or_none, page_context
from core.errors import ValidationFailed
from core.http import AuthedRequest


@login_required
@require_GET
def quality(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    filters = QualityFilters(
        guideline_version=int_or_none(request.GET.get("guideline")),
        round_number=int_or_none(request.GET.get("round")),
    )
    report = project_quality(project=project, filters=filters)
    return render(
        request,
        "annotate/quality.html",
        page_context(request, project, report=report, chart=report.chart_data()),
    )


@login_required
@require_GET
def review_list(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    reason = request.GET.get("reason", "split")
    if reason not in selectors.REVIEW_REASONS:
        reason = "split"
    items = selectors.review_queue(project=project, reason=reason)
    return render(
        request,
        "annotate/review_list.html",
        page_context(
            request,
            project,
            items=items,
            reason=reason,
            reason_label=selectors.REVIEW_REASONS[reason],
            reasons=selectors.REVIEW_REASONS,
        ),
    )


def _review_page(
    request: AuthedRequest, project: Project, comparison_id: int, **forms_: Any
) -> HttpResponse:
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    if comparison.is_ranking:
        return render(
            request,
            "annotate/review_ranking.html",
            page_context(
                request,
                project,
                review=selectors.ranking_review(comparison=comparison),
                gold_error=forms_.get("gold_error", ""),
            ),
            status=422 if forms_.get("gold_error") else 200,
        )
    review = selectors.comparison_review(comparison=comparison)
    context = page_context(
        request,
        project,
        review=review,
        next_disputed=selectors.next_disputed(project=project, after=comparison),
        adjudicate_form=forms_.get("adjudicate_form")
        or AdjudicateForm(rating=comparison.is_rating),
        gold_form=forms_.get("gold_form")
        or GoldForm(initial={"gold_choice": comparison.gold_choice}, rating=comparison.is_rating),
    )
    invalid = any(form.errors for form in forms_.values() if hasattr(form, "errors"))
    return render(request, "annotate/review_detail.html", context, status=422 if invalid else 200)


@login_required
@require_GET
def review_detail(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    return _review_page(request, project, comparison_id)


@login_required
@require_POST
def review_adjudicate(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    form = AdjudicateForm(request.POST, rating=comparison.is_rating)
    if form.is_valid():
        try:
            comparison_adjudicate(
                comparison=comparison,
                reviewer=request.user,
                choice=form.cleaned_data["choice"],
                rationale=form.cleaned_data["rationale"],
            )
        except ValidationFailed as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, "Adjudicated: your decision now decides this pair.")
            return redirect("review_detail", slug=project.slug, comparison_id=comparison.pk)
    return _review_page(request, project, comparison.pk, adjudicate_form=form)


@login_required
@require_POST
def review_send_back(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    try:
        comparison_send_back(comparison=comparison, reviewer=request.user)
    except ValidationFailed as error:
        messages.error(request, str(error))
    else:
        messages.success(request, "Sent back: the pair is in the queue again for fresh judgments.")
    return redirect("review_detail", slug=project.slug, comparison_id=comparison.pk)


@login_required
@require_POST
def review_gold(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    if comparison.is_ranking:
        # A known order: one rank per response ("" everywhere: no longer a gold item).
        given = [request.POST.get(f"rank-{pk}", "").strip() for pk in comparison.responses]
        try:
            ranking_gold_set(
                comparison=comparison,
                ranks=[int_or_none(r) or 0 for r in given] if any(given) else None,
            )
        except ValidationFailed as error:
            return _review_page(request, project, comparison.pk, gold_error=str(error))
        messages.success(request, "Now a gold item." if any(given) else "No longer a gold item.")
        return redirect("review_detail", slug=project.slug, comparison_id=comparison.pk)
    form = GoldForm(request.POST, rating=comparison.is_rating)
    if form.is_valid():
        comparison_gold_set(comparison=comparison, gold_choice=form.cleaned_data["gold_choice"])
        messages.success(
            request,
            "Now a gold item." if form.cleaned_data["gold_choice"] else "No longer a gold item.",
        )
        return redirect("review_detail", slug=project.slug, comparison_id=comparison.pk)
    return _review_page(request, project, comparison.pk, gold_form=form)


@login_required
@require_GET
def prompt_list(request: AuthedRequest, slug: str) -> HttpResponse:
    """Every prompt of the project, searched and filtered, for reviewers and leads."""
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    form = PromptFilterForm(
        request.GET or None,
        facets=selectors.prompt_facets(project=project),
        statuses=selectors.PROMPT_STATUSES,
    )
    filters = selectors.PromptFilters()
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        filters = selectors.PromptFilters(
            text=data["q"].strip(),
            tag=data["tag"],
            split=data["split"],
            language=data["language"],
            cluster=data["cluster"],
            round_number=data["round"],
            status=data["status"],
        )
    prompts = selectors.prompts_browse(project=project, filters=filters)
    page = Paginator(prompts, selectors.PROMPTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "annotate/prompt_list.html",
        page_context(request, project, form=form, page=page, query=query.urlencode()),
        status=422 if form.is_bound and form.errors else 200,
    )


@login_required
@require_GET
def prompt_detail(request: AuthedRequest, slug: str, prompt_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    prompt = project.prompts.filter(pk=prompt_id).first()
    if prompt is None:
        raise Http404("No such prompt in this project.")
    return render(
        request,
        "annotate/prompt_detail.html",
        page_context(request, project, detail=selectors.prompt_detail(prompt=prompt)),
    )
