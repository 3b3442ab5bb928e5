"""Queue the job that creates the built-in benchmarks (once per data dir): nothing when they all
exist or the job is already queued or running. A worker on the cpu queue runs it."""
from django.core.management.base import BaseCommand, CommandError

from apps.leaderboards.services import ensure_builtins


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        try:
            job = ensure_builtins()
        except RuntimeError as exc:  # a person holds the system user's name
            raise CommandError(str(exc)) from None
        if job is None:
            self.stdout.write("The built-in benchmarks exist (or their job is queued or running).")
        else:
            self.stdout.write(self.style.SUCCESS(f"Queued {job} to create the built-in benchmarks "
                                                 f"({', '.join(job.params['outputs'])})."))
