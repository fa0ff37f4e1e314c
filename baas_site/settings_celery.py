"""The Celery settings: the broker, the time limits, the periodic jobs (beat), the three
queues and their routes, and the time limits and resends of the jobs that read whole
versions. ``baas_site.settings`` imports them; read from the environment as the rest
(``baas_site.environment``), with the same variables and defaults.
"""

from __future__ import annotations

from typing import Any

from baas_site.environment import VAR_DIR, env

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=3 * 3600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3 * 3600 + 300)
CELERY_TASK_IGNORE_RESULT = CELERY_RESULT_BACKEND is None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # A task still unacknowledged after this long is delivered again: keep it
    # above the longest hard time limit, or long jobs run twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Periodic jobs, defined here in code; each app adds its own entries.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Removes the bytes of resumable uploads left unfinished for BAAS_UPLOAD_RESUME_HOURS.
    "catalogue-resumable-uploads-expire": {
        "task": "catalogue.resumable_uploads_expire",
        "schedule": float(env.int("BAAS_UPLOAD_RESUME_SWEEP_INTERVAL", default=600)),
    },
    "tokens-purge-expired": {"task": "accounts.tokens_purge_expired", "schedule": 3600.0},
    # Removes the .part files of uploads and jobs a crash cut short (no live writer holds them).
    "catalogue-purge-stale-uploads": {
        "task": "catalogue.purge_stale_uploads",
        "schedule": float(env.int("BAAS_STALE_UPLOAD_SWEEP_INTERVAL", default=120)),
    },
    # Sends again the processing of versions whose job died with its worker or was lost
    # (a step owed: digest, map, compression, a qcow2 version's raw disk); gives up on a
    # version after a few tries (catalogue.services.pipeline).
    "catalogue-versions-processing-sweep": {
        "task": "catalogue.versions_processing_sweep",
        "schedule": float(env.int("BAAS_JOB_SWEEP_INTERVAL", default=60)),
    },
    # Ends leases past their end: frees the machine and queues its reset.
    "leases-expire": {"task": "flashing.leases_expire", "schedule": 60.0},
    # Fails or retries deployments whose agent never checked in or went silent,
    # and starts queued deployments whose start was lost (a crash, a broker outage).
    "deployments-watchdog": {
        "task": "flashing.deployments_watchdog",
        "schedule": float(env.int("BAAS_WATCHDOG_INTERVAL", default=30)),
    },
    # Deletes expired temporal images (not while a deployment needs them).
    "catalogue-temporal-expire": {
        "task": "catalogue.temporal_expire",
        "schedule": float(env.int("BAAS_TEMPORAL_EXPIRE_INTERVAL", default=300)),
    },
    # Maps the versions that have no data map yet (stored before maps existed).
    "catalogue-versions-map-missing": {
        "task": "catalogue.versions_map_missing",
        "schedule": 3600.0,
    },
    # Ends network mounts whose lease or deployment is over, restarts exports that
    # died, and retries mounts whose start or end did not finish.
    "network-mounts-reconcile": {
        "task": "flashing.network_mounts_reconcile",
        "schedule": float(env.int("BAAS_NBD_RECONCILE_INTERVAL", default=60)),
    },
    # Deletes versions beyond each image's keep_versions (also run after each upload).
    "catalogue-versions-prune": {
        "task": "catalogue.versions_prune",
        "schedule": float(env.int("BAAS_VERSIONS_PRUNE_INTERVAL", default=3600)),
    },
}
# Three queues, each served by worker processes of its own (``./dev up``, compose.yaml):
# the default one (deployments' steps), BAAS_PERIODIC_QUEUE (beat's jobs: the watchdog,
# lease expiry, pruning, sweeps) and BAAS_LONG_QUEUE (jobs that read a whole image:
# digests, compression, maps, qcow2 conversions, network mounts' copies), so the first
# two never wait behind the third. A task beat sends is routed to the periodic queue by its name.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
BAAS_PERIODIC_QUEUE = env.str("BAAS_PERIODIC_QUEUE", default="periodic")
BAAS_LONG_QUEUE = env.str("BAAS_LONG_QUEUE", default="long")
BAAS_LONG_TASKS = (
    "catalogue.version_advance",
    "flashing.network_mount_start",
    "flashing.network_mount_finish",
)
CELERY_TASK_ROUTES: dict[str, dict[str, str]] = {
    **{entry["task"]: {"queue": BAAS_PERIODIC_QUEUE} for entry in CELERY_BEAT_SCHEDULE.values()},
    **{name: {"queue": BAAS_LONG_QUEUE} for name in BAAS_LONG_TASKS},
}
# A job that decodes or reads a whole version gets, per call, a soft time limit of
# BAAS_JOB_TIME_BASE seconds plus one second per BAAS_JOB_MIN_RATE bytes stored and per
# BAAS_JOB_MIN_RAW_RATE raw bytes (at most CELERY_TASK_SOFT_TIME_LIMIT); the hard limit
# follows BAAS_JOB_TIME_GRACE seconds later.
BAAS_JOB_TIME_BASE = env.int("BAAS_JOB_TIME_BASE", default=300)
BAAS_JOB_MIN_RATE = env.int("BAAS_JOB_MIN_RATE", default=10 * 1024**2)
BAAS_JOB_MIN_RAW_RATE = env.int("BAAS_JOB_MIN_RAW_RATE", default=100 * 1024**2)
BAAS_JOB_TIME_GRACE = env.int("BAAS_JOB_TIME_GRACE", default=120)
# The processing sweep sends a version's job again once its worker died (at once) or
# once it was queued this long without starting (a message lost with its worker), at
# most BAAS_JOB_MAX_RESENDS times; then the version is marked damaged, with why.
BAAS_JOB_LOST_SECONDS = env.int("BAAS_JOB_LOST_SECONDS", default=3600)
BAAS_JOB_MAX_RESENDS = env.int("BAAS_JOB_MAX_RESENDS", default=3)
