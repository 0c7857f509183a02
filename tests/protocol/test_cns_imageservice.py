"""POST /cns/HttpMsgDispatcher: the CNS image agent's inventory and status messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from pnp_integrated.models import Device, Image, OutboxEvent, Profile, ProvisioningJob, db

URL = "/cns/HttpMsgDispatcher"


def inventory(serial: str, image: str = "old.bin", free: int = 10**9) -> str:
    return (f'<image-inventory device-id="{serial}"><image name="{image}" md5="x"/>'
            f'<filesystem name="flash:" free="{free}"/></image-inventory>')


def post(client: FlaskClient, body: str) -> tuple[int, ET.Element]:
    resp = client.post(URL, data=body, content_type="application/xml")
    assert resp.mimetype == "application/xml"
    return resp.status_code, ET.fromstring(resp.data)


def add_profile(app: Flask, serial: str, *, with_image: bool) -> None:
    with app.app_context():
        image = None
        if with_image:
            image = Image(name="ios-17.3", filename="c1100-17.3.bin", version="17.3.1", md5="a" * 32, size=5000)
            db.session.add(image)
            db.session.flush()
        db.session.add(Profile(name=f"p-{serial}", match_serials=[serial], image_id=image.id if image else None,
                               config_template="hostname {{ serial }}\n", reload_after_install=True))
        db.session.commit()


def job_step(app: Flask, serial: str) -> str:
    with app.app_context():
        device = db.session.scalars(select(Device).where(Device.serial == serial)).one()
        job = db.session.get(ProvisioningJob, device.current_job_id)
        assert job is not None
        return job.step


@pytest.mark.parametrize("body, why", [
    ("<image-inventory device-id='x'>", "not well-formed"),
    ("", "empty"),
    ("<image-delete device-id='x'/>", "unknown root"),
    ("<image-inventory/>", "no device-id"),
    ('<!DOCTYPE a [<!ENTITY e "x">]><image-inventory device-id="x">&e;</image-inventory>', "entities"),
    ('<image-status device-id="x"><state>exploded</state></image-status>', "unknown state"),
])
def test_bad_messages_are_400_with_a_reason(client: FlaskClient, body: str, why: str) -> None:
    status, doc = post(client, body)
    assert status == 400, why
    assert doc.tag == "error" and doc.text


def test_unclaimed_device_gets_nothing_and_is_reported(app: Flask, client: FlaskClient) -> None:
    status, doc = post(client, inventory("NOBODY1"))
    assert status == 200 and [child.tag for child in doc] == ["none"]
    with app.app_context():
        types = [e.type for e in db.session.scalars(select(OutboxEvent))]
    assert "device.unclaimed" in types


def test_inventory_leads_to_a_download_on_the_vip_and_status_advances_the_job(app: Flask,
                                                                              client: FlaskClient) -> None:
    add_profile(app, "IMG1", with_image=True)
    status, doc = post(client, inventory("IMG1"))
    assert status == 200
    download, activate = doc.find("download"), doc.find("activate")
    assert download is not None and activate is not None and activate.get("reload") == "true"
    settings = app.extensions["pnp_gateway"].settings
    assert download.get("url") == f"http://{settings.vip}:{settings.http_port}/images/c1100-17.3.bin"
    assert (download.get("md5"), download.get("size"), download.get("destination")) == (
        "a" * 32, "5000", "flash:c1100-17.3.bin")
    identifier = doc.get("identifier")
    assert identifier and job_step(app, "IMG1") == "image"

    # asking again gives the same request (no second job step)
    assert post(client, inventory("IMG1"))[1].get("identifier") == identifier

    status, ack = post(client, f'<image-status device-id="IMG1" identifier="{identifier}">'
                               f"<state>downloading</state></image-status>")
    assert (status, ack.tag) == (200, "ack") and job_step(app, "IMG1") == "image"
    status, ack = post(client, f'<image-status device-id="IMG1" identifier="{identifier}">'
                               f"<state>activated</state></image-status>")
    assert (status, ack.tag) == (200, "ack")
    assert job_step(app, "IMG1") == "image.verify"  # the device reloads into the new image


def test_device_already_on_the_image_skips_the_install(app: Flask, client: FlaskClient) -> None:
    add_profile(app, "IMG2", with_image=True)
    status, doc = post(client, inventory("IMG2", image="c1100-17.3.bin"))
    assert status == 200 and [child.tag for child in doc] == ["none"]
    assert job_step(app, "IMG2") == "config"


def test_not_enough_flash_fails_the_job_with_the_reason(app: Flask, client: FlaskClient) -> None:
    add_profile(app, "IMG3", with_image=True)
    status, doc = post(client, inventory("IMG3", free=10))
    assert status == 200 and doc.find("download") is None
    with app.app_context():
        device = db.session.scalars(select(Device).where(Device.serial == "IMG3")).one()
        job = db.session.get(ProvisioningJob, device.current_job_id)
        assert job is not None and job.state == "failed" and "free space" in job.detail
