from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "apps.datasets"
    label = "datasets"

    def ready(self):
        from apps.datasets.services import DATASET_KINDS, retry_dataset_job
        from apps.jobs.services import RETRY_HANDLERS

        for kind in DATASET_KINDS:
            RETRY_HANDLERS[kind] = retry_dataset_job
        from apps.datasets.services import created_versions
        from apps.jobs import outputs

        outputs.register(DATASET_KINDS, created_versions)
