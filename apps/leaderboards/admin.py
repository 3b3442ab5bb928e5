"""The admin: external endpoints are created here only (their base URL must be on
PUYU_EVAL_ENDPOINT_ALLOWLIST, and their API key is never shown back); the rest is read-mostly."""
from django import forms
from django.contrib import admin
from django.utils.translation import gettext

from apps.leaderboards.models import (
    ArenaRatingSnapshot,
    ArenaVote,
    Benchmark,
    BenchmarkVersion,
    EvaluationRun,
    ExternalEndpoint,
    ImportedSummary,
    Suite,
)
from apps.leaderboards.services import endpoint_allowed


class EndpointForm(forms.ModelForm):
    base_url = forms.URLField(max_length=300, assume_scheme="https")
    api_key = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                              help_text="Leave empty to keep the stored key.")

    class Meta:
        model = ExternalEndpoint
        fields = ("name", "base_url", "model_name", "api_key", "enabled")

    def clean_base_url(self):
        url = self.cleaned_data["base_url"]
        if not endpoint_allowed(ExternalEndpoint(base_url=url)):
            raise forms.ValidationError(gettext("This base URL is not on PUYU_EVAL_ENDPOINT_ALLOWLIST."))
        return url

    def clean_api_key(self):
        key = self.cleaned_data.get("api_key")
        return key if key else (self.instance.api_key if self.instance.pk else "")


@admin.register(ExternalEndpoint)
class ExternalEndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ("name", "base_url", "model_name", "enabled", "created_at")


@admin.register(Benchmark)
class BenchmarkAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "dimension", "builtin_key", "created_at")
    search_fields = ("name", "title")


@admin.register(BenchmarkVersion)
class BenchmarkVersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "short_hash", "dataset_version", "created_at")
    readonly_fields = ("definition", "version_hash")


@admin.register(Suite)
class SuiteAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "created_at")


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ("__str__", "target", "job", "created_at")
    list_filter = ("target",)
    readonly_fields = ("request_key", "model_hash")


@admin.register(ImportedSummary)
class ImportedSummaryAdmin(admin.ModelAdmin):
    list_display = ("filename", "owner", "created_at")


@admin.register(ArenaVote)
class ArenaVoteAdmin(admin.ModelAdmin):
    list_display = ("voter", "model_a", "model_b", "outcome", "created_at")


@admin.register(ArenaRatingSnapshot)
class ArenaRatingSnapshotAdmin(admin.ModelAdmin):
    list_display = ("job", "votes", "created_at")
