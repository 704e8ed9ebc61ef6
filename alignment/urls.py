from __future__ import annotations

from django.urls import URLPattern, path

from alignment import api, views
from core import http as _http  # noqa: F401  (registers the <id:...> converter)

urlpatterns: list[URLPattern] = [
    path("p/<slug:slug>/rounds/", views.round_list, name="round_list"),
    path("p/<slug:slug>/rounds/new/", views.round_new, name="round_new"),
    path("p/<slug:slug>/rounds/<id:number>/", views.round_detail, name="round_detail"),
    path("p/<slug:slug>/rounds/<id:number>/review/", views.round_review, name="round_review"),
    path("p/<slug:slug>/runs/", views.training_run_list, name="training_run_list"),
    path("p/<slug:slug>/runs/new/", views.training_run_new, name="training_run_new"),
    path("p/<slug:slug>/runs/<id:run_id>/", views.training_run_detail, name="training_run_detail"),
    path(
        "p/<slug:slug>/runs/<id:run_id>/contradictions/send-back/",
        views.training_run_contradictions_send_back,
        name="training_run_contradictions_send_back",
    ),
    path(
        "p/<slug:slug>/runs/<id:run_id>/cancel/",
        views.training_run_cancel_view,
        name="training_run_cancel",
    ),
    path(
        "p/<slug:slug>/runs/<id:run_id>/metrics.json",
        views.training_run_metrics,
        name="training_run_metrics",
    ),
    path("p/<slug:slug>/models/", views.model_version_list, name="model_version_list"),
    path(
        "p/<slug:slug>/lineage/comparison/<id:comparison_id>/",
        views.lineage_comparison,
        name="lineage_comparison",
    ),
    path("p/<slug:slug>/lineage/run/<id:run_id>/", views.lineage_run, name="lineage_run"),
    path(
        "p/<slug:slug>/lineage/version/<id:version_id>/",
        views.lineage_version,
        name="lineage_version",
    ),
    path("p/<slug:slug>/leaderboard/", views.leaderboard, name="leaderboard"),
    path("p/<slug:slug>/judges/", views.judge_list, name="judge_list"),
    path("p/<slug:slug>/judges/<id:judge_id>/run/", views.judge_run, name="judge_run"),
]

# Under /api/v1/ (config/urls.py), namespace "api".
api_urlpatterns: list[URLPattern] = [
    path("projects/<slug:slug>/rounds/", api.RoundListApi.as_view(), name="rounds"),
    path("projects/<slug:slug>/rounds/<id:number>/", api.RoundDetailApi.as_view(), name="round"),
    path(
        "projects/<slug:slug>/training-runs/",
        api.TrainingRunListApi.as_view(),
        name="training_runs",
    ),
    path(
        "projects/<slug:slug>/training-runs/<id:run_id>/",
        api.TrainingRunDetailApi.as_view(),
        name="training_run",
    ),
    path("projects/<slug:slug>/leaderboard/", api.LeaderboardApi.as_view(), name="leaderboard"),
    path(
        "projects/<slug:slug>/training-runs/<id:run_id>/cancel/",
        api.TrainingRunCancelApi.as_view(),
        name="training_run_cancel",
    ),
    path(
        "projects/<slug:slug>/model-versions/",
        api.ModelVersionListApi.as_view(),
        name="model_versions",
    ),
]
