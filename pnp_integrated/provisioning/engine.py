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

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from ..context import sqlite_write_turn
from ..models import Device, Image, JobStep, Profile, ProvisioningJob, db, utcnow
from ..outbox import record_event
from .matching import match_profile
from .templates import TemplateProblem, device_variables, render_template


class ActionKind(StrEnum):
    IDENTIFY = "identify"  # ask the device for its facts (Open PnP device-info; CNS image-agent inventory)
    IMAGE_INSTALL = "image_install"  # transfer (and activate) ``Action.image``
    WAIT = "wait"  # nothing to do now (device reloading, job busy elsewhere): come back in ``wait_seconds``
    CONFIG = "config"  # apply the rendered configuration (``Action.config_text``)
    POST_CONFIG = "post_config"  # apply the post-PnP configuration
    SAVE = "save"  # persist the running configuration (``write memory``)
    DONE = "done"  # provisioning finished: end the conversation
    UNCLAIMED = "unclaimed"  # no profile matches: back off, never hand out another device's configuration
    FAILED = "failed"  # the job failed (reason in ``detail``)
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class DeviceIdentity:
    """Who is talking. ``serial`` is the key (Open PnP UDI SN, CNS ConfigID)."""

    serial: str
    protocol: str  # "cns" | "pnp"
    pid: str = ""
    udi: str = ""
    hostname: str = ""
    address: str = ""


@dataclass(frozen=True)
class DeviceFacts:
    """What a device reported about itself (device-info, CNS inventory)."""

    version: str = ""
    pid: str = ""
    hostname: str = ""
    image_file: str = ""
    filesystems: dict[str, int] = field(default_factory=dict)  # name ("flash:") -> free bytes


@dataclass(frozen=True)
class ImageRef:
    name: str
    version: str
    md5: str
    size: int
    path: str  # URL path on the Image Web Service, e.g. "/images/csr.bin"
    reload: bool = True
    filesystem: str = ""  # the device filesystem with the most free space, when the device reported any


@dataclass(frozen=True)
class Outcome:
    """The device's answer to the request identified by a correlator."""

    success: bool
    detail: str = ""
    error_code: str = ""
    facts: DeviceFacts | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """What the device should do next. ``correlator`` identifies the request and must be echoed back."""

    kind: ActionKind
    job_id: int | None = None
    correlator: str = ""
    step: str = ""
    config_text: str = ""
    apply_to: str = "running"
    image: ImageRef | None = None
    wait_seconds: int = 0
    credentials: dict[str, str] | None = None
    detail: str = ""


log = logging.getLogger(__name__)

UNCLAIMED_WAIT_SECONDS = 120  # an unclaimed device asks again this often; a profile may have appeared meanwhile
BUSY_WAIT_SECONDS = 5  # the database stayed contended: the device asks again shortly
MAX_REPLAYS = 6
DEVICE_CORRELATORS_KEPT = 8  # per pending request: a device that asked several times may answer any of them

# Job states; the last three are terminal.
RUNNING, COMPLETED, FAILED, CANCELLED = "running", "completed", "failed", "cancelled"
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)

# Device states.
DEVICE_UNCLAIMED, DEVICE_PROVISIONING, DEVICE_PROVISIONED = "unclaimed", "provisioning", "provisioned"
DEVICE_FAILED, DEVICE_CANCELLED, DEVICE_EXPECTED = "failed", "cancelled", "expected"
DEVICE_CLAIMED = "claimed"  # an operator assigned a profile; the job starts at the device's next contact
DEVICE_STATES = (DEVICE_EXPECTED, DEVICE_UNCLAIMED, DEVICE_CLAIMED, DEVICE_PROVISIONING, DEVICE_PROVISIONED,
                 DEVICE_FAILED, DEVICE_CANCELLED)

_T = TypeVar("_T")


class StepImpossible(Exception):
    """A step cannot be attempted at all (no free space, a template fails): the job fails without retrying."""


class JobConflict(Exception):
    """An operator request does not fit the job's state (cancel a finished job, retry a running one)."""


class EngineBusy(Exception):
    """The database stayed contended or away: the report was not recorded; the device must send it again."""


class _Lost(Exception):
    """Another worker changed the device or job first: roll back and replay."""


@dataclass
class _Work:
    """One unit of engine work: the locked job with its device and profile."""

    job: ProvisioningJob
    device: Device
    profile: Profile | None

    @property
    def facts(self) -> DeviceFacts:
        return DeviceFacts(**(self.job.context or {}).get("facts", {}))

    def remember(self, **values: Any) -> None:
        # JSON columns only notice reassignment, not in-place mutation.
        self.job.context = {**(self.job.context or {}), **values}


# ---- the steps ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One row of the state machine.

    ``skip`` says why the step does not apply (None: it does); ``request`` builds the fields of the request sent to
    the device (may raise :class:`StepImpossible`); ``check`` looks at a successful outcome and returns a problem
    that turns it into a failure (None: the step succeeded).
    """

    name: str
    kind: ActionKind
    skip: Callable[[_Work], str | None]
    request: Callable[[_Work], dict[str, Any]]
    check: Callable[[_Work, Outcome], str | None]


def _always(_work: _Work) -> str | None:
    return None


def _nothing(_work: _Work) -> dict[str, Any]:
    return {}


def _accept(_work: _Work, _outcome: Outcome) -> str | None:
    return None


def same_version(a: str, b: str) -> bool:
    """Version strings compare equal ignoring case, separators and leading zeros (``16.09.05`` == ``16.9.5``)."""
    def parts(v: str) -> list[str]:
        tokens = "".join(ch if ch.isalnum() else " " for ch in v.lower()).split()
        return [t.lstrip("0") or "0" if t.isdigit() else t for t in tokens]

    return bool(a) and bool(b) and parts(a) == parts(b)


def _store_facts(work: _Work, outcome: Outcome) -> None:
    facts = outcome.facts or DeviceFacts()
    work.remember(facts=asdict(facts))
    if facts.version:
        work.device.software_version = facts.version[:100]
    if facts.pid and not work.device.pid:
        work.device.pid = facts.pid[:255]
    if facts.hostname:
        work.device.hostname = facts.hostname[:255]


def _identified(work: _Work, outcome: Outcome) -> str | None:
    _store_facts(work, outcome)
    return None


def _image(work: _Work) -> Image | None:
    return work.profile.image if work.profile is not None else None


def _image_skip(work: _Work) -> str | None:
    image = _image(work)
    if image is None:
        return "the profile has no image"
    if same_version(work.facts.version, image.version):
        return f"the device already runs version {image.version}"
    return None


def _image_request(work: _Work) -> dict[str, Any]:
    image = _image(work)
    assert image is not None
    free = work.facts.filesystems
    filesystem = ""
    if free:
        filesystem, most = max(free.items(), key=lambda item: item[1])
        if most < image.size:
            raise StepImpossible(
                f"not enough free space for image {image.name} ({image.size} bytes): the largest free space the "
                f"device reported is {most} bytes on {filesystem}"
            )
    ref = ImageRef(name=image.name, version=image.version, md5=image.md5, size=image.size,
                   path=f"/images/{image.filename}", reload=bool(work.profile and work.profile.reload_after_install),
                   filesystem=filesystem)
    return {"image": asdict(ref)}


def _image_installed(work: _Work, _outcome: Outcome) -> str | None:
    request = work.job.pending_request or {}
    work.remember(installed=request.get("image"))
    return None


def _verify_skip(work: _Work) -> str | None:
    installed = (work.job.context or {}).get("installed")
    if not installed:
        return "no image was installed"
    if not installed.get("reload"):
        return "the image was installed without a reload; it runs after the next one"
    return None


def _verify_check(work: _Work, outcome: Outcome) -> str | None:
    _store_facts(work, outcome)
    expected = (work.job.context or {}).get("installed", {}).get("version", "")
    running = work.facts.version
    if expected and not same_version(running, expected):
        return f"after the image install the device runs version {running or '(not reported)'}, expected {expected}"
    return None


def _template_step(attribute: str, label: str) -> tuple[Callable[[_Work], str | None], Callable[[_Work], dict]]:
    def skip(work: _Work) -> str | None:
        if work.profile is None or not getattr(work.profile, attribute):
            return f"the profile has no {label}"
        return None

    def request(work: _Work) -> dict[str, Any]:
        assert work.profile is not None
        try:
            text = render_template(getattr(work.profile, attribute), device_variables(work.profile, work.device),
                                   label=f"{label} of profile {work.profile.name}")
        except TemplateProblem as exc:
            raise StepImpossible(str(exc)) from exc
        return {"config_text": text, "apply_to": work.profile.apply_to or "running"}

    return skip, request


_config_skip, _config_request = _template_step("config_template", "configuration template")
_post_skip, _post_request = _template_step("post_template", "post-PnP template")

STEPS: tuple[Step, ...] = (
    Step("identify", ActionKind.IDENTIFY, _always, _nothing, _identified),
    Step("image", ActionKind.IMAGE_INSTALL, _image_skip, _image_request, _image_installed),
    Step("image.verify", ActionKind.IDENTIFY, _verify_skip, _nothing, _verify_check),
    Step("config", ActionKind.CONFIG, _config_skip, _config_request, _accept),
    Step("post_config", ActionKind.POST_CONFIG, _post_skip, _post_request, _accept),
    Step("save", ActionKind.SAVE, _always, _nothing, _accept),
)
STEP_NAMES = tuple(step.name for step in STEPS)
_BY_NAME = {step.name: step for step in STEPS}


# ---- events ---------------------------------------------------------------------------------------------------------


def device_payload(device: Device) -> dict[str, Any]:
    """The ``device`` object of the broker contract."""
    return {"id": device.id, "serial": device.serial, "pid": device.pid, "udi": device.udi,
            "protocol": device.protocol, "address": device.address, "port": None}


def job_payload(work: _Work, step: str, state: str, attempt: int, detail: str = "") -> dict[str, Any]:
    """The ``job`` object of the broker contract."""
    return {"id": work.job.id, "device": device_payload(work.device),
            "profile": work.profile.name if work.profile is not None else None,
            "step": step, "state": state, "attempt": attempt, "detail": detail}


def _step_event(work: _Work, step: str, state: str, attempt: int, detail: str = "") -> None:
    record_event("job.step", {"job": job_payload(work, step, state, attempt, detail)})
    log.info("device %s job %s step %s %s (attempt %s)%s", work.device.serial, work.job.id, step, state, attempt,
             f": {detail}" if detail else "",
             extra={"device": work.device.serial, "job": work.job.id, "step": step})


# ---- transitions ----------------------------------------------------------------------------------------------------


def _issue(work: _Work, start: str, attempt: int = 1) -> None:
    """Send the first applicable step from ``start`` on (recording skipped ones); complete the job after the last."""
    job = work.job
    for step in STEPS[STEP_NAMES.index(start):]:
        reason = step.skip(work)
        if reason is not None:
            db.session.add(JobStep(job=job, step=step.name, state="skipped", attempt=0, detail=reason,
                                   ended_at=utcnow()))
            _step_event(work, step.name, "skipped", 0, reason)
            attempt = 1
            continue
        try:
            fields = step.request(work)
        except StepImpossible as exc:
            db.session.add(JobStep(job=job, step=step.name, state="failed", attempt=attempt, detail=str(exc),
                                   ended_at=utcnow()))
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
        db.session.add(JobStep(job=job, step=step.name, state="started", attempt=attempt))
        _step_event(work, step.name, "started", attempt)
        return
    _complete(work)


def _finish(work: _Work, state: str, detail: str) -> None:
    job = work.job
    job.state = state
    job.detail = detail
    job.correlator = ""
    job.finished_at = utcnow()
    work.device.state = {COMPLETED: DEVICE_PROVISIONED, FAILED: DEVICE_FAILED, CANCELLED: DEVICE_CANCELLED}[state]


def _complete(work: _Work) -> None:
    work.job.step = "done"
    work.job.pending_request = {"kind": ActionKind.DONE.value, "step": "done"}
    _finish(work, COMPLETED, "provisioned")
    record_event("job.completed", {"job": job_payload(work, "done", COMPLETED, work.job.attempt, "provisioned")})


def _fail(work: _Work, step: str, reason: str) -> None:
    work.job.failed_step = step
    work.job.step = step
    work.job.pending_request = {"kind": ActionKind.FAILED.value, "step": step}
    _finish(work, FAILED, reason)
    record_event("job.failed", {"job": job_payload(work, step, FAILED, work.job.attempt, reason)})


def _open_step(job: ProvisioningJob) -> JobStep | None:
    return db.session.scalar(
        select(JobStep).where(JobStep.job_id == job.id, JobStep.step == job.step, JobStep.state == "started")
        .order_by(JobStep.id.desc()).limit(1)
    )


def _outcome_problem(outcome: Outcome) -> str:
    text = outcome.detail or "the device reported a failure"
    return f"{text} (error {outcome.error_code})" if outcome.error_code else text


def _advance(work: _Work, outcome: Outcome) -> None:
    """Apply the device's outcome for the current request."""
    job = work.job
    step = _BY_NAME[job.step]
    problem = step.check(work, outcome) if outcome.success else _outcome_problem(outcome)
    row = _open_step(job)
    if row is not None:
        row.state = "succeeded" if problem is None else "failed"
        row.detail = (problem or outcome.detail or "")[:2000]
        row.ended_at = utcnow()
    _step_event(work, step.name, "succeeded" if problem is None else "failed", job.attempt, problem or "")
    if work.profile is None:  # deleted by a Prime command mid-job: never carry on with nothing to apply
        _fail(work, step.name, "the job's profile was deleted while the device was being provisioned")
    elif problem is None:
        following = STEP_NAMES.index(step.name) + 1
        if following < len(STEPS):
            _issue(work, STEP_NAMES[following])
        else:
            _complete(work)
    elif job.attempt < job.max_attempts:
        _issue(work, step.name, attempt=job.attempt + 1)
    else:
        _fail(work, step.name, f"step {step.name} failed after {job.attempt} attempt(s): {problem}")


# ---- reading and locking --------------------------------------------------------------------------------------------


def _locking(stmt: Select[Any]) -> Select[Any]:
    """Fresh rows, locked until commit where the database can (PostgreSQL)."""
    stmt = stmt.execution_options(populate_existing=True)
    if db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return stmt


def _device(serial: str, lock: bool = True) -> Device | None:
    stmt = select(Device).where(Device.serial == serial)
    return db.session.scalar(_locking(stmt) if lock else stmt)


def _current_job(device: Device, lock: bool = True) -> ProvisioningJob | None:
    if device.current_job_id is None:
        return None
    stmt = select(ProvisioningJob).where(ProvisioningJob.id == device.current_job_id)
    return db.session.scalar(_locking(stmt) if lock else stmt)


def _credentials(profile: Profile | None) -> dict[str, str] | None:
    if profile is None or not profile.credentials:
        return None
    return {str(k): str(v) for k, v in profile.credentials.items()}


def _unclaimed_action(detail: str = "no profile matches this device") -> Action:
    return Action(ActionKind.UNCLAIMED, wait_seconds=UNCLAIMED_WAIT_SECONDS, detail=detail)


def action_for(job: ProvisioningJob, profile: Profile | None) -> Action:
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


def _profile(job: ProvisioningJob) -> Profile | None:
    return db.session.get(Profile, job.profile_id) if job.profile_id is not None else None


def profile_for(device: Device) -> Profile | None:
    """The profile a new job of ``device`` uses: the one assigned to it, else the first matching rule.

    An assigned profile wins so that a claim is never overridden by a rule, and provisioning a device again never
    silently moves it to another profile; deleting the profile clears the assignment.
    """
    if device.profile_id is not None:
        assigned = db.session.get(Profile, device.profile_id)
        if assigned is not None:
            return assigned
    return match_profile(device.serial, device.pid)


# ---- transactions ---------------------------------------------------------------------------------------------------


def _begin_write() -> None:
    """SQLite: take the database's write lock before the unit of work reads anything (``BEGIN IMMEDIATE``).

    The reads then see the latest commit, so SQLite writers never lose a race and never replay; waiting for the lock
    yields to the worker's other greenlets (see ``extension.CooperativeSQLiteConnection``). PostgreSQL locks rows.
    """
    if db.session.get_bind().dialect.name != "sqlite":
        return
    raw = db.session.connection().connection.dbapi_connection
    if raw is not None and not raw.in_transaction:  # a caller that already wrote keeps its own transaction
        raw.cursor().execute("BEGIN IMMEDIATE")


def _transaction(work: Callable[[], _T], busy: Callable[[], _T]) -> _T:
    """Run ``work`` and commit; replay it after a lost race; ``busy()`` answers when the races never stop."""
    for replay in range(MAX_REPLAYS):
        try:
            with sqlite_write_turn():
                try:
                    _begin_write()
                    result = work()
                    db.session.commit()
                    return result
                except BaseException:
                    db.session.rollback()  # before the next writer of this process gets its turn
                    raise
        except (_Lost, StaleDataError, IntegrityError, OperationalError) as exc:
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
    action = _contact_action(identity)
    if device_correlator and action.correlator and action.job_id is not None:
        _note_device_correlator(db.session.get(ProvisioningJob, action.job_id), device_correlator)
    return action


def _note_device_correlator(job: ProvisioningJob | None, device_correlator: str) -> None:
    if job is None or job.state != RUNNING or device_correlator == job.correlator:
        return
    request = dict(job.pending_request or {})
    known = list(request.get("device_correlators", []))
    if known[-1:] == [device_correlator]:
        return  # asked again under the same name: nothing to write
    known = [c for c in known if c != device_correlator][-(DEVICE_CORRELATORS_KEPT - 1):]
    request["device_correlators"] = [*known, device_correlator]
    job.pending_request = request


def _answers_pending(job: ProvisioningJob, correlator: str) -> bool:
    """The report answers the pending request: its correlator, or a device correlator it was asked under."""
    if not correlator:
        return False
    return correlator == job.correlator or correlator in (job.pending_request or {}).get("device_correlators", ())


def _contact_action(identity: DeviceIdentity) -> Action:
    now = utcnow()
    device = _device(identity.serial)
    reported = device is not None and device.state == DEVICE_UNCLAIMED
    first_contact = device is None or not device.protocol  # unseen, or only known from the API so far
    if device is None:
        device = Device(serial=identity.serial, first_seen=now, state=DEVICE_UNCLAIMED)
        db.session.add(device)
    device.last_seen = now
    device.protocol = identity.protocol[:16]
    for attribute, limit in (("pid", 255), ("udi", 512), ("hostname", 255), ("address", 64)):
        value = getattr(identity, attribute)
        if value:
            setattr(device, attribute, value[:limit])
    db.session.flush()  # a concurrent first contact of the same serial fails here, and is replayed
    if first_contact and identity.protocol == "pnp":
        # Open PnP has no session that comes up (CNS reports its own): Prime hears of the device at first contact.
        record_event("device.connected", {"device": device_payload(device)})

    job = _current_job(device)
    if job is not None:
        return action_for(job, _profile(job))

    profile = profile_for(device)
    if profile is None:
        device.state = DEVICE_UNCLAIMED
        device.profile_id = None
        if not reported:
            record_event("device.unclaimed", {"device": device_payload(device)})
        return _unclaimed_action()
    job = ProvisioningJob(device_id=device.id, profile_id=profile.id, protocol=device.protocol, state=RUNNING,
                          step=STEP_NAMES[0], context={"nonce": secrets.token_hex(3)})
    db.session.add(job)
    db.session.flush()
    _claim(device, job, previous=None)
    device.profile_id = profile.id
    device.state = DEVICE_PROVISIONING
    _issue(_Work(job, device, profile), STEP_NAMES[0])
    return action_for(job, profile)


def _claim(device: Device, job: ProvisioningJob, previous: int | None) -> None:
    """Point the device at ``job`` only if it still points at ``previous`` (compare-and-set across workers)."""
    cond = Device.current_job_id.is_(None) if previous is None else Device.current_job_id == previous
    result = db.session.execute(
        update(Device).where(Device.id == device.id, cond).values(current_job_id=job.id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise _Lost(f"device {device.serial} got another job meanwhile")
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


def _report(serial: str, correlator: str, outcome: Outcome) -> Action:
    device = _device(serial)
    if device is None:
        return _unclaimed_action("unknown device")
    device.last_seen = utcnow()
    job = _current_job(device)
    if job is None:
        return _unclaimed_action()
    profile = _profile(job)
    if job.state in TERMINAL_STATES:
        return action_for(job, profile)
    if not _answers_pending(job, correlator):
        db.session.add(JobStep(job_id=job.id, step=job.step, state="stale", attempt=job.attempt, ended_at=utcnow(),
                               detail=f"ignored a {'success' if outcome.success else 'failure'} report for request "
                                      f"{correlator[:128]!r}; the pending request is {job.correlator}"))
        return action_for(job, profile)
    _advance(_Work(job, device, profile), outcome)
    return action_for(job, profile)


def pending(serial: str) -> Action | None:
    """The device's current action, without changing anything; None for a device never seen."""
    _check_serial(serial)
    device = _device(serial, lock=False)
    if device is None:
        result = None
    else:
        job = _current_job(device, lock=False)
        result = _unclaimed_action() if job is None else action_for(job, _profile(job))
    db.session.commit()
    return result


def rendered_config(serial: str, correlator: str | None = None) -> str | None:
    """The device's configuration text (Config Web Service).

    With a correlator: the text of that pending CONFIG/POST_CONFIG request, or None if it is not the pending one.
    Without: the device's initial configuration, rendered from its profile's configuration template. None for an
    unknown or unclaimed device, or when the template cannot be rendered for it: never another device's text.
    """
    _check_serial(serial)
    try:
        device = _device(serial, lock=False)
        job = _current_job(device, lock=False) if device is not None else None
        if device is None or job is None:
            return None
        request = job.pending_request or {}
        if correlator is not None:
            if correlator != job.correlator or job.state != RUNNING or "config_text" not in request:
                return None
            return str(request["config_text"])
        if job.state == RUNNING and request.get("kind") == ActionKind.CONFIG.value:
            return str(request["config_text"])
        profile = _profile(job)
        if profile is None or not profile.config_template:
            return None
        try:
            return render_template(profile.config_template, device_variables(profile, device),
                                   label=f"configuration template of profile {profile.name}")
        except TemplateProblem as exc:
            log.warning("no configuration for %s: %s", serial, exc)
            return None
    finally:
        db.session.commit()


# ---- operator actions (API, Prime commands): they add to the caller's transaction ------------------------------------


def cancel_job(job: ProvisioningJob, reason: str) -> None:
    """Cancel an unfinished job; the caller commits. Raises :class:`JobConflict` for a finished job."""
    if job.state in TERMINAL_STATES:
        raise JobConflict(f"job {job.id} is already {job.state}")
    work = _Work(job, job.device, _profile(job))
    row = _open_step(job)
    if row is not None:
        row.state = "cancelled"
        row.ended_at = utcnow()
    job.pending_request = {"kind": ActionKind.CANCELLED.value, "step": job.step}
    _finish(work, CANCELLED, reason)
    record_event("job.failed", {"job": job_payload(work, job.step, CANCELLED, job.attempt, reason)})


def restart_job(job: ProvisioningJob) -> ProvisioningJob:
    """Start a new job for the device of a failed or cancelled ``job``; the caller commits.

    Raises :class:`JobConflict` when the job is unfinished or the device has a newer job.
    """
    device = job.device
    if job.state not in (FAILED, CANCELLED):
        raise JobConflict(f"job {job.id} is {job.state}: only a failed or cancelled job can be retried")
    if device.current_job_id != job.id:
        raise JobConflict(f"device {device.serial} has a newer job ({device.current_job_id})")
    return _restart(device, job)


def reprovision(device: Device) -> ProvisioningJob | None:
    """Provision ``device`` again from the start (its next contact gets the new job); the caller commits.

    Raises :class:`JobConflict` when the device's job is still running. Returns None when no profile matches.
    """
    current = _current_job(device)
    if current is not None and current.state not in TERMINAL_STATES:
        raise JobConflict(f"device {device.serial} is being provisioned (job {current.id})")
    return _restart(device, current)


def claim(device: Device, profile: Profile) -> None:
    """Assign ``profile`` to ``device``: its next contact starts a job with it, whatever the matching rules say.

    The caller commits. Raises :class:`JobConflict` while the device's job is running; a device whose last job
    ended is detached from it, so its next contact starts afresh with the claimed profile.
    """
    _device(device.serial)  # lock and refresh the row: a contact racing the claim waits, or wins and conflicts
    current = _current_job(device)
    if current is not None:
        if current.state not in TERMINAL_STATES:
            raise JobConflict(f"device {device.serial} is being provisioned (job {current.id}); cancel that job first")
        result = db.session.execute(
            update(Device).where(Device.id == device.id, Device.current_job_id == current.id)
            .values(current_job_id=None).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise JobConflict(f"device {device.serial} got another job meanwhile")
        set_committed_value(device, "current_job_id", None)
    device.profile_id = profile.id
    device.profile = profile
    device.state = DEVICE_CLAIMED
    record_event("device.claimed", {"device": device_payload(device), "profile": profile.name})


def _restart(device: Device, previous: ProvisioningJob | None) -> ProvisioningJob | None:
    profile = profile_for(device)
    if profile is None:
        return None
    job = ProvisioningJob(device_id=device.id, profile_id=profile.id, protocol=device.protocol, state=RUNNING,
                          step=STEP_NAMES[0], context={"nonce": secrets.token_hex(3)})
    db.session.add(job)
    db.session.flush()
    try:
        _claim(device, job, previous=previous.id if previous is not None else None)
    except _Lost as exc:
        raise JobConflict(f"device {device.serial} got another job meanwhile") from exc
    device.profile_id = profile.id
    device.state = DEVICE_PROVISIONING
    _issue(_Work(job, device, profile), STEP_NAMES[0])
    return job
