"""Two workers (two apps, separate sessions and pools) racing on the same device, on real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from pnp_integrated.models import Device, JobStep, OutboxEvent, Profile, ProvisioningJob, db
from pnp_integrated.provisioning import engine, operations
from pnp_integrated.provisioning.types import ActionKind, DeviceIdentity, Outcome

pytestmark = pytest.mark.postgres

RACERS = 8


def race(apps: list[Flask], call: Callable[[], Any]) -> list[Any]:
    """Run ``call`` in RACERS threads at once, each in its own app context (own session), alternating apps."""
    barrier = threading.Barrier(RACERS)
    results: list[Any] = [None] * RACERS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        with apps[i % len(apps)].app_context():
            barrier.wait()
            try:
                results[i] = call()
            except BaseException as exc:  # surfaced below: a thread must not swallow a failure
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.fixture
def workers(app_factory: Callable[..., Flask], postgres_url: str) -> list[Flask]:
    first = app_factory(database_url=postgres_url)
    second = app_factory(database_url=postgres_url)
    with first.app_context():
        db.session.add(Profile(name="all", is_default=True, config_template="hostname {{ serial }}"))
        db.session.commit()
    return [first, second]


def test_first_contacts_create_one_device_and_one_job(workers: list[Flask]) -> None:
    identity = DeviceIdentity(serial="FDO1", protocol="pnp", pid="C9300-24T")
    actions = race(workers, lambda: engine.contact(identity))
    assert all(a.kind is ActionKind.IDENTIFY for a in actions)
    assert len({a.correlator for a in actions}) == 1
    with workers[0].app_context():
        assert db.session.scalar(select(func.count()).select_from(Device)) == 1
        assert db.session.scalar(select(func.count()).select_from(ProvisioningJob)) == 1
        assert db.session.scalar(select(func.count()).select_from(JobStep)) == 1


def test_duplicate_reports_advance_the_job_once(workers: list[Flask]) -> None:
    with workers[0].app_context():
        identify = engine.contact(DeviceIdentity(serial="FDO2", protocol="cns"))
    actions = race(workers, lambda: engine.report("FDO2", identify.correlator, Outcome(True)))
    assert {a.kind for a in actions} == {ActionKind.CONFIG}
    assert len({a.correlator for a in actions}) == 1
    with workers[1].app_context():
        job = db.session.scalar(select(ProvisioningJob))
        assert job is not None and job.step == "config" and job.attempt == 1
        states = [(s.step, s.state) for s in job.steps]
        assert states.count(("identify", "succeeded")) == 1
        assert states.count(("config", "started")) == 1
        assert sum(1 for _, state in states if state == "stale") == RACERS - 1
        started = [e for e in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == "job.step"))
                   if e.payload["job"]["state"] == "started" and e.payload["job"]["step"] == "config"]
        assert len(started) == 1


def test_concurrent_failures_consume_one_attempt(workers: list[Flask]) -> None:
    with workers[0].app_context():
        config = engine.report("FDO3", engine.contact(DeviceIdentity(serial="FDO3", protocol="pnp")).correlator,
                               Outcome(True))
    race(workers, lambda: engine.report("FDO3", config.correlator, Outcome(False, detail="boom")))
    with workers[0].app_context():
        job = db.session.scalar(select(ProvisioningJob))
        assert job is not None and job.state == "running" and job.step == "config" and job.attempt == 2


def test_unclaimed_device_is_reported_once_under_racing_contacts(app_factory: Callable[..., Flask],
                                                                  postgres_url: str) -> None:
    apps = [app_factory(database_url=postgres_url), app_factory(database_url=postgres_url)]
    actions = race(apps, lambda: engine.contact(DeviceIdentity(serial="LOST1", protocol="cns")))
    assert {a.kind for a in actions} == {ActionKind.UNCLAIMED}
    with apps[0].app_context():
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                 .where(OutboxEvent.type == "device.unclaimed")) == 1


def test_a_restarted_node_continues_the_job(workers: list[Flask], app_factory: Callable[..., Flask],
                                            postgres_url: str) -> None:
    with workers[0].app_context():
        identify = engine.contact(DeviceIdentity(serial="FDO4", protocol="pnp"))
        config = engine.report("FDO4", identify.correlator, Outcome(True))
    restarted = app_factory(database_url=postgres_url)
    with restarted.app_context():
        assert engine.contact(DeviceIdentity(serial="FDO4", protocol="pnp")) == config
        assert engine.rendered_config("FDO4", config.correlator) == "hostname FDO4"
        save = engine.report("FDO4", config.correlator, Outcome(True))
        assert engine.report("FDO4", save.correlator, Outcome(True)).kind is ActionKind.DONE


def test_a_claim_racing_contacts_gives_one_job_with_the_claimed_profile(app_factory: Callable[..., Flask],
                                                                       postgres_url: str) -> None:
    apps = [app_factory(database_url=postgres_url), app_factory(database_url=postgres_url)]
    with apps[0].app_context():
        db.session.add(Profile(name="claimed", config_template="hostname {{ serial }}-claimed"))
        db.session.commit()
        assert engine.contact(DeviceIdentity(serial="FDO5", protocol="pnp")).kind is ActionKind.UNCLAIMED
    turn = iter(range(RACERS))
    lock = threading.Lock()

    def claim_or_contact() -> ActionKind | None:
        with lock:
            mine = next(turn)
        if mine == 0:  # one operator claims while the device keeps asking
            device = db.session.scalar(select(Device).where(Device.serial == "FDO5"))
            profile = db.session.scalar(select(Profile).where(Profile.name == "claimed"))
            assert device is not None and profile is not None
            operations.claim(device, profile)
            db.session.commit()
            return None
        return engine.contact(DeviceIdentity(serial="FDO5", protocol="pnp")).kind

    kinds = {k for k in race(apps, claim_or_contact) if k is not None}
    assert kinds <= {ActionKind.UNCLAIMED, ActionKind.IDENTIFY}
    with apps[1].app_context():
        identify = engine.contact(DeviceIdentity(serial="FDO5", protocol="pnp"))
        assert identify.kind is ActionKind.IDENTIFY
        assert engine.report("FDO5", identify.correlator, Outcome(True)).config_text == "hostname FDO5-claimed"
        assert db.session.scalar(select(func.count()).select_from(ProvisioningJob)) == 1
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                 .where(OutboxEvent.type == "device.claimed")) == 1


def _other_worker_moves_the_job_on(monkeypatch: pytest.MonkeyPatch, other: Flask, serial: str, name: str
                                   ) -> list[int]:
    """While this call sits between its read and its write, the other worker moves the job on and commits (once)."""
    moved: list[int] = []
    original = getattr(engine, name)

    def interfering(*args: Any, **kwargs: Any) -> Any:
        if not moved:
            with other.app_context():
                job = db.session.scalar(select(ProvisioningJob).join(Device, Device.current_job_id ==
                                                                     ProvisioningJob.id).where(Device.serial == serial))
                assert job is not None
                job.correlator = "moved-on"  # the ORM's own version check bumps the version
                db.session.commit()
                moved.append(job.id)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, name, interfering)
    return moved


def test_a_report_that_lost_a_race_does_not_overwrite_the_winner(workers: list[Flask],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with workers[0].app_context():
        first = engine.contact(DeviceIdentity(serial="RACE1", protocol="pnp"))
        moved = _other_worker_moves_the_job_on(monkeypatch, workers[1], "RACE1", "_advance")
        after = engine.report("RACE1", first.correlator, Outcome(True))
        # Replayed from a fresh read: the winner's request is pending, and this report answers nothing any more.
        assert moved and after.correlator == "moved-on" and after.kind is ActionKind.IDENTIFY
        states = db.session.scalars(select(JobStep.state).where(JobStep.step == "identify").order_by(JobStep.id))
        assert list(states) == ["started", "stale"]


def test_a_repeated_question_that_lost_a_race_keeps_the_winners_request(workers: list[Flask],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    identity = DeviceIdentity(serial="RACE2", protocol="pnp")
    with workers[0].app_context():
        engine.contact(identity, device_correlator="D-1")
        moved = _other_worker_moves_the_job_on(monkeypatch, workers[1], "RACE2", "_with_device_correlator")
        again = engine.contact(identity, device_correlator="D-2")
        assert moved and again.correlator == "moved-on"
        job = db.session.get(ProvisioningJob, moved[0])
        assert job is not None and job.correlator == "moved-on"
        assert "D-2" in job.pending_request["device_correlators"]  # the replay noted the device's name again
