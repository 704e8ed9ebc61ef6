from __future__ import annotations

from django.urls import URLPattern, path

from annotate import api, views
from core import http as _http  # noqa: F401  (registers the <id:...> converter)

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_overview, name="project_overview"),
    path("p/<slug:slug>/annotate/", views.annotate, name="annotate"),
    path("p/<slug:slug>/annotate/<id:comparison_id>/judge/", views.judge, name="judge"),
    path("p/<slug:slug>/annotate/<id:comparison_id>/skip/", views.skip, name="skip"),
    path("p/<slug:slug>/annotate/undo/", views.undo, name="undo"),
    path(
        "p/<slug:slug>/annotate/guidelines-seen/",
        views.guidelines_acknowledge,
        name="guidelines_acknowledge",
    ),
    path("p/<slug:slug>/mine/", views.my_judgments, name="my_judgments"),
    path("p/<slug:slug>/guidelines/", views.guidelines, name="guidelines"),
    path("p/<slug:slug>/quality/", views.quality, name="quality"),
    path("p/<slug:slug>/coverage/", views.coverage, name="coverage"),
    path("p/<slug:slug>/review/", views.review_list, name="review_list"),
    path("p/<slug:slug>/review/<id:comparison_id>/", views.review_detail, name="review_detail"),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/adjudicate/",
        views.review_adjudicate,
        name="review_adjudicate",
    ),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/send-back/",
        views.review_send_back,
        name="review_send_back",
    ),
    path("p/<slug:slug>/review/<id:comparison_id>/gold/", views.review_gold, name="review_gold"),
    path("p/<slug:slug>/settings/", views.project_settings, name="project_settings"),
    path("p/<slug:slug>/members/", views.members, name="members"),
    path("p/<slug:slug>/export/", views.export, name="export"),
    path("p/<slug:slug>/import/", views.data_import, name="data_import"),
]

# Under /api/v1/ (config/urls.py), namespace "api".
api_urlpatterns: list[URLPattern] = [
    path("projects/", api.ProjectListApi.as_view(), name="projects"),
    path("projects/<slug:slug>/", api.ProjectDetailApi.as_view(), name="project"),
    path("projects/<slug:slug>/prompts/", api.PromptListApi.as_view(), name="prompts"),
    path("projects/<slug:slug>/comparisons/", api.ComparisonListApi.as_view(), name="comparisons"),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/",
        api.ComparisonDetailApi.as_view(),
        name="comparison",
    ),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/judgments/",
        api.JudgmentCreateApi.as_view(),
        name="judgment_create",
    ),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/skip/",
        api.SkipApi.as_view(),
        name="skip",
    ),
    path("projects/<slug:slug>/assignment/", api.AssignmentApi.as_view(), name="assignment"),
    path("projects/<slug:slug>/judgments/", api.JudgmentListApi.as_view(), name="judgments"),
    path(
        "projects/<slug:slug>/judgments/<id:judgment_id>/undo/",
        api.JudgmentUndoApi.as_view(),
        name="judgment_undo",
    ),
    path("projects/<slug:slug>/guidelines/", api.GuidelineApi.as_view(), name="guidelines"),
    path("projects/<slug:slug>/export/", api.ExportApi.as_view(), name="export"),
    path("projects/<slug:slug>/export/card/", api.ExportCardApi.as_view(), name="export_card"),
    path("projects/<slug:slug>/coverage/", api.CoverageApi.as_view(), name="coverage"),
]
