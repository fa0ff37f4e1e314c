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
