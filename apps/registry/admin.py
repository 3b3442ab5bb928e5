from django.contrib import admin

from apps.registry.models import AliasMove, FirstRunRecord, ModelAlias, ModelVersion, RegisteredModel


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ("name", "architecture", "owner", "created_at")
    search_fields = ("name", "description")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "kind", "parameter_count", "size_bytes", "source", "created_at")
    list_filter = ("kind", "source")
    readonly_fields = ("uid", "files", "source_job")


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = ("__str__", "version", "updated_by", "updated_at")


@admin.register(AliasMove)
class AliasMoveAdmin(admin.ModelAdmin):
    list_display = ("alias", "from_version", "to_version", "moved_by", "moved_at")


@admin.register(FirstRunRecord)
class FirstRunRecordAdmin(admin.ModelAdmin):
    """Delete the "starter" record to have the next start import and deploy the starter again."""

    list_display = ("name", "done_at")
