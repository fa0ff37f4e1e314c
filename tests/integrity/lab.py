"""The lifecycle model's hands: HTTP calls with their checks, the agent's longer moves,
and the promises about user data (synced disks, network mounts) and dead tokens.

``Lab`` is mixed into the state machine of ``test_lifecycle_model``; it expects the
machine's ``world`` (``world.World``), ``agents`` (``agents.Agents``) and
``changed_mounts`` attributes.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

from rest_framework.test import APIClient

from accounts.scopes import ALL as ALL_SCOPES
from catalogue.models import Image, ImageType, Version
from catalogue.storage import get_storage
from diskimage import BLOCK, gpt
from diskimage.changes import merged
from diskimage.datamap import DataMapper
from diskimage.sparse import MEDIA_TYPE
from diskimage.sparsedelta import Run, delta_stream, map_digest
from flashing.models import Deployment, DeploymentState, NetworkMount, NetworkMountState
from tests.integrity.agents import describe, snapshot
from tests.integrity.disks import check_records_after, check_synced_records, stored_bytes
from tests.integrity.invariants import partition_of, promise, seen, trace
from tests.integrity.world import Agent, GiB, after_commit, bearer, content

AGENT_CALLS_REFUSED = (401, 403, 404, 409, 410)


def upload_url(entry: dict[str, Any]) -> str:
    """Where the agent uploads a sync entry's disk: its ``upload_url``, naming the disk."""
    return f"{entry['upload_url']}?{urlencode({'disk': entry['disk']})}"


class Lab:
    world: Any
    agents: Any
    changed_mounts: dict[int, str]
    deltas = False  # changed user data always goes back as its changes (else one time in two)
    failures = 0  # the example's failing agents so far: every other one fails while writing
    failing_while_writing: bool | None = None  # how they fail, when a day says so

    # --- HTTP ------------------------------------------------------------------------

    def http(self, who: str | APIClient | None, method: str, url: str, body: Any = None, *, ok=()):
        """One request, its on-commit work done; never a 5xx, errors in JSON, status in ``ok``.

        A person whom an administrator deactivated gets 401 (or 403) whatever they ask.
        """
        client, expected = bearer(None), tuple(ok)
        if isinstance(who, str):
            person = self.world.people[who]
            person.user.refresh_from_db()
            client = person.client
            if not person.user.is_active:
                expected = (401, 403)
        elif who is not None:
            client = who
        with after_commit():
            response = getattr(client, method)(url, body, format="json")
        self.check_response(method, url, response, expected)
        return self.read(response)

    @staticmethod
    def read(response: Any) -> Any:
        """A streamed answer (image bytes) read to its end and closed, as a client does."""
        if getattr(response, "streaming", False):
            # Reading to the end closes it (the test client's wrapper), as a WSGI server does.
            response.body = b"".join(response.streaming_content)
        return response

    def post_bytes(self, client: APIClient, url: str, data: bytes, *, ok=()):
        with after_commit():
            response = client.post(url, data, content_type="application/octet-stream")
        self.check_response("post", url, response, tuple(ok))
        return self.read(response)

    @staticmethod
    def check_response(method: str, url: str, response: Any, ok: tuple[int, ...]) -> None:
        status = response.status_code
        head = getattr(response, "content", b"")[:500]
        trace(f"{method.upper()} {url} {status} {head[:120] if status >= 400 else b''}")
        promise("no-5xx", status < 500, f"{method.upper()} {url} answered {status}: {head!r}")
        if status >= 400:
            kind = response.get("Content-Type", "")
            promise(
                "no-5xx",
                kind.startswith("application/json"),
                f"{url}: {status} as {kind}: {head!r}",
            )
        assert not ok or status in ok, f"{method.upper()} {url} answered {status}: {head!r}"

    # --- The worker ----------------------------------------------------------------------

    def run_jobs(self, ran: list[tuple[str, dict[str, Any], Any]]) -> None:
        for name, kwargs, result in ran:
            trace(f"job {name} {result.state} {str(result.result)[:100]}")
            promise(
                "no-job-crash",
                result.state != "FAILURE",
                f"The job {name}({kwargs}) crashed:\n{result.traceback}",
            )
        for deployment_id, secret in self.world.power_tokens():
            machine = Deployment.objects.get(pk=deployment_id).machine.name
            self.agents.booted(
                machine=machine,
                deployment_id=deployment_id,
                secret=secret,
                source="its power command",
            )

    # --- The agent's longer moves -------------------------------------------------------

    def assert_refused(self, agent: Agent, response: Any, before: tuple, what: str) -> None:
        """A dead token gets 401 (410 once its deployment finished) and changes nothing."""
        expected = self.agents.expected_dead_status(agent)
        promise(
            "dead-token",
            response.status_code in expected,
            f"The {what} of {agent}, whose token is dead ({describe(agent.deployment_id)}), "
            f"answered {response.status_code} (expected {' or '.join(map(str, expected))}): "
            f"{response.content[:300]!r}",
        )
        promise(
            "dead-token",
            snapshot(agent.deployment_id) == before,
            f"A refused {what} changed #{agent.deployment_id}.",
        )

    def agent_sync(self, agent: Agent) -> None:
        """Bring back each sync disk: a disk the machine changed becomes the next version."""
        box = self.world.boxes[agent.machine]
        allowed = self.agents.may_get_bytes(agent)
        synced = []
        for entry in agent.instructions["sync"]:
            item = {"image": entry["image"], "disk": entry["disk"], "version": entry["version"]}
            # As the real agent, a disk's sync is reported (naming it) before anything is sent.
            self.report(agent, entry, "syncing", done=0, ok=(204, *AGENT_CALLS_REFUSED))
            if entry["disk"] in box.dirty:
                self.world.seed += 1
                data = content(self.world.seed)
                delta = entry.get("hashes_url") and (self.deltas or self.world.seed % 2)
                response = self.delta_sync(agent, entry, data) if delta else None
                if response is None:  # no delta (or refused): the whole disk, as the agent does
                    response = self.post_bytes(
                        bearer(agent.secret),
                        upload_url(entry),
                        data,
                        ok=(201, *AGENT_CALLS_REFUSED),
                    )
                if response.status_code != 201:
                    assert not allowed, (
                        f"{agent} could not bring {entry['disk']} back: {response.content!r}"
                    )
                    return
                promise(
                    "serving",
                    allowed,
                    f"{agent} uploaded {entry['disk']}, but it is not the current agent.",
                )
                number = response.json()["number"]
                stored = Version.objects.get(image_id=entry["image"], number=number)
                assert stored.sha256 == hashlib.sha256(data).hexdigest()
                if response.json()["based_on"] is not None:
                    promise(
                        "synced-is-the-disk",
                        stored.based_on == entry["version"] and stored_bytes(stored) == data,
                        f"{agent} sent {entry['disk']}'s changes against v{entry['version']}; "
                        f"v{number} is based on {stored.based_on} and holds other bytes.",
                    )
                    seen("an agent brought user data back as its changes")
                del box.dirty[entry["disk"]]
                seen("an agent brought changed user data back")
                item["version"] = number
                synced.append(item)  # as the real agent: a disk it did not upload is not named
        if len({item["image"] for item in synced}) < len(synced):
            seen("an agent brought one image back from two disks")
        agent.synced, agent.did_sync = synced, True

    def delta_sync(self, agent: Agent, entry: dict[str, Any], data: bytes) -> Any | None:
        """``data`` sent as its changes against the disk's base version, as the real agent
        does; None when that cannot be done (no base bytes, the delta refused)."""
        client = bearer(agent.secret)
        got = self.read(client.get(f"/api/image/{entry['image']}/{entry['version']}"))
        if got.status_code != 200:
            return None
        base = getattr(got, "body", b"") or got.content
        if len(base) != len(data) or len(data) % BLOCK:
            return None
        runs = [
            Run(at, at + BLOCK, zeros=not any(data[at : at + BLOCK]))
            for at in range(0, len(data), BLOCK)
            if data[at : at + BLOCK] != base[at : at + BLOCK]
        ]
        mapper = DataMapper(sha256=False)
        mapper.update(data)
        headers = {
            "HTTP_UPLOAD_BASE_VERSION": str(entry["version"]),
            "HTTP_UPLOAD_MAP_DIGEST": map_digest(mapper.finish("")),
        }
        body = b"".join(delta_stream(merged(runs), len(data), lambda s, e: data[s:e]))
        with after_commit():
            response = client.generic(
                "POST", upload_url(entry), body, content_type=MEDIA_TYPE, **headers
            )
        self.check_response("post", upload_url(entry), response, (201, 400, *AGENT_CALLS_REFUSED))
        if response.status_code in (400, 404):
            return None  # the base went meanwhile (pruned, damaged): the whole disk goes
        return response

    def agent_result(self, agent: Agent, ok: bool) -> None:
        allowed = self.agents.may_get_bytes(agent)
        writes = agent.instructions["write"]
        if ok and allowed:
            # As the real agent does, every image's start is announced, then its end:
            # done needs progress for every written image (and leaves booting behind). An
            # image brought back and then written is told apart by the phase: its write
            # is announced ("writing") before it is verified. A sync's reports name its disk.
            syncs = [(e, "syncing") for e in agent.instructions["sync"]]
            ends = [(e, phase) for phase in ("writing", "verifying") for e in writes]
            for entry, phase in [*syncs, *ends]:
                self.report(agent, entry, phase)
        elif allowed and writes and (agent.did_sync or not agent.instructions["sync"]):
            # Every other failing agent of an example fails while it writes (its first
            # image's write announced, after what it brought back), unless a day says how
            # it fails: the disks it began to write are then forgotten.
            self.failures += 1
            while_writing = self.failing_while_writing
            if while_writing is None:
                while_writing = bool(self.failures % 2)
            if while_writing:
                self.report(agent, writes[0], "writing", done=0)
        body = {
            "state": "done" if ok else "failed",
            "written": [{k: e[k] for k in ("image", "version", "disk", "sha256")} for e in writes],
            "synced": agent.synced,
            "reason": "" if ok else "The disk did not answer.",
            "layouts": self.agent_tables(agent),
        }
        before = snapshot(agent.deployment_id)
        ok_codes = (200, *AGENT_CALLS_REFUSED)
        response = self.http(bearer(agent.secret), "post", "/api/agent/result", body, ok=ok_codes)
        if not allowed:
            self.assert_refused(agent, response, before, "result")
            return
        assert response.status_code == 200, f"{agent}'s result was refused: {response.content!r}"
        state = Deployment.objects.get(pk=agent.deployment_id).state
        assert state == (DeploymentState.DONE if ok else DeploymentState.FAILED), state
        agent.finished = True
        seen(f"a deployment is {state}")
        check_records_after(agent.deployment_id, writes)
        check_synced_records(agent.deployment_id, agent.instructions, agent.synced)
        if ok:
            self.disks_written(agent)
            self.machine_uses_its_data(agent)

    def report(
        self, agent: Agent, entry: dict[str, Any], phase: str, done: int | None = None, ok=(204,)
    ) -> None:
        """The agent's progress on one image (``done`` bytes, else all), as it reports it:
        a sync's report names its disk."""
        body = {
            "image": entry["image"],
            "phase": phase,
            "bytes_done": entry["size"] if done is None else done,
            "bytes_total": entry["size"],
            **({"disk": entry["disk"]} if phase == "syncing" else {}),
        }
        self.http(bearer(agent.secret), "post", "/api/agent/progress", body, ok=ok)

    def agent_tables(self, agent: Agent) -> list[dict[str, Any]]:
        """The partition tables as the agent reports them: kept when the disk has them."""
        box, found = self.world.boxes[agent.machine], []
        for table in agent.instructions.get("layouts") or []:
            specs = [gpt.Spec(p["label"], p["size"], p["type"]) for p in table["partitions"]]
            placed = gpt.plan(GiB, specs)  # the model's machines have 1 GiB disks
            key = [(p.label, p.start, p.size) for p in placed]
            created = box.tables.get(table["disk"]) != key
            box.tables[table["disk"]] = key  # the agent writes it before any image
            seen(f"an agent {'wrote' if created else 'kept'} a partition table")
            parts = [p.as_json() for p in placed]
            found.append({"disk": table["disk"], "created": created, "partitions": parts})
        return found

    def disks_written(self, agent: Agent) -> None:
        """What a done flash replaced: a whole disk's table and partitions, changed or not."""
        box = self.world.boxes[agent.machine]
        for entry in agent.instructions["write"]:
            box.tables.pop(entry["disk"], None)
            for disk in [d for d in box.dirty if partition_of(d, entry["disk"])]:
                del box.dirty[disk]  # judged when the instructions came (no-data-lost)

    def machine_uses_its_data(self, agent: Agent) -> None:
        """After a flash, the lessee works on the machine: its user data disks change."""
        box = self.world.boxes[agent.machine]
        deployment = Deployment.objects.select_related("requested_by").get(pk=agent.deployment_id)
        owner = deployment.requested_by.username if deployment.requested_by else "BAAS"
        written = [entry["disk"] for entry in agent.instructions["write"]]
        kept = [  # a disk brought back and then written over holds what was written
            entry
            for entry in agent.instructions["sync"]
            if not any(entry["disk"] == w or partition_of(entry["disk"], w) for w in written)
        ]
        for entry in agent.instructions["write"] + kept:
            image = Image.objects.filter(pk=entry["image"]).first()
            if image is not None and image.type == ImageType.USER_DATA:
                box.dirty[entry["disk"]] = (owner, entry["image"], deployment.pk)

    # --- User data is never lost ------------------------------------------------------------

    def check_no_data_lost(self, agent: Agent) -> None:
        """Instructions never overwrite changed user data without bringing it back first,
        unless the deployment was queued without sync, or one said it failed or was cancelled."""
        box = self.world.boxes[agent.machine]
        deployment = Deployment.objects.select_related("requested_by").get(pk=agent.deployment_id)
        synced = {entry["disk"] for entry in agent.instructions["sync"]}
        for entry in agent.instructions["write"]:
            # A write over a whole disk overwrites what its partitions hold too.
            under = [d for d in box.dirty if d == entry["disk"] or partition_of(d, entry["disk"])]
            for disk in under:
                if disk not in synced:
                    self.check_overwrite(agent, deployment, entry["disk"], box.dirty[disk])

    def check_overwrite(
        self, agent: Agent, deployment: Deployment, disk: str, dirty: tuple[str, str, int]
    ) -> None:
        owner, image, since = dirty
        if not deployment.sync:
            return  # whoever queued it chose not to bring the disks back
        said = Deployment.objects.filter(
            machine__name=agent.machine,
            pk__gt=since,
            state__in=(DeploymentState.FAILED, DeploymentState.CANCELLED),
        )
        promise(
            "no-data-lost",
            said.exists(),
            f"Deployment #{deployment.pk} overwrites {disk} of {agent.machine}, "
            f"which holds {owner}'s changed user data (image {image}), without bringing "
            "it back first, and no deployment said why.",
        )

    def check_mount_outcomes(self) -> None:
        """A changed network mount ends as a new version, or says why it could not."""
        for pk, base_sha in list(self.changed_mounts.items()):
            mount = NetworkMount.objects.get(pk=pk)
            if mount.state not in (NetworkMountState.DONE, NetworkMountState.FAILED):
                continue
            del self.changed_mounts[pk]
            if mount.version is not None:
                path = get_storage().version_path(
                    mount.image_id, mount.version_number, mount.version.stored_compression
                )
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                promise(
                    "no-data-lost", sha == base_sha, f"Mount #{pk} changed its base version's file."
                )
            if mount.state == NetworkMountState.FAILED or mount.image_id is None:
                promise(
                    "no-data-lost",
                    mount.error or mount.image_id is None,
                    f"Mount #{pk} failed silently.",
                )
                continue
            seen("a changed network mount ended")
            promise(
                "no-data-lost",
                mount.result_version is not None,
                f"The changes made over network mount #{pk} were not stored as a version.",
            )

    # --- Dead tokens ----------------------------------------------------------------------

    def probe_dead_tokens(self) -> None:
        """Every token that should be dead is tried once: refused, nothing changed."""
        for agent in self.agents.dead_unprobed():
            self.agents.probed.add(id(agent))
            before = snapshot(agent.deployment_id)
            if agent.secret:
                image = str(Image.objects.values_list("pk", flat=True).first())
                body = {"image": image, "phase": "writing", "bytes_done": 1, "bytes_total": 2}
                url = "/api/agent/progress"
                response = self.http(bearer(agent.secret), "post", url, body)
                self.assert_refused(agent, response, before, "progress report")
            else:
                mac = self.world.boxes[agent.machine].mac
                body = {"mac": mac, "agent_version": "model"}
                response = self.http(bearer(agent.boot_secret), "post", "/api/agent/checkin", body)
                self.assert_refused(agent, response, before, "check-in")

    # --- Catalogue and people -----------------------------------------------------------------

    def upload_version(self, who: str, image: Image) -> None:
        self.world.seed += 1
        person = self.world.people[who]
        person.user.refresh_from_db()
        ok = (201, 403, 404, 409, 413) if person.user.is_active else (401,)
        self.post_bytes(person.client, f"/api/image/{image.uuid}", content(self.world.seed), ok=ok)

    def repin(self, who: str, owner: str, kind: str) -> None:
        setup = self.world.setups[(owner, kind)]
        image = self.world.images[(owner, "system")]
        latest = Version.objects.filter(image=image).order_by("-number").first()
        if latest is None:
            return
        url = f"/api/user/{owner}/image_setup/{setup.uuid}/images"
        response = self.http(who, "delete", f"{url}?image={image.uuid}", ok=(204, 403, 404, 409))
        if response.status_code == 204:
            body = {"image": str(image.uuid), "version": latest.number}
            if setup.layout:  # the setup composes one disk: the system is its "root"
                body["partition"] = "root"
            self.http(who, "post", url, body, ok=(201, 400, 403, 404, 409))

    def revoke_token(self, who: str) -> None:
        person = self.world.people[who]
        person.user.refresh_from_db()
        if not person.user.is_active:
            return
        url = f"/api/user/{person.name}/tokens"
        self.http(who, "delete", f"{url}/{person.token_id}", ok=(204,))
        old = person.secret
        self.http(bearer(old), "get", "/api/user/me", ok=(401,))
        from accounts.services import token_create

        token, person.secret = token_create(
            actor=person.user, user=person.user, name="model", scopes_wanted=ALL_SCOPES
        )
        person.token_id = token.pk
        person.dead_secrets.append(old)
