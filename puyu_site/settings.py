"""Puyu Studio settings: everything comes from the environment, parsed strictly (see env.py).

Development is the default (`PUYU_ENV=development`): SQLite under the data dir, a secret key
generated once and kept there. `PUYU_ENV=production` requires SECRET_KEY and ALLOWED_HOSTS and
turns on the HTTPS settings so `manage.py check --deploy` passes.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from puyu_site.database import database_from_url
from puyu_site.env import (
    SettingError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_path,
    env_redis_url,
    env_str,
    require_redis_password,
)

BASE_DIR = Path(__file__).resolve().parent.parent
PUYU_ENV = env_str("PUYU_ENV", "development", choices=("development", "production"))
PRODUCTION = PUYU_ENV == "production"

DATA_DIR = env_path("PUYU_DATA_DIR", BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)
JOB_LOG_DIR = DATA_DIR / "jobs"
MODEL_STORE_DIR = DATA_DIR / "models"
DATASET_STORE_DIR = DATA_DIR / "datasets"
UPLOAD_DIR = DATA_DIR / "uploads"
EVALUATION_DIR = DATA_DIR / "evaluations"  # prediction caches, per-sample files, arena vote exports
# Base URLs of OpenAI-compatible endpoints an admin may register for evaluation runs (comma
# separated; empty: none). The worker refuses any other URL too (workers/core/evaluation).
EVAL_ENDPOINT_ALLOWLIST = env_list("PUYU_EVAL_ENDPOINT_ALLOWLIST", [])
# Folders a user may import models from (their immediate sub-folders are offered in the form).
# A user never types a server path: the form lists what is there.
MODEL_IMPORT_DIRS = [Path(p).resolve() for p in env_list("PUYU_MODEL_IMPORT_DIRS", [str(DATA_DIR / "import")])]
MAX_UPLOAD_BYTES = env_int("PUYU_MAX_UPLOAD_BYTES", 20 * 2**30, minimum=1)
# Request bodies past these sizes are refused (413) while they are read (puyu_site/bodylimit.py):
# dataset and model-archive uploads get MAX_UPLOAD_BYTES, a preset file MAX_PRESET_UPLOAD_BYTES
# (its YAML may be 64 KiB), every other route MAX_REQUEST_BYTES.
MAX_REQUEST_BYTES = env_int("PUYU_MAX_REQUEST_BYTES", 10 * 2**20, minimum=1024)
MAX_PRESET_UPLOAD_BYTES = 256 * 2**10
# What one hub import (model or dataset) may download; workers/core/hub_limits.py reads the same
# variable, checks the hub's file list before fetching and the bytes on disk after.
MAX_HUB_DOWNLOAD_BYTES = env_int("PUYU_MAX_HUB_DOWNLOAD_BYTES", 50 * 2**30, minimum=1)


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY", "")
    if key:
        if PRODUCTION and len(key) < 50:
            raise SettingError("SECRET_KEY must be at least 50 characters in production")
        return key
    if PRODUCTION:
        raise SettingError("SECRET_KEY is required when PUYU_ENV=production")
    # Development: generate once and keep it, so sessions survive restarts.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# Off unless asked for, in development too: `make run` is what a newcomer uses, and Django's
# debug pages (tracebacks, the URL list) would replace the studio's own 404 and 500 pages.
# Static files do not need it (whitenoise serves them from the finders in development).
DEBUG = env_bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise SettingError("DEBUG=1 is refused when PUYU_ENV=production")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise SettingError("ALLOWED_HOSTS is required when PUYU_ENV=production (comma-separated host names)")
if PRODUCTION and any(host == "*" for host in ALLOWED_HOSTS):
    raise SettingError("ALLOWED_HOSTS=* is refused when PUYU_ENV=production: name the host names the studio is served as")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # must come first: it replaces runserver with the ASGI server
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "ninja",
    "apps.accounts",
    "apps.jobs",
    "apps.studio",
    "apps.registry",
    "apps.datasets",
    "apps.training",
    "apps.serving",
    "apps.leaderboards",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "puyu_site.csp.ContentSecurityPolicyMiddleware",  # scripts only from our static files
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language: the user's cookie (set with their saved choice at login), else Accept-Language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "apps.accounts.language.UserLanguageMiddleware",
    "apps.accounts.throttle.LoginThrottleMiddleware",  # the login page and the admin's
    "apps.accounts.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.studio.uploads.UploadDiskFullMiddleware",  # a disk full mid-upload: 507 with the reason, not 500
    # After CSRF and auth: a second POST of one form (its `_once` token) replays the first.
    "apps.studio.idempotency.OnceFormMiddleware",
]

ROOT_URLCONF = "puyu_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "puyu_site.asgi.application"

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL"), DATA_DIR / "puyu.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
# Login throttling (apps/accounts/throttle.py): failures per username and address, then 429.
LOGIN_FAILURE_LIMIT = env_int("PUYU_LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("PUYU_LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60, minimum=1)
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
# Chat content and model output are never translated; only the interface is.
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
def _plotly_js_dir() -> Path:
    # plotly's to_html would inline 4.8 MB of JS and its CDN is unreachable offline: serve the
    # copy inside the plotly package as a static file instead. Found without importing plotly.
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    return Path(spec.origin).parent / "package_data"


STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/plotly", _plotly_js_dir())]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing root before collectstatic
for _folder in (MODEL_STORE_DIR, DATASET_STORE_DIR, UPLOAD_DIR, EVALUATION_DIR, DATA_DIR / "import"):
    _folder.mkdir(parents=True, exist_ok=True)
# Uploads stream to disk beside their final place (same file system: the move is a rename).
FILE_UPLOAD_TEMP_DIR = str(UPLOAD_DIR)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 2**20
# Refuse an over-size upload from its Content-Length, before any of it is written to disk.
FILE_UPLOAD_HANDLERS = [
    "apps.studio.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "apps.studio.uploads.DiskFullAwareTemporaryFileUploadHandler",  # a full disk: 507, no partial file
]
# Development serves from the finders (no collectstatic needed); production uses the
# manifest storage that `collectstatic` (run by the launcher) fills.
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# ---- Redis, Channels, Celery -------------------------------------------------------------
# The launcher starts an embedded Redis and exports REDIS_URL; the fallback lets one-off
# commands (migrate, shell) start without it. Submitting a job while Redis is unreachable is
# fine: the job stays QUEUED and beat dispatches it once Redis is back.
REDIS_URL = env_redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")
if PRODUCTION:
    require_redis_password(REDIS_URL)  # a Redis reachable beyond this machine needs a password

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group send is one PUBLISH, where the list layer (channels_redis.core)
        # reads the group's members and writes to each one's queue; bench/playground.py measured
        # an agent turn's end -> browser at 6-8 ms instead of 14. Not channels_redis's own pub/sub
        # layer: its group_add returned before Redis had the subscription, so a group send right
        # after it could miss the new member (possibly why a CI run's playground browser test never
        # showed the agent chat's sent message, 2026-12-04); ours returns once Redis confirmed it
        # (puyu_site/channel_layers.py). No `capacity`/`expiry` here: a member's messages wait in
        # an unbounded in-process queue, so a long token stream loses nothing (the list layer's
        # default capacity of 100 dropped them). A message published while a process reconnects
        # to Redis is lost; the pages recover from the database (a gap in a reply's text asks
        # for a snapshot, a finished job re-reads its own, every reconnect gets one).
        "BACKEND": "puyu_site.channel_layers.ConfirmedPubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 defaults to a 5 s socket timeout, which would close idle websockets.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None  # results live in the database rows, not in Redis
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# A submit while Redis is down must return quickly: the row is already committed and beat
# dispatches it later, so do not block the web request retrying the publish.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# A message not acknowledged within visibility_timeout is delivered again (a duplicate the claim
# refuses); jobs run for hours, so keep it long. Tests shorten it to prove a redelivery runs nothing twice.
_VISIBILITY = env_float("PUYU_BROKER_VISIBILITY_TIMEOUT", 3600.0, minimum=1.0)
# kombu sweeps for overdue messages every interval × throttle s (default 100 s): one cheap sorted-set read.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _VISIBILITY, "unacked_restore_throttle": 1,
                                   "unacked_restore_interval": max(1, min(10, int(_VISIBILITY // 4))),
                                   "socket_timeout": 5, "socket_connect_timeout": 2}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# ---- The job system -----------------------------------------------------------------------
# "serve" runs long-lived model replicas on their own threads-pool workers (one thread per serve
# slot), so a replica never blocks training or data jobs (see launcher.worker_plan).
JOB_QUEUES = ("gpu", "cpu", "serve")
CONTROL_QUEUE = "control"
JOB_HEARTBEAT_SECONDS = env_float("PUYU_JOB_HEARTBEAT_SECONDS", 5.0, minimum=0.2)
JOB_LEASE_SECONDS = env_float("PUYU_JOB_LEASE_SECONDS", 30.0, minimum=1.0)
if JOB_LEASE_SECONDS <= 2 * JOB_HEARTBEAT_SECONDS:
    raise SettingError(
        f"PUYU_JOB_LEASE_SECONDS={JOB_LEASE_SECONDS} must exceed twice PUYU_JOB_HEARTBEAT_SECONDS={JOB_HEARTBEAT_SECONDS}"
    )
JOB_MAX_ATTEMPTS = env_int("PUYU_JOB_MAX_ATTEMPTS", 3, minimum=1, maximum=10)
# Queued + running jobs one user may have at once (staff and deployment replicas are exempt).
MAX_ACTIVE_JOBS_PER_USER = env_int("PUYU_MAX_ACTIVE_JOBS_PER_USER", 20, minimum=1)
JOB_REAPER_INTERVAL_SECONDS = env_float("PUYU_REAPER_INTERVAL_SECONDS", 10.0, minimum=0.5)
JOB_DISPATCH_GRACE_SECONDS = env_float("PUYU_DISPATCH_GRACE_SECONDS", 5.0, minimum=0.0)
JOB_LOG_TAIL_LINES = env_int("PUYU_JOB_LOG_TAIL_LINES", 500, minimum=10)
# Hung jobs (the heartbeat proves liveness, not progress): the reaper fails a RUNNING job past its
# kind's wall-clock limit (hours since it first started; PUYU_JOB_TIME_LIMIT_<KIND>=hours, 0 = none)
# or with no progress, log or metric for PUYU_JOB_NO_PROGRESS_SECONDS (0 = never). Replicas
# (serve) run as long as their deployment and only idle between requests: no limit for them.
JOB_TIME_LIMIT_HOURS = {kind: env_float(f"PUYU_JOB_TIME_LIMIT_{kind.upper()}", hours, minimum=0.0) for kind, hours in {
    "diagnostics": 1, "probe": 1, "model_import": 6, "model_merge": 6, "model_quantize": 12, "dataset_import": 12,
    "dataset_clean": 24, "dataset_generate": 48, "train": 168, "serve": 0}.items()}
JOB_NO_PROGRESS_SECONDS = env_float("PUYU_JOB_NO_PROGRESS_SECONDS", 600.0, minimum=0.0)
JOB_NO_PROGRESS_EXEMPT_KINDS = ("serve",)
# Lost broker messages: a QUEUED job published this long ago whose message is in neither its
# queue nor the transport's unacked hash is published again (a long queue is never re-published).
JOB_MESSAGE_CHECK_SECONDS = env_float("PUYU_JOB_MESSAGE_CHECK_SECONDS", 60.0, minimum=0.5)
WORKER_HEARTBEAT_SECONDS = env_float("PUYU_WORKER_HEARTBEAT_SECONDS", 10.0, minimum=0.5)
WORKER_ONLINE_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS

# ---- Serving (apps/serving) ------------------------------------------------------------------
SERVING_RECONCILE_SECONDS = env_float("PUYU_SERVING_RECONCILE_SECONDS", 3.0, minimum=0.5)
# How long a request may wait in a deployment's queue for a replica to start it (then 504).
SERVING_QUEUE_TIMEOUT_SECONDS = env_float("PUYU_SERVING_QUEUE_TIMEOUT_SECONDS", 30.0, minimum=0.1)
SERVING_DEFAULT_MAX_TOKENS = env_int("PUYU_SERVING_DEFAULT_MAX_TOKENS", 256, minimum=1)
# A replica that has not beaten for this long (at least 2.5 of its own heartbeats) is dead: its
# clients get a 502 at once instead of waiting for the request timeout.
SERVING_REPLICA_DEAD_SECONDS = env_float("PUYU_SERVING_REPLICA_DEAD_SECONDS", 5.0, minimum=1.0)
# The limits of a new API key; only staff change them (the keys page, the admin). 0 = no limit.
SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE = env_int("PUYU_SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE", 60, minimum=0)
SERVING_DEFAULT_TOKEN_QUOTA_PER_DAY = env_int("PUYU_SERVING_DEFAULT_TOKEN_QUOTA_PER_DAY", 1_000_000, minimum=0)
# Prometheus may scrape /metrics with `Authorization: Bearer <this>`; staff sessions always may.
METRICS_TOKEN = env_str("PUYU_METRICS_TOKEN", "") or ""

CELERY_BEAT_SCHEDULE = {
    "maintain-jobs": {
        "task": "jobs.maintain",
        "schedule": JOB_REAPER_INTERVAL_SECONDS,
        # An old tick is useless once the next one is due; never let them pile up.
        "options": {"queue": CONTROL_QUEUE, "expires": JOB_REAPER_INTERVAL_SECONDS},
    },
    "reconcile-deployments": {
        "task": "serving.reconcile",
        "schedule": SERVING_RECONCILE_SECONDS,
        "options": {"queue": CONTROL_QUEUE, "expires": SERVING_RECONCILE_SECONDS},
    },
}

# ---- Production hardening (PUYU_ENV=production) ------------------------------------------
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# ---- Playground (apps/playground) ------------------------------------------------------------
INSTALLED_APPS += ["apps.playground"]
# Agent turns run on their own queue (a threads-pool worker), so a chat never waits behind
# training or data jobs; it is a job queue like the others (dispatch, reaper, dashboard).
AGENT_QUEUE = "agent"
JOB_QUEUES = (*JOB_QUEUES, AGENT_QUEUE)
JOB_TIME_LIMIT_HOURS["agent_turn"] = env_float("PUYU_JOB_TIME_LIMIT_AGENT_TURN", 0.25, minimum=0.0)
# Hosts (or host:port) the agent's user-described HTTP tools may call; none by default. The
# agent job receives it at run time (never in its stored parameters).
PLAYGROUND_HTTP_ALLOWLIST = env_list("PUYU_AGENT_HTTP_ALLOWLIST", [])
PLAYGROUND_MAX_DOCUMENT_BYTES = env_int("PUYU_PLAYGROUND_MAX_DOCUMENT_BYTES", 8 * 2**20, minimum=1024,
                                        maximum=MAX_REQUEST_BYTES)
PLAYGROUND_MAX_DOCUMENTS = 20  # per conversation (the agent core's MAX_DOCUMENTS)
PLAYGROUND_AGENT_MAX_TURNS = env_int("PUYU_PLAYGROUND_AGENT_MAX_TURNS", 5, minimum=1, maximum=20)
PLAYGROUND_AGENT_DEADLINE_SECONDS = env_float("PUYU_PLAYGROUND_AGENT_DEADLINE_SECONDS", 120.0, minimum=1.0)
if PLAYGROUND_AGENT_DEADLINE_SECONDS > 600:
    raise SettingError(f"PUYU_PLAYGROUND_AGENT_DEADLINE_SECONDS={PLAYGROUND_AGENT_DEADLINE_SECONDS} must be at most 600")
