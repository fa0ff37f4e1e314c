"""qcow2 versions get a raw rendition: the disk they describe, which agents write.

Real qcow2 files made by qemu-img from raw disks of known bytes; real
qemu-img conversions, in the test process (the services) or in a real Celery
worker (``@pytest.mark.worker``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from catalogue.models import FileStandard, Version
from catalogue.storage import get_storage
from diskimage import BLOCK
from flashing.models import Deployment, DeploymentState, MachineState
from tests.catalogue.factories import ImageFactory, ImageSetupFactory
from tests.flashing.agentcalls import armed
from tests.flashing.factories import LeaseFactory, MachineDiskFactory, MachineFactory

MiB = 1 << 20
GiB = 1 << 30


# --- Helpers ---------------------------------------------------------------------------


def raw_disk() -> bytes:
    """An 8 MiB disk: 1 MiB of data at 1 MiB, one block at 5 MiB, zeros elsewhere."""
    disk = bytearray(8 * MiB)
    disk[MiB : 2 * MiB] = os.urandom(MiB)
    disk[5 * MiB : 5 * MiB + BLOCK] = b"the end of the data".ljust(BLOCK, b"!")
    return bytes(disk)


def as_qcow2(tmp_path: Path, raw: bytes) -> bytes:
    """The qcow2 file qemu-img makes of ``raw`` (it is not ``raw``: a container of it)."""
    source = tmp_path / f"{uuid.uuid4().hex}.img"
    target = source.with_suffix(".qcow2")
    source.write_bytes(raw)
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(source), str(target)],
        check=True,
    )
    return target.read_bytes()


def empty_qcow2(tmp_path: Path, size: str) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes()


def upload(client: APIClient, image, content: bytes) -> dict:
    response = client.post(
        f"/api/image/{image.uuid}",
        {"file": SimpleUploadedFile("disk.qcow2", content)},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    return response.json()


def make_rendition(image, number: int = 1) -> Version:
    """Run the conversion job's service for a version, here, as the worker would."""
    from catalogue.services.renditions import version_raw_make

    return version_raw_make(version_id=Version.objects.get(image=image, number=number).pk)


def raw_of(client: APIClient, image, number: int = 1, route: str = ""):
    return client.get(f"/api/image/{image.uuid}/{number}{route}?format=raw")


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def version_json(client: APIClient, image, number: int = 1) -> dict:
    versions = client.get(f"/api/image/{image.uuid}/versions").json()["results"]
    return next(v for v in versions if v["number"] == number)


def expected_ranges(raw: bytes) -> list[list]:
    spans = [(MiB, 2 * MiB), (5 * MiB, 5 * MiB + BLOCK)]
    return [[a, b, hashlib.sha256(raw[a:b]).hexdigest()] for a, b in spans]


def wait_for(predicate, timeout: float = 60.0, what: str = "the worker") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def qcow2_image(user):
    return ImageFactory(owner=user, file_standard=FileStandard.QCOW2)


@pytest.fixture
def machine(user):
    """A machine leased by ``user``, with a 512 MiB disk."""
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=user)
    MachineDiskFactory(machine=machine, path="/dev/sda", size=512 * MiB)
    return machine


def enqueue(client: APIClient, machine, image, number: int = 1):
    setup = ImageSetupFactory(owner=image.owner)
    client.post(
        f"/api/user/{image.owner.username}/image_setup/{setup.uuid}/images",
        {"image": str(image.uuid), "version": number},
        format="json",
    )
    return client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )


def agent_of(machine) -> APIClient:
    """The agent of the machine's running deployment, once BAAS powered it on (armed)."""
    armed(machine)
    script = APIClient().get(f"/api/boot/{machine.mac}.ipxe").content.decode()
    secret = re.search(r"baas\.token=(\S+)", script).group(1)
    boot = APIClient()
    boot.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = boot.post("/api/agent/checkin", {"mac": machine.mac}, format="json")
    assert response.status_code == 200, response.content
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return agent


# --- The rendition and how it is served -----------------------------------------------


@pytest.mark.django_db
def test_a_qcow2_version_gets_a_sparse_raw_disk_with_the_bytes_and_map_it_describes(
    user_client, qcow2_image, tmp_path
):
    raw = raw_disk()
    qcow2 = as_qcow2(tmp_path, raw)
    upload(user_client, qcow2_image, qcow2)
    assert version_json(user_client, qcow2_image)["raw"]["state"] == "pending"

    make_rendition(qcow2_image)

    shown = version_json(user_client, qcow2_image)
    sha256 = hashlib.sha256(raw).hexdigest()
    assert shown["raw"] == {"state": "ready", "size": len(raw), "sha256": sha256, "reason": None}
    assert shown["sha256"] == hashlib.sha256(qcow2).hexdigest()  # the file's, as before
    path = get_storage().image_dir(qcow2_image.uuid) / "1.raw"
    assert path.read_bytes() == raw
    assert path.stat().st_blocks * 512 < 2 * MiB  # 1 MiB and a block of data in 8 MiB
    datamap = raw_of(user_client, qcow2_image, route="/map").json()
    assert (datamap["size"], datamap["sha256"]) == (len(raw), sha256)
    assert datamap["ranges"] == expected_ranges(raw)
    assert not list(path.parent.glob(".*.part"))


@pytest.mark.django_db
def test_a_new_qcow2_images_empty_version_gets_an_empty_raw_disk_of_its_virtual_size(
    user_client, user, settings
):
    from catalogue.services.images import zeros_sha256

    settings.BAAS_NEW_IMAGE_SIZE = 64 * MiB
    response = user_client.post(
        f"/api/user/{user.username}/image", {"name": "vm", "file_standard": "qcow2"}, format="json"
    )
    assert response.status_code == 201, response.content
    image = Version.objects.get(number=0).image
    assert response.json()["versions"][0]["raw"]["state"] == "pending"

    make_rendition(image, 0)

    raw = version_json(user_client, image, 0)["raw"]
    assert raw == {
        "state": "ready",
        "size": 64 * MiB,
        "sha256": zeros_sha256(64 * MiB),
        "reason": None,
    }
    # Holes all along (qemu-img allocates the first block, to learn the alignment).
    assert (get_storage().image_dir(image.uuid) / "0.raw").stat().st_blocks * 512 <= BLOCK


@pytest.mark.django_db
def test_format_raw_serves_the_raw_disk_of_a_qcow2_version_not_its_file(
    user_client, qcow2_image, tmp_path
):
    raw = raw_disk()
    upload(user_client, qcow2_image, as_qcow2(tmp_path, raw))
    make_rendition(qcow2_image)

    response = raw_of(user_client, qcow2_image)
    assert response.status_code == 200
    assert body(response) == raw
    assert response["BAAS-Raw-Size"] == str(len(raw))
    assert response["ETag"] == f'"{hashlib.sha256(raw).hexdigest()}"'
    data = raw_of(user_client, qcow2_image, route="/data")
    assert body(data) == raw[MiB : 2 * MiB] + raw[5 * MiB : 5 * MiB + BLOCK]
    as_stored = user_client.get(f"/api/image/{qcow2_image.uuid}/1")
    assert body(as_stored)[:4] == b"QFI\xfb"  # without ?format=raw: the qcow2 file


@pytest.mark.django_db
def test_the_image_page_shows_each_versions_raw_disk_and_offers_its_download(
    user_client, signed_in, qcow2_image, tmp_path, settings
):
    raw = raw_disk()
    upload(user_client, qcow2_image, as_qcow2(tmp_path, raw))
    upload(user_client, qcow2_image, empty_qcow2(tmp_path, "64M"))
    page = signed_in.get(f"/images/{qcow2_image.uuid}/").content.decode()
    assert page.count("Raw disk: being made from the qcow2 file") == 2
    make_rendition(qcow2_image, 1)
    settings.BAAS_MAX_IMAGE_SIZE = 32 * MiB
    make_rendition(qcow2_image, 2)

    page = signed_in.get(f"/images/{qcow2_image.uuid}/").content.decode()

    assert hashlib.sha256(raw).hexdigest() in page
    assert f'/api/image/{qcow2_image.uuid}/1?format=raw"' in page
    assert "No raw disk: Its virtual size of 67108864 bytes is more than" in page
    assert f'/api/image/{qcow2_image.uuid}/2?format=raw"' not in page


@pytest.mark.django_db
def test_format_raw_answers_409_with_retry_after_while_the_raw_disk_is_being_made(
    user_client, qcow2_image, tmp_path
):
    upload(user_client, qcow2_image, as_qcow2(tmp_path, raw_disk()))
    for route in ("", "/map", "/data"):
        response = raw_of(user_client, qcow2_image, route=route)
        assert response.status_code == 409, route
        assert response["Retry-After"] == "30"
        assert "still being made" in response.json()["detail"]


@pytest.mark.django_db
def test_a_qcow2_that_cannot_be_converted_says_why_and_is_not_served_or_flashed(
    user_client, qcow2_image, machine, tmp_path, settings
):
    upload(user_client, qcow2_image, empty_qcow2(tmp_path, "64M"))
    settings.BAAS_MAX_IMAGE_SIZE = 32 * MiB  # lowered since: the rendition is refused

    make_rendition(qcow2_image)

    raw = version_json(user_client, qcow2_image)["raw"]
    assert raw["state"] == "failed" and raw["sha256"] is None
    assert "67108864 bytes is more than this server's 33554432-byte limit" in raw["reason"]
    response = raw_of(user_client, qcow2_image)
    assert response.status_code == 409 and "Retry-After" not in response
    assert raw["reason"] in response.json()["detail"]
    refused = enqueue(user_client, machine, qcow2_image)
    assert refused.status_code == 409
    assert raw["reason"] in refused.json()["detail"]
    assert not Deployment.objects.exists()
    assert not (get_storage().image_dir(qcow2_image.uuid) / "1.raw").exists()


@pytest.mark.django_db
def test_a_gzip_qcow2_stored_as_sent_that_qemu_img_refuses_gets_the_reason_not_a_raw_disk(
    user_client, user, tmp_path
):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2, compression="gzip")
    data = bytearray(empty_qcow2(tmp_path, "64M"))
    data[48:56] = (2**40).to_bytes(8, "big")  # the L1 table far beyond the file
    response = user_client.generic(
        "POST",
        f"/api/image/{image.uuid}",
        gzip.compress(bytes(data)),
        content_type="application/gzip",
    )
    assert response.status_code == 201, response.content  # stored as sent: not checked yet

    make_rendition(image)

    raw = version_json(user_client, image)["raw"]
    assert raw["state"] == "failed"
    assert raw["reason"].startswith("qemu-img check finds its qcow2 file broken: ")
    assert "Traceback" not in raw["reason"]


@pytest.mark.django_db
def test_a_conversion_that_takes_too_long_is_stopped_and_says_so(
    user_client, qcow2_image, tmp_path, settings
):
    upload(user_client, qcow2_image, as_qcow2(tmp_path, raw_disk()))
    settings.BAAS_RAW_RENDITION_TIMEOUT = 0

    make_rendition(qcow2_image)

    raw = version_json(user_client, qcow2_image)["raw"]
    assert (raw["state"], raw["reason"]) == (
        "failed",
        "qemu-img took more than 0 seconds to check it.",
    )
    directory = get_storage().image_dir(qcow2_image.uuid)
    assert sorted(p.name for p in directory.iterdir()) == ["1.img", "1.map.json"]


@pytest.mark.django_db
def test_a_qcow2_describing_a_disk_past_the_size_limit_is_refused_at_upload(
    user_client, qcow2_image, tmp_path, settings
):
    settings.BAAS_MAX_IMAGE_SIZE = 32 * MiB
    response = user_client.post(
        f"/api/image/{qcow2_image.uuid}",
        {"file": SimpleUploadedFile("disk.qcow2", empty_qcow2(tmp_path, "1G"))},
        format="multipart",
    )
    assert response.status_code == 413
    assert "1073741824 bytes" in response.json()["detail"]
    assert not Version.objects.filter(image=qcow2_image, number=1).exists()


@pytest.mark.django_db
def test_a_compressed_qcow2_version_is_converted_from_its_decoded_file(user_client, user, tmp_path):
    from catalogue.services.compression import version_compress

    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2, compression="zstd")
    raw = raw_disk()
    upload(user_client, image, as_qcow2(tmp_path, raw))
    version = Version.objects.get(image=image, number=1)
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.stored_compression == "zstd"

    make_rendition(image)

    assert body(raw_of(user_client, image)) == raw


@pytest.mark.django_db
def test_pruning_a_version_removes_its_raw_disk_too(
    user_client, qcow2_image, tmp_path, django_capture_on_commit_callbacks
):
    from catalogue.services.lifecycle import versions_prune

    for _ in range(2):
        upload(user_client, qcow2_image, as_qcow2(tmp_path, raw_disk()))
    make_rendition(qcow2_image, 1)
    make_rendition(qcow2_image, 2)
    directory = get_storage().image_dir(qcow2_image.uuid)
    assert (directory / "1.raw").exists() and (directory / "1.raw.map.json").exists()
    qcow2_image.keep_versions = 1
    qcow2_image.save()

    with django_capture_on_commit_callbacks(execute=True):
        assert versions_prune(image_uuid=qcow2_image.uuid) == [1]

    assert not (directory / "1.raw").exists() and not (directory / "1.raw.map.json").exists()
    assert (directory / "2.raw").exists()


# --- Flashing it -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_qcow2_image_fills_its_virtual_size_when_checking_that_it_fits(
    user_client, qcow2_image, machine, tmp_path
):
    qcow2 = empty_qcow2(tmp_path, "1G")  # about 200 KiB of file
    assert len(qcow2) < 512 * 1024
    upload(user_client, qcow2_image, qcow2)

    response = enqueue(user_client, machine, qcow2_image)

    assert response.status_code == 400
    assert "does not fit" in response.json()["detail"]


@pytest.mark.django_db
def test_the_agent_writes_the_raw_disk_of_a_qcow2_version_made_before_it_starts(
    user_client, qcow2_image, machine, tmp_path
):
    from flashing.services.pipeline import machine_advance

    raw = raw_disk()
    upload(user_client, qcow2_image, as_qcow2(tmp_path, raw))
    response = enqueue(user_client, machine, qcow2_image)
    assert response.status_code == 201, response.content

    machine_advance(machine_id=machine.pk)  # its conversion job is late: made now

    agent = agent_of(machine)
    [entry] = agent.get("/api/agent/instructions").json()["write"]
    inline = entry.pop("map")  # the map of the raw disk it writes, not of the container
    sha256 = hashlib.sha256(raw).hexdigest()
    base = f"/api/image/{qcow2_image.uuid}/1"
    assert entry | {"stored_size": None} == {
        "image": str(qcow2_image.uuid),
        "version": 1,
        "disk": "/dev/sda",
        "url": f"{base}?format=raw",
        "size": len(raw),
        "stored_size": None,
        "sha256": sha256,
        "compression": "none",
        "map_url": f"{base}/map?format=raw",
        "data_url": f"{base}/data?format=raw",
    }
    assert body(agent.get(entry["url"])) == raw
    assert agent.get(entry["map_url"]).json()["ranges"] == expected_ranges(raw)
    assert inline == agent.get(entry["map_url"]).json() and inline["sha256"] == sha256
    image = str(qcow2_image.uuid)
    for phase in ("writing", "verifying"):
        progress = {"image": image, "phase": phase, "bytes_done": len(raw), "bytes_total": len(raw)}
        agent.post("/api/agent/progress", progress, format="json")
    written = [{"image": image, "version": 1, "disk": "/dev/sda", "sha256": sha256}]
    result = agent.post("/api/agent/result", {"state": "done", "written": written}, format="json")
    assert result.json() == {"state": "done"}
    assert Deployment.objects.get().state == DeploymentState.DONE


# --- Through a real worker ---------------------------------------------------------------


@pytest.mark.worker
def test_a_worker_makes_the_raw_disk_after_a_qcow2_upload(
    celery_worker, user, user_client, tmp_path
):
    image = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    raw = raw_disk()
    upload(user_client, image, as_qcow2(tmp_path, raw))

    wait_for(
        lambda: version_json(user_client, image)["raw"]["state"] != "pending",
        what="the raw rendition job",
    )

    assert version_json(user_client, image)["raw"]["state"] == "ready", celery_worker.log()
    assert body(raw_of(user_client, image)) == raw
    assert raw_of(user_client, image, route="/map").json()["ranges"] == expected_ranges(raw)
    path = get_storage().image_dir(image.uuid) / "1.raw"
    assert path.stat().st_blocks * 512 < 2 * MiB


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, administrator):
    from tests.flashing.e2e import make_rig

    yield from make_rig(live_server, tmp_path, administrator)


@pytest.mark.worker
def test_the_real_agent_flashes_the_disk_a_qcow2_image_describes(rig, tmp_path):
    image = ImageFactory(
        owner=rig.admin, file_standard=FileStandard.QCOW2, target_disk="/dev/sda", name="vm"
    )
    raw = raw_disk()
    upload(rig.client, image, as_qcow2(tmp_path, raw))
    version = Version.objects.get(image=image, number=1)

    deployment = rig.wait(rig.deploy(rig.setup(version)))

    assert deployment.state == "done", deployment.failure_reason
    disk = rig.disk("/dev/sda")
    assert disk.stat().st_size == len(raw)
    assert disk.read_bytes() == raw
    assert "writing its" in rig.agent_logs()  # only the raw disk's data travelled
