"""Every URL a device is given, in one place: always the VIP (never a node's own address), IPv6 in brackets.

After an HA failover only the VIP reaches the active node, so a URL naming a node would strand the device. The
scheme and port are the ones the device uses to reach us: plain HTTP for the CNS agents, the device's own choice
for Open PnP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from .config import Settings

# The path prefixes of every HTTP request a device makes (Open PnP, the CNS image agent and config, the image and
# resource web services): what is refused while the node cannot take device work.
DEVICE_PATHS = ("/pnp/", "/cns/", "/images/", "/resources/")


ConfigAccess = Callable[[str, str], Mapping[str, str]]


def url_host(address: str) -> str:
    """An address as the host part of a URL (``[2001:db8::1]`` for IPv6)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


@dataclass(frozen=True)
class DeviceUrls:
    """URLs on one base (``http://192.0.2.10`` or ``https://[2001:db8::10]:8443``)."""

    base: str
    # The query parameters that let a configuration URL be fetched (PNP_CONFIG_URL_TOKENS), given the device and
    # the request's identifier; none when the Config Web Service is open.
    config_access: ConfigAccess | None = None

    @classmethod
    def on(cls, host: str, port: int, tls: bool = False, config_access: ConfigAccess | None = None) -> DeviceUrls:
        scheme = "https" if tls else "http"
        default = 443 if tls else 80
        return cls(f"{scheme}://{url_host(host)}" + ("" if port == default else f":{port}"), config_access)

    @classmethod
    def http(cls, settings: Settings, config_access: ConfigAccess | None = None) -> DeviceUrls:
        """The VIP on the plain HTTP port (what IOS CNS agents use)."""
        return cls.on(settings.vip, settings.http_port, config_access=config_access)

    def config(self, device_id: str, identifier: str = "") -> str:
        """The Config Web Service; without an identifier it serves the device's own rendered configuration."""
        query = {"DeviceID": device_id, **({"Identifier": identifier} if identifier else {})}
        if self.config_access is not None:
            query.update(self.config_access(device_id, identifier))
        return f"{self.base}/cns/config.asp?{urlencode(query)}"

    def file(self, path: str) -> str:
        """An image or resource file served by the node."""
        return self.base + (path if path.startswith("/") else "/" + path)

    @property
    def cns_dispatcher(self) -> str:
        """The CNS image agent's HTTP message dispatcher."""
        return f"{self.base}/cns/HttpMsgDispatcher"
