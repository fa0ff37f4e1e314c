"""POST /api/image/<uuid>/import, GET /api/import/<id>, cancel: who may, and what they get."""

from __future__ import annotations

import pytest

from catalogue.models import ImageType
from imports.models import ImportJob, State
from tests.catalogue.factories import ImageFactory
from tests.conftest import client_for


@pytest.fixture
def moderator_api(moderator):
    return client_for(moderator)


def post(client, image, body, **kw):
    return client.post(f"/api/image/{image.uuid}/import", body, format="json", **kw)


def test_a_moderator_of_the_system_image_starts_an_import(moderator_api, system_image, images):
    answer = post(moderator_api, system_image, {"oci": images["simple"], "platform": "linux/amd64"})
    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert body["state"] == "queued" and body["image"] == str(system_image.uuid)
    assert answer["Location"] == f"/api/import/{body['id']}" == body["url"]
    followed = moderator_api.get(answer["Location"]).json()
    assert followed["source"] == images["simple"] and followed["layout"] == "filesystem"


def test_a_user_who_may_only_read_the_system_image_may_not_import(user, system_image, images):
    answer = post(client_for(user), system_image, {"oci": images["simple"]})
    assert answer.status_code == 403
    assert "not import into it" in answer.json()["detail"]
    assert not ImportJob.objects.exists()


def test_someone_elses_private_image_is_not_found(user, other_user, images):
    image = ImageFactory(owner=other_user, type=ImageType.SINGLE)
    assert post(client_for(user), image, {"oci": images["simple"]}).status_code == 404


def test_someone_elses_import_is_not_found(moderator_api, user, system_image, images):
    job_id = post(moderator_api, system_image, {"oci": images["simple"]}).json()["id"]
    stranger = client_for(user)
    assert stranger.get(f"/api/import/{job_id}").status_code == 404
    assert stranger.post(f"/api/import/{job_id}/cancel").status_code == 404
    assert ImportJob.objects.get(pk=job_id).state == State.QUEUED


@pytest.mark.parametrize("how", ["post", "delete"])
def test_an_import_is_cancelled_once(how, moderator_api, system_image, images):
    job_id = post(moderator_api, system_image, {"oci": images["simple"]}).json()["id"]
    if how == "post":
        answer = moderator_api.post(f"/api/import/{job_id}/cancel")
    else:
        answer = moderator_api.delete(f"/api/import/{job_id}")
    assert answer.status_code == 202 and answer.json()["state"] == "cancelled"
    again = moderator_api.post(f"/api/import/{job_id}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "either 'oci'"),
        ({"oci": "docker://r.example/a:b", "url": "https://x.example/a"}, "not both"),
        ({"url": "https://x.example/disk.img"}, "needs 'sha256'"),
        ({"url": "ftp://x.example/disk.img", "sha256": "0" * 64}, "http:// or https://"),
        ({"url": "https://u:p@x.example/d", "sha256": "0" * 64}, "no credentials in the URL"),
        ({"oci": "oci-archive:/etc/shadow"}, "never a path on the server"),
        ({"oci": "dir:/var/lib"}, "must start with docker://"),
        ({"oci": "docker://debian"}, "names no registry"),
        ({"oci": "docker://r.example/a:b", "platform": "amd64"}, "is not a platform"),
        ({"oci": "docker://r.example/a:b", "label": "has space"}, "not a filesystem label"),
        ({"oci": "docker://r.example/a:b", "username": "u"}, "username and a password"),
    ],
)
def test_a_malformed_request_is_refused_with_a_reason(body, words, moderator_api, system_image):
    answer = post(moderator_api, system_image, body)
    assert answer.status_code == 400, answer.content
    assert words in str(answer.json())
    assert not ImportJob.objects.exists()


def test_an_image_page_shows_the_import_form_to_who_may_import(client, moderator, system_image):
    client.force_login(moderator)
    page = client.get(f"/images/{system_image.uuid}/import/")
    assert page.status_code == 200
    assert b'name="oci"' in page.content and b'name="url"' in page.content


def test_an_administrator_starts_an_import_from_the_admin(admin_web, system_image, images):
    page = admin_web.get("/admin/imports/importjob/add/")
    assert page.status_code == 200 and b'name="oci"' in page.content
    answer = admin_web.post(
        "/admin/imports/importjob/add/",
        {"image": system_image.uuid, "oci": images["simple"], "platform": "linux/amd64",
         "layout": "filesystem", "label": "root"},
    )  # fmt: skip
    assert answer.status_code == 302, answer.content[:2000]
    job = ImportJob.objects.get()
    assert job.image == system_image and job.source == images["simple"]


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_an_uploaded_archive_is_imported(transport, moderator_api, system_image, tmp_path):
    import subprocess

    from imports.services import jobs
    from tests.imports.helpers import ext4_cat, stored_path
    from tests.imports.oci import Layout, file

    layout = Layout(tmp_path / "oci")
    layout.tag("v1", layout.image([[file("etc/from-archive", f"{transport}\n")]]))
    archive = tmp_path / "image.tar"
    target = f"{transport}:{archive}" + (
        ":lab/archived:v1" if transport == "docker-archive" else ""
    )
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout.path}:v1", target],
        check=True, capture_output=True,
    )  # fmt: skip
    with archive.open("rb") as upload:
        answer = moderator_api.post(
            f"/api/image/{system_image.uuid}/import",
            {"oci": f"{transport}:", "archive": upload},
            format="multipart",
        )
    assert answer.status_code == 202, answer.content
    job = jobs.import_run(job_id=answer.json()["id"])
    assert job.state == State.DONE, job.reason + job.log
    assert ext4_cat(stored_path(job.version), "/etc/from-archive") == f"{transport}\n"


def test_an_archive_reference_without_an_upload_is_refused(moderator_api, system_image):
    answer = post(moderator_api, system_image, {"oci": "oci-archive:"})
    assert answer.status_code == 400 and "field 'archive'" in answer.json()["detail"]


def test_a_moderator_not_assigned_to_the_system_image_may_not_import(system_image, images):
    from accounts.models import Role
    from tests.accounts.factories import UserFactory

    stranger = UserFactory(role=Role.MODERATOR)
    answer = post(client_for(stranger), system_image, {"oci": images["simple"]})
    assert answer.status_code == 403


def test_an_administrator_may_import_into_any_image(administrator, system_image, images):
    answer = post(client_for(administrator), system_image, {"oci": images["simple"]})
    assert answer.status_code == 202


def test_the_import_page_queues_an_import(client, moderator, system_image, images):
    client.force_login(moderator)
    page = client.post(
        f"/images/{system_image.uuid}/import/",
        {"oci": images["simple"], "platform": "", "layout": "filesystem", "label": ""},
        follow=True,
    )
    assert page.status_code == 200
    job = ImportJob.objects.get()
    assert (job.source, job.platform, job.label) == (images["simple"], "linux/amd64", "root")
    assert b"queued" in page.content.lower() and images["simple"].encode() in page.content


def test_the_import_page_shows_a_refusal_in_the_form(client, moderator, system_image):
    client.force_login(moderator)
    page = client.post(
        f"/images/{system_image.uuid}/import/", {"oci": "dir:/etc", "layout": "disk"}
    )
    assert page.status_code == 200 and b"must start with docker://" in page.content
    assert not ImportJob.objects.exists()
