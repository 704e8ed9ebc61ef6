"""Fault drills against this machine's real PostgreSQL, Redis and Celery (docs/reliability.md).

Each drill sets a scene, breaks one thing for real, and checks that nothing was lost or done
twice; it prints what it saw and PASS or FAIL. They restart the machine's shared services, so
they are not tests: run them alone, on a machine whose PostgreSQL and Redis nothing else uses.

    .venv/bin/python bench/fault_drills.py                 # every drill
    .venv/bin/python bench/fault_drills.py redis-restart   # one (see --help)

Drills:
  redis-restart     jobs queued, the worker frozen, Redis restarted without persistence (the
                    messages are gone): the recovery sends them again, the worker reconnects,
                    each job runs once.
  postgres-restart  16 annotators judge through the API against gunicorn while PostgreSQL
                    restarts; clients retry with their idempotency key: exactly one judgment
                    per submit, and the app answers again without being restarted.
  disk-full         the artifacts folder (a 48 MB tmpfs) fills while a training run
                    checkpoints: the run fails saying why, its last checkpoint stays whole.
(A worker killed mid-job, mid-import and at every attempt: tests/integration/.)

Needs: PostgreSQL on 127.0.0.1:5432 (trust), Redis on 127.0.0.1:6379, root (pg_ctlcluster,
mount). Uses the database prefloop_drills and Redis database 12, both emptied first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PG = "postgres://root@127.0.0.1:5432"
DATABASE = "prefloop_drills"
BROKER = "redis://127.0.0.1:6379/12"
STALE_SECONDS = 5


def _env(data_dir: Path) -> dict[str, str]:
    return {
        "DEBUG": "1",
        "DATABASE_URL": f"{PG}/{DATABASE}",
        "CELERY_BROKER_URL": BROKER,
        "PREFLOOP_DATA_DIR": str(data_dir),
        "PREFLOOP_QUANTIZE_4BIT": "0",
        "JOB_HEARTBEAT_SECONDS": "0.5",
        "JOB_HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _wait(what: str, ready: Callable[[], bool], timeout: float = 120, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@contextmanager
def _worker(data_dir: Path, name: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (data_dir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu",
         "--pool", "solo", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
         "--without-mingle", "--loglevel", "INFO"],
        cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _redis_restart() -> float:
    """Redis stopped without saving (what a crash of a Redis without persistence loses) and
    started again as this machine runs it; the seconds it was away."""
    started = time.monotonic()
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    _wait(
        "redis down",
        lambda: subprocess.run(["redis-cli", "ping"], capture_output=True).returncode != 0,
        20,
    )
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
         "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis"],
        check=True, capture_output=True,
    )  # fmt: skip
    _wait(
        "redis up",
        lambda: (
            subprocess.run(["redis-cli", "ping"], capture_output=True).stdout.strip() == b"PONG"
        ),
        20,
    )
    return time.monotonic() - started


def _queue_length(name: str) -> int:
    import redis

    return int(redis.Redis.from_url(BROKER).llen(name))


# Drills -----------------------------------------------------------------------------------------


def drill_redis_restart(data_dir: Path) -> dict[str, Any]:
    import io
    import signal

    from django.contrib.auth.models import User

    from annotate.imports.jobs import import_job_start
    from annotate.models import ImportJob, Prompt
    from annotate.services.projects import project_create
    from core.jobs import jobs_recover
    from core.models import JobStatus

    lead = User.objects.create_user("drill-lead-redis")
    project = project_create(
        name="Redis drill", slug="redis-drill", guidelines="Judge.", created_by=lead
    )
    jobs_count, rows = 8, 200
    with _worker(data_dir, "redis-worker", **_env(data_dir)) as worker:
        _wait(
            "the worker consumes",
            lambda: "ready." in (data_dir / "redis-worker.log").read_text(),
            60,
        )
        os.kill(worker.pid, signal.SIGSTOP)  # frozen: the jobs wait in the queue
        jobs = []
        for j in range(jobs_count):
            lines = b"".join(
                json.dumps({"prompt": f"Drill {j} question {i}?"}).encode() + b"\n"
                for i in range(rows)
            )
            jobs.append(import_job_start(
                project=project, kind="prompts", upload=io.BytesIO(lines),
                file_name=f"drill-{j}.jsonl", file_type="jsonl", created_by=lead,
            ))  # fmt: skip
        queued_before = _queue_length("default")
        away = _redis_restart()
        queued_after = _queue_length("default")
        os.kill(worker.pid, signal.SIGCONT)
        time.sleep(STALE_SECONDS + 1)
        resent = [outcome for _job, outcome in jobs_recover()]  # what beat does every minute
        pks = [job.pk for job in jobs]
        _wait(
            "every import done",
            lambda: (
                ImportJob.objects.filter(pk__in=pks, status=JobStatus.SUCCEEDED).count()
                == jobs_count
            ),
            180,
        )
    done = list(ImportJob.objects.filter(pk__in=pks))
    prompts = Prompt.objects.filter(project=project).count()
    # The frozen worker had taken one message already (prefetch 1): it runs that one when it
    # thaws; the others were lost with Redis, and the recovery sends them again.
    ok = (
        queued_after == 0
        and resent.count("resent") >= queued_before
        and all(job.attempts == 1 and job.created_count == rows for job in done)
        and prompts == jobs_count * rows
    )
    return {
        "ok": ok,
        "messages queued before the restart": queued_before,
        "messages the frozen worker held": jobs_count - queued_before,
        "messages after it": queued_after,
        "seconds Redis was away": round(away, 1),
        "jobs sent again by the recovery": resent.count("resent"),
        "jobs run (attempts each)": sorted({job.attempts for job in done}),
        "prompts stored / expected": f"{prompts} / {jobs_count * rows}",
    }


def drill_postgres_restart(data_dir: Path) -> dict[str, Any]:
    import secrets
    import socket

    import requests
    from django.contrib.auth.models import User
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from annotate.models import Comparison, Judgment, Role
    from annotate.services.projects import membership_set
    from tests.factories import comparison_make, project_make

    annotators, per_annotator = 16, 12
    lead = User.objects.create_user("drill-lead-pg")
    project = project_make(
        "pg-drill",
        created_by=lead,
        prompts=[f"Question {i}?" for i in range(annotators * per_annotator)],
    )
    for prompt in project.prompts.all():
        comparison_make(prompt)
    tokens = []
    for a in range(annotators):
        user = User.objects.create_user(f"drill-ann-{a}")
        membership_set(project=project, user=user, role=Role.ANNOTATOR)
        tokens.append(Token.objects.create(user=user).key)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **_env(data_dir), "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(40),
           "ALLOWED_HOSTS": "127.0.0.1", "PREFLOOP_STATIC_ROOT": str(data_dir / "static")}  # fmt: skip
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    gunicorn = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "config.wsgi:application", "--bind",
         f"127.0.0.1:{port}", "--workers", "3"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=(data_dir / "gunicorn.log").open("wb"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1/projects/{project.slug}"
    stored: dict[str, int] = {}  # idempotency key → the judgment id the server answered
    errors: list[str] = []
    lock = threading.Lock()
    restarted = threading.Event()

    def annotate(token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"

        def call(method: str, url: str, **kwargs: Any) -> requests.Response:
            while True:  # what a client does that retries until the server answers
                try:
                    response = session.request(method, url, timeout=30, **kwargs)
                    if response.status_code < 500:
                        return response
                    error = str(response.status_code)
                except requests.RequestException as exc:
                    error = type(exc).__name__
                with lock:
                    errors.append(error)
                time.sleep(0.2)

        while True:
            assignment = call("GET", f"{base}/assignment/").json()["assignment"]
            if assignment is None:
                return
            key = uuid.uuid4().hex
            body = {"choice": "left", "idempotency_key": key}
            response = call(
                "POST", f"{base}/comparisons/{assignment['comparison_id']}/judgments/", json=body
            )
            assert response.status_code == 201, response.text
            with lock:
                stored[key] = response.json()["id"]

    try:
        _wait("gunicorn up", lambda: _answers(f"http://127.0.0.1:{port}/health/web/"), 60)
        pids_before = _children(gunicorn.pid)
        threads = [threading.Thread(target=annotate, args=(t,)) for t in tokens]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        _wait("judging under way", lambda: len(stored) >= 40, 60, 0.05)
        judged_before = len(stored)
        restart_started = time.monotonic()
        subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, capture_output=True)
        restart_seconds = time.monotonic() - restart_started
        restarted.set()
        for thread in threads:
            thread.join(timeout=300)
        elapsed = time.monotonic() - started
        pids_after = _children(gunicorn.pid)
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)
    connection.close()  # this process's own connection went with the restart
    judgments = Judgment.objects.filter(comparison__project=project)
    per_comparison = set(
        Comparison.objects.filter(project=project).values_list("judgment_count", flat=True)
    )
    ids = set(stored.values())
    ok = (
        judgments.count() == len(stored) == len(ids) == annotators * per_annotator
        and set(judgments.values_list("id", flat=True)) == ids
        and per_comparison == {1}
        and pids_before == pids_after
    )
    return {
        "ok": ok,
        "annotators": annotators,
        "judged before the restart": judged_before,
        "PostgreSQL restart (s)": round(restart_seconds, 1),
        "failed answers retried": dict(Counter(errors)),
        "submits answered 201 / judgments stored / distinct": f"{len(stored)} / {judgments.count()} / {len(ids)}",
        "judgments per comparison": sorted(per_comparison),
        "gunicorn workers kept (no restart)": pids_before == pids_after,
        "seconds in all": round(elapsed, 1),
    }


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def drill_disk_full(data_dir: Path) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from alignment.engine.checkpoints import CHECKPOINTS_DIR, MARKER_FILE, checkpoint_latest
    from alignment.services.model_versions import model_version_base_ensure
    from alignment.services.training import training_run_start
    from alignment.services.training_settings import TrainingSettings
    from core.models import JobStatus
    from tests.factories import comparison_make, project_make

    model_dir = _tiny_model(data_dir / "tiny-model")
    artifacts = data_dir / "artifacts"
    artifacts.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(artifacts)], check=True)
    try:
        lead = User.objects.create_user("drill-lead-disk")
        annotator = User.objects.create_user("drill-ann-disk")
        project = project_make(
            "disk-drill", created_by=lead, annotators=[annotator], base_model=str(model_dir),
            prompts=[f"Question {i}?" for i in range(6)],
        )  # fmt: skip
        for i, prompt in enumerate(project.prompts.all()):
            comparison_make(
                prompt, texts=(f"Short {i}.", f"A longer answer {i}."), judged_by=annotator
            )
        env = {
            **_env(data_dir),
            "PREFLOOP_ARTIFACTS_DIR": str(artifacts),
            "PREFLOOP_CHECKPOINT_STEPS": "3",
        }
        with _worker(data_dir, "disk-worker", **env):
            from django.conf import settings

            settings.ARTIFACTS_DIR = artifacts
            run = training_run_start(
                project=project,
                base_version=model_version_base_ensure(project=project),
                training=TrainingSettings(epochs=40, batch_size=1, max_length=64),
            )

            def checkpointed() -> bool:
                run.refresh_from_db()
                assert run.status in (JobStatus.QUEUED, JobStatus.RUNNING), run.error
                return bool(run.metrics) and (run.metrics[-1].get("checkpoint") or 0) >= 3

            _wait("a first checkpoint", checkpointed, 300)
            filled = _fill(artifacts / "filler.bin")
            _wait(
                "the run to end",
                lambda: (
                    run.refresh_from_db() or run.status in (JobStatus.FAILED, JobStatus.SUCCEEDED)
                ),
                300,
            )
        output = Path(run.output_dir)
        markers = sorted((output / CHECKPOINTS_DIR).glob(f"*/{MARKER_FILE}"))
        fingerprint = json.loads(markers[-1].read_text())["fingerprint"] if markers else ""
        latest = checkpoint_latest(output, fingerprint=fingerprint).latest if markers else None
        ok = (
            run.status == JobStatus.FAILED
            and run.error.startswith("The disk is full")
            and latest is not None
        )
        return {
            "ok": ok,
            "filled (MB)": round(filled / 2**20, 1),
            "run status": run.status,
            "its error": run.error.splitlines()[0][:160],
            "newest whole checkpoint": f"step {latest.step}" if latest else None,
        }
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], capture_output=True)


def _fill(path: Path) -> int:
    written = 0
    with path.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 2**20)
                file.flush()
                written += 2**20
        except OSError:
            pass
    return written


def _tiny_model(path: Path) -> Path:
    """The tests' tiny random Llama, with the packaged SmolLM2's tokenizer."""
    from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve
    from tests.factories import MODELS_DIR, tiny_llama_make

    tokenizer = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=MODELS_DIR)
    return tiny_llama_make(path, tokenizer, hidden=32)


DRILLS = {
    "redis-restart": drill_redis_restart,
    "postgres-restart": drill_postgres_restart,
    "disk-full": drill_disk_full,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Drills: " + ", ".join(DRILLS) + ". See the module's docstring.",
    )
    parser.add_argument("drills", nargs="*", choices=[[], *DRILLS], default=[], metavar="DRILL")
    args = parser.parse_args()
    chosen = args.drills or list(DRILLS)
    if os.geteuid() != 0:
        parser.error("run as root: the drills restart PostgreSQL and Redis and mount a tmpfs")
    data_dir = Path(tempfile.mkdtemp(prefix="prefloop-drills-"))
    os.environ.update(_env(data_dir))
    admin = f"{PG}/postgres"
    subprocess.run(
        ["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'], check=True
    )
    subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{DATABASE}"'], check=True)
    import django
    import redis

    redis.Redis.from_url(BROKER).flushdb()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    failed = 0
    for name in chosen:
        print(f"== {name}", flush=True)
        try:
            result = DRILLS[name](data_dir)
        except Exception as error:  # a drill that breaks is a failed drill, said plainly
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        for key, value in result.items():
            if key != "ok":
                print(f"   {key}: {value}")
        print(f"   {'PASS' if result['ok'] else 'FAIL'}", flush=True)
        failed += not result["ok"]
    print(f"logs: {data_dir}")
    shutil.rmtree(data_dir / "static", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
