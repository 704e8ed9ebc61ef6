from __future__ import annotations

from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from alignment.urls import api_urlpatterns as alignment_api
from annotate.api.auth import TokenApi
from annotate.urls import api_urlpatterns as annotate_api
from core.health import health, health_web

handler404 = "core.api.page_not_found"
handler500 = "core.api.server_error"

api_urlpatterns = [
    path("auth/token/", TokenApi.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI draws its icons from data: URLs; the page shows only our own schema.
    path(
        "docs/",
        csp_update({"img-src": ["data:"]})(
            SpectacularSwaggerSplitView.as_view(url_name="api:schema")
        ),
        name="docs",
    ),
    *annotate_api,
    *alignment_api,
]

urlpatterns = [
    path("health/", health, name="health"),
    path("health/web/", health_web, name="health_web"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include((api_urlpatterns, "api"))),
    path("", include("annotate.urls")),
    path("", include("alignment.urls")),
]
