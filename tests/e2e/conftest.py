from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Page, ViewportSize, expect
from pytest_django.live_server_helper import LiveServer

# Playwright's sync API runs an event loop in this thread; the ORM calls of the test itself
# are still synchronous and safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("PREFLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM} (make browser installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield browser
        browser.close()


WAIT_MS = 5000


class Session:
    """A logged-in page that records uncaught errors and console errors (CSP violations)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )

    def login(self, live_server_url: str, user: User, path: str) -> None:
        self.page.goto(f"{live_server_url}/login/?next={path}")
        self.page.fill("#id_username", user.username)
        self.page.fill("#id_password", "pw-" + user.username)
        self.page.press("#id_password", "Enter")
        self.page.wait_for_url(f"**{path}")

    def press_and_wait_for_pair(self, key: str, *, pair: int | None) -> None:
        """Press a shortcut and wait until the pair `pair` (None: the empty state) is shown."""
        self.page.keyboard.press(key)
        self.expect_pair(pair, swapped=True)

    def expect_pair(self, pair: int | None, *, swapped: bool = False) -> None:
        if pair is None:
            expect(self.page.locator("[data-empty]")).to_be_visible(timeout=WAIT_MS)
            return
        expect(self.page.locator("#pair")).to_have_attribute(
            "data-comparison", str(pair), timeout=WAIT_MS
        )
        if swapped:
            # Focus lands on the new pair once htmx settles it, so the next key press works.
            try:
                expect(self.page.locator("#pair")).to_be_focused(timeout=WAIT_MS)
            except AssertionError as error:
                where = self.page.evaluate(
                    "() => [document.activeElement && (document.activeElement.id ||"
                    " document.activeElement.tagName), document.hasFocus()]"
                )
                raise AssertionError(f"{error}\nfocus on, page focused: {where}") from None

    def left_text(self) -> str:
        return self.page.locator('[data-side="left"] .response-body').inner_text()

    def shown_pair(self) -> int:
        return int(self.page.get_attribute("#pair", "data-comparison") or 0)


@pytest.fixture
def open_session(browser: Browser, live_server: LiveServer) -> Iterator[Callable[..., Session]]:
    contexts = []

    def open_(user: User, path: str, viewport: ViewportSize | None = None) -> Session:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        contexts.append(context)
        session = Session(context.new_page())
        session.login(live_server.url, user, path)
        return session

    yield open_
    for context in contexts:
        context.close()
