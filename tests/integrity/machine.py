"""The model's machine side (``test_lifecycle_model.py``): the rules of what a machine and
its agent do — network-boot, check in, ask for instructions, read the bytes, report
progress, bring user data back, report the result, write to a network mount — each
checked against what the agent may do (``bytes-to-bound-agent``, ``one-checkin-per-
attempt``, ``dead-token``), as a mixin of the state machine."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from flashing.models import NetworkMount, NetworkMountState
from flashing.services.mount_urls import mount_url
from tests.flashing.nbd_client import nbd_write
from tests.integrity.agents import snapshot
from tests.integrity.days import BOXES
from tests.integrity.disks import check_deltas
from tests.integrity.invariants import promise, seen
from tests.integrity.world import DEPLOYMENT, TOKEN, bearer

INDEX = st.integers(min_value=0, max_value=15)


class MachineSide:
    """The rules a machine's agent drives; the bookkeeping and HTTP helpers are ``Lab``'s."""

    @rule(box=BOXES)
    def boot_script(self, box: str) -> None:
        """The machine network-boots: GET /api/boot/<mac>.ipxe; a token in it starts an agent."""
        mac = self.world.boxes[box].mac
        response = self.http(None, "get", f"/api/boot/{mac}.ipxe", ok=(200,))
        script = response.content.decode()
        token = TOKEN.search(script)
        if token:
            deployment = int(DEPLOYMENT.search(script).group(1))
            self.agents.booted(
                machine=box,
                deployment_id=deployment,
                secret=token.group(1),
                source="its boot script",
            )

    @rule(box=BOXES, ok=st.booleans(), steps=st.integers(min_value=1, max_value=6))
    def agent_works(self, box: str, ok: bool, steps: int) -> None:
        """The machine's management OS takes its next ``steps`` steps, in the order a real
        agent does: boot, check in, instructions, bring user data back, read, report."""
        for _ in range(steps):
            self.agent_step(box, ok)

    @rule(ok=st.booleans(), steps=st.integers(min_value=1, max_value=4))
    def everything_moves_on(self, ok: bool, steps: int) -> None:
        """Time passes normally: the worker runs its jobs, both machines' agents work."""
        self.worker_runs_pending_jobs()
        for box in self.world.boxes:
            self.agent_works(box, ok, steps)

    def agent_step(self, box: str, ok: bool) -> None:
        mine = [a for a in self.agents.all if a.machine == box]
        agent = mine[-1] if mine else None
        if agent is None or agent.finished or not self.agents.is_current(agent):
            self.boot_script(box)
            return
        if not agent.secret:
            self.checkin(self.agents.all.index(agent))
            return
        index = [a for a in self.agents.all if a.secret].index(agent)
        if agent.instructions is None:
            self.instructions(index)
        elif agent.instructions["sync"] and not agent.did_sync:
            self.sync(index)
        elif agent.instructions["write"] and not agent.downloaded:
            agent.downloaded = True
            self.download(index)
        else:
            self.result(index, ok)

    @precondition(lambda self: self.agents.all)
    @rule(index=INDEX)
    def checkin(self, index: int) -> None:
        agent = self.agents.pick(index)
        if agent is None:
            return
        key = (agent.deployment_id, agent.attempt)
        current = self.agents.is_current(agent)
        before = snapshot(agent.deployment_id)
        mac = self.world.boxes[agent.machine].mac
        body = {"mac": mac, "agent_version": "model"}
        response = self.http(
            bearer(agent.boot_secret), "post", "/api/agent/checkin", body, ok=(200, 401, 409, 410)
        )
        if not current:
            self.assert_refused(agent, response, before, "check-in")
            return
        if key in self.agents.bound:
            promise(
                "one-checkin-per-attempt",
                response.status_code in (401, 409),
                f"A second check-in for attempt {agent.attempt} of deployment "
                f"#{agent.deployment_id} was accepted ({agent}): the first agent was bound.",
            )
            if response.status_code == 409:
                assert snapshot(agent.deployment_id)[:2] == before[:2]
            elif response.status_code == 200:  # refused or not, it tries to get bytes
                agent.secret = response.json()["token"]
            return
        assert response.status_code == 200, f"{agent} could not check in: {response.content!r}"
        agent.secret = response.json()["token"]
        seen("an agent checked in")
        self.agents.bound[key] = agent

    @precondition(lambda self: any(a.secret for a in self.agents.all))
    @rule(index=INDEX)
    def instructions(self, index: int) -> None:
        agent = self.agents.pick(index, checked_in=True)
        if agent is None:
            return
        allowed = self.agents.may_get_bytes(agent)
        response = self.http(
            bearer(agent.secret), "get", "/api/agent/instructions", ok=(200, 401, 409, 410)
        )
        if response.status_code == 200:
            promise(
                "bytes-to-bound-agent",
                allowed,
                f"{agent} got instructions, but it is not the current, bound agent.",
            )
            agent.instructions = response.json()
            seen("an agent got its instructions")
            check_deltas(agent.deployment_id, agent.instructions)
            self.check_no_data_lost(agent)

    @precondition(lambda self: any(a.instructions for a in self.agents.all))
    @rule(index=INDEX)
    def download(self, index: int) -> None:
        """The agent reads an image it writes: its data map, then its bytes."""
        agent = self.agents.pick(index, checked_in=True)
        if agent is None or not agent.instructions or not agent.instructions["write"]:
            return
        entry = agent.instructions["write"][index % len(agent.instructions["write"])]
        allowed = self.agents.may_get_bytes(agent)
        for url in (entry["map_url"], entry["url"]):
            response = self.http(
                bearer(agent.secret), "get", url, ok=(200, 401, 403, 404, 410, 500)
            )
            if response.status_code >= 500 and allowed:  # the agent says what went wrong
                text = response.content[:2000].decode(errors="replace")
                reason = f"GET {url}: {response.status_code} {text}"
                body = {"state": "failed", "written": [], "synced": [], "reason": reason}
                self.http(bearer(agent.secret), "post", "/api/agent/result", body, ok=(200,))
                return
            if response.status_code == 200:
                promise(
                    "bytes-to-bound-agent",
                    allowed,
                    f"{agent} got the bytes of {url}, but it is not the current agent.",
                )
            else:
                assert not allowed, f"{agent} could not read {url}: {response.status_code}"

    @precondition(lambda self: any(a.instructions for a in self.agents.all))
    @rule(index=INDEX, phase=st.sampled_from(["writing", "verifying"]))
    def progress(self, index: int, phase: str) -> None:
        agent = self.agents.pick(index, checked_in=True)
        if agent is None or not agent.instructions or not agent.instructions["write"]:
            return
        if agent.instructions["sync"] and not agent.did_sync:
            return  # the agent brings user data back before it writes anything
        entry = agent.instructions["write"][0]
        body = {
            "image": entry["image"],
            "phase": phase,
            "bytes_done": 1,
            "bytes_total": entry["size"],
        }
        allowed = self.agents.may_get_bytes(agent)
        before = snapshot(agent.deployment_id)
        response = self.http(
            bearer(agent.secret), "post", "/api/agent/progress", body, ok=(204, 401, 409, 410)
        )
        if not allowed:
            self.assert_refused(agent, response, before, "progress report")

    @precondition(lambda self: any(a.instructions for a in self.agents.all))
    @rule(index=INDEX)
    def sync(self, index: int) -> None:
        """The agent brings the disks back: changed ones as the next version (upload_url)."""
        agent = self.agents.pick(index, checked_in=True)
        if agent is None or not agent.instructions or agent.did_sync:
            return
        self.agent_sync(agent)

    @precondition(lambda self: any(a.instructions for a in self.agents.all))
    @rule(index=INDEX, ok=st.booleans())
    def result(self, index: int, ok: bool) -> None:
        agent = self.agents.pick(index, checked_in=True)
        if agent is None or not agent.instructions:
            return
        if ok and agent.instructions["sync"] and not agent.did_sync:
            return
        self.agent_result(agent, ok)

    @precondition(lambda self: NetworkMount.objects.filter(state="ready").exists())
    @rule(box=BOXES, pattern=st.integers(min_value=1, max_value=255))
    def mount_write(self, box: str, pattern: int) -> None:
        """The machine writes to its network-mounted user data (a real NBD client)."""
        mount = NetworkMount.objects.filter(
            deployment__machine__name=box, state=NetworkMountState.READY
        ).first()
        if mount is None:
            return
        nbd_write(mount_url(mount), pattern, 4096, 4096)
        self.changed_mounts.setdefault(mount.pk, mount.version.sha256)
