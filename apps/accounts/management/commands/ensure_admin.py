"""Create the first admin account if no superuser exists, and print how to log in.

Takes DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL when set; otherwise creates `admin` with a
random password, printed once and kept in <data dir>/admin_password.txt (mode 600)."""
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
            message += f", password {password!r} (also in {path})"
        self.stdout.write(self.style.SUCCESS(message))
