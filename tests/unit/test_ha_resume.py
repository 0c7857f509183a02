"""A node that becomes ACTIVE sends again the CNS pushes the failed node may have sent into the void."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask

from pnp_integrated.cns.messages import CONFIG_LOAD
from pnp_integrated.cns.worker import CnsWorker
from pnp_integrated.context import gateway_state
from pnp_integrated.ha.resume import resume_unfinished
from pnp_integrated.models import DeviceSession, Profile, db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import ActionKind, DeviceFacts, DeviceIdentity, Outcome


@dataclass
class RecordingConnection:
    """Stands for a device's live CNS connection in this worker: records what is pushed to it."""

    pushed: list[tuple[str, str]] = field(default_factory=list)

    def push(self, subject: str, xml: str) -> bool:
        self.pushed.append((subject, xml))
        return True


def start_job_at_config(serial: str, protocol: str) -> str:
    """A job that answered its identify step: it now waits on its CONFIG request; returns that correlator."""
    first = engine.contact(DeviceIdentity(serial=serial, protocol=protocol))
    assert first.kind == ActionKind.IDENTIFY
    action = engine.report(serial, first.correlator, Outcome(True, facts=DeviceFacts(version="16.9.1")))
    assert action.kind == ActionKind.CONFIG
    return action.correlator


def test_pending_push_is_sent_again_to_cns_devices_connected_here(app_factory: Callable[..., Flask]) -> None:
    app = app_factory(node_name="prime-b")
    worker = CnsWorker(app)
    gateway_state(app).cns_worker = worker
    connection = RecordingConnection()
    with app.app_context():
        db.session.add(Profile(name="day0", match_serials=["CNS1", "CNS2", "PNP1"], config_template="hostname x\n",
                               post_template="ntp server 192.0.2.1\n"))
        db.session.commit()
        correlator = start_job_at_config("CNS1", "cns")
        start_job_at_config("CNS2", "cns")  # its device has not reconnected yet
        start_job_at_config("PNP1", "pnp")  # Open PnP devices ask for their work themselves
        session = DeviceSession(device_key="CNS1", protocol="cns", node="prime-b", worker_pid=worker.pid,
                                subjects=[CONFIG_LOAD])
        elsewhere = DeviceSession(device_key="CNS2", protocol="cns", node="prime-a", worker_pid=1)
        db.session.add_all([session, elsewhere])
        db.session.commit()
        worker.connections[session.token] = connection  # type: ignore[assignment]

    summary = resume_unfinished(app)

    assert (summary.unfinished, summary.pushed, summary.waiting) == (3, 1, 2)
    assert len(connection.pushed) == 1
    subject, xml = connection.pushed[0]
    assert subject == CONFIG_LOAD
    assert correlator in xml  # the very request the job waits on, so a repeated answer is not applied twice
    assert gateway_state(app).settings.vip in xml  # the device pulls its configuration through the VIP
