from __future__ import annotations

from django.urls import URLPattern, path

from alignment import views

urlpatterns: list[URLPattern] = [
    path("p/<slug:slug>/rounds/", views.round_list, name="round_list"),
    path("p/<slug:slug>/rounds/new/", views.round_new, name="round_new"),
    path("p/<slug:slug>/rounds/<int:number>/", views.round_detail, name="round_detail"),
    path("p/<slug:slug>/runs/", views.training_run_list, name="training_run_list"),
    path("p/<slug:slug>/runs/new/", views.training_run_new, name="training_run_new"),
    path("p/<slug:slug>/runs/<int:run_id>/", views.training_run_detail, name="training_run_detail"),
    path(
        "p/<slug:slug>/runs/<int:run_id>/metrics.json",
        views.training_run_metrics,
        name="training_run_metrics",
    ),
    path("p/<slug:slug>/models/", views.model_version_list, name="model_version_list"),
]
