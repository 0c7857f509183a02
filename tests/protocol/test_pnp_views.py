"""The Open PnP endpoints through the Flask app: conversations with the engine, errors, limits."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from pnp_integrated.models import Device, JobStep, OutboxEvent, Profile, db
from pnp_integrated.pnp.messages import (
    Backoff,
    Bye,
    CliConfigRequest,
    CliExecRequest,
    ConfigUpgradeRequest,
    DeviceInfo,
    DeviceInfoRequest,
    ErrorInfo,
    Fault,
    FileSystem,
    ServerMessage,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)
from tests.support import BILLION_LAUGHS, CSR_WORK_REQUEST

UDI = Udi("ISR4451-X/K9", "V01", "FOC2001X0AB")
INFO = DeviceInfo(version="17.3.4a", image_file="bootflash:packages.conf",
                  filesystems=(FileSystem("bootflash", "disk", 8_000_000_000, 6_000_000_000),))


def add_profile(app: Flask, **fields: object) -> None:
    with app.app_context():
        db.session.add(Profile(**{"name": "p", "match_serials": [UDI.serial], **fields}))
        db.session.commit()


def work_request(client: FlaskClient, correlator: str = "CiscoPnP-1.0-1", auth: bool = False,
                 base_url: str = "http://localhost") -> ServerMessage:
    reply = client.post("/pnp/WORK-REQUEST", data=encode(WorkRequest(UDI, correlator, auth_required=auth)),
                        content_type="text/xml", base_url=base_url)
    assert reply.status_code == 200, reply.data
    assert reply.content_type.startswith("text/xml")
    return parse_server_message(reply.data)


def work_response(client: FlaskClient, message: WorkResponse | Fault) -> ServerMessage:
    reply = client.post("/pnp/WORK-RESPONSE", data=encode(message), content_type="text/xml")
    assert reply.status_code == 200, reply.data
    return parse_server_message(reply.data)


def ok(request: ServerMessage, **fields: object) -> WorkResponse:
    return WorkResponse(UDI, request.service, request.correlator, True, **fields)  # type: ignore[union-attr]


def test_hello_answers_empty(client: FlaskClient) -> None:
    reply = client.get("/pnp/HELLO")
    assert (reply.status_code, reply.data) == (200, b"")
    assert client.post("/pnp/HELLO", data=b"<info/>").status_code == 200


def test_unknown_device_is_recorded_as_unclaimed_and_backed_off(app: Flask, client: FlaskClient) -> None:
    reply = client.post("/pnp/WORK-REQUEST", data=CSR_WORK_REQUEST, content_type="text/xml")
    message = parse_server_message(reply.data)
    assert isinstance(message, Backoff) and message.seconds and not message.terminate
    assert message.correlator == "CiscoPnP-1.0-R33.200930-I1-P592-T43891-2"
    with app.app_context():
        device = db.session.scalar(select(Device).where(Device.serial == "99CWJ5DOLWQ"))
        assert device is not None and device.state == "unclaimed" and device.protocol == "pnp"
        assert device.udi == "PID:CSR1000V,VID:V00,SN:99CWJ5DOLWQ"
        events = db.session.scalars(select(OutboxEvent.type)).all()
        assert "device.unclaimed" in events


def test_full_conversation_with_config_post_config_and_save(app: Flask, client: FlaskClient) -> None:
    add_profile(app, config_template="hostname {{ serial }}\n", post_template="ntp server 192.0.2.1\n")
    first = work_request(client)
    assert isinstance(first, DeviceInfoRequest)
    assert first.correlator == "CiscoPnP-1.0-1"  # the device's own, copied back as every PnP server does
    again = work_request(client, "CiscoPnP-1.0-2")
    assert again == replace(first, correlator="CiscoPnP-1.0-2")  # asking again: the same request
    assert work_response(client, ok(again, device_info=INFO)) == Bye(UDI, "CiscoPnP-1.0-2")

    config = work_request(client, "CiscoPnP-1.0-3")
    assert isinstance(config, ConfigUpgradeRequest)
    url = urlsplit(config.location)
    assert url.path == "/cns/config.asp" and parse_qs(url.query)["Identifier"] != [config.correlator]
    fetched = client.get(f"{url.path}?{url.query}")
    assert (fetched.status_code, fetched.data) == (200, b"hostname FOC2001X0AB\n")
    assert fetched.content_type.startswith("text/plain")
    work_response(client, ok(config))

    post = work_request(client, "CiscoPnP-1.0-4")
    assert isinstance(post, CliConfigRequest) and post.lines == ("ntp server 192.0.2.1",)
    work_response(client, ok(post))
    save = work_request(client, "CiscoPnP-1.0-5")
    assert isinstance(save, CliExecRequest) and save.command == "write memory"
    work_response(client, ok(save, exec_output="[OK]"))

    done = work_request(client, "CiscoPnP-1.0-6")
    assert isinstance(done, Backoff) and done.terminate and "complete" in done.reason
    assert done.correlator == "CiscoPnP-1.0-6"
    with app.app_context():
        device = db.session.scalar(select(Device).where(Device.serial == UDI.serial))
        assert device is not None and device.state == "provisioned" and device.software_version == "17.3.4a"


def test_stale_correlator_does_not_advance(app: Flask, client: FlaskClient) -> None:
    add_profile(app, config_template="hostname r1\n")
    first = work_request(client)
    stale = WorkResponse(UDI, "device-info", "job999-1-000000", True, device_info=INFO)
    assert isinstance(work_response(client, stale), Bye)
    assert work_request(client, "CiscoPnP-1.0-2") == replace(first, correlator="CiscoPnP-1.0-2")
    work_response(client, ok(first, device_info=INFO))  # under the name it was first asked: it answers the request
    # The same answer again (a retransmission) is stale now: the job stays on the config step.
    config = work_request(client, "CiscoPnP-1.0-3")
    assert isinstance(config, ConfigUpgradeRequest)
    work_response(client, ok(first, device_info=INFO))
    assert work_request(client, "CiscoPnP-1.0-4") == replace(config, correlator="CiscoPnP-1.0-4")


def test_an_answer_under_the_name_of_an_earlier_question_of_another_request_is_stale(
    app: Flask, client: FlaskClient
) -> None:
    add_profile(app, config_template="hostname r1\n", post_template="ntp server 192.0.2.1\n")
    work_response(client, ok(work_request(client, "D-1"), device_info=INFO))
    config = work_request(client, "D-2")
    assert isinstance(config, ConfigUpgradeRequest)
    # A device whose answer to the configuration was lost sends it again after it was recorded: the retransmission
    # must not count as the answer to the next request (the post-PnP configuration).
    work_response(client, ok(config))
    post = work_request(client, "D-3")
    assert isinstance(post, CliConfigRequest)
    work_response(client, ok(config))
    assert work_request(client, "D-4") == replace(post, correlator="D-4")
    with app.app_context():
        states = db.session.scalars(select(JobStep.state).where(JobStep.step == "post_config")).all()
    assert states == ["started", "stale"]  # recorded in the job's history, and nothing else


def test_device_error_retries_then_fails_with_the_reason(app: Flask, client: FlaskClient) -> None:
    add_profile(app, config_template="hostname r1\n")
    work_response(client, ok(work_request(client), device_info=INFO))
    correlators = set()
    for n in range(3):
        request = work_request(client, f"CiscoPnP-1.0-{n}")
        assert isinstance(request, ConfigUpgradeRequest)
        correlators.add(parse_qs(urlsplit(request.location).query)["Identifier"][0])
        work_response(client, WorkResponse(UDI, "config-upgrade", request.correlator, False,
                                           ErrorInfo("1412", "Invalid input", "PnP Service Error 1412")))
    assert len(correlators) == 3  # every retry is a new request (the configuration it fetches is named anew)
    final = work_request(client, "CiscoPnP-1.0-9")
    assert isinstance(final, Backoff) and final.terminate
    assert "Invalid input" in final.reason and "1412" in final.reason


def test_fault_fails_the_pending_request(app: Flask, client: FlaskClient) -> None:
    add_profile(app)
    first = work_request(client)
    assert work_response(client, Fault(UDI, "XSVC:Client", "An unknown XML tag has been received")) == Bye(UDI, "")
    retry = work_request(client, "CiscoPnP-1.0-2")
    assert isinstance(first, DeviceInfoRequest) and isinstance(retry, DeviceInfoRequest)
    with app.app_context():
        steps = db.session.execute(select(JobStep.state, JobStep.attempt, JobStep.detail)
                                   .where(JobStep.step == "identify").order_by(JobStep.id)).all()
    assert [(state, attempt) for state, attempt, _ in steps] == [("failed", 1), ("started", 2)]
    assert "An unknown XML tag" in steps[0][2]


def test_credentials_only_when_the_device_requires_auth(app: Flask, client: FlaskClient) -> None:
    add_profile(app, credentials={"username": "pnp", "password": "pw"})
    assert work_request(client).credentials is None  # type: ignore[union-attr]
    assert work_request(client, auth=True).credentials == {"username": "pnp", "password": "pw"}  # type: ignore


def test_https_device_gets_https_urls(app: Flask, client: FlaskClient) -> None:
    add_profile(app, config_template="hostname r1\n")
    first = work_request(client, base_url="https://localhost")
    work_response(client, ok(first, device_info=INFO))
    config = work_request(client, "CiscoPnP-1.0-2", base_url="https://localhost")
    https_port = app.extensions["pnp_gateway"].settings.https_port
    assert config.location.startswith(f"https://127.0.0.1:{https_port}/cns/config.asp?")  # type: ignore


@pytest.mark.parametrize(("body", "reason"), [
    (b"<pnp", b"malformed XML"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='PID:A,VID:B'><info xmlns='urn:cisco:pnp:work-info' correlator='c'/></pnp>",
     b"no serial number"),
    (BILLION_LAUGHS, b"refused XML"),
    (encode(CliExecRequest(UDI, "c", "write memory")), b"unexpected device message"),
])
def test_bad_messages_get_400_with_a_reason(client: FlaskClient, body: bytes, reason: bytes) -> None:
    for endpoint in ("/pnp/WORK-REQUEST", "/pnp/WORK-RESPONSE"):
        reply = client.post(endpoint, data=body, content_type="text/xml")
        assert reply.status_code == 400
        assert reply.content_type.startswith("text/plain")
        assert b"Traceback" not in reply.data
    assert reason in client.post("/pnp/WORK-REQUEST", data=body, content_type="text/xml").data


def test_oversized_body_gets_413(client: FlaskClient) -> None:
    reply = client.post("/pnp/WORK-REQUEST", data=b"<" * (1024 * 1024 + 1), content_type="text/xml")
    assert reply.status_code == 413
    assert b"larger than" in reply.data


def test_wrong_method_is_refused(client: FlaskClient) -> None:
    assert client.get("/pnp/WORK-REQUEST").status_code == 405
