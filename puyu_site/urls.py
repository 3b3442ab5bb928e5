from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog

from apps.accounts import views as account_views
from apps.accounts.language import switch_language
from apps.datasets import views as dataset_views
from apps.jobs import views as job_views
from apps.registry import views as registry_views
from apps.studio import views as studio_views
from puyu_site.api import api

urlpatterns = [
    path("", studio_views.dashboard, name="dashboard"),
    path("healthz", studio_views.healthz, name="healthz"),
    path("start/", studio_views.quickstart, name="quickstart"),
    # Browsers ask for /favicon.ico whatever the page links; answer instead of a 404 on every page.
    path("favicon.ico", studio_views.favicon),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/tokens/", account_views.tokens, name="tokens"),
    path("accounts/language/", switch_language, name="switch-language"),
    # gettext() for static/js in the current language (locale/*/LC_MESSAGES/djangojs.po).
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    path("accounts/tokens/<int:token_id>/revoke/", account_views.revoke_token, name="token-revoke"),
    path("jobs/", job_views.job_list, name="job-list"),
    path("jobs/new/<slug:kind>/", job_views.job_new, name="job-new"),
    path("jobs/<int:job_id>/", job_views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", job_views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry/", job_views.job_retry, name="job-retry"),
    path("jobs/<int:job_id>/log/", job_views.job_log_download, name="job-log"),
    path("datasets/", dataset_views.dataset_list, name="dataset-list"),
    path("datasets/upload/", dataset_views.dataset_upload, name="dataset-upload"),
    path("datasets/generate/", dataset_views.dataset_generate, name="dataset-generate"),
    path("datasets/<int:dataset_id>/", dataset_views.dataset_detail, name="dataset-detail"),
    path("datasets/uploads/<int:upload_id>/", dataset_views.upload_detail, name="dataset-upload-detail"),
    path("datasets/uploads/<int:upload_id>/exclude/", dataset_views.upload_exclude, name="dataset-upload-exclude"),
    path("datasets/versions/<int:version_id>/", dataset_views.version_detail, name="dataset-version-detail"),
    path("datasets/versions/<int:version_id>/render/", dataset_views.version_render, name="dataset-version-render"),
    path("datasets/versions/<int:version_id>/download/", dataset_views.version_download, name="dataset-version-download"),
    path("datasets/versions/<int:version_id>/clean/", dataset_views.version_clean, name="dataset-version-clean"),
    path("datasets/versions/<int:version_id>/delete/", dataset_views.version_delete, name="dataset-version-delete"),
    path("models/", registry_views.model_list, name="model-list"),
    path("models/import/", registry_views.model_import, name="model-import"),
    path("models/<int:model_id>/", registry_views.model_detail, name="model-detail"),
    path("models/<int:model_id>/aliases/", registry_views.alias_move, name="alias-move"),
    path("models/versions/<int:version_id>/", registry_views.version_detail, name="version-detail"),
    path("models/versions/<int:version_id>/download/", registry_views.version_download, name="version-download"),
    path("models/versions/<int:version_id>/files/<path:name>", registry_views.version_file, name="version-file"),
    path("models/versions/<int:version_id>/merge/", registry_views.version_merge, name="version-merge"),
    path("models/versions/<int:version_id>/quantize/", registry_views.version_quantize, name="version-quantize"),
    path("models/versions/<int:version_id>/delete/", registry_views.version_delete, name="version-delete"),
    path("models/versions/<int:version_id>/notes/", registry_views.version_notes, name="version-notes"),
    path("storage/", include("apps.studio.storage_urls")),
    path("training/", include("apps.training.urls")),
    path("leaderboards/", include("apps.leaderboards.urls")),
    path("playground/", include("apps.playground.urls")),
    path("", include("apps.serving.urls")),
    path("s/<slug:slug>/", studio_views.section, name="section"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
