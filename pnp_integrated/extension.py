"""The ``PnPGateway`` Flask extension and the application factory.

The extension follows the flask-sqlalchemy ``init_app`` contract: it works with an app factory, registers itself in
``app.extensions["pnp_gateway"]``, refuses double registration and never keeps a reference to an app. Per-app state
(settings, certificate paths) lives in :class:`GatewayState` inside ``app.extensions``.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from flask_migrate import Migrate
from sqlalchemy import event, text

from . import __version__
from .config import ConfigError, Settings, load_settings
from .models import db
from .tls import CertPaths, ensure_certificates

EXTENSION_KEY = "pnp_gateway"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger(__name__)


class SchemaError(RuntimeError):
    """The database is not at the revision this code needs."""


@dataclass
class GatewayState:
    settings: Settings
    certs: CertPaths
    migrate: Migrate
    listeners: Any = None  # this process's ListenerController, once started


def gateway_state(app: Flask | None = None) -> GatewayState:
    state: GatewayState = (app or current_app).extensions[EXTENSION_KEY]
    return state


def current_settings() -> Settings:
    return gateway_state().settings


class PnPGateway:
    """Flask extension that turns an app into a PnP gateway node."""

    def __init__(self, app: Flask | None = None, *, check_schema: bool = True) -> None:
        self.check_schema = check_schema
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, settings: Settings | None = None) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("PnPGateway is already registered on this application")
        if settings is None:
            settings = load_settings(app.config.get("PNP_SETTINGS") or {})
        for sub in (settings.data_dir, settings.images_dir, settings.resources_dir):
            sub.mkdir(parents=True, exist_ok=True)
        certs = ensure_certificates(settings)

        app.config.setdefault("SQLALCHEMY_DATABASE_URI", settings.sqlalchemy_url)
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config["SQLALCHEMY_DATABASE_URI"]))
        app.config.setdefault("MAX_CONTENT_LENGTH", settings.http_max_body_bytes)
        db.init_app(app)
        migrate = Migrate(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True, compare_type=True)
        app.extensions[EXTENSION_KEY] = GatewayState(settings=settings, certs=certs, migrate=migrate)
        from .ha import init_app as init_ha  # NodeRole + 503 for HTTP device requests while PASSIVE

        init_ha(app)

        with app.app_context():
            if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
                event.listen(db.engine, "connect", _sqlite_pragmas)
            if self.check_schema:
                check_schema_current()

        from .status import blueprint as status_blueprint

        app.register_blueprint(status_blueprint)
        from .api import blueprint as api_blueprint  # REST API (/api/v1)

        app.register_blueprint(api_blueprint)
        from .pnp.views import blueprint as pnp_blueprint  # Open PnP (/pnp/HELLO, WORK-REQUEST, WORK-RESPONSE)
        from .webservices import register_web_services  # Config, Image and Resource web services

        app.register_blueprint(pnp_blueprint)
        register_web_services(app)

        from . import metrics
        from .dashboard import blueprint as dashboard_blueprint

        metrics.init_app(app)
        app.register_blueprint(dashboard_blueprint)
        from .cns.imageservice import blueprint as cns_image_blueprint  # CNS image agent (/cns/HttpMsgDispatcher)
        app.register_blueprint(cns_image_blueprint)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Several gevent workers share the file: wait for locks instead of failing at once.
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def schema_revisions() -> tuple[str | None, str | None]:
    """(revision the database is at, revision the code needs)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(gateway_state().migrate.get_config())
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, script.get_current_head()


# Any constant works; it only has to be the same for every node sharing the database.
MIGRATION_LOCK_KEY = 0x504E50


@contextmanager
def migration_lock() -> Iterator[None]:
    """Serialise ``pnpp db upgrade`` across the nodes of an HA pair sharing one database.

    PostgreSQL: a session advisory lock. SQLite (single node): a file lock beside the database.
    """
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        return
    lock_path = gateway_state().settings.data_dir / "migrate.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_schema_current() -> None:
    current, head = schema_revisions()
    if current == head:
        return
    url = db.engine.url.render_as_string(hide_password=True)
    if current is not None and current not in _known_revisions():
        # Upgrading cannot help: a newer release already migrated this database.
        raise SchemaError(
            f"the database {url} is at revision {current}, which this version of pnp-integrated does not know "
            f"(it needs {head}): a newer release upgraded it; run that release, or restore a backup of the database"
        )
    where = "empty (no tables yet)" if current is None else f"at revision {current}"
    raise SchemaError(
        f"the database {url} is {where}, but this version of pnp-integrated needs revision {head}: "
        "run `pnpp db upgrade` first"
    )


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(gateway_state().migrate.get_config())
    return {rev.revision for rev in script.walk_revisions()}


def create_app(config: Mapping[str, Any] | None = None, *, check_schema: bool = True) -> Flask:
    """Application factory.

    ``config`` may hold gateway settings by their lower-case names (``http_port``, ``data_dir`` ...), which override
    the TOML file and the environment, and Flask settings by their upper-case names (``TESTING`` ...).
    """
    app = Flask(__name__)
    overrides: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key.isupper():
            app.config[key] = value
        else:
            overrides[key] = value
    app.config["PNP_SETTINGS"] = overrides
    settings = load_settings(overrides)
    _configure_logging(settings)
    PnPGateway(check_schema=check_schema).init_app(app, settings)
    app.logger.debug("pnp-integrated %s initialised", __version__)
    return app


def _configure_logging(settings: Settings) -> None:
    from .logs import configure

    configure(settings.log_format)


__all__ = ["ConfigError", "PnPGateway", "SchemaError", "create_app", "current_settings", "gateway_state"]
