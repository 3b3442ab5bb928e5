from django.urls import path

from apps.serving import openai_views, views

urlpatterns = [
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/new/", views.deployment_new, name="deployment-new"),
    path("deployments/keys/", views.keys, name="serving-keys"),
    path("deployments/keys/<int:key_id>/revoke/", views.key_revoke, name="serving-key-revoke"),
    path("deployments/usage/", views.usage, name="serving-usage"),
    path("deployments/<int:deployment_id>/", views.deployment_detail, name="deployment-detail"),
    path("deployments/<int:deployment_id>/metrics/", views.deployment_metrics, name="deployment-metrics"),
    path("deployments/<int:deployment_id>/try/", views.deployment_try, name="deployment-try"),
    path("deployments/<int:deployment_id>/<slug:action>/", views.deployment_action, name="deployment-action"),
    # OpenAI-compatible API (API keys, no session; see apps/accounts/middleware.py)
    path("v1/models", openai_views.models, name="openai-models"),
    path("v1/chat/completions", openai_views.chat_completions, name="openai-chat"),
    path("v1/completions", openai_views.completions, name="openai-completions"),
    path("metrics", views.prometheus, name="prometheus-metrics"),
]
