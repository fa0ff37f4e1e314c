"""Make the README's screenshots again, from a BAAS of its own holding example data.

    .venv/bin/python docs/images/make_screenshots.py [--keep]

Starts BAAS as ``./dev up`` does (SQLite, the filesystem broker, one Celery
worker with beat, gunicorn), but in a temporary directory and on a free
loopback port, so a running ``./dev up`` is left alone. Then, over the API as
a researcher would: an image with two uploaded versions (sent as only their
data, by ``contrib/upload/baas-upload``), a user data image, a setup of both,
a machine, a lease and a deployment. The script then plays the machine's
agent (docs/agent-protocol.md): it boots, checks in and reports progress, so
the deployment page shows a flash under way. Chromium (Debian's, through
Playwright) signs in and takes:

* ``image-versions.png``: the image page with its versions;
* ``deployment-progress.png``: the deployment's page while it writes.

Needs ``./dev install`` (Playwright) and Debian's ``chromium``.
"""

# A script run by hand against its own loopback server: it runs our own commands and
# opens http:// URLs it builds itself.
# ruff: noqa: S603, S310

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
PYTHON = ROOT / ".venv" / "bin"
CHROMIUM = os.environ.get("BAAS_CHROMIUM", "/usr/bin/chromium")
MiB, GiB = 1 << 20, 1 << 30
MAC = "52:54:00:12:34:56"
USER, PASSWORD = "ada", secrets.token_urlsafe(12)
VIEWPORT = {"width": 1200, "height": 860}


class Api:
    """A tiny JSON client: the examples in docs/api.md, in Python."""

    def __init__(self, base: str, token: str = "") -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: object = None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as error:
            raise SystemExit(f"{method} {path}: {error.code} {error.read().decode()}") from None
        return text if raw else (json.loads(text) if text else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server(var: Path):
    """BAAS as ``./dev up`` runs it, its state in ``var``; yields its URL."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL")
    }
    env.update(BAAS_VAR_DIR=str(var), BAAS_BIND=f"127.0.0.1:{port}", DEBUG="true")
    for sub in ("disk", "broker/queue", "broker/control"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    manage = [str(PYTHON / "python"), "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v0"], cwd=ROOT, env=env, check=True)
    make_users = (
        "from accounts.models import User; "
        f"User.objects.create_superuser('admin', 'admin@localhost', {PASSWORD!r}); "
        f"User.objects.create_user('{USER}', 'ada@example.org', {PASSWORD!r}, "
        "display_name='Ada Lovelace')"
    )
    subprocess.run([*manage, "shell", "-c", make_users], cwd=ROOT, env=env, check=True)
    log = open(var / "server.log", "w")  # noqa: SIM115 (open for the children's lifetime)
    worker = [str(PYTHON / "celery"), "-A", "baas_site", "worker", "--beat", "--pool", "solo"]
    queues = ["--queues", "celery,periodic,long", "--schedule", str(var / "beat")]
    children = [
        subprocess.Popen([*worker, *queues], cwd=ROOT, env=env, stdout=log, stderr=log),
        subprocess.Popen(
            [str(PYTHON / "gunicorn"), "baas_site.wsgi"], cwd=ROOT, env=env, stdout=log, stderr=log
        ),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/healthz"), "the server to answer")
        yield url
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (OSError, urllib.error.HTTPError):
        return False


def wait_for(check, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"Timed out waiting for {what}")
        time.sleep(0.5)
    return result


def token(base: str, username: str, scopes: list[str]) -> str:
    body = {"username": username, "password": PASSWORD, "name": "screenshots", "scopes": scopes}
    return Api(base).call("POST", "/api/auth/token", body)["token"]


def disk_file(path: Path, seed: int) -> None:
    """A sparse 6 GiB disk holding a few MiB: a partition table and some files."""
    with open(path, "wb") as disk:
        disk.truncate(6 * GiB)
        for offset in (0, 1 * MiB, 700 * MiB, 2 * GiB + 5 * MiB):
            disk.seek(offset)
            disk.write(os.urandom(512 * 1024 + seed * 4096))


def upload(base: str, ada: str, image: str, path: Path) -> None:
    client = ROOT / "contrib" / "upload" / "baas-upload"
    env = {**os.environ, "BAAS_TOKEN": ada}
    subprocess.run(
        [sys.executable, str(client), f"{base}/api/image/{image}", str(path)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def example_data(base: str, work: Path) -> tuple[str, int, Api]:
    """An image with versions, a setup, a machine and a deployment; the image's uuid and the
    deployment's id."""
    admin = Api(base, token(base, "admin", ["write", "admin"]))
    ada_token = token(base, USER, ["read", "write"])
    ada = Api(base, ada_token)
    image = ada.call(
        "POST",
        f"/api/user/{USER}/image",
        {
            "name": "debian-12",
            "type": "single",
            "compression": "zstd",
            "target_disk": "/dev/sda",
            "description": "Debian 12 with a patched 6.12 kernel",
        },
    )["uuid"]
    for seed in (1, 2):
        disk_file(work / "disk.img", seed)
        upload(base, ada_token, image, work / "disk.img")
    results = ada.call(
        "POST",
        f"/api/user/{USER}/image",
        {
            "name": "results",
            "type": "user_data",
            "target_disk": "/dev/sdb",
        },
    )["uuid"]
    wait_for(lambda: _processed(ada, image) and _processed(ada, results), "versions' digests")
    setup = ada.call("POST", f"/api/user/{USER}/image_setup", {"name": "exp1"})["uuid"]
    for item in ({"image": image, "version": 2}, {"image": results, "version": 0}):
        ada.call("POST", f"/api/user/{USER}/image_setup/{setup}/images", {**item, "sync": False})
    admin.call(
        "POST",
        "/api/machine",
        {
            "name": "node1",
            "mac_addresses": [MAC],
            "power_driver": "manual",
            "disks": [
                {"path": "/dev/sda", "size": 500107862016},
                {"path": "/dev/sdb", "size": 500107862016},
            ],
        },
    )
    ada.call("POST", f"/api/machine/{MAC}/lease", {"hours": 4})
    deployment = ada.call("POST", f"/api/machine/{MAC}/boot", {"setup": setup})["id"]
    return image, deployment, ada


def _processed(api: Api, image: str) -> bool:
    versions = api.call("GET", f"/api/image/{image}/versions")
    return all(version.get("sha256") for version in versions)


def play_the_agent(base: str, deployment: int, ada: Api) -> None:
    """Boot, check in and report progress as the management OS would: most of the system
    image written, the user data image not begun."""
    # The attempt is armed once the power driver was asked (its "power" event); a boot
    # script fetched before that boots the local disk (docs/agent-protocol.md §1).
    wait_for(
        lambda: any(
            event["action"] == "power"
            for event in ada.call("GET", f"/api/deployment/{deployment}")["events"]
        ),
        "the deployment to power the machine on",
    )
    script = wait_for(
        lambda: (
            (text := Api(base).call("GET", f"/api/boot/{MAC}.ipxe", raw=True))
            and "baas.token=" in text
            and text
        ),
        "the boot script to hand out the attempt's token",
    )
    boot_token = re.search(r"baas\.token=(\S+)", script)[1]
    checkin = Api(base, boot_token).call(
        "POST", "/api/agent/checkin", {"mac": MAC, "agent_version": "1.0"}
    )
    agent = Api(base, checkin["token"])
    instructions = agent.call("GET", "/api/agent/instructions")
    assert instructions["deployment"] == deployment
    first = instructions["write"][0]
    agent.call(
        "POST",
        "/api/log",
        {
            "lines": [
                "baas-agent: /dev/sda: 6.0 GiB, /dev/sdb: 6.0 GiB",
                "baas-agent: writing debian-12 v2 to /dev/sda (only its data)",
            ]
        },
    )
    for done in (first["size"] // 4, first["size"] * 5 // 8):
        agent.call(
            "POST",
            "/api/agent/progress",
            {
                "image": first["image"],
                "phase": "writing",
                "bytes_done": done,
                "bytes_total": first["size"],
            },
        )


def screenshots(base: str, image: str, deployment: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(base_url=base, viewport=VIEWPORT)
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/")
        for path, name in (
            (f"/images/{image}/", "image-versions.png"),
            (f"/deployments/{deployment}/", "deployment-progress.png"),
        ):
            page.goto(path)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(OUT / name))
            print(f"{OUT / name}: {(OUT / name).stat().st_size // 1024} KiB")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary BAAS's files")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="baas-screenshots-"))
    try:
        with server(work / "var") as base:
            image, deployment, ada = example_data(base, work)
            play_the_agent(base, deployment, ada)
            screenshots(base, image, deployment)
    finally:
        if args.keep:
            print(f"Kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
