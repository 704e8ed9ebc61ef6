"""Idempotency keys unique per annotator, not across the site: one annotator's key no longer
collides with, or reveals, another's (the new constraint's index is the one a submit finds
its retried twin by)."""

from __future__ import annotations

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0016_prompt_language"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # Every pair of keys unique before is unique per annotator too: nothing to clean up.
        migrations.AddConstraint(
            model_name="judgment",
            constraint=models.UniqueConstraint(
                fields=("annotator", "idempotency_key"), name="judgment_idempotency_key_annotator"
            ),
        ),
        migrations.RemoveConstraint(model_name="judgment", name="judgment_idempotency_key"),
    ]
