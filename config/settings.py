"""Prefloop settings: one file, driven by the environment.

Embedded default (no services): SQLite under data/ and Celery on kombu's filesystem
transport under data/. DATABASE_URL switches to PostgreSQL, CELERY_BROKER_URL to Redis.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def dotenv_load(path: Path) -> None:
    """KEY=VALUE lines of `path` (if it exists) into the environment, where not already set.

    `make install` writes `.env` with the development defaults (DEBUG=1), so every command
    the README shows works in a checkout as written; a deployment sets its environment and
    has no `.env` (the image does not copy one).
    """
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))


dotenv_load(BASE_DIR / ".env")

DATA_DIR = Path(os.environ.get("PREFLOOP_DATA_DIR", BASE_DIR / "data")).resolve()
MODELS_DIR = Path(os.environ.get("PREFLOOP_MODELS_DIR", DATA_DIR / "models")).resolve()
ARTIFACTS_DIR = Path(os.environ.get("PREFLOOP_ARTIFACTS_DIR", DATA_DIR / "artifacts")).resolve()

DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError(
            "SECRET_KEY must be set when DEBUG is off (for development: `make install` writes "
            "a .env with DEBUG=1, or set DEBUG=1)."
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "core",  # first: its ready() prepares what the other apps' modules use
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "csp",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "annotate",
    "alignment",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Outermost of those that touch the database: a restart answers 503, not 500.
    "core.http.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: it turns a locked-out login into its answer (AXES_LOCKOUT_CALLABLE).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
    }
]

SQLITE_PATH = DATA_DIR / "prefloop.sqlite3"
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Prepared statements for the judging hot path's plain SQL (annotate/sql.py), which
        # would otherwise be planned again on every execution (about 1 ms each here). Django's
        # own cursors bind client-side and never prepare. Behind PgBouncer: 1.21 or later,
        # with max_prepared_statements set.
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_PATH),
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so concurrent writers wait for
                # each other (busy timeout) instead of failing on a lock upgrade.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                ),
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "annotate.auth.Backend"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# In the image: inside it (/app/staticfiles), written at build time, never on a volume that
# an older image's files could shadow.
STATIC_ROOT = Path(os.environ.get("PREFLOOP_STATIC_ROOT", DATA_DIR / "staticfiles")).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Content-Security-Policy: no inline script, no remote anything. Model text is hostile.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# The API (annotate/api.py, alignment/api.py): token or session auth, JSON in and out, one
# error shape; its schema and Swagger UI (assets from the sidecar package: no CDN) at /api/v1/.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotate.auth.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.StrictJSONParser"],
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # ?format= is the export's (dpo / kto), not a renderer choice.
    "URL_FORMAT_OVERRIDE": None,
    # core.api.ExpensiveRequestThrottle: per user, imports, exports, rounds, training runs.
    "DEFAULT_THROTTLE_RATES": {"expensive": os.environ.get("API_EXPENSIVE_RATE", "30/minute")},
}
# A request body's limit (413 from the API above it): the API's prompt import takes up to
# 10,000 rows in one body. Files go through the import page, streamed to disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 2**20
SPECTACULAR_SETTINGS = {
    "TITLE": "Prefloop API",
    "DESCRIPTION": (
        "Projects, prompts, comparisons, the annotation flow, exports, rounds, training runs "
        "and model versions. Authenticate with `Authorization: Token <key>` (POST "
        "/api/v1/auth/token/ with a username and password, or `manage.py drf_create_token`)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Ids in paths (core.http.IdConverter): what the URL pattern accepts.
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999_999_999},
        "slug": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
    },
    "ENUM_NAME_OVERRIDES": {
        "ComparisonStatusEnum": "annotate.models.ComparisonStatus",
        "ComparisonKindEnum": "annotate.models.ComparisonKind",
        "JobStatusEnum": "core.models.JobStatus",
        "ReferenceEnum": "alignment.models.Reference",
        "ReferenceChoiceEnum": [("parent", "The parent's policy"), ("base", "The base model")],
    },
}

# Caches. With CACHE_URL (Redis) one cache for every process: sessions are read from it (and
# written through to the database), and the API's throttles count across the web processes.
# Without it each process has its own memory cache, so sessions are plain database sessions:
# a session cached per process would outlive its logout in the other gunicorn workers.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL:
    if not CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"CACHE_URL must be a redis:// URL, not {CACHE_URL!r}")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "prefloop",
        }
    }
    SESSION_ENGINE = "annotate.sessions.cached_db"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    SESSION_ENGINE = "annotate.sessions.db"

# Behind TLS (HTTPS=1, the production shape): secure cookies, a redirect to https and HSTS.
# Behind a proxy that ends TLS, PROXY_SSL_HEADER names the header it sets to "https" (for
# example X-Forwarded-Proto); set it only if the proxy always sets or strips that header.
HTTPS = env_bool("HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and env_bool("SECURE_SSL_REDIRECT", default=True)
# The health check is asked over plain HTTP from inside the deployment (compose, a monitor).
SECURE_REDIRECT_EXEMPT = [r"^health/"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
if not SECURE_HSTS_PRELOAD:
    # Preloading puts the domain in the browsers' built-in lists, hard to undo: an operator's
    # choice (SECURE_HSTS_PRELOAD=1), so its reminder is not one `check --deploy` repeats.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
_proxy_header = os.environ.get("PROXY_SSL_HEADER", "").strip()
if _proxy_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
# Behind that many proxies that append to X-Forwarded-For, the client's address is the one
# they saw (login lockouts count per address); 0: the connection's own address.
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))

# Logins that resist guessing (django-axes, counts in the database, so across processes):
# after LOGIN_FAILURE_LIMIT wrong passwords for one account, or from one address, within
# LOGIN_COOLOFF_MINUTES, every login for it is refused (429, with Retry-After) until that long
# has passed without a failure. The form, the admin and the API's token endpoint alike.
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "annotate.auth.lockout_response"
AXES_CLIENT_IP_CALLABLE = "annotate.auth.client_address"
AXES_VERBOSE = False

# API tokens expire API_TOKEN_DAYS after they were issued (the token endpoint then issues a new
# one); a password change or a deactivation revokes them at once (annotate/signals.py).
API_TOKEN_DAYS = int(os.environ.get("API_TOKEN_DAYS", "30"))

# Celery
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        # kombu's default is ./control, relative to wherever the process started.
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "alignment.tasks.generation_job_run": {"queue": "gpu"},
    "alignment.tasks.training_run_run": {"queue": "gpu"},
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A job's outcome lives in its database row; a lost worker is found by its stale heartbeat:
# a worker beats every JOB_HEARTBEAT_SECONDS while it runs a job, and a job silent for
# JOB_HEARTBEAT_STALE_SECONDS goes back to the queue (training resumes from its newest
# checkpoint), until it has had JOB_MAX_ATTEMPTS attempts; then it fails.
JOB_HEARTBEAT_SECONDS = float(os.environ.get("JOB_HEARTBEAT_SECONDS", "30"))
JOB_HEARTBEAT_STALE_SECONDS = int(os.environ.get("JOB_HEARTBEAT_STALE_SECONDS", "300"))
JOB_MAX_ATTEMPTS = int(os.environ.get("JOB_MAX_ATTEMPTS", "3"))
# The health check (core/health.py) counts a worker alive while it runs the canary task that
# beat sends to the default queue every CANARY_SECONDS.
CANARY_SECONDS = float(os.environ.get("CANARY_SECONDS", "60"))
CELERY_BEAT_SCHEDULE = {
    "jobs-recover": {"task": "core.tasks.jobs_recover", "schedule": 60.0},
    "worker-canary": {
        "task": "core.tasks.worker_canary",
        "schedule": CANARY_SECONDS,
        "args": ["default"],
        "options": {"queue": "default", "expires": CANARY_SECONDS},
    },
}
# Task events, so Flower (or `celery events`) shows the queues and each task's progress.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # axes: one INFO line per login otherwise; its lockouts are WARNINGs.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# QLoRA (bitsandbytes NF4) for training; off only for tiny test models.
TRAINING_QUANTIZE_4BIT = env_bool("PREFLOOP_QUANTIZE_4BIT", default=True)
# How GPU workers generate: "transformers" (the default, any machine) or "vllm" (a GPU
# worker with vLLM installed; LoRA adapters are served unmerged).
GENERATION_BACKEND = os.environ.get("PREFLOOP_GENERATION_BACKEND", "transformers")
if GENERATION_BACKEND not in ("transformers", "vllm"):
    raise ImproperlyConfigured(
        f"PREFLOOP_GENERATION_BACKEND must be transformers or vllm, not {GENERATION_BACKEND!r}"
    )
# vLLM on a GPU worker (alignment/engine/vllm_backend.py): the URL of a `vllm serve` server
# (its OpenAI-compatible API; adapters are loaded into it by name), or empty for an engine in
# the worker's own process, which takes this share of the GPU's memory.
VLLM_URL = os.environ.get("PREFLOOP_VLLM_URL", "")
VLLM_GPU_MEMORY = float(os.environ.get("PREFLOOP_VLLM_GPU_MEMORY", "0.45"))
if not 0 < VLLM_GPU_MEMORY <= 1:
    raise ImproperlyConfigured(
        f"PREFLOOP_VLLM_GPU_MEMORY must be a share of the GPU in (0, 1], not {VLLM_GPU_MEMORY}"
    )
# Steps between a training run's checkpoints (0: none, so a lost worker's run starts over).
TRAINING_CHECKPOINT_STEPS = int(os.environ.get("PREFLOOP_CHECKPOINT_STEPS", "50"))
