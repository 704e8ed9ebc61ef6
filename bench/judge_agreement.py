"""How a model judge agrees with rule judges and with gold items, on the demo's items.

python bench/judge_agreement.py [--judge local] [--prompts 48] [--max-new-tokens 200]
    [--samples-file PATH] [--rules shorter,no_lists,asks_followup,numbered_steps,plain_words]
    [--models-dir data/models]

The demo's items: v0 (the packaged SmolLM2) samples each of the demo's first training prompts
twice, as `make demo`'s round 1 does (or they are read back from --samples-file, which is
written after sampling). Each prompt's two samples are one pair. The gold items: each prompt's
first sample against a sample written for another prompt (off topic); the known answer is the
on-topic one, whichever side it is shown on.

Every pair is judged as the judge worker judges it (alignment.engine.judges.judge_pair: asked
twice, the second time with the sides swapped; a verdict only where both asks agree), by the
model judge (`--judge local`: the project's packaged model as the local judge) and by each
rule (the same machinery, a rule as the asker). Prints, per rule: Cohen's kappa of the judge's
verdicts (a, b, tie; an uncertain verdict is a tie, as where the project allows ties) against
the rule's, and the share of the rule's decided pairs the judge decided the same way; on the
gold items, the share it got right and the share it left uncertain; its position bias before
the swap (the share of single asks that preferred the response shown first; 0.5 is none) and
after it (the share of verdicts for the response shown first in the first ask); how often
its two asks agreed; and the time per pair (two asks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")


def main() -> None:
    import django

    django.setup()
    from alignment.engine.generation import GenerationConfig, generate
    from alignment.engine.judges import RuleAsker, judge_pair, local_asker_load
    from alignment.engine.rules import rule_load
    from alignment.engine.sources import PACKAGED_SMOLLM2
    from annotate.agreement import cohen_kappa
    from annotate.demo_data import demo_guidelines, demo_prompts
    from annotate.models import Split

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", default="local", choices=["local"])
    parser.add_argument(
        "--rules", default="shorter,no_lists,asks_followup,numbered_steps,plain_words"
    )
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--samples-file", default=None, help="JSON of samples to reuse or write")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    args = parser.parse_args()

    rows = [r for r in demo_prompts() if r.split == Split.TRAIN][: args.prompts]
    cache = Path(args.samples_file) if args.samples_file else None
    if cache is not None and cache.exists():
        groups = json.loads(cache.read_text())[: len(rows)]
        print(f"read the samples of {len(groups)} prompts from {cache}")
    else:
        config = GenerationConfig(
            model=PACKAGED_SMOLLM2,
            models_dir=args.models_dir,
            samples_per_prompt=2,
            max_new_tokens=args.max_new_tokens,
            seed=1,
        )
        started = time.monotonic()
        samples = generate(config, [r.messages for r in rows])
        groups = [[] for _ in rows]
        for s in samples:
            groups[s.prompt_index].append(s.text)
        print(f"v0: {len(samples)} samples in {time.monotonic() - started:.0f} s")
        if cache is not None:
            cache.write_text(json.dumps(groups))
    guidelines = demo_guidelines()
    rng = random.Random(0)
    pairs = [(r.messages, g[0], g[1]) for r, g in zip(rows, groups, strict=True)]
    gold = []  # (messages, a, b, known answer)
    for i, (r, g) in enumerate(zip(rows, groups, strict=True)):
        off_topic = groups[(i + len(groups) // 2) % len(groups)][1]
        if rng.random() < 0.5:
            gold.append((r.messages, g[0], off_topic, "a"))
        else:
            gold.append((r.messages, off_topic, g[0], "b"))

    started = time.monotonic()
    judge = local_asker_load(source=PACKAGED_SMOLLM2, models_dir=args.models_dir)
    print(f"local judge ({PACKAGED_SMOLLM2}) loaded in {time.monotonic() - started:.0f} s")

    def verdicts(asker, items):
        return [
            judge_pair(asker, guidelines=guidelines, prompt=m, a=a, b=b) for m, a, b, *_ in items
        ]

    started = time.monotonic()
    mine = verdicts(judge, pairs)
    mine_gold = verdicts(judge, gold)
    seconds = (time.monotonic() - started) / (len(pairs) + len(gold))
    every = mine + mine_gold
    decisive = [(v.asked, "a") for v in every if v.asked != "tie"] + [
        (v.swapped, "b") for v in every if v.swapped != "tie"
    ]
    first = sum(ask == shown_first for ask, shown_first in decisive) / max(len(decisive), 1)
    decided = [v.verdict for v in every if v.verdict in ("a", "b")]
    after = sum(v == "a" for v in decided) / max(len(decided), 1)
    agree = sum(v.consistent for v in every) / len(every)
    right = sum(v.verdict == known for v, (*_, known) in zip(mine_gold, gold, strict=True))
    uncertain = sum(v.verdict is None for v in mine_gold)
    print(
        f"\nlocal judge on {len(pairs)} demo pairs and {len(gold)} gold items "
        f"(on topic vs off topic), {seconds:.2f} s a pair (two asks)"
    )
    print(
        f"- gold items right: {right}/{len(gold)} ({right / len(gold):.1%}); uncertain {uncertain}"
    )
    print(f"- its two asks agree on {agree:.1%} of the pairs")
    print(
        f"- position: one ask prefers the response shown first {first:.1%} of the time "
        f"({len(decisive)} decisive asks); after the swap {after:.1%} of its {len(decided)} "
        "verdicts go to the response shown first in the first ask"
    )
    print("\n| rule | rule's decided pairs | judge decides them the same | κ (a, b, tie) |")
    print("|---|---|---|---|")
    for name in args.rules.split(","):
        rule = verdicts(RuleAsker(rule_load(name.strip())), pairs)
        labels = [(m.verdict or "tie", r.verdict or "tie") for m, r in zip(mine, rule, strict=True)]
        ruled = [(m, r) for m, r in labels if r != "tie"]
        same = sum(m == r for m, r in ruled)
        kappa = cohen_kappa(labels)
        print(
            f"| {name} | {len(ruled)} | {same} ({same / max(len(ruled), 1):.1%}) "
            f"| {kappa.value if kappa.value is None else round(kappa.value, 3)} |"
        )


if __name__ == "__main__":
    main()
