"""``catalogue.py``'s command-line client part: ``baas image push`` (fresh, plain,
resumed after a kill) against ``cp`` + fsync, and ``baas image pull`` against ``curl -o``
from nginx, each run as a researcher runs it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _lib.baas import Baas, MemorySampler
from _lib.servers import Nginx
from _lib.table import Row
from _lib.testimage import TestImage
from _lib.uploads import baseline_copy
from _lib.util import (
    MiB,
    allocated,
    byte_compile,
    log,
    median,
    read_through,
    run,
    sync_all,
    timed,
)


class Cli:
    """``baas`` run as a researcher runs it: a new process per command, its start-up timed.

    The client is the one of the checkout under test (``--repo``: its ``cli/`` and
    ``diskimage/`` first on the path), so that a run against an older checkout measures
    that checkout's client too, byte-compiled first as ``pip install`` leaves it."""

    def __init__(self, baas: Baas, home: Path):
        self.baas, self.home = baas, home
        home.mkdir(parents=True, exist_ok=True)
        byte_compile(baas.repo / "cli" / "baas_cli", baas.repo / "diskimage")
        self.command = [sys.executable, "-m", "baas_cli"]
        self.env = {**os.environ, "BAAS_URL": baas.url(""), "BAAS_TOKEN": baas.token,
                    "XDG_CONFIG_HOME": str(home / "config"),
                    "XDG_STATE_HOME": str(home / "state"),
                    "PYTHONPATH": f"{baas.repo / 'cli'}{os.pathsep}{baas.repo}"}  # fmt: skip

    def run(self, *args: str) -> dict:
        out = subprocess.run([*self.command, *args, "--json"], capture_output=True, text=True,
                             env=self.env, check=False)  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"baas {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def push(self, uuid: str, path: Path, *extra: str) -> tuple[float, dict]:
        """``baas image push`` as a sparse image (--compress none): auto would measure the link
        and may compress, which is another comparison than cp's. The answer gets ``cpu``:
        the seconds of CPU the client and gunicorn's workers used meanwhile (on a loaded
        machine the figure the load does not inflate)."""
        server = _workers_cpu(self.baas)
        with cpu_of_children() as client:
            seconds, answer = timed(
                lambda: self.run("image", "push", uuid, str(path), "--compress", "none", *extra)
            )
        answer["cpu"] = {"client": client[0], "server": _workers_cpu(self.baas) - server}
        return seconds, answer

    def push_killed_at_half(self, uuid: str, path: Path) -> int:
        """Start a push, SIGKILL it once the server holds half its body; the server's offset."""
        errors = self.home / "killed-push.err"
        with errors.open("w") as stderr:
            process = subprocess.Popen(
                [*self.command, "image", "push", uuid, str(path), "--limit-rate", "100M",
                 "--compress", "none"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            offset, length = 0, 0
            deadline = time.monotonic() + 120
            while (not length or offset < length // 2) and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SystemExit(f"the push to kill ended first: {errors.read_text()}")
                time.sleep(0.05)
                offset, length = self._upload_offset()
        finally:
            process.kill()
            process.wait()
        while True:  # the server stores what arrived once it sees the socket close
            time.sleep(0.5)
            settled, _ = self._upload_offset()
            if settled == offset:
                return offset
            offset = settled

    def _upload_offset(self) -> tuple[int, int]:
        states = list((self.home / "state" / "baas" / "push").glob("*.json"))
        if not states:
            return 0, 0
        upload = json.loads(states[0].read_text())["upload"]
        conn = http.client.HTTPConnection("127.0.0.1", self.baas.port, timeout=30)
        try:
            conn.request("HEAD", upload, headers={"Authorization": f"Bearer {self.baas.token}",
                                                  "Upload-Draft-Interop-Version": "8"})  # fmt: skip
            response = conn.getresponse()
            response.read()
            return int(response.getheader("Upload-Offset") or 0), int(
                response.getheader("Upload-Length") or 0
            )
        finally:
            conn.close()

    def pull(self, ref: str, target: Path) -> tuple[float, dict]:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        sync_all()
        return timed(lambda: self.run("image", "pull", ref, str(target)))


@contextlib.contextmanager
def cpu_of_children() -> Iterator[list[float]]:
    """The CPU seconds (user + system) of the child processes waited for in the block,
    in the list yielded once the block ends."""
    used = [0.0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield used
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used[0] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _workers_cpu(baas: Baas) -> float:
    """The CPU seconds gunicorn's workers have used so far (from /proc)."""
    if baas.proc is None:
        return 0.0
    total = 0
    for pid in MemorySampler(baas.proc.pid).pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def curl_to_file(url: str, target: Path, expected: int) -> float:
    """``curl -o FILE`` of the whole raw file (every byte, zeros too, written out)."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    sync_all()
    cmd = ["curl", "-sS", "-o", str(target), "-w", "%{http_code} %{size_download}", url]
    seconds, out = timed(lambda: run(cmd))
    code, size = out.stdout.split()
    if code != "200" or int(size) != expected:
        raise SystemExit(f"curl of {url} answered {code} with {size} bytes, not {expected}")
    return seconds


def _pushed_once(cli: Cli, baas: Baas, image: TestImage, name: str, *extra: str) -> dict:
    created = baas.create_image(name)
    sync_all()
    seconds, answer = cli.push(created["uuid"], image.raw, *extra)
    if answer.get("size") != image.size:
        raise SystemExit(f"baas image push stored something else: {answer}")
    return {"uuid": created["uuid"], "seconds": seconds, "answer": answer}


def _phases(answer: dict) -> str:
    """Where a push's time went, as the client saw it: sending, then the server's answer;
    and the CPU it took, the client's and the server's."""
    transfer, cpu = answer.get("transfer", {}), answer.get("cpu", {})
    return (
        f"sending {transfer.get('seconds_sending', 0):.2f} s, answer after "
        f"{transfer.get('seconds_waiting', 0):.2f} s; CPU client {cpu.get('client', 0):.2f} s, "
        f"server {cpu.get('server', 0):.2f} s"
    )


def measure_cli(
    baas: Baas, image: TestImage, workdir: Path, repeat: int, pull: bool = True
) -> list[Row]:
    """baas image push vs cp+sync, a resumed push vs a fresh one, baas image pull vs curl
    (``pull=False``: the pushes alone)."""
    read_through(image.raw)
    cli = Cli(baas, workdir / "cli-home")
    cp_t, push_t, plain_t, resumed_t = [], [], [], []
    sent, resumed_sent = [], []
    sending: dict[str, list[float]] = {"fresh": [], "resumed": []}
    checked = ""
    cpu: dict[str, list[float]] = {"cp": [], "push": [], "resumed": []}
    for i in range(repeat):
        with cpu_of_children() as used:
            cp_t.append(baseline_copy(image, workdir)[0])
        cpu["cp"].append(used[0])
        log(f"  cp --sparse=always + sync: {cp_t[-1]:.2f} s (CPU {used[0]:.2f} s)")
        fresh = _pushed_once(cli, baas, image, f"bench-cli-{i}")
        push_t.append(fresh["seconds"])
        cpu["push"].append(sum(fresh["answer"]["cpu"].values()))
        sent.append(fresh["answer"]["transfer"]["sent"])
        sending["fresh"].append(fresh["answer"]["transfer"]["seconds_sending"])
        log(f"  baas image push: {fresh['seconds']:.2f} s ({sent[-1] / MiB:.0f} MiB sent; "
            f"{_phases(fresh['answer'])})")  # fmt: skip
        if not checked:  # once: the job records the SHA-256, which must be the image's
            _job, digest = baas.digest_job(fresh["uuid"], fresh["answer"]["version"])
            if digest != image.sha256:
                raise SystemExit(f"baas image push stored other bytes: SHA-256 {digest}")
            checked = fresh["uuid"]
        else:
            baas.delete_image(fresh["uuid"])
        plain = _pushed_once(cli, baas, image, f"bench-cli-plain-{i}", "--no-resume")
        plain_t.append(plain["seconds"])
        baas.delete_image(plain["uuid"])
        log(f"  baas image push --no-resume: {plain['seconds']:.2f} s ({_phases(plain['answer'])})")
        created = baas.create_image(f"bench-cli-resume-{i}")
        held = cli.push_killed_at_half(created["uuid"], image.raw)
        sync_all()
        seconds, answer = cli.push(created["uuid"], image.raw)
        if answer.get("size") != image.size or answer["transfer"]["resumed_from"] != held:
            raise SystemExit(f"the resumed push did not resume from {held}: {answer}")
        resumed_t.append(seconds)
        resumed_sent.append(answer["transfer"]["sent"])
        sending["resumed"].append(answer["transfer"]["seconds_sending"])
        cpu["resumed"].append(sum(answer["cpu"].values()))
        baas.delete_image(created["uuid"])
        log(f"  baas image push, resumed at {held / MiB:.0f} MiB: {seconds:.2f} s "
            f"({resumed_sent[-1] / MiB:.0f} MiB sent; {_phases(answer)})")  # fmt: skip
    rows = _push_rows(cp_t, push_t, plain_t, resumed_t, sent, resumed_sent, cpu)
    rows.append(_resume_floor(push_t, resumed_t, sending))
    if pull:
        rows.append(_measure_pull(baas, cli, workdir, checked, image.size, repeat))
    return rows


def _push_rows(cp_t, push_t, plain_t, resumed_t, sent, resumed_sent, cpu) -> list[Row]:
    cp, pu, pl, rs = median(cp_t), median(push_t), median(plain_t), median(resumed_t)
    return [
        Row("baas image push vs cp+sync", pu, cp, pu / cp, "<= 1.0", pu / cp <= 1.0,
            f"a resumable upload of the data alone ({median(sent) / MiB:.0f} MiB sent); "
            "client start-up included", {"baas": push_t, "baseline": cp_t, "sent": sent}),
        Row("  CPU: push (client + server) vs cp+sync", median(cpu["push"]), median(cpu["cp"]),
            median(cpu["push"]) / max(median(cpu["cp"]), 1e-3), "-", None,
            "seconds of CPU, what a loaded machine does not inflate",
            {"baas": cpu["push"], "baseline": cpu["cp"], "resumed": cpu["resumed"]}),
        Row("  baas image push --no-resume vs cp+sync", pl, cp, pl / cp, "-", None,
            "one plain request (the server decodes both the same way)",
            {"baas": plain_t, "baseline": cp_t}),
        Row("resumed push after 50% vs fresh push", rs, pu, rs / pu, "<= 0.55", rs / pu <= 0.55,
            f"{median(resumed_sent) / MiB:.0f} MiB sent after the kill",
            {"resumed": resumed_t, "fresh": push_t, "sent": resumed_sent}),
    ]  # fmt: skip


def _resume_floor(push_t: list[float], resumed_t: list[float],
                  sending: dict[str, list[float]]) -> Row:  # fmt: skip
    """What resumed / fresh would be if starting, creating the upload and committing it took no
    time: the seconds spent sending alone, resumed over fresh (medians of the same rounds).
    Each push's other seconds (start-up, the requests before the body, the answer, exit) are
    the rest, said beside it: a target under this floor plus those costs cannot hold."""
    fresh, resumed = median(sending["fresh"]), median(sending["resumed"])
    rest_f = median([t - s for t, s in zip(push_t, sending["fresh"], strict=True)])
    rest_r = median([t - s for t, s in zip(resumed_t, sending["resumed"], strict=True)])
    return Row("  resumed / fresh, sending alone", resumed, fresh, resumed / fresh, "-", None,
               f"the floor of the ratio above; the rest of each push (start-up, requests, "
               f"commit, exit): fresh {rest_f:.2f} s, resumed {rest_r:.2f} s",
               {"resumed": sending["resumed"], "fresh": sending["fresh"]})  # fmt: skip


def _measure_pull(baas: Baas, cli: Cli, workdir: Path, checked: str, size: int,
                  repeat: int) -> Row:  # fmt: skip
    pull_t, curl_t, received = [], [], []
    number = 1
    stored = baas.version_file(checked, number)
    nginx = Nginx(workdir, stored.parent)
    nginx.start()
    try:
        read_through(stored)
        for _ in range(repeat):
            curl_t.append(curl_to_file(f"http://127.0.0.1:{nginx.port}/{stored.name}",
                                       workdir / "curl.img", size))  # fmt: skip
            log(f"  curl -o of the raw file from nginx: {curl_t[-1]:.2f} s")
            seconds, answer = cli.pull(f"{checked}@{number}", workdir / "pulled.img")
            if not answer.get("verified"):
                raise SystemExit(f"baas image pull did not check the ranges: {answer}")
            pull_t.append(seconds)
            received.append(answer["received"])
            log(f"  baas image pull: {seconds:.2f} s ({received[-1] / MiB:.0f} MiB received, "
                f"{allocated(workdir / 'pulled.img') / MiB:.0f} MiB allocated)")  # fmt: skip
    finally:
        nginx.stop()
        for name in ("curl.img", "pulled.img"):
            with contextlib.suppress(FileNotFoundError):
                (workdir / name).unlink()
    pd, cu = median(pull_t), median(curl_t)
    return Row("baas image pull vs curl -o (nginx)", pd, cu, pd / cu, "<= 0.5", pd / cu <= 0.5,
               f"pull: a sparse file, {median(received) / MiB:.0f} MiB received, each range "
               "checked, fsynced; curl: the whole raw file written (not synced)",
               {"baas": pull_t, "baseline": curl_t, "received": received})  # fmt: skip
