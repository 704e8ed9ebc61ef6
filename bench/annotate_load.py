"""Annotation throughput over real HTTP: simulated annotators against gunicorn.

Each annotator logs in through /login/, acknowledges the guidelines once (the first pair's
banner asks for it), then judges with no think time. "next" = GET
/p/<slug>/annotate/ with HX-Request (the #pair partial); "submit" = POST of that partial's
judge form, answered by the next pair's partial. --flow browser (the default) does what the
page does: it GETs a pair once, then judges each pair the submit's answer swaps in, so one
request per judgment (a GET again only after "nothing left"). --flow separate GETs the pair
before every submit (a refresh before each judgment), two requests per judgment. Both
requests are timed separately. A fresh database (PostgreSQL database --pg-database, or an
SQLite file in a temp dir) is filled through the app's services, gunicorn serves it with
DEBUG off, and after the run the invariants are checked in the database. Exit status 1 when
an invariant fails.

Target (32 annotators, this 2-core machine): PostgreSQL >= 200 judgments/s with p99 <= 150 ms
for next and for submit; SQLite >= 25 judgments/s; the invariants hold exactly on both.

python bench/annotate_load.py [--db postgres|sqlite] [--annotators 32] [--duration 20]
    [--comparisons 6000] [--overlap 2] [--workers 3] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_SLUG = "load-bench"
CHOICES = ("left", "right", "tie")
SETUP_MARKER = "BENCH-SETUP-RESULT "
# Stated for 32 annotators: (judgments/s at least, p99 per request at most or None).
TARGETS: dict[str, tuple[float, float | None]] = {
    "postgres": (200.0, 150.0),
    "sqlite": (25.0, None),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Realistic text (setup only) ----------------------------------------------------------------

VOCABULARY = (
    "the a of to and in is that for it with as on be this by are or can you your not when "
    "more than one most time make use first also some into what which about other only new "
    "water sleep budget garden recipe python function memory request network training model "
    "value result example problem reason approach option step detail practice routine cost "
    "usually often better simple careful quick important common useful clear small large "
    "easy hard safe early later consider avoid keep start check choose measure compare "
    "explain improve prepare reduce remember write read learn follow build test change"
)
WORDS = VOCABULARY.split()
TOPICS = [
    "How do I keep my houseplants healthy through the winter?",
    "Explain the difference between a process and a thread.",
    "Plan a three-day trip to Lisbon on a modest budget.",
    "Write a polite email asking a landlord to fix the heating.",
    "What is compound interest, and why does it matter for savings?",
    "How should I prepare for a technical job interview?",
    "Give me a beginner's weekly running plan.",
    "How do I read a large CSV file in Python without running out of memory?",
    "Why is the sky blue? Explain it to a curious twelve-year-old.",
    "Compare renting and buying a home for someone who may move in three years.",
]
GUIDELINES = """# How to judge

Prefer the response that **answers the question that was asked**, correctly and completely.

- Correctness first: a confident wrong answer is worse than a hedged right one.
- Then helpfulness: concrete steps, examples and numbers beat generic advice.
- Then clarity: structure helps, padding does not. Longer is not better by itself.

Choose *tie* when both are equally good, *both bad* when neither is acceptable.
"""


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
    if rng.random() < 0.3:
        i = rng.randrange(len(words))
        words[i] = rng.choice((f"**{words[i]}**", f"*{words[i]}*", f"`{words[i]}()`"))
    return " ".join(words).capitalize() + "."


def response_text(rng: random.Random) -> str:
    """A few markdown paragraphs (sometimes a list or a code block) of 500-1500 characters."""
    target = rng.randint(500, 1500)
    blocks: list[str] = []
    while sum(len(b) + 2 for b in blocks) < target:
        kind = rng.random()
        if kind < 0.6 or not blocks:
            blocks.append(" ".join(_sentence(rng) for _ in range(rng.randint(2, 4))))
        elif kind < 0.85:
            blocks.append("\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(3, 5))))
        else:
            name = rng.choice(WORDS)
            blocks.append(f"```python\ndef {name}_step(value):\n    return value * 2\n```")
    text = "\n\n".join(blocks)
    return text[:1500].rsplit(" ", 1)[0] if len(text) > 1500 else text


def setup_database(spec: dict[str, Any]) -> dict[str, Any]:
    """Migrate, collect static files, then create the project, users and comparisons.

    Runs in a subprocess with DJANGO_SETTINGS_MODULE set, so the load generator stays light.
    """
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction

    from annotate.models import Role
    from annotate.services.comparisons import comparison_create
    from annotate.services.projects import membership_set, project_create
    from annotate.services.prompts import (
        PromptInput,
        ResponseInput,
        policy_create,
        prompts_create,
        responses_create,
    )

    call_command("migrate", interactive=False, verbosity=0)
    # DEBUG is off: the login page's {% static %} needs the manifest (in the temp data dir).
    call_command("collectstatic", interactive=False, verbosity=0)
    rng = random.Random(spec["seed"])
    usernames = [f"bench-annotator-{i:03d}" for i in range(spec["annotators"])]
    hashed = make_password(spec["password"])  # one hash for all: PBKDF2 is slow on purpose
    with transaction.atomic():
        User.objects.bulk_create([User(username=name, password=hashed) for name in usernames])
        project = project_create(
            name="Load bench", slug=PROJECT_SLUG, guidelines=GUIDELINES, overlap=spec["overlap"]
        )
        for user in User.objects.filter(username__in=usernames):
            membership_set(project=project, user=user, role=Role.ANNOTATOR)
        prompts_create(
            project=project,
            rows=[
                PromptInput(messages=f"{rng.choice(TOPICS)} {_sentence(rng)}", source="bench")
                for _ in range(spec["comparisons"])
            ],
        )
        prompts = list(project.prompts.order_by("id"))
        sides = []
        for name in ("bench-policy-a", "bench-policy-b"):
            policy = policy_create(project=project, name=name)
            responses_create(
                policy=policy,
                rows=[
                    ResponseInput(
                        prompt_id=prompt.pk,
                        text=response_text(rng),
                        generation_params={"temperature": 0.8},
                    )
                    for prompt in prompts
                ],
            )
            sides.append(list(policy.responses.order_by("prompt_id")))
        for prompt, response_a, response_b in zip(prompts, *sides, strict=True):
            response_a.prompt = response_b.prompt = prompt
            comparison_create(
                response_a=response_a,
                response_b=response_b,
                round_number=1,
                pairing_strategy="bench",
                rng=rng,
            )
    if connection.vendor == "postgresql":
        # What autovacuum does within a minute of a bulk load: planner statistics.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return {"project_id": project.pk, "slug": project.slug, "usernames": usernames}


# A minimal HTTP/1.1 client over asyncio streams ---------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]  # names in lower case
    body: bytes

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key == name), "")


class HttpSession:
    """One browser: a cookie jar and at most one connection, kept alive when the server allows.

    A request on a reused connection that the server had already closed is sent again once on
    a fresh one (safe here: a submit carries its idempotency key).
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.cookies: dict[str, str] = {}
        self.connects = 0
        self.resends = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> HttpResponse:
        body = urllib.parse.urlencode(form).encode() if form is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if form is not None:
            lines.append("Content-Type: application/x-www-form-urlencoded")
        if method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return await asyncio.wait_for(self._exchange(method, raw), self.timeout_s)

    async def _exchange(self, method: str, raw: bytes) -> HttpResponse:
        while True:
            reused = self._writer is not None
            try:
                if not reused:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                    self.connects += 1
                assert self._reader is not None and self._writer is not None
                self._writer.write(raw)
                await self._writer.drain()
                try:
                    head = await self._reader.readuntil(b"\r\n\r\n")
                except (ConnectionError, asyncio.IncompleteReadError) as error:
                    nothing = (
                        not isinstance(error, asyncio.IncompleteReadError) or not error.partial
                    )
                    if reused and nothing:
                        self.close()
                        self.resends += 1
                        continue
                    raise
                return await self._read_rest(method, head)
            except BaseException:
                # Also on a timeout's cancellation: a half-read answer must not be read later.
                self.close()
                raise

    async def _read_rest(self, method: str, head: bytes) -> HttpResponse:
        assert self._reader is not None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        headers = []
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        response = HttpResponse(int(status), headers, b"")
        length = response.header("content-length")
        keep_alive = version == "HTTP/1.1" and "close" not in response.header("connection").lower()
        if method == "HEAD" or response.status in (204, 304) or response.status < 200:
            pass
        elif "chunked" in response.header("transfer-encoding").lower():
            chunks = []
            while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append((await self._reader.readexactly(size + 2))[:-2])
            while await self._reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            response.body = b"".join(chunks)
        elif length:
            response.body = await self._reader.readexactly(int(length))
        else:
            response.body = await self._reader.read()
            keep_alive = False
        for name, value in headers:
            if name == "set-cookie":
                cookie, _, attributes = value.partition(";")
                key, _, val = cookie.strip().partition("=")
                if val and "max-age=0" not in attributes.lower().replace(" ", ""):
                    self.cookies[key] = val
                else:
                    self.cookies.pop(key, None)
        if not keep_alive:
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            # The FIN goes now, as a browser's does on reading a "Connection: close" answer:
            # close() alone waits for the event loop's next turn, and gunicorn's sync worker
            # lingers until the client has closed (RFC 9112 9.6), idle meanwhile.
            with contextlib.suppress(OSError):
                self._writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            self._writer.close()
        self._reader = self._writer = None


# The #pair partial ----------------------------------------------------------------------------

TAG_RE = re.compile(r"<(section|form|input)\b([^>]*)>|</form\s*>", re.IGNORECASE)
ATTR_RE = re.compile(r"""([\w:-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")


def _attributes(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
        for m in ATTR_RE.finditer(text)
    }


@dataclass(frozen=True)
class PairPage:
    comparison_id: int | None  # None: nothing left to judge
    action: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # the judge form's hidden inputs


def pair_parse(body: bytes) -> PairPage:
    """The comparison shown and the judge form of a #pair partial (attribute order free)."""
    text = body.decode("utf-8", "replace")
    comparison_id: int | None = None
    seen_pair = False
    form: dict[str, str] | None = None
    forms: list[tuple[dict[str, str], dict[str, str]]] = []
    for match in TAG_RE.finditer(text):
        tag = (match.group(1) or "/form").lower()
        attrs = _attributes(match.group(2) or "")
        if tag == "section" and attrs.get("id") == "pair":
            seen_pair = True
            value = attrs.get("data-comparison", "").strip()
            comparison_id = int(value) if value.isdigit() else None
        elif tag == "form":
            form = {}
            forms.append((attrs, form))
        elif tag == "/form":
            form = None
        elif form is not None and attrs.get("type", "").lower() == "hidden" and "name" in attrs:
            form[attrs["name"]] = attrs.get("value", "")
    if not seen_pair:
        raise ValueError("no <section id=pair> in the response")
    if comparison_id is None:
        return PairPage(None)
    for attrs, inputs in forms:
        action = attrs.get("action") or attrs.get("hx-post", "")
        if attrs.get("id") == "judge-form" or action.rstrip("/").endswith("/judge"):
            if "csrfmiddlewaretoken" not in inputs:
                raise ValueError("the judge form has no csrfmiddlewaretoken")
            return PairPage(comparison_id, action, inputs)
    raise ValueError("no judge form in the #pair partial")


# Annotators -----------------------------------------------------------------------------------


@dataclass
class Sample:
    kind: str  # "next" or "submit"
    finished: float
    elapsed_s: float
    outcome: str  # HTTP status, or the transport error's class name


@dataclass
class Submit:
    key: str
    username: str
    comparison_id: int
    outcome: str
    new_pair: bool


@dataclass
class RunLog:
    samples: list[Sample] = field(default_factory=list)
    submits: list[Submit] = field(default_factory=list)
    empty: list[float] = field(default_factory=list)  # when "next" answered "nothing left"
    sessions: list[HttpSession] = field(default_factory=list)


async def _timed(
    run: RunLog, kind: str, session: HttpSession, method: str, path: str, **kw: Any
) -> tuple[HttpResponse | None, Sample]:
    started = time.perf_counter()
    response: HttpResponse | None = None
    try:
        response = await session.request(method, path, **kw)
        outcome = str(response.status)
    except (
        TimeoutError,
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ValueError,
    ) as error:
        outcome = type(error).__name__
    finished = time.perf_counter()
    sample = Sample(kind, finished, finished - started, outcome)
    run.samples.append(sample)
    return response, sample


async def annotator_login(session: HttpSession, username: str, password: str) -> None:
    page = await session.request("GET", "/login/")
    token = session.cookies.get("csrftoken", "")
    if page.status != 200 or not token:
        raise RuntimeError(f"GET /login/ answered {page.status} without a csrftoken cookie")
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": ""}
    answer = await session.request("POST", "/login/", form=form)
    if answer.status != 302 or "sessionid" not in session.cookies:
        raise RuntimeError(f"login of {username} answered {answer.status}, not a redirect")
    # What the banner on a first visit asks for: the annotator has read the guidelines (G).
    token = session.cookies.get("csrftoken", "")
    seen = await session.request(
        "POST",
        f"/p/{PROJECT_SLUG}/annotate/guidelines-seen/",
        form={"version": "1", "csrfmiddlewaretoken": token},
    )
    if seen.status not in (200, 302):
        raise RuntimeError(f"guidelines-seen of {username} answered {seen.status}")


async def annotator_cycle(
    run: RunLog,
    session: HttpSession,
    username: str,
    rng: random.Random,
    stop_at: float,
    empty_poll_s: float,
    flow: str,
    think_s: tuple[float, float] | None = None,
) -> None:
    """Judge until `stop_at`; with `think_s`, read each pair for that many seconds (uniform)
    before submitting, as a person does (bench/soak.py)."""
    next_path = f"/p/{PROJECT_SLUG}/annotate/"
    htmx = {"HX-Request": "true"}
    carried: PairPage | None = None  # the next pair a submit's answer already carries
    while time.perf_counter() < stop_at:
        if carried is not None and carried.comparison_id is not None:
            page, carried = carried, None
        else:
            response, sample = await _timed(run, "next", session, "GET", next_path, headers=htmx)
            try:
                if response is None or response.status != 200:
                    raise ValueError(sample.outcome)
                page = pair_parse(response.body)
            except ValueError:
                if sample.outcome == "200":
                    sample.outcome = "200 unparsable"
                await asyncio.sleep(0.05)  # no think time, but no hot loop on errors either
                continue
        if page.comparison_id is None:
            # As the browser's empty state does (hx-trigger "every 5s"): wait, then ask again.
            run.empty.append(time.perf_counter())
            await asyncio.sleep(min(empty_poll_s, max(0.0, stop_at - time.perf_counter())))
            continue
        if think_s is not None:
            await asyncio.sleep(min(rng.uniform(*think_s), max(0.0, stop_at - time.perf_counter())))
            if time.perf_counter() >= stop_at:
                break
        key = page.fields.get("idempotency_key", "")
        form = {**page.fields, "choice": rng.choice(CHOICES)}
        headers = {**htmx, "X-CSRFToken": page.fields["csrfmiddlewaretoken"]}
        response, sample = await _timed(
            run, "submit", session, "POST", page.action, headers=headers, form=form
        )
        new_pair = False
        if response is not None and response.status == 200:
            with contextlib.suppress(ValueError):
                answer = pair_parse(response.body)
                new_pair = answer.comparison_id not in (None, page.comparison_id)
                # The browser judges the pair the answer swapped in; "separate" asks again.
                if flow == "browser" and new_pair:
                    carried = answer
        run.submits.append(Submit(key, username, page.comparison_id, sample.outcome, new_pair))
        if response is None or response.status != 200:
            await asyncio.sleep(0.05)


async def load_run(
    *,
    port: int,
    usernames: list[str],
    password: str,
    seed: int,
    warmup_s: float,
    duration_s: float,
    timeout_s: float,
    empty_poll_s: float,
    flow: str,
    cpu_probe: Callable[[], dict[str, float]],
) -> tuple[RunLog, float, float, dict[str, float]]:
    """Log everyone in, then cycle; returns the log and the measured window's bounds."""
    run = RunLog(sessions=[HttpSession("127.0.0.1", port, timeout_s) for _ in usernames])
    # Logging in hashes the password (PBKDF2, CPU-heavy on purpose): a few at a time, unhurried.
    logins = asyncio.Semaphore(2)

    async def login(session: HttpSession, username: str) -> None:
        async with logins:
            session.timeout_s = max(timeout_s, 120.0)
            await annotator_login(session, username, password)
            session.timeout_s = timeout_s

    await asyncio.gather(*(login(s, u) for s, u in zip(run.sessions, usernames, strict=True)))
    for session in run.sessions:
        session.connects = session.resends = 0
    began = time.perf_counter()
    window_start = began + warmup_s
    window_end = window_start + duration_s
    cpu: dict[str, float] = {}

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        before = cpu_probe()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        cpu.update(cpu_cores(before, cpu_probe(), duration_s))

    await asyncio.gather(
        meter(),
        *(
            annotator_cycle(
                run, session, name, random.Random(f"{seed}-{i}"), window_end, empty_poll_s, flow
            )
            for i, (session, name) in enumerate(zip(run.sessions, usernames, strict=True))
        ),
    )
    for session in run.sessions:
        session.close()
    return run, window_start, window_end, cpu


def cpu_probe_make(gunicorn_pid: int, pg_database: str) -> Callable[[], dict[str, float]]:
    """CPU seconds so far of the machine, this process, gunicorn and our PostgreSQL backends.

    The machine is shared: whatever else runs shows up as "other" in `cpu_cores`.
    """
    tick = os.sysconf("SC_CLK_TCK")
    backend_tag = f" {pg_database} ".encode()

    def probe() -> dict[str, float]:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        jiffies = [float(v) for v in first.split()[1:9]]  # user .. steal; guest is in user
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = {
            "machine_all": sum(jiffies) / tick,
            "machine_busy": (sum(jiffies) - jiffies[3] - jiffies[4]) / tick,
            "machine_steal": jiffies[7] / tick,  # taken by the hypervisor for other guests
            "load_generator": usage.ru_utime + usage.ru_stime,
        }
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
                fields = rest.split()
                pid, ppid = int(entry.name), int(fields[1])
                group = ""
                if gunicorn_pid in (pid, ppid):
                    group = "gunicorn"
                elif (
                    pg_database
                    and comm == "postgres"
                    and backend_tag in (entry / "cmdline").read_bytes()
                ):
                    group = "postgres"
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if group:
                key = f"{group}:{pid}"
                seconds[key] = (int(fields[11]) + int(fields[12])) / tick
        return seconds

    return probe


def cpu_cores(
    before: dict[str, float], after: dict[str, float], window_s: float
) -> dict[str, float]:
    """Mean cores busy over the window, by who (a process new in the window counts from 0)."""
    used = {key: value - before.get(key, 0.0) for key, value in after.items()}
    cores = {
        "machine": used.pop("machine_all") / window_s,
        "busy": used.pop("machine_busy") / window_s,
        "steal": used.pop("machine_steal") / window_s,
        "load_generator": used.pop("load_generator") / window_s,
        "gunicorn": 0.0,
        "postgres": 0.0,
    }
    for key, value in used.items():
        cores[key.split(":", 1)[0]] += value / window_s
    ours = cores["load_generator"] + cores["gunicorn"] + cores["postgres"]
    cores["other"] = cores["busy"] - cores["steal"] - ours
    return cores


# Server and database ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_admin(base_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextlib.contextmanager
def database_fresh(args: argparse.Namespace) -> Iterator[str]:
    """A DATABASE_URL for a new, empty database ("" for the SQLite default), dropped after."""
    if args.db == "sqlite":
        yield ""
        return
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.pg_database):
        raise SystemExit(f"--pg-database {args.pg_database!r}: use [a-z0-9_] only")
    base = args.pg_url.rstrip("/")
    _pg_admin(base, f"DROP DATABASE IF EXISTS {args.pg_database} WITH (FORCE)")
    _pg_admin(base, f"CREATE DATABASE {args.pg_database}")
    try:
        yield f"{base}/{args.pg_database}"
    finally:
        if not args.keep:
            _pg_admin(base, f"DROP DATABASE IF EXISTS {args.pg_database} WITH (FORCE)")


def app_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PREFLOOP_DATA_DIR"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        PREFLOOP_DATA_DIR=str(data_dir),
        LOG_LEVEL=env.get("LOG_LEVEL", "WARNING"),
        PYTHONPATH=str(REPO_ROOT),
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def gunicorn_command(args: argparse.Namespace, port: int) -> list[str]:
    # The gunicorn of the environment this script runs in (so the same interpreter serves).
    gunicorn = Path(sys.executable).parent / "gunicorn"
    executable = str(gunicorn) if gunicorn.exists() else (shutil.which("gunicorn") or "gunicorn")
    worker_class = args.worker_class or ("gthread" if args.threads > 1 else "sync")
    return [
        executable,
        "config.wsgi:application",
        f"--bind=127.0.0.1:{port}",
        f"--workers={args.workers}",
        f"--worker-class={worker_class}",
        f"--threads={args.threads}",
        "--timeout=60",
        "--graceful-timeout=10",
    ]


@contextlib.contextmanager
def gunicorn_running(
    command: list[str], port: int, env: dict[str, str], log_path: Path
) -> Iterator[int]:
    """gunicorn answering on its port (yields the master's pid); always stopped on the way out."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not _answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"gunicorn did not come up:\n{tail}")
                time.sleep(0.2)
            yield process.pid
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _answers(port: int) -> bool:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/login/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


# {p}: the project id. {vote}: "this judgment row is a live vote" (the schema grew judgment
# kinds and undo; on a schema without them every row is a vote). {plain}: not a gold item
# (gold votes are uncapped) and not decided by an adjudication.
INVARIANT_SQL = {
    "duplicates": """
        SELECT COUNT(*) FROM (
            SELECT j.annotator_id, j.comparison_id FROM annotate_judgment j
            JOIN annotate_comparison c ON c.id = j.comparison_id
            WHERE c.project_id = {p} AND {vote}
            GROUP BY j.annotator_id, j.comparison_id HAVING COUNT(*) > 1) AS d""",
    "over_overlap": """
        SELECT COUNT(*) FROM (
            SELECT j.comparison_id FROM annotate_judgment j
            JOIN annotate_comparison c ON c.id = j.comparison_id
            JOIN annotate_project pr ON pr.id = c.project_id
            WHERE c.project_id = {p} AND {vote} AND {plain}
            GROUP BY j.comparison_id, pr.overlap HAVING COUNT(*) > pr.overlap) AS o""",
    "judgment_count_mismatches": """
        SELECT COUNT(*) FROM annotate_comparison c
        LEFT JOIN (SELECT j.comparison_id, COUNT(*) AS n FROM annotate_judgment j
                   WHERE {vote} GROUP BY j.comparison_id) v ON v.comparison_id = c.id
        WHERE c.project_id = {p} AND c.judgment_count <> COALESCE(v.n, 0)""",
    "status_mismatches": """
        SELECT COUNT(*) FROM annotate_comparison c
        JOIN annotate_project pr ON pr.id = c.project_id
        WHERE c.project_id = {p} AND c.status <> 'retired' AND {plain}
          AND (CASE WHEN c.status = 'complete' THEN 1 ELSE 0 END)
           <> (CASE WHEN c.judgment_count >= pr.overlap THEN 1 ELSE 0 END)""",
    # Complete, and its votes have one most voted choice, yet no pair (a split is undecided:
    # no pair until an adjudication or another vote, annotate/services/pairs.py).
    "decided_without_pair": """
        SELECT COUNT(*) FROM annotate_comparison c
        LEFT JOIN annotate_preferencepair pp ON pp.comparison_id = c.id
        WHERE c.project_id = {p} AND c.status = 'complete' AND c.gold_choice = ''
          AND pp.id IS NULL
          AND 1 = (SELECT COUNT(*) FROM (
                SELECT COUNT(*) AS n FROM annotate_judgment j
                WHERE j.comparison_id = c.id AND {vote} GROUP BY j.choice) AS t
              WHERE t.n = (SELECT MAX(m.n) FROM (
                SELECT COUNT(*) AS n FROM annotate_judgment j
                WHERE j.comparison_id = c.id AND {vote} GROUP BY j.choice) AS m))""",
}
OPEN_SLOTS_SQL = """
    SELECT COALESCE(SUM(pr.overlap - c.judgment_count), 0) FROM annotate_comparison c
    JOIN annotate_project pr ON pr.id = c.project_id
    WHERE c.project_id = {p} AND c.status = 'open' AND c.gold_choice = ''"""
ROWS_SQL = """
    SELECT j.idempotency_key, u.username, j.comparison_id FROM annotate_judgment j
    JOIN annotate_comparison c ON c.id = j.comparison_id
    JOIN auth_user u ON u.id = j.annotator_id WHERE c.project_id = {p}"""


def database_query(database_url: str, data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    if database_url:
        import psycopg

        with psycopg.connect(database_url) as conn:
            return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]
    import sqlite3

    with contextlib.closing(sqlite3.connect(data_dir / "prefloop.sqlite3")) as conn:
        return conn.execute(sql).fetchall()


def schema_filters(database_url: str, data_dir: Path) -> dict[str, str]:
    """The {vote} and {plain} conditions of the SQL above for this database's schema."""
    if database_url:
        sql = "SELECT column_name FROM information_schema.columns WHERE table_name = '{t}'"
    else:
        sql = "SELECT name FROM pragma_table_info('{t}')"
    rows = database_query(database_url, data_dir, sql.format(t="annotate_judgment"))
    filters = {"vote": "1 = 1", "plain": "c.gold_choice = ''"}
    if {"kind", "superseded_at"} <= {row[0] for row in rows}:
        filters["vote"] = "j.kind = 'vote' AND j.superseded_at IS NULL"
        filters["plain"] += (
            " AND NOT EXISTS (SELECT 1 FROM annotate_judgment a WHERE a.comparison_id = c.id"
            " AND a.kind = 'adjudication' AND a.superseded_at IS NULL)"
        )
    return filters


def invariants_check(
    run: RunLog, database_url: str, data_dir: Path, project_id: int
) -> dict[str, Any]:
    """Judgment rows against what the clients saw, and the counters against the rows."""
    rows = database_query(database_url, data_dir, ROWS_SQL.format(p=int(project_id)))
    by_key = {key: (user, comparison) for key, user, comparison in rows}
    ok = {s.key: s for s in run.submits if s.outcome == "200"}
    # A submit without an answer (timeout, reset) may or may not have been written.
    unanswered = {s.key for s in run.submits if not s.outcome.isdigit()}
    result: dict[str, Any] = {
        "judgment_rows": len(rows),
        "client_successes": len(ok),
        "lost": sum(1 for key in ok if key not in by_key),
        "phantom": sum(1 for key in by_key if key not in ok and key not in unanswered),
        "unconfirmed": sum(1 for key in by_key if key in unanswered),
        "mismatched": sum(
            1
            for key, s in ok.items()
            if key in by_key and by_key[key] != (s.username, s.comparison_id)
        ),
    }
    filters = schema_filters(database_url, data_dir)
    for name, sql in INVARIANT_SQL.items():
        query = sql.format(p=int(project_id), **filters)
        result[name] = int(database_query(database_url, data_dir, query)[0][0])
    result["ok"] = all(
        v == 0
        for k, v in result.items()
        if k not in {"judgment_rows", "client_successes", "unconfirmed"}
    )
    return result


# Figures --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def figures(run: RunLog, window_start: float, window_end: float) -> dict[str, Any]:
    duration = window_end - window_start
    inside = [s for s in run.samples if window_start <= s.finished < window_end]
    latency: dict[str, dict[str, float]] = {}
    for kind in ("next", "submit"):
        values = sorted(s.elapsed_s * 1000 for s in inside if s.kind == kind)
        latency[kind] = {
            "n": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "p99_ms": percentile(values, 99),
            "max_ms": values[-1] if values else float("nan"),
        }
    judged = sum(1 for s in inside if s.kind == "submit" and s.outcome == "200")
    ok_submits = [s for s in run.submits if s.outcome == "200"]
    errors = Counter(f"{s.kind} {s.outcome}" for s in run.samples if s.outcome != "200")
    connects = sum(s.connects for s in run.sessions)
    return {
        "judgments_per_s": judged / duration,
        "judgments_in_window": judged,
        "window_s": duration,
        "requests_in_window": {k: v["n"] for k, v in latency.items()},
        "requests_total": dict(Counter(s.kind for s in run.samples)),
        "latency": latency,
        "submits_with_new_pair": sum(s.new_pair for s in ok_submits),
        "submits_ok_total": len(ok_submits),
        "errors": dict(sorted(errors.items())),
        "connections_opened": connects,
        "resends_on_stale_connection": sum(s.resends for s in run.sessions),
        "empty_next_answers": len(run.empty),
        "empty_next_answers_in_window": sum(1 for t in run.empty if window_start <= t < window_end),
    }


def target_verdict(db: str, annotators: int, result: dict[str, Any]) -> dict[str, Any]:
    rate, p99_max = TARGETS[db]
    lat = result["latency"]
    checks = {"rate": result["judgments_per_s"] >= rate}
    if p99_max is not None:
        # Under --flow browser no "next" request falls in the window: each submit's answer is
        # the next pair, so the submit's latency is the whole next + submit cycle's.
        for kind in ("next", "submit"):
            if lat[kind]["n"] or kind == "submit":
                checks[f"p99_{kind}"] = lat[kind]["p99_ms"] <= p99_max
    checks["invariants"] = bool(result["invariants"]["ok"])
    # Every annotator had a pair to judge all along: an annotator told "nothing left" polls
    # instead, and the figures would be those of fewer annotators.
    checks["work_left"] = (
        result["open_slots_left"] > 0 and result["empty_next_answers_in_window"] == 0
    )
    return {
        "min_judgments_per_s": rate,
        "max_p99_ms": p99_max,
        "stated_for_annotators": 32,
        "applies": annotators == 32,
        "checks": checks,
        "pass": all(checks.values()),
    }


def report_print(result: dict[str, Any]) -> None:
    cfg, inv, tgt = result["config"], result["invariants"], result["target"]
    print(
        f"annotate load: {cfg['db']}"
        + (f" (sessions cached in {cfg['cache_url']})" if cfg.get("cache_url") else "")
        + f", {cfg['annotators']} annotators, {cfg['gunicorn']}; "
        f"{cfg['comparisons']} comparisons x overlap {cfg['overlap']}; "
        f"warm-up {cfg['warmup_s']:g} s, measured {result['window_s']:.1f} s"
    )
    print(
        f"judgments/s      {result['judgments_per_s']:.1f}  "
        f"({result['judgments_in_window']} successful submits in the window)"
    )
    for kind, lat in result["latency"].items():
        print(
            f"{kind:6s} latency  n={lat['n']:<6d} p50 {lat['p50_ms']:7.1f}  "
            f"p95 {lat['p95_ms']:7.1f}  p99 {lat['p99_ms']:7.1f}  max {lat['max_ms']:7.1f} ms"
        )
    total = result["requests_total"]
    print(
        f"requests total   next {total.get('next', 0)}, submit {total.get('submit', 0)} "
        "(incl. warm-up and drain)"
    )
    ok = result["submits_ok_total"]
    share = result["submits_with_new_pair"] / ok if ok else float("nan")
    print(f"submits answered with a new pair: {result['submits_with_new_pair']}/{ok} ({share:.1%})")
    errors = ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "none"
    print(f"errors           {errors}")
    print(
        f"connections      {result['connections_opened']} opened after login, "
        f"{result['resends_on_stale_connection']} resends on stale keep-alive"
    )
    cpu = result["cpu"]
    postgres = f", postgres {cpu['postgres']:.2f}" if cfg["db"] == "postgres" else ""
    print(
        f"CPU in window    {cpu['busy']:.2f} of {cpu['machine']:.1f} cores busy: gunicorn "
        f"{cpu['gunicorn']:.2f}{postgres}, load generator {cpu['load_generator']:.2f}, "
        f"other (not this bench) {cpu['other']:.2f}, steal {cpu['steal']:.2f}"
    )
    if cpu["other"] > 0.25:
        print(
            f"shared machine   other processes used {cpu['other']:.2f} cores during the window: "
            "these figures understate the app"
        )
    if result["empty_next_answers"]:
        print(
            f"nothing left     {result['empty_next_answers']} next answers said so "
            f"({result['empty_next_answers_in_window']} in the window; each costs "
            f"{cfg['empty_poll_s']:g} s of polling) with {result['open_slots_left']} judgment "
            "slots still open at the end"
        )
    if not result["open_slots_left"]:
        print("ran out          every comparison is complete: raise --comparisons")
    names = [k for k in inv if k not in {"ok", "judgment_rows", "client_successes"}]
    print(
        f"invariants       {inv['judgment_rows']} judgment rows vs {inv['client_successes']} "
        "client successes; " + ", ".join(f"{k} {inv[k]}" for k in names)
    )
    print(f"invariants       {'OK' if inv['ok'] else 'FAILED'}")
    lat = result["latency"]
    limit = f", p99 <= {tgt['max_p99_ms']:g} ms each" if tgt["max_p99_ms"] is not None else ""
    scope = (
        "" if tgt["applies"] else f"; stated for 32 annotators, this run has {cfg['annotators']}"
    )
    print(
        f"target           {'PASS' if tgt['pass'] else 'FAIL'} "
        f"(>= {tgt['min_judgments_per_s']:g} judgments/s{limit}, invariants{scope}): "
        f"{result['judgments_per_s']:.1f}/s, p99 next {lat['next']['p99_ms']:.1f} ms, "
        f"p99 submit {lat['submit']['p99_ms']:.1f} ms, "
        f"invariants {'OK' if inv['ok'] else 'FAILED'}"
        + (f"; failed: {', '.join(failed)}" if (failed := _failed(tgt)) else "")
    )


def _failed(target: dict[str, Any]) -> list[str]:
    return [name for name, ok in target["checks"].items() if not ok]


# Main -----------------------------------------------------------------------------------------


def setup_run(env: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """`setup_database` in a subprocess of its own (Django stays out of this process)."""
    setup = subprocess.run(
        [sys.executable, __file__, "--internal-setup", json.dumps(spec)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if setup.returncode != 0:
        raise RuntimeError(f"setup failed:\n{setup.stdout[-2000:]}{setup.stderr[-3000:]}")
    marker = next(line for line in setup.stdout.splitlines() if line.startswith(SETUP_MARKER))
    return dict(json.loads(marker[len(SETUP_MARKER) :]))


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="prefloop-bench-"))
    try:
        with database_fresh(args) as database_url:
            env = app_env(database_url, data_dir)
            if database_url and args.cache_url:
                env["CACHE_URL"] = args.cache_url
            password = secrets.token_urlsafe(12)
            log(f"setup: {args.db}, {args.comparisons} comparisons, data dir {data_dir}")
            started = time.monotonic()
            made = setup_run(
                env,
                {
                    "seed": args.seed,
                    "annotators": args.annotators,
                    "comparisons": args.comparisons,
                    "overlap": args.overlap,
                    "password": password,
                },
            )
            log(f"setup: done in {time.monotonic() - started:.1f} s")
            port = args.port or _free_port()
            command = gunicorn_command(args, port)
            log("gunicorn: " + " ".join(command[1:]))
            with gunicorn_running(command, port, env, data_dir / "gunicorn.log") as gunicorn_pid:
                log(f"load: {args.annotators} annotators, {args.warmup:g}+{args.duration:g} s")
                run, window_start, window_end, cpu = asyncio.run(
                    load_run(
                        port=port,
                        usernames=made["usernames"],
                        password=password,
                        seed=args.seed,
                        warmup_s=args.warmup,
                        duration_s=args.duration,
                        timeout_s=args.timeout,
                        empty_poll_s=args.empty_poll,
                        flow=args.flow,
                        cpu_probe=cpu_probe_make(
                            gunicorn_pid, args.pg_database if database_url else ""
                        ),
                    )
                )
            result = figures(run, window_start, window_end)
            if any(outcome.split()[-1].startswith("5") for outcome in result["errors"]):
                tail = (data_dir / "gunicorn.log").read_text(errors="replace")[-4000:]
                log(f"server errors; the end of gunicorn's log:\n{tail}")
            project_id = int(made["project_id"])
            result["cpu"] = cpu
            query = OPEN_SLOTS_SQL.format(p=project_id)
            slots = database_query(database_url, data_dir, query)
            result["open_slots_left"] = int(slots[0][0])
            result["invariants"] = invariants_check(run, database_url, data_dir, project_id)
            result["config"] = {
                "db": args.db,
                "annotators": args.annotators,
                "comparisons": args.comparisons,
                "overlap": args.overlap,
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "seed": args.seed,
                "empty_poll_s": args.empty_poll,
                "flow": args.flow,
                "gunicorn": " ".join(command[2:]).replace(f"--bind=127.0.0.1:{port} ", ""),
                "cache_url": env.get("CACHE_URL", ""),
                "nproc": os.cpu_count(),
            }
            result["target"] = target_verdict(args.db, args.annotators, result)
            return result
    finally:
        if args.keep:
            log(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument(
        "--comparisons", type=int, default=6000, help="enough that the run does not run out"
    )
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument(
        "--workers",
        type=int,
        default=3,
        help="gunicorn sync workers (3, as docker/Dockerfile runs, measured best on this "
        "2-core machine: 2 leave a fifth of the cores idle while both wait on PostgreSQL, 4 "
        "add lock contention; re-measure when the app's profile changes)",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (gthread)")
    parser.add_argument(
        "--worker-class",
        choices=("sync", "gthread"),
        default=None,
        help="default: sync with --threads 1, gthread otherwise",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument(
        "--flow",
        choices=["browser", "separate"],
        default="browser",
        help="browser: judge the pair each submit's answer carries (as the page does); "
        "separate: GET the pair before every submit",
    )
    parser.add_argument(
        "--empty-poll",
        type=float,
        default=5.0,
        help="seconds an annotator waits after 'nothing left' (the page polls every 5 s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--pg-url", default="postgres://root@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="prefloop_bench")
    parser.add_argument(
        "--cache-url",
        default="redis://127.0.0.1:6379/9",
        help="CACHE_URL of the app on PostgreSQL (sessions read from Redis, as the compose file "
        "runs it); '' for database sessions (about 8 %% fewer judgments/s here)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir and the PostgreSQL database"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--internal-setup", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal_setup is not None:
        made = setup_database(json.loads(args.internal_setup))
        print(SETUP_MARKER + json.dumps(made))
        return
    # SIGTERM takes the same way out as Ctrl-C, so gunicorn and the database are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report_print(result)
    sys.exit(0 if result["invariants"]["ok"] else 1)


if __name__ == "__main__":
    main()
