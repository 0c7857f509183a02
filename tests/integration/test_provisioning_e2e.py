"""Acceptance of provisioning on a real node (``pnpp run``), driven the way an operator drives it: a token from
``pnpp token create``, an image uploaded and a profile created through the REST API, an unknown Open PnP device that
shows up as unclaimed, is claimed, and goes through image install, reload, configuration and save; then a node
stopped in the middle of a job and a new node process on the same data dir that finishes it, step for step.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from pnp_integrated.devsim.node import PNPP, RunningNode, start_node
from pnp_integrated.devsim.pnp import PROVISIONED, UNCLAIMED, DeviceReport, PnpAgent, SimulatedDevice, simulate

NEW_VERSION = "17.09.04a"  # as IOS-XE reports it, and as the file name says
IMAGE_NAME = "c8000v-universalk9.17.09.04a.SPA.bin"
IMAGE = b"PNPSIM-VERSION=" + NEW_VERSION.encode() + b"\n" + bytes(range(256)) * 2000
CONFIG = "hostname {{ site }}-{{ serial }}\nsnmp-server location {{ site }}\n"
POST = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"
AGENT = {"time_scale": 0.002, "reload_seconds": 30, "deadline": 90}
# Every step of a job with an image, a configuration and post-PnP lines, each done once.
FULL_JOB = [("identify", "succeeded", 1), ("image", "succeeded", 1), ("image.verify", "succeeded", 1),
            ("config", "succeeded", 1), ("post_config", "succeeded", 1), ("save", "succeeded", 1)]
FULL_CONVERSATION = ["device-info", "image-install", "device-info", "config-upgrade", "cli-config", "cli-exec"]
NODE_PORTS = ("http_port", "https_port", "cns_port_base", "broker_port", "bus_port", "health_port")


class Operator:
    """The REST API of a node as an operator's script uses it, with a token made by ``pnpp token create``."""

    def __init__(self, node: RunningNode) -> None:
        created = subprocess.run([PNPP, "token", "create", "--role", "admin", "--name", "ops"], env=node.env,
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        self.token = created.stdout.strip()
        self.node = node

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(self.node.url(f"/api/v1{path}"), data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, raw: bytes | None = None, status: int = 200) -> Any:
        got, answer = self.call(method, path, body, raw)
        assert got == status, (method, path, got, answer)
        return answer

    def job_of(self, serial: str) -> dict[str, Any]:
        device = self.ok("GET", f"/devices/{serial}")
        assert device["current_job_id"] is not None, device
        return dict(self.ok("GET", f"/jobs/{device['current_job_id']}"))


def steps_of(job: dict[str, Any]) -> list[tuple[str, str, int]]:
    """A job's history as (step, state, attempt), skipped steps left out (they send nothing to the device)."""
    return [(s["step"], s["state"], s["attempt"]) for s in job["steps"] if s["state"] != "skipped"]


def prepare(operator: Operator, profile: dict[str, Any]) -> None:
    """Upload the image and create the profile, both through the API."""
    image = operator.ok("POST", f"/images?name={IMAGE_NAME}", raw=IMAGE, status=201)
    assert (image["version"], image["size"]) == (NEW_VERSION, len(IMAGE))
    created = operator.ok("POST", "/profiles", {"image": IMAGE_NAME, "config_template": CONFIG,
                                                "post_template": POST, **profile}, status=201)
    assert created["image"] == IMAGE_NAME


def test_unknown_device_is_claimed_and_provisioned(running_node: Callable[..., RunningNode]) -> None:
    node = running_node()
    operator = Operator(node)
    # A profile that matches nothing: only a claim gives it a device.
    prepare(operator, {"name": "lyon-branch"})
    device = SimulatedDevice(serial="FGL2231A0QZ", pid="C8000V", version="17.3.4a")

    first = simulate([device], node.url(""), patience=1, **AGENT)[0]  # type: ignore[arg-type]
    assert first.outcome == UNCLAIMED, first
    assert device.reloads == 0 and not device.running_config  # nothing was given to a device nobody claimed
    unclaimed = operator.ok("GET", "/devices?state=unclaimed")
    assert [d["serial"] for d in unclaimed["items"]] == ["FGL2231A0QZ"]
    assert unclaimed["items"][0]["pid"] == "C8000V" and unclaimed["items"][0]["current_job_id"] is None

    operator.ok("PUT", "/devices/FGL2231A0QZ/variables", {"variables": {"site": "lyon"}})
    claimed = operator.ok("POST", "/devices/FGL2231A0QZ/claim", {"profile": "lyon-branch"})
    assert (claimed["state"], claimed["profile"]) == ("claimed", "lyon-branch")
    assert operator.ok("GET", "/devices?state=unclaimed")["total"] == 0

    second = simulate([device], node.url(""), **AGENT)[0]  # type: ignore[arg-type]
    assert second.outcome == PROVISIONED, second
    assert second.services == FULL_CONVERSATION
    assert (device.version, device.reloads, device.image_file) == (NEW_VERSION, 1, f"bootflash:{IMAGE_NAME}")
    assert "hostname lyon-FGL2231A0QZ" in device.startup_config
    assert "snmp-server location lyon" in device.startup_config and "logging host 192.0.2.2" in device.startup_config

    job = operator.job_of("FGL2231A0QZ")
    assert (job["state"], job["step"], job["detail"], job["pending"]) == ("completed", "done", "provisioned", None)
    assert steps_of(job) == FULL_JOB
    row = operator.ok("GET", "/devices/FGL2231A0QZ")
    assert (row["state"], row["software_version"], row["profile"]) == ("provisioned", NEW_VERSION, "lyon-branch")
    history = operator.ok("GET", "/devices/FGL2231A0QZ/history")
    assert [(j["id"], j["state"]) for j in history["jobs"]] == [(job["id"], "completed")]
    # The history's steps are the job's, with when each request went out and its answer came.
    history_steps = history["jobs"][0]["steps"]
    assert [{k: s[k] for k in step} for s, step in zip(history_steps, job["steps"], strict=True)] == job["steps"]
    for step in history_steps:
        assert (step["requested_at"], step["answered_at"], step["error"]) == (step["started_at"], step["ended_at"],
                                                                               None), step
        assert step["duration_ms"] is not None and step["duration_ms"] >= 0, step


class HeldAgent(PnpAgent):
    """A device held at its reload after the image install, until the test lets it boot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reloading = threading.Event()
        self.may_boot = threading.Event()

    def _reload(self) -> None:
        self.reloading.set()
        if not self.may_boot.wait(120):
            raise OSError("the test never let the device boot")
        super()._reload()


def test_node_restarted_mid_job_loses_and_repeats_no_step(running_node: Callable[..., RunningNode]) -> None:
    node = running_node()
    operator = Operator(node)
    prepare(operator, {"name": "fleet", "match_pid": "C8000V", "variables": {"site": "paris"}})
    device = SimulatedDevice(serial="FGL2231A1AB", pid="C8000V", version="17.3.4a")
    agent = HeldAgent(device, node.url(""), **AGENT)  # type: ignore[arg-type]
    reports: list[DeviceReport] = []
    runner = threading.Thread(target=lambda: reports.append(agent.run()), name="held-device")
    runner.start()
    restarted: RunningNode | None = None
    try:
        assert agent.reloading.wait(60), "the device never got to the image install"
        before = operator.job_of("FGL2231A1AB")
        assert (before["state"], before["step"], before["pending"]) == ("running", "image.verify", "identify")
        assert steps_of(before) == [*FULL_JOB[:2], ("image.verify", "started", 1)]

        assert node.stop() == 0, node.log_text()
        # A new node process on the same data dir and the same addresses, as after a reboot of the server.
        restarted = start_node(node.data_dir.parent, **{name: node.settings[name] for name in NODE_PORTS})
        assert restarted.data_dir == node.data_dir
        operator = Operator(restarted)
        assert operator.job_of("FGL2231A1AB")["steps"] == before["steps"]

        agent.may_boot.set()
        runner.join(120)
        report = reports[0]
        assert report.outcome == PROVISIONED, (report, restarted.log_text())
        assert report.services == FULL_CONVERSATION  # no request sent twice, none skipped
        assert (device.version, device.reloads) == (NEW_VERSION, 1)
        assert "hostname paris-FGL2231A1AB" in device.startup_config

        after = operator.job_of("FGL2231A1AB")
        assert (after["id"], after["state"]) == (before["id"], "completed")
        assert steps_of(after) == FULL_JOB
        assert after["steps"][:len(before["steps"]) - 1] == before["steps"][:-1]  # history kept as it was
    finally:
        agent.may_boot.set()
        runner.join(120)
        if restarted is not None:
            restarted.stop()
