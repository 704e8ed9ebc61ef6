"""The API's projects: the base view every project's endpoint (both apps') stands on, and the\nprojects a user can see."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotate.access import access_project, project_role, projects_for_user
from annotate.models import Project, RatingScale, Role
from core.api import ERRORS


class ProjectApi(APIView):
    # A view of one project; `min_role` is the lowest role that may use it. (A comment, not a
    # docstring: the schema would give it to every subclass as its description.)
    min_role = Role.ANNOTATOR

    def project(self, request: Request, slug: str) -> Project:
        return access_project(user=request.user, slug=slug, min_role=self.min_role)


class MessageOut(serializers.Serializer[Any]):
    role = serializers.CharField()
    content = serializers.CharField(allow_blank=True)


class ProjectOut(serializers.Serializer[Any]):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    role = serializers.SerializerMethodField(help_text="Yours in this project.")
    base_model = serializers.CharField()
    overlap = serializers.IntegerField()
    allow_tie = serializers.BooleanField()
    allow_both_bad = serializers.BooleanField()
    use_strength = serializers.BooleanField()
    criteria = serializers.ListField(child=serializers.CharField())
    reason_tags = serializers.ListField(child=serializers.CharField())
    rationale = serializers.CharField()
    rating_scale = serializers.ChoiceField(
        choices=RatingScale.choices, help_text="How a rating is given: good / bad, or 1-5."
    )
    rating_threshold = serializers.IntegerField(
        help_text="On the 1-5 scale, a score from this up is good."
    )
    undo_seconds = serializers.IntegerField()
    lease_seconds = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices))
    def get_role(self, project: Project) -> str:
        # context["roles"]: project id → the caller's role; site admins act as leads.
        return str(self.context["roles"].get(project.pk) or Role.LEAD)


class ProjectListApi(APIView):
    @extend_schema(
        operation_id="projects_list",
        tags=["projects"],
        responses={200: ProjectOut(many=True), 401: ERRORS[401]},
        summary="Your projects",
    )
    def get(self, request: Request) -> Response:
        user = request.user
        projects = list(projects_for_user(user=user).order_by("slug"))
        roles = dict(user.memberships.values_list("project_id", "role"))  # type: ignore[union-attr]
        return Response(ProjectOut(projects, many=True, context={"roles": roles}).data)


class ProjectDetailApi(ProjectApi):
    @extend_schema(
        operation_id="projects_retrieve",
        tags=["projects"],
        responses={200: ProjectOut, **ERRORS},
        summary="A project and its annotation settings",
    )
    def get(self, request: Request, slug: str) -> Response:
        project = self.project(request, slug)
        roles = {project.pk: project_role(user=request.user, project=project)}
        return Response(ProjectOut(project, context={"roles": roles}).data)
