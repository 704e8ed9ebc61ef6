"""A split vote is undecided, not a tie: pairs stored as ties from evenly split votes are
removed (the comparison waits in the review queue for an adjudication or another vote)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import migrations


def split_ties_remove(apps: Any, schema_editor: Any) -> None:
    PreferencePair = apps.get_model("annotate", "PreferencePair")
    Judgment = apps.get_model("annotate", "Judgment")
    undecided = []
    for pair in PreferencePair.objects.filter(kind="tie").iterator():
        live = list(
            Judgment.objects.filter(comparison_id=pair.comparison_id, superseded_at__isnull=True)
            .exclude(kind="recheck")
            .order_by("id")
            .values_list("kind", "choice")
        )
        adjudications = [choice for kind, choice in live if kind == "adjudication"]
        if adjudications:
            continue  # an adjudication decides alone
        counts = Counter(choice for _, choice in live).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            undecided.append(pair.pk)
    PreferencePair.objects.filter(pk__in=undecided).delete()


class Migration(migrations.Migration):
    dependencies = [("annotate", "0013_importjob_on_job_machinery")]

    operations = [migrations.RunPython(split_ties_remove, migrations.RunPython.noop)]
