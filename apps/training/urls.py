from django.urls import path

from apps.training import views

urlpatterns = [
    path("", views.run_list, name="training-list"),
    path("new/", views.run_new, name="training-new"),
    path("compare/", views.run_compare, name="training-compare"),
    path("presets/", views.preset_list, name="training-presets"),
    path("presets/import/", views.preset_import, name="training-preset-import"),
    path("presets/<int:preset_id>/", views.preset_edit, name="training-preset"),
    path("presets/<int:preset_id>/delete/", views.preset_delete, name="training-preset-delete"),
    path("presets/<str:key>/export/", views.preset_export, name="training-preset-export"),
    path("presets/<str:key>/clone/", views.preset_clone, name="training-preset-clone"),
    path("<int:job_id>/", views.run_detail, name="training-run"),
    path("<int:job_id>/samples/", views.run_samples, name="training-run-samples"),
    path("<int:job_id>/checkpoints/", views.run_checkpoints, name="training-run-checkpoints"),
    path("<int:job_id>/spec.yaml", views.run_spec, name="training-run-spec"),
    path("<int:job_id>/restart/", views.run_restart, name="training-run-restart"),
]
