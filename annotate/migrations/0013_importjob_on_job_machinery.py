import django.utils.timezone
from django.db import migrations, models


def _running_imports_recoverable(apps, schema_editor):
    """An import left running by a dead worker had no heartbeat: give it its start time, so
    recovery finds it stale and hands it to the next worker."""
    ImportJob = apps.get_model("annotate", "ImportJob")
    for job in ImportJob.objects.filter(status="running", heartbeat_at=None):
        job.heartbeat_at = job.started_at or job.created_at or django.utils.timezone.now()
        job.attempts = 1
        job.save(update_fields=["heartbeat_at", "attempts"])


class Migration(migrations.Migration):
    """Imports run on the job machinery every background job shares (core.jobs): the rows
    checked are the job's progress, and the job gains its heartbeat, attempts and error."""

    dependencies = [("annotate", "0012_fewer_indexes")]

    operations = [
        migrations.RenameField(
            model_name="importjob", old_name="rows_checked", new_name="progress_done"
        ),
        migrations.AddField(
            model_name="importjob",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="importjob",
            name="error",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="importjob",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="importjob",
            name="log_tail",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="importjob",
            name="metrics",
            field=models.JSONField(blank=True, default=list, help_text="Series of metric points."),
        ),
        migrations.AddField(
            model_name="importjob",
            name="progress_total",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="importjob",
            name="summary",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="importjob",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.RunPython(_running_imports_recoverable, migrations.RunPython.noop),
    ]
