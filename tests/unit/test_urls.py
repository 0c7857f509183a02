"""Every URL a device is given names the VIP, and an IPv6 VIP in brackets (a bare one makes the port ambiguous)."""

from __future__ import annotations

from pnp_integrated.cns.bootstrap import cns_lines
from pnp_integrated.cns.provision import config_url
from pnp_integrated.config import load_settings
from pnp_integrated.urls import DeviceUrls


def test_ipv6_vip_is_bracketed_in_every_device_url() -> None:
    settings = load_settings({"vip": "2001:db8::10", "http_port": 8080}, environ={})
    urls = DeviceUrls.http(settings)
    assert urls.config("SER1") == "http://[2001:db8::10]:8080/cns/config.asp?DeviceID=SER1"
    assert config_url(settings, "SER1", "job-7") == \
        "http://[2001:db8::10]:8080/cns/config.asp?DeviceID=SER1&Identifier=job-7"
    assert urls.file("/images/ios.bin") == "http://[2001:db8::10]:8080/images/ios.bin"
    image_server = next(line for line in cns_lines(settings) if line.startswith("cns image server"))
    assert image_server == ("cns image server http://[2001:db8::10]:8080/cns/HttpMsgDispatcher status "
                            "http://[2001:db8::10]:8080/cns/HttpMsgDispatcher")


def test_default_ports_are_left_out_and_ipv4_is_bare() -> None:
    assert DeviceUrls.on("192.0.2.10", 80).file("a.cfg") == "http://192.0.2.10/a.cfg"
    assert DeviceUrls.on("192.0.2.10", 443, tls=True).base == "https://192.0.2.10"
    assert DeviceUrls.on("192.0.2.10", 8443, tls=True).base == "https://192.0.2.10:8443"
