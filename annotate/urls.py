from __future__ import annotations

from django.urls import URLPattern, path

from annotate.api import comparisons, data, judging, projects, prompts
from annotate.views import data as data_pages
from annotate.views import judging as judging_pages
from annotate.views import projects as project_pages
from annotate.views import review as review_pages
from core import http as _http  # noqa: F401  (registers the <id:...> converter)

urlpatterns = [
    path("", project_pages.home, name="home"),
    path("p/<slug:slug>/", project_pages.project_overview, name="project_overview"),
    path("p/<slug:slug>/annotate/", judging_pages.annotate, name="annotate"),
    path("p/<slug:slug>/annotate/<id:comparison_id>/judge/", judging_pages.judge, name="judge"),
    path("p/<slug:slug>/annotate/<id:comparison_id>/skip/", judging_pages.skip, name="skip"),
    path("p/<slug:slug>/annotate/undo/", judging_pages.undo, name="undo"),
    path(
        "p/<slug:slug>/annotate/<id:comparison_id>/unskip/",
        judging_pages.skip_taken_back,
        name="unskip",
    ),
    path(
        "p/<slug:slug>/annotate/guidelines-seen/",
        judging_pages.guidelines_acknowledge,
        name="guidelines_acknowledge",
    ),
    path("p/<slug:slug>/mine/", judging_pages.my_judgments, name="my_judgments"),
    path("p/<slug:slug>/mine/<id:judgment_id>/", judging_pages.my_judgment, name="my_judgment"),
    path("p/<slug:slug>/guidelines/", judging_pages.guidelines, name="guidelines"),
    path("p/<slug:slug>/quality/", review_pages.quality, name="quality"),
    path("p/<slug:slug>/coverage/", data_pages.coverage, name="coverage"),
    path("p/<slug:slug>/review/", review_pages.review_list, name="review_list"),
    path("p/<slug:slug>/prompts/", review_pages.prompt_list, name="prompt_list"),
    path("p/<slug:slug>/prompts/<id:prompt_id>/", review_pages.prompt_detail, name="prompt_detail"),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/", review_pages.review_detail, name="review_detail"
    ),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/adjudicate/",
        review_pages.review_adjudicate,
        name="review_adjudicate",
    ),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/send-back/",
        review_pages.review_send_back,
        name="review_send_back",
    ),
    path(
        "p/<slug:slug>/review/<id:comparison_id>/gold/",
        review_pages.review_gold,
        name="review_gold",
    ),
    path("p/<slug:slug>/settings/", project_pages.project_settings, name="project_settings"),
    path("p/<slug:slug>/members/", project_pages.members, name="members"),
    path("p/<slug:slug>/export/", data_pages.export, name="export"),
    path("p/<slug:slug>/import/", data_pages.data_import, name="data_import"),
]

# Under /api/v1/ (config/urls.py), namespace "api".
api_urlpatterns: list[URLPattern] = [
    path("projects/", projects.ProjectListApi.as_view(), name="projects"),
    path("projects/<slug:slug>/", projects.ProjectDetailApi.as_view(), name="project"),
    path("projects/<slug:slug>/prompts/", prompts.PromptListApi.as_view(), name="prompts"),
    path(
        "projects/<slug:slug>/comparisons/",
        comparisons.ComparisonListApi.as_view(),
        name="comparisons",
    ),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/",
        comparisons.ComparisonDetailApi.as_view(),
        name="comparison",
    ),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/judgments/",
        judging.JudgmentCreateApi.as_view(),
        name="judgment_create",
    ),
    path(
        "projects/<slug:slug>/comparisons/<id:comparison_id>/skip/",
        judging.SkipApi.as_view(),
        name="skip",
    ),
    path("projects/<slug:slug>/assignment/", judging.AssignmentApi.as_view(), name="assignment"),
    path("projects/<slug:slug>/judgments/", judging.JudgmentListApi.as_view(), name="judgments"),
    path(
        "projects/<slug:slug>/judgments/<id:judgment_id>/undo/",
        judging.JudgmentUndoApi.as_view(),
        name="judgment_undo",
    ),
    path("projects/<slug:slug>/guidelines/", judging.GuidelineApi.as_view(), name="guidelines"),
    path("projects/<slug:slug>/export/", data.ExportApi.as_view(), name="export"),
    path("projects/<slug:slug>/export/card/", data.ExportCardApi.as_view(), name="export_card"),
    path("projects/<slug:slug>/coverage/", data.CoverageApi.as_view(), name="coverage"),
]
