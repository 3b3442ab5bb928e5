"""Create the first admin account if no superuser exists, and print how to log in.

Takes DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL when set; otherwise creates `admin` with a
random password kept in <data dir>/admin_password.txt (mode 600; the output names the file, never
the password, since the launcher keeps its output in logs)."""
import errno
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = password is None
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        message = f"Created the first admin account: username {username!r}"
        if generated:
            path = settings.DATA_DIR / "admin_password.txt"
            write_secret(path, password + "\n")
            # Never the password itself: the launcher keeps its output in log files.
            message += f"; its password is in {shown(path)} (mode 600, readable only by you)"
        self.stdout.write(self.style.SUCCESS(message))


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only. O_NOFOLLOW: a symlink planted at the
    path (to a file another account reads, or one the studio serves) is refused, not followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CommandError(f"{shown(path)} is a symbolic link: remove it, then run this again") from None
        raise
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing file keeps its mode on O_CREAT: set it
        fh.write(text)


def shown(path: Path) -> str:
    """The path as the log shows it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
