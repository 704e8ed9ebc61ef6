"""Generation throughput on the packaged SmolLM2 (CPU): tokens/s by batch size and dtype.

python bench/engine_generation.py [--prompts 16] [--samples 2] [--max-new-tokens 200]
    [--batch-sizes 4,8,16] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from alignment.engine import generation
from alignment.engine.generation import GenerationConfig, generate
from alignment.engine.sources import PACKAGED_SMOLLM2

PROMPTS = [
    "Give me three tips for sleeping better.",
    "Write a Python function that reverses a string.",
    "Explain what a black hole is to a ten-year-old.",
    "What should I pack for a weekend hiking trip?",
    "Write a short poem about autumn leaves.",
    "How do I make a good cup of coffee at home?",
    "What are the main causes of inflation?",
    "Summarise the plot of Romeo and Juliet.",
    "How can I improve my public speaking?",
    "Explain the difference between a list and a tuple in Python.",
    "Plan a simple weekly workout for a beginner.",
    "What is photosynthesis?",
    "Write a polite email declining a meeting invitation.",
    "How do vaccines work?",
    "Give me ideas for a birthday party for a seven-year-old.",
    "What is the Pythagorean theorem and how is it used?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--models-dir", default=str(Path(__file__).resolve().parents[1] / "data" / "models")
    )
    args = parser.parse_args()
    prompts = [[{"role": "user", "content": p}] for p in (PROMPTS * 4)[: args.prompts]]
    print(
        f"torch threads {torch.get_num_threads()}, {args.prompts} prompts x {args.samples} samples, "
        f"max_new_tokens {args.max_new_tokens}"
    )
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        generation.generation_dtype = lambda dtype=dtype: dtype  # type: ignore[assignment]
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            config = GenerationConfig(
                model=PACKAGED_SMOLLM2,
                models_dir=args.models_dir,
                samples_per_prompt=args.samples,
                max_new_tokens=args.max_new_tokens,
                batch_size=batch_size,
                seed=0,
            )
            started = time.monotonic()
            first: list[float] = []
            samples = generate(
                config, prompts, on_progress=lambda p, first=first: first.append(p.elapsed_s)
            )
            wall = time.monotonic() - started
            tokens = sum(s.completion_tokens for s in samples)
            gen_s = first[-1]  # generation loop only, without the model load
            stopped = sum(s.finish_reason == "stop" for s in samples)
            print(
                f"dtype {dtype_name:8s} batch {batch_size:2d}: {tokens} tokens in {gen_s:.1f}s "
                f"= {tokens / gen_s:.1f} tok/s (wall incl. load {wall:.1f}s), "
                f"mean {tokens / len(samples):.0f} tokens/sample, {stopped}/{len(samples)} stopped",
                flush=True,
            )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
