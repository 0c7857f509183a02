"""Cisco's own published Open PnP samples (tests/data/pnp/cisco-spec, see its SOURCES.md): every device message is
handled as a device expects, and every request this server sends has the shape of Cisco's sample for its service
(namespace, element and attribute names: nothing a device's parser would not know)."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from pnp_integrated.pnp.messages import (
    Backoff,
    Bye,
    CapabilityRequest,
    CliConfigRequest,
    CliExecRequest,
    ConfigUpgradeRequest,
    DeviceInfoRequest,
    FileTransferRequest,
    ImageInstallRequest,
    ReloadRequest,
    SyslogEvent,
    Udi,
    WorkResponse,
    encode,
    parse_device_message,
)

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "pnp" / "cisco-spec"
DEVICE_SAMPLES = sorted(SAMPLES.glob("*.xml"))
UDI = Udi("7206VXR", "", "34835437")
LOGIN = {"username": "usr15", "password": "pwd15"}


@pytest.mark.parametrize("sample", DEVICE_SAMPLES, ids=[p.name for p in DEVICE_SAMPLES])
def test_every_device_sample_is_answered(app_factory: Callable[..., Flask], sample: Path) -> None:
    path = "/pnp/WORK-REQUEST" if "work-request" in sample.name else "/pnp/WORK-RESPONSE"
    answer = app_factory().test_client().post(path, data=sample.read_bytes(), content_type="text/xml")
    assert answer.status_code == 200, answer.data


def test_a_napp_server_answer_without_success_takes_its_transaction_status() -> None:
    message = parse_device_message((SAMPLES / "cisco7206vxr-unknown-napp-server-response.xml").read_bytes())
    assert isinstance(message, WorkResponse) and message.service == "napp-server" and message.success
    failed = (SAMPLES / "cisco7206vxr-unknown-napp-server-response.xml").read_text().replace(
        "TRANSACTION SUCCESSFUL", "TRANSACTION FAILED").replace("CONFIGURATION SUCCESS", "CONFIGURATION FAILED")
    message = parse_device_message(failed)
    assert isinstance(message, WorkResponse) and not message.success
    assert message.error is not None and message.error.code == "PROXY CLIENT CONFIGURATION FAILED"


def test_a_syslog_event_is_logged_line_by_line(app_factory: Callable[..., Flask],
                                                caplog: pytest.LogCaptureFixture) -> None:
    data = (SAMPLES / "cisco7206vxr-unknown-syslog-event.xml").read_bytes()
    message = parse_device_message(data)
    assert isinstance(message, SyslogEvent) and len(message.lines) == 2
    assert parse_device_message(encode(message)) == message
    caplog.set_level(logging.INFO, logger="pnp_integrated")
    logger = logging.getLogger("pnp_integrated")
    logger.addHandler(caplog.handler)
    try:
        answer = app_factory().test_client().post("/pnp/WORK-RESPONSE", data=data, content_type="text/xml")
    finally:
        logger.removeHandler(caplog.handler)
    assert answer.status_code == 200 and answer.data == b""
    assert sum("34835437 syslog: Mar 30 02:37:3" in r.getMessage() for r in caplog.records) == 2


# ---- what the server sends ----------------------------------------------------------------------------------------
def shape(xml: bytes) -> set[str]:
    """Every element path ({namespace}name/...) and every attribute on it, values aside (and the login: ours is the
    profile's, Cisco's sample carries one too)."""
    out: set[str] = set()

    def walk(el: ET.Element, path: str) -> None:
        here = f"{path}/{el.tag}"
        out.add(here)
        out.update(f"{here}@{name}" for name in el.attrib)
        for child in el:
            walk(child, here)

    walk(ET.fromstring(xml), "")
    return out


REQUESTS = {
    "cisco7206vxr-device-info-request.xml": DeviceInfoRequest(UDI, "C-1", "filesystem", credentials=LOGIN),
    "cisco7206vxr-config-upgrade-request.xml": ConfigUpgradeRequest(
        UDI, "C-1", "http://192.0.2.10/cns/config.asp?DeviceID=34835437", apply_to="startup",
        checksum="f4c14103bdb911a7d3982a1fd02cb2df", reload=True, credentials=LOGIN),
    "cisco7206vxr-image-install-request.xml": ImageInstallRequest(
        UDI, "C-1", "http://192.0.2.10/images/c7200.bin", "f4c14103bdb911a7d3982a1fd02cb2df", "disk0:c7200.bin",
        reload=True, credentials=LOGIN),
    "cisco7206vxr-cli-config-request.xml": CliConfigRequest(UDI, "C-1", ("hostname r1", "ip domain-name x"),
                                                            credentials=LOGIN),
    "cisco7206vxr-cli-exec-request.xml": CliExecRequest(UDI, "C-1", "write memory", credentials=LOGIN),
    "cisco7206vxr-file-transfer-request.xml": FileTransferRequest(
        UDI, "C-1", "http://192.0.2.10/resources/a.cfg", "flash:a.cfg", credentials=LOGIN),
    "cisco7206vxr-reload-request.xml": ReloadRequest(UDI, "C-1", "pnp", delay_seconds=120, save_config=True,
                                                     credentials=LOGIN),
    "cisco3945-capability-request.xml": CapabilityRequest(UDI, "C-1", credentials=LOGIN),
    "cisco7206vxr-backoff-request.xml": Backoff(UDI, "C-1", "wait", seconds=3725),
    "cisco7206vxr-work-info-bye.xml": Bye(UDI, "C-1"),
}


# What Cisco's schema for the service defines although its sample does not show it (source A, schema/*_body.xsd).
CU, CLI = "{urn:cisco:pnp:config-upgrade}", "{urn:cisco:pnp:cli-config}"
REQUEST = "/{urn:cisco:pnp}pnp/"
IN_SCHEMA = {
    "cisco7206vxr-config-upgrade-request.xml": {  # pnp_config_upgrade_body.xsd
        f"{REQUEST}{CU}request/{CU}config@details",  # brief | errors | all
        f"{REQUEST}{CU}request/{CU}noReload",  # the choice beside <reload>
    },
    "cisco7206vxr-cli-config-request.xml": {  # pnp_cli_config_body.xsd
        f"{REQUEST}{CLI}request/{CLI}configApply@action-on-fail",  # stop | continue (the default) | rollback
    },
}
NO_RELOAD = ConfigUpgradeRequest(UDI, "C-1", "http://192.0.2.10/cns/config.asp?DeviceID=34835437", credentials=LOGIN)


@pytest.mark.parametrize("sample", sorted(REQUESTS), ids=sorted(REQUESTS))
def test_every_request_we_send_has_the_shape_of_ciscos_sample(sample: str) -> None:
    cisco = shape((SAMPLES / "server-requests" / sample).read_bytes()) | IN_SCHEMA.get(sample, set())
    sent = [REQUESTS[sample], *([NO_RELOAD] if "config-upgrade" in sample else [])]
    for message in sent:
        ours = shape(encode(message))
        assert ours - cisco == set(), f"sent but not in Cisco's {sample}: {sorted(ours - cisco)}"
