from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0004_add_train_serve_kinds'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='progress_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
