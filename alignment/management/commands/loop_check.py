from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from alignment.engine.rules import BUILTIN_RULES, rule_load
from alignment.engine.spec import SAMPLING_FIELDS, TRAINING_FIELDS, FieldSpec
from alignment.loop import LoopCheckReport, LoopCheckSettings, loop_check_run
from alignment.services.rounds import SamplingSettings
from alignment.services.training_settings import TrainingSettings
from core.errors import ValidationFailed

# The loop check's own counts; the sampling and training options come from their spec.
_COUNTS = (
    "train_prompts",
    "eval_prompts",
    "samples_per_prompt",
    "eval_samples_per_prompt",
    "annotators",
)


def _option(parser: CommandParser, flag: str, dest: str, spec: FieldSpec) -> None:
    def parse(text: str) -> Any:
        try:
            value = spec.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        problem = spec.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    text = f"{spec.label} (default {spec.default}). {spec.help_text()}".strip()
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    parser.add_argument(
        flag,
        dest=dest,
        type=parse,
        default=spec.default,
        metavar=spec.kind.__name__.upper(),
        help=text.replace("%", "%%"),  # argparse formats help with %
    )


class Command(BaseCommand):
    help = (
        "Run one full alignment round headless: generate pairs with the base policy, let "
        "simulated annotators judge them by a rule, train with QLoRA DPO, then judge the new "
        "checkpoint against its parent on held-out prompts with the same rule. Reports the "
        "win rate with a 95%% interval, the rule's property for both policies, counts and times. "
        "Built-in rules: " + ", ".join(sorted(BUILTIN_RULES)) + "; or any `module:function` "
        "taking (prompt, response_a, response_b) and returning 'a', 'b' or 'tie'."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = LoopCheckSettings()
        parser.add_argument(
            "--rule", default="shorter", help="Built-in rule name or module:function."
        )
        parser.add_argument("--model", default=defaults.model, help="Base model source.")
        for name in _COUNTS:
            parser.add_argument(
                "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
            )
        # Sampling (--max-new-tokens, --temperature, ...) and training (--train-epochs, ...):
        # the settings' spec gives each option its type, default, choices, bounds and help.
        for spec in SAMPLING_FIELDS.values():
            _option(parser, "--" + spec.name.replace("_", "-"), spec.name, spec)
        for spec in TRAINING_FIELDS.values():
            _option(parser, "--train-" + spec.name.replace("_", "-"), "train_" + spec.name, spec)
        parser.add_argument(
            "--judge-both-truncated",
            action="store_true",
            help="Judge training pairs whose two responses were both cut off (skipped by default).",
        )
        parser.add_argument(
            "--min-win-rate",
            type=float,
            default=None,
            help="Exit with an error when the win rate falls below this.",
        )
        parser.add_argument(
            "--json", dest="json_path", default=None, help="Also write the report as JSON here."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            rule = rule_load(options["rule"])
            training = TrainingSettings.from_mapping(
                {name: options["train_" + name] for name in TRAINING_FIELDS}
            )
            sampling = SamplingSettings(**{name: options[name] for name in SAMPLING_FIELDS})
            sampling.validate()
        except (ValueError, ValidationFailed) as error:
            raise CommandError(str(error)) from None
        settings = LoopCheckSettings(
            model=options["model"],
            sampling=sampling,
            training=training,
            skip_both_truncated=not options["judge_both_truncated"],
            **{name: options[name] for name in _COUNTS},
        )
        try:
            report = loop_check_run(
                settings=settings, rule=rule, log=lambda line: self.stdout.write(line)
            )
        except ValidationFailed as error:
            raise CommandError(str(error)) from None
        self._print(report)
        if options["json_path"]:
            with open(options["json_path"], "w", encoding="utf-8") as handle:
                json.dump(asdict(report), handle, indent=2)
        if (
            options["min_win_rate"] is not None
            and report.head_to_head.rate < options["min_win_rate"]
        ):
            raise CommandError(
                f"win rate {report.head_to_head.rate:.1%} is below the required {options['min_win_rate']:.1%}"
            )

    def _print(self, report: LoopCheckReport) -> None:
        h2h = report.head_to_head
        new, parent = report.new_policy, report.parent_policy
        self.stdout.write("")
        self.stdout.write(f"Loop check with rule {report.rule!r} (project {report.project_slug})")
        self.stdout.write(
            f"  round 1: {report.train_comparisons} comparisons, {report.train_judgments} judgments, "
            f"{report.train_pairs} preference pairs, {report.train_ties} ties, "
            f"{report.train_skipped} skipped (both responses cut off)"
        )
        self.stdout.write(
            f"  training: {report.training_steps} steps, final loss {report.train_loss:.4f}"
        )
        self.stdout.write(
            f"  head to head on held-out prompts: {h2h.n} comparisons "
            f"({h2h.wins} won, {h2h.losses} lost, {h2h.ties} tied)"
        )
        self.stdout.write(
            f"  win rate of {new.name} over {parent.name}: {h2h.rate:.1%} "
            f"(95% CI {h2h.low:.1%} to {h2h.high:.1%})"
        )
        self.stdout.write(
            f"  {report.property_name}: {new.name} {new.property_mean:.2f} vs "
            f"{parent.name} {parent.property_mean:.2f}"
        )
        self.stdout.write(
            f"  mean completion tokens: {new.name} {new.mean_completion_tokens:.1f} vs "
            f"{parent.name} {parent.mean_completion_tokens:.1f} "
            f"({new.responses} and {parent.responses} responses)"
        )
        times = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
        self.stdout.write(f"  time: {times}")
        self.stdout.write(
            f"  generation {report.generation_tokens_per_s:.1f} tokens/s (round 1), "
            f"training {report.training_seconds_per_step:.2f} s/step"
        )
        self.stdout.write(f"  peak memory (RSS) of this process: {report.peak_rss_mb:.0f} MB")
