from django.contrib import admin

from apps.serving.models import ApiKey, Deployment, Replica, UsageDay


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "model", "version", "alias", "replicas", "state", "restarts", "created_at")
    list_filter = ("state",)


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = ("replica_id", "deployment", "version", "state", "job", "created_at")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # Staff set a key's limits here (0 = no limit); users get the settings' defaults.
    list_display = ("name", "user", "prefix", "rate_limit_per_minute", "token_quota_per_day", "created_at", "last_used",
                    "revoked_at")
    readonly_fields = ("key_hash", "prefix")


@admin.register(UsageDay)
class UsageDayAdmin(admin.ModelAdmin):
    list_display = ("date", "key", "deployment", "requests", "prompt_tokens", "completion_tokens")
