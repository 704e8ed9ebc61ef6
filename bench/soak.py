"""A soak: 50 annotators who read each pair for 2 to 8 s judge for 10 minutes while, in the
middle of it, the same machine imports 100,000 prompts on a worker, streams an export and
trains (docs/reliability.md).

The app runs in its production shape: PostgreSQL (a fresh database), Redis as broker and
shared cache, gunicorn (3 sync workers, DEBUG off), a worker for the default queue and one for
the gpu queue. Phases: "before" (the first fifth), "during" (the import, the export and the
training run start at its beginning; the run is cancelled at its end if still going), "after"
(the last fifth). Printed per phase: judgments/s and p50/p95/p99 of next and submit; then
what the background work did, and the invariants (every judgment the clients saw stored once,
no comparison over its overlap). Exit status 1 when an invariant fails.

    .venv/bin/python bench/soak.py [--minutes 10] [--annotators 50] [--import-rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import annotate_load as load  # the load bench's client, setup and checks

DRIVE_MARKER = "SOAK-DRIVE-RESULT "
BROKER = "redis://127.0.0.1:6379/11"
CACHE = "redis://127.0.0.1:6379/10"


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """In a Django subprocess: the lead's token, the import of the big file, the training run."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from alignment.services.model_versions import model_version_base_ensure
    from alignment.services.training import training_run_start
    from alignment.services.training_settings import TrainingSettings
    from annotate.imports.jobs import import_job_start
    from annotate.models import Project, Role
    from annotate.services.projects import membership_set

    project = Project.objects.get(pk=spec["project_id"])
    lead = User.objects.create_user("soak-lead")
    membership_set(project=project, user=lead, role=Role.LEAD)
    token = Token.objects.create(user=lead).key
    with open(spec["import_file"], "rb") as upload:
        job = import_job_start(
            project=project,
            kind="prompts",
            upload=upload,
            file_name="soak.jsonl",
            file_type="jsonl",
            created_by=lead,
        )
    run = training_run_start(
        project=project,
        base_version=model_version_base_ensure(project=project),
        training=TrainingSettings(epochs=1, batch_size=4, max_length=256),
    )
    return {"token": token, "import_job_id": job.pk, "run_id": run.pk}


def _subprocess_json(env: dict[str, str], flag: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(spec)],
        cwd=load.REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{flag} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(DRIVE_MARKER))
    return dict(json.loads(line[len(DRIVE_MARKER) :]))


def _worker(env: dict[str, str], queue: str, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue,
         "--concurrency", "1", "-n", f"soak-{queue}@%h", "--loglevel", "INFO"],
        cwd=load.REPO_ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _export(port: int, slug: str, token: str, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/projects/{slug}/export/",
        headers={"Authorization": f"Token {token}"},
    )
    lines = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        out["status"] = response.status
        for _ in response:
            lines += 1
    out.update(rows=lines, seconds=round(time.perf_counter() - started, 1))


async def _annotate(
    port: int, usernames: list[str], password: str, stop_at: float, seed: int
) -> load.RunLog:
    run = load.RunLog(sessions=[load.HttpSession("127.0.0.1", port, 60.0) for _ in usernames])
    logins = asyncio.Semaphore(2)

    async def one(i: int, session: load.HttpSession, name: str) -> None:
        async with logins:
            session.timeout_s = 120.0
            await load.annotator_login(session, name, password)
            session.timeout_s = 60.0
        await load.annotator_cycle(
            run, session, name, random.Random(f"{seed}-{i}"), stop_at, 5.0, "separate",
            think_s=(2.0, 8.0),
        )  # fmt: skip

    await asyncio.gather(
        *(one(i, s, n) for i, (s, n) in enumerate(zip(run.sessions, usernames, strict=True)))
    )
    for session in run.sessions:
        session.close()
    return run


def _status(database_url: str, table: str, pk: int, *columns: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT {', '.join(columns)} FROM {table} WHERE id = %s",  # type: ignore[arg-type]
            [pk],
        ).fetchone()
    return dict(zip(columns, row or (), strict=False))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--comparisons", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-url", default="postgres://root@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="prefloop_soak")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--internal-drive", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal_drive is not None:
        print(DRIVE_MARKER + json.dumps(drive(json.loads(args.internal_drive))))
        return 0
    import redis

    for url in (BROKER, CACHE):
        redis.Redis.from_url(url).flushdb()
    data_dir = Path(tempfile.mkdtemp(prefix="prefloop-soak-"))
    args.db, args.workers, args.threads, args.worker_class = "postgres", 3, 1, None
    with load.database_fresh(args) as database_url:
        env = load.app_env(database_url, data_dir)
        env.update(CELERY_BROKER_URL=BROKER, CACHE_URL=CACHE, HF_HUB_OFFLINE="1")
        password = secrets.token_urlsafe(12)
        load.log(f"setup: {args.comparisons} comparisons, {args.annotators} annotators")
        made = load.setup_run(
            env,
            {"seed": args.seed, "annotators": args.annotators, "comparisons": args.comparisons,
             "overlap": 2, "password": password},
        )  # fmt: skip
        import_file = data_dir / "soak.jsonl"
        with import_file.open("w") as file:
            for i in range(args.import_rows):
                file.write(
                    json.dumps({"prompt": f"Soak question {i}: what would you do next?"}) + "\n"
                )
        port = load._free_port()
        workers = [
            _worker(env, "default", data_dir / "worker-default.log"),
            _worker(env, "gpu", data_dir / "worker-gpu.log"),
        ]
        total = args.minutes * 60
        background: dict[str, Any] = {"export": {}}
        try:
            command = load.gunicorn_command(args, port)
            with load.gunicorn_running(command, port, env, data_dir / "gunicorn.log"):
                began = time.perf_counter() + 20  # logins first (PBKDF2, two at a time)
                phases = {
                    "before": (began, began + total / 5),
                    "during": (began + total / 5, began + 4 * total / 5),
                    "after": (began + 4 * total / 5, began + total),
                }

                def background_work() -> None:
                    time.sleep(max(0.0, phases["during"][0] - time.perf_counter()))
                    load.log("during: the import, the export and the training run start")
                    ids = _subprocess_json(
                        env, "--internal-drive",
                        {"project_id": made["project_id"], "import_file": str(import_file)},
                    )  # fmt: skip
                    background.update(ids)
                    _export(port, made["slug"], ids["token"], background["export"])
                    time.sleep(max(0.0, phases["during"][1] - time.perf_counter()))
                    cancel = urllib.request.Request(
                        f"http://127.0.0.1:{port}/api/v1/projects/{made['slug']}/training-runs/"
                        f"{ids['run_id']}/cancel/",
                        method="POST",
                        headers={"Authorization": f"Token {ids['token']}"},
                    )
                    run = _status(database_url, "alignment_trainingrun", ids["run_id"], "status")
                    if run["status"] in ("queued", "running"):
                        urllib.request.urlopen(cancel, timeout=60)
                    load.log("after: background work stopped or done")

                thread = threading.Thread(target=background_work)
                thread.start()
                run = asyncio.run(
                    _annotate(port, made["usernames"], password, began + total, args.seed)
                )
                thread.join()
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:  # a warm shutdown waits for the task at hand (an embedding, a step)
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        report: dict[str, Any] = {
            name: load.figures(run, start, end) for name, (start, end) in phases.items()
        }
        report["import"] = _status(
            database_url, "annotate_importjob", background["import_job_id"],
            "status", "created_count", "attempts", "started_at", "finished_at",
        )  # fmt: skip
        report["training"] = _status(
            database_url, "alignment_trainingrun", background["run_id"],
            "status", "progress_done", "progress_total",
        )  # fmt: skip
        report["export"] = background["export"]
        report["invariants"] = load.invariants_check(
            run, database_url, data_dir, int(made["project_id"])
        )
    _print(report, args)
    if not args.keep:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if report["invariants"]["ok"] else 1


def _print(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"soak: {args.annotators} annotators (think 2-8 s), {args.minutes:g} min, PostgreSQL + "
        f"Redis, gunicorn 3 workers, 2 Celery workers; {os.cpu_count()} cores"
    )
    print(f"{'phase':<8} {'judg/s':>7}   next p50/p95/p99 ms      submit p50/p95/p99 ms   errors")
    for phase in ("before", "during", "after"):
        f = report[phase]
        n, s = f["latency"]["next"], f["latency"]["submit"]
        print(
            f"{phase:<8} {f['judgments_per_s']:7.2f}   "
            f"{n['p50_ms']:6.0f} {n['p95_ms']:6.0f} {n['p99_ms']:6.0f}      "
            f"{s['p50_ms']:6.0f} {s['p95_ms']:6.0f} {s['p99_ms']:6.0f}      {f['errors'] or '-'}"
        )
    imp = report["import"]
    seconds = (
        (imp["finished_at"] - imp["started_at"]).total_seconds()
        if imp.get("finished_at") and imp.get("started_at")
        else None
    )
    print(
        f"import: {imp['status']}, {imp['created_count']} prompts, attempts {imp['attempts']}, "
        f"{seconds:.0f} s"
        if seconds is not None
        else f"import: {imp}"
    )
    print(f"export: {report['export']}")
    print(f"training: {report['training']}")
    print(f"invariants: {report['invariants']}")


if __name__ == "__main__":
    sys.exit(main())
