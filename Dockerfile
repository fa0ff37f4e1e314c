FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils zstd libzstd1 curl jq mtools e2fsprogs \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# Editable, so templates/ and static/ are found beside the code.
RUN pip install --no-cache-dir -c constraints.txt -e .
RUN DEBUG=true SECRET_KEY=collectstatic BAAS_VAR_DIR=/tmp/var STATIC_ROOT=/app/staticfiles \
    python manage.py collectstatic --noinput -v0

ENV STATIC_ROOT=/app/staticfiles BAAS_BIND=0.0.0.0:8000 BAAS_VAR_DIR=/var/lib/baas
EXPOSE 8000
CMD ["gunicorn", "baas_site.wsgi"]
