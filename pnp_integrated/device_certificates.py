"""Devices' own certificates on HTTPS (Cisco SUDI, ``PNP_DEVICE_CA_FILE``): who a device may speak for.

Every Cisco device with a Secure Unique Device Identifier holds a certificate from Cisco's SUDI CA whose subject
carries ``serialNumber=PID:<pid> SN:<serial>``. With the operator's bundle of those CAs, the HTTPS port asks each
client for a certificate; one that does not chain to the bundle ends the handshake. A verified certificate binds
the connection to its serial: an Open PnP message or a configuration request naming another serial is refused, so
a device cannot ask for (or answer for) a neighbour. ``PNP_DEVICE_CERT_REQUIRED`` refuses Open PnP to clients
without one (on HTTPS without a certificate, and on plain HTTP, which cannot carry one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .config import Settings
from .listeners import CLIENT_CERTIFICATE

_SN = re.compile(r"(?:^|\s)SN:(\S+)")


def certificate_serial(certificate: Mapping[str, Any]) -> str | None:
    """The serial a verified certificate names (SUDI: ``SN:`` in the subject's serialNumber), ``None`` if none."""
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            if name == "serialNumber":
                found = _SN.search(value)
                return found.group(1) if found else (value.strip() or None)
    return None


def refusal(settings: Settings, environ: Mapping[str, Any], serial: str | None, *, open_pnp: bool) -> str | None:
    """Why this request may not speak for ``serial`` (``None``: it may; a serial of ``None``: none named yet)."""
    if not settings.device_ca_file:
        return None
    certificate = environ.get(CLIENT_CERTIFICATE)
    if certificate is None:
        if open_pnp and settings.device_cert_required:
            return ("this gateway serves Open PnP only to devices presenting their certificate (SUDI) over HTTPS "
                    "(PNP_DEVICE_CERT_REQUIRED)")
        return None
    named = certificate_serial(certificate)
    if named is None:
        return "the client certificate names no serial number (subject serialNumber \"PID:... SN:...\")"
    if serial is not None and serial != named:
        return f"the client certificate is the device {named}'s; it cannot speak for {serial}"
    return None
