"""CPU per judgment on the judging hot path: in one process, without HTTP or load.

The load bench (annotate_load.py) is the judge of the speed target, but on two shared cores
its figures move by 10-20 % from run to run with whatever else the machine does. This script
measures what a change to the code (or the interpreter) costs per judgment, which is the
figure to compare two versions with: it calls the WSGI application directly (the middleware,
views, templates and SQL that gunicorn serves) for judgments round-robin over the annotators,
each a submit answered by the next pair's fragment as the browser flow has it, and reports
the process CPU time per judgment and, on a local PostgreSQL, the database backend's CPU time
per judgment (from /proc). The database is filled as the load bench fills it.

python bench/judge_cpu.py [--db postgres|sqlite] [--judgments 600] [--repeat 3]
    [--annotators 32] [--comparisons 3000] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import annotate_load as load  # the load bench: its setup and fragment parser

MEASURE_MARKER = "JUDGE_CPU_RESULT "


class App:
    """The WSGI application called in process, one cookie jar per annotator."""

    def __init__(self) -> None:
        from config.wsgi import application

        self.application = application

    def call(
        self, method: str, path: str, cookies: dict[str, str], form: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(form).encode() if form is not None else b""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in cookies.items()),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if form is not None:
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
            environ["CONTENT_LENGTH"] = str(len(body))
        if path.startswith(f"/p/{load.PROJECT_SLUG}/annotate/"):
            environ["HTTP_HX_REQUEST"] = "true"  # the fragment, as htmx asks for it
        status: list[int] = []

        def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            status.append(int(line.split()[0]))
            for name, value in headers:
                if name.lower() == "set-cookie":
                    key, _, rest = value.strip().partition("=")
                    cookies[key] = rest.split(";")[0]

        answer = b"".join(self.application(environ, start_response))
        return status[0], answer


def _backend_cpu_s() -> float | None:
    """CPU seconds of this process's PostgreSQL backend so far; None off a local PostgreSQL."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In the app's environment: log everyone in, warm up, then time `repeat` rounds."""
    import django

    django.setup()
    from django.db import connections

    # One connection for the whole run (the app's 60 s reconnect would change the backend whose
    # CPU is read); gunicorn's workers reconnect once a minute, a cost this leaves out.
    connections["default"].settings_dict["CONN_MAX_AGE"] = None
    app = App()
    sessions: list[tuple[dict[str, str], list[load.PairPage]]] = []
    for username in spec["usernames"]:
        cookies: dict[str, str] = {}
        app.call("GET", "/login/", cookies)
        form = {"username": username, "password": spec["password"], "next": ""}
        status, _ = app.call(
            "POST", "/login/", cookies, form | {"csrfmiddlewaretoken": cookies["csrftoken"]}
        )
        if status != 302:
            raise RuntimeError(f"login of {username} answered {status}")
        seen = {"version": "1", "csrfmiddlewaretoken": cookies["csrftoken"]}
        app.call("POST", f"/p/{load.PROJECT_SLUG}/annotate/guidelines-seen/", cookies, seen)
        status, body = app.call("GET", f"/p/{load.PROJECT_SLUG}/annotate/", cookies)
        sessions.append((cookies, [load.pair_parse(body)]))
    rng = random.Random(spec["seed"])

    def judge(i: int) -> None:
        cookies, holder = sessions[i % len(sessions)]
        page = holder[0]
        if page.comparison_id is None:
            raise SystemExit("nothing left to judge: give more --comparisons")
        form = {**page.fields, "choice": rng.choice(load.CHOICES)}
        status, body = app.call("POST", page.action, cookies, form)
        if status != 200:
            raise RuntimeError(f"submit answered {status}: {body[:300]!r}")
        holder[0] = load.pair_parse(body)

    for i in range(2 * len(sessions)):  # prepared statements, caches, the template loader
        judge(i)
    rounds = []
    count = spec["judgments"]
    for _ in range(spec["repeat"]):
        cpu, wall, backend = time.process_time(), time.perf_counter(), _backend_cpu_s()
        for i in range(count):
            judge(i)
        backend_after = _backend_cpu_s()
        rounds.append(
            {
                "app_cpu_ms": 1000 * (time.process_time() - cpu) / count,
                "wall_ms": 1000 * (time.perf_counter() - wall) / count,
                "backend_cpu_ms": (
                    1000 * (backend_after - backend) / count
                    if backend is not None and backend_after is not None
                    else None
                ),
            }
        )
    return {"rounds": rounds, "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--judgments", type=int, default=600, help="per measured round")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds")
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--comparisons", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-url", default="postgresql://root@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="prefloop_bench_cpu")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir and the PostgreSQL database"
    )
    parser.add_argument("--internal-measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal_measure is not None:
        result = measure(json.loads(args.internal_measure))
        print(MEASURE_MARKER + json.dumps(result), flush=True)
        return
    needed = (args.repeat * args.judgments + 2 * args.annotators) / 2
    if args.comparisons < needed * 1.2:
        raise SystemExit(f"--comparisons {args.comparisons}: give at least {int(needed * 1.2)}")
    data_dir = Path(tempfile.mkdtemp(prefix="prefloop-judge-cpu-"))
    try:
        with load.database_fresh(args) as database_url:
            env = load.app_env(database_url, data_dir)
            password = "judge-cpu-bench"
            spec = {
                "seed": args.seed,
                "annotators": args.annotators,
                "comparisons": args.comparisons,
                "overlap": 2,
                "password": password,
            }
            load.log(f"setup: {args.db}, {args.comparisons} comparisons")
            made = load.setup_run(env, spec)
            spec |= {
                "usernames": made["usernames"],
                "judgments": args.judgments,
                "repeat": args.repeat,
            }
            measured = subprocess.run(
                [sys.executable, __file__, "--internal-measure", json.dumps(spec)],
                cwd=load.REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if measured.returncode != 0:
                raise SystemExit(f"measurement failed:\n{measured.stderr[-3000:]}")
            line = next(
                line for line in measured.stdout.splitlines() if line.startswith(MEASURE_MARKER)
            )
            result = json.loads(line[len(MEASURE_MARKER) :])
    finally:
        if args.keep:
            load.log(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(
        f"judge CPU: {args.db}, Python {result['python']} ({sys.executable}), "
        f"{args.annotators} annotators round-robin, {args.repeat} x {args.judgments} judgments"
    )
    for key, label in (
        ("app_cpu_ms", "app process CPU"),
        ("backend_cpu_ms", "database backend CPU"),
        ("wall_ms", "wall"),
    ):
        values = [r[key] for r in result["rounds"] if r[key] is not None]
        if values:
            shown = " ".join(f"{v:.2f}" for v in values)
            print(
                f"{label:22s} ms/judgment: min {min(values):.2f}, "
                f"median {statistics.median(values):.2f}  ({shown})"
            )


if __name__ == "__main__":
    main()
