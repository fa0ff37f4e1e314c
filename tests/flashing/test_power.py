"""Power drivers against stand-ins of the real thing: an ipmitool on PATH, a Redfish server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flashing.power import PowerError, driver_for
from tests.flashing.factories import MachineFactory

pytestmark = pytest.mark.django_db


def test_ipmi_sets_pxe_and_cycles_with_the_password_in_the_environment(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    tool = tmp_path / "ipmitool"
    tool.write_text(
        f'#!/bin/sh\necho "$* pw=$IPMI_PASSWORD" >> {calls}\n'
        'case "$*" in *status*) echo "Chassis Power is on";; esac\n'
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    machine = MachineFactory(
        power_driver="ipmi",
        power_settings={"host": "10.0.0.9", "username": "root", "password": "s3cret"},
    )
    driver_for(machine).boot_management(machine, None)
    lines = calls.read_text().splitlines()
    assert [line.split(" -E ")[1] for line in lines] == [
        "chassis bootdev pxe pw=s3cret",
        "chassis power status pw=s3cret",
        "chassis power cycle pw=s3cret",
    ]
    assert all("-H 10.0.0.9 -U root" in line and "s3cret -E" not in line for line in lines)


def test_ipmi_without_a_host_says_which_setting_is_missing(tmp_path, monkeypatch):
    (tmp_path / "ipmitool").write_text("#!/bin/sh\n")
    (tmp_path / "ipmitool").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    machine = MachineFactory(power_driver="ipmi", power_settings={})
    with pytest.raises(PowerError, match="'host'"):
        driver_for(machine).power_off(machine)


class FakeBmc(BaseHTTPRequestHandler):
    requests: list = []

    def _answer(self, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, body, self.headers["Authorization"]))

    def do_GET(self) -> None:
        self._record()
        if self.path == "/redfish/v1/Systems":
            self._answer({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
        else:
            self._answer({"PowerState": "Off"})

    def do_PATCH(self) -> None:
        self._record()
        self._answer()

    do_POST = do_PATCH

    def log_message(self, *args: object) -> None:
        pass


def test_redfish_overrides_the_boot_once_and_resets():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBmc)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        machine = MachineFactory(
            power_driver="redfish",
            power_settings={
                "url": f"http://127.0.0.1:{server.server_port}",
                "username": "admin",
                "password": "pw",
            },
        )
        FakeBmc.requests = []
        driver_for(machine).boot_management(machine, None)
    finally:
        server.shutdown()
        server.server_close()
    writes = [(m, p, b) for m, p, b, _ in FakeBmc.requests if m != "GET"]
    assert writes == [
        (
            "PATCH",
            "/redfish/v1/Systems/1",
            {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}},
        ),
        ("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", {"ResetType": "On"}),
    ]
    assert all(auth == "Basic YWRtaW46cHc=" for *_, auth in FakeBmc.requests)


def test_booting_a_boot_image_is_a_network_boot_without_the_management_os(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    tool = tmp_path / "ipmitool"
    tool.write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "Chassis Power is off"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    ipmi = MachineFactory(power_driver="ipmi", power_settings={"host": "10.0.0.9"})
    assert "next boot from the network" in driver_for(ipmi).boot_network(ipmi)
    assert [line.split(" -E ")[1] for line in calls.read_text().splitlines()] == [
        "chassis bootdev pxe",
        "chassis power status",
        "chassis power on",
    ]
    command = MachineFactory(
        power_driver="command",
        power_settings={"command": "false", "network_command": f"echo net >{tmp_path / 'net'}"},
    )
    driver_for(command).boot_network(command)
    assert (tmp_path / "net").read_text() == "net\n"
    plain = MachineFactory(power_driver="command", power_settings={"command": "false"})
    assert "has no network_command" in driver_for(plain).boot_network(plain)
    manual = MachineFactory(power_driver="manual")
    assert "its boot image" in driver_for(manual).boot_network(manual)
