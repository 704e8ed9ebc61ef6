"""What the base policy leaves a rule to learn: its property on v0's held-out samples, how
many of v0's own pairs it ties, and the best win rate any policy could reach against v0.

python bench/rule_ceilings.py [--rules shorter,no_lists,...] [--samples 4] [--prompts 50]
    [--max-new-tokens 200] [--models-dir data/models]

Samples v0 (the packaged SmolLM2) on the demo's held-out prompts with the loop check's
sampling, then for each rule (default: the loop check's panel) prints the mean property, the
share of tied pairs among v0's samples (adjacent pairs), and two ceilings of the head-to-head
(ties half a win): for a yes/no rule (its measure 1 for the response it prefers), exact:
1 - (v0's share that has the property) / 2, since a v1 that always has it still only ties
those; for any rule, an estimate from v0's own pool: per prompt, the best of its samples
judged against the others.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from statistics import mean

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")


def main() -> None:
    import django

    django.setup()
    from alignment.engine.generation import GenerationConfig, generate
    from alignment.engine.rules import PANEL, rule_load
    from alignment.engine.sources import PACKAGED_SMOLLM2
    from annotate.demo_data import demo_prompts
    from annotate.models import Split

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", default=",".join(PANEL))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    args = parser.parse_args()
    if args.samples < 2:
        parser.error("--samples must be at least 2 (ties and the pool need pairs)")
    rows = [r for r in demo_prompts() if r.split == Split.EVAL][: args.prompts]
    config = GenerationConfig(
        model=PACKAGED_SMOLLM2,
        models_dir=args.models_dir,
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        seed=1,
    )
    started = time.monotonic()
    samples = generate(config, [r.messages for r in rows])
    cut = sum(s.finish_reason == "length" for s in samples) / len(samples)
    print(
        f"v0: {len(samples)} samples of {len(rows)} held-out prompts in "
        f"{time.monotonic() - started:.0f} s; {cut:.1%} cut off at {args.max_new_tokens} tokens; "
        f"{mean(s.completion_tokens for s in samples):.0f} tokens on average"
    )
    by_prompt: dict[int, list[str]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_index, []).append(s.text)
    score = {"a": 1.0, "b": 0.0, "tie": 0.5}
    print("| rule | v0's property | ties among v0's pairs | yes/no ceiling | pool ceiling |")
    print("|---|---|---|---|---|")
    for name in args.rules.split(","):
        rule = rule_load(name.strip())
        values = [rule.measure(s.text) for s in samples]
        pairs = [(t[i], t[i + 1]) for t in by_prompt.values() for i in range(0, len(t) - 1, 2)]
        ties = mean(rule.judge("", a, b) == "tie" for a, b in pairs)
        binary = set(values) <= {0.0, 1.0}
        exact = f"{1 - mean(values) / 2:.1%}" if binary else "-"
        pool = mean(
            max(
                mean(score[rule.judge("", c, o)] for j, o in enumerate(texts) if j != i)
                for i, c in enumerate(texts)
            )
            for texts in by_prompt.values()
        )
        print(f"| {rule.name} | {mean(values):.3g} | {ties:.0%} | {exact} | {pool:.1%} |")


if __name__ == "__main__":
    main()
