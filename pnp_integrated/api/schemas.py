"""The REST API's schemas: one typed model per resource, what a request may hold and what an answer holds.

The same models validate each request (:mod:`.contract` reads the body and the query string into them), serialise
each answer (``model_dump_json``; the answers are read from the database rows with ``from_attributes``), and are
the OpenAPI document's schemas (JSON Schema 2020-12, as OpenAPI 3.1 has it: 3.0 could not say which names a
template variable may have). What no schema can say (an image or profile that must exist, a template or regular
expression that must compile) is a refusal each operation's 422 answer names.

A request model is strict: JSON ``true`` is no integer, ``1`` no string, and a name it does not declare is
refused by name. Where the generic words of a refusal would not help, a field carries a :class:`Refusal`: the
message a 422 gives for it. Credentials are part of no answer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.fernet import Fernet
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PlainSerializer,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from werkzeug.datastructures import FileStorage

from ..config import Settings
from ..credentials import LOGIN_PATTERN
from ..outbox import rfc3339
from ..provisioning.images import MAX_VERSION, NAME_PATTERN
from ..provisioning.matching import pid_pattern_problem
from ..provisioning.types import DEVICE_STATES, RUNNING, TERMINAL_STATES
from .inventory import (
    DEFAULT_LIMIT,
    FILTERS,
    HISTORY_EVENTS,
    MAX_CURSOR,
    MAX_LIMIT,
    ORDERS,
    PROTOCOLS,
    SEARCH_COUNT_LIMIT,
    SORT_KEYS,
    SORTS,
    timestamp,
)

MAX_TEXT = 256 * 1024  # a template larger than this is a mistake, not a configuration
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # names a template can use, ASCII only
MAX_VARIABLES = 1000
MAX_OFFSET = 2**31 - 1  # beyond any table here, and within every database's integer
MAX_IMAGE_VERSION = MAX_VERSION  # the image repository's limit on a version (store_image)
# The settings a pair's nodes share, sent whole by the primary: where Prime is, the pair itself, the database, the
# ports devices reach the VIP on, the configuration URL tokens either node must verify. Everything else (node
# name, data directory, workers, TLS files) stays the secondary's own.
PAIR_SETTINGS = (
    "mode", "ha_mode", "prime_address", "prime_secondary_address", "broker_port", "health_port",
    "gateway_ha", "gateway_role", "vip", "virtual_host_name", "node_address", "gateway_peer",
    "gateway_failback", "gateway_hold_down", "gateway_vip_mover", "gateway_vip_interface", "gateway_vip_prefix",
    "database_url", "http_port", "https_port", "cns_port_base", "config_url_tokens", "config_url_token_lifetime",
)
MAX_PEM = 64 * 1024
MAX_KEYS = 100
TEMPLATES = {"bootstrap_template": "bootstrap template", "config_template": "configuration template",
             "post_template": "post-PnP template"}
JOB_STATES = (RUNNING, *TERMINAL_STATES)
# Step states in which the device answered the step's request (a skipped step was never sent; a cancelled or a
# started one has no answer).
ANSWERED_STEP_STATES = ("succeeded", "failed")


@dataclass(frozen=True)
class Refusal:
    """The message of a 422 for a field that breaks its schema, and the fields it names (default: the field)."""

    message: str
    fields: tuple[str, ...] = ()


def _one_of(name: str, values: tuple[str, ...]) -> Refusal:
    return Refusal(f"{name} must be one of {', '.join(values)}")


# ---- the parts requests share ----------------------------------------------------------------------------------


def _variable_names(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_VARIABLES:
        raise ValueError(f"at most {MAX_VARIABLES} variables")
    for key in value:
        if not VARIABLE_NAME.fullmatch(key):
            raise ValueError(f"variable name {key!r} is not a valid template name (letters, digits, '_')")
    return value


# Template variables: names a template can use (``propertyNames`` needs OpenAPI 3.1), at most 1000 of them.
Variables = Annotated[dict[str, Any], AfterValidator(_variable_names), WithJsonSchema({
    "type": "object", "additionalProperties": True, "maxProperties": MAX_VARIABLES,
    "propertyNames": {"pattern": f"^{VARIABLE_NAME.pattern}$"}})]
TemplateText = Annotated[str, Field(max_length=MAX_TEXT, description="Jinja2 template (sandboxed)")]
Text255 = Annotated[str, Field(max_length=255)]
# Every stored image has such a name (the repository refuses others), so no other name can refer to one.
ImageName = Annotated[str, Field(max_length=255, pattern=f"^{NAME_PATTERN.pattern}$")]
PROFILE_NAME_PATTERN = r"^[A-Za-z0-9._-]+( +[A-Za-z0-9._-]+)*$"
ProfileName = Annotated[str, Field(max_length=255, pattern=PROFILE_NAME_PATTERN,
                                   description="letters, digits, '.', '_', '-' and inner spaces"),
                        Refusal("a profile name uses letters, digits, '.', '_', '-' and inner spaces")]
Serial = Annotated[str, Field(min_length=1, max_length=255)]


def _pid_pattern(value: str) -> str:
    problem = pid_pattern_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# ---- path parameters (for the document: a view answers 404 for a name nothing has) ---------------------------------


class ProfilePath(BaseModel):
    name: Annotated[str, Field(max_length=255, pattern=PROFILE_NAME_PATTERN)]


class DevicePath(BaseModel):
    serial: Serial


class ImagePath(BaseModel):
    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]


class JobPath(BaseModel):
    job_id: Annotated[int, Field(ge=1)]


class Body(BaseModel):
    """A JSON request body: strict types, and no field it does not declare."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """A query string: its values are text, read as the declared types; no parameter it does not declare."""

    model_config = ConfigDict(extra="forbid")


class NoQuery(Query):
    """An operation that takes no query parameter."""


class Answer(BaseModel):
    """An answer, read from database rows (or plain values) as they are."""

    model_config = ConfigDict(from_attributes=True)


# Timestamps are naive UTC in the database and RFC 3339 UTC with milliseconds on the wire.
When = Annotated[dt.datetime, PlainSerializer(rfc3339, return_type=str)]


def _name_of(row: Any) -> Any:
    return getattr(row, "name", row) if row is not None else None


def _or_empty(value: Any) -> Any:
    return value or {}


NameOf = Annotated[str | None, BeforeValidator(_name_of)]
JsonObject = Annotated[dict[str, Any], BeforeValidator(_or_empty)]


# ---- errors ---------------------------------------------------------------------------------------------------------


class ErrorDetail(Answer):
    code: str = Field(description="machine-readable: validation_error, not_found, conflict, unauthorized, ...")
    message: str
    fields: list[str] = Field(default_factory=list, description="the fields or parameters at fault (422)")


class ErrorAnswer(Answer):
    """Every failure: never a traceback."""

    error: ErrorDetail


# ---- profiles -------------------------------------------------------------------------------------------------------


class ProfileChange(Body):
    """A profile's fields as a client sends them; PUT gives the fields left out their defaults, PATCH keeps them."""

    name: ProfileName = ""
    match_serials: Annotated[list[Serial], Field(max_length=10000),
                             Refusal("every entry must be a non-empty string of at most 255 characters")] = []
    match_pid: Annotated[str, Field(max_length=255, description="shell pattern (ISR43*) or 're:' + regular "
                                                                "expression"), AfterValidator(_pid_pattern)] = ""
    is_default: bool = False
    bootstrap_template: TemplateText = ""
    config_template: TemplateText = ""
    post_template: TemplateText = ""
    image: Annotated[ImageName | None, Field(description="name of a stored image (422 when there is none of that "
                                                         "name)")] = None
    reload_after_install: bool = True
    apply_to: Annotated[Literal["running", "startup"], Refusal("must be 'running' or 'startup'")] = "running"
    variables: Variables = {}
    credentials: Annotated[dict[str, str], Field(json_schema_extra={"writeOnly": True}),
                           Refusal("keys and values must be strings")] = {}


class ProfileCreate(ProfileChange):
    name: ProfileName


def _has_credentials(value: Any) -> bool:
    return bool(value)


class Profile(Answer):
    id: int
    name: str
    match_serials: Annotated[list[str], BeforeValidator(lambda v: list(v or []))]
    match_pid: str
    is_default: bool
    bootstrap_template: str
    config_template: str
    post_template: str
    image: Annotated[NameOf, Field(description="name of the stored image installed first (null: none)")]
    reload_after_install: bool
    apply_to: str
    variables: JsonObject
    has_credentials: Annotated[bool, Field(validation_alias="credentials"), BeforeValidator(_has_credentials)]
    created_at: When
    updated_at: When


class ProfilePage(Answer):
    items: list[Profile]
    total: int


# ---- images ---------------------------------------------------------------------------------------------------------


class ImageUpload(BaseModel):
    """A multipart upload: the image in ``file``, its name (empty or absent: the file part's file name) and version."""

    model_config = ConfigDict(extra="forbid")

    # The part as received: the repository reads it from its stream (an empty one is refused there).
    file: Annotated[InstanceOf[FileStorage], WithJsonSchema({"type": "string", "format": "binary", "minLength": 1})]
    name: Annotated[str, Field(pattern=f"^({NAME_PATTERN.pattern})?$",
                               description="image name; empty or absent: the file part's file name")] = ""
    version: Annotated[str, Field(max_length=MAX_IMAGE_VERSION)] = ""


class ImageUploadQuery(Query):
    name: Annotated[ImageName | SkipJsonSchema[None], Field(
        description="image name: required with a raw body, refused with a multipart one")] = None
    version: Annotated[str, Field(max_length=MAX_IMAGE_VERSION,
                                  description="software version (raw body only; guessed from the name if absent)")] = ""


class Image(Answer):
    id: int
    name: str
    version: str
    md5: str
    size: int
    path: Annotated[str, Field(validation_alias="filename", description="where devices download it"),
                    BeforeValidator(lambda filename: f"/images/{filename}")]
    created_at: When


class ImagePage(Answer):
    items: list[Image]
    total: int


# ---- devices --------------------------------------------------------------------------------------------------------


class Device(Answer):
    id: int
    serial: str
    pid: str
    udi: str
    hostname: str
    protocol: str
    address: str
    software_version: str
    state: Literal[DEVICE_STATES]  # type: ignore[valid-type]
    profile: Annotated[NameOf, Field(description="assigned (claimed) or matched profile")]
    current_job_id: int | None
    variables: JsonObject
    first_seen: When
    last_seen: When


def _timestamp(value: str | None) -> str | None:
    if value is not None and timestamp(value) is None:
        raise ValueError("not an RFC 3339 date-time")
    return value


def _timestamp_refusal(name: str) -> Refusal:
    return Refusal(f"{name} must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")


class DeviceQuery(Query):
    """The inventory's filters (each exact unless said), its sort and its page."""

    state: Annotated[Literal[DEVICE_STATES] | SkipJsonSchema[None],  # type: ignore[valid-type]
                     Field(description="filter by device state"), _one_of("state", DEVICE_STATES)] = None
    protocol: Annotated[Literal[PROTOCOLS] | SkipJsonSchema[None],  # type: ignore[valid-type]
                        Field(description="filter by protocol"), _one_of("protocol", PROTOCOLS)] = None
    profile: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["profile"],
        description="profile name: the devices it is assigned to (empty: devices with none)")] = None
    pid: Annotated[str | SkipJsonSchema[None], Field(max_length=FILTERS["pid"], description="product ID")] = None
    software_version: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["software_version"], description="software version the device reported")] = None
    last_seen_after: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["last_seen_after"], json_schema_extra={"format": "date-time"},
        description="devices last seen at or after this time"), AfterValidator(_timestamp),
        _timestamp_refusal("last_seen_after")] = None
    last_seen_before: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["last_seen_before"], json_schema_extra={"format": "date-time"},
        description="devices last seen before this time"), AfterValidator(_timestamp),
        _timestamp_refusal("last_seen_before")] = None
    search: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["search"],
        description="serial number or hostname prefix, case-insensitive (empty: every device)")] = None
    serial: Annotated[str | SkipJsonSchema[None], Field(
        max_length=FILTERS["serial"], description="serial number prefix, case-insensitive")] = None
    sort: Annotated[Literal[tuple(SORT_KEYS)] | SkipJsonSchema[None], Field(  # type: ignore[valid-type]
        description="sort key; devices of equal key follow by serial. Default: serial, or with a search (search, "
                    "serial) the match order: the devices whose serial starts with it, by serial in lower case, "
                    "then those whose hostname does, by hostname in lower case. A search in a sort reads and sorts "
                    "all its matches: sort one once it is narrow (its first page's total_capped false)"),
                    _one_of("sort", tuple(SORT_KEYS))] = None
    order: Annotated[Literal[ORDERS] | SkipJsonSchema[None],  # type: ignore[valid-type]
                     Field(description="sort order (default asc)"), Refusal("order must be asc or desc")] = None
    cursor: Annotated[str | SkipJsonSchema[None], Field(
        max_length=MAX_CURSOR, pattern="^[A-Za-z0-9_-]+$",
        description="where the page starts: the previous answer's next, with the same filters (and the same sort "
                    "and order, or none)"),
        Refusal("cursor: not a cursor this server handed out; start the walk again without a cursor")] = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"page size (default {DEFAULT_LIMIT})"),
                     Refusal(f"limit must be an integer from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")] = \
        DEFAULT_LIMIT
    # Not a parameter: named here only to say how pages go instead.
    offset: SkipJsonSchema[Annotated[None, Refusal("devices are paged with cursor (the previous answer's next), "
                                                   "not offset")]] = None


class DevicePage(Answer):
    items: list[Device]
    limit: int
    sort: Literal[SORTS]  # type: ignore[valid-type]
    order: Literal[ORDERS]  # type: ignore[valid-type]
    next: Annotated[str | None, Field(description="cursor of the next page; null on the last")]
    total: Annotated[int, Field(description="devices matching the filters (first page only: without cursor); a "
                                            f"search counts up to {SEARCH_COUNT_LIMIT}")] = 0
    total_capped: Annotated[bool, Field(description=f"the search matches more than {SEARCH_COUNT_LIMIT} devices "
                                                    "(first page only)")] = False


StateCounts = create_model("StateCounts", __base__=Answer, **{state: (int, ...) for state in DEVICE_STATES})
ProtocolCounts = create_model("ProtocolCounts", __base__=Answer, **{p: (int, ...) for p in PROTOCOLS}, none=(
    Annotated[int, Field(description="known only through the API, never seen")], ...))


class CountGroup(Answer):
    state: str
    protocol: str
    count: int


class DeviceCounts(Answer):
    """The fleet overview."""

    total: int
    by_state: StateCounts  # type: ignore[valid-type]
    by_protocol: ProtocolCounts  # type: ignore[valid-type]
    groups: Annotated[list[CountGroup], Field(description="the grouped query's rows: devices by state and protocol")]


class DeviceVariables(Body):
    variables: Variables


class Claim(Body):
    profile: Annotated[str, Field(max_length=255, description="name of the profile")]


# ---- jobs -----------------------------------------------------------------------------------------------------------


class JobStep(Answer):
    id: int
    step: str
    state: str
    attempt: int
    detail: str
    started_at: When
    ended_at: When | None


class Job(Answer):
    id: int
    device: Annotated[str, Field(description="the device's serial number")]
    profile_id: int | None
    protocol: str
    state: str
    step: str
    attempt: int
    max_attempts: int
    pending: Annotated[str | None, Field(description="the kind of request the device has to answer")]
    detail: str
    failed_step: str | None
    created_at: When
    updated_at: When
    finished_at: When | None

    @model_validator(mode="before")
    @classmethod
    def _from_job(cls, job: Any) -> Any:
        """A job row: its device by serial, and the kind of its pending request while it runs."""
        if isinstance(job, dict):
            return job
        row = {name: getattr(job, name) for name in cls.model_fields if name not in ("device", "pending")}
        return {**row, "device": job.device.serial, "failed_step": job.failed_step or None,
                "pending": (job.pending_request or {}).get("kind") if job.state == RUNNING else None}


class JobDetail(Job):
    steps: list[JobStep]


class JobPage(Answer):
    items: list[Job]
    total: int
    limit: int
    offset: int


_PAGE_REFUSAL = Refusal(f"limit must be 1 to 500 and offset 0 to {MAX_OFFSET}", fields=("limit", "offset"))


class JobQuery(Query):
    state: Annotated[Literal[JOB_STATES] | SkipJsonSchema[None],  # type: ignore[valid-type]
                     Field(description="filter by job state"), _one_of("state", JOB_STATES)] = None
    serial: Annotated[str | SkipJsonSchema[None], Field(description="device serial number")] = None
    limit: Annotated[int, Field(ge=1, le=500, description="page size (default 50)"), _PAGE_REFUSAL] = 50
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET, description="rows to skip"), _PAGE_REFUSAL] = 0


class Cancel(Body):
    reason: Annotated[str, Field(max_length=500)] = ""


class Retry(Body):
    """A retry takes no field."""


# ---- a device's history ---------------------------------------------------------------------------------------------


class HistoryStep(JobStep):
    requested_at: Annotated[str | None, Field(description="the step's request went out (null: skipped)")]
    answered_at: Annotated[str | None, Field(description="the device's answer came (null: none, e.g. skipped, "
                                                         "cancelled or still waiting)")]
    duration_ms: Annotated[int | None, Field(description="from start to end of the step")]
    error: Annotated[str | None, Field(description="why the step failed, in the device's words where it gave them")]

    @model_validator(mode="before")
    @classmethod
    def _from_step(cls, step: Any) -> Any:
        """A step row: when its request went out and its answer came, how long that took, the device's error."""
        if isinstance(step, dict):
            return step
        ended = step.ended_at
        return {**{name: getattr(step, name) for name in JobStep.model_fields},
                "requested_at": rfc3339(step.started_at) if step.state != "skipped" else None,
                "answered_at": rfc3339(ended) if ended is not None and step.state in ANSWERED_STEP_STATES else None,
                "duration_ms": round((ended - step.started_at).total_seconds() * 1000) if ended is not None else None,
                "error": step.detail if step.state == "failed" else None}


class HistoryJob(Job):
    steps: list[HistoryStep]


class OutboxEvent(Answer):
    """An event for Prime as the outbox holds it: sent (after the broker's receipt) or still waiting."""

    id: Annotated[str, Field(validation_alias="event_id")]
    type: str
    created_at: When
    sent_at: Annotated[When | None, Field(description="Prime's broker took it (null: not yet)")]
    attempts: int
    payload: JsonObject


class DeviceHistory(Answer):
    device: Device
    jobs: list[HistoryJob]
    events: list[OutboxEvent]
    more_events: Annotated[bool, Field(description=f"the device has more than the {HISTORY_EVENTS} events listed")]


# ---- bootstrap and template rendering -------------------------------------------------------------------------------


class BootstrapRequest(Body):
    """A device's bootstrap: by profile, or by serial (matched like a contacting device)."""

    # An empty name is no name: the server needs one of the two non-empty.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["profile"], "properties": {"profile": {"minLength": 1}}},
        {"required": ["serial"], "properties": {"serial": {"minLength": 1}}}]})

    serial: Text255 = ""
    pid: Text255 = ""
    profile: Text255 = ""
    protocol: Annotated[Literal["cns", "pnp"], Refusal("must be 'cns' or 'pnp'")] = "pnp"
    variables: Variables = {}


class BootstrapRendering(Answer):
    profile: str
    serial: str | None
    protocol: str
    config: str


TemplateTexts = create_model("TemplateTexts", __base__=Body, **{name: (TemplateText, "") for name in TEMPLATES})


class TemplatePreview(Body):
    serial: Annotated[str, Field(max_length=255, description="the device to render for")]
    templates: Annotated[TemplateTexts, Refusal(  # type: ignore[valid-type]
        f"templates are {', '.join(TEMPLATES)}, each a string of at most {MAX_TEXT} characters")]
    variables: Annotated[Variables, Field(description="the profile's variables (the device's own override them)")] = {}


class RenderedTemplates(Answer):
    serial: str
    rendered: Annotated[dict[str, str], Field(description="each template that rendered, by field")]
    problems: Annotated[dict[str, str], Field(description="why each other template failed, by field")]


class DeviceConfiguration(RenderedTemplates):
    profile: Annotated[str | None, Field(description="the profile rendered (null: none)")]


# ---- activity -------------------------------------------------------------------------------------------------------

DEFAULT_MINUTES, MAX_MINUTES = 180, 1440
MAX_TRANSITIONS = 500  # a flapping pair is drawn as its latest changes, not as every one of thousands

MinuteCounts = create_model("MinuteCounts", __base__=Answer, minute=(str, ...),
                            **{state: (int, ...) for state in TERMINAL_STATES})


class Transition(Answer):
    at: str
    state: Annotated[str, Field(description="ACTIVE or PASSIVE")]
    node: str
    reason: str


class ActivityQuery(Query):
    minutes: Annotated[int, Field(ge=1, le=MAX_MINUTES, description=f"how far back (default {DEFAULT_MINUTES})"),
                       Refusal(f"minutes must be an integer from 1 to {MAX_MINUTES} (default {DEFAULT_MINUTES})")] = \
        DEFAULT_MINUTES


class Activity(Answer):
    """Jobs ended per minute, and the gateway's role changes."""

    since: Annotated[str, Field(description="the first minute counted (UTC)")]
    until: str
    minutes: int
    per_minute: Annotated[list[MinuteCounts], Field(  # type: ignore[valid-type]
        description="the minutes in which jobs ended, oldest first (a minute not listed had none)")]
    transitions: Annotated[list[Transition], Field(
        description=f"the gateway's role changes, oldest first (the latest {MAX_TRANSITIONS})")]


# ---- the enrolment of a gateway pair's secondary --------------------------------------------------------------------


def _pem(value: str) -> str:
    try:
        x509.load_pem_x509_certificate(value.encode())
    except ValueError:
        raise ValueError("is not a PEM certificate") from None
    return value


def _fernet(value: str) -> str:
    try:
        Fernet(value.encode())
    except ValueError:
        raise ValueError("is not a Fernet key") from None
    return value


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


Pem = Annotated[str, Field(max_length=MAX_PEM, description="PEM certificate"), AfterValidator(_pem)]
_SECONDARY = Refusal("an enrolment makes this gateway the secondary of a standalone gateway pair: settings mode, "
                     "gateway_ha and gateway_role must be standalone, pair and secondary", fields=("settings",))
_FIXED = {"mode": "standalone", "gateway_ha": "pair", "gateway_role": "secondary"}


def _pair_setting(name: str, defaults: Settings) -> Any:
    if name in _FIXED:
        return Annotated[Literal[_FIXED[name]], _SECONDARY], ...  # type: ignore[valid-type]
    default = getattr(defaults, name)
    kind = next(k for k in (bool, int, float, str) if isinstance(default, k))
    if kind is str:
        return Annotated[str, Field(max_length=1024)], ...
    return kind, ...


_DEFAULTS = Settings()  # each pair setting's type is its default's
PairSettings = create_model(
    "PairSettings", __base__=Body, __doc__="the pair's settings, as the secondary's configuration file holds them (an "
                                           "empty string: the default)",
    **{name: _pair_setting(name, _DEFAULTS) for name in PAIR_SETTINGS})


class BrokerLogin(Body):
    model_config = ConfigDict(json_schema_extra={"writeOnly": True})

    login: Annotated[str, Field(pattern=f"^{LOGIN_PATTERN.pattern}$")]
    passcode: Annotated[str, Field(min_length=1, max_length=1024)]


class ProfileKey(Body):
    id: str
    key: Annotated[str, AfterValidator(_fernet)]


class ProfileKeys(Body):
    model_config = ConfigDict(json_schema_extra={"writeOnly": True})

    keys: Annotated[list[ProfileKey], Field(min_length=1, max_length=MAX_KEYS)]


PrimeTrust = Annotated[
    dict[Annotated[str, AfterValidator(_ip_address)], Annotated[list[Pem], Field(min_length=1, max_length=10)]],
    Field(min_length=1, max_length=4), WithJsonSchema({
        "type": "object", "minProperties": 1, "maxProperties": 4,
        "description": "Prime server address -> the certificates it presented",
        "propertyNames": {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        "additionalProperties": {"type": "array", "minItems": 1, "maxItems": 10,
                                 "items": TypeAdapter(Pem).json_schema()}})]


class GatewayCa(Body):
    """The CA that issues both gateways' server certificates: a device that trusts it trusts either node."""

    certificate: Pem
    key: Annotated[str, Field(min_length=1, max_length=MAX_PEM, description="its private key (PEM)")]


class PairSecrets(Body):
    broker_login: BrokerLogin
    profile_keys: ProfileKeys
    prime_trust: PrimeTrust
    peer_certificate: Annotated[Pem, Field(description="the primary's own certificate (PEM)")]
    gateway_ca: Annotated[GatewayCa | None, Field(description="the primary's generated CA; absent when the "
                                                              "operator supplies each node's certificates")] = None


class Enrolment(Body):
    settings: PairSettings  # type: ignore[valid-type]
    secrets: PairSecrets


class EnrolmentPorts(Answer):
    http: int
    https: int
    cns_port_base: int


class EnrolmentPossible(Answer):
    possible: bool
    refusal: str


class EnrolmentFacts(Answer):
    """What this gateway is, and whether it can be enrolled now."""

    node: str
    version: str
    started: Annotated[float, Field(description="when the worker that answered started (Unix time)")]
    mode: str
    gateway_ha: str
    gateway_role: str
    gateway_peer: str
    vip: str
    node_address: str
    state: str
    ports: EnrolmentPorts
    enrolment: EnrolmentPossible


class EnrolmentAccepted(Answer):
    node: str
    gateway_role: str
    gateway_peer: str
    vip: str
    restarting: bool
    config_file: str
    at: Annotated[float, Field(description="when it was accepted (Unix time)")]
    certificate: Annotated[str, Field(description="the certificate (PEM) it presents once restarted, issued by the "
                                                  "pair's CA (empty: it keeps the one pinned)")] = ""


class PairLeft(Answer):
    node: str
    left: bool
    stopping: bool
    restored: bool
