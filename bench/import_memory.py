"""Peak memory and time of a worker importing a large file of short prompt rows.

python bench/import_memory.py [--mb 50] [--runs 2] [--file-type jsonl|csv|parquet]
                              [--tree NAME=PATH ...]

Writes a file of about --mb MB of short, distinct prompt rows once, then imports it the way a
worker does (an ImportJob run by import_job_execute), each run in a fresh process, with DEBUG
off, on a fresh copy of a migrated SQLite database. Prints each run's peak RSS (ru_maxrss),
the RSS the process had before the import (Django and the app loaded) and the wall time of
the import; then the medians. With several --tree (each a checkout of this repository, e.g. one made by
`git archive HEAD | tar -x -C /tmp/before`), the runs of the trees are interleaved, so that
"before" and "after" share the machine's moods.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "explain",
    "why",
    "how",
    "what",
    "when",
    "which",
    "compare",
    "describe",
    "list",
    "summarise",
    "the",
    "a",
    "of",
    "model",
    "river",
    "city",
    "poem",
    "language",
    "history",
    "number",
    "planet",
    "energy",
    "market",
    "garden",
    "recipe",
    "proof",
    "theorem",
    "bridge",
    "music",
    "colour",
    "engine",
    "ocean",
    "forest",
    "winter",
    "letter",
    "friend",
    "story",
    "science",
    "question",
]


def rows_write(path: Path, *, megabytes: int, file_type: str, seed: int) -> int:
    """About `megabytes` MB of distinct short prompts; how many rows."""
    rng = random.Random(seed)
    target = megabytes * 2**20
    prompts: list[str] = []
    size = 0
    while size < target:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        prompt = f"{words.capitalize()} (#{len(prompts)})?"
        prompts.append(prompt)
        size += len(prompt) + 16  # {"prompt": ""}\n
    if file_type == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for prompt in prompts:
                out.write(json.dumps({"prompt": prompt}) + "\n")
    elif file_type == "csv":
        import csv

        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["prompt"])
            writer.writerows([prompt] for prompt in prompts)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"prompt": prompts}), path)
    return len(prompts)


def child(args: argparse.Namespace) -> None:
    """One import, in this (fresh) process, with the environment the parent set."""
    import django

    django.setup()
    from django.conf import settings

    from annotate.imports.jobs import import_job_execute
    from annotate.models import ImportJob, Project

    project = Project.objects.create(name="Import bench", slug="import-bench")
    folder = Path(settings.DATA_DIR) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench.{args.file_type}"
    shutil.copyfile(args.source, path)
    job = ImportJob.objects.create(
        project=project,
        kind="prompts",
        file_type=args.file_type,
        file_name=path.name,
        file_bytes=path.stat().st_size,
        path=str(path),
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    done = import_job_execute(job_id=job.pk)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert done is not None
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak),
                "before_rss_mb": round(before),
                "seconds": round(seconds, 1),
                "status": done.status,
                "created": done.created_count,
                "message": done.message[:200],
            }
        )
    )


def environment(tree: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        # As deployed: with DEBUG on, Django keeps the SQL of its last 9,000 queries, which
        # an import's bulk inserts make hundreds of MB.
        DEBUG="0",
        SECRET_KEY="import-bench-only",
        PREFLOOP_DATA_DIR=str(data_dir),
        PYTHONPATH=str(tree),
        HF_HUB_OFFLINE="1",
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--file-type", choices=("jsonl", "csv", "parquet"), default="jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of a checkout to run (repeatable; default: this one)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    trees = dict(item.split("=", 1) for item in args.tree) or {"this": str(REPO_ROOT)}
    work = Path(tempfile.mkdtemp(prefix="prefloop-import-bench-"))
    try:
        source = work / f"rows.{args.file_type}"
        count = rows_write(source, megabytes=args.mb, file_type=args.file_type, seed=args.seed)
        print(f"{source.stat().st_size / 2**20:.1f} MB, {count} rows", flush=True)
        templates: dict[str, Path] = {}
        for name, tree in trees.items():
            templates[name] = work / f"template-{name}"
            templates[name].mkdir()
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
                cwd=tree,
                env=environment(Path(tree), templates[name]),
                check=True,
            )
        found: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for run in range(args.runs):
            for name, tree in trees.items():
                data_dir = work / f"run-{run}-{name}"
                shutil.copytree(templates[name], data_dir)
                done = subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--child",
                        "--source",
                        str(source),
                        "--file-type",
                        args.file_type,
                    ],
                    cwd=tree,
                    env=environment(Path(tree), data_dir),
                    check=True,
                    capture_output=True,
                    text=True,
                )
                shutil.rmtree(data_dir, ignore_errors=True)
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                found[name].append(figures)
                print(
                    f"run {run + 1} {name:8} peak RSS {figures['peak_rss_mb']:5} MB "
                    f"(before the import {figures['before_rss_mb']} MB), "
                    f"{figures['seconds']:6.1f} s, {figures['status']}: {figures['message']}",
                    flush=True,
                )
        for name, runs in found.items():
            peak = statistics.median(r["peak_rss_mb"] for r in runs)
            before = statistics.median(r["before_rss_mb"] for r in runs)
            seconds = statistics.median(r["seconds"] for r in runs)
            print(
                f"{name:8} median peak RSS {peak:.0f} MB (before the import {before:.0f} MB), "
                f"median time {seconds:.1f} s over {len(runs)} runs"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
