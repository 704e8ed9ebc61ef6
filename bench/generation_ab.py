"""Generation speed of two source trees, interleaved (A B A B ...), each run a fresh process.

python bench/generation_ab.py OLD_TREE NEW_TREE [--runs 3] [--prompts 32] [--samples 2]
    [--max-new-tokens 200] [--model-dir data/models/smollm2-135m-instruct] [--adapter DIR]

Each run samples `--samples` responses for the first `--prompts` demo prompts with the tree's
`alignment.engine.generation.generate` (default sampling: temperature 0.9, top-p 0.95, batch
16), of the base model or the base with `--adapter` (a trained policy, e.g. the v1 of a
loop check: short answers beside long ones), and prints wall seconds, generated tokens, tokens/s and the share cut off at the cap. A
tree is a checkout of this repository (e.g. `git worktree add /tmp/old <commit>`); the
`.venv` of this one runs both. Ends with the median and range of each tree's seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run inside the tree under test: its engine first on the path.
_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from alignment.engine.generation import GenerationConfig, generate
prompts = [json.loads(l)["messages"] for l in open(sys.argv[2]) if l.strip()][: int(sys.argv[3])]
config = GenerationConfig(model=sys.argv[6], models_dir=".", samples_per_prompt=int(sys.argv[4]),
                          max_new_tokens=int(sys.argv[5]), seed=1, adapter=sys.argv[7] or None)
started = time.monotonic()
samples = generate(config, prompts)
wall = time.monotonic() - started
tokens = sum(s.completion_tokens for s in samples)
cut = sum(s.finish_reason == "length" for s in samples) / len(samples)
print(json.dumps({"wall": wall, "tokens": tokens, "cut_off": cut}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument(
        "--model-dir", default=str(REPO_ROOT / "data" / "models" / "smollm2-135m-instruct")
    )
    parser.add_argument("--adapter", default="", help="A LoRA adapter directory.")
    args = parser.parse_args()
    prompts = REPO_ROOT / "annotate" / "demo" / "prompts.jsonl"
    walls: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for run in range(args.runs):
        for label, tree in zip("AB", args.trees, strict=True):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    str(Path(tree).resolve()),
                    str(prompts),
                    str(args.prompts),
                    str(args.samples),
                    str(args.max_new_tokens),
                    args.model_dir,
                    args.adapter,
                ],
                check=True,
                capture_output=True,
                text=True,
                env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            walls[tree].append(figures["wall"])
            print(
                f"run {run + 1} {label} {tree}: {figures['wall']:.1f} s, {figures['tokens']} tokens, "
                f"{figures['tokens'] / figures['wall']:.1f} tokens/s, "
                f"{figures['cut_off']:.0%} cut off",
                flush=True,
            )
    for label, tree in zip("AB", args.trees, strict=True):
        values = walls[tree]
        print(
            f"{label} {tree}: median {statistics.median(values):.1f} s "
            f"(range {min(values):.1f}-{max(values):.1f})"
        )


if __name__ == "__main__":
    main()
