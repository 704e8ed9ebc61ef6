"""QLoRA DPO speed on the packaged SmolLM2 (CPU): seconds per step and peak RSS.

python bench/engine_training.py [--steps 6] [--batch-size 4] [--response-tokens 200] [--no-4bit]

Pairs are synthetic prose with responses of about --response-tokens tokens (chosen a
little shorter than rejected). The first step (warm-up) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve, tokenizer_load  # noqa: E402
from alignment.engine.training import PreferenceExample, TrainingConfig, TrainingProgress, train  # noqa: E402

SENTENCES = [
    "Getting enough sleep is one of the simplest ways to feel better during the day.",
    "Try to go to bed and wake up at the same time, even at weekends.",
    "Keep the bedroom cool, dark and quiet, and avoid screens for an hour before bed.",
    "Caffeine late in the afternoon can keep you awake long after you stop noticing it.",
    "Regular exercise helps, although a hard workout right before bed may not.",
    "If you cannot fall asleep after twenty minutes, get up and do something calm.",
]


def prose(tokenizer: object, tokens: int, offset: int) -> str:
    """Advice prose of about `tokens` tokens, starting at sentence `offset` (the benches' pairs)."""
    words: list[str] = []
    i = offset
    while len(tokenizer(" ".join(words))["input_ids"]) < tokens:  # type: ignore[operator]
        words.extend(SENTENCES[i % len(SENTENCES)].split())
        i += 1
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=200)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--no-4bit", action="store_true")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    args = parser.parse_args()
    path = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=args.models_dir)
    tokenizer = tokenizer_load(path)
    examples = [
        PreferenceExample(
            prompt=({"role": "user", "content": f"Give me advice on sleeping better ({i})."},),
            chosen=prose(tokenizer, int(args.response_tokens * 0.8), i),
            rejected=prose(tokenizer, args.response_tokens, i + 1),
        )
        for i in range(args.steps * args.batch_size)
    ]
    times: list[float] = []
    last = [0.0]

    def on_progress(progress: TrainingProgress) -> None:
        times.append(progress.elapsed_s - last[0])
        last[0] = progress.elapsed_s
        print(
            f"step {progress.step}/{progress.total_steps} {times[-1]:.1f}s loss {progress.loss:.4f}",
            flush=True,
        )

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        result = train(
            TrainingConfig(
                model=PACKAGED_SMOLLM2,
                models_dir=args.models_dir,
                output_dir=out,
                epochs=1,
                batch_size=args.batch_size,
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                quantize_4bit=not args.no_4bit,
            ),
            examples,
            on_progress=on_progress,
        )
    wall = time.monotonic() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "LoRA (unquantized)" if args.no_4bit else "QLoRA NF4"
    print(
        f"{mode}, batch {args.batch_size}, responses ~{args.response_tokens} tokens, r={args.lora_r}"
    )
    print(
        f"first step {times[0]:.1f}s; steady {statistics.fmean(times[1:]):.2f} s/step "
        f"(min {min(times[1:]):.2f}, max {max(times[1:]):.2f}) over {len(times) - 1} steps"
    )
    print(
        f"train() {result.elapsed_s:.1f}s, wall incl. model load {wall:.1f}s, peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
