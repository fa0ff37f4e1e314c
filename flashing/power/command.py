"""``command``: run configured shell commands.

Settings: ``command`` boots the management OS (required), ``disk_command``
boots the machine's own system, ``network_command`` network-boots it into its
boot image (without the management OS), ``off_command`` powers it off (the
last three optional: without them nothing is done). The management command sees ``BAAS_SERVER``,
``BAAS_MAC``, ``BAAS_TOKEN`` (a fresh one-time token) and ``BAAS_DEPLOYMENT``
in its environment — enough to start a ``baas-agent`` on a VM or, in tests,
as a local process. A command that starts something long-running must put it
in the background with its output redirected; BAAS waits for the command
itself for at most ``BAAS_POWER_TIMEOUT`` seconds.
"""

from __future__ import annotations

import os
import subprocess

from django.conf import settings

from flashing.models import Machine
from flashing.power import BootParams, PowerError, setting

OUTPUT_LIMIT = 2000


def run(machine: Machine, command: str, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(  # noqa: S602 -- the administrator's configured shell command
            command,
            shell=True,
            env={**os.environ, **env, "BAAS_MACHINE": machine.name},
            capture_output=True,
            text=True,
            timeout=settings.BAAS_POWER_TIMEOUT,
            start_new_session=True,  # what it starts outlives a worker restart
        )
    except subprocess.TimeoutExpired:
        raise PowerError(
            f"{machine.name}: the power command ran over {settings.BAAS_POWER_TIMEOUT} s."
        ) from None
    except OSError as exc:
        raise PowerError(f"{machine.name}: the power command could not run: {exc}") from exc
    output = (done.stdout + done.stderr).strip()[-OUTPUT_LIMIT:]
    if done.returncode != 0:
        raise PowerError(
            f"{machine.name}: the power command exited with {done.returncode}: {output}"
        )
    return output


class CommandDriver:
    wants_token = True

    def boot_management(self, machine: Machine, params: BootParams | None) -> str:
        env = params.environment() if params else {}
        output = run(machine, setting(machine, "command"), env)
        return f"Ran the power command of {machine.name}. {output}".strip()

    def boot_disk(self, machine: Machine) -> str:
        command = setting(machine, "disk_command", required=False)
        if not command:
            return f"{machine.name} has no disk_command: left as it is."
        return f"Ran the disk_command of {machine.name}. {run(machine, command, {})}".strip()

    def boot_network(self, machine: Machine) -> str:
        command = setting(machine, "network_command", required=False)
        if not command:
            return f"{machine.name} has no network_command: left as it is."
        return f"Ran the network_command of {machine.name}. {run(machine, command, {})}".strip()

    def power_off(self, machine: Machine) -> str:
        command = setting(machine, "off_command", required=False)
        if not command:
            return f"{machine.name} has no off_command: left as it is."
        return f"Ran the off_command of {machine.name}. {run(machine, command, {})}".strip()
