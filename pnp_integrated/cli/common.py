"""What every ``pnpp`` command shares: how it fails, and how it gets the settings and the app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import ConfigError, Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN_CONF = PROJECT_ROOT / "deploy" / "gunicorn.conf.py"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"pnpp: {message}", err=True)
    sys.exit(code)


def database_error_text(exc: BaseException) -> str:
    """The driver's own words, on one line, without SQLAlchemy's link to its error catalogue."""
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and "sqlalche.me" not in line)


def app_of(settings: Settings, check_schema: bool = True) -> Any:
    """An app on exactly these settings (another database, a pair's): every setting is given, so the file
    PNP_CONFIG names (which setup may be about to write) has nothing to add and is not read."""
    import dataclasses
    import os

    from ..extension import create_app

    named = os.environ.pop("PNP_CONFIG", None)
    try:
        return create_app({f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)},
                          check_schema=check_schema)
    finally:
        if named is not None:
            os.environ["PNP_CONFIG"] = named


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


def app_or_exit(check_schema: bool = True) -> Any:
    from ..extension import SchemaError, create_app

    try:
        return create_app(check_schema=check_schema)
    except ConfigError as exc:
        fail(str(exc), 2)
    except SchemaError as exc:
        fail(str(exc), 1)
