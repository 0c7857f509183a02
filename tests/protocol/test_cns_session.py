"""The sans-IO session state machine: what each frame leads to in each phase."""

from __future__ import annotations

import pytest

from pnp_integrated.cns.codec import Frame, make_frame
from pnp_integrated.cns.session import (
    Admit,
    CnsSession,
    Goodbye,
    Phase,
    Publish,
    Refuse,
    Subscribe,
)


def established(device: str = "R1", **headers: str) -> CnsSession:
    session = CnsSession()
    assert isinstance(session.receive(make_frame("HELLO", {"Device-Id": device, **headers})), Admit)
    return session


def test_hello_defaults_ids_and_keepalive() -> None:
    session = CnsSession()
    decision = session.receive(make_frame("HELLO", {"Device-Id": "R1", "Receipt": "h"}))
    assert isinstance(decision, Admit) and decision.receipt == "h"
    hello = decision.hello
    assert (hello.config_id, hello.image_id, hello.keepalive, hello.retries) == ("R1", "R1", 60, 3)
    assert hello.idle_timeout == 240
    assert session.phase is Phase.ESTABLISHED


def test_keepalive_and_ids_from_headers() -> None:
    hello = established("R2", **{"Config-Id": "SN2", "Keepalive": " 30 , 1 "}).hello
    assert hello is not None and (hello.config_id, hello.keepalive, hello.retries) == ("SN2", 30, 1)
    assert hello.idle_timeout == 60


@pytest.mark.parametrize("command", ["SUBSCRIBE", "PUBLISH", "PING", "BYE", "UNSUBSCRIBE"])
def test_anything_before_hello_is_401_and_closes(command: str) -> None:
    session = CnsSession()
    assert session.receive(Frame(command)) == Refuse(401, f"HELLO required first, got {command}")
    assert session.phase is Phase.CLOSED


def test_subjects_map_to_the_device_and_gate_delivery() -> None:
    session = established("FTX9")
    decision = session.receive(make_frame("SUBSCRIBE", {"Subject": "cisco.mgmt.cns.config.load"}))
    assert isinstance(decision, Subscribe) and decision.bus_subject == "cisco.mgmt.cns.config.load.FTX9"
    assert session.subscribed("cisco.mgmt.cns.config.load")
    assert session.subscribed("cisco.mgmt.cns.config.load.FTX9")
    assert not session.subscribed("cisco.mgmt.cns.config.load.OTHER")
    assert not session.subscribed("cisco.mgmt.cns.exec.cmd")
    session.receive(make_frame("UNSUBSCRIBE", {"Subject": "cisco.mgmt.cns.config.load"}))
    assert not session.subscribed("cisco.mgmt.cns.config.load")


def test_publish_keeps_the_session_open_on_bad_xml() -> None:
    session = established()
    decision = session.receive(make_frame("PUBLISH", {"Subject": "a.b"}, "<open>"))
    assert isinstance(decision, Refuse) and (decision.code, decision.close) == (400, False)
    assert session.phase is Phase.ESTABLISHED
    good = session.receive(make_frame("PUBLISH", {"Subject": "cisco.mgmt.cns.config.complete"},
                                      "<config-success><identifier>J</identifier></config-success>"))
    assert isinstance(good, Publish) and good.document.text["identifier"] == "J"


def test_bye_closes_and_nothing_follows() -> None:
    session = established()
    assert isinstance(session.receive(Frame("BYE")), Goodbye)
    assert isinstance(session.receive(Frame("PING")), Refuse)
