"""The API's Swagger UI in a real Chromium, under the site's Content-Security-Policy."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator
from playwright.sync_api import Browser, expect
from pytest_django.live_server_helper import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_shows_every_operation_with_nothing_blocked(
    browser: Browser, live_server: LiveServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    remote: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith(live_server.url) else remote.append(request.url)
        ),
    )
    page.goto(f"{live_server.url}/api/v1/docs/")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=10_000)
    expect(page.locator(".opblock-summary-path").filter(has_text="/assignment/")).to_be_visible()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert operations.count() == sum(len(methods) for methods in schema["paths"].values())
    assert not errors, errors  # a CSP violation is reported as a console error
    assert not remote, remote  # the UI's files come from the sidecar package, not a CDN
    context.close()
