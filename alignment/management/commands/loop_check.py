from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from alignment.engine.rules import BUILTIN_RULES, PANEL, JudgeRule, rule_load
from alignment.engine.spec import SAMPLING_FIELDS, TRAINING_FIELDS, FieldSpec
from alignment.loop import (
    READING_CHARS_PER_S,
    LoopCheckReport,
    LoopCheckSettings,
    ModelJudgeSettings,
    loop_check_run,
)
from alignment.models import PairSelection
from alignment.services.rounds import SamplingSettings
from alignment.services.training_settings import TrainingSettings
from annotate.ranking import K_MAX, K_MIN
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


def _judge_settings(options: dict[str, Any]) -> ModelJudgeSettings | None:
    spec = options["judge"]
    if not spec:
        return None
    kind, _, rule = spec.partition(":")
    if kind == "rule" and rule:
        return ModelJudgeSettings(kind="rule", rule=rule)
    if kind == "local" and not rule:
        return ModelJudgeSettings(kind="local")
    if kind == "llm" and not rule:
        if not options["judge_url"] or not options["judge_model"]:
            raise CommandError("--judge llm needs --judge-url and --judge-model.")
        return ModelJudgeSettings(
            kind="llm",
            base_url=options["judge_url"],
            model_name=options["judge_model"],
            api_key_env=options["judge_key_env"],
        )
    raise CommandError(
        f"--judge {spec!r}: use 'local', 'rule:NAME' (e.g. rule:shorter) or 'llm' with "
        "--judge-url and --judge-model."
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
            "--rule",
            default="shorter",
            help="Built-in rule name or module:function; several, comma-separated, run one "
            "after the other with the same settings and end with a table of them.",
        )
        parser.add_argument(
            "--panel",
            action="store_true",
            help="Run the panel of rules (" + ", ".join(PANEL) + ") with the same settings, "
            "one row each in the closing table.",
        )
        parser.add_argument("--model", default=defaults.model, help="Base model source.")
        for name in _COUNTS:
            parser.add_argument(
                "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
            )
        parser.add_argument(
            "--pair-selection",
            choices=PairSelection.values,
            default=defaults.pair_selection,
            help="Which of each training prompt's samples meet (the round's pair selection; "
            f"default {defaults.pair_selection}): "
            + "; ".join(f"{value}: {label}" for value, label in PairSelection.choices).replace(
                "%", "%%"
            )
            + ".",
        )
        parser.add_argument(
            "--ranking",
            type=int,
            choices=range(K_MIN, K_MAX + 1),
            metavar="K",
            default=None,
            help=f"Rank K samples per training prompt ({K_MIN} to {K_MAX}) instead of judging "
            "pairs: sets --samples-per-prompt to K and the pair selection to ranking; the "
            "simulated annotators rank by the rule's wins and losses over every two samples.",
        )
        parser.add_argument(
            "--guided",
            action=argparse.BooleanOptionalAction,
            default=defaults.guided,
            help="Guide half of each training prompt's samples by the rule's description (a "
            "builtin's, or the first paragraph of a function's docstring), as a round's "
            "guidance does; needs an even --samples-per-prompt (default: guided).",
        )
        # Sampling (--max-new-tokens, --temperature, ...) and training (--train-epochs, ...):
        # the settings' spec gives each option its type, default, choices, bounds and help.
        for spec in SAMPLING_FIELDS.values():
            _option(parser, "--" + spec.name.replace("_", "-"), spec.name, spec)
        for spec in TRAINING_FIELDS.values():
            _option(parser, "--train-" + spec.name.replace("_", "-"), "train_" + spec.name, spec)
        parser.add_argument(
            "--judge",
            default=None,
            metavar="KIND",
            help="Let a model judge vote on the training pairs instead of the simulated "
            "annotators (the rule still judges the head-to-head): 'local' (the packaged "
            "model, weak), 'rule:NAME' (a rule through the judge's machinery, asked twice with "
            "the sides swapped) or 'llm' (an OpenAI-compatible endpoint: --judge-url, "
            "--judge-model, --judge-key-env). The report adds the judge's agreement with the "
            "rule.",
        )
        parser.add_argument(
            "--judge-url", default="", help="The LLM judge's base URL, e.g. http://host:8000/v1."
        )
        parser.add_argument("--judge-model", default="", help="The model the endpoint serves.")
        parser.add_argument(
            "--judge-key-env",
            default="",
            help="The environment variable holding the endpoint's API key (none when empty).",
        )
        parser.add_argument(
            "--judge-both-truncated",
            action="store_true",
            help="Judge training pairs whose two responses were both cut off (skipped by default).",
        )
        parser.add_argument(
            "--min-win-rate",
            type=float,
            default=None,
            help="Exit with an error when the win rate (of any rule) falls below this.",
        )
        parser.add_argument(
            "--json",
            dest="json_path",
            default=None,
            help="Also write the report as JSON here (a list of reports for several rules).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._migrated()
        names = PANEL if options["panel"] else tuple(options["rule"].split(","))
        try:
            rules = [rule_load(name.strip()) for name in names]
            training = TrainingSettings.from_mapping(
                {name: options["train_" + name] for name in TRAINING_FIELDS}
            )
            sampling = SamplingSettings(**{name: options[name] for name in SAMPLING_FIELDS})
            sampling.validate()
        except (ValueError, ValidationFailed) as error:
            raise CommandError(str(error)) from None
        judge = _judge_settings(options)
        if options["ranking"] is not None:
            options["samples_per_prompt"] = options["ranking"]
            options["pair_selection"] = PairSelection.RANKING
        if options["pair_selection"] == PairSelection.RATING and training.method != "kto":
            raise CommandError(
                "Ratings train with KTO only: add --train-method kto to --pair-selection rating."
            )
        settings = LoopCheckSettings(
            model=options["model"],
            sampling=sampling,
            training=training,
            skip_both_truncated=not options["judge_both_truncated"],
            pair_selection=options["pair_selection"],
            guided=options["guided"],
            judge=judge,
            **{name: options[name] for name in _COUNTS},
        )
        reports = [
            self._check(settings, rule, index, len(rules)) for index, rule in enumerate(rules)
        ]
        if len(reports) > 1:
            self._table(reports)
        if options["json_path"]:
            found = [asdict(r) for r in reports]
            with open(options["json_path"], "w", encoding="utf-8") as handle:
                json.dump(found[0] if len(found) == 1 else found, handle, indent=2)
        minimum = options["min_win_rate"]
        below = [r for r in reports if minimum is not None and r.head_to_head.rate < minimum]
        if below:
            rates = ", ".join(f"{r.rule} {r.head_to_head.rate:.1%}" for r in below)
            raise CommandError(f"win rate below the required {minimum:.1%}: {rates}")

    def _migrated(self) -> None:
        """The check makes its own project in the configured database: a fresh checkout's
        database gets its tables first, as `make loop-check` gives them."""
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            self.stdout.write(f"applying {len(plan)} database migrations first")
            call_command("migrate", interactive=False, verbosity=0)

    def _check(
        self, settings: LoopCheckSettings, rule: JudgeRule, index: int, count: int
    ) -> LoopCheckReport:
        if count > 1:
            self.stdout.write(f"== rule {index + 1} of {count}: {rule.name}")
        try:
            report = loop_check_run(
                settings=settings, rule=rule, log=lambda line: self.stdout.write(line)
            )
        except ValidationFailed as error:
            raise CommandError(f"{rule.name}: {error}") from None
        self._print(report)
        return report

    def _table(self, reports: list[LoopCheckReport]) -> None:
        """One row per rule: what reached training, the head-to-head, the property, the time."""
        self.stdout.write("")
        self.stdout.write(
            "| rule | pairs | ties | skipped | reading min | steps | win rate (95% CI) "
            "| property v0 → v1 "
            "| generation, training, head-to-head (s) | total (s) | peak RSS (MB) |"
        )
        self.stdout.write("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in reports:
            h2h, sec = r.head_to_head, r.seconds
            self.stdout.write(
                f"| {r.rule} | {r.train_pairs} | {r.train_ties} | {r.train_skipped} "
                f"| {r.train_reading_minutes:.1f} | {r.training_steps} | {h2h.rate:.1%} ({h2h.low:.1%} to {h2h.high:.1%}) "
                f"| {r.parent_policy.property_mean:.3g} → {r.new_policy.property_mean:.3g} "
                f"| {sec['round 1 generation']:.0f}, {sec['training']:.0f}, "
                f"{sec['head-to-head generation']:.0f} | {sec['total']:.0f} "
                f"| {r.peak_rss_mb:.0f} |"
            )

    def _print(self, report: LoopCheckReport) -> None:
        h2h = report.head_to_head
        new, parent = report.new_policy, report.parent_policy
        self.stdout.write("")
        self.stdout.write(f"Loop check with rule {report.rule!r} (project {report.project_slug})")
        self.stdout.write(
            f"  round 1: {report.train_comparisons} comparisons, {report.train_judgments} judgments, "
            f"{report.train_pairs} preference pairs, {report.train_ties} ties, "
            f"{report.train_skipped} skipped (every response shown cut off)"
            + (
                f", {report.train_rated_good} rated good, {report.train_rated_bad} rated bad"
                if report.train_rated_good or report.train_rated_bad
                else ""
            )
        )
        rated = report.train_rated_good + report.train_rated_bad
        labels = report.train_pairs + rated
        if report.judge is None:
            self.stdout.write(
                f"  annotator time (reading model, {READING_CHARS_PER_S:.0f} characters/s): "
                f"{report.train_reading_minutes:.1f} min, "
                f"{labels / max(report.train_reading_minutes, 1e-9):.1f} "
                + ("preference pairs and rated labels" if rated else "preference pairs")
                + " a minute"
            )
        else:
            j = report.judge
            self.stdout.write(
                f"  model judge: {j['answered']} votes, {j['uncertain']} uncertain, "
                f"{j['failed']} without an answer; its votes match the rule on "
                f"{j['agreement_with_rule']:.1%}; the two asks agree on "
                f"{(j['asks_agree'] or 0):.1%}; one ask picks the response shown first "
                f"{(j['first_shown_share_one_ask'] or 0):.1%} of the time; "
                f"{j['seconds_per_pair']:.2f} s a pair, ${j['cost_usd']:.4f}"
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
            f"(95% CI {h2h.low:.1%} to {h2h.high:.1%}, counting the games of one prompt as "
            f"{h2h.effective_n or h2h.n:.0f} independent ones)"
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
        by_phase = ", ".join(f"{k} {v:.0f}" for k, v in report.peak_rss_mb_by_phase.items())
        self.stdout.write(
            f"  peak memory (RSS) of this process: {report.peak_rss_mb:.0f} MB ({by_phase})"
        )
