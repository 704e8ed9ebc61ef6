"""The production image's own commands, run outside Docker (no engine here): the Dockerfile's
static-files step and its gunicorn command with DEBUG off, the compose file's migrate, then
real HTTP against several gunicorn workers. And `check --deploy` under production settings.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.factories import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
VENV_BIN = Path(sys.executable).parent


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _image_env() -> dict[str, str]:
    """The environment the image sets (ENV), as it would be in the container."""
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A container's environment: the image's ENV with its paths moved under tmp_path, no
    DEBUG (the image has no .env: DEBUG=0 says so to this checkout's settings), the
    deployment's SECRET_KEY, and no service this test does not name."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(_image_env())
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        PREFLOOP_DATA_DIR=str(tmp_path / "data"),
        PREFLOOP_STATIC_ROOT=str(tmp_path / "static"),
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
    )
    env.update(extra)
    return env


def _run(command: str | list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        command,
        shell=isinstance(command, str),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """HTTP with cookies, redirects not followed: what one browser tab sends."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        headers = {"Referer": self.base + path}
        request = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace"), dict(error.headers)

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.cookies if c.name == name)

    def post_form(self, path: str, data: dict[str, str]) -> tuple[int, str, dict]:
        return self.request(path, {**data, "csrfmiddlewaretoken": self.cookie("csrftoken")})


def _concurrently(tab: Browser, count: int) -> list[tuple[int, str]]:
    """(status, where it redirects) of `count` GETs of the home page, six at a time."""
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: tab.request("/"), range(count)))
    return [(status, headers.get("Location", "")[:7]) for status, _, headers in answers]


def _redis_url() -> str:
    """A Redis database of this machine's Redis for the shared cache (CI's broker's server)."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        if os.environ.get("PREFLOOP_REQUIRE_SERVICES") == "1":
            pytest.fail("PREFLOOP_REQUIRE_SERVICES=1 but CELERY_BROKER_URL is not Redis")
        pytest.skip("no Redis here (CELERY_BROKER_URL is not redis://)")
    return broker.rsplit("/", 1)[0] + "/14"


# Sessions in the database (no CACHE_URL), or read from a Redis cache shared by the workers.
@pytest.fixture(scope="module", params=["database", "redis"])
def deployed(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The image's build step, the compose file's migrate, a user, then the image's CMD."""
    tmp_path = tmp_path_factory.mktemp("deployed")
    extra = {"CACHE_URL": _redis_url()} if request.param == "redis" else {}
    env = _production_env(tmp_path, **extra)
    (tmp_path / "data").mkdir()  # the image makes its data folder (a volume in compose)
    build = [rest for keyword, rest in _dockerfile_instructions() if "collectstatic" in rest]
    assert len(build) == 1, "the Dockerfile collects the static files in one RUN"
    _run(build[0], env)
    compose = yaml.safe_load(COMPOSE.read_text())
    _run(compose["services"]["migrate"]["command"], env)
    _run(
        [
            "python",
            "manage.py",
            "shell",
            "-c",
            "from django.contrib.auth.models import User; "
            "User.objects.create_user('ann', password='a-long-passphrase')",
        ],
        env,
    )
    cmd = json.loads(next(rest for keyword, rest in _dockerfile_instructions() if keyword == "CMD"))
    port = _free_port()
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    assert cmd[0] == "gunicorn" and int(cmd[cmd.index("--workers") + 1]) >= 2
    server = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/login/", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_it_serves_pages_and_hashed_static_files_with_debug_off(deployed: str) -> None:
    tab = Browser(deployed)
    status, page, _ = tab.request("/login/")
    assert status == 200
    # Whitenoise's manifest names: the build step wrote them with DEBUG off.
    favicon = re.search(r'href="(/static/favicon\.[0-9a-f]{12}\.svg)"', page)
    assert favicon, "the page links the hashed favicon"
    assert tab.request(favicon.group(1))[0] == 200
    assert tab.request("/login/")[0] == 200


def test_it_ends_a_session_on_every_gunicorn_worker_at_logout(deployed: str) -> None:
    tab = Browser(deployed)
    tab.request("/login/")
    status, _, _ = tab.post_form("/login/", {"username": "ann", "password": "a-long-passphrase"})
    assert status == 302, "logged in"
    # The cookie works on every worker: requests six at a time keep all three busy, so each
    # serves some (one at a time, the kernel hands most connections to one worker)...
    assert _concurrently(tab, 60) == [(200, "")] * 60
    session = tab.cookie("sessionid")
    status, _, _ = tab.post_form("/logout/", {})
    assert status == 302
    # ... and after the logout, the old cookie works on none of them.
    stale = Browser(deployed)
    stale.cookies.set_cookie(
        http.cookiejar.Cookie(
            0, "sessionid", session, None, False, "127.0.0.1", False, False,
            "/", True, False, None, False, None, None, {},
        )
    )  # fmt: skip
    assert _concurrently(stale, 60) == [(302, "/login/")] * 60


def test_check_deploy_passes_clean_under_production_settings_behind_tls(tmp_path: Path) -> None:
    env = _production_env(
        tmp_path, HTTPS="1", ALLOWED_HOSTS="prefloop.example", PROXY_SSL_HEADER="X-Forwarded-Proto"
    )
    result = subprocess.run(
        ["python", "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (1 silenced)." in result.stdout + result.stderr


def _compose_services() -> dict[str, dict]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_compose_file_pins_its_images_and_bakes_in_no_secret() -> None:
    for name, service in _compose_services().items():
        image = service.get("image", "")
        if "build" in service:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: pin {image!r} to a version"
    secret_words = re.compile(r"SECRET|PASSWORD|TOKEN|KEY", re.IGNORECASE)
    for name, service in _compose_services().items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if secret_words.search(key):
                assert value.startswith("${") and ":?" in value, (
                    f"{name}: {key} from the environment"
                )
            # A URL with a password: the password part comes from the environment.
            credentials = re.match(r"^\w+://[^/@:]+:([^@]+)@", value)
            if credentials:
                assert credentials.group(1).startswith("${"), f"{name}: {key} holds a password"


def test_the_image_runs_as_a_user_and_its_commands_use_the_settings_that_exist() -> None:
    users = [rest for keyword, rest in _dockerfile_instructions() if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    base = next(rest for keyword, rest in _dockerfile_instructions() if keyword == "FROM")
    assert ":" in base and not base.endswith(":latest")
    # Every service that runs the image names only queues the settings route to.
    queues = {"default", "gpu"}
    for name, service in _compose_services().items():
        command = service.get("command") or []
        if "-Q" in command:
            assert set(command[command.index("-Q") + 1].split(",")) <= queues, name
