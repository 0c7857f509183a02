"""What the node refuses to protect itself, counted for ``/metrics`` (``pnp_refused_total{reason}``).

The reasons are a fixed set, so the label stays bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import Counter

DISK_LOW = "disk-low"  # below PNP_DISK_MIN_FREE_MB: device work refused
NEW_DEVICES_PER_SOURCE = "new-devices-per-source"  # a source introduced too many unknown devices this minute
PUBLISH_FLOOD = "cns-publish-flood"  # a CNS session published more than its allowance
STATUS_BUSY = "status-busy"  # more /status requests at once than a worker answers
CONFIG_URL_TOKEN = "config-url-token"  # a configuration asked for without a valid token (PNP_CONFIG_URL_TOKENS)
DEVICE_CERTIFICATE = "device-certificate"  # a device request its client certificate does not allow
TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"  # a CNS TLS peer did not do its part of the handshake in time
CNS_HELLO_TIMEOUT = "cns-hello-timeout"  # a CNS connection sent no HELLO in time (closed without a word, CNS-W1)
REASONS = (DISK_LOW, NEW_DEVICES_PER_SOURCE, PUBLISH_FLOOD, STATUS_BUSY, CONFIG_URL_TOKEN, DEVICE_CERTIFICATE,
           TLS_HANDSHAKE_TIMEOUT, CNS_HELLO_TIMEOUT)

REFUSED = Counter("pnp_refused", "Requests the node refused to protect itself, by reason", ["reason"])


def count_refusal(reason: str) -> None:
    REFUSED.labels(reason if reason in REASONS else "other").inc()
