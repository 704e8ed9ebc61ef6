"""Prefloop settings: one file, driven by the environment.

Embedded default (no services): SQLite under data/ and Celery on kombu's filesystem
transport under data/. DATABASE_URL switches to PostgreSQL, CELERY_BROKER_URL to Redis.
"""

from __future__ import annotations

import os
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
    "annotate",
    "alignment",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
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
AUTHENTICATION_BACKENDS = ["annotate.auth.Backend"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
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
        "rest_framework.authentication.TokenAuthentication",
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
}
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
        "JobStatusEnum": "core.models.JobStatus",
    },
}

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", default=False)
# Sessions are read on every request; the per-process cache spares most of those queries.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

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
CELERY_BEAT_SCHEDULE = {
    "jobs-recover": {"task": "core.tasks.jobs_recover", "schedule": 60.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
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
