"""``pnpp image add`` and ``pnpp token create``: what an operator types on the node."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.api.tokens import token_digest, token_for
from pnp_integrated.cli import main
from pnp_integrated.models import ApiToken, Image, db


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "var"
    monkeypatch.setenv("PNP_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return data_dir


def test_image_add_copies_and_describes_the_file(node: Path, tmp_path: Path) -> None:
    source = tmp_path / "isr4300-universalk9.17.09.04a.SPA.bin"
    source.write_bytes(b"image" * 1000)
    result = CliRunner().invoke(main, ["image", "add", str(source)])
    assert result.exit_code == 0, result.output
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    assert f"md5 {md5}" in result.output and "version 17.09.04a" in result.output
    assert (node / "images" / source.name).read_bytes() == source.read_bytes()

    renamed = CliRunner().invoke(main, ["image", "add", str(source), "--name", "isr.bin", "--version", "17.9.4"])
    assert renamed.exit_code == 0, renamed.output
    again = CliRunner().invoke(main, ["image", "add", str(source)])
    assert again.exit_code == 1 and "already exists" in again.output
    with create_app().app_context():
        rows = {i.name: (i.version, i.md5, i.size) for i in db.session.scalars(select(Image))}
    assert rows == {source.name: ("17.09.04a", md5, 5000), "isr.bin": ("17.9.4", md5, 5000)}
    listing = CliRunner().invoke(main, ["image", "list"])
    assert "isr.bin  version 17.9.4" in listing.output


def test_token_create_prints_a_working_token_and_stores_only_its_hash(node: Path) -> None:
    result = CliRunner().invoke(main, ["token", "create", "--role", "read", "--name", "noc"])
    assert result.exit_code == 0, result.output
    raw = result.output.strip()
    with create_app().app_context():
        token = token_for(raw)
        assert token is not None and (token.name, token.role) == ("noc", "read")
        assert db.session.scalar(select(ApiToken.token_sha256)) == token_digest(raw) != raw
    revoked = CliRunner().invoke(main, ["token", "revoke", "noc"])
    assert revoked.exit_code == 0
    with create_app().app_context():
        assert token_for(raw) is None
    bad_role = CliRunner().invoke(main, ["token", "create", "--role", "root"])
    assert bad_role.exit_code == 2
