from __future__ import annotations

import functools
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.template.backends.utils import csrf_input
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import selectors
from annotate.access import access_comparison, access_project, project_role
from annotate.coverage import coverage_is_stale, coverage_refresh_request
from annotate.exports import export_download
from annotate.forms import (
    AdjudicateForm,
    ExportForm,
    GoldForm,
    GuidelineForm,
    ImportForm,
    MemberForm,
    ProjectSettingsForm,
)
from annotate.imports import (
    INLINE_MAX_BYTES,
    MAX_ERRORS_SHOWN,
    ImportRefused,
    file_type_guess,
    import_file,
    import_job_start,
)
from annotate.models import Judgment, Project, Role
from annotate.quality import QualityFilters, project_quality
from annotate.queue import SKIP_REASONS, assignment_next, comparison_skip
from annotate.services.comparisons import (
    comparison_adjudicate,
    comparison_gold_set,
    comparison_send_back,
)
from annotate.services.judgments import (
    MAX_TIME_SPENT_MS,
    STRENGTHS,
    ComparisonMissing,
    JudgmentRejected,
    judgment_submit,
    judgment_undo,
    judgment_undoable,
)
from annotate.services.projects import (
    guideline_acknowledge,
    guideline_current,
    guideline_publish,
    membership_remove,
    membership_set,
    project_settings_update,
)
from core.errors import ValidationFailed
from core.http import AuthedRequest


def page_context(
    request: AuthedRequest, project: Project, role: Role | None = None, **extra: Any
) -> dict[str, Any]:
    """The context of every project page, on both sides: the project and the user's role."""
    role = role or project_role(user=request.user, project=project)
    return {"project": project, "role": role.value if role else None, **extra}


@login_required
@require_GET
def home(request: AuthedRequest) -> HttpResponse:
    projects = selectors.project_cards_for_user(user=request.user)
    return render(request, "annotate/home.html", {"projects": projects})


@login_required
@require_GET
def project_overview(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    context = page_context(request, project)
    if context["role"] == Role.ANNOTATOR:
        return redirect("annotate", slug=project.slug)
    overview = selectors.project_overview(project=project)
    return render(request, "annotate/overview.html", {**context, "overview": overview})


# Annotation ----------------------------------------------------------------------------------


_ID_SENTINEL = 987654321


@functools.lru_cache(maxsize=512)
def _annotation_urls(slug: str) -> dict[str, str]:
    """The annotation page's URLs for a project, comparison URLs with a sentinel id (see
    `_pair_urls`). Reversing them on every judgment was a visible part of its CPU."""
    urls = {
        name: reverse(name, args=[slug])
        for name in ("annotate", "undo", "guidelines_acknowledge", "guidelines", "my_judgments")
    }
    urls.update({name: reverse(name, args=[slug, _ID_SENTINEL]) for name in ("judge", "skip")})
    return urls


def _pair_urls(slug: str, comparison_id: int | None) -> dict[str, str]:
    urls = dict(_annotation_urls(slug))
    for name in ("judge", "skip"):
        # The id is the last number in the path (the slug comes before it).
        head, _, tail = urls[name].rpartition(str(_ID_SENTINEL))
        urls[name] = f"{head}{comparison_id}{tail}" if comparison_id is not None else ""
    return urls


def _pair_context(
    request: AuthedRequest,
    project: Project,
    error: str = "",
    *,
    holds_nothing: bool = False,
    judged: Judgment | None = None,
) -> dict[str, Any]:
    """What the pair fragment shows. After a submit, `judged` is the judgment just made (the
    one undo would take back) and the annotator holds no lease any more."""
    assignment = assignment_next(
        project=project, annotator=request.user, holds_nothing=holds_nothing
    )
    progress = selectors.annotator_progress(
        project=project,
        annotator=request.user,
        remaining=assignment.available if assignment is not None else None,
    )
    seen, current = progress.guideline_seen_version, progress.guideline_version
    unseen = (
        list(project.guidelines.filter(version__gt=seen).order_by("version"))
        if current is not None and seen is not None and seen < current
        else []
    )
    # A swapped-in fragment shows the guidelines only when they changed (the banner and the
    # panel beside it); the whole page always shows them.
    guideline = unseen[-1] if unseen else None
    if guideline is None and not request.htmx:
        guideline = guideline_current(project=project)
    comparison = assignment.comparison if assignment else None
    return page_context(
        request,
        project,
        assignment=assignment,
        comparison=comparison,
        urls=_pair_urls(project.slug, comparison.pk if comparison else None),
        # One token for the fragment's forms: {% csrf_token %} masks a new one for each.
        csrf_field=csrf_input(request),
        guideline=guideline,
        unseen_guidelines=unseen,
        first_visit=seen == 0,
        progress=progress,
        undoable=(
            judged
            if judged is not None and project.undo_seconds
            else judgment_undoable(project=project, annotator=request.user)
        ),
        strengths=STRENGTHS,
        skip_reasons=SKIP_REASONS,
        idempotency_key=uuid.uuid4().hex,
        shown_at=int(timezone.now().timestamp() * 1000),
        error=error,
    )


def _pair_response(
    request: AuthedRequest, project: Project, error: str = "", **context_options: Any
) -> HttpResponse:
    """The annotation page, or under htmx just its #pair fragment (what a submit swaps in)."""
    template = "annotate/annotate.html#pair" if request.htmx else "annotate/annotate.html"
    context = _pair_context(request, project, error, **context_options)
    return render(request, template, context, status=422 if error else 200)


@login_required
@require_GET
def annotate(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    return _pair_response(request, project)


def _after_action(
    request: AuthedRequest, project: Project, error: str = "", **context_options: Any
) -> HttpResponse:
    if request.htmx or error:
        return _pair_response(request, project, error, **context_options)
    return redirect("annotate", slug=project.slug)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@login_required
@require_POST
def judge(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    shown_at = _int_or_none(request.POST.get("shown_at"))
    now_ms = int(timezone.now().timestamp() * 1000)
    time_spent = now_ms - shown_at if shown_at is not None else None
    if time_spent is not None and not 0 <= time_spent <= MAX_TIME_SPENT_MS:
        time_spent = None  # a tampered or stale timestamp is no measurement
    criteria = {
        name: request.POST[f"criterion-{name}"]
        for name in project.criteria
        if request.POST.get(f"criterion-{name}")
    }
    try:
        judgment = judgment_submit(
            comparison_id=comparison_id,
            annotator=request.user,
            project=project,
            side=request.POST.get("choice", "") or "missing",
            idempotency_key=(request.POST.get("idempotency_key") or None),
            strength=_int_or_none(request.POST.get("strength")),
            criteria=criteria,
            rationale=request.POST.get("rationale", ""),
            reason_tags=request.POST.getlist("reason_tags"),
            time_spent_ms=time_spent,
        )
    except ComparisonMissing:
        raise Http404("No such comparison.") from None
    except JudgmentRejected as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project, holds_nothing=True, judged=judgment)


@login_required
@require_POST
def skip(request: AuthedRequest, slug: str, comparison_id: int) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    comparison = access_comparison(user=request.user, project=project, comparison_id=comparison_id)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        return _after_action(request, project, error="Say why you skip this pair.")
    comparison_skip(comparison=comparison, annotator=request.user, reason=reason)
    return _after_action(request, project, holds_nothing=True)


@login_required
@require_POST
def undo(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    judgment_id = _int_or_none(request.POST.get("judgment")) or 0
    try:
        judgment_undo(project=project, annotator=request.user, judgment_id=judgment_id)
    except JudgmentRejected as error:
        return _after_action(request, project, error=str(error))
    return _after_action(request, project)


@login_required
@require_POST
def guidelines_acknowledge(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    version = _int_or_none(request.POST.get("version"))
    current = guideline_current(project=project)
    if current is not None and version is not None and 0 < version <= current.version:
        guideline_acknowledge(project=project, user=request.user, version=version)
    return _after_action(request, project)


@login_required
@require_GET
def my_judgments(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug)
    judgments = selectors.judgments_of_annotator(project=project, annotator=request.user)
    undoable = judgment_undoable(project=project, annotator=request.user)
    return render(
        request,
        "annotate/my_judgments.html",
        page_context(request, project, judgments=judgments, undoable=undoable),
    )


# Guidelines ----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def guidelines(request: AuthedRequest, slug: str) -> HttpResponse:
    """Every member reads every version; leads publish new ones."""
    project = access_project(user=request.user, slug=slug)
    context = page_context(request, project)
    current = guideline_current(project=project)
    form = None
    if context["role"] == Role.LEAD:
        form = GuidelineForm(
            request.POST if request.method == "POST" else None,
            initial={"body": current.body if current else ""},
        )
        if request.method == "POST" and form.is_valid():
            try:
                published = guideline_publish(
                    project=project,
                    body=form.cleaned_data["body"],
                    changes=form.cleaned_data["changes"],
                    created_by=request.user,
                )
            except ValidationFailed as error:
                form.add_error("body", str(error))
            else:
                messages.success(request, f"Published guidelines v{published.version}.")
                return redirect("guidelines", slug=project.slug)
    elif request.method == "POST":
        access_project(user=request.user, slug=slug, min_role=Role.LEAD)  # publishing: a 404
    return render(
        request,
        "annotate/guidelines.html",
        {**context, "versions": selectors.guidelines_of_project(project=project), "form": form},
        status=422 if form is not None and form.errors else 200,
    )


# Quality and review --------------------------------------------------------------------------


@login_required
@require_GET
def quality(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    filters = QualityFilters(
        guideline_version=_int_or_none(request.GET.get("guideline")),
        round_number=_int_or_none(request.GET.get("round")),
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
    review = selectors.comparison_review(comparison=comparison)
    context = page_context(
        request,
        project,
        review=review,
        adjudicate_form=forms_.get("adjudicate_form") or AdjudicateForm(),
        gold_form=forms_.get("gold_form")
        or GoldForm(initial={"gold_choice": comparison.gold_choice}),
    )
    invalid = any(form.errors for form in forms_.values())
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
    form = AdjudicateForm(request.POST)
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
    form = GoldForm(request.POST)
    if form.is_valid():
        comparison_gold_set(comparison=comparison, gold_choice=form.cleaned_data["gold_choice"])
        messages.success(
            request,
            "Now a gold item." if form.cleaned_data["gold_choice"] else "No longer a gold item.",
        )
        return redirect("review_detail", slug=project.slug, comparison_id=comparison.pk)
    return _review_page(request, project, comparison.pk, gold_form=form)


# Project settings and members (leads) -----------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
    form = ProjectSettingsForm(request.POST if request.method == "POST" else None, instance=project)
    if request.method == "POST":
        if form.is_valid():
            project_settings_update(
                project=Project.objects.get(pk=project.pk),
                **{name: form.cleaned_data[name] for name in ProjectSettingsForm.Meta.fields},
            )
            messages.success(request, "Settings saved.")
            return redirect("project_settings", slug=project.slug)
        project.refresh_from_db()  # the form wrote its input onto the instance
    return render(
        request,
        "annotate/settings.html",
        page_context(request, project, form=form),
        status=422 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def members(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
    form = MemberForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        remove = _int_or_none(request.POST.get("remove"))
        if remove is not None:
            membership = project.memberships.filter(user_id=remove).select_related("user").first()
            if membership is not None and membership.user != request.user:
                membership_remove(project=project, user=membership.user)
                messages.success(request, f"Removed {membership.user.username}.")
            return redirect("members", slug=project.slug)
        if form.is_valid():
            user = form.cleaned_data["username"]
            membership_set(
                project=project,
                user=user,
                role=form.cleaned_data["role"],
                quota=form.cleaned_data["quota"],
            )
            messages.success(request, f"{user.username} is now a {form.cleaned_data['role']}.")
            return redirect("members", slug=project.slug)
    memberships = project.memberships.select_related("user").order_by("role", "user__username")
    return render(
        request,
        "annotate/members.html",
        page_context(request, project, form=form, memberships=memberships),
        status=422 if form.errors else 200,
    )


# Export (leads) -------------------------------------------------------------------------------


@login_required
@require_GET
def export(request: AuthedRequest, slug: str) -> HttpResponseBase:
    """The export page; with ?download=data the JSONL itself, with ?download=card its card."""
    project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
    download = request.GET.get("download", "")
    query = request.GET.copy()
    for name in ("format", "split"):  # a link may leave the defaults out
        query.setdefault(name, ExportForm.base_fields[name].initial)
    form = ExportForm(query if download or "format" in request.GET else None)
    if form.is_bound and form.is_valid() and download in ("data", "card"):
        return export_download(
            project=project,
            format=form.cleaned_data["format"],
            filters=form.filters(),
            part="card" if download == "card" else "data",
        )
    counts = selectors.export_counts(project=project)
    return render(
        request,
        "annotate/export.html",
        page_context(request, project, form=form, counts=counts),
        status=422 if form.errors else 200,
    )


# Import (leads) -------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def data_import(request: AuthedRequest, slug: str) -> HttpResponse:
    project = access_project(user=request.user, slug=slug, min_role=Role.LEAD)
    form = ImportForm(request.POST if request.method == "POST" else None, request.FILES or None)
    refused: ImportRefused | None = None
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        if upload.size > INLINE_MAX_BYTES:
            try:
                job = import_job_start(
                    project=project,
                    kind=form.cleaned_data["kind"],
                    upload=upload,
                    file_name=upload.name,
                    file_type=file_type_guess(upload.name),
                    valid_only=form.cleaned_data["valid_only"],
                    created_by=request.user,
                )
            except ImportRefused as error:
                refused = error
            else:
                messages.info(request, f"A worker is importing {job.file_name}; see below.")
                return redirect("data_import", slug=project.slug)
        else:
            try:
                result = import_file(
                    project=Project.objects.get(pk=project.pk),
                    kind=form.cleaned_data["kind"],
                    source=upload.read(),
                    file_type=file_type_guess(upload.name),
                    valid_only=form.cleaned_data["valid_only"],
                )
            except ImportRefused as error:
                refused = error
            else:
                skipped = f", skipped {len(result.skipped)} bad rows" if result.skipped else ""
                messages.success(request, f"Imported {result.created} {result.kind}{skipped}.")
                return redirect("data_import", slug=project.slug)
    jobs = selectors.import_jobs_recent(project=project)
    template = "annotate/import.html#jobs" if request.htmx and request.method == "GET" else None
    return render(
        request,
        template or "annotate/import.html",
        page_context(
            request,
            project,
            form=form,
            refused=refused,
            errors_shown=refused.errors[:MAX_ERRORS_SHOWN] if refused else [],
            jobs=jobs,
            jobs_active=any(job.is_active for job in jobs),
        ),
        status=422 if form.errors or refused else 200,
    )


# Coverage (reviewers and leads) -----------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def coverage(request: AuthedRequest, slug: str) -> HttpResponse:
    """The stored coverage statistics of a scope. POST asks a worker to refresh them: the
    button, or the page itself when they are stale or missing (an htmx request on load, so
    that a GET never sends work anywhere)."""
    project = access_project(user=request.user, slug=slug, min_role=Role.REVIEWER)
    if request.method == "POST":
        if not request.POST.get("refresh"):
            return redirect("coverage", slug=project.slug)
        requested = coverage_refresh_request(project=project)
        if request.htmx:
            return HttpResponse(status=204)
        messages.info(
            request,
            "A worker is refreshing the statistics."
            if requested
            else "A refresh was asked for less than a minute ago.",
        )
        return redirect("coverage", slug=project.slug)
    scope = request.GET.get("scope", "project")
    scopes = list(project.coverage.order_by("id").values_list("scope", flat=True))
    stats = project.coverage.filter(scope=scope).first()
    if scope != "project" and stats is None:
        raise Http404("No statistics for this scope.")
    stale = coverage_is_stale(project=project)
    return render(
        request,
        "annotate/coverage.html",
        page_context(
            request,
            project,
            stats=stats,
            data=stats.data if stats else None,
            chart=_coverage_chart(stats.data) if stats else None,
            scope=scope,
            scopes=scopes,
            stale=stale,
        ),
    )


def _coverage_chart(data: dict[str, Any]) -> dict[str, Any]:
    """What the page's charts draw (the JSON block coverage-chart.js reads)."""
    clusters = data.get("clusters", [])
    return {
        "map": data.get("map", {}),
        "clusters": [f"{c['id']}: {' '.join(c['terms'][:2])}" for c in clusters],
        "cluster_share": [round(100 * c["share"], 1) for c in clusters],
        "cluster_pair_share": [round(100 * c["pair_share"], 1) for c in clusters],
        "prompt_chars": data.get("prompt_chars", {}),
        "response_chars": data.get("response_chars", {}),
        "length_difference": data.get("pairs", {})
        .get("length_difference", {})
        .get("histogram", {}),
    }
