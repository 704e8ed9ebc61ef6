"""Data in and out: export, import, and the coverage statistics."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from annotate import selectors
from annotate.access import access_project
from annotate.coverage import coverage_is_stale, coverage_refresh_request
from annotate.exports import export_download
from annotate.forms import ExportForm, ImportForm
from annotate.imports.errors import MAX_ERRORS_SHOWN, ImportRefused
from annotate.imports.jobs import INLINE_MAX_BYTES, import_job_start
from annotate.imports.reading import file_type_guess
from annotate.imports.writing import import_file
from annotate.models import Project, Role
from annotate.views.pages import page_context
from core.http import AuthedRequest


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
                    keep_duplicates=form.cleaned_data["keep_duplicates"],
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
                    source=upload,  # streamed, as a worker reads a large file
                    file_type=file_type_guess(upload.name),
                    valid_only=form.cleaned_data["valid_only"],
                    keep_duplicates=form.cleaned_data["keep_duplicates"],
                )
            except ImportRefused as error:
                refused = error
            else:
                messages.success(request, result.summary())
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
