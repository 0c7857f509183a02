"""The health monitor reader: an unpinned check (a pair's watch asking its peer every second) loads no CA bundle;
a pinned one trusts exactly the stored certificates."""

from __future__ import annotations

from pathlib import Path

from pnp_integrated.config import load_settings
from pnp_integrated.healthcheck import _context
from pnp_integrated.tls import ensure_certificates


def test_an_unpinned_check_loads_no_certificates() -> None:
    # Parsing the system's CA bundle cost about 20 to 50 ms of CPU per check, every second, at niceness -10.
    stats = _context().cert_store_stats()
    assert stats["x509_ca"] == 0 and stats["x509"] == 0


def test_a_pinned_check_trusts_the_stored_certificates_only(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ca = ensure_certificates(settings).ca
    assert _context(str(ca)).cert_store_stats()["x509_ca"] == 1
