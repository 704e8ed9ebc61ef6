"""The machine side of the loop: model versions, rounds, generation jobs, training runs, model
judges."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.db import models

from annotate.models import DatasetSnapshot, Policy, Project, Prompt, Response
from core.models import Job


class ModelVersion(models.Model):
    """A policy the project can generate with: the base model, or base + a LoRA adapter."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    policy = models.OneToOneField(Policy, on_delete=models.PROTECT, related_name="model_version")
    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    base_model = models.CharField(max_length=300)
    adapter_path = models.CharField(max_length=500, blank=True)
    adapter_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_base(self) -> bool:
        return not self.adapter_path

    def lineage(self, versions: Mapping[int, ModelVersion] | None = None) -> list[ModelVersion]:
        """This version and its ancestors, newest first. `versions`: the project's versions
        by id, when the caller has them already; else one query reads them."""
        if versions is None:
            versions = ModelVersion.objects.filter(project_id=self.project_id).in_bulk()
        chain: list[ModelVersion] = []
        seen: set[int] = set()
        node: ModelVersion | None = self
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            chain.append(node)
            node = versions.get(node.parent_id) if node.parent_id else None
        return chain


class PairingStrategy(models.TextChoices):
    ON_POLICY = "on_policy", "On-policy pairs (two samples of the policy)"
    HEAD_TO_HEAD = "head_to_head", "Head-to-head (policy vs its parent, held-out prompts)"
    BOTH = "both", "Both"


class PairSelection(models.TextChoices):
    ADJACENT = "adjacent", "Every two samples in turn (K/2 pairs per prompt)"
    RANDOM = "random", "Two of the K at random"
    MOST_DIFFERENT = "most_different", "The two most different texts"
    REWARD_GAP = "reward_gap", "The two the policy's implicit reward tells furthest apart"
    WINNER_STAYS = (
        "winner_stays",
        "Winner stays: each pair's winner meets the next sample (up to K - 1 pairs per prompt)",
    )
    RANKING = (
        "ranking",
        "Rank all K samples (K from 3 to 6): one ranking, up to K(K-1)/2 pairs per prompt",
    )
    RATING = (
        "rating",
        "Rate each sample on its own (good / bad or 1-5): K desirable or undesirable labels "
        "per prompt, for KTO",
    )


class Round(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    policy = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rounds")
    prompts = models.ManyToManyField(Prompt, related_name="rounds", blank=True)
    samples_per_prompt = models.PositiveSmallIntegerField(default=2)
    pairing_strategy = models.CharField(
        max_length=20, choices=PairingStrategy, default=PairingStrategy.ON_POLICY
    )
    # Which of a prompt's samples_per_prompt (K) samples make its on-policy pair.
    pair_selection = models.CharField(
        max_length=20, choices=PairSelection, default=PairSelection.ADJACENT
    )
    sampling = models.JSONField(default=dict, help_text="max_new_tokens, temperature, top_p, seed")
    # Added to the prompt of half of each prompt's on-policy samples (services.rounds).
    guidance = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="round_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.project} round {self.number}"


class RoundSignOff(models.Model):
    """A lead's sign-off of a round after reviewing it: what the data looked like then."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="sign_offs")
    signed_off_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_off_at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)
    figures = models.JSONField(default=dict, help_text="The review's headline figures then.")

    class Meta:
        ordering = ["-signed_off_at", "-id"]

    def __str__(self) -> str:
        return f"Sign-off of {self.round}"


class GenerationJob(Job):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="generation_jobs")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    prompts = models.ManyToManyField(Prompt, related_name="+", blank=True)
    purpose = models.CharField(max_length=5, default="train")
    config = models.JSONField(default=dict)

    class Meta(Job.Meta):
        pass

    def __str__(self) -> str:
        return f"Generation {self.pk} for {self.round}"


class GeneratedResponse(models.Model):
    """The generation job that produced a response. The link lives here, not on annotate's
    Response, which knows its policy only: annotate never depends on alignment."""

    response = models.OneToOneField(
        Response, on_delete=models.CASCADE, primary_key=True, related_name="generation"
    )
    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="outputs")

    def __str__(self) -> str:
        return f"Response {self.pk} of {self.job}"


class StartFrom(models.TextChoices):
    PARENT = "parent", "The parent's adapter (continue training it)"
    BASE = "base", "The base model (a fresh adapter)"


class Reference(models.TextChoices):
    PARENT = "parent", "The parent's policy"
    BASE = "base", "The base model"
    NONE = "none", "None (ORPO and SimPO use no reference)"


class DataScope(models.TextChoices):
    CUMULATIVE = "cumulative", "Cumulative: the pairs of every round"
    ROUND = "round", "This round only: the pairs of the parent's round"
    ROUNDS = "rounds", "The rounds listed"


class TrainingRun(Job):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    base_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="training_runs",
        help_text="The parent: the policy whose round the data comes from; the new version's "
        "parent.",
    )
    # The lead's choices for this round (alignment.services.training.TrainingPlan).
    start_from = models.CharField(max_length=10, choices=StartFrom, default=StartFrom.PARENT)
    reference = models.CharField(max_length=10, choices=Reference, default=Reference.PARENT)
    data_scope = models.CharField(max_length=10, choices=DataScope, default=DataScope.CUMULATIVE)
    sign_off = models.ForeignKey(
        RoundSignOff,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_runs",
        help_text="The latest sign-off of the parent's round when the run was started.",
    )
    snapshot = models.ForeignKey(
        DatasetSnapshot, on_delete=models.PROTECT, related_name="training_runs"
    )
    config = models.JSONField(default=dict)
    output_dir = models.CharField(max_length=500, blank=True)
    output_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_by"
    )

    class Meta(Job.Meta):
        constraints = [
            # One active run per project, held by the database under any concurrency.
            models.UniqueConstraint(
                fields=["project"],
                condition=models.Q(status__in=["queued", "running"]),
                name="training_run_one_active_per_project",
            )
        ]

    def __str__(self) -> str:
        return f"Training run {self.pk}"


class RefLogp(models.Model):
    """A pair's reference log-probabilities (summed over each response's tokens), computed
    once per reference (alignment.engine.training.reference_key) and reused by later epochs
    and runs. Keyed by the two responses, which never change, not by the pair, which can."""

    chosen = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    reference_key = models.CharField(max_length=64)
    chosen_logp = models.FloatField()
    rejected_logp = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reference_key", "chosen", "rejected"], name="ref_logp_unique"
            )
        ]

    def __str__(self) -> str:
        return f"Reference log-probs of {self.chosen_id} over {self.rejected_id}"


class JudgeKind(models.TextChoices):
    RULE = "rule", "A rule (module:function or a builtin)"
    LLM = "llm", "An LLM behind an OpenAI-compatible endpoint"
    LOCAL = "local", "The project's own model on the worker (weak: for the offline demo)"


class JudgeMode(models.TextChoices):
    SUGGEST = "suggest", "Suggestions, shown to annotators after they vote"
    VOTE = "vote", "One vote toward the overlap"
    FILL = "fill", "Fills in comparisons no person reached"


class Judge(models.Model):
    """A model judge: a project member of kind "model" (its own account, which cannot log in)
    whose answers go through the judgment service like anyone's. What its answers do is its
    `mode`. It runs on a worker (JudgeJob), never in a request."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judges")
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judge"
    )
    name = models.CharField(max_length=60)
    kind = models.CharField(max_length=10, choices=JudgeKind)
    mode = models.CharField(max_length=10, choices=JudgeMode, default=JudgeMode.SUGGEST)
    rule = models.CharField(max_length=300, blank=True, help_text="A rule judge's rule.")
    base_url = models.CharField(
        max_length=500, blank=True, help_text="An LLM judge's endpoint, e.g. http://host:8000/v1"
    )
    model_name = models.CharField(max_length=200, blank=True)
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="The environment variable on the worker that holds the API key (the key "
        "itself is never stored).",
    )
    requests_per_minute = models.PositiveIntegerField(default=60)
    timeout_seconds = models.PositiveIntegerField(default=60)
    max_retries = models.PositiveSmallIntegerField(default=4)
    usd_per_million_input = models.FloatField(default=0.0)
    usd_per_million_output = models.FloatField(default=0.0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="judge_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"


class JudgeJob(Job):
    """One pass of a judge over the project's comparisons (what its mode lets it answer).
    A worker lost mid-pass is found by its stale heartbeat; the next attempt answers only
    what is still unanswered. `summary` holds the counts, tokens, cost and the asks' position
    agreement."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="jobs")
    mode = models.CharField(max_length=10, choices=JudgeMode)
    round_number = models.PositiveIntegerField(
        null=True, blank=True, help_text="Only this round's comparisons (all when empty)."
    )
    limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many comparisons."
    )

    class Meta(Job.Meta):
        pass

    def __str__(self) -> str:
        return f"Judge job {self.pk} ({self.judge.name})"
