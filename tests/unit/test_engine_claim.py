"""Claiming: an operator assigns a profile to a device; its next contact is provisioned with it, before any rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from pnp_integrated.models import Device, OutboxEvent, Profile, ProvisioningJob, db
from pnp_integrated.outbox import device_payload
from pnp_integrated.provisioning import engine, operations
from pnp_integrated.provisioning.types import DEVICE_EXPECTED, Action, ActionKind, DeviceIdentity, JobConflict, Outcome


@pytest.fixture
def ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        yield app


def add_profile(name: str, **fields: Any) -> Profile:
    profile = Profile(name=name, **fields)
    db.session.add(profile)
    db.session.commit()
    return profile


def hello(serial: str = "FOC1", pid: str = "ISR4331/K9") -> Action:
    return engine.contact(DeviceIdentity(serial=serial, protocol="pnp", pid=pid))


def device(serial: str = "FOC1") -> Device:
    found = db.session.scalar(select(Device).where(Device.serial == serial))
    assert found is not None
    return found


def claim(serial: str, profile: Profile) -> None:
    operations.claim(device(serial), profile)
    db.session.commit()


def run_to_end(action: Action, serial: str = "FOC1") -> Action:
    while action.kind not in (ActionKind.DONE, ActionKind.FAILED):
        action = engine.report(serial, action.correlator, Outcome(True))
    return action


def test_claimed_device_is_provisioned_with_its_profile_at_next_contact(ctx: Flask) -> None:
    branch = add_profile("branch", config_template="hostname {{ serial }}-branch")
    assert hello().kind is ActionKind.UNCLAIMED
    claim("FOC1", branch)
    assert device().state == "claimed" and device().current_job_id is None
    claimed = [e.payload for e in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == "device.claimed"))]
    assert claimed == [{"device": device_payload(device()), "profile": "branch"}]

    first = hello()
    assert first.kind is ActionKind.IDENTIFY
    config = engine.report("FOC1", first.correlator, Outcome(True))
    assert config.config_text == "hostname FOC1-branch"
    assert run_to_end(config).kind is ActionKind.DONE
    assert device().state == "provisioned" and device().profile is not None and device().profile.name == "branch"


def test_a_claim_wins_over_every_matching_rule(ctx: Flask) -> None:
    add_profile("by-serial", match_serials=["FOC1"], config_template="hostname rule")
    add_profile("fallback", is_default=True, config_template="hostname default")
    chosen = add_profile("chosen", config_template="hostname chosen")
    db.session.add(Device(serial="FOC1", state=DEVICE_EXPECTED))  # pre-registered, never seen yet
    db.session.commit()
    claim("FOC1", chosen)
    config = engine.report("FOC1", hello().correlator, Outcome(True))
    assert config.config_text == "hostname chosen"


def test_claim_refused_while_a_job_runs(ctx: Flask) -> None:
    add_profile("all", is_default=True, config_template="hostname x")
    other = add_profile("other", config_template="hostname y")
    first = hello()
    with pytest.raises(JobConflict, match="cancel that job first"):
        operations.claim(device(), other)
    db.session.rollback()
    assert engine.pending("FOC1") == first  # the running job is untouched
    assert not db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == "device.claimed")).all()


def test_claiming_a_provisioned_device_provisions_it_again_with_the_new_profile(ctx: Flask) -> None:
    add_profile("old", is_default=True, config_template="hostname old")
    new = add_profile("new", config_template="hostname new")
    assert run_to_end(hello()).kind is ActionKind.DONE
    claim("FOC1", new)
    assert hello().kind is ActionKind.IDENTIFY  # not the finished job's DONE
    config = engine.report("FOC1", engine.pending("FOC1").correlator, Outcome(True))  # type: ignore[union-attr]
    assert config.config_text == "hostname new"
    jobs = list(db.session.scalars(select(ProvisioningJob).order_by(ProvisioningJob.id)))
    assert [(j.state, j.profile_id) for j in jobs] == [("completed", jobs[0].profile_id), ("running", new.id)]


def test_reprovision_keeps_the_claimed_profile(ctx: Flask) -> None:
    chosen = add_profile("chosen", config_template="hostname chosen")
    hello()
    claim("FOC1", chosen)
    add_profile("fallback", is_default=True, config_template="hostname default")
    assert run_to_end(hello()).kind is ActionKind.DONE
    job = operations.reprovision(device())
    db.session.commit()
    assert job is not None and job.profile_id == chosen.id


def test_deleting_the_claimed_profile_makes_the_device_unclaimed_again(ctx: Flask) -> None:
    chosen = add_profile("chosen", config_template="hostname chosen")
    hello()
    claim("FOC1", chosen)
    db.session.delete(chosen)
    db.session.commit()
    assert hello().kind is ActionKind.UNCLAIMED
    assert device().state == "unclaimed"
