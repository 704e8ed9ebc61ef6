"""The pages of projects: the list, a project's overview, its settings and members."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from annotate import selectors
from annotate.access import access_project
from annotate.forms import MemberForm, ProjectSettingsForm
from annotate.models import Project, Role
from annotate.services.projects import membership_remove, membership_set, project_settings_update
from annotate.views.pages import int_or_none, page_context
from core.http import AuthedRequest


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
        remove = int_or_none(request.POST.get("remove"))
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
