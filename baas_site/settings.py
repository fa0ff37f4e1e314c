"""BAAS settings, read from the environment (django-environ, 12-factor).

With no environment at all BAAS runs on an embedded default: SQLite, kombu's
filesystem broker, images under ``./var/disk``, DEBUG on and a generated
development secret. Setting ``DATABASE_URL``, ``CELERY_BROKER_URL``,
``BAAS_DISK_ROOT``, ``SECRET_KEY``, ``ALLOWED_HOSTS`` and ``DEBUG=false``
switches it to production.

Every setting is read through ``baas_site.environment``'s ``env``; the Celery
settings (broker, time limits, periodic jobs, queues) are
``baas_site.settings_celery``'s, imported here.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import environ

from baas_site import observability
from baas_site.environment import BASE_DIR, VAR_DIR, env, env_secret

DEBUG = env.bool("DEBUG", default=True)


def _development_secret() -> str:
    """A secret generated once per checkout, so sessions survive restarts."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_secret("SECRET_KEY") or (_development_secret() if DEBUG else None)
if not SECRET_KEY:
    raise environ.ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required with DEBUG off")

# Loopback is always allowed: health checks come from inside the deployment.
ALLOWED_HOSTS = [*env.list("ALLOWED_HOSTS", default=[]), "127.0.0.1", "localhost", "[::1]"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "baas_site.apps.BaasAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "catalogue",
    "flashing",
    "monitoring",
]

MIDDLEWARE = [
    "baas_site.metrics.RequestMetrics",  # counts every answer, errors included
    "baas_site.middleware.ApiErrorMiddleware",  # outermost: no HTML error answers under /api/
    "csp.middleware.CSPMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "baas_site.logcontext.LogContextMiddleware",  # the user, image, deployment of each log line
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "baas_site.errors.DomainErrorMiddleware",  # innermost: a page's domain error as 404/403
]

ROOT_URLCONF = "baas_site.urls"
WSGI_APPLICATION = "baas_site.wsgi.application"

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

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker share the file: wait for locks, don't fail.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
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

# --- Security (production) ----------------------------------------------------
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER=true.
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Health checks come from inside the deployment over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Images are uploaded as request bodies; Django must not buffer them.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Logins: one throttle for every sign-in path (django-axes) ------------------
# The API's POST /api/auth/token, the web form /accounts/login/, the admin's
# sign-in and a password change's current password all go through Django's
# authenticate(), which axes watches. Failed attempts are counted per username and,
# apart, per client address; either reaching BAAS_LOGIN_FAILURE_LIMIT locks that
# username or address out for BAAS_LOGIN_COOLOFF_MINUTES after its last failure.
# The counts are kept in the database (axes' database handler), which every
# gunicorn worker and every web server shares, on the embedded SQLite default as
# in production; a per-process cache would let each worker count alone.
INSTALLED_APPS = [*INSTALLED_APPS, "axes"]
# Last, so it turns a lock-out flagged by the sign-in forms into its page.
MIDDLEWARE = [*MIDDLEWARE, "axes.middleware.AxesMiddleware"]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses locked-out usernames and addresses
    "django.contrib.auth.backends.ModelBackend",
]
# Proxies (IP addresses or networks) whose X-Forwarded-For names the client. Empty:
# the address connecting to BAAS is the client and X-Forwarded-For is ignored,
# since anyone can send one.
BAAS_TRUSTED_PROXIES = env.list("BAAS_TRUSTED_PROXIES", default=[])
BAAS_LOGIN_FAILURE_LIMIT = env.int("BAAS_LOGIN_FAILURE_LIMIT", default=10)
BAAS_LOGIN_COOLOFF_MINUTES = env.float("BAAS_LOGIN_COOLOFF_MINUTES", default=15)
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = BAAS_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = "accounts.logins.cool_off"
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "accounts.logins.client_ip"
AXES_LOCKOUT_CALLABLE = "accounts.logins.lockout_response"
# A success does not clear the failures: an attacker with an account of their own
# would otherwise reset their address's count between guesses.
AXES_RESET_ON_SUCCESS = False
# Only failures are kept, each until its cool-off has passed; successful sign-ins
# are not logged by axes (the table would grow without end).
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

# --- REST API ------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First: it takes only agent tokens (by their prefix) and passes on the rest.
        "flashing.authentication.AgentTokenAuthentication",
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # First: a personal access token acts only within its scopes (accounts.scopes).
    "DEFAULT_PERMISSION_CLASSES": [
        "accounts.permissions.TokenScopes",
        "rest_framework.permissions.IsAuthenticated",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "baas_site.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "BAAS API",
    "DESCRIPTION": "Bare-metal as a Service: images, versions, setups, machines and deployments.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several fields are named "state"; each choice set gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "MachineStateEnum": "flashing.models.MachineState",
        "MachineServiceStateEnum": "flashing.models.SERVICE_STATES",
        "DeploymentStateEnum": "flashing.models.DeploymentState",
        "NetworkMountStateEnum": "flashing.models.NetworkMountState",
    },
}

# --- Content-Security-Policy and the API's documentation -------------------------
# Scripts and styles come only from BAAS's own static files: no inline script,
# no inline style, no eval (the templates pass data in data- attributes and
# json_script). Swagger UI's icons are data: images.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# /api/schema/ and /api/docs/ for anyone, or only for signed-in users and tokens
# (the default in production, DEBUG off).
BAAS_PUBLIC_API_DOCS = env.bool("BAAS_PUBLIC_API_DOCS", default=DEBUG)
# Every operation documents the shared error answer (baas_site.schema).
SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "drf_spectacular.hooks.postprocess_schema_enums",
    "baas_site.schema.add_error_answers",
]

# --- Celery (baas_site.settings_celery) -------------------------------------------
from baas_site.settings_celery import (  # noqa: E402, F401 - read here, as settings
    BAAS_JOB_LOST_SECONDS,
    BAAS_JOB_MAX_RESENDS,
    BAAS_JOB_MIN_RATE,
    BAAS_JOB_MIN_RAW_RATE,
    BAAS_JOB_TIME_BASE,
    BAAS_JOB_TIME_GRACE,
    BAAS_LONG_QUEUE,
    BAAS_LONG_TASKS,
    BAAS_PERIODIC_QUEUE,
    BROKER_DIR,
    CELERY_BEAT_SCHEDULE,
    CELERY_BEAT_SCHEDULE_FILENAME,
    CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP,
    CELERY_BROKER_TRANSPORT_OPTIONS,
    CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND,
    CELERY_TASK_ACKS_LATE,
    CELERY_TASK_DEFAULT_QUEUE,
    CELERY_TASK_IGNORE_RESULT,
    CELERY_TASK_REJECT_ON_WORKER_LOST,
    CELERY_TASK_ROUTES,
    CELERY_TASK_SOFT_TIME_LIMIT,
    CELERY_TASK_TIME_LIMIT,
    CELERY_WORKER_PREFETCH_MULTIPLIER,
)

CELERY_TIMEZONE = TIME_ZONE

# --- BAAS ------------------------------------------------------------------------
BAAS_DISK_ROOT = Path(env.str("BAAS_DISK_ROOT", default=str(VAR_DIR / "disk")))
BAAS_NEW_IMAGE_SIZE = env.int("BAAS_NEW_IMAGE_SIZE", default=6 * 1024**3)
BAAS_MAX_IMAGE_SIZE = env.int("BAAS_MAX_IMAGE_SIZE", default=64 * 1024**3)
# Seconds qemu-img may take to convert a qcow2 version into the raw disk agents write.
BAAS_RAW_RENDITION_TIMEOUT = env.int("BAAS_RAW_RENDITION_TIMEOUT", default=3600)
# An upload hashes the whole raw image (SHA-256, zeros included) while it streams
# up to this many raw bytes; past it, the answer comes once the data is stored and
# checked, and a background job records the SHA-256 (catalogue.services.digests).
# Uploads that send or ask for a digest are always hashed while they stream.
BAAS_UPLOAD_INLINE_SHA256_MAX = env.int("BAAS_UPLOAD_INLINE_SHA256_MAX", default=1024**3)
# Under gunicorn, an upload's body is read straight from the socket (about twice as
# fast as gunicorn's wsgi.input; catalogue.apis.uploads.GunicornSocketBody). False:
# the plain WSGI stream, as under any other server.
BAAS_UPLOAD_READ_SOCKET = env.bool("BAAS_UPLOAD_READ_SOCKET", default=True)
# A .part file no live writer holds (its upload or job died) is removed once this old.
BAAS_STALE_UPLOAD_SECONDS = env.int("BAAS_STALE_UPLOAD_SECONDS", default=60)
# Resumable uploads (draft-ietf-httpbis-resumable-upload; catalogue.services.uploads.resumable):
# an unfinished one's bytes are removed this many hours after the last arrived, and a user
# has at most BAAS_UPLOAD_RESUME_MAX unfinished ones at a time.
BAAS_UPLOAD_RESUME_HOURS = env.float("BAAS_UPLOAD_RESUME_HOURS", default=24.0)
BAAS_UPLOAD_RESUME_MAX = env.int("BAAS_UPLOAD_RESUME_MAX", default=8)
# Temporal images: kept this many days after they are made temporal, and at
# most BAAS_TEMPORAL_MAX_DAYS from now when their owners extend them. Set by
# the administrators of the deployment. Per-user storage quotas and per-image
# version retention are set in the admin (User.storage_quota, Image.keep_versions).
BAAS_TEMPORAL_DEFAULT_DAYS = env.int("BAAS_TEMPORAL_DEFAULT_DAYS", default=14)
BAAS_TEMPORAL_MAX_DAYS = env.int("BAAS_TEMPORAL_MAX_DAYS", default=90)
# Leases: length when a user asks for none, and the longest a lease may last
# from its start, extensions included. Set by the administrators of the
# deployment, like every other limit here.
BAAS_LEASE_DEFAULT_HOURS = env.int("BAAS_LEASE_DEFAULT_HOURS", default=8)
BAAS_LEASE_MAX_HOURS = env.int("BAAS_LEASE_MAX_HOURS", default=72)
# Flashing. The URL machines and agents reach BAAS at (empty: the boot script
# uses the URL the machine asked on, power drivers http://127.0.0.1:8000).
BAAS_PUBLIC_URL = env.str("BAAS_PUBLIC_URL", default="").rstrip("/")
# The management OS (python -m mgmt_os.build writes vmlinuz and initrd.img
# here); empty URLs mean "served by BAAS from BAAS_MGMT_OS_DIR".
BAAS_MGMT_OS_DIR = Path(env.str("BAAS_MGMT_OS_DIR", default=str(VAR_DIR / "mgmt-os")))
BAAS_MGMT_KERNEL_URL = env.str("BAAS_MGMT_KERNEL_URL", default="")
BAAS_MGMT_INITRD_URL = env.str("BAAS_MGMT_INITRD_URL", default="")
BAAS_MGMT_CMDLINE = env.str("BAAS_MGMT_CMDLINE", default="console=tty0 console=ttyS0,115200")
# Boot images (catalogue.services.bootfiles): where their kernel, initrd and command
# line are extracted to (a cache, per host), and the largest boot image read.
BAAS_BOOT_CACHE_DIR = Path(env.str("BAAS_BOOT_CACHE_DIR", default=str(VAR_DIR / "boot-cache")))
BAAS_BOOT_IMAGE_MAX_SIZE = env.int("BAAS_BOOT_IMAGE_MAX_SIZE", default=1024**3)
# Seconds a booting machine has to check in, and an agent may stay silent;
# then the deployment is retried up to BAAS_DEPLOY_RETRIES times, then failed.
BAAS_BOOT_TIMEOUT = env.int("BAAS_BOOT_TIMEOUT", default=600)
BAAS_PROGRESS_TIMEOUT = env.int("BAAS_PROGRESS_TIMEOUT", default=300)
BAAS_DEPLOY_RETRIES = env.int("BAAS_DEPLOY_RETRIES", default=2)
# The longest a power driver call (ipmitool, a Redfish request, a command) may take.
BAAS_POWER_TIMEOUT = env.int("BAAS_POWER_TIMEOUT", default=120)
# Boot fetches from MACs of no machine (flashing.services.boot, docs/security.md):
# each MAC's record is updated at most once per interval (seconds), at most
# NEW_PER_INTERVAL new MACs are recorded per interval, and at most MAX are kept.
BAAS_UNKNOWN_MAC_INTERVAL = env.int("BAAS_UNKNOWN_MAC_INTERVAL", default=60)
BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL = env.int("BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL", default=20)
BAAS_UNKNOWN_MACS_MAX = env.int("BAAS_UNKNOWN_MACS_MAX", default=1000)
# Network mounts of user data images (flashing.services.mounts): qemu-nbd exports
# on BAAS_NBD_BIND, one port of BAAS_NBD_PORTS ("first-last") each. NBD has no
# authentication: bind to the lab network's address only (the default exports
# nothing beyond this host). Machines connect to BAAS_NBD_HOST (empty: the bind
# address, or BAAS_PUBLIC_URL's host when bound to every address). Base copies
# and overlays live in BAAS_NBD_DIR on the host whose workers take the
# BAAS_NBD_QUEUE queue (empty: the default queue, for a single worker host).
BAAS_NBD_BIND = env.str("BAAS_NBD_BIND", default="127.0.0.1")
BAAS_NBD_HOST = env.str("BAAS_NBD_HOST", default="")
BAAS_NBD_PORTS = env.str("BAAS_NBD_PORTS", default="10809-10999")
BAAS_NBD_DIR = Path(env.str("BAAS_NBD_DIR", default=str(VAR_DIR / "nbd")))
BAAS_NBD_QUEUE = env.str("BAAS_NBD_QUEUE", default="")
# Require TLS with a pre-shared key of each mount's own (given to its machine
# only): without the key nobody connects or even learns the export's name.
# Clients must support NBD over TLS-PSK (qemu-nbd, qemu-img, libnbd's nbdcopy).
BAAS_NBD_TLS_PSK = env.bool("BAAS_NBD_TLS_PSK", default=False)

# Logs and error reports (baas_site.observability): LOG_FORMAT text or json (its first
# name, BAAS_LOG_FORMAT, is still read); SENTRY_DSN (empty: no reports),
# SENTRY_ENVIRONMENT, SENTRY_TRACES_SAMPLE_RATE.
LOG_FORMAT = env.str("LOG_FORMAT", default=env.str("BAAS_LOG_FORMAT", default="text"))
LOGGING = observability.logging_config(level=env.str("LOG_LEVEL", default="INFO"), fmt=LOG_FORMAT)
# In JSON, Celery keeps the logging configured here (one object per line on stderr,
# its --logfile unused) instead of installing its own text lines.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"
# In text, Celery's own lines, followed by what they are about (baas_site.logcontext).
CELERY_WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s%(context)s"
CELERY_WORKER_TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: "
    "%(message)s%(context)s"
)
observability.error_reporting(
    dsn=env.str("SENTRY_DSN", default=""),
    environment=env.str("SENTRY_ENVIRONMENT", default="production"),
    release=env.str("BAAS_RELEASE", default=""),
    traces=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
)
# Behind nginx (compose.yaml, contrib/nginx/baas.conf.template): the internal location
# under which nginx serves the image root. Downloads of stored files are then
# authorised by BAAS and sent by nginx (X-Accel-Redirect). Empty: BAAS sends them.
BAAS_ACCEL_REDIRECT = env.str("BAAS_ACCEL_REDIRECT", default="")
# Who may scrape GET /metrics (baas_site.metrics): client networks, comma-separated.
BAAS_METRICS_NETWORKS = env.list("BAAS_METRICS_NETWORKS", default=["127.0.0.1/32", "::1/128"])

# --- Imports from registries and URLs (imports/) --------------------------------------
from typing import cast  # noqa: E402 - this block's own

INSTALLED_APPS = [*INSTALLED_APPS, "imports"]
# An administrator's registry credentials (containers-auth.json, as `skopeo login`
# writes it); empty: anonymous pulls, unless a request brings credentials of its own.
BAAS_REGISTRY_AUTH_FILE = env.str("BAAS_REGISTRY_AUTH_FILE", default="")
# Hosts an import may reach although they resolve to a loopback, private or link-local
# address (an internal registry or file server); every other such host is refused.
BAAS_IMPORT_ALLOWED_HOSTS = env.list("BAAS_IMPORT_ALLOWED_HOSTS", default=[])
# Registries (host[:port]) reached over plain HTTP or without checking TLS certificates.
BAAS_IMPORT_INSECURE_REGISTRIES = env.list("BAAS_IMPORT_INSECURE_REGISTRIES", default=[])
# Where import jobs pull and unpack (a directory per job, removed when it ends).
BAAS_IMPORT_WORK_DIR = Path(env.str("BAAS_IMPORT_WORK_DIR", default=str(VAR_DIR / "imports")))
# The longest an import may take as a whole, and one network read (seconds).
BAAS_IMPORT_TIMEOUT = env.int("BAAS_IMPORT_TIMEOUT", default=3600)
BAAS_IMPORT_READ_TIMEOUT = env.int("BAAS_IMPORT_READ_TIMEOUT", default=60)
# Fails the imports whose worker died, and removes their folders.
CELERY_BEAT_SCHEDULE["imports-sweep"] = {"task": "imports.imports_sweep", "schedule": 600.0}
CELERY_TASK_ROUTES["imports.imports_sweep"] = {"queue": BAAS_PERIODIC_QUEUE}
# Imports pull and unpack whole images: the long queue.
CELERY_TASK_ROUTES = {**CELERY_TASK_ROUTES, "imports.import_run": {"queue": BAAS_LONG_QUEUE}}
cast(dict, SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]).update(
    ImportKindEnum="imports.models.Kind",
    ImportStateEnum="imports.models.State",
    ImportLayoutEnum="imports.models.Layout",
    KindEnum="flashing.models.DeploymentKind",  # its name before imports had a kind too
)
