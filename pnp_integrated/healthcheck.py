"""The one reader of a Prime health monitor (``https://<host>:8082/health``), for the gateway and the simulated Prime.

The answer says who a Prime node is in its HA pair; it carries no secret. A co-located Prime's certificate is its
own CA's and is not verified; a standalone gateway asks Prime over the network and verifies the answer against the
certificates ``pnpp prime trust`` stored (``ca_file``), as it does for the broker.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


def _context(ca_file: str = "") -> ssl.SSLContext:
    if ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)  # the stored certificates only, not the system's
        ctx.check_hostname = False  # pinned certificates; Prime is reached by address
        return ctx
    # Nothing verified, so nothing loaded: the system's CA bundle (create_default_context without a file) took
    # about 20 ms of CPU to parse, at every check of a pair's watch, every second.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def health_url(host: str, port: int, path: str = "/health") -> str:
    target = f"[{host}]" if ":" in host else host
    return f"https://{target}:{port}{path}"


def ask_health(host: str, port: int, path: str = "/health", method: str = "GET", timeout: float = 2.0,
               ca_file: str = "") -> dict[str, Any] | None:
    """The JSON object a health monitor answers (whatever its status code); ``None`` when unreachable, not JSON, or
    (with ``ca_file``) presenting a certificate not among those trusted."""
    request = urllib.request.Request(health_url(host, port, path), method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_context(ca_file)) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            data = json.load(exc)
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
