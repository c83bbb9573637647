from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0007_open_set_calibration"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="dlib_tflite",
            field=models.FileField(
                blank=True,
                help_text="dlib's network for edge clients of a fused site (shared between versions).",
                max_length=200,
                upload_to="",
            ),
        ),
        migrations.AddField(
            model_name="modelversion",
            name="dlib_tflite_sha256",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
