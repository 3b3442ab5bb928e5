"""First run: queue the import of the packaged starter model (SmolLM2-135M-Instruct) as the system
user; once registered it gets the alias `starter` and a deployment named `starter` that every
signed-in user may chat with. Once per data dir (a deleted starter model or deployment is not made
again); PUYU_STARTER=off skips it. Start-up never waits: the job shows its progress on the dashboard."""
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.system import system_user
from apps.registry.services import queue_starter
from puyu_site.env import SettingError, env_str


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        try:
            if env_str("PUYU_STARTER", "on", choices=("on", "off")) == "off":
                self.stdout.write("PUYU_STARTER=off: no starter model.")
                return
            job = queue_starter(system_user())
        except (SettingError, RuntimeError) as exc:
            raise CommandError(str(exc)) from None
        if job is None:
            self.stdout.write("The starter model was set up before in this data dir (deleting it is respected).")
        else:
            self.stdout.write(self.style.SUCCESS(f"Queued {job}: the starter model, then its deployment `starter`."))
