"""Export at scale: time and peak memory of exporting N preference pairs (default 1M).

Builds a fresh project of N pairs (one prompt, two responses, one comparison and one pair
each; rows inserted in bulk, not through the judging path), then runs `manage.py
pairs_export` in a subprocess per format and file type and reports its wall time, rows/s and
peak resident memory. The memory baseline is the same command exporting an empty project
(Django, the ORM and pyarrow loaded, no rows), measured in the same run: the export is flat
when the peak with N pairs stays close to it.

python bench/export_scale.py [--pairs 1000000] [--db sqlite|postgres] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SLUG, EMPTY_SLUG = "export-bench", "export-bench-empty"
BATCH = 5000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup(pairs: int, seed: int) -> None:
    """Migrate and fill (runs in a subprocess with the bench's settings)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from annotate.models import (
        Comparison,
        ComparisonStatus,
        PairKind,
        Policy,
        PreferencePair,
        Project,
        Prompt,
        Response,
    )

    call_command("migrate", interactive=False, verbosity=0)
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "model",
        "answer",
        "helpful",
        "correct",
        "short",
        "long",
        "list",
        "code",
        "step",
        "reason",
        "value",
    ]
    project = Project.objects.create(name="Export bench", slug=SLUG, overlap=1)
    Project.objects.create(name="Export bench (empty)", slug=EMPTY_SLUG, overlap=1)
    policy_a = Policy.objects.create(project=project, name="a")
    policy_b = Policy.objects.create(project=project, name="b")
    started = time.monotonic()
    for start in range(0, pairs, BATCH):
        n = min(BATCH, pairs - start)
        with transaction.atomic():
            prompts = Prompt.objects.bulk_create(
                Prompt(
                    project=project,
                    messages=[
                        {
                            "role": "user",
                            "content": f"Question {start + i}: "
                            + " ".join(rng.choices(words, k=rng.randint(5, 30))),
                        }
                    ],
                    content_hash=f"{start + i:064x}",
                )
                for i in range(n)
            )
            texts = [" ".join(rng.choices(words, k=rng.randint(20, 200))) for _ in range(2 * n)]
            responses = Response.objects.bulk_create(
                Response(prompt=prompt, policy=policy, text=texts[2 * i + k])
                for i, prompt in enumerate(prompts)
                for k, policy in enumerate((policy_a, policy_b))
            )
            comparisons = Comparison.objects.bulk_create(
                Comparison(
                    project=project,
                    prompt=prompt,
                    response_a=responses[2 * i],
                    response_b=responses[2 * i + 1],
                    round_number=1 + (start + i) % 3,
                    status=ComparisonStatus.COMPLETE,
                    judgment_count=1,
                )
                for i, prompt in enumerate(prompts)
            )
            kinds = [PairKind.PREFERENCE] * 8 + [PairKind.TIE, PairKind.BOTH_BAD]
            PreferencePair.objects.bulk_create(
                PreferencePair(
                    project=project,
                    comparison=comparison,
                    kind=rng.choice(kinds),
                    chosen=responses[2 * i + (k := rng.randint(0, 1))],
                    rejected=responses[2 * i + 1 - k],
                    agreement=rng.choice((0.5, 2 / 3, 1.0, 1.0)),
                    n_judgments=rng.choice((2, 3)),
                )
                for i, comparison in enumerate(comparisons)
            )
        done = start + n
        if done % 100_000 == 0 or done == pairs:
            log(f"setup: {done}/{pairs} pairs ({time.monotonic() - started:.0f} s)")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def run_export(
    env: dict[str, str], slug: str, out: Path, format: str, file_type: str
) -> dict[str, Any]:
    """One `pairs_export` in a child process; its wall time and peak RSS (from wait4)."""
    command = [
        sys.executable,
        "manage.py",
        "pairs_export",
        slug,
        str(out),
        "--format",
        format,
        "--file-type",
        file_type,
    ]
    started = time.monotonic()
    # Files, not pipes: a pipe nobody reads while we wait fills up and stalls the child.
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read().decode(), err_file.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pairs_export failed:\n{stderr[-3000:]}")
    data = next((out / "data").iterdir())
    return {
        "format": format,
        "file_type": file_type,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "file_mb": round(data.stat().st_size / 2**20, 1),
        "summary": stdout.strip().splitlines()[-1] if stdout.strip() else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default="postgres://root@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="prefloop_export_bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (and database)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--internal-setup", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal_setup is not None:
        setup(args.internal_setup, args.seed)
        return
    work = Path(tempfile.mkdtemp(prefix="prefloop-export-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG"}}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="1",
        PREFLOOP_DATA_DIR=str(work),
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
    )
    if args.db == "postgres":
        admin = f"{args.pg_url}/postgres"
        for sql in (
            f'DROP DATABASE IF EXISTS "{args.pg_database}"',
            f'CREATE DATABASE "{args.pg_database}"',
        ):
            subprocess.run(["psql", admin, "-qc", sql], check=True)
        env["DATABASE_URL"] = f"{args.pg_url}/{args.pg_database}"
    try:
        log(f"setup: {args.pairs} pairs on {args.db} in {work}")
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--internal-setup",
                str(args.pairs),
                "--seed",
                str(args.seed),
            ],
            cwd=REPO_ROOT,
            env=env,
            check=True,
        )
        setup_s = time.monotonic() - started
        runs = []
        for format, file_type in (("dpo", "jsonl"), ("dpo", "parquet"), ("kto", "jsonl")):
            baseline = run_export(
                env, EMPTY_SLUG, work / f"empty-{format}-{file_type}", format, file_type
            )
            result = run_export(env, SLUG, work / f"{format}-{file_type}", format, file_type)
            rows = int(result["summary"].split()[0])
            result |= {
                "rows": rows,
                "rows_per_s": round(rows / result["wall_s"]),
                "baseline_peak_rss_mb": baseline["peak_rss_mb"],
                "peak_over_baseline_mb": round(result["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
            }
            runs.append(result)
            log(
                f"{format} {file_type}: {rows} rows in {result['wall_s']} s "
                f"({result['rows_per_s']:,} rows/s), peak RSS {result['peak_rss_mb']} MB "
                f"vs {baseline['peak_rss_mb']} MB exporting nothing "
                f"(+{result['peak_over_baseline_mb']} MB), file {result['file_mb']} MB"
            )
        report = {"pairs": args.pairs, "db": args.db, "setup_s": round(setup_s, 1), "exports": runs}
        print(
            json.dumps(report, indent=2)
            if args.json
            else "\n".join(
                f"{r['format']:>3} {r['file_type']:<7} {r['rows']:>9} rows {r['wall_s']:>7} s "
                f"{r['rows_per_s']:>8,} rows/s  peak {r['peak_rss_mb']:>6} MB "
                f"(exporting nothing: {r['baseline_peak_rss_mb']} MB)"
                for r in runs
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            if args.db == "postgres":
                subprocess.run(
                    [
                        "psql",
                        f"{args.pg_url}/postgres",
                        "-qc",
                        f'DROP DATABASE IF EXISTS "{args.pg_database}"',
                    ]
                )


if __name__ == "__main__":
    main()
