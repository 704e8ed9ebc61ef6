from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "core"

    def ready(self) -> None:
        import django_stubs_ext

        # Django's generic classes take their model's type (`ModelAdmin[Project]`) at run
        # time too. First in INSTALLED_APPS: admin's ready() imports every admin module.
        django_stubs_ext.monkeypatch()
