"""The human side of the loop: projects, guidelines, prompts, responses, comparisons, judgments.

Sides: a comparison holds responses `a` and `b` in a fixed order; `left_is_a` says which one
the annotator sees on the left (randomised at creation). Judgments store the choice in terms
of `a`/`b` (what was preferred), plus the side layout the annotator saw, so left/right bias
can be measured without ambiguity.

Rankings (a judging mode): a ranking comparison holds K responses (`responses`, 3 to 6) and is
the queue's item, under the same leases, overlap, skips, undo, gold and re-checks as a pair.
It owns one *implied* comparison per two of its responses (`ranking` points back), never
handed out: an annotator's ranking (a judgment with `shown` and `ranks`) writes one implied
judgment on each, and from there aggregation, pairs, review, snapshots, exports and lineage
are the pairs' own. Each annotator sees the K responses in their own order (annotate.queue).

Ratings (a judging mode): a rating comparison holds one response (`response_a`; `response_b`
is None) rated on its own, good or bad (or 1-5, good from the project's threshold up), under
the same queue, leases, overlap, skips, undo, gold and re-checks. Its votes aggregate to a
desirable or undesirable label (a PreferencePair of kind good / bad), which KTO trains on.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import Job
from core.text import CUT_OFF


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    REVIEWER = "reviewer", "Reviewer"
    LEAD = "lead", "Lead"


class RationaleMode(models.TextChoices):
    OFF = "off", "Not asked"
    OPTIONAL = "optional", "Optional"
    REQUIRED = "required", "Required"


class RatingScale(models.TextChoices):
    GOOD_BAD = "good_bad", "Good / bad"
    FIVE = "five", "A score from 1 to 5, good from the threshold up"


# The 1-5 scale's bounds (a rating's score).
SCORE_MIN, SCORE_MAX = 1, 5


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    base_model = models.CharField(
        max_length=300,
        default="packaged:smollm2-135m-instruct",
        help_text="Hugging Face model id, local directory, or packaged:<name>.",
    )
    trust_remote_code = models.BooleanField(default=False)
    overlap = models.PositiveSmallIntegerField(
        default=1, help_text="Judgments from distinct annotators each comparison needs."
    )
    allow_tie = models.BooleanField(default=True)
    allow_both_bad = models.BooleanField(default=True)
    use_strength = models.BooleanField(default=False)
    criteria = models.JSONField(
        default=list, blank=True, help_text="Names of per-criterion choices."
    )
    reason_tags = models.JSONField(default=list, blank=True)
    rationale = models.CharField(
        max_length=10, choices=RationaleMode, default=RationaleMode.OPTIONAL
    )
    gold_rate = models.FloatField(default=0.0)
    swap_recheck_rate = models.FloatField(default=0.0)
    # A swapped re-check shown right after the original is recognisable (and looks like a lost
    # keypress): it comes back only after this many of the annotator's other judgments, or
    # after recheck_gap_minutes (0: the count alone).
    recheck_gap_items = models.PositiveIntegerField(
        default=20,
        help_text="A re-check comes back no sooner than this many other judgments later.",
    )
    recheck_gap_minutes = models.PositiveIntegerField(
        default=0,
        help_text="Or no sooner than this many minutes later, whichever comes first (0: off).",
    )
    # Ratings (single responses): good / bad, or a score on 1-5 that is good from the
    # threshold up.
    rating_scale = models.CharField(
        max_length=10, choices=RatingScale, default=RatingScale.GOOD_BAD
    )
    rating_threshold = models.PositiveSmallIntegerField(
        default=4, help_text="On the 1-5 scale, a score from this up is good, below it bad."
    )
    judge_kappa_min = models.FloatField(
        default=0.4,
        help_text="A model judge whose Cohen's kappa against the people's majority falls below "
        "this is flagged on the Quality page.",
    )
    lease_seconds = models.PositiveIntegerField(default=600)
    undo_seconds = models.PositiveIntegerField(
        default=300, help_text="How long an annotator may undo or edit their last judgment."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_range"
            ),
            models.CheckConstraint(
                condition=Q(swap_recheck_rate__gte=0, swap_recheck_rate__lte=1),
                name="project_swap_recheck_rate_range",
            ),
            models.CheckConstraint(
                condition=Q(rating_threshold__gte=SCORE_MIN, rating_threshold__lte=SCORE_MAX),
                name="project_rating_threshold_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class MemberKind(models.TextChoices):
    PERSON = "person", "Person"
    # A model judge's account (alignment.models.Judge): it cannot log in, and its judgments
    # are marked as a model's wherever they show.
    MODEL = "model", "Model judge"


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role, default=Role.ANNOTATOR)
    kind = models.CharField(max_length=10, choices=MemberKind, default=MemberKind.PERSON)
    quota = models.PositiveIntegerField(null=True, blank=True)
    guideline_seen_version = models.PositiveIntegerField(
        default=0, help_text="The newest guideline version this member has acknowledged."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class Guideline(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="guidelines")
    version = models.PositiveIntegerField()
    body = models.TextField(help_text="Markdown.")
    changes = models.TextField(blank=True, help_text="What changed since the previous version.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="guideline_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.project} guidelines v{self.version}"


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    EVAL = "eval", "Held-out evaluation"


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(
        help_text='Chat messages: [{"role": "user", "content": "..."}, ...]'
    )
    # `messages` as a sanitised chat transcript, rendered once when stored, as a response's
    # `html` is (annotate.rendering): rendered again on display while outdated.
    html = models.TextField(blank=True, editable=False)
    html_version = models.PositiveSmallIntegerField(default=0, editable=False)
    tags = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=200, blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    split = models.CharField(max_length=5, choices=Split, default=Split.TRAIN)
    content_hash = models.CharField(max_length=64, db_index=True)
    embedding = models.BinaryField(null=True, blank=True, editable=False)  # float32, normalised
    # The semantic cluster the last coverage computation put it in (annotate.coverage).
    cluster = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    # A coarse guess of the prompt's language (annotate.diversity.language_guess), stored when
    # the prompt is, for the prompt browser's filter.
    language = models.CharField(max_length=20, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "split"])]

    def __str__(self) -> str:
        return self.text[:80]

    @property
    def text(self) -> str:
        """The last user turn: what the prompt asks."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    @property
    def is_multi_turn(self) -> bool:
        return len(self.messages) > 1


class PolicyKind(models.TextChoices):
    MODEL = "model", "Model version"
    EXTERNAL = "external", "External (imported responses)"


class Policy(models.Model):
    """What produced a response. Alignment's model versions each own one."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="policies")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=PolicyKind, default=PolicyKind.MODEL)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "policies"
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="policy_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name


class Response(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="responses")
    text = models.TextField()
    # `text` as sanitised HTML, rendered once when stored (annotate.rendering): a pair is shown
    # to several annotators and rendering costs more than the rest of showing it. Rendered
    # again on display while `html_version` is not the renderer's current version.
    html = models.TextField(blank=True, editable=False)
    html_version = models.PositiveSmallIntegerField(default=0, editable=False)
    generation_params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:80]

    @property
    def cut_off(self) -> bool:
        """Whether the token limit stopped this response before the model ended it."""
        return self.finish_reason == CUT_OFF


class Purpose(models.TextChoices):
    TRAIN = "train", "Training data"
    EVAL = "eval", "Evaluation head-to-head"


class Choice(models.TextChoices):
    """A judgment in terms of the comparison's responses, independent of the sides shown."""

    A = "a", "A better"
    B = "b", "B better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"
    RANKED = "ranked", "Ranked"  # a ranking's judgment: its `ranks` say the rest
    GOOD = "good", "Good"  # a rating's (of one response)
    BAD = "bad", "Bad"


# The answers to a pair (a ranking's "ranked" is not one, nor a rating's).
PAIR_CHOICES = [
    (value, label)
    for value, label in Choice.choices
    if value not in (Choice.RANKED, Choice.GOOD, Choice.BAD)
]
# The answers to a rating.
RATING_CHOICES = [(Choice.GOOD.value, Choice.GOOD.label), (Choice.BAD.value, Choice.BAD.label)]


class ComparisonKind(models.TextChoices):
    """What an annotator does with a comparison (not stored: its responses say it)."""

    PAIR = "pair", "Judge a pair"
    RANKING = "ranking", "Rank K responses"
    RATING = "rating", "Rate one response"


class ComparisonStatus(models.TextChoices):
    OPEN = "open", "Open"
    COMPLETE = "complete", "Complete"
    RETIRED = "retired", "Retired"


class ComparisonQuerySet(models.QuerySet["Comparison"]):
    def items(self) -> ComparisonQuerySet:
        """What annotators are handed: pairs and rankings, not the pairs rankings imply."""
        return self.filter(ranking__isnull=True)

    def with_outcome(self) -> ComparisonQuerySet:
        """What its own votes decide (into a PreferencePair): pairs, the pairs rankings imply,
        ratings; not the rankings themselves."""
        return self.filter(responses=[])

    def pairwise(self) -> ComparisonQuerySet:
        """Comparisons of two responses, implied ones included."""
        return self.with_outcome().filter(response_b__isnull=False)

    def ratings(self) -> ComparisonQuerySet:
        """Ratings: one response each."""
        return self.filter(response_b__isnull=True)


class Comparison(models.Model):
    # Indexed by the indexes below, which lead with it (each index costs every vote's update
    # of the row an entry: the count and status it changes are in the queue's index).
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="comparisons", db_index=False
    )
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    response_a = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    # None for a rating: one response (`response_a`) rated on its own.
    response_b = models.ForeignKey(
        Response, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    left_is_a = models.BooleanField(default=True)
    # The round is alignment's concept; annotate only knows its number (alignment → annotate).
    round_number = models.PositiveIntegerField(default=0)
    purpose = models.CharField(max_length=5, choices=Purpose, default=Purpose.TRAIN)
    pairing_strategy = models.CharField(max_length=40, blank=True)
    # How the two responses were picked from more samples: strategy, K, picked, score.
    selection = models.JSONField(default=dict, blank=True)
    gold_choice = models.CharField(max_length=10, choices=Choice, blank=True)
    # A ranking: the ids of its K responses (response_a and response_b are the first two).
    responses = models.JSONField(default=list, blank=True)
    # An implied pair: the ranking comparison it belongs to (not a queue item of its own).
    ranking = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="implied"
    )
    status = models.CharField(
        max_length=10, choices=ComparisonStatus, default=ComparisonStatus.OPEN
    )
    # Votes that count toward the overlap (gold items: every annotator's answer, uncapped).
    judgment_count = models.PositiveSmallIntegerField(default=0)
    sent_back_count = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ComparisonQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            # The queue's order: an index walk finds the next few candidates without a sort.
            models.Index(
                fields=["project", "status", "-round_number", "-judgment_count", "id"],
                name="comparison_queue_order",
            ),
            models.Index(fields=["project", "round_number"], name="comparison_project_round"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(response_a=models.F("response_b")),
                name="comparison_distinct_responses",
            ),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk} on prompt {self.prompt_id}"

    @property
    def is_gold(self) -> bool:
        return bool(self.gold_choice)

    @property
    def is_ranking(self) -> bool:
        return bool(self.responses)

    @property
    def is_rating(self) -> bool:
        return self.response_b_id is None

    @property
    def kind(self) -> ComparisonKind:
        if self.is_ranking:
            return ComparisonKind.RANKING
        return ComparisonKind.RATING if self.is_rating else ComparisonKind.PAIR

    @property
    def pair_b(self) -> Response:
        """Response B, where the code holds a pair (a rating has none: an AssertionError)."""
        assert self.response_b is not None, f"comparison {self.pk} is a rating"
        return self.response_b

    @property
    def pair_b_id(self) -> int:
        assert self.response_b_id is not None, f"comparison {self.pk} is a rating"
        return self.response_b_id


class LeaseState(models.TextChoices):
    HELD = "held", "Held"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"
    RELEASED = "released", "Released"


class Lease(models.Model):
    """A comparison held for one annotator until `expires_at`; also the record of skips.

    `left_is_a` is the side layout this annotator is shown: the comparison's own, or the
    swapped one when the lease re-shows a judged pair to check the annotator's consistency.
    For a ranking it says whether the annotator's own order is shown as drawn (True) or
    reversed (a re-check).
    """

    # Both indexed by the indexes below that lead with them: a lease changes state a few
    # times per judgment, and each index on the table costs each change an entry.
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="leases", db_index=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases", db_index=False
    )
    state = models.CharField(max_length=10, choices=LeaseState, default=LeaseState.HELD)
    left_is_a = models.BooleanField(default=True)
    is_recheck = models.BooleanField(default=False)
    expires_at = models.DateTimeField()
    skip_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="lease_unique_per_annotator"
            ),
        ]
        indexes = [
            # (A comparison's leases, few, are found through the unique constraint's index.)
            # The lease an annotator holds, the pairs they skipped: found without reading
            # their whole history.
            models.Index(fields=["annotator", "state", "comparison"], name="lease_annotator_state"),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} {self.state} {self.comparison_id}"


class JudgmentKind(models.TextChoices):
    VOTE = "vote", "Vote"
    RECHECK = "recheck", "Swapped re-check"  # the same pair re-shown with sides swapped
    ADJUDICATION = "adjudication", "Adjudication"  # a reviewer's decision, wins aggregation
    IMPLIED = "implied", "Implied by a ranking"  # one pair of a ranking vote (`source`)
    # A model judge's answer shown to annotators once they have voted: never counted.
    SUGGESTION = "suggestion", "Model suggestion"
    # A model judge's answer to a comparison no person reached: decides it alone, as an
    # adjudication does, and is replaced when the comparison is sent back.
    FILL = "fill", "Model fill-in"


class JudgmentQuerySet(models.QuerySet["Judgment"]):
    def with_by_model(self) -> JudgmentQuerySet:
        """Each judgment with `by_model`: whether a model judge made it (a member of kind
        "model" of its project)."""
        return self.annotate(
            by_model=models.Exists(
                Membership.objects.filter(
                    project_id=models.OuterRef("project_id"),
                    user_id=models.OuterRef("annotator_id"),
                    kind=MemberKind.MODEL,
                )
            )
        )


class Judgment(models.Model):
    """One annotator's answer. Undo and send-back supersede it: it stays, but no longer counts."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="judgments")
    # The comparison's project, kept on the row: an annotator's counts and "have I judged it"
    # are then index lookups, not joins over their whole history.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="judgments", editable=False
    )
    # Indexed by (annotator, created_at) below.
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judgments", db_index=False
    )
    kind = models.CharField(max_length=12, choices=JudgmentKind, default=JudgmentKind.VOTE)
    choice = models.CharField(max_length=10, choices=Choice)
    left_was_a = models.BooleanField(help_text="The side layout the annotator saw.")
    # A ranking's judgment: the response ids in the order shown, and the rank of each (1 the
    # best; tied responses share one). Empty for a pair, and for a ranking judged "all bad".
    shown = models.JSONField(default=list, blank=True)
    ranks = models.JSONField(default=list, blank=True)
    # An implied judgment: the ranking judgment it was derived from.
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="implied"
    )
    strength = models.PositiveSmallIntegerField(null=True, blank=True)
    # A rating's score on the project's 1-5 scale (its choice: good or bad by the threshold
    # then); None on the good / bad scale and for pairs.
    score = models.PositiveSmallIntegerField(null=True, blank=True)
    criteria = models.JSONField(default=dict, blank=True, help_text="criterion name → choice")
    rationale = models.TextField(blank=True)
    reason_tags = models.JSONField(default=list, blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    guideline = models.ForeignKey(Guideline, null=True, blank=True, on_delete=models.PROTECT)
    # Unique per annotator, through a constraint (see Meta): a key is the client's, so one
    # annotator's key neither collides with nor reveals another's. NULL (no key) stays outside
    # the constraint, as many judgments have no key.
    idempotency_key = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    superseded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JudgmentQuerySet.as_manager()
    # Not a column: set by judgment_submit (in the statement it reads anyway) when model judges
    # suggested answers on the comparison; the judging page shows them only then.
    suggested = False

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["annotator", "comparison", "kind"],
                condition=Q(superseded_at__isnull=True),
                name="judgment_one_live_per_annotator_and_kind",
            ),
            # Also the index a submit finds its retried twin by (annotator, key).
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"], name="judgment_idempotency_key_annotator"
            ),
        ]
        indexes = [
            models.Index(fields=["annotator", "created_at"]),
            # An annotator's live votes in a project: counted for their progress, and the set
            # the queue keeps them away from (read whole from the index).
            models.Index(
                fields=["project", "annotator", "comparison"],
                condition=Q(kind="vote", superseded_at__isnull=True),
                name="judgment_live_votes",
            ),
            # The model judges' live suggestions on a comparison: what every submit asks
            # (sql/judgments.submit_state), from an index that holds only them (often none).
            models.Index(
                fields=["comparison"],
                condition=Q(kind="suggestion", superseded_at__isnull=True),
                name="judgment_live_suggestions",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} on {self.comparison_id}: {self.choice}"

    @property
    def chose_left(self) -> bool | None:
        if self.choice not in (Choice.A, Choice.B):
            return None
        return (self.choice == Choice.A) == self.left_was_a


class PairKind(models.TextChoices):
    PREFERENCE = "preference", "Chosen / rejected"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"
    # A rating's outcome: its one response (`chosen` and `rejected` both) is desirable or
    # undesirable; only KTO trains on it.
    GOOD = "good", "Desirable (rated)"
    BAD = "bad", "Undesirable (rated)"


class PreferencePair(models.Model):
    """Aggregated outcome of a comparison's judgments (majority vote, with agreement).

    For `preference` pairs `chosen`/`rejected` are set; ties and both-bad keep the two
    responses as `chosen`/`rejected` in comparison order and feed unpaired (KTO-style) data.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pairs")
    comparison = models.OneToOneField(Comparison, on_delete=models.CASCADE, related_name="pair")
    kind = models.CharField(max_length=12, choices=PairKind)
    chosen = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    agreement = models.FloatField(help_text="Share of judgments that agree with the outcome.")
    n_judgments = models.PositiveSmallIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} pair for comparison {self.comparison_id}"


class DatasetSnapshot(models.Model):
    """The frozen set of pairs a training run used: ids, the filters, a content hash."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    pair_ids = models.JSONField(default=list)  # what the run trains on
    # Held out from training, scored before and after it (preference pairs only).
    validation_pair_ids = models.JSONField(default=list, blank=True)
    # What each pair was when frozen: {pair id: [chosen response id, rejected id, kind]}. A
    # pair's outcome can change with later judgments; the run trains on this, not on that.
    responses = models.JSONField(default=dict, blank=True)
    filters = models.JSONField(default=dict, blank=True)
    # The model judges whose answers decided some of its pairs, and how they counted:
    # [{"judge": name, "votes": n, "fills": n}] (suggestions never decide a pair).
    model_judges = models.JSONField(default=list, blank=True)
    content_hash = models.CharField(max_length=64)
    n_pairs = models.PositiveIntegerField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Snapshot {self.pk} ({self.n_pairs} pairs, {self.content_hash[:10]})"


class CoverageStats(models.Model):
    """Diversity and coverage statistics of one scope of a project (the whole project, a
    round, a dataset snapshot), computed by a worker and read by the coverage page."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="coverage")
    scope = models.CharField(max_length=40)  # "project", "round:<n>", "snapshot:<id>"
    data = models.JSONField(default=dict)
    # What the data was computed from (counts and latest ids): stale when these move.
    fingerprint = models.CharField(max_length=200)
    computed_at = models.DateTimeField()
    seconds = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "scope"], name="coverage_scope_unique")
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.scope} at {self.computed_at:%Y-%m-%d %H:%M}"


class ImportJob(Job):
    """A large import a worker checks and writes (annotate.imports.jobs.import_job_execute), under
    the job machinery every background job shares (core.jobs): a worker lost mid-file is found
    by its stale heartbeat and the next one imports the file again. progress_done counts the
    rows checked. The uploaded file waits under DATA_DIR/imports/ until it is imported."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    kind = models.CharField(max_length=10)  # annotate.imports.rows.KINDS
    file_type = models.CharField(max_length=10)
    file_name = models.CharField(max_length=300, help_text="As uploaded.")
    file_bytes = models.PositiveBigIntegerField(default=0)
    path = models.CharField(max_length=500, help_text="Where the upload waits for the worker.")
    valid_only = models.BooleanField(default=False)
    keep_duplicates = models.BooleanField(default=False)
    created_count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[[line, message], ...]")
    message = models.TextField(blank=True)

    class Meta(Job.Meta):
        pass

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.file_name} ({self.status})"
