from django.urls import path

from apps.studio import storage_views

urlpatterns = [
    path("", storage_views.storage_page, name="storage"),
    path("retention/", storage_views.retention_update, name="storage-retention"),
    path("sweep/", storage_views.sweep_now, name="storage-sweep"),
]
