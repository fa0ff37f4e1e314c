"""``baas login|whoami|logout`` and ``baas image …`` against a live server."""

from __future__ import annotations

import contextlib
import hashlib
import stat

import pytest

from accounts.models import AccessToken
from catalogue.models import Image
from tests.accounts.factories import UserFactory
from tests.cli.conftest import MiB, random_bytes, sparse_disk

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_keeps_a_named_token_0600_and_logout_revokes_it(baas, ada):
    answer = baas.login("ada")
    assert answer["username"] == "ada" and "token" not in answer
    config = baas.home / "config" / "baas" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "baas_" in config.read_text()
    token = AccessToken.objects.get(user=ada)
    assert token.name.startswith("baas-cli on ")
    assert baas.json("whoami")["username"] == "ada"
    table = baas("whoami").stdout
    assert "ada" in table and baas.url in table
    assert baas.json("logout")["revoked"] is True
    assert not AccessToken.objects.filter(user=ada).exists()
    assert "baas_" not in config.read_text()
    result = baas("whoami", code=2)
    assert "baas login" in result.stderr


def test_a_wrong_password_is_the_servers_refusal(baas, ada):
    result = baas("login", baas.url, "--user", "ada", "--password-stdin", stdin="nope\n", code=1)
    assert "Wrong username or password" in result.stderr


def test_profiles_and_the_environment_choose_the_server(baas, ada, live_server):
    baas(
        "--profile",
        "lab",
        "login",
        baas.url,
        "--user",
        "ada",
        "--password-stdin",
        stdin="correct horse battery staple\n",
    )
    assert baas.json("--profile", "lab", "whoami")["profile"] == "lab"
    baas("whoami", code=2)  # the default profile has no login
    token = baas.json("--profile", "lab", "token", "create", "script")["token"]
    baas.env.update(BAAS_URL=baas.url, BAAS_TOKEN=token)
    assert baas.json("whoami")["username"] == "ada"
    baas.env.update(BAAS_TOKEN="baas_wrong")
    assert "401" in baas("whoami", code=1).stderr


def test_a_table_read_by_a_program_keeps_each_row_on_one_line(baas_ada):
    created = baas_ada.json("image", "create", "a-rather-long-image-name-in-a-table")
    baas_ada.env["COLUMNS"] = ""  # no terminal and no width: a pipe, as scripts read it
    rows = baas_ada("image", "ls").stdout.splitlines()
    assert any(created["uuid"] in row and created["name"] in row for row in rows), rows


def test_image_create_ls_show_edit_versions_rm(baas_ada):
    created = baas_ada.json(
        "image", "create", "debian", "--compression", "zstd", "--target-disk", "/dev/sda"
    )
    uuid = created["uuid"]
    assert [i["uuid"] for i in baas_ada.json("image", "ls", "--mine")] == [uuid]
    assert "debian" in baas_ada("image", "ls").stdout
    assert baas_ada.json("image", "show", "debian")["uuid"] == uuid
    assert baas_ada.json("image", "show", uuid)["name"] == "debian"
    edited = baas_ada.json("image", "edit", "debian", "--description", "a base")
    assert edited["description"] == "a base"
    assert baas_ada("image", "edit", "debian", code=2).stderr  # nothing to change
    assert [v["number"] for v in baas_ada.json("image", "versions", "debian")] == [0]
    assert "number" in baas_ada("image", "versions", "debian").stdout
    assert "--yes" in baas_ada("image", "rm", "debian", code=2).stderr  # no terminal to ask
    baas_ada("image", "rm", "debian", "--yes")
    assert not Image.objects.filter(uuid=uuid).exists()
    assert "No image named" in baas_ada("image", "show", "debian", code=2).stderr


def test_an_ambiguous_name_lists_the_candidates(baas_ada, ada):
    other = UserFactory(username="bob")
    mine = Image.objects.create(name="base", owner=ada, type="single")
    theirs = Image.objects.create(name="base", owner=other, type="system")
    result = baas_ada("image", "show", "base", code=2)
    assert str(mine.uuid) in result.stderr and str(theirs.uuid) in result.stderr
    assert baas_ada.json("image", "show", "bob/base")["uuid"] == str(theirs.uuid)


def test_the_server_refusing_is_exit_1_with_its_message(baas_ada):
    other = UserFactory(username="bob")
    theirs = Image.objects.create(name="private", owner=other, type="single")
    result = baas_ada("image", "show", str(theirs.uuid), code=1)
    assert "404" in result.stderr


def _disk(tmp_path, size=64 * MiB):
    pieces = [
        (0, random_bytes(MiB, 1)),
        (20 * MiB, b"x" * 12345),
        (40 * MiB, random_bytes(3 * MiB)),
    ]
    return sparse_disk(tmp_path / "disk.img", size, pieces)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.worker
@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("send", ["none", "zstd"])
def test_push_then_pull_is_byte_identical_and_sparse(
    baas_ada, celery_worker, tmp_path, compression, send
):
    disk = _disk(tmp_path)
    baas_ada("image", "create", "disk", "--compression", compression)
    pushed = baas_ada.json("image", "push", "disk", str(disk), "--compress", send)
    assert pushed["version"] == 1 and pushed["size"] == disk.stat().st_size
    assert pushed["transfer"]["sent"] < 6 * MiB  # the data, not the 64 MiB
    image = Image.objects.get(name="disk")
    version = image.versions.get(number=1)
    assert version.size == disk.stat().st_size
    target = tmp_path / "out" / "copy.img"
    pulled = baas_ada.json("image", "pull", "disk@1", str(target))
    assert pulled["verified"] is True  # each range checked against the map
    assert _sha256(target) == _sha256(disk)
    assert target.stat().st_blocks * 512 < 8 * MiB  # written sparse
    assert pulled["received"] < 6 * MiB
    assert not list(target.parent.glob(".*baas-pull*"))


@pytest.mark.worker
def test_pull_raw_and_zst_fetch_the_stored_bytes(baas_ada, celery_worker, tmp_path):
    disk = _disk(tmp_path, 16 * MiB)
    baas_ada("image", "create", "disk", "--compression", "none")
    baas_ada("image", "push", "disk", str(disk), "--note", "first")
    assert Image.objects.get(name="disk").versions.get(number=1).note == "first"
    raw = tmp_path / "raw.img"
    baas_ada.json("image", "pull", "disk", str(raw), "--raw")
    assert _sha256(raw) == _sha256(disk)
    assert raw.stat().st_blocks * 512 < 8 * MiB
    result = baas_ada("image", "pull", "disk", str(tmp_path / "x.zst"), "--zst", code=2)
    assert "not stored zstd" in result.stderr


def test_the_served_upload_client_still_works_and_points_at_baas(live_server, ada, tmp_path):
    """``/client/baas-upload`` is kept for one release: it uploads, and says what replaces it."""
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import client_for

    image = Image.objects.create(name="old", owner=ada, type="single")
    with urllib.request.urlopen(f"{live_server.url}/client/baas-upload") as answer:  # noqa: S310
        assert answer.headers["Deprecation"]
        script = tmp_path / "baas-upload"
        script.write_bytes(answer.read())
    token = client_for(ada)._credentials["HTTP_AUTHORIZATION"].split()[1]
    disk = _disk(tmp_path, 8 * MiB)
    result = subprocess.run(
        [sys.executable, str(script), f"{live_server.url}/api/image/{image.uuid}", str(disk)],
        env={"BAAS_TOKEN": token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "baas image push" in result.stderr
    assert [v.size for v in image.versions.all()] == [disk.stat().st_size]


def test_login_asks_for_the_password_on_a_terminal_and_replaces_its_token(baas, ada):
    import os
    import pty
    import subprocess

    from tests.cli.conftest import BAAS

    baas.login("ada")
    first = AccessToken.objects.get(user=ada)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(BAAS), "login", baas.url, "--user", "ada"],
        stdin=slave, stdout=slave, stderr=slave, env=baas.environ(), close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    while b"Password of ada" not in seen:
        seen += os.read(master, 1024)
    os.write(master, b"correct horse battery staple\n")
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 1024):
            seen += chunk
    os.close(master)
    assert process.wait(timeout=30) == 0, seen
    assert b"correct horse" not in seen  # not echoed
    assert b"Logged in" in seen
    assert [t.pk for t in AccessToken.objects.filter(user=ada)] != [first.pk]
    assert AccessToken.objects.filter(user=ada).count() == 1  # the first one was revoked
