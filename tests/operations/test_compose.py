"""compose.yaml as a lab runs it: what it promises, and the stack itself where docker runs.

The structural checks run everywhere: they read the files an operator runs
(compose.yaml, Dockerfile, .dockerignore, the nginx template). The stack test
builds the image and starts it only where a docker daemon and compose answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.celery_worker import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = ["web", "nginx", "worker", "worker-long", "beat", "db", "redis"]


def test_only_nginx_and_the_nbd_exports_are_published_and_on_the_lab_address_only():
    published = {name: s["ports"] for name, s in SERVICES.items() if s.get("ports")}
    assert set(published) == {"nginx", "worker"}
    for ports in published.values():
        for port in ports:
            assert port.startswith("${BAAS_LAB_ADDRESS:-127.0.0.1}:"), port
    nbd = SERVICES["worker"]["environment"]["BAAS_NBD_PORTS"]
    assert published["worker"] == [f"${{BAAS_LAB_ADDRESS:-127.0.0.1}}:{nbd}:{nbd}"]


def test_every_long_running_service_has_a_health_check():
    for name in LONG_RUNNING:
        assert SERVICES[name].get("healthcheck", {}).get("test"), name
    assert "inspect ping" in SERVICES["worker"]["healthcheck"]["test"][1]
    assert "celerybeat-schedule" in " ".join(SERVICES["beat"]["healthcheck"]["test"])


def test_baas_runs_as_an_unprivileged_user_and_secrets_stay_out_of_the_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".env", "var", ".venv", ".git"):
        assert path in ignored, path


def test_the_workers_keep_their_state_and_the_management_os_is_built_in():
    for name in ("web", "worker", "worker-long", "beat"):
        volumes = SERVICES[name]["volumes"]
        assert "images:/disk" in volumes and any(v.startswith("var:/var/lib/baas") for v in volumes)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "python -m mgmt_os.build" in dockerfile
    assert "BAAS_MGMT_OS_DIR=/opt/baas/mgmt-os" in dockerfile


def test_nginx_serves_what_baas_hands_it():
    nginx = SERVICES["nginx"]
    template = (ROOT / "contrib/nginx/baas.conf.template").read_text()
    prefix = SERVICES["web"]["environment"]["BAAS_ACCEL_REDIRECT"]
    assert f"location {prefix} {{" in template
    assert "images:/disk:ro" in nginx["volumes"]
    assert nginx["environment"]["BAAS_IMAGE_ROOT"] == "/disk"
    address = nginx["networks"]["default"]["ipv4_address"]
    assert SERVICES["web"]["environment"]["BAAS_TRUSTED_PROXIES"] == address


def _compose() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if (
            shutil.which(command[0])
            and subprocess.run([*command, "version"], capture_output=True).returncode == 0
        ):
            return command
    return None


def test_the_stack_builds_and_answers(tmp_path):
    compose = _compose()
    if compose is None:
        pytest.skip("docker compose is not installed here")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no docker daemon answers here")
    env = tmp_path / ".env"
    env.write_text("SECRET_KEY=compose-test\nALLOWED_HOSTS=*\nBAAS_HTTP_PORT=18080\n")
    project = ["--project-directory", str(ROOT), "--env-file", str(env), "-p", "baastest"]
    run = [*compose, *project]
    subprocess.run([*run, "up", "-d", "--build", "--wait"], check=True, timeout=3600)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:18080/healthz", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(2)
    finally:
        subprocess.run([*run, "down", "-v"], timeout=600)
