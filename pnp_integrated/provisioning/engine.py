"""The provisioning engine: the protocol-neutral surface and the persisted per-device job state machine.

Theory of operation
-------------------
Protocol adapters (CNS, Open PnP) never touch jobs directly. They tell the engine who is talking (:func:`contact`),
report what a device did with a request (:func:`report`), and turn the returned :class:`Action` into their own wire
format. Every call runs in its own database transaction and commits before it returns; all state is in the database,
so any worker, or the other node after a failover, continues any job.

A device is keyed by its serial number. On contact it gets its assigned profile (``devices.profile_id``: set by an
operator's :func:`claim`, kept from its previous job) or else is matched to one (serial, then PID, then the default
profile, see :mod:`.matching`); a device with no profile is *unclaimed*, told to come back later and reported to
Prime once, until a profile matches it or an operator claims it. A device with a profile gets one
:class:`~pnp_integrated.models.ProvisioningJob` that walks the steps of :data:`STEPS` in order::

    identify -> image -> image.verify -> config -> post_config -> save -> done

A step that does not apply (no image in the profile, the device already runs it, no post-PnP template ...) is
recorded as skipped. Each step sends one request to the device, identified by a *correlator*; the request is stored
in the job (``correlator``, ``pending_request``), so a device that repeats its question gets the very same request
and the job never advances twice. Only a report carrying the current correlator moves the job: success goes to the
next step, failure retries the step (a new correlator) until ``max_attempts``, then fails the job with the reason.
Open PnP devices name each WORK-REQUEST with a correlator of their own, and servers copy it onto the request they
answer with; :func:`contact` records those *device correlators* with the pending request, so a report carrying one
of them answers that request too (and one carrying a device correlator of an earlier request is stale).

Concurrency: every call locks the device row first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers), job updates are guarded by the job's ``version`` column, and creating a job is a compare-and-set on
``devices.current_job_id``. A call that loses a race is rolled back and replayed from a fresh read, where the
winner's result is visible: a duplicate report then carries a stale correlator and changes nothing.

Every state change writes its Prime event (``device.unclaimed``, ``device.claimed``, ``job.step``,
``job.completed``, ``job.failed``) to the outbox in the same transaction.
"""


from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from ..context import current_settings, sqlite_write_turn
from ..models import Device, Image, JobStep, Profile, ProvisioningJob, db, utcnow
from ..outbox import device_payload, job_payload, record_event
from ..refusals import NEW_DEVICES_PER_SOURCE, count_refusal
from ..sealing import SealError, unseal
from ..statements import PlainStatement, dbapi_connection, dialect_name, unit_of_work
from .matching import first_match, match_profile
from .steps import BY_NAME, STEP_NAMES, STEPS, Work
from .templates import TemplateProblem, device_variables, render_template
from .types import (
    BUSY_WAIT_SECONDS,
    CANCELLED,
    COMPLETED,
    DEVICE_CANCELLED,
    DEVICE_FAILED,
    DEVICE_PROVISIONED,
    DEVICE_PROVISIONING,
    DEVICE_UNCLAIMED,
    FAILED,
    NEW_DEVICES_WAIT_SECONDS,
    RUNNING,
    TERMINAL_STATES,
    UNCLAIMED_WAIT_SECONDS,
    Action,
    ActionKind,
    DeviceIdentity,
    EngineBusy,
    ImageRef,
    Outcome,
    StepImpossible,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
MAX_REPLAYS = 6  # a transaction that lost a race this often gives up: the device is told to retry
DEVICE_CORRELATORS_KEPT = 8  # per pending request: a device that asked several times may answer any of them


class LostRace(Exception):
    """Another worker changed the device or job first: roll back and replay."""


# ---- events ---------------------------------------------------------------------------------------------------------


def job_event_payload(work: Work, step: str, state: str, attempt: int, detail: str = "") -> dict[str, Any]:
    return job_payload(work.job.id, work.device, work.profile.name if work.profile is not None else None, step, state,
                       attempt, detail)


def _step_event(work: Work, step: str, state: str, attempt: int, detail: str = "") -> None:
    record_event("job.step", {"job": job_event_payload(work, step, state, attempt, detail)})
    # One INFO line per step, its outcome; a first attempt's start is in the job's history (and at DEBUG), a
    # retry's start is worth the operator's eye.
    level = logging.DEBUG if state == "started" and attempt == 1 else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, "device %s job %s step %s %s (attempt %s)%s", work.device.serial, work.job.id, step, state,
                attempt, f": {detail}" if detail else "",
                extra={"device": work.device.serial, "job": work.job.id, "step": step})


# ---- the job's history ----------------------------------------------------------------------------------------------

# Plain statements, built once: history rows are written on every step and never read back in the same transaction.
_STEPS_TABLE = JobStep.__table__
_INSERT_STEP = PlainStatement(insert(_STEPS_TABLE))
_OPEN_STEP_ID = (select(func.max(_STEPS_TABLE.c.id))
                 .where(_STEPS_TABLE.c.job_id == bindparam("job"), _STEPS_TABLE.c.step == bindparam("name"),
                        _STEPS_TABLE.c.state == "started")
                 .scalar_subquery())
_CLOSE_OPEN_STEP = PlainStatement(
    update(_STEPS_TABLE).where(_STEPS_TABLE.c.id == _OPEN_STEP_ID)
    .values(state=bindparam("new_state"), detail=bindparam("new_detail"), ended_at=bindparam("at")))


def record_step(job: ProvisioningJob, step: str, state: str, attempt: int, detail: str = "", *,
                ended: bool = True) -> None:
    """A row of the job's history (``ended``: the attempt is over, as for a skipped or refused step)."""
    now = utcnow()
    _INSERT_STEP.run({"job_id": job.id, "step": step, "state": state, "attempt": attempt, "detail": detail,
                      "started_at": now, "ended_at": now if ended else None})


def close_open_step(job: ProvisioningJob, state: str, detail: str = "") -> None:
    """End the history row of the job's step in progress (if there is one) with ``state``."""
    _CLOSE_OPEN_STEP.run({"job": job.id, "name": job.step, "new_state": state, "new_detail": detail[:2000],
                          "at": utcnow()})


# ---- transitions ----------------------------------------------------------------------------------------------------


def issue_step(work: Work, start: str, attempt: int = 1) -> None:
    """Send the first applicable step from ``start`` on (recording skipped ones); complete the job after the last."""
    job = work.job
    for step in STEPS[STEP_NAMES.index(start):]:
        reason = step.skip(work)
        if reason is not None:
            record_step(job, step.name, "skipped", 0, reason)
            _step_event(work, step.name, "skipped", 0, reason)
            attempt = 1
            continue
        try:
            fields = step.request(work)
        except StepImpossible as exc:
            record_step(job, step.name, "failed", attempt, str(exc))
            _fail(work, step.name, str(exc))
            return
        seq = int((job.context or {}).get("seq", 0)) + 1
        nonce = (job.context or {}).get("nonce") or secrets.token_hex(3)
        work.remember(seq=seq, nonce=nonce)
        job.step = step.name
        job.attempt = attempt
        job.state = RUNNING
        job.correlator = f"job{job.id}-{seq}-{nonce}"
        job.pending_request = {"kind": step.kind.value, "step": step.name, **fields}
        record_step(job, step.name, "started", attempt, ended=False)
        _step_event(work, step.name, "started", attempt)
        return
    _complete(work)


def finish_job(work: Work, state: str, detail: str) -> None:
    job = work.job
    job.state = state
    job.detail = detail
    job.correlator = ""
    job.finished_at = utcnow()
    work.device.state = {COMPLETED: DEVICE_PROVISIONED, FAILED: DEVICE_FAILED, CANCELLED: DEVICE_CANCELLED}[state]


def _complete(work: Work) -> None:
    work.job.step = "done"
    work.job.pending_request = {"kind": ActionKind.DONE.value, "step": "done"}
    finish_job(work, COMPLETED, "provisioned")
    record_event("job.completed", {"job": job_event_payload(work, "done", COMPLETED, work.job.attempt, "provisioned")})


def _fail(work: Work, step: str, reason: str) -> None:
    work.job.failed_step = step
    work.job.step = step
    work.job.pending_request = {"kind": ActionKind.FAILED.value, "step": step}
    finish_job(work, FAILED, reason)
    record_event("job.failed", {"job": job_event_payload(work, step, FAILED, work.job.attempt, reason)})


def _outcome_problem(outcome: Outcome) -> str:
    text = outcome.detail or "the device reported a failure"
    return f"{text} (error {outcome.error_code})" if outcome.error_code else text


def _advance(work: Work, outcome: Outcome) -> None:
    """Apply the device's outcome for the current request."""
    job = work.job
    step = BY_NAME[job.step]
    problem = step.check(work, outcome) if outcome.success else _outcome_problem(outcome)
    close_open_step(job, "succeeded" if problem is None else "failed", problem or outcome.detail or "")
    _step_event(work, step.name, "succeeded" if problem is None else "failed", job.attempt, problem or "")
    if work.profile is None:  # deleted by a Prime command mid-job: never carry on with nothing to apply
        _fail(work, step.name, "the job's profile was deleted while the device was being provisioned")
    elif problem is None:
        following = STEP_NAMES.index(step.name) + 1
        if following < len(STEPS):
            issue_step(work, STEP_NAMES[following])
        else:
            _complete(work)
    elif job.attempt < job.max_attempts:
        issue_step(work, step.name, attempt=job.attempt + 1)
    else:
        _fail(work, step.name, f"step {step.name} failed after {job.attempt} attempt(s): {problem}")


# ---- reading and locking --------------------------------------------------------------------------------------------


def _locking(stmt: Select[Any]) -> Select[Any]:
    """Fresh rows, locked until commit where the database can (PostgreSQL)."""
    stmt = stmt.execution_options(populate_existing=True)
    if db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return stmt


def locked_device(serial: str, lock: bool = True) -> Device | None:
    stmt = select(Device).where(Device.serial == serial)
    return db.session.scalar(_locking(stmt) if lock else stmt)


def current_job(device: Device, lock: bool = True) -> ProvisioningJob | None:
    if device.current_job_id is None:
        return None
    stmt = select(ProvisioningJob).where(ProvisioningJob.id == device.current_job_id)
    return db.session.scalar(_locking(stmt) if lock else stmt)


class JobState(Protocol):
    """What :func:`action_for` reads of a job: an ORM row, or the columns the contact fast path selected."""

    id: int
    state: str
    step: str
    correlator: str
    pending_request: dict[str, Any]
    detail: str
    failed_step: str


class ProfileSecrets(Protocol):
    """What :func:`action_for` reads of a profile."""

    name: str
    credentials: dict[str, Any]


def _credentials(profile: ProfileSecrets | None) -> dict[str, str] | None:
    if profile is None or not profile.credentials:
        return None
    try:
        return unseal(current_settings(), profile.credentials) or None
    except SealError as exc:  # the device is asked without them (and fails its login): the log says why
        log.error("profile %s: %s", profile.name, exc)
        return None


def _unclaimed_action(detail: str = "no profile matches this device") -> Action:
    return Action(ActionKind.UNCLAIMED, wait_seconds=UNCLAIMED_WAIT_SECONDS, detail=detail)


def action_for(job: JobState, profile: ProfileSecrets | None) -> Action:
    """The action a job asks of its device now (the stored pending request, or its terminal state)."""
    if job.state == COMPLETED:
        return Action(ActionKind.DONE, job_id=job.id, step="done", detail=job.detail)
    if job.state == FAILED:
        return Action(ActionKind.FAILED, job_id=job.id, step=job.failed_step, detail=job.detail)
    if job.state == CANCELLED:
        return Action(ActionKind.CANCELLED, job_id=job.id, step=job.step, detail=job.detail)
    request = job.pending_request or {}
    image = request.get("image")
    return Action(
        kind=ActionKind(request.get("kind", ActionKind.WAIT.value)),
        job_id=job.id,
        correlator=job.correlator,
        step=job.step,
        config_text=request.get("config_text", ""),
        apply_to=request.get("apply_to", "running"),
        image=ImageRef(**image) if image else None,
        wait_seconds=int(request.get("wait_seconds", 0)),
        credentials=_credentials(profile),
        detail=request.get("detail", ""),
    )


def job_profile(job: ProvisioningJob) -> Profile | None:
    return db.session.get(Profile, job.profile_id) if job.profile_id is not None else None


def profile_for(device: Device) -> Profile | None:
    """The profile a new job of ``device`` uses: the one assigned to it, else the first matching rule.

    An assigned profile wins so that a claim is never overridden by a rule, and provisioning a device again never
    silently moves it to another profile; deleting the profile clears the assignment.
    """
    return match_profile(device.serial, device.pid, assigned=device.profile_id)


# ---- transactions ---------------------------------------------------------------------------------------------------


def _begin_write() -> None:
    """SQLite: take the database's write lock before the unit of work reads anything (``BEGIN IMMEDIATE``).

    The reads then see the latest commit, so SQLite writers never lose a race and never replay; waiting for the lock
    yields to the worker's other greenlets (see ``extension.CooperativeSQLiteConnection``). PostgreSQL locks rows.
    """
    if dialect_name() != "sqlite":
        return
    raw = dbapi_connection()
    if raw is not None and not raw.in_transaction:  # a caller that already wrote keeps its own transaction
        raw.cursor().execute("BEGIN IMMEDIATE")


def _transaction(work: Callable[[], _T], busy: Callable[[], _T]) -> _T:
    """Run ``work`` and commit; replay it after a lost race; ``busy()`` answers when the races never stop.

    A device request runs in a transaction of its own, without an ORM session (its statements are plain); a caller
    whose session has a transaction in progress has the work done and committed in that one, as its reads and
    writes belong to it. Either way the rollback of a failed attempt comes before the next writer's turn.
    """
    for replay in range(MAX_REPLAYS):
        try:
            with sqlite_write_turn(), unit_of_work():
                _begin_write()
                return work()
        except (LostRace, StaleDataError, IntegrityError, OperationalError) as exc:
            log.debug("engine transaction lost a race (%s), replay %d", type(exc).__name__, replay + 1)
            time.sleep(random.uniform(0.005, 0.05) * (replay + 1))  # spread the contenders out
    log.warning("engine transaction still contended after %d replays", MAX_REPLAYS)
    return busy()


def _raise_busy() -> Action:
    raise EngineBusy("the database stayed contended; the result was not recorded")


def _busy() -> Action:
    return Action(ActionKind.WAIT, wait_seconds=BUSY_WAIT_SECONDS, detail="the gateway is busy, ask again")


def _check_serial(serial: str) -> None:
    if not serial or not serial.strip() or len(serial) > 255:
        raise ValueError("a device serial number of 1 to 255 characters is required")


# ---- the public surface ---------------------------------------------------------------------------------------------


def contact(identity: DeviceIdentity, *, device_correlator: str = "") -> Action:
    """A device asks for work: record it, claim it for a profile, start its job, return its current request.

    Idempotent: asking again without a :func:`report` returns the same request with the same correlator.
    ``device_correlator``: the device's own name for this question (Open PnP); a report carrying it answers the
    request returned here.
    """
    _check_serial(identity.serial)
    return _transaction(lambda: _contact(identity, device_correlator), _busy)


def _contact(identity: DeviceIdentity, device_correlator: str = "") -> Action:
    device, job, profile = _locked_work(identity.serial)
    if device is not None and job is not None and device.protocol:
        return _known_device_contact(identity, device, job, profile, device_correlator)
    return _first_contact(identity, device, job, profile, device_correlator)


def _with_device_correlator(state: str, correlator: str, pending_request: dict[str, Any] | None,
                            device_correlator: str) -> dict[str, Any] | None:
    """The pending request that also answers to ``device_correlator``; ``None`` when nothing is to be written."""
    if not device_correlator or state != RUNNING or device_correlator == correlator:
        return None
    request = dict(pending_request or {})
    known = list(request.get("device_correlators", []))
    if known[-1:] == [device_correlator]:
        return None  # asked again under the same name: nothing to write
    known = [c for c in known if c != device_correlator][-(DEVICE_CORRELATORS_KEPT - 1):]
    request["device_correlators"] = [*known, device_correlator]
    return request


def _note_device_correlator(job: _Record, device_correlator: str) -> None:
    request = _with_device_correlator(job.state, job.correlator, job.pending_request, device_correlator)
    if request is not None:
        job.pending_request = request


_DEVICES, _JOBS, _PROFILES, _IMAGES = Device.__table__, ProvisioningJob.__table__, Profile.__table__, Image.__table__
_COLUMN_NAMES = {table.name: tuple(column.name for column in table.c)
                 for table in (_DEVICES, _JOBS, _PROFILES, _IMAGES)}
_IDENTITY_LIMITS = (("pid", 255), ("udi", 512), ("hostname", 255), ("address", 64))


def _known_device_contact(identity: DeviceIdentity, device: _Record, job: _Record, profile: _Record | None,
                          device_correlator: str) -> Action:
    """The contact of a device that has a job already (every request of a day 0 but the first): after the one read
    a report makes too, one update of the device and, when the device named its question anew, one of the job.

    The device row was locked by the read (PostgreSQL), and the job's write is a compare-and-set on its
    ``version``, so a concurrent writer makes this one replay.
    """
    _note_identity(device, identity, utcnow())
    _note_device_correlator(job, device_correlator)
    _write_back(device, job)
    return action_for(job, profile)


def _note_identity(device: _Record, identity: DeviceIdentity, now: dt.datetime) -> None:
    """The device as it presents itself now: seen now, its protocol, and what it tells of itself (each column
    assigned only when it changes, so the UPDATE sets only those)."""
    device.last_seen = now
    if device.protocol != identity.protocol[:16]:
        device.protocol = identity.protocol[:16]
    for attribute, limit in _IDENTITY_LIMITS:
        value = getattr(identity, attribute)[:limit]
        if value and value != getattr(device, attribute):
            setattr(device, attribute, value)


def _answers_pending(job: ProvisioningJob, correlator: str) -> bool:
    """The report answers the pending request: its correlator, or a device correlator it was asked under."""
    if not correlator:
        return False
    return correlator == job.correlator or correlator in (job.pending_request or {}).get("device_correlators", ())


def _new_devices_limit(address: str) -> int:
    """The allowance of new devices a minute that applies to ``address``; 0 when none does (no query needed)."""
    limit = current_settings().new_devices_per_source_per_minute
    if limit <= 0 or not address or _is_loopback(address):  # this host (its own simulators), not the network
        return 0
    return limit


def new_devices_limited(address: str) -> bool:
    """Whether ``address`` has introduced its allowance of devices never seen before this minute
    (``PNP_NEW_DEVICES_PER_SOURCE_PER_MINUTE``): each is a row and a Prime event, and nobody has authenticated."""
    limit = _new_devices_limit(address)
    if not limit:
        return False
    since = utcnow() - dt.timedelta(seconds=60)
    recent = _RECENT_NEW_DEVICES.first({"address": address[:64], "since": since})
    return (recent[0] if recent else 0) >= limit


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def new_device_refused(serial: str, address: str) -> bool:
    """Whether a device of this serial would be refused now: unknown, from a source over its new-device allowance.

    Asked at every CNS admission: a known device (a whole fleet returning after a failover) costs one lookup by
    serial, never the count.
    """
    if not _new_devices_limit(address):
        return False
    if _DEVICE_BY_SERIAL.first({"serial": serial}) is not None:
        return False
    return new_devices_limited(address)


def _refused_new_device(address: str) -> Action:
    count_refusal(NEW_DEVICES_PER_SOURCE)
    limit = current_settings().new_devices_per_source_per_minute
    return Action(ActionKind.REFUSED, wait_seconds=NEW_DEVICES_WAIT_SECONDS,
                  detail=f"{address} introduced {limit} new devices this minute; come back later")


def _first_contact(identity: DeviceIdentity, device: _Record | None, job: _Record | None,
                   profile: _Record | None, device_correlator: str) -> Action:
    """A device without a job yet (unseen, known only from the API, unclaimed so far) or its first contact: the
    device recorded, claimed for a profile and its job started, in plain statements as a known device's contact.

    A concurrent first contact of the same serial fails the device's INSERT (its serial is unique), and attaching the
    job is a compare-and-set on ``devices.current_job_id``: either makes this one replay.
    """
    now = utcnow()
    if device is None:
        if new_devices_limited(identity.address):
            return _refused_new_device(identity.address)  # nothing recorded: no row, no event
        device, reported, first_contact = _new_device(identity, now), False, True
    else:
        reported = device.state == DEVICE_UNCLAIMED
        first_contact = not device.protocol  # only known from the API so far
        _note_identity(device, identity, now)
    if first_contact and identity.protocol == "pnp":
        # Open PnP has no session that comes up (CNS reports its own): Prime hears of the device at first contact.
        record_event("device.connected", {"device": device_payload(device)})
    if job is not None:
        _note_device_correlator(job, device_correlator)
        _write_back(device, job)
        return action_for(job, profile)

    profile = _profile_for(device)
    if profile is None:
        device.state = DEVICE_UNCLAIMED
        device.profile_id = None
        if not reported:
            record_event("device.unclaimed", {"device": device_payload(device)})
        _write_back(device, None)
        return _unclaimed_action()
    if device.current_job_id is not None:
        # PostgreSQL: the device row was locked after the other transaction that gave it this job had committed, but
        # the outer join still read the jobs as they were before: read again.
        raise LostRace(f"device {device.serial} got a job meanwhile")
    job = _new_job(device, profile)
    device.current_job_id = job.id
    device.profile_id = profile.id
    device.state = DEVICE_PROVISIONING
    issue_step(Work(job, device, profile), STEP_NAMES[0])  # type: ignore[arg-type]
    _note_device_correlator(job, device_correlator)
    _write_back(device, job, attaching=True)
    return action_for(job, profile)


_INSERT_DEVICE = PlainStatement(insert(_DEVICES).returning(*_DEVICES.c))
_INSERT_JOB = PlainStatement(insert(_JOBS).returning(*_JOBS.c))
_DEVICE_BY_SERIAL = PlainStatement(select(_DEVICES.c.id).where(_DEVICES.c.serial == bindparam("serial")))
_RECENT_NEW_DEVICES = PlainStatement(
    select(func.count()).select_from(_DEVICES)
    .where(_DEVICES.c.address == bindparam("address"), _DEVICES.c.first_seen >= bindparam("since")))


def _new_device(identity: DeviceIdentity, now: dt.datetime) -> _Record:
    values: dict[str, Any] = {"serial": identity.serial, "first_seen": now, "last_seen": now,
                              "state": DEVICE_UNCLAIMED, "protocol": identity.protocol[:16]}
    for attribute, limit in _IDENTITY_LIMITS:
        value = getattr(identity, attribute)
        if value:
            values[attribute] = value[:limit]
    row = _INSERT_DEVICE.first(values)
    assert row is not None
    return _record(row, _DEVICES)


def _new_job(device: _Record, profile: _Record) -> _Record:
    row = _INSERT_JOB.first({"device_id": device.id, "profile_id": profile.id, "protocol": device.protocol,
                             "state": RUNNING, "step": STEP_NAMES[0], "context": {"nonce": secrets.token_hex(3)}})
    assert row is not None
    return _record(row, _JOBS)


_EVERY_PROFILE = PlainStatement(
    select(*_PROFILES.c, *_IMAGES.c)
    .select_from(_PROFILES.outerjoin(_IMAGES, _IMAGES.c.id == _PROFILES.c.image_id))
    .order_by(_PROFILES.c.id))


def _profile_for(device: _Record) -> _Record | None:
    """:func:`profile_for` on records, from one read of every profile with its image."""
    profiles = []
    for row in _EVERY_PROFILE.all({}):
        profile, image = _records(row, _PROFILES, _IMAGES)
        assert profile is not None  # the left side of the join
        profiles.append(_with_image(profile, image))
    return first_match(profiles, device.serial, device.pid, assigned=device.profile_id)


def attach_job(device: Device, job: ProvisioningJob, previous: int | None) -> None:
    """Point the device at ``job`` only if it still points at ``previous`` (compare-and-set across workers)."""
    cond = Device.current_job_id.is_(None) if previous is None else Device.current_job_id == previous
    result = db.session.execute(
        update(Device).where(Device.id == device.id, cond).values(current_job_id=job.id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LostRace(f"device {device.serial} got another job meanwhile")
    set_committed_value(device, "current_job_id", job.id)


def report(serial: str, correlator: str, outcome: Outcome, *, must_record: bool = False) -> Action:
    """The device's result for the request ``correlator``; returns what it should do next.

    A report with a stale or unknown correlator changes nothing (it is recorded in the job's history) and returns
    the current request. When the database stays contended the answer is WAIT (the device asks again and is given
    the same request); with ``must_record`` (a caller that acknowledges the result to the device only once it is
    recorded) the database's failures and contention raise, :class:`EngineBusy` for contention.
    """
    _check_serial(serial)
    return _transaction(lambda: _report(serial, correlator, outcome), _raise_busy if must_record else _busy)




class _Record:
    """A row read with a plain statement: attributes as on the ORM object, and every assignment remembered, so the
    changes of a unit of work go back in one UPDATE (JSON columns are reassigned, never changed in place)."""

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_changed", {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = value
        self._changed[name] = value

    @property
    def changes(self) -> dict[str, Any]:
        return dict(self._changed)


_WORK_TABLES = (_DEVICES, _JOBS, _PROFILES, _IMAGES)
_WORK_SELECT = (
    select(*(column for table in _WORK_TABLES for column in table.c))
    .select_from(_DEVICES.outerjoin(_JOBS, _JOBS.c.id == _DEVICES.c.current_job_id)
                 .outerjoin(_PROFILES, _PROFILES.c.id == _JOBS.c.profile_id)
                 .outerjoin(_IMAGES, _IMAGES.c.id == _PROFILES.c.image_id))
    .where(_DEVICES.c.serial == bindparam("serial"))
)
_WORK = PlainStatement(_WORK_SELECT)
_WORK_LOCKED = PlainStatement(_WORK_SELECT.with_for_update(of=_DEVICES))
_DEVICE_CHANGED = PlainStatement(update(_DEVICES).where(_DEVICES.c.id == bindparam("row_id")))
_DEVICE_ATTACHED = PlainStatement(
    update(_DEVICES).where(_DEVICES.c.id == bindparam("row_id"), _DEVICES.c.current_job_id.is_(None)))
# The columns set are the parameters' names: each set of changed columns compiles once, not per call.
_JOB_CHANGED = PlainStatement(
    update(_JOBS).where(_JOBS.c.id == bindparam("row_id"), _JOBS.c.version == bindparam("expected_version")))


def _records(row: tuple[Any, ...], *tables: Any) -> list[_Record | None]:
    """A row of every column of ``tables`` (in order) as one record per table (``None`` where an outer join found
    nothing)."""
    records: list[_Record | None] = []
    at = 0
    for table in tables:
        names = _COLUMN_NAMES[table.name]
        values = dict(zip(names, row[at:at + len(names)], strict=True))
        at += len(names)
        records.append(None if values["id"] is None else _Record(values))
    return records


def _record(row: tuple[Any, ...], table: Any) -> _Record:
    """A row of every column of ``table`` (an INSERT's RETURNING) as a record."""
    record = _records(row, table)[0]
    assert record is not None
    return record


def _with_image(profile: _Record, image: _Record | None) -> _Record:
    """The profile record with its image (``None``: none) as the ORM's ``profile.image``, not a change to write."""
    object.__setattr__(profile, "image", image)
    return profile


def _locked_work(serial: str, lock: bool = True) -> tuple[Any, Any, Any]:
    """The device, its current job and the job's profile (with its image) in one plain read, the device row locked
    (PostgreSQL) unless ``lock`` is false; as records whose changes :func:`_write_back` writes."""
    read = _WORK_LOCKED if lock and dialect_name() == "postgresql" else _WORK
    row = read.first({"serial": serial})
    if row is None:
        return None, None, None
    device, job, profile, image = _records(row, *_WORK_TABLES)
    return device, job, None if profile is None else _with_image(profile, image)


def _write_back(device: _Record, job: _Record | None, *, attaching: bool = False) -> None:
    """One UPDATE per changed row; the job's is a compare-and-set on its version (a concurrent writer replays us).

    ``attaching``: the device is pointed at its new ``job`` only if it still points at no job, as :func:`attach_job`
    does.
    """
    if job is not None and job.changes:
        version = job._values["version"]
        values = {**job.changes, "version": version + 1, "row_id": job.id, "expected_version": version}
        if _JOB_CHANGED.rowcount(values) != 1:
            raise LostRace(f"job {job.id} changed meanwhile")
    if attaching:
        if _DEVICE_ATTACHED.rowcount({"row_id": device.id, **device.changes}) != 1:
            raise LostRace(f"device {device.serial} got another job meanwhile")
    elif device.changes:
        _DEVICE_CHANGED.run({"row_id": device.id, **device.changes})


def _report(serial: str, correlator: str, outcome: Outcome) -> Action:
    """A report in plain statements: one read of device, job, profile and image, then one write per changed row."""
    device, job, profile = _locked_work(serial)
    if device is None:
        return _unclaimed_action("unknown device")
    device.last_seen = utcnow()
    if job is None:
        answer = _unclaimed_action()
    elif job.state in TERMINAL_STATES:
        answer = action_for(job, profile)
    elif not _answers_pending(job, correlator):
        record_step(job, job.step, "stale", job.attempt,
                    f"ignored a {'success' if outcome.success else 'failure'} report for request "
                    f"{correlator[:128]!r}; the pending request is {job.correlator}")
        answer = action_for(job, profile)
    else:
        _advance(Work(job, device, profile), outcome)
        answer = action_for(job, profile)
    _write_back(device, job)
    return answer


def pending(serial: str) -> Action | None:
    """The device's current action, without changing anything; None for a device never seen."""
    _check_serial(serial)
    with unit_of_work():
        device, job, profile = _locked_work(serial, lock=False)
    if device is None:
        return None
    return _unclaimed_action() if job is None else action_for(job, profile)


def rendered_config(serial: str, correlator: str | None = None) -> str | None:
    """The device's configuration text (Config Web Service).

    With a correlator: the text of that pending CONFIG/POST_CONFIG request, or None if it is not the pending one.
    Without: the device's initial configuration, rendered from its profile's configuration template. None for an
    unknown or unclaimed device, or when the template cannot be rendered for it: never another device's text.
    """
    _check_serial(serial)
    with unit_of_work():
        device, job, profile = _locked_work(serial, lock=False)
    if device is None or job is None:
        return None
    request = job.pending_request or {}
    if correlator is not None:
        if correlator != job.correlator or job.state != RUNNING or "config_text" not in request:
            return None
        return str(request["config_text"])
    if job.state == RUNNING and request.get("kind") == ActionKind.CONFIG.value:
        return str(request["config_text"])
    if profile is None or not profile.config_template:
        return None
    try:
        return render_template(profile.config_template, device_variables(profile, device),
                               label=f"configuration template of profile {profile.name}")
    except TemplateProblem as exc:
        log.warning("no configuration for %s: %s", serial, exc)
        return None
