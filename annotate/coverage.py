"""Coverage statistics of a project's prompts and judged pairs, computed by a worker.

`coverage_refresh` embeds the prompts that have no embedding yet (once per prompt, stored),
clusters the whole project's prompts, stores each prompt's cluster, and writes one
CoverageStats row per scope: the project, each round, each dataset snapshot. The coverage
page only reads those rows; it asks for a refresh when their fingerprint is out of date.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Count, Max, QuerySet
from django.db.models.functions import Length
from django.utils import timezone

from annotate import diversity
from annotate.models import (
    Comparison,
    CoverageStats,
    DatasetSnapshot,
    Judgment,
    JudgmentKind,
    PairKind,
    PreferencePair,
    Project,
    Prompt,
    Response,
    Split,
)

EMBED_BATCH = 256
# A clustering whose silhouette is at most this has found no substantial structure.
WEAK_SILHOUETTE = 0.25
# A cluster is under-covered when its share of judged pairs is below this fraction of its
# share of prompts (or it has prompts and no pairs at all).
UNDER_COVERED_RATIO = 0.5
SNIPPET = 160


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """What a prompt asks (its last user turn), as the embeddings and statistics see it."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def coverage_fingerprint(*, project: Project) -> str:
    """Changes whenever prompts, pairs or snapshots do (cheap: a few aggregates)."""
    prompts = Prompt.objects.filter(project=project).aggregate(n=Count("id"), last=Max("id"))
    pairs = PreferencePair.objects.filter(project=project).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    snapshots = DatasetSnapshot.objects.filter(project=project).aggregate(last=Max("id"))
    last_pair = pairs["last"].isoformat() if pairs["last"] else "-"
    return f"p{prompts['n']}:{prompts['last']}|q{pairs['n']}:{last_pair}|s{snapshots['last']}"


def coverage_is_stale(*, project: Project) -> bool:
    stored = CoverageStats.objects.filter(project=project, scope="project").first()
    return stored is None or stored.fingerprint != coverage_fingerprint(project=project)


def coverage_refresh_request(*, project: Project) -> bool:
    """Ask a worker to refresh the project's coverage (once the transaction commits); at most
    one request a minute per project. Whether a request was sent."""
    from django.core.cache import cache

    if not cache.add(f"coverage-refresh-requested:{project.pk}", True, timeout=60):
        return False
    from annotate.tasks import coverage_refresh as task

    project_id = project.pk
    transaction.on_commit(lambda: task.delay(project_id))
    return True


def prompt_embeddings_ensure(
    *,
    project: Project,
    embed: diversity.Embed,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Embed (and store) every prompt of the project that has no embedding; how many."""
    missing = list(
        Prompt.objects.filter(project=project, embedding__isnull=True)
        .order_by("id")
        .values_list("id", "messages")
    )
    for start in range(0, len(missing), EMBED_BATCH):
        chunk = missing[start : start + EMBED_BATCH]
        vectors = diversity.normalise(embed([prompt_text(m) for _, m in chunk]))
        prompts = [
            Prompt(pk=prompt_id, embedding=vector.astype(np.float32).tobytes())
            for (prompt_id, _), vector in zip(chunk, vectors, strict=True)
        ]
        Prompt.objects.bulk_update(prompts, ["embedding"])
        if on_progress is not None:
            on_progress(start + len(chunk), len(missing))
    return len(missing)


@dataclass
class _Corpus:
    ids: np.ndarray
    texts: list[str]
    tags: list[list[str]]
    splits: list[str]
    hashes: list[str]
    embeddings: np.ndarray
    labels: np.ndarray
    row_of: dict[int, int]


def coverage_refresh(
    *,
    project: Project,
    embed: diversity.Embed | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[CoverageStats]:
    """Recompute and store every scope's statistics (see the module docstring)."""
    started = time.monotonic()
    fingerprint = coverage_fingerprint(project=project)
    say = on_progress or (lambda message: None)
    if Prompt.objects.filter(project=project, embedding__isnull=True).exists():
        embedded = prompt_embeddings_ensure(
            project=project,
            embed=embed or diversity.embedder_default(),
            on_progress=lambda done, total: say(f"embedded {done}/{total} prompts"),
        )
        say(f"embedded {embedded} prompts")
    corpus, clustering = _corpus_load(project=project, say=say)
    rows = len(corpus.texts)
    terms = diversity.key_terms(corpus.texts, corpus.labels, clustering.k) if rows else []
    typical = (
        diversity.typical_rows(corpus.embeddings, corpus.labels, clustering.centroids)
        if rows
        else []
    )
    scopes = _scopes(project=project)
    stored: list[CoverageStats] = []
    now = timezone.now()
    with transaction.atomic():
        for scope, prompt_ids, pair_ids in scopes:
            data = _scope_report(
                project=project,
                corpus=corpus,
                clustering=clustering,
                terms=terms,
                typical=typical,
                prompt_ids=prompt_ids,
                pair_ids=pair_ids,
            )
            stat, _ = CoverageStats.objects.update_or_create(
                project=project,
                scope=scope,
                defaults={
                    "data": json.loads(json.dumps(data)),  # as read back: tuples are lists
                    "fingerprint": fingerprint,
                    "computed_at": now,
                    "seconds": round(time.monotonic() - started, 2),
                },
            )
            stored.append(stat)
        CoverageStats.objects.filter(project=project).exclude(
            scope__in=[s for s, _, _ in scopes]
        ).delete()
    say(f"coverage of {len(scopes)} scopes in {time.monotonic() - started:.1f} s")
    return stored


def _corpus_load(
    *, project: Project, say: Callable[[str], None]
) -> tuple[_Corpus, diversity.Clustering]:
    """Every prompt of the project with its embedding, clustered; each prompt's cluster is
    stored on it (for coverage-aware selection and the pages)."""
    rows = list(
        Prompt.objects.filter(project=project)
        .order_by("id")
        .values_list("id", "messages", "tags", "split", "content_hash", "embedding")
    )
    blobs = [bytes(r[5] or b"") for r in rows]
    dimensions = len(blobs[0]) // 4 if blobs else 0
    embeddings = (
        np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(rows), dimensions)
        if rows
        else np.zeros((0, 0), dtype=np.float32)
    )
    clustering = diversity.clusters_fit(embeddings)
    say(f"{clustering.k} clusters (silhouette {clustering.silhouette})")
    corpus = _Corpus(
        ids=np.array([r[0] for r in rows], dtype=np.int64),
        texts=[prompt_text(r[1]) for r in rows],
        tags=[list(r[2] or []) for r in rows],
        splits=[r[3] for r in rows],
        hashes=[r[4] for r in rows],
        embeddings=embeddings,
        labels=clustering.labels,
        row_of={int(r[0]): i for i, r in enumerate(rows)},
    )
    for start in range(0, len(rows), 5000):
        Prompt.objects.bulk_update(
            [
                Prompt(pk=int(corpus.ids[i]), cluster=int(corpus.labels[i]))
                for i in range(start, min(start + 5000, len(rows)))
            ],
            ["cluster"],
        )
    return corpus, clustering


def _scopes(*, project: Project) -> list[tuple[str, set[int] | None, Iterable[int] | None]]:
    """(scope, its prompt ids, its pair ids) of every scope: the project (everything), each
    round, each snapshot."""
    scopes: list[tuple[str, set[int] | None, Iterable[int] | None]] = [("project", None, None)]
    prompt_ids: set[int] | None
    for round_number in (
        Comparison.objects.filter(project=project)
        .values_list("round_number", flat=True)
        .distinct()
        .order_by("round_number")
    ):
        prompt_ids = set(
            Comparison.objects.filter(project=project, round_number=round_number).values_list(
                "prompt_id", flat=True
            )
        )
        scopes.append((f"round:{round_number}", prompt_ids, None))
    for snapshot in DatasetSnapshot.objects.filter(project=project).order_by("id"):
        pair_prompts = set(
            PreferencePair.objects.filter(pk__in=snapshot.pair_ids).values_list(
                "comparison__prompt_id", flat=True
            )
        )
        scopes.append((f"snapshot:{snapshot.pk}", pair_prompts, snapshot.pair_ids))
    return scopes


# Counts are stored as [name, count] lists, most common first: PostgreSQL's jsonb does not
# keep the order of an object's keys.
def _scope_report(
    *,
    project: Project,
    corpus: _Corpus,
    clustering: diversity.Clustering,
    terms: list[list[str]],
    typical: list[list[int]],
    prompt_ids: set[int] | None,
    pair_ids: Iterable[int] | None,
) -> dict[str, Any]:
    if prompt_ids is None:
        rows = np.arange(len(corpus.ids))
    else:
        rows = np.array(sorted(corpus.row_of[p] for p in prompt_ids if p in corpus.row_of))
    rows = rows.astype(np.int64)
    texts = [corpus.texts[i] for i in rows.tolist()]
    embeddings = corpus.embeddings[rows] if len(rows) else corpus.embeddings[:0]
    labels = corpus.labels[rows] if len(rows) else corpus.labels[:0]
    pairs = _pairs_of_scope(project=project, prompt_ids=prompt_ids, pair_ids=pair_ids)
    sizes = Counter(labels.tolist())
    clusters = _clusters_report(
        corpus=corpus,
        clustering=clustering,
        terms=terms,
        typical=typical,
        sizes=sizes,
        pair_prompt_ids=pairs["prompt_ids"],
    )
    tag_counts: Counter[str] = Counter()
    for i in rows.tolist():
        tag_counts.update(corpus.tags[i])
    languages = Counter(diversity.language_guess(t) for t in texts)
    map_rows, points = (
        diversity.map_2d(embeddings) if len(rows) else (np.arange(0), np.zeros((0, 2)))
    )
    return {
        "prompts": len(rows),
        "splits": sorted(Counter(corpus.splits[i] for i in rows.tolist()).items()),
        **_duplicates_report(corpus=corpus, rows=rows, embeddings=embeddings, labels=labels),
        "k": clustering.k,
        "silhouette": clustering.silhouette,
        # Kaufman and Rousseeuw: at or below 0.25, no substantial structure.
        "weak_clustering": clustering.silhouette is not None
        and clustering.silhouette <= WEAK_SILHOUETTE,
        "clusters": clusters,
        "evenness": _round(diversity.evenness([sizes[c["id"]] for c in clusters])),
        "vendi": _round(diversity.vendi_score(embeddings)) if len(rows) else None,
        "distinct_1": _round(diversity.distinct_n(texts, 1)),
        "distinct_2": _round(diversity.distinct_n(texts, 2)),
        "languages": languages.most_common(),
        "tags": tag_counts.most_common(30),
        "untagged": sum(1 for i in rows.tolist() if not corpus.tags[i]),
        "prompt_chars": diversity.histogram([len(t) for t in texts]),
        "response_chars": diversity.histogram(pairs["response_chars"]),
        "pairs": pairs["summary"],
        "map": {
            "x": [round(float(v), 4) for v in points[:, 0]] if len(points) else [],
            "y": [round(float(v), 4) for v in points[:, 1]] if len(points) else [],
            "cluster": [int(labels[i]) for i in map_rows.tolist()],
            "text": [_snippet(texts[i])[:80] for i in map_rows.tolist()],
        },
    }


def _duplicates_report(
    *, corpus: _Corpus, rows: np.ndarray, embeddings: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Exact duplicates (prompts whose normalised hash another prompt of the scope shares)
    and near-duplicates (by embedding) of a scope's prompts."""
    by_hash = Counter(corpus.hashes[i] for i in rows.tolist())
    repeated = {h: n for h, n in by_hash.items() if n > 1}
    first_text: dict[str, str] = {}
    for i in rows.tolist():
        first_text.setdefault(corpus.hashes[i], corpus.texts[i])
    # Exact duplicates are reported above: not near-duplicates, in the count or the list.
    group = {h: n for n, h in enumerate(dict.fromkeys(corpus.hashes[i] for i in rows.tolist()))}
    same = np.array([group[corpus.hashes[i]] for i in rows.tolist()], dtype=np.int64)
    near_count, near = (
        diversity.near_duplicates(embeddings, labels, same=same) if len(rows) else (0, [])
    )
    return {
        "exact_duplicates": {
            "groups": len(repeated),
            "extra": sum(n - 1 for n in repeated.values()),
            "examples": [
                {"text": _snippet(first_text[h]), "count": n}
                for h, n in sorted(repeated.items(), key=lambda item: -item[1])[:20]
            ],
        },
        "near_duplicates": {
            "threshold": diversity.NEAR_DUPLICATE_COSINE,
            "pairs": near_count,
            "examples": [
                {
                    "a": _snippet(corpus.texts[rows[a]]),
                    "b": _snippet(corpus.texts[rows[b]]),
                    "cosine": c,
                }
                for a, b, c in near[:50]
            ],
        },
    }


def _clusters_report(
    *,
    corpus: _Corpus,
    clustering: diversity.Clustering,
    terms: list[list[str]],
    typical: list[list[int]],
    sizes: Counter[int],
    pair_prompt_ids: Iterable[int],
) -> list[dict[str, Any]]:
    """Each cluster of the scope: its size and share, key terms, typical prompts, and how many
    pairs it has (under-covered: fewer than its share asks for)."""
    scope_size = sum(sizes.values())
    pairs_per_cluster: Counter[int] = Counter()
    for prompt_id in pair_prompt_ids:
        row = corpus.row_of.get(prompt_id)
        if row is not None:
            pairs_per_cluster[int(corpus.labels[row])] += 1
    total_pairs = sum(pairs_per_cluster.values())
    clusters: list[dict[str, Any]] = []
    for cluster in range(clustering.k):
        size = sizes.get(cluster, 0)
        if not size:
            continue
        share = size / scope_size
        judged = pairs_per_cluster.get(cluster, 0)
        pair_share = judged / total_pairs if total_pairs else 0.0
        clusters.append(
            {
                "id": cluster,
                "size": size,
                "share": round(share, 4),
                "terms": terms[cluster] if cluster < len(terms) else [],
                "typical": [_snippet(corpus.texts[i]) for i in typical[cluster]]
                if cluster < len(typical)
                else [],
                "pairs": judged,
                "pair_share": round(pair_share, 4),
                "under_covered": judged == 0 or pair_share < UNDER_COVERED_RATIO * share,
            }
        )
    return clusters


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _pairs_of_scope(
    *, project: Project, prompt_ids: set[int] | None, pair_ids: Iterable[int] | None
) -> dict[str, Any]:
    """The judged pairs of a scope and what the page says of them."""
    pairs = PreferencePair.objects.filter(project=project)
    if pair_ids is not None:
        pairs = pairs.filter(pk__in=list(pair_ids))
    elif prompt_ids is not None:
        pairs = pairs.filter(comparison__prompt_id__in=prompt_ids)
    rows = list(
        pairs.annotate(chosen_chars=Length("chosen__text"), rejected_chars=Length("rejected__text"))
        .values_list(
            "comparison__prompt_id",
            "kind",
            "chosen_id",
            "comparison__response_a_id",
            "chosen_chars",
            "rejected_chars",
            "id",
        )
        .iterator(chunk_size=5000)
    )
    kinds = Counter(r[1] for r in rows)
    preference = [r for r in rows if r[1] == PairKind.PREFERENCE]
    differences = [r[4] - r[5] for r in preference]
    responses = Response.objects.filter(prompt__project=project)
    if prompt_ids is not None:
        responses = responses.filter(prompt_id__in=prompt_ids)
    response_chars = list(
        responses.annotate(chars=Length("text")).values_list("chars", flat=True).iterator(5000)
    )
    votes = Judgment.objects.filter(
        project=project, kind=JudgmentKind.VOTE, superseded_at__isnull=True
    )
    if pair_ids is not None:
        votes = votes.filter(comparison__pair__in=[r[6] for r in rows])
    elif prompt_ids is not None:
        votes = votes.filter(comparison__prompt_id__in=prompt_ids)
    reason_tags: Counter[str] = Counter()
    for tags in votes.exclude(reason_tags=[]).values_list("reason_tags", flat=True).iterator(5000):
        reason_tags.update(tags or [])
    by_prompt: defaultdict[int, int] = defaultdict(int)
    for r in rows:
        by_prompt[r[0]] += 1
    return {
        "prompt_ids": [r[0] for r in rows],
        "response_chars": response_chars,
        "summary": {
            "total": len(rows),
            # A rating's kinds only where the project has ratings.
            "by_kind": [
                (kind, kinds.get(kind, 0))
                for kind in PairKind.values
                if kinds.get(kind) or kind not in (PairKind.GOOD, PairKind.BAD)
            ],
            # Which side won, by the comparison's own order: far from half is a position or
            # policy imbalance in what was generated, not necessarily in the judging.
            "chosen_a_share": _round(
                sum(1 for r in preference if r[2] == r[3]) / len(preference) if preference else None
            ),
            "reason_tags": reason_tags.most_common(),
            "length_difference": {
                "mean": _round(float(np.mean(differences)) if differences else None, 1),
                "longer_chosen_share": _round(
                    sum(1 for d in differences if d > 0) / len(differences) if differences else None
                ),
                "histogram": diversity.histogram(differences),
            },
            "prompts_with_pairs": len(by_prompt),
        },
    }


def prompts_for_coverage(
    *, project: Project, count: int, least_used_first: QuerySet[Prompt] | None = None
) -> list[Prompt]:
    """`count` training prompts chosen to even out coverage: each pick goes to the cluster
    whose share of judged pairs (counting the picks so far) lags its share of training
    prompts the most; within a cluster, the least used prompts first. Held-out prompts are
    never chosen. Without clusters yet (no coverage computed), the least used prompts.

    `least_used_first`: the project's training prompts in the caller's order of use (a round
    counts the rounds a prompt was in); by default, by the comparisons made of them."""
    if least_used_first is None:
        least_used_first = (
            Prompt.objects.filter(project=project, split=Split.TRAIN)
            .annotate(uses=Count("comparisons"))
            .order_by("uses", "id")
        )
    train = least_used_first.filter(project=project, split=Split.TRAIN)
    if count <= 0:
        return []
    if not train.filter(cluster__isnull=False).exists():
        return list(train[:count])
    candidates: defaultdict[int, list[int]] = defaultdict(list)
    for prompt_id, cluster in train.filter(cluster__isnull=False).values_list("id", "cluster"):
        if cluster is not None:
            candidates[cluster].append(prompt_id)
    sizes = {cluster: len(ids) for cluster, ids in candidates.items()}
    total = sum(sizes.values())
    judged = Counter(
        PreferencePair.objects.filter(project=project, comparison__prompt__cluster__isnull=False)
        .values_list("comparison__prompt__cluster", flat=True)
        .iterator(5000)
    )
    have = {cluster: judged.get(cluster, 0) for cluster in sizes}
    taken = dict.fromkeys(sizes, 0)
    chosen: list[int] = []
    pairs_total = sum(have.values())
    while len(chosen) < count:
        open_clusters = [c for c in sizes if taken[c] < len(candidates[c])]
        if not open_clusters:
            break
        after = pairs_total + len(chosen) + 1
        # How far the cluster's pairs (with this session's picks) lag its share of prompts.
        best = max(
            open_clusters,
            key=lambda c: (sizes[c] / total * after - (have[c] + taken[c]), -c),
        )
        chosen.append(candidates[best][taken[best]])
        taken[best] += 1
    order = {prompt_id: i for i, prompt_id in enumerate(chosen)}
    return sorted(Prompt.objects.filter(pk__in=chosen), key=lambda p: order[p.pk])
