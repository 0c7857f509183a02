"""Prime's commands as the gateway applies them: reprovision, cancel, CNS config push/pull and exec.

Each is applied once per command id; a command that cannot be carried out is rejected with a reason Prime can show.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from pnp_integrated import create_app
from pnp_integrated.bus.commands import CommandOutcome, apply_command
from pnp_integrated.devsim.link import CnsLink, connect
from pnp_integrated.models import AuditEntry, OutboxEvent, Profile, ProvisioningJob, db
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DeviceIdentity
from tests.support import CnsNode

CNS_SUBJECTS = ("cisco.mgmt.cns.config.load", "cisco.mgmt.cns.exec.cmd")


def command(type_: str, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": type_, **fields}


def apply(app: Flask, body: dict[str, Any] | bytes) -> CommandOutcome:
    with app.app_context():
        try:
            return apply_command(body if isinstance(body, bytes) else json.dumps(body))
        finally:
            db.session.remove()


def outbox(app: Flask, type_: str) -> list[dict[str, Any]]:
    with app.app_context():
        return [e.payload for e in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == type_)
                                                     .order_by(OutboxEvent.id))]


def jobs(app: Flask, serial: str) -> list[tuple[int, str]]:
    with app.app_context():
        return [(j.id, j.state) for j in db.session.scalars(
            select(ProvisioningJob).join(ProvisioningJob.device).where(engine.Device.serial == serial)
            .order_by(ProvisioningJob.id))]


@pytest.fixture
def provisioning(app: Flask) -> Flask:
    """A profile for FOC1 and FOC1 in the middle of its job."""
    with app.app_context():
        db.session.add(Profile(name="branch", match_serials=["FOC1"], config_template="hostname r1\n"))
        db.session.commit()
        engine.contact(DeviceIdentity(serial="FOC1", protocol="pnp", pid="ISR4331"))
    return app


# ---- job.cancel -----------------------------------------------------------------------------------------------------
def test_job_cancel_cancels_once_and_reports_the_job_failed(provisioning: Flask) -> None:
    app = provisioning
    [(job_id, state)] = jobs(app, "FOC1")
    assert state == "running"
    cancel = command("job.cancel", job=job_id, reason="wrong site")
    assert apply(app, cancel).status == "applied"
    assert jobs(app, "FOC1") == [(job_id, "cancelled")]
    [failed] = outbox(app, "job.failed")
    assert (failed["job"]["id"], failed["job"]["state"], failed["job"]["detail"]) == (job_id, "cancelled",
                                                                                     "wrong site")
    assert apply(app, cancel).status == "duplicate"  # a redelivery
    assert len(outbox(app, "job.failed")) == 1
    again = apply(app, command("job.cancel", job=job_id))  # a new command for a finished job
    assert again.status == "rejected" and "already cancelled" in again.reason
    with app.app_context():
        audits = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "job.cancel")).all()
        assert [(a.actor, a.target) for a in audits] == [("prime", f"job {job_id}")]


def test_job_cancel_by_device_serial(provisioning: Flask) -> None:
    [(job_id, _)] = jobs(provisioning, "FOC1")
    assert apply(provisioning, command("job.cancel", device="FOC1")).status == "applied"
    assert jobs(provisioning, "FOC1") == [(job_id, "cancelled")]


# ---- device.reprovision ---------------------------------------------------------------------------------------------
def test_device_reprovision_starts_one_new_job(provisioning: Flask) -> None:
    app = provisioning
    [(first, _)] = jobs(app, "FOC1")
    busy = apply(app, command("device.reprovision", device="FOC1"))
    assert busy.status == "rejected"
    assert f"job {first}" in busy.reason and "job.cancel first" in busy.reason
    assert apply(app, command("job.cancel", job=first)).status == "applied"

    reprovision = command("device.reprovision", device="FOC1")
    assert apply(app, reprovision).status == "applied"
    assert apply(app, reprovision).status == "duplicate"
    history = jobs(app, "FOC1")
    assert [s for _, s in history] == ["cancelled", "running"]
    new_job = history[1][0]
    steps = [e["job"] for e in outbox(app, "job.step") if e["job"]["id"] == new_job]
    assert steps and steps[0]["step"] == "identify"  # Prime sees the new job start
    with app.app_context():  # the device's next contact gets the new job
        action = engine.contact(DeviceIdentity(serial="FOC1", protocol="pnp", pid="ISR4331"))
        assert action.job_id == new_job


def test_device_reprovision_of_unknown_or_unmatched_devices_is_rejected(app: Flask) -> None:
    unknown = apply(app, command("device.reprovision", device="NOPE1"))
    assert unknown.status == "rejected" and "no device with serial 'NOPE1'" in unknown.reason
    with app.app_context():
        engine.contact(DeviceIdentity(serial="STRAY1", protocol="pnp", pid="C9300"))  # unclaimed
    unmatched = apply(app, command("device.reprovision", device="STRAY1"))
    assert unmatched.status == "rejected" and "no profile matches" in unmatched.reason
    reasons = {e["command_id"]: e["reason"] for e in outbox(app, "command.rejected")}
    assert reasons[unknown.command_id] == unknown.reason and reasons[unmatched.command_id] == unmatched.reason


@pytest.mark.parametrize(("body", "reason"), [
    ({"type": "job.cancel"}, "needs 'job' (a job id) or 'device'"),
    ({"type": "job.cancel", "job": "7"}, "must be a job id"),
    ({"type": "job.cancel", "job": 999}, "no job 999"),
    ({"type": "device.reprovision", "device": ""}, "needs 'device'"),
    ({"type": "cns.config.push", "device": "R1"}, "needs 'identifier'"),
    ({"type": "cns.config.push", "device": "R1", "identifier": "P1", "mode": "merge"}, "'mode' must be"),
    ({"type": "cns.config.push", "device": "R1", "identifier": "P1", "url": "ftp://x/c"}, "http:// or https://"),
    ({"type": "cns.config.push", "device": "R1", "identifier": "P1", "mode": "pull", "config": "x"}, "not 'config'"),
    ({"type": "cns.exec", "device": "R1", "identifier": "E1"}, "needs 'command'"),
    ({"type": "cns.exec", "device": "R1", "identifier": "E1", "command": "show ver\nreload"}, "one exec command"),
])
def test_commands_with_bad_fields_are_rejected_with_the_reason(app: Flask, body: dict[str, Any], reason: str) -> None:
    outcome = apply(app, {"id": str(uuid.uuid4()), **body})
    assert outcome.status == "rejected"
    assert reason in outcome.reason
    assert [e["reason"] for e in outbox(app, "command.rejected")] == [outcome.reason]


# ---- CNS: config push/pull, exec ----------------------------------------------------------------------------------
@pytest.fixture
def cns_node(app_factory: Callable[..., Flask]) -> Iterator[CnsNode]:
    node = CnsNode(app_factory(cns_hello_timeout=2)).start()
    yield node
    node.stop()


def bridge_worker(node: CnsNode) -> Flask:
    """The app of another worker of the same node: the leader that applies Prime's commands is rarely the one
    holding the device's connection."""
    return create_app({**node.app.config["PNP_SETTINGS"], "TESTING": True})


def deliveries(link: CnsLink, count: int) -> list[tuple[str, str]]:
    frames = [link.receive() for _ in range(count)]
    assert all(f.command == "DELIVER" for f in frames), frames
    return [(str(f.get("Subject")), f.body.decode()) for f in frames]


def test_cns_config_push_pull_and_exec_reach_the_device_once(cns_node: CnsNode) -> None:
    link, _ = connect("127.0.0.1", cns_node.plain[0], "R1", subjects=CNS_SUBJECTS)
    leader = bridge_worker(cns_node)
    push = command("cns.config.push", device="R1", identifier="PUSH-1",
                   config="hostname r1\ninterface Gi1\n description uplink\n")
    pull = command("cns.config.push", device="R1", identifier="PULL-1", url="http://prime.example/cfg/r1.txt")
    own = command("cns.config.push", device="R1", identifier="PULL-2", mode="pull")
    run = command("cns.exec", device="R1", identifier="EXEC-1", command="show version")
    with link:
        for body in (push, pull, own, run):
            assert apply(leader, body).status == "applied"
        assert apply(leader, push).status == "duplicate"  # redelivered: not pushed again
        got = deliveries(link, 4)
        assert got[0] == ("cisco.mgmt.cns.config.load",
                          "<config-event><identifier>PUSH-1</identifier><config-id>R1</config-id><config-data>"
                          "<cli>hostname r1</cli><cli>interface Gi1</cli><cli> description uplink</cli></config-data>"
                          "</config-event>")
        assert got[1][0] == "cisco.mgmt.cns.config.load"
        assert "<identifier>PULL-1</identifier>" in got[1][1]
        assert "<url>http://prime.example/cfg/r1.txt</url>" in got[1][1]
        settings = cns_node.settings
        assert f"<url>http://{settings.vip}:{settings.http_port}/cns/config.asp?DeviceID=R1</url>" in got[2][1]
        assert got[3] == ("cisco.mgmt.cns.exec.cmd", "<exec-cmd-event><identifier-exec>EXEC-1</identifier-exec>"
                                                     "<cli-exec>show version</cli-exec></exec-cmd-event>")
        with pytest.raises(TimeoutError):
            link.receive(0.5)  # the duplicate was not delivered
    assert outbox(cns_node.app, "command.rejected") == []


def test_cns_commands_for_an_absent_device_are_rejected(cns_node: CnsNode) -> None:
    leader = bridge_worker(cns_node)
    outcome = apply(leader, command("cns.exec", device="GONE1", identifier="E9", command="show clock"))
    assert outcome.status == "rejected"
    assert "'GONE1' is not connected to this gateway" in outcome.reason and "nothing was sent" in outcome.reason
    # A device that did not subscribe to the exec subject is not sent one either.
    link, _ = connect("127.0.0.1", cns_node.plain[0], "R2", subjects=("cisco.mgmt.cns.config.load",))
    with link:
        partial = apply(leader, command("cns.exec", device="R2", identifier="E10", command="show clock"))
        assert partial.status == "rejected" and "cisco.mgmt.cns.exec.cmd" in partial.reason
    with cns_node.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEntry)) == 0


# ---- failures inside the gateway ------------------------------------------------------------------------------------
def test_a_command_that_trips_a_gateway_bug_is_rejected_not_redelivered_for_ever(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    from pnp_integrated.bus import commands

    def broken(_command: dict[str, Any]) -> str:
        raise KeyError("oops")

    monkeypatch.setitem(commands.HANDLERS, "job.cancel", broken)
    outcome = apply(app, command("job.cancel", job=1))
    assert outcome.status == "rejected" and "could not apply it: KeyError" in outcome.reason
    assert [e["reason"] for e in outbox(app, "command.rejected")] == [outcome.reason]


def test_a_command_met_by_a_database_outage_is_left_for_redelivery(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from pnp_integrated.bus import commands

    def locked(_command: dict[str, Any]) -> str:
        raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

    monkeypatch.setitem(commands.HANDLERS, "job.cancel", locked)
    body = command("job.cancel", job=1)
    with pytest.raises(OperationalError):  # the bridge does not acknowledge it: the broker delivers it again
        apply(app, body)
    assert outbox(app, "command.rejected") == []
    monkeypatch.setitem(commands.HANDLERS, "job.cancel", lambda _c: "job 1")
    assert apply(app, body).status == "applied"  # the redelivery, once the database is back
