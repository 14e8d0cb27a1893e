"""Settings, all read from the environment.

Every variable is documented in README.md ("Settings"). The defaults serve the chat on one machine with
nothing installed (SQLite and the in-memory channel layer); production sets DATABASE_URL and REDIS_URL.
A value that cannot be parsed stops the process with ImproperlyConfigured instead of running half
configured.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

# The chat's defaults live in the app (chat/conf.py); this file only reads the environment over them.
from chat.conf import default

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {value!r}")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: str | list[str] = "") -> list[str]:
    if isinstance(default, list):
        default = ",".join(default)
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_url(name: str, schemes: tuple[str, ...]) -> str:
    value = os.environ.get(name, "")
    if value and urlparse(value).scheme not in schemes:
        raise ImproperlyConfigured(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return value


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and env_bool("CHAT_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # A development key: only safe because it never leaves this machine. Production sets SECRET_KEY.
    SECRET_KEY = "dev-only-insecure-key-set-SECRET_KEY-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_ROOT = env_str("SITE_ROOT")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    # /healthz and /readyz, before the Host check, sessions and CSRF: a load balancer probes by IP
    # and carries no cookie (chat/health.py).
    "chat.health.middleware",
    # The request id (X-Request-ID) in every line of the request, and its access line.
    "chat.accesslog.middleware",
    # The Lambda invocation's deadline, from Zappa's context (a no-op elsewhere).
    "chat.invocation.middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language from the browser's Accept-Language (LANGUAGES below), for pages and API details.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "chatsite.wsgi.application"
ASGI_APPLICATION = "chatsite.asgi.application"

# Database: SQLite by default, PostgreSQL (or anything dj-database-url parses) from DATABASE_URL.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
try:
    DATABASES = {
        "default": dj_database_url.parse(
            # Persistent connections: opening one costs a few milliseconds, more than a post.
            DATABASE_URL,
            conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serialises writers; wait for the lock instead of failing under concurrent posts.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Channel layer: in-memory for one process; Redis pub/sub when REDIS_URL is set, so processes and
# hosts share rooms. Pub/sub rather than the list-based layer: each process subscribes once per room
# (see chat/hub.py), so there are no per-socket queues to overflow and a publish is one PUBLISH.
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss", "unix"))
CHAT_REDIS_PREFIX = env_str("CHAT_REDIS_PREFIX", default("CHAT_REDIS_PREFIX"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": CHAT_REDIS_PREFIX},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10000},
        }
    }
# Short-lived shared state (the typing throttle): in Redis with REDIS_URL, so every process
# agrees; else this process's memory (one process, or best effort per Lambda container).
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHAT_REDIS_PREFIX,
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
# The chat's own catalogs (chat/locale/); a browser asking for neither gets English.
LANGUAGES = [("en", "English"), ("fr", "Français")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = env_str("STATIC_URL", "/static/")
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")))

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# Everything goes to the console (stderr: journald, docker logs, CloudWatch on Lambda), each line
# with the path and user id of its request when it has one, never a body, cookie or token
# (chat/accesslog.py). Django's own 500s are `django.request` errors and uvicorn's uncaught ASGI
# exceptions are `uvicorn.error`: without handlers here an operator would see only access lines.
# No level on the uvicorn loggers: `--log-level` decides (and `--no-access-log` silences access).
# CHAT_LOG_FORMAT=json writes one JSON object per line instead, for a log collector.
CHAT_LOG_FORMAT = env_str("CHAT_LOG_FORMAT", "text")
if CHAT_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured("CHAT_LOG_FORMAT must be 'text' or 'json'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "context": {
            "()": "chat.accesslog."
            + ("JsonFormatter" if CHAT_LOG_FORMAT == "json" else "ContextFormatter")
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "context"}},
    "loggers": {
        "chat": {"handlers": ["console"], "level": env_str("CHAT_LOG_LEVEL", "INFO")},
        # Errors only: every 4xx answer would otherwise be a warning line, a flood on demand.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"handlers": ["console"], "propagate": False},
        "uvicorn.access": {"handlers": ["console"], "propagate": False},
    },
}

# Seconds each readiness check (database, Redis) may take before /readyz answers 503.
CHAT_READY_TIMEOUT = env_int("CHAT_READY_TIMEOUT", default("CHAT_READY_TIMEOUT"), minimum=1)

# /metrics (chat/metrics.py) answers only a request with `Authorization: Bearer <this>`; empty, it
# is off (404). CHAT_METRICS_EMF prints each Lambda invocation's figures as one CloudWatch EMF line
# on stdout; on by default on Lambda, where nothing scrapes a function.
CHAT_METRICS_TOKEN = env_str("CHAT_METRICS_TOKEN", default("CHAT_METRICS_TOKEN"))
CHAT_METRICS_EMF = env_bool("CHAT_METRICS_EMF", default("CHAT_METRICS_EMF"))

# --- The chat's own settings (README.md, "Settings"; their defaults are in chat/conf.py) ---
CHAT_MAX_BODY = env_int("CHAT_MAX_BODY", default("CHAT_MAX_BODY"), minimum=1)
CHAT_MAX_FRAME = env_int("CHAT_MAX_FRAME", default("CHAT_MAX_FRAME"), minimum=1024)
CHAT_RESUME_LIMIT = env_int("CHAT_RESUME_LIMIT", default("CHAT_RESUME_LIMIT"), minimum=1)
CHAT_POLL_MAX_TIMEOUT = env_int(
    "CHAT_POLL_MAX_TIMEOUT", default("CHAT_POLL_MAX_TIMEOUT"), minimum=1
)
CHAT_WS_TOKEN_MAX_AGE = env_int(
    "CHAT_WS_TOKEN_MAX_AGE", default("CHAT_WS_TOKEN_MAX_AGE"), minimum=1
)
CHAT_WS_URL = env_str("CHAT_WS_URL")
CHAT_WS_PATH = env_str("CHAT_WS_PATH", default("CHAT_WS_PATH"))
CHAT_FRAME_RATE = env_int("CHAT_FRAME_RATE", default("CHAT_FRAME_RATE"), minimum=1)
CHAT_FRAME_BURST = env_int("CHAT_FRAME_BURST", default("CHAT_FRAME_BURST"), minimum=1)
CHAT_PRESENCE_TTL = env_int("CHAT_PRESENCE_TTL", default("CHAT_PRESENCE_TTL"), minimum=5)
CHAT_SEND_QUEUE = env_int("CHAT_SEND_QUEUE", default("CHAT_SEND_QUEUE"), minimum=10)
CHAT_EDIT_WINDOW = env_int("CHAT_EDIT_WINDOW", default("CHAT_EDIT_WINDOW"), minimum=0)
# At most one `typing` event per user and room in this many seconds, on every transport (more are
# accepted and coalesced, so a flood of typing requests reaches nobody).
CHAT_TYPING_INTERVAL = env_int("CHAT_TYPING_INTERVAL", default("CHAT_TYPING_INTERVAL"), minimum=1)
# Fan-out backends (chat/fanout.py): how the write path and moderation reach live clients.
CHAT_FANOUT_BACKENDS = env_list("CHAT_FANOUT_BACKENDS", default("CHAT_FANOUT_BACKENDS"))
# How a long-poll waits: "hub" (woken by the room's publication) or "database" (re-reads; for
# deployments without a channel layer, such as Lambda).
CHAT_POLL_WAIT = env_str("CHAT_POLL_WAIT", default("CHAT_POLL_WAIT"))
if CHAT_POLL_WAIT not in ("hub", "database"):
    raise ImproperlyConfigured("CHAT_POLL_WAIT must be 'hub' or 'database'")
# Direct messages: the most people a group conversation may add to its creator.
CHAT_DM_MAX_OTHERS = env_int("CHAT_DM_MAX_OTHERS", default("CHAT_DM_MAX_OTHERS"), minimum=1)
# Raise `unread` notifications in the writer's thread instead of a worker thread per process
# (chat/notify.py). Always inline on Lambda.
CHAT_UNREAD_INLINE = env_bool("CHAT_UNREAD_INLINE", default("CHAT_UNREAD_INLINE"))
# Concurrent posts to one room from one process's threads are written together: one statement,
# one commit, a block of seq values (chat/writepath.py). Off: each post its own transaction.
# SQLite always takes the one-post path.
CHAT_GROUP_COMMIT = env_bool("CHAT_GROUP_COMMIT", default("CHAT_GROUP_COMMIT"))
# Minutes a mention or DM stays unread before it goes out in the user's email digest.
CHAT_EMAIL_DELAY = env_int("CHAT_EMAIL_DELAY", default("CHAT_EMAIL_DELAY"), minimum=1)
# The site's address as readers reach it (scheme and host, no trailing slash): digests link to
# rooms and to their unsubscribe page with it, since a scheduled run has no request to ask.
CHAT_SITE_URL = env_url("CHAT_SITE_URL", ("http", "https")).rstrip("/") or default("CHAT_SITE_URL")
# Email (the digests): Django's console backend unless EMAIL_BACKEND says otherwise, e.g.
# django.core.mail.backends.smtp.EmailBackend with the EMAIL_HOST settings below.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be true")
# Seconds an SMTP call may take (Django's default waits forever, past any Lambda timeout).
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "chat@localhost")
CSRF_FAILURE_VIEW = "chat.api.csrf_failure"

# --- Serverless (Zappa on Lambda; chat/serverless.py, chat/apigateway.py, zappa_settings.json) ---
# The @connections endpoint for every connection; empty = https://{domain}/{stage} of its $connect.
CHAT_APIGW_ENDPOINT = env_url("CHAT_APIGW_ENDPOINT", ("http", "https"))
# The region the @connections calls are signed for (Lambda sets AWS_REGION).
CHAT_APIGW_REGION = env_str("CHAT_APIGW_REGION", default("CHAT_APIGW_REGION"))
# Concurrent @connections posts per invocation (threads, and HTTP connections kept open).
CHAT_APIGW_POOL = env_int("CHAT_APIGW_POOL", default("CHAT_APIGW_POOL"), minimum=1)
# Connections one invocation posts to; the rest of a room goes to Zappa @task batches of this size.
CHAT_APIGW_BATCH = env_int("CHAT_APIGW_BATCH", default("CHAT_APIGW_BATCH"), minimum=1)
# Retries of a throttled (LimitExceededException) or failed post, with jittered exponential backoff.
CHAT_APIGW_RETRIES = env_int("CHAT_APIGW_RETRIES", default("CHAT_APIGW_RETRIES"), minimum=0)
# Post events with botocore's signer over a urllib3 pool (a third of boto3's CPU per call); off =
# boto3's post_to_connection.
CHAT_APIGW_FAST_POST = env_bool("CHAT_APIGW_FAST_POST", default("CHAT_APIGW_FAST_POST"))
# Seconds allowed for each @connections call (connect and read).
CHAT_APIGW_CALL_TIMEOUT = env_int(
    "CHAT_APIGW_CALL_TIMEOUT", default("CHAT_APIGW_CALL_TIMEOUT"), minimum=1
)
# Seconds an invocation may run when no Lambda context says how long is left (chat/invocation.py):
# the stage's timeout_seconds.
CHAT_INVOCATION_TIMEOUT = env_int(
    "CHAT_INVOCATION_TIMEOUT", default("CHAT_INVOCATION_TIMEOUT"), minimum=1
)
# API Gateway's idle timeout and maximum connection duration: older rows are probed or removed.
CHAT_APIGW_IDLE_TIMEOUT = env_int(
    "CHAT_APIGW_IDLE_TIMEOUT", default("CHAT_APIGW_IDLE_TIMEOUT"), minimum=1
)
CHAT_APIGW_MAX_DURATION = env_int(
    "CHAT_APIGW_MAX_DURATION", default("CHAT_APIGW_MAX_DURATION"), minimum=1
)
# Dotted path of the presence store class; empty = Redis with REDIS_URL, else memory. On Lambda:
# chat.presence.SubscriptionStore (read by chat/presence.py's store(), see the README).
CHAT_PRESENCE_STORE = env_str("CHAT_PRESENCE_STORE", default("CHAT_PRESENCE_STORE"))

# --- Files on S3 through django-storages (Lambda has no lasting disk); empty = local folders ---
# The bucket for uploads (media).
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
# The bucket `collectstatic` uploads static files to, served from it (or from STATIC_URL, a CDN).
AWS_STATIC_BUCKET_NAME = env_str("AWS_STATIC_BUCKET_NAME")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# An S3-compatible endpoint instead of AWS's (a local S3 in tests); path-style addressing then.
AWS_S3_ENDPOINT_URL = env_url("AWS_S3_ENDPOINT_URL", ("http", "https"))
# Lifetime of the signed S3 URLs that downloads redirect to (and the admin's file links).
CHAT_ATTACHMENT_URL_TTL = env_int(
    "CHAT_ATTACHMENT_URL_TTL", default("CHAT_ATTACHMENT_URL_TTL"), minimum=1
)
if AWS_STORAGE_BUCKET_NAME:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "location": "media",
            # Private objects, reached only through signed URLs that expire.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": CHAT_ATTACHMENT_URL_TTL,
            "file_overwrite": False,
            "signature_version": "s3v4",
            "region_name": env_str("AWS_S3_REGION_NAME", env_str("AWS_REGION")) or None,
            "endpoint_url": AWS_S3_ENDPOINT_URL or None,
            "addressing_style": "path" if AWS_S3_ENDPOINT_URL else None,
        },
    }
if AWS_STATIC_BUCKET_NAME:
    STORAGES["staticfiles"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STATIC_BUCKET_NAME,
            "location": "static",
            "querystring_auth": False,
        },
    }
    if "STATIC_URL" not in os.environ:
        STATIC_URL = f"https://{AWS_STATIC_BUCKET_NAME}.s3.amazonaws.com/static/"

# --- Attachments (chat/attachments.py) ---
# Largest file, in bytes (default 10 MB).
CHAT_ATTACHMENT_MAX_SIZE = env_int(
    "CHAT_ATTACHMENT_MAX_SIZE", default("CHAT_ATTACHMENT_MAX_SIZE"), minimum=1
)
# Content types a file may have; each upload's content is checked against its declared type.
CHAT_ATTACHMENT_TYPES = env_list("CHAT_ATTACHMENT_TYPES", default("CHAT_ATTACHMENT_TYPES"))
# Bytes one user may upload in 24 hours (default 100 MB).
CHAT_ATTACHMENT_DAILY_QUOTA = env_int(
    "CHAT_ATTACHMENT_DAILY_QUOTA", default("CHAT_ATTACHMENT_DAILY_QUOTA"), minimum=0
)
# Lifetime of a presigned upload (that of signed download URLs is above, with the storage).
CHAT_ATTACHMENT_UPLOAD_TTL = env_int(
    "CHAT_ATTACHMENT_UPLOAD_TTL", default("CHAT_ATTACHMENT_UPLOAD_TTL"), minimum=1
)
# Uploads never sent in a message are deleted after this many seconds (`manage.py purgeattachments`).
CHAT_ATTACHMENT_UNUSED_TTL = env_int(
    "CHAT_ATTACHMENT_UNUSED_TTL", default("CHAT_ATTACHMENT_UNUSED_TTL"), minimum=60
)
# Longest side of an image's thumbnail, in pixels.
CHAT_ATTACHMENT_THUMBNAIL = env_int(
    "CHAT_ATTACHMENT_THUMBNAIL", default("CHAT_ATTACHMENT_THUMBNAIL"), minimum=16
)
