"""An image added on one node of an HA pair is served by the other: the content travels in the shared database.

Two apps on their own data directories (their own image directories, as two machines have) and one real PostgreSQL
database. The image goes in through node A's REST API; node B, which never saw the upload (the node ACTIVE after a
failover), serves the same bytes with the same ETag, honours Range, and stops serving it once it is deleted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.provisioning.images import store_missing_image_chunks

pytestmark = pytest.mark.postgres

IMAGE = b"\x7fELF" + bytes(range(256)) * 9000  # a little over 2 MiB: three chunks, the last one short


def admin_headers(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {issue_token('ops-admin', 'admin')}"}


def _pair(app_factory: Callable[..., Flask], postgres_url: str) -> tuple[Flask, Flask]:
    return app_factory(database_url=postgres_url), app_factory(database_url=postgres_url)


def test_an_image_added_on_one_node_is_served_by_the_other(app_factory: Callable[..., Flask],
                                                           postgres_url: str) -> None:
    node_a, node_b = _pair(app_factory, postgres_url)
    a, b = node_a.test_client(), node_b.test_client()
    added = a.post("/api/v1/images?name=c9k.17.12.01.SPA.bin", data=IMAGE, headers=admin_headers(node_a),
                   content_type="application/octet-stream")
    assert added.status_code == 201, added.get_json()
    md5 = hashlib.md5(IMAGE).hexdigest()
    assert added.get_json()["md5"] == md5

    served = b.get("/images/c9k.17.12.01.SPA.bin")
    assert served.status_code == 200 and served.data == IMAGE
    assert served.headers["ETag"].strip('"') == md5
    part = b.get("/images/c9k.17.12.01.SPA.bin", headers={"Range": "bytes=1048570-1048585"})
    assert part.status_code == 206 and part.data == IMAGE[1048570:1048586]
    assert b.get("/images/c9k.17.12.01.SPA.bin", headers={"If-None-Match": f'"{md5}"'}).status_code == 304

    gone = a.delete("/api/v1/images/c9k.17.12.01.SPA.bin", headers=admin_headers(node_a))
    assert gone.status_code == 204, gone.get_json()
    assert b.get("/images/c9k.17.12.01.SPA.bin").status_code == 404  # its copy is not served without the image


def _upload_file_only(client: FlaskClient, app: Flask, name: str) -> None:
    """An image as a node of an earlier version added it: its file and row, no content in the database."""
    with app.app_context():
        from pnp_integrated.models import ImageChunk, db

        assert client.post(f"/api/v1/images?name={name}", data=IMAGE, headers=admin_headers(app),
                           content_type="application/octet-stream").status_code == 201
        db.session.query(ImageChunk).delete()
        db.session.commit()


def test_images_added_before_are_given_to_the_database_at_start(app_factory: Callable[..., Flask],
                                                                postgres_url: str) -> None:
    node_a, node_b = _pair(app_factory, postgres_url)
    _upload_file_only(node_a.test_client(), node_a, "isr4300.17.09.04a.SPA.bin")
    assert node_b.test_client().get("/images/isr4300.17.09.04a.SPA.bin").status_code == 404
    with node_a.app_context():
        assert store_missing_image_chunks() == 1  # what `pnpp run` does after the migrations
        assert store_missing_image_chunks() == 0
    assert node_b.test_client().get("/images/isr4300.17.09.04a.SPA.bin").data == IMAGE


def test_a_damaged_copy_in_the_database_is_refused_not_served(app_factory: Callable[..., Flask],
                                                              postgres_url: str) -> None:
    node_a, node_b = _pair(app_factory, postgres_url)
    assert node_a.test_client().post("/api/v1/images?name=c8000v.17.06.01.SPA.bin", data=IMAGE,
                                     headers=admin_headers(node_a),
                                     content_type="application/octet-stream").status_code == 201
    with node_a.app_context():
        from sqlalchemy import update

        from pnp_integrated.models import ImageChunk, db

        db.session.execute(update(ImageChunk).where(ImageChunk.seq == 1).values(data=b"not the image"))
        db.session.commit()
    answer = node_b.test_client().get("/images/c8000v.17.06.01.SPA.bin")
    assert answer.status_code == 503 and IMAGE[:64] not in answer.data
