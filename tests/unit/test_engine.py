"""The provisioning engine as an adapter sees it: contact, report, pending, rendered_config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from pnp_integrated.models import Device, Image, JobStep, OutboxEvent, Profile, ProvisioningJob, db
from pnp_integrated.provisioning import engine, operations
from pnp_integrated.provisioning.types import Action, ActionKind, DeviceFacts, DeviceIdentity, JobConflict, Outcome


@pytest.fixture
def ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        yield app


def add_profile(**fields: Any) -> Profile:
    fields.setdefault("name", f"p{len(list(db.session.scalars(select(Profile)))) + 1}")
    profile = Profile(**fields)
    db.session.add(profile)
    db.session.commit()
    return profile


def add_image(name: str = "ios.bin", version: str = "17.9.4", size: int = 1000) -> Image:
    image = Image(name=name, filename=name, version=version, md5="0" * 32, size=size)
    db.session.add(image)
    db.session.commit()
    return image


def hello(serial: str = "FOC1", pid: str = "ISR4331/K9", **kw: Any) -> Action:
    return engine.contact(DeviceIdentity(serial=serial, protocol="pnp", pid=pid, address="10.0.0.7", **kw))


def ok(action: Action, serial: str = "FOC1", **facts: Any) -> Action:
    return engine.report(serial, action.correlator, Outcome(True, facts=DeviceFacts(**facts) if facts else None))


def events(type_: str) -> list[dict[str, Any]]:
    return [e.payload for e in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type == type_)
                                                  .order_by(OutboxEvent.id))]


def test_unclaimed_device_waits_and_is_reported_once(ctx: Flask) -> None:
    first = hello()
    again = hello()
    assert first.kind is ActionKind.UNCLAIMED and first.wait_seconds > 0
    assert again.kind is ActionKind.UNCLAIMED
    device = db.session.scalar(select(Device).where(Device.serial == "FOC1"))
    assert device is not None and device.state == "unclaimed" and device.address == "10.0.0.7"
    unclaimed = events("device.unclaimed")
    assert len(unclaimed) == 1 and unclaimed[0]["device"]["serial"] == "FOC1"
    assert engine.rendered_config("FOC1") is None


def test_profile_match_order_serial_then_pid_then_default(ctx: Flask) -> None:
    add_profile(name="fallback", is_default=True, config_template="hostname default")
    add_profile(name="by-pid", match_pid="ISR43*", config_template="hostname pid")
    add_profile(name="by-regex", match_pid="re:C9[23]00-.*", config_template="hostname regex")
    add_profile(name="by-serial", match_serials=["FOC9"], match_pid="NONE", config_template="hostname serial")
    for serial, pid, expected in (("FOC9", "ISR4331/K9", "by-serial"), ("FOC1", "isr4351/k9", "by-pid"),
                                  ("FOC2", "C9300-24T", "by-regex"), ("FOC3", "ASR1001", "fallback")):
        hello(serial, pid)
        device = db.session.scalar(select(Device).where(Device.serial == serial))
        assert device is not None and device.profile is not None and device.profile.name == expected, serial


def test_full_job_without_image_and_repeated_requests(ctx: Flask) -> None:
    add_profile(match_serials=["FOC1"], config_template="hostname {{ site }}-{{ serial }}\n",
                variables={"site": "paris"}, credentials={"username": "admin", "password": "s3cret"})
    first = hello()
    assert first.kind is ActionKind.IDENTIFY and first.correlator
    assert hello() == first  # the device asking again gets the very same request
    assert engine.pending("FOC1") == first

    config = ok(first, version="17.9.4")
    assert config.kind is ActionKind.CONFIG and config.correlator != first.correlator
    assert config.config_text == "hostname paris-FOC1\n"
    assert config.credentials == {"username": "admin", "password": "s3cret"}
    assert engine.rendered_config("FOC1", config.correlator) == "hostname paris-FOC1\n"
    assert engine.rendered_config("FOC1", first.correlator) is None

    save = ok(config)
    assert save.kind is ActionKind.SAVE  # post_config skipped: the profile has no post-PnP template
    done = ok(save)
    assert done.kind is ActionKind.DONE
    assert hello().kind is ActionKind.DONE

    job = db.session.scalar(select(ProvisioningJob))
    assert job is not None and job.state == "completed"
    assert [(s.step, s.state) for s in job.steps] == [
        ("identify", "succeeded"), ("image", "skipped"), ("image.verify", "skipped"), ("config", "succeeded"),
        ("post_config", "skipped"), ("save", "succeeded")]
    assert job.device.state == "provisioned" and job.device.software_version == "17.9.4"
    completed = events("job.completed")
    assert len(completed) == 1 and completed[0]["job"]["profile"] == "p1"
    assert completed[0]["job"]["device"]["serial"] == "FOC1"
    assert {e["job"]["state"] for e in events("job.step")} == {"started", "succeeded", "skipped"}


def test_stale_correlator_does_not_advance(ctx: Flask) -> None:
    add_profile(is_default=True, config_template="hostname x")
    first = hello()
    config = ok(first)
    replay = ok(first)  # the same success delivered twice
    assert replay == config
    wrong = engine.report("FOC1", "job999-1-zzz", Outcome(True))
    assert wrong == config
    job = db.session.scalar(select(ProvisioningJob))
    assert job is not None and job.step == "config"
    assert sum(1 for s in job.steps if s.state == "stale") == 2


def test_failure_retries_then_fails_with_reason(ctx: Flask) -> None:
    add_profile(is_default=True, config_template="hostname x")
    action = ok(hello())
    correlators = set()
    for _ in range(3):
        correlators.add(action.correlator)
        action = engine.report("FOC1", action.correlator, Outcome(False, detail="% Invalid input", error_code="1413"))
    assert len(correlators) == 3  # every attempt is a new request
    assert action.kind is ActionKind.FAILED
    assert "config" in action.detail and "% Invalid input (error 1413)" in action.detail
    job = db.session.scalar(select(ProvisioningJob))
    assert job is not None and job.state == "failed" and job.failed_step == "config"
    assert [s.attempt for s in job.steps if s.step == "config"] == [1, 2, 3]
    failed = events("job.failed")
    assert len(failed) == 1 and failed[0]["job"]["step"] == "config"
    assert hello().kind is ActionKind.FAILED


def test_image_install_then_verify(ctx: Flask) -> None:
    image = add_image(size=5000)
    add_profile(is_default=True, image_id=image.id, config_template="hostname x")
    install = ok(hello(), version="16.9.5", filesystems={"bootflash:": 900_000, "nvram:": 100})
    assert install.kind is ActionKind.IMAGE_INSTALL and install.image is not None
    assert (install.image.path, install.image.size, install.image.version, install.image.reload) == (
        "/images/ios.bin", 5000, "17.9.4", True)
    assert install.image.filesystem == "bootflash:"
    verify = ok(install)
    assert verify.kind is ActionKind.IDENTIFY and verify.step == "image.verify"
    config = ok(verify, version="17.09.04")
    assert config.kind is ActionKind.CONFIG


def test_image_not_running_after_install_is_a_failure(ctx: Flask) -> None:
    image = add_image()
    add_profile(is_default=True, image_id=image.id, config_template="hostname x")
    verify = ok(ok(hello(), version="16.9.5"))
    retry = ok(verify, version="16.9.5")
    assert retry.kind is ActionKind.IDENTIFY and retry.correlator != verify.correlator
    job = db.session.scalar(select(ProvisioningJob))
    assert job is not None and "runs version 16.9.5, expected 17.9.4" in job.steps[-2].detail


def test_image_skipped_when_version_matches_and_fails_without_space(ctx: Flask) -> None:
    image = add_image(size=10_000)
    add_profile(is_default=True, image_id=image.id, config_template="hostname x")
    assert ok(hello("A"), "A", version="17.09.04").kind is ActionKind.CONFIG
    action = ok(hello("B"), "B", version="16.9.5", filesystems={"flash:": 4096})
    assert action.kind is ActionKind.FAILED
    assert "not enough free space" in action.detail and "4096 bytes on flash:" in action.detail


def test_undefined_template_variable_fails_the_job_clearly(ctx: Flask) -> None:
    add_profile(is_default=True, config_template="hostname {{ site_name }}")
    action = ok(hello())
    assert action.kind is ActionKind.FAILED and "site_name" in action.detail


def test_device_variables_override_profile_variables(ctx: Flask) -> None:
    add_profile(is_default=True, config_template="hostname {{ hostname }}", variables={"hostname": "generic"})
    hello("B")
    device = db.session.scalar(select(Device).where(Device.serial == "B"))
    assert device is not None
    device.variables = {"hostname": "edge-b"}
    db.session.commit()
    assert engine.rendered_config("B") == "hostname edge-b"
    assert engine.rendered_config("nobody") is None


def test_cancelled_job_answers_cancelled(ctx: Flask) -> None:
    add_profile(is_default=True)
    hello()
    job = db.session.scalar(select(ProvisioningJob))
    assert job is not None
    operations.cancel_job(job, "cancelled by operator")
    db.session.commit()
    assert hello().kind is ActionKind.CANCELLED
    with pytest.raises(JobConflict):
        operations.cancel_job(job, "again")


def test_bad_serial_is_refused(ctx: Flask) -> None:
    with pytest.raises(ValueError, match="serial"):
        engine.contact(DeviceIdentity(serial="", protocol="pnp"))


def test_new_app_on_the_same_database_continues_the_job(app_factory: Callable[..., Flask], tmp_path: Path) -> None:
    first_app = app_factory(data_dir=tmp_path / "node")
    with first_app.app_context():
        add_profile(is_default=True, config_template="hostname x")
        config = ok(hello())
    second_app = app_factory(data_dir=tmp_path / "node")
    with second_app.app_context():
        assert hello() == config
        assert ok(config).kind is ActionKind.SAVE
        assert db.session.scalar(select(JobStep).order_by(JobStep.id.desc())).step == "save"  # type: ignore[union-attr]


def test_profile_deleted_mid_job_fails_the_job(ctx: Flask) -> None:
    profile = add_profile(is_default=True, config_template="hostname x")
    first = hello()
    db.session.delete(profile)
    db.session.commit()
    action = ok(first)
    assert action.kind is ActionKind.FAILED and "profile was deleted" in action.detail
