"""The engine's scorer (validation, contradictions, implicit rewards) against the plain
full-vocabulary computation it replaced: peak RSS and time, on the packaged SmolLM2.

python bench/scoring_memory.py [--runs 3] [--pairs 16] [--response-tokens 400] [--batch-size 8]

"plain" is the former code: the whole batch's logits in float32 and their log-softmax over
the vocabulary, then the completion tokens gathered. "engine" is
alignment.engine.scoring.completion_logps: logits from the first completion position only,
each row scored in float32 on its own. The two run interleaved (P E P E P E), each in a fresh
Python process that loads the model, scores every pair's two answers and reports its peak
RSS (the model's load included, the same on both sides) and the scoring time. Both must give
the same sums.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from engine_training import prose  # noqa: E402  (the same prose as the other benches)


def plain_logps(
    model: Any, tokenizer: Any, items: list[Any], max_length: int, batch_size: int
) -> list[tuple[float, int]]:
    """The former scorer, kept here as the baseline."""
    import torch

    from alignment.engine.turns import turn_ids

    sequences = []
    for prompt, text, complete in items:
        head, tail = turn_ids(tokenizer, prompt, text, complete=complete)
        whole = (head + tail)[:max_length]
        sequences.append((whole, min(len(head), len(whole) - 1)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums: list[tuple[float, int]] = [(0.0, 1)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    with torch.no_grad():
        for offset in range(0, len(order), batch_size):
            batch = order[offset : offset + batch_size]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                tokens = sequences[i][0]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            for row, i in enumerate(batch):
                tokens, start = sequences[i]
                taken = logps[row, max(start - 1, 0) : len(tokens) - 1]
                sums[i] = (float(taken.sum()), max(int(taken.numel()), 1))
    return sums


def child(side: str, args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from alignment.engine.scoring import completion_logps
    from alignment.engine.sources import (
        PACKAGED_SMOLLM2,
        cpu_bf16_fast,
        model_path_resolve,
        tokenizer_load,
    )

    path = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=args.models_dir)
    tokenizer = tokenizer_load(path)
    dtype = torch.bfloat16 if cpu_bf16_fast() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    prompt = ({"role": "user", "content": "Give me advice on sleeping better."},)
    items = [
        (prompt, prose(tokenizer, args.response_tokens - 10 * (i % 4), i), True)
        for i in range(2 * args.pairs)
    ]
    score = completion_logps if side == "engine" else plain_logps
    started = time.monotonic()
    sums = score(model, tokenizer, items, args.max_length, args.batch_size)
    seconds = time.monotonic() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "sums": [s for s, _ in sums]}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--response-tokens", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    parser.add_argument("--child", choices=["plain", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "engine": []}
    for index in range(args.runs):
        for side in ("plain", "engine"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", side, *sys.argv[1:]],
                check=True,
                capture_output=True,
                text=True,
            )
            found = json.loads(done.stdout.strip().splitlines()[-1])
            runs[side].append(found)
            print(
                f"run {index + 1} {side:7} scoring {found['seconds']:6.1f} s, peak RSS "
                f"{found['rss_mb']:6.0f} MB",
                flush=True,
            )
    worst = max(
        abs(a - b)
        for p, e in zip(runs["plain"], runs["engine"], strict=True)
        for a, b in zip(p["sums"], e["sums"], strict=True)
    )
    print(
        f"{2 * args.pairs} answers of about {args.response_tokens} tokens, batch "
        f"{args.batch_size}; largest difference between the two sides' sums: {worst:.4f}"
    )
    medians = {}
    for side, found in runs.items():
        seconds = [f["seconds"] for f in found]
        rss = [f["rss_mb"] for f in found]
        medians[side] = (statistics.median(seconds), statistics.median(rss))
        print(
            f"{side:7} scoring s {medians[side][0]:.1f} ({min(seconds):.1f}-{max(seconds):.1f}), "
            f"peak RSS MB {medians[side][1]:.0f} ({min(rss):.0f}-{max(rss):.0f})"
        )
    print(
        f"ratio engine/plain of the medians: time {medians['engine'][0] / medians['plain'][0]:.2f}, "
        f"peak RSS {medians['engine'][1] / medians['plain'][1]:.2f}"
    )


if __name__ == "__main__":
    main()
