"""``redfish``: a BMC's Redfish API over HTTP(S), with the standard library.

Settings: ``url`` (the BMC, e.g. ``https://10.0.0.5``; required), ``username``,
``password``, ``system`` (the ComputerSystem path; default: the first member
of ``/redfish/v1/Systems``), ``verify_tls`` (default true).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings

from flashing.models import Machine
from flashing.power import BootParams, PowerError, setting


class Redfish:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.base = setting(machine, "url").rstrip("/")
        user = setting(machine, "username", required=False)
        password = setting(machine, "password", required=False)
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode() if user else ""
        verify = setting(machine, "verify_tls", required=False).lower() not in ("false", "0", "no")
        self.context = None if verify else ssl._create_unverified_context()  # noqa: S323

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.auth:
            request.add_header("Authorization", f"Basic {self.auth}")
        try:
            with urllib.request.urlopen(  # noqa: S310 -- the administrator's BMC URL
                request, timeout=settings.BAAS_POWER_TIMEOUT, context=self.context
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise PowerError(
                f"{self.machine.name}: Redfish {method} {path} answered {exc.code}: {detail}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PowerError(f"{self.machine.name}: Redfish {method} {path}: {exc}") from exc
        return json.loads(raw) if raw.strip() else None

    def system(self) -> str:
        path = setting(self.machine, "system", required=False)
        if path:
            return path
        members = (self.call("GET", "/redfish/v1/Systems") or {}).get("Members") or []
        if not members:
            raise PowerError(f"{self.machine.name}: the BMC lists no ComputerSystem.")
        system: str = members[0]["@odata.id"]
        return system

    def boot(self, target: str) -> str:
        system = self.system()
        override = {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": "Once"}
        self.call("PATCH", system, {"Boot": override})
        state = (self.call("GET", system) or {}).get("PowerState", "")
        reset = "ForceRestart" if state == "On" else "On"
        self.call("POST", f"{system}/Actions/ComputerSystem.Reset", {"ResetType": reset})
        return f"Redfish: next boot from {target}; {reset}."


class RedfishDriver:
    wants_token = False

    def boot_management(self, machine: Machine, params: BootParams | None) -> str:
        return Redfish(machine).boot("Pxe")

    def boot_disk(self, machine: Machine) -> str:
        return Redfish(machine).boot("Hdd")

    def boot_network(self, machine: Machine) -> str:
        return Redfish(machine).boot("Pxe")

    def power_off(self, machine: Machine) -> str:
        client = Redfish(machine)
        system = client.system()
        client.call("POST", f"{system}/Actions/ComputerSystem.Reset", {"ResetType": "ForceOff"})
        return "Redfish: ForceOff."
