from __future__ import annotations

from django.urls import path

from annotate import views

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_overview, name="project_overview"),
    path("p/<slug:slug>/annotate/", views.annotate, name="annotate"),
    path("p/<slug:slug>/annotate/<int:comparison_id>/judge/", views.judge, name="judge"),
    path("p/<slug:slug>/annotate/<int:comparison_id>/skip/", views.skip, name="skip"),
]
