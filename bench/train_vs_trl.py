"""Our training run against a plain TRL DPOTrainer script: same model, data and settings.

python bench/train_vs_trl.py [--runs 3] [--pairs 32] [--epochs 1] [--batch-size 4]
                             [--response-tokens 200]

The two sides run interleaved, T P T P T P (--runs of each), each in a fresh Python process,
so peak RSS is the process's own and the machine's drift falls on both sides alike; the
figures are medians with their ranges, and the ratios are of the medians. "prefloop" calls alignment.engine.training.train() (what a worker runs: memory
pre-flight, step reports, checkpoints every --checkpoint-steps); "trl" is the script a user
would write from TRL's documentation: the model loaded in NF4 with bf16 compute, a LoRA
config, DPOConfig with the same hyperparameters, DPOTrainer(...).train(). Both use the same
synthetic pairs (the ones bench/engine_training.py uses). Prints wall time (process start to exit, model load
included), the time of the training loop itself, peak RSS, and the ratios prefloop / trl.
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

from engine_training import prose  # noqa: E402  (the same pairs as that bench)


def _pairs(args: argparse.Namespace, path: str) -> list[dict[str, str]]:
    from alignment.engine.sources import tokenizer_load

    tokenizer = tokenizer_load(path)
    return [
        {
            "prompt": f"Give me advice on sleeping better ({i}).",
            "chosen": prose(tokenizer, int(args.response_tokens * 0.8), i),
            "rejected": prose(tokenizer, args.response_tokens, i + 1),
        }
        for i in range(args.pairs)
    ]


def run_prefloop(
    args: argparse.Namespace, path: str, pairs: list[dict[str, str]]
) -> tuple[float, float]:
    from alignment.engine.training import PreferenceExample, TrainingConfig, train

    examples = [
        PreferenceExample(
            prompt=({"role": "user", "content": p["prompt"]},),
            chosen=p["chosen"],
            rejected=p["rejected"],
        )
        for p in pairs
    ]

    class Store:  # the worker keeps these in the database; a fresh store computes them all
        def __init__(self) -> None:
            self.values: dict[str, dict[int, tuple[float, float]]] = {}

        def get(self, key: str, count: int) -> list[tuple[float, float] | None]:
            found = self.values.get(key, {})
            return [found.get(i) for i in range(count)]

        def put(self, key: str, values: dict[int, tuple[float, float]]) -> None:
            self.values[key] = dict(values)

    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        result = train(
            TrainingConfig(
                model=path,
                models_dir=args.models_dir,
                output_dir=out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                beta=args.beta,
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                lora_dropout=0.05,
                max_length=args.max_length,
                checkpoint_steps=args.checkpoint_steps,
                gradient_accumulation_steps=1,  # as the TRL script: one pass a step
            ),
            examples,
            ref_store=Store(),
        )
        elapsed = time.monotonic() - started
    return elapsed, result.train_loss


def run_trl(
    args: argparse.Namespace, path: str, pairs: list[dict[str, str]]
) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
    )
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=out,
                num_train_epochs=args.epochs,
                per_device_train_batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                beta=args.beta,
                max_length=args.max_length,
                bf16=True,
                use_cpu=True,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                seed=0,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                lora_dropout=0.05,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
        output = trainer.train()
        trainer.save_model(out)
        elapsed = time.monotonic() - started
    return elapsed, output.training_loss


def child(side: str, args: argparse.Namespace) -> None:
    from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve

    path = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=args.models_dir)
    pairs = _pairs(args, path)
    train_s, loss = (run_prefloop if side == "prefloop" else run_trl)(args, path, pairs)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"train_s": train_s, "rss_mb": rss_mb, "loss": loss}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, interleaved")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--checkpoint-steps", type=int, default=50)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    parser.add_argument("--child", choices=["prefloop", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    runs: dict[str, list[dict[str, float]]] = {"trl": [], "prefloop": []}
    child_args = list(sys.argv[1:])
    for index in range(args.runs):
        for side in ("trl", "prefloop"):
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, __file__, "--child", side, *child_args],
                check=True,
                capture_output=True,
                text=True,
            )
            figures = {**json.loads(done.stdout.strip().splitlines()[-1])}
            figures["wall_s"] = time.monotonic() - started
            runs[side].append(figures)
            print(
                f"run {index + 1} {side:9} wall {figures['wall_s']:7.1f} s, train "
                f"{figures['train_s']:7.1f} s, peak RSS {figures['rss_mb']:6.0f} MB, loss "
                f"{figures['loss']:.4f}",
                flush=True,
            )
    steps = -(-args.pairs // args.batch_size) * args.epochs
    print(
        f"{args.pairs} pairs, {args.epochs} epoch(s), batch {args.batch_size}, ~{args.response_tokens}"
        f"-token responses, max_length {args.max_length}, LoRA r {args.lora_r}, NF4, bf16: "
        f"{steps} steps; {args.runs} runs of each side, interleaved"
    )
    print(f"{'median (range)':16}{'wall s':>24}{'train s':>24}{'peak RSS MB':>24}{'loss':>24}")
    medians: dict[str, dict[str, float]] = {}
    for side, found in runs.items():
        medians[side] = {}
        cells = []
        for key, digits in (("wall_s", 1), ("train_s", 1), ("rss_mb", 0), ("loss", 4)):
            values = [f[key] for f in found]
            medians[side][key] = statistics.median(values)
            cells.append(
                f"{medians[side][key]:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
            )
        print(f"{side:16}" + "".join(f"{c:>24}" for c in cells))
    ours, theirs = medians["prefloop"], medians["trl"]
    print(
        f"ratio prefloop/trl of the medians: wall {ours['wall_s'] / theirs['wall_s']:.2f}, "
        f"train {ours['train_s'] / theirs['train_s']:.2f}, "
        f"peak RSS {ours['rss_mb'] / theirs['rss_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
