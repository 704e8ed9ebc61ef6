"""Judgment.project (copied from its comparison) and the indexes the judging hot path reads."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0003_queue_order_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="judgment",
            name="project",
            field=models.ForeignKey(
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="judgments",
                to="annotate.project",
            ),
        ),
        migrations.RunSQL(
            "UPDATE annotate_judgment SET project_id = (SELECT c.project_id FROM"
            " annotate_comparison c WHERE c.id = annotate_judgment.comparison_id)",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="judgment",
            name="project",
            field=models.ForeignKey(
                editable=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="judgments",
                to="annotate.project",
            ),
        ),
        migrations.AddIndex(
            model_name="judgment",
            index=models.Index(
                condition=models.Q(("kind", "vote"), ("superseded_at__isnull", True)),
                fields=["project", "annotator", "comparison"],
                name="judgment_live_votes",
            ),
        ),
        migrations.AddIndex(
            model_name="lease",
            index=models.Index(
                fields=["annotator", "state", "comparison"], name="lease_annotator_state"
            ),
        ),
    ]
