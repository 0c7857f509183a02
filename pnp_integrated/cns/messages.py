"""The XML documents CNS agents exchange (Cisco's published payloads), parsed safely and built, sans-IO.

Parsing goes through defusedxml: a document with a DTD, entity declarations or external references is refused, so a
device cannot make the gateway expand entities or fetch anything.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

# Subjects a device publishes whose body root is fixed by Cisco's documents (cns-wire.md section 3.5).
EXPECTED_ROOTS = {
    "cisco.mgmt.cns.config.complete": "config-success",
    "cisco.mgmt.cns.config.warning": "config-warning",
    "cisco.mgmt.cns.config.failure": "config-failure",
    "cisco.mgmt.cns.exec.rsp": "exec-cmd-response",
    "cisco.mgmt.cns.inventory": "device-details",
    "cisco.mgmt.cns.event.id-changed": "event-id-changed",
}
CONFIG_RESULT_SUBJECTS = frozenset(
    {"cisco.mgmt.cns.config.complete", "cisco.mgmt.cns.config.warning", "cisco.mgmt.cns.config.failure"}
)
CONFIG_LOAD = "cisco.mgmt.cns.config.load"
EXEC_CMD = "cisco.mgmt.cns.exec.cmd"
EXEC_RSP = "cisco.mgmt.cns.exec.rsp"


class XmlRefused(ValueError):
    """A body that is not acceptable XML; the message says why."""


@dataclass(frozen=True)
class Document:
    """A parsed XML body: its root element's local name and the text of its direct and nested leaf elements."""

    root: str
    text: dict[str, str] = field(default_factory=dict)  # first occurrence of each leaf element, by local name
    attributes: dict[str, str] = field(default_factory=dict)  # of the root
    element: ET.Element | None = field(default=None, compare=False, repr=False)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> Document:
    """Parse a UTF-8 XML body safely; raises :class:`XmlRefused`."""
    if not body.strip():
        raise XmlRefused("the body is empty; an XML document is required")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise XmlRefused("the body is not UTF-8") from None
    try:
        root = fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise XmlRefused(f"XML refused: {type(exc).__name__} (DTDs and entities are not accepted)") from None
    except ET.ParseError as exc:
        raise XmlRefused(f"the body is not well-formed XML ({exc})") from None
    except LookupError as exc:  # an XML declaration naming an encoding Python does not know
        raise XmlRefused(f"the XML declaration names an unknown encoding ({exc})") from None
    except ValueError as exc:  # one the parser cannot read (UTF-7 and other multi-byte encodings)
        raise XmlRefused(f"the XML declaration names an encoding that is not accepted ({exc})") from None
    text: dict[str, str] = {}
    for element in root.iter():
        if element is not root and len(element) == 0:
            text.setdefault(_local(element.tag), (element.text or "").strip())
    attributes = {_local(k): v for k, v in root.attrib.items()}
    return Document(_local(root.tag), text, attributes, root)


@dataclass(frozen=True)
class DeviceResult:
    """A config or exec result published by a device, reduced to what the provisioning engine needs."""

    success: bool
    correlator: str
    detail: str
    error_code: str = ""


def device_result(subject: str, doc: Document) -> DeviceResult | None:
    """The result carried by a config-result or exec-response PUBLISH; ``None`` for other events."""
    if subject in CONFIG_RESULT_SUBJECTS:
        correlator = doc.text.get("identifier", "")
        if doc.root == "config-failure":
            line = doc.text.get("line-number", "")
            message = doc.text.get("error-message", "")
            detail = f"line {line}: {message}" if line else message or "configuration failed"
            return DeviceResult(False, correlator, detail, "config-failure")
        if doc.root == "config-warning":
            return DeviceResult(True, correlator, doc.text.get("warning-message", ""))
        return DeviceResult(True, correlator, "")
    if subject == EXEC_RSP:
        ok = doc.text.get("status", "success").lower() == "success"
        detail = doc.text.get("response", "") if ok else doc.text.get("error-message", "") or "exec failed"
        return DeviceResult(ok, doc.text.get("identifier-exec", ""), detail, "" if ok else "exec-failure")
    return None


# ---- documents the gateway sends ------------------------------------------------------------------------------
def config_load_push(identifier: str, config_id: str, config_text: str) -> str:
    """``config-event`` carrying the configuration itself, one ``<cli>`` per non-empty line."""
    clis = "".join(f"<cli>{escape(line)}</cli>" for line in config_text.splitlines() if line.strip())
    return (f"<config-event><identifier>{escape(identifier)}</identifier><config-id>{escape(config_id)}</config-id>"
            f"<config-data>{clis}</config-data></config-event>")


def config_load_pull(identifier: str, config_id: str, url: str) -> str:
    """``config-event`` telling the config agent to pull its configuration from ``url``."""
    return (f"<config-event><identifier>{escape(identifier)}</identifier><config-id>{escape(config_id)}</config-id>"
            f"<config-server><url>{escape(url)}</url></config-server></config-event>")


def exec_cmd(identifier: str, command: str) -> str:
    """``exec-cmd-event`` asking the exec agent to run one exec command."""
    return (f"<exec-cmd-event><identifier-exec>{escape(identifier)}</identifier-exec>"
            f"<cli-exec>{escape(command)}</cli-exec></exec-cmd-event>")


def image_instruction_download(identifier: str, url: str, md5: str, size: int, destination: str,
                               activate: bool) -> str:
    """``image-instruction`` telling the image agent to download (and activate) an image."""
    activate_xml = '<activate reload="true"/>' if activate else ""
    return (f"<image-instruction identifier={quoteattr(identifier)}>"
            f"<download url={quoteattr(url)} md5={quoteattr(md5)} size=\"{int(size)}\" "
            f"destination={quoteattr(destination)}/>{activate_xml}</image-instruction>")


def image_instruction_none() -> str:
    return "<image-instruction><none/></image-instruction>"
