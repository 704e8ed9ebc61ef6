from django.db import migrations


def _base_versions_create(apps, schema_editor):
    """Every project has its base version from its creation on (pages no longer create it on
    first view): give one to each project made before."""
    Project = apps.get_model("annotate", "Project")
    Policy = apps.get_model("annotate", "Policy")
    ModelVersion = apps.get_model("alignment", "ModelVersion")
    for project in Project.objects.all():
        if ModelVersion.objects.filter(project=project, parent=None, adapter_path="").exists():
            continue
        policy = Policy.objects.create(
            project=project, name="v0 (base)", kind="model", description=project.base_model
        )
        ModelVersion.objects.create(
            project=project, policy=policy, name=policy.name, base_model=project.base_model
        )


class Migration(migrations.Migration):
    dependencies = [
        ("alignment", "0006_round_pair_selection"),
        ("annotate", "0013_importjob_on_job_machinery"),
    ]

    operations = [migrations.RunPython(_base_versions_create, migrations.RunPython.noop)]
