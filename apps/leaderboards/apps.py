from django.apps import AppConfig


class LeaderboardsConfig(AppConfig):
    name = "apps.leaderboards"
    label = "leaderboards"
    verbose_name = "Evaluation and leaderboards"

    def ready(self):
        from apps.jobs.services import RETRY_HANDLERS
        from apps.leaderboards.services import retry_evaluation

        RETRY_HANDLERS["evaluate"] = retry_evaluation
        from apps.jobs import outputs
        from apps.leaderboards.services import created_run

        outputs.register(("evaluate",), created_run)
