"""Peak RSS and tokens/s of generation with the base model and with an adapter merged in.

python bench/generation_memory.py [--runs 2] [--prompts 16] [--samples 2] [--batch-size 16]

Each case runs in a fresh process, the cases interleaved (--runs times each): "base" is the
packaged SmolLM2-135M; "merged" the same with a LoRA adapter (r 16, all linear layers, random
non-zero weights, made once in a temporary directory) merged by generation.policy_load;
"merged-frozen" the same with the merged weights left frozen as PEFT leaves them (what
policy_load did before it unfroze them). Prints the medians and ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

CASES = ("base", "merged", "merged-frozen")


def adapter_make(models_dir: str, target: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from alignment.engine.sources import PACKAGED_SMOLLM2, model_load, model_path_resolve

    path = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=models_dir)
    model = model_load(path, quantize_4bit=False, dtype=torch.bfloat16)
    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target, safe_serialization=True)


def child(case: str, args: argparse.Namespace) -> None:
    from engine_generation import PROMPTS

    from alignment.engine import generation
    from alignment.engine.generation import GenerationConfig, generate
    from alignment.engine.sources import PACKAGED_SMOLLM2

    if case == "merged-frozen":
        load = generation.policy_load

        def frozen(*a: object, **k: object) -> object:
            model = load(*a, **k)  # type: ignore[arg-type]
            model.requires_grad_(False)
            return model

        generation.policy_load = frozen  # type: ignore[assignment]
    prompts = [
        [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]
        for i in range(args.prompts)
    ]
    config = GenerationConfig(
        model=PACKAGED_SMOLLM2,
        models_dir=args.models_dir,
        adapter=None if case == "base" else args.adapter,
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=0,
    )
    started = time.monotonic()
    samples = generate(config, prompts)
    elapsed = time.monotonic() - started
    tokens = sum(s.completion_tokens for s in samples)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_mb": rss_mb, "tokens_per_s": tokens / elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    found: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as adapter:
        adapter_make(args.models_dir, adapter)
        for run in range(args.runs):
            for case in CASES:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        case,
                        "--adapter",
                        adapter,
                        *sys.argv[1:],
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                found[case].append(figures)
                print(
                    f"run {run + 1} {case:14} peak RSS {figures['rss_mb']:6.0f} MB, "
                    f"{figures['tokens_per_s']:6.1f} tokens/s",
                    flush=True,
                )
    for case, runs in found.items():
        cells = []
        for key, digits in (("rss_mb", 0), ("tokens_per_s", 1)):
            values = [r[key] for r in runs]
            cells.append(
                f"{statistics.median(values):.{digits}f} "
                f"({min(values):.{digits}f}-{max(values):.{digits}f})"
            )
        print(f"{case:14} peak RSS MB {cells[0]:>20}   tokens/s {cells[1]:>18}")


if __name__ == "__main__":
    main()
