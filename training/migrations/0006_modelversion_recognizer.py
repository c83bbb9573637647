from django.db import migrations, models

# ModelVersion.recogniser is spelt recognizer in the code now; the column keeps its name
# (db_column), so nothing changes in the database.


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0005_softmax_head_artifact"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField(model_name="modelversion", old_name="recogniser", new_name="recognizer"),
                migrations.AlterField(
                    model_name="modelversion",
                    name="recognizer",
                    field=models.CharField(
                        blank=True,
                        choices=[("nearest_neighbour", "Nearest neighbour (gallery)"), ("softmax_head", "Softmax head")],
                        db_column="recogniser",
                        max_length=20,
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
