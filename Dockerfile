# BAAS's image: the web server, the Celery workers and beat (compose.yaml runs them),
# with the management OS machines network-boot into built in.

# --- The management OS: a Debian kernel and an initramfs running the agent ----------
FROM python:3.11-slim-bookworm AS mgmt-os
RUN apt-get update
WORKDIR /src
COPY mgmt_os mgmt_os
COPY agent agent
COPY diskimage diskimage
RUN python -m mgmt_os.build --out /mgmt-os --cache /tmp/mgmt-os-cache

# --- BAAS ------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils zstd libzstd1 curl jq mtools e2fsprogs \
 && rm -rf /var/lib/apt/lists/*

# BAAS runs as its own unprivileged user; it owns only its data folders.
RUN groupadd --system --gid 10001 baas \
 && useradd --system --uid 10001 --gid baas --home-dir /var/lib/baas --no-create-home baas \
 && mkdir -p /disk /var/lib/baas \
 && chown baas:baas /disk /var/lib/baas

WORKDIR /app
COPY . .
# Editable, so templates/ and static/ are found beside the code.
RUN pip install --no-cache-dir -c constraints.txt -e .
RUN DEBUG=true SECRET_KEY=collectstatic BAAS_VAR_DIR=/tmp/var STATIC_ROOT=/app/staticfiles \
    python manage.py collectstatic --noinput -v0 && rm -rf /tmp/var
COPY --from=mgmt-os /mgmt-os /opt/baas/mgmt-os

ENV STATIC_ROOT=/app/staticfiles BAAS_BIND=0.0.0.0:8000 BAAS_VAR_DIR=/var/lib/baas \
    BAAS_DISK_ROOT=/disk BAAS_MGMT_OS_DIR=/opt/baas/mgmt-os
USER baas
EXPOSE 8000
CMD ["gunicorn", "baas_site.wsgi"]
