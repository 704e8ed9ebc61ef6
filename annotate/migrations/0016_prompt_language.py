"""Each prompt's language guess, stored for the prompt browser's filter (and filled in for the
prompts already there)."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def languages_fill(apps: Any, schema_editor: Any) -> None:
    from annotate.diversity import language_guess

    Prompt = apps.get_model("annotate", "Prompt")
    batch = []
    for prompt in Prompt.objects.only("id", "messages").iterator(chunk_size=2000):
        asked = " ".join(
            str(m.get("content", "")) for m in prompt.messages if m.get("role") == "user"
        )
        prompt.language = language_guess(asked)
        batch.append(prompt)
        if len(batch) >= 2000:
            Prompt.objects.bulk_update(batch, ["language"])
            batch = []
    Prompt.objects.bulk_update(batch, ["language"])


class Migration(migrations.Migration):
    dependencies = [("annotate", "0015_recheck_gap_and_import_duplicates")]

    operations = [
        migrations.AddField(
            model_name="prompt",
            name="language",
            field=models.CharField(blank=True, editable=False, max_length=20),
        ),
        migrations.RunPython(languages_fill, migrations.RunPython.noop),
    ]
