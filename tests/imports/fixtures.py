"""The local container registry, for every test that imports from one (a pytest plugin
loaded by tests/conftest.py): the import tests and the end-to-end tests of other areas
that boot an imported system image."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.imports.oci import Registry

# For the Celery worker of the session (a subprocess started after this is read):
# the test registries listen on 127.0.0.1, over plain HTTP.
os.environ.setdefault("BAAS_IMPORT_ALLOWED_HOSTS", "127.0.0.1")
os.environ.setdefault("BAAS_IMPORT_INSECURE_REGISTRIES", "127.0.0.1")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1, for the whole session."""
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()
