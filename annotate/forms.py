"""Forms of the lead and reviewer pages. They parse and validate; services write."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from annotate.exports import FORMATS, ExportFilters
from annotate.imports.jobs import INLINE_MAX_BYTES
from annotate.imports.reading import MAX_FILE_BYTES, file_type_guess
from annotate.models import PAIR_CHOICES, RATING_CHOICES, SCORE_MAX, SCORE_MIN, Project, Role
from annotate.services.projects import MAX_QUOTA, PROJECT_SETTINGS
from core.http import numbers_parse

MAX_LIST_ITEMS = 12
MAX_UPLOAD_BYTES = MAX_FILE_BYTES  # what an import reads at most, from any source


class CommaListField(forms.CharField):
    """A short list of names typed as "helpfulness, honesty, formatting"."""

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        if len(items) > MAX_LIST_ITEMS:
            raise forms.ValidationError(f"At most {MAX_LIST_ITEMS} names.")
        too_long = [item for item in items if len(item) > 40]
        if too_long:
            raise forms.ValidationError(f"Names are at most 40 characters: {too_long[0]!r}.")
        return items

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value


class ProjectSettingsForm(forms.ModelForm[Project]):
    criteria = CommaListField(
        required=False,
        help_text="Per-criterion choices, e.g. helpfulness, honesty, harmlessness, formatting.",
    )
    reason_tags = CommaListField(
        required=False,
        help_text="Why the winner won, e.g. substance, correctness, safety, style/format, length.",
    )
    gold_rate = forms.FloatField(
        min_value=0, max_value=1, help_text="Share of pairs that are gold items (0 to 1)."
    )
    swap_recheck_rate = forms.FloatField(
        min_value=0,
        max_value=1,
        help_text="Share of pairs that re-show a judged pair with its sides swapped (0 to 1).",
    )
    recheck_gap_items = forms.IntegerField(
        min_value=0,
        max_value=10_000,
        help_text="A re-check comes back no sooner than this many of the annotator's other "
        "judgments later (default 20).",
    )
    recheck_gap_minutes = forms.IntegerField(
        min_value=0,
        max_value=7 * 24 * 60,
        help_text="Or no sooner than this many minutes later, whichever comes first (0: the "
        "count alone).",
    )
    overlap = forms.IntegerField(min_value=1, max_value=20)
    lease_seconds = forms.IntegerField(min_value=30, max_value=24 * 3600)
    undo_seconds = forms.IntegerField(min_value=0, max_value=24 * 3600)
    rating_threshold = forms.IntegerField(
        min_value=SCORE_MIN,
        max_value=SCORE_MAX,
        help_text="Ratings on the 1-5 scale: a score from this up is good, below it bad "
        "(ratings made already keep their label).",
    )
    judge_kappa_min = forms.FloatField(
        min_value=-1,
        max_value=1,
        label="Flag a model judge below this κ",
        help_text="A model judge whose Cohen's κ against the people's majority falls below "
        "this is flagged on the Quality page (-1 to 1; default 0.4).",
    )

    class Meta:
        model = Project
        fields = list(PROJECT_SETTINGS)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)
    quota = forms.IntegerField(
        min_value=1,
        max_value=MAX_QUOTA,
        required=False,
        help_text=f"Judgments this member may make at most (1 to {MAX_QUOTA}); empty: no limit.",
    )

    def clean_username(self) -> User:
        username = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"There is no user called {username!r}.")
        return user


class GuidelineForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 18}), max_length=100_000)
    changes = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="What changed: annotators see this in a banner on their next pair.",
    )


class AdjudicateForm(forms.Form):
    # No answer chosen in advance: a reviewer picks one on purpose.
    choice = forms.ChoiceField(choices=[("", "Choose the answer…"), *PAIR_CHOICES])
    rationale = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def __init__(self, *args: Any, rating: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if rating:  # a rating's answers: good or bad
            field = self.fields["choice"]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [("", "Choose the answer…"), *RATING_CHOICES]


class GoldForm(forms.Form):
    gold_choice = forms.ChoiceField(
        choices=[("", "Not a gold item"), *PAIR_CHOICES], required=False
    )

    def __init__(self, *args: Any, rating: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if rating:
            field = self.fields["gold_choice"]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [("", "Not a gold item"), *RATING_CHOICES]


class ExportForm(forms.Form):
    """The filters of an export, read from the query string (a download is a GET)."""

    format = forms.ChoiceField(choices=list(FORMATS.items()), initial="dpo")
    split = forms.ChoiceField(
        choices=[("train", "Training prompts"), ("eval", "Held-out prompts"), ("all", "All")],
        initial="train",
        help_text="Held-out (eval) prompts never go into training data unless you ask here.",
    )
    rounds = forms.CharField(
        required=False, max_length=2000, help_text="e.g. 1, 2 (empty: every round)"
    )
    min_agreement = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=0.0,
        required=False,
        help_text="Only pairs whose judgments agree at least this much (0-1).",
    )
    tags = CommaListField(required=False, help_text="Only prompts with any of these tags.")
    include_ties = forms.BooleanField(
        required=False,
        initial=True,
        help_text="KTO: ties as two desirable rows, both-bad as two undesirable rows.",
    )
    criteria = CommaListField(
        required=False,
        help_text="Only pairs whose winner also won these criteria, by the annotators' "
        "per-criterion choices (e.g. helpfulness, honesty).",
    )

    def clean_rounds(self) -> tuple[int, ...]:
        try:
            rounds = numbers_parse(self.cleaned_data["rounds"], name="Rounds")
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None
        return tuple(dict.fromkeys(rounds))

    def filters(self) -> ExportFilters:
        data = self.cleaned_data
        return ExportFilters(
            rounds=data["rounds"],
            min_agreement=data["min_agreement"] or 0.0,
            split=data["split"],
            tags=tuple(data["tags"]),
            include_ties=data["include_ties"],
            criteria=tuple(data["criteria"]),
        )


class ImportForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[("prompts", "Prompts"), ("pairs", "Preference pairs (prompt / chosen / rejected)")]
    )
    file = forms.FileField(
        help_text=f"JSONL, CSV or Parquet, at most {MAX_UPLOAD_BYTES // 2**20} MB; files over "
        f"{INLINE_MAX_BYTES // 2**20} MB are imported by a worker, with progress below "
        "(datasets directories: manage.py data_import)."
    )
    valid_only = forms.BooleanField(
        required=False,
        label="Import the valid rows",
        help_text="Skip the bad rows instead of refusing the whole file.",
    )
    keep_duplicates = forms.BooleanField(
        required=False,
        label="Keep duplicates",
        help_text="Import rows already in the project again (by default they are skipped and "
        "listed).",
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is {upload.size / 2**20:.1f} MB; the limit here is "
                f"{MAX_UPLOAD_BYTES // 2**20} MB."
            )
        if file_type_guess(upload.name) == "dataset":
            raise forms.ValidationError("Upload a .jsonl, .json, .csv or .parquet file.")
        return upload


class PromptFilterForm(forms.Form):
    """The prompt browser's filters, read from the query string; each choice offers the values
    the project's prompts have."""

    q = forms.CharField(required=False, max_length=200, label="Text")
    tag = forms.ChoiceField(required=False)
    split = forms.ChoiceField(
        required=False, choices=[("", "Any split"), ("train", "Training"), ("eval", "Held out")]
    )
    language = forms.ChoiceField(required=False)
    cluster = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    round = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    status = forms.ChoiceField(required=False)

    def __init__(self, data: Any, *, facets: Any, statuses: dict[str, str]) -> None:
        super().__init__(data)
        fields = self.fields
        fields["tag"].choices = [("", "Any tag")] + [(t, t) for t in facets.tags]  # type: ignore[attr-defined]
        fields["language"].choices = [("", "Any language")] + [  # type: ignore[attr-defined]
            (name, name) for name in facets.languages
        ]
        fields["cluster"].choices = [("", "Any cluster")] + [  # type: ignore[attr-defined]
            (str(c), f"Cluster {c}") for c in facets.clusters
        ]
        fields["round"].choices = [("", "Any round")] + [  # type: ignore[attr-defined]
            (str(r), f"Round {r}") for r in facets.rounds
        ]
        fields["status"].choices = [("", "Any status"), *statuses.items()]  # type: ignore[attr-defined]
