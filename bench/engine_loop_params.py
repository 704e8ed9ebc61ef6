"""Loop check: one round of generate -> judge by rule -> QLoRA DPO -> head-to-head eval.

Uses only the engine API on the packaged SmolLM2. Prints the time of each phase, the
number of pairs, mean response lengths and the new policy's win rate over its parent.

python bench/engine_loop_params.py [--train-prompts 64] [--eval-prompts 16] ...
(see --help; the defaults are the settings the loop check uses)
"""

from __future__ import annotations

import argparse
import json
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

from alignment.engine.generation import GeneratedSample, GenerationConfig, generate, policy_load  # noqa: E402
from alignment.engine.rules import rule_load  # noqa: E402
from alignment.engine.sources import PACKAGED_SMOLLM2, model_path_resolve, tokenizer_load  # noqa: E402
from alignment.engine.stats import win_rate  # noqa: E402
from alignment.engine.training import PreferenceExample, TrainingConfig, train  # noqa: E402

# Generic assistant-style prompts: advice, coding, writing, maths, factual, planning, ...
PROMPTS = [
    "Give me some tips for sleeping better.",
    "How can I save money on groceries?",
    "What should I do if I feel stressed at work?",
    "How do I start running as a complete beginner?",
    "How can I be more productive when working from home?",
    "What are good ways to make new friends in a new city?",
    "How do I prepare for a job interview?",
    "How can I learn a new language effectively?",
    "What should I consider when buying a used car?",
    "How do I keep my houseplants healthy?",
    "How can I improve my handwriting?",
    "What are some ways to reduce screen time?",
    "Write a Python function that checks whether a number is prime.",
    "Explain the difference between a list and a tuple in Python.",
    "How do I read a CSV file in Python?",
    "What is recursion in programming? Give an example.",
    "Write a JavaScript function that reverses a string.",
    "Explain what an API is.",
    "What is the difference between SQL and NoSQL databases?",
    "How do I use git to undo my last commit?",
    "Explain what a hash table is.",
    "Write a short Python script that counts words in a text.",
    "What is object-oriented programming?",
    "How does a for loop work in Python?",
    "Write a short poem about the ocean.",
    "Write a story opening about a lost key.",
    "Write a thank-you note to a teacher.",
    "Describe a sunset over the mountains.",
    "Write a product description for a reusable water bottle.",
    "Write a haiku about winter.",
    "Write a short speech for a friend's wedding.",
    "Write a limerick about a cat.",
    "Write a cover letter opening for a marketing job.",
    "Describe the smell of fresh bread.",
    "What is 15% of 240? Show your working.",
    "Explain the Pythagorean theorem.",
    "How do I calculate the area of a circle?",
    "What is a prime number?",
    "Solve for x: 3x + 7 = 22.",
    "Explain what a derivative is in calculus.",
    "What is the difference between mean and median?",
    "How do you convert a fraction to a percentage?",
    "What is compound interest?",
    "Explain probability with a simple example.",
    "Why is the sky blue?",
    "How do vaccines work?",
    "What causes the seasons on Earth?",
    "Who was Marie Curie?",
    "How does photosynthesis work?",
    "What is the capital of Australia and why was it chosen?",
    "How do airplanes stay in the air?",
    "What is the water cycle?",
    "Why do we have time zones?",
    "What is inflation?",
    "How does the human heart work?",
    "What causes earthquakes?",
    "Plan a three-day trip to Rome.",
    "Help me plan a weekly meal schedule.",
    "How should I organise a birthday party for a ten-year-old?",
    "Create a study plan for learning statistics in a month.",
    "Plan a simple home workout routine for a week.",
    "How do I plan a small vegetable garden?",
    "Help me plan a budget for a wedding.",
    "How should I prepare for moving to a new house?",
    "Plan a productive morning routine.",
    "How do I organise a team offsite?",
    "What are the pros and cons of electric cars?",
    "Should I learn Python or JavaScript first?",
    "Compare renting and buying a home.",
    "What are the benefits of meditation?",
    "Is it better to exercise in the morning or the evening?",
    "What are the advantages of reading books over watching films?",
    "Explain how to make a cup of tea.",
    "How do I change a flat tyre?",
    "How do I write a good resume?",
    "How do I cook rice on the stove?",
    "How do I set up a new email account?",
    "How do I clean a cast iron pan?",
    "What is machine learning?",
    "How does the internet work?",
]


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _base_nll(
    models_dir: str,
    prompts: list[str],
    *groups: list[GeneratedSample],
) -> list[float]:
    """Mean negative log-likelihood per token of each group's texts under the base model.

    Not part of the check: a cheap coherence proxy, since a policy can win on length by
    babbling.
    """
    import torch

    path = model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=models_dir)
    tokenizer = tokenizer_load(path)
    model = policy_load(path, adapter=None)
    means = []
    with torch.inference_mode():
        for group in groups:
            total, count = 0.0, 0
            for sample in group:
                prefix = tokenizer.apply_chat_template(
                    _messages(prompts[sample.prompt_index]),
                    add_generation_prompt=True,
                    tokenize=False,
                )
                start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
                ids = tokenizer(
                    prefix + sample.text, return_tensors="pt", add_special_tokens=False
                )["input_ids"]
                if ids.shape[1] <= start:
                    continue
                logits = model(input_ids=ids).logits.float()
                logps = logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
                total -= float(logps[start - 1 :].sum())
                count += ids.shape[1] - start
            means.append(total / max(count, 1))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rule", default="shorter")
    parser.add_argument("--train-prompts", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2, help="samples per train prompt")
    parser.add_argument(
        "--eval-samples", type=int, default=4, help="samples per held-out prompt and policy"
    )
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--gen-batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss-type", default="sigmoid")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--no-4bit", action="store_true", help="plain LoRA instead of QLoRA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "data" / "models"))
    parser.add_argument(
        "--work-dir", default=None, help="where the adapter goes (default: a temp dir)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--keep-truncated",
        dest="drop_truncated",
        action="store_false",
        help="keep pairs whose responses both hit --max-new-tokens (dropped by default)",
    )
    parser.add_argument("--pairs", default=None, help="reuse WORK_DIR/pairs.json of an earlier run")
    args = parser.parse_args()
    if args.train_prompts + args.eval_prompts > len(PROMPTS):
        parser.error(f"only {len(PROMPTS)} prompts")
    print("settings:", json.dumps(vars(args)), flush=True)
    rule = rule_load(args.rule)
    # Held-out prompts are spread over every category: every k-th prompt.
    step = len(PROMPTS) // args.eval_prompts
    eval_ids = set(range(0, step * args.eval_prompts, step))
    eval_texts = [p for i, p in enumerate(PROMPTS) if i in eval_ids]
    train_texts = [p for i, p in enumerate(PROMPTS) if i not in eval_ids][: args.train_prompts]
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="prefloop-loop-"))
    started = time.monotonic()

    # 1. Samples from the parent policy on the training prompts.
    def gen_config(samples: int, adapter: str | None, seed: int) -> GenerationConfig:
        return GenerationConfig(
            model=PACKAGED_SMOLLM2,
            models_dir=args.models_dir,
            adapter=adapter,
            samples_per_prompt=samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            batch_size=args.gen_batch_size,
            seed=seed,
        )

    if args.pairs:
        # Tuning shortcut: reuse the pairs (and their generation time) of an earlier run.
        saved = json.loads(Path(args.pairs).read_text())
        examples = [
            PreferenceExample(prompt=tuple(e["prompt"]), chosen=e["chosen"], rejected=e["rejected"])
            for e in saved["examples"]
        ]
        generation_s, ties, train_mean_tokens = (
            saved["generation_s"],
            saved["ties"],
            saved["mean_tokens"],
        )
        print(f"pairs: {len(examples)} reused from {args.pairs}", flush=True)
    else:
        phase = time.monotonic()
        samples = generate(
            gen_config(args.samples, None, args.seed), [_messages(p) for p in train_texts]
        )
        generation_s = time.monotonic() - phase
        train_mean_tokens = _mean([s.completion_tokens for s in samples])
        print(
            f"generation: {len(samples)} samples, {sum(s.completion_tokens for s in samples)} tokens, "
            f"{generation_s:.0f}s; mean {train_mean_tokens:.0f} tokens, "
            f"{sum(s.finish_reason == 'length' for s in samples)} hit the cap",
            flush=True,
        )

        # 2. Pairs judged by the rule, ties dropped.
        by_prompt: dict[int, list[GeneratedSample]] = {}
        for sample in samples:
            by_prompt.setdefault(sample.prompt_index, []).append(sample)
        examples = []
        ties = truncated = 0
        for index, group in sorted(by_prompt.items()):
            for a, b in zip(group[0::2], group[1::2], strict=False):
                if args.drop_truncated and a.finish_reason == b.finish_reason == "length":
                    # Both cut off at the cap: their lengths say nothing about the rule,
                    # and "shorter" would then reward fewer characters per token.
                    truncated += 1
                    continue
                verdict = rule.judge(train_texts[index], a.text, b.text)
                if verdict == "tie":
                    ties += 1
                    continue
                chosen, rejected = (a, b) if verdict == "a" else (b, a)
                examples.append(
                    PreferenceExample(
                        prompt=tuple(_messages(train_texts[index])),
                        chosen=chosen.text,
                        rejected=rejected.text,
                    )
                )
        print(
            f"pairs: {len(examples)} ({ties} ties dropped, {truncated} both-truncated dropped)",
            flush=True,
        )
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "pairs.json").write_text(
            json.dumps(
                {
                    "generation_s": generation_s,
                    "ties": ties,
                    "mean_tokens": train_mean_tokens,
                    "examples": [
                        {"prompt": list(e.prompt), "chosen": e.chosen, "rejected": e.rejected}
                        for e in examples
                    ],
                }
            )
        )

    # 3. QLoRA DPO.
    phase = time.monotonic()
    result = train(
        TrainingConfig(
            model=PACKAGED_SMOLLM2,
            models_dir=args.models_dir,
            output_dir=str(work_dir / "run"),
            loss_type=args.loss_type,
            beta=args.beta,
            learning_rate=args.learning_rate,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            max_length=args.max_length,
            seed=args.seed,
            quantize_4bit=not args.no_4bit,
        ),
        examples,
        on_progress=lambda p: print(
            f"  step {p.step}/{p.total_steps} loss {p.loss:.4f} acc {p.reward_accuracy:.2f} "
            f"margin {p.reward_margin:.3f} {p.elapsed_s:.0f}s",
            flush=True,
        ),
    )
    training_s = time.monotonic() - phase
    print(
        f"training: {result.steps} steps, {training_s:.0f}s ({training_s / result.steps:.1f} s/step), "
        f"train_loss {result.train_loss:.4f}",
        flush=True,
    )

    # 4. Head-to-head on held-out prompts: same seeds for both policies.
    phase = time.monotonic()
    eval_prompts = [_messages(p) for p in eval_texts]
    eval_seed = args.seed + 1000
    parent = generate(gen_config(args.eval_samples, None, eval_seed), eval_prompts)
    child = generate(gen_config(args.eval_samples, result.adapter_dir, eval_seed), eval_prompts)
    eval_s = time.monotonic() - phase
    wins = losses = tied = 0
    for p, c in zip(parent, child, strict=True):
        verdict = rule.judge(eval_texts[p.prompt_index], c.text, p.text)
        wins += verdict == "a"
        losses += verdict == "b"
        tied += verdict == "tie"
    rate = win_rate(wins=wins, losses=losses, ties=tied)
    total_s = time.monotonic() - started
    if args.pairs:
        total_s += generation_s  # the reused generation counts as if it had run here
    parent_nll, child_nll = _base_nll(args.models_dir, eval_texts, parent, child)
    figures = {
        "generation_s": round(generation_s, 1),
        "training_s": round(training_s, 1),
        "eval_generation_s": round(eval_s, 1),
        "total_s": round(total_s, 1),
        "pairs": len(examples),
        "ties_dropped": ties,
        "steps": result.steps,
        "train_mean_tokens": round(train_mean_tokens, 1),
        "parent_mean_tokens": round(_mean([s.completion_tokens for s in parent]), 1),
        "child_mean_tokens": round(_mean([s.completion_tokens for s in child]), 1),
        "parent_property": round(_mean([rule.measure(s.text) for s in parent]), 3),
        "child_property": round(_mean([rule.measure(s.text) for s in child]), 3),
        "property": rule.property_name,
        "win_rate": round(rate.rate, 3),
        "win_rate_low": round(rate.low, 3),
        "win_rate_high": round(rate.high, 3),
        "wins": wins,
        "losses": losses,
        "ties": tied,
        "base_nll_parent": round(parent_nll, 4),
        "base_nll_child": round(child_nll, 4),
        "child_stopped": sum(s.finish_reason == "stop" for s in child),
        "parent_stopped": sum(s.finish_reason == "stop" for s in parent),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(f"eval generation: {len(parent)} + {len(child)} samples, {eval_s:.0f}s")
    print(
        f"{rule.property_name}: parent {figures['parent_property']} -> child {figures['child_property']}; "
        f"tokens {figures['parent_mean_tokens']} -> {figures['child_mean_tokens']}"
    )
    print(
        f"win rate of the new policy over its parent: {rate.rate:.3f} "
        f"(95% Wilson {rate.low:.3f}-{rate.high:.3f}; {wins} wins, {losses} losses, {tied} ties)"
    )
    print(
        f"total {total_s:.0f}s (generation {generation_s:.0f}s, training {training_s:.0f}s, "
        f"eval {eval_s:.0f}s)"
    )
    print(
        f"coherence proxy, base-model NLL per token: parent {parent_nll:.3f}, child {child_nll:.3f}; "
        f"stopped before the cap: parent {figures['parent_stopped']}, child {figures['child_stopped']}"
        f" of {len(child)}"
    )
    for p, c in list(zip(parent, child, strict=True))[:: args.eval_samples][:3]:
        print(
            f"--- {eval_texts[p.prompt_index]}\n[parent] {p.text[:300]!r}\n[child]  {c.text[:300]!r}"
        )
    print("figures:", json.dumps(figures))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "figures": figures}, indent=2)
        )


if __name__ == "__main__":
    main()
