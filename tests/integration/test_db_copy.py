"""`pnpp db copy --to URL`: a single gateway on SQLite takes its data along when it becomes a node of a pair.

A real node's SQLite database, filled through its REST API and the engine as devices would (profiles with sealed
credentials, an image, devices mid-provisioning with their jobs, steps and unsent events for Prime, an API token),
is copied into an empty database on a real PostgreSQL server; the gateway started on that database has it all, and
new rows get ids of their own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from pnp_integrated import create_app
from pnp_integrated.api.tokens import issue_token
from pnp_integrated.devsim.node import PNPP, node_environment, node_settings
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.images import store_missing_image_chunks
from pnp_integrated.provisioning.types import DeviceIdentity
from tests.conftest import upgrade_database

pytestmark = pytest.mark.postgres

IMAGE = b"\x7fELF" + bytes(range(256)) * 5000


def _node(settings: dict[str, Any]) -> Flask:
    upgrade_database(create_app({**settings, "TESTING": True}, check_schema=False))
    return create_app({**settings, "TESTING": True})


def _facts(app: Flask, token: str) -> dict[str, Any]:
    """What an operator reads from a node: its profiles, devices with their jobs, the outbox."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    profiles = client.get("/api/v1/profiles", headers=headers).get_json()["items"]
    devices = client.get("/api/v1/devices?limit=500", headers=headers).get_json()["items"]
    histories = {d["serial"]: client.get(f"/api/v1/devices/{d['serial']}/history", headers=headers).get_json()
                 for d in devices}
    images = client.get("/api/v1/images", headers=headers).get_json()["items"]
    return {"profiles": profiles, "devices": devices, "histories": histories, "images": images}


def _copy(settings: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PNPP, "db", "copy", *args], env=node_environment(settings), capture_output=True,
                          text=True, timeout=300)


def test_a_single_gateways_data_moves_into_the_pairs_database(tmp_path: Path, postgres_url: str) -> None:
    settings = node_settings(tmp_path / "gw-a")
    alone = _node(settings)
    with alone.app_context():
        token = issue_token("ops", "admin")
    client = alone.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/images?name=isr4300.17.09.04a.SPA.bin", data=IMAGE, headers=headers,
                       content_type="application/octet-stream").status_code == 201
    assert client.post("/api/v1/profiles", headers=headers, json={
        "name": "branch", "match_pid": "ISR*", "config_template": "hostname {{ serial }}",
        "image": "isr4300.17.09.04a.SPA.bin", "credentials": {"enable": "s3cret"}}).status_code == 201
    with alone.app_context():
        for i in range(30):
            engine.contact(DeviceIdentity(serial=f"FOC{i:03d}", protocol="pnp", pid="ISR4331"))
        engine.contact(DeviceIdentity(serial="JAE9999", protocol="cns", pid="C9300"))  # nobody's: unclaimed
    before = _facts(alone, token)
    assert any(h["events"] for h in before["histories"].values())  # events for Prime are part of it

    # As after `pnpp setup` made it a node of a pair: its settings name the pair's database, --from its own.
    sqlite = f"sqlite:///{(tmp_path / 'gw-a' / 'pnp.sqlite3').resolve()}"
    done = _copy({**settings, "database_url": postgres_url}, "--from", sqlite, "--to", postgres_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "devices" in done.stdout and "31 devices" in done.stdout

    paired = _node({**settings, "database_url": postgres_url})
    assert _facts(paired, token) == before  # the same token works: tokens travel too
    with paired.app_context():
        assert store_missing_image_chunks() == 1  # `pnpp run` on the new database gives it the image's content
    new = paired.test_client().post("/api/v1/profiles", headers=headers, json={"name": "campus", "match_pid": "C9*"})
    assert new.status_code == 201, new.get_json()
    assert new.get_json()["id"] not in {p["id"] for p in before["profiles"]}

    again = _copy(settings, "--to", postgres_url)
    assert again.returncode == 2 and "holds data already" in again.stderr, again.stdout + again.stderr
