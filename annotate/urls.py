from __future__ import annotations

from django.urls import path

from annotate import views

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_overview, name="project_overview"),
    path("p/<slug:slug>/annotate/", views.annotate, name="annotate"),
    path("p/<slug:slug>/annotate/<int:comparison_id>/judge/", views.judge, name="judge"),
    path("p/<slug:slug>/annotate/<int:comparison_id>/skip/", views.skip, name="skip"),
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
    path("p/<slug:slug>/review/<int:comparison_id>/", views.review_detail, name="review_detail"),
    path(
        "p/<slug:slug>/review/<int:comparison_id>/adjudicate/",
        views.review_adjudicate,
        name="review_adjudicate",
    ),
    path(
        "p/<slug:slug>/review/<int:comparison_id>/send-back/",
        views.review_send_back,
        name="review_send_back",
    ),
    path("p/<slug:slug>/review/<int:comparison_id>/gold/", views.review_gold, name="review_gold"),
    path("p/<slug:slug>/settings/", views.project_settings, name="project_settings"),
    path("p/<slug:slug>/members/", views.members, name="members"),
    path("p/<slug:slug>/export/", views.export, name="export"),
    path("p/<slug:slug>/import/", views.data_import, name="data_import"),
]
