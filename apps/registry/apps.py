from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Model registry"

    def ready(self):
        from apps.jobs.services import RETRY_HANDLERS
        from apps.registry.services import REGISTRY_KINDS, retry_registry_job

        for kind in REGISTRY_KINDS:
            RETRY_HANDLERS[kind] = retry_registry_job
        from apps.jobs import outputs
        from apps.registry.services import created_versions

        outputs.register((*REGISTRY_KINDS, "train"), created_versions)
