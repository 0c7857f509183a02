"""Open PnP message layer: real CSR1000V messages, every service body, UDI edge cases, hostile input."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnp_integrated.pnp.conversation import outcome_of, reply_to_work_request
from pnp_integrated.pnp.messages import (
    Backoff,
    Bye,
    CapabilityRequest,
    CliConfigRequest,
    CliExecRequest,
    CliResult,
    ConfigUpgradeRequest,
    DeviceInfoRequest,
    ErrorInfo,
    Fault,
    FileTransferRequest,
    ImageInstallRequest,
    PnpProtocolError,
    ReloadRequest,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_device_message,
    parse_server_message,
    parse_udi,
    parse_work_request,
    parse_work_response,
)
from pnp_integrated.provisioning.types import Action, ActionKind, ImageRef
from pnp_integrated.urls import DeviceUrls
from tests.support import BILLION_LAUGHS, CSR_WORK_REQUEST

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "pnp"

UDI = Udi("CSR1000V", "V00", "99CWJ5DOLWQ")
NS = {"p": "urn:cisco:pnp"}

# The captured CSR1000V 17.3.4a messages (the files are in tests/data/pnp); inline copies keep each test readable.
CSR_DEVICE_INFO = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:CSR1000V,VID:V00,SN:95HUSMATW2U">
  <response xmlns="urn:cisco:pnp:device-info" correlator="CiscoPnP-1.0-R33.200930-I1-P592-T47132-2" success="1">
    <thisProfileName>pnp-zero-touch</thisProfileName>
    <udi><primary-chassis>PID:CSR1000V,VID:V00,SN:95HUSMATW2U</primary-chassis></udi>
    <imageInfo>
      <versionString>17.3.4a</versionString><imageFile>bootflash:packages.conf</imageFile><imageHash />
      <returnToRomReason>reload</returnToRomReason><bootVariable /><bootLdrVariable /><configVariable />
      <configReg>0x2102</configReg><configRegNext />
    </imageInfo>
    <hardwareInfo>
      <hostname>Router</hostname><vendor>cisco</vendor><platformName>CSR1000V</platformName>
      <processorType>VXE</processorType><hwRevision>VXE</hwRevision><mainMemSize>2121553596</mainMemSize>
      <ioMemSize>3149400</ioMemSize><boardId>95HUSMATW2U</boardId><boardReworkId /><processorRev />
      <midplaneVersion /><location /><deviceType />
    </hardwareInfo>
    <fileSystemList>
      <fileSystem name="bootflash" type="disk" size="6286540800" freespace="5438058496" readable="true"
                  writable="true" />
      <fileSystem name="webui" type="disk" size="2013806592" freespace="1910181888" readable="true"
                  writable="false" />
      <fileSystem name="nvram" type="nvram" size="33554432" freespace="33551308" readable="true" writable="false" />
    </fileSystemList>
    <profileInfo><profile profile-name="pnp-zero-touch" discovery-created="true" created-by="DHCP">
      <primary-server><protocol>http</protocol>
        <server-address><ipv4>192.168.100.100</ipv4><port>5000</port></server-address></primary-server>
    </profile></profileInfo>
    <stackInfo><stackable>false</stackable></stackInfo>
  </response>
</pnp>"""


def test_captured_work_request_parses() -> None:
    message = parse_work_request(CSR_WORK_REQUEST)
    assert message.udi == Udi("CSR1000V", "V00", "99CWJ5DOLWQ")
    assert message.correlator == "CiscoPnP-1.0-R33.200930-I1-P592-T43891-2"
    assert message.hostname == "Router"
    assert message.auth_required is False
    assert message.reason == "factory-reset"
    assert message.startup_config_present is False


def test_captured_device_info_parses_into_engine_facts() -> None:
    message = parse_work_response(CSR_DEVICE_INFO)
    assert isinstance(message, WorkResponse)
    assert (message.service, message.success) == ("device-info", True)
    assert message.correlator == "CiscoPnP-1.0-R33.200930-I1-P592-T47132-2"
    info = message.device_info
    assert info is not None
    assert (info.version, info.image_file, info.platform, info.board_id) == (
        "17.3.4a", "bootflash:packages.conf", "CSR1000V", "95HUSMATW2U")
    assert [fs.name for fs in info.filesystems] == ["bootflash", "webui", "nvram"]
    assert info.filesystems[0].freespace == 5438058496
    outcome = outcome_of(message)
    assert outcome.success
    assert outcome.facts is not None
    assert outcome.facts.version == "17.3.4a"
    # Only writable flash-like filesystems can take an image.
    assert outcome.facts.filesystems == {"bootflash:": 5438058496}


def test_captured_files_match_the_inline_copies() -> None:
    """The captured files parse to the same messages as the inline copies."""
    assert parse_device_message((CAPTURES / "csr1000v-17.3.4a-work-request.xml").read_bytes()) == \
        parse_device_message(CSR_WORK_REQUEST)
    assert parse_device_message((CAPTURES / "csr1000v-17.3.4a-device-info-response.xml").read_bytes()) == \
        parse_device_message(CSR_DEVICE_INFO)


def test_unknown_csr_is_answered_with_a_backoff_echoing_its_correlator() -> None:
    message = parse_work_request(CSR_WORK_REQUEST)
    action = Action(ActionKind.UNCLAIMED, wait_seconds=120, detail="no profile matches this device")
    reply = reply_to_work_request(action, message, DeviceUrls.on("192.0.2.10", 80, False))
    root = ET.fromstring(encode(reply))
    assert root.get("udi") == "PID:CSR1000V,VID:V00,SN:99CWJ5DOLWQ"
    request = root.find("{urn:cisco:pnp:backoff}request")
    assert request is not None
    assert request.get("correlator") == "CiscoPnP-1.0-R33.200930-I1-P592-T43891-2"
    after = request.find("{urn:cisco:pnp:backoff}backoff/{urn:cisco:pnp:backoff}callbackAfter")
    assert after is not None
    assert [el.text for el in after] == ["0", "2", "0"]


def test_claimed_csr_is_asked_for_device_info_under_its_own_correlator() -> None:
    message = parse_work_request(CSR_WORK_REQUEST)
    action = Action(ActionKind.IDENTIFY, job_id=1, correlator="job1-1-abc", step="identify")
    reply = reply_to_work_request(action, message, DeviceUrls.on("192.0.2.10", 80, False))
    assert reply == DeviceInfoRequest(message.udi, "CiscoPnP-1.0-R33.200930-I1-P592-T43891-2", "all", None)
    assert b'<deviceInfo type="all"/>' in encode(reply)
    # An agent that names no question gets the engine's name for the request, which it then echoes.
    unnamed = reply_to_work_request(action, WorkRequest(message.udi, ""), DeviceUrls.on("h", 80, False))
    assert unnamed == DeviceInfoRequest(message.udi, "job1-1-abc", "all", None)


# ---- every service body -------------------------------------------------------------------------------------------
SERVICE_CASES = [
    (DeviceInfoRequest(UDI, "c1", "all"), "device-info", ["deviceInfo"]),
    (ConfigUpgradeRequest(UDI, "c2", "http://192.0.2.10/cns/config.asp?DeviceID=X&Identifier=c2"), "config-upgrade",
     ["config/copy/source/location", "config/copy/applyTo", "noReload"]),  # beside <config> (Cisco's schema)
    (ConfigUpgradeRequest(UDI, "c2r", "http://h/c", apply_to="startup", reload=True, abort_on_syntax_fault=True),
     "config-upgrade", ["config/copy/abortOnSyntaxFault", "reload/reason", "reload/delayIn"]),
    (ImageInstallRequest(UDI, "c3", "http://h/images/a.bin", "0123456789abcdef0123456789abcdef", "bootflash:a.bin"),
     "image-install", ["image/copy/source/location", "image/copy/source/checksum",
                       "image/copy/destination/location", "reload/reason", "reload/delayIn", "reload/saveConfig"]),
    (ImageInstallRequest(UDI, "c3n", "http://h/i", "ff", "flash:i", reload=False), "image-install", ["noReload"]),
    (CliConfigRequest(UDI, "c4", ("hostname r1", "ntp server 192.0.2.1"), persist=True), "cli-config",
     ["configApply/config-data/cli-config-data/cmd", "configApply/configPersist"]),
    (CliExecRequest(UDI, "c5", "write memory"), "cli-exec", ["execCLI/cmd"]),
    (FileTransferRequest(UDI, "c6", "http://h/resources/s.tcl", "flash:s.tcl", "aa"), "file-transfer",
     ["fileTransfer/copy/source/location", "fileTransfer/copy/source/checksum",
      "fileTransfer/copy/destination/location"]),
    (ReloadRequest(UDI, "c7", "pnp", 5, erase_config=True), "reload",
     ["reload/reason", "reload/delayIn", "reload/user", "reload/eraseConfig"]),
    (CapabilityRequest(UDI, "c8"), "capability", []),
    (Backoff(UDI, "c9", "busy", seconds=3725), "backoff",
     ["backoff/reason", "backoff/callbackAfter/hours", "backoff/callbackAfter/minutes",
      "backoff/callbackAfter/seconds"]),
    (Backoff(UDI, "c10", default_minutes=30), "backoff", ["backoff/defaultMinutes"]),
    (Backoff(UDI, "c11", "done", terminate=True), "backoff", ["backoff/terminate"]),
]


@pytest.mark.parametrize(("message", "service", "paths"), SERVICE_CASES, ids=lambda v: getattr(v, "service", None))
def test_server_request_has_the_documented_elements(message: object, service: str, paths: list[str]) -> None:
    data = encode(message)  # type: ignore[arg-type]
    root = ET.fromstring(data)
    assert root.tag == "{urn:cisco:pnp}pnp"
    assert (root.get("version"), root.get("udi")) == ("1.0", "PID:CSR1000V,VID:V00,SN:99CWJ5DOLWQ")
    ns = f"urn:cisco:pnp:{service}"
    request = root.find(f"{{{ns}}}request")
    assert request is not None, data
    assert request.get("correlator") == message.correlator  # type: ignore[attr-defined]
    for path in paths:
        qualified = "/".join(f"{{{ns}}}{part}" for part in path.split("/"))
        assert request.find(qualified) is not None, f"{path} missing in {data.decode()}"
    assert parse_server_message(data) == message


def test_callback_after_splits_hours_minutes_seconds() -> None:
    root = ET.fromstring(encode(Backoff(UDI, "c", seconds=2 * 3600 + 3 * 60 + 4)))
    values = {el.tag.split("}")[1]: el.text for el in root.iter() if el.tag.endswith(("hours", "minutes", "seconds"))}
    assert values == {"hours": "2", "minutes": "3", "seconds": "4"}


@pytest.mark.parametrize("kwargs", [{}, {"seconds": 1, "terminate": True}, {"seconds": 48 * 3600},
                                    {"default_minutes": 0}, {"default_minutes": 2881}])
def test_backoff_refuses_what_the_agent_cannot_express(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(UDI, "c", **kwargs)  # type: ignore[arg-type]


def test_bye_is_the_work_info_bye() -> None:
    root = ET.fromstring(encode(Bye(UDI, "CiscoPnP-1.0-7")))
    info = root.find("{urn:cisco:pnp:work-info}info")
    assert info is not None and info.get("correlator") == "CiscoPnP-1.0-7"
    assert info.find("{urn:cisco:pnp:work-info}workInfo/{urn:cisco:pnp:work-info}bye") is not None


def test_credentials_are_root_attributes_only_when_given() -> None:
    with_creds = ET.fromstring(encode(CliExecRequest(UDI, "c", "write memory",
                                                     credentials={"username": "pnp", "password": "s3cr&t"})))
    assert (with_creds.get("usr"), with_creds.get("pwd")) == ("pnp", "s3cr&t")
    without = ET.fromstring(encode(CliExecRequest(UDI, "c", "write memory")))
    assert without.get("usr") is None and without.get("pwd") is None


def test_correlator_with_xml_specials_is_echoed_verbatim() -> None:
    correlator = "CiscoPnP-1.0-<&>\"'-\t-1"
    message = parse_server_message(encode(Bye(UDI, correlator)))
    assert message.correlator == correlator


# ---- engine actions -> requests -----------------------------------------------------------------------------------
def _reply(action: Action, auth_required: bool = False, tls: bool = False) -> object:
    request = WorkRequest(UDI, "dev-corr-9", auth_required=auth_required)
    return reply_to_work_request(action, request, DeviceUrls.on("192.0.2.10", 8443 if tls else 80, tls))


def test_config_action_points_at_the_config_web_service_with_the_correlator() -> None:
    reply = _reply(Action(ActionKind.CONFIG, correlator="job7-3-ab", config_text="hostname r1", apply_to="startup"))
    assert isinstance(reply, ConfigUpgradeRequest)
    assert reply.location == "http://192.0.2.10/cns/config.asp?DeviceID=99CWJ5DOLWQ&Identifier=job7-3-ab"
    assert reply.apply_to == "startup"
    assert b"DeviceID=99CWJ5DOLWQ&amp;Identifier=job7-3-ab" in encode(reply)  # type: ignore[arg-type]
    tls_reply = _reply(Action(ActionKind.CONFIG, correlator="c"), tls=True)
    assert tls_reply.location.startswith("https://192.0.2.10:8443/cns/config.asp?")  # type: ignore[attr-defined]


def test_image_action_names_url_checksum_destination_and_reload() -> None:
    image = ImageRef("csr", "17.6.1", "d41d8cd98f00b204e9800998ecf8427e", 10, "/images/csr-17.6.1.bin", True,
                     "bootflash:")
    reply = _reply(Action(ActionKind.IMAGE_INSTALL, correlator="c", image=image))
    assert reply == ImageInstallRequest(UDI, "dev-corr-9", "http://192.0.2.10/images/csr-17.6.1.bin",
                                        "d41d8cd98f00b204e9800998ecf8427e", "bootflash:csr-17.6.1.bin", reload=True)


def test_post_config_save_done_failed_and_wait_actions() -> None:
    post = _reply(Action(ActionKind.POST_CONFIG, correlator="c", config_text="ntp server 1.1.1.1\n!\n\nend\n"))
    assert isinstance(post, CliConfigRequest) and post.lines == ("ntp server 1.1.1.1", "end")
    assert _reply(Action(ActionKind.SAVE, correlator="c")) == CliExecRequest(UDI, "dev-corr-9", "write memory")
    done = _reply(Action(ActionKind.DONE, job_id=1))
    assert isinstance(done, Backoff) and done.terminate and done.correlator == "dev-corr-9"
    failed = _reply(Action(ActionKind.FAILED, job_id=1, detail="step image failed"))
    assert isinstance(failed, Backoff) and failed.terminate and "step image failed" in failed.reason
    wait = _reply(Action(ActionKind.WAIT, wait_seconds=10 ** 9))
    assert isinstance(wait, Backoff) and wait.seconds == (47 * 60 + 59) * 60 + 59


def test_credentials_only_go_to_a_device_that_asks() -> None:
    action = Action(ActionKind.SAVE, correlator="c", credentials={"username": "u", "password": "p"})
    assert _reply(action).credentials is None  # type: ignore[attr-defined]
    assert _reply(action, auth_required=True).credentials == {"username": "u", "password": "p"}  # type: ignore


# ---- device results -------------------------------------------------------------------------------------------------
def test_failed_response_carries_the_numeric_error_code() -> None:
    data = encode(WorkResponse(UDI, "image-install", "c", False,
                               ErrorInfo("1816", "checksum mismatch", "PnP Service Error 1816")))
    message = parse_work_response(data)
    assert isinstance(message, WorkResponse) and not message.success
    assert message.error == ErrorInfo("1816", "checksum mismatch", "PnP Service Error 1816")
    outcome = outcome_of(message)
    assert (outcome.success, outcome.error_code) == (False, "1816")
    assert "checksum mismatch" in outcome.detail


def test_cli_config_with_a_failed_line_is_a_failure() -> None:
    data = encode(WorkResponse(UDI, "cli-config", "c", True, cli_results=(
        CliResult(1, "hostname r1", True), CliResult(2, "bogus command", False, "% Invalid input"))))
    outcome = outcome_of(parse_work_response(data))
    assert not outcome.success
    assert "line 2" in outcome.detail and "bogus command" in outcome.detail


def test_fault_without_correlator_parses() -> None:
    data = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:CISCO2901/K9,VID:V06,SN:FTX1">
      <response xmlns="urn:cisco:pnp:fault"><fault><faultcode>XSVC:Client</faultcode>
      <faultstring>An unknown XML tag has been received</faultstring><detail>
      <xsvc-err:error xmlns:xsvc-err="urn:cisco:pnp:error"><xsvc-err:details>struct</xsvc-err:details>
      </xsvc-err:error></detail></fault></response></pnp>"""
    message = parse_work_response(data)
    assert message == Fault(Udi("CISCO2901/K9", "V06", "FTX1"), "XSVC:Client",
                            "An unknown XML tag has been received", "struct")
    assert not outcome_of(message).success


def test_lower_case_agent_tags_are_understood() -> None:
    data = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:CISCO2901/K9,VID:V06,SN:FTX1">
      <info xmlns="urn:cisco:pnp:work-info" correlator="udi1"><deviceid><udi>PID:CISCO2901/K9,VID:V06,SN:FTX1</udi>
      <authrequired>true</authrequired></deviceid></info></pnp>"""
    message = parse_work_request(data)
    assert message.udi.serial == "FTX1" and message.auth_required


def test_exec_output_is_collected() -> None:
    data = encode(WorkResponse(UDI, "cli-exec", "c", True, exec_output="Building configuration...\n[OK]"))
    message = parse_work_response(data)
    assert isinstance(message, WorkResponse) and message.exec_output.endswith("[OK]")


# ---- UDI ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("PID:CSR1000V,VID:,SN:9XXXX", Udi("CSR1000V", "", "9XXXX")),
    ("PID:ISR4451-X/K9,VID:V01,SN:FOC1234X0AB", Udi("ISR4451-X/K9", "V01", "FOC1234X0AB")),
    ("PID:WS-C3850-24P-L,VID:V03,SN:FCW1932D0LB", Udi("WS-C3850-24P-L", "V03", "FCW1932D0LB")),
    ("PID: C9300-24U , VID: V01 , SN: FOC2 ", Udi("C9300-24U", "V01", "FOC2")),
    ("SN:ONLY1", Udi("", "", "ONLY1")),
    ("pid:x,vid:y,sn:z", Udi("x", "y", "z")),
])
def test_udi_parser_accepts(text: str, expected: Udi) -> None:
    assert parse_udi(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "PID:A,VID:B", "PID:A,VID:B,SN:", "PID:A,PID:B,SN:1",
                                  "PID:A,XID:B,SN:1", "SN:" + "9" * 256, "PID:A,VID:B,SN:1\x07"])
def test_udi_parser_refuses(text: str) -> None:
    with pytest.raises(PnpProtocolError):
        parse_udi(text)


# ---- hostile input ------------------------------------------------------------------------------------------------
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE pnp [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:A,VID:B,SN:1"><info xmlns="urn:cisco:pnp:work-info"
 correlator="&x;"/></pnp>"""


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"not xml at all", "malformed"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='SN:1'><info", "malformed"),
    (b"<pnp udi='SN:1'><info xmlns='urn:cisco:pnp:work-info' correlator='c'/></pnp>", "root element"),
    (b"<x xmlns='urn:cisco:pnp' udi='SN:1'/>", "root element"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='SN:1'/>", "exactly one"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='SN:1'><info xmlns='urn:cisco:pnp:work-info'/></pnp>", "correlator"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='nonsense'><info xmlns='urn:cisco:pnp:work-info' correlator='c'/></pnp>",
     "UDI"),
    (b"<pnp xmlns='urn:cisco:pnp' udi='SN:1'><response xmlns='urn:cisco:pnp:cli-exec' correlator='c' "
     b"success='maybe'/></pnp>", "success"),
    (BILLION_LAUGHS, "refused XML"),
    (EXTERNAL_ENTITY, "refused XML"),
    (b"\xff\xfe<\x00p\x00", "XML"),
])
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(PnpProtocolError, match=reason):
        parse_device_message(data)


def test_oversized_message_is_refused_before_parsing() -> None:
    data = CSR_WORK_REQUEST.replace(b"<hostname>Router", b"<hostname>" + b"R" * 5000)
    with pytest.raises(PnpProtocolError, match="exceeds"):
        parse_work_request(data, max_bytes=4096)
    assert parse_work_request(data, max_bytes=8192).hostname.startswith("RRR")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_the_protocol_error(data: bytes) -> None:
    for parse in (parse_device_message, parse_server_message):
        try:
            parse(data)
        except PnpProtocolError:
            pass


XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
                   min_size=1, max_size=60).filter(lambda s: s.strip() == s and s.strip())


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff"), max_size=300))
def test_arbitrary_text_inside_a_message_raises_only_the_protocol_error(text: str) -> None:
    data = CSR_WORK_REQUEST.replace(b"Router", text.encode("utf-8"))
    try:
        parse_work_request(data)
    except PnpProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(correlator=XML_TEXT, hostname=XML_TEXT, serial=XML_TEXT.filter(lambda s: "," not in s and s.isprintable()))
def test_work_request_round_trips(correlator: str, hostname: str, serial: str) -> None:
    message = WorkRequest(Udi("ISR4451-X/K9", "", serial), correlator, hostname=hostname, auth_required=True)
    assert parse_device_message(encode(message)) == message
