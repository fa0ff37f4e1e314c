"""gunicorn settings for BAAS, read from the environment.

Threads, not async workers: image uploads stream through WSGI for minutes, and
downloads go out with sendfile. A threaded worker keeps its heartbeat going
while a request runs, so a long upload is never killed as a "timeout".
"""

import os

bind = os.environ.get("BAAS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("BAAS_THREADS", "8"))
timeout = 120
graceful_timeout = 60
keepalive = 5
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# glibc hands freed memory back to the kernel as soon as 128 KiB-2 MiB sit free
# at the top of a heap, so the megabyte buffers an upload or download cycles
# through are faulted in again page by page: ~360 000 page faults (3.4 s of
# system time) for one 6 GiB upload. Keep big buffers in the heap instead; the
# peak stays what the buffers in flight need.
MALLOC_TRIM_THRESHOLD = 64 << 20
MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest; above it, allocations are mmap()ed
# Each thread that allocates gets an arena of its own (up to 8 per core), and each
# keeps up to the trim threshold of freed buffers: an upload handled by one of the
# worker's threads after another would leave tens of MiB behind in each. Two arenas
# bound that; allocations are megabyte buffers, rare enough not to contend.
MALLOC_ARENA_MAX = 2


def post_fork(server, worker):
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, MALLOC_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, MALLOC_ARENA_MAX)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def post_worker_init(worker):
    # What the worker loaded (Django, the project, their modules) lives as long as
    # it does: out of the garbage collector's sight, a full collection no longer
    # walks it all, stopping every request's threads while an upload streams.
    import gc

    gc.collect()
    gc.freeze()


# /metrics sums what every worker served (baas_site.metrics): prometheus_client's
# multiprocess mode, in a folder emptied when gunicorn starts. Set before the
# workers fork, so each one writes its own files there.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(
        os.environ.get("BAAS_VAR_DIR", os.path.join(os.path.dirname(__file__), "var")), "metrics"
    ),
)


def on_starting(server):
    import shutil

    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
