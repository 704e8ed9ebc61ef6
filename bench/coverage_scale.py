"""Coverage at scale: embed, cluster and render the coverage page for N prompts (default 100k).

Builds a fresh project of N prompts drawn from topic templates (so the clusters mean
something), a few thousand judged pairs, then times, in one process:
- embedding every prompt with the packaged all-MiniLM-L6-v2 (stored, once per prompt),
- the rest of `coverage_refresh` (clustering with k chosen by silhouette, duplicates, Vendi,
  distinct-n, languages, coverage of the pairs, the 2-D map) for every scope,
- rendering the coverage page from the stored statistics (what a lead waits for), against
  rendering the quality page of the same project as a baseline measured in the same run.

python bench/coverage_scale.py [--prompts 100000] [--pairs 5000] [--db sqlite|postgres] [--json]
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
SLUG = "coverage-bench"

TOPICS = {
    "code": (
        ["How do I", "Why does", "What is the best way to", "Can you explain how to", "Fix:"],
        [
            "reverse a list in Python",
            "debug a segfault in C",
            "speed up a SQL query",
            "write a unit test for a parser",
            "handle async errors in JavaScript",
            "profile memory in a Java service",
            "merge two git branches",
            "parse JSON in Go",
        ],
    ),
    "cooking": (
        [
            "How do I",
            "What temperature should I use to",
            "Give me a recipe to",
            "Why did I fail to",
        ],
        [
            "bake sourdough bread",
            "make a fluffy omelette",
            "cook rice without sticking",
            "roast vegetables evenly",
            "make pasta dough by hand",
            "brew strong cold coffee",
        ],
    ),
    "travel": (
        [
            "Plan a trip to",
            "What should I pack for",
            "Is it safe to visit",
            "Cheapest way to get to",
        ],
        [
            "Lisbon in spring",
            "Tokyo on a budget",
            "the Alps in winter",
            "Morocco for a week",
            "New York with kids",
            "Iceland by car",
        ],
    ),
    "health": (
        ["How can I", "Is it normal to", "What helps to", "Give me a plan to"],
        [
            "sleep better at night",
            "reduce back pain at a desk",
            "start running at forty",
            "drink more water",
            "lower stress before exams",
            "eat less sugar",
        ],
    ),
    "money": (
        ["Explain how to", "Should I", "What is a good way to", "Help me"],
        [
            "save for a house deposit",
            "pay off a credit card",
            "start investing small amounts",
            "plan a monthly budget",
            "understand compound interest",
            "negotiate a raise",
        ],
    ),
}
TAILS = [
    "",
    " Keep it short.",
    " Step by step, please.",
    " I am a beginner.",
    " Give two options.",
    " Explain why.",
    " In plain words.",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prompt_texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choice(list(TOPICS))
        heads, bodies = TOPICS[topic]
        out.append((topic, f"{rng.choice(heads)} {rng.choice(bodies)}?{rng.choice(TAILS)} (#{i})"))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction
    from django.test import Client

    from annotate import diversity
    from annotate.coverage import coverage_refresh, prompt_embeddings_ensure
    from annotate.models import (
        Comparison,
        ComparisonStatus,
        PairKind,
        PreferencePair,
        Project,
        Prompt,
        Response,
    )
    from annotate.services.projects import membership_set
    from annotate.services.prompts import policy_create, prompt_content_hash

    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    started = time.monotonic()
    lead = User.objects.create_superuser(username="bench-lead", password=None)
    project = Project.objects.create(name="Coverage bench", slug=SLUG, overlap=1)
    membership_set(project=project, user=lead, role="lead")
    rows = prompt_texts(args.prompts, args.seed)
    with transaction.atomic():
        prompts = []
        for start in range(0, len(rows), 5000):
            chunk = rows[start : start + 5000]
            prompts += Prompt.objects.bulk_create(
                Prompt(
                    project=project,
                    messages=[{"role": "user", "content": text}],
                    tags=[topic],
                    content_hash=prompt_content_hash([{"role": "user", "content": text}]),
                )
                for topic, text in chunk
            )
        policy = policy_create(project=project, name="bench")
        rng = random.Random(args.seed)
        # Pairs only on some topics, so the page has under-covered clusters to flag.
        judged = [
            p for p, (topic, _) in zip(prompts, rows, strict=True) if topic in ("code", "money")
        ]
        judged = rng.sample(judged, min(args.pairs, len(judged)))
        responses = Response.objects.bulk_create(
            Response(prompt=p, policy=policy, text=f"Answer {k} " + "word " * rng.randint(5, 80))
            for p in judged
            for k in range(2)
        )
        comparisons = Comparison.objects.bulk_create(
            Comparison(
                project=project,
                prompt=p,
                response_a=responses[2 * i],
                response_b=responses[2 * i + 1],
                round_number=1,
                status=ComparisonStatus.COMPLETE,
                judgment_count=1,
            )
            for i, p in enumerate(judged)
        )
        PreferencePair.objects.bulk_create(
            PreferencePair(
                project=project,
                comparison=c,
                kind=PairKind.PREFERENCE,
                chosen=c.response_a,
                rejected=c.response_b,
                agreement=1.0,
                n_judgments=1,
            )
            for c in comparisons
        )
    setup_s = time.monotonic() - started
    log(f"setup: {args.prompts} prompts, {len(judged)} pairs in {setup_s:.0f} s")

    load_started = time.monotonic()
    embed = diversity.embedder_default()
    load_s = time.monotonic() - load_started
    embed_started = time.monotonic()
    prompt_embeddings_ensure(
        project=project,
        embed=embed,
        on_progress=lambda done, total: (
            log(f"embedded {done}/{total}") if done % 10240 == 0 else None
        ),
    )
    embed_s = time.monotonic() - embed_started
    log(
        f"embedding: {embed_s:.0f} s ({args.prompts / embed_s:.0f} prompts/s), model load {load_s:.1f} s"
    )
    stats_started = time.monotonic()
    stored = coverage_refresh(project=project, embed=embed, on_progress=log)
    stats_s = time.monotonic() - stats_started
    data = stored[0].data
    client = Client()
    client.force_login(lead)

    def timed(path: str, repeats: int = 5) -> float:
        client.get(path)  # warm
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            response = client.get(path)
            assert response.status_code == 200, response.status_code
            best = min(best, time.perf_counter() - t)
        return best * 1000

    coverage_ms = timed(f"/p/{SLUG}/coverage/")
    quality_ms = timed(f"/p/{SLUG}/quality/")
    return {
        "prompts": args.prompts,
        "pairs": len(judged),
        "setup_s": round(setup_s, 1),
        "model_load_s": round(load_s, 1),
        "embedding_s": round(embed_s, 1),
        "embedding_prompts_per_s": round(args.prompts / embed_s),
        "statistics_s": round(stats_s, 1),
        "k": data["k"],
        "silhouette": data["silhouette"],
        "vendi": data["vendi"],
        "evenness": data["evenness"],
        "near_duplicate_pairs": data["near_duplicates"]["pairs"],
        "under_covered_clusters": sum(1 for c in data["clusters"] if c["under_covered"]),
        "coverage_page_ms": round(coverage_ms, 1),
        "quality_page_ms_baseline": round(quality_ms, 1),
        "page_ratio_coverage_over_quality": round(coverage_ms / quality_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default="postgres://root@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="prefloop_coverage_bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--internal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal:
        print("RESULT " + json.dumps(run(args)))
        return
    work = Path(tempfile.mkdtemp(prefix="prefloop-coverage-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG"}}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        PREFLOOP_DATA_DIR=str(work),
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
        SECRET_KEY="bench-" + "x" * 40,
        ALLOWED_HOSTS="testserver",
        TOKENIZERS_PARALLELISM="false",
    )
    if args.db == "postgres":
        for sql in (
            f'DROP DATABASE IF EXISTS "{args.pg_database}"',
            f'CREATE DATABASE "{args.pg_database}"',
        ):
            subprocess.run(["psql", f"{args.pg_url}/postgres", "-qc", sql], check=True)
        env["DATABASE_URL"] = f"{args.pg_url}/{args.pg_database}"
    try:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--internal",
                "--prompts",
                str(args.prompts),
                "--pairs",
                str(args.pairs),
                "--seed",
                str(args.seed),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        result = json.loads(
            next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:]
        )
        result["db"] = args.db
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for key, value in result.items():
                print(f"{key:34s} {value}")
    finally:
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
