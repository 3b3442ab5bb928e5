from django.urls import path

from apps.leaderboards import views

urlpatterns = [
    path("", views.home, name="leaderboards"),
    path("suites/<int:suite_id>/board/", views.leaderboard, name="leaderboard"),
    path("suites/<int:suite_id>/board.<str:fmt>", views.leaderboard_export, name="leaderboard-export"),
    path("compare/", views.compare, name="evaluation-compare"),
    path("evaluate/", views.evaluate, name="evaluate"),
    path("runs/", views.run_list, name="evaluation-list"),
    path("runs/<int:run_id>/", views.run_detail, name="evaluation-run"),
    path("runs/<int:run_id>/progress/", views.run_progress, name="evaluation-run-progress"),
    path("runs/<int:run_id>/benchmarks/<int:bv_id>/samples/", views.sample_list, name="evaluation-samples"),
    path("runs/<int:run_id>/benchmarks/<int:bv_id>/samples/<int:index>/", views.sample_detail, name="evaluation-sample"),
    path("benchmarks/", views.benchmark_list, name="benchmark-list"),
    path("benchmarks/new/", views.benchmark_new, name="benchmark-new"),
    path("benchmarks/<int:benchmark_id>/", views.benchmark_detail, name="benchmark-detail"),
    path("benchmarks/<int:benchmark_id>/edit/", views.benchmark_edit, name="benchmark-edit"),
    path("suites/", views.suite_list, name="suite-list"),
    path("suites/new/", views.suite_new, name="suite-new"),
    path("suites/<int:suite_id>/", views.suite_detail, name="suite-detail"),
    path("suites/<int:suite_id>/edit/", views.suite_edit, name="suite-edit"),
    path("import/", views.import_summary, name="import-summary"),
    path("import/<int:summary_id>/", views.import_detail, name="import-detail"),
    path("arena/", views.arena, name="arena"),
    path("arena/recompute/", views.arena_recompute, name="arena-recompute"),
]
