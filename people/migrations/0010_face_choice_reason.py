# The central-subject rule on every enrollment path (issue 15 part 4): which face of a photo of
# several was taken and why, on the photo's row.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("people", "0009_face_embeddings_and_regions"),
    ]

    operations = [
        migrations.AddField(
            model_name="faceimage",
            name="face_choice_reason",
            field=models.CharField(
                blank=True,
                help_text="In a photo of several faces, which face was taken and why (chosen by staff, the central subject "
                "with its size and distance from the centre, or the clearly largest face).",
                max_length=200,
            ),
        ),
        migrations.AlterField(
            model_name="faceimage",
            name="chosen_box",
            field=models.JSONField(
                blank=True,
                help_text="[x, y, w, h] of the face chosen as the person's (by staff, or the central-subject rule); "
                "processing takes the detected face overlapping it most.",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="faceimage",
            name="face_choice",
            field=models.CharField(
                blank=True, choices=[("staff", "Chosen by staff"), ("central", "Central subject")], max_length=10
            ),
        ),
    ]
