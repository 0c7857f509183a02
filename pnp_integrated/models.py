"""Database models. All gateway state lives here, so any worker (and, in HA, any node) can resume any job.

Schema changes go through Alembic (``migrations/``): add a revision with ``flask --app wsgi db migrate`` and apply
it with ``pnpp db upgrade``.

Sessions: each application context has its own ``db.session``, and Flask-SQLAlchemy removes it when the context
ends (rolling back whatever was not committed, and handing the connection back). Work outside a request (device
sockets, background loops) therefore runs in ``with app.app_context():`` and needs no cleanup of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names keep Alembic batch migrations (SQLite) and PostgreSQL migrations identical.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_uuid() -> str:
    return str(uuid.uuid4())


class Image(db.Model):  # type: ignore[name-defined,misc]
    """A software image in the repository (``<data_dir>/images``); MD5 and size computed once when added."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(100), default="")
    md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ImageChunk(db.Model):  # type: ignore[name-defined,misc]
    """A piece of an image's content, kept in a shared (PostgreSQL) database so that every node of an HA pair can
    serve an image whichever node it was added on (see ``provisioning.images``)."""

    __tablename__ = "image_chunks"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Profile(db.Model):  # type: ignore[name-defined,misc]
    """A PnP profile: which devices it matches and what they receive."""

    __tablename__ = "profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    match_serials: Mapped[list[str]] = mapped_column(JSON, default=list)
    match_pid: Mapped[str] = mapped_column(String(255), default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    bootstrap_template: Mapped[str] = mapped_column(Text, default="")
    config_template: Mapped[str] = mapped_column(Text, default="")
    post_template: Mapped[str] = mapped_column(Text, default="")
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), nullable=True)
    reload_after_install: Mapped[bool] = mapped_column(Boolean, default=True)
    credentials: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # never returned by the API
    apply_to: Mapped[str] = mapped_column(String(16), default="running")
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    image: Mapped[Image | None] = relationship()


class Device(db.Model):  # type: ignore[name-defined,misc]
    """A device, keyed by serial number (the SN of an Open PnP UDI, the CNS ConfigID)."""

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(255), unique=True)
    pid: Mapped[str] = mapped_column(String(255), default="")
    udi: Mapped[str] = mapped_column(String(512), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    protocol: Mapped[str] = mapped_column(String(16), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    software_version: Mapped[str] = mapped_column(String(100), default="")
    state: Mapped[str] = mapped_column(String(32), default="unclaimed", index=True)
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id", ondelete="SET NULL"), nullable=True)
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    profile: Mapped[Profile | None] = relationship()

    __table_args__ = (
        # The per-source limit on devices never seen before counts recent first sightings from one address.
        Index("ix_devices_source_first_seen", "address", "first_seen"),
        # The inventory (GET /api/v1/devices) pages by keyset on (sort key, serial): each index serves the sort by
        # its column and a filter on it in the default order (by serial).
        Index("ix_devices_state_serial", "state", "serial"),
        Index("ix_devices_last_seen_serial", "last_seen", "serial"),
        Index("ix_devices_pid_serial", "pid", "serial"),
        Index("ix_devices_software_version_serial", "software_version", "serial"),
        Index("ix_devices_profile_serial", "profile_id", "serial"),
        # The fleet overview counts by state and protocol from the index alone.
        Index("ix_devices_state_protocol", "state", "protocol"),
        # Case-insensitive prefix search: byte-wise ranges on lower(), whatever the PostgreSQL collation.
        Index("ix_devices_serial_folded", func.lower(text("serial")).label("serial_folded"),
              postgresql_ops={"serial_folded": "text_pattern_ops"}),
        Index("ix_devices_hostname_folded", func.lower(text("hostname")).label("hostname_folded"),
              postgresql_ops={"hostname_folded": "text_pattern_ops"}),
    )


class ProvisioningJob(db.Model):  # type: ignore[name-defined,misc]
    """One provisioning run of one device; ``step``/``state`` are the persisted state machine."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id", ondelete="SET NULL"), nullable=True)
    protocol: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    step: Mapped[str] = mapped_column(String(32), default="identify")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # The outstanding request to the device; a repeated device request is answered from here, not re-advanced.
    correlator: Mapped[str] = mapped_column(String(128), default="")
    pending_request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    detail: Mapped[str] = mapped_column(Text, default="")
    failed_step: Mapped[str] = mapped_column(String(32), default="")
    # Optimistic concurrency: two workers cannot both advance the same version.
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    __mapper_args__ = {"version_id_col": version}
    # The console's activity chart counts completions and failures per minute over the last hours from the index
    # alone.
    __table_args__ = (Index("ix_jobs_finished_at_state", "finished_at", "state"),)

    device: Mapped[Device] = relationship(foreign_keys=[device_id])
    steps: Mapped[list[JobStep]] = relationship(back_populates="job", order_by="JobStep.id")


class JobStep(db.Model):  # type: ignore[name-defined,misc]
    """History of a job: one row per step attempt."""

    __tablename__ = "job_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="started")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    job: Mapped[ProvisioningJob] = relationship(back_populates="steps")


class DeviceSession(db.Model):  # type: ignore[name-defined,misc]
    """A live (or ended) device connection; node-wide counts for dispatching come from here."""

    __tablename__ = "device_sessions"
    # The dispatcher counts live sessions per port on every connection: keep that an index scan.
    __table_args__ = (Index("ix_device_sessions_live_port", "closed_at", "port"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True, default=new_uuid)
    device_key: Mapped[str] = mapped_column(String(255), index=True)  # CNS Device-Id / serial
    protocol: Mapped[str] = mapped_column(String(16), default="cns")
    node: Mapped[str] = mapped_column(String(255), default="")
    worker_pid: Mapped[int] = mapped_column(Integer, default=0)
    port: Mapped[int] = mapped_column(Integer, default=0, index=True)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    address: Mapped[str] = mapped_column(String(64), default="")
    subjects: Mapped[list[str]] = mapped_column(JSON, default=list)
    connected_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_frame_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    close_reason: Mapped[str] = mapped_column(String(255), default="")


# The serial number an outbox event is about: ``device.serial`` of device events, ``job.device.serial`` of job events.
# One text for both databases (SQLite 3.38+ has these operators), written the way PostgreSQL prints it back, so that
# Alembic's comparison of the models with the database finds the index unchanged.
OUTBOX_DEVICE_SERIAL = "coalesce((payload -> 'device') ->> 'serial', ((payload -> 'job') -> 'device') ->> 'serial')"


GATEWAY_STATE_EVENTS = "type = 'gateway.state'"


class OutboxEvent(db.Model):  # type: ignore[name-defined,misc]
    """An event for Prime, written in the same transaction as the change it reports; sent by the leader."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The bridge reads unsent events in id order; sent ones pile up behind them.
        Index("ix_outbox_unsent", "sent_at", "id"),
        # A device's history lists the events naming its serial, newest first.
        Index("ix_outbox_device_serial", text(OUTBOX_DEVICE_SERIAL), "id"),
        # The console marks the node's HA transitions on its activity chart; a partial index costs the many other
        # events nothing.
        Index("ix_outbox_gateway_state", "created_at", sqlite_where=text(GATEWAY_STATE_EVENTS),
              postgresql_where=text(GATEWAY_STATE_EVENTS)),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    """Who changed what, through the API, the CLI or a Prime command."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LeaderLease(db.Model):  # type: ignore[name-defined,misc]
    """A named lease with expiry; the holder of ``leader`` runs the broker bridge and the sweeper."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    term: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(db.Model):  # type: ignore[name-defined,misc]
    """A REST API bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ProcessedCommand(db.Model):  # type: ignore[name-defined,misc]
    """Ids of Prime commands already applied: delivery is at least once, application exactly once."""

    __tablename__ = "processed_commands"
    __table_args__ = (UniqueConstraint("command_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ConsoleUser(db.Model):  # type: ignore[name-defined,misc]
    """An operator of the console at ``/``: a name, a role (``admin`` or ``read``, as API tokens have) and a scrypt
    hash of the password (never the password)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    password_set_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ConsoleSession(db.Model):  # type: ignore[name-defined,misc]
    """A signed-in browser: by a user's password or by an API token. The cookie carries a random secret; only its
    SHA-256 is stored, with the session's CSRF token and its absolute expiry."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class SignInFailure(db.Model):  # type: ignore[name-defined,misc]
    """Failed console sign-ins counted per user name and per source address, for the throttle against guessing."""

    __tablename__ = "sign_in_failures"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)  # "user:<name>" or "address:<ip>"
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
