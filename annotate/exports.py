"""Preference data out, in the formats the ecosystem trains on, streamed.

Formats (rows are TRL's conversational layouts, so `datasets.load_dataset` and TRL's
trainers take them unchanged):
- `dpo`: one row per chosen/rejected pair:
  {"prompt": [messages...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
- `kto`: unpaired, one row per response: {"prompt": [...], "completion": [...], "label": bool}.
  A pair gives its chosen response label true and its rejected one false; a tie gives both
  true (equally acceptable), "both bad" both false. A ranking gives two rows, not two per
  implied pair: its best response (aggregated over its implied pairs, by wins minus losses)
  true and its worst false; judged all bad, each of its responses false. A rating gives one
  row: its response, true when rated desirable (good), false when undesirable (bad).

Pairs implied by a ranking are pairs like the others in `dpo` (one row each).

Filters: rounds, agreement, prompt split, tags, and criteria (the winner must also have won
each named criterion by the majority of its votes' per-criterion choices).

An export is a directory laid out as a Hugging Face dataset: `data/train.jsonl` or
`data/train.parquet`, and a dataset card `README.md` (counts, agreement, guideline versions,
prompt figures, the filters). Rows are read in chunks and written as they come, so memory
stays flat however many pairs there are.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

from django.db.models import QuerySet
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.utils import timezone

from annotate.models import (
    Comparison,
    Guideline,
    Judgment,
    JudgmentKind,
    PairKind,
    PreferencePair,
    Project,
    Response,
    Split,
)
from annotate.ranking import wins_minus_losses
from annotate.services.model_judgments import model_judge_counts
from core.errors import ValidationFailed

FORMATS = {
    "dpo": "TRL DPO, conversational (prompt / chosen / rejected)",
    "kto": "TRL KTO, unpaired (prompt / completion / label)",
}
FILE_TYPES = ("jsonl", "parquet")
SPLITS = ("train", "eval", "all")
# Rows fetched per round trip: large enough to amortise it, small enough to keep memory flat.
CHUNK = 2000


class ExportError(ValidationFailed):
    """The export cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class ExportFilters:
    rounds: tuple[int, ...] = ()  # empty: every round
    min_agreement: float = 0.0
    split: str = "train"  # train, eval (the held-out prompts) or all
    tags: tuple[str, ...] = ()  # prompts carrying any of these; empty: all
    include_ties: bool = True  # kto only: ties (both desirable) and both-bad (both not)
    # Criteria the winner must also have won: by the majority of the live votes' choices for
    # each of them. Pairs without such votes (imported ones), ties and both-bad are left out.
    criteria: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ExportError(f"Unknown split {self.split!r}; expected one of {list(SPLITS)}.")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError("The agreement threshold is a share between 0 and 1.")

    def as_json(self) -> dict[str, Any]:
        return {
            "rounds": list(self.rounds),
            "min_agreement": self.min_agreement,
            "split": self.split,
            "tags": list(self.tags),
            "include_ties": self.include_ties,
            "criteria": list(self.criteria),
        }


def export_pairs(*, project: Project, format: str, filters: ExportFilters) -> QuerySet[Any]:
    """The pairs an export takes, oldest first, as the few columns the rows need."""
    if format not in FORMATS:
        raise ExportError(f"Unknown format {format!r}; expected one of {sorted(FORMATS)}.")
    kinds = [PairKind.PREFERENCE]
    if format == "kto" and not filters.criteria:
        kinds += [PairKind.GOOD, PairKind.BAD]  # ratings: unpaired by nature
        if filters.include_ties:
            kinds += [PairKind.TIE, PairKind.BOTH_BAD]
    pairs = PreferencePair.objects.filter(
        project=project, kind__in=kinds, agreement__gte=filters.min_agreement
    )
    if filters.split != "all":
        pairs = pairs.filter(comparison__prompt__split=Split(filters.split))
    if filters.rounds:
        pairs = pairs.filter(comparison__round_number__in=filters.rounds)
    if format == "kto":
        pairs = pairs.filter(comparison__ranking__isnull=True)  # rankings: best and worst
    return pairs.order_by("id").values_list(
        "id",
        "kind",
        "agreement",
        "n_judgments",
        "comparison_id",
        "comparison__round_number",
        "comparison__prompt_id",
        "comparison__prompt__tags",
        "comparison__prompt__messages",
        "chosen__text",
        "rejected__text",
        "chosen_id",
        "comparison__response_a_id",
        "comparison__ranking_id",
    )


def _criteria_winners(
    comparison_ids: list[int], criteria: tuple[str, ...]
) -> dict[int, dict[str, str]]:
    """comparison id → criterion → "a" or "b", by the majority of its live votes' choices for
    that criterion (a criterion with a tied or no count is absent)."""
    counts: dict[int, dict[str, Counter[str]]] = {}
    votes = Judgment.objects.filter(
        comparison_id__in=comparison_ids, kind=JudgmentKind.VOTE, superseded_at__isnull=True
    ).values_list("comparison_id", "criteria")
    for comparison_id, chosen in votes:
        for name in criteria:
            value = (chosen or {}).get(name)
            if value:
                counts.setdefault(comparison_id, {}).setdefault(name, Counter())[value] += 1
    winners: dict[int, dict[str, str]] = {}
    for comparison_id, by_name in counts.items():
        for name, counted in by_name.items():
            a, b = counted.get("a", 0), counted.get("b", 0)
            if a != b:
                winners.setdefault(comparison_id, {})[name] = "a" if a > b else "b"
    return winners


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


SAMPLE_SIZE = 10_000


class Sample:
    """A uniform sample of at most SAMPLE_SIZE values (reservoir sampling, seeded): length
    quantiles of a million rows without keeping a million numbers."""

    def __init__(self, seed: int) -> None:
        self.values: list[int] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, value: int) -> None:
        self.seen += 1
        if len(self.values) < SAMPLE_SIZE:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < SAMPLE_SIZE:
            self.values[slot] = value


@dataclass
class CardFigures:
    """What the dataset card reports, gathered while the rows stream past in bounded memory:
    counters, a bitmap of the prompts seen, and samples for the length quantiles."""

    pairs_by_kind: Counter[str] = field(default_factory=Counter)
    from_rankings: int = 0  # of the pairs, those a ranking implies
    rows: int = 0
    rounds: Counter[int] = field(default_factory=Counter)
    # Agreement is k/n with small n: few distinct values, so counting them is exact.
    agreement: Counter[float] = field(default_factory=Counter)
    judgments: int = 0
    prompts_seen: bytearray = field(default_factory=bytearray)  # bit i: prompt id i
    distinct_prompts: int = 0
    prompt_chars: Sample = field(default_factory=lambda: Sample(seed=1))
    chosen_minus_rejected_chars: Sample = field(default_factory=lambda: Sample(seed=2))
    guideline_versions: set[int] = field(default_factory=set)
    # Model judges whose answers count in the exported pairs: name → [votes, fill-ins].
    model_judges: dict[str, list[int]] = field(default_factory=dict)

    def prompt_first_seen(self, prompt_id: int) -> bool:
        byte, bit = divmod(prompt_id, 8)
        if byte >= len(self.prompts_seen):
            self.prompts_seen.extend(bytes(byte + 1 - len(self.prompts_seen) + 4096))
        if self.prompts_seen[byte] >> bit & 1:
            return False
        self.prompts_seen[byte] |= 1 << bit
        self.distinct_prompts += 1
        return True


def export_rows(
    *, project: Project, format: str, filters: ExportFilters, figures: CardFigures | None = None
) -> Iterator[dict[str, Any]]:
    """The export's rows one by one (see the module docstring for their layout)."""
    figures = figures if figures is not None else CardFigures()
    wanted_tags = set(filters.tags)
    rows = export_pairs(project=project, format=format, filters=filters).iterator(chunk_size=CHUNK)
    for chunk in _chunks(rows, CHUNK):
        winners = (
            _criteria_winners([r[4] for r in chunk], filters.criteria) if filters.criteria else {}
        )
        kept = []
        for row in chunk:
            # Tags are filtered here, not in SQL: JSON containment is not portable to SQLite.
            if wanted_tags and not wanted_tags.intersection(row[7] or ()):
                continue
            if filters.criteria:
                won = winners.get(row[4], {})
                chosen_side = "a" if row[11] == row[12] else "b"
                if any(won.get(name) != chosen_side for name in filters.criteria):
                    continue
            kept.append(row[4])
            yield from _pair_rows(row, format=format, figures=figures)
        if kept:
            figures.guideline_versions |= _guideline_versions(kept)
            for judge in model_judge_counts(comparison_ids=kept):
                counts = figures.model_judges.setdefault(judge["judge"], [0, 0])
                counts[0] += judge["votes"]
                counts[1] += judge["fills"]
    if format == "kto" and not filters.criteria:
        yield from _ranking_rows(project=project, filters=filters, figures=figures)


def ranking_best_worst(
    pairs: list[tuple[str, int, int]], responses: list[int]
) -> tuple[list[int], list[int]]:
    """(desirable, undesirable) responses of one ranking from its decided implied pairs
    (kind, chosen, rejected): the one with the most wins minus losses and the one with the
    fewest, each only if no other response scores level with it; every response undesirable
    when every pair was judged both bad."""
    if pairs and all(kind == PairKind.BOTH_BAD for kind, _, _ in pairs):
        return [], list(responses)
    score = wins_minus_losses(
        responses,
        ((chosen, rejected) for kind, chosen, rejected in pairs if kind == PairKind.PREFERENCE),
    )
    ordered = sorted(score.values())
    if len(ordered) < 2 or ordered[0] == ordered[-1]:
        return [], []
    best = [r for r in responses if score[r] == ordered[-1]]
    worst = [r for r in responses if score[r] == ordered[0]]
    return (best if len(best) == 1 else []), (worst if len(worst) == 1 else [])


def _ranking_rows(
    *, project: Project, filters: ExportFilters, figures: CardFigures
) -> Iterator[dict[str, Any]]:
    """KTO rows of the rankings whose implied pairs pass the filters: best true, worst false.
    The pairs are read in ranking order, CHUNK rankings at a time, so memory stays flat."""
    pairs = PreferencePair.objects.filter(
        project=project,
        comparison__ranking__isnull=False,
        agreement__gte=filters.min_agreement,
    )
    if filters.split != "all":
        pairs = pairs.filter(comparison__prompt__split=Split(filters.split))
    if filters.rounds:
        pairs = pairs.filter(comparison__round_number__in=filters.rounds)
    rows = (
        pairs.order_by("comparison__ranking_id", "id")
        .values_list("comparison__ranking_id", "kind", "chosen_id", "rejected_id")
        .iterator(chunk_size=CHUNK)
    )
    batch: dict[int, list[tuple[str, int, int]]] = {}
    for ranking_id, group in groupby(rows, key=lambda row: row[0]):
        batch[ranking_id] = [(kind, chosen, rejected) for _, kind, chosen, rejected in group]
        if len(batch) == CHUNK:
            yield from _ranking_batch_rows(batch, filters=filters, figures=figures)
            batch = {}
    yield from _ranking_batch_rows(batch, filters=filters, figures=figures)


def _ranking_batch_rows(
    batch: dict[int, list[tuple[str, int, int]]], *, filters: ExportFilters, figures: CardFigures
) -> Iterator[dict[str, Any]]:
    rankings = list(
        Comparison.objects.filter(pk__in=list(batch)).select_related("prompt").order_by("id")
    )
    texts = dict(
        Response.objects.filter(pk__in=[r for c in rankings for r in c.responses]).values_list(
            "id", "text"
        )
    )
    wanted_tags = set(filters.tags)
    for ranking in rankings:
        prompt = ranking.prompt
        if wanted_tags and not wanted_tags.intersection(prompt.tags or ()):
            continue
        implied = batch[ranking.pk]
        if not filters.include_ties and all(k == PairKind.BOTH_BAD for k, _, _ in implied):
            continue  # all bad: left out with the ties and both-bad pairs
        good, bad = ranking_best_worst(implied, list(ranking.responses))
        if not good and not bad:
            continue
        figures.pairs_by_kind["ranking (best and worst)"] += 1
        figures.rounds[ranking.round_number] += 1
        if figures.prompt_first_seen(prompt.pk):
            figures.prompt_chars.add(sum(len(m.get("content", "")) for m in prompt.messages))
        for label, picked in ((True, good), (False, bad)):
            for response_id in picked:
                figures.rows += 1
                yield {
                    "prompt": prompt.messages,
                    "completion": _assistant(texts[response_id]),
                    "label": label,
                }


def _pair_rows(
    row: tuple[Any, ...], *, format: str, figures: CardFigures
) -> Iterator[dict[str, Any]]:
    """The one (DPO) or two (KTO) rows of a pair, counted into the card's figures."""
    _, kind, agreement, n_judgments, _, round_number, prompt_id = row[:7]
    messages, chosen, rejected = row[8:11]
    figures.pairs_by_kind[kind] += 1
    figures.from_rankings += row[13] is not None
    figures.rounds[round_number] += 1
    figures.agreement[round(agreement, 4)] += 1
    figures.judgments += n_judgments
    if figures.prompt_first_seen(prompt_id):
        figures.prompt_chars.add(sum(len(m.get("content", "")) for m in messages))
    if kind == PairKind.PREFERENCE:
        figures.chosen_minus_rejected_chars.add(len(chosen) - len(rejected))
    if format == "dpo":
        figures.rows += 1
        yield {"prompt": messages, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
        return
    if kind in (PairKind.GOOD, PairKind.BAD):  # a rating: its one response
        figures.rows += 1
        yield {"prompt": messages, "completion": _assistant(chosen), "label": kind == PairKind.GOOD}
        return
    first_label = kind != PairKind.BOTH_BAD  # chosen of a pair, or either of a tie
    second_label = kind == PairKind.TIE
    figures.rows += 2
    yield {"prompt": messages, "completion": _assistant(chosen), "label": first_label}
    yield {"prompt": messages, "completion": _assistant(rejected), "label": second_label}


def _guideline_versions(comparison_ids: list[int]) -> set[int]:
    """The guideline versions the live judgments of these comparisons were made under."""
    return set(
        Judgment.objects.filter(
            comparison_id__in=comparison_ids,
            superseded_at__isnull=True,
            guideline__isnull=False,
        )
        .exclude(kind__in=[JudgmentKind.RECHECK, JudgmentKind.SUGGESTION])
        .values_list("guideline__version", flat=True)
        .distinct()
    )


def jsonl_lines(rows: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for row in rows:
        yield (json.dumps(row, ensure_ascii=False) + "\n").encode()


def _parquet_write(path: Path, format: str, rows: Iterator[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    messages = pa.list_(message)
    columns: list[tuple[str, Any]] = [("prompt", messages)]
    if format == "dpo":
        columns += [("chosen", messages), ("rejected", messages)]
    else:
        columns += [("completion", messages), ("label", pa.bool_())]
    schema = pa.schema(columns)
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    data_file: Path
    card_file: Path
    rows: int
    figures: CardFigures


def export_write(
    *,
    project: Project,
    directory: Path,
    format: str = "dpo",
    file_type: str = "jsonl",
    filters: ExportFilters | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the export as a dataset directory (data file + card); `load_dataset(directory)`
    reads it. Refuses a directory that already holds an export (nothing is overwritten)."""
    filters = filters or ExportFilters()
    if file_type not in FILE_TYPES:
        raise ExportError(f"Unknown file type {file_type!r}; expected one of {list(FILE_TYPES)}.")
    export_pairs(project=project, format=format, filters=filters)  # validates the format
    data_dir = directory / "data"
    data_file = data_dir / f"train.{file_type}"
    card_file = directory / "README.md"
    if data_file.exists() or card_file.exists():
        raise ExportError(f"{directory} already holds an export; choose a new directory.")
    data_dir.mkdir(parents=True, exist_ok=True)
    figures = CardFigures()

    def counted() -> Iterator[dict[str, Any]]:
        for row in export_rows(project=project, format=format, filters=filters, figures=figures):
            yield row
            if on_progress is not None and figures.rows % CHUNK == 0:
                on_progress(figures.rows)

    partial = data_file.with_suffix(data_file.suffix + ".partial")
    try:
        if file_type == "jsonl":
            with partial.open("wb") as out:
                for line in jsonl_lines(counted()):
                    out.write(line)
        else:
            _parquet_write(partial, format, counted())
        partial.rename(data_file)  # a reader never sees half an export under the final name
    finally:
        partial.unlink(missing_ok=True)
    card_file.write_text(
        dataset_card(
            project=project, format=format, file_type=file_type, filters=filters, figures=figures
        ),
        encoding="utf-8",
    )
    if on_progress is not None:
        on_progress(figures.rows)
    return ExportResult(
        directory=directory,
        data_file=data_file,
        card_file=card_file,
        rows=figures.rows,
        figures=figures,
    )


def _quantiles(values: list[int] | list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:g}"
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"median {q[1]:g} (quartiles {q[0]:g} to {q[2]:g})"


def _sampled(sample: Sample) -> str:
    figure = _quantiles(sample.values)
    if sample.seen > len(sample.values):
        figure += f", from a sample of {len(sample.values):,} of {sample.seen:,}"
    return figure


def _counted_quantiles(counts: Counter[float]) -> str:
    """Quartiles of values given as value -> count (exact, in the counts' memory)."""
    total = sum(counts.values())
    if not total:
        return "—"
    ordered = sorted(counts.items())

    def at(share: float) -> float:
        rank, seen = share * (total - 1), 0
        for value, n in ordered:
            seen += n
            if seen > rank:
                return value
        return ordered[-1][0]

    return f"median {at(0.5):g} (quartiles {at(0.25):g} to {at(0.75):g})"


def dataset_card(
    *, project: Project, format: str, file_type: str, filters: ExportFilters, figures: CardFigures
) -> str:
    """A Hugging Face dataset card (YAML header + markdown) describing this export."""
    guideline_versions = sorted(figures.guideline_versions)
    current = Guideline.objects.filter(project=project).order_by("-version").first()
    agreement = figures.agreement
    pairs = sum(agreement.values())
    mean = sum(value * n for value, n in agreement.items()) / pairs if pairs else None
    header = [
        "---",
        f"pretty_name: {json.dumps(project.name + ' preference data')}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: data/train.{file_type}",
        "tags:",
        "- preference",
        f"- {format}",
        "- prefloop",
        "---",
    ]
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(figures.pairs_by_kind.items())) or "none"
    lines = [
        f"# {project.name}: preference data ({format.upper()})",
        "",
        f"Exported by Prefloop on {timezone.now():%Y-%m-%d %H:%M} UTC from project `{project.slug}`.",
        f"Format: {FORMATS[format]}; file `data/train.{file_type}`.",
        "",
        "## Counts",
        f"- rows: {figures.rows}",
        f"- pairs: {sum(figures.pairs_by_kind.values())} ({kinds})"
        + (f"; {figures.from_rankings} implied by rankings" if figures.from_rankings else ""),
        f"- distinct prompts: {figures.distinct_prompts}",
        f"- judgments behind them: {figures.judgments}",
        "- rounds: "
        + (", ".join(f"round {r}: {n}" for r, n in sorted(figures.rounds.items())) or "—"),
        "",
        "## Agreement",
        "- share of judgments agreeing with each pair's outcome: " + _counted_quantiles(agreement),
        f"- mean: {mean:.3f}" if mean is not None else "- mean: —",
        f"- pairs with full agreement: {sum(n for a, n in agreement.items() if a >= 1.0)}",
        "",
        "## Prompts and responses",
        f"- prompt length in characters: {_sampled(figures.prompt_chars)}",
        "- chosen minus rejected length in characters: "
        + _sampled(figures.chosen_minus_rejected_chars),
        "",
        "## Guidelines",
        "- versions the judgments were made under: "
        + (", ".join(f"v{v}" for v in guideline_versions) or "—"),
        f"- current version: v{current.version}" if current else "- current version: —",
        "",
        "## Model judges",
        (
            "- "
            + "; ".join(
                f"{name} (a model): {votes} votes, {fills} fill-ins"
                for name, (votes, fills) in sorted(figures.model_judges.items())
            )
            + " (suggestions never decide a pair)"
            if figures.model_judges
            else "- none: every pair was decided by people"
        ),
        "",
        "## Filters",
        "```json",
        json.dumps(filters.as_json() | {"format": format}, indent=2),
        "```",
        "",
    ]
    return "\n".join([*header, "", *lines])


def export_download(
    *,
    project: Project,
    format: str,
    filters: ExportFilters,
    part: Literal["data", "card"],
    attachment: bool = True,
) -> HttpResponseBase:
    """An export over HTTP, for the pages and the API alike: `data`, its JSONL rows streamed;
    `card`, its dataset card (README.md), counted from the same rows."""
    name = f"{project.slug}-{format}-{timezone.now():%Y%m%d-%H%M}"
    response: HttpResponse | StreamingHttpResponse
    if part == "data":
        rows = export_rows(project=project, format=format, filters=filters)
        response = StreamingHttpResponse(jsonl_lines(rows), content_type="application/jsonl")
        filename = f"{name}.jsonl"
    else:
        figures = CardFigures()
        for _ in export_rows(project=project, format=format, filters=filters, figures=figures):
            pass
        card = dataset_card(
            project=project, format=format, file_type="jsonl", filters=filters, figures=figures
        )
        response = HttpResponse(card, content_type="text/markdown; charset=utf-8")
        filename = f"{name}-README.md"
    if attachment:
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
