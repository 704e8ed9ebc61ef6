"""How many informative pairs a round's samples give each rule, by pair selection and K.

python bench/pair_yield.py [--rules shorter,no_lists,...] [--samples 8] [--prompts 64]
    [--max-new-tokens 200] [--samples-file PATH] [--models-dir data/models]

Samples v0 (the packaged SmolLM2) K times on the demo's first training prompts with the loop
check's sampling (or reads them back from --samples-file, which it writes after sampling),
then for each rule (default: the loop check's panel) plays the round's pair selection on the
first k of each prompt's samples, k = 2, 4, ... K, as the queue would: `adjacent` pairs every
two samples in turn; `winner_stays` starts with the first pair (alignment.engine.selection)
and lets each pair's winner meet the next sample it has not met; `ranking` (k from 3 to 6)
shows the prompt's distinct samples at once, ranked by the rule's wins and losses
(alignment.engine.rules.ranks_by_rule), every pair they imply counted. Pairs whose two
responses were both cut off are skipped, as the loop check's annotators skip them (a ranking:
when every response was; otherwise every pair it implies counts, as the app makes them). Prints, per rule and selection: judgments asked, preference pairs
got (what DPO trains on), ties, the share of prompts that gave at least one preference pair,
and the annotators' time under a reading model: reading time proportional to the characters
shown (the prompt and every response of each judgment, at alignment.loop.READING_CHARS_PER_S),
and the preference pairs it buys a minute. No training: the yield alone, in seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")


@dataclass
class Yield:
    judgments: int = 0
    pairs: int = 0
    ties: int = 0
    skipped: int = 0
    prompts_with_a_pair: int = 0
    chars_read: int = 0


def _play(
    strategy: str,
    prompt: str,
    texts: Sequence[str],
    complete: Sequence[bool],
    rule: Any,
    into: Yield,
) -> None:
    """One prompt's comparisons under `strategy`, judged by the rule as they come."""
    from alignment.engine.rules import ranks_by_rule
    from alignment.engine.selection import ladder_next, pair_select

    pairs_before = into.pairs
    judge: Callable[[str, str], str] = functools.partial(rule.judge, prompt)

    if strategy == "ranking":
        # The prompt's distinct samples, as a ranking round shows them (services.pairs).
        first_of = {}
        for i, text in enumerate(texts):
            first_of.setdefault(text.strip(), i)
        shown = sorted(first_of.values())
        if len(shown) < 2:
            return
        if not any(complete[i] for i in shown):
            into.skipped += 1
            return
        into.judgments += 1
        into.chars_read += len(prompt) + sum(len(texts[i]) for i in shown)
        ranks = ranks_by_rule(rule, prompt, [texts[i] for i in shown])
        # Every pair it implies, as the app makes them (two cut-off answers included).
        for a, b in combinations(range(len(shown)), 2):
            if ranks[a] == ranks[b]:
                into.ties += 1
            else:
                into.pairs += 1
        into.prompts_with_a_pair += into.pairs > pairs_before
        return

    def meet(i: int, j: int) -> str | None:
        if not complete[i] and not complete[j]:
            into.skipped += 1
            return None
        into.judgments += 1
        into.chars_read += len(prompt) + len(texts[i]) + len(texts[j])
        verdict = judge(texts[i], texts[j])
        if verdict == "tie":
            into.ties += 1
        else:
            into.pairs += 1
        return verdict

    if strategy == "adjacent":
        for i in range(0, len(texts) - 1, 2):
            if texts[i].strip() != texts[i + 1].strip():
                meet(i, i + 1)
    else:
        first = pair_select(strategy, texts, rng=random.Random(0), complete=complete)
        champion, other = first.first, first.second
        met: set[frozenset[int]] = set()
        while other is not None:
            met.add(frozenset((champion, other)))
            verdict = meet(champion, other)
            if verdict == "b":
                champion = other
            if verdict is None:
                break  # a skipped pair is never decided: its ladder stops there
            shown = {i for pair in met for i in pair}
            other = ladder_next(champion, texts, met=met, shown=shown, complete=complete)
    into.prompts_with_a_pair += into.pairs > pairs_before


def main() -> None:
    import django

    django.setup()
    from alignment.engine.generation import CUT_OFF, GenerationConfig, generate
    from alignment.engine.rules import PANEL, rule_load
    from alignment.engine.sources import PACKAGED_SMOLLM2
    from alignment.loop import READING_CHARS_PER_S
    from annotate.demo_data import demo_prompts
    from annotate.models import Split

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", default=",".join(PANEL))
    parser.add_argument(
        "--selections",
        default="adjacent,winner_stays,ranking",
        help="comma-separated: adjacent, winner_stays, ranking",
    )
    parser.add_argument("--samples", type=int, default=8, help="K, samples per prompt")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--samples-file", default=None, help="JSON of samples to reuse or write")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    args = parser.parse_args()
    if args.samples < 2:
        parser.error("--samples must be at least 2")
    cache = Path(args.samples_file) if args.samples_file else None
    if cache is not None and cache.exists():
        groups = json.loads(cache.read_text())
        print(f"read {sum(len(g) for g in groups)} samples of {len(groups)} prompts from {cache}")
    else:
        rows = [r for r in demo_prompts() if r.split == Split.TRAIN][: args.prompts]
        config = GenerationConfig(
            model=PACKAGED_SMOLLM2,
            models_dir=args.models_dir,
            samples_per_prompt=args.samples,
            max_new_tokens=args.max_new_tokens,
            seed=1,
        )
        started = time.monotonic()
        samples = generate(config, [r.messages for r in rows])
        groups = [[] for _ in rows]
        for s in samples:
            groups[s.prompt_index].append([s.text, s.finish_reason != CUT_OFF])
        cut = sum(s.finish_reason == CUT_OFF for s in samples) / len(samples)
        print(
            f"v0: {len(samples)} samples of {len(rows)} training prompts in "
            f"{time.monotonic() - started:.0f} s; {cut:.1%} cut off at {args.max_new_tokens} tokens"
        )
        if cache is not None:
            cache.write_text(json.dumps(groups))
    prompts = [r.messages[-1]["content"] for r in demo_prompts() if r.split == Split.TRAIN]
    ks = list(range(2, len(groups[0]) + 1, 2))
    print(
        "| rule | selection | K | judgments | preference pairs | ties | skipped "
        "| prompts with a pair | annotator minutes (reading) | pairs a minute |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.rules.split(","):
        rule = rule_load(name.strip())
        for strategy in args.selections.split(","):
            for k in sorted(ks + ([3, 5] if strategy == "ranking" else [])):
                if (strategy != "adjacent" and k < 3) or (strategy == "ranking" and k > 6):
                    continue
                if k > len(groups[0]):
                    continue
                found = Yield()
                for prompt, group in zip(prompts, groups, strict=False):
                    texts = [text for text, _ in group[:k]]
                    complete = [done for _, done in group[:k]]
                    _play(strategy, prompt, texts, complete, rule, found)
                share = found.prompts_with_a_pair / len(groups)
                minutes = found.chars_read / READING_CHARS_PER_S / 60
                print(
                    f"| {rule.name} | {strategy} | {k} | {found.judgments} | {found.pairs} "
                    f"| {found.ties} | {found.skipped} | {share:.0%} | {minutes:.1f} "
                    f"| {found.pairs / minutes if minutes else 0:.1f} |"
                )


if __name__ == "__main__":
    main()
