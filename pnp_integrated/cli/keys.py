"""``pnpp profile-keys``: the keys that seal profile credentials in the database."""

from __future__ import annotations

import click

from .common import fail, settings_or_exit


@click.group("profile-keys")
def profile_keys() -> None:
    """Keys that seal profile credentials at rest (PNP_PROFILE_KEYS_FILE)."""


@profile_keys.command("rotate")
def rotate_command() -> None:
    """Seal every profile's credentials with a new key, then drop the old keys (copy the file to the HA peer)."""
    from ..extension import create_app
    from ..sealing import SealError, keys_path, rotate, seal_plaintext

    settings = settings_or_exit()
    app = create_app()
    with app.app_context():
        try:
            plain = seal_plaintext(settings)
            key_id, count = rotate(settings)
        except SealError as exc:
            fail(str(exc))
    click.echo(f"profile credentials sealed with new key {key_id}: {count} profile(s)"
               + (f", {plain} of them stored in the clear until now" if plain else "")
               + f"; keys in {keys_path(settings)}" + (" (copy it to the other node of the pair)"
                                                        if settings.gateway_in_pair else ""))
