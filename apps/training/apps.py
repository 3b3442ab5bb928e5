from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "apps.training"
    label = "training"
    verbose_name = "Training"

    def ready(self):
        from apps.jobs.services import RETRY_HANDLERS
        from apps.training.services import retry_training_job

        RETRY_HANDLERS["train"] = retry_training_job
